"""The modern options against references: transformers' Llama (rope + RMSNorm + SwiGLU),
Qwen3 (the same plus QK-norm), the uncapped model for the logit cap, the formulas for
ReLU² and parameter-free norms, the uncached forward for the KV cache, the float model
for quantization and the unmerged adapters for LoRA."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gptforge.model.accounting import count_params
from gptforge.model.config import GPTConfig
from gptforge.model.gpt import GPT

LLAMA = dict(positions="rope", normalization="rmsnorm", activation="swiglu", bias=False, tie_weights=False,
             mlp_multiple_of=32, rope_base=500.0)
# Every option on at once (what no single reference covers; the KV-cache and LoRA/quantization tests use it).
MODERN = dict(LLAMA, qk_norm=True, logit_softcap=12.0)


def _gpt(seed: int = 0, **kw: object) -> GPT:
    torch.manual_seed(seed)
    base = dict(vocab_size=61, block_size=24, n_layer=2, n_head=2, n_embd=32)
    model = GPT(GPTConfig(**{**base, **kw})).eval()
    with torch.no_grad():  # gains away from 1, so a wrongly mapped or skipped norm shows
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn_like(p))
    return model


def _hf_model(kind: str, model: GPT):  # noqa: ANN202 - a transformers model
    transformers = pytest.importorskip("transformers")
    from gptforge.model.hf_llama import llama_config_from_gpt, llama_state_from_gpt

    c = model.config
    if kind == "llama":
        values = llama_config_from_gpt(c)
        values.pop("architectures"), values.pop("model_type")
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**values))
    else:  # Qwen3 = Llama + RMSNorm on q and k per head, before the rotation
        hf = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(
            vocab_size=c.vocab_size, hidden_size=c.n_embd, intermediate_size=c.hidden_dim,
            num_hidden_layers=c.n_layer, num_attention_heads=c.n_head, num_key_value_heads=c.n_head,
            head_dim=c.head_dim, max_position_embeddings=c.block_size, rms_norm_eps=c.layer_norm_eps,
            rope_parameters={"rope_type": "default", "rope_theta": c.rope_base},
            tie_word_embeddings=c.tie_weights, attention_bias=False))
    missing, unexpected = hf.load_state_dict(llama_state_from_gpt(model), strict=False)
    assert not unexpected and all(k == "lm_head.weight" and c.tie_weights for k in missing), (missing, unexpected)
    if c.tie_weights:
        hf.tie_weights()
    return hf.eval()


@pytest.mark.parametrize("kind,kw", [
    ("llama", LLAMA),
    ("llama", dict(LLAMA, tie_weights=True, n_head=4, head_size=6)),  # tied; heads x hs != n_embd
    ("qwen3", dict(LLAMA, qk_norm=True)),
])
def test_logits_match_transformers(kind: str, kw: dict) -> None:
    model = _gpt(**kw)
    hf = _hf_model(kind, model)
    idx = torch.randint(0, 61, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(idx)
        theirs = hf(idx).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    # left padding: positions restart at each row's first real token, as HF's position_ids
    mask = torch.ones_like(idx)
    mask[0, :9] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ours = model(idx, attention_mask=mask, position_ids=pos)
        theirs = hf(idx, attention_mask=mask, position_ids=pos).logits
    real = mask.bool()
    torch.testing.assert_close(ours[real], theirs[real], rtol=1e-4, atol=1e-4)


def test_logit_softcap_caps_the_uncapped_logits() -> None:
    capped, plain = _gpt(logit_softcap=3.0), _gpt()
    with torch.no_grad():
        plain.lm_head.weight.mul_(40)  # large logits, so the cap bites
    capped.load_state_dict(plain.state_dict())
    idx = torch.randint(0, 61, (2, 10))
    with torch.no_grad():
        ref = plain(idx)
        out = capped(idx)
    assert ref.abs().max() > 6
    torch.testing.assert_close(out, 3.0 * torch.tanh(ref / 3.0), rtol=1e-5, atol=1e-5)
    assert out.abs().max() <= 3.0


def test_relu2_and_parameter_free_norms_match_their_formulas() -> None:
    model = _gpt(activation="relu2", normalization="rmsnorm", norm_gain=False, qk_norm=True)
    block = model.transformer.h[0]
    x = torch.randn(2, 5, 32)
    eps = model.config.layer_norm_eps
    rms = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    torch.testing.assert_close(block.ln_1(x), rms, rtol=1e-5, atol=1e-6)
    assert not list(block.ln_1.parameters()) and not list(block.attn.q_norm.parameters())
    mlp = block.mlp
    ref = F.linear(F.relu(F.linear(x, mlp.c_fc.weight, mlp.c_fc.bias)) ** 2, mlp.c_proj.weight, mlp.c_proj.bias)
    torch.testing.assert_close(mlp(x), ref, rtol=1e-5, atol=1e-6)
    ln = _gpt(norm_gain=False).transformer.ln_f
    torch.testing.assert_close(ln(x), F.layer_norm(x, (32,), eps=eps), rtol=1e-5, atol=1e-6)


def test_relu2_gradient_equals_the_power_formula_bitwise() -> None:
    """Reference: relu(x) ** 2 through autograd's pow; ours is written r * r (a cheaper
    backward on the CPU), which must give the same values and gradients bit for bit."""
    from gptforge.model.layers import ReLUSquared

    x = torch.randn(4, 7, 64, generator=torch.Generator().manual_seed(0))
    g = torch.randn(4, 7, 64, generator=torch.Generator().manual_seed(1))
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ReLUSquared()(a), F.relu(b).square()
    ya.backward(g)
    yb.backward(g)
    assert torch.equal(ya, yb) and torch.equal(a.grad, b.grad)


def test_zero_init_projections_make_every_block_the_identity() -> None:
    model = _gpt(zero_init_proj=True, positions="rope", bias=False)  # (_gpt moves biases off 0)
    assert all(float(m.weight.detach().abs().max()) == 0 for n, m in model.named_modules() if n.endswith("c_proj"))
    idx = torch.randint(0, 61, (2, 10))
    with torch.no_grad():
        ref = model.lm_head(model.transformer.ln_f(model.transformer.wte(idx)))  # embeddings straight to the head
        torch.testing.assert_close(model(idx), ref, rtol=1e-6, atol=1e-6)


def test_param_count_and_defaults_over_every_option() -> None:
    """count_params (no model built) equals the built model for every combination; the
    defaults are GPT-2's (learned wpe, LayerNorm with gain and bias, GELU, tied)."""
    for pos, norm, gain, qk, act, tie in itertools.product(
        ["learned", "rope"], ["layernorm", "rmsnorm"], [True, False], [False, True],
        ["gelu", "relu", "relu2", "swiglu"], [True, False],
    ):
        c = GPTConfig(vocab_size=61, block_size=16, n_layer=2, n_head=2, n_embd=32, positions=pos,
                      normalization=norm, norm_gain=gain, qk_norm=qk, activation=act, tie_weights=tie,
                      mlp_multiple_of=16)
        assert GPT(c).num_params() == count_params(c).total, c
    default = GPT(GPTConfig(vocab_size=61, block_size=16, n_layer=1, n_head=2, n_embd=32))
    assert {"transformer.wpe.weight", "transformer.h.0.ln_1.bias"} <= set(default.state_dict())
    assert GPTConfig(n_embd=4096, n_head=32, activation="swiglu").hidden_dim == 11008  # Llama-7B's width


