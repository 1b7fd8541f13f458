"""Text in, text out: prompts, UTF-8-safe streaming and stop strings over the engine.

A byte-level BPE token may hold only part of a character: "é" is two UTF-8
bytes, an emoji four, and GPT-2's tokenizer often splits them across tokens.
Decoding each token on its own would print U+FFFD garbage. The
:class:`TextStream` keeps the raw bytes, emits only complete characters, and
holds back a trailing incomplete sequence (at most 3 bytes) until the next
token completes it. It also holds back text that could be the start of a stop
string, so a stop string is never printed, even when it arrives split over
several tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gptforge.errors import GptforgeError, TokenizerError
from gptforge.generate.engine import GenerationConfig, stream_tokens

logger = logging.getLogger(__name__)


def utf8_complete_length(data: bytes) -> int:
    """Length of the longest prefix of ``data`` that does not end inside a UTF-8 character.

    Only a trailing, *incomplete but so far valid* multi-byte sequence is held back;
    invalid bytes are let through (they decode to U+FFFD) so a broken stream never stalls.

    Example: ``"é".encode()`` is ``b"\\xc3\\xa9"``; for ``b"a\\xc3"`` the answer is 1.
    """
    n = len(data)
    for back in range(1, min(3, n) + 1):  # a lead byte at most 3 bytes from the end
        b = data[n - back]
        if b & 0b1100_0000 == 0b1000_0000:  # continuation byte: keep looking for the lead
            continue
        need = 2 if b & 0b1110_0000 == 0b1100_0000 else 3 if b & 0b1111_0000 == 0b1110_0000 else (
            4 if b & 0b1111_1000 == 0b1111_0000 else 1)  # fmt: skip
        return n - back if need > back else n
    return n


def _held_stop_prefix(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of ``text`` could begin a stop string (and must wait)."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


class TextStream:
    """Token ids in, printable text out, honouring stop strings.

    Usage::

        ts = TextStream(tokenizer, stop_strings=["\\n\\n"])
        for ids in ...:
            piece = ts.push(ids)   # text that is safe to show now ("" if none)
            if ts.stopped: break
        piece = ts.finish()        # whatever was held back, at the end
    """

    def __init__(self, tokenizer: Any, stop_strings: Sequence[str] | None = None) -> None:
        self.tokenizer = tokenizer
        self.stops = [s for s in (stop_strings or []) if s]
        self._pending = b""  # bytes not yet decoded (an incomplete character)
        self._text = ""  # decoded text not yet emitted (may begin a stop string)
        self.stopped = False  # a stop string was found
        self.emitted = ""  # everything returned so far

    def push(self, ids: Sequence[int]) -> str:
        """Add token ids; return the text that can be shown now."""
        if self.stopped:
            return ""
        self._pending += self.tokenizer.decode_bytes(list(ids))
        cut = utf8_complete_length(self._pending)
        self._text += self._pending[:cut].decode("utf-8", errors="replace")
        self._pending = self._pending[cut:]
        return self._release(final=False)

    def finish(self) -> str:
        """The end of generation: flush what was held back (an incomplete char becomes U+FFFD)."""
        if not self.stopped and self._pending:
            self._text += self._pending.decode("utf-8", errors="replace")
        self._pending = b""
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        if self.stopped:
            return ""
        hits = [i for i in (self._text.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self._text, self.stopped = self._text[: min(hits)], "", True
        else:
            hold = 0 if final else _held_stop_prefix(self._text, self.stops)
            out, self._text = self._text[: len(self._text) - hold], self._text[len(self._text) - hold :]
        self.emitted += out
        return out


@dataclass
class TextChunk:
    """One piece of streamed text. The last chunk has ``finish_reason`` set:
    ``"stop"`` (a stop token or stop string) or ``"length"`` (max_new_tokens)."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


def encode_prompt(tokenizer: Any, prompt: str | Sequence[int], allowed_special: str = "none") -> list[int]:
    """Prompt text (or ids) -> ids. An empty prompt starts from the end-of-text token."""
    ids = list(prompt) if not isinstance(prompt, str) else tokenizer.encode(prompt, allowed_special=allowed_special)
    if not ids:
        if tokenizer.eot_id is None:
            raise TokenizerError("the prompt is empty and the tokenizer has no end-of-text token; give a prompt")
        ids = [tokenizer.eot_id]
    return ids


