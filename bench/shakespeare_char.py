"""nanoGPT's CPU recipe for tinyshakespeare: the real nanoGPT and our trainer, side by side.

    flock /tmp/gptforge-bench.lock python bench/shakespeare_char.py             # nanoGPT, gptforge, once each
    flock /tmp/gptforge-bench.lock python bench/shakespeare_char.py --rounds 2  # nanoGPT, gptforge, nanoGPT, gptforge
    python bench/shakespeare_char.py --no-nanogpt --seeds 1,2,3,4,5,6,7,8,9,1337   # our loss over seeds
    python bench/shakespeare_char.py --set train.compile=true                      # any flag for our runs

Each run is a process of its own, started the same way a user would: nanoGPT's ``train.py``
from a temporary copy of ``../shared/peers/nanoGPT`` (beside the checkout; never imported),
with the command line of its README's "I only have a macbook" recipe, and
``gptforge train --preset shakespeare-char-cpu``. The runs alternate (nanoGPT, ours, nanoGPT,
ours...) so that a change in the load of this shared machine hits both alike. Printed for
each: the load average before it, wall time of the whole process (start-up, the 9
evaluations and the checkpoints included), median tokens/s of the training steps (nanoGPT:
768 tokens / its median iteration time; ours: the median of the metrics lines), and the val
loss of the last evaluation (step 2000, 20 batches). Then the ratios of the medians: our
tokens/s over nanoGPT's, and nanoGPT's wall time over ours (> 1: we are faster).

The recipe: character tokenizer, 4 layers, 4 heads, 128 wide, context 64, batch 12, 2000
iterations, lr 1e-3 with 100 warmup steps and cosine decay to 1e-4 over 2000, beta2 0.99,
weight decay 0.1, grad clip 1.0, dropout 0, no biases, evaluation every 250 steps on 20
batches. nanoGPT reports val loss 1.88.

How much one val figure says: the 20-batch estimate (15,360 val tokens) has a standard
deviation of about 0.016 around the model's loss on the whole val split, and the seed moves
the whole-split loss by about 0.01. nanoGPT's own loop restated (same initialisation,
torch.randint windows, exact GELU) over seeds 1-9 and 1337: 20-batch val 1.874 to 1.933, mean
1.901, whole split mean 1.906; ours over the same seeds: 20-batch mean 1.911, whole split
1.908. So the loss is compared over seeds (``--seeds``, with the whole-split column), not by one
20-batch figure; ``tests/train/test_train_vs_reference.py`` checks that our loop makes the same
updates as nanoGPT's from the same weights and batches.
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

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]  # bench/tokenizers.py shadows a package
ROOT = _HERE.parent
PEER = ROOT.parent / "shared" / "peers" / "nanoGPT"
PY = sys.executable
NANOGPT_FLAGS = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
                 "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4",
                 "--n_embd=128", "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0"]
# nanoGPT's loop restated (see the docstring), seeds 1-9 and 1337: means of the 20-batch and whole-split val loss
NANOGPT_SEEDS = {"seeds": [1, 2, 3, 4, 5, 6, 7, 8, 9, 1337], "val_loss": 1.9012, "val_loss_whole": 1.9055}


def cpu_model() -> str:
    """bench/_machine.py's cpu_model(), loaded by path (this folder is off sys.path, see above)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_machine", _HERE / "_machine.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.cpu_model()


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + e.get("PYTHONPATH", "")
    data = e.get("GPTFORGE_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    e["GPTFORGE_DATA_DIR"] = str(Path(data).resolve())
    return e


def nanogpt_copy(work: Path) -> Path:
    """A writable copy of nanoGPT with its char dataset prepared (nanoGPT writes into its own folder)."""
    copy = work / "nanogpt"
    if not (copy / "data" / "shakespeare_char" / "train.bin").is_file():
        shutil.copytree(PEER, copy, dirs_exist_ok=True)
        for p in [copy, *copy.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)
        shutil.copy(Path(env()["GPTFORGE_DATA_DIR"]) / "tinyshakespeare.txt", copy / "data" / "shakespeare_char" / "input.txt")
        subprocess.run([PY, "prepare.py"], cwd=copy / "data" / "shakespeare_char", check=True, capture_output=True)
    return copy


def run_nanogpt(copy: Path, extra: list[str]) -> dict:
    """nanoGPT's train.py as a process; tokens/s from its median iteration time, val from its last eval."""
    shutil.rmtree(copy / "out-shakespeare-char", ignore_errors=True)
    before = load()
    t0 = time.perf_counter()
    proc = subprocess.run([PY, "-u", "train.py", *NANOGPT_FLAGS, *extra], cwd=copy, capture_output=True, text=True,
                          env=os.environ)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"nanoGPT failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    iter_ms = [float(m.group(1)) for m in re.finditer(r"^iter \d+: loss [\d.]+, time ([\d.]+)ms", proc.stdout, re.M)]
    evals = re.findall(r"^step (\d+): train loss ([\d.]+), val loss ([\d.]+)", proc.stdout, re.M)
    return {"name": "nanoGPT", "load_before": before, "wall_s": wall,
            "tokens_per_s": 12 * 64 / (statistics.median(iter_ms[1:]) / 1000), "step": int(evals[-1][0]),
            "val_loss": float(evals[-1][2]), "train_loss": float(evals[-1][1])}  # fmt: skip


def run_gptforge(data: Path, out: Path, flags: list[str]) -> dict:
    """``gptforge train --preset shakespeare-char-cpu`` as a process; tokens/s from its metrics lines."""
    before = load()
    t0 = time.perf_counter()
    proc = subprocess.run([PY, "-m", "gptforge", "train", "--preset", "shakespeare-char-cpu", "--data", str(data),
                           "--out", str(out), "--overwrite", "--log.progress", "false", "--json", *flags],
                          env=env(), capture_output=True, text=True)  # fmt: skip
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"gptforge train failed:\n{proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in lines if r.get("tokens_per_s")]
    return {"name": "gptforge", "load_before": before, "wall_s": wall, "tokens_per_s": statistics.median(rates[1:] or rates),
            "step": summary["step"], "val_loss": summary["val_loss"], "train_loss": summary["train_loss"],
            "final": summary["final"]}  # fmt: skip


def whole_split_loss(model_dir: str, data: Path) -> float:
    """Mean loss over every non-overlapping block_size window of the val split (no sampling noise)."""
    sys.path.insert(0, str(ROOT / "src"))
    import numpy as np
    import torch

    from gptforge.data.shards import open_dataset
    from gptforge.model.loading import load_model

    model = load_model(model_dir, "cpu", torch.float32)
    T = model.config.block_size
    total, count = 0.0, 0
    with torch.no_grad():
        for shard in open_dataset(data).shards("val"):
            ids = torch.from_numpy(np.asarray(shard, dtype=np.int64))
            n = (len(ids) - 1) // T
            x, y = ids[: n * T].view(n, T), ids[1 : n * T + 1].view(n, T)  # (n, T) each
            for i in range(0, n, 256):
                _, loss = model(x[i : i + 256], y[i : i + 256])
                total += float(loss) * len(x[i : i + 256])
                count += len(x[i : i + 256])
    return total / count


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=1, help="nanoGPT then gptforge, this many times")
    p.add_argument("--no-nanogpt", action="store_true", help="only our runs (nanoGPT is also skipped when absent)")
    p.add_argument("--seeds", default="1337", help="comma list: our runs use these seeds in turn (nanoGPT's is fixed)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="a flag for our runs, e.g. --set train.precision=bf16 --set train.compile=true")
    p.add_argument("--nanogpt-flag", action="append", default=[], metavar="--NAME=VALUE",
                   help="extra nanoGPT flag (a smoke test: --nanogpt-flag=--max_iters=4)")
    p.add_argument("--device", help="our runs' train.device (nanoGPT runs only with cpu)")
    p.add_argument("--precision", help="our runs' train.precision (fp32 is the comparison)")
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS for every run (default: torch's choice)")
    p.add_argument("--whole", action="store_true", help="also our final model's loss over the whole val split")
    p.add_argument("--out", metavar="DIR", help="keep the runs here (default: a temporary folder)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = p.parse_args()
    flags = [x for kv in args.set for x in ("--" + kv.split("=", 1)[0], kv.split("=", 1)[1])]
    flags += [x for key in ("device", "precision") if getattr(args, key) for x in (f"--train.{key}", getattr(args, key))]
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="gptforge-shk-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by both programs' processes
    with_nanogpt = not args.no_nanogpt and PEER.is_dir() and args.device in (None, "cpu")
    if not args.no_nanogpt and not with_nanogpt:
        print(f"nanoGPT is not at {PEER} (the shared folder beside the checkout): our runs only", file=sys.stderr)
    import torch

    head = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "load_start": load(), "flags": flags}  # fmt: skip
    if not args.json:
        print(f"CPU: {head['cpu']} ({head['cores']} logical cores), torch {head['torch']} "
              f"({head['torch_threads']} threads); load average {head['load_start']}", flush=True)
    data = work / "data"
    if not (data / "meta.json").is_file():
        subprocess.run([PY, "-m", "gptforge", "prepare", "--input", "tinyshakespeare", "--tokenizer", "char",
                        "--out", str(data)], env=env(), check=True, capture_output=True)  # fmt: skip
    copy = nanogpt_copy(work) if with_nanogpt else None
    seeds = args.seeds.split(",")
    rows = []
    for i in range(max(args.rounds, len(seeds))):
        if copy is not None and i < args.rounds:
            rows.append(run_nanogpt(copy, args.nanogpt_flag))
            _show(rows[-1], args.json)
        seed = seeds[i % len(seeds)]
        rows.append(run_gptforge(data, work / f"gptforge-{i}", ["--train.seed", seed, *flags]))
        rows[-1]["seed"] = int(seed)
        if args.whole:
            rows[-1]["val_loss_whole"] = whole_split_loss(rows[-1]["final"], data)
        _show(rows[-1], args.json)
    out = {**head, "load_end": load(), "runs": rows, "nanogpt_seeds_restated": NANOGPT_SEEDS}
    ours = [r for r in rows if r["name"] == "gptforge"]
    theirs = [r for r in rows if r["name"] == "nanoGPT"]
    med = {name: {k: statistics.median(r[k] for r in rs) for k in ("wall_s", "tokens_per_s", "val_loss")}
           for name, rs in (("gptforge", ours), ("nanoGPT", theirs)) if rs}  # fmt: skip
    out["median"] = med
    if theirs:
        out["ratio"] = {"tokens_per_s": med["gptforge"]["tokens_per_s"] / med["nanoGPT"]["tokens_per_s"],
                        "wall": med["nanoGPT"]["wall_s"] / med["gptforge"]["wall_s"]}  # fmt: skip
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"load average at the end {out['load_end']}")
    for name, m in med.items():
        print(f"median {name:<9} {m['wall_s']:8.1f} s {m['tokens_per_s']:9,.0f} tok/s  val {m['val_loss']:.4f}")
    if "ratio" in out:
        print(f"gptforge / nanoGPT: {out['ratio']['tokens_per_s']:.2f}x tokens/s, "
              f"{out['ratio']['wall']:.2f}x wall time (nanoGPT's wall / ours); target >= 1.2x both")
    for i, (a, b) in enumerate(zip(theirs, ours)):  # each round's pair ran back to back
        if len(theirs) > 1:
            print(f"round {i + 1}: {b['tokens_per_s'] / a['tokens_per_s']:.2f}x tokens/s, "
                  f"{a['wall_s'] / b['wall_s']:.2f}x wall time")
    if len(ours) > 1:
        print(f"our val loss over seeds {args.seeds}: mean {statistics.mean(r['val_loss'] for r in ours):.4f} "
              f"(nanoGPT's loop restated, 10 seeds: {NANOGPT_SEEDS['val_loss']})")
    print(f"runs in {work}")
    return 0


def _show(r: dict, quiet: bool) -> None:
    if quiet:
        return
    whole = f"  whole val {r['val_loss_whole']:.4f}" if "val_loss_whole" in r else ""
    seed = f" seed {r['seed']}" if "seed" in r else ""
    print(f"{r['name'] + seed:<20} load {r['load_before']:<16} {r['wall_s']:7.1f} s {r['tokens_per_s']:9,.0f} tok/s"
          f"  val@{r['step']} {r['val_loss']:.4f}{whole}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
