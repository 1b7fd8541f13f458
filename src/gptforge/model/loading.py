"""Model dirs: save a model with its config and tokenizer, and load any model PATH.

A model dir holds ``config.json`` (``{"format_version", "kind": "gptforge-model",
"model": {GPTConfig fields}, ...}``), ``model.safetensors`` and ``tokenizer.json``.
``config.json["variants"]`` lists what was applied to the base GPT (classifier head,
LoRA, quantization) in order; loading replays it (:mod:`gptforge.model.variants`).
Other parts of gptforge add their own top-level keys (``template``, ``training``).

``PATH`` may be a model dir, a run dir (its ``final/``, else the checkpoint that
``latest`` names), or a Hugging Face GPT-2 folder (``model_type: gpt2``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from gptforge.config import from_dict, to_dict
from gptforge.errors import GptforgeError, ModelError
from gptforge.io import (
    FORMAT_VERSION,
    check_format_version,
    load_safetensors,
    read_json,
    save_safetensors,
    write_json,
)
from gptforge.model.config import GPTConfig
from gptforge.model.gpt import GPT
from gptforge.model.hub_cache import find_cached_gpt2, is_gpt2_name
from gptforge.model.variants import (
    LEGACY_ORDER,
    apply_variants,
    finish_variants,
    variants_from_config,
)

logger = logging.getLogger(__name__)

MODEL_KIND = "gptforge-model"


def model_state_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict to write: unwrapped keys, and a tied tensor written once (under its first name).

    safetensors refuses tensors that share memory; the tie is restored at load
    (:func:`fill_tied`, :func:`retie`): the LM head shares the token embedding
    (``config.tie_weights``), also when LoRA wraps both (``lm_head.base.weight``).
    """
    model = unwrap_model(model)
    state = model.state_dict()
    drop = {name for group in tied_groups(model) for name in group[1:]}
    return {k: v for k, v in state.items() if k not in drop}


def tied_groups(model: torch.nn.Module) -> list[list[str]]:
    """Names of the state-dict entries that are one tensor (parameter or buffer), first name first."""
    by_id: dict[int, list[str]] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        by_id.setdefault(id(t), []).append(name)
    return [names for names in by_id.values() if len(names) > 1]


