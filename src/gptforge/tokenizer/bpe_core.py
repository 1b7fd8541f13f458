"""The small pure functions of byte-pair encoding, shared by every BPE kind.

A merge table maps an adjacent pair of ids to the id of the token that joins
them, ``(left, right) -> merged``. Merges are applied in the order they were
learned; every kind here numbers a merged token after the tokens it joins, so
"learned earlier" is simply "smaller merged id" and no separate rank is needed.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

Pair = tuple[int, int]

# Chunks longer than this use the heap-based merge (O(n log n)) instead of the
# simple "rescan every round" loop, which is quicker for the short chunks that a
# split pattern produces but quadratic on one long chunk (the plain `bpe` kind).
_LONG_CHUNK = 64


def get_stats(
    ids: Iterable[int], counts: dict[Pair, int] | None = None, weight: int = 1
) -> dict[Pair, int]:
    """Count each adjacent pair of ids (adding ``weight`` per occurrence into ``counts``).

    >>> get_stats([97, 97, 97, 98, 100, 97, 97, 97, 98, 97, 99])
    {(97, 97): 4, (97, 98): 2, (98, 100): 1, (100, 97): 1, (98, 97): 1, (97, 99): 1}

    ``(97, 97)`` ("aa") occurs 4 times: overlapping occurrences all count, as
    they do in every BPE trainer.
    """
    counts = {} if counts is None else counts
    ids = list(ids)
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + weight
    return counts


def merge(ids: list[int], pair: Pair, new_id: int) -> list[int]:
    """Replace every occurrence of ``pair`` in ``ids`` by ``new_id``, scanning left to right.

    >>> merge([97, 97, 97, 98, 100], (97, 97), 256)
    [256, 97, 98, 100]

    Overlaps resolve leftmost first: "aaa" becomes ("aa", "a"), never ("a", "aa").
    """
    out: list[int] = []
    i, n = 0, len(ids)
    a, b = pair
    while i < n:
        if i < n - 1 and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def bpe_merge_chunk(ids: list[int], merges: dict[Pair, int]) -> list[int]:
    """Apply learned merges to one chunk: repeatedly merge the earliest-learned pair present.

    Args:
        ids: the chunk's starting tokens (one per byte).
        merges: ``(left, right) -> merged id``; a smaller merged id was learned earlier.

    Returns:
        The chunk's final token ids.

    >>> bpe_merge_chunk([97, 97, 97, 98], {(97, 97): 256, (256, 97): 257, (97, 98): 258})
    [257, 98]

    Round 1: (97, 97) is the earliest merge; left to right it turns "aaab" into
    [256, 97, 98]. Round 2: the pairs present are (256, 97) -> 257 and
    (97, 98) -> 258, and 257 was learned first. Round 3: nothing left to merge.
    """
    if len(ids) < 2:
        return list(ids)
    if len(ids) > _LONG_CHUNK:
        return _merge_long(ids, merges)
    get = merges.get
    while len(ids) >= 2:
        best_pair: Pair | None = None
        best_id = -1
        for pair in zip(ids, ids[1:]):
            m = get(pair)
            if m is not None and (best_pair is None or m < best_id):
                best_pair, best_id = pair, m
        if best_pair is None:
            break
        ids = merge(ids, best_pair, best_id)
    return ids


def _merge_long(ids: list[int], merges: dict[Pair, int]) -> list[int]:
    """Same result as the rescanning loop, in O(n log n): a linked list plus a heap of pairs.

    The heap holds ``(merged id, position)`` for every mergeable adjacent pair.
    Popping in that order applies merges in learning order and, within one
    merge, left to right, which is exactly what the rescanning loop does
    (a merge creates a token whose pairs can only have a *later* merged id, so
    they never jump ahead of the merge being applied). Stale entries (a
    neighbour changed since the push) are skipped when popped.
    """
    n = len(ids)
    tok = list(ids)
    nxt = list(range(1, n + 1))
    nxt[-1] = -1
    prv = list(range(-1, n - 1))
    get = merges.get
    heap: list[tuple[int, int]] = []
    for i in range(n - 1):
        m = get((tok[i], tok[i + 1]))
        if m is not None:
            heap.append((m, i))
    heapq.heapify(heap)
    while heap:
        m, i = heapq.heappop(heap)
        j = nxt[i]
        if tok[i] < 0 or j < 0 or get((tok[i], tok[j])) != m:
            continue  # stale: i was absorbed, or its right neighbour changed
        tok[i] = m
        tok[j] = -1  # absorbed into i
        k = nxt[j]
        nxt[i] = k
        if k >= 0:
            prv[k] = i
            mk = get((m, tok[k]))
            if mk is not None:
                heapq.heappush(heap, (mk, i))
        p = prv[i]
        if p >= 0:
            mp = get((tok[p], m))
            if mp is not None:
                heapq.heappush(heap, (mp, p))
    return [t for t in tok if t >= 0]
