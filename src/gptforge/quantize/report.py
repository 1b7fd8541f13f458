"""Measure what quantization costs and buys: sizes, decoding speed, and quality.

For an original and a quantized model this computes, side by side:

* file size of ``model.safetensors`` and the bytes of all tensors in memory;
* the bytes of the quantized linear layers' weights against their float originals
  (integers + scales + zeros vs the original weight matrices; biases stay float and are
  not counted on either side);
* greedy batch-1 decoding speed (tokens/s) through :func:`gptforge.generate.engine.generate`;
* on a dataset dir (``gptforge prepare``): val loss, perplexity, and the mean KL
  divergence ``KL(p_original || p_quantized)`` of the next-token distributions, both
  models scored on the same non-overlapping windows.

The evaluation is written here rather than borrowed from ``gptforge eval`` because the
KL needs both models' logits for the same positions at once.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from gptforge.errors import DataError
from gptforge.quantize.modules import QuantEmbedding, QuantLinear


def tensor_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer, shared tensors counted once."""
    seen: dict[tuple[int, int], int] = {}
    for t in list(model.parameters()) + [b for b in model.buffers() if b is not None]:
        if t.numel():
            seen[(t.data_ptr(), t.numel())] = t.numel() * t.element_size()
    return sum(seen.values())


def linear_weight_bytes(model: nn.Module, names: list[str]) -> int:
    """Bytes of the weights of the named layers: stored integers + scales (+ zeros) when
    quantized, the weight matrix when float. Biases are left out on both sides."""
    total = 0
    for name in names:
        m = model.get_submodule(name)
        if isinstance(m, (QuantLinear, QuantEmbedding)):
            total += m.stored_bytes()
        else:
            total += m.weight.numel() * m.weight.element_size()
    return total


def file_size(model_dir: str | Path | None) -> int | None:
    """Size of ``model.safetensors`` in a model dir (None without a dir)."""
    if model_dir is None:
        return None
    path = Path(model_dir) / "model.safetensors"
    return path.stat().st_size if path.is_file() else None


@torch.no_grad()
def decode_tokens_per_s(
    model: nn.Module, prompt: torch.Tensor, new_tokens: int = 32, repeats: int = 1
) -> float:
    """Greedy batch-1 decoding speed (new tokens / s, best of ``repeats`` after a warm-up).

    Args:
        prompt: (1, T) ids; T + new_tokens should fit in the model's block_size to time
            decoding alone (the engine otherwise re-prefills a sliding window).
    """
    from gptforge.generate.engine import generate

    generate(model, prompt, max_new_tokens=2, temperature=0.0)  # warm-up: kernel packing, allocator
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = generate(model, prompt, max_new_tokens=new_tokens, temperature=0.0)
        dt = time.perf_counter() - t0
        best = min(best, dt / max(1, out.shape[1] - prompt.shape[1]))
    return 1.0 / best


