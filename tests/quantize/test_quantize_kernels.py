"""int8 / int4 quantization math against its definition: error bounds, packing, kernels vs dequantize."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gptforge.quantize import int4, int8
from gptforge.quantize.modules import QuantLinear


def _weights(n: int = 48, k: int = 128, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.02
    w[1] *= 50  # a row with a much larger range
    w[2, 5] = 0.9  # an outlier inside a row
    w[3] = 0.0  # an all-zero row
    w[4] += 0.3  # a row far from zero-centred (asymmetric groups help here)
    return w


def test_int8_error_within_half_a_step_per_row() -> None:
    w = _weights()
    q, s = int8.quantize_int8(w)
    assert q.dtype == torch.int8 and s.shape == (w.shape[0],)
    assert int(q.abs().max()) <= 127
    deq = int8.dequantize_int8(q, s)
    err = (w - deq).abs()  # (N, K)
    assert torch.all(err <= s[:, None] / 2 * (1 + 1e-5) + 1e-12)
    assert torch.equal(deq[3], torch.zeros_like(deq[3]))  # zero row stays exactly zero
    # the largest |w| of each nonzero row maps to exactly +-127
    nz = w.abs().amax(1) > 0
    assert torch.all(q[nz].abs().amax(1) == 127)


@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("symmetric", [False, True])
def test_int4_error_within_half_a_step_per_group(group_size: int, symmetric: bool) -> None:
    w = _weights(k=256)
    packed, scales, zeros = int4.quantize_int4(w, group_size, symmetric)
    n, k = w.shape
    assert packed.shape == (n, k // 2) and packed.dtype == torch.uint8
    assert scales.shape == (n, k // group_size)
    assert (zeros is None) == symmetric
    deq = int4.dequantize_int4(packed, scales, zeros)
    err = (w - deq).abs().view(n, k // group_size, group_size)
    bound = scales[..., None] / 2 * (1 + 1e-5) + 1e-12
    assert torch.all(err <= bound)
    # The step is what the scheme promises: range / 15 (asymmetric), absmax / 7 (symmetric).
    groups = w.view(n, k // group_size, group_size)
    if symmetric:
        expect = groups.abs().amax(-1) / 7
    else:
        expect = (groups.amax(-1) - groups.amin(-1)) / 15
    nz = expect > 0
    torch.testing.assert_close(scales[nz], expect[nz])


def test_int4_asymmetric_beats_symmetric_on_off_centre_rows() -> None:
    w = _weights(k=256)
    errs = {}
    for sym in (False, True):
        deq = int4.dequantize_int4(*int4.quantize_int4(w, 64, sym))
        errs[sym] = (w[4] - deq[4]).abs().mean().item()
    assert errs[False] < errs[True]


def test_int4_pack_round_trips_every_nibble_at_every_position() -> None:
    n, k = 16, 64
    # q[i, j] = (i + j) % 16: every value appears at even and odd positions of some row
    q = ((torch.arange(n)[:, None] + torch.arange(k)[None, :]) % 16).to(torch.uint8)
    packed = int4.pack_int4(q)
    assert packed.shape == (n, k // 2)
    assert torch.equal(int4.unpack_int4(packed), q)
    for v in range(16):
        assert bool((q[:, 0::2] == v).any()) and bool((q[:, 1::2] == v).any())
    # the layout: element 2i in the low nibble, 2i + 1 in the high nibble
    assert int4.pack_int4(torch.tensor([[1, 2, 15, 0]])).tolist() == [[0x21, 0x0F]]
    rnd = torch.randint(0, 16, (7, 30), generator=torch.Generator().manual_seed(1)).to(torch.uint8)
    assert torch.equal(int4.unpack_int4(int4.pack_int4(rnd)), rnd)


def test_int4_rejects_width_not_divisible_by_group() -> None:
    with pytest.raises(ValueError, match="not a multiple"):
        int4.quantize_int4(torch.randn(16, 96), 64)


def _bf16_bound(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Elementwise error allowed when activations and the output are rounded to bfloat16
    (8 significant bits: relative error <= 2^-8 each) and scales too: ~4 roundings of 2^-8."""
    return 4 * 2.0**-8 * (x.abs() @ w.abs().t()) + 1e-6


