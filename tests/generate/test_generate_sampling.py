"""Sampling functions against plain-Python references and a chi-square goodness-of-fit test."""

from __future__ import annotations

import math

import pytest
import torch

from gptforge.errors import ConfigError
from gptforge.generate.engine import generate
from gptforge.generate.sampling import (
    apply_frequency_penalty,
    apply_repetition_penalty,
    inverse_cdf,
    min_p_filter,
    sample,
    top_k_filter,
    top_p_filter,
    validate_sampling,
)
from tests.generate.gen_helpers import tiny_gpt

N_DRAWS = 20000


def draws(logits: torch.Tensor, seed: int = 0, **kw: object) -> list[int]:
    """N_DRAWS samples from one row of logits (V,), with a fixed seed."""
    g = torch.Generator().manual_seed(seed)
    return sample(logits.expand(N_DRAWS, -1), generator=g, **kw).tolist()


def nucleus_reference(probs: list[float], p: float) -> set[int]:
    """Smallest set of most likely tokens whose probability sums to >= p (plain Python)."""
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    kept, mass = set(), 0.0
    for i in order:
        kept.add(i)
        mass += probs[i]
        if mass >= p:
            break
    return kept


def test_top_k_never_leaves_the_top_k() -> None:
    logits = torch.randn(50, generator=torch.Generator().manual_seed(1)) * 3
    top5 = set(torch.topk(logits, 5).indices.tolist())
    got = draws(logits, top_k=5, temperature=1.5)
    assert set(got) <= top5
    assert len(set(got)) == 5  # and all five are reachable


@pytest.mark.parametrize("p", [0.3, 0.6, 0.9])
def test_top_p_never_leaves_the_nucleus(p: float) -> None:
    logits = torch.randn(50, generator=torch.Generator().manual_seed(2)) * 2
    nucleus = nucleus_reference(torch.softmax(logits.double(), -1).tolist(), p)
    got = set(draws(logits, top_p=p))
    assert got <= nucleus
    assert got == nucleus or len(nucleus) > 20  # every nucleus token shows up in 20000 draws


def test_min_p_keeps_tokens_above_the_threshold() -> None:
    logits = torch.randn(50, generator=torch.Generator().manual_seed(3)) * 2
    probs = torch.softmax(logits.double(), -1)
    allowed = set(torch.nonzero(probs >= 0.1 * probs.max()).flatten().tolist())
    got = set(draws(logits, min_p=0.1))
    assert got <= allowed
    filtered = min_p_filter(logits[None], 0.1)[0]
    assert set(torch.nonzero(torch.isfinite(filtered)).flatten().tolist()) == allowed


def test_filters_keep_the_argmax_and_match_references() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0, -1.0]])
    assert torch.isinf(top_k_filter(logits, 2)).tolist() == [[True, False, False, True]]
    assert torch.isfinite(top_p_filter(logits, 1e-6)).tolist() == [[False, True, False, False]]
    assert torch.equal(top_p_filter(logits, 1.0), logits)


# Chi-square critical values at significance 0.001 (upper tail) for df = 1, 2, 3, from the
# chi-square table: a correct sampler fails this test one time in a thousand seeds.
CHI2_CRIT_0_001 = {1: 10.828, 2: 13.816, 3: 16.266}


def chi_square(observed: list[int], expected_p: list[float]) -> float:
    n = sum(observed)
    return sum((o - n * p) ** 2 / (n * p) for o, p in zip(observed, expected_p))


TOY = [0.5, 0.25, 0.15, 0.1]


@pytest.mark.parametrize(
    "kw, expected",
    [
        (dict(), TOY),
        (dict(temperature=0.5), [p**2 / sum(q**2 for q in TOY) for p in TOY]),  # p^(1/T), renormalised
        (dict(top_k=2), [0.5 / 0.75, 0.25 / 0.75, 0.0, 0.0]),
        (dict(top_p=0.7), [0.5 / 0.75, 0.25 / 0.75, 0.0, 0.0]),  # 0.5 + 0.25 >= 0.7
        (dict(min_p=0.3), [0.5 / 0.9, 0.25 / 0.9, 0.15 / 0.9, 0.0]),  # keep p >= 0.15
    ],
)
def test_empirical_frequencies_match_the_intended_distribution(kw: dict, expected: list[float]) -> None:
    logits = torch.tensor([math.log(p) for p in TOY])
    got = draws(logits, seed=11, **kw)
    counts = [got.count(i) for i in range(len(TOY))]
    support = [i for i, p in enumerate(expected) if p > 0]
    assert all(counts[i] == 0 for i in range(len(TOY)) if expected[i] == 0)
    stat = chi_square([counts[i] for i in support], [expected[i] for i in support])
    assert stat < CHI2_CRIT_0_001[len(support) - 1], (counts, stat)


@pytest.mark.parametrize("temperature", [1e-3, 1e-40, 4.66e-83, 5e-324])  # the last ones are 0 in float32
def test_a_vanishing_temperature_draws_the_argmax(temperature: float) -> None:
    """The limit T -> 0+ is greedy; before the shift, 1e-40 and smaller gave a NaN softmax
    (found by the server fuzz test through the API's temperature field)."""
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0)) * 5
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        assert torch.equal(sample(logits, temperature=temperature, top_p=0.9, generator=g), logits.argmax(-1))


