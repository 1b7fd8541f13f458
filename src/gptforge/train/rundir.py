"""The run dir: refusing to clobber one, writing the resolved config, reloading it for a resume."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from gptforge.config import apply
from gptforge.errors import CheckpointError
from gptforge.io import read_yaml, write_yaml
from gptforge.train.config import RunConfig, run_config_from_dict, run_config_to_dict

CONFIG_FILE = "config.yaml"


def start_new_run(run_dir: Path, overwrite: bool) -> None:
    """Make ``run_dir`` for a fresh run; an existing non-empty one needs ``overwrite``.

    Raises:
        CheckpointError: the run dir exists and neither --resume nor --overwrite was given.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise CheckpointError(f"run dir {run_dir} exists and is a file; choose another --out")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if not overwrite:
            raise CheckpointError(
                f"run dir {run_dir} already exists; pass --resume {run_dir} to continue it, "
                "--overwrite to start it over, or choose another --out"
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


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
