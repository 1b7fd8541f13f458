"""The CPU decoding kernels against references: ``F.linear`` for every kernel, and the
untouched model for generation, state dicts, saving and a later training step."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import gptforge.generate.cpu_decoding as cpu_decoding
from gptforge.generate.cpu_decoding import (
    KERNELS,
    MAX_ROWS,
    ONE_ROW_KERNELS,
    DecodeLinear,
    choose_kernel,
    prepare_for_decoding,
    split_linear,
    step_read_bytes,
    time_kernels,
)
from gptforge.generate.engine import generate
from tests.generate.gen_helpers import column_major, tiny_gpt


@pytest.fixture
def fresh_choices(monkeypatch):
    """An empty kernel-choice table, and every layer large enough to get a kernel."""
    monkeypatch.setattr(cpu_decoding, "_CHOICES", {})
    monkeypatch.setattr(cpu_decoding, "MIN_WEIGHTS", 0)


@pytest.mark.parametrize("parts", [1, 3])
@pytest.mark.parametrize("n_out", [37, 97])
@pytest.mark.parametrize("lead_shape", [(1,), (2, 5)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_split_linear_equals_f_linear(parts: int, n_out: int, lead_shape: tuple, with_bias: bool) -> None:
    g = torch.Generator().manual_seed(parts * 1000 + n_out)
    w = torch.randn(n_out, 24, generator=g)
    b = torch.randn(n_out, generator=g) if with_bias else None
    x = torch.randn(*lead_shape, 24, generator=g)
    got = split_linear(x, column_major(w), b, parts)
    assert got.shape == (*lead_shape, n_out)
    torch.testing.assert_close(got, F.linear(x, w, b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize("parts", [1, 2, 3])
@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_kernel_equals_f_linear(kernel: str, parts: int, m: int, dtype: torch.dtype) -> None:
    if m > 1 and kernel in ONE_ROW_KERNELS:
        pytest.skip("a one-row kernel")
    g = torch.Generator().manual_seed(parts * 10 + m)
    w = torch.randn(37, 24, generator=g)
    x = torch.randn(m, 24, generator=g)
    layout, fn = KERNELS[kernel]
    stored = (column_major(w) if layout == "col" else w).to(dtype)
    got = fn(x.to(dtype), stored, parts)
    assert got.shape == (m, 37) and got.dtype == dtype
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=5e-2)
    torch.testing.assert_close(got.float(), F.linear(x, w), **tol)


def test_decode_linear_uses_its_kernel_only_for_inference_with_few_rows(three_threads, monkeypatch) -> None:
    calls = []
    layout, fn = KERNELS["split-in-out"]
    monkeypatch.setitem(KERNELS, "split-in-out", (layout, lambda x2, w, p: calls.append(x2.shape) or fn(x2, w, p)))
    base = torch.nn.Linear(16, 37)
    ref = copy.deepcopy(base)
    layer = DecodeLinear.from_linear(base, "split-in-out").eval()
    assert layer.weight is base.weight and layer.bias is base.bias
    few, many = torch.randn(1, 2, 16), torch.randn(1, MAX_ROWS + 1, 16)
    with torch.no_grad():
        layer(few)
        assert calls == []  # the weight is still (out, in): F.linear
        layer.weight.data = column_major(layer.weight.data)
        torch.testing.assert_close(layer(few), ref(few), rtol=1e-5, atol=1e-5)
        layer(many)
        assert calls == [(2, 16)]  # kernel for 2 rows, F.linear for 33
    layer(few)  # gradients on: F.linear
    assert calls == [(2, 16)]
    layer.train()
    assert layer.weight.is_contiguous()  # train() restores the (out, in) layout
    torch.set_num_threads(1)
    with torch.no_grad():
        layer.eval()
        layer.weight.data = column_major(layer.weight.data)
        layer(few)
    assert calls == [(2, 16)]  # one thread: F.linear


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_prepare_for_decoding_keeps_values_tokens_and_saving(kernel, three_threads, fresh_choices, tmp_path,
                                                             monkeypatch) -> None:
    from gptforge.model.loading import load_model, save_model

    monkeypatch.setattr(cpu_decoding, "choose_kernel", lambda shape, dtype, count: kernel)
    untouched = tiny_gpt().train()  # training mode: generate leaves it as it is (the reference)
    model = tiny_gpt()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params_before = [id(p) for p in model.parameters()]
    idx = torch.tensor([[3, 1, 4, 1, 5]])
    expected = generate(untouched, idx, 40, temperature=0)
    assert not any(isinstance(m, DecodeLinear) for m in untouched.modules())
    got = generate(model, idx, 40, temperature=0)  # eval mode: prepared on this first call
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(type(m) is DecodeLinear and m.kernel == kernel for m in linears)
    assert torch.equal(got, expected)
    assert [id(p) for p in model.parameters()] == params_before  # the same parameter objects
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied
    assert model.lm_head.weight.is_contiguous() == (KERNELS[kernel][0] == "row")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    batch = torch.tensor([[3, 1, 4, 1, 5], [2, 7, 1, 8, 2]])
    assert torch.equal(generate(model, batch, 20, temperature=0)[0], expected[0, :25])
    save_model(model, tmp_path / "m")
    again = load_model(tmp_path / "m")
    for k, v in again.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("kernel", ["split-in-out", "split-rows"])
def test_training_after_decoding_is_what_it_was(kernel, three_threads, fresh_choices, monkeypatch) -> None:
    """A model that generated, then trains, takes the same steps as one that never generated."""
    monkeypatch.setattr(cpu_decoding, "choose_kernel", lambda shape, dtype, count: kernel)
    reference = tiny_gpt()
    model = tiny_gpt()
    generate(model, torch.tensor([[3, 1, 4]]), 8, temperature=0)
    assert type(model.lm_head) is DecodeLinear
    models = (model.train(), reference.train())
    assert all(p.is_contiguous() for p in model.parameters())  # the usual layout again
    for m in models:
        m.opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    x = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        losses = []
        for m in models:
            _, loss = m(x[:, :-1], x[:, 1:])
            m.opt.zero_grad()
            loss.backward()
            m.opt.step()
            losses.append(loss.item())
        assert losses[0] == losses[1]
    for a, b in zip(model.parameters(), reference.parameters()):
        assert torch.equal(a, b) and a.stride() == b.stride()


def test_generation_in_training_mode_prepares_nothing(fresh_choices) -> None:
    model = tiny_gpt().train()
    generate(model, torch.tensor([[3, 1, 4]]), 4, temperature=0)
    assert model.training and not any(isinstance(m, DecodeLinear) for m in model.modules())


@pytest.mark.slow  # ~22 s: bf16 kernels are emulated (slow) on CPUs without bf16 arithmetic
def test_bf16_model_gets_kernels_and_close_logits(fresh_choices) -> None:
    model = tiny_gpt().to(torch.bfloat16)
    reference = copy.deepcopy(model)
    prepare_for_decoding(model)
    assert type(model.lm_head) is DecodeLinear and model.lm_head.weight.dtype == torch.bfloat16
    idx = torch.tensor([[3, 1, 4, 1, 5]])
    with torch.no_grad():
        torch.testing.assert_close(model(idx).float(), reference(idx).float(), rtol=2e-2, atol=2e-2)


def test_the_choice_is_the_fastest_measured(fresh_choices, monkeypatch) -> None:
    times = {k: 1.0 + i for i, k in enumerate(KERNELS)}
    times["mv-in-out"] = 0.5
    monkeypatch.setattr(cpu_decoding, "time_kernels", lambda *a, **k: dict(times))
    assert choose_kernel((64, 32), torch.float32, 3) == "mv-in-out"
    times["mv-in-out"] = 9.0
    assert choose_kernel((64, 32), torch.float32, 3) == "mv-in-out"  # kept for the process
    assert choose_kernel((64, 16), torch.float32, 3) == "linear"


def test_time_kernels_times_every_candidate(monkeypatch) -> None:
    monkeypatch.setattr(cpu_decoding, "PROBE_BYTES", 1 << 16)
    monkeypatch.setattr(cpu_decoding, "PROBE_ROUNDS", 1)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        times = time_kernels((64, 32), torch.float32, 2)
    finally:
        torch.set_num_threads(before)
    assert set(times) == set(KERNELS) and all(0 < t < 1 for t in times.values())


def test_step_read_bytes_counts_the_tied_matrix_once() -> None:
    model = tiny_gpt()
    unique = {p.data_ptr(): p for p in model.parameters()}
    assert len(unique) < len(list(model.named_parameters(remove_duplicate=False)))
    assert step_read_bytes(model) == sum(p.numel() * 4 for p in unique.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_query_attention_equals_sdpa(dtype: torch.dtype) -> None:
    from gptforge.model.gpt import one_query_attention

    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 3, 1, 8, generator=g).to(dtype)
    cache = torch.randn(2, 2, 3, 20, 8, generator=g).to(dtype)
    k, v = cache[0, :, :, :13], cache[1, :, :, :13]  # views of a longer cache
    got = one_query_attention(q, k, v)
    assert got.dtype == dtype
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(got.float(), F.scaled_dot_product_attention(q.float(), k.float(), v.float()), **tol)


@pytest.mark.parametrize("written_out", [False, True])
def test_decoding_attention_choice_keeps_tokens(written_out: bool, fresh_choices, monkeypatch) -> None:
    monkeypatch.setattr(cpu_decoding, "choose_attention", lambda *a, **k: written_out)
    reference = tiny_gpt().train()
    model = tiny_gpt()
    idx = torch.tensor([[3, 1, 4, 1, 5]])
    assert torch.equal(generate(model, idx, 30, temperature=0), generate(reference, idx, 30, temperature=0))
    assert all(b.attn.decode_math == written_out for b in model.transformer.h)
    assert not any(b.attn.decode_math for b in reference.transformer.h)


def test_bf16_prefill_upcast_matches_f_linear(fresh_choices, monkeypatch) -> None:
    monkeypatch.setattr(cpu_decoding, "choose_upcast", lambda *a: True)
    base = torch.nn.Linear(24, 37).to(torch.bfloat16)
    layer = DecodeLinear.from_linear(copy.deepcopy(base), "mv").eval()
    layer.upcast = True
    x = torch.randn(1, 5, 24).to(torch.bfloat16)
    with torch.no_grad():
        torch.testing.assert_close(layer(x).float(), base(x).float(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize("n_out", [36, 37])  # 37: an uneven split, the last output goes apart
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_row_plan_equals_f_linear_and_follows_the_weight(kernel, n_out, with_bias, dtype, three_threads) -> None:
    """The one-row plan (views and bias made once) gives F.linear's values, and is re-derived
    when the weight is re-stored (train() + a new layout, .to()) instead of reading old storage."""
    g = torch.Generator().manual_seed(n_out)
    base = torch.nn.Linear(24, n_out, bias=with_bias).to(dtype)
    with torch.no_grad():
        base.weight.copy_(torch.randn(n_out, 24, generator=g))
        if with_bias:
            base.bias.copy_(torch.randn(n_out, generator=g))
    layer = DecodeLinear.from_linear(copy.deepcopy(base), kernel).eval()
    if KERNELS[kernel][0] == "col":
        layer.weight.data = column_major(layer.weight.data)
    x = torch.randn(1, 1, 24, generator=g).to(dtype)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=5e-2)
    with torch.inference_mode():
        assert layer._one_row() is not None  # every kernel has a one-row plan with 3 threads
        got = layer(x)
        assert got.shape == (1, 1, n_out) and got.dtype == dtype
        torch.testing.assert_close(got.float(), F.linear(x, base.weight, base.bias).float(), **tol)
    layer.train()
    assert layer._plan is None  # its views must not keep the old storage alive
    with torch.no_grad():
        layer.weight.mul_(2)  # training changed the weight
    layer.eval()
    if KERNELS[kernel][0] == "col":
        layer.weight.data = column_major(layer.weight.data)
    with torch.inference_mode():
        torch.testing.assert_close(layer(x).float(), F.linear(x, 2 * base.weight, base.bias).float(), **tol)
        layer.to(torch.float32)
        torch.testing.assert_close(layer(x.float()), F.linear(x.float(), 2 * base.weight.float(),
                                                              None if base.bias is None else base.bias.float()),
                                   **tol)


class _ProductLog(torch.overrides.TorchFunctionMode):
    """Records (name, shapes, strides of the matrix operands) of every bmm / baddbmm / mv / linear."""

    NAMES = {"bmm", "baddbmm", "mv", "addmv", "linear"}

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.NAMES:
            mats = [a for a in args if isinstance(a, torch.Tensor) and a.dim() >= 2]
            self.calls.append((name.removeprefix("badd").removeprefix("add"),
                               [tuple(m.shape) for m in mats], [m.stride() for m in mats]))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_the_one_row_plan_runs_the_product_that_was_timed(kernel, three_threads) -> None:
    """The plan must hand BLAS the operands the timing loop handed it, strides included: a
    (parts, in, 1) vector viewed with strides (0, 1, 1) instead of the timed (0, 1, in) holds
    the same values but took a 3.6x slower path on an AMD EPYC Zen 4, and decoding fell to a
    quarter of what the timing promised (0.57x transformers)."""
    n_out, n_in = 36, 24
    w = torch.randn(n_out, n_in)
    layer = DecodeLinear.from_linear(torch.nn.Linear(n_in, n_out, bias=False), kernel).eval()
    with torch.no_grad():
        layer.weight.copy_(w)
    weight = column_major(w) if KERNELS[kernel][0] == "col" else w
    if KERNELS[kernel][0] == "col":
        layer.weight.data = column_major(layer.weight.data)
    x = torch.randn(1, n_in)
    with torch.inference_mode():
        with _ProductLog() as timed:  # what time_kernels measures: the kernel's own function
            KERNELS[kernel][1](x, weight, torch.get_num_threads())
        with _ProductLog() as planned:  # what decoding runs: the one-row plan
            layer(x.view(1, 1, n_in))
    assert timed.calls and planned.calls == timed.calls
