"""Export a gptforge model as a Hugging Face GPT-2 folder.

The folder holds config.json, model.safetensors (Hugging Face key names, Conv1D layout)
and vocab.json + merges.txt + tokenizer_config.json + special_tokens_map.json, so
GPT2LMHeadModel.from_pretrained and GPT2TokenizerFast.from_pretrained load it offline.
The model must be pre-LN with head size = n_embd / n_head (ReLU, an untied head and
bias=False are written exactly); the tokenizer must be a byte-level BPE with GPT-2's
split pattern, or pass --weights-only.

example: gptforge export --model runs/shakespeare --format hf --out ./hf-model
"""

from __future__ import annotations

import argparse

from gptforge.io import OVERWRITE_HELP


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="PATH", help="model dir or run dir")
    parser.add_argument("--format", choices=["hf"], default="hf", help="target format (hf = Hugging Face GPT-2)")
    parser.add_argument("--out", required=True, metavar="DIR", help="the folder to create")
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.add_argument(
        "--weights-only", action="store_true",
        help="write config.json + model.safetensors only (for a tokenizer GPT-2's files cannot hold)",
    )


def run(args: argparse.Namespace) -> int:
    from gptforge.interop.hf import export_hf

    summary = export_hf(args.model, args.out, overwrite=args.overwrite, weights_only=args.weights_only)
    print(f"exported {args.model} -> {summary['out']} ({', '.join(summary['files'])})")
    return 0
