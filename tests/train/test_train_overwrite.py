"""``train --overwrite``: only a gptforge run (or an empty folder) is replaced, and the old run is
moved aside and deleted only once the new run has written its first checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from gptforge.errors import GptforgeError
from gptforge.train.config import build_run_config
from gptforge.train.loop import Trainer, TrainHooks, train

BASE = {
    "model.n_layer": 1, "model.n_head": 2, "model.n_embd": 16, "model.block_size": 16, "model.dropout": 0.0,
    "train.batch_size": 2, "train.warmup_steps": 0, "train.eval_iters": 1, "train.eval_interval": 0,
    "train.ckpt_interval": 0, "train.schedule": "constant", "log.interval": 1, "log.progress": False,
}


def _cfg(data: Path, **extra: object):
    return build_run_config(None, None, {**BASE, "data.dir": str(data), **extra})


def _asides(run: Path) -> list[Path]:
    return sorted(run.parent.glob(f".{run.name}.replaced-*"))


def test_overwrite_refuses_a_folder_that_is_not_a_run(char_data: Path, tmp_path: Path) -> None:
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "chapter1.tex").write_text("years of work")
    with pytest.raises(GptforgeError, match=r"refusing to --overwrite .*thesis.*chapter1\.tex"):
        train(_cfg(char_data, **{"train.max_steps": 1}), thesis, overwrite=True)
    assert (thesis / "chapter1.tex").read_text() == "years of work"


def test_overwrite_refuses_the_current_folder(char_data: Path, tmp_path: Path, monkeypatch) -> None:
    run = tmp_path / "run"
    train(_cfg(char_data, **{"train.max_steps": 1}), run)
    monkeypatch.chdir(run)
    with pytest.raises(GptforgeError, match="current folder"):
        train(_cfg(char_data, **{"train.max_steps": 1}), Path("."), overwrite=True)
    assert (run / "final" / "model.safetensors").is_file()


def test_overwrite_refuses_a_run_holding_its_dataset(char_data: Path, tmp_path: Path, make_char_dataset) -> None:
    run = tmp_path / "run"
    train(_cfg(char_data, **{"train.max_steps": 1}), run)
    inner = make_char_dataset(run / "data")
    with pytest.raises(GptforgeError, match="which this command reads"):
        train(_cfg(inner, **{"train.max_steps": 1}), run, overwrite=True)
    assert (inner / "meta.json").is_file() and (run / "final").is_dir()


class _Watch(TrainHooks):
    """Records, at each step, whether the replaced run is still kept aside; may fail at a step."""

    def __init__(self, run: Path, fail_at: int | None = None) -> None:
        self.run, self.fail_at, self.seen = run, fail_at, []

    def on_step_end(self, trainer: Trainer, record: dict | None) -> None:
        self.seen.append((trainer.step, len(_asides(self.run))))
        if trainer.step == self.fail_at:
            raise RuntimeError("boom")


def test_old_run_is_deleted_only_after_the_first_checkpoint(char_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(_cfg(char_data, **{"train.max_steps": 1}), run)
    (run / "marker").write_text("old")
    watch = _Watch(run)
    r = train(_cfg(char_data, **{"train.max_steps": 4, "train.ckpt_interval": 2}), run, overwrite=True,
              hooks=[watch])
    assert r.step == 4 and not (run / "marker").exists()
    assert watch.seen == [(1, 1), (2, 1), (3, 0), (4, 0)]  # kept until the step-2 checkpoint was written
    assert _asides(run) == []


def test_a_run_failing_before_its_first_checkpoint_puts_the_old_one_back(char_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(_cfg(char_data, **{"train.max_steps": 1}), run)
    (run / "marker").write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        train(_cfg(char_data, **{"train.max_steps": 4, "train.ckpt_interval": 3}), run, overwrite=True,
              hooks=[_Watch(run, fail_at=2)])
    assert (run / "marker").read_text() == "old" and (run / "final" / "model.safetensors").is_file()
    assert _asides(run) == []
