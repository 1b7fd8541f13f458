"""Shared fixtures: the shared data folder, tiny models, CLI runner."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _find_data_dir() -> Path:
    env = os.environ.get("GPTFORGE_DATA_DIR")
    if env:
        return Path(env).resolve()
    return (REPO.parent / "shared" / "data").resolve()


DATA_DIR = _find_data_dir()


@pytest.fixture(autouse=True, scope="session")
def _data_env() -> None:
    """Point GPTFORGE_DATA_DIR at the shared data folder for every test (and subprocess)."""
    os.environ["GPTFORGE_DATA_DIR"] = str(DATA_DIR)


@pytest.fixture(autouse=True)
def _restore_gptforge_logger():
    """Undo what an in-process ``gptforge.cli.main.main()`` does to the ``gptforge`` logger.

    The CLI points the logger at the stderr of its moment and stops propagation; a later
    test's ``caplog`` would then see nothing, and its records would go to a closed stream.
    """
    logger = logging.getLogger("gptforge")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


@pytest.fixture
def three_threads():
    """Three intra-op threads, so the split kernel paths run (with an uneven remainder) on any machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(3)
    yield 3
    torch.set_num_threads(before)


@pytest.fixture
def data_dir() -> Path:
    if not (DATA_DIR / "tinyshakespeare.txt").is_file():
        pytest.skip(f"shared data not found at {DATA_DIR}; set GPTFORGE_DATA_DIR")
    return DATA_DIR


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600, input: str | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m gptforge ARGS`` in a subprocess and capture its output."""
    env = dict(os.environ, GPTFORGE_DATA_DIR=str(DATA_DIR), PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", "gptforge", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        input=input,
    )


@pytest.fixture
def cli():
    return run_cli
