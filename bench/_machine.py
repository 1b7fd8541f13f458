"""What machine a bench ran on: every bench prints the CPU model with its figures.

Kernels and ratios differ between CPU models (an AMD EPYC and an Intel Xeon with AMX disagree),
so a figure without the CPU that produced it cannot be compared. Imported by the bench
scripts, which run as ``python bench/NAME.py`` and so find this file beside them.
"""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform knows, else "unknown"."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def use_shared_data() -> None:
    """Point ``GPTFORGE_DATA_DIR`` at ``../shared/data`` beside the checkout unless it is set.

    The benches that build a GPT-2-tokenizer model need the BPE files from there; without
    this, ``python bench/serve.py`` on a fresh machine stopped with a missing-file error.
    """
    import os

    shared = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
    if "GPTFORGE_DATA_DIR" not in os.environ and shared.is_dir():
        os.environ["GPTFORGE_DATA_DIR"] = str(shared)