def test_repetition_penalty_worked_example() -> None:
    logits = torch.tensor([[2.0, -1.0, 3.0]])
    seen = torch.tensor([[True, True, False]])
    assert apply_repetition_penalty(logits, seen, 2.0).tolist() == [[1.0, -2.0, 3.0]]
    assert torch.equal(apply_repetition_penalty(logits, seen, 1.0), logits)


def test_frequency_and_presence_penalty_formula() -> None:
    logits = torch.tensor([[1.0, 1.0, 1.0]])
    counts = torch.tensor([[0.0, 1.0, 3.0]])
    out = apply_frequency_penalty(logits, counts, frequency=0.5, presence=0.25)
    assert out.tolist() == [[1.0, 1.0 - 0.5 - 0.25, 1.0 - 1.5 - 0.25]]


@torch.no_grad()
def penalised_greedy_reference(model: torch.nn.Module, prompt: list[int], n: int, rep: float, freq: float,
                               pres: float) -> list[int]:
    """Greedy decoding with the penalties written out per token, no cache, plain Python."""
    seq = list(prompt)
    generated: list[int] = []
    for _ in range(n):
        logits = model(torch.tensor([seq]))[0, -1].tolist()
        for j in set(seq):
            logits[j] = logits[j] / rep if logits[j] > 0 else logits[j] * rep
        for j in set(generated):
            logits[j] -= freq * generated.count(j) + pres
        nxt = max(range(len(logits)), key=lambda j: logits[j])
        seq.append(nxt)
        generated.append(nxt)
    return seq


@pytest.mark.parametrize("rep, freq, pres", [(1.3, 0.0, 0.0), (1.0, 0.4, 0.0), (1.0, 0.0, 0.3), (1.2, 0.2, 0.1)])
def test_engine_penalties_equal_the_definition(rep: float, freq: float, pres: float) -> None:
    model = tiny_gpt(vocab_size=23)
    prompt = [1, 2, 3, 2]
    out = generate(model, torch.tensor([prompt]), 30, temperature=0, repetition_penalty=rep,
                   frequency_penalty=freq, presence_penalty=pres)
    assert out[0].tolist() == penalised_greedy_reference(model, prompt, 30, rep, freq, pres)
    plain = generate(model, torch.tensor([prompt]), 30, temperature=0)
    assert not torch.equal(out, plain)  # the penalty changed something on this model


@pytest.mark.parametrize(
    "kw, word",
    [(dict(temperature=-1), "temperature"), (dict(top_k=0), "top_k"), (dict(top_p=0), "top_p"),
     (dict(top_p=1.5), "top_p"), (dict(min_p=-0.1), "min_p"), (dict(repetition_penalty=-1), "repetition"),
     (dict(frequency_penalty=float("inf")), "frequency")],
)
def test_validation_names_the_option(kw: dict, word: str) -> None:
    with pytest.raises(ConfigError, match=word):
        validate_sampling(**kw)


def test_seen_tokens_keeps_a_real_token_equal_to_the_pad_id() -> None:
    """The pad id also occurs in the prompt: its padding column must not erase it (the old
    ``scatter_`` of the mask wrote True and False into one cell; the last write won)."""
    from gptforge.generate.sampling import seen_tokens

    idx = torch.tensor([[0, 3, 0, 0], [5, 2, 1, 1], [4, 4, 4, 4]])
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    got = seen_tokens(idx, mask, 6)
    want = torch.zeros(3, 6, dtype=torch.bool)
    for b in range(3):  # the reference: a loop over the real positions
        for t in range(4):
            if mask[b, t]:
                want[b, idx[b, t]] = True
    assert torch.equal(got, want) and got[0, 0] and not got[1, 1]
    assert torch.equal(seen_tokens(idx, None, 6)[1], torch.tensor([False, True, True, False, False, True]))


def test_inverse_cdf_worked_example_and_zero_weights() -> None:
    """The docstring's example, the edges of [0, 1), and a zero-weight token at each end."""
    probs = torch.tensor([[0.5, 0.0, 0.25, 0.25]])
    got = [int(inverse_cdf(probs, torch.tensor([[u]], dtype=torch.float64))[0]) for u in (0.0, 0.3, 0.5, 0.9)]
    assert got == [0, 0, 2, 3]
    edge = torch.tensor([[0.0, 0.3, 0.7, 0.0]])
    below_one = 1.0 - 2.0**-53  # the largest float64 below 1
    u = torch.tensor([[0.0], [below_one]], dtype=torch.float64)
    assert inverse_cdf(edge.expand(2, -1), u).tolist() == [1, 2]
    weights = torch.tensor([[2.0, 0.0, 6.0]])  # unnormalised: each row's own sum
    assert inverse_cdf(weights, torch.tensor([[0.24]], dtype=torch.float64)).tolist() == [0]
    assert inverse_cdf(weights, torch.tensor([[0.26]], dtype=torch.float64)).tolist() == [2]
