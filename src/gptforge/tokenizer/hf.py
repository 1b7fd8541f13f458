"""``hf-bpe``: a byte-level BPE trained with the Hugging Face ``tokenizers`` library.

This is the GPT-1 style seed tokenizer (a 15k-20k vocabulary with a padding and
an end-of-text token), trained by the Rust library instead of our own trainer.
The Hugging Face tokenizer's own JSON is embedded as a string inside our
``tokenizer.json``, so it travels with a model dir and loads through
:func:`gptforge.load_tokenizer` like every other kind.

We keep gptforge's special-token rule: special tokens are produced only where
the caller allows them (``allowed_special``), so the library's matching of
special tokens in raw text is switched off and done by us instead.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from gptforge.errors import TokenizerError
from gptforge.tokenizer.base import Tokenizer, check_ids, resolve_allowed_special, split_on_specials

logger = logging.getLogger(__name__)

DEFAULT_SPECIALS = ("<pad>", "<|endoftext|>")


class HFTokenizer(Tokenizer):
    """Wraps a Hugging Face ``tokenizers.Tokenizer`` (byte-level BPE) behind our interface.

    Args:
        hf_json: the Hugging Face tokenizer, serialized (``Tokenizer.to_str()``).
    """

    kind = "hf-bpe"

    def __init__(self, hf_json: str) -> None:
        from tokenizers import Tokenizer as HFTok

        try:
            self._tok = HFTok.from_str(hf_json)
        except Exception as e:  # the library raises plain Exception subclasses for bad JSON
            raise TokenizerError(f"cannot read the embedded Hugging Face tokenizer: {e}") from None
        self._json = hf_json
        # our own special-token handling (see module docstring)
        try:
            self._tok.encode_special_tokens = True
        except AttributeError:
            raise TokenizerError(
                "hf-bpe needs a Hugging Face `tokenizers` with `encode_special_tokens`; "
                "run `pip install -U tokenizers`"
            ) from None
        self.special_tokens = {
            t.content: i
            for i, t in sorted(self._tok.get_added_tokens_decoder().items())
            if t.special
        }
        self._vocab = self._build_byte_table()

    def _build_byte_table(self) -> list[bytes]:
        """Each id's raw bytes: byte-level tokens are spelled with GPT-2's byte->unicode table."""
        from gptforge.tokenizer.gpt2 import bytes_to_unicode

        byte_of = {ch: b for b, ch in bytes_to_unicode().items()}
        size = self._tok.get_vocab_size(with_added_tokens=True)
        table = [b""] * size
        for text, i in self._tok.get_vocab(with_added_tokens=True).items():
            if text in self.special_tokens:
                table[i] = text.encode("utf-8")
            elif all(ch in byte_of for ch in text):
                table[i] = bytes(byte_of[ch] for ch in text)
            else:
                raise TokenizerError(
                    f"the Hugging Face tokenizer has token {text!r}, which is not byte-level; "
                    "hf-bpe supports byte-level BPE tokenizers only"
                )
        return table

    @classmethod
    def train(
        cls,
        texts: str | Sequence[str],
        vocab_size: int,
        specials: Iterable[str] = DEFAULT_SPECIALS,
    ) -> HFTokenizer:
        """Train a byte-level BPE with ``tokenizers`` (GPT-2's split regex, all 256 bytes kept)."""
        from tokenizers import Tokenizer as HFTok
        from tokenizers import decoders, models, pre_tokenizers, trainers

        texts = [texts] if isinstance(texts, str) else list(texts)
        specials = list(dict.fromkeys(specials))
        if not any(texts):
            raise TokenizerError("the corpus is empty; give text to learn merges from")
        minimum = 256 + len(specials)
        if vocab_size < minimum:
            raise TokenizerError(
                f"vocab size {vocab_size} is too small for a byte-level BPE: it needs at least {minimum} "
                f"(256 byte tokens + {len(specials)} special tokens); pass --vocab-size {minimum} or more"
            )
        tok = HFTok(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        # cut the specials out so the trainer never learns pieces of them
        allowed = set(specials)
        pieces = (
            piece
            for t in texts
            for piece, is_special in split_on_specials(t, allowed)
            if not is_special
        )
        tok.train_from_iterator(pieces, trainer)
        got = tok.get_vocab_size()
        if got < vocab_size:
            logger.warning(
                "the corpus allowed only %d of the %d ids asked for; the vocabulary is smaller",
                got,
                vocab_size,
            )
        return cls(tok.to_str())

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    def encode_ordinary(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode(self, text: str, allowed_special: str | Iterable[str] = "none") -> list[int]:
        allowed = resolve_allowed_special(allowed_special, self.special_tokens)
        out: list[int] = []
        for piece, is_special in split_on_specials(text, allowed):
            out.extend([self.special_tokens[piece]] if is_special else self.encode_ordinary(piece))
        return out

    def encode_batch(
        self, texts: list[str], allowed_special: str | Iterable[str] = "none"
    ) -> list[list[int]]:
        """Without specials, the library encodes the batch on all cores."""
        allowed = resolve_allowed_special(allowed_special, self.special_tokens)
        if not allowed:
            return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]
        return [self.encode(t, allowed_special=allowed) for t in texts]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        table = self._vocab
        return b"".join(table[i] for i in check_ids(ids, len(table)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "vocab_size": self.vocab_size,
            "special_tokens": dict(self.special_tokens),
            "hf_tokenizer": self._json,
        }

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> HFTokenizer:
        return cls(obj["hf_tokenizer"])
