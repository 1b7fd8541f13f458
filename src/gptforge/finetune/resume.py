"""Progress checkpoints of a fine-tuning run, so a killed run continues instead of starting over.

A fine-tuning run dir is built in a temporary folder and renamed when complete, so
nothing half-done ever looks like a result. Progress therefore lives beside it, in
``.OUT.resume/`` (one checkpoint, replaced atomically each time)::

    trainable.safetensors   the parameters being trained (all of them, or LoRA's and the head's)
    optimizer.pt            the AdamW state dict (tensors + plain types; weights_only=True)
    state.json              step, tokens, the metrics lines so far, every RNG state, the
                            run's settings (``fingerprint``) and the sha256 of both files

Running the same command again finds it and continues from that step: the frozen
weights come from the same base model, the data order from the seed, so the result
is the one an uninterrupted run gives (bitwise on the CPU). Different settings are
refused; ``--overwrite`` starts over. The folder is removed when the run completes.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from gptforge.errors import CheckpointError, ConfigError, GptforgeError
from gptforge.io import (
    FORMAT_VERSION,
    atomic_dir,
    find_bad_file,
    load_safetensors,
    read_json,
    save_safetensors,
    sha256_file,
    torch_load_safe,
    write_json,
)
from gptforge.train.checkpoint import get_rng_state, set_rng_state

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "state.json"
KIND = "gptforge-finetune-progress"


def resume_dir_for(out: str | Path) -> Path:
    """Where the progress of the run that will be written to ``out`` is kept."""
    out = Path(out)
    return out.with_name(f".{out.name}.resume")


# Settings that do not change what is computed: a resumed run may differ in them.
_NOT_FINGERPRINTED = {"out", "overwrite", "device", "progress", "log_interval", "checkpoint_every"}


def run_fingerprint(task: str, opts: Any, loop: Any) -> dict[str, Any]:
    """What a resumed run must share with the stopped one: the task, every option (both
    dataclasses, less ``_NOT_FINGERPRINTED``) and the data file's sha256, as JSON values."""
    fp: dict[str, Any] = {"task": task}
    fp.update({k: v for k, v in asdict(opts).items() if k not in _NOT_FINGERPRINTED})
    fp.update({f"loop.{k}": v for k, v in asdict(loop).items() if k not in _NOT_FINGERPRINTED})
    data = Path(opts.data)
    fp["data_sha256"] = sha256_file(data) if data.is_file() else None
    return json.loads(json.dumps(fp))  # tuples -> lists, as state.json gives them back


def open_progress(task: str, opts: Any, loop: Any) -> tuple[Path, dict[str, Any]]:
    """The progress folder of the run writing ``opts.out`` and the run's fingerprint.

    With ``opts.overwrite`` the run starts over, so an earlier run's progress is discarded.
    """
    folder = resume_dir_for(opts.out)
    if opts.overwrite:
        discard_progress(folder)
    return folder, run_fingerprint(task, opts, loop)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that require grad, by name (a tied matrix appears once)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def save_progress(
    folder: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    fingerprint: dict[str, Any],
) -> None:
    """Replace the checkpoint in ``folder`` by the current one (atomically)."""
    try:
        with atomic_dir(folder, overwrite=True) as tmp:
            save_safetensors(trainable_state(model), tmp / WEIGHTS_FILE)
            torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
            files = {name: sha256_file(tmp / name) for name in (WEIGHTS_FILE, OPTIMIZER_FILE)}
            write_json(tmp / STATE_FILE, {
                "format_version": FORMAT_VERSION, "kind": KIND, **state,
                "rng": get_rng_state(), "fingerprint": fingerprint, "files": files,
            })  # fmt: skip
    except OSError as e:
        raise CheckpointError(
            f"cannot write the fine-tuning checkpoint {folder}: {e.strerror or e}; free disk space "
            "(or fix permissions) and run the same command again"
        ) from None


def load_progress(
    folder: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    fingerprint: dict[str, Any],
) -> dict[str, Any] | None:
    """Restore the checkpoint in ``folder`` into ``model`` and ``optimizer``; returns its state.

    Returns None when there is none, or when it is damaged (a warning names the file;
    the run starts over, which gives the same result, only later).

    Raises:
        ConfigError: the checkpoint belongs to a run with other settings.
    """
    state_path = folder / STATE_FILE
    if not state_path.is_file():
        return None
    try:
        state = read_json(state_path, "fine-tuning checkpoint state")
    except GptforgeError as e:
        logger.warning("ignoring the damaged fine-tuning checkpoint in %s (%s); starting over", folder, e)
        return None
    if not isinstance(state, dict) or state.get("kind") != KIND or not {"step", "rng", "files"} <= state.keys():
        logger.warning("ignoring %s: not a complete fine-tuning checkpoint state; starting over", state_path)
        return None
    saved_fingerprint = state.get("fingerprint") or {}
    if saved_fingerprint != fingerprint:
        changed = sorted(
            k for k in set(fingerprint) | set(saved_fingerprint) if fingerprint.get(k) != saved_fingerprint.get(k)
        )
        raise ConfigError(
            f"{folder} holds the progress of a stopped run with other settings ({', '.join(changed)}); "
            "run that command again to finish it, or pass --overwrite to start this one over"
        )
    bad = find_bad_file(folder, state.get("files", {}))
    if bad is not None:
        logger.warning("the fine-tuning checkpoint file %s is %s; starting over", *bad)
        return None
    weights = load_safetensors(folder / WEIGHTS_FILE)
    params = trainable_state(model)
    if weights.keys() != params.keys():
        raise CheckpointError(f"{folder / WEIGHTS_FILE} does not hold this run's trainable parameters")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name])
    optimizer.load_state_dict(torch_load_safe(folder / OPTIMIZER_FILE))
    set_rng_state(state["rng"])
    return state


def discard_progress(folder: Path) -> None:
    """Remove the checkpoint folder (after the run completed, or to start over)."""
    shutil.rmtree(folder, ignore_errors=True)
