"""Text classification: a linear head on the hidden state of the last real token.

A causal model's last position is the only one that has seen the whole text,
so the head reads the hidden state there (after ``ln_f``)::

    ids:   [ The  film  was  great  <pad> <pad> ]     right padded
    mask:  [  1    1     1     1      0     0   ]
                             ▲ last real token (index from the mask)
    h = model.hidden_states(ids, attention_mask=mask, position_ids=...)[b, last]   (C,)
    logits = classifier(h)                                                           (num_labels,)

The index comes from the attention mask, and positions restart at 0 on each
row's first real token, so left and right padding give the same prediction.

What trains (``--train``): ``head`` (the head only), ``last-k`` (the last k
blocks, ``ln_f`` and the head), ``all``, or ``lora`` (LoRA adapters + the head).

A fine-tuned classifier is a model dir whose ``config.json`` lists a ``classifier``
variant (``{"kind": "classifier", "labels": [...], "max_length": N}``) and whose weights
include ``classifier.weight`` / ``classifier.bias``; :func:`apply_variant` rebuilds it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptforge.data.collate import pad_collate
from gptforge.errors import ConfigError, ModelError
from gptforge.finetune.recipe import LoopConfig
from gptforge.model.config import GPTConfig
from gptforge.model.gpt import GPT
from gptforge.model.lora import apply_lora, count_trainable, merge_lora
from gptforge.model.variants import add_variant, variant_kinds

logger = logging.getLogger(__name__)

TRAIN_MODES = ("head", "last-k", "all", "lora")


class GPTClassifier(GPT):
    """A GPT with a classification head ``classifier`` (C -> num_labels) beside its LM head."""

    forward_methods = (*GPT.forward_methods, "classify_logits")

    def __init__(self, config: GPTConfig, labels: list[str]) -> None:
        super().__init__(config)
        self.labels = list(labels)
        self.classifier = nn.Linear(config.n_embd, len(labels))
        nn.init.normal_(self.classifier.weight, std=0.02)
        nn.init.zeros_(self.classifier.bias)

    @classmethod
    def from_gpt(cls, gpt: GPT, labels: list[str], max_length: int | None = None) -> GPTClassifier:
        """Wrap a pretrained GPT (its weights are shared, not copied) with a fresh head.

        The variants already applied to ``gpt`` carry over (an earlier classifier head is
        replaced), and the ``classifier`` variant is recorded last.
        """
        with torch.device("meta"):
            model = cls(gpt.config, labels)
        for name in ("transformer", "lm_head"):
            setattr(model, name, getattr(gpt, name))
        model.classifier = nn.Linear(gpt.config.n_embd, len(labels)).to(gpt.device)
        nn.init.normal_(model.classifier.weight, std=0.02)
        nn.init.zeros_(model.classifier.bias)
        model.tokenizer = getattr(gpt, "tokenizer", None)
        model.max_length = int(max_length or gpt.config.block_size)
        for attr in ("quantization", "model_dir", "extra_config"):
            if hasattr(gpt, attr):
                setattr(model, attr, getattr(gpt, attr))
        model.variants = [v for v in getattr(gpt, "variants", None) or [] if v["kind"] != "classifier"]
        add_variant(model, {"kind": "classifier", "labels": list(model.labels), "max_length": model.max_length})
        return model

    def classify_logits(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits from the last real token of each row.

        Args:
            idx: (B, T) ids, padded on either side.
            attention_mask: (B, T), 1 = real token; None = no padding.

        Returns:
            (B, num_labels)
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(idx)
        if bool((attention_mask.sum(dim=1) == 0).any()):
            raise ModelError("a row of the batch has no real token; every text needs at least one token")
        positions = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)  # (B, T): 0 at the first real token
        h = self.hidden_states(idx, attention_mask=attention_mask, position_ids=positions)  # (B, T, C)
        T = idx.shape[1]
        # the last 1 in each mask row, whatever the padding side: flip, first 1, map back
        last = T - 1 - attention_mask.long().flip(dims=[1]).argmax(dim=1)  # (B,)
        pooled = h[torch.arange(idx.shape[0], device=idx.device), last]  # (B, C)
        return self.classifier(pooled)  # (B, num_labels)


def set_trainable(model: GPTClassifier, mode: str, last_k: int = 1, lora: dict[str, Any] | None = None) -> None:
    """Choose what trains: ``head``, ``last-k``, ``all`` or ``lora`` (see module docstring)."""
    if mode not in TRAIN_MODES:
        raise ConfigError(f"--train {mode!r} is not one of {list(TRAIN_MODES)}")
    if mode in ("last-k", "all") and "quantization" in variant_kinds(model):
        raise ConfigError(
            f"--train {mode} would train a quantized base, whose integer weights cannot learn; use "
            "--train lora (float adapters on the frozen quantized base) or --train head"
        )
    if mode == "lora":
        apply_lora(model, **(lora or {}), scope="transformer")  # freezes everything else
        for p in model.transformer.wte.parameters():
            p.requires_grad_(False)
    else:
        for p in model.parameters():
            p.requires_grad_(mode == "all")
        if mode == "last-k":
            n = model.config.n_layer
            if not 1 <= last_k <= n:
                raise ConfigError(f"--last-k {last_k} must be between 1 and the model's n_layer {n}")
            for block in model.transformer.h[n - last_k :]:
                block.requires_grad_(True)
            model.transformer.ln_f.requires_grad_(True)
    model.classifier.requires_grad_(True)


@dataclass
class ClassifyTask:
    """Batches of ``(token ids, label index)`` and a cross-entropy loss on the class logits."""

    pad_id: int

    def collate(self, examples: list[tuple[list[int], int]]) -> dict[str, torch.Tensor]:
        return pad_collate([{"input_ids": ids, "label": y} for ids, y in examples], self.pad_id)

    def length(self, example: tuple[list[int], int]) -> int:
        return len(example[0])

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        logits = model.classify_logits(batch["input_ids"], batch["attention_mask"])  # (B, L)
        return F.cross_entropy(logits.float(), batch["label"]), batch["label"].numel()


def encode_texts(tokenizer: Any, texts: list[str], max_length: int) -> tuple[list[list[int]], int]:
    """Token ids per text, cut to the first ``max_length`` tokens; returns (ids, number cut)."""
    out, cut = [], 0
    for text in texts:
        ids = tokenizer.encode(text)
        if not ids:
            ids = [tokenizer.eot_id if tokenizer.eot_id is not None else 0]
        if len(ids) > max_length:
            ids, cut = ids[:max_length], cut + 1
        out.append(ids)
    return out, cut


@torch.no_grad()
def predict(model: GPTClassifier, ids: list[list[int]], pad_id: int, batch_size: int = 32) -> torch.Tensor:
    """Class probabilities (N, num_labels) for token lists."""
    model.eval()
    device = model.device
    probs = []
    for i in range(0, len(ids), batch_size):
        batch = pad_collate(ids[i : i + batch_size], pad_id)
        logits = model.classify_logits(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        probs.append(torch.softmax(logits.float(), dim=-1).cpu())
    return torch.cat(probs) if probs else torch.empty(0, len(model.labels))


def classification_report(y_true: list[int], y_pred: list[int], labels: list[str]) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support and the confusion matrix
    (rows = true label, columns = predicted label)."""
    L = len(labels)
    cm = [[0] * L for _ in range(L)]
    for t, p in zip(y_true, y_pred):
        cm[t][p] += 1
    per_class = {}
    for k, name in enumerate(labels):
        tp = cm[k][k]
        predicted = sum(cm[r][k] for r in range(L))
        actual = sum(cm[k])
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": actual}
    n = len(y_true)
    return {
        "accuracy": sum(cm[k][k] for k in range(L)) / n if n else float("nan"),
        "n": n,
        "per_class": per_class,
        "confusion_matrix": cm,
        "labels": list(labels),
    }


