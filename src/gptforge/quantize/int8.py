"""int8 weight quantization: per-output-channel absmax, symmetric.

Each row ``n`` of a weight ``W`` (N, K) gets one scale ``s[n] = max_k |W[n, k]| / 127``
and is stored as ``q[n, k] = round(W[n, k] / s[n])`` in int8 (range -127..127, so the
grid is symmetric around 0). Dequantized ``q * s`` is within ``s[n] / 2`` of ``W`` for
every element of row ``n`` (rounding to the nearest grid point; no clamping happens
because the largest |W| maps to exactly 127).

Matmuls (``x @ W.T``) come in three flavours:

* :func:`int8_linear_reference`: dequantize then ``F.linear`` in the activations'
  dtype. Exact up to float rounding; the reference the others are tested against.
* :func:`int8_linear_kernel`: PyTorch's CPU weight-only kernel
  ``aten._weight_int8pack_mm(x, q, scales)``. On torch 2.13 it is fast only for
  bfloat16 activations (measured on this CPU, a 3072x768 weight at batch 1: fp32
  ``F.linear`` 122 us, the kernel with fp32 inputs 770 us, with bf16 inputs 33 us), so
  activations are rounded to bf16 for the call and the result cast back.
* :func:`int8_linear_dynamic`: "dynamic" int8, as in ``torch.ao``'s dynamic
  quantization: activations are quantized per token (absmax / 127) on the fly and the
  product runs in integers (``torch._int_mm``, int32 accumulators), then both scales
  are applied.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

QMAX = 127  # symmetric: -127..127 (-128 unused, so that the grid is symmetric)


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``weight`` (N, K) per row.

    Returns:
        ``(q, scales)``: q int8 (N, K), scales float32 (N,). An all-zero row gets scale 1
        (any scale represents it exactly) so nothing divides by zero.
    """
    w = weight.detach().float()
    absmax = w.abs().amax(dim=1)  # (N,)
    scales = torch.where(absmax > 0, absmax / QMAX, torch.ones_like(absmax))  # (N,)
    q = torch.round(w / scales[:, None]).clamp_(-QMAX, QMAX).to(torch.int8)  # (N, K)
    return q, scales


def dequantize_int8(
    q: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``q * scales`` per row: (N, K) in ``dtype``."""
    return (q.to(torch.float32) * scales.to(torch.float32)[:, None]).to(dtype)


def kernel_available() -> bool:
    """Whether this torch build has the int8 weight-only CPU matmul."""
    return hasattr(torch.ops.aten, "_weight_int8pack_mm")


def int8_linear_reference(
    x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``x @ (q * s).T + bias`` computed from the dequantized weight. x (..., K) -> (..., N)."""
    return F.linear(
        x, dequantize_int8(q, scales, x.dtype), None if bias is None else bias.to(x.dtype)
    )


def int8_linear_kernel(
    x: torch.Tensor, q: torch.Tensor, scales_bf16: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """The CPU kernel path (bf16 activations and scales, see the module docstring). x (..., K) -> (..., N)."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1]).to(torch.bfloat16)  # (M, K); the kernel wants 2-D
    y = torch.ops.aten._weight_int8pack_mm(x2, q, scales_bf16).to(x.dtype)  # (M, N)
    if bias is not None:
        y = y + bias.to(x.dtype)
    return y.view(*shape[:-1], q.shape[0])  # (..., N)


def quantize_activations(x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (per-token) absmax int8 quantization of activations (M, K) -> (int8 (M, K), scales (M, 1))."""
    absmax = x2.abs().amax(dim=1, keepdim=True).float()  # (M, 1)
    sx = torch.where(absmax > 0, absmax / QMAX, torch.ones_like(absmax))  # (M, 1)
    xq = torch.round(x2.float() / sx).clamp_(-QMAX, QMAX).to(torch.int8)  # (M, K)
    return xq, sx


def int8_linear_dynamic(
    x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """Dynamic int8: activations quantized per token, integer matmul, both scales applied after."""
    shape = x.shape
    xq, sx = quantize_activations(x.reshape(-1, shape[-1]))  # (M, K), (M, 1)
    try:
        acc = torch._int_mm(xq, q.t())  # (M, N) int32
    except RuntimeError:  # e.g. CUDA wants M > 16 and multiples of 8: the same math in float
        acc = xq.float() @ q.float().t()  # exact while K * 127^2 < 2^24 (K < 1040)
    y = acc.float() * sx * scales.float()[None, :]  # (M, N)
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype).view(*shape[:-1], q.shape[0])  # (..., N)
