"""The loop's behaviour: grad accumulation, NaN handling, run-dir rules, config precedence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gptforge.errors import CheckpointError, ConfigError, DataError
from gptforge.io import load_safetensors
from gptforge.train.config import build_run_config, effective_grad_accum
from gptforge.train.loop import Trainer, TrainHooks, TrainingError, train

BASE = {
    "model.n_layer": 2, "model.n_head": 2, "model.n_embd": 32, "model.block_size": 16, "model.dropout": 0.0,
    "train.warmup_steps": 0, "train.eval_iters": 1, "train.eval_interval": 0, "train.ckpt_interval": 0,
    "train.schedule": "constant", "log.interval": 1, "log.progress": False,
}


def _cfg(data: Path, **extra: object):
    return build_run_config(None, None, {**BASE, "data.dir": str(data), **extra})


def test_grad_accumulation_equals_the_big_batch(char_data: Path, tmp_path: Path) -> None:
    """2 micro-batches of 4 == one batch of 8 (same windows: the loader draws them in the same order)."""
    a = train(_cfg(char_data, **{"train.batch_size": 8, "train.grad_accum": 1, "train.max_steps": 3}), tmp_path / "a")
    b = train(_cfg(char_data, **{"train.batch_size": 4, "train.grad_accum": 2, "train.max_steps": 3}), tmp_path / "b")
    assert a.tokens == b.tokens == 3 * 8 * 16
    wa = load_safetensors(a.final_dir / "model.safetensors")
    wb = load_safetensors(b.final_dir / "model.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)
    la = [json.loads(x)["loss"] for x in (a.run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    lb = [json.loads(x)["loss"] for x in (b.run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert len(la) == 3 and la == pytest.approx(lb, rel=1e-5)
    # the gradient before clipping: the weights after clipped AdamW hardly see a wrong loss scale
    # (a doubled scale moved them 7e-8); the logged grad_norm doubles
    ga = [json.loads(x)["grad_norm"] for x in (a.run_dir / "metrics.jsonl").read_text().splitlines() if '"grad_norm"' in x]
    gb = [json.loads(x)["grad_norm"] for x in (b.run_dir / "metrics.jsonl").read_text().splitlines() if '"grad_norm"' in x]
    assert len(ga) == 3 and ga == pytest.approx(gb, rel=1e-4)
    # and the weights really moved
    init = train(_cfg(char_data, **{"train.batch_size": 8, "train.max_steps": 1, "train.lr": 0.0,
                                    "train.min_lr": 0.0}), tmp_path / "c")
    w0 = load_safetensors(init.final_dir / "model.safetensors")
    assert not torch.equal(w0["transformer.h.0.mlp.c_fc.weight"], wa["transformer.h.0.mlp.c_fc.weight"])


def test_tokens_per_batch_sets_grad_accum() -> None:
    cfg = build_run_config(None, None, {"train.batch_size": 4, "train.tokens_per_batch": 4 * 16 * 3})
    assert effective_grad_accum(cfg.train, block_size=16) == 3
    with pytest.raises(ConfigError, match="not a multiple"):
        effective_grad_accum(cfg.train, block_size=10)


class _PoisonLoss(TrainHooks):
    """Makes the loss of chosen optimizer steps NaN by swapping the model the loop calls."""

    def __init__(self, bad_steps: set[int]) -> None:
        self.bad_steps = bad_steps

    def on_start(self, trainer: Trainer) -> None:
        trainer.train_model = _Poisoned(trainer.train_model, trainer, self.bad_steps)


class _Poisoned(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module, trainer: Trainer, bad_steps: set[int]) -> None:
        super().__init__()
        self.inner, self.bad_steps = inner, bad_steps
        self.trainer = [trainer]  # a list: not registered as a submodule

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, loss = self.inner(x, y)
        if self.trainer[0].step + 1 in self.bad_steps and self.training:
            loss = loss * float("nan")
        return logits, loss


def test_nan_loss_stops_and_keeps_last_good_checkpoint(char_data: Path, tmp_path: Path) -> None:
    cfg = _cfg(char_data, **{"train.batch_size": 4, "train.max_steps": 10, "train.ckpt_interval": 3})
    with pytest.raises(TrainingError, match=r"loss became nan at step 5.*step_0000003"):
        train(cfg, tmp_path / "run", hooks=[_PoisonLoss({5})])
    run = tmp_path / "run"
    assert (run / "latest").read_text().strip() == "step_0000003"
    weights = load_safetensors(run / "checkpoints" / "step_0000003" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert not (run / "final").exists()


def test_nan_loss_skip_leaves_weights_unchanged(char_data: Path, tmp_path: Path) -> None:
    """With on_nan=skip, a poisoned step changes nothing: the same weights as lr 0 for that step."""
    hooks = [_PoisonLoss({2})]
    cfg = _cfg(char_data, **{"train.batch_size": 4, "train.max_steps": 2, "train.on_nan": "skip"})
    skipped = train(cfg, tmp_path / "skip", hooks=hooks)
    one = train(_cfg(char_data, **{"train.batch_size": 4, "train.max_steps": 1}), tmp_path / "one")
    assert skipped.step == 2
    wa = load_safetensors(skipped.final_dir / "model.safetensors")
    wb = load_safetensors(one.final_dir / "model.safetensors")
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    def strict(name: str) -> None:
        raise ValueError(f"metrics.jsonl holds {name}, which is not JSON")

    lines = (skipped.run_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(x, parse_constant=strict) for x in lines]  # jq/pandas reject NaN/Infinity
    assert records[1]["step"] == 2 and records[1]["loss"] is None  # the skipped step: null, and why
    assert records[1]["not_finite"] == {"loss": "nan"} and "not_finite" not in records[0]


def test_existing_run_dir_needs_resume_or_overwrite(char_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(_cfg(char_data, **{"train.max_steps": 1}), run)
    with pytest.raises(CheckpointError, match="already exists; pass --resume"):
        train(_cfg(char_data, **{"train.max_steps": 1}), run)
    r = train(_cfg(char_data, **{"train.max_steps": 2}), run, overwrite=True)
    assert r.step == 2


def test_block_size_longer_than_the_data(tmp_path: Path, make_char_dataset) -> None:
    write_char_dataset = make_char_dataset
    small = write_char_dataset(tmp_path / "small", text="to be or not to be\n" * 10)
    with pytest.raises(DataError, match="block_size"):
        Trainer(_cfg(small, **{"model.block_size": 64}), tmp_path / "run")
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_vocab_from_dataset_and_config_written(char_data: Path, tmp_path: Path) -> None:
    from gptforge.data.shards import open_dataset
    from gptforge.train.rundir import load_run_config

    r = train(_cfg(char_data, **{"train.max_steps": 1}), tmp_path / "run")
    saved = load_run_config(r.run_dir)
    assert saved.model.vocab_size == open_dataset(char_data).vocab_size
    assert saved.model.n_embd == 32 and saved.train.max_steps == 1


def test_config_precedence(tmp_path: Path) -> None:
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("preset: shakespeare-char-cpu\ntrain:\n  lr: 5.0e-4\n  max_steps: 300\nmodel:\n  n_layer: 3\n")
    cfg = build_run_config(None, yaml_file, {"train.max_steps": "400"})
    assert cfg.preset == "shakespeare-char-cpu"
    assert (cfg.model.n_embd, cfg.model.n_layer) == (128, 3)  # preset, then YAML
    assert (cfg.train.batch_size, cfg.train.lr, cfg.train.max_steps) == (12, 5e-4, 400)  # recipe, YAML, flag
    with pytest.raises(ConfigError, match="did you mean 'train.max_steps'"):
        build_run_config("shakespeare-char-cpu", None, {"train.max_step": "3"})


def test_shipped_yaml_configs_load() -> None:
    configs = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
    assert configs, "configs/*.yaml examples are missing"
    for path in configs:
        cfg = build_run_config(None, path, None)
        assert cfg.train.max_steps > 0, path


def test_out_of_memory_names_the_settings(char_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def oom(self: Trainer) -> tuple[float, float | None]:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Trainer, "train_step", oom)
    with pytest.raises(TrainingError, match=r"out of memory .* train.batch_size 4 .*lower --train.batch_size"):
        train(_cfg(char_data, **{"train.batch_size": 4, "train.max_steps": 2}), tmp_path / "run")


@pytest.mark.slow
def test_compiled_run_saves_plain_keys(char_data: Path, tmp_path: Path) -> None:
    """torch.compile (or its warning + fallback where unsupported) leaves no `_orig_mod.` in checkpoints."""
    r = train(_cfg(char_data, **{"train.max_steps": 2, "train.compile": True}), tmp_path / "run")
    keys = load_safetensors(r.final_dir / "model.safetensors").keys()
    assert keys and not any(k.startswith(("_orig_mod.", "module.")) for k in keys)
    resumed = train(build_run_config(None, None, {**BASE, "data.dir": str(char_data), "train.max_steps": 3,
                                                  "train.compile": True}), tmp_path / "run", resume=True)
    assert resumed.step == 3
