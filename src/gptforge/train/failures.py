"""When training goes wrong: the error the loop raises, and the rules that raise it.

A non-finite loss stops the run (``train.on_nan stop``) or skips that step, up to
:data:`MAX_SKIPPED_IN_A_ROW` in a row; running out of memory becomes one line naming the
flags to change. The messages are what a user reads when a run fails, so they sit together
here, apart from the loop (:mod:`gptforge.train.loop`) that calls these rules.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from gptforge.errors import GptforgeError
from gptforge.train.config import RunConfig, TrainConfig

logger = logging.getLogger(__name__)

MAX_SKIPPED_IN_A_ROW = 10


class TrainingError(GptforgeError):
    """Training cannot go on (non-finite loss, out of memory): the message says what to change."""


def oom_message(cfg: RunConfig, device: torch.device) -> str:
    """What to change when a step ran out of memory on ``device``."""
    t, m = cfg.train, cfg.model
    return (
        f"out of memory on {device} with train.batch_size {t.batch_size} x model.block_size "
        f"{m.block_size}; lower --train.batch_size (raise --train.grad_accum to keep the batch), "
        "lower --model.block_size, or use --train.precision bf16"
    )


def on_bad_loss(loss: float, in_a_row: int, step: int, train: TrainConfig, last_ckpt: Path | None) -> None:
    """A non-finite ``loss`` at ``step`` (the ``in_a_row``-th in a row): raise, or warn that it was skipped.

    Raises:
        TrainingError: ``train.on_nan`` is ``stop``, or :data:`MAX_SKIPPED_IN_A_ROW` steps were skipped.
    """
    last = f"the last good checkpoint is {last_ckpt}" if last_ckpt else "no checkpoint was saved yet"
    if train.on_nan == "stop":
        raise TrainingError(
            f"loss became {loss} at step {step}; the run stopped and {last}. "
            f"Lower --train.lr (now {train.lr:g}), keep --train.grad_clip on, use bf16 "
            "rather than fp16, then --resume; or pass --train.on_nan skip to skip such steps"
        )
    logger.warning("loss became %s at step %d; step skipped (weights unchanged)", loss, step)
    if in_a_row >= MAX_SKIPPED_IN_A_ROW:
        raise TrainingError(
            f"loss was non-finite for {in_a_row} steps in a row (up to step {step}); {last}. "
            f"Lower --train.lr (now {train.lr:g}) and --resume"
        )
