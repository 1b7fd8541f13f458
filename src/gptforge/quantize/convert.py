"""Turn a float GPT into a quantized one by module swap, and save / load quantized model dirs.

``quantize(model, method)`` replaces each ``nn.Linear`` inside the transformer blocks
with a :class:`~gptforge.quantize.modules.QuantLinear` (and, on request, the embeddings
and the LM head), in place. The rest (LayerNorms, biases, position embeddings unless
asked) stays float. Small models lose most from quantizing the embeddings and the LM
head (one matrix holds a large share of their weights and every logit goes through it),
so those stay float by default.

A quantized model dir is an ordinary model dir whose ``model.safetensors`` holds the
integer weights and their scales, and whose ``config.json`` lists a ``quantization`` variant::

    {"kind": "quantization", "format_version": 1, "method": "int4", "bits": 4, "group_size": 64,
     "symmetric": false, "linear": ["transformer.h.0.attn.c_attn", ...], "embedding": [],
     "tied_lm_head": false}

``load_model`` replays it with :func:`apply_variant` (empty quantized modules at those
names, on the meta device) before it loads the weights, then :func:`finish_variant`.
The variants applied before (a classifier head, unmerged LoRA adapters, whose frozen
layers are then quantized) are kept, and recorded before this one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from gptforge.errors import ConfigError, ModelError
from gptforge.model.gpt import GPT
from gptforge.model.loading import save_model, unwrap_model
from gptforge.model.variants import add_variant
from gptforge.quantize.modules import QuantEmbedding, QuantLinear
from gptforge.quantize.spec import BITS, GROUP_SIZES, check_method

logger = logging.getLogger(__name__)

QUANT_FORMAT_VERSION = 1


def is_quantized(model: nn.Module) -> bool:
    """Whether any module of ``model`` is already quantized."""
    return getattr(model, "quantization", None) is not None or any(
        isinstance(m, (QuantLinear, QuantEmbedding)) for m in model.modules()
    )


def _targets(
    model: GPT, include_embeddings: bool, include_lm_head: bool
) -> tuple[list[str], list[str], bool]:
    """(linear module names, embedding module names, tied head) to quantize."""
    tied = bool(model.config.tie_weights) and model.lm_head.weight is model.transformer.wte.weight
    linear = [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and n.startswith("transformer.h.")
    ]
    embedding: list[str] = []
    tied_head = False
    if tied and (include_embeddings or include_lm_head):
        if include_lm_head and not include_embeddings:  # asked for one half of a tied pair
            logger.warning(
                "lm_head and transformer.wte share one matrix (tie_weights); quantizing both as one int tensor"
            )
        else:
            logger.info("lm_head and transformer.wte are tied: quantized as one shared int tensor")
        embedding = ["transformer.wte"]
        tied_head = True
    else:
        if include_embeddings:
            embedding = ["transformer.wte"]
        if include_lm_head:
            linear.append("lm_head")
    if include_embeddings and "wpe" in model.transformer:  # rotary models have no position table
        embedding.append("transformer.wpe")
    return linear, embedding, tied_head


def _check_widths(model: GPT, names: list[str], group_size: int) -> None:
    bad = []
    for name in names:
        m = model.get_submodule(name)
        width = m.in_features if isinstance(m, nn.Linear) else m.embedding_dim
        if width % group_size:
            bad.append(f"{name} (width {width})")
    if bad:
        ok = [
            g
            for g in GROUP_SIZES
            if all(
                (
                    model.get_submodule(n).in_features
                    if isinstance(model.get_submodule(n), nn.Linear)
                    else model.get_submodule(n).embedding_dim
                )
                % g
                == 0
                for n in names
            )
        ]
        hint = (
            f"use --group-size {ok[0]}"
            if ok
            else "no supported group size (32, 64, 128) divides these widths; use int8"
        )
        raise ModelError(
            f"int4 group size {group_size} does not divide the input width of {', '.join(bad[:3])}"
            f"{' ...' if len(bad) > 3 else ''}; {hint}"
        )


def quantize(
    model: GPT,
    method: str,
    group_size: int = 64,
    include_embeddings: bool = False,
    include_lm_head: bool = False,
    symmetric: bool = False,
) -> GPT:
    """Quantize ``model``'s weights in place and return it (in eval mode).

    Args:
        model: a float :class:`GPT` (not already quantized).
        method: "int8" (per-output-channel absmax), "int8-dynamic" (the same weights,
            activations quantized per token at run time) or "int4" (group-wise).
        group_size: int4 group size along the input width: 32, 64 or 128.
        include_embeddings: also quantize ``wte`` and ``wpe`` (QuantEmbedding).
        include_lm_head: also quantize the LM head. With tied weights, quantizing
            either of ``wte``/``lm_head`` quantizes both as one shared tensor.
        symmetric: int4 only; symmetric groups (no zero point) instead of asymmetric.

    Returns:
        The same model object, with ``model.quantization`` describing what was done.
    """
    model = unwrap_model(model)
    check_method(method, group_size)
    if is_quantized(model):
        raise ModelError(
            "this model is already quantized; quantize the original float model instead"
        )
    if not isinstance(model, GPT):
        raise ModelError(f"expected a gptforge GPT model, got {type(model).__name__}")
    linear, embedding, tied_head = _targets(model, include_embeddings, include_lm_head)
    if method == "int4":
        _check_widths(model, linear + embedding, group_size)
    with torch.no_grad():
        for name in embedding:
            emb = model.get_submodule(name)
            _set_module(
                model, name, QuantEmbedding.from_embedding(emb, method, group_size, symmetric)
            )
        if tied_head:
            _set_module(model, "lm_head", QuantLinear.tied(model.transformer.wte))
        for name in linear:
            lin = model.get_submodule(name)
            _set_module(model, name, QuantLinear.from_linear(lin, method, group_size, symmetric))
    model.quantization = describe(method, group_size, symmetric, linear, embedding, tied_head)
    add_variant(model, {"kind": "quantization", **model.quantization})
    return model.eval()


def describe(
    method: str,
    group_size: int,
    symmetric: bool,
    linear: list[str],
    embedding: list[str],
    tied_head: bool,
) -> dict[str, Any]:
    """The ``quantization`` entry of config.json."""
    return {
        "format_version": QUANT_FORMAT_VERSION,
        "method": method,
        "bits": BITS[method],
        "group_size": group_size if method == "int4" else None,
        "symmetric": symmetric if method == "int4" else True,
        "linear": list(linear),
        "embedding": list(embedding),
        "tied_lm_head": tied_head,
    }


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def set_backend(model: nn.Module, backend: str) -> nn.Module:
    """Choose how every QuantLinear multiplies: "auto" (CPU kernels where they apply) or "reference"."""
    for m in model.modules():
        if isinstance(m, QuantLinear):
            m.backend = backend
            m._kernel_cache = None
    return model


def save_quantized(model: GPT, out_dir: str | Path, tokenizer: Any = None) -> Path:
    """Write a quantized model dir: integer weights + scales in model.safetensors, the method in config.json."""
    quant = getattr(model, "quantization", None)
    if quant is None:
        raise ModelError("this model is not quantized; call quantize(model, method) first")
    # the extra keys of the model it came from (template, training) travel; the variants
    # (this quantization among them) are the model's own list
    return save_model(model, out_dir, tokenizer=tokenizer, extra_config=getattr(model, "extra_config", None))


def apply_variant(model: GPT, entry: dict[str, Any], source: Path | str) -> GPT:
    """The ``quantization`` variant on a (meta-device) model being loaded: empty quantized
    modules at the names it lists, to be filled by the one strict load of the weights."""
    quant = {k: v for k, v in entry.items() if k != "kind"}
    if "method" not in quant:
        raise ModelError(f"{source}: the quantization variant must have a 'method'")
    if quant.get("format_version", QUANT_FORMAT_VERSION) > QUANT_FORMAT_VERSION:
        raise ModelError(
            f"{source}: quantization format {quant.get('format_version')} is newer than this gptforge "
            f"understands ({QUANT_FORMAT_VERSION}); upgrade gptforge"
        )
    method = quant["method"]
    group_size = quant.get("group_size") or 64
    symmetric = bool(quant.get("symmetric", method != "int4"))
    try:
        check_method(method, group_size)
    except ConfigError as e:
        raise ModelError(f"{source}: {e}") from None
    try:
        for name in quant.get("embedding", []):
            emb = model.get_submodule(name)
            _set_module(
                model, name,
                QuantEmbedding.empty(emb.num_embeddings, emb.embedding_dim, method, group_size, symmetric),
            )  # fmt: skip
        if quant.get("tied_lm_head"):
            _set_module(model, "lm_head", QuantLinear.tied(model.transformer.wte))
        for name in quant.get("linear", []):
            lin = model.get_submodule(name)
            _set_module(
                model, name,
                QuantLinear.empty(lin.in_features, lin.out_features, lin.bias is not None, method, group_size,
                                  symmetric),
            )  # fmt: skip
    except AttributeError as e:
        raise ModelError(f"{source}: the quantized module list does not fit the model config ({e})") from None
    model.quantization = quant
    add_variant(model, {"kind": "quantization", **quant})
    return model


def finish_variant(model: GPT, entry: dict[str, Any]) -> None:
    """After loading: the integer tensors to aligned memory (the CPU kernels need it)."""
    for m in model.modules():
        if isinstance(m, (QuantLinear, QuantEmbedding)):
            m.realign()
