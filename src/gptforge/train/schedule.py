"""Learning-rate schedules as one pure function of the step.

A pure ``lr_at(step, cfg)`` (as nanoGPT's ``get_lr``) keeps the schedule out of
the checkpoint: resuming at step N gives the same rate as never stopping.

    lr ▲    ____
       │   /    ‾‾‾‾-.__            cosine: half a cosine from lr to min_lr
       │  /             ‾‾--.____   linear: a straight line from lr to min_lr
       │ /                       ‾‾‾‾‾‾‾‾‾ min_lr (held after decay_steps)
       └─────────────────────────────────► step
        warmup        decay_steps
"""

from __future__ import annotations

import math

from gptforge.train.config import TrainConfig


def lr_at(step: int, cfg: TrainConfig) -> float:
    """The learning rate for optimizer step ``step`` (0-based).

    Warmup is linear, ``lr * (step + 1) / (warmup_steps + 1)`` as in nanoGPT's
    ``get_lr`` (so step 0 already learns a little, and step ``warmup_steps`` is at ``lr``).
    After warmup: constant ``lr``, or a cosine / linear decay that reaches
    ``min_lr`` at ``decay_steps`` and stays there.

    Example (lr 1.0, min_lr 0.0, warmup 9, decay over 109 steps, cosine):
    step 4 -> 0.5, step 9 -> 1.0, step 59 -> 0.5, step 109 -> 0.0.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    if cfg.schedule == "constant":
        return cfg.lr
    if step >= cfg.decay_steps:
        return cfg.min_lr
    span = cfg.decay_steps - cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / span if span > 0 else 1.0  # 0 -> 1
    if cfg.schedule == "cosine":
        coeff = 0.5 * (1.0 + math.cos(math.pi * progress))  # 1 -> 0
    else:  # linear
        coeff = 1.0 - progress
    return cfg.min_lr + coeff * (cfg.lr - cfg.min_lr)
