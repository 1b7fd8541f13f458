"""Fine-tune a pretrained model: `finetune classify` (a classification head) or
`finetune instruct` (instruction following / chat), fully or with LoRA.

Each writes a run dir: metrics.jsonl, results.json, final/ (a model dir). Both run on the
training engine of `gptforge train`: any of its settings is also a --section.key VALUE flag
(--train.precision bf16, --train.grad_accum 4, --train.compile true, --log.tensorboard true ...).
A stopped run continues when the same command runs again, or with --resume OUT.
"""

from __future__ import annotations

import argparse
import json

from gptforge.cli.options import DEVICE_HELP
from gptforge.config import finite_float
from gptforge.errors import GptforgeError
from gptforge.io import OVERWRITE_HELP


def _common(p: argparse.ArgumentParser, epochs: int, batch_size: int, lora_factor: float) -> None:
    p.add_argument("--model", required=True, help="the base model: a model dir, run dir or GPT-2 folder")
    p.add_argument("--data", required=True, help="the training data file")
    p.add_argument("--out", help="the run dir to write (must not exist unless --overwrite)")
    p.add_argument("--resume", metavar="RUN", help="continue the stopped run that was writing RUN (= --out RUN; "
                   "the other flags as in the stopped command)")
    p.add_argument("--epochs", type=int, default=epochs, help=f"passes over the training data (default {epochs})")
    p.add_argument("--batch-size", type=int, default=batch_size, help=f"examples per step (default {batch_size})")
    p.add_argument("--lr", type=finite_float, default=None,
                   help=f"peak learning rate, cosine-decayed (default: from the model's size, 1e-3 up to 10M "
                        f"parameters, then ~1/sqrt(N), 5e-5 at least; x{lora_factor:g} when LoRA trains: the "
                        "adapters start at zero and hold few parameters)")  # fmt: skip
    p.add_argument("--weight-decay", type=finite_float, default=0.1, help="AdamW weight decay on matrices (default 0.1)")
    p.add_argument("--max-length", type=int, default=None, help="tokens per example at most (default: block_size)")
    p.add_argument("--val-fraction", type=finite_float, default=0.1, help="share of records held out for validation")
    p.add_argument("--sort-by-length", action="store_true", default=True,
                   help="batch similar lengths together, in shuffled batch order (less padding; the default)")
    p.add_argument("--no-sort-by-length", dest="sort_by_length", action="store_false",
                   help="batches of shuffled examples instead")
    p.add_argument("--seed", type=int, default=123, help="seed for the split, shuffling and the head init")
    p.add_argument("--lora-rank", type=int, default=8, help="LoRA rank r")
    p.add_argument("--lora-alpha", type=finite_float, default=16.0, help="LoRA alpha (the update is scaled by alpha/r)")
    p.add_argument("--lora-dropout", type=finite_float, default=0.05, help="dropout on the LoRA input")
    p.add_argument("--lora-targets", default="c_attn,c_proj,c_fc", help="comma-separated layer names to adapt")
    p.add_argument("--device", default="cpu", help=f"{DEVICE_HELP} (default cpu)")
    p.add_argument("--checkpoint-every", type=int, default=100,
                   help="steps between progress checkpoints kept beside --out (and one per epoch); a stopped "
                        "run continues from the last when the same command runs again; 0: none (default 100)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP + "; a stopped run's progress is discarded")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--json", action="store_true", help="print results.json as one JSON object on stdout")


def _device(args: argparse.Namespace) -> str:
    """``--device auto`` (and cuda without an index) made concrete before the run starts; under
    torchrun each process takes its own GPU (LOCAL_RANK)."""
    import os

    from gptforge.train.device import resolve_device

    return str(resolve_device(args.device, int(os.environ.get("LOCAL_RANK", "0")), flag="--device"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="finetune_command", metavar="TASK", parser_class=type(parser))
    c = sub.add_parser("classify", help="train a classification head (e.g. spam / not spam)")
    _common(c, epochs=5, batch_size=16, lora_factor=2)
    c.add_argument("--text-column", default=None, help="column holding the text (default: text/sms/sentence...)")
    c.add_argument("--label-column", default=None, help="column holding the label (default: label/class...)")
    c.add_argument("--train", default="all", choices=["head", "last-k", "all", "lora"],
                   help="what trains: the head, the last k blocks + head, all, or LoRA + head")  # fmt: skip
    c.add_argument("--last-k", type=int, default=1, help="blocks trained with --train last-k (default 1)")
    c.add_argument("--balance", action="store_true", help="downsample every class to the smallest one")
    c.add_argument("--test-fraction", type=finite_float, default=0.2, help="share of records held out for testing")
    c.set_defaults(_run=run_classify, _accepts_overrides=True)

    i = sub.add_parser("instruct", help="instruction / chat fine-tuning (loss on responses only)")
    _common(i, epochs=2, batch_size=8, lora_factor=10)
    i.add_argument("--template", default="alpaca", choices=["alpaca", "chat"], help="prompt template (saved)")
    i.set_defaults(lora_rank=0)
    i.add_argument("--merge", action="store_true", help="fold LoRA adapters into the weights (exportable)")
    i.add_argument("--on-too-long", default="truncate", choices=["truncate", "skip"],
                   help="records longer than --max-length: cut the end (default) or drop them")  # fmt: skip
    i.add_argument("--eval-samples", type=int, default=20, help="held-out instructions answered into responses.jsonl")
    i.add_argument("--max-new-tokens", type=int, default=128, help="tokens per generated response")
    i.set_defaults(_run=run_instruct, _accepts_overrides=True)
    for action in i._actions:
        if action.dest == "lora_rank":
            action.help = "LoRA rank r; 0 = full fine-tuning (default 0)"


def _loop(args: argparse.Namespace, lora: bool):  # noqa: ANN202 - LoopConfig, imported lazily
    from gptforge.finetune.recipe import LoopConfig

    return LoopConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        seed=args.seed, sort_by_length=args.sort_by_length, checkpoint_every=args.checkpoint_every,
        progress=not args.no_progress,
    )  # fmt: skip


def _out(args: argparse.Namespace) -> str:
    """--out, or --resume RUN (which names the same folder)."""
    from gptforge.errors import ConfigError

    if args.resume and args.out and args.resume != args.out:
        raise ConfigError(f"--resume {args.resume} and --out {args.out} name different runs; pass one of them")
    if args.resume and args.overwrite:
        raise ConfigError("--resume continues a stopped run; --overwrite would start it over: pass one of them")
    if not (args.resume or args.out):
        raise ConfigError("no run dir given; pass --out RUN (or --resume RUN to continue a stopped one)")
    return args.resume or args.out


def _report_stop(results: dict) -> int:
    print(f"stopped by {results['stopped']} at step {results['step']}; continue with the same command "
          f"(or --resume), checkpoints in {results['resume_dir']}")  # fmt: skip
    return results["exit_code"]


def _targets(args: argparse.Namespace) -> tuple[str, ...]:
    return tuple(t.strip() for t in args.lora_targets.split(",") if t.strip())


def run_classify(args: argparse.Namespace) -> int:
    from gptforge.finetune.classify import ClassifyOptions, format_report, run_classification

    opts = ClassifyOptions(
        model=args.model, data=args.data, out=_out(args), text_column=args.text_column,
        label_column=args.label_column, train=args.train, last_k=args.last_k, balance=args.balance,
        max_length=args.max_length, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
        lora_rank=args.lora_rank, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
        lora_targets=_targets(args), device=_device(args), overwrite=args.overwrite, resume=bool(args.resume),
        overrides=getattr(args, "overrides", None),
    )  # fmt: skip
    results = run_classification(opts, _loop(args, lora=args.train == "lora"))
    if "stopped" in results:
        return _report_stop(results)
    if "test_accuracy" not in results:  # another torchrun rank: rank 0 reports
        return 0
    if args.json:
        print(json.dumps(results))
    else:
        for name, report in results["reports"].items():
            print(format_report(name, report))
        print(f"saved the classifier to {opts.out}/final (results in {opts.out}/results.json)")
    return 0


def run_instruct(args: argparse.Namespace) -> int:
    from gptforge.finetune.instruct import InstructOptions, run_instruct

    opts = InstructOptions(
        model=args.model, data=args.data, out=_out(args), template=args.template, lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout, lora_targets=_targets(args),
        merge=args.merge, max_length=args.max_length, on_too_long=args.on_too_long,
        val_fraction=args.val_fraction, eval_samples=args.eval_samples, max_new_tokens=args.max_new_tokens,
        device=_device(args), overwrite=args.overwrite, resume=bool(args.resume),
        overrides=getattr(args, "overrides", None),
    )  # fmt: skip
    results = run_instruct(opts, _loop(args, lora=args.lora_rank > 0))
    if "stopped" in results:
        return _report_stop(results)
    if "val_loss_after" not in results:  # another torchrun rank: rank 0 reports
        return 0
    if args.json:
        print(json.dumps(results))
    else:
        print(f"held-out response loss: {results['val_loss_before']:.4f} -> {results['val_loss_after']:.4f}")
        print(f"trained {results['trainable_params']:,} of {results['total_params']:,} parameters")
        print(f"saved the model to {opts.out}/final; responses in {opts.out}/responses.jsonl")
    return 0


def run(args: argparse.Namespace) -> int:
    raise GptforgeError("choose a task: `gptforge finetune classify ...` or `gptforge finetune instruct ...`")
