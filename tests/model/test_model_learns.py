"""The model can learn: a tiny GPT overfits one fixed batch to near-zero loss."""

from __future__ import annotations

import math

import pytest
import torch

from gptforge.model.config import GPTConfig
from gptforge.model.gpt import GPT


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_tiny_model_overfits_a_fixed_batch(norm: str) -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32, norm=norm))
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 64, (4, 16), generator=g)
    targets = torch.randint(0, 64, (4, 16), generator=g)  # random targets: only memorising works
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    _, first = model(idx, targets)
    assert abs(first.item() - math.log(64)) < 0.5  # starts near uniform, ln(64) = 4.16
    for _ in range(80):
        _, loss = model(idx, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    assert loss.item() < 0.05, loss.item()
