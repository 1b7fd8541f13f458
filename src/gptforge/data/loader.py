"""Pretraining batches from memmapped token shards, resumable and DDP-aware.

Two modes:

* ``random`` (nanoGPT's way): each row of a batch is a window of ``block_size + 1``
  tokens starting at a uniformly drawn position. Windows never cross a shard
  boundary. The draws come from a numpy ``Generator`` seeded with ``(seed, rank)``,
  so each DDP rank has its own stream, and the generator state is part of
  :meth:`BatchLoader.state_dict`, so a resumed run draws exactly the windows the
  uninterrupted run would have drawn.
* ``sequential``: the split is cut into consecutive windows (``x`` of ``block_size``
  tokens and ``y`` the same shifted by one; window ``k`` starts at ``k * block_size``)
  and every window is used once per epoch, in order. Global batch ``g`` holds
  windows ``g*B*W .. (g+1)*B*W - 1`` (``W`` ranks); rank ``r`` takes rows
  ``r*B .. (r+1)*B - 1`` of it, so ranks never share a window. The windows left
  over at the end of an epoch (fewer than ``B*W``) are skipped so that every rank
  makes the same number of steps. The position is ``(epoch, batch)``.

On CUDA the batch is built in pinned host memory and copied with
``non_blocking=True``, so the copy overlaps with the previous step's compute.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from gptforge.data.shards import TokenDataset
from gptforge.errors import DataError

logger = logging.getLogger(__name__)

MODES = ("random", "sequential")


def window_counts(shard_lengths: list[int], block_size: int, mode: str) -> np.ndarray:
    """How many windows each shard offers.

    ``random``: a window of ``block_size + 1`` tokens may start at ``0 .. n - block_size - 1``
    (``n - block_size`` starts, as nanoGPT's ``randint(len(data) - block_size)``).
    ``sequential``: ``(n - 1) // block_size`` windows that step by ``block_size``.

    >>> window_counts([10, 3], 4, "random").tolist(), window_counts([10, 3], 4, "sequential").tolist()
    ([6, 0], [2, 0])
    """
    n = np.asarray(shard_lengths, dtype=np.int64)
    if mode == "random":
        return np.maximum(n - block_size, 0)
    return np.maximum(n - 1, 0) // block_size


def locate(index: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map global window indexes to ``(shard, index within shard)`` given windows per shard.

    >>> [a.tolist() for a in locate(np.array([0, 5, 6, 8]), np.array([6, 0, 3]))]
    [[0, 0, 2, 2], [0, 5, 0, 2]]
    """
    ends = np.cumsum(counts)
    shard = np.searchsorted(ends, index, side="right")
    starts = ends - counts
    return shard, index - starts[shard]


class BatchLoader:
    """Batches ``(x, y)`` of shape (B, T) from one split of a :class:`TokenDataset`.

    Args:
        dataset: an opened dataset (:func:`gptforge.data.shards.open_dataset`).
        split: ``"train"``, ``"val"`` or ``"test"``.
        batch_size: rows per batch on this rank (B).
        block_size: tokens per row (T); each row reads T + 1 tokens.
        mode: ``"random"`` or ``"sequential"`` (see the module docstring).
        seed: seeds the random draws (random mode).
        rank, world_size: this process's DDP rank and the number of ranks.
        device: where the batches go (``"cpu"``, ``"cuda"``, ``"cuda:1"``...).

    Raises:
        DataError: the split is too short for one window (or, in sequential
            mode, for one batch on every rank), or an argument is invalid.
    """

    def __init__(
        self,
        dataset: TokenDataset,
        split: str,
        batch_size: int,
        block_size: int,
        mode: str = "random",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
    ) -> None:
        if mode not in MODES:
            raise DataError(f"loader mode {mode!r} is not one of {', '.join(MODES)}")
        if batch_size < 1 or block_size < 1:
            raise DataError(f"batch_size ({batch_size}) and block_size ({block_size}) must be >= 1")
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is not in 0..{world_size - 1} (world_size {world_size})")
        self.dataset, self.split, self.mode = dataset, split, mode
        self.batch_size, self.block_size = batch_size, block_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.device = torch.device(device)
        self._shards = dataset.shards(split)
        lengths = [len(s) for s in self._shards]
        self._counts = window_counts(lengths, block_size, mode)
        self.num_windows = int(self._counts.sum())
        total = sum(lengths)
        if self.num_windows == 0:
            longest = max(lengths, default=0)
            where = (
                ""
                if len(lengths) <= 1
                else f" (longest shard {longest:,}; windows do not cross shards)"
            )
            raise DataError(
                f"{split} split of {dataset.path} has {total:,} tokens{where}, but one window of "
                f"block_size {block_size} needs {block_size + 1:,}; use a smaller block_size or more data"
            )
        if mode == "sequential" and self.num_windows < batch_size * world_size:
            raise DataError(
                f"{split} split of {dataset.path} has {self.num_windows:,} windows of {block_size} tokens "
                f"({total:,} tokens), fewer than one batch of {batch_size} x {world_size} rank(s); "
                "use a smaller batch_size or block_size, or more data"
            )
        self._rng = np.random.default_rng([seed, rank])
        self.epoch = 0
        self.batch_in_epoch = 0
        self.batches_drawn = 0
        self._pin = self.device.type == "cuda"

    @property
    def batches_per_epoch(self) -> int:
        """Sequential mode: steps per epoch (equal on every rank)."""
        return self.num_windows // (self.batch_size * self.world_size)

    def _next_starts(self) -> tuple[np.ndarray, np.ndarray]:
        """(shard index, token offset) of each row of the next batch."""
        B, T = self.batch_size, self.block_size
        if self.mode == "random":
            index = self._rng.integers(0, self.num_windows, size=B, dtype=np.int64)
            shard, local = locate(index, self._counts)
            return shard, local
        if self.batch_in_epoch >= self.batches_per_epoch:
            self.epoch += 1
            self.batch_in_epoch = 0
        first = self.batch_in_epoch * B * self.world_size + self.rank * B
        index = np.arange(first, first + B, dtype=np.int64)
        self.batch_in_epoch += 1
        shard, local = locate(index, self._counts)
        return shard, local * T

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ``(x, y)``: LongTensors (B, T) on the loader's device, ``y`` = ``x`` shifted by one."""
        shard, offset = self._next_starts()
        B, T = self.batch_size, self.block_size
        buf = np.empty((B, T + 1), dtype=np.int64)
        for row in range(B):
            o = int(offset[row])
            buf[row] = self._shards[int(shard[row])][o : o + T + 1]
        self.batches_drawn += 1
        x = torch.from_numpy(buf[:, :-1].copy())  # (B, T)
        y = torch.from_numpy(buf[:, 1:].copy())  # (B, T)
        if self._pin:
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(
                self.device, non_blocking=True
            )
        return x.to(self.device), y.to(self.device)

    def __iter__(self) -> BatchLoader:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.next_batch()

    # -- resume -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly here; plain JSON types only."""
        return {
            "mode": self.mode,
            "split": self.split,
            "batch_size": self.batch_size,
            "block_size": self.block_size,
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "num_windows": self.num_windows,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "batches_drawn": self.batches_drawn,
            "rng": _jsonable(self._rng.bit_generator.state),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`.

        Raises:
            DataError: the state was saved by a loader with another mode, split,
                shape or rank layout, or over different data.
        """
        for key in ("mode", "split", "batch_size", "block_size", "world_size", "num_windows"):
            if key in state and state[key] != getattr(self, key):
                raise DataError(
                    f"cannot resume the {self.split} loader: saved {key} {state[key]!r} but now "
                    f"{getattr(self, key)!r}; resume with the same data and settings, or start a new run"
                )
        if state.get("rank", self.rank) != self.rank:
            logger.warning(
                "loader state saved by rank %s loaded on rank %s", state["rank"], self.rank
            )
        self.epoch = int(state.get("epoch", 0))
        self.batch_in_epoch = int(state.get("batch_in_epoch", 0))
        self.batches_drawn = int(state.get("batches_drawn", 0))
        if "rng" in state:
            self._rng.bit_generator.state = state["rng"]


def _jsonable(obj: Any) -> Any:
    """numpy generator state -> plain dict/int/str (the 128-bit ints stay Python ints)."""
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
