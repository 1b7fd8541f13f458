"""nanoGPT's CPU recipe for tinyshakespeare, through our trainer: val loss, wall time, tokens/s.

    python bench/shakespeare_char.py                 # prepares the data, trains 2000 steps on the CPU
    python bench/shakespeare_char.py --precision bf16
    python bench/shakespeare_char.py --device cuda

The recipe (nanoGPT README, "I only have a macbook"): character tokenizer, 4 layers, 4
heads, 128 wide, context 64, batch 12, 2000 iterations, lr 1e-3 with 100 warmup steps and
cosine decay to 1e-4 over 2000, beta2 0.99, weight decay 0.1, grad clip 1.0, dropout 0,
no biases, evaluation on 20 batches. That is our `shakespeare-char-cpu` preset. nanoGPT
reports val loss 1.88; on this project's machine it took 87 s at ~20k tokens/s and reached
1.886 (the peer figures below; nanoGPT itself is not a PyPI package, so it is not re-run
here). Our target: val loss <= 1.88.

How much one figure says: the 20-batch estimate (15,360 val tokens) has a standard
deviation of about 0.016 around the model's loss on the whole val split, and the
seed moves the whole-split loss by about 0.01. nanoGPT's own loop, restated outside
this repo (same initialisation, torch.randint windows, exact GELU; it gives 1.8857 at
seed 1337, the reference figure), over seeds 1-9 and 1337: 20-batch val 1.874 to 1.933,
mean 1.901 (one seed in ten reaches 1.88), whole split mean 1.906. Ours over the same
seeds: 20-batch mean 1.911 (1.892 to 1.928), whole split mean 1.908 (+0.002, well within
the seed noise). So compare means over seeds (``--seeds 1,2,3,4,5,6,7,8,9,1337``) and
the whole-split column, not one 20-batch figure. ``tests/train/test_train_vs_reference.py``
checks that our loop makes the same updates as nanoGPT's from the same weights and batches.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent / "src"))

from gptforge.config import apply  # noqa: E402
from gptforge.train.config import preset_config  # noqa: E402

NANOGPT = {"wall_s": 87.0, "tokens_per_s": 20000.0, "val_loss": 1.886}  # measured by the lead on this machine
# nanoGPT's loop restated (see the docstring), seeds 1-9 and 1337:
# the means of the 20-batch and of the whole-split val loss.
NANOGPT_SEEDS = {"seeds": [1, 2, 3, 4, 5, 6, 7, 8, 9, 1337], "val_loss": 1.9012, "val_loss_whole": 1.9055}
TARGET = 1.88


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", metavar="DIR", help="a prepared char dataset (default: prepare tinyshakespeare)")
    p.add_argument("--out", metavar="DIR", help="where the run goes (default: a temporary folder)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16", "auto"])
    p.add_argument("--max-steps", type=int, default=2000)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--seeds", help="comma list of seeds: one run each, and their mean (overrides --seed)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    import logging

    import torch

    from gptforge.cli.main import _setup_logging
    from gptforge.data.prepare import PrepareOptions, prepare
    from gptforge.train.loop import train

    _setup_logging("INFO")
    logging.getLogger("gptforge.data").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.out or tempfile.mkdtemp(prefix="gptforge-shk-"))
    data = Path(args.data) if args.data else work / "data"
    if not args.data:
        prepare(["tinyshakespeare"], "char", data, PrepareOptions(val_fraction=0.1, overwrite=True))
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else [args.seed]
    rows = []
    for seed in seeds:
        cfg = apply(preset_config("shakespeare-char-cpu"), {
            "data.dir": str(data), "train.device": args.device, "train.precision": args.precision,
            "train.max_steps": args.max_steps, "train.lr_decay_steps": args.max_steps, "train.seed": seed,
            "train.ckpt_interval": 0, "log.interval": 10,
        })
        run_dir = work / ("run" if len(seeds) == 1 else f"run-seed{seed}")
        t0 = time.perf_counter()
        result = train(cfg, run_dir, overwrite=True)
        wall = time.perf_counter() - t0
        val = result.last_eval["val"]
        whole = whole_split_loss(result.final_dir, data, args.device)
        rows.append({"seed": seed, "val_loss": round(val, 4), "val_loss_whole": round(whole, 4),
                     "train_loss": round(result.last_eval["train"], 4), "wall_s": round(wall, 1),
                     "train_loop_s": round(result.train_time_s, 1), "tokens_per_s": round(result.tokens_per_s, 0),
                     "steps": result.step, "run_dir": str(result.run_dir)})
    mean = {k: round(sum(r[k] for r in rows) / len(rows), 4)
            for k in ("val_loss", "val_loss_whole", "train_loss", "wall_s", "tokens_per_s")}
    ours = {**(rows[0] if len(rows) == 1 else {"seeds": seeds, "runs": rows}), **mean,
            "precision": args.precision, "device": args.device, "threads": torch.get_num_threads(),
            "target": TARGET, "pass": mean["val_loss"] <= TARGET}
    if args.json:
        print(json.dumps({"ours": ours, "nanogpt": NANOGPT, "nanogpt_seeds": NANOGPT_SEEDS}))
    else:
        print(f"\nnanoGPT CPU recipe ({rows[0]['steps']} steps, batch 12 x 64, {args.device} {args.precision}, "
              f"{torch.get_num_threads()} threads)")
        print(f"{'':<30}{'val loss':>10}{'whole val':>11}{'wall s':>9}{'tokens/s':>11}")
        for r in rows:
            print(f"{'gptforge seed ' + str(r['seed']):<30}{r['val_loss']:>10.4f}{r['val_loss_whole']:>11.4f}"
                  f"{r['wall_s']:>9.1f}{r['tokens_per_s']:>11,.0f}")
        if len(rows) > 1:
            print(f"{f'gptforge mean of {len(rows)}':<30}{mean['val_loss']:>10.4f}{mean['val_loss_whole']:>11.4f}"
                  f"{mean['wall_s']:>9.1f}{mean['tokens_per_s']:>11,.0f}")
        print(f"{'nanoGPT seed 1337 (reference)':<30}{NANOGPT['val_loss']:>10.4f}{'':>11}{NANOGPT['wall_s']:>9.1f}"
              f"{NANOGPT['tokens_per_s']:>11,.0f}")
        print(f"{'nanoGPT loop, mean of 10 seeds':<30}{NANOGPT_SEEDS['val_loss']:>10.4f}"
              f"{NANOGPT_SEEDS['val_loss_whole']:>11.4f}")
        what = "val loss" if len(rows) == 1 else f"mean val loss over {len(rows)} seeds"
        print(f"target {what} <= {TARGET}: {'PASS' if ours['pass'] else 'FAIL'}; runs in {work}")
    return 0 if ours["pass"] else 1


def whole_split_loss(model_dir: Path, data: Path, device: str) -> float:
    """Mean loss over every non-overlapping block_size window of the val split (no sampling noise)."""
    import numpy as np
    import torch

    from gptforge.data.shards import open_dataset
    from gptforge.model.loading import load_model

    model = load_model(model_dir, device, torch.float32)
    T = model.config.block_size
    total, count = 0.0, 0
    with torch.no_grad():
        for shard in open_dataset(data).shards("val"):
            ids = torch.from_numpy(np.asarray(shard, dtype=np.int64))
            n = (len(ids) - 1) // T
            x, y = ids[: n * T].view(n, T), ids[1 : n * T + 1].view(n, T)  # (n, T) each
            for i in range(0, n, 256):
                _, loss = model(x[i : i + 256].to(device), y[i : i + 256].to(device))
                total += float(loss) * len(x[i : i + 256])
                count += len(x[i : i + 256])
    return total / count

if __name__ == "__main__":
    raise SystemExit(main())
