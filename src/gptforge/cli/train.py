"""Pretrain a GPT on a prepared dataset, or resume a run.

  gptforge train --preset shakespeare-char-cpu --data DATA --out RUN
  gptforge train --config run.yaml --data DATA --out RUN --train.max_steps 5000
  gptforge train --resume RUN [--train.max_steps 4000]
  gptforge train --resume RUN/checkpoints/step_0001200           # from a chosen checkpoint
  gptforge train --init-from MODEL --data DATA --out RUN [--lora.rank 8]   # continue a trained model
  gptforge train --preset gpt2 --data DATA --out RUN --dry-run    # the plan and its memory, nothing written

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
    parser.add_argument("--resume", metavar="RUN", help="continue this run from its latest complete checkpoint "
                        "(or RUN/checkpoints/step_N: from that one)")
    parser.add_argument("--init-from", metavar="MODEL", help="start from this trained model (a model dir, run dir, "
                        "GPT-2 folder, or gpt2 / gpt2-medium / gpt2-large / gpt2-xl from the Hugging Face "
                        "cache) instead of random weights; its shape is kept; --lora.rank R trains "
                        "LoRA adapters on it instead of all weights")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config, batch and memory plan; "
                        "write nothing")
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout at the end")
    rows = [row for row in describe(RunConfig()) if row[0] != "--preset"]
    parser.epilog = "config keys:\n" + "\n".join(f"  {flag:<28} {help_} (default {default})" for flag, default, help_ in rows)
    parser.set_defaults(_accepts_overrides=True)


def _split_lora(overrides: dict) -> dict:
    """Take the ``--lora.*`` flags (not a run-config section) out of ``overrides``."""
    lora = {k.split(".", 1)[1]: overrides.pop(k) for k in [k for k in overrides if k.startswith("lora.")]}
    if "targets" in lora and isinstance(lora["targets"], str):
        lora["targets"] = tuple(t.strip() for t in lora["targets"].split(",") if t.strip())
    unknown = sorted(set(lora) - {"rank", "alpha", "dropout", "targets"})
    if unknown:
        from gptforge.errors import ConfigError

        raise ConfigError(f"unknown LoRA settings {unknown}; use --lora.rank, --lora.alpha, --lora.dropout, "
                          "--lora.targets")  # fmt: skip
    return lora


def _checkpoint_folder(path: str) -> tuple[str, str | None]:
    """``(run dir, checkpoint folder or None)`` for ``--resume RUN`` or ``--resume RUN/checkpoints/step_N``."""
    from pathlib import Path

    p = Path(path)
    if (p / "state.json").is_file() and p.parent.name == "checkpoints":
        return str(p.parent.parent), str(p)
    return path, None


def run(args: argparse.Namespace) -> int:
    import json

    from gptforge.errors import ConfigError
    from gptforge.train.config import build_run_config
    from gptforge.train.distributed import is_main
    from gptforge.train.loop import train

    overrides = dict(getattr(args, "overrides", {}) or {})
    lora = _split_lora(overrides)
    if args.data:
        overrides["data.dir"] = args.data
    init_model, resume_from = None, None
    if args.resume:
        if args.out or args.preset or args.config or args.overwrite or args.init_from:
            raise ConfigError("--resume RUN continues a run as it was saved; it takes only --section.key overrides "
                              "(not --out, --preset, --config, --init-from or --overwrite)")
        run_dir, resume_from = _checkpoint_folder(args.resume)
        cfg = _resume_config(run_dir, resume_from, overrides)
        init_model = _variant_model(run_dir, resume_from)
    else:
        if not args.out:
            raise ConfigError("no run dir given; pass --out RUN (or --resume RUN to continue one)")
        cfg = build_run_config(args.preset, args.config, overrides)
        run_dir = args.out
        if args.init_from:
            cfg, init_model = _init_from(args, cfg, overrides, lora)
        elif lora:
            raise ConfigError("--lora.* needs --init-from MODEL (LoRA adapts a trained model)")
    if args.dry_run:
        from gptforge.train.plan import format_plan, plan_run

        plan = plan_run(cfg)
        print(json.dumps(plan) if args.json else format_plan(plan))
        return 0
    task = None
    if init_model is not None:
        from gptforge.train.tasks import PretrainTask

        task = PretrainTask(cfg, init_model=init_model)
    result = train(cfg, run_dir, resume=bool(args.resume), overwrite=args.overwrite, task=task,
                   resume_from=resume_from)
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


def _init_from(args: argparse.Namespace, cfg, overrides: dict, lora: dict):  # noqa: ANN001, ANN202
    from gptforge.errors import ConfigError
    from gptforge.train.init_from import prepare_init, shape_overrides

    file_model = None
    if args.config:
        from gptforge.io import read_yaml

        values = read_yaml(args.config, what="run config")
        file_model = values.get("model") if isinstance(values, dict) else None
    bad = shape_overrides(overrides, file_model if isinstance(file_model, dict) else None)
    if args.preset:
        bad.insert(0, f"--preset {args.preset}")
    if bad:
        raise ConfigError(f"--init-from {args.init_from} keeps the source model's shape; drop {', '.join(bad)} "
                          "(only model.dropout may change)")
    return prepare_init(args.init_from, cfg, lora)


def _resume_config(run_dir: str, checkpoint: str | None, overrides: dict):  # noqa: ANN202
    """The config to resume with: the one saved in the chosen checkpoint (it travels with
    each), else RUN/config.yaml; then the flags."""
    from pathlib import Path

    from gptforge.config import apply
    from gptforge.io import read_json
    from gptforge.train.config import run_config_from_dict
    from gptforge.train.rundir import load_run_config

    if checkpoint is not None:
        saved = read_json(Path(checkpoint) / "state.json", what="checkpoint state").get("run_config")
        if isinstance(saved, dict):
            cfg = run_config_from_dict(saved, source=str(Path(checkpoint) / "state.json"))
            return apply(cfg, overrides or {}, source="command-line flags")
    return load_run_config(run_dir, overrides)


def _variant_model(run_dir: str, checkpoint: str | None):  # noqa: ANN202
    """A run whose model carries variants (LoRA from --init-from) resumes into the same structure."""
    from pathlib import Path

    from gptforge.io import read_json
    from gptforge.train.checkpoint import find_resume_checkpoint

    path = Path(checkpoint) if checkpoint else find_resume_checkpoint(run_dir)[0]
    config = read_json(path / "config.json", what="model config")
    if not (isinstance(config, dict) and config.get("variants")):
        return None
    from gptforge.model.loading import load_model

    model = load_model(path).train()  # the weights are loaded again by the resume; the structure matters
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    return lambda: model
