"""Train, inspect and use tokenizers: `train` learns one from text files (char, bpe, regex-bpe,
hf-bpe) and writes DIR/tokenizer.json; `encode` prints the ids of a text, `decode` the text of ids;
`info` prints kind, vocab size, special tokens, fingerprint and, with --file, the compression ratio.
A tokenizer SPEC is a tokenizer.json file, a folder holding one (e.g. a model dir), or 'gpt2'.
"""

from __future__ import annotations

import argparse
import json
import sys

from gptforge.errors import TokenizerError
from gptforge.io import OVERWRITE_HELP, check_replaceable

KINDS = ("char", "bpe", "regex-bpe", "hf-bpe")
DEFAULT_SPECIALS = {
    "char": [],
    "bpe": [],
    "regex-bpe": ["<|endoftext|>"],
    "hf-bpe": ["<pad>", "<|endoftext|>"],
}
SPEC_HELP = "a tokenizer.json file, a folder holding one, or 'gpt2'"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(
        dest="tokenizer_command", metavar="SUBCOMMAND", parser_class=type(parser)
    )
    errors_help = "how to read input files that are not valid UTF-8: refuse them (strict) or replace bad bytes with U+FFFD"

    p = sub.add_parser(
        "train", help="learn a tokenizer from text files", description=_train.__doc__
    )
    p.add_argument("--kind", required=True, choices=KINDS, help="tokenizer kind")
    p.add_argument(
        "--vocab-size",
        type=int,
        default=None,
        help="total ids: 256 bytes + merges + specials (not needed for char)",
    )
    p.add_argument(
        "--input", nargs="+", required=True, metavar="PATH", help="UTF-8 text files to learn from"
    )
    p.add_argument(
        "--out", required=True, metavar="DIR", help="folder to write tokenizer.json into"
    )
    p.add_argument(
        "--pattern", default=None, help="regex-bpe split pattern: gpt2, gpt4 (default) or a regex"
    )
    p.add_argument(
        "--special",
        nargs="*",
        default=None,
        metavar="TOKEN",
        help="special tokens (defaults: regex-bpe <|endoftext|>; hf-bpe <pad> <|endoftext|>; none for char, bpe); "
        "'--special' alone means none",
    )
    p.add_argument(
        "--verbose", action="store_true", help="print every merge as it is learned (bpe, regex-bpe)"
    )
    p.add_argument("--errors", choices=("strict", "replace"), default="strict", help=errors_help)
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="bpe, regex-bpe: processes that split and count the corpus (default 1)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(_run=_train)

    p = sub.add_parser("encode", help="print the ids of a text", description=_encode.__doc__)
    p.add_argument("--tokenizer", required=True, metavar="SPEC", help=SPEC_HELP)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="text to encode")
    src.add_argument("--file", metavar="PATH", help="UTF-8 file to encode")
    p.add_argument(
        "--allow-special",
        action="store_true",
        help="turn special-token text (e.g. <|endoftext|>) into its id",
    )
    p.add_argument("--errors", choices=("strict", "replace"), default="strict", help=errors_help)
    p.set_defaults(_run=_encode)

    p = sub.add_parser("decode", help="print the text of ids", description=_decode.__doc__)
    p.add_argument("--tokenizer", required=True, metavar="SPEC", help=SPEC_HELP)
    p.add_argument(
        "--ids", required=True, help='ids separated by spaces or commas, e.g. "15496 995"'
    )
    p.set_defaults(_run=_decode)

    p = sub.add_parser(
        "info",
        help="kind, vocab size, specials, fingerprint, compression ratio",
        description=_info.__doc__,
    )
    p.add_argument("--tokenizer", required=True, metavar="SPEC", help=SPEC_HELP)
    p.add_argument(
        "--file",
        metavar="PATH",
        help="also report the compression ratio (bytes per token) on this file",
    )
    p.add_argument("--errors", choices=("strict", "replace"), default="strict", help=errors_help)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(_run=_info)


def run(args: argparse.Namespace) -> int:
    sys.stderr.write(
        "error: choose a subcommand: train, encode, decode or info (see `gptforge tokenizer --help`)\n"
    )
    return 2


