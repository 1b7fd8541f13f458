"""The run dir: refusing to clobber one, writing the resolved config, reloading it for a resume."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from gptforge.config import apply
from gptforge.errors import CheckpointError
from gptforge.io import check_replaceable, move_aside, read_yaml, write_yaml
from gptforge.train.config import RunConfig, run_config_from_dict, run_config_to_dict

CONFIG_FILE = "config.yaml"
logger = logging.getLogger(__name__)


def check_new_run(run_dir: Path, overwrite: bool, protect: tuple[Any, ...] = ()) -> None:
    """Refuse, before any work, a ``run_dir`` that a fresh run may not take (see :func:`start_new_run`).

    Raises:
        CheckpointError: the run dir is a file, or exists and neither --resume nor --overwrite
            was given.
        GptforgeError: --overwrite on a folder that is not a gptforge output (``check_replaceable``).
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise CheckpointError(f"run dir {run_dir} exists and is a file; choose another --out")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if not overwrite:
            raise CheckpointError(
                f"run dir {run_dir} already exists; pass --resume {run_dir} to continue it, "
                "--overwrite to start it over, or choose another --out"
            )
        check_replaceable(run_dir, protect)


def start_new_run(run_dir: Path, overwrite: bool, protect: tuple[Any, ...] = ()) -> Path | None:
    """Make ``run_dir`` for a fresh run; an existing non-empty one needs ``overwrite``.

    The old run is moved aside, not deleted: the caller deletes it once the new run has
    written its first checkpoint (:func:`discard_replaced`), or puts it back if the new run
    fails before that (:func:`restore_replaced`).

    Returns:
        Where the replaced run now is, or None when there was none.
    """
    check_new_run(run_dir, overwrite, protect)
    aside = None
    if run_dir.is_dir() and any(run_dir.iterdir()):
        aside = move_aside(run_dir)
        logger.info("--overwrite: the old run %s is kept at %s until the first checkpoint", run_dir, aside)
    run_dir.mkdir(parents=True, exist_ok=True)
    return aside


def discard_replaced(aside: Path) -> None:
    """Delete the run that ``--overwrite`` replaced (the new one has a checkpoint now)."""
    shutil.rmtree(aside, ignore_errors=True)


def restore_replaced(run_dir: Path, aside: Path) -> None:
    """Put back the replaced run: the new one failed before writing anything worth keeping."""
    shutil.rmtree(run_dir, ignore_errors=True)
    os.replace(aside, run_dir)
    logger.warning("the new run failed before its first checkpoint; the old run %s is back in place", run_dir)


def write_run_config(run_dir: Path, cfg: RunConfig) -> None:
    write_yaml(run_dir / CONFIG_FILE, run_config_to_dict(cfg))


def load_run_config(run_dir: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """The saved ``RUN/config.yaml`` with ``overrides`` applied (for ``--resume``).

    Raises:
        CheckpointError: the run dir or its config is missing.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"cannot resume: run dir {run_dir} does not exist; start it with --out {run_dir}")
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"cannot resume: {run_dir} has no {CONFIG_FILE}, so it is not a gptforge run dir")
    values = read_yaml(path, what="run config")
    if not isinstance(values, dict):
        raise CheckpointError(f"{path} does not hold a run config mapping; the run dir is damaged")
    cfg = run_config_from_dict(values, source=str(path))
    return apply(cfg, overrides or {}, source="command-line flags")
