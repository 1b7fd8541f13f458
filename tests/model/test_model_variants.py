"""Model variants compose: every order a user can produce saves and loads back to the same
logits, or is refused by the command that would create it (never at load time).

The reference for "same logits" is the model in memory that was saved; the variant list
in config.json must name what was applied, in order. Each case builds its model with the
functions the commands call (``finetune classify`` -> ``GPTClassifier.from_gpt`` +
``set_trainable``, ``finetune instruct`` -> ``apply_lora`` [+ ``merge_lora`` with --merge],
``quantize`` -> ``quantize``).
"""

from __future__ import annotations

import json

import pytest
import torch

from gptforge import GPT, GPTConfig
from gptforge.errors import ConfigError, ModelError
from gptforge.finetune.classify import GPTClassifier, set_trainable
from gptforge.finetune.instruct import check_trainable_base
from gptforge.finetune.lora import apply_lora, merge_lora
from gptforge.model.loading import load_model, save_model
from gptforge.quantize.convert import quantize

LABELS = ["ham", "spam"]


def _base() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=96, block_size=16, n_layer=2, n_head=2, n_embd=64)).eval()


def _perturb_adapters(model: torch.nn.Module) -> None:
    """LoRA's B starts at zero (a no-op); give it values so a lost adapter would show."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def classifier(m: GPT) -> GPT:
    model = GPTClassifier.from_gpt(m, LABELS, 12)
    with torch.no_grad():
        model.classifier.weight.normal_(generator=torch.Generator().manual_seed(2))
    return model


def classifier_lora(m: GPT) -> GPT:  # finetune classify --train lora: merged at the end (float base)
    model = classifier(m)
    set_trainable(model, "lora", lora={"rank": 2, "alpha": 4.0, "targets": ("c_attn", "c_fc")})
    _perturb_adapters(model)
    if "quantization" not in [v["kind"] for v in model.variants]:
        merge_lora(model)
    return model


def lora(m: GPT) -> GPT:  # finetune instruct --lora-rank 2 (no --merge)
    apply_lora(m, rank=2, alpha=4.0, targets=("c_attn", "c_proj", "c_fc"))
    _perturb_adapters(m)
    return m


def lora_merged(m: GPT) -> GPT:  # finetune instruct --lora-rank 2 --merge
    return merge_lora(lora(m))


def int8(m: GPT) -> GPT:
    return quantize(m, "int8")


def int4(m: GPT) -> GPT:
    return quantize(m, "int4", group_size=32)


CASES = [
    ((classifier,), ["classifier"]),
    ((classifier_lora,), ["classifier"]),
    ((lora,), ["lora"]),
    ((lora_merged,), []),
    ((int8,), ["quantization"]),
    ((int4,), ["quantization"]),
    ((classifier, int8), ["classifier", "quantization"]),
    ((classifier, int4), ["classifier", "quantization"]),
    ((classifier_lora, int8), ["classifier", "quantization"]),
    ((lora, int8), ["lora", "quantization"]),
    ((lora, int4), ["lora", "quantization"]),
    ((int8, lora), ["quantization", "lora"]),  # QLoRA-style: instruct --lora-rank on a quantized base
    ((int4, lora), ["quantization", "lora"]),
    ((int8, classifier), ["quantization", "classifier"]),  # classify --train head on a quantized base
    ((int4, classifier_lora), ["quantization", "classifier", "lora"]),  # --train lora: adapters kept apart
    ((classifier, lora), ["classifier", "lora"]),  # instruct on a classifier model
]


def _logits(model: GPT, idx: torch.Tensor) -> list[torch.Tensor]:
    out = [model(idx)]
    if isinstance(model, GPTClassifier):
        out.append(model.classify_logits(idx))
    return out


@pytest.mark.parametrize(("steps", "kinds"), CASES, ids=lambda c: "+".join(f.__name__ for f in c)
                         if isinstance(c, tuple) else None)  # fmt: skip
def test_variant_combination_round_trips(tmp_path, steps, kinds) -> None:
    model = _base()
    for step in steps:
        model = step(model)
    model.eval()
    assert [v["kind"] for v in model.variants or []] == kinds
    idx = torch.randint(0, 96, (2, 10), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = _logits(model, idx)
    save_model(model, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert [v["kind"] for v in config["variants"]] == kinds
    loaded = load_model(tmp_path / "m")
    assert [v["kind"] for v in loaded.variants] == kinds
    assert type(loaded) is type(model)
    with torch.no_grad():
        got = _logits(loaded, idx)
    for a, b in zip(got, expected):
        # the same modules on the same tensors: bitwise (the quantized kernels are deterministic)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    if "lora" in kinds:  # the adapters came back, not only the base
        assert any("lora_B" in k for k in loaded.state_dict())


@pytest.mark.parametrize(
    ("make", "refuse", "error", "match"),
    [
        (int8, lambda m: quantize(m, "int4", group_size=32), ModelError, "already quantized"),
        (int8, lambda m: check_trainable_base(m, 0, False), ConfigError, "full fine-tuning"),
        (int4, lambda m: check_trainable_base(m, 2, True), ConfigError, "--merge cannot fold"),
        (int8, lambda m: set_trainable(classifier(m), "all"), ConfigError, "--train all would train a quantized"),
        (int8, lambda m: set_trainable(classifier(m), "last-k"), ConfigError, "--train last-k"),
        (lambda m: int8(lora(m)), merge_lora, ModelError, "cannot merge LoRA adapters into a quantized"),
        (lambda m: lora(int8(m)), merge_lora, ModelError, "cannot merge LoRA adapters into a quantized"),
    ],
)
def test_combination_refused_when_asked_for(make, refuse, error, match) -> None:
    model = make(_base())
    with pytest.raises(error, match=match):
        refuse(model)


def test_qlora_trains_the_adapters_only() -> None:
    """LoRA on a frozen int8 base: the adapters get gradients and change the loss; the
    integer weights are buffers (nothing to train) and stay as they were."""
    model = lora(int8(_base()))
    q_before = {k: v.clone() for k, v in model.state_dict().items() if k.endswith("qweight")}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n, p in model.named_parameters() if p.requires_grad)
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    idx = torch.randint(0, 96, (4, 12), generator=torch.Generator().manual_seed(4))
    model.train()
    losses = []
    for _ in range(5):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    for k, v in model.state_dict().items():
        if k in q_before:
            assert torch.equal(v, q_before[k])


def test_older_top_level_keys_still_load(tmp_path) -> None:
    """A model dir of format 1 (top-level ``classifier`` / ``quantization`` keys, no list)."""
    model = int8(classifier(_base()))
    save_model(model, tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    config = json.loads(path.read_text())
    variants = config.pop("variants")
    for v in variants:
        config[v.pop("kind")] = v
    path.write_text(json.dumps(config))
    loaded = load_model(tmp_path / "m")
    assert [v["kind"] for v in loaded.variants] == ["classifier", "quantization"]
    idx = torch.randint(0, 96, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(loaded.classify_logits(idx), model.classify_logits(idx), rtol=0, atol=0)