def _stop_ids(tokenizer: Any, config: GenerationConfig) -> list[int] | None:
    ids = list(config.stop_token_ids or [])
    if config.stop_at_eot and tokenizer.eot_id is not None and tokenizer.eot_id not in ids:
        ids.append(tokenizer.eot_id)
    return ids or None


def stream_chunks(
    model: torch.nn.Module,
    tokenizer: Any,
    prompt: str | Sequence[int],
    config: GenerationConfig | None = None,
    allowed_special: str = "none",
) -> Iterator[TextChunk]:
    """Stream the continuation of one prompt as text chunks (see :class:`TextChunk`).

    Stop tokens (``config.stop_token_ids`` and, with ``stop_at_eot``, the tokenizer's
    end-of-text) end generation and are not shown; stop strings end it and are cut off.
    """
    config = config or GenerationConfig()
    if config.num_samples != 1:
        raise GptforgeError("stream_text/generate_text produce one text; use generate_texts for num_samples > 1")
    ids = encode_prompt(tokenizer, prompt, allowed_special)
    stop_ids = _stop_ids(tokenizer, config)
    cfg = config.replace(stop_token_ids=stop_ids)
    stream = TextStream(tokenizer, config.stop_strings)
    idx = torch.tensor([ids], dtype=torch.long)
    n = 0
    reason = "length"
    tokens = stream_tokens(model, idx, cfg)
    try:
        for step in tokens:
            tok = int(step[0])
            n += 1
            if stop_ids and tok in stop_ids:
                reason = "stop"
                break
            piece = stream.push([tok])
            if stream.stopped:
                reason = "stop"
                if piece:
                    yield TextChunk(piece, None, len(ids), n)
                break
            if piece:
                yield TextChunk(piece, None, len(ids), n)
    finally:
        tokens.close()  # restores the model's train/eval mode at once
    yield TextChunk(stream.finish(), reason, len(ids), n)


def stream_text(
    model: torch.nn.Module, tokenizer: Any, prompt: str | Sequence[int], config: GenerationConfig | None = None
) -> Iterator[str]:
    """Yield the continuation of ``prompt`` piece by piece; only whole characters, never a stop string."""
    for chunk in stream_chunks(model, tokenizer, prompt, config):
        if chunk.text:
            yield chunk.text


def generate_text(
    model: torch.nn.Module, tokenizer: Any, prompt: str | Sequence[int], config: GenerationConfig | None = None
) -> str:
    """The continuation of ``prompt`` as one string (same text as joining :func:`stream_text`)."""
    return "".join(stream_text(model, tokenizer, prompt, config))


def generate_texts(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[str | Sequence[int]],
    config: GenerationConfig | None = None,
) -> list[str]:
    """Continue several prompts in one left-padded batch.

    Returns:
        ``len(prompts) * config.num_samples`` texts: the samples of prompt 0, then of prompt 1...
    """
    config = config or GenerationConfig()
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    if not encoded:
        return []
    T = max(len(ids) for ids in encoded)
    pad = tokenizer.eot_id if tokenizer.eot_id is not None else 0
    idx = torch.tensor([[pad] * (T - len(ids)) + ids for ids in encoded], dtype=torch.long)  # (B, T)
    mask = torch.tensor([[0] * (T - len(ids)) + [1] * len(ids) for ids in encoded], dtype=torch.long)
    stop_ids = _stop_ids(tokenizer, config)
    cfg = config.replace(stop_token_ids=stop_ids)
    streams = [TextStream(tokenizer, config.stop_strings) for _ in range(len(encoded) * config.num_samples)]
    done = [False] * len(streams)
    for step in stream_tokens(model, idx, cfg, attention_mask=mask):
        for r, tok in enumerate(step.tolist()):
            if done[r]:
                continue
            if stop_ids and tok in stop_ids:
                done[r] = True
                continue
            streams[r].push([tok])
            done[r] = streams[r].stopped
        if all(done):
            break
    for s in streams:
        s.finish()
    return [s.emitted for s in streams]
