"""`gptforge train`, `plot` and `demo` through the command line: signals, bad input, artifacts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gptforge.train import checkpoint as ckpt

TINY_FLAGS = [
    "--model.n_layer", "2", "--model.n_head", "2", "--model.n_embd", "32", "--model.block_size", "16",
    "--train.batch_size", "4", "--train.eval_iters", "2", "--log.interval", "1",
]


def _one_error_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_a_checkpoint_and_resume_continues(
    char_data: Path, tmp_path: Path, sig: int, code: int, cli
) -> None:
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gptforge", "train", "--data", str(char_data), "--out", str(run), *TINY_FLAGS,
         "--train.max_steps", "1000000", "--train.ckpt_interval", "0", "--train.eval_interval", "0",
         "--log.progress", "false"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.is_file() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.2)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, (out, err)
    assert "Traceback" not in err
    assert f"--resume {run}" in out
    name = (run / "latest").read_text().strip()
    state = ckpt.verify_checkpoint(run / "checkpoints" / name)
    assert state["step"] >= 3 and name == ckpt.checkpoint_name(state["step"])
    assert not (run / "final").exists()

    resumed = cli("train", "--resume", str(run), "--train.max_steps", str(state["step"] + 2), "--json")
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["step"] == state["step"] + 2 and summary["final"] == str(run / "final")


def _main(capsys: pytest.CaptureFixture, *argv: str) -> subprocess.CompletedProcess:
    """`gptforge ARGV` in this process (no torch import per call), as a CompletedProcess."""
    import logging

    from gptforge.cli.main import main

    log = logging.getLogger("gptforge")  # main() sets up logging; put it back for later tests (caplog)
    saved = (log.handlers[:], log.propagate, log.level)
    capsys.readouterr()
    try:
        code = main(list(argv))
    finally:
        log.handlers[:], log.propagate, log.level = saved
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, captured.out, captured.err)


def test_bad_input_gives_one_line(char_data: Path, tmp_path: Path, cli, capsys: pytest.CaptureFixture,
                                  make_char_dataset) -> None:
    write_char_dataset = make_char_dataset
    run = tmp_path / "run"
    ok = _main(capsys, "train", "--data", str(char_data), "--out", str(run), *TINY_FLAGS, "--train.max_steps", "2",
               "--log.progress", "false")
    assert ok.returncode == 0, ok.stderr
    before = sorted(p.name for p in run.rglob("*"))

    # through a real subprocess: the exit code and stderr a shell sees
    _one_error_line(cli("train", "--data", str(char_data), "--out", str(run), *TINY_FLAGS), "already exists",
                    "--overwrite")
    assert sorted(p.name for p in run.rglob("*")) == before  # nothing touched
    _one_error_line(cli("train", "--data", str(char_data), "--out", str(tmp_path / "r3"), "--train.max_step", "5"),
                    "did you mean 'train.max_steps'")
    # the rest in-process (same main(), same error handling)
    _one_error_line(_main(capsys, "train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r2")),
                    "dataset dir not found", "gptforge prepare")
    _one_error_line(_main(capsys, "train", "--preset", "shakespeare-char-cpux", "--data", str(char_data), "--out",
                          str(tmp_path / "r4")), "did you mean 'shakespeare-char-cpu'")
    _one_error_line(_main(capsys, "train", "--resume", str(tmp_path / "missing")), "does not exist")
    other = write_char_dataset(tmp_path / "other", text="xyz abc\n" * 300)
    _one_error_line(_main(capsys, "train", "--resume", str(run), "--data.dir", str(other), "--train.max_steps", "4"),
                    "made with tokenizer")
    _one_error_line(_main(capsys, "train", "--resume", str(run), "--model.n_layer", "3", "--train.max_steps", "4"),
                    "model.n_layer: 2 -> 3")
    _one_error_line(_main(capsys, "train", "--data", str(char_data), "--out", str(tmp_path / "r5"), *TINY_FLAGS,
                          "--model.block_size", "100000"), "block_size")
    assert not (tmp_path / "r5").exists() or not any((tmp_path / "r5").iterdir())
    _one_error_line(_main(capsys, "plot", str(tmp_path / "nope")), "metrics.jsonl")


def test_plot_writes_png_and_explains_missing_matplotlib(char_data: Path, tmp_path: Path, cli) -> None:
    run = tmp_path / "run"
    assert cli("train", "--data", str(char_data), "--out", str(run), *TINY_FLAGS, "--train.max_steps", "4",
               "--train.eval_interval", "2", "--log.progress", "false").returncode == 0
    proc = cli("plot", str(run))
    assert proc.returncode == 0, proc.stderr
    png = run / "loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code = ("import sys; sys.modules['matplotlib'] = None; from gptforge.cli.main import main; "
            f"sys.exit(main(['plot', {str(run)!r}]))")
    no_mpl = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    _one_error_line(no_mpl, "pip install 'gptforge[plot]'")


def test_demo_runs_end_to_end(tmp_path: Path, cli, data_dir: Path) -> None:
    out = tmp_path / "demo"
    proc = cli("demo", "--out", str(out), "--max-steps", "20", "--precision", "fp32", "--sample-tokens", "40",
               "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["steps"] == 20 and summary["val_loss"] < 4.2  # 65 chars: ln 65 = 4.17 at chance
    assert summary["preset"] in ("shakespeare-char-cpu", "shakespeare-char-modern-cpu") and summary["reason"]
    for key in ("data", "run", "model", "plot", "sample_file"):
        assert Path(summary[key]).exists(), key
    assert len((out / "sample.txt").read_text()) > 0
    assert (out / "data" / "meta.json").is_file() and (out / "run" / "final" / "model.safetensors").is_file()


def test_plot_overlays_several_runs_labelled_by_name(tmp_path: Path, cli) -> None:
    pytest.importorskip("matplotlib")
    runs = []
    for name, losses in (("classic", [3.0, 2.5, 2.2]), ("modern", [2.8, 2.1, 1.9])):
        run = tmp_path / name
        run.mkdir()
        lines = []
        for i, v in enumerate(losses):
            lines.append({"step": 10 * (i + 1), "tokens": 100 * (i + 1), "loss": v, "time_s": 1.5 * (i + 1)})
            lines.append({"step": 10 * (i + 1), "tokens": 100 * (i + 1), "val_loss": round(v + 0.1, 6)})
        (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        runs.append(str(run))
    out = tmp_path / "compare.png"
    proc = cli("plot", *runs, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and out.stat().st_size > 1000
    from gptforge.train.plot import (
        overlay_series,  # what is drawn: one line per run, labelled by its name
    )

    assert overlay_series(runs, "time") == {"classic": [(1.5, 3.1), (3.0, 2.6), (4.5, 2.3)],
                                            "modern": [(1.5, 2.9), (3.0, 2.2), (4.5, 2.0)]}
    assert overlay_series(runs, "tokens")["modern"][0] == (100, 2.9)


def test_demo_picks_the_modern_recipe_only_when_enough_of_its_steps_fit(monkeypatch) -> None:
    from gptforge import demo

    monkeypatch.setattr(demo, "pick_cpu_settings", lambda cfg, vocab, precision: ("fp32", 1, 10.0))  # 10 steps/s
    preset, why = demo.choose_preset(180.0, 65, None)
    assert preset == demo.MODERN_PRESET and "1656 of its steps fit in 180s" in why
    preset, why = demo.choose_preset(20.0, 65, None)  # 184 steps < MODERN_MIN_STEPS
    assert preset == demo.PRESET and "only 184 steps" in why and str(demo.MODERN_MIN_STEPS) in why
