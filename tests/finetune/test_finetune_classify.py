"""Classifier head: last real token whatever the padding side, save/reload, metrics."""

from __future__ import annotations

import torch

from gptforge import GPT, GPTConfig
from gptforge.data.collate import pad_collate
from gptforge.finetune.classify import (
    GPTClassifier,
    classification_report,
    predict,
    set_trainable,
)
from gptforge.finetune.lora import count_trainable
from gptforge.model.loading import load_model, save_model
from gptforge.tokenizer.char import CharTokenizer


def _classifier(seed: int = 0) -> GPTClassifier:
    torch.manual_seed(seed)
    gpt = GPT(GPTConfig(vocab_size=40, block_size=32, n_layer=2, n_head=2, n_embd=32))
    model = GPTClassifier.from_gpt(gpt, ["a", "b", "c"])
    torch.nn.init.normal_(model.classifier.weight, std=1.0)  # a head with visible outputs
    return model.eval()


SEQS = [[3, 5, 7, 9, 11], [2, 4], [8, 8, 1, 30, 12, 6, 5, 4], [17]]


def test_head_reads_last_real_token_whatever_the_padding() -> None:
    model = _classifier()
    # reference: each sequence alone, with no padding at all
    alone = torch.cat([model.classify_logits(torch.tensor([s])) for s in SEQS])
    with torch.no_grad():
        for side in ("right", "left"):
            batch = pad_collate(SEQS, pad_id=0, padding_side=side)
            got = model.classify_logits(batch["input_ids"], batch["attention_mask"])
            torch.testing.assert_close(got, alone, rtol=1e-5, atol=1e-5)


def test_padding_content_does_not_matter() -> None:
    model = _classifier()
    with torch.no_grad():
        a = model.classify_logits(**_named(pad_collate(SEQS, pad_id=0)))
        b = model.classify_logits(**_named(pad_collate(SEQS, pad_id=39)))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _named(batch: dict) -> dict:
    return {"idx": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def test_saved_classifier_reloads_to_same_predictions(tmp_path) -> None:
    model = _classifier()
    tok = CharTokenizer.train("abcdefghijklmnopqrstuvwxyz .,!?0123456789", specials=["<|endoftext|>"])
    before = predict(model, SEQS, pad_id=0)
    save_model(model, tmp_path / "m", tokenizer=tok, extra_config={"classifier": {"labels": model.labels, "max_length": 32}})
    again = load_model(tmp_path / "m")
    assert isinstance(again, GPTClassifier)
    assert again.labels == ["a", "b", "c"] and again.max_length == 32
    assert again.lm_head.weight is again.transformer.wte.weight  # tie restored
    torch.testing.assert_close(predict(again, SEQS, pad_id=0), before, rtol=0, atol=0)


def test_set_trainable_modes() -> None:
    model = _classifier()
    head = 32 * 3 + 3
    set_trainable(model, "head")
    assert count_trainable(model)[0] == head
    model = _classifier()
    set_trainable(model, "last-k", last_k=1)
    block = sum(p.numel() for p in model.transformer.h[-1].parameters())
    ln_f = sum(p.numel() for p in model.transformer.ln_f.parameters())
    assert count_trainable(model)[0] == head + block + ln_f
    model = _classifier()
    set_trainable(model, "lora", lora={"rank": 2, "alpha": 4.0, "targets": ("c_attn",)})
    assert count_trainable(model)[0] == head + 2 * 2 * (32 + 96)
    model = _classifier()
    set_trainable(model, "all")
    assert count_trainable(model)[0] == count_trainable(model)[1]


def test_classification_report_hand_counted() -> None:
    # true:  a a a b b c ; pred: a b a b c c
    r = classification_report([0, 0, 0, 1, 1, 2], [0, 1, 0, 1, 2, 2], ["a", "b", "c"])
    assert r["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert r["accuracy"] == 4 / 6
    assert r["per_class"]["a"] == {"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3}
    assert r["per_class"]["b"]["precision"] == 0.5 and r["per_class"]["b"]["recall"] == 0.5
    assert r["per_class"]["c"]["precision"] == 0.5 and r["per_class"]["c"]["recall"] == 1.0
