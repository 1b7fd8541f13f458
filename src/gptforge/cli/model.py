"""Model information: parameter counts, FLOPs per token, memory, and MFU for a throughput.

Examples: ``gptforge model info --preset gpt2``, ``gptforge model info --config run.yaml
--model.n_layer 8 --json``, ``gptforge model info --model RUN --tokens-per-s 4e5 --peak h100-sxm``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptforge.cli.options import DTYPE_HELP, dtype_name
from gptforge.config import finite_float
from gptforge.errors import ConfigError
from gptforge.model.config import GPTConfig  # no torch: configs are checked before torch loads


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="model_command", metavar="SUBCOMMAND", parser_class=type(parser))
    info = sub.add_parser(
        "info",
        help="parameters, FLOPs per token, memory (and MFU given a throughput)",
        description="Print parameter counts, FLOPs per token (6N + 12 L nh hs T, PaLM appendix B), "
        "memory of the weights, and an MFU estimate when --tokens-per-s is given. "
        "Override any model field with --model.KEY VALUE.",
        epilog=_fields_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = info.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", help="a named preset (e.g. gpt2, toygpt-small, shakespeare-char)")
    src.add_argument("--config", help="a YAML file: model fields, or a run config with a model: section")
    src.add_argument("--model", help="a model dir, run dir or Hugging Face GPT-2 folder")
    info.add_argument("--seq-len", type=int, default=None, help="sequence length T for the attention FLOPs (default block_size)")
    info.add_argument("--tokens-per-s", type=finite_float, default=None, help="measured training throughput, for MFU")
    info.add_argument("--peak", default="h100-sxm", help="device for MFU: a table name (h100-sxm, a100, ...) or peak FLOP/s as a number")
    info.add_argument("--dtype", default="bf16", type=lambda s: dtype_name(s, extra=("tf32",)),
                      help=f"dtype of the peak figure: {DTYPE_HELP}, or tf32")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(_run=run_info, _accepts_overrides=True)


def _fields_help() -> str:
    from gptforge.config import describe

    rows = describe(_Flags())
    width = max(len(flag) for flag, _, _ in rows)
    lines = [f"  {flag:<{width}}  {help_text} (default {default})" for flag, default, help_text in rows]
    return "model fields (--model.KEY VALUE):\n" + "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    sys.stderr.write("usage: gptforge model info (--preset NAME | --config FILE | --model PATH); see --help\n")
    return 2


@dataclass
class _Flags:
    """A composite of one section, so flag keys and error messages read ``model.KEY``."""

    model: GPTConfig = field(default_factory=GPTConfig)


def _apply_flags(config: GPTConfig, overrides: dict[str, str]) -> GPTConfig:
    """Apply ``--model.KEY VALUE`` flags, with errors that name the flag (``model.n_layr``...)."""
    from gptforge.config import apply

    return apply(_Flags(model=config), overrides, source="flags").model


def _config_from_yaml(path: str) -> Any:
    from gptforge.config import apply
    from gptforge.io import read_yaml
    from gptforge.model.config import GPTConfig

    data = read_yaml(Path(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a YAML mapping of model fields")
    base = GPTConfig.from_preset(data["preset"]) if isinstance(data.get("preset"), str) else GPTConfig()
    if "model" in data:  # a run config: its model section
        section = data["model"]
    elif "preset" in data or any(isinstance(v, dict) for v in data.values()):
        section = {}  # a run config without a model section: the preset (or defaults) alone
    else:  # a file of model fields
        section = data
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: the model section must be a mapping of model fields")
    return apply(base, section, source=path)


def _config_from_model(path: str) -> Any:
    from gptforge.config import from_dict
    from gptforge.io import read_json
    from gptforge.model.config import GPTConfig
    from gptforge.model.loading import resolve_model_dir

    model_dir = resolve_model_dir(path)
    config = read_json(model_dir / "config.json", what="model config")
    if isinstance(config, dict) and isinstance(config.get("model"), dict):
        return from_dict(GPTConfig, config["model"], source=str(model_dir / "config.json"))
    from gptforge.model.loading import load_model  # e.g. a Hugging Face GPT-2 folder

    return load_model(model_dir).config


def _human(n: float, unit: str = "") -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def _bytes(n: float) -> str:
    for scale, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= scale:
            return f"{n / scale:.2f} {suffix}"
    return f"{n:.0f} B"


def run_info(args: argparse.Namespace) -> int:
    import dataclasses

    from gptforge.config import to_dict
    from gptforge.model import accounting
    from gptforge.model.config import GPTConfig

    if args.preset:
        config, source = GPTConfig.from_preset(args.preset), f"preset {args.preset}"
    elif args.config:
        config, source = _config_from_yaml(args.config), args.config
    else:
        config, source = _config_from_model(args.model), args.model
    config = _apply_flags(config, getattr(args, "overrides", {}) or {})
    if args.seq_len is not None and not 0 < args.seq_len <= config.block_size:
        raise ConfigError(f"--seq-len {args.seq_len} must be in [1, model.block_size = {config.block_size}]")
    notes = []
    if config.vocab_size is None:
        config = dataclasses.replace(config, vocab_size=65)
        notes.append("model.vocab_size is not set (taken from the tokenizer); assumed 65 "
                     "(tinyshakespeare characters); pass --model.vocab_size N")
    info: dict[str, Any] = {"source": source, "model": to_dict(config), **accounting.summary(config, args.seq_len)}
    if args.tokens_per_s is not None:
        if args.tokens_per_s <= 0:
            raise ConfigError(f"--tokens-per-s must be positive, got {args.tokens_per_s}")
        peak = accounting.peak_flops(args.peak, args.dtype)
        info["tokens_per_s"] = args.tokens_per_s
        info["peak_flops"] = peak
        info["mfu"] = accounting.mfu(args.tokens_per_s, info["flops_per_token_train"], peak)
    info["notes"] = notes
    if args.json:
        print(json.dumps(info))
        return 0
    for note in notes:
        sys.stderr.write(f"note: {note}\n")
    p, c = info["params"], config
    rows = [
        ("model", source),
        ("shape", f"{c.n_layer} layers, {c.n_head} heads x {c.head_dim}, n_embd {c.n_embd}, "
                  f"MLP {c.hidden_dim} ({c.activation}), {c.norm}-LN"),
        ("context / vocab", f"{c.block_size} / {c.vocab_size}"),
        ("bias / tied head", f"{c.bias} / {c.tie_weights}"),
        ("parameters", f"{p['total']:,} ({_human(p['total'])})"),
        ("  without positions", f"{p['without_positions']:,} ({_human(p['without_positions'])}, as nanoGPT counts)"),
        ("  non-embedding", f"{p['non_embedding']:,} ({_human(p['non_embedding'])})"),
        ("  per block", f"{p['per_layer']:,}"),
        (f"FLOPs/token train (T={info['seq_len']})", f"{_human(info['flops_per_token_train'])} (6N + 12 L nh hs T)"),
        (f"FLOPs/token forward (T={info['seq_len']})", f"{_human(info['flops_per_token_forward'])} (2N + 4 L nh hs T)"),
        ("weights", ", ".join(f"{d} {_bytes(b)}" for d, b in info["weight_bytes"].items())),
        ("training state (AdamW)", f"{_bytes(info['train_bytes_adamw'])} + activations"),
        ("KV cache per token", ", ".join(f"{d} {_bytes(b)}" for d, b in info["kv_cache_bytes_per_token"].items())),
    ]
    if "mfu" in info:
        rows.append(("MFU", f"{info['mfu']:.1%} at {args.tokens_per_s:,.0f} tokens/s, peak {_human(info['peak_flops'], 'FLOP/s')}"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0
