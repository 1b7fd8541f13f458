"""Generation: sampling functions, the KV-cache decoding engine, text streaming, chat.

``config`` holds :class:`GenerationConfig` (no torch import); ``sampling`` is pure
functions on logits; ``engine`` turns a model and prompt ids into new ids (prefill
once, then one token per step); ``text`` adds tokenization, UTF-8-safe streaming and
stop strings; ``chat`` is the terminal chat session; ``cpu_decoding`` lays weights out
for fast batch-1 decoding on the CPU. Names below are imported lazily.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "GenerationConfig": "gptforge.generate.config",
    "generate": "gptforge.generate.engine",
    "stream_tokens": "gptforge.generate.engine",
    "prepare_for_decoding": "gptforge.generate.cpu_decoding",
    "TextChunk": "gptforge.generate.text",
    "TextStream": "gptforge.generate.text",
    "generate_text": "gptforge.generate.text",
    "generate_texts": "gptforge.generate.text",
    "stream_chunks": "gptforge.generate.text",
    "stream_text": "gptforge.generate.text",
    "ChatSession": "gptforge.generate.chat",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gptforge.generate' has no attribute {name!r}")
