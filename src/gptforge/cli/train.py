"""Pretrain a GPT on a prepared dataset, or resume a run.

  gptforge train --preset shakespeare-char-cpu --data DATA --out RUN
  gptforge train --config run.yaml --data DATA --out RUN --train.max_steps 5000
  gptforge train --resume RUN [--train.max_steps 4000]

Settings come from (lowest first) the defaults, --preset (model shape and its
training recipe), --config FILE.yaml and --section.key VALUE flags; the fully
resolved config is written to RUN/config.yaml. Ctrl-C or SIGTERM saves a
checkpoint and stops (exit 130/143); --resume continues exactly where it stopped.
Every config key is listed at the end; each is also a --section.key VALUE flag.
"""

from __future__ import annotations

import argparse

from gptforge.io import OVERWRITE_HELP


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from gptforge.config import describe
    from gptforge.train.config import RunConfig

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--preset", metavar="NAME", help="model shape + training recipe (e.g. shakespeare-char-cpu)")
    parser.add_argument("--config", metavar="FILE.yaml", help="a YAML file of sections (model:, data:, train:, log:)")
    parser.add_argument("--data", metavar="DIR", help="dataset dir made by `gptforge prepare` (= --data.dir)")
    parser.add_argument("--out", metavar="RUN", help="the run dir to create")
    parser.add_argument("--resume", metavar="RUN", help="continue this run from its latest complete checkpoint")
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout at the end")
    rows = [row for row in describe(RunConfig()) if row[0] != "--preset"]
    parser.epilog = "config keys:\n" + "\n".join(f"  {flag:<28} {help_} (default {default})" for flag, default, help_ in rows)
    parser.set_defaults(_accepts_overrides=True)


def run(args: argparse.Namespace) -> int:
    import json

    from gptforge.errors import ConfigError
    from gptforge.train.config import build_run_config
    from gptforge.train.distributed import is_main
    from gptforge.train.loop import train
    from gptforge.train.rundir import load_run_config

    overrides = dict(getattr(args, "overrides", {}) or {})
    if args.data:
        overrides["data.dir"] = args.data
    if args.resume:
        if args.out or args.preset or args.config or args.overwrite:
            raise ConfigError("--resume RUN continues a run as it was saved; it takes only --section.key overrides "
                              "(not --out, --preset, --config or --overwrite)")
        cfg = load_run_config(args.resume, overrides)
        run_dir = args.resume
    else:
        if not args.out:
            raise ConfigError("no run dir given; pass --out RUN (or --resume RUN to continue one)")
        cfg = build_run_config(args.preset, args.config, overrides)
        run_dir = args.out
    result = train(cfg, run_dir, resume=bool(args.resume), overwrite=args.overwrite)
    if not is_main():  # under torchrun only rank 0 reports
        return result.exit_code
    val = result.last_eval.get("val") if result.last_eval else None
    summary = {
        "run_dir": str(result.run_dir), "step": result.step, "tokens": result.tokens, "stopped": result.stopped,
        "val_loss": val, "train_loss": result.last_eval.get("train") if result.last_eval else None,
        "best_val_loss": result.best_val_loss, "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        "final": str(result.final_dir) if result.final_dir else None,
        "train_time_s": round(result.train_time_s, 2), "tokens_per_s": round(result.tokens_per_s, 1),
    }
    if args.json:
        print(json.dumps(summary))
    elif result.exit_code:
        print(f"stopped by {result.stopped} at step {result.step}; checkpoint {result.checkpoint}")
        print(f"continue with: gptforge train --resume {result.run_dir}")
    else:
        loss = f", val loss {val:.4f}" if val is not None else ""
        print(f"trained {result.step} steps ({result.tokens:,} tokens) in {result.train_time_s:.1f}s{loss}")
        print(f"model: {result.final_dir}")
    return result.exit_code