def format_report(name: str, report: dict[str, Any]) -> str:
    """A small text table of a :func:`classification_report`."""
    labels = report["labels"]
    width = max(8, *(len(x) for x in labels))
    lines = [f"{name}: accuracy {report['accuracy']:.4f} on {report['n']} examples"]
    lines.append(f"  {'label':<{width}}  precision  recall  f1      support")
    for label, m in report["per_class"].items():
        lines.append(
            f"  {label:<{width}}  {m['precision']:9.4f}  {m['recall']:6.4f}  {m['f1']:6.4f}  {m['support']:7d}"
        )
    lines.append("  confusion matrix (rows true, columns predicted): " + " ".join(labels))
    for label, row in zip(labels, report["confusion_matrix"]):
        lines.append(f"  {label:<{width}}  " + " ".join(f"{v:6d}" for v in row))
    return "\n".join(lines)


def apply_variant(model: GPT, entry: dict[str, Any], source: Path | str) -> GPTClassifier:
    """The ``classifier`` variant on a (meta-device) model being loaded: a head, no weights yet."""
    labels = entry.get("labels")
    if not isinstance(labels, list) or len(labels) < 2:
        raise ModelError(f"{source}: the classifier variant must list at least two labels")
    return GPTClassifier.from_gpt(model, [str(x) for x in labels], entry.get("max_length"))


@dataclass
class ClassifyOptions:
    """Everything ``gptforge finetune classify`` takes (see the CLI for help)."""

    model: str
    data: str
    out: str
    text_column: str | None = None
    label_column: str | None = None
    train: str = "all"
    last_k: int = 1
    balance: bool = False
    max_length: int | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("c_attn", "c_proj", "c_fc")
    device: str = "cpu"
    overwrite: bool = False
    resume: bool = False  # --resume OUT: continue the stopped run (an error if there is none)
    overrides: dict[str, Any] | None = None  # --section.key VALUE flags onto the engine's config