def fill_tied(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Add the names a tied tensor was not written under (taken from the name it was)."""
    for group in tied_groups(model):
        present = next((n for n in group if n in state), None)
        if present is not None:
            for name in group:
                state.setdefault(name, state[present])
    return state


def retie(model: torch.nn.Module, groups: list[list[str]]) -> None:
    """Make every name of each group point at the first one's parameter again (after ``assign=True``)."""
    for group in groups:
        first_mod, _, first_attr = group[0].rpartition(".")
        shared = getattr(model.get_submodule(first_mod) if first_mod else model, first_attr)
        for name in group[1:]:
            mod, _, attr = name.rpartition(".")
            setattr(model.get_submodule(mod) if mod else model, attr, shared)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module behind ``torch.compile`` (``_orig_mod``) and DDP/FSDP (``module``)."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(getattr(model, "module", None), torch.nn.Module):
            model = model.module
        else:
            return model


def strip_wrapper_prefixes(state: dict[str, Any]) -> dict[str, Any]:
    """Drop ``_orig_mod.`` / ``module.`` key prefixes left by compile or DDP (older files)."""
    out = {}
    for key, value in state.items():
        while key.startswith(("_orig_mod.", "module.")):
            key = key.split(".", 1)[1]
        out[key] = value
    return out


def save_model(
    model: GPT, out_dir: str | Path, tokenizer: Any = None, extra_config: dict[str, Any] | None = None
) -> Path:
    """Write a model dir (``config.json``, ``model.safetensors``, ``tokenizer.json``) into ``out_dir``.

    The caller makes it atomic (``io.atomic_dir``) where that matters.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = unwrap_model(model)
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    config = {"format_version": FORMAT_VERSION, "kind": MODEL_KIND, "model": to_dict(model.config),
              "variants": [dict(v) for v in getattr(model, "variants", None) or []]}
    # the variants come from the model (what is in memory), never from a caller's copy of an old list
    config.update({k: v for k, v in (extra_config or {}).items() if k not in _NOT_EXTRA})
    save_safetensors(model_state_for_saving(model), out / "model.safetensors", metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save(out / "tokenizer.json")
    write_json(out / "config.json", config)
    return out


def resolve_model_dir(path: str | Path) -> Path:
    """Find the model dir behind ``path``: itself, a run's ``final/``, or its latest checkpoint;
    a GPT-2 name (``gpt2``, ``gpt2-medium``, ...) that is not a folder here is looked up in the
    Hugging Face cache."""
    p = Path(path)
    if not p.exists() and is_gpt2_name(str(path)):
        return find_cached_gpt2(str(path))  # nanoGPT's init_from='gpt2', from the Hugging Face cache
    if not p.exists():
        raise ModelError(f"model path {p} does not exist; pass a model dir, a run dir or a GPT-2 folder")
    if (p / "config.json").is_file():
        return p
    final = p / "final" if (p / "final" / "config.json").is_file() else None
    ckpt = None
    latest = p / "latest"
    if latest.is_file():
        name = latest.read_text().strip()
        if name and (p / "checkpoints" / name / "config.json").is_file():
            ckpt = p / "checkpoints" / name
    if final is not None and ckpt is not None:
        # A resumed, extended run that was stopped has a checkpoint newer than its final/.
        final_step, ckpt_step = _saved_step(final), _saved_step(ckpt)
        if final_step is None or ckpt_step is None:  # no step recorded: the one written last wins
            newer = (ckpt / "config.json").stat().st_mtime > (final / "config.json").stat().st_mtime
        else:
            newer = ckpt_step > final_step
        if not newer:
            logger.info("loading %s (step %s; the latest checkpoint %s is not newer)", final, final_step, ckpt.name)
            return final
        logger.info("loading checkpoint %s (step %s): newer than %s (step %s)", ckpt, ckpt_step, final, final_step)
    if final is not None and ckpt is None:
        return final
    if ckpt is not None:
        _check_checkpoint_files(ckpt)
        return ckpt
    raise ModelError(
        f"{p} holds no model: expected config.json + model.safetensors, a run dir with final/, "
        "or a run dir with a latest checkpoint"
    )


def _saved_step(model_dir: Path) -> int | None:
    """The training step a run's model dir holds: ``config.json``'s ``training.step``."""
    try:
        step = read_json(model_dir / "config.json", what="model config").get("training", {}).get("step")
    except (GptforgeError, AttributeError):
        return None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def _check_checkpoint_files(ckpt: Path) -> None:
    """Refuse a checkpoint whose model files no longer match the sha256 in its state.json (bit rot)."""
    from gptforge.io import find_bad_file

    state_path = ckpt / "state.json"
    if not state_path.is_file():
        return
    state = read_json(state_path, what="checkpoint state")
    files = state.get("files") if isinstance(state, dict) else None
    files = files if isinstance(files, dict) else {}
    # the model files only (not the optimizer's), and only those present: a missing one
    # is left to the loader's own error
    model_files = {
        name: files[name]
        for name in ("config.json", "model.safetensors", "tokenizer.json")
        if isinstance(files.get(name), str) and (ckpt / name).is_file()
    }
    bad = find_bad_file(ckpt, model_files)
    if bad is not None:
        raise ModelError(
            f"checkpoint file {bad[0]} is corrupt (sha256 mismatch with {state_path}); "
            f"load an earlier checkpoint folder under {ckpt.parent}, or `gptforge train --resume` the run"
        )


def load_model(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> GPT:
    """Load a model (in eval mode) with its tokenizer at ``model.tokenizer``.

    Args:
        path: a model dir, a run dir, or a Hugging Face GPT-2 folder.
        device: where to put the weights.
        dtype: cast floating weights to this dtype (default: as saved).
    """
    model_dir = resolve_model_dir(path)
    config = read_json(model_dir / "config.json", what="model config")
    if not isinstance(config, dict):
        raise ModelError(f"{model_dir / 'config.json'} is not a JSON object")
    if config.get("model_type") == "gpt2" or "n_ctx" in config or "n_positions" in config:
        from gptforge.model.hf_gpt2 import load_hf_gpt2  # a Hugging Face GPT-2 folder

        model = load_hf_gpt2(model_dir)
    else:
        if config.get("kind") != MODEL_KIND or "model" not in config:
            raise ModelError(f"{model_dir / 'config.json'} is not a gptforge model config (no 'model' section)")
        check_format_version(config, model_dir / "config.json", "model config")
        gpt_config = from_dict(GPTConfig, config["model"], source=str(model_dir / "config.json"))
        variants = variants_from_config(config, model_dir / "config.json")
        model = build_model(gpt_config, variants, model_dir)
        model.tokenizer = _load_tokenizer_if_any(model_dir)
    model.model_dir = model_dir
    model.extra_config = {k: v for k, v in config.items() if k not in _NOT_EXTRA}
    if dtype is not None:
        model.to(dtype=dtype)
    return model.to(device).eval()


# config.json keys that are not "extra": the model itself and its variants (older spellings too)
_NOT_EXTRA = {"model", "format_version", "kind", "variants", *LEGACY_ORDER}


def build_model(gpt_config: GPTConfig, variants: list[dict[str, Any]], model_dir: Path) -> GPT:
    """The base GPT on the meta device, each variant applied in order, then the weights, once."""
    try:
        with torch.device("meta"):  # no memory yet: shapes are checked against the file first
            model = GPT(gpt_config)
    except (RuntimeError, OverflowError, TypeError, ValueError) as e:  # sizes past what torch can express
        raise ModelError(
            f"{model_dir / 'config.json'} describes a model that cannot be built ({str(e).splitlines()[0]}); "
            "check its vocab_size, block_size, n_embd, n_layer and n_head"
        ) from None
    with torch.device("meta"):
        model = apply_variants(model, variants, model_dir / "config.json")
    load_weights(model, model_dir)
    finish_variants(model, variants)
    return model


def load_weights(model: torch.nn.Module, model_dir: Path) -> torch.nn.Module:
    """Fill a (meta-device) ``model`` from ``model_dir/model.safetensors`` and restore the weight tie.

    A tied tensor is stored once (the LM head as ``transformer.wte.weight``), so its other
    names are filled from that one and aliased back to it after the load.
    """
    state = strip_wrapper_prefixes(load_safetensors(model_dir / "model.safetensors"))
    return load_state_tied(model, state, model_dir / "model.safetensors")


def load_state_tied(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path | str) -> torch.nn.Module:
    """Fill a (meta-device) ``model`` from ``state`` strictly, keeping its weight tie.

    ``assign=True`` gives every name its own tensor, so the names that were one tensor in
    ``model`` (the LM head and the token embedding) are filled from whichever is present
    and aliased back to one parameter after the load.
    """
    groups = tied_groups(model)
    fill_tied(state, model)
    load_state_strict(model, state, source)
    retie(model, groups)
    return model


def load_state_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path | str) -> None:
    """``load_state_dict(assign=True)`` with errors that name missing, unexpected and misshapen keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshapen = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or misshapen:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:5]}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:5]}")
        if misshapen:
            parts.append(f"wrong shapes {misshapen[:5]}")
        raise ModelError(f"weights in {source} do not match the config: {'; '.join(parts)}")
    model.load_state_dict(state, strict=True, assign=True)


def _load_tokenizer_if_any(model_dir: Path) -> Any:
    if (model_dir / "tokenizer.json").is_file():
        from gptforge.tokenizer import load_tokenizer

        return load_tokenizer(str(model_dir / "tokenizer.json"))
    logger.warning("no tokenizer.json in %s; model.tokenizer is None", model_dir)
    return None
