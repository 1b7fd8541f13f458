"""Import a Hugging Face GPT-2 checkpoint folder as a gptforge model dir.

The folder needs config.json and model.safetensors (or pytorch_model.bin, loaded with
weights_only=True: a pickle that needs code to load is refused). The tokenizer comes
from its vocab.json + merges.txt; without them a 50257-id model uses the built-in gpt2
tokenizer (with a warning). Works for every GPT-2 size.

example: gptforge import --format hf --from ./gpt2-hf --out models/gpt2
"""

from __future__ import annotations

import argparse

from gptforge.io import OVERWRITE_HELP


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=["hf"], default="hf", help="source format (hf = Hugging Face GPT-2)")
    parser.add_argument("--from", dest="src", required=True, metavar="DIR", help="the Hugging Face GPT-2 folder")
    parser.add_argument("--out", required=True, metavar="PATH", help="the gptforge model dir to create")
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")


def run(args: argparse.Namespace) -> int:
    import json

    from gptforge.interop.hf import import_hf

    summary = import_hf(args.src, args.out, overwrite=args.overwrite)
    if args.json:
        print(json.dumps(summary))
    else:
        c = summary["config"]
        print(
            f"imported {args.src} -> {summary['out']}: {summary['params'] / 1e6:.2f}M params, "
            f"{c['n_layer']} layers, {c['n_head']} heads, n_embd {c['n_embd']}, context {c['block_size']}, "
            f"vocab {c['vocab_size']}, tokenizer {summary['tokenizer']}"
        )
    return 0
