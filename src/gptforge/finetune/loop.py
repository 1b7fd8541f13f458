"""The one fine-tuning loop, shared by classification and instruction tuning.

What differs between the two is a small *task* object (see :class:`Task`):
how a list of examples becomes a batch (``collate``), how long an example is
(``length``, for sorting), and the loss of a batch (``loss``). The loop does
the rest: epochs over seeded shuffles, optional length-sorted batches, AdamW
with the trainer's parameter groups (:func:`gptforge.train.optim.param_groups`),
warmup + cosine decay (:func:`gptforge.train.schedule.lr_at`), gradient
clipping, a progress bar, and one ``metrics.jsonl`` line per logged step/eval.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from gptforge.errors import ConfigError
from gptforge.io import json_line

logger = logging.getLogger(__name__)


class Task(Protocol):
    """What the loop needs to know about a fine-tuning task."""

    def collate(self, examples: list[Any]) -> dict[str, torch.Tensor]:
        """A padded batch (tensors on the CPU) from a list of examples."""

    def length(self, example: Any) -> int:
        """Token length of an example (for ``sort_by_length``)."""

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """``(mean loss, n)``: the batch's mean loss and how many items it averages
        (tokens or examples), so evaluations can weight batches exactly."""


@dataclass
class LoopConfig:
    """Optimisation settings of a fine-tuning run."""

    epochs: int = 3
    batch_size: int = 8
    lr: float = 5e-5
    min_lr_ratio: float = 0.1
    warmup_fraction: float = 0.05
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 123
    sort_by_length: bool = False
    log_interval: int = 10
    checkpoint_every: int = 100  # steps between progress checkpoints (and at each epoch end); 0: none
    progress: bool = True

    def __post_init__(self) -> None:
        problems = []
        if self.epochs < 1 or self.batch_size < 1:
            problems.append(f"--epochs ({self.epochs}) and --batch-size ({self.batch_size}) must be >= 1")
        if not self.lr > 0:
            problems.append(f"--lr must be > 0, got {self.lr}")
        if self.checkpoint_every < 0:
            problems.append(f"--checkpoint-every must be >= 0 (0: no checkpoints), got {self.checkpoint_every}")
        if problems:
            raise ConfigError("; ".join(problems))


def make_batches(
    examples: list[Any], task: Task, batch_size: int, seed: int, sort_by_length: bool
) -> list[list[Any]]:
    """Seeded shuffled batches; with ``sort_by_length`` similar lengths share a batch
    (less padding) and the batch order is shuffled instead."""
    rng = random.Random(seed)
    items = list(examples)
    rng.shuffle(items)
    if sort_by_length:
        items.sort(key=task.length)  # stable: ties keep the shuffled order
    batches = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    if sort_by_length:
        rng.shuffle(batches)
    return batches


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def evaluate(model: torch.nn.Module, task: Task, examples: list[Any], batch_size: int) -> float:
    """The task loss over ``examples``, weighted by each batch's item count (NaN if empty)."""
    if not examples:
        return math.nan
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        loss, n = task.loss(model, _to(task.collate(examples[i : i + batch_size]), device))
        total += float(loss) * n
        count += n
    model.train(was_training)
    return total / max(count, 1)