@pytest.mark.parametrize("chunks", [[1] * 17, [5, 3, 1, 1, 7], [16, 1]])
def test_kv_cache_equals_full_forward_modern(chunks: list[int]) -> None:
    model = _gpt(**MODERN)
    idx = torch.randint(0, 61, (2, sum(chunks)), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(idx)
        cache = model.make_kv_cache(batch_size=2)
        pieces, start = [], 0
        for n in chunks:
            pieces.append(model(idx[:, start : start + n], kv_cache=cache))
            start += n
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method,kw", [("int8", {}), ("int4", {"group_size": 32, "include_lm_head": True})])
def test_quantized_modern_model_equals_dequantized_float_model(method: str, kw: dict, tmp_path: Path) -> None:
    from gptforge.model.loading import load_model
    from gptforge.quantize import QuantLinear, quantize, save_quantized, set_backend

    model = _gpt(**MODERN)
    q = set_backend(quantize(copy.deepcopy(model), method, **kw), "reference")
    ref = copy.deepcopy(model)
    for name, m in q.named_modules():
        if isinstance(m, QuantLinear):
            ref.get_submodule(name).weight.data = m.dequantized_weight()
    idx = torch.randint(0, 61, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(q(idx), ref(idx), rtol=1e-5, atol=1e-5)
        assert (q(idx) - model(idx)).abs().max() < 0.5  # close to the float model too
    save_quantized(q, tmp_path / "q")
    with torch.no_grad():
        assert torch.equal(set_backend(load_model(tmp_path / "q"), "reference")(idx), q(idx))


def test_lora_on_a_modern_model_merges_to_the_same_logits() -> None:
    from gptforge.finetune.lora import LoRALinear, apply_lora, merge_lora

    model = _gpt(**MODERN)
    apply_lora(model, rank=4, alpha=8.0, targets=("c_attn", "c_proj", "c_fc", "lm_head"))
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, LoRALinear):
            torch.nn.init.normal_(m.lora_B, std=0.2)
    idx = torch.randint(0, 61, (2, 10))
    with torch.no_grad():
        adapted = model(idx)
        merge_lora(model)
        merged = model(idx)
    torch.testing.assert_close(merged, adapted, rtol=1e-5, atol=1e-5)
    assert (merged - _gpt(**MODERN)(idx)).abs().max() > 1e-2


def test_modern_model_saves_and_loads_bit_exact(tmp_path: Path) -> None:
    from gptforge.model.loading import load_model, save_model

    model = _gpt(**MODERN)
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.config == model.config
    idx = torch.randint(0, 61, (2, 10))
    with torch.no_grad():
        assert torch.equal(loaded(idx), model(idx))
