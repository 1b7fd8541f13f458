"""What a training task gives the one training loop: a model, its batches and its loss.

The loop (:class:`gptforge.train.loop.Trainer`) owns everything else: precision, gradient
accumulation, DDP/FSDP, compile, the schedule, ``on_nan``, sinks, the progress line,
signals, checkpoints and resume. A task is a small object with:

    model(device)             the model to train, its trainable parameters chosen
    loader(rank, world, dev)  the training batches: next_batch(), state_dict(), load_state_dict()
    loss(model, batch)        the mean loss of one (micro-)batch, a scalar tensor
    batch_tokens(batch)       how many tokens a batch holds (for tokens/s and the token count)
    evaluate(model, autocast, rank, world) -> {"train": ..., "val": ...}  (either may be absent)
    check_resume(state)       refuse a checkpoint of another task or data (raises)
    checkpoint_state()        JSON-able facts a checkpoint keeps to be checked on resume
    extra_config()            config.json keys beside the model (a chat template...)

Two kinds live here: :class:`PretrainTask` (next-token loss on token shards) and
:class:`ExamplesTask` (a list of examples in seeded epochs: what ``finetune classify`` and
``finetune instruct`` build, each with its own collate and loss).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch

from gptforge.errors import CheckpointError, DataError


def to_device(batch: Any, device: torch.device) -> Any:
    """A batch (tensor, tuple or dict of tensors) on ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


# ---------------------------------------------------------------------------------- pretraining
class PretrainTask:
    """Next-token loss on ``(x, y)`` windows of a prepared dataset (``gptforge prepare``)."""

    name = "pretrain"

    def __init__(self, cfg: Any, init_model: Callable[[], torch.nn.Module] | None = None) -> None:
        from gptforge.data.shards import open_dataset

        if cfg.data.dir is None:
            raise DataError("no dataset given; pass --data DIR (made by `gptforge prepare`) or set data.dir")
        self.dataset = open_dataset(cfg.data.dir)
        self.tokenizer = self.dataset.load_tokenizer()
        self.cfg = cfg
        self.init_model = init_model
        self.eval_splits = [s for s in ("train", "val") if self.dataset.has_split(s)]

    def model(self, device: torch.device) -> torch.nn.Module:
        from gptforge.model.gpt import GPT

        model = self.init_model() if self.init_model is not None else GPT(self.cfg.model)
        model.tokenizer = self.tokenizer
        return model.to(device)

    def loader(self, rank: int, world_size: int, device: torch.device) -> Any:
        from gptforge.data.loader import BatchLoader

        t, m = self.cfg.train, self.cfg.model
        return BatchLoader(self.dataset, "train", t.batch_size, m.block_size, self.cfg.data.mode, t.seed, rank,
                           world_size, device)  # fmt: skip

    def eval_loader(self, split: str, rank: int, world_size: int, device: torch.device) -> Any:
        from gptforge.data.loader import BatchLoader

        # A fixed seed of its own: the same eval batches every time, the training stream untouched.
        t = self.cfg.train
        return BatchLoader(self.dataset, split, t.batch_size, self.cfg.model.block_size, "random",
                           t.seed + 1000 + (split == "val"), rank, world_size, device)  # fmt: skip

    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        _, loss = model(*batch)
        return loss

    def batch_tokens(self, batch: tuple[torch.Tensor, torch.Tensor]) -> int:
        return batch[0].numel()

    def evaluate(self, model: torch.nn.Module, autocast: Callable[[], AbstractContextManager], rank: int,
                 world_size: int, device: torch.device) -> dict[str, float]:  # fmt: skip
        from gptforge.train.evaluate import estimate_loss

        def make(split: str) -> Any:
            return self.eval_loader(split, rank, world_size, device).next_batch

        return estimate_loss(model, make, self.eval_splits, self.cfg.train.eval_iters, autocast)

    def check_resume(self, state: dict[str, Any]) -> None:
        fp = state.get("tokenizer_fingerprint")
        if fp is not None:
            self.dataset.check_compatible(fp)

    def checkpoint_state(self) -> dict[str, Any]:
        return {"tokenizer_fingerprint": self.dataset.tokenizer_fingerprint}

    def extra_config(self) -> dict[str, Any]:
        return {}


# ---------------------------------------------------------------------------------- fine-tuning
def make_batches(examples: list[Any], length: Callable[[Any], int], batch_size: int, seed: int,
                 sort_by_length: bool) -> list[list[Any]]:  # fmt: skip
    """Seeded shuffled batches; with ``sort_by_length`` similar lengths share a batch
    (less padding) and the batch order is shuffled instead."""
    rng = random.Random(seed)
    items = list(examples)
    rng.shuffle(items)
    if sort_by_length:
        items.sort(key=length)  # stable: ties keep the shuffled order
    batches = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    if sort_by_length:
        rng.shuffle(batches)
    return batches


