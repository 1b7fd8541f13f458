"""The tied embedding's sparse-row gradient: same numbers as the dense one, always dense for the optimizer."""

from __future__ import annotations

import pytest
import torch

from gptforge.model.config import GPTConfig
from gptforge.model.gpt import GPT


def tiny(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=97, block_size=16, n_layer=2, n_head=2, n_embd=32, **kw))


def grads(model: GPT, sparse: bool, accumulate: int = 1) -> dict[str, torch.Tensor]:
    model.sparse_embedding_grad = sparse
    model.zero_grad(set_to_none=True)
    g = torch.Generator().manual_seed(1)
    for _ in range(accumulate):
        idx = torch.randint(0, 97, (3, 16), generator=g)
        idx[0, :4] = 5  # repeated ids: their rows must be summed
        _, loss = model(idx, torch.randint(0, 97, (3, 16), generator=g))
        loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("accumulate", [1, 3])
def test_sparse_lookup_gradient_equals_dense(accumulate: int) -> None:
    model = tiny()
    ref = grads(model, sparse=False, accumulate=accumulate)  # reference: the plain dense lookup
    got = grads(model, sparse=True, accumulate=accumulate)
    assert got.keys() == ref.keys()
    for name in ref:
        assert got[name].layout == torch.strided, name  # what AdamW and clipping receive
        torch.testing.assert_close(got[name], ref[name], rtol=1e-6, atol=1e-7, msg=name)


def test_untied_and_hidden_states_keep_dense_gradients() -> None:
    """Without the LM head's dense gradient to join, the lookup must not go sparse."""
    untied = tiny(tie_weights=False)
    assert not untied._sparse_embedding_grad()
    g = grads(untied, sparse=True)
    assert g["transformer.wte.weight"].layout == torch.strided
    tied = tiny()
    tied.hidden_states(torch.randint(0, 97, (2, 8))).sum().backward()  # a classifier's path
    assert tied.transformer.wte.weight.grad.layout == torch.strided


def test_no_sparse_lookup_without_grad() -> None:
    model = tiny()
    with torch.no_grad():
        assert not model._sparse_embedding_grad()
    model.transformer.wte.weight.requires_grad_(False)
    assert not model._sparse_embedding_grad()
