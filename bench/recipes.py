"""nanoGPT's CPU Shakespeare recipe, gptforge's classic preset and the modern one, side by side.

    flock /tmp/gptforge-bench.lock python bench/recipes.py                    # all three, one seed
    flock /tmp/gptforge-bench.lock python bench/recipes.py --seeds 1,2,3      # the modern preset: 3 seeds
    flock /tmp/gptforge-bench.lock python bench/recipes.py --only modern --ablate   # each option off in turn
    python bench/recipes.py --only modern --nanogpt-wall 190 --ablate no-rope,gelu   # some of them

Each run is a subprocess, one after the other, on the same machine: the real nanoGPT
(``../shared/peers/nanoGPT``, run from a temporary copy as its README says, never imported),
``gptforge train --preset shakespeare-char-cpu`` and ``--preset shakespeare-char-modern-cpu``.
Printed for each: wall time of the whole process (start-up, evaluation and checkpoints
included), median tokens/s, the final val loss, the val loss of the last evaluation that
had finished by nanoGPT's wall time ("at equal time"), and the time of the first evaluation
at or below nanoGPT's final val loss (an evaluation counts from when it finished: see
:func:`eval_times`). The val curves go into one plot (``gptforge plot`` over the
run dirs, nanoGPT's log converted to a ``metrics.jsonl``), labelled by run name.

The machine is shared: print ``uptime`` with the figures and compare only within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import cpu_model  # noqa: E402  (bench/_machine.py, beside this script)

ROOT = Path(__file__).resolve().parent.parent
PEER = ROOT.parent / "shared" / "peers" / "nanoGPT"
PY = sys.executable
NANOGPT_FLAGS = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
                 "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4",
                 "--n_embd=128", "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0"]
# Each option of the modern preset turned off in turn (the ablation table in the README).
ABLATIONS = {
    "no-muon": ["--train.optimizer", "adamw", "--train.lr", "3e-3"],
    "no-rope": ["--model.positions", "learned"],
    "no-rmsnorm": ["--model.normalization", "layernorm"],
    "no-qk-norm": ["--model.qk_norm", "false"],
    "gelu": ["--model.activation", "gelu"],
    "tied": ["--model.tie_weights", "true"],
    "no-zero-init": ["--model.zero_init_proj", "false"],
    "decay-0.1": ["--train.weight_decay", "0.1"],
}


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + e.get("PYTHONPATH", "")
    e.setdefault("GPTFORGE_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    return e


def run_nanogpt(work: Path, out: Path, extra: list[str] = ()) -> dict:
    """The real nanoGPT from a copy of the peer folder; its log becomes ``out/metrics.jsonl``."""
    src = Path(env()["GPTFORGE_DATA_DIR"]) / "tinyshakespeare.txt"
    copy = work / "nanogpt"
    if not PEER.is_dir():
        sys.exit(f"error: nanoGPT is not at {PEER} (the shared folder beside the checkout); "
                 "run with --only classic,modern --nanogpt-wall SECONDS")
    shutil.copytree(PEER, copy)
    for p in copy.rglob("*"):
        p.chmod(p.stat().st_mode | 0o200)
    shutil.copy(src, copy / "data" / "shakespeare_char" / "input.txt")
    subprocess.run([PY, "prepare.py"], cwd=copy / "data" / "shakespeare_char", check=True, capture_output=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen([PY, "-u", "train.py", *NANOGPT_FLAGS, *extra], cwd=copy, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    records, iter_ms, last = [], [], None
    for line in proc.stdout:
        now = time.perf_counter() - t0
        if m := re.match(r"step (\d+): train loss ([\d.]+), val loss ([\d.]+)", line):
            step = int(m.group(1))
            records.append({"step": step, "tokens": step * 768, "train_loss": float(m.group(2)),
                            "val_loss": float(m.group(3)), "time_s": now})
        elif m := re.match(r"iter (\d+): loss ([\d.]+), time ([\d.]+)ms", line):
            step = int(m.group(1))
            iter_ms.append(float(m.group(3)))
            last = {"step": step, "tokens": step * 768, "loss": float(m.group(2)), "time_s": now}
            if step % 10 == 0:
                records.append(last)
    if proc.wait() != 0:
        raise SystemExit(f"nanoGPT failed (exit {proc.returncode})")
    wall = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    evals = [(r["time_s"], r["val_loss"]) for r in records if "val_loss" in r]
    return {"name": out.name, "wall_s": wall, "tokens_per_s": 768 / (statistics.median(iter_ms[1:]) / 1000),
            "val_loss": evals[-1][1], "evals": evals, "run": out}


def run_gptforge(data: Path, out: Path, preset: str, extra: list[str]) -> dict:
    """``gptforge train --preset PRESET`` as a subprocess; the eval times from its metrics."""
    t0 = time.perf_counter()
    proc = subprocess.run([PY, "-m", "gptforge", "train", "--preset", preset, "--data", str(data), "--out", str(out),
                           "--overwrite", "--log.progress", "false", "--json", *extra],
                          env=env(), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"gptforge train failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    startup = wall - float(result.get("train_time_s", wall))  # imports, data, model: before the loop
    evals = eval_times(lines, startup, wall)
    rates = [r["tokens_per_s"] for r in lines if r.get("tokens_per_s")]
    return {"name": out.name, "wall_s": wall, "tokens_per_s": statistics.median(rates[1:] or rates),
            "val_loss": evals[-1][1], "evals": evals, "run": out}


def eval_times(lines: list[dict], startup: float, wall: float) -> list[tuple[float, float]]:
    """(seconds since the process started, val loss) of each evaluation, counted when it had
    finished, as nanoGPT's are (its line is printed after the evaluation).

    A metrics eval line has no time of its own: an intermediate one is dated by the next
    training line less that line's steps at the run's median step time (so the evaluation's
    own cost counts); the last one by the wall time of the whole process (the final
    checkpoint and ``final/`` included, which favours nobody).
    """
    train = sorted((r["step"], r["time_s"]) for r in lines if "time_s" in r)
    per_step = statistics.median([(t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in zip(train, train[1:])
                                  if s1 > s0] or [0.0])
    evals = [r for r in lines if r.get("val_loss") is not None]
    out = []
    for i, r in enumerate(evals):
        after = next(((s, t) for s, t in train if s > r["step"]), None)
        if i == len(evals) - 1 or after is None:
            out.append((wall, r["val_loss"]))
        else:
            out.append((startup + after[1] - (after[0] - r["step"]) * per_step, r["val_loss"]))
    return out


def at_time(evals: list[tuple[float, float]], t: float) -> float | None:
    """The val loss of the last evaluation at or before ``t`` seconds."""
    done = [v for s, v in evals if s <= t]
    return done[-1] if done else None


def time_to(evals: list[tuple[float, float]], loss: float) -> float | None:
    """The time of the first evaluation at or below ``loss``."""
    return next((s for s, v in evals if v <= loss), None)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="nanogpt,classic,modern", help="comma list of nanogpt, classic, modern")
    p.add_argument("--seeds", default="1337", help="seeds of the modern preset (comma list)")
    p.add_argument("--preset", default="shakespeare-char-modern-cpu")
    p.add_argument("--ablate", nargs="?", const="all", metavar="NAMES",
                   help=f"also run the modern preset with each option off in turn (or only NAMES, a comma "
                        f"list of {', '.join(ABLATIONS)})")
    p.add_argument("--nanogpt-wall", type=float, help="nanoGPT's wall time when it is not run (--only)")
    p.add_argument("--out", help="keep the runs here (default: a temporary folder)")
    p.add_argument("--nanogpt-flag", action="append", default=[], metavar="--NAME=VALUE",
                   help="extra nanoGPT flag after its recipe (a smoke test: --nanogpt-flag=--max_iters=4)")
    p.add_argument("--set", action="append", default=[], metavar="FLAG=VALUE",
                   help="extra flag for the modern runs, e.g. --set train.max_steps=500")
    args = p.parse_args()
    only = set(args.only.split(","))
    ablations = [] if not args.ablate else list(ABLATIONS) if args.ablate == "all" else args.ablate.split(",")
    unknown = [n for n in ablations if n not in ABLATIONS]
    if unknown:  # before any run starts
        sys.exit(f"error: unknown ablation {', '.join(unknown)}; choose from {', '.join(ABLATIONS)}")
    extra = [x for kv in args.set for x in ("--" + kv.split("=", 1)[0], kv.split("=", 1)[1])]
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="gptforge-recipes-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical cores); uptime: {os.popen('uptime').read().strip()}")
    data = work / "data"
    if not (data / "meta.json").is_file():
        subprocess.run([PY, "-m", "gptforge", "prepare", "--input", "tinyshakespeare", "--tokenizer", "char",
                        "--out", str(data)], env=env(), check=True, capture_output=True)
    results = []
    if "nanogpt" in only:
        results.append(run_nanogpt(work, work / "nanoGPT", args.nanogpt_flag))
    if "classic" in only:
        results.append(run_gptforge(data, work / "classic", "shakespeare-char-cpu", []))
    if "modern" in only:
        for seed in args.seeds.split(","):
            name = "modern" if args.seeds == "1337" else f"modern-seed{seed}"
            results.append(run_gptforge(data, work / name, args.preset, ["--train.seed", seed, *extra]))
    if args.ablate:
        for name in ablations:
            results.append(run_gptforge(data, work / name, args.preset, [*ABLATIONS[name], *extra]))
    ref = next((r for r in results if r["name"] == "nanoGPT"), None)
    t_ref = ref["wall_s"] if ref else args.nanogpt_wall
    loss_ref = ref["val_loss"] if ref else 1.886
    print(f"\nuptime after: {os.popen('uptime').read().strip()}")
    print(f"{'run':18s} {'wall s':>8s} {'tokens/s':>9s} {'final val':>9s} "
          f"{'val @ ' + (f'{t_ref:.0f}s' if t_ref else '-'):>10s} {'s to ' + f'{loss_ref:.3f}':>9s}")
    for r in results:
        eq = at_time(r["evals"], t_ref) if t_ref else None
        tt = time_to(r["evals"], loss_ref)
        print(f"{r['name']:18s} {r['wall_s']:8.1f} {r['tokens_per_s']:9.0f} {r['val_loss']:9.4f} "
              f"{(f'{eq:.4f}' if eq is not None else '-'):>10s} {(f'{tt:.1f}' if tt is not None else '-'):>9s}")
    modern = [r for r in results if r["name"].startswith("modern")]
    if len(modern) > 1 and t_ref:
        vals = [at_time(r["evals"], t_ref) for r in modern]
        times = [time_to(r["evals"], loss_ref) for r in modern]
        if all(v is not None for v in vals):
            print(f"modern mean of {len(vals)} seeds at {t_ref:.0f}s: {statistics.mean(vals):.4f} "
                  f"(min {min(vals):.4f}, max {max(vals):.4f})")
        if all(t is not None for t in times):
            print(f"modern mean time to {loss_ref:.3f}: {statistics.mean(times):.1f}s "
                  f"({statistics.mean(times) / t_ref:.0%} of {t_ref:.0f}s; max {max(times):.1f}s)")
    plot = subprocess.run([PY, "-m", "gptforge", "plot", *[str(r["run"]) for r in results],
                           "--out", str(work / "compare.png")], env=env(), capture_output=True, text=True)
    print(plot.stdout.strip() or plot.stderr.strip().splitlines()[-1])
    print(json.dumps([{k: v for k, v in r.items() if k != "run"} for r in results]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