def finetune(
    model: torch.nn.Module,
    task: Task,
    train: list[Any],
    val: list[Any],
    cfg: LoopConfig,
    metrics_path: str | Path | None = None,
    progress_dir: Path | None = None,
    fingerprint: dict[str, Any] | None = None,
) -> list[dict[str, float]]:
    """Train the parameters of ``model`` that require grad; returns the metrics lines.

    Evaluates on ``val`` after every epoch. With ``progress_dir``, a checkpoint found there
    (see :mod:`gptforge.finetune.resume`) is continued from, and a new one is written every
    ``cfg.checkpoint_every`` steps and at each epoch end. Ctrl-C propagates (the caller
    saves nothing half-done: model dirs are written atomically after training).
    """
    from gptforge.finetune.resume import load_progress, save_progress
    from gptforge.train.config import TrainConfig
    from gptforge.train.optim import param_groups
    from gptforge.train.schedule import lr_at

    device = next(model.parameters()).device
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    sched = TrainConfig(
        lr=cfg.lr,
        min_lr=cfg.lr * cfg.min_lr_ratio,
        warmup_steps=int(total_steps * cfg.warmup_fraction),
        max_steps=total_steps,
        schedule="cosine",
        batch_size=cfg.batch_size,
    )
    groups = param_groups(model, cfg.weight_decay)
    trainable = [p for g in groups for p in g["params"]]
    if not trainable:
        raise ConfigError("nothing to train: every parameter is frozen")
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999))
    torch.manual_seed(cfg.seed)  # dropout masks
    history: list[dict[str, float]] = []
    step, tokens = 0, 0
    saved = load_progress(progress_dir, model, optimizer, fingerprint or {}) if progress_dir else None
    if saved is not None:  # model, optimizer and RNG restored: continue after its last step
        step, tokens, history = saved["step"], saved["tokens"], saved["history"]
        logger.info("resuming from step %d of %d (checkpoint %s)", step, total_steps, progress_dir)
    out = open(metrics_path, "a", encoding="utf-8") if metrics_path else None  # noqa: SIM115
    if out is not None:
        out.writelines(json_line(line) + "\n" for line in history)

    def log(line: dict[str, float]) -> None:
        history.append(line)
        if out is not None:
            out.write(json_line(line) + "\n")  # NaN/inf as null + "not_finite"
            out.flush()

    saved_step = step if saved is not None else None  # the step the newest checkpoint holds

    def checkpoint() -> None:
        nonlocal saved_step
        if progress_dir is not None and cfg.checkpoint_every > 0:
            state = {"step": step, "tokens": tokens, "history": history}
            save_progress(progress_dir, model, optimizer, state, fingerprint or {})
            saved_step = step

    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=step, desc="finetune", unit="step", disable=not cfg.progress, leave=False)
    t0, tokens_at_t0 = time.perf_counter(), tokens
    try:
        model.train()
        for epoch in range(step // steps_per_epoch, cfg.epochs):
            batches = make_batches(train, task, cfg.batch_size, cfg.seed + epoch, cfg.sort_by_length)
            for batch_examples in batches[step - epoch * steps_per_epoch :]:  # all but the resumed ones
                lr = lr_at(step, sched)
                for g in optimizer.param_groups:
                    g["lr"] = lr
                batch = _to(task.collate(batch_examples), device)
                loss, _ = task.loss(model, batch)
                loss_value = loss.item()
                if not math.isfinite(loss_value):
                    raise ConfigError(f"the loss became {loss_value} at step {step}; lower --lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
                optimizer.step()
                step += 1
                tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch else 0
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.3f}", epoch=epoch + 1)
                if step % cfg.log_interval == 0 or step == total_steps:
                    dt = time.perf_counter() - t0
                    log({"step": step, "tokens": tokens, "epoch": epoch + 1, "loss": loss_value, "lr": lr,
                         "tokens_per_s": (tokens - tokens_at_t0) / dt if dt > 0 else 0.0})  # fmt: skip
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step % steps_per_epoch:
                    checkpoint()  # (an epoch's last step is saved below, after its evaluation)
            val_loss = evaluate(model, task, val, cfg.batch_size)
            log({"step": step, "tokens": tokens, "epoch": epoch + 1, "val_loss": val_loss})
            logger.info("epoch %d/%d: val loss %.4f", epoch + 1, cfg.epochs, val_loss)
            checkpoint()
    except KeyboardInterrupt:
        if saved_step is not None:
            logger.warning("stopped at step %d of %d; the checkpoint of step %d is in %s: run the same "
                           "command again to continue from it", step, total_steps, saved_step, progress_dir)
        raise
    finally:
        bar.close()
        if out is not None:
            out.close()
        model.eval()
    return history
