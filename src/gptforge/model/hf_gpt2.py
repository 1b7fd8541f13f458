"""Hugging Face GPT-2 checkpoints <-> gptforge models: the config map and the key map, both ways.

Our parameter names are GPT-2's, so a conversion is three small things:

1. **Keys.** Hugging Face writes ``transformer.h.0.attn.c_attn.weight`` (``GPT2LMHeadModel``)
   or ``h.0.attn.c_attn.weight`` (``GPT2Model`` and OpenAI's original upload). We read both
   and write the first. :data:`KEY_MAP` lists every parameter once, ours -> theirs; the
   reverse direction is the same table read backwards.
2. **Conv1D transposes.** GPT-2 stores its projections as ``Conv1D`` with weight
   (in, out); ``nn.Linear`` holds (out, in). The four layers in :data:`CONV1D_LAYERS`
   are transposed on the way in and on the way out.
3. **Buffers.** ``attn.bias`` (the causal mask) and ``attn.masked_bias`` are not
   weights; older checkpoints carry them and we drop them.

The config map (:func:`gpt_config_from_hf` / :func:`hf_config_from_gpt`) refuses any
option our model cannot reproduce exactly, naming it, rather than loading something
that computes different logits. See nanoGPT ``GPT.from_pretrained`` for the same
transpose list, and torchtitan ``state_dict_adapter.py`` for a declarative map.

Folder I/O lives in :mod:`gptforge.interop.hf` (import/export commands);
:func:`load_hf_gpt2` is here because ``gptforge.load_model`` accepts a GPT-2 folder.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch

from gptforge.errors import ModelError
from gptforge.model.config import GPTConfig
from gptforge.model.gpt import GPT

logger = logging.getLogger(__name__)

# ours -> Hugging Face (GPT2LMHeadModel naming). "{i}" is the block index.
KEY_MAP: dict[str, str] = {
    "transformer.wte.weight": "transformer.wte.weight",
    "transformer.wpe.weight": "transformer.wpe.weight",
    "transformer.h.{i}.ln_1.weight": "transformer.h.{i}.ln_1.weight",
    "transformer.h.{i}.ln_1.bias": "transformer.h.{i}.ln_1.bias",
    "transformer.h.{i}.attn.c_attn.weight": "transformer.h.{i}.attn.c_attn.weight",
    "transformer.h.{i}.attn.c_attn.bias": "transformer.h.{i}.attn.c_attn.bias",
    "transformer.h.{i}.attn.c_proj.weight": "transformer.h.{i}.attn.c_proj.weight",
    "transformer.h.{i}.attn.c_proj.bias": "transformer.h.{i}.attn.c_proj.bias",
    "transformer.h.{i}.ln_2.weight": "transformer.h.{i}.ln_2.weight",
    "transformer.h.{i}.ln_2.bias": "transformer.h.{i}.ln_2.bias",
    "transformer.h.{i}.mlp.c_fc.weight": "transformer.h.{i}.mlp.c_fc.weight",
    "transformer.h.{i}.mlp.c_fc.bias": "transformer.h.{i}.mlp.c_fc.bias",
    "transformer.h.{i}.mlp.c_proj.weight": "transformer.h.{i}.mlp.c_proj.weight",
    "transformer.h.{i}.mlp.c_proj.bias": "transformer.h.{i}.mlp.c_proj.bias",
    "transformer.ln_f.weight": "transformer.ln_f.weight",
    "transformer.ln_f.bias": "transformer.ln_f.bias",
    "lm_head.weight": "lm_head.weight",
}

# Layers stored as Conv1D (weight (in, out)) by GPT-2: transposed both ways.
CONV1D_LAYERS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")

# Non-weight buffers found in GPT-2 checkpoints (causal mask, -1e4 fill value).
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")

# HF activation names that are exactly our GELU (tanh approximation) or ReLU.
_ACTIVATIONS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu_fast": "gelu", "relu": "relu"}

# GPT2Config options whose non-default values our model does not implement.
_UNSUPPORTED_IF = {
    "scale_attn_weights": (False, "attention scores not scaled by 1/sqrt(head size)"),
    "scale_attn_by_inverse_layer_idx": (True, "attention scaled by 1/(layer index + 1)"),
    "add_cross_attention": (True, "cross-attention layers (encoder-decoder use)"),
}


def _template_regex(template: str) -> re.Pattern:
    return re.compile("^" + re.escape(template).replace(re.escape("{i}"), r"(\d+)") + "$")


_OURS_TO_HF = [(_template_regex(ours), hf) for ours, hf in KEY_MAP.items()]
_HF_TO_OURS = [(_template_regex(hf), ours) for ours, hf in KEY_MAP.items()]


def _map_key(key: str, table: list[tuple[re.Pattern, str]]) -> str | None:
    for pattern, target in table:
        m = pattern.match(key)
        if m:
            return target.replace("{i}", m.group(1)) if m.groups() else target
    return None


def _is_conv1d(key: str) -> bool:
    return key.endswith(".weight") and any(f".{layer}.weight" in key for layer in CONV1D_LAYERS)


# ---------------------------------------------------------------- configs


def gpt_config_from_hf(hf: dict[str, Any], source: str = "config.json") -> GPTConfig:
    """Map a ``GPT2Config`` dict to a :class:`GPTConfig`, refusing options we cannot reproduce.

    Raises:
        ModelError: naming each unsupported option and its value.
    """
    if hf.get("model_type", "gpt2") != "gpt2":
        raise ModelError(
            f"{source} describes a {hf.get('model_type')!r} model, not GPT-2 (model_type 'gpt2'); "
            "only GPT-2 checkpoints can be imported"
        )
    problems = []
    act = hf.get("activation_function", "gelu_new")
    if act not in _ACTIVATIONS:
        problems.append(
            f"activation_function {act!r} (supported: {', '.join(sorted(_ACTIVATIONS))}; "
            "'gelu' is the exact erf GELU, ours is the tanh approximation)"
        )
    for name, (bad, what) in _UNSUPPORTED_IF.items():
        if hf.get(name) == bad:
            problems.append(f"{name}={bad} ({what})")
    block_size = hf.get("n_positions", hf.get("n_ctx"))
    required = {"vocab_size": hf.get("vocab_size"), "n_positions": block_size}
    for name in ("n_embd", "n_layer", "n_head"):
        required[name] = hf.get(name)
    missing = [k for k, v in required.items() if not isinstance(v, int)]
    if missing:
        problems.append(f"missing or non-integer fields {missing}")
    if problems:
        raise ModelError(f"{source}: this GPT-2 config uses options gptforge cannot reproduce: {'; '.join(problems)}")
    n_embd, n_head = hf["n_embd"], hf["n_head"]
    if n_embd % n_head:
        raise ModelError(f"{source}: n_embd {n_embd} is not divisible by n_head {n_head}")
    n_inner = hf.get("n_inner")
    dropouts = {k: float(hf.get(k, 0.1)) for k in ("resid_pdrop", "embd_pdrop", "attn_pdrop")}
    if len(set(dropouts.values())) > 1:
        logger.info("%s: different dropouts %s; gptforge has one, using resid_pdrop", source, dropouts)
    if hf.get("reorder_and_upcast_attn"):
        logger.info("%s: reorder_and_upcast_attn only changes precision; ignored", source)
    return GPTConfig(
        vocab_size=hf["vocab_size"],
        block_size=block_size,
        n_layer=hf["n_layer"],
        n_head=n_head,
        n_embd=n_embd,
        head_size=None,
        mlp_hidden=None if n_inner in (None, 4 * n_embd) else int(n_inner),
        activation=_ACTIVATIONS[act],
        norm="pre",
        dropout=dropouts["resid_pdrop"],
        bias=True,
        tie_weights=bool(hf.get("tie_word_embeddings", True)),
        layer_norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
    )


def unsupported_for_hf(config: GPTConfig) -> list[str]:
    """The features of ``config`` that a ``GPT2LMHeadModel`` cannot express (empty = exportable)."""
    problems = []
    if config.norm != "pre":
        problems.append("post-LN blocks (norm='post'); GPT-2 is pre-LN")
    if config.head_dim * config.n_head != config.n_embd:
        problems.append(
            f"head size {config.head_dim} x {config.n_head} heads = {config.head_dim * config.n_head} "
            f"!= n_embd {config.n_embd}; GPT-2 needs head size = n_embd / n_head"
        )
    if config.activation not in ("gelu", "relu"):
        problems.append(f"activation {config.activation!r}")
    if config.positions != "learned":
        problems.append(f"positions {config.positions!r}; GPT-2 learns a position table")
    if config.normalization != "layernorm" or not config.norm_gain:
        problems.append(f"normalization {config.normalization!r} with norm_gain {config.norm_gain}; GPT-2 has LayerNorms with gains")
    if config.qk_norm:
        problems.append("qk_norm; GPT-2 has no QK-norm")
    if config.logit_softcap is not None:
        problems.append(f"logit_softcap {config.logit_softcap}; GPT-2 has no logit cap")
    return problems


def hf_config_from_gpt(config: GPTConfig, eot_id: int | None = None) -> dict[str, Any]:
    """The ``config.json`` of a ``GPT2LMHeadModel`` equal to a gptforge model.

    ``bias=False`` is expressed with zero biases (see :func:`hf_state_from_gpt`), ReLU as
    ``activation_function='relu'`` and an untied head as ``tie_word_embeddings=false``.

    Raises:
        ModelError: naming the features GPT-2 cannot express (post-LN, head size mismatch).
    """
    problems = unsupported_for_hf(config)
    if problems:
        raise ModelError(f"this model cannot be exported as GPT-2: {'; '.join(problems)}")
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None if config.hidden_dim == 4 * config.n_embd else config.hidden_dim,
        "activation_function": "gelu_new" if config.activation == "gelu" else "relu",
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": config.layer_norm_eps,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": config.tie_weights,
        "use_cache": True,
        "bos_token_id": eot_id,  # None when the tokenizer has no end-of-text token
        "eos_token_id": eot_id,
    }


# ---------------------------------------------------------------- state dicts


def gpt_state_from_hf(hf_state: dict[str, torch.Tensor], config: GPTConfig, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Rename and transpose a Hugging Face GPT-2 state dict into ours.

    Accepts keys with or without the ``transformer.`` prefix, drops the attention
    mask buffers, and drops ``lm_head.weight`` when the head is tied (it is ``wte``).

    Raises:
        ModelError: naming unexpected keys (a head we do not have, another architecture).
    """
    out: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, tensor in hf_state.items():
        if key.endswith(IGNORED_SUFFIXES):
            continue
        full = key if key.startswith(("transformer.", "lm_head.")) else "transformer." + key
        ours = _map_key(full, _HF_TO_OURS)
        if ours is None:
            unexpected.append(key)
            continue
        if ours == "lm_head.weight" and config.tie_weights:
            continue  # tied: the head is the token embedding
        out[ours] = tensor.t().contiguous() if _is_conv1d(ours) else tensor
    if unexpected:
        raise ModelError(
            f"{source} has keys that are not part of a GPT-2 language model: {unexpected[:8]}"
            f"{' ...' if len(unexpected) > 8 else ''} ({len(unexpected)} in all)"
        )
    return out


