"""``tokenizer.json``: saving and loading every tokenizer kind, and reading corpus files.

The file is our own schema (no pickle), one JSON object::

    {"format_version": 1, "kind": "regex-bpe", "vocab_size": 4096,
     "merges": [[101, 32], ...],            # in learning order; merge i makes id 256 + i
     "pattern": "...", "pattern_name": "gpt4",
     "special_tokens": {"<|endoftext|>": 4095}}

``char`` stores its character list, ``hf-bpe`` embeds the Hugging Face
tokenizer JSON as a string, and ``gpt2`` is saved by name (its files are found
again through ``$GPTFORGE_DATA_DIR``).

A *spec* names a tokenizer: a ``tokenizer.json`` file, a folder holding one (a
model dir, or the ``--out`` of ``tokenizer train``), the built-in ``gpt2``, or
``char`` together with a corpus.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from gptforge.errors import GptforgeError, TokenizerError
from gptforge.tokenizer.base import Tokenizer

logger = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
KINDS = ("char", "bpe", "regex-bpe", "gpt2", "hf-bpe")
VALID_SPECS = (
    "a tokenizer.json file, a folder holding one (a model dir or the --out of `gptforge tokenizer train`), "
    "'gpt2' (the pretrained GPT-2 BPE), or 'char' together with a corpus"
)


def read_text(path: str | os.PathLike, errors: str = "strict") -> str:
    """Read a UTF-8 text file; a bad byte is an error naming the file and the offset.

    Args:
        errors: ``"strict"`` (refuse invalid UTF-8) or ``"replace"`` (turn bad bytes into U+FFFD).
    """
    path = Path(path)
    if errors not in ("strict", "replace"):
        raise TokenizerError(f"errors must be 'strict' or 'replace', got {errors!r}")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TokenizerError(f"input file not found: {path}") from None
    except IsADirectoryError:
        raise TokenizerError(f"input {path} is a folder; pass text files") from None
    except OSError as e:
        raise TokenizerError(f"cannot read input file {path}: {e.strerror or e}") from None
    try:
        return data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        raise TokenizerError(
            f"{path} is not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}); convert it to "
            "UTF-8, or pass --errors replace to replace bad bytes with U+FFFD"
        ) from None


def read_texts(paths: Sequence[str | os.PathLike], errors: str = "strict") -> list[str]:
    """Read several text files (see :func:`read_text`)."""
    if not paths:
        raise TokenizerError("no input files given; pass at least one text file")
    return [read_text(p, errors) for p in paths]


def iter_texts(paths: Sequence[str | os.PathLike], errors: str = "strict") -> Iterator[str]:
    """Read several text files one at a time, as they are consumed (see :func:`read_text`).

    Missing files and folders are reported before the first file is read, so a long run
    does not fail at its last input; bad UTF-8 is reported when its file is reached.
    """
    if not paths:
        raise TokenizerError("no input files given; pass at least one text file")
    for p in paths:
        if not Path(p).is_file():
            read_text(p, errors)  # raises the message for a missing file or a folder
    return (read_text(p, errors) for p in paths)


def save_tokenizer(tok: Tokenizer, path: str | os.PathLike) -> Path:
    """Write ``tok`` as ``tokenizer.json`` (``path`` is the file itself, or a folder to hold it).

    Returns:
        The path of the written file. The write is atomic.
    """
    from gptforge.io import FORMAT_VERSION, write_json

    path = Path(path)
    if path.suffix != ".json":
        path = path / TOKENIZER_FILE
    try:
        # A gpt2 tokenizer carries its tables too (the fingerprint, from to_dict, does not
        # change): a model dir copied to a machine without ~/.cache/gptforge/gpt2/ still loads.
        tables = tok.tables() if tok.kind == "gpt2" and hasattr(tok, "tables") else {}
        write_json(path, {"format_version": FORMAT_VERSION, **tok.to_dict(), **tables})
    except OSError as e:
        raise TokenizerError(
            f"cannot write {path}: {e.strerror or e}; choose an output folder you can write to"
        ) from None
    return path


def tokenizer_from_dict(obj: dict[str, Any], source: str = "tokenizer.json") -> Tokenizer:
    """Rebuild a tokenizer from the content of a ``tokenizer.json``."""
    from gptforge.io import check_format_version

    if not isinstance(obj, dict):
        raise TokenizerError(
            f"{source} does not hold a JSON object; it is not a gptforge tokenizer file"
        )
    if "kind" not in obj and "model" in obj and "pre_tokenizer" in obj:
        # a Hugging Face tokenizer.json (e.g. inside a Hugging Face GPT-2 folder)
        import json

        from gptforge.tokenizer.hf import HFTokenizer

        return HFTokenizer(json.dumps(obj))
    try:
        check_format_version(obj, source, "tokenizer file")
    except GptforgeError as e:
        raise TokenizerError(str(e)) from None
    kind = obj.get("kind")
    try:
        if kind == "char":
            from gptforge.tokenizer.char import CharTokenizer

            return CharTokenizer.from_dict(obj)
        if kind in ("bpe", "regex-bpe"):
            from gptforge.tokenizer.bpe import BPETokenizer

            return BPETokenizer.from_dict(obj)
        if kind == "gpt2":
            return _load_gpt2(obj)
        if kind == "hf-bpe":
            from gptforge.tokenizer.hf import HFTokenizer

            return HFTokenizer.from_dict(obj)
    except (KeyError, TypeError, ValueError) as e:
        raise TokenizerError(
            f"{source} is malformed ({type(e).__name__}: {e}); re-create it with `gptforge tokenizer train`"
        ) from None
    raise TokenizerError(
        f"{source} has unknown tokenizer kind {kind!r}; expected one of {', '.join(KINDS)}"
    )


def _load_gpt2(obj: dict[str, Any] | None = None, fast: bool = True) -> Tokenizer:
    from gptforge.tokenizer.gpt2 import GPT2Tokenizer

    want = (obj or {}).get("tables_sha256")
    if obj and "encoder" in obj and "merges" in obj:  # the tables travel with the file: no cache needed
        tok = GPT2Tokenizer.from_tables(obj["encoder"], obj["merges"], fast=fast, source="tokenizer.json")
        if want and want != tok.to_dict()["tables_sha256"]:
            raise TokenizerError(
                "the GPT-2 tables in this tokenizer.json do not match its tables_sha256; the file is "
                "damaged, copy it again"
            )
        return tok
    tok = GPT2Tokenizer(fast=fast)
    if want and want != tok.to_dict()["tables_sha256"]:
        logger.warning(
            "the GPT-2 files found differ from the ones this tokenizer.json was saved with"
        )
    return tok


def load_tokenizer(
    spec: str | os.PathLike,
    corpus: str | Sequence[str | os.PathLike] | None = None,
    errors: str = "strict",
    specials: Sequence[str] = (),
) -> Tokenizer:
    """Load the tokenizer named by ``spec``.

    Args:
        spec: a ``tokenizer.json`` file, a folder holding one, ``"gpt2"``, or ``"char"``.
        corpus: for ``"char"`` only: the text (a str) or a list of text files to take
            the characters from.
        errors: how to read corpus files: ``"strict"`` or ``"replace"`` (bad bytes -> U+FFFD).
        specials: for ``"char"`` only: special tokens appended after the characters.

    Raises:
        TokenizerError: unknown spec, missing or malformed file, missing GPT-2 files.
    """
    from gptforge.io import read_json

    name = os.fspath(spec)
    if name == "gpt2":
        return _load_gpt2()
    if name == "char":
        if corpus is None:
            raise TokenizerError(
                "the 'char' tokenizer is built from a corpus, and none was given; use it where input text "
                "is given (e.g. `gptforge prepare --tokenizer char`), or train one with "
                "`gptforge tokenizer train --kind char --input FILE --out DIR` and pass DIR"
            )
        from gptforge.tokenizer.char import CharTokenizer

        text = corpus if isinstance(corpus, str) else "".join(read_texts(list(corpus), errors))
        return CharTokenizer.train(text, specials)
    path = Path(name).expanduser()
    if path.is_dir():
        file = path / TOKENIZER_FILE
        if not file.is_file():
            raise TokenizerError(
                f"folder {path} holds no {TOKENIZER_FILE}; the tokenizer spec must be {VALID_SPECS}"
            )
        path = file
    elif not path.is_file():
        raise TokenizerError(
            f"unknown tokenizer spec {name!r}: no such file or folder, and not a built-in name; expected {VALID_SPECS}"
        )
    try:
        obj = read_json(path, what="tokenizer file")
    except GptforgeError as e:
        raise TokenizerError(str(e)) from None
    return tokenizer_from_dict(obj, source=str(path))
