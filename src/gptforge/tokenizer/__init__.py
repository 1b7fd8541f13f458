"""Tokenizers: char, bpe, regex-bpe, gpt2 and hf-bpe behind one interface.

``load_tokenizer(spec)`` accepts a ``tokenizer.json`` file, a folder holding one,
or a built-in name (``gpt2``).
"""

from __future__ import annotations

from gptforge.tokenizer.base import Tokenizer


def load_tokenizer(spec: str, **kwargs):  # noqa: ANN201 - defined in files.py
    """Load a tokenizer from a spec; see :func:`gptforge.tokenizer.files.load_tokenizer`."""
    from gptforge.tokenizer.files import load_tokenizer as _load

    return _load(spec, **kwargs)


__all__ = ["Tokenizer", "load_tokenizer"]
