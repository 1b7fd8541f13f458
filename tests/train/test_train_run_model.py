"""``load_model(RUN)`` loads the newest model of a run: ``final/`` or the latest checkpoint,
whichever holds the later step (a resumed, extended run that was stopped has a checkpoint
newer than its ``final/``), and says which in the log."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from gptforge.io import load_safetensors
from gptforge.model.loading import load_model
from gptforge.train.config import build_run_config
from gptforge.train.loop import TrainHooks, train

BASE = {
    "model.n_layer": 1, "model.n_head": 2, "model.n_embd": 16, "model.block_size": 16, "model.dropout": 0.0,
    "train.batch_size": 2, "train.warmup_steps": 0, "train.eval_iters": 1, "train.eval_interval": 0,
    "train.schedule": "constant", "log.interval": 1, "log.progress": False,
}


class _FailAt(TrainHooks):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer, record) -> None:
        if trainer.step == self.step:
            raise RuntimeError("machine died")


def test_load_model_prefers_a_checkpoint_newer_than_final(char_data: Path, tmp_path: Path, caplog) -> None:
    run = tmp_path / "run"
    cfg = lambda steps: build_run_config(  # noqa: E731
        None, None, {**BASE, "data.dir": str(char_data), "train.max_steps": steps, "train.ckpt_interval": 1})
    train(cfg(2), run)
    with pytest.raises(RuntimeError, match="machine died"):  # extended to 5, stopped after step 3's checkpoint
        train(cfg(5), run, resume=True, hooks=[_FailAt(4)])
    assert (run / "latest").read_text().strip() == "step_0000003"
    with caplog.at_level(logging.INFO, logger="gptforge"):
        model = load_model(run)
    assert model.model_dir == run / "checkpoints" / "step_0000003"
    assert "newer than" in caplog.text and "step 3" in caplog.text
    want = load_safetensors(run / "checkpoints" / "step_0000003" / "model.safetensors")
    assert torch.equal(model.transformer.h[0].mlp.c_fc.weight, want["transformer.h.0.mlp.c_fc.weight"])
    stale = load_safetensors(run / "final" / "model.safetensors")
    assert not torch.equal(model.transformer.h[0].mlp.c_fc.weight, stale["transformer.h.0.mlp.c_fc.weight"])

    train(cfg(5), run, resume=True)  # finished: final/ (step 5) and the latest checkpoint agree
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="gptforge"):
        assert load_model(run).model_dir == run / "final"
    assert "is not newer" in caplog.text
