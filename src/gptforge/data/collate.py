"""The map-style path for fine-tuning: padding collate and a resumable shuffling batcher.

Pretraining reads fixed windows from shards (:mod:`gptforge.data.loader`);
fine-tuning reads a list of examples of different lengths, so batches need
padding, an attention mask and labels that ignore the padding.

Label convention (the same as ``GPT.forward(idx, targets)``): ``labels[b, t]`` is
the id the model should predict *at* position ``t``, i.e. the next token, and
``ignore_index`` (-100) where no loss is wanted (padding, the last position, a
masked prompt). So ``model(batch["input_ids"], batch["labels"])`` is the loss.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from gptforge.errors import DataError

IGNORE_INDEX = -100


def _as_example(ex: Any) -> dict[str, Any]:
    if isinstance(ex, dict):
        if "input_ids" not in ex:
            raise DataError(f"example has no 'input_ids' (keys: {sorted(ex)})")
        return ex
    if isinstance(ex, torch.Tensor):
        return {"input_ids": ex.tolist()}
    return {"input_ids": list(ex)}


def next_token_labels(ids: Sequence[int], ignore_index: int = IGNORE_INDEX) -> list[int]:
    """Targets for causal LM: each position predicts the next id; the last predicts nothing.

    >>> next_token_labels([5, 6, 7])
    [6, 7, -100]
    """
    ids = list(ids)
    return ids[1:] + [ignore_index] if ids else []


def pad_collate(
    batch: Sequence[Any],
    pad_id: int,
    ignore_index: int = IGNORE_INDEX,
    padding_side: str = "right",
    max_len: int | None = None,
) -> dict[str, torch.Tensor]:
    """Pad a list of examples into tensors.

    Args:
        batch: examples, each a list/tensor of ids, or a dict with ``input_ids`` and
            optionally ``labels`` (same length, already aligned as described in the
            module docstring, e.g. with the prompt set to ``ignore_index``) and
            ``label`` (one int per example, for classification).
        pad_id: id written into padded input positions.
        ignore_index: label of positions without a loss.
        padding_side: ``"right"`` (training) or ``"left"`` (batched generation, so every
            row's last token is at the end).
        max_len: truncate longer examples to their first ``max_len`` ids.

    Returns:
        ``input_ids`` (B, L) long, ``attention_mask`` (B, L) long (1 = real token),
        ``labels`` (B, L) long, ``position_ids`` (B, L) long (0 at each row's first
        real token, so left padding does not shift positions), and ``label`` (B,) when
        every example has one. ``L`` is the longest example (after truncation).

    >>> b = pad_collate([[1, 2, 3], [4]], pad_id=0)
    >>> b["input_ids"].tolist(), b["labels"].tolist(), b["attention_mask"].tolist()
    ([[1, 2, 3], [4, 0, 0]], [[2, 3, -100], [-100, -100, -100]], [[1, 1, 1], [1, 0, 0]])
    """
    if padding_side not in ("right", "left"):
        raise DataError(f"padding_side {padding_side!r} must be 'right' or 'left'")
    if not batch:
        raise DataError("cannot collate an empty batch")
    examples = [_as_example(ex) for ex in batch]
    rows_ids, rows_labels = [], []
    for ex in examples:
        ids = list(ex["input_ids"])
        labels = (
            list(ex["labels"])
            if ex.get("labels") is not None
            else next_token_labels(ids, ignore_index)
        )
        if len(labels) != len(ids):
            raise DataError(f"example labels have {len(labels)} entries but input_ids {len(ids)}")
        if max_len is not None:
            ids, labels = ids[:max_len], labels[:max_len]
        rows_ids.append(ids)
        rows_labels.append(labels)
    B, L = len(rows_ids), max(len(r) for r in rows_ids)
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)
    labels = torch.full((B, L), ignore_index, dtype=torch.long)
    mask = torch.zeros((B, L), dtype=torch.long)
    for b, (ids, lab) in enumerate(zip(rows_ids, rows_labels)):
        n = len(ids)
        sl = slice(0, n) if padding_side == "right" else slice(L - n, L)
        input_ids[b, sl] = torch.tensor(ids, dtype=torch.long)
        labels[b, sl] = torch.tensor(lab, dtype=torch.long)
        mask[b, sl] = 1
    position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)  # (B, L)
    out = {
        "input_ids": input_ids,
        "attention_mask": mask,
        "labels": labels,
        "position_ids": position_ids,
    }
    if all("label" in ex for ex in examples):
        out["label"] = torch.tensor([int(ex["label"]) for ex in examples], dtype=torch.long)
    return out


class ShuffledBatches:
    """Batches over a list of examples: a seeded shuffle per epoch, resumable mid-epoch.

    Epoch ``e`` visits the examples in the order ``default_rng([seed, e]).permutation(n)``
    (or in order with ``shuffle=False``), so the position ``(epoch, batch)`` is the whole
    state. With several DDP ranks each rank takes every ``world_size``-th example of the
    epoch's order (the order cut to a multiple of ``world_size``), so ranks are disjoint
    and make the same number of steps.

    Args:
        examples: the examples (anything ``collate_fn`` accepts).
        batch_size: examples per batch (per rank).
        seed: seeds the shuffles.
        shuffle: shuffle each epoch (False: the given order).
        drop_last: drop the last smaller batch of an epoch.
        collate_fn: turns a list of examples into a batch (default: the list itself).
        rank, world_size: DDP layout.
    """

    def __init__(
        self,
        examples: Sequence[Any],
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise DataError(f"batch_size {batch_size} must be >= 1")
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is not in 0..{world_size - 1}")
        per_rank = len(examples) // world_size
        if per_rank == 0 or (drop_last and per_rank < batch_size):
            raise DataError(
                f"{len(examples)} examples are too few for one batch of {batch_size} on {world_size} rank(s)"
            )
        self.examples, self.batch_size, self.seed = examples, batch_size, seed
        self.shuffle, self.drop_last, self.collate_fn = shuffle, drop_last, collate_fn
        self.rank, self.world_size = rank, world_size
        self.epoch, self.batch_in_epoch = 0, 0
        self._order: np.ndarray | None = None

    def __len__(self) -> int:
        """Batches per epoch."""
        per_rank = len(self.examples) // self.world_size
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)

    def _epoch_order(self) -> np.ndarray:
        n = len(self.examples)
        order = (
            np.random.default_rng([self.seed, self.epoch]).permutation(n)
            if self.shuffle
            else np.arange(n)
        )
        order = order[: (n // self.world_size) * self.world_size]
        return order[self.rank :: self.world_size]

    def next_batch(self) -> Any:
        """The next batch; a new epoch (new shuffle) starts when one ends."""
        if self.batch_in_epoch >= len(self):
            self.epoch += 1
            self.batch_in_epoch = 0
            self._order = None
        if self._order is None:
            self._order = self._epoch_order()
        i = self.batch_in_epoch * self.batch_size
        items = [self.examples[int(j)] for j in self._order[i : i + self.batch_size]]
        self.batch_in_epoch += 1
        return self.collate_fn(items) if self.collate_fn else items

    def epoch_batches(self) -> Iterator[Any]:
        """The remaining batches of the current epoch (then the position moves to the next)."""
        while self.batch_in_epoch < len(self):
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "seed": self.seed,
            "num_examples": len(self.examples),
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue at a saved position (same examples, seed and world size)."""
        for key, mine in (
            ("num_examples", len(self.examples)),
            ("seed", self.seed),
            ("world_size", self.world_size),
        ):
            if key in state and state[key] != mine:
                raise DataError(f"cannot resume batches: saved {key} {state[key]} but now {mine}")
        self.epoch, self.batch_in_epoch = int(state["epoch"]), int(state["batch_in_epoch"])
        self._order = None
