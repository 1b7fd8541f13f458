"""Log-probability of continuations given a context, with each context run once.

Completion-style scoring of a multiple-choice item (llm.c's and nanochat's HellaSwag,
lm-eval's ``loglikelihood``): the score of a continuation is the sum of its tokens'
log-probabilities given the context and the continuation's earlier tokens.

The four endings of a HellaSwag item share their context, so the context goes through
the model once and its keys/values are copied to one cache row per ending::

    contexts (N items, right-padded)  --prefill-->  KV cache (N rows)
                                                      | rows copied per choice
    continuations sorted by length, G at a time      --a forward on the cache-->  hidden states

Padding is masked with ``attention_mask`` and every row gets its own ``position_ids``, so a
row computes exactly what the unpadded sequence ``context + continuation`` computes alone.
Only the positions that predict a continuation token go through the LM head (the largest
matrix of a small model). A context too long for the model keeps its last tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from gptforge.errors import ModelError
from gptforge.model.kv_cache import KVCache


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


# Rows of logits turned into float32 at a time: a chunk (32 x 50,257 floats, 6 MB) stays in
# cache between its conversion, its logsumexp, its gather and its argmax.
SCORE_CHUNK = 32
# Continuations per forward after the shared prefill (see score_batch), and items per batch:
# a larger batch lets the length sort put endings of nearly equal length together. Measured
# on HellaSwag, gpt2-124M shape, bf16, 2-core Intel Xeon: 32 items / 16 rows 0.055 s per item,
# 8 / 8 0.063, 8 / 32 0.071 (one forward for all of a batch's endings padded them ~35%).
ROWS_PER_FORWARD = 16
TASK_BATCH_SIZE = 32


def _target_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(target) in float32 and whether the target was not the argmax, from (M, V) logits.

    Why in chunks: ``log_softmax`` of the whole (M, V) matrix in float32 writes and reads
    it from memory several times (for HellaSwag's ~900 positions per batch of a gpt2-sized
    model, 180 MB each pass), which cost a quarter of the evaluation on a 2-core CPU. Only
    ``logsumexp`` and one gathered logit per row are needed.

    Returns:
        (lp (M,) float32, miss (M,) float32: 1.0 where the argmax is another token)
    """
    lps, misses = [], []
    for i in range(0, logits.shape[0], SCORE_CHUNK):
        chunk = logits[i : i + SCORE_CHUNK].float()  # (m, V)
        t = targets[i : i + SCORE_CHUNK]  # (m,)
        top, top_id = chunk.max(dim=-1)  # (m,) each; the first index of the largest, as argmax
        lse = top + (chunk - top[:, None]).exp_().sum(dim=-1).log()  # (m,) logsumexp, one max pass fewer
        lps.append(chunk.gather(1, t[:, None]).squeeze(1) - lse)  # (m,)
        misses.append((top_id != t).float())  # (m,)
    return torch.cat(lps), torch.cat(misses)


