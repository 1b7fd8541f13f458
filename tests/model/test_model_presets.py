"""Every preset builds (on the meta device: the 1.3B one costs no memory) with the seed's
parameter count; the arithmetic in model/accounting.py agrees with the real module."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gptforge.model import accounting
from gptforge.model.config import PRESETS, GPTConfig
from gptforge.model.gpt import GPT

# Seed figures: DESIGN.md's table and the issue (toyGPT counts leave out position
# embeddings, as nanoGPT's get_num_params does; GPT-2 is counted with tying, as HF does).
SEED_COUNTS = {
    "toygpt-small": (123.70e6, True),
    "toygpt-medium": (253.06e6, True),
    "toygpt-large": (1311.58e6, True),
    "gpt2": (124_439_808, False),
    "shakespeare-bpe500": (3.5e6, False),
}


def _meta_model(name: str) -> GPT:
    config = GPTConfig.from_preset(name)
    if config.vocab_size is None:  # character presets take the vocabulary from the data
        config = dataclasses.replace(config, vocab_size=65)
    with torch.device("meta"):
        return GPT(config)


@pytest.mark.parametrize("name", sorted(SEED_COUNTS))
def test_seed_parameter_counts(name: str) -> None:
    expected, without_positions = SEED_COUNTS[name]
    count = _meta_model(name).num_params(non_embedding=without_positions)
    tolerance = 0.02 if name == "shakespeare-bpe500" else 0.001  # "about 3.5M" vs "within 0.1%"
    assert abs(count - expected) / expected < tolerance, (name, count, expected)


def test_gpt2_exact_count() -> None:
    assert _meta_model("gpt2").num_params() == 124_439_808


@pytest.mark.parametrize("name", ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"])
def test_gpt2_family_matches_transformers_counts(name: str) -> None:
    transformers = pytest.importorskip("transformers")
    sizes = {"gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024), "gpt2-large": (36, 20, 1280), "gpt2-xl": (48, 25, 1600)}
    n_layer, n_head, n_embd = sizes[name]
    with torch.device("meta"):
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd))
    assert _meta_model(name).num_params() == sum(p.numel() for p in hf.parameters())


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_and_accounting_agrees(name: str) -> None:
    model = _meta_model(name)
    counts = accounting.count_params(model.config)
    assert counts.total == model.num_params()
    assert counts.without_positions == model.num_params(non_embedding=True)
    unique = {id(p): p for p in model.parameters()}.values()
    wpe = model.transformer["wpe"].weight.numel() if "wpe" in model.transformer else 0  # rotary: none
    assert counts.non_embedding == sum(p.numel() for p in unique) - model.transformer.wte.weight.numel() - wpe
    assert counts.per_layer == sum(p.numel() for p in model.transformer.h[0].parameters())


@pytest.mark.parametrize("name", ["gpt2", "shakespeare-bpe500", "toygpt-large"])
def test_flops_per_token_matches_nanogpt_estimate(name: str) -> None:
    """nanoGPT's estimate_mfu: 6N + 12 L H Q T with N = params without position embeddings.

    For untied models we leave out the token embedding too (a lookup, no FLOPs)."""
    model = _meta_model(name)
    c = model.config
    N = model.num_params(non_embedding=True) - (0 if c.tie_weights else model.transformer.wte.weight.numel())
    T = 100
    expected = 6 * N + 12 * c.n_layer * c.n_head * c.head_dim * T
    assert accounting.flops_per_token(c, T) == expected
    assert accounting.flops_per_token(c, T, training=False) == expected / 3
    # MFU: a tokens/s that delivers exactly half the H100's bf16 peak.
    tokens_per_s = 0.5 * 989e12 / expected
    assert accounting.mfu(tokens_per_s, expected, accounting.peak_flops("NVIDIA H100 80GB HBM3")) == pytest.approx(0.5)


def test_memory_estimates() -> None:
    config = GPTConfig.from_preset("gpt2")
    assert accounting.weight_bytes(config, "bf16") == 2 * 124_439_808
    with torch.device("meta"):
        cache = GPT(config).make_kv_cache(batch_size=1)
    per_token = (cache.k.numel() + cache.v.numel()) / cache.max_seq_len * 4  # fp32 bytes
    assert accounting.kv_cache_bytes_per_token(config, "fp32") == per_token
