"""Export a gptforge model as a Hugging Face GPT-2 folder, or as one GGUF file for llama.cpp.

The folder holds config.json, model.safetensors (Hugging Face key names, Conv1D layout)
and vocab.json + merges.txt + tokenizer_config.json + special_tokens_map.json, so
GPT2LMHeadModel.from_pretrained and GPT2TokenizerFast.from_pretrained load it offline.
The model must be pre-LN with head size = n_embd / n_head (ReLU, an untied head and
bias=False are written exactly); the tokenizer must be a byte-level BPE with GPT-2's
split pattern, or pass --weights-only.

--format gguf writes one file (architecture gpt2, tokenizer inside) that llama.cpp,
Ollama and LM Studio load; --dtype f32 (default), f16, q8_0 or q4_0. The model must be
pre-LN GELU with head size = n_embd / n_head; the tokenizer gpt2, regex-bpe trained
with --pattern gpt2, or char.

examples:
  gptforge export --model runs/shakespeare --format hf --out ./hf-model
  gptforge export --model models/gpt2 --format gguf --out gpt2-q8_0.gguf --dtype q8_0
"""

from __future__ import annotations

import argparse

from gptforge.io import OVERWRITE_HELP


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="PATH", help="model dir or run dir")
    parser.add_argument(
        "--format", choices=["hf", "gguf"], default="hf",
        help="target format (hf = Hugging Face GPT-2 folder, gguf = one file for llama.cpp)",
    )
    parser.add_argument("--out", required=True, metavar="PATH", help="the folder (hf) or file (gguf) to create")
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.add_argument(
        "--dtype", choices=["f32", "f16", "q8_0", "q4_0"], default=None,
        help="with --format gguf: how the weight matrices are stored (default f32)",
    )
    parser.add_argument(
        "--weights-only", action="store_true",
        help="write config.json + model.safetensors only (for a tokenizer GPT-2's files cannot hold)",
    )


def run(args: argparse.Namespace) -> int:
    from gptforge.errors import ConfigError
    from gptforge.interop.hf import export_hf

    if args.format == "gguf":
        return _run_gguf(args)
    if args.dtype is not None:
        raise ConfigError("--dtype is for --format gguf; the hf export keeps the model's own dtype")

    summary = export_hf(args.model, args.out, overwrite=args.overwrite, weights_only=args.weights_only)
    print(f"exported {args.model} -> {summary['out']} ({', '.join(summary['files'])})")
    return 0


def _run_gguf(args: argparse.Namespace) -> int:
    from gptforge.errors import ConfigError
    from gptforge.interop.gguf import export_gguf

    if args.weights_only:
        raise ConfigError("--weights-only is for --format hf; a GGUF file always carries its tokenizer")
    summary = export_gguf(args.model, args.out, dtype=args.dtype or "f32", overwrite=args.overwrite)
    types = ", ".join(f"{n} {t}" for t, n in sorted(summary["tensor_types"].items()))
    print(f"exported {args.model} -> {summary['out']} ({summary['bytes'] / 1e6:.1f} MB; tensors: {types})")
    return 0
