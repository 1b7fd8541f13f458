"""A modern gptforge model as Hugging Face ``LlamaForCausalLM``: the config and the key map.

A GPT with rotary positions, RMSNorm (with gains), SwiGLU, no biases, pre-norm blocks and
no QK-norm or logit cap computes exactly what a Llama block computes (Touvron et al.
2023), so export is renaming plus two splits: our fused ``attn.c_attn`` (q | k | v) into
``q_proj``, ``k_proj``, ``v_proj``, and ``mlp.c_fc`` ([gate | up]) into ``gate_proj`` and
``up_proj``. Our rotary layout already pairs channel i with i + hs/2, as Hugging Face's
``rotate_half`` does, so q and k need no permutation.

With ``qk_norm`` the same map with ``attn.q_norm``/``attn.k_norm`` gives a
``Qwen3ForCausalLM`` (the tests use it as the QK-norm reference); export offers Llama only.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from gptforge.errors import ModelError
from gptforge.model.config import GPTConfig

# ours -> Hugging Face, per block (N = layer index); the fused tensors are split below.
_BLOCK_MAP = {
    "ln_1.weight": "input_layernorm.weight",
    "ln_2.weight": "post_attention_layernorm.weight",
    "attn.c_proj.weight": "self_attn.o_proj.weight",
    "attn.q_norm.weight": "self_attn.q_norm.weight",
    "attn.k_norm.weight": "self_attn.k_norm.weight",
    "mlp.c_proj.weight": "mlp.down_proj.weight",
}
_SPLITS = {
    "attn.c_attn.weight": ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    "mlp.c_fc.weight": ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
}
_TOP_MAP = {
    "transformer.wte.weight": "model.embed_tokens.weight",
    "transformer.ln_f.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}
_BLOCK_KEY = re.compile(r"transformer\.h\.(\d+)\.(.+)")


def unsupported_for_llama(config: GPTConfig) -> list[str]:
    """What ``config`` has that ``LlamaForCausalLM`` cannot express (empty = exportable)."""
    wanted = [
        (config.positions == "rope", f"positions {config.positions!r} (Llama uses rope)"),
        (config.normalization == "rmsnorm", f"normalization {config.normalization!r} (Llama uses rmsnorm)"),
        (config.norm_gain, "norm_gain false (Llama's norms have gains)"),
        (config.activation == "swiglu", f"activation {config.activation!r} (Llama uses swiglu)"),
        (not config.bias, "bias true (Llama has no biases)"),
        (config.norm == "pre", "post-LN blocks (norm 'post')"),
        (not config.qk_norm, "qk_norm (Llama has no QK-norm)"),
        (config.logit_softcap is None, f"logit_softcap {config.logit_softcap} (Llama has no logit cap)"),
    ]
    return [why for ok, why in wanted if not ok]


def llama_config_from_gpt(config: GPTConfig, eot_id: int | None = None) -> dict[str, Any]:
    """The ``config.json`` of a ``LlamaForCausalLM`` equal to a gptforge model.

    Raises:
        ModelError: naming every feature Llama cannot express.
    """
    problems = unsupported_for_llama(config)
    if problems:
        raise ModelError(f"this model cannot be exported as Llama: {'; '.join(problems)}")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd,
        "intermediate_size": config.hidden_dim,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_head,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.block_size,
        "rms_norm_eps": config.layer_norm_eps,
        "rope_theta": float(config.rope_base),  # transformers < 5
        "rope_parameters": {"rope_type": "default", "rope_theta": float(config.rope_base)},  # transformers >= 5
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": config.dropout,
        "tie_word_embeddings": config.tie_weights,
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
    }


def llama_state_from_gpt(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our weights under Llama (or, with QK-norm, Qwen3) names; padding rows left out.

    A tied head is written once, as ``model.embed_tokens.weight``.
    """
    config: GPTConfig = model.config
    state = dict(model.state_dict())
    if config.tie_weights:
        state.pop("lm_head.weight", None)
    out: dict[str, torch.Tensor] = {}
    inner = config.n_head * config.head_dim
    for key, tensor in state.items():
        if key in _TOP_MAP:
            rows = tensor[: config.vocab_size] if key != "transformer.ln_f.weight" else tensor
            out[_TOP_MAP[key]] = rows.contiguous()
            continue
        m = _BLOCK_KEY.fullmatch(key)
        if m is None or (m.group(2) not in _BLOCK_MAP and m.group(2) not in _SPLITS):
            raise ModelError(f"parameter {key} has no Llama name; this model is not a plain modern GPT")
        prefix, rest = f"model.layers.{m.group(1)}.", m.group(2)
        if rest in _SPLITS:
            sizes = [inner] * 3 if rest == "attn.c_attn.weight" else [config.hidden_dim] * 2
            for name, part in zip(_SPLITS[rest], tensor.split(sizes, dim=0)):
                out[prefix + name] = part.contiguous()
        else:
            out[prefix + _BLOCK_MAP[rest]] = tensor.contiguous()
    return out