def _train(args: argparse.Namespace) -> int:
    """Learn a tokenizer from text files and write DIR/tokenizer.json."""
    from pathlib import Path

    from gptforge.tokenizer.files import TOKENIZER_FILE, iter_texts, read_texts, save_tokenizer

    out = Path(args.out) / TOKENIZER_FILE
    if out.exists() and not args.overwrite:
        raise TokenizerError(
            f"{out} already exists; pass --overwrite to replace it, or choose another --out"
        )
    if args.overwrite:
        check_replaceable(out, protect=tuple(args.input))
    if args.pattern is not None and args.kind != "regex-bpe":
        raise TokenizerError(f"--pattern applies to --kind regex-bpe only, not {args.kind}")
    if args.kind != "char" and args.vocab_size is None:
        raise TokenizerError(
            f"--vocab-size is required for --kind {args.kind} (e.g. --vocab-size 4096)"
        )
    if args.workers < 1:
        raise TokenizerError(f"--workers must be at least 1, got {args.workers}")
    specials = DEFAULT_SPECIALS[args.kind] if args.special is None else args.special
    if any(not s for s in specials):
        raise TokenizerError("--special tokens must be non-empty strings")
    if args.kind in ("bpe", "regex-bpe"):  # streamed: memory grows with distinct chunks, not the corpus
        texts = iter_texts(args.input, args.errors)
    else:
        texts = read_texts(args.input, args.errors)
        if not any(texts):
            raise TokenizerError(f"the corpus is empty: {', '.join(args.input)} hold no text")

    if args.kind == "char":
        from gptforge.tokenizer.char import CharTokenizer

        tok = CharTokenizer.train("".join(texts), specials)
        if args.vocab_size is not None and args.vocab_size != tok.vocab_size:
            print(
                f"note: a char tokenizer's size is set by its corpus: {tok.vocab_size} (not {args.vocab_size})",
                file=sys.stderr,
            )
    elif args.kind == "hf-bpe":
        from gptforge.tokenizer.hf import HFTokenizer

        tok = HFTokenizer.train(texts, args.vocab_size, specials)
    else:
        from gptforge.tokenizer.bpe import BPETokenizer

        pattern = (args.pattern or "gpt4") if args.kind == "regex-bpe" else None
        tok = BPETokenizer.train(
            texts,
            args.vocab_size,
            pattern,
            specials,
            on_merge=_merge_printer(args, args.vocab_size - 256 - len(specials)),
            workers=args.workers,
        )
    path = save_tokenizer(tok, args.out)
    print(f"wrote {path}: {tok.kind}, vocab size {tok.vocab_size}, fingerprint {tok.fingerprint()}")
    return 0


def _merge_printer(args: argparse.Namespace, total: int):  # noqa: ANN202 - a closure
    """--verbose: print each merge; otherwise a progress bar on stderr (when it is a terminal)."""
    if args.verbose:
        vocab = [bytes([b]) for b in range(256)]

        def show(i: int, pair: tuple[int, int], new_id: int, count: int) -> None:
            vocab.append(vocab[pair[0]] + vocab[pair[1]])
            print(
                f"merge {i + 1}/{total}: {pair} -> {new_id} ({vocab[new_id]!r}) had {count} occurrences"
            )

        return show
    from tqdm import tqdm

    bar = tqdm(total=total, desc="merges", unit="merge", disable=None, leave=False)

    def tick(i: int, pair: tuple[int, int], new_id: int, count: int) -> None:
        bar.update(1)

    return tick


def _load(spec: str, text: str | None = None):  # noqa: ANN202
    from gptforge.tokenizer.files import load_tokenizer

    return load_tokenizer(spec, corpus=text)


def _encode(args: argparse.Namespace) -> int:
    """Print the ids of --text or of a --file, space separated."""
    from gptforge.tokenizer.files import read_text

    text = args.text if args.text is not None else read_text(args.file, args.errors)
    tok = _load(args.tokenizer, text)
    ids = tok.encode(text, allowed_special="all" if args.allow_special else "none")
    print(" ".join(map(str, ids)))
    return 0


def parse_ids(text: str) -> list[int]:
    """'1 2,3' -> [1, 2, 3]; anything else is a clear error."""
    parts = text.replace(",", " ").split()
    try:
        return [int(p) for p in parts]
    except ValueError:
        bad = next(p for p in parts if not p.lstrip("-").isdigit())
        raise TokenizerError(
            f"--ids must be integers separated by spaces or commas; {bad!r} is not an integer"
        ) from None


def _decode(args: argparse.Namespace) -> int:
    """Print the text of --ids."""
    tok = _load(args.tokenizer)
    sys.stdout.write(tok.decode(parse_ids(args.ids)) + "\n")
    return 0


def _info(args: argparse.Namespace) -> int:
    """Print kind, vocab size, special tokens, end-of-text id and fingerprint (and the compression ratio on --file)."""
    from gptforge.tokenizer.files import read_text

    text = read_text(args.file, args.errors) if args.file else None
    tok = _load(args.tokenizer, text)
    info: dict = {
        "kind": tok.kind,
        "vocab_size": tok.vocab_size,
        "special_tokens": tok.special_tokens,
        "eot_id": tok.eot_id,
        "fingerprint": tok.fingerprint(),
    }
    if text is not None:
        n_bytes = len(text.encode("utf-8"))
        n_tokens = len(tok.encode(text))
        info.update(
            file=args.file,
            bytes=n_bytes,
            tokens=n_tokens,
            compression_ratio=n_bytes / max(n_tokens, 1),
        )
    if args.json:
        print(json.dumps(info, ensure_ascii=False))
        return 0
    print(f"kind: {info['kind']}")
    print(f"vocab size: {info['vocab_size']}")
    specials = ", ".join(f"{s}={i}" for s, i in info["special_tokens"].items()) or "none"
    print(f"special tokens: {specials}")
    print(f"end-of-text id: {info['eot_id']}")
    print(f"fingerprint: {info['fingerprint']}")
    if text is not None:
        print(f"file: {args.file} ({info['bytes']} bytes -> {info['tokens']} tokens)")
        print(f"compression ratio: {info['compression_ratio']:.2f}X")
    return 0
