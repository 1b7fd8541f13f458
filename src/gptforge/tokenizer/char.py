"""The character tokenizer: one id per distinct character of a corpus.

This is nanoGPT's ``shakespeare_char`` vocabulary: the sorted set of the
characters in the training text (65 for tinyshakespeare), id = position in that
sorted list. Optional special tokens get the ids after the characters. It is
the simplest tokenizer that works, and makes a good first model: small
vocabulary, long sequences.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from gptforge.errors import TokenizerError
from gptforge.tokenizer.base import Tokenizer, check_ids, resolve_allowed_special, split_on_specials

logger = logging.getLogger(__name__)


class CharTokenizer(Tokenizer):
    """Maps each character of a fixed alphabet to its index.

    Args:
        chars: the alphabet, in id order (distinct single characters).
        special_tokens: special token string -> id; ids must follow the characters.
    """

    kind = "char"

    def __init__(self, chars: Sequence[str], special_tokens: dict[str, int] | None = None) -> None:
        chars = list(chars)
        if not chars:
            raise TokenizerError(
                "a char tokenizer needs at least one character; the corpus is empty"
            )
        bad = [c for c in chars if not isinstance(c, str) or len(c) != 1]
        if bad or len(set(chars)) != len(chars):
            raise TokenizerError(
                f"char tokenizer alphabet must be distinct single characters (bad: {bad[:5]!r})"
            )
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}
        self.special_tokens = dict(special_tokens or {})
        expected = list(range(len(chars), len(chars) + len(self.special_tokens)))
        if sorted(self.special_tokens.values()) != expected:
            raise TokenizerError(
                f"char tokenizer special token ids must be {expected} (after the {len(chars)} characters), "
                f"got {self.special_tokens}"
            )
        self._itob = [c.encode("utf-8") for c in chars] + [b""] * len(self.special_tokens)
        for s, i in self.special_tokens.items():
            self._itob[i] = s.encode("utf-8")

    @classmethod
    def train(cls, text: str, specials: Iterable[str] = ()) -> CharTokenizer:
        """Build the vocabulary of ``text``: its sorted distinct characters, then ``specials``."""
        if not text:
            raise TokenizerError(
                "the corpus is empty; a char tokenizer needs some text to take its characters from"
            )
        chars = sorted(set(text))
        specials = list(dict.fromkeys(specials))
        return cls(chars, {s: len(chars) + i for i, s in enumerate(specials)})

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + len(self.special_tokens)

    def _encode_plain(self, text: str) -> list[int]:
        stoi = self.stoi
        try:
            return [stoi[c] for c in text]
        except KeyError:
            pos = next(i for i, c in enumerate(text) if c not in stoi)
            c = text[pos]
            raise TokenizerError(
                f"character {c!r} (U+{ord(c):04X}) at position {pos} is not in this char tokenizer's "
                f"vocabulary of {len(self.chars)} characters; build the tokenizer from a corpus that "
                "contains it, or use a byte-level tokenizer (bpe, regex-bpe, gpt2)"
            ) from None

    def encode(self, text: str, allowed_special: str | Iterable[str] = "none") -> list[int]:
        allowed = resolve_allowed_special(allowed_special, self.special_tokens)
        if not allowed:
            return self._encode_plain(text)
        out: list[int] = []
        for piece, is_special in split_on_specials(text, allowed):
            out.extend([self.special_tokens[piece]] if is_special else self._encode_plain(piece))
        return out

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        table = self._itob
        return b"".join(table[i] for i in check_ids(ids, len(table)))

    def decode(self, ids: Iterable[int]) -> str:
        # every id is a whole character, so no bytes round trip is needed
        return self.decode_bytes(ids).decode("utf-8")

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "vocab_size": self.vocab_size,
            "chars": list(self.chars),
            "special_tokens": dict(self.special_tokens),
        }

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> CharTokenizer:
        return cls(obj["chars"], obj.get("special_tokens") or {})
