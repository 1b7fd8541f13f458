"""On a CUDA device (``pytest -m gpu``): the fused path in bf16 against the explicit one in
fp32, and torch.compile against eager. Skipped without a GPU."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gptforge.model.config import GPTConfig
from gptforge.model.gpt import GPT

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _models() -> tuple[GPT, GPT]:
    config = GPTConfig(vocab_size=512, block_size=128, n_layer=2, n_head=4, n_embd=128)
    torch.manual_seed(0)
    explicit = GPT(dataclasses.replace(config, attention="explicit")).cuda().eval()
    fused = GPT(dataclasses.replace(config, attention="sdpa")).cuda().eval()
    fused.load_state_dict(explicit.state_dict())
    return explicit, fused


def test_fused_bf16_close_to_explicit_fp32() -> None:
    explicit, fused = _models()
    idx = torch.randint(0, 512, (4, 128), device="cuda")
    with torch.no_grad():
        ref = explicit(idx)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = fused(idx)
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)


def test_compiled_matches_eager() -> None:
    _, fused = _models()
    idx = torch.randint(0, 512, (4, 128), device="cuda")
    targets = torch.randint(0, 512, (4, 128), device="cuda")
    with torch.no_grad():
        logits, loss = fused(idx, targets)
        logits_c, loss_c = torch.compile(fused)(idx, targets)
    torch.testing.assert_close(logits_c, logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(loss_c, loss, rtol=1e-4, atol=1e-4)