class EpochLoader:
    """Batches of examples in epochs; epoch e is :func:`make_batches` with seed ``seed + e``.

    Its whole state is the number of batches handed out, so a resume continues mid-epoch.
    Under DDP each process takes its share of every batch (rows ``rank::world``), so the
    processes together see the batch one process would. A process whose share is empty (an
    epoch's last batch can hold fewer rows than there are processes) still has to run the
    step, as DDP needs every process in every all-reduce: it gets the batch's first row as a
    stand-in (``batch["stand_in"]``), which :meth:`ExamplesTask.loss` counts zero times.
    """

    def __init__(self, examples: list[Any], collate: Callable[[list[Any]], Any], length: Callable[[Any], int],
                 batch_size: int, seed: int, sort_by_length: bool, rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu") -> None:  # fmt: skip
        self.examples, self.collate, self.length = examples, collate, length
        self.batch_size, self.seed, self.sort_by_length = batch_size, seed, sort_by_length
        self.rank, self.world_size, self.device = rank, world_size, torch.device(device)
        self.steps_per_epoch = math.ceil(len(examples) / batch_size)
        self.position = 0
        self._epoch: tuple[int, list[list[Any]]] | None = None

    def _batches(self, epoch: int) -> list[list[Any]]:
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, make_batches(self.examples, self.length, self.batch_size, self.seed + epoch,
                                               self.sort_by_length))  # fmt: skip
        return self._epoch[1]

    @property
    def epoch(self) -> int:
        """The epoch (from 1) of the batch handed out last."""
        return max(self.position - 1, 0) // self.steps_per_epoch + 1

    def next_batch(self) -> Any:
        epoch, index = divmod(self.position, self.steps_per_epoch)
        rows = self._batches(epoch)[index]
        stand_in = False
        if self.world_size > 1:
            rows, stand_in = rows[self.rank :: self.world_size] or rows[:1], len(rows) <= self.rank
        self.position += 1
        batch = self.collate(rows)
        if stand_in:
            batch["stand_in"] = True
        return to_device(batch, self.device)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "epochs", "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "epochs":
            raise CheckpointError("the checkpoint's data position is not an epoch loader's")
        self.position = int(state["position"])


def _is_stand_in(batch: Any) -> bool:
    return isinstance(batch, dict) and bool(batch.get("stand_in", False))


def global_mean_share(value: torch.Tensor, count: int) -> torch.Tensor:
    """This process's mean loss over ``count`` items, rescaled for DDP/FSDP gradient averaging.

    DDP averages the processes' gradients, which weights each process's mean equally. When
    the processes hold different numbers of items (response tokens of unequal length, a short
    last batch) that is not the mean over the whole batch one process would take. Scaling each
    mean by ``count * world / total`` makes the average of the processes exactly the mean over
    all ``total`` items; with equal counts the factor is 1 and nothing changes.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    total = torch.tensor([float(count)], device=value.device)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return value * (count * dist.get_world_size() / max(float(total.item()), 1.0))


@torch.no_grad()
def evaluate_examples(model: torch.nn.Module, loss: Callable[[torch.nn.Module, Any], tuple[torch.Tensor, int]],
                      collate: Callable[[list[Any]], Any], examples: list[Any], batch_size: int,
                      autocast: Callable[[], AbstractContextManager] | None = None) -> float:  # fmt: skip
    """The task loss over ``examples``, weighted by each batch's item count (NaN if empty)."""
    if not examples:
        return math.nan
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    try:
        for i in range(0, len(examples), batch_size):
            batch = to_device(collate(examples[i : i + batch_size]), device)
            if autocast is not None:
                with autocast():
                    value, n = loss(model, batch)
            else:
                value, n = loss(model, batch)
            total += float(value) * n
            count += n
    finally:
        model.train(was_training)
    return total / max(count, 1)


@dataclass
class ExamplesTask:
    """A fine-tuning task: a prepared model, examples, and how to batch and score them.

    ``loss_and_count(model, batch) -> (mean loss, items averaged)``; the count weights
    the evaluation over batches of unequal size exactly.
    """

    name: str
    prepared_model: torch.nn.Module
    tokenizer: Any
    train_examples: list[Any]
    val_examples: list[Any]
    collate: Callable[[list[Any]], Any]
    length: Callable[[Any], int]
    loss_and_count: Callable[[torch.nn.Module, Any], tuple[torch.Tensor, int]]
    batch_size: int
    seed: int
    sort_by_length: bool = False
    fingerprint: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.train_examples) / self.batch_size)

    def model(self, device: torch.device) -> torch.nn.Module:
        return self.prepared_model.to(device)

    def loader(self, rank: int, world_size: int, device: torch.device) -> EpochLoader:
        return EpochLoader(self.train_examples, self.collate, self.length, self.batch_size, self.seed,
                           self.sort_by_length, rank, world_size, device)  # fmt: skip

    def loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        value, count = self.loss_and_count(model, batch)
        return global_mean_share(value, 0 if _is_stand_in(batch) else count)

    def batch_tokens(self, batch: Any) -> int:
        if _is_stand_in(batch):
            return 0
        mask = batch.get("attention_mask") if isinstance(batch, dict) else None
        return int(mask.sum()) if mask is not None else 0

    def evaluate(self, model: torch.nn.Module, autocast: Callable[[], AbstractContextManager], rank: int,
                 world_size: int, device: torch.device) -> dict[str, float]:  # fmt: skip
        # every process scores the whole (small) val set: the same number everywhere
        return {"val": evaluate_examples(model, self.loss_and_count, self.collate, self.val_examples,
                                         self.batch_size, autocast)}  # fmt: skip

    def check_resume(self, state: dict[str, Any]) -> None:
        saved = state.get("task_fingerprint")
        if saved is not None and saved != self.fingerprint:
            from gptforge.errors import ConfigError

            changed = sorted(k for k in set(saved) | set(self.fingerprint) if saved.get(k) != self.fingerprint.get(k))
            raise ConfigError(
                f"the checkpoint belongs to a fine-tuning run with other settings ({', '.join(changed)}); run "
                "that command again to finish it, or pass --overwrite to start this one over"
            )

    def checkpoint_state(self) -> dict[str, Any]:
        return {"task_fingerprint": self.fingerprint}

    def extra_config(self) -> dict[str, Any]:
        return dict(self.extra)
