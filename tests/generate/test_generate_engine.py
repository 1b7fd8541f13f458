"""The decoding engine against references: uncached recomputation, one-by-one prompts,
a hand-written sliding-window loop, and Hugging Face transformers' generate."""

from __future__ import annotations

import pytest
import torch

from gptforge.errors import ConfigError, ModelError
from gptforge.generate.engine import GenerationConfig, generate, stream_tokens
from tests.generate.gen_helpers import distinct_new, peaked_gpt, tiny_gpt


@torch.no_grad()
def uncached_greedy(model: torch.nn.Module, idx: torch.Tensor, n: int, keep: int | None = None) -> torch.Tensor:
    """Reference: recompute the full forward over the window every step (no cache).

    The window follows the engine's documented policy: it starts at the last block_size
    prompt tokens and, when it would exceed block_size, restarts from the last `keep` tokens.
    """
    block = model.config.block_size
    keep = keep or (3 * block) // 4
    seq = idx[0].tolist()
    offset = max(0, len(seq) - block)
    for _ in range(n):
        logits = model(torch.tensor([seq[offset:]]))[0, -1]
        seq.append(int(logits.argmax()))
        if len(seq) - offset > block:
            offset = len(seq) - keep
    return torch.tensor([seq])


# The GPT-2 model, and the modern one (rotary positions, RMSNorm, QK-norm, SwiGLU, capped logits).
ARCHS = [{}, dict(positions="rope", normalization="rmsnorm", qk_norm=True, activation="swiglu",
                  mlp_multiple_of=32, bias=False, tie_weights=False, logit_softcap=15.0)]
ARCH_IDS = ["gpt2", "modern"]


@pytest.mark.parametrize("arch", ARCHS, ids=ARCH_IDS)
def test_cached_equals_uncached_200_steps(arch: dict) -> None:
    model = peaked_gpt(block_size=256, **arch)
    idx = torch.randint(0, 97, (1, 7), generator=torch.Generator().manual_seed(1))
    out = generate(model, idx, 200, temperature=0)
    assert out.shape == (1, 207)
    assert distinct_new(out, 7) > 10  # the output depends on the context (a forgetful cache shows)
    assert torch.equal(out, uncached_greedy(model, idx, 200))


@pytest.mark.parametrize("arch", ARCHS, ids=ARCH_IDS)
@pytest.mark.parametrize("attention", ["sdpa", "explicit"])
def test_sliding_window_matches_reference_loop(attention: str, arch: dict) -> None:
    """Prompt + new tokens overflow the 32-token context several times: no crash, and
    every token equals the uncached loop with the same window policy."""
    model = peaked_gpt(block_size=32, attention=attention, **arch)
    idx = torch.randint(0, 97, (1, 40), generator=torch.Generator().manual_seed(2))  # longer than the context
    out = generate(model, idx, 60, temperature=0)
    assert out.shape == (1, 100)
    assert distinct_new(out, 40) > 10
    assert torch.equal(out[:, :40], idx)
    assert torch.equal(out, uncached_greedy(model, idx, 60))
    out_keep = generate(model, idx, 60, temperature=0, context_keep=10)
    assert torch.equal(out_keep, uncached_greedy(model, idx, 60, keep=10))


@pytest.mark.parametrize("arch", ARCHS, ids=ARCH_IDS)
def test_batched_left_padding_equals_one_by_one(arch: dict) -> None:
    model = tiny_gpt(**arch)
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 97, (n,), generator=g) for n in (3, 11, 7, 1)]
    T = max(len(p) for p in prompts)
    idx = torch.stack([torch.cat([torch.zeros(T - len(p), dtype=torch.long), p]) for p in prompts])
    mask = torch.stack([torch.cat([torch.zeros(T - len(p)), torch.ones(len(p))]) for p in prompts]).long()
    batched = generate(model, idx, 30, temperature=0, attention_mask=mask)
    for i, p in enumerate(prompts):
        alone = generate(model, p[None], 30, temperature=0)
        assert torch.equal(batched[i, T:], alone[0, len(p):]), f"row {i}"


