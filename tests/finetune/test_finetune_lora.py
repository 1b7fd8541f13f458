"""LoRA: a zero B is a no-op, merging equals the adapted forward, only adapters train."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from gptforge import GPT, GPTConfig
from gptforge.errors import ConfigError
from gptforge.finetune.lora import (
    LoRAEmbedding,
    LoRALinear,
    apply_lora,
    count_trainable,
    merge_lora,
)


def _tiny(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=61, block_size=16, n_layer=2, n_head=2, n_embd=32)).eval()


def test_zero_b_leaves_outputs_unchanged() -> None:
    base = _tiny()
    ref = _tiny()  # same seed: an untouched copy as the reference
    idx = torch.randint(0, 61, (3, 12))
    wrapped = apply_lora(base, rank=4, alpha=8.0)
    assert len(wrapped) == 2 * 4  # c_attn, attn.c_proj, c_fc, mlp.c_proj per block
    assert all(float(m.lora_A.detach().abs().sum()) > 0 for m in base.modules() if isinstance(m, LoRALinear))
    torch.testing.assert_close(base(idx), ref(idx), rtol=0, atol=0)


def test_merged_equals_unmerged_and_is_plain_gpt() -> None:
    model = _tiny()
    apply_lora(model, rank=4, alpha=8.0)
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, LoRALinear):
            nn.init.normal_(m.lora_B, std=0.2)  # a trained-looking adapter
    idx = torch.randint(0, 61, (2, 10))
    adapted = model(idx)
    plain = _tiny()
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert set(model.state_dict()) == set(plain.state_dict())  # exportable names
    merged = model(idx)
    torch.testing.assert_close(merged, adapted, rtol=1e-5, atol=1e-5)
    assert (merged - plain(idx)).abs().max() > 1e-2  # the adapters did change the model


def test_lora_linear_matches_the_formula() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(6, 5)
    lora = LoRALinear(lin, rank=2, alpha=4.0)
    nn.init.normal_(lora.lora_B)
    x = torch.randn(3, 6)
    expected = x @ lin.weight.T + lin.bias + (4.0 / 2) * (x @ lora.lora_A.T @ lora.lora_B.T)
    torch.testing.assert_close(lora(x), expected)


def test_only_adapters_train_and_counts() -> None:
    model = _tiny()
    _, total_before = count_trainable(model)
    apply_lora(model, rank=4, alpha=8.0, targets=["c_attn"])
    trainable, total = count_trainable(model)
    # c_attn: in 32, out 96 -> 4 * (32 + 96) per block
    assert trainable == 2 * 4 * (32 + 96)
    assert total == total_before + trainable
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)


def test_bad_lora_arguments() -> None:
    with pytest.raises(ConfigError, match="no linear layer named"):
        apply_lora(_tiny(), targets=["q_proj"])
    with pytest.raises(ConfigError, match="rank must be > 0"):
        LoRALinear(nn.Linear(2, 2), rank=0, alpha=1.0)


def _trained_looking(model: nn.Module) -> None:
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, LoRALinear):
            nn.init.normal_(m.lora_B, std=0.2)


def test_lm_head_target_adapts_the_tied_matrix_for_both_uses() -> None:
    model, ref = _tiny(), _tiny()
    idx = torch.randint(0, 61, (2, 10))
    apply_lora(model, rank=4, alpha=8.0, targets=["c_attn", "lm_head"])
    assert isinstance(model.transformer.wte, LoRAEmbedding)
    torch.testing.assert_close(model(idx), ref(idx), rtol=0, atol=0)  # zero B: a no-op
    trainable, _ = count_trainable(model)
    assert trainable == 2 * 4 * (32 + 96) + 4 * (32 + 61)  # the head's A and B counted once
    _trained_looking(model)
    # the reference: the base model with W + (alpha/r) B A written into the shared matrix
    head = model.lm_head
    with torch.no_grad():
        ref.transformer.wte.weight += (head.lora_B @ head.lora_A) * head.scaling
        for name, m in model.named_modules():
            if isinstance(m, LoRALinear) and name != "lm_head":
                ref.get_submodule(name).weight += (m.lora_B @ m.lora_A) * m.scaling
    adapted = model(idx)
    torch.testing.assert_close(adapted, ref(idx), rtol=1e-5, atol=1e-5)
    merge_lora(model)
    assert type(model.transformer.wte) is nn.Embedding
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied: exportable
    assert set(model.state_dict()) == set(_tiny().state_dict())
    torch.testing.assert_close(model(idx), adapted, rtol=1e-5, atol=1e-5)
