"""The pretrained GPT-2 tokenizer, read from OpenAI's ``encoder.json`` and ``vocab.bpe``.

GPT-2 is a byte-level BPE: text is cut into chunks by a regex (words with their
leading space, numbers, punctuation runs, whitespace), each chunk's UTF-8 bytes
start as one token per byte, and learned merges join adjacent tokens in the
order they were learned (``vocab.bpe`` lists them, first = highest priority).

Two quirks of the files:

* ``encoder.json`` spells tokens not as bytes but as *printable unicode
  strings*: each byte 0..255 stands for one character (printable Latin-1 bytes
  for themselves, the others for ``chr(256 + n)``). :func:`bytes_to_unicode`
  rebuilds that table and we invert it to recover each token's raw bytes.
* The merge on line ``i`` of ``vocab.bpe`` creates the token with id
  ``256 + i``; so a smaller merged id means a higher priority, and the merge
  table can be ``(left id, right id) -> merged id`` (see :func:`bpe_merge_chunk`).

Two encoders give identical ids (the tests check this over all of
tinyshakespeare and a unicode stress text):

* our own pure-Python path (``fast=False``): regex split, then the merge loop
  per chunk, with a cache because natural text repeats the same words;
* the fast path (default): tiktoken's Rust BPE, built offline from the same two
  files (no download), used only because the tests prove it identical.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import regex

from gptforge.errors import TokenizerError
from gptforge.tokenizer.base import (
    Tokenizer,
    check_ids,
    resolve_allowed_special,
    split_on_specials,
)
from gptforge.tokenizer.bpe_core import bpe_merge_chunk

logger = logging.getLogger(__name__)

# The chunking regex of GPT-2 (OpenAI's encoder.py): contractions, optional space + letters,
# optional space + digits, optional space + other symbols, whitespace not followed by a
# non-space (so the last space of a run attaches to the next word), other whitespace.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# The same split written for speed (possessive quantifiers, factored contractions), as
# tiktoken spells it: used only by the fast path. GPT2_PATTERN stays the canonical text
# in tokenizer.json (and so in fingerprints); the tests check both give tiktoken's ids.
GPT2_PATTERN_FAST = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
ENDOFTEXT = "<|endoftext|>"
GPT2_VOCAB_SIZE = 50257

_CACHE_LIMIT = 200_000  # chunks kept in the per-tokenizer encode cache


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table from each byte to the printable character that spells it in encoder.json.

    Bytes that are already printable and not a space (``!``..``~``, ``¡``..``¬``,
    ``®``..``ÿ``) stand for themselves; the remaining 68 bytes, in increasing
    order, get ``chr(256)``, ``chr(257)``, ... so that every token string is
    visible text. For example byte 32 (space) is ``'Ġ'`` (chr(288)) and byte 10
    (newline) is ``'Ċ'`` (chr(266)).

    >>> bytes_to_unicode()[ord("a")], bytes_to_unicode()[32], bytes_to_unicode()[10]
    ('a', 'Ġ', 'Ċ')
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


def gpt2_files(base: Path | None = None) -> tuple[Path, Path]:
    """Find ``encoder.json`` and ``vocab.bpe``: ``$GPTFORGE_DATA_DIR/gpt2/`` or ``$GPTFORGE_DATA_DIR/``.

    Raises:
        TokenizerError: naming every place looked at and how to provide the files.
    """
    from gptforge.io import data_dir

    root = Path(base) if base is not None else data_dir()
    candidates = [root / "gpt2", root]
    for folder in candidates:
        enc, bpe = folder / "encoder.json", folder / "vocab.bpe"
        if enc.is_file() and bpe.is_file():
            return enc, bpe
    looked = ", ".join(f"{c / 'encoder.json'} + {c / 'vocab.bpe'}" for c in candidates)
    raise TokenizerError(
        f"the GPT-2 tokenizer files were not found (looked for {looked}); download encoder.json and "
        "vocab.bpe from https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/ into "
        f"{root / 'gpt2'} or set GPTFORGE_DATA_DIR to a folder holding gpt2/encoder.json and gpt2/vocab.bpe"
    )


@functools.lru_cache(maxsize=4)
def _read_tables(
    encoder_path: str, vocab_path: str, _mtimes: tuple[float, float]
) -> tuple[list[bytes], dict[tuple[int, int], int], int | None, str]:
    """Parse the two files (cached per file version).

    Returns:
        ``id -> bytes``, ``(left, right) -> merged id``, the ``<|endoftext|>`` id (or None),
        and a sha256 of both tables (it goes into the fingerprint).
    """
    try:
        encoder: dict[str, int] = json.loads(Path(encoder_path).read_text(encoding="utf-8"))
        merge_lines = Path(vocab_path).read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(
            f"cannot read the GPT-2 files {encoder_path}, {vocab_path}: {e}; download them again"
        ) from None
    return parse_tables(encoder, merge_lines[1:], encoder_path, vocab_path)


def parse_tables(
    encoder: dict[str, int], merge_lines: list[str], encoder_name: str = "encoder.json",
    merges_name: str = "vocab.bpe",
) -> tuple[list[bytes], dict[tuple[int, int], int], int | None, str]:
    """The tables of :func:`_read_tables` from the files' content: ``encoder`` (GPT-2's
    printable token strings -> ids) and the merge lines ``"left right"`` in order (no
    ``#version`` header). The names are for error messages only."""
    encoder_path, vocab_path = encoder_name, merges_name
    if not isinstance(encoder, dict) or not isinstance(merge_lines, list):
        raise TokenizerError(f"{encoder_path} / {vocab_path}: not a GPT-2 encoder and merge list")
    byte_of = {ch: b for b, ch in bytes_to_unicode().items()}
    special = encoder.get(ENDOFTEXT)
    token_bytes: list[bytes] = [b""] * len(encoder)
    try:
        for text, idx in encoder.items():
            if text != ENDOFTEXT:
                token_bytes[idx] = bytes(byte_of[ch] for ch in text)
    except (KeyError, IndexError):
        raise TokenizerError(
            f"{encoder_path} is not a GPT-2 encoder.json (bad token {text!r}); download it again"
        ) from None
    if special is not None:
        token_bytes[special] = ENDOFTEXT.encode()
    merges: dict[tuple[int, int], int] = {}
    last = -1
    # empty lines (the trailing newline) are skipped
    for line in merge_lines:
        if not line:
            continue
        try:
            left, right = line.split(" ")
            merged = encoder[left + right]
            merges[(encoder[left], encoder[right])] = merged
        except (KeyError, ValueError):
            raise TokenizerError(
                f"{vocab_path} does not match {encoder_path} (merge {line!r}); use the pair from the same release"
            ) from None
        # we (and tiktoken) use "smaller merged id = learned earlier"; GPT-2's files guarantee it
        if merged <= last:
            raise TokenizerError(
                f"{encoder_path} numbers merged tokens out of merge order (merge {line!r} makes id {merged} "
                f"after id {last}); this is not a GPT-2 style vocabulary"
            )
        last = merged
    h = hashlib.sha256()
    for (a, b), m in merges.items():
        h.update(f"{a} {b} {m}\n".encode())
    for tb in token_bytes:
        h.update(tb.hex().encode() + b"\n")
    return token_bytes, merges, special, h.hexdigest()


class GPT2Tokenizer(Tokenizer):
    """GPT-2's byte-level BPE (50257 ids, ``<|endoftext|>`` = 50256).

    Args:
        encoder_path, vocab_path: the two OpenAI files (default: found by :func:`gpt2_files`).
        fast: encode with tiktoken built from the same files (identical ids, faster);
            ``False`` uses the pure-Python path written here.
    """

    kind = "gpt2"

    def __init__(
        self,
        encoder_path: str | Path | None = None,
        vocab_path: str | Path | None = None,
        fast: bool = True,
    ) -> None:
        if encoder_path is None or vocab_path is None:
            encoder_path, vocab_path = gpt2_files()
        enc, voc = Path(encoder_path), Path(vocab_path)
        for p in (enc, voc):
            if not p.is_file():
                raise TokenizerError(f"GPT-2 tokenizer file not found: {p}")
        self._set_tables(*_read_tables(str(enc), str(voc), (enc.stat().st_mtime, voc.stat().st_mtime)))
        self.fast = fast

    @classmethod
    def from_tables(cls, encoder: dict[str, int], merges: list[str], fast: bool = True,
                    source: str = "tokenizer tables") -> GPT2Tokenizer:
        """Build from the tables in memory (:meth:`tables`), no files: a model dir's
        ``tokenizer.json`` carries them, and a Hugging Face ``tokenizer.json`` holds them.

        Raises:
            TokenizerError: the tables are not a GPT-2 style byte-level BPE.
        """
        tok = cls.__new__(cls)
        tok._set_tables(*parse_tables(encoder, merges, source, source))
        tok.fast = fast
        return tok

    def tables(self) -> dict[str, Any]:
        """``{"encoder": {token string: id}, "merges": ["left right", ...]}``: the content of
        ``encoder.json`` and ``vocab.bpe`` (less its header), which :meth:`from_tables` reads.
        Built once per tokenizer (every checkpoint's tokenizer.json holds them)."""
        if getattr(self, "_tables", None) is not None:
            return self._tables
        uni = bytes_to_unicode()
        special_ids = set(self.special_tokens.values())

        def text(i: int) -> str:
            return ENDOFTEXT if i in special_ids else "".join(uni[b] for b in self._token_bytes[i])

        encoder = {text(i): i for i in range(len(self._token_bytes))}
        merges = [f"{text(a)} {text(b)}" for (a, b), _ in sorted(self._merges.items(), key=lambda kv: kv[1])]
        self._tables = {"encoder": encoder, "merges": merges}
        return self._tables

    def _set_tables(
        self, token_bytes: list[bytes], merges: dict[tuple[int, int], int], eot: int | None, sha: str
    ) -> None:
        self._token_bytes, self._merges, self._tables_sha256 = token_bytes, merges, sha
        self.special_tokens = {ENDOFTEXT: eot} if eot is not None else {}
        self._byte_ids = self._initial_byte_ids()
        self._pattern = regex.compile(GPT2_PATTERN)
        self._cache: dict[str, list[int]] = {}
        self._tiktoken: Any = None

    def _initial_byte_ids(self) -> list[int]:
        """The id of each single byte (GPT-2 does not number them 0..255 in byte order)."""
        lookup = {b: i for i, b in enumerate(self._token_bytes) if len(b) == 1}
        return [lookup[b.to_bytes(1, "big")] for b in range(256)]

    @property
    def vocab_size(self) -> int:
        return len(self._token_bytes)

    # -- encoding ---------------------------------------------------------------------------

    def _tiktoken_encoding(self) -> Any:
        """tiktoken's Encoding for these exact files (built once, offline)."""
        if self._tiktoken is None:
            import tiktoken

            ranks = {
                b: i
                for i, b in enumerate(self._token_bytes)
                if i not in self.special_tokens.values()
            }
            self._tiktoken = tiktoken.Encoding(
                name="gptforge-gpt2",
                pat_str=GPT2_PATTERN_FAST,
                mergeable_ranks=ranks,
                special_tokens=dict(self.special_tokens),
                explicit_n_vocab=self.vocab_size,
            )
        return self._tiktoken

    def _encode_chunk(self, chunk: str) -> list[int]:
        ids = self._cache.get(chunk)
        if ids is None:
            ids = bpe_merge_chunk([self._byte_ids[b] for b in chunk.encode("utf-8")], self._merges)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[chunk] = ids
        return ids

    def _encode_pure(self, text: str) -> list[int]:
        out: list[int] = []
        encode_chunk = self._encode_chunk
        for chunk in self._pattern.findall(text):
            out.extend(encode_chunk(chunk))
        return out

    def encode(self, text: str, allowed_special: str | Iterable[str] = "none") -> list[int]:
        allowed = resolve_allowed_special(allowed_special, self.special_tokens)
        if self.fast:
            enc = self._tiktoken_encoding()
            if not allowed:  # skips tiktoken's scan for special tokens
                return enc.encode_ordinary(text)
            return enc.encode(text, allowed_special=allowed, disallowed_special=())
        out: list[int] = []
        for piece, is_special in split_on_specials(text, allowed):
            out.extend([self.special_tokens[piece]] if is_special else self._encode_pure(piece))
        return out

    def encode_ordinary(self, text: str) -> list[int]:
        if self.fast:
            return self._tiktoken_encoding().encode_ordinary(text)
        return self._encode_pure(text)

    @property
    def encodes_without_gil(self) -> bool:  # type: ignore[override]
        return self.fast  # tiktoken's Rust encoder releases the GIL

    def encode_ordinary_array(self, text: str) -> np.ndarray:
        """The fast path has tiktoken fill a uint32 buffer: no Python list of ints is built."""
        if self.fast:
            # allowed_special empty and disallowed_special () : "<|endoftext|>" is plain text,
            # exactly as encode_ordinary treats it (the tests compare the two)
            return self._tiktoken_encoding().encode_to_numpy(text, disallowed_special=())
        return super().encode_ordinary_array(text)

    def encode_batch(
        self, texts: list[str], allowed_special: str | Iterable[str] = "none"
    ) -> list[list[int]]:
        """Encode many texts; the fast path spreads them over threads (tiktoken releases the GIL)."""
        allowed = resolve_allowed_special(allowed_special, self.special_tokens)
        if self.fast:
            return self._tiktoken_encoding().encode_batch(
                list(texts), allowed_special=allowed, disallowed_special=()
            )
        return [self.encode(t, allowed_special=allowed) for t in texts]

    # -- decoding ---------------------------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        table = self._token_bytes
        return b"".join(table[i] for i in check_ids(ids, len(table)))

    def to_dict(self) -> dict[str, Any]:
        """Built-in: saved by name; the files themselves are found again at load time.

        ``tables_sha256`` pins the exact vocabulary so a fingerprint changes if the files do.
        """
        return {
            "kind": self.kind,
            "vocab_size": self.vocab_size,
            "pattern": GPT2_PATTERN,
            "special_tokens": dict(self.special_tokens),
            "tables_sha256": self._tables_sha256,
        }
