"""fp16 with the GradScaler, forced on the CPU (``torch.amp.GradScaler("cpu")``): on its own the
plan falls back to bf16 there, so nothing exercised the scaler. A step scales and unscales, the
scaler's state goes into the checkpoint, and N/2 + resume + N/2 equals N straight (the reference)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gptforge.io import load_safetensors, read_json
from gptforge.train import loop as train_loop
from gptforge.train.config import build_run_config
from gptforge.train.device import DevicePlan
from gptforge.train.loop import TrainHooks, train

BASE = {
    "model.n_layer": 1, "model.n_head": 2, "model.n_embd": 16, "model.block_size": 16, "model.dropout": 0.0,
    "train.batch_size": 4, "train.warmup_steps": 0, "train.eval_iters": 1, "train.eval_interval": 0,
    "train.ckpt_interval": 3, "train.schedule": "constant", "train.lr": 3e-3, "log.interval": 1,
    "log.progress": False, "train.precision": "fp16",
}
STEPS = 6


@pytest.fixture(autouse=True)
def _fp16_on_cpu(monkeypatch):
    """The plan as a CUDA machine without bf16 would make it: fp16 autocast and a GradScaler."""
    monkeypatch.setattr(train_loop, "plan_device",
                        lambda spec, precision, rank=0: DevicePlan(torch.device("cpu"), "fp16"))
    # the scale grows every 2 steps, so a resume that forgot the scaler's state shows
    monkeypatch.setattr(train_loop, "make_grad_scaler",
                        lambda device, precision: torch.amp.GradScaler(device.type, growth_interval=2))


class _Spy(TrainHooks):
    def __init__(self) -> None:
        self.scales: list[float] = []
        self.autocast_dtypes: set[torch.dtype] = set()

    def on_start(self, trainer) -> None:
        assert isinstance(trainer.scaler, torch.amp.GradScaler) and trainer.scaler.is_enabled()
        h = trainer.model.transformer.h[0].mlp.c_fc
        h.register_forward_hook(lambda m, i, o: self.autocast_dtypes.add(o.dtype))

    def on_step_end(self, trainer, record) -> None:
        self.scales.append(float(trainer.scaler.get_scale()))


def _losses(run: Path) -> dict[int, float]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in lines if "loss" in r}


def test_fp16_grad_scaler_step_checkpoint_and_resume(char_data: Path, tmp_path: Path) -> None:
    cfg = lambda steps: build_run_config(None, None, {**BASE, "data.dir": str(char_data),  # noqa: E731
                                                      "train.max_steps": steps})
    spy = _Spy()
    train(cfg(STEPS), tmp_path / "straight", hooks=[spy])
    assert spy.autocast_dtypes == {torch.float16}  # the forward ran in fp16
    assert len(set(spy.scales)) > 1  # the scale moved (grew, or backed off on an overflow)
    losses = _losses(tmp_path / "straight")
    assert sorted(losses) == list(range(1, STEPS + 1)) and losses[STEPS] < losses[1]  # it learns

    state = read_json(tmp_path / "straight" / "checkpoints" / "step_0000003" / "state.json")
    saved = state["grad_scaler"]
    assert saved and saved["scale"] == spy.scales[2]  # the scale after step 3 is checkpointed

    half = tmp_path / "half"
    train(cfg(STEPS // 2), half)
    resumed_spy = _Spy()
    train(cfg(STEPS), half, resume=True, hooks=[resumed_spy])
    assert resumed_spy.scales == spy.scales[STEPS // 2:]  # the scaler continued, not restarted
    assert _losses(half) == losses
    wa = load_safetensors(tmp_path / "straight" / "final" / "model.safetensors")
    wb = load_safetensors(half / "final" / "model.safetensors")
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
