"""Fixtures for the reliability suite: a small char dataset and a subprocess runner that can SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. resolved.\n\n"
) * 30


def child_env(**extra: str) -> dict[str, str]:
    """One thread per child (bitwise-comparable runs, less load on a shared machine)."""
    env = dict(
        os.environ,
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    env.pop("GPTFORGE_FI", None)
    env.update(extra)
    return env


def harness_cmd(*args: str) -> list[str]:
    """``python -m tests.reliability.fi_harness ARGS`` (gptforge's CLI with a kill hook)."""
    return [sys.executable, "-m", "tests.reliability.fi_harness", *args]


def run_harness(
    *args: str, fi: str | None = None, timeout: float = 900
) -> subprocess.CompletedProcess:
    env = child_env(**({"GPTFORGE_FI": fi} if fi else {}))
    return subprocess.run(
        harness_cmd(*args), cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def run_harness_killed(*args: str, after_s: float, timeout: float = 300) -> subprocess.CompletedProcess:
    """Start the harness on ``args`` and SIGKILL it ``after_s`` seconds later (if it still runs)."""
    proc = subprocess.Popen(harness_cmd(*args), cwd=REPO, env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(after_s)
    proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def char_ds(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset dir made by gptforge's own ``prepare`` (char tokenizer)."""
    from gptforge.data.prepare import PrepareOptions, prepare

    out = tmp_path_factory.mktemp("ds") / "chars"
    prepare([str(corpus)], "char", out, PrepareOptions(progress=False))
    return out