def hf_state_from_gpt(model: GPT) -> dict[str, torch.Tensor]:
    """Our weights under Hugging Face names in Conv1D layout, ready for ``model.safetensors``.

    A tied head is written once (as ``transformer.wte.weight``), as ``save_pretrained`` does.
    Rows added by ``pad_vocab_to`` are left out (no token reaches them).
    A model without biases gets zero biases: GPT-2 always has them, and zeros compute
    exactly what the bias-free layers compute.
    """
    V = model.config.vocab_size
    state = {k: v for k, v in model.state_dict().items()}
    if model.config.tie_weights:
        state.pop("lm_head.weight", None)
    for key in ("transformer.wte.weight", "lm_head.weight"):  # GPT-2 has no padding rows
        if key in state:
            state[key] = state[key][:V]
    if not model.config.bias:
        state.update(_zero_biases(model))
    out = {}
    for key, tensor in state.items():
        hf = _map_key(key, _OURS_TO_HF)
        if hf is None:  # internal invariant: every parameter of GPT is in KEY_MAP
            raise ModelError(f"parameter {key} has no GPT-2 name; this model is not a plain GPT")
        out[hf] = tensor.t().contiguous() if _is_conv1d(key) else tensor.contiguous()
    return out


def _zero_biases(model: GPT) -> dict[str, torch.Tensor]:
    biases = {}
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.LayerNorm)) and name != "lm_head":
            weight = module.weight
            width = weight.shape[0]
            biases[f"{name}.bias"] = torch.zeros(width, dtype=weight.dtype, device=weight.device)
    return biases


