"""Exact resume: N steps straight == N/2 steps + resume + N/2 steps (bitwise on the CPU).

Also: a checkpoint interrupted mid-write never becomes `latest`, a corrupt
checkpoint is reported by name and the previous one used, and a resume that
would change the model shape or the tokenizer is refused.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from gptforge.errors import CheckpointError, DataError, GptforgeError
from gptforge.io import load_safetensors
from gptforge.model.loading import load_model
from gptforge.train import checkpoint as ckpt
from gptforge.train.config import build_run_config
from gptforge.train.loop import train
from gptforge.train.rundir import load_run_config

TINY = {
    "model.n_layer": 2, "model.n_head": 2, "model.n_embd": 32, "model.block_size": 16,
    "model.dropout": 0.1,  # dropout draws from the torch RNG: its state must be restored too
    "train.batch_size": 4, "train.warmup_steps": 3, "train.eval_iters": 2, "train.eval_interval": 4,
    "train.ckpt_interval": 4, "train.lr_decay_steps": 12, "train.keep_last": 10, "log.interval": 1,
    "log.progress": False,
}


def _cfg(data: Path, **extra: object):
    return build_run_config(None, None, {**TINY, "data.dir": str(data), **extra})


def _train_losses(run: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in lines if "loss" in r}


def _eval_losses(run: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["val_loss"] for r in lines if "val_loss" in r}


def test_resume_is_bitwise_identical(char_data: Path, tmp_path: Path) -> None:
    straight = train(_cfg(char_data, **{"train.max_steps": 12}), tmp_path / "straight")
    assert straight.step == 12 and straight.exit_code == 0
    half = train(_cfg(char_data, **{"train.max_steps": 6, "train.grad_accum": 1}), tmp_path / "split")
    assert half.step == 6 and half.final_dir is not None
    resumed_cfg = load_run_config(tmp_path / "split", {"train.max_steps": "12"})
    resumed = train(resumed_cfg, tmp_path / "split", resume=True)
    assert resumed.step == 12

    a, b = _train_losses(tmp_path / "straight"), _train_losses(tmp_path / "split")
    assert sorted(a) == sorted(b) == list(range(1, 13))
    assert a == b  # exact float equality, every step
    ea, eb = _eval_losses(tmp_path / "straight"), _eval_losses(tmp_path / "split")
    assert sorted(ea) == [4, 8, 12] and sorted(eb) == [4, 6, 8, 12]  # the first half ended with an eval
    assert all(ea[s] == eb[s] for s in ea)
    wa = load_safetensors(tmp_path / "straight" / "final" / "model.safetensors")
    wb = load_safetensors(tmp_path / "split" / "final" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    # and the optimizer moments too
    sa = torch.load(tmp_path / "straight" / "checkpoints" / "step_0000012" / "optimizer.pt", weights_only=True)
    sb = torch.load(tmp_path / "split" / "checkpoints" / "step_0000012" / "optimizer.pt", weights_only=True)
    for i in sa["state"]:
        assert torch.equal(sa["state"][i]["exp_avg_sq"], sb["state"][i]["exp_avg_sq"])
    # the resolved config records the override
    assert load_run_config(tmp_path / "split").train.max_steps == 12


def test_checkpoint_is_a_loadable_model_dir(char_data: Path, tmp_path: Path) -> None:
    r = train(_cfg(char_data, **{"train.max_steps": 4}), tmp_path / "run")
    latest = (tmp_path / "run" / "latest").read_text().strip()
    assert latest == "step_0000004"
    model = load_model(tmp_path / "run" / "checkpoints" / latest)
    ref = load_model(r.final_dir)
    assert model.tokenizer.fingerprint() == ref.tokenizer.fingerprint()
    for (ka, va), (kb, vb) in zip(model.state_dict().items(), ref.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in load_safetensors(r.final_dir / "model.safetensors"))
    state = ckpt.verify_checkpoint(tmp_path / "run" / "checkpoints" / latest)
    assert set(state["files"]) == {"config.json", "model.safetensors", "optimizer.pt", "tokenizer.json"}
    assert {"python", "numpy", "torch"} <= set(state["rng"]) and state["tokens"] == 4 * 4 * 16


def test_crash_during_save_keeps_latest_on_a_complete_checkpoint(
    char_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_save = torch.save
    calls = {"n": 0}

    def dying_save(obj: object, f: object, *a: object, **k: object) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint dies half-way (model written, optimizer not)
            raise OSError("disk full (simulated)")
        real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(CheckpointError, match="simulated"):  # an OSError, reported as a user-fixable stop
        train(_cfg(char_data, **{"train.max_steps": 12}), tmp_path / "run")
    run = tmp_path / "run"
    assert (run / "latest").read_text().strip() == "step_0000004"
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["step_0000004"]  # no half-written step_0000008, no leftover temp folder
    ckpt.verify_checkpoint(run / "checkpoints" / "step_0000004")
    monkeypatch.setattr(torch, "save", real_save)
    resumed = train(load_run_config(run), run, resume=True)
    assert resumed.step == 12


def test_corrupt_checkpoint_falls_back(char_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = tmp_path / "run"
    train(_cfg(char_data, **{"train.max_steps": 8}), run)
    bad = run / "checkpoints" / "step_0000008" / "model.safetensors"
    data = bytearray(bad.read_bytes())
    data[-5] ^= 0xFF
    bad.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="gptforge"):
        path, state = ckpt.find_resume_checkpoint(run)
    assert path.name == "step_0000004" and state["step"] == 4
    assert str(bad) in caplog.text and "corrupt" in caplog.text
    resumed = train(load_run_config(run, {"train.max_steps": 10}), run, resume=True)
    assert resumed.step == 10
    # metrics lines after the restored step were replaced by the re-run
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert steps == list(range(1, 11))


def test_no_good_checkpoint_is_an_error(char_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(_cfg(char_data, **{"train.max_steps": 4, "train.keep_last": 1}), run)
    (run / "checkpoints" / "step_0000004" / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        ckpt.find_resume_checkpoint(run)


def test_resume_refuses_shape_and_tokenizer_changes(char_data: Path, tmp_path: Path, make_char_dataset) -> None:
    write_char_dataset = make_char_dataset
    run = tmp_path / "run"
    train(_cfg(char_data, **{"train.max_steps": 4}), run)
    with pytest.raises(GptforgeError, match="model.n_embd: 32 -> 64"):
        train(load_run_config(run, {"model.n_embd": 64, "train.max_steps": 8}), run, resume=True)
    other = write_char_dataset(tmp_path / "other", text="abcdefghijklmnopqrstuvwxyz .,\n" * 200)
    with pytest.raises(DataError, match="made with tokenizer"):
        train(load_run_config(run, {"data.dir": str(other), "train.max_steps": 8}), run, resume=True)


def test_keep_last_and_best(char_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(_cfg(char_data, **{"train.max_steps": 16, "train.keep_last": 1, "train.lr_decay_steps": 16}), run)
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    vals = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "val_loss" in r:
            vals[r["step"]] = r["val_loss"]
    best = min(vals, key=vals.get)
    assert f"step_{16:07d}" in kept and f"step_{best:07d}" in kept
    assert len(kept) == len({16, best})
