"""pad_collate against a hand-padded reference and the model's own loss; ShuffledBatches resume."""

from __future__ import annotations

import json

import pytest
import torch

from gptforge.data.collate import IGNORE_INDEX, ShuffledBatches, pad_collate
from gptforge.errors import DataError


def test_right_and_left_padding():
    batch = [[5, 6, 7, 8], {"input_ids": [9, 10], "labels": [IGNORE_INDEX, 11]}]
    r = pad_collate(batch, pad_id=0)
    assert r["input_ids"].tolist() == [[5, 6, 7, 8], [9, 10, 0, 0]]
    assert r["labels"].tolist() == [[6, 7, 8, -100], [-100, 11, -100, -100]]
    assert r["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert r["position_ids"].tolist() == [[0, 1, 2, 3], [0, 1, 1, 1]]
    left = pad_collate(batch, pad_id=0, padding_side="left", ignore_index=-1)
    assert left["input_ids"].tolist() == [[5, 6, 7, 8], [0, 0, 9, 10]]
    assert left["labels"].tolist() == [[6, 7, 8, -1], [-1, -1, -100, 11]]
    assert left["position_ids"].tolist() == [[0, 1, 2, 3], [0, 0, 0, 1]]
    cut = pad_collate([[1, 2, 3, 4, 5], [6]], pad_id=0, max_len=3)
    assert cut["input_ids"].tolist() == [[1, 2, 3], [6, 0, 0]] and cut["labels"][0].tolist() == [
        2,
        3,
        4,
    ]
    cls = pad_collate([{"input_ids": [1], "label": 1}, {"input_ids": [2, 3], "label": 0}], pad_id=0)
    assert cls["label"].tolist() == [1, 0]


def test_padded_loss_equals_unpadded_loss():
    """Right padding + ignore_index: the mean loss is that of the real tokens alone."""
    from gptforge.model.config import GPTConfig
    from gptforge.model.gpt import GPT

    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("test-tiny")).eval()
    V = model.config.vocab_size
    seqs = [torch.randint(0, V, (n,)).tolist() for n in (9, 4, 6)]
    b = pad_collate(seqs, pad_id=0)
    _, loss = model(b["input_ids"], b["labels"])
    total, count = 0.0, 0
    for s in seqs:
        logits = model(torch.tensor([s[:-1]]))
        total += torch.nn.functional.cross_entropy(
            logits[0], torch.tensor(s[1:]), reduction="sum"
        ).item()
        count += len(s) - 1
    assert loss.item() == pytest.approx(total / count, rel=1e-5)


def test_shuffled_batches_resume_and_ranks():
    data = list(range(23))
    ref = ShuffledBatches(data, 4, seed=3)
    straight = [ref.next_batch() for _ in range(20)]  # more than three epochs
    assert (
        sorted(x for b in straight[: len(ref)] for x in b) == data
    )  # one epoch = every example once
    assert straight[: len(ref)] != straight[len(ref) : 2 * len(ref)]  # reshuffled
    a = ShuffledBatches(data, 4, seed=3)
    for _ in range(9):
        a.next_batch()
    b = ShuffledBatches(data, 4, seed=3)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert [b.next_batch() for _ in range(11)] == straight[9:]
    ranks = [ShuffledBatches(data, 3, seed=1, rank=r, world_size=2) for r in range(2)]
    seen = [x for r in ranks for batch in r.epoch_batches() for x in batch]
    assert len(seen) == len(set(seen)) == 22
    with pytest.raises(DataError, match="saved seed 3 but now 4"):
        ShuffledBatches(data, 4, seed=4).load_state_dict(a.state_dict())
