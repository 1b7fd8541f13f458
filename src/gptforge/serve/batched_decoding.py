"""Kernels for the server's batched decode step (a few rows per product), chosen by measuring.

:func:`gptforge.generate.cpu_decoding.prepare_for_decoding` gives each large layer the
kernel that streams its weight fastest for *one* row, and may re-store the weight as
(in, out) for it. A batched step multiplies ``n`` rows (one per running request) by every
weight; at 16 rows it is a small matrix multiply whose arithmetic is most of its cost, and
how fast MKL does it depends on how the product is handed to it. Measured on an AMD EPYC
(Zen 3, 2 threads, torch 2.13), 16 rows by GPT-2's 3072 x 768 MLP weight:

* ``F.linear`` with the weight stored (in, out) (what the one-row choice left there): 4.9 ms;
* ``F.linear`` with the weight stored (out, in): 1.3-2.5 ms;
* ``(W @ x^T)^T`` or the weight cut into one ``bmm`` slice per thread, stored (out, in): 0.7-0.9 ms,
  near the two cores' arithmetic peak.

A whole 16-row step of a gpt2-124M-shaped model went from ~200 ms to ~70 ms.

So nothing is assumed here either: :func:`prepare_for_batching` times, for each weight shape
and with as many bytes as the model holds of it, the one-row kernels of
:mod:`~gptforge.generate.cpu_decoding` and the ``rows``-row kernels of :data:`ROWS_KERNELS`,
in both layouts. It keeps the layout whose worse case is the smallest slowdown against the
best of each (a server spends time both ways: one stream alone, many together), and turns
each layer into a :class:`BatchedDecodeLinear` that uses the chosen one-row kernel for one
row and the chosen rows kernel for 2 .. ``max_rows`` rows in inference; training, gradients
and larger products (prefill chunks) are plain ``F.linear`` as before.

What it never changes: values, parameter objects, tied weights, state dicts. Sums may round
differently in the last bits (tests compare with ``F.linear`` within float tolerance), as
any batched product already does against a one-row one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptforge.generate import cpu_decoding
from gptforge.generate.cpu_decoding import KERNELS, DecodeLinear

logger = logging.getLogger(__name__)


def _mm_t(x2: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(M, in) x (out, in) -> (M, out) computed as (W @ x^T)^T: MKL gets the weight as the
    left operand, the orientation it multiplies few columns by fastest on the CPUs measured."""
    return torch.mm(w, x2.t()).t().contiguous()  # (out, M) -> (M, out)


# name -> (weight layout the kernel reads, fn(x2 (M, in), weight (out, in), threads) -> (M, out))
ROWS_KERNELS: dict[str, tuple[str, Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]]] = {
    "linear": ("row", lambda x2, w, p: F.linear(x2, w)),
    "mm-t": ("row", lambda x2, w, p: _mm_t(x2, w)),
    "split-rows": KERNELS["split-rows"],
    "linear-in-out": ("col", lambda x2, w, p: F.linear(x2, w)),
    "mm-t-in-out": ("col", lambda x2, w, p: _mm_t(x2, w)),
    "split-in-out": KERNELS["split-in-out"],
}
ROWS_SPLIT_KERNELS = ("split-rows", "split-in-out")

# (shape, dtype, rows, threads) -> (one-row kernel, rows kernel), for the whole process
_CHOICES: dict[tuple, tuple[str, str]] = {}


def _is_col(w: torch.Tensor) -> bool:
    """Stored (in, out): ``w.t()`` contiguous and ``w`` not."""
    return not w.is_contiguous() and w.t().is_contiguous()


class BatchedDecodeLinear(DecodeLinear):
    """A :class:`~gptforge.generate.cpu_decoding.DecodeLinear` with a second kernel for
    products of 2 .. ``max_rows`` rows in inference (a batched decode step)."""

    rows_kernel: str = "linear"
    max_rows: int = cpu_decoding.MAX_ROWS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        rows = x.numel() // self.in_features
        layout, fn = ROWS_KERNELS[self.rows_kernel]
        parts = torch.get_num_threads()
        if (
            rows < 2
            or rows > self.max_rows
            or self.training
            or torch.is_grad_enabled()
            or x.dtype != w.dtype
            or (layout == "col") != _is_col(w)
            or (self.rows_kernel in ROWS_SPLIT_KERNELS and (parts < 2 or self.out_features < parts))
        ):
            return super().forward(x)
        y = fn(x.reshape(rows, self.in_features), w, parts)  # (M, out)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)  # (..., out)


