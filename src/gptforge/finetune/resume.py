"""Where a fine-tuning run keeps its progress, and what a resumed run must share with it.

A fine-tuning run dir (``--out``) is built in a temporary folder and renamed when complete,
so nothing half-done ever looks like a result. The engine's own run dir (config.yaml,
metrics.jsonl, ``checkpoints/step_N/`` with the weights, optimizer, data position and RNG
states; see :mod:`gptforge.train.checkpoint`) is therefore the work folder beside it,
``.OUT.resume/``. Running the same command again (or with ``--resume OUT``) finds its newest
complete checkpoint and continues from it: the result is the one an uninterrupted run gives
(bitwise on the CPU). A checkpoint of a run with other settings (its fingerprint, kept in
each checkpoint's state.json) is refused; ``--overwrite`` starts over. The folder is removed
when the run completes.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gptforge.io import sha256_file

logger = logging.getLogger(__name__)



def resume_dir_for(out: str | Path) -> Path:
    """Where the progress of the run that will be written to ``out`` is kept."""
    out = Path(out)
    return out.with_name(f".{out.name}.resume")


# Settings that do not change what is computed: a resumed run may differ in them.
_NOT_FINGERPRINTED = {"out", "overwrite", "device", "progress", "log_interval", "checkpoint_every", "overrides",
                      "resume"}


def run_fingerprint(task: str, opts: Any, loop: Any, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a resumed run must share with the stopped one: the task, every option (both
    dataclasses, less ``_NOT_FINGERPRINTED``), the ``--section.key`` flags but the logging ones
    and the data file's sha256, as JSON values."""
    fp: dict[str, Any] = {"task": task}
    fp.update({f"set.{k}": v for k, v in sorted((overrides or {}).items()) if not k.startswith("log.") and k != "train.device"})
    fp.update({k: v for k, v in asdict(opts).items() if k not in _NOT_FINGERPRINTED})
    fp.update({f"loop.{k}": v for k, v in asdict(loop).items() if k not in _NOT_FINGERPRINTED})
    data = Path(opts.data)
    fp["data_sha256"] = sha256_file(data) if data.is_file() else None
    return json.loads(json.dumps(fp))  # tuples -> lists, as state.json gives them back


def open_progress(task: str, opts: Any, loop: Any, overrides: dict[str, Any] | None = None) -> tuple[Path, dict[str, Any]]:
    """The work folder of the run writing ``opts.out`` and the run's fingerprint.

    With ``opts.overwrite`` the run starts over, so an earlier run's progress is discarded.
    """
    folder = resume_dir_for(opts.out)
    if opts.overwrite:
        discard_progress(folder)
    return folder, run_fingerprint(task, opts, loop, overrides)


def discard_progress(folder: Path) -> None:
    """Remove the checkpoint folder (after the run completed, or to start over)."""
    shutil.rmtree(folder, ignore_errors=True)
