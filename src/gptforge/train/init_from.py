"""``gptforge train --init-from SPEC``: continue pretraining a trained model on new text.

SPEC is anything ``load_model`` reads: a model dir, a run dir (its ``final/``, else its
newest checkpoint) or a Hugging Face GPT-2 folder (nanoGPT's ``init_from='gpt2'`` with
the folder ``gptforge import`` or ``transformers`` wrote). The model shape comes from the
source, so a ``model.*`` setting other than ``model.dropout`` is refused; the dataset must
have been made with the source's tokenizer (another one is refused, naming both). With
``lora`` the source is frozen and LoRA adapters train (``--lora.rank R [--lora.alpha A]
[--lora.targets c_attn,c_proj,c_fc]``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from gptforge.errors import ConfigError

# keys of the model section a continued run may set: not the shape
MAY_CHANGE = {"dropout"}


def shape_overrides(overrides: dict[str, Any], cfg_file_model: dict[str, Any] | None = None) -> list[str]:
    """The ``model.*`` settings that would change the source's shape (refused)."""
    keys = [k for k in overrides if k.startswith("model.") and k.split(".", 1)[1] not in MAY_CHANGE]
    keys += [f"model.{k}" for k in (cfg_file_model or {}) if k not in MAY_CHANGE]
    return sorted(set(keys))


def prepare_init(spec: str, cfg: Any, lora: dict[str, Any] | None = None) -> tuple[Any, Callable[[], torch.nn.Module]]:
    """``(cfg with the source's model section, a function building the start model)``.

    Raises:
        ModelError / DataError: the source does not load, or its tokenizer is not the data's.
    """
    from gptforge.config import apply, to_dict
    from gptforge.data.shards import open_dataset
    from gptforge.model.loading import load_model

    model = load_model(spec)
    if cfg.data.dir is None:
        raise ConfigError("--init-from needs --data DIR: a dataset made with the source model's tokenizer")
    dataset = open_dataset(cfg.data.dir)
    if model.tokenizer is None:
        raise ConfigError(f"{spec} has no tokenizer.json, so its dataset cannot be checked; add one")
    dataset.check_compatible(model.tokenizer)
    shape = {f"model.{k}": v for k, v in to_dict(model.config).items() if k not in MAY_CHANGE}
    cfg = apply(cfg, shape, source=f"--init-from {spec}")
    if cfg.model.dropout != model.config.dropout:
        model.config = cfg.model
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = cfg.model.dropout
    if lora:
        from gptforge.model.lora import apply_lora

        torch.manual_seed(cfg.train.seed)  # the adapters' initial weights
        apply_lora(model, int(lora.get("rank", 8)), float(lora.get("alpha", 16.0)), float(lora.get("dropout", 0.0)),
                   tuple(lora.get("targets", ("c_attn", "c_proj", "c_fc"))))  # fmt: skip
    else:
        model.requires_grad_(True)
    model.train()
    return cfg, lambda: model
