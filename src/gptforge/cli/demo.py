"""The whole pipeline on tinyshakespeare, in a few minutes on a CPU.

Prepares the text with a character tokenizer, trains nanoGPT's small CPU model
with a live progress line (its length fitted to --time-budget-s on this
machine), writes the loss plot, generates a sample and says where everything went.

  gptforge demo
  gptforge demo --out /tmp/demo --time-budget-s 60
"""

from __future__ import annotations

import argparse

from gptforge.config import finite_float


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="gptforge-demo", metavar="DIR",
                        help="where the data, run and sample go (default ./gptforge-demo; its data/ and run/ are replaced)")
    parser.add_argument("--max-steps", type=int, metavar="N", help="training steps (default: what fits the time budget)")
    parser.add_argument("--time-budget-s", type=finite_float, default=180.0, metavar="S",
                        help="training time to aim for, in seconds (default 180)")
    parser.add_argument("--precision", choices=["fp32", "bf16"],
                        help="CPU precision (default: bf16 autocast if it is clearly faster here, else fp32)")
    parser.add_argument("--sample-tokens", type=int, default=500, metavar="N", help="characters to generate")
    parser.add_argument("--seed", type=int, default=1337, help="random seed")
    parser.add_argument("--preset", choices=["shakespeare-char-cpu", "shakespeare-char-modern-cpu"],
                        help="the recipe (default: the modern one when it is the better choice in the time budget)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")


def run(args: argparse.Namespace) -> int:
    import json

    from gptforge.demo import run_demo
    from gptforge.errors import ConfigError

    if args.max_steps is not None and args.max_steps <= 0:
        raise ConfigError(f"--max-steps must be positive, got {args.max_steps}")
    if args.time_budget_s <= 0:
        raise ConfigError(f"--time-budget-s must be positive, got {args.time_budget_s}")
    r = run_demo(args.out, args.max_steps, args.time_budget_s, args.precision, args.sample_tokens, args.seed,
                 preset=args.preset)
    if args.json:
        print(json.dumps({
            "out": str(r.out), "data": str(r.data_dir), "run": str(r.run_dir), "model": str(r.final_dir),
            "plot": str(r.plot) if r.plot else None, "sample_file": str(r.sample_file), "steps": r.steps,
            "val_loss": r.val_loss, "train_time_s": round(r.train_time_s, 1),
            "total_time_s": round(r.total_time_s, 1), "precision": r.precision, "threads": r.threads,
            "preset": r.preset, "reason": r.reason,
        }))
        return 0
    bar = "-" * 72
    print(f"\n{bar}\nSample (500 characters from a newline, temperature 0.8):\n{bar}\n{r.sample}\n{bar}")
    val = f"{r.val_loss:.4f}" if r.val_loss is not None else "n/a"
    print(f"recipe: {r.preset} ({r.reason})")
    print(f"trained {r.steps} steps in {r.train_time_s:.0f}s ({r.precision}, {r.threads} thread(s)); val loss {val}; "
          f"total {r.total_time_s:.0f}s\n")
    print("Artifacts:")
    print(f"  dataset (char tokenizer, shards)  {r.data_dir}")
    print(f"  run config                        {r.run_dir / 'config.yaml'}")
    print(f"  metrics (one JSON per line)       {r.run_dir / 'metrics.jsonl'}")
    print(f"  checkpoints (resumable)           {r.run_dir / 'checkpoints'}")
    print(f"  final model dir                   {r.final_dir}")
    if r.plot:
        print(f"  loss plot                         {r.plot}")
    else:
        print(f"  loss plot                         skipped ({r.plot_skipped})")
    print(f"  sample                            {r.sample_file}")
    print("\nNext:")
    print(f"  gptforge generate --model {r.run_dir} --prompt 'ROMEO:' --max-new-tokens 300")
    print(f"  gptforge train --resume {r.run_dir} --train.max_steps {r.steps + 1000}")
    return 0
