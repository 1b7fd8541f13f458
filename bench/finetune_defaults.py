"""Benchmark: what `gptforge finetune` gives with no recipe flags, on the bench bases.

Runs the commands a user types, with only the data-selection flags of the benches
(`--balance` for spam: each seed draws its own balanced subset, as bench/finetune_spam.py
does) and `--seed`:

    gptforge finetune classify --model BASE --data sms_spam.tsv --out R --balance --seed S
    gptforge finetune instruct --model BASE --data instruction-data.json --out R

on the bases of bench/finetune_spam.py / bench/finetune_instruct.py (built and cached under
--work the same way) and on the GPT-2-tokenizer base (`gpt2-128`). Targets (issue 16):
spam test accuracy >= 0.95 (mean of the seeds) and held-out instruction response loss at
least 30% below the base's. Accuracy and loss do not depend on the machine's load; the
seconds do.

  python bench/finetune_defaults.py --work runs/bench_finetune
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import cpu_model  # noqa: E402  (bench/_machine.py, beside this script)
from finetune_spam import DATA, ensure_base_model  # noqa: E402


def _run(args: list[str]) -> dict:
    env = dict(os.environ, GPTFORGE_DATA_DIR=str(DATA))
    p = subprocess.run([sys.executable, "-m", "gptforge", *args, "--json", "--no-progress", "--overwrite"],
                       capture_output=True, text=True, env=env)  # fmt: skip
    if p.returncode != 0:
        raise SystemExit(p.stderr[-2000:])
    return json.loads([x for x in p.stdout.splitlines() if x.startswith("{")][-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=str(Path(__file__).resolve().parents[1] / "runs" / "bench_finetune"))
    p.add_argument("--seeds", default="1,2,3,4,5")
    p.add_argument("--spam-bases", default="bpe8k-128,gpt2-128")
    p.add_argument("--instruct-bases", default="bpe2k-256,gpt2-128")
    args = p.parse_args()
    work = Path(args.work)
    print(f"CPU {cpu_model()}; load {os.getloadavg()}", flush=True)
    rows = []
    for base in [b for b in args.spam_bases.split(",") if b]:
        model = ensure_base_model(work, 300, "cpu", base)
        accs = []
        for seed in [int(s) for s in args.seeds.split(",") if s]:
            t = time.perf_counter()
            r = _run(["finetune", "classify", "--model", str(model), "--data", str(DATA / "sms_spam.tsv"),
                      "--out", str(work / f"defaults_spam_{base}"), "--balance", "--seed", str(seed)])  # fmt: skip
            accs.append(r["test_accuracy"])
            print(f"spam {base} seed {seed}: val {r['val_accuracy']:.4f} test {r['test_accuracy']:.4f} "
                  f"({time.perf_counter() - t:.0f}s)", flush=True)  # fmt: skip
        rows.append(("spam", base, f"test accuracy mean {sum(accs) / len(accs):.4f} over seeds {args.seeds}",
                     sum(accs) / len(accs) >= 0.95))  # fmt: skip
    for base in [b for b in args.instruct_bases.split(",") if b]:
        model = ensure_base_model(work, 300, "cpu", base)
        t = time.perf_counter()
        r = _run(["finetune", "instruct", "--model", str(model), "--data", str(DATA / "instruction-data.json"),
                  "--out", str(work / f"defaults_instruct_{base}"), "--eval-samples", "2"])  # fmt: skip
        drop = 1 - r["val_loss_after"] / r["val_loss_before"]
        print(f"instruct {base}: {r['val_loss_before']:.3f} -> {r['val_loss_after']:.3f} ({drop:.1%} lower; "
              f"{time.perf_counter() - t:.0f}s)", flush=True)  # fmt: skip
        rows.append(("instruct", base, f"held-out response loss {r['val_loss_before']:.3f} -> "
                     f"{r['val_loss_after']:.3f}, {drop:.1%} lower", drop >= 0.30))  # fmt: skip
    print(f"\nload {os.getloadavg()}")
    print("| task | base | result (no recipe flags) | target met |")
    print("|---|---|---|---|")
    for task, base, text, ok in rows:
        print(f"| {task} | {base} | {text} | {'yes' if ok else 'no'} |")


if __name__ == "__main__":
    main()
