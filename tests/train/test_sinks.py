"""TensorBoard and W&B sinks receive what metrics.jsonl receives.

References: the run's own ``metrics.jsonl``. TensorBoard is read back with
tensorboard's EventAccumulator; W&B runs in offline mode and its ``.wandb``
file is decoded (LevelDB-log framing + wandb's protobuf records); a fake
``wandb`` module checks the calls without the package. A missing package is a
ConfigError naming the extra to install.
"""

from __future__ import annotations

import json
import math
import struct
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gptforge.errors import ConfigError
from gptforge.train.config import build_run_config
from gptforge.train.loop import train
from gptforge.train.sinks import TensorBoardSink, WandbSink, numeric_items

TINY = {
    "model.n_layer": "1", "model.n_head": "2", "model.n_embd": "16", "model.block_size": "16",
    "model.dropout": "0", "train.batch_size": "2", "train.warmup_steps": "1", "train.max_steps": "4",
    "train.eval_iters": "1", "train.eval_interval": "2", "train.ckpt_interval": "0", "log.interval": "1",
    "log.progress": "false",
}


def metrics_by_key(run: Path) -> dict[str, dict[int, float]]:
    """``{key: {step: value}}`` of every finite number in metrics.jsonl."""
    out: dict[str, dict[int, float]] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        for k, v in numeric_items(rec).items():
            out.setdefault(k, {})[rec["step"]] = v
    return out


def test_numeric_items_drops_step_none_bool_and_nan() -> None:
    rec = {"step": 3, "tokens": 96, "loss": 2.5, "val_loss": None, "flag": True, "bad": math.nan, "name": "x"}
    assert numeric_items(rec) == {"tokens": 96, "loss": 2.5}


def test_tensorboard_event_file_holds_the_metrics(char_data: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    train(build_run_config(None, None, {**TINY, "data.dir": str(char_data), "log.tensorboard": "true"}), run)
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    expected = metrics_by_key(run)
    assert {"loss", "lr", "tokens", "val_loss", "train_loss"} <= set(expected)
    assert set(acc.Tags()["scalars"]) == set(expected)
    for key, by_step in expected.items():
        got = {e.step: e.value for e in acc.Scalars(key)}
        assert sorted(got) == sorted(by_step), key
        for step, value in by_step.items():
            assert got[step] == pytest.approx(value, rel=1e-6), (key, step)  # TB stores float32


def read_wandb_records(path: Path) -> list[bytes]:
    """The record payloads of a ``.wandb`` file: a 7-byte header (``:W&B``, magic, version), then
    LevelDB-log records (crc32, length, type) packed in 32 KiB blocks."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, out, parts, block = 7, [], [], 32768
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # too small for a header: padding to the next block
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        if pos + 7 + length > len(data):  # a record still being written
            break
        parts.append(data[pos + 7:pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            out.append(b"".join(parts))
            parts = []
    return out


def _record_kind(pb: Any, payload: bytes) -> str | None:
    rec = pb.Record()
    rec.ParseFromString(payload)
    return rec.WhichOneof("record_type")


def test_wandb_offline_run_holds_the_metrics(char_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    from wandb.proto import wandb_internal_pb2 as pb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    train(build_run_config(None, None, {**TINY, "data.dir": str(char_data), "log.wandb": "true",
                                        "log.wandb_project": "gptforge-test"}), run)
    run_id = (run / "wandb_run_id").read_text().strip()
    files = list((run / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(files) == 1, list((run / "wandb").rglob("*"))
    logged: dict[str, dict[int, float]] = {}
    # The W&B service process writes the file; finish() may return before its last flush.
    deadline = time.monotonic() + 60
    while True:
        payloads = read_wandb_records(files[0])
        kinds = [_record_kind(pb, p) for p in payloads]
        if "exit" in kinds or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    config_seen, kinds = False, []
    for payload in payloads:
        rec = pb.Record()
        rec.ParseFromString(payload)
        kind = rec.WhichOneof("record_type")
        kinds.append(kind)
        if kind in ("run", "config"):  # the config comes with the run record (or a later config record)
            updates = rec.run.config.update if kind == "run" else rec.config.update
            config_seen |= any(u.key == "train" and json.loads(u.value_json).get("max_steps") == 4
                               for u in updates)
        if kind != "history":
            continue
        for item in rec.history.item:
            key = item.key or "/".join(item.nested_key)
            if not key.startswith("_"):
                logged.setdefault(key, {})[rec.history.step.num] = json.loads(item.value_json)
    assert config_seen, kinds  # the run config travels with the W&B run
    expected = metrics_by_key(run)
    assert set(logged) == set(expected)
    for key, by_step in expected.items():
        assert logged[key] == pytest.approx(by_step), key


class FakeRun:
    def __init__(self, **kwargs: Any) -> None:
        self.init_kwargs = kwargs
        self.logged: list[tuple[dict[str, Any], int]] = []
        self.finished = False

    def log(self, values: dict[str, Any], step: int) -> None:
        self.logged.append((values, step))

    def finish(self) -> None:
        self.finished = True


def test_wandb_sink_with_a_fake_module_keeps_the_run_id(tmp_path: Path) -> None:
    runs: list[FakeRun] = []

    def init(**kwargs: Any) -> FakeRun:
        runs.append(FakeRun(**kwargs))
        return runs[-1]

    fake = SimpleNamespace(init=init)
    sink = WandbSink(tmp_path, "proj", {"train": {"lr": 1e-3}}, wandb_module=fake)
    sink.log({"step": 5, "tokens": 80, "loss": 2.0, "lr": 1e-3})
    sink.log({"step": 5, "tokens": 80, "train_loss": 2.1, "val_loss": None})
    sink.close()
    first = runs[0]
    assert first.init_kwargs["project"] == "proj" and first.init_kwargs["resume"] == "allow"
    assert first.init_kwargs["config"] == {"train": {"lr": 1e-3}}
    assert first.logged == [({"tokens": 80, "loss": 2.0, "lr": 1e-3}, 5), ({"tokens": 80, "train_loss": 2.1}, 5)]
    assert first.finished
    WandbSink(tmp_path, "proj", wandb_module=fake)  # a resume continues the same W&B run
    assert runs[1].init_kwargs["id"] == first.init_kwargs["id"]


def test_missing_packages_name_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(ConfigError, match=r"gptforge\[wandb\]"):
        WandbSink(tmp_path, "proj")
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError, match=r"gptforge\[tb\]"):
        TensorBoardSink(tmp_path / "tb")