# ---------------------------------------------------------------- folders


def read_hf_state(folder: Path) -> dict[str, torch.Tensor]:
    """The raw state dict of a GPT-2 folder: ``model.safetensors`` (or its sharded index),
    else ``pytorch_model.bin`` loaded with ``weights_only=True`` (code in a pickle is refused)."""
    import json

    from gptforge.io import load_safetensors, torch_load_safe

    for index_name, loader in (
        ("model.safetensors.index.json", load_safetensors),
        ("pytorch_model.bin.index.json", torch_load_safe),
    ):
        index = folder / index_name
        if index.is_file():
            weight_map = json.loads(index.read_text()).get("weight_map", {})
            state: dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                state.update(_as_state(loader(folder / shard), folder / shard))
            return state
    if (folder / "model.safetensors").is_file():
        return load_safetensors(folder / "model.safetensors")
    if (folder / "pytorch_model.bin").is_file():
        return _as_state(torch_load_safe(folder / "pytorch_model.bin"), folder / "pytorch_model.bin")
    found = sorted(p.name for p in folder.iterdir())[:12]
    raise ModelError(
        f"{folder} has a GPT-2 config.json but no weights (model.safetensors or pytorch_model.bin); "
        f"found: {found}"
    )


def _as_state(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{path} does not hold a plain dict of tensors (a state dict)")
    return obj


def read_hf_config(folder: Path) -> dict[str, Any]:
    """``config.json`` of a GPT-2 folder, with a message that says what was found otherwise."""
    from gptforge.io import read_json

    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"{folder} is not a folder; pass a Hugging Face GPT-2 checkpoint folder")
    path = folder / "config.json"
    if not path.is_file():
        found = sorted(p.name for p in folder.iterdir())[:12]
        raise ModelError(
            f"{folder} is not a Hugging Face checkpoint folder: no config.json (found: {found or 'nothing'}); "
            "pass the folder that save_pretrained wrote"
        )
    config = read_json(path, what="Hugging Face config")
    if not isinstance(config, dict):
        raise ModelError(f"{path} is not a JSON object")
    if config.get("kind") == "gptforge-model":
        raise ModelError(f"{folder} is already a gptforge model dir; use it directly, no import needed")
    if config.get("model_type") != "gpt2" and not ("n_ctx" in config or "n_positions" in config):
        found = config.get("model_type") or config.get("architectures") or sorted(config)[:8]
        raise ModelError(f"{path} is not a GPT-2 config (found model_type/architectures/keys: {found})")
    return config


