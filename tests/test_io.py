"""``io.atomic_dir``: complete or absent, and the leftovers of a killed writer are swept."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gptforge.errors import GptforgeError
from gptforge.io import atomic_dir, sweep_leftovers


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_atomic_dir_is_complete_or_absent(tmp_path: Path) -> None:
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "a").write_text("1")
    assert (tmp_path / "out" / "a").read_text() == "1"
    with pytest.raises(GptforgeError, match="already exists"):
        with atomic_dir(tmp_path / "out"):
            pass
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "out", overwrite=True) as tmp:
            (tmp / "a").write_text("2")
            raise RuntimeError
    assert (tmp_path / "out" / "a").read_text() == "1"  # the old one is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left


def test_leftovers_of_a_killed_writer_are_swept(tmp_path: Path) -> None:
    """A real SIGKILL inside atomic_dir leaves its folder; the next atomic_dir removes it,
    and keeps the live work of this process and other hosts' folders."""
    code = (
        "import os, signal, sys\n"
        "from gptforge.io import atomic_dir\n"
        "with atomic_dir(sys.argv[1]) as tmp:\n"
        "    (tmp / 'half').write_text('x')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], check=False)
    assert proc.returncode == -signal.SIGKILL
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".run.tmp-")]
    assert len(leftovers) == 1 and (leftovers[0] / "half").is_file()
    host = socket.gethostname()
    live = tmp_path / f".other.tmp-{host}-{os.getpid()}-abc"  # this process: still working
    foreign = tmp_path / f".other.tmp-elsewhere-{_dead_pid()}-abc"  # another host's
    dead_file = tmp_path / f".latest.tmp-{host}-{_dead_pid()}-abc"  # an atomic_write_bytes leftover
    for p in (live, foreign):
        p.mkdir()
    dead_file.write_text("x")
    with atomic_dir(tmp_path / "run") as tmp:
        (tmp / "done").write_text("y")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["run", live.name, foreign.name])
    assert sweep_leftovers(tmp_path) == []


def test_json_line_writes_strict_json_and_keeps_what_was_not_finite() -> None:
    import json
    import math

    from gptforge.io import json_line

    def strict(name: str) -> None:
        raise ValueError(name)

    line = json_line({"step": 3, "loss": math.nan, "lr": 0.1, "layers": {"h.0": math.inf, "h.1": [1.0, -math.inf]}})
    got = json.loads(line, parse_constant=strict)
    assert got == {"step": 3, "loss": None, "lr": 0.1, "layers": {"h.0": None, "h.1": [1.0, None]},
                   "not_finite": {"loss": "nan", "layers.h.0": "inf", "layers.h.1.1": "-inf"}}
    assert json.loads(json_line({"step": 1, "loss": 2.5})) == {"step": 1, "loss": 2.5}


def test_atomic_dir_fsyncs_files_and_folders_before_the_rename(tmp_path, monkeypatch) -> None:
    """Shards and optimizer state are written with plain open()/torch.save into the temporary
    folder; each file and the folder itself are fsynced before the rename (and the parent after),
    so a power cut cannot leave a visible folder of empty files."""
    import os

    import torch

    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append(("replace", str(src)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    out = tmp_path / "ckpt"
    with atomic_dir(out) as tmp:
        torch.save({"a": torch.ones(3)}, tmp / "optimizer.pt")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "train_000.bin").write_bytes(b"\x01\x02")
        tmp_name = str(tmp.resolve())
    rename = events.index(("replace", tmp_name))
    synced = {p for kind, p in events[:rename] if kind == "fsync"}
    for rel in ("optimizer.pt", "sub/train_000.bin", "sub", ""):
        assert str(Path(tmp_name) / rel).rstrip("/") in synced, rel
    assert ("fsync", str(tmp_path.resolve())) in events[rename:]  # the parent, after the rename
    assert (out / "sub" / "train_000.bin").read_bytes() == b"\x01\x02"
