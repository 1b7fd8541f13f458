"""The batched-step kernels against ``F.linear``, the untouched model, and each sequence alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import gptforge.generate.cpu_decoding as cpu_decoding
import gptforge.serve.batched_decoding as batched
from gptforge.generate.cpu_decoding import KERNELS
from gptforge.generate.engine import generate
from gptforge.serve.batched_decoding import (
    ROWS_KERNELS,
    BatchedDecodeLinear,
    choose_kernels,
    prepare_for_batching,
)
from tests.generate.gen_helpers import column_major, tiny_gpt


@pytest.fixture
def fresh_choices(monkeypatch):
    """Empty kernel-choice tables, and every layer large enough to get kernels."""
    monkeypatch.setattr(cpu_decoding, "_CHOICES", {})
    monkeypatch.setattr(batched, "_CHOICES", {})
    monkeypatch.setattr(cpu_decoding, "MIN_WEIGHTS", 0)


@pytest.mark.parametrize("kernel", sorted(ROWS_KERNELS))
@pytest.mark.parametrize("parts", [1, 2, 3])
@pytest.mark.parametrize("m", [2, 7])
def test_every_rows_kernel_equals_f_linear(kernel: str, parts: int, m: int) -> None:
    g = torch.Generator().manual_seed(parts * 10 + m)
    w = torch.randn(37, 24, generator=g)
    x = torch.randn(m, 24, generator=g)
    layout, fn = ROWS_KERNELS[kernel]
    got = fn(x, column_major(w) if layout == "col" else w, parts)
    assert got.shape == (m, 37)
    torch.testing.assert_close(got, F.linear(x, w), rtol=1e-5, atol=1e-5)


def test_choose_kernels_takes_the_layout_with_the_smaller_worst_slowdown() -> None:
    one = {"mv-in-out": 1.0, "linear": 1.2, "linear-in-out": 1.1}
    many = {"linear-in-out": 4.0, "mm-t": 1.0, "linear": 2.0}
    assert choose_kernels(one, many) == ("linear", "mm-t")  # the docstring's example
    assert choose_kernels(one, {"linear-in-out": 1.1, "mm-t": 1.0}) == ("mv-in-out", "linear-in-out")
    # a tie goes to the one-row winner's layout; kernels that time_kernels skipped (inf) are ignored
    assert choose_kernels({"mv-in-out": 1.0, "linear": 2.0, "mv": float("inf")},
                          {"split-in-out": 2.0, "mm-t": 1.0}) == ("mv-in-out", "split-in-out")


@pytest.mark.parametrize("one_kernel, rows_kernel", [("mv-in-out", "mm-t-in-out"), ("linear", "mm-t"),
                                                     ("split-in-out", "split-in-out"), ("mv", "split-rows")])
def test_prepare_for_batching_keeps_values_and_tokens(one_kernel, rows_kernel, three_threads, fresh_choices,
                                                      monkeypatch) -> None:
    """Forced choices (both layouts, every kind of kernel): the same parameters and values,
    greedy tokens equal to an untouched model's, batched logits equal within float tolerance,
    and the rows kernel used for exactly the products of 2 .. max_rows rows."""
    monkeypatch.setattr(batched, "choose_kernels", lambda one, many: (one_kernel, rows_kernel))
    monkeypatch.setattr(cpu_decoding, "time_kernels", lambda *a: {k: 1.0 for k in KERNELS})
    monkeypatch.setattr(batched, "time_rows_kernels", lambda *a: {k: 1.0 for k in ROWS_KERNELS})
    calls = []
    layout, fn = ROWS_KERNELS[rows_kernel]
    monkeypatch.setitem(ROWS_KERNELS, rows_kernel, (layout, lambda x2, w, p: calls.append(x2.shape[0]) or fn(x2, w, p)))
    untouched = tiny_gpt()
    model = tiny_gpt()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params_before = [id(p) for p in model.parameters()]
    prepare_for_batching(model, rows=4, max_rows=40)
    layers = [m for m in model.modules() if isinstance(m, BatchedDecodeLinear)]
    assert layers and all(m.kernel == one_kernel and m.rows_kernel == rows_kernel for m in layers)
    assert [id(p) for p in model.parameters()] == params_before
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.lm_head.weight is model.transformer.wte.weight
    idx = torch.tensor([[3, 1, 4, 1, 5]])
    assert torch.equal(generate(model, idx, 30, temperature=0), generate(untouched.train(), idx, 30, temperature=0))
    untouched.eval()
    with torch.inference_mode():
        for rows in (1, 3, 40, 41):
            x = torch.randint(0, 97, (rows, 1), generator=torch.Generator().manual_seed(rows))
            calls.clear()
            torch.testing.assert_close(model(x), untouched(x), rtol=1e-4, atol=1e-4)
            assert bool(calls) == (2 <= rows <= 40), (rows, calls)
    model.train()  # training sees F.linear on (out, in) weights again
    assert all(m.weight.is_contiguous() for m in layers)
    x = torch.randint(0, 97, (3, 1))
    calls.clear()
    model(x).sum().backward()
    assert calls == []