def load_hf_gpt2(folder: str | Path, tokenizer: Any = "auto") -> GPT:
    """Load a Hugging Face GPT-2 folder as a gptforge :class:`GPT` (CPU, eval mode).

    Args:
        folder: holds ``config.json`` and ``model.safetensors`` or ``pytorch_model.bin``,
            and usually ``vocab.json`` + ``merges.txt``.
        tokenizer: ``"auto"`` reads the folder's tokenizer files (see
            :func:`gptforge.interop.hf_tokenizer.tokenizer_from_hf_folder`); None skips it.

    Returns:
        The model with ``.tokenizer`` set (or None when ``tokenizer=None``).
    """
    from gptforge.model.loading import load_state_strict

    folder = Path(folder)
    hf_config = read_hf_config(folder)
    config = gpt_config_from_hf(hf_config, source=str(folder / "config.json"))
    state = gpt_state_from_hf(read_hf_state(folder), config, source=str(folder))
    with torch.device("meta"):
        model = GPT(config)
    if config.tie_weights and "transformer.wte.weight" in state:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    load_state_strict(model, state, folder)
    if config.tie_weights:
        model.lm_head.weight = model.transformer.wte.weight
    model.tokenizer = tokenizer_from_hf_folder(folder, config.vocab_size) if tokenizer == "auto" else tokenizer
    return model.eval()


