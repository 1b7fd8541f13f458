"""Benchmark: SMS spam classification from a gptforge-pretrained base vs a random init.

The base model is pretrained by gptforge itself (``gptforge prepare`` + ``gptforge
train``) on tinyshakespeare with the GPT-2 BPE tokenizer (``gpt2``): 4 layers, 4 heads,
n_embd 128, context 128 (about 7.3M parameters, 6.4M of them the tied embedding). The
same shape, randomly initialised, is fine-tuned the same way to show what pretraining
adds. The base is cached under --work and shared with ``bench/finetune_instruct.py``.

Data: ../shared/data/sms_spam.tsv, balanced by downsampling ham (747 + 747 messages),
split 70/10/20 with a fixed seed.

  python bench/finetune_spam.py                      # CPU, a few minutes
  python bench/finetune_spam.py --device cuda --pretrain-steps 2000

Prints a table and writes --work/spam_results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("GPTFORGE_DATA_DIR", REPO.parent / "shared" / "data"))

BASE_SHAPE = {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 128, "dropout": 0.0}


def _gptforge(*args: str) -> None:
    env = dict(os.environ, GPTFORGE_DATA_DIR=str(DATA))
    cmd = [sys.executable, "-m", "gptforge", *args]
    print("$ gptforge " + " ".join(args), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, env=env)


def ensure_base_model(work: Path, steps: int, device: str) -> Path:
    """Pretrain (once) the tinyshakespeare GPT-2-BPE base with gptforge prepare + train."""
    run = work / f"base_shakespeare_gpt2_{steps}"
    if (run / "final" / "config.json").is_file():
        return run / "final"
    data = work / "shakespeare_gpt2"
    if not (data / "meta.json").is_file():
        _gptforge("prepare", "--input", str(DATA / "tinyshakespeare.txt"), "--tokenizer", "gpt2",
                  "--out", str(data), "--overwrite", "--no-progress")  # fmt: skip
    flags = [f"--model.{k}={v}" for k, v in BASE_SHAPE.items()]
    _gptforge("train", "--data", str(data), "--out", str(run), "--overwrite", *flags,
              "--train.batch_size=8", f"--train.max_steps={steps}", "--train.lr=2e-3", "--train.min_lr=2e-4",
              "--train.warmup_steps=50", f"--train.eval_interval={steps}", "--train.eval_iters=20",
              f"--train.ckpt_interval={steps}", f"--train.device={device}", "--log.progress=false")  # fmt: skip
    return run / "final"


def ensure_random_model(work: Path, base_dir: Path) -> Path:
    """The base model's shape and tokenizer with freshly initialised weights."""
    import torch

    from gptforge import GPT, load_model
    from gptforge.model.loading import save_model

    out = work / "random_init"
    if (out / "config.json").is_file():
        return out
    base = load_model(base_dir)
    torch.manual_seed(0)
    save_model(GPT(base.config), out, tokenizer=base.tokenizer)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=str(REPO / "runs" / "bench_finetune"), help="cache for the base model and runs")
    p.add_argument("--device", default="cpu")
    p.add_argument("--pretrain-steps", type=int, default=200, help="pretraining steps (8 x 128 tokens) of the base")
    p.add_argument("--train", default="all", choices=["head", "last-k", "all", "lora"])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=128)
    args = p.parse_args()
    os.environ.setdefault("GPTFORGE_DATA_DIR", str(DATA))

    import torch

    from gptforge.finetune.classify import ClassifyOptions, run_classification
    from gptforge.finetune.loop import LoopConfig

    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    base = ensure_base_model(work, args.pretrain_steps, args.device)
    pretrain_s = time.perf_counter() - t0
    random_init = ensure_random_model(work, base)
    rows = []
    for name, model_dir in (("pretrained (tinyshakespeare)", base), ("random init", random_init)):
        opts = ClassifyOptions(
            model=str(model_dir), data=str(DATA / "sms_spam.tsv"), out=str(work / f"spam_{name.split()[0]}"),
            train=args.train, balance=True, max_length=args.max_length, val_fraction=0.1, test_fraction=0.2,
            device=args.device, overwrite=True,
        )  # fmt: skip
        loop = LoopConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=123, progress=False)
        t = time.perf_counter()
        res = run_classification(opts, loop)
        rows.append({"base": name, "train": args.train, "val_accuracy": res["val_accuracy"],
                     "test_accuracy": res["test_accuracy"], "trainable": res["trainable_params"],
                     "seconds": time.perf_counter() - t})  # fmt: skip
    print(f"\nSMS spam (balanced, {args.epochs} epochs, --train {args.train}, device {args.device}); "
          f"base pretrained {args.pretrain_steps} steps ({pretrain_s:.0f}s this run, 0 if cached)")  # fmt: skip
    print(f"| {'base model':<30} | val acc | test acc | trainable params | fine-tune s |")
    print(f"|{'-' * 32}|---------|----------|------------------|-------------|")
    for r in rows:
        print(f"| {r['base']:<30} | {r['val_accuracy']:7.4f} | {r['test_accuracy']:8.4f} | "
              f"{r['trainable']:16,} | {r['seconds']:11.1f} |")  # fmt: skip
    ok = rows[0]["test_accuracy"] >= 0.95
    print(f"target: pretrained test accuracy >= 0.95: {'PASS' if ok else 'FAIL'}")
    (work / "spam_results.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
