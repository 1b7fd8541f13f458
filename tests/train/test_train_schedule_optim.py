"""Learning-rate schedules against nanoGPT's get_lr, and AdamW parameter groups."""

from __future__ import annotations

import math

import pytest
import torch

from gptforge.config import apply
from gptforge.model.config import GPTConfig
from gptforge.model.gpt import GPT
from gptforge.train.config import TrainConfig
from gptforge.train.optim import build_optimizer, fused_supported, param_groups
from gptforge.train.schedule import lr_at


def nanogpt_get_lr(it: int, learning_rate: float, min_lr: float, warmup_iters: int, lr_decay_iters: int) -> float:
    """Reference: nanoGPT train.py's get_lr (warmup, then cosine to min_lr), restated."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (learning_rate - min_lr)


def test_cosine_matches_nanogpt() -> None:
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=100, max_steps=2000, lr_decay_steps=2000)
    for step in [0, 1, 50, 99, 100, 101, 500, 1000, 1999, 2000, 2500]:
        assert lr_at(step, cfg) == pytest.approx(nanogpt_get_lr(step, 1e-3, 1e-4, 100, 2000), rel=1e-12)


def test_worked_values_and_other_schedules() -> None:
    base = dict(lr=1.0, min_lr=0.0, warmup_steps=9, max_steps=200, lr_decay_steps=109)
    cos = TrainConfig(**base, schedule="cosine")
    assert [lr_at(s, cos) for s in (4, 9, 59, 109, 150)] == pytest.approx([0.5, 1.0, 0.5, 0.0, 0.0])
    lin = TrainConfig(**base, schedule="linear")
    assert [lr_at(s, lin) for s in (8, 9, 34, 59, 84, 109, 199)] == pytest.approx([0.9, 1.0, 0.75, 0.5, 0.25, 0, 0])
    const = TrainConfig(**base, schedule="constant")
    assert [lr_at(s, const) for s in (0, 8, 9, 150)] == pytest.approx([0.1, 0.9, 1.0, 1.0])
    # decay over max_steps by default
    assert TrainConfig(max_steps=300, lr_decay_steps=None).decay_steps == 300


def test_bad_schedule_values_are_refused() -> None:
    from gptforge.errors import ConfigError

    with pytest.raises(ConfigError, match="min_lr"):
        apply(TrainConfig(), {"lr": 1e-4, "min_lr": 1e-3})
    with pytest.raises(ConfigError, match="did you mean 'cosine'"):
        apply(TrainConfig(), {"schedule": "cosin"})


@pytest.mark.parametrize("tie", [True, False])
def test_param_groups_decay_matrices_only(tie: bool) -> None:
    model = GPT(GPTConfig.from_preset("test-tiny", tie_weights=tie))
    groups = param_groups(model, 0.1)
    decay = {id(p) for p in groups[0]["params"]}
    no_decay = {id(p) for p in groups[1]["params"]}
    named = dict(model.named_parameters())  # tied weights appear once
    expected_decay = {id(p) for n, p in named.items() if n.endswith("weight") and "ln" not in n}
    expected_no = {id(p) for n, p in named.items() if n.endswith("bias") or ".ln_" in n or n.startswith("transformer.ln_f")}
    assert decay == expected_decay and no_decay == expected_no
    assert not decay & no_decay
    total = sum(p.numel() for p in groups[0]["params"]) + sum(p.numel() for p in groups[1]["params"])
    assert total == model.num_params()
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0


def test_optimizer_settings() -> None:
    model = GPT(GPTConfig.from_preset("test-tiny"))
    opt = build_optimizer(model, TrainConfig(lr=3e-4, beta1=0.8, beta2=0.95, weight_decay=0.05), torch.device("cpu"))
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["betas"] == (0.8, 0.95) and opt.param_groups[0]["weight_decay"] == 0.05
    # fused by default on the CPU where torch has the kernel (same update, ~1 ulp of rounding:
    # tests/train/test_train_vs_reference.py compares the trainer with plain AdamW)
    assert bool(opt.param_groups[0].get("fused")) == fused_supported(torch.device("cpu"))
    off = build_optimizer(model, TrainConfig(fused=False), torch.device("cpu"))
    assert not off.param_groups[0].get("fused")
    muon = build_optimizer(model, TrainConfig(optimizer="muon"), torch.device("cpu"))
    assert not muon._adamw.param_groups[0].get("fused")  # Muon's AdamW half: torch's default on the CPU


def test_fused_true_on_a_device_without_the_kernel_falls_back(monkeypatch, caplog) -> None:
    """``--train.fused true`` on a torch whose AdamW has the argument but no kernel for the
    device: once a RuntimeError from torch, now a warning and the foreach kernel."""
    real = torch.optim.AdamW.__init__

    def no_cpu_fused(self, params, *args, fused=None, **kwargs):  # a torch built without it
        params = list(params)
        if fused and any(p.device.type == "cpu" for g in params for p in (g["params"] if isinstance(g, dict) else [g])):
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of "
                               "supported devices: ['cuda']")
        real(self, params, *args, fused=fused, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "__init__", no_cpu_fused)
    model = GPT(GPTConfig.from_preset("test-tiny"))
    opt = build_optimizer(model, TrainConfig(fused=True), torch.device("cpu"))
    assert isinstance(opt, torch.optim.AdamW) and not opt.param_groups[0].get("fused")
    assert "fused AdamW is not available" in caplog.text
    monkeypatch.undo()
    assert build_optimizer(model, TrainConfig(fused=True), torch.device("cpu")).param_groups[0]["fused"]


@pytest.mark.parametrize("key", ["lr", "grad_clip", "weight_decay", "min_lr", "beta2"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_floats_are_refused(key: str, value: str) -> None:
    """``--train.grad_clip nan`` once passed (NaN fails no `x < 0` check) and turned clipping
    off; flags, YAML and Python construction all refuse it, naming the field."""
    from gptforge.errors import ConfigError
    from gptforge.train.config import build_run_config

    with pytest.raises(ConfigError, match=rf"train\.{key}.*finite"):
        build_run_config(None, None, {f"train.{key}": value})
    with pytest.raises(ConfigError, match=rf"train\.{key} must be a finite number"):
        TrainConfig(**{key: float(value)})


def test_finite_float_flag_type() -> None:
    import argparse

    from gptforge.config import finite_float

    assert finite_float("0.5") == 0.5 and finite_float("1e-3") == 1e-3
    for bad in ("nan", "inf", "-Infinity", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            finite_float(bad)


def test_schedule_warnings_give_the_numbers() -> None:
    w = TrainConfig(warmup_steps=200, lr_decay_steps=150, max_steps=1000, lr=1e-3).schedule_warnings()
    assert len(w) == 1 and "train.warmup_steps (200) >= the decay end (150" in w[0]
    w = TrainConfig(warmup_steps=100, max_steps=50, lr=1e-3, lr_decay_steps=2000).schedule_warnings()
    assert len(w) == 1 and "train.max_steps (50) < train.warmup_steps (100)" in w[0] and "0.000495" in w[0]
    assert TrainConfig(warmup_steps=100, max_steps=2000).schedule_warnings() == []
    assert TrainConfig(warmup_steps=0, max_steps=20).schedule_warnings() == []