def time_rows_kernels(shape: tuple[int, int], dtype: torch.dtype, count: int, rows: int,
                      threads: int | None = None) -> dict[str, float]:
    """Seconds per product of ``rows`` rows for each candidate of :data:`ROWS_KERNELS`.

    As :func:`~gptforge.generate.cpu_decoding.time_kernels`: ``count`` synthetic weights of
    ``shape`` (at least ``PROBE_BYTES`` of them, so caches do not flatter a kernel), taken in
    turn, kernels alternating round by round, each kernel's best round.
    """
    threads = threads or torch.get_num_threads()
    names = [k for k in ROWS_KERNELS if threads > 1 or k not in ROWS_SPLIT_KERNELS]
    return cpu_decoding.time_candidates(ROWS_KERNELS, names, shape, dtype, count, rows, threads, prune=False)


def choose_kernels(one_row: dict[str, float], many_rows: dict[str, float]) -> tuple[str, str]:
    """The (one-row kernel, rows kernel) pair of one layout, from their measured seconds.

    Each layout's best kernel is compared with the best of all for one row and for many;
    the layout whose worse ratio is smaller wins (ties: the one-row winner's layout).

    Example: one row {"mv-in-out": 1.0, "linear": 1.2}, 16 rows {"linear-in-out": 4.0,
    "mm-t": 1.0}: the (in, out) layout is 4x slower for 16 rows, the (out, in) one 1.2x for
    one row, so ("linear", "mm-t").
    """
    def best(times: dict[str, float], kernels: dict, layout: str) -> tuple[str | None, float]:
        mine = {k: t for k, t in times.items() if kernels[k][0] == layout and math.isfinite(t)}
        k = min(mine, key=mine.get) if mine else None
        return k, mine[k] if k is not None else math.inf

    top1, topn = min(one_row.values()), min(many_rows.values())
    first = KERNELS[min(one_row, key=one_row.get)][0]
    scored = []
    for lay in (first, "col" if first == "row" else "row"):  # ties go to the one-row winner's layout
        k1, t1 = best(one_row, KERNELS, lay)
        kn, tn = best(many_rows, ROWS_KERNELS, lay)
        if k1 is not None and kn is not None:
            scored.append((max(t1 / top1, tn / topn), k1, kn))
    _, k1, kn = min(scored, key=lambda s: s[0])  # min keeps the first of equals
    return k1, kn


def _layout(w: torch.Tensor, layout: str) -> None:
    """Re-store a 2-D parameter as (out, in) ("row") or (in, out) ("col") in place, same values."""
    if (layout == "col") == _is_col(w):
        return
    with torch.no_grad():
        w.data = w.data.t().contiguous().t() if layout == "col" else w.data.contiguous()


def prepare_for_batching(model: nn.Module, rows: int, max_rows: int | None = None) -> nn.Module:
    """Give every large CPU float ``nn.Linear`` of ``model`` kernels for one row and for a
    batched step of about ``rows`` rows, in place (see the module docstring).

    Args:
        model: a model in eval mode (``prepare_for_decoding`` may have run on it or not).
        rows: the batch the rows kernels are timed at (the server: ``min(max_batch, 16)``).
        max_rows: the most rows a product may have to use the rows kernel (default ``rows``,
            at least ``cpu_decoding.MAX_ROWS``).

    Returns:
        ``model``. Layers too small for ``prepare_for_decoding`` are left as they are.
    """
    cpu_decoding.prepare_for_decoding(model)  # attention choice, upcast, DecodeLinear in place
    max_rows = max(max_rows or rows, cpu_decoding.MAX_ROWS)
    layers: list[tuple[nn.Module, str, DecodeLinear]] = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in (DecodeLinear, BatchedDecodeLinear):
                layers.append((parent, name, child))
    counts: dict[tuple, int] = {}
    for _, _, child in layers:
        key = (tuple(child.weight.shape), child.weight.dtype)
        counts[key] = counts.get(key, 0) + 1
    threads = torch.get_num_threads()
    for parent, name, child in layers:
        w = child.weight
        shape, dtype = tuple(w.shape), w.dtype
        key = (shape, dtype, rows, threads)
        if key not in _CHOICES:
            one = cpu_decoding.time_kernels(shape, dtype, counts[(shape, dtype)], threads)
            many = time_rows_kernels(shape, dtype, counts[(shape, dtype)], rows, threads)
            _CHOICES[key] = choose_kernels(one, many)
            logger.info("kernels for %s %s: one row %s (%s), %d rows %s (%s)", shape, dtype, _CHOICES[key][0],
                        {k: f"{t * 1e6:.0f}us" for k, t in one.items() if math.isfinite(t)}, rows,
                        _CHOICES[key][1], {k: f"{t * 1e6:.0f}us" for k, t in many.items()})
        one_kernel, rows_kernel = _CHOICES[key]
        if type(child) is DecodeLinear:
            new = BatchedDecodeLinear.from_linear(child, one_kernel)
            new.upcast = child.upcast
            setattr(parent, name, new)
            child = new
        child.kernel, child.rows_kernel, child.max_rows = one_kernel, rows_kernel, max_rows
        _layout(w, KERNELS[one_kernel][0])  # both kernels read this layout; a tied head moves its embedding too
    return model