@pytest.mark.parametrize("arch", ARCHS, ids=ARCH_IDS)
def test_batched_padding_with_sliding_window(arch: dict) -> None:
    model = tiny_gpt(block_size=32, **arch)
    g = torch.Generator().manual_seed(4)
    prompts = [torch.randint(0, 97, (n,), generator=g) for n in (5, 20)]
    idx = torch.stack([torch.cat([torch.zeros(15, dtype=torch.long), prompts[0]]), prompts[1]])
    mask = torch.tensor([[0] * 15 + [1] * 5, [1] * 20])
    out = generate(model, idx, 40, temperature=0, attention_mask=mask)  # 60 > 32: slides
    assert out.shape == (2, 60)
    # row 1 has no padding, so it must equal the reference loop exactly
    assert torch.equal(out[1:], uncached_greedy(model, prompts[1][None], 40))


def test_num_samples_and_seed_reproducibility() -> None:
    model = tiny_gpt()
    idx = torch.tensor([[1, 2, 3]])
    a = generate(model, idx, 20, temperature=1.0, top_k=20, seed=123, num_samples=3)
    b = generate(model, idx, 20, temperature=1.0, top_k=20, seed=123, num_samples=3)
    c = generate(model, idx, 20, temperature=1.0, top_k=20, seed=124, num_samples=3)
    assert a.shape == (3, 23)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert len({tuple(r) for r in a[:, 3:].tolist()}) > 1  # the samples differ from each other
    state = torch.random.get_rng_state()
    generate(model, idx, 5, seed=7)
    assert torch.equal(state, torch.random.get_rng_state())  # a seed leaves the global RNG alone


def test_stop_token_pads_the_row_and_ends_early() -> None:
    model = tiny_gpt()
    idx = torch.tensor([[5, 6, 7], [8, 9, 10]])
    free = generate(model, idx, 30, temperature=0)
    stop = int(free[0, 3 + 4])  # the 5th token of row 0
    out = generate(model, idx, 30, temperature=0, stop_token_ids=[stop], pad_token_id=0)
    row0 = out[0, 3:].tolist()
    first = row0.index(stop)
    assert row0[: first + 1] == free[0, 3 : 3 + first + 1].tolist()
    assert all(t == 0 for t in row0[first + 1 :])
    if stop not in free[1, 3:].tolist():
        assert out.shape[1] == free.shape[1]  # row 1 never stops: runs to max_new_tokens
        assert torch.equal(out[1], free[1])


def test_greedy_ignores_filters_and_generate_restores_training_mode() -> None:
    model = tiny_gpt()
    model.train()
    idx = torch.tensor([[1, 2]])
    a = generate(model, idx, 10, temperature=0)
    assert model.training
    model.eval()
    b = generate(model, idx, 10, temperature=0, top_k=3, top_p=0.5)
    assert torch.equal(a, b)
    assert torch.equal(model.generate(idx, 10, temperature=0), a)  # GPT.generate delegates here


@pytest.mark.parametrize(
    "kwargs",
    [dict(temperature=-0.1), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=0), dict(min_p=2.0),
     dict(repetition_penalty=0.0), dict(max_new_tokens=-1), dict(num_samples=0)],
)
def test_invalid_options_raise(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        GenerationConfig(**kwargs)


def test_bad_prompts_raise_model_error() -> None:
    model = tiny_gpt()
    with pytest.raises(ModelError):
        list(stream_tokens(model, torch.zeros(1, 0, dtype=torch.long)))
    with pytest.raises(ModelError, match="left"):
        list(stream_tokens(model, torch.tensor([[1, 2, 0]]), attention_mask=torch.tensor([[1, 1, 0]])))
    with pytest.raises(ModelError):
        list(stream_tokens(model, torch.tensor([[1, 500]])))  # id out of range for vocab 97


def test_greedy_equals_transformers_generate() -> None:
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.GPT2Config(vocab_size=101, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                     activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                                     attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    # our peaked weights into HF's model (a random HF init also emits one token over and over)
    model = peaked_gpt(vocab_size=101, block_size=64)
    ours = model.state_dict()
    conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    with torch.no_grad():
        for key, value in hf.state_dict().items():
            if key not in ours:
                continue  # HF's causal-mask buffers
            value.copy_(ours[key].t() if key.endswith(conv1d) else ours[key])  # HF Conv1D stores (in, out)
    idx = torch.randint(0, 101, (2, 9), generator=torch.Generator().manual_seed(6))
    expected = hf.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=40, do_sample=False,
                           eos_token_id=None, pad_token_id=0)
    assert distinct_new(expected, 9) >= 8  # 9 distinct of 40
    assert torch.equal(generate(model, idx, 40, temperature=0), expected)
