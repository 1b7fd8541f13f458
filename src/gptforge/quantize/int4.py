"""int4 weight quantization: group-wise, asymmetric (default) or symmetric, two values per byte.

A weight ``W`` (N, K) is cut into groups of ``group_size`` consecutive inputs per row
(K must be a multiple of ``group_size``); each group gets its own scale:

* **asymmetric** (default): the group's range [min, max] is split into 15 steps,
  ``scale = (max - min) / 15``, ``zero = min``, ``q = round((w - zero) / scale)`` in 0..15,
  and ``w ~ q * scale + zero``. All 16 levels cover the values that occur, which
  matters for small models whose weight groups are rarely centred on 0.
* **symmetric**: ``scale = max |w| / 7``, ``q = round(w / scale)`` in -8..7 stored as
  ``q + 8`` in 0..15, and ``w ~ (q - 8) * scale``; no zero is stored (one float per
  group instead of two), at the cost of one unused level and a range centred on 0.

Either way each element is within ``scale / 2`` of its dequantized value (rounding to
the nearest level; the extreme values map exactly onto levels, so nothing is clamped).

Packing: element ``2i`` of a row goes in the low nibble of byte ``i`` and element
``2i + 1`` in the high nibble, so a row of K values takes K / 2 bytes.

Matmuls: :func:`int4_linear_reference` unpacks and dequantizes per call (nothing big is
cached), and :class:`Int4CpuKernel` prepares PyTorch's CPU int4 kernel
(``aten._convert_weight_to_int4pack_for_cpu`` + ``aten._weight_int4pack_mm_for_cpu``,
which computes ``w = (q - 8) * scale + zero`` with bf16 activations). Measured on this
CPU for a 3072x768 weight at batch 1: fp32 ``F.linear`` ~120 us, the kernel with bf16
activations ~40 us, per-call dequantization several ms, so the kernel is used whenever it
accepts the shape (it needs N divisible by 16).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Pack values 0..15, (N, K) with K even, into bytes (N, K / 2): low nibble = even index."""
    q = q.to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4)  # (N, K/2)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: (N, K / 2) uint8 -> (N, K) uint8 values 0..15."""
    lo = packed & 0x0F  # (N, K/2) even positions
    hi = packed >> 4  # (N, K/2) odd positions
    return torch.stack((lo, hi), dim=-1).view(packed.shape[0], -1)  # (N, K)


def quantize_int4(
    weight: torch.Tensor, group_size: int, symmetric: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Quantize ``weight`` (N, K) in groups of ``group_size`` along K.

    Returns:
        ``(packed, scales, zeros)``: packed uint8 (N, K / 2), scales float32 (N, K / g),
        zeros float32 (N, K / g) for asymmetric, None for symmetric.
    """
    N, K = weight.shape
    if K % group_size:
        raise ValueError(f"width {K} is not a multiple of group_size {group_size}")
    w = weight.detach().float().view(N, K // group_size, group_size)  # (N, G, g)
    if symmetric:
        absmax = w.abs().amax(dim=-1)  # (N, G)
        scales = torch.where(absmax > 0, absmax / 7, torch.ones_like(absmax))  # (N, G)
        q = torch.round(w / scales[..., None]).clamp_(-8, 7) + 8  # (N, G, g), 0..15
        zeros = None
    else:
        lo, hi = w.amin(dim=-1), w.amax(dim=-1)  # (N, G)
        scales = torch.where(hi > lo, (hi - lo) / 15, torch.ones_like(lo))  # (N, G)
        zeros = lo
        q = torch.round((w - zeros[..., None]) / scales[..., None]).clamp_(0, 15)  # (N, G, g)
    return pack_int4(q.view(N, K)), scales, zeros


def dequantize_int4(
    packed: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The float weight (N, K) behind ``packed`` (N, K / 2)."""
    N, G = scales.shape
    q = unpack_int4(packed).view(N, G, -1).to(torch.float32)  # (N, G, g)
    s = scales.to(torch.float32)[..., None]  # (N, G, 1)
    w = (
        q * s + zeros.to(torch.float32)[..., None] if zeros is not None else (q - 8) * s
    )  # (N, G, g)
    return w.view(N, -1).to(dtype)


def int4_linear_reference(
    x: torch.Tensor,
    packed: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """``x @ W.T + bias`` with W dequantized for this call only. x (..., K) -> (..., N)."""
    w = dequantize_int4(packed, scales, zeros, x.dtype)
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))


def kernel_available() -> bool:
    """Whether this torch build has the int4 CPU weight-only kernels."""
    return hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu") and hasattr(
        torch.ops.aten, "_convert_weight_to_int4pack_for_cpu"
    )


class Int4CpuKernel:
    """The int4 weight in PyTorch's CPU kernel layout, built once from the stored form.

    It holds the kernel's packed weight (the same byte count as ``packed``) and the
    scales/zeros as bf16 (K / g, N, 2), where the kernel's zero is
    ``zero + 8 * scale`` (asymmetric) or 0 (symmetric). The kernel wants N a multiple of
    16, so other N (a 50,257-row LM head) get zero rows appended whose outputs are cut off.
    """

    def __init__(
        self, packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None
    ) -> None:
        N, G = scales.shape
        self.group_size = packed.shape[1] * 2 // G
        self.out_features = N
        pad = -N % 16  # rows added for the kernel (weight 0, scale 0, zero 0: output 0)
        q = unpack_int4(packed).to(torch.int32)  # (N, K) 0..15
        q = torch.nn.functional.pad(q, (0, 0, 0, pad))  # (N + pad, K)
        self.weight = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.contiguous(), 1)
        kzero = (
            zeros.float() + 8 * scales.float() if zeros is not None else torch.zeros_like(scales)
        )
        self.scale_zeros = (
            torch.nn.functional.pad(torch.stack((scales.float(), kzero.float()), dim=-1), (0, 0, 0, 0, 0, pad))
            .transpose(0, 1)
            .contiguous()
            .to(torch.bfloat16)
        )  # (G, N + pad, 2)

    @staticmethod
    def accepts(out_features: int, in_features: int) -> bool:
        return kernel_available() and in_features % 2 == 0

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).to(torch.bfloat16)  # (M, K)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(
            x2, self.weight, self.group_size, self.scale_zeros
        )
        y = y[:, : self.out_features].to(x.dtype)  # (M, N): padding rows cut off
        if bias is not None:
            y = y + bias.to(x.dtype)
        return y.reshape(*shape[:-1], self.out_features)  # (..., N)
