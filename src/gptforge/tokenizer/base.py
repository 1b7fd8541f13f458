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


class Tokenizer(ABC):
    """Text <-> ids.

    Attributes:
        kind: the tokenizer kind, as written in ``tokenizer.json``.
        special_tokens: special token string -> id (e.g. ``{"<|endoftext|>": 50256}``).
    """

    kind: str = ""
    special_tokens: dict[str, int]

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

    def encode_batch(self, texts: list[str], allowed_special: str | Iterable[str] = "none") -> list[list[int]]:
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
