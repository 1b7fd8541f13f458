"""The trainer against a naive nanoGPT-style loop: same initial weights, same batches -> same run.

The reference loop below restates nanoGPT train.py's update in a few lines (lr set
before the step from get_lr, AdamW with decay on every >= 2-D parameter, clip the
whole gradient norm, step, zero_grad). Any difference in parameter groups, schedule
timing, clipping, loss reduction or the order of those calls shows up as a loss or
weight mismatch. This is how the shakespeare-char benchmark gap was ruled out as a
trainer bug (the full recipe through both loops agrees to ~1e-7 over 200 steps).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from gptforge.config import apply
from gptforge.model.gpt import GPT
from gptforge.train.config import preset_config
from gptforge.train.loop import Trainer, TrainHooks

WARMUP, DECAY, STEPS = 3, 10, 12  # covers warmup, the cosine and the floor after it
LR, MIN_LR, BETAS, WD, CLIP = 1e-3, 1e-4, (0.9, 0.99), 0.1, 1.0


def reference_lr(it: int) -> float:
    if it < WARMUP:
        return LR * (it + 1) / (WARMUP + 1)
    if it > DECAY:
        return MIN_LR
    ratio = (it - WARMUP) / (DECAY - WARMUP)
    return MIN_LR + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (LR - MIN_LR)


def reference_run(
    model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[list[float], list[float]]:
    """nanoGPT's update over ``batches``; returns (loss, gradient norm before clipping) per step."""
    params = dict(model.named_parameters())  # tied weights appear once
    groups = [{"params": [p for p in params.values() if p.dim() >= 2], "weight_decay": WD},
              {"params": [p for p in params.values() if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=LR, betas=BETAS)
    losses, norms = [], []
    model.train()
    for it, (x, y) in enumerate(batches):
        for g in opt.param_groups:
            g["lr"] = reference_lr(it)
        _, loss = model(x, y)
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)))
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses, norms


def test_preset_recipe_is_nanogpts_cpu_recipe() -> None:
    """nanoGPT README's CPU run: config/train_shakespeare_char.py + the command-line overrides."""
    cfg = preset_config("shakespeare-char-cpu")
    m, t = cfg.model, cfg.train
    shape = (m.n_layer, m.n_head, m.n_embd, m.block_size, m.dropout, m.bias, m.tie_weights)
    assert shape == (4, 4, 128, 64, 0.0, False, True)
    assert (t.batch_size, t.grad_accum, t.max_steps, t.decay_steps, t.warmup_steps) == (12, 1, 2000, 2000, 100)
    assert (t.lr, t.min_lr, t.schedule, t.beta1, t.beta2, t.weight_decay, t.grad_clip, t.eval_iters) == (
        1e-3, 1e-4, "cosine", 0.9, 0.99, 0.1, 1.0, 20)


def test_trainer_equals_naive_loop(char_data: Path, tmp_path: Path) -> None:
    cfg = apply(preset_config("shakespeare-char-cpu"), {
        "model.n_layer": 2, "model.n_head": 2, "model.n_embd": 32, "model.block_size": 16,
        "data.dir": str(char_data), "train.device": "cpu", "train.precision": "fp32",
        "train.batch_size": 4, "train.max_steps": STEPS, "train.warmup_steps": WARMUP,
        "train.lr_decay_steps": DECAY, "train.lr": LR, "train.min_lr": MIN_LR, "train.eval_interval": 0,
        "train.ckpt_interval": 0, "log.interval": 1, "log.progress": False,
    })
    seen: list[dict] = []

    class Record(TrainHooks):
        def on_step_end(self, trainer: Trainer, record: dict | None) -> None:
            seen.append(record)

    trainer = Trainer(cfg, tmp_path / "run", hooks=[Record()])
    init = copy.deepcopy(trainer.model.state_dict())
    batches: list[tuple[torch.Tensor, torch.Tensor]] = []
    draw = trainer.loader.next_batch

    def recorded() -> tuple[torch.Tensor, torch.Tensor]:
        x, y = draw()
        batches.append((x.clone(), y.clone()))
        return x, y

    trainer.loader.next_batch = recorded
    trainer.run()

    ref = GPT(trainer.cfg.model)  # vocab_size filled in from the dataset
    ref.load_state_dict(init)
    assert ref.lm_head.weight is ref.transformer.wte.weight
    losses, norms = reference_run(ref, batches)

    assert len(batches) == STEPS
    assert [r["lr"] for r in seen] == pytest.approx([reference_lr(i) for i in range(STEPS)], rel=1e-12)
    assert [r["loss"] for r in seen] == pytest.approx(losses, rel=1e-5)
    assert [r["grad_norm"] for r in seen] == pytest.approx(norms, rel=1e-4)
    assert max(norms) > CLIP  # clipping was exercised
    for name, p in ref.state_dict().items():
        torch.testing.assert_close(trainer.model.state_dict()[name], p, rtol=1e-5, atol=1e-6, msg=name)