def eval_windows(tokens: np.ndarray, block_size: int, max_windows: int) -> torch.Tensor:
    """Non-overlapping windows of ``block_size + 1`` tokens from the start: (N, block_size + 1)."""
    n = min(max_windows, (len(tokens) - 1) // block_size)
    if n < 1:
        raise DataError(
            f"the evaluation split has {len(tokens)} tokens, fewer than one window of "
            f"{block_size + 1}; prepare more data or a larger --val-fraction"
        )
    rows = [
        np.asarray(tokens[i * block_size : i * block_size + block_size + 1], dtype=np.int64)
        for i in range(n)
    ]
    return torch.from_numpy(np.stack(rows))


def split_tokens(dataset: Any, split: str, limit: int) -> np.ndarray:
    """The first ``limit`` tokens of a dataset split (its shards concatenated)."""
    parts, have = [], 0
    for shard in dataset.shards(split):
        take = shard[: limit - have]
        parts.append(np.asarray(take))
        have += len(take)
        if have >= limit:
            break
    if not parts:
        raise DataError(f"dataset {dataset.path} has no tokens in its {split!r} split")
    return np.concatenate(parts)


@torch.no_grad()
def compare_quality(
    original: nn.Module, quantized: nn.Module, windows: torch.Tensor, batch_size: int = 8
) -> dict[str, float]:
    """Loss and perplexity of both models and the mean KL(original || quantized) per token.

    Args:
        windows: (N, T + 1) token ids; inputs are ``[:, :-1]``, targets ``[:, 1:]``.
    """
    sums = {"loss_original": 0.0, "loss_quantized": 0.0, "kl": 0.0, "agree": 0.0}
    count = 0
    for i in range(0, windows.shape[0], batch_size):
        chunk = windows[i : i + batch_size]
        x, y = chunk[:, :-1], chunk[:, 1:]  # (B, T)
        lp_o = F.log_softmax(original(x).float(), dim=-1)  # (B, T, V)
        lp_q = F.log_softmax(quantized(x).float(), dim=-1)  # (B, T, V)
        flat_y = y.reshape(-1)
        sums["loss_original"] += F.nll_loss(lp_o.flatten(0, 1), flat_y, reduction="sum").item()
        sums["loss_quantized"] += F.nll_loss(lp_q.flatten(0, 1), flat_y, reduction="sum").item()
        sums["kl"] += (lp_o.exp() * (lp_o - lp_q)).sum().item()  # sum over positions and vocab
        sums["agree"] += (lp_o.argmax(-1) == lp_q.argmax(-1)).sum().item()
        count += y.numel()
    out = {k: v / count for k, v in sums.items()}
    out["ppl_original"] = math.exp(out["loss_original"])
    out["ppl_quantized"] = math.exp(out["loss_quantized"])
    out["tokens"] = count
    return out


def build_report(
    original: nn.Module,
    quantized: nn.Module,
    original_dir: str | Path | None,
    quantized_dir: str | Path | None,
    dataset: Any = None,
    split: str = "val",
    max_windows: int = 16,
    new_tokens: int = 32,
    repeats: int = 2,
) -> dict[str, Any]:
    """Every figure for the original and the quantized model, as a JSON-ready dict."""
    quant = quantized.quantization
    names = list(quant["linear"]) + list(quant["embedding"])
    block = original.config.block_size
    prompt_len = max(1, min(16, block // 4))
    windows = None
    if dataset is not None:
        if split not in dataset.splits:
            raise DataError(
                f"dataset {dataset.path} has no {split!r} split (it has {', '.join(dataset.splits)})"
            )
        if dataset.vocab_size > original.config.vocab_size:
            raise DataError(
                f"dataset {dataset.path} has vocab {dataset.vocab_size} but the model only "
                f"{original.config.vocab_size}; use data prepared with the model's tokenizer"
            )
        toks = split_tokens(dataset, split, (block + 1) * max_windows + 1)
        windows = eval_windows(toks, block, max_windows)
        prompt = windows[:1, :prompt_len]
    else:
        prompt = torch.randint(
            0,
            original.config.vocab_size,
            (1, prompt_len),
            generator=torch.Generator().manual_seed(0),
        )
    new_tokens = max(1, min(new_tokens, block - prompt_len))
    rows: dict[str, dict[str, Any]] = {}
    for label, model, mdir in (
        ("original", original, original_dir),
        ("quantized", quantized, quantized_dir),
    ):
        rows[label] = {
            "file_bytes": file_size(mdir),
            "tensor_bytes": tensor_bytes(model),
            "quantized_layers_bytes": linear_weight_bytes(model, names),
        }
    # Speed: timed as `gptforge generate` runs them (CPU weight layout, values unchanged), and
    # alternated so that load from other processes hits both alike.
    from gptforge.generate.cpu_decoding import prepare_for_decoding

    prepare_for_decoding(original)
    prepare_for_decoding(quantized)
    speeds: dict[str, list[float]] = {"original": [], "quantized": []}
    for _ in range(repeats):
        speeds["original"].append(decode_tokens_per_s(original, prompt, new_tokens))
        speeds["quantized"].append(decode_tokens_per_s(quantized, prompt, new_tokens))
    for label in rows:
        rows[label]["tokens_per_s"] = max(speeds[label])
    quality = None
    if windows is not None:
        quality = compare_quality(original, quantized, windows)
        rows["original"].update(
            val_loss=quality["loss_original"], perplexity=quality["ppl_original"], kl=0.0
        )
        rows["quantized"].update(
            val_loss=quality["loss_quantized"],
            perplexity=quality["ppl_quantized"],
            kl=quality["kl"],
        )
    return {
        "quantization": quant,
        "original": rows["original"],
        "quantized": rows["quantized"],
        "eval_tokens": quality["tokens"] if quality else 0,
        "top1_agreement": quality["agree"] if quality else None,
        "decode": {
            "prompt_tokens": prompt_len,
            "new_tokens": new_tokens,
            "batch_size": 1,
            "greedy": True,
        },
    }


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f} MB"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b in (None, 0) else f"{a / b:.3f}x"


def format_report(report: dict[str, Any]) -> str:
    """The report as an aligned text table (original, quantized, ratio)."""
    o, q = report["original"], report["quantized"]
    qc = report["quantization"]
    lines = [("", "original", "quantized", "quantized/original")]

    def row(label: str, key: str, fmt) -> None:  # noqa: ANN001
        if key in o:
            lines.append((label, fmt(o[key]), fmt(q[key]), _ratio(q[key], o[key])))

    row("model.safetensors", "file_bytes", _mb)
    row("all tensors", "tensor_bytes", _mb)
    row(
        f"quantized layers' weights ({len(qc['linear']) + len(qc['embedding'])})",
        "quantized_layers_bytes",
        _mb,
    )
    row("decode tokens/s (batch 1, greedy)", "tokens_per_s", lambda v: f"{v:.1f}")
    row("val loss", "val_loss", lambda v: f"{v:.4f}")
    row("perplexity", "perplexity", lambda v: f"{v:.3f}")
    if "kl" in q:
        lines.append(("mean KL(original || quantized)", "0", f"{q['kl']:.5f}", ""))
        lines.append(("top-1 agreement", "1", f"{report['top1_agreement']:.4f}", ""))
    widths = [max(len(r[i]) for r in lines) for i in range(4)]
    method = qc["method"] + (f", group size {qc['group_size']}" if qc.get("group_size") else "")
    head = f"quantization: {method}; {report['eval_tokens']} eval tokens"
    body = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in lines
    ]
    return "\n".join([head, *body])
