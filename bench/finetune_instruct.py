"""Benchmark: instruction fine-tuning, full vs LoRA rank 8, on ../shared/data/instruction-data.json.

Base model: a gptforge-pretrained tinyshakespeare model made as ``bench/finetune_spam.py``
makes its base, ``--base bpe2k-256`` by default (its own 2,048-token BPE, 4 layers,
n_embd 256, context 256; pretrained once and cached under --work): LoRA rank 8 on every
linear layer is 4% of it, where it would be 7% of the narrower ``bpe8k-128``. Alpaca template, loss on response tokens only, the same
seeded 90/10 split, epochs and batches for both variants; each at its own learning
rate (full 1e-3, LoRA 1e-2: the best of those tried, see the README). Reports the
held-out response loss of the base model, after full fine-tuning and after LoRA
(rank 8, alpha 16, on every linear layer: c_attn, c_proj, c_fc and the LM head, which
in a tied GPT is also the token embedding), the share of parameters trained, and the
peak memory of each variant. Each variant runs in its own process so its peak is its own: on CPU the
peak resident set (ru_maxrss) above the RSS measured after loading the model; on
CUDA ``torch.cuda.max_memory_allocated``.

  python bench/finetune_instruct.py                  # CPU, about 7 minutes (base cached)
  python bench/finetune_instruct.py --device cuda --pretrain-steps 2000

Targets: loss drops >= 30% from the base; LoRA within 10% of full; LoRA trains < 5%.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_spam import BASES, DATA, REPO, ensure_base_model  # noqa: E402  (the base model recipes)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_variant(args: argparse.Namespace) -> dict:
    """One fine-tuning run (in this process) and its memory figures."""
    import torch

    from gptforge.finetune.instruct import InstructOptions, run_instruct
    from gptforge.finetune.recipe import LoopConfig
    from gptforge.model.loading import load_model

    load_model(args.base_dir, device=args.device)  # warm the allocator / page cache like the run will
    baseline = _rss_mb()
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    lora = args.variant == "lora"
    opts = InstructOptions(
        model=args.base_dir, data=str(args.data), out=str(Path(args.work) / f"instruct_{args.variant}"),
        template="alpaca", lora_rank=args.lora_rank if lora else 0, lora_alpha=args.lora_alpha,
        lora_dropout=0.0, lora_targets=tuple(t for t in args.lora_targets.split(",") if t), merge=lora,
        max_length=args.max_length, val_fraction=0.1,
        eval_samples=args.eval_samples, max_new_tokens=48, device=args.device, overwrite=True,
    )  # fmt: skip
    loop = LoopConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lora_lr if lora else args.lr,
                      seed=123, sort_by_length=True, progress=False)  # fmt: skip
    t = time.perf_counter()
    res = run_instruct(opts, loop)
    res["seconds"] = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    res["peak_rss_mb"] = peak
    res["peak_over_load_mb"] = peak - baseline
    if args.device.startswith("cuda"):
        res["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=str(REPO / "runs" / "bench_finetune"), help="cache for the base and runs")
    p.add_argument("--data", default=str(DATA / "instruction-data.json"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--base", default="bpe2k-256", choices=list(BASES), help="the base model's tokenizer and width")
    p.add_argument("--pretrain-steps", type=int, default=300, help="pretraining steps (2,048 tokens) of the base")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3, help="full fine-tuning learning rate")
    p.add_argument("--lora-lr", type=float, default=1e-2, help="LoRA learning rate")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--lora-targets", default="c_attn,c_proj,c_fc,lm_head", help="comma-separated layers to adapt")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--eval-samples", type=int, default=5)
    p.add_argument("--variant", choices=["full", "lora"], help=argparse.SUPPRESS)  # child process
    p.add_argument("--base-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.setdefault("GPTFORGE_DATA_DIR", str(DATA))
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the pretraining subprocess too
        import torch

        torch.set_num_threads(args.threads)
    if args.variant:
        print(json.dumps(run_variant(args)))
        return

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    base = ensure_base_model(work, args.pretrain_steps, args.device, args.base)
    results = {}
    for variant in ("full", "lora"):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--variant", variant, "--base-dir", str(base)]
        print(f"running {variant} fine-tuning ...", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            raise SystemExit(f"{variant} run failed")
        results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
    full, lora = results["full"], results["lora"]
    before = full["val_loss_before"]
    mem_key = "cuda_peak_mb" if args.device.startswith("cuda") else "peak_over_load_mb"
    print(f"\nInstruction fine-tuning ({args.epochs} epochs, batch {args.batch_size}, max length "
          f"{args.max_length}, lr full {args.lr} / LoRA {args.lora_lr}, device {args.device}); base: "
          f"{args.base}, pretrained {args.pretrain_steps} steps")  # fmt: skip
    print("| variant | held-out response loss | drop vs base | trained params | share | peak mem MiB | s |")
    print("|---|---|---|---|---|---|---|")
    print(f"| base model | {before:.4f} | - | - | - | - | - |")
    for name, r in (("full fine-tuning", full), (f"LoRA r={args.lora_rank} ({args.lora_targets})", lora)):
        print(f"| {name} | {r['val_loss_after']:.4f} | {100 * (1 - r['val_loss_after'] / before):.1f}% | "
              f"{r['trainable_params']:,} | {100 * r['trainable_params'] / r['total_params']:.2f}% | "
              f"{r[mem_key]:.0f} | {r['seconds']:.0f} |")  # fmt: skip
    gap = lora["val_loss_after"] / full["val_loss_after"] - 1
    checks = {
        "full: loss drop >= 30%": full["val_loss_after"] <= 0.7 * before,
        "LoRA within 10% of full": gap <= 0.10,
        "LoRA trains < 5% of parameters": lora["trainable_params"] < 0.05 * lora["total_params"],
    }
    print(f"LoRA / full held-out loss: {1 + gap:.3f}; peak memory LoRA / full: "
          f"{lora[mem_key] / max(full[mem_key], 1e-9):.2f} ({mem_key})")  # fmt: skip
    for k, v in checks.items():
        print(f"target: {k}: {'PASS' if v else 'FAIL'}")
    (work / "instruct_results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
