"""Resuming a run: find the checkpoint, check it fits the run, load it, say what changed.

The loop (:class:`gptforge.train.loop.Trainer`) calls these once at start-up, before the
first step; they are plain functions taking what they need, so the resume path reads
apart from the loop. A checkpoint holds every part of :meth:`~gptforge.train.loop.Trainer.checkpoint_parts`:
weights, optimizer, grad scaler, each rank's data position and RNG streams, the loop's
counters and the run config it was saved under.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from gptforge.errors import GptforgeError
from gptforge.train import checkpoint as ckpt
from gptforge.train import distributed as dist
from gptforge.train.config import RunConfig, model_changes, run_config_to_dict
from gptforge.train.rundir import check_new_run
from gptforge.train.state import TrainState

logger = logging.getLogger(__name__)


def find_checkpoint(
    run_dir: Path, cfg: RunConfig, task: Any, *, resume: bool, resume_from: str | Path | None, overwrite: bool,
) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint to continue from (checked against this run), or None for a new run."""
    if resume_from is not None:
        path = Path(resume_from)
        found = (path, ckpt.verify_checkpoint(path))
    elif resume:
        found = ckpt.find_resume_checkpoint(run_dir)
    else:
        def refuse_existing() -> None:  # refused now, before any work; rank 0 decides for all
            # an existing run, or a folder --overwrite may not replace
            check_new_run(run_dir, overwrite, protect=(cfg.data.dir,))

        dist.decided_on_main(refuse_existing)
        return None
    check_resumable(*found, run_dir, cfg, task)
    return found


def check_resumable(path: Path, state: dict[str, Any], run_dir: Path, cfg: RunConfig, task: Any) -> None:
    """Refuse a checkpoint whose model shape differs from ``cfg.model``, or that ``task`` cannot continue."""
    from gptforge.config import from_dict
    from gptforge.io import read_json
    from gptforge.model.config import GPTConfig

    saved = from_dict(GPTConfig, read_json(path / "config.json")["model"], source=str(path))
    changes = model_changes(saved, cfg.model)
    if changes:
        raise GptforgeError(
            f"cannot resume {run_dir}: the model shape would change ({'; '.join(changes)}); "
            "drop those flags, or start a new run with --out"
        )
    task.check_resume(state)


def restore_parts(
    path: Path, state: dict[str, Any], *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None, loader: Any, train_state: TrainState, rank: int, world_size: int,
) -> None:
    """Load the checkpoint at ``path`` (its ``state.json`` already read as ``state``) into the live objects."""
    ckpt.load_checkpoint_weights(path, model)
    ckpt.load_optimizer_state(path, optimizer)
    if scaler is not None and state.get("grad_scaler"):
        scaler.load_state_dict(state["grad_scaler"])
    own = dist.state_for_rank(state, rank, world_size)  # each rank's data position and RNG
    loader.load_state_dict(own["data"])
    ckpt.set_rng_state(own["rng"])
    train_state.load_state_dict(state)


def config_changes(state: dict[str, Any], cfg: RunConfig) -> dict[str, Any]:
    """What a resume changes in the run config, ``{"section.key": [was, now]}``.

    Warns when it changes more than the step budget (the saved config travels in each
    checkpoint); the loop records the change in metrics.jsonl at this step.
    """
    saved = state.get("run_config")
    changes: dict[str, Any] = {}
    if not isinstance(saved, dict):
        return changes
    now = json.loads(json.dumps(run_config_to_dict(cfg), default=str))
    budget = {"train.max_steps", "train.time_budget_s"}
    for section in sorted(set(saved) | set(now)):
        a, b = saved.get(section), now.get(section)
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                if a.get(key) != b.get(key):
                    changes[f"{section}.{key}"] = [a.get(key), b.get(key)]
        elif a != b:
            changes[section] = [a, b]
    others = sorted(k for k in changes if k not in budget)
    if others:
        logger.warning("resuming with a changed config: %s (was -> now: %s)", ", ".join(others),
                       "; ".join(f"{k} {changes[k][0]} -> {changes[k][1]}"
                                 for k in others))  # fmt: skip
    return changes
