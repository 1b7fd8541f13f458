"""Benchmark: SMS spam classification from a gptforge-pretrained base vs a random init.

The base model is made by gptforge end to end and cached under --work:

1. tokenizer: ``gptforge tokenizer train --kind regex-bpe --vocab-size V --pattern gpt4``
   on tinyshakespeare (or the GPT-2 BPE);
2. ``gptforge prepare`` + ``gptforge train`` on tinyshakespeare: 4 layers, 4 heads,
   --pretrain-steps steps of 2,048 tokens (lr 3e-3, cosine to 3e-4, 30 warmup steps).

``--base`` picks V and the width (:data:`BASES`): ``bpe8k-128`` (8,192-token BPE, n_embd
128, context 128; this bench's default: the best mean *validation* accuracy of the bases
tried, see the README) or ``bpe2k-256`` (2,048-token BPE, n_embd 256, context 256; the
default of ``bench/finetune_instruct.py``, where LoRA's share of the parameters needs the
wider body), or ``gpt2-128`` (the GPT-2 BPE: its 50,257-row embedding is most of such a
small model, and most of its rows never occur in tinyshakespeare).

The same shape, randomly initialised, is fine-tuned the same way to show what
pretraining adds. Each seed draws its own balanced subset (747 ham + 747 spam), its own
70/10/20 split, head init and batch order; the table gives every seed and the mean.

  python bench/finetune_spam.py --threads 1                # CPU: ~4 min pretraining + 6 fine-tunes of ~1 min
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

# name -> (tokenizer vocab size, None = GPT-2 BPE; n_embd = context; sequences per step)
BASES = {"bpe8k-128": (8192, 128, 16), "bpe2k-256": (2048, 256, 8), "gpt2-128": (None, 128, 16)}


def _gptforge(*args: str) -> None:
    env = dict(os.environ, GPTFORGE_DATA_DIR=str(DATA))
    cmd = [sys.executable, "-m", "gptforge", *args]
    print("$ gptforge " + " ".join(args), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, env=env)


def ensure_tokenizer(work: Path, vocab_size: int | None) -> str:
    """The tokenizer spec for ``gptforge prepare``: ``gpt2``, or a BPE trained here (once)."""
    if vocab_size is None:
        return "gpt2"
    out = work / f"tokenizer_bpe{vocab_size}"
    if not (out / "tokenizer.json").is_file():
        _gptforge("tokenizer", "train", "--kind", "regex-bpe", "--vocab-size", str(vocab_size), "--pattern", "gpt4",
                  "--special", "<|endoftext|>", "--input", str(DATA / "tinyshakespeare.txt"), "--out", str(out),
                  "--overwrite")  # fmt: skip
    return str(out)


def ensure_base_model(work: Path, steps: int, device: str, base: str) -> Path:
    """Pretrain (once) the tinyshakespeare base ``base`` (a :data:`BASES` name) with
    gptforge tokenizer train + prepare + train."""
    vocab_size, width, batch = BASES[base]
    run = work / f"base_shakespeare_{base}_{steps}"
    if (run / "final" / "config.json").is_file():
        return run / "final"
    data = work / f"shakespeare_{'gpt2' if vocab_size is None else f'bpe{vocab_size}'}"
    if not (data / "meta.json").is_file():
        spec = ensure_tokenizer(work, vocab_size)
        _gptforge("prepare", "--input", str(DATA / "tinyshakespeare.txt"), "--tokenizer", spec,
                  "--out", str(data), "--overwrite", "--no-progress")  # fmt: skip
    shape = {"n_layer": 4, "n_head": 4, "n_embd": width, "block_size": width, "dropout": 0.0}
    flags = [f"--model.{k}={v}" for k, v in shape.items()]
    _gptforge("train", "--data", str(data), "--out", str(run), "--overwrite", *flags,
              f"--train.batch_size={batch}", f"--train.max_steps={steps}", "--train.lr=3e-3", "--train.min_lr=3e-4",
              "--train.warmup_steps=30", f"--train.eval_interval={steps}", "--train.eval_iters=20",
              f"--train.ckpt_interval={steps}", f"--train.device={device}", "--log.progress=false")  # fmt: skip
    return run / "final"


def ensure_random_model(work: Path, base_dir: Path) -> Path:
    """The base model's shape and tokenizer with freshly initialised weights."""
    import torch

    from gptforge import GPT, load_model
    from gptforge.model.loading import save_model

    out = work / f"random_init_{base_dir.parent.name}"
    if (out / "config.json").is_file():
        return out
    base = load_model(base_dir)
    torch.manual_seed(0)
    save_model(GPT(base.config), out, tokenizer=base.tokenizer)
    return out


