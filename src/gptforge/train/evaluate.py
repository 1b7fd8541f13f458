"""Loss estimates during training: the mean over M batches of each split.

The batches come from loaders made fresh for each evaluation with a fixed seed,
so every evaluation of a run sees the same batches (comparable numbers, less
noise) and the training data stream and its RNG are left untouched (so a
resumed run matches one that never stopped).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import torch


@torch.no_grad()
def estimate_loss(
    model: torch.nn.Module,
    make_batches: Callable[[str], Callable[[], tuple[torch.Tensor, torch.Tensor]]],
    splits: list[str],
    iters: int,
    autocast: Callable[[], AbstractContextManager],
) -> dict[str, float]:
    """``{split: mean loss over iters batches}`` in eval mode (dropout off), training mode restored after.

    Args:
        make_batches: ``split -> next_batch`` returning ``(x, y)`` of shape (B, T).
    """
    was_training = model.training
    model.eval()
    out = {}
    try:
        for split in splits:
            next_batch = make_batches(split)
            losses = torch.zeros(iters)
            for k in range(iters):
                x, y = next_batch()
                with autocast():
                    _, loss = model(x, y)
                losses[k] = loss.float().item()
            out[split] = float(losses.mean())
    finally:
        model.train(was_training)
    return out
