"""SIGKILL a real `gptforge train` subprocess again and again; every `--resume` must pick up
the newest complete checkpoint, and the run must end bitwise equal to an uninterrupted one.

Kills are aimed at chosen moments through ``fi_harness`` (inside an optimizer step, in the
middle of an evaluation, between a checkpoint's files and its state.json, before the rename,
before ``latest`` is rewritten, before pruning, while ``final/`` is written) and also sent
from outside at random training steps. The reference is the same command run once, untouched.

Fast tier: 5 kills. ``pytest -m slow``: 20 kills (the figure in the README).
"""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from gptforge.io import load_safetensors
from gptforge.train import checkpoint as ckpt
from tests.reliability.conftest import REPO, child_env, harness_cmd, run_harness


def train_flags(steps: int) -> list[str]:
    return [
        "--model.n_layer", "1", "--model.n_head", "2", "--model.n_embd", "16", "--model.block_size", "16",
        "--model.dropout", "0.1",  # dropout draws from the torch RNG: its state must survive too
        "--train.batch_size", "4", "--train.max_steps", str(steps), "--train.warmup_steps", "4",
        "--train.eval_interval", "6", "--train.eval_iters", "2", "--train.ckpt_interval", "4",
        "--train.keep_last", "2", "--train.device", "cpu", "--train.seed", "7",
    "--log.interval", "1", "--log.progress", "false",
    ]  # fmt: skip


RESUMED = re.compile(r"resuming \S+ from (step_\d+)")

# (point, N): SIGKILL the N-th time the child reaches the point; ("random", k): from outside,
# at a random moment after the k-th new metrics line of that child.
FAST_PLAN = [("ckpt_state", 2), ("eval", 1), ("latest", 2), ("random", 3), ("final", 1)]
SLOW_PLAN = [
    ("ckpt_state", 2), ("step", 2), ("eval", 1), ("ckpt_files", 2), ("random", 2),
    ("latest", 2), ("prune", 1), ("random", 5), ("ckpt_state", 1), ("step", 7),
    ("eval", 2), ("ckpt_files", 1), ("random", 1), ("prune", 2), ("latest", 1),
    ("random", 4), ("ckpt_state", 2), ("step", 1), ("random", 3), ("final", 1),
]  # fmt: skip


def _metric_lines(run: Path) -> int:
    path = run / "metrics.jsonl"
    return len(path.read_text(encoding="utf-8").splitlines()) if path.is_file() else 0


def _kill_at_random(
    cmd: list[str], run: Path, after_lines: int, rng: random.Random
) -> subprocess.CompletedProcess:
    """Start ``cmd``; SIGKILL it a random moment after ``after_lines`` new metrics lines."""
    start_lines = _metric_lines(run)
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        if _metric_lines(run) >= start_lines + after_lines:
            time.sleep(rng.uniform(0.0, 0.02))  # within a step or two of that line, wherever it is
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    out, err = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _check_run_dir(run: Path) -> str | None:
    """Every visible step_* folder is complete and verifies; returns what ``latest`` names."""
    for _, path in ckpt.list_checkpoints(run):
        ckpt.verify_checkpoint(path)  # raises CheckpointError naming the file
    latest = ckpt.read_latest(run)
    if latest is not None:
        assert (run / "checkpoints" / latest).is_dir(), (
            f"latest names {latest}, which does not exist"
        )
    return latest


def _losses(run: Path) -> tuple[dict[int, float], dict[int, float]]:
    lines = [
        json.loads(x) for x in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    train = [(r["step"], r["loss"]) for r in lines if "loss" in r]
    evals = [(r["step"], r["val_loss"]) for r in lines if "val_loss" in r]
    assert len({s for s, _ in train}) == len(train), "a step was logged twice"
    return dict(train), dict(evals)


def _kill_and_resume(
    plan: list[tuple[str, int]], steps: int, char_ds: Path, tmp_path: Path
) -> dict[str, int]:
    ref, run = tmp_path / "reference", tmp_path / "killed"
    r = run_harness("train", "--data", str(char_ds), "--out", str(ref), *train_flags(steps))
    assert r.returncode == 0, r.stderr

    rng = random.Random(1234)
    kills = resumes_checked = 0
    resume_from: str | None = None
    unannounced = False  # a complete checkpoint newer than `latest` was left by an earlier kill
    for i, (point, n) in enumerate(plan):
        args = (["train", "--resume", str(run)] if i else
                ["train", "--data", str(char_ds), "--out", str(run), *train_flags(steps)])  # fmt: skip
        if point == "random":
            r = _kill_at_random(harness_cmd(*args), run, n, rng)
        else:
            r = run_harness(*args, fi=f"{point}:{n}")
        assert "Traceback" not in r.stderr, r.stderr
        if r.returncode == -signal.SIGKILL:
            kills += 1
        else:  # a random kill that came too late: the child finished (or a bug)
            assert r.returncode == 0, r.stderr
        if i:
            m = RESUMED.search(r.stderr)
            if m:  # absent only when the kill landed before the child got that far
                assert m.group(1) == resume_from, (m.group(1), resume_from, r.stderr)
                resumes_checked += 1
        latest = _check_run_dir(run)
        assert latest is not None, (
            "the first run was killed after its first checkpoint, so one must exist"
        )
        complete = [p.name for _, p in ckpt.list_checkpoints(run)]
        assert latest in complete, (latest, complete)
        # A folder newer than `latest` is one renamed into place just before `latest` moved
        # (aimed "latest" kills, or a random kill landing there): complete, verified above, but
        # not yet announced; the resume redoes it from `latest` and overwrites it.
        if point not in ("latest", "random") and not unannounced:
            assert latest == complete[-1], (latest, complete)
        unannounced = complete[-1] != latest
        if resume_from is not None:
            assert latest >= resume_from, f"latest went back from {resume_from} to {latest}"
        resume_from = latest

    r = run_harness("train", "--resume", str(run))
    assert r.returncode == 0, r.stderr
    assert RESUMED.search(r.stderr).group(1) == resume_from
    resumes_checked += 1

    assert _losses(run) == _losses(ref)  # every step's loss and every eval, exactly
    wa = load_safetensors(ref / "final" / "model.safetensors")
    wb = load_safetensors(run / "final" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    last = ckpt.checkpoint_name(steps)
    oa = torch.load(ref / "checkpoints" / last / "optimizer.pt", weights_only=True)
    ob = torch.load(run / "checkpoints" / last / "optimizer.pt", weights_only=True)
    for idx in oa["state"]:
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(oa["state"][idx][key], ob["state"][idx][key])
    return {"kills": kills, "resumes_checked": resumes_checked}


def test_kills_then_resume_equal_an_uninterrupted_run(char_ds: Path, tmp_path: Path) -> None:
    counts = _kill_and_resume(FAST_PLAN, 40, char_ds, tmp_path)
    assert counts["kills"] >= len(FAST_PLAN) - 1  # the random one may come after the child ended
    print(f"\nreliability: train {counts}")


@pytest.mark.slow
def test_twenty_kills_then_resume_equal_an_uninterrupted_run(char_ds: Path, tmp_path: Path) -> None:
    counts = _kill_and_resume(SLOW_PLAN, 160, char_ds, tmp_path)
    assert counts["kills"] >= 20 - 1
    print(f"\nreliability: train {counts}")
