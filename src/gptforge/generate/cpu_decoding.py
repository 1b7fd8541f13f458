"""Faster batch-1 decoding on the CPU: weight layout and matrix-vector products on every core.

Decoding one token multiplies a single row by every weight matrix of the model, so a
step reads all the weights once and does little arithmetic with each byte: its speed is
the speed at which weights stream from memory. Two things stand between PyTorch's
defaults and that limit on x86 CPUs (measured on this project's 2-core benchmark
machine with a gpt2-124M-shaped model, ``bench/generate.py``):

1. **Layout.** The matrix-vector kernel behind ``F.linear`` reads an (out, in) weight
   faster when it lies in memory as (in, out), the layout of GPT-2's original Conv1D
   weights (about 28 vs 17 GB/s on one core).
2. **Threads.** That kernel runs on one core however many there are, while ``torch.bmm``
   gives each matrix of a batch its own thread. Viewing a weight's output columns as
   ``parts`` slices (a view: nothing is copied) and multiplying the row by all slices in
   one ``bmm`` streams the weight on every core: the whole model's products go from about
   22.7 to 15.2 ms per token on 2 cores.

:func:`prepare_for_decoding` applies both, in place: every plain CPU float32
``nn.Linear`` gets the (in, out) layout, and those with at least ``SPLIT_MIN_WEIGHTS``
weights become a :class:`ThreadSplitLinear`. Shapes, names, parameter objects, values
and tied weights stay the same, and no memory is added. Sums may round differently in
the last bits.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

# Above this many rows (batch x new positions) a product is a real matrix multiply that
# already uses every core (prefill): splitting it gains nothing.
SPLIT_MAX_ROWS = 32
# Below this many weights (512 KB of fp32) a matrix is read faster than threads start: a
# 4x128 character model decodes ~30% slower with its layers split, a 6x384 one ~50% faster.
SPLIT_MIN_WEIGHTS = 1 << 17


def split_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, parts: int) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` computed as ``parts`` column slices in one ``torch.bmm``.

    Args:
        x: (..., in).
        weight: (out, in) stored column-major, i.e. ``weight.t()`` is a contiguous (in, out).
        bias: (out,) or None.
        parts: number of slices, normally the number of threads; out >= parts.

    Returns:
        (..., out).
    """
    w = weight.t()  # (in, out), contiguous
    n_in, n_out = w.shape
    width = n_out // parts  # columns per slice; the last n_out % parts columns go apart
    rows = x.reshape(-1, n_in)  # (M, in)
    m = rows.shape[0]
    slices = w[:, : width * parts].view(n_in, parts, width).transpose(0, 1)  # (parts, in, width), a view
    y = torch.bmm(rows.unsqueeze(0).expand(parts, m, n_in), slices)  # (parts, M, width): one slice per thread
    y = y.transpose(0, 1).reshape(m, width * parts)  # (M, parts * width), columns back in order
    if width * parts < n_out:
        y = torch.cat([y, rows @ w[:, width * parts :]], dim=1)  # (M, out)
    if bias is not None:
        y = y + bias  # (M, out)
    return y.view(*x.shape[:-1], n_out)  # (..., out)


class ThreadSplitLinear(nn.Linear):
    """An ``nn.Linear`` whose products with a few rows use :func:`split_linear`.

    It holds the same parameters as the layer it replaces (see :meth:`from_linear`), so
    state dicts, tying and saving are unchanged. It falls back to ``F.linear`` for many
    rows, one thread, or a weight that is not column-major.
    """

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> ThreadSplitLinear:
        """A ThreadSplitLinear sharing ``linear``'s weight and bias (nothing is copied)."""
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        new.weight = linear.weight
        new.bias = linear.bias
        new.train(linear.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.get_num_threads()
        rows = x.numel() // self.in_features
        w = self.weight
        if parts < 2 or rows > SPLIT_MAX_ROWS or self.out_features < parts or not w.t().is_contiguous():
            return F.linear(x, w, self.bias)
        return split_linear(x, w, self.bias, parts)


def _column_major(weight: torch.Tensor) -> None:
    """Re-store a contiguous (out, in) weight as (in, out) in place: same shape, strides (1, out)."""
    with torch.no_grad():
        weight.data = weight.data.t().contiguous().t()


def _plain_cpu_float32(w: torch.Tensor) -> bool:
    """A dense CPU float32 tensor (not a tensor subclass such as torchao's quantized weights)."""
    return type(w.data) is torch.Tensor and w.device.type == "cpu" and w.dtype == torch.float32


def prepare_for_decoding(model: nn.Module) -> nn.Module:
    """Make batch-1 CPU decoding faster, in place (see the module docstring); returns ``model``.

    CPU float32 plain ``nn.Linear`` layers only; everything else (CUDA, bf16, quantized
    layers) is left as it is. ``gptforge generate``, ``chat``, ``serve`` and the benchmark
    call it. :func:`~gptforge.generate.engine.generate` does not apply it behind a caller's
    back, because training code wants its layers in the usual layout. Weights are
    re-stored one at a time, so peak memory grows by one matrix at most.
    """
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear or not _plain_cpu_float32(child.weight):
                continue
            w = child.weight
            if w.is_contiguous():
                _column_major(w)  # a tied LM head shares this tensor with the embedding: re-stored once
            if w.numel() >= SPLIT_MIN_WEIGHTS:
                setattr(parent, name, ThreadSplitLinear.from_linear(child))
    return model
