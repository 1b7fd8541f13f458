"""Model variants: what was applied to the base GPT, in order, and how loading replays it.

A model dir's ``config.json`` lists the variants in the order they were applied::

    "variants": [
        {"kind": "classifier", "labels": ["ham", "spam"], "max_length": 120},
        {"kind": "lora", "rank": 8, "alpha": 16.0, "modules": ["transformer.h.0.attn.c_attn", ...]},
        {"kind": "quantization", "method": "int8", "linear": [...], ...}
    ]

Loading builds the base :class:`~gptforge.model.gpt.GPT` on the meta device, hands it
to each variant's ``apply_variant(model, entry, source) -> model`` in turn (structure
only, no weights), loads ``model.safetensors`` once, strictly, into the result, and
then calls each variant's ``finish_variant(model, entry)`` where it has one (re-aligning
quantized tensors, say). The operations that make a variant (``GPTClassifier.from_gpt``,
``apply_lora``, ``quantize``) append their entry to ``model.variants`` themselves, and
``merge_lora`` removes the LoRA one, so the list always describes the modules in memory
and ``save_model`` writes it as it is.

Why import strings: the modules that implement a kind (the classifier of fine-tuning,
quantization) import the model, so the model package must not import them (that was two import cycles, and a
behaviour that depended on which module happened to be imported first). They are named
here and imported only when a model dir that uses them is loaded; nothing registers
itself at import time. A combination that cannot be built is refused by the command that
would create it (``quantize``, ``finetune``), never here.

Older model dirs have no ``variants`` list but top-level ``classifier`` / ``lora`` /
``quantization`` keys; :func:`variants_from_config` reads those in the only order the
older commands could produce them.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from types import ModuleType
from typing import Any

import torch.nn as nn

from gptforge.errors import ModelError

logger = logging.getLogger(__name__)

# kind -> the module implementing apply_variant(model, entry, source) [and finish_variant(model, entry)]
IMPLEMENTATIONS: dict[str, str] = {
    "classifier": "gptforge.finetune.classify",
    "lora": "gptforge.model.lora",
    "quantization": "gptforge.quantize.convert",
}
# the order the commands of format 1 applied them in (classify -> finetune --merge=no -> quantize)
LEGACY_ORDER = ("classifier", "lora", "quantization")


def variants_from_config(config: dict[str, Any], source: Path | str) -> list[dict[str, Any]]:
    """The ordered variant entries of a ``config.json`` (upgrading the older top-level keys)."""
    if "variants" in config:
        variants = config["variants"]
        if not isinstance(variants, list) or not all(isinstance(v, dict) for v in variants):
            raise ModelError(f"{source}: 'variants' must be a list of objects")
        for v in variants:
            if v.get("kind") not in IMPLEMENTATIONS:
                raise ModelError(
                    f"{source}: unknown model variant {v.get('kind')!r} (this gptforge knows "
                    f"{sorted(IMPLEMENTATIONS)}); upgrade gptforge"
                )
        return [dict(v) for v in variants]
    legacy = []
    for kind in LEGACY_ORDER:
        entry = config.get(kind)
        if entry:
            if not isinstance(entry, dict):
                raise ModelError(f"{source}: '{kind}' must be an object")
            legacy.append({"kind": kind, **entry})
    if legacy:
        logger.info("%s: read the older %s keys as the variant list %s", source,
                    "/".join(v["kind"] for v in legacy), [v["kind"] for v in legacy])
    return legacy


def implementation(kind: str) -> ModuleType:
    """The module that builds variant ``kind``."""
    return importlib.import_module(IMPLEMENTATIONS[kind])


def apply_variants(model: nn.Module, variants: list[dict[str, Any]], source: Path | str) -> nn.Module:
    """Build each variant's structure on ``model`` in order (no weights are read)."""
    model.variants = []
    for entry in variants:
        model = implementation(entry["kind"]).apply_variant(model, entry, source)
    return model


def finish_variants(model: nn.Module, variants: list[dict[str, Any]]) -> None:
    """After the weights are loaded: each variant's ``finish_variant`` (where it has one)."""
    for entry in variants:
        finish = getattr(implementation(entry["kind"]), "finish_variant", None)
        if finish is not None:
            finish(model, entry)


def variant_kinds(model: nn.Module) -> list[str]:
    """The kinds applied to ``model``, in order (``[]`` for a plain GPT)."""
    return [v["kind"] for v in getattr(model, "variants", None) or []]


def add_variant(model: nn.Module, entry: dict[str, Any]) -> None:
    """Record that ``entry`` was applied to ``model`` (last)."""
    model.variants = [*(getattr(model, "variants", None) or []), dict(entry)]


def remove_variants(model: nn.Module, kind: str) -> None:
    """Forget every ``kind`` entry (its modules were folded back into plain ones)."""
    model.variants = [v for v in getattr(model, "variants", None) or [] if v["kind"] != kind]
