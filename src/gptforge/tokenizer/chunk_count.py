"""Counting a corpus's chunks for BPE training: streamed, in bounded batches, on N processes.

BPE training needs only ``{chunk: occurrences}`` (see :mod:`gptforge.tokenizer.bpe_train`),
so the corpus never has to be in memory at once: documents are read one by one, grouped
into batches of about ``BATCH_CHARS`` characters, and each batch is split and counted on
its own (``regex.findall`` + ``Counter``) before its counts are added to the total. Memory
then grows with the number of **distinct** chunks (the total ``Counter``) and one batch,
not with the corpus. With ``workers`` > 1 the batches are counted by that many processes
(``fork``; at most ``2 * workers`` batches in flight, so reading stays ahead of counting
without filling memory) and their counts are added in corpus order, so the result, its
insertion order included, is the one a single process gives.

Documents are never cut: merges never join two documents, and with a split pattern a cut
inside a document could change the chunks next to it.
"""

from __future__ import annotations

import multiprocessing
from collections import Counter, deque
from collections.abc import Iterable, Iterator

from gptforge.tokenizer.base import split_on_specials

BATCH_CHARS = 8 << 20  # characters per counted batch (about 8 MB of ASCII text)

_COMPILED: dict[str, object] = {}  # pattern -> compiled regex, per process


def count_batch(texts: list[str], pattern: str | None, specials: frozenset[str]) -> Counter[str]:
    """Chunk counts of a few documents; special tokens are cut out, never counted.

    Without a pattern a document's pieces between specials are whole chunks (the ``bpe``
    kind); with one, the pattern's matches are.

    >>> count_batch(["ab ab<|endoftext|>c"], r" ?\\w+", frozenset({"<|endoftext|>"}))
    Counter({' ab': 1, 'ab': 1, 'c': 1})
    """
    counts: Counter[str] = Counter()
    findall = None
    if pattern is not None:
        if pattern not in _COMPILED:
            import regex

            _COMPILED[pattern] = regex.compile(pattern)
        findall = _COMPILED[pattern].findall
    for text in texts:
        for piece, is_special in split_on_specials(text, specials):
            if is_special:
                continue
            if findall is None:
                counts[piece] += 1
            else:
                counts.update(findall(piece))
    return counts


def batches(texts: Iterable[str], batch_chars: int = BATCH_CHARS) -> Iterator[list[str]]:
    """Whole documents grouped into lists of about ``batch_chars`` characters (read lazily)."""
    batch: list[str] = []
    size = 0
    for text in texts:
        if not text:
            continue
        batch.append(text)
        size += len(text)
        if size >= batch_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _count_args(args: tuple) -> Counter[str]:
    return count_batch(*args)


def count_chunks(
    texts: Iterable[str],
    pattern: str | None,
    specials: Iterable[str] = (),
    workers: int = 1,
    batch_chars: int = BATCH_CHARS,
) -> Counter[str]:
    """``{chunk: occurrences}`` over every document of ``texts`` (see the module docstring).

    Args:
        texts: documents (any iterable: a generator that reads files keeps memory bounded).
        pattern: the split regex, or None for whole pieces between special tokens.
        specials: special tokens, cut out of the text before counting.
        workers: processes that split and count (1: this process).

    Returns:
        A Counter in order of first occurrence in the corpus, whatever ``workers`` is.
    """
    specials = frozenset(specials)
    total: Counter[str] = Counter()
    jobs = ((b, pattern, specials) for b in batches(texts, batch_chars))
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        for job in jobs:
            total.update(count_batch(*job))
        return total
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pending: deque = deque()
        for job in jobs:
            pending.append(pool.apply_async(_count_args, (job,)))
            if len(pending) >= 2 * workers:
                total.update(pending.popleft().get())
        while pending:
            total.update(pending.popleft().get())
    return total
