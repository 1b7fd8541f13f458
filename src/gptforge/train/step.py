"""One optimizer step, the math of training: accumulate, check the loss, clip, step.

:func:`optimizer_step` is a plain function over a model, an optimizer and a batch source,
so it reads on its own (nanoGPT's inner loop) and the benchmarks time other models
through it. :class:`LossForward` lets a task's own loss (fine-tuning) run as a module's
forward, which DDP needs. The loop (:mod:`gptforge.train.loop`) calls these once per step.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import torch


def optimizer_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    next_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    grad_accum: int = 1,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    scaler: torch.amp.GradScaler | None = None,
    grad_clip: float = 0.0,
    micro_step_context: Callable[[int], contextlib.AbstractContextManager] | None = None,
    after_backward: Callable[[], None] | None = None,
    reduce_loss: Callable[[torch.Tensor], torch.Tensor] | None = None,
    loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor] | None = None,
) -> tuple[float, float | None]:
    """One optimizer step over ``grad_accum`` micro-batches; returns (mean loss, grad norm or None).

    ``model(x, y)`` must return ``(logits, loss)``, or ``loss_fn(model, batch)`` gives the
    loss of a batch (a fine-tuning task's). A non-finite loss leaves the
    weights untouched (gradients dropped, no optimizer step) and is returned for
    the caller to stop or skip. The benchmarks time other models through this
    same function.
    """
    loss_sum = None
    for micro in range(grad_accum):
        batch = next_batch()
        with micro_step_context(micro) if micro_step_context else contextlib.nullcontext():
            with autocast():
                loss = loss_fn(model, batch) if loss_fn is not None else model(*batch)[1]
            loss = loss / grad_accum  # the mean over the accumulated batch
            loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
            (scaler.scale(loss) if scaler is not None else loss).backward()
    loss_value = float((reduce_loss(loss_sum) if reduce_loss else loss_sum).item())  # DDP: mean over ranks
    if not math.isfinite(loss_value):
        optimizer.zero_grad(set_to_none=True)
        return loss_value, None
    if after_backward is not None:
        after_backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    norm = None
    if grad_clip > 0:
        if scaler is not None:
            scaler.unscale_(optimizer)
        norm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip))
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_value, norm


class LossForward(torch.nn.Module):
    """A task's loss as one module's forward: ``forward(batch) = loss(model, batch)``."""

    def __init__(self, model: torch.nn.Module, loss: Callable[[torch.nn.Module, Any], torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self._loss = loss

    def forward(self, batch: Any) -> torch.Tensor:
        return self._loss(self.model, batch)


def _call_with_batch(module: torch.nn.Module, batch: Any) -> torch.Tensor:
    return module(batch)

