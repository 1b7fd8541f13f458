"""Where to cut a long token sequence into model-sized windows so each token is scored once.

A model with context ``block_size`` cannot read a long text at once. Cutting it into
disjoint blocks is fast but unfair: the first tokens of every block are predicted
from almost no context. A *strided sliding window* moves the window ``stride``
tokens at a time and scores only the targets that the previous window did not, so
every target (after the first ``block_size``) is predicted with at least
``block_size - stride`` tokens of context. ``stride == block_size`` is the disjoint
case; a smaller stride costs ``block_size / stride`` times more compute.
(The Hugging Face "Perplexity of fixed-length models" guide explains the same idea.)
"""

from __future__ import annotations

from typing import NamedTuple

from gptforge.errors import ConfigError


class Window(NamedTuple):
    """Inputs ``tokens[start:end]``, targets ``tokens[start + 1:end + 1]``; the targets at
    positions ``>= score_from`` (absolute target index, i.e. token position) are scored."""

    start: int
    end: int
    score_from: int


def sliding_windows(n_tokens: int, block_size: int, stride: int) -> list[Window]:
    """Plan the windows over ``n_tokens`` tokens (``n_tokens - 1`` targets: token 0 has no context).

    Every window has ``min(block_size, n_tokens - 1)`` inputs, so windows batch together;
    the last one is moved back to end exactly at the last target.

    >>> sliding_windows(10, 4, 2)
    [Window(start=0, end=4, score_from=1), Window(start=2, end=6, score_from=5), Window(start=4, end=8, score_from=7), Window(start=5, end=9, score_from=9)]

    Tokens 1..4 are scored by the first window, 5..6 by the second, 7..8 by the third,
    9 by the last: each exactly once.

    Raises:
        ConfigError: for a stride outside ``1 .. block_size``.
    """
    if block_size < 1:
        raise ConfigError(f"block_size must be >= 1, got {block_size}")
    if not 1 <= stride <= block_size:
        raise ConfigError(f"stride must be between 1 and block_size ({block_size}), got {stride}")
    last = n_tokens - 1  # inputs end at `last`, so the final target is token `last`
    if last < 1:
        return []
    length = min(block_size, last)
    windows = [Window(0, length, 1)]
    scored_to = length  # targets 1..scored_to are done
    while scored_to < last:
        end = min(scored_to + stride, last)
        windows.append(Window(end - length, end, scored_to + 1))
        scored_to = end
    return windows
