"""gptforge: build GPT language models from scratch, and understand every line.

Public API (imported lazily so that ``import gptforge`` and ``gptforge --help``
stay fast and have no side effects)::

    from gptforge import GPT, GPTConfig, load_model, load_tokenizer
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["GPT", "GPTConfig", "load_model", "load_tokenizer", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from gptforge.model.config import GPTConfig
    from gptforge.model.gpt import GPT
    from gptforge.model.loading import load_model
    from gptforge.tokenizer import load_tokenizer

_LAZY = {
    "GPT": ("gptforge.model.gpt", "GPT"),
    "GPTConfig": ("gptforge.model.config", "GPTConfig"),
    "load_model": ("gptforge.model.loading", "load_model"),
    "load_tokenizer": ("gptforge.tokenizer", "load_tokenizer"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        return getattr(importlib.import_module(module_name), attr)
    raise AttributeError(f"module 'gptforge' has no attribute {name!r}")
