"""Quantize a model's weights to int8 or int4 and write a quantized model dir.

The output is a model dir like any other (``config.json`` with a ``quantization``
key, ``model.safetensors`` with the integer weights and scales, ``tokenizer.json``):
``generate``, ``chat``, ``eval`` and ``load_model`` read it as they read a float one.
With ``--report`` (or ``--data``) it compares the original and the quantized model:
file size, weight bytes, decoding tokens/s on this machine, and (with ``--data``) val
loss, perplexity and the mean KL divergence of the next-token distributions.

Examples:
  gptforge quantize --model runs/shakespeare --method int8 --out models/shakespeare-int8
  gptforge quantize --model runs/shakespeare --method int4 --group-size 64 \\
      --out models/shakespeare-int4 --report --data data/shakespeare
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gptforge.io import OVERWRITE_HELP, check_replaceable


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--model", required=True, help="model dir, run dir or GPT-2 folder to quantize"
    )
    parser.add_argument(
        "--method",
        required=True,
        help="int8 (per-output-channel absmax), int4 (group-wise), or int8-dynamic "
        "(int8 weights, activations quantized per token at run time)",
    )
    parser.add_argument(
        "--group-size", type=int, default=64, help="int4 group size along the input: 32, 64 or 128"
    )
    parser.add_argument(
        "--symmetric",
        action="store_true",
        help="int4: symmetric groups (scale only) instead of asymmetric (scale + zero)",
    )
    parser.add_argument(
        "--include-embeddings",
        action="store_true",
        help="also quantize the token and position embeddings (with tied weights: the LM head too)",
    )
    parser.add_argument("--include-lm-head", action="store_true", help="also quantize the LM head")
    parser.add_argument("--out", required=True, help="output model dir")
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.add_argument(
        "--report",
        action="store_true",
        help="compare original and quantized: sizes, tokens/s (and quality with --data)",
    )
    parser.add_argument(
        "--data",
        help="dataset dir (gptforge prepare) for val loss, perplexity and KL; implies --report",
    )
    parser.add_argument("--split", default="val", help="dataset split to evaluate on (default val)")
    parser.add_argument(
        "--eval-windows", type=int, default=16, help="block_size windows to evaluate (default 16)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def run(args: argparse.Namespace) -> int:
    from gptforge.errors import ConfigError, GptforgeError
    from gptforge.quantize.spec import check_method

    check_method(args.method, args.group_size)
    if args.eval_windows < 1:
        raise ConfigError(f"--eval-windows must be at least 1, got {args.eval_windows}")
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise GptforgeError(f"output {out} already exists; pass --overwrite or choose another path")
    if args.overwrite:
        check_replaceable(out, protect=(args.model,))
    if out.resolve() == Path(args.model).resolve():
        raise GptforgeError(
            "--out is the same path as --model; write the quantized model to a new dir"
        )

    import copy

    from gptforge.io import atomic_dir
    from gptforge.model.loading import load_model
    from gptforge.quantize.convert import is_quantized, quantize, save_quantized

    dataset = None
    if args.data:
        from gptforge.data.shards import open_dataset

        dataset = open_dataset(args.data)
    original = load_model(args.model)
    if is_quantized(original):
        from gptforge.errors import ModelError

        raise ModelError(
            f"{args.model} is already quantized; quantize the original float model instead"
        )
    if dataset is not None and getattr(original, "tokenizer", None) is not None:
        dataset.check_compatible(original.tokenizer)
    report_wanted = args.report or dataset is not None
    work = copy.deepcopy(original) if report_wanted else original
    quantized = quantize(
        work,
        args.method,
        group_size=args.group_size,
        include_embeddings=args.include_embeddings,
        include_lm_head=args.include_lm_head,
        symmetric=args.symmetric,
    )
    with atomic_dir(out, overwrite=args.overwrite) as tmp:
        save_quantized(quantized, tmp, tokenizer=getattr(original, "tokenizer", None))

    from gptforge.quantize.report import file_size, format_report

    if not report_wanted:
        size, before = file_size(out), file_size(original.model_dir)
        result = {
            "out": str(out),
            "quantization": quantized.quantization,
            "file_bytes": size,
            "original_file_bytes": before,
        }
        if args.json:
            print(json.dumps(result))
        else:
            ratio = f" ({size / before:.1%} of the original)" if size and before else ""
            print(f"wrote {out}: {args.method} model.safetensors {size / 1e6:.2f} MB{ratio}")
        return 0

    from gptforge.quantize.report import build_report

    reloaded = load_model(out)  # measure exactly what was written
    report = build_report(
        original,
        reloaded,
        original.model_dir,
        out,
        dataset=dataset,
        split=args.split,
        max_windows=args.eval_windows,
    )
    report["out"] = str(out)
    if args.json:
        print(json.dumps(report))
    else:
        print(format_report(report))
        print(f"wrote {out}")
    return 0
