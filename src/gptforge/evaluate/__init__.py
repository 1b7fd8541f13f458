"""Evaluation of a language model on held-out text: loss, perplexity, bits per byte.

``evaluate_tokens(model, tokens, block_size, stride, batch_size)`` is the library entry
point (``gptforge eval`` and the quantization report call it); ``sliding_windows``
plans the windows.
"""

from gptforge.evaluate.perplexity import (
    evaluate_text,
    evaluate_tokens,
    text_tokens,
    token_byte_lengths,
)
from gptforge.evaluate.windows import Window, sliding_windows

__all__ = ["Window", "evaluate_text", "evaluate_tokens", "sliding_windows", "text_tokens", "token_byte_lengths"]
