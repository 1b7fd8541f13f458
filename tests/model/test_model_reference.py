"""Our GPT-2 (pre-LN) and GPT-1 (post-LN) variants against Hugging Face transformers.

Weights are copied by hand here (HF's Conv1D stores weights as (in, out), so the four
matrices per block are transposed); the general importer lives in model/hf_gpt2.py and
has its own tests. Tiny random configs, fp32, eval mode.
"""

from __future__ import annotations

import pytest
import torch

from gptforge.model.config import GPTConfig
from gptforge.model.gpt import GPT

transformers = pytest.importorskip("transformers")

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _copy_blocks(ours: GPT, hf_blocks: torch.nn.ModuleList) -> None:
    for i, hf_block in enumerate(hf_blocks):
        for name, tensor in hf_block.state_dict().items():
            if name.endswith("attn.bias") or name.endswith("masked_bias"):
                continue  # HF's causal-mask buffers, not weights
            target = ours.get_parameter(f"transformer.h.{i}.{name}")
            target.data.copy_(tensor.t() if name in CONV1D else tensor)


def _gpt2_pair(attention: str) -> tuple[GPT, torch.nn.Module]:
    torch.manual_seed(0)
    hf_config = transformers.GPT2Config(
        vocab_size=97, n_positions=20, n_embd=32, n_layer=2, n_head=4,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )
    hf = transformers.GPT2LMHeadModel(hf_config).eval()
    ours = GPT(GPTConfig(vocab_size=97, block_size=20, n_layer=2, n_head=4, n_embd=32, attention=attention)).eval()
    ours.transformer.wte.weight.data.copy_(hf.transformer.wte.weight)
    ours.transformer.wpe.weight.data.copy_(hf.transformer.wpe.weight)
    ours.transformer.ln_f.load_state_dict(hf.transformer.ln_f.state_dict())
    _copy_blocks(ours, hf.transformer.h)
    return ours, hf


@pytest.mark.parametrize("attention", ["explicit", "sdpa"])
def test_gpt2_logits_and_loss_match_transformers(attention: str) -> None:
    ours, hf = _gpt2_pair(attention)
    idx = torch.randint(0, 97, (3, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(idx, labels=idx)
        logits, loss = ours(idx[:, :-1], idx[:, 1:])  # HF shifts the labels itself
        full = ours(idx)
    torch.testing.assert_close(full, ref.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, ref.loss, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("attention", ["explicit", "sdpa"])
def test_gpt2_left_padding_matches_transformers(attention: str) -> None:
    ours, hf = _gpt2_pair(attention)
    idx = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(idx)
    mask[1, :4] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = hf(idx, attention_mask=mask, position_ids=pos).logits
        out = ours(idx, attention_mask=mask, position_ids=pos)
    real = mask.bool()
    torch.testing.assert_close(out[real], ref[real], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activation", ["gelu", "relu"])
@pytest.mark.parametrize("attention", ["explicit", "sdpa"])
def test_gpt1_post_ln_matches_transformers(activation: str, attention: str) -> None:
    """GPT-1: post-LN blocks, no final LayerNorm, tied head. HF's afn "gelu" is the tanh GELU."""
    torch.manual_seed(0)
    hf_config = transformers.OpenAIGPTConfig(
        vocab_size=89, n_positions=16, n_embd=24, n_layer=2, n_head=3, afn=activation,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )
    hf = transformers.OpenAIGPTLMHeadModel(hf_config).eval()
    ours = GPT(
        GPTConfig(
            vocab_size=89, block_size=16, n_layer=2, n_head=3, n_embd=24, norm="post",
            activation=activation, attention=attention,
        )
    ).eval()
    ours.transformer.wte.weight.data.copy_(hf.transformer.tokens_embed.weight)
    ours.transformer.wpe.weight.data.copy_(hf.transformer.positions_embed.weight)
    _copy_blocks(ours, hf.transformer.h)
    idx = torch.randint(0, 89, (2, 13), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = hf(idx).logits
        out = ours(idx)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # And the preset's shape is GPT-1's: HF counts the same number of parameters.
    with torch.device("meta"):
        ours_full = GPT(GPTConfig.from_preset("gpt1"))
        hf_full = transformers.OpenAIGPTLMHeadModel(transformers.OpenAIGPTConfig())
    assert ours_full.num_params() == sum(p.numel() for p in hf_full.parameters())
