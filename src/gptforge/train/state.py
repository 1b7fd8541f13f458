"""The small pieces of a run's state that the loop owns, and seeding.

:class:`TrainState` (step, tokens, best val loss) and :class:`_RngState` (every RNG stream)
are checkpoint parts, each with ``state_dict()`` / ``load_state_dict()`` like the loader,
optimizer and grad scaler (see :meth:`gptforge.train.loop.Trainer.checkpoint_parts`).
:func:`training_summary` is what a saved model says about the training that made it. They
are kept apart from the loop so what a checkpoint holds can be read on its own.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from gptforge.train import checkpoint as ckpt
from gptforge.train.config import RunConfig


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class TrainState:
    """The loop's own counters: step, tokens seen, best val loss (and the step it was at), last eval.

    One of the checkpoint's parts (with the loader, optimizer, scaler, RNG and config), each
    with ``state_dict()`` / ``load_state_dict()`` (torchtitan's ``Stateful`` pattern).
    """

    def __init__(self) -> None:
        self.step, self.tokens = 0, 0
        self.best_val_loss: float | None = None
        self.best_step: int | None = None
        self.last_eval: dict[str, float] | None = None
        self.last_eval_step: int | None = None

    def state_dict(self) -> dict[str, Any]:
        at_eval = self.last_eval_step == self.step and self.last_eval is not None
        return {"step": self.step, "tokens": self.tokens, "best_val_loss": self.best_val_loss,
                "best_step": self.best_step,
                "train_loss": self.last_eval.get("train") if at_eval else None,
                "val_loss": self.last_eval.get("val") if at_eval else None}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.tokens = int(state["step"]), int(state["tokens"])
        self.best_val_loss, self.best_step = state.get("best_val_loss"), state.get("best_step")
        if state.get("val_loss") is not None:
            self.last_eval = {"train": state.get("train_loss"), "val": state["val_loss"]}
            self.last_eval_step = self.step


def training_summary(state: TrainState, cfg: RunConfig) -> dict[str, Any]:
    """The ``training`` entry of a saved model's config.json: how far it was trained, on what."""
    at_eval = state.last_eval_step == state.step and state.last_eval is not None
    return {"step": state.step, "tokens": state.tokens,
            "val_loss": state.last_eval.get("val") if at_eval else None,
            "best_val_loss": state.best_val_loss, "best_step": state.best_step,
            "preset": cfg.preset, "data": str(cfg.data.dir)}  # fmt: skip


class _RngState:
    """Every RNG stream, as a checkpoint part."""

    def state_dict(self) -> dict[str, Any]:
        return ckpt.get_rng_state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ckpt.set_rng_state(state)


_RNG = _RngState()
