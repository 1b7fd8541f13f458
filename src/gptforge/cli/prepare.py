"""Turn raw text into token shards for training (a dataset dir).

INPUT is a text file (one document), a folder (recursive; --glob picks files), a
.jsonl file (one document per line, text in --text-field), a .parquet file (one per
row), hf:NAME[:CONFIG][:SPLIT] (a Hugging Face dataset, streamed), or a registered
dataset name (tinyshakespeare, the-verdict) taken from $GPTFORGE_DATA_DIR or downloaded.

Examples:
  gptforge prepare --input tinyshakespeare --tokenizer char --out data/shakespeare_char
  gptforge prepare --input corpus/ --glob '*.txt' --tokenizer gpt2 --out data/corpus --workers 4
  gptforge prepare --input docs.jsonl --text-field body --tokenizer my_tok/ --out data/docs
"""

from __future__ import annotations

import argparse
import json
import sys

from gptforge.config import finite_float
from gptforge.io import OVERWRITE_HELP


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--input",
        nargs="+",
        action="extend",
        default=[],
        metavar="PATH|NAME",
        help="text/.jsonl/.parquet file, folder, hf:NAME[:CONFIG][:SPLIT], or registered name (repeatable)",
    )
    parser.add_argument(
        "--tokenizer",
        required=True,
        metavar="SPEC",
        help="gpt2, char (built from the inputs), a tokenizer.json, or a folder holding one",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="the dataset dir to create")
    parser.add_argument(
        "--val-fraction",
        type=finite_float,
        default=0.1,
        metavar="F",
        help="share of the data for validation (default 0.1)",
    )
    parser.add_argument(
        "--test-fraction",
        type=finite_float,
        default=0.0,
        metavar="F",
        help="share of the data for test (default 0)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="tokenizer workers (default 1): threads for the gpt2 fast path, whose encoder "
        "releases the GIL; processes otherwise",
    )
    parser.add_argument(
        "--shard-size",
        type=int,
        default=None,
        metavar="TOKENS",
        help="tokens per shard file (default 100,000,000)",
    )
    parser.add_argument(
        "--text-field",
        default="text",
        metavar="FIELD",
        help="field holding the text in .jsonl records / parquet and HF rows (default: text)",
    )
    parser.add_argument(
        "--glob",
        default=None,
        metavar="PATTERN",
        help="files to take from folders, e.g. '*.txt' (default: .txt .md .text .rst .jsonl .parquet)",
    )
    parser.add_argument(
        "--seed", type=int, default=1337, help="seed of the document split (default 1337)"
    )
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.add_argument(
        "--skip-bad-lines",
        action="store_true",
        help="skip jsonl lines / rows without the text field instead of stopping",
    )
    parser.add_argument(
        "--block-size",
        type=int,
        default=None,
        metavar="N",
        help="check that every split holds at least one window of N + 1 tokens",
    )
    parser.add_argument(
        "--errors",
        choices=["strict", "replace"],
        default="strict",
        help="invalid UTF-8: strict = stop with an error, replace = U+FFFD (default strict)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def run(args: argparse.Namespace) -> int:
    from gptforge.data.prepare import DEFAULT_SHARD_SIZE, PrepareOptions, prepare

    opts = PrepareOptions(
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        workers=args.workers,
        shard_size=args.shard_size or DEFAULT_SHARD_SIZE,
        text_field=args.text_field,
        glob=args.glob,
        seed=args.seed,
        overwrite=args.overwrite,
        skip_bad_lines=args.skip_bad_lines,
        block_size=args.block_size,
        errors=args.errors,
        progress=False if args.no_progress else None,
    )
    meta = prepare(args.input, args.tokenizer, args.out, opts)
    stats = meta["stats"]
    summary = {
        "out": str(args.out),
        "tokenizer": meta["tokenizer_kind"],
        "vocab_size": meta["vocab_size"],
        "dtype": meta["dtype"],
        "split_method": meta["split_method"],
        "documents": stats["documents"],
        "bytes": stats["bytes"],
        "tokens": {s: v["tokens"] for s, v in meta["splits"].items()},
        "documents_per_split": {s: v["documents"] for s, v in meta["splits"].items()},
        "bytes_per_token": stats["bytes_per_token"],
        "seconds": stats["seconds"],
        "tokens_per_s": round(stats["tokens"] / max(stats["seconds"], 1e-9)),
    }
    if args.json:
        print(json.dumps(summary))
        return 0
    w = sys.stdout.write
    w(f"wrote {args.out}\n")
    w(
        f"  tokenizer     {summary['tokenizer']} (vocab {summary['vocab_size']:,}, {summary['dtype']})\n"
    )
    w(f"  documents     {summary['documents']:,} (split by {summary['split_method']})\n")
    for split, n in summary["tokens"].items():
        w(
            f"  {split:<13} {n:>14,} tokens  {summary['documents_per_split'][split]:>10,} documents\n"
        )
    w(f"  input         {summary['bytes']:,} bytes, {summary['bytes_per_token']:.2f} bytes/token\n")
    w(f"  time          {summary['seconds']:.1f} s ({summary['tokens_per_s']:,} tokens/s)\n")
    return 0
