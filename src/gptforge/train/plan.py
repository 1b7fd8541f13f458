"""``gptforge train --dry-run``: what a run would do and the memory it needs, without doing it.

Exact figures (from the model built on the meta device, no memory used):

    parameters   sum of numel x element size of every parameter (shared ones once)
    gradients    the same over the trainable parameters (grads have the parameters' dtype)
    optimizer    AdamW: exp_avg + exp_avg_sq (numel x 4 bytes each) + a float32 ``step``
                 per trainable parameter; Muon's matrices: one momentum buffer each

Estimated: activations per device, after Korthikanti et al. 2022 ("Reducing Activation
Recomputation in Large Transformer Models", arXiv:2205.05198, section 4.1), which counts
about 34·s·b·h bytes per layer at 16-bit precision (b sequences of s tokens, width h)
plus 5·a·s²·b for the attention scores that a fused (flash) kernel does not keep; i.e.
17·s·b·h values per layer here, times the activation element size (2 under bf16/fp16
autocast, 4 in fp32), plus the logits (b·s·V in fp32, and their softmax gradient). With
``train.activation_checkpointing`` only each block's input (s·b·h values) is kept, plus one
block's activations while it is recomputed. It is an estimate: it has not been compared
with ``torch.cuda.max_memory_allocated`` on a GPU in this project yet.
"""

from __future__ import annotations

import os
from typing import Any

import torch


def parameter_bytes(model: torch.nn.Module) -> tuple[int, int, int, int]:
    """(parameters, parameter bytes, trainable parameters, trainable bytes), shared tensors once."""
    seen: dict[int, torch.nn.Parameter] = {}
    for p in model.parameters():
        seen.setdefault(id(p), p)
    params = list(seen.values())
    n = sum(p.numel() for p in params)
    nbytes = sum(p.numel() * p.element_size() for p in params)
    train = [p for p in params if p.requires_grad]
    return n, nbytes, sum(p.numel() for p in train), sum(p.numel() * p.element_size() for p in train)


def optimizer_bytes(model: torch.nn.Module, optimizer: str = "adamw") -> int:
    """The optimizer state a step creates (see the module docstring)."""
    from gptforge.train.optim import is_hidden_matrix

    total, seen = 0, set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if optimizer == "muon" and is_hidden_matrix(name, p):
            total += p.numel() * p.element_size()  # momentum buffer
        else:
            total += 2 * p.numel() * 4 + 4  # exp_avg, exp_avg_sq (float32 for float32 params), step
    return total


def activation_bytes(cfg: Any) -> int:
    """The activation estimate per device for one micro-batch (module docstring)."""
    m, t = cfg.model, cfg.train
    b, s, h, a, n = t.batch_size, m.block_size, m.n_embd, m.n_head, m.n_layer
    elem = 4 if t.precision == "fp32" or (t.precision == "auto" and not torch.cuda.is_available()) else 2
    per_layer = 17 * s * b * h * elem
    if m.attention == "explicit":
        per_layer += int(2.5 * a * s * s * b) * elem
    layers = (n * s * b * h * elem + per_layer) if getattr(t, "activation_checkpointing", False) else n * per_layer
    logits = b * s * m.padded_vocab_size * 4 * 2
    return layers + logits


def plan_run(cfg: Any) -> dict[str, Any]:
    """The resolved plan of a run: config, batch, tokens and memory (bytes) per device."""
    from gptforge.config import to_dict
    from gptforge.model.gpt import GPT
    from gptforge.train.config import effective_grad_accum

    if cfg.model.vocab_size is None and cfg.data.dir is not None:
        from gptforge.config import apply
        from gptforge.data.shards import open_dataset

        cfg = apply(cfg, {"model.vocab_size": open_dataset(cfg.data.dir).vocab_size}, source="dataset")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    accum = effective_grad_accum(cfg.train, cfg.model.block_size, world)
    with torch.device("meta"):
        model = GPT(cfg.model)
    n, pbytes, n_train, tbytes = parameter_bytes(model)
    seqs = cfg.train.batch_size * accum * world
    tokens_per_step = seqs * cfg.model.block_size
    opt = optimizer_bytes(model, cfg.train.optimizer)
    fsdp = cfg.train.distributed == "fsdp" and world > 1
    shard = world if fsdp else 1
    act = activation_bytes(cfg)
    return {
        "config": to_dict(cfg),
        "world_size": world,
        "grad_accum": accum,
        "global_batch_sequences": seqs,
        "tokens_per_step": tokens_per_step,
        "total_tokens": tokens_per_step * cfg.train.max_steps,
        "parameters": n,
        "trainable_parameters": n_train,
        "memory_per_device": {
            "parameters": pbytes // shard, "gradients": tbytes // shard, "optimizer": opt // shard,
            "activations_estimate": act, "total_estimate": (pbytes + tbytes + opt) // shard + act,
        },  # fmt: skip
    }


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def format_plan(plan: dict[str, Any]) -> str:
    import yaml

    mem = plan["memory_per_device"]
    lines = ["resolved config:", yaml.safe_dump(plan["config"], sort_keys=False).rstrip(), ""]
    lines += [
        f"processes {plan['world_size']}, grad_accum {plan['grad_accum']}: global batch "
        f"{plan['global_batch_sequences']} sequences, {plan['tokens_per_step']:,} tokens per step, "
        f"{plan['total_tokens']:,} tokens in all",
        f"parameters {plan['parameters']:,} ({plan['trainable_parameters']:,} trainable)",
        "memory per device: " + ", ".join(
            f"{k.replace('_estimate', ' (estimate)')} {_mib(v)}" for k, v in mem.items()),
        "dry run: nothing was written",
    ]  # fmt: skip
    return "\n".join(lines)
