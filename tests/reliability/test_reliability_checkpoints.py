"""Checkpoints under a full disk and bit rot.

* Disk full: the write of a checkpoint file fails with ENOSPC (injected at the write call, in
  this process): the CLI stops with one ``error:`` line, the previous checkpoint stays intact,
  ``latest`` still names it, and once space is back ``--resume`` ends bitwise equal to an
  uninterrupted run.
* Bit rot: one byte flipped in any file of the newest checkpoint is detected (the message names
  the file), ``--resume`` falls back to the previous complete checkpoint, and loading the run
  as a model refuses the damaged file instead of serving corrupt weights.
"""

from __future__ import annotations

import errno
import logging
import shutil
from pathlib import Path

import pytest
import torch

from gptforge.cli.main import main
from gptforge.errors import CheckpointError, GptforgeError
from gptforge.io import load_safetensors
from gptforge.train import checkpoint as ckpt

FLAGS = [
    "--model.n_layer", "1", "--model.n_head", "2", "--model.n_embd", "16", "--model.block_size", "16",
    "--model.dropout", "0.1", "--train.batch_size", "4", "--train.warmup_steps", "2",
    "--train.eval_interval", "3", "--train.eval_iters", "1", "--train.ckpt_interval", "3",
    "--train.keep_last", "3", "--train.device", "cpu", "--train.seed", "3", "--log.interval", "1",
    "--log.progress", "false",
]  # fmt: skip


def _gf(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    logger = logging.getLogger("gptforge")
    try:
        code = main(list(argv))
    finally:  # main() sets up CLI logging; give pytest's log capture its logger back
        logger.handlers.clear()
        logger.propagate = True
    return code, capsys.readouterr().err


def _weights_equal(a: Path, b: Path) -> None:
    wa, wb = load_safetensors(a / "model.safetensors"), load_safetensors(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.fixture(scope="module")
def reference_run(char_ds: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    ref = tmp_path_factory.mktemp("diskfull") / "ref"
    assert (
        main(["train", "--data", str(char_ds), "--out", str(ref), "--train.max_steps", "9", *FLAGS])
        == 0
    )
    logging.getLogger("gptforge").handlers.clear()
    logging.getLogger("gptforge").propagate = True
    return ref


@pytest.mark.parametrize(
    "victim", ["optimizer.pt", pytest.param("model.safetensors", marks=pytest.mark.slow)]
)
def test_disk_full_during_a_checkpoint_stops_cleanly(
    victim: str,
    char_ds: Path,
    reference_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ref, run = reference_run, tmp_path / "run"

    import gptforge.io as gio

    real_write = gio.atomic_write_bytes
    real_save = torch.save
    calls = {"n": 0}

    def full(path: object) -> None:  # the third checkpoint (step 9) hits a full disk
        calls["n"] += Path(str(path)).name == victim
        if calls["n"] >= 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

    def write(path: object, data: bytes) -> None:
        full(path)
        real_write(path, data)

    def save(obj: object, f: object, *a: object, **k: object) -> None:
        full(f)
        real_save(obj, f, *a, **k)

    monkeypatch.setattr(gio, "atomic_write_bytes", write)
    monkeypatch.setattr(torch, "save", save)
    code, err = _gf(
        capsys, "train", "--data", str(char_ds), "--out", str(run), "--train.max_steps", "9", *FLAGS
    )
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert code == 2 and len(lines) == 1, err
    assert "Traceback" not in err and "No space left" in lines[0] and "step_0000006" in lines[0], (
        lines
    )
    assert ckpt.read_latest(run) == "step_0000006"
    assert [p.name for _, p in ckpt.list_checkpoints(run)] == ["step_0000003", "step_0000006"]
    ckpt.verify_checkpoint(run / "checkpoints" / "step_0000006")
    assert not (run / "final").exists()
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".step_0000009")]

    monkeypatch.setattr(gio, "atomic_write_bytes", real_write)  # space is back
    monkeypatch.setattr(torch, "save", real_save)
    code, err = _gf(capsys, "train", "--resume", str(run))
    assert code == 0, err
    assert "from step_0000006" in err
    _weights_equal(ref / "final", run / "final")


@pytest.fixture(scope="module")
def three_checkpoints(char_ds: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gptforge.train.config import build_run_config
    from gptforge.train.loop import train

    flags = dict(zip(FLAGS[::2], FLAGS[1::2], strict=True))
    cfg = build_run_config(None, None, {k.lstrip("-"): v for k, v in flags.items()} | {
        "data.dir": str(char_ds), "train.max_steps": "9"})  # fmt: skip
    run = tmp_path_factory.mktemp("integrity") / "run"
    train(cfg, run)
    shutil.rmtree(run / "final")  # so that loading the run goes to its latest checkpoint
    assert [p.name for _, p in ckpt.list_checkpoints(run)] == [
        "step_0000003",
        "step_0000006",
        "step_0000009",
    ]
    return run


FILES = ["model.safetensors", "optimizer.pt", "config.json", "tokenizer.json", "state.json"]
DETECTED: list[str] = []


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_flipped_byte_is_detected_and_resume_falls_back(
    name: str, where: str, three_checkpoints: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = tmp_path / "run"
    shutil.copytree(three_checkpoints, run)
    newest = run / "checkpoints" / "step_0000009"
    target = newest / name
    data = bytearray(target.read_bytes())
    pos = {"start": 0, "middle": len(data) // 2, "end": len(data) - 2}[where]
    data[pos] ^= 0x01
    target.write_bytes(bytes(data))

    with pytest.raises(CheckpointError) as e:
        ckpt.verify_checkpoint(newest)
    assert str(target) in str(e.value) or (name == "state.json" and "state.json" in str(e.value)), (
        str(e.value)
    )
    with caplog.at_level(logging.WARNING, logger="gptforge"):
        path, state = ckpt.find_resume_checkpoint(run)
    assert path.name == "step_0000006" and state["step"] == 6
    assert name in caplog.text and "falling back" in caplog.text
    DETECTED.append(f"{name}@{where}")

    if name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
    ):  # what loading the run as a model reads
        from gptforge.model.loading import load_model

        with pytest.raises(GptforgeError, match=name.replace(".", r"\.")):
            load_model(run)


@pytest.mark.slow  # the same fallback is checked in-process above for every file; this is the CLI path
def test_resume_through_the_cli_skips_a_corrupt_checkpoint(
    three_checkpoints: Path, tmp_path: Path, cli
) -> None:
    run = tmp_path / "run"
    shutil.copytree(three_checkpoints, run)
    target = run / "checkpoints" / "step_0000009" / "model.safetensors"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    r = cli("train", "--resume", str(run), "--train.max_steps", "12")
    assert r.returncode == 0, r.stderr
    assert str(target) in r.stderr and "from step_0000006" in r.stderr
    assert ckpt.read_latest(run) == "step_0000012"