@pytest.mark.skipif(not int8.kernel_available(), reason="no aten._weight_int8pack_mm in this torch")
def test_int8_kernel_matches_dequantize_reference() -> None:
    w = _weights(n=64, k=96)
    q, s = int8.quantize_int8(w)
    x = torch.randn(2, 5, 96, generator=torch.Generator().manual_seed(2))
    bias = torch.randn(64)
    deq = int8.dequantize_int8(q, s).double()
    ref = (x.double() @ deq.t() + bias.double()).float()  # float64 reference
    fast = int8.int8_linear_kernel(x, q, s.to(torch.bfloat16), bias)
    assert fast.shape == ref.shape and fast.dtype == x.dtype
    assert torch.all((fast - ref).abs() <= _bf16_bound(x.reshape(-1, 96), deq.float()).view_as(ref))
    slow = int8.int8_linear_reference(x, q, s, bias)
    torch.testing.assert_close(slow, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not int8.kernel_available(), reason="no aten._weight_int8pack_mm in this torch")
def test_quantlinear_kernel_handles_unaligned_weights() -> None:
    """Weights read from a file can start at any byte; the kernel crashes on those, so they are copied."""
    lin = torch.nn.Linear(32, 48)
    m = QuantLinear.from_linear(lin, "int8")
    q = m.qweight
    buf = torch.zeros(q.numel() + 8, dtype=torch.int8)
    buf[8:] = q.reshape(-1)
    m.qweight = buf[8:].view_as(q)  # deliberately misaligned by 8 bytes
    assert m.qweight.data_ptr() % 16 != 0
    x = torch.randn(32, 32)
    y = m(x)
    ref = F.linear(x, m.dequantized_weight(), m.bias)
    assert torch.all((y - ref).abs() <= _bf16_bound(x, m.dequantized_weight()) + 1e-5)


def test_int8_dynamic_within_activation_rounding_bound() -> None:
    w = _weights(n=64, k=96)
    q, s = int8.quantize_int8(w)
    x = torch.randn(7, 96, generator=torch.Generator().manual_seed(3))
    deq = int8.dequantize_int8(q, s)
    ref = x.double() @ deq.double().t()
    y = int8.int8_linear_dynamic(x, q, s, None)
    sx = x.abs().amax(1, keepdim=True) / 127  # (M, 1) the per-token step
    bound = sx.double() / 2 * deq.abs().double().sum(1)[None, :] * (1 + 1e-4) + 1e-5  # (M, N)
    assert torch.all((y.double() - ref).abs() <= bound)
    assert (y.double() - ref).abs().max() > 0  # it really quantized the activations


@pytest.mark.skipif(not int4.kernel_available(), reason="no int4 CPU kernel in this torch")
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("n", [64, 37])  # 37: not a multiple of 16, the kernel gets padding rows
def test_int4_kernel_matches_dequantize_reference(symmetric: bool, n: int) -> None:
    w = _weights(n=n, k=128)
    packed, scales, zeros = int4.quantize_int4(w, 32, symmetric)
    assert int4.Int4CpuKernel.accepts(n, 128)
    kernel = int4.Int4CpuKernel(packed, scales, zeros)
    x = torch.randn(3, 128, generator=torch.Generator().manual_seed(4))
    deq = int4.dequantize_int4(packed, scales, zeros)
    ref = x.double() @ deq.double().t()
    y = kernel(x, None)
    # zero + 8 * scale is rounded to bf16 too: allow its rounding on every term
    zterm = (scales.abs() * 8 + (zeros.abs() if zeros is not None else 0)).repeat_interleave(
        32, dim=1
    )
    bound = _bf16_bound(x, deq) + 2.0**-8 * (x.abs() @ zterm.t())
    assert torch.all((y.double() - ref).abs() <= bound.double())
    torch.testing.assert_close(
        int4.int4_linear_reference(x, packed, scales, zeros, None),
        ref.float(),
        rtol=1e-5,
        atol=1e-5,
    )


def test_stored_bytes_meet_size_targets() -> None:
    """GPT-2 124M's MLP shape: int8 <= 27% and int4 (g=64) <= 16% of the fp32 weight bytes."""
    lin = torch.nn.Linear(768, 3072)
    fp32 = lin.weight.numel() * 4
    assert QuantLinear.from_linear(lin, "int8").stored_bytes() / fp32 <= 0.27
    assert QuantLinear.from_linear(lin, "int4", group_size=64).stored_bytes() / fp32 <= 0.16
