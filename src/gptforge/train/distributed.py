"""Process-group helpers: who am I, how many of us, and am I the one that writes files.

Outside ``torchrun`` these return rank 0 of 1, so the single-process path needs
no special cases. ``torchrun`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``;
initialising the process group and wrapping the model (DDP/FSDP) is PyTorch's
work and happens in the loop's set-up.
"""

from __future__ import annotations

import os


def rank() -> int:
    """Global rank of this process (0 when not under torchrun)."""
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """Rank on this machine (picks the GPU), 0 when not under torchrun."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    """Number of processes training together (1 when not under torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """Only the main process (rank 0) writes logs, metrics and checkpoints."""
    return rank() == 0


def barrier() -> None:
    """Wait for every process (a no-op without an initialised process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