def run_classification(opts: ClassifyOptions, loop: LoopConfig) -> dict[str, Any]:
    """Read, split, fine-tune, evaluate and save; returns what RUN/results.json holds.

    RUN is built in a temporary folder and renamed into place at the end, so a
    failed or interrupted run leaves no half-written RUN (and never replaces one
    unless ``overwrite``).
    """
    from gptforge.finetune.data import balance_classes, read_labelled, split_records
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
    from gptforge.train.distributed import is_main
    from gptforge.train.tasks import ExamplesTask

    out = check_out(opts)
    records = read_labelled(opts.data, opts.text_column, opts.label_column)
    if opts.balance:
        records = balance_classes(records, loop.seed)
    labels = sorted({label for _, label in records})
    train, val, test = split_records(records, opts.val_fraction, opts.test_fraction, loop.seed)

    base = load_model(opts.model, device=opts.device)
    tokenizer = base.tokenizer
    if tokenizer is None:
        raise ModelError(f"model {opts.model} has no tokenizer.json; classification needs one")
    max_length = min(opts.max_length or base.config.block_size, base.config.block_size)
    pad_id = tokenizer.eot_id if tokenizer.eot_id is not None else 0
    index = {label: i for i, label in enumerate(labels)}

    def encode(split: list[tuple[str, str]], name: str) -> list[tuple[list[int], int]]:
        ids, cut = encode_texts(tokenizer, [t for t, _ in split], max_length)
        if cut:
            logger.warning("%d %s texts are longer than %d tokens and were truncated", cut, name, max_length)
        return [(x, index[y]) for x, (_, y) in zip(ids, split)]

    train_ex, val_ex, test_ex = encode(train, "train"), encode(val, "val"), encode(test, "test")
    loop = resolve_lr(loop, base, opts.train == "lora", "classify")
    torch.manual_seed(loop.seed)  # the head's initial weights
    model = GPTClassifier.from_gpt(base, labels, max_length)
    lora = {"rank": opts.lora_rank, "alpha": opts.lora_alpha, "dropout": opts.lora_dropout,
            "targets": opts.lora_targets}  # fmt: skip
    set_trainable(model, opts.train, opts.last_k, lora)
    trainable, total = count_trainable(model)
    logger.info("classes %s; train %d, val %d, test %d; training %s: %d of %d parameters",
                labels, len(train_ex), len(val_ex), len(test_ex), opts.train, trainable, total)  # fmt: skip
    task = ClassifyTask(pad_id)
    work, fingerprint = open_progress("classify", opts, loop, opts.overrides)  # a stopped run's, if any
    engine_task = ExamplesTask(
        name="classify", prepared_model=model, tokenizer=tokenizer, train_examples=train_ex, val_examples=val_ex,
        collate=task.collate, length=task.length, loss_and_count=task.loss, batch_size=loop.batch_size,
        seed=loop.seed, sort_by_length=loop.sort_by_length, fingerprint=fingerprint,
    )  # fmt: skip
    cfg = run_config(loop, model.config, len(train_ex), opts.device, opts.overrides)
    result = run_task(engine_task, cfg, work, explicit_resume=opts.resume)
    model = engine_task.prepared_model  # (under FSDP: the whole trained model, see run_task)
    if result.exit_code:
        return stopped_result("classify", result, work)
    if not is_main():
        return {"task": "classify"}
    model.eval()
    with atomic_dir(out, overwrite=opts.overwrite) as tmp:
        history = copy_metrics(work, tmp)
        if "quantization" not in variant_kinds(model):  # adapters on a quantized base stay apart
            merge_lora(model)
        reports = {}
        for name, split in (("val", val_ex), ("test", test_ex)):
            if split:
                probs = predict(model, [x for x, _ in split], pad_id, loop.batch_size)
                reports[name] = classification_report([y for _, y in split], probs.argmax(-1).tolist(), labels)
        results = {
            "task": "classify",
            "val_accuracy": reports["val"]["accuracy"] if "val" in reports else None,
            "test_accuracy": reports["test"]["accuracy"] if "test" in reports else None,
            "labels": labels,
            "train_mode": opts.train,
            "trainable_params": trainable,
            "total_params": total,
            "n_train": len(train_ex),
            "final_train_loss": next((h["loss"] for h in reversed(history) if "loss" in h), None),
            "reports": reports,
            "model": str(opts.model),
            "data": str(opts.data),
        }
        save_model(model, tmp / "final", tokenizer=tokenizer, extra_config={"training": training_entry(result)})
        write_json(tmp / "results.json", results)
    discard_progress(work)  # complete: nothing left to resume
    return results
