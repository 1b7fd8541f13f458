"""The CPU decoding layout against references: ``F.linear`` for the thread-split product,
and the untouched model for generation, state dicts and saving."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gptforge.generate.cpu_decoding import (
    SPLIT_MAX_ROWS,
    ThreadSplitLinear,
    prepare_for_decoding,
    split_linear,
)
from gptforge.generate.engine import generate
from tests.generate.gen_helpers import tiny_gpt


@pytest.fixture
def three_threads():
    """Three intra-op threads, so the split path runs (with an uneven remainder) on any machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    yield 3
    torch.set_num_threads(before)


def column_major(w: torch.Tensor) -> torch.Tensor:
    return w.t().contiguous().t()


@pytest.mark.parametrize("parts", [1, 2, 3, 4])
@pytest.mark.parametrize("n_out", [8, 37, 97])
@pytest.mark.parametrize("lead_shape", [(1,), (1, 1), (3, 1), (2, 5)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_split_linear_equals_f_linear(parts: int, n_out: int, lead_shape: tuple, with_bias: bool) -> None:
    g = torch.Generator().manual_seed(parts * 1000 + n_out)
    w = torch.randn(n_out, 24, generator=g)
    b = torch.randn(n_out, generator=g) if with_bias else None
    x = torch.randn(*lead_shape, 24, generator=g)
    got = split_linear(x, column_major(w), b, parts)
    assert got.shape == (*lead_shape, n_out)
    torch.testing.assert_close(got, F.linear(x, w, b), rtol=1e-5, atol=1e-5)


def test_split_linear_gradients_equal_f_linear() -> None:
    g = torch.Generator().manual_seed(5)
    w = torch.randn(37, 16, generator=g)
    x = torch.randn(2, 1, 16, generator=g)
    w1 = column_major(w).requires_grad_()
    x1 = x.clone().requires_grad_()
    split_linear(x1, w1, None, 3).square().sum().backward()
    w2 = w.clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    F.linear(x2, w2).square().sum().backward()
    torch.testing.assert_close(w1.grad, w2.grad, rtol=1e-4, atol=1e-5)  # sums in another order
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-5)


def test_thread_split_linear_takes_each_path(three_threads, monkeypatch) -> None:
    import gptforge.generate.cpu_decoding as cpu_decoding

    calls = []
    monkeypatch.setattr(cpu_decoding, "split_linear", lambda *a: calls.append(a[0].shape) or F.linear(*a[:3]))
    base = torch.nn.Linear(16, 37)
    layer = ThreadSplitLinear.from_linear(base)
    assert layer.weight is base.weight and layer.bias is base.bias
    few, many = torch.randn(1, 2, 16), torch.randn(1, SPLIT_MAX_ROWS + 1, 16)
    layer(few)
    assert calls == []  # the weight is still row-major: F.linear
    layer.weight.data = column_major(layer.weight.data)
    layer(few)
    layer(many)
    assert calls == [few.shape]  # split for 2 rows, F.linear for 33
    torch.set_num_threads(1)
    layer(few)
    assert calls == [few.shape]  # one thread: F.linear


def test_prepare_for_decoding_keeps_values_tokens_and_saving(three_threads, tmp_path, monkeypatch) -> None:
    from gptforge.model.loading import load_model, save_model

    monkeypatch.setattr("gptforge.generate.cpu_decoding.SPLIT_MIN_WEIGHTS", 0)  # split even tiny layers

    model = tiny_gpt()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params_before = [id(p) for p in model.parameters()]
    idx = torch.tensor([[3, 1, 4, 1, 5]])
    expected = generate(model, idx, 40, temperature=0)
    prepare_for_decoding(model)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(type(m) is ThreadSplitLinear for m in linears)
    assert [id(p) for p in model.parameters()] == params_before  # the same parameter objects
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied
    assert not model.lm_head.weight.is_contiguous()  # now stored (in, out)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(generate(model, idx, 40, temperature=0), expected)
    batch = torch.tensor([[3, 1, 4, 1, 5], [2, 7, 1, 8, 2]])
    assert torch.equal(generate(model, batch, 20, temperature=0)[0], expected[0, :25])
    save_model(model, tmp_path / "m")
    again = load_model(tmp_path / "m")
    for k, v in again.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_prepare_for_decoding_splits_only_large_layers() -> None:
    model = tiny_gpt(vocab_size=5000)  # LM head 5000 x 32 = 160,000 weights; block layers <= 4,096
    prepare_for_decoding(model)
    assert type(model.lm_head) is ThreadSplitLinear
    block = model.transformer.h[0]
    assert type(block.mlp.c_fc) is torch.nn.Linear and not block.mlp.c_fc.weight.is_contiguous()


def test_prepare_for_decoding_leaves_other_dtypes_alone() -> None:
    model = tiny_gpt().to(torch.bfloat16)
    prepare_for_decoding(model)
    assert all(type(m) is torch.nn.Linear for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert model.lm_head.weight.is_contiguous()
