"""Mean loss, perplexity and bits per byte of a model over a long token sequence.

* **loss**: mean next-token cross-entropy in nats over the scored tokens.
* **perplexity**: ``exp(loss)``, the effective number of equally likely choices per token.
* **bits per byte**: the total loss in bits divided by the number of UTF-8 bytes the
  scored tokens spell. Unlike loss and perplexity it does not depend on the tokenizer,
  so models with different vocabularies can be compared on the same text.

Windows are planned by :func:`gptforge.evaluate.windows.sliding_windows`; only the
scored positions go through the LM head (the largest matrix of a small model).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gptforge.errors import ConfigError, DataError
from gptforge.evaluate.windows import sliding_windows

logger = logging.getLogger(__name__)


def token_byte_lengths(tokenizer: Any) -> np.ndarray:
    """Bytes that each id spells (special tokens count 0: they are markup, not text)."""
    special = set(tokenizer.special_tokens.values())
    return np.array(
        [0 if i in special else len(tokenizer.decode_bytes([i])) for i in range(tokenizer.vocab_size)],
        dtype=np.int64,
    )


def _scored_loss(model: torch.nn.Module, x: torch.Tensor, rows: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of the scored positions only.

    Args:
        x: (B, T) inputs; rows: (N,) flat indices into B * T of the scored positions;
        y: (N,) their targets. Only those N rows go through the LM head.
    """
    if hasattr(model, "hidden_states") and hasattr(model, "head"):
        h = model.hidden_states(x)  # (B, T, C)
        logits = model.head(h.reshape(-1, h.shape[-1]).index_select(0, rows))  # (N, V), padding cut
    else:
        logits = model(x)  # (B, T, V)
        logits = logits.reshape(-1, logits.shape[-1]).index_select(0, rows)  # (N, V)
    return F.cross_entropy(logits.float(), y, reduction="sum")


@torch.inference_mode()
def evaluate_tokens(
    model: torch.nn.Module,
    tokens: Sequence[int] | np.ndarray | torch.Tensor,
    block_size: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    byte_lengths: np.ndarray | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Score every token of ``tokens`` (except the first) once, with a strided sliding window.

    Args:
        model: a GPT (or anything with ``hidden_states`` + ``head``, or returning logits).
        tokens: 1-D ids (a list, a numpy array or memmap, or a tensor).
        block_size: window length; default the model's ``config.block_size``.
        stride: how far each window moves; default ``block_size // 2``.
        batch_size: windows per forward pass.
        byte_lengths: bytes per id (:func:`token_byte_lengths`); enables ``bits_per_byte``.
        progress: show a tqdm bar on stderr.

    Returns:
        ``{"loss", "perplexity", "bits_per_byte" (or None), "tokens" (scored), "bytes",
        "windows", "block_size", "stride", "seconds", "tokens_per_s"}``.
    """
    cfg_block = getattr(getattr(model, "config", None), "block_size", None)
    block_size = block_size or cfg_block
    if block_size is None:
        raise ConfigError("block_size is needed: the model has no config.block_size")
    if cfg_block is not None and block_size > cfg_block:
        raise ConfigError(f"block_size {block_size} exceeds the model's context {cfg_block}")
    stride = stride or max(1, block_size // 2)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    data = tokens.cpu().numpy() if isinstance(tokens, torch.Tensor) else tokens
    data = np.asarray(data)
    if data.ndim != 1:
        raise DataError(f"expected a 1-D token sequence, got shape {data.shape}")
    if len(data) < 2:
        raise DataError(f"need at least 2 tokens to score one, got {len(data)}")
    windows = sliding_windows(len(data), block_size, stride)
    device = next(model.parameters()).device
    total_nll: torch.Tensor | None = None
    total_tokens, total_bytes = 0, 0
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(data) - 1, unit="tok", desc="eval", dynamic_ncols=True)
    for b in range(0, len(windows), batch_size):
        batch = windows[b : b + batch_size]
        x = np.stack([data[w.start : w.end] for w in batch]).astype(np.int64)  # (B, T)
        y = np.stack([data[w.start + 1 : w.end + 1] for w in batch]).astype(np.int64)  # (B, T)
        pos = np.arange(batch[0].end - batch[0].start)[None, :]  # (1, T)
        starts = np.array([w.score_from - w.start - 1 for w in batch])[:, None]  # (B, 1)
        keep = (pos >= starts).reshape(-1)  # (B*T,) scored positions, found on the CPU: no device sync
        rows = np.flatnonzero(keep)
        y_kept = y.reshape(-1)[rows]
        if byte_lengths is not None:
            total_bytes += int(byte_lengths[y_kept].sum())
        xt = torch.from_numpy(x).to(device)
        nll = _scored_loss(model, xt, torch.from_numpy(rows).to(device), torch.from_numpy(y_kept).to(device))
        total_nll = nll if total_nll is None else total_nll + nll  # summed on the device, read once
        total_tokens += len(rows)
        if bar is not None:
            bar.update(len(rows))
    if bar is not None:
        bar.close()
    total = float(total_nll)
    seconds = time.perf_counter() - t0
    loss = total / total_tokens
    bpb = total / math.log(2) / total_bytes if byte_lengths is not None and total_bytes else None
    return {
        "loss": loss,
        "perplexity": math.exp(loss) if loss < 700 else float("inf"),
        "bits_per_byte": bpb,
        "tokens": total_tokens,
        "bytes": total_bytes if byte_lengths is not None else None,
        "windows": len(windows),
        "block_size": block_size,
        "stride": stride,
        "seconds": seconds,
        "tokens_per_s": total_tokens / seconds if seconds > 0 else None,
    }


def text_tokens(tokenizer: Any, text: str) -> list[int]:
    """The ids to evaluate ``text`` with: ``<|endoftext|>`` first when the tokenizer has one, so
    that the text's first token is scored too (GPT-2 saw that token before every document)."""
    ids = tokenizer.encode_ordinary(text)
    return ([tokenizer.eot_id] if tokenizer.eot_id is not None else []) + ids


def evaluate_text(
    model: torch.nn.Module, text: str, tokenizer: Any = None, **kwargs: Any
) -> dict[str, Any]:
    """:func:`evaluate_tokens` on ``text`` encoded with ``tokenizer`` (default ``model.tokenizer``)."""
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ConfigError("the model has no tokenizer; pass one to evaluate text")
    return evaluate_tokens(model, text_tokens(tokenizer, text), byte_lengths=token_byte_lengths(tokenizer), **kwargs)
