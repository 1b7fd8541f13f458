"""Weight-only quantization (int8 per channel, int4 group-wise) by module swap.

``quantize(model, "int8")`` swaps the model's ``nn.Linear`` layers for
:class:`QuantLinear`; ``save_quantized`` writes a model dir that ``load_model``
reads back quantized. Names are imported lazily so that ``gptforge.quantize.spec``
(used by the CLI before anything heavy) does not pull in torch.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "quantize": "gptforge.quantize.convert",
    "save_quantized": "gptforge.quantize.convert",
    "set_backend": "gptforge.quantize.convert",
    "is_quantized": "gptforge.quantize.convert",
    "QuantLinear": "gptforge.quantize.modules",
    "QuantEmbedding": "gptforge.quantize.modules",
    "METHODS": "gptforge.quantize.spec",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gptforge.quantize' has no attribute {name!r}")
