"""``pad_vocab_to``: a model with padding rows computes what the unpadded model with the
same weights computes (the reference), in logits, loss, gradients and generation."""

from __future__ import annotations

import pytest
import torch

from gptforge.errors import ConfigError
from gptforge.model import accounting
from gptforge.model.config import GPTConfig
from gptforge.model.gpt import GPT

V = 97  # padded to 128 by pad_vocab_to=64


def _pair(tie: bool) -> tuple[GPT, GPT]:
    """An unpadded model and a padded one holding the same weights (padding rows random)."""
    cfg = dict(vocab_size=V, block_size=32, n_layer=2, n_head=2, n_embd=16, tie_weights=tie)
    torch.manual_seed(0)
    ref = GPT(GPTConfig(**cfg))
    padded = GPT(GPTConfig(**cfg, pad_vocab_to=64))
    state = padded.state_dict()
    with torch.no_grad():
        for k, v in ref.state_dict().items():
            state[k][: v.shape[0]].copy_(v)  # the embedding/head: the first V rows
    assert padded.transformer.wte.weight.shape == (128, 16)
    return ref, padded


@pytest.mark.parametrize("tie", [True, False])
def test_padded_model_equals_unpadded_reference(tie: bool) -> None:
    ref, padded = _pair(tie)
    idx = torch.randint(0, V, (3, 20), generator=torch.Generator().manual_seed(1))
    targets = torch.randint(0, V, (3, 20), generator=torch.Generator().manual_seed(2))
    logits_r, loss_r = ref(idx, targets)
    logits_p, loss_p = padded(idx, targets)
    assert logits_p.shape == (3, 20, V)
    torch.testing.assert_close(logits_p, logits_r)
    torch.testing.assert_close(loss_p, loss_r)
    loss_r.backward()
    loss_p.backward()
    grads_r = dict(ref.named_parameters())
    for name, p in padded.named_parameters():
        g_ref = grads_r[name].grad
        torch.testing.assert_close(p.grad[: g_ref.shape[0]], g_ref, msg=name)
        assert not p.grad[g_ref.shape[0] :].any(), name  # padding rows get no gradient
    assert torch.equal(padded.eval().generate(idx[:1, :5], 20, temperature=0), ref.eval().generate(idx[:1, :5], 20, temperature=0))


def test_padded_vocab_size_and_counts() -> None:
    gpt2 = GPTConfig.from_preset("gpt2", pad_vocab_to=64)
    assert gpt2.padded_vocab_size == 50304 and GPTConfig.from_preset("gpt2").padded_vocab_size == 50257
    assert accounting.count_params(gpt2).total == 124_439_808 + (50304 - 50257) * 768  # nanoGPT's 124.48M
    with torch.device("meta"):
        model = GPT(gpt2)
    assert accounting.count_params(gpt2).total == model.num_params()
    with pytest.raises(ConfigError, match="model.pad_vocab_to"):
        GPTConfig(vocab_size=10, pad_vocab_to=0)


def test_padded_model_saves_loads_and_quantizes(tmp_path) -> None:
    from gptforge.model.loading import load_model, save_model
    from gptforge.quantize import quantize

    _, padded = _pair(tie=True)
    padded.eval()
    idx = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(3))
    save_model(padded, tmp_path / "m")
    again = load_model(tmp_path / "m")
    assert again.config.pad_vocab_to == 64
    torch.testing.assert_close(again(idx), padded(idx), rtol=0, atol=0)
    q = quantize(again, "int8", include_embeddings=True)
    assert q(idx).shape == (2, 12, V)


def test_eval_perplexity_ignores_padding_rows() -> None:
    """``gptforge eval``'s scorer on a padded model equals it on the unpadded reference (the
    padding columns once entered the softmax: 4.87 instead of 4.20 on a vocab-65 model)."""
    from gptforge.evaluate.perplexity import evaluate_tokens

    ref, padded = _pair(tie=True)
    with torch.no_grad():  # large padding logits, so that scoring them would show
        padded.transformer.wte.weight[V:].normal_(0, 5.0)
    tokens = torch.randint(0, V, (200,), generator=torch.Generator().manual_seed(3))
    got = evaluate_tokens(padded.eval(), tokens, block_size=32, batch_size=4)
    want = evaluate_tokens(ref.eval(), tokens, block_size=32, batch_size=4)
    assert got["tokens"] == want["tokens"] == 199
    assert abs(got["loss"] - want["loss"]) < 1e-5, (got["loss"], want["loss"])


def test_instruct_loss_ignores_padding_rows() -> None:
    """The instruct task's loss (response tokens only) on a padded model equals the reference."""
    from gptforge.data.collate import IGNORE_INDEX
    from gptforge.finetune.instruct import Example, InstructTask

    ref, padded = _pair(tie=False)
    with torch.no_grad():
        padded.lm_head.weight[V:].normal_(0, 5.0)
    g = torch.Generator().manual_seed(4)
    examples = []
    for n in (12, 7):
        ids = torch.randint(0, V, (n,), generator=g).tolist()
        targets = [IGNORE_INDEX] * 3 + ids[4:] + [ids[0]]
        examples.append(Example(inputs=ids, targets=targets))
    task = InstructTask(pad_id=0)
    batch = task.collate(examples)
    loss_p, n_p = task.loss(padded, batch)
    loss_r, n_r = task.loss(ref, batch)
    assert n_p == n_r > 0
    torch.testing.assert_close(loss_p, loss_r)
