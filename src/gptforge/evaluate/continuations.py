"""Log-probability of continuations given a context, with each context run once.

Completion-style scoring of a multiple-choice item (llm.c's and nanochat's HellaSwag,
lm-eval's ``loglikelihood``): the score of a continuation is the sum of its tokens'
log-probabilities given the context and the continuation's earlier tokens.

The four endings of a HellaSwag item share their context, so the context goes through
the model once and its keys/values are copied to one cache row per ending::

    contexts (N items, right-padded)  --prefill-->  KV cache (N rows)
                                                      | rows repeated per choice
    continuations (R = sum of choices, right-padded)  --one forward on the cache-->  hidden states

Padding is masked with ``attention_mask`` and every row gets its own ``position_ids``, so a
row computes exactly what the unpadded sequence ``context + continuation`` computes alone.
Only the positions that predict a continuation token go through the LM head (the largest
matrix of a small model). A context too long for the model keeps its last tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gptforge.errors import ModelError


@dataclass(frozen=True)
class Scored:
    """One continuation: summed log-probability (nats), its token count, and whether every
    token was the model's argmax (greedy decoding would have produced it)."""

    logprob: float
    tokens: int
    greedy: bool


def _truncate(context: list[int], longest: int, block_size: int, where: str) -> list[int]:
    if longest >= block_size:
        raise ModelError(
            f"{where}: a continuation of {longest} tokens leaves no room for context in the model's "
            f"block_size {block_size}"
        )
    return context[-(block_size - longest) :]


@torch.inference_mode()
def score_batch(model: torch.nn.Module, batch: Sequence[tuple[list[int], list[list[int]]]]) -> list[list[Scored]]:
    """Score the continuations of a batch of items with one prefill and one forward.

    Args:
        model: a GPT (``hidden_states`` with ``kv_cache``/``attention_mask``/``position_ids``,
            ``head`` (the LM head less vocabulary padding), ``make_kv_cache``).
        batch: per item ``(context ids, [continuation ids, ...])``; contexts and continuations
            must be non-empty, and each continuation shorter than ``block_size``.

    Returns:
        Per item, per continuation, a :class:`Scored`.
    """
    device = model.device
    block = model.config.block_size
    contexts = [_truncate(c, max(map(len, ends)), block, f"item {i}") for i, (c, ends) in enumerate(batch)]
    counts = [len(ends) for _, ends in batch]
    ends = [e for _, es in batch for e in es]
    N, R = len(batch), len(ends)
    ctx_len = torch.tensor([len(c) for c in contexts])  # (N,)
    end_len = torch.tensor([len(e) for e in ends])  # (R,)
    Lc, Le = int(ctx_len.max()), int(end_len.max())
    rows = torch.repeat_interleave(torch.arange(N), torch.tensor(counts))  # (R,) item of each continuation

    x = torch.zeros(N, Lc, dtype=torch.long)  # (N, Lc), right-padded with id 0 (masked out)
    for i, c in enumerate(contexts):
        x[i, : len(c)] = torch.tensor(c)
    ctx_mask = torch.arange(Lc)[None, :] < ctx_len[:, None]  # (N, Lc) True for real tokens
    y = torch.zeros(R, Le, dtype=torch.long)  # (R, Le)
    for r, e in enumerate(ends):
        y[r, : len(e)] = torch.tensor(e)
    end_mask = torch.arange(Le)[None, :] < end_len[:, None]  # (R, Le)

    cache = model.make_kv_cache(N, max_seq_len=Lc)
    padded = bool((ctx_len != Lc).any())
    h_ctx = model.hidden_states(
        x.to(device), kv_cache=cache, attention_mask=ctx_mask.to(device) if padded else None
    )  # (N, Lc, C)
    last = h_ctx[torch.arange(N, device=device), (ctx_len - 1).to(device)]  # (N, C): predicts each ending's 1st token

    big = model.make_kv_cache(R, max_seq_len=Lc + Le)
    index = rows.to(device)
    big.k[:, :, :, :Lc] = cache.k[:, :, :, :Lc].index_select(1, index)  # (n_layer, R, nh, Lc, hs)
    big.v[:, :, :, :Lc] = cache.v[:, :, :, :Lc].index_select(1, index)
    big.advance(Lc)
    mask = torch.cat([ctx_mask[rows], end_mask], dim=1)  # (R, Lc + Le)
    # Each continuation starts right after its own context; padded positions are clamped
    # into range (their outputs are never read).
    pos = (ctx_len[rows][:, None] + torch.arange(Le)[None, :]).clamp(max=block - 1)  # (R, Le)
    h_end = model.hidden_states(
        y.to(device), kv_cache=big, attention_mask=mask.to(device), position_ids=pos.to(device)
    )  # (R, Le, C)

    # Token k of a continuation is predicted by position k - 1 (k >= 1) of its forward,
    # token 0 by the context's last position.
    k_valid = end_mask[:, 1:]  # (R, Le - 1) positions 1..L-1 exist
    r_idx, k_idx = k_valid.nonzero(as_tuple=True)  # (M',) each
    flat = (r_idx * Le + k_idx).to(device)  # positions k_idx of row r_idx predict token k_idx + 1
    C = h_end.shape[-1]
    hidden = torch.cat([last.index_select(0, index), h_end.reshape(-1, C).index_select(0, flat)])  # (M, C)
    targets = torch.cat([y[:, 0], y[r_idx, k_idx + 1]]).to(device)  # (M,)
    owner = torch.cat([torch.arange(R), r_idx]).to(device)  # (M,) continuation of each target
    logp = F.log_softmax(model.head(hidden).float(), dim=-1)  # (M, V)
    lp = logp.gather(1, targets[:, None]).squeeze(1)  # (M,)
    miss = (logp.argmax(dim=-1) != targets).float()  # (M,)
    sums = torch.zeros(R, device=device, dtype=torch.float64).index_add_(0, owner, lp.double()).tolist()
    misses = torch.zeros(R, device=device).index_add_(0, owner, miss).tolist()

    out: list[list[Scored]] = []
    r = 0
    for n in counts:
        out.append([Scored(sums[j], int(end_len[j]), misses[j] == 0) for j in range(r, r + n)])
        r += n
    return out


