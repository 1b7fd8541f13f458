"""The fast byte-level BPE trainer shared by the ``bpe`` and ``regex-bpe`` kinds.

Textbook BPE training recounts every adjacent pair of the whole corpus before
each merge: O(corpus x merges). Here the pairs are counted once, and each merge
only touches the places where the merged pair occurs:

1. **Deduplicate chunks.** The corpus arrives as ``{chunk bytes: how often it
   occurs}`` (with a split pattern, "the" appears thousands of times but is
   stored once, with its count as a weight). Without a pattern, the whole text
   is one chunk.
2. **One flat linked list** of tokens for all distinct chunks (``tok``,
   ``nxt``, ``prv`` arrays; ``-1`` ends a chunk, so pairs never span chunks),
   each position weighted by its chunk's count.
3. **Counts and an index:** ``counts[pair]`` = weighted occurrences, and
   ``where[pair]`` = the positions where the pair starts. Positions are only
   ever appended: one whose pair has since changed is stale and is skipped
   when visited (cheaper than deleting it from the list at every change).
4. **A max-heap with lazy deletion** picks the next pair: every time a count
   changes, ``(-count, pair)`` is pushed; a popped entry whose count is no
   longer current is stale and skipped.
5. **Merging** pair (a, b) -> n visits ``where[(a, b)]`` left to right. At each
   still-valid position the neighbour pairs lose one occurrence
   ((x, a) and (b, y)) and gain the new ones ((x, n) and (n, y)).

Tie-break (identical in the naive reference trainer of the tests): the pair
with the **highest count** wins; among equal counts, the **smallest pair**
``(a, b)`` in tuple order (smallest ``a``, then smallest ``b``). Merges stop
early, with a warning, when no pair is left.
"""

from __future__ import annotations

import heapq
import logging
from array import array
from collections.abc import Callable, Iterable, Mapping

from gptforge.tokenizer.bpe_core import Pair

logger = logging.getLogger(__name__)

# on_merge(index, pair, new_id, count): called after each merge (the CLI's --verbose uses it)
MergeCallback = Callable[[int, Pair, int, int], None]


def train_bpe(
    chunks: Mapping[bytes, int] | Iterable[tuple[bytes, int]],
    num_merges: int,
    on_merge: MergeCallback | None = None,
    first_id: int = 256,
) -> list[Pair]:
    """Learn up to ``num_merges`` merges from weighted chunks of bytes.

    Args:
        chunks: distinct chunk -> number of occurrences (its weight), as a mapping or as
            ``(chunk, count)`` pairs (read once, so a generator can free them as it goes).
        num_merges: merges to learn; merge ``i`` creates id ``first_id + i``.
        on_merge: optional progress callback ``(i, pair, new_id, count)``.
        first_id: id of the first merged token (256: after the single bytes).

    Returns:
        The merges in learning order, as ``(left id, right id)`` pairs. Fewer than
        ``num_merges`` if the corpus runs out of pairs (a warning is logged).

    The Wikipedia example "aaabdaaabac" (a=97, b=98): "aa" occurs 4 times -> 256;
    then "ab" (97, 98) and "Za" (256, 97) both occur twice, and the smaller pair
    (97, 98) wins -> 257; then (256, 257) "ZY" -> 258.

    >>> train_bpe({b"aaabdaaabac": 1}, 3)
    [(97, 97), (97, 98), (256, 257)]
    """
    # Compact arrays (4 or 8 bytes a position) rather than lists of int objects (~36 bytes):
    # at 300 MB of text the positions number in the tens of millions.
    tok = array("i")
    nxt = array("i")
    prv = array("i")
    weight = array("q")
    for chunk, count in chunks.items() if isinstance(chunks, Mapping) else chunks:
        if count <= 0 or not chunk:
            continue
        start = len(tok)
        n = len(chunk)
        tok.extend(chunk)
        nxt.extend(range(start + 1, start + n + 1))
        nxt[-1] = -1
        prv.append(-1)
        prv.extend(range(start, start + n - 1))
        weight.extend([count] * n)

    counts: dict[Pair, int] = {}
    where: dict[Pair, array] = {}  # pair -> positions (int32 array)
    for i, j in enumerate(nxt):
        if j >= 0:
            pair = (tok[i], tok[j])
            counts[pair] = counts.get(pair, 0) + weight[i]
            s = where.get(pair)
            if s is None:
                where[pair] = array("i", (i,))
            else:
                s.append(i)
    heap = [(-c, p) for p, c in counts.items()]
    heapq.heapify(heap)

    merges: list[Pair] = []
    while len(merges) < num_merges:
        while heap:
            neg, pair = heapq.heappop(heap)
            if counts.get(pair) == -neg:
                break
        else:
            logger.warning(
                "the corpus has no pairs left to merge after %d of %d merges; the vocabulary is smaller "
                "than asked (use a larger corpus for a larger vocabulary)",
                len(merges),
                num_merges,
            )
            break
        a, b = pair
        new = first_id + len(merges)
        count = -neg
        # count changes are summed per pair during the pass and applied once at the end,
        # so a pair touched at 10,000 places costs one heap push, not 10,000
        delta: dict[Pair, int] = {}
        for i in sorted(where.pop(pair)):
            j = nxt[i]
            # an earlier merge in this same pass may have consumed i or j ("aaa": (0,1) then not (1,2))
            if tok[i] != a or j < 0 or tok[j] != b:
                continue
            w = weight[i]
            p = prv[i]
            if p >= 0:
                old = (tok[p], a)
                delta[old] = delta.get(old, 0) - w
                made = (tok[p], new)
                delta[made] = delta.get(made, 0) + w
                if (s := where.get(made)) is None:
                    where[made] = array("i", (p,))
                else:
                    s.append(p)
            k = nxt[j]
            if k >= 0:
                old = (b, tok[k])
                delta[old] = delta.get(old, 0) - w
                made = (new, tok[k])
                delta[made] = delta.get(made, 0) + w
                if (s := where.get(made)) is None:
                    where[made] = array("i", (i,))
                else:
                    s.append(i)
                prv[k] = i
            tok[i] = new
            tok[j] = -1
            nxt[i] = k
        counts.pop(pair, None)
        where.pop(pair, None)
        for q, d in delta.items():
            if d == 0 or q == pair:
                continue
            c = counts.get(q, 0) + d
            if c > 0:
                counts[q] = c
                heapq.heappush(heap, (-c, q))
            else:
                counts.pop(q, None)
                where.pop(q, None)
        merges.append(pair)
        if on_merge is not None:
            on_merge(len(merges) - 1, pair, new, count)
    return merges
