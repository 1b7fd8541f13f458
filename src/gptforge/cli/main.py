"""The ``gptforge`` entry point: the parser tree, logging set-up and error handling.

Each command lives in its own module under ``gptforge.cli`` with two functions:
``add_arguments(parser)`` and ``run(args) -> int``. Command modules import torch
and the heavy parts of gptforge inside ``run`` only, so ``gptforge --help``
stays fast.

Error policy: a :class:`~gptforge.errors.GptforgeError` (a user mistake) becomes
one line ``error: ...`` on stderr and exit code 2; Ctrl-C becomes exit code 130
(work already saved stays saved); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from gptforge import __version__
from gptforge.errors import GptforgeError

# command name -> (module, one-line help). The single registry of commands.
COMMANDS: dict[str, tuple[str, str]] = {
    "tokenizer": ("gptforge.cli.tokenizer", "train, inspect and use tokenizers"),
    "prepare": ("gptforge.cli.prepare", "turn raw text into token shards"),
    "train": ("gptforge.cli.train", "pretrain a model (or --resume a run)"),
    "generate": ("gptforge.cli.generate", "generate text from a model"),
    "chat": ("gptforge.cli.chat", "chat with a model in the terminal"),
    "eval": ("gptforge.cli.eval", "loss, perplexity and bits per byte on data or text"),
    "import": ("gptforge.cli.import_", "import a Hugging Face GPT-2 checkpoint"),
    "export": ("gptforge.cli.export", "export a model to Hugging Face GPT-2 format"),
    "quantize": ("gptforge.cli.quantize", "quantize a model to int8 or int4"),
    "finetune": ("gptforge.cli.finetune", "fine-tune for classification or instructions"),
    "classify": ("gptforge.cli.classify", "classify text with a fine-tuned classifier"),
    "plot": ("gptforge.cli.plot", "plot the losses (and diagnostics) of a run"),
    "model": ("gptforge.cli.model", "model information: parameters, FLOPs per token"),
    "serve": ("gptforge.cli.serve", "serve a model over an OpenAI-compatible HTTP API"),
    "demo": ("gptforge.cli.demo", "the whole pipeline on tinyshakespeare, in minutes"),
}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``error: ...`` plus where to find help."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gptforge",
        description="Build GPT language models from scratch: tokenizers, data, training, "
        "generation, GPT-2 interop, quantization and fine-tuning.",
    )
    parser.add_argument("--version", action="version", version=f"gptforge {__version__}")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="logging verbosity"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        cmd = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip())
        cmd.set_defaults(_run=module.run, _accepts_overrides=False)
        module.add_arguments(cmd)
    return parser


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("gptforge")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return the exit code (0 ok, 2 user error, 130 interrupted)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    if extra and not args._accepts_overrides:
        sys.stderr.write(f"error: unrecognized arguments: {' '.join(extra)} (see `gptforge {args.command} --help`)\n")
        return 2
    _setup_logging(args.log_level)
    try:
        if args._accepts_overrides:
            from gptforge.config import parse_dotted_flags

            args.overrides = parse_dotted_flags(extra)
        return int(args._run(args) or 0)
    except GptforgeError as e:
        message = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
        sys.stderr.write(f"error: {message}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted; work saved so far is kept\n")
        return 130
    except BrokenPipeError:  # e.g. `gptforge generate ... | head`
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
