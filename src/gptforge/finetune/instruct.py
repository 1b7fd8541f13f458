"""Instruction and chat fine-tuning: next-token loss on the response tokens only.

A conversation is rendered by a template (:mod:`gptforge.templates`) into
pieces marked prompt or response. Each piece is encoded separately, the
end-of-text id is appended after every response (so the model learns to stop),
and the targets are the ids shifted by one with every prompt target set to the
ignore index::

    tokens   [ P0  P1  P2  R0  R1  EOT ]         P = prompt, R = response
    inputs   [ P0  P1  P2  R0  R1 ]
    targets  [ -100 -100 R0  R1  EOT ]           the loss reads R0, R1, EOT only

so the loss measures how well the model writes the answer, not how well it
predicts the instruction it was given.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from gptforge.data.collate import IGNORE_INDEX, pad_collate
from gptforge.errors import ConfigError, DataError, ModelError
from gptforge.finetune.recipe import LoopConfig
from gptforge.templates import Template, make_template
from gptforge.train.tasks import evaluate_examples

logger = logging.getLogger(__name__)


@dataclass
class Example:
    """One encoded conversation: model inputs and shifted, masked targets (same length)."""

    inputs: list[int]
    targets: list[int]


def encode_conversation(
    tokenizer: Any, template: Template, messages: list[dict[str, Any]], max_length: int, on_too_long: str = "truncate"
) -> tuple[Example | None, bool]:
    """Encode one conversation for training; returns ``(example or None, was_too_long)``.

    ``max_length`` bounds the model input (block size). A longer conversation is cut
    at the end (``truncate``) or dropped (``skip``); so is one whose cut leaves no
    response token. Returns None for a dropped conversation.
    """
    segments = template.segments(messages, add_generation_prompt=False)
    while segments and not segments[-1][1]:
        segments.pop()  # text after the last response teaches nothing
    ids: list[int] = []
    labels: list[int] = []
    eot = tokenizer.eot_id
    for text, is_response in segments:
        piece = tokenizer.encode(text)
        if is_response and eot is not None:
            piece = piece + [eot]
        ids += piece
        labels += piece if is_response else [IGNORE_INDEX] * len(piece)
    too_long = len(ids) - 1 > max_length
    if too_long:
        if on_too_long == "skip":
            return None, True
        ids, labels = ids[: max_length + 1], labels[: max_length + 1]
    example = Example(inputs=ids[:-1], targets=labels[1:])
    if not example.inputs or all(t == IGNORE_INDEX for t in example.targets):
        return None, too_long
    return example, too_long


def encode_all(
    tokenizer: Any, template: Template, conversations: list[list[dict]], max_length: int, on_too_long: str,
    source: str,
) -> list[Example]:  # fmt: skip
    """Encode conversations, warning once about long ones; raises if none is left."""
    if on_too_long not in ("truncate", "skip"):
        raise ConfigError(f"--on-too-long must be truncate or skip, got {on_too_long!r}")
    out, long_records = [], []
    for i, conv in enumerate(conversations):
        ex, too_long = encode_conversation(tokenizer, template, conv, max_length, on_too_long)
        if too_long:
            long_records.append(i + 1)
        if ex is not None:
            out.append(ex)
    if long_records:
        action = "skipped" if on_too_long == "skip" else "truncated (those left with no response are dropped)"
        logger.warning(
            "%s: %d records are longer than %d tokens and were %s: records %s%s", source, len(long_records),
            max_length, action, long_records[:10], " ..." if len(long_records) > 10 else "",
        )  # fmt: skip
    if not out:
        raise DataError(f"{source}: no usable example (every record too long or empty); raise --max-length")
    return out


@dataclass
class InstructTask:
    """Right-padded batches of (inputs, masked targets); mean loss over response tokens."""

    pad_id: int

    def collate(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        return pad_collate([{"input_ids": e.inputs, "labels": e.targets} for e in examples], self.pad_id)

    def length(self, example: Example) -> int:
        return len(example.inputs)

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        # Right padding: real tokens never attend to the pads after them (causality), and pad
        # targets are IGNORE_INDEX, so no attention mask is needed (and the fused kernel stays on).
        h = model.hidden_states(batch["input_ids"])  # (B, T, C)
        keep = batch["labels"] != IGNORE_INDEX  # (B, T)
        # The LM head only where a target is scored: the (C x V) projection is most of the
        # compute of a small model, and prompts and padding are most of the positions.
        logits = model.head(h[keep])  # (N, V), padding rows cut
        loss = F.cross_entropy(logits.float(), batch["labels"][keep])
        return loss, int(keep.sum())


@torch.no_grad()
def generate_responses(
    model: torch.nn.Module, tokenizer: Any, template: Template, conversations: list[list[dict]],
    max_new_tokens: int = 128, batch_size: int = 8,
) -> list[dict[str, Any]]:  # fmt: skip
    """Greedy answers to the last user turn of each conversation, beside the reference answer."""
    from gptforge.generate.engine import generate

    rows = []
    block = model.config.block_size
    for i in range(0, len(conversations), batch_size):
        chunk = conversations[i : i + batch_size]
        prompts, refs = [], []
        for conv in chunk:
            last = max(j for j, m in enumerate(conv) if m["role"] == "assistant")
            prompts.append(template.render(conv[:last], add_generation_prompt=True))
            refs.append(conv[last]["content"])
        keep = max(1, block - max_new_tokens)
        ids = [tokenizer.encode(p)[-keep:] for p in prompts]  # keep the end: it holds "### Response:"
        pad_id = tokenizer.eot_id if tokenizer.eot_id is not None else 0
        batch = pad_collate(ids, pad_id, padding_side="left")
        stop = [tokenizer.eot_id] if tokenizer.eot_id is not None else None
        out = generate(
            model, batch["input_ids"].to(model.device), max_new_tokens, temperature=0.0,
            stop_token_ids=stop, attention_mask=batch["attention_mask"].to(model.device),
        )  # fmt: skip
        T = batch["input_ids"].shape[1]
        for prompt, ref, row in zip(prompts, refs, out[:, T:].tolist()):
            if stop and stop[0] in row:
                row = row[: row.index(stop[0])]
            text = tokenizer.decode(row)
            for s in template.stop_strings:
                if s in text:
                    text = text[: text.index(s)]
            rows.append({"prompt": prompt, "reference": ref, "response": text.strip()})
    return rows


def check_trainable_base(model: torch.nn.Module, lora_rank: int, merge: bool) -> None:
    """Refuse, before any work, what cannot train: every weight of a quantized base is an integer.

    LoRA on a quantized base works (QLoRA-style: frozen integers, float adapters), unmerged.
    """
    from gptforge.model.variants import variant_kinds

    if "quantization" not in variant_kinds(model):
        return
    if lora_rank <= 0:
        raise ConfigError(
            "the base model is quantized: full fine-tuning cannot train its integer weights; pass "
            "--lora-rank 8 (float adapters on the frozen quantized base), or fine-tune the float model"
        )
    if merge:
        raise ConfigError(
            "--merge cannot fold adapters into a quantized base; drop --merge (the adapters are saved "
            "beside the integer weights and load back), or fine-tune the float model"
        )


@dataclass
class InstructOptions:
    """Everything ``gptforge finetune instruct`` takes (see the CLI for help)."""

    model: str
    data: str
    out: str
    template: str = "alpaca"
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = ("c_attn", "c_proj", "c_fc")
    merge: bool = False
    max_length: int | None = None
    on_too_long: str = "truncate"
    val_fraction: float = 0.1
    eval_samples: int = 20
    max_new_tokens: int = 128
    device: str = "cpu"
    overwrite: bool = False
    resume: bool = False  # --resume OUT: continue the stopped run (an error if there is none)
    overrides: dict[str, Any] | None = None  # --section.key VALUE flags onto the engine's config


def run_instruct(opts: InstructOptions, loop: LoopConfig) -> dict[str, Any]:
    """Read, split, measure the base model, fine-tune, measure again, answer, save.

    Writes RUN/metrics.jsonl, RUN/results.json (``val_loss_before``, ``val_loss_after``),
    RUN/responses.jsonl and RUN/final/ (a model dir carrying the template). RUN is
    built in a temporary folder and renamed at the end.
    """
    from gptforge.finetune.data import read_instructions, split_records
    from gptforge.finetune.recipe import (
        check_out,
        copy_metrics,
        resolve_lr,
        run_config,
        run_task,
        stopped_result,
        training_entry,
    )
    from gptforge.finetune.resume import discard_progress, open_progress
    from gptforge.io import atomic_dir, write_json
    from gptforge.model.loading import load_model, save_model
    from gptforge.model.lora import apply_lora, count_trainable, merge_lora
    from gptforge.train.distributed import is_main
    from gptforge.train.tasks import ExamplesTask

    out = check_out(opts)
    if opts.lora_rank < 0:
        raise ConfigError(f"--lora-rank must be >= 0 (0 = full fine-tuning), got {opts.lora_rank}")
    if opts.lora_rank > 0 and "lm_head" in opts.lora_targets and not opts.merge:
        raise ConfigError("--lora-targets lm_head needs --merge (an adapter on the tied LM head/embedding "
                          "is saved folded into the weights)")  # fmt: skip
    template = make_template(opts.template)
    conversations = read_instructions(opts.data)
    model = load_model(opts.model, device=opts.device)
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise ModelError(f"model {opts.model} has no tokenizer.json; instruction tuning needs one")
    check_trainable_base(model, opts.lora_rank, opts.merge)
    loop = resolve_lr(loop, model, opts.lora_rank > 0, "instruct")
    max_length = min(opts.max_length or model.config.block_size, model.config.block_size)
    train_conv, val_conv, _ = split_records(conversations, opts.val_fraction, 0.0, loop.seed)
    train = encode_all(tokenizer, template, train_conv, max_length, opts.on_too_long, f"{opts.data} (train)")
    val = (
        encode_all(tokenizer, template, val_conv, max_length, opts.on_too_long, f"{opts.data} (val)")
        if val_conv
        else []
    )
    task = InstructTask(tokenizer.eot_id if tokenizer.eot_id is not None else 0)
    val_before = evaluate_examples(model, task.loss, task.collate, val, loop.batch_size)
    logger.info("held-out response loss before: %.4f", val_before)
    if opts.lora_rank > 0:
        torch.manual_seed(loop.seed)  # the adapters' initial weights
        apply_lora(model, opts.lora_rank, opts.lora_alpha, opts.lora_dropout, opts.lora_targets)
    else:
        model.requires_grad_(True)
    trainable, total = count_trainable(model)
    logger.info("training %d of %d parameters (%.2f%%)", trainable, total, 100 * trainable / total)
    work, fingerprint = open_progress("instruct", opts, loop, opts.overrides)  # a stopped run's, if any
    extra: dict[str, Any] = {"template": template.to_dict()}  # (unmerged adapters: in the variants)
    engine_task = ExamplesTask(
        name="instruct", prepared_model=model, tokenizer=tokenizer, train_examples=train, val_examples=val,
        collate=task.collate, length=task.length, loss_and_count=task.loss, batch_size=loop.batch_size,
        seed=loop.seed, sort_by_length=loop.sort_by_length, fingerprint=fingerprint, extra=extra,
    )  # fmt: skip
    cfg = run_config(loop, model.config, len(train), opts.device, opts.overrides)
    result = run_task(engine_task, cfg, work, explicit_resume=opts.resume)
    model = engine_task.prepared_model  # (under FSDP: the whole trained model, see run_task)
    if result.exit_code:
        return stopped_result("instruct", result, work)
    if not is_main():
        return {"task": "instruct"}
    model.eval()
    with atomic_dir(out, overwrite=opts.overwrite) as tmp:
        history = copy_metrics(work, tmp)
        val_after = evaluate_examples(model, task.loss, task.collate, val, loop.batch_size)
        if opts.lora_rank > 0 and opts.merge:
            merge_lora(model)
        responses = generate_responses(
            model, tokenizer, template, val_conv[: opts.eval_samples], opts.max_new_tokens, loop.batch_size
        )
        with open(tmp / "responses.jsonl", "w", encoding="utf-8") as f:
            for row in responses:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        save_model(model, tmp / "final", tokenizer=tokenizer,
                   extra_config={**extra, "training": training_entry(result)})
        results = {
            "task": "instruct",
            "val_loss_before": val_before,
            "val_loss_after": val_after,
            "template": opts.template,
            "lora_rank": opts.lora_rank,
            "merged": bool(opts.lora_rank > 0 and opts.merge),
            "trainable_params": trainable,
            "total_params": total,
            "n_train": len(train),
            "n_val": len(val),
            "final_train_loss": next((h["loss"] for h in reversed(history) if "loss" in h), None),
            "model": str(opts.model),
            "data": str(opts.data),
        }
        write_json(tmp / "results.json", results)
    discard_progress(work)  # complete: nothing left to resume
    return results
