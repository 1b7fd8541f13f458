"""Generation: sampling functions, the KV-cache decoding engine, text streaming, chat.

``sampling`` is pure functions on logits; ``engine`` turns a model and prompt ids
into new ids (prefill once, then one token per step); ``text`` adds tokenization,
UTF-8-safe streaming and stop strings; ``chat`` is the terminal chat loop.
"""

from __future__ import annotations

from gptforge.generate.engine import GenerationConfig, generate, stream_tokens
from gptforge.generate.text import (
    TextChunk,
    TextStream,
    generate_text,
    generate_texts,
    stream_chunks,
    stream_text,
)

__all__ = [
    "GenerationConfig",
    "TextChunk",
    "TextStream",
    "generate",
    "generate_text",
    "generate_texts",
    "stream_chunks",
    "stream_text",
    "stream_tokens",
]