def score_all(
    model: torch.nn.Module,
    encoded: Sequence[tuple[list[int], list[list[int]]]],
    batch_size: int = 8,
    on_batch: Callable[[int], None] | None = None,
) -> list[list[Scored]]:
    """:func:`score_batch` over all items, ``batch_size`` items at a time.

    Items are grouped by length (so a batch pads little; a batch whose longest context plus
    longest continuation would not fit ``block_size`` is cut short) and the results put back
    in order.
    ``on_batch(n)`` is called after each batch with its item count (a progress bar).
    """
    block = model.config.block_size
    order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i][0]), max(map(len, encoded[i][1]))))
    results: list[list[Scored] | None] = [None] * len(encoded)

    def lengths(i: int) -> tuple[int, int]:
        ctx, ends = encoded[i]
        longest = max(map(len, ends))
        return min(len(ctx), block - longest), longest  # the context after truncation

    chunk: list[int] = []
    lc = le = 0
    for i in [*order, None]:
        if i is not None:
            c, e = lengths(i)
            # the padded batch (longest context + longest continuation) must fit the model's context
            if not chunk or (len(chunk) < batch_size and max(lc, c) + max(le, e) <= block):
                chunk.append(i)
                lc, le = max(lc, c), max(le, e)
                continue
        if not chunk:  # no items at all
            break
        for j, scored in zip(chunk, score_batch(model, [encoded[j] for j in chunk]), strict=True):
            results[j] = scored
        if on_batch is not None:
            on_batch(len(chunk))
        if i is not None:
            chunk, (lc, le) = [i], lengths(i)
    return results  # type: ignore[return-value]