def base_val_loss(base_dir: Path) -> float | None:
    """The pretraining run's last validation loss (from its metrics.jsonl)."""
    metrics = base_dir.parent / "metrics.jsonl"
    if not metrics.is_file():
        return None
    vals = [json.loads(line).get("val_loss") for line in metrics.read_text().splitlines() if line.strip()]
    vals = [v for v in vals if v is not None]
    return vals[-1] if vals else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=str(REPO / "runs" / "bench_finetune"), help="cache for the base model and runs")
    p.add_argument("--device", default="cpu")
    p.add_argument("--base", default="bpe8k-128", choices=list(BASES), help="the base model's tokenizer and width")
    p.add_argument("--pretrain-steps", type=int, default=300, help="pretraining steps (2,048 tokens) of the base")
    p.add_argument("--seeds", default="1,2,3,4,5", help="comma-separated seeds (split, head init, batch order)")
    p.add_argument("--train", default="all", choices=["head", "last-k", "all", "lora"])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=1e-3, help="picked by mean val accuracy over the seeds")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=None, help="tokens per text (default: the context)")
    p.add_argument("--no-random-init", action="store_true", help="skip the random-init comparison")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = p.parse_args()
    os.environ.setdefault("GPTFORGE_DATA_DIR", str(DATA))

    import torch

    from gptforge.finetune.classify import ClassifyOptions, run_classification
    from gptforge.finetune.recipe import LoopConfig

    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the pretraining subprocess too
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    base = ensure_base_model(work, args.pretrain_steps, args.device, args.base)
    pretrain_s = time.perf_counter() - t0
    bases = [("pretrained", base)]
    if not args.no_random_init:
        bases.append(("random init", ensure_random_model(work, base)))
    rows = []
    for name, model_dir in bases:
        for seed in seeds:
            opts = ClassifyOptions(
                model=str(model_dir), data=str(DATA / "sms_spam.tsv"), out=str(work / f"spam_{name.split()[0]}"),
                train=args.train, balance=True, max_length=args.max_length, val_fraction=0.1,
                test_fraction=0.2, device=args.device, overwrite=True,
            )  # fmt: skip
            loop = LoopConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=seed,
                              sort_by_length=True, progress=False)  # fmt: skip
            t = time.perf_counter()
            res = run_classification(opts, loop)
            rows.append({"base": name, "seed": seed, "train": args.train, "val_accuracy": res["val_accuracy"],
                         "test_accuracy": res["test_accuracy"], "n_test": res["reports"]["test"]["n"],
                         "trainable": res["trainable_params"], "seconds": time.perf_counter() - t})  # fmt: skip
            r = rows[-1]
            print(f"{name} seed {seed}: val {r['val_accuracy']:.4f} test {r['test_accuracy']:.4f} "
                  f"({r['seconds']:.0f}s)", file=sys.stderr, flush=True)  # fmt: skip

    val_loss = base_val_loss(base)
    print(f"\nSMS spam (balanced, --train {args.train}, {args.epochs} epochs, lr {args.lr}, batch {args.batch_size}, "
          f"device {args.device}); base {args.base}, pretrained {args.pretrain_steps} steps "
          f"(val loss {val_loss if val_loss is None else round(val_loss, 3)}; {pretrain_s:.0f}s this run, "
          f"0 if cached)")  # fmt: skip
    print(f"| {'base model':<12} | seed | val acc | test acc | trainable params | fine-tune s |")
    print(f"|{'-' * 14}|------|---------|----------|------------------|-------------|")
    means = {}
    for name, _ in bases:
        mine = [r for r in rows if r["base"] == name]
        for r in mine:
            print(f"| {name:<12} | {r['seed']:4d} | {r['val_accuracy']:7.4f} | {r['test_accuracy']:8.4f} | "
                  f"{r['trainable']:16,} | {r['seconds']:11.1f} |")  # fmt: skip
        means[name] = {k: sum(r[k] for r in mine) / len(mine) for k in ("val_accuracy", "test_accuracy")}
        print(f"| {name:<12} | mean | {means[name]['val_accuracy']:7.4f} | {means[name]['test_accuracy']:8.4f} | "
              f"{'':16} | {'':11} |")  # fmt: skip
    ok = means["pretrained"]["test_accuracy"] >= 0.95
    print(f"target: pretrained mean test accuracy over seeds {seeds} >= 0.95: {'PASS' if ok else 'FAIL'}")
    (work / "spam_results.json").write_text(json.dumps({"args": vars(args), "rows": rows, "means": means}, indent=2))


if __name__ == "__main__":
    main()