def tokenizer_from_hf_folder(folder: str | Path, vocab_size: int) -> Any:
    """The GPT-2 tokenizer of a Hugging Face folder.

    Reads ``vocab.json`` + ``merges.txt`` (the same formats as OpenAI's ``encoder.json`` +
    ``vocab.bpe``), else the BPE inside a fast ``tokenizer.json``. A folder with neither
    falls back to the built-in ``gpt2`` tokenizer, with a warning, when the model has
    GPT-2's 50257 ids; otherwise it is an error (the ids would mean nothing).

    Raises:
        ModelError: no tokenizer files and a vocabulary that is not GPT-2's.
    """
    from gptforge.tokenizer import load_tokenizer
    from gptforge.tokenizer.gpt2 import GPT2_VOCAB_SIZE, GPT2Tokenizer

    folder = Path(folder)
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    if vocab.is_file() and merges.is_file():
        tok = GPT2Tokenizer(vocab, merges)
    elif (folder / "tokenizer.json").is_file() and (fast := _hf_fast_tokenizer(folder / "tokenizer.json")) is not None:
        tok = fast
    elif vocab_size == GPT2_VOCAB_SIZE:
        logger.warning(
            "%s has no vocab.json + merges.txt; using the built-in GPT-2 tokenizer (the model has its 50257 ids)",
            folder,
        )
        return load_tokenizer("gpt2")
    else:
        raise ModelError(
            f"{folder} has no tokenizer (vocab.json + merges.txt) and its vocab_size {vocab_size} is not "
            f"GPT-2's {GPT2_VOCAB_SIZE}, so the built-in gpt2 tokenizer cannot stand in; "
            "copy the tokenizer files into the folder"
        )
    if tok.vocab_size > vocab_size:
        raise ModelError(
            f"the tokenizer in {folder} has {tok.vocab_size} ids but the model only {vocab_size}; "
            "they do not belong together"
        )
    return tok


def _hf_fast_tokenizer(path: Path) -> Any:
    """A :class:`GPT2Tokenizer` built in memory from a byte-level BPE ``tokenizer.json`` (HF fast
    format), or None if it is another kind. Nothing is written: the vocab and merges once went
    to a predictable shared ``/tmp`` folder that another local user could pre-create."""
    import json

    from gptforge.tokenizer.gpt2 import GPT2Tokenizer

    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
        model = spec["model"]
        if model.get("type") != "BPE":
            return None
        vocab, merges = model["vocab"], model["merges"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    lines = [m if isinstance(m, str) else " ".join(m) for m in merges]
    return GPT2Tokenizer.from_tables(vocab, lines, source=str(path))
