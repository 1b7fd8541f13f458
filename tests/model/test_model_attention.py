"""Attention equivalences: explicit vs fused, KV cache vs full forward, padding, causality.

The explicit attention (scores, mask, softmax, weighted sum) is the reference for the
fused ``scaled_dot_product_attention`` path; the full uncached forward is the reference
for incremental decoding; a sequence run alone is the reference for the same sequence
left-padded in a batch.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gptforge.model.config import GPTConfig
from gptforge.model.gpt import GPT

# Odd shapes on purpose: T not a power of two, head size 7 with 3 heads in a 30-wide
# model (3 * 7 = 21 != 30), and a plain even shape for comparison.
SHAPES = [
    dict(n_embd=30, n_head=3, head_size=7, mlp_hidden=50),
    dict(n_embd=32, n_head=4),
    dict(n_embd=24, n_head=2, head_size=13, norm="post", activation="relu"),
]


def _pair(seed: int = 0, **shape: object) -> tuple[GPT, GPT]:
    """The same weights in an explicit-attention and an sdpa-attention model (dropout off)."""
    config = GPTConfig(vocab_size=50, block_size=24, n_layer=2, dropout=0.0, **shape)
    torch.manual_seed(seed)
    explicit = GPT(dataclasses.replace(config, attention="explicit"))
    fused = GPT(dataclasses.replace(config, attention="sdpa"))
    fused.load_state_dict(explicit.state_dict())
    return explicit.eval(), fused.eval()


def _left_padded(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch of 3 rows of lengths 11, 7, 4 left-padded to 11: ids, attention_mask, position_ids."""
    g = torch.Generator().manual_seed(seed)
    lengths = [11, 7, 4]
    T = max(lengths)
    idx = torch.zeros(len(lengths), T, dtype=torch.long)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for row, n in enumerate(lengths):
        idx[row, T - n :] = torch.randint(0, 50, (n,), generator=g)
        mask[row, T - n :] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)  # 0 at each row's first real token
    return idx, mask, position_ids


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("T", [1, 5, 13, 24])
def test_explicit_and_fused_agree_with_gradients(shape: dict, T: int) -> None:
    explicit, fused = _pair(**shape)
    explicit.train()  # dropout is 0, so train mode only turns on autograd-relevant paths
    fused.train()
    idx = torch.randint(0, 50, (2, T), generator=torch.Generator().manual_seed(T))
    targets = torch.randint(0, 50, (2, T), generator=torch.Generator().manual_seed(T + 1))
    logits_e, loss_e = explicit(idx, targets)
    logits_f, loss_f = fused(idx, targets)
    torch.testing.assert_close(logits_f, logits_e, rtol=1e-5, atol=1e-5)
    loss_e.backward()
    loss_f.backward()
    grads_e = dict(explicit.named_parameters())
    for name, p in fused.named_parameters():
        torch.testing.assert_close(p.grad, grads_e[name].grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("shape", SHAPES)
def test_padding_mask_matches_unpadded_rows(shape: dict) -> None:
    """A left-padded row gives the same logits as the row alone, for both attentions."""
    explicit, fused = _pair(**shape)
    idx, mask, pos = _left_padded()
    with torch.no_grad():
        out_e = explicit(idx, attention_mask=mask, position_ids=pos)
        out_f = fused(idx, attention_mask=mask, position_ids=pos)
        torch.testing.assert_close(out_f, out_e, rtol=1e-5, atol=1e-5)
        for row in range(idx.shape[0]):
            real = mask[row].bool()
            alone = explicit(idx[row, real][None])  # (1, n, V), no padding at all
            torch.testing.assert_close(out_e[row, real], alone[0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(out_f[row, real], alone[0], rtol=1e-5, atol=1e-5)


def test_padding_mask_gradients_agree() -> None:
    explicit, fused = _pair(**SHAPES[0])
    idx, mask, pos = _left_padded()
    targets = idx.roll(-1, dims=1).masked_fill(mask == 0, -100)
    for model in (explicit, fused):
        model.train()
        _, loss = model(idx, targets, attention_mask=mask, position_ids=pos)
        loss.backward()
    grads_e = dict(explicit.named_parameters())
    for name, p in fused.named_parameters():
        torch.testing.assert_close(p.grad, grads_e[name].grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("impl", ["explicit", "sdpa"])
@pytest.mark.parametrize("chunks", [[1] * 17, [5, 3, 1, 1, 7], [16, 1]])
def test_kv_cache_equals_full_forward(impl: str, chunks: list[int]) -> None:
    """Feeding the sequence in chunks through the cache gives the full forward's logits."""
    explicit, fused = _pair(**SHAPES[0])
    model = explicit if impl == "explicit" else fused
    idx = torch.randint(0, 50, (2, sum(chunks)), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(idx)  # (B, T, V)
        cache = model.make_kv_cache(batch_size=2)
        pieces, start = [], 0
        for n in chunks:
            pieces.append(model(idx[:, start : start + n], kv_cache=cache))
            start += n
        assert cache.pos == idx.shape[1]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["explicit", "sdpa"])
def test_kv_cache_with_left_padding(impl: str) -> None:
    """Prefill a left-padded batch, then decode one token at a time with a growing mask."""
    explicit, fused = _pair(**SHAPES[1])
    model = explicit if impl == "explicit" else fused
    idx, mask, pos = _left_padded()
    prompt = 6  # prefill the first 6 columns, then one column per step
    with torch.no_grad():
        full = model(idx, attention_mask=mask, position_ids=pos)
        cache = model.make_kv_cache(batch_size=idx.shape[0])
        outs = [model(idx[:, :prompt], kv_cache=cache, attention_mask=mask[:, :prompt], position_ids=pos[:, :prompt])]
        for t in range(prompt, idx.shape[1]):
            outs.append(
                model(idx[:, t : t + 1], kv_cache=cache, attention_mask=mask[:, : t + 1], position_ids=pos[:, t : t + 1])
            )
    real = mask.bool()
    torch.testing.assert_close(torch.cat(outs, dim=1)[real], full[real], rtol=1e-5, atol=1e-5)


def test_kv_cache_reset_and_crop_reuse_buffers() -> None:
    _, model = _pair(**SHAPES[1])
    idx = torch.randint(0, 50, (1, 10), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = model(idx)
        cache = model.make_kv_cache(batch_size=1, max_seq_len=12)
        k_buffer = cache.k.data_ptr()
        model(idx[:, :8], kv_cache=cache)
        cache.crop(5)  # roll back 3 positions and recompute them
        again = model(idx[:, 5:10], kv_cache=cache)
        assert cache.pos == 10 and cache.k.data_ptr() == k_buffer
        cache.reset()
        first = model(idx[:, :4], kv_cache=cache)
    torch.testing.assert_close(again, full[:, 5:10], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(first, full[:, :4], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["explicit", "sdpa"])
def test_causality(impl: str) -> None:
    """Changing token t changes no logits before t (and does change the logits at t)."""
    explicit, fused = _pair(**SHAPES[0])
    model = explicit if impl == "explicit" else fused
    idx = torch.randint(0, 50, (1, 20), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        base = model(idx)
        for t in (0, 7, 19):
            changed = idx.clone()
            changed[0, t] = (changed[0, t] + 1) % 50
            out = model(changed)
            torch.testing.assert_close(out[:, :t], base[:, :t], rtol=0, atol=0)
            assert not torch.allclose(out[:, t], base[:, t])


def test_last_only_and_hidden_states() -> None:
    _, model = _pair(**SHAPES[1])
    idx = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        full = model(idx)
        last = model(idx, last_only=True)
        hidden = model.hidden_states(idx)
    assert last.shape == (2, 1, 50)
    torch.testing.assert_close(last[:, 0], full[:, -1])
    torch.testing.assert_close(model.lm_head(hidden), full)


def test_kv_cache_writes_follow_reassigned_buffers() -> None:
    """The cache keeps per-layer views for its writes; a caller that sets ``k``/``v`` to other
    tensors (the server's scheduler does) must get its writes there, not in the old buffers."""
    from gptforge.model.kv_cache import KVCache

    cache = KVCache(n_layer=2, batch_size=1, n_head=2, max_seq_len=4, head_size=3)
    k1, v1 = torch.ones(1, 2, 1, 3), 2 * torch.ones(1, 2, 1, 3)
    k_all, v_all = cache.update(1, k1, v1)
    assert k_all.shape == (1, 2, 1, 3) and torch.equal(cache.k[1, :, :, 0], k1[:, :, 0])
    assert torch.equal(cache.v[1, :, :, 0], v1[:, :, 0]) and not cache.k[0].any()
    old_k = cache.k
    cache.k, cache.v = torch.zeros(2, 1, 2, 4, 3), torch.zeros(2, 1, 2, 4, 3)
    cache.advance(1)
    k_all, _ = cache.update(0, 3 * k1, v1)
    assert k_all.shape == (1, 2, 2, 3) and torch.equal(cache.k[0, :, :, 1], 3 * k1[:, :, 0])
    assert not old_k[0].any()  # nothing written into the old buffer
