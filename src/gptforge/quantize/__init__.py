"""Weight-only quantization (int8 per channel, int4 group-wise) by module swap.

``quantize(model, "int8")`` swaps the model's ``nn.Linear`` layers for
:class:`QuantLinear`; ``save_quantized`` writes a model dir that ``load_model``
reads back quantized.
"""

from gptforge.quantize.convert import is_quantized, quantize, save_quantized, set_backend
from gptforge.quantize.modules import METHODS, QuantEmbedding, QuantLinear

__all__ = ["METHODS", "QuantEmbedding", "QuantLinear", "is_quantized", "quantize", "save_quantized", "set_backend"]
