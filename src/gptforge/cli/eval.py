"""Evaluate a model: mean loss, perplexity and bits per byte on a dataset split or a text file,
or accuracy on a task (--task).

Long inputs are scored with a strided sliding window: each token is predicted once, with
at least block_size - stride tokens of context (after the first window). stride =
block_size gives disjoint blocks (fastest); the default block_size // 2 is the usual
compromise.

Tasks (--task) score each choice by the sum of its tokens' log-probabilities after the
context (completion style): hellaswag (the registered validation set), mc:FILE.jsonl
(context, choices, label), cloze:FILE.jsonl (text; its last word is the target).

examples:
  gptforge eval --model models/gpt2 --text the-verdict.txt
  gptforge eval --model runs/shakespeare --data data/shakespeare --split val --json
  gptforge eval --model models/gpt2 --task hellaswag --dtype bf16 --limit 500
  gptforge eval --model models/gpt2 --task mc:my_quiz.jsonl --json --log-samples samples.jsonl
"""

from __future__ import annotations

import argparse

from gptforge.cli.options import DEVICE_HELP, DTYPE_HELP, dtype_name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="PATH", help="model dir, run dir or Hugging Face GPT-2 folder")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", metavar="DIR", help="a dataset dir made by `gptforge prepare`")
    source.add_argument("--text", metavar="FILE", help="a UTF-8 text file (encoded with the model's tokenizer)")
    source.add_argument(
        "--task", metavar="TASK", help="task accuracy: hellaswag, mc:FILE.jsonl or cloze:FILE.jsonl"
    )
    parser.add_argument("--split", default="val", help="dataset split with --data (default val)")
    parser.add_argument("--block-size", type=int, default=None, help="window length (default: the model's context)")
    parser.add_argument("--stride", type=int, default=None, help="window step (default block_size // 2)")
    parser.add_argument(
        "--batch-size", type=int, default=None,
        help="windows per forward pass (default 8); with --task, items per batch (default 32)",
    )
    parser.add_argument("--max-tokens", type=int, default=None, help="evaluate only the first N tokens")
    parser.add_argument("--device", default="auto", help=f"{DEVICE_HELP} (default auto)")
    parser.add_argument(
        "--dtype", default="fp32", type=dtype_name, help=f"weight dtype: {DTYPE_HELP} (default fp32)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--limit", type=int, default=None, help="with --task: score only the first N items")
    parser.add_argument(
        "--norm", choices=["token", "byte"], default="token",
        help="with --task: acc_norm divides each choice's log-probability by its tokens (default, as llm.c) "
        "or by its UTF-8 bytes (as lm-eval); both are in --json",
    )
    parser.add_argument(
        "--log-samples", metavar="FILE", default=None,
        help="with --task: write each item's scores and predictions as jsonl",
    )


def _dataset_tokens(path: str, split: str, tokenizer: object, max_tokens: int | None) -> object:
    """The split's tokens (shards joined, up to ``max_tokens``), after checking that the
    dataset was made with the model's tokenizer."""
    import numpy as np

    from gptforge.data.shards import open_dataset
    from gptforge.errors import DataError

    ds = open_dataset(path)
    if tokenizer is None:
        raise DataError(f"the model has no tokenizer.json, so dataset {path} cannot be checked against it")
    ds.check_compatible(tokenizer)
    parts, have = [], 0
    for shard in ds.shards(split):
        if max_tokens is not None and have >= max_tokens:
            break
        parts.append(shard)
        have += len(shard)
    if not parts:
        raise DataError(f"split {split!r} of dataset {path} holds no tokens")
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import numpy as np

    from gptforge.errors import ConfigError, DataError
    from gptforge.evaluate import evaluate_tokens, text_tokens, token_byte_lengths
    from gptforge.model.loading import load_model

    for name in ("batch_size", "max_tokens", "stride", "block_size", "limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    from gptforge.train.device import DTYPES, resolve_device

    device = str(resolve_device(args.device, flag="--device"))
    model = load_model(args.model, device=device, dtype=DTYPES[args.dtype])
    if args.task is not None:
        return _run_task(args, model, device)
    tok = model.tokenizer
    if args.text is not None:
        if tok is None:
            raise ConfigError(f"{args.model} has no tokenizer.json, so text cannot be encoded; use --data")
        path = Path(args.text)
        if not path.is_file():
            raise DataError(f"text file not found: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{path} is not UTF-8 text ({e}); convert it first") from None
        tokens = np.asarray(text_tokens(tok, text), dtype=np.int64)
    else:
        tokens = _dataset_tokens(args.data, args.split, tok, args.max_tokens)
    if args.max_tokens is not None:
        tokens = tokens[: args.max_tokens]
    result = evaluate_tokens(
        model,
        tokens,
        block_size=args.block_size,
        stride=args.stride,
        batch_size=args.batch_size or 8,
        byte_lengths=token_byte_lengths(tok) if tok is not None else None,
        progress=True,
    )
    result.update(model=str(args.model), source=args.text or f"{args.data}:{args.split}", device=device, dtype=args.dtype)
    if args.json:
        print(json.dumps(result))
    else:
        bpb = f"{result['bits_per_byte']:.4f}" if result["bits_per_byte"] is not None else "n/a"
        print(f"loss {result['loss']:.4f}  perplexity {result['perplexity']:.2f}  bits/byte {bpb}")
        print(
            f"{result['tokens']} tokens scored in {result['windows']} windows "
            f"(block {result['block_size']}, stride {result['stride']}) in {result['seconds']:.1f}s "
            f"({result['tokens_per_s']:.0f} tokens/s on {device})"
        )
    return 0


def _run_task(args: argparse.Namespace, model: object, device: str) -> int:
    """``--task``: accuracy on a task; one results.json-style object with --json."""
    import json

    from gptforge.evaluate.task_files import load_task
    from gptforge.evaluate.tasks import TASK_BATCH_SIZE, evaluate_task
    from gptforge.io import atomic_write_bytes

    task = load_task(args.task)
    args.batch_size = args.batch_size or TASK_BATCH_SIZE
    result, samples = evaluate_task(
        model, task, batch_size=args.batch_size, limit=args.limit, norm=args.norm, progress=True
    )
    result.update(model=str(args.model), device=device, dtype=args.dtype, batch_size=args.batch_size)
    if args.log_samples:
        lines = "".join(json.dumps(s) + "\n" for s in samples)
        atomic_write_bytes(args.log_samples, lines.encode("utf-8"))
    if args.json:
        print(json.dumps({"results": {result["task"]: result}}))
        return 0
    m = result["metrics"]
    if result["kind"] == "mc":
        print(
            f"{result['task']}: acc {m['acc']:.4f}  acc_norm {m['acc_norm']:.4f} (per {args.norm}; "
            f"per token {m['acc_norm_token']:.4f}, per byte {m['acc_norm_byte']:.4f})"
        )
    else:
        print(f"{result['task']}: last-word acc {m['acc']:.4f}  perplexity {m['perplexity']:.2f}")
    skipped = f", {result['skipped']} skipped (not encodable)" if result["skipped"] else ""
    print(f"{result['items']} items{skipped} in {result['seconds']:.1f}s on {device} ({args.dtype})")
    return 0
