"""The interface every gptforge tokenizer implements, and small pure helpers.

A tokenizer maps text to a list of integer ids and back. All kinds (``char``,
``bpe``, ``regex-bpe``, ``gpt2``, ``hf-bpe``) share this interface so the rest
of gptforge never needs to know which one it holds.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np


class Tokenizer(ABC):
    """Text <-> ids.

    Attributes:
        kind: the tokenizer kind, as written in ``tokenizer.json``.
        special_tokens: special token string -> id (e.g. ``{"<|endoftext|>": 50256}``).
    """

    kind: str = ""
    special_tokens: dict[str, int]
    #: True when :meth:`encode_ordinary_array` runs outside Python's GIL (a Rust or C
    #: encoder), so threads in one process parallelise it; ``gptforge prepare`` then
    #: uses threads instead of worker processes (no copying of text and ids between
    #: processes).
    encodes_without_gil: bool = False

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids, specials included (ids are ``0 .. vocab_size - 1``)."""

    @property
    def eot_id(self) -> int | None:
        """The end-of-text id that separates documents, or None if the tokenizer has none."""
        for name in ("<|endoftext|>", "</s>", "<eos>", "[EOS]"):
            if name in self.special_tokens:
                return self.special_tokens[name]
        return None

    @abstractmethod
    def encode(self, text: str, allowed_special: str | Iterable[str] = "none") -> list[int]:
        """Encode ``text``. Special tokens are produced only if listed in ``allowed_special``
        (``"all"``, ``"none"`` or a set of strings); otherwise they encode as ordinary text."""

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode ``text`` with no special tokens."""
        return self.encode(text, allowed_special="none")

    def encode_ordinary_array(self, text: str) -> np.ndarray:
        """:meth:`encode_ordinary` as a uint32 array (dataset preparation writes arrays).

        Subclasses whose encoder can fill an array directly override this to skip
        building a Python list of ints (a few percent of the encode time).
        """
        return np.array(self.encode_ordinary(text), dtype=np.uint32)

    def encode_batch(
        self, texts: list[str], allowed_special: str | Iterable[str] = "none"
    ) -> list[list[int]]:
        """Encode several texts (subclasses may parallelise)."""
        return [self.encode(t, allowed_special=allowed_special) for t in texts]

    @abstractmethod
    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The raw UTF-8 bytes of ``ids`` (a token may hold part of a character)."""

    def decode(self, ids: Iterable[int]) -> str:
        """Decode ids to text; invalid UTF-8 (a cut multi-byte char) becomes U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """The ``tokenizer.json`` content (kind, vocab_size, merges, pattern, specials...)."""

    def fingerprint(self) -> str:
        """A stable short hash of everything that determines the ids (not file paths)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def save(self, path: str | Path) -> Path:
        """Write ``tokenizer.json`` (``path`` is the file or a folder to hold it); returns the file."""
        from gptforge.tokenizer.files import save_tokenizer

        return save_tokenizer(self, path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, vocab_size={self.vocab_size})"


# ---------------------------------------------------------------------------
# Helpers shared by the kinds (added by the tokenizer issue; the interface above is unchanged)


def resolve_allowed_special(
    allowed_special: str | Iterable[str], special_tokens: dict[str, int]
) -> set[str]:
    """The set of special-token strings that may be produced from raw text.

    ``"all"`` allows every special token, ``"none"`` (the default everywhere)
    allows none, and any other iterable names the allowed ones. This mirrors
    tiktoken's ``allowed_special``: a special token that is not allowed is
    encoded as the ordinary text it spells, so user text can never inject an
    end-of-text marker by accident.

    >>> sorted(resolve_allowed_special("all", {"<|endoftext|>": 5}))
    ['<|endoftext|>']
    >>> resolve_allowed_special("none", {"<|endoftext|>": 5})
    set()
    """
    if isinstance(allowed_special, str):
        if allowed_special == "all":
            return set(special_tokens)
        if allowed_special == "none":
            return set()
        allowed = {allowed_special}
    else:
        allowed = set(allowed_special)
    unknown = sorted(allowed - set(special_tokens))
    if unknown:
        from gptforge.errors import TokenizerError

        raise TokenizerError(
            f"allowed_special names {unknown}, which are not special tokens of this tokenizer "
            f"(it has {sorted(special_tokens)}); pass 'all', 'none' or a subset of those"
        )
    return allowed


def split_on_specials(text: str, allowed: set[str]) -> list[tuple[str, bool]]:
    """Cut ``text`` around occurrences of the ``allowed`` special tokens.

    Returns ``(piece, is_special)`` pairs in order; ordinary pieces are never empty.
    Longer specials win where two could match at the same place.

    >>> split_on_specials("a<|endoftext|>b", {"<|endoftext|>"})
    [('a', False), ('<|endoftext|>', True), ('b', False)]
    """
    if not allowed or not any(s in text for s in allowed):
        return [(text, False)] if text else []
    import re

    pattern = "(" + "|".join(re.escape(s) for s in sorted(allowed, key=len, reverse=True)) + ")"
    out: list[tuple[str, bool]] = []
    for i, piece in enumerate(re.split(pattern, text)):
        if i % 2:
            out.append((piece, True))
        elif piece:
            out.append((piece, False))
    return out


def check_ids(ids: Iterable[int], vocab_size: int) -> list[int]:
    """Return ``ids`` as a list, raising TokenizerError on an id outside ``0..vocab_size-1``."""
    out = [int(i) for i in ids]
    for i in out:
        if not 0 <= i < vocab_size:
            from gptforge.errors import TokenizerError

            raise TokenizerError(
                f"token id {i} is out of range for this tokenizer (valid ids are 0..{vocab_size - 1}); "
                "were the ids made with another tokenizer?"
            )
    return out