@torch.inference_mode()
def score_batch(
    model: torch.nn.Module, batch: Sequence[tuple[list[int], list[list[int]]]], rows_per_forward: int | None = None
) -> list[list[Scored]]:
    """Score the continuations of a batch of items with one prefill, then a forward per row group.

    Args:
        model: a GPT (``hidden_states`` with ``kv_cache``/``attention_mask``/``position_ids``,
            ``head`` (the LM head less vocabulary padding), ``make_kv_cache``).
        batch: per item ``(context ids, [continuation ids, ...])``; contexts and continuations
            must be non-empty, and each continuation shorter than ``block_size``.
        rows_per_forward: continuations per forward (default ``ROWS_PER_FORWARD``). They are sorted by length first, so a
            group pads to its own longest one (a HellaSwag item's four endings differ in
            length: padding all of a batch's endings to the longest one computed ~35% more
            ending positions than exist).

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
    Lc = int(ctx_len.max())
    rows = torch.repeat_interleave(torch.arange(N), torch.tensor(counts))  # (R,) item of each continuation

    x = torch.zeros(N, Lc, dtype=torch.long)  # (N, Lc), right-padded with id 0 (masked out)
    for i, c in enumerate(contexts):
        x[i, : len(c)] = torch.tensor(c)
    ctx_mask = torch.arange(Lc)[None, :] < ctx_len[:, None]  # (N, Lc) True for real tokens
    cache = model.make_kv_cache(N, max_seq_len=Lc)
    padded = bool((ctx_len != Lc).any())
    h_ctx = model.hidden_states(
        x.to(device), kv_cache=cache, attention_mask=ctx_mask.to(device) if padded else None
    )  # (N, Lc, C)
    last = h_ctx[torch.arange(N, device=device), (ctx_len - 1).to(device)]  # (N, C): predicts each ending's 1st token

    per_forward = rows_per_forward or ROWS_PER_FORWARD
    sums, misses = [0.0] * R, [0.0] * R
    by_length = sorted(range(R), key=lambda r: len(ends[r]))
    for g in range(0, R, per_forward):
        group = by_length[g : g + per_forward]
        lp, miss = _score_group(model, cache, last, ctx_mask, ctx_len, rows[group], [ends[r] for r in group])
        for j, r in enumerate(group):
            sums[r], misses[r] = lp[j], miss[j]

    out: list[list[Scored]] = []
    r = 0
    for n in counts:
        out.append([Scored(sums[j], len(ends[j]), misses[j] == 0) for j in range(r, r + n)])
        r += n
    return out


def _score_group(
    model: torch.nn.Module, cache: KVCache, last: torch.Tensor, ctx_mask: torch.Tensor, ctx_len: torch.Tensor,
    items: torch.Tensor, ends: list[list[int]],
) -> tuple[list[float], list[float]]:
    """Summed log-probabilities and greedy misses of G continuations after their contexts.

    Args:
        cache: the contexts' KV cache (N rows, Lc positions); last: (N, C) each context's
            last hidden state; ctx_mask: (N, Lc); ctx_len: (N,); items: (G,) the context row
            of each continuation; ends: G continuations (token ids).

    Returns:
        (per continuation summed log-prob, per continuation count of non-argmax tokens)
    """
    device = model.device
    block = model.config.block_size
    G, Lc = len(ends), ctx_mask.shape[1]
    index = items.to(device)
    # A continuation's last token is only ever a target: the forward takes tokens 0..L-2,
    # whose outputs predict tokens 1..L-1 (token 0 is predicted by the context's last state).
    feed_len = torch.tensor([len(e) - 1 for e in ends])  # (G,)
    Lf = int(feed_len.max())
    hidden, targets, owner = [last.index_select(0, index)], [torch.tensor([e[0] for e in ends])], [torch.arange(G)]
    if Lf > 0:
        full = torch.zeros(G, Lf + 1, dtype=torch.long)  # (G, Lf + 1) every token, right-padded
        for r, e in enumerate(ends):
            full[r, : len(e)] = torch.tensor(e)
        y = full[:, :Lf]  # (G, Lf) what the forward reads (padding masked out)
        feed_mask = torch.arange(Lf)[None, :] < feed_len[:, None]  # (G, Lf)
        big = model.make_kv_cache(G, max_seq_len=Lc + Lf)
        big.k[:, :, :, :Lc] = cache.k[:, :, :, :Lc].index_select(1, index)  # (n_layer, G, nh, Lc, hs)
        big.v[:, :, :, :Lc] = cache.v[:, :, :, :Lc].index_select(1, index)
        big.advance(Lc)
        mask = torch.cat([ctx_mask[items], feed_mask], dim=1)  # (G, Lc + Lf)
        # Each continuation starts right after its own context; padded positions are clamped
        # into range (their outputs are never read).
        pos = (ctx_len[items][:, None] + torch.arange(Lf)[None, :]).clamp(max=block - 1)  # (G, Lf)
        h_end = model.hidden_states(
            y.to(device), kv_cache=big, attention_mask=mask.to(device), position_ids=pos.to(device)
        )  # (G, Lf, C)
        r_idx, k_idx = feed_mask.nonzero(as_tuple=True)  # (M',) position k_idx of row r_idx predicts token k_idx + 1
        hidden.append(h_end.reshape(-1, h_end.shape[-1]).index_select(0, (r_idx * Lf + k_idx).to(device)))
        targets.append(full[r_idx, k_idx + 1])
        owner.append(r_idx)
    lp, miss = _target_logprobs(model.head(torch.cat(hidden)), torch.cat(targets).to(device))  # (M,) each
    owner_all = torch.cat(owner).to(device)  # (M,) continuation of each target
    sums = torch.zeros(G, device=device, dtype=torch.float64).index_add_(0, owner_all, lp.double()).tolist()
    misses = torch.zeros(G, device=device).index_add_(0, owner_all, miss).tolist()
    return sums, misses


def score_all(
    model: torch.nn.Module,
    encoded: Sequence[tuple[list[int], list[list[int]]]],
    batch_size: int = TASK_BATCH_SIZE,
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
