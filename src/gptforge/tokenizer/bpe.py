"""Byte-level BPE trained here: the ``bpe`` and ``regex-bpe`` kinds.

* ``bpe`` (no split pattern): the text's UTF-8 bytes are one long sequence and
  merges may join anything, spaces and punctuation included. Vocab 500 =
  256 bytes + 244 merges is the classic teaching tokenizer.
* ``regex-bpe``: the text is first cut into chunks by the GPT-2 or GPT-4 split
  pattern, and merges never cross a chunk boundary (so "dog." and "dog!" share
  the token "dog"). Special tokens (e.g. ``<|endoftext|>``) get the last ids.

Ids: 0..255 are the single bytes, ``256 + i`` is the token made by merge ``i``,
then the special tokens. The trainer is :func:`gptforge.tokenizer.bpe_train.train_bpe`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import regex

from gptforge.errors import TokenizerError
from gptforge.tokenizer.base import Tokenizer, check_ids, resolve_allowed_special, split_on_specials
from gptforge.tokenizer.bpe_core import Pair, bpe_merge_chunk
from gptforge.tokenizer.bpe_train import MergeCallback, train_bpe
from gptforge.tokenizer.chunk_count import count_chunks
from gptforge.tokenizer.gpt2 import GPT2_PATTERN

logger = logging.getLogger(__name__)

# GPT-4's (cl100k) split pattern, as tiktoken spells it today: case-insensitive contractions,
# letters with at most one leading non-letter, numbers of at most 3 digits, punctuation runs,
# trailing whitespace at the very end kept whole, newlines kept apart. Possessive quantifiers
# (`++`, `?+`) never backtrack, which is both faster and part of the definition.
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}

_CACHE_LIMIT = 200_000


class BPETokenizer(Tokenizer):
    """A byte-level BPE given its merges (and, for ``regex-bpe``, its split pattern).

    Args:
        merges: ``(left, right)`` pairs in learning order; merge ``i`` makes id ``256 + i``.
        pattern: the split regex, or None for the plain ``bpe`` kind.
        special_tokens: special token -> id; ids follow the merged tokens.
        pattern_name: ``"gpt2"``/``"gpt4"`` when ``pattern`` is one of those (informative).
    """

    def __init__(
        self,
        merges: Sequence[Pair],
        pattern: str | None = None,
        special_tokens: dict[str, int] | None = None,
        pattern_name: str | None = None,
    ) -> None:
        self.kind = "bpe" if pattern is None else "regex-bpe"
        self.merges: dict[Pair, int] = {}
        self._vocab: list[bytes] = [bytes([b]) for b in range(256)]
        for i, (a, b) in enumerate(merges):
            a, b = int(a), int(b)
            if not (0 <= a < 256 + i and 0 <= b < 256 + i):
                raise TokenizerError(
                    f"merge {i} ({a}, {b}) refers to a token that does not exist yet"
                )
            self.merges[(a, b)] = 256 + i
            self._vocab.append(self._vocab[a] + self._vocab[b])
        self.pattern = pattern
        self.pattern_name = pattern_name
        self._regex = regex.compile(pattern) if pattern is not None else None
        self.special_tokens = dict(special_tokens or {})
        base = len(self._vocab)
        expected = list(range(base, base + len(self.special_tokens)))
        if sorted(self.special_tokens.values()) != expected:
            raise TokenizerError(
                f"special token ids must be {expected} (after the merged tokens), got {self.special_tokens}"
            )
        for s, _ in sorted(self.special_tokens.items(), key=lambda kv: kv[1]):
            self._vocab.append(s.encode("utf-8"))
        self._cache: dict[str, list[int]] = {}

    # -- training ---------------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        texts: str | Iterable[str],
        vocab_size: int,
        pattern: str | None = None,
        specials: Iterable[str] = (),
        on_merge: MergeCallback | None = None,
        workers: int = 1,
    ) -> BPETokenizer:
        """Learn a tokenizer of ``vocab_size`` ids (bytes + merges + specials) from ``texts``.

        Args:
            texts: the corpus (a string or several documents; merges never join two documents).
            vocab_size: total ids: 256 bytes + merges + special tokens.
            pattern: ``"gpt2"``, ``"gpt4"``, a regex, or None for the plain ``bpe`` kind.
            specials: special tokens (they are cut out of the corpus before counting).
            on_merge: called after each merge ``(i, pair, new_id, count)``.
            workers: processes that split and count the corpus (it is read as an
                iterable, document by document, and counted in bounded batches; see
                :mod:`gptforge.tokenizer.chunk_count`).
        """
        texts = [texts] if isinstance(texts, str) else texts
        specials = list(dict.fromkeys(specials))
        if pattern is None and specials:
            logger.info("the plain bpe kind also supports special tokens; they get the last ids")
        minimum = 256 + len(specials)
        if vocab_size < minimum:
            raise TokenizerError(
                f"vocab size {vocab_size} is too small for a byte-level BPE: it needs at least {minimum} "
                f"(256 byte tokens + {len(specials)} special tokens); pass --vocab-size {minimum} or more"
            )
        pattern_name = pattern if pattern in PATTERNS else None
        pattern_str = PATTERNS.get(pattern, pattern) if pattern is not None else None
        if pattern_str is not None:
            try:
                regex.compile(pattern_str)  # a bad pattern fails here, with its message
            except regex.error as e:
                raise TokenizerError(
                    f"split pattern {pattern!r} is not a valid regex ({e}); use gpt2, gpt4 or a valid regex"
                ) from None
        seen = [False]

        def documents() -> Iterator[str]:
            for text in texts:
                seen[0] = seen[0] or bool(text)
                yield text

        counts = count_chunks(documents(), pattern_str, specials, workers=workers)
        if not seen[0]:
            raise TokenizerError("the corpus is empty; give text to learn merges from")

        def as_bytes() -> Iterator[tuple[bytes, int]]:  # one chunk at a time, then the counts go
            for w, c in counts.items():
                yield w.encode("utf-8"), c
            counts.clear()

        merges = train_bpe(as_bytes(), vocab_size - minimum, on_merge=on_merge)
        first_special = 256 + len(merges)
        return cls(
            merges,
            pattern_str,
            {s: first_special + i for i, s in enumerate(specials)},
            pattern_name,
        )

    # -- encoding ---------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    def token_bytes(self, i: int) -> bytes:
        """The bytes of token ``i``."""
        return self._vocab[check_ids([i], len(self._vocab))[0]]

    def _encode_chunk(self, chunk: str) -> list[int]:
        ids = self._cache.get(chunk)
        if ids is None:
            ids = bpe_merge_chunk(list(chunk.encode("utf-8")), self.merges)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[chunk] = ids
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        if self._regex is None:
            return bpe_merge_chunk(list(text.encode("utf-8")), self.merges)
        out: list[int] = []
        encode_chunk = self._encode_chunk
        for chunk in self._regex.findall(text):
            out.extend(encode_chunk(chunk))
        return out

    def encode(self, text: str, allowed_special: str | Iterable[str] = "none") -> list[int]:
        allowed = resolve_allowed_special(allowed_special, self.special_tokens)
        out: list[int] = []
        for piece, is_special in split_on_specials(text, allowed):
            out.extend([self.special_tokens[piece]] if is_special else self.encode_ordinary(piece))
        return out

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        table = self._vocab
        return b"".join(table[i] for i in check_ids(ids, len(table)))

    # -- files ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "vocab_size": self.vocab_size,
            "merges": [list(p) for p in self.merges],
            "special_tokens": dict(self.special_tokens),
        }
        if self.pattern is not None:
            out["pattern"] = self.pattern
            out["pattern_name"] = self.pattern_name
        return out

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> BPETokenizer:
        kind = obj["kind"]
        pattern = obj.get("pattern")
        if kind == "regex-bpe" and not pattern:
            raise ValueError("a regex-bpe tokenizer needs its split pattern")
        tok = cls(
            [tuple(m) for m in obj["merges"]],
            pattern if kind == "regex-bpe" else None,
            obj.get("special_tokens") or {},
            obj.get("pattern_name"),
        )
        if obj.get("vocab_size", tok.vocab_size) != tok.vocab_size:
            raise ValueError(
                f"vocab_size {obj['vocab_size']} does not match the merges and specials ({tok.vocab_size})"
            )
        return tok
