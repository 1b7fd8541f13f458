"""The fine-tuning batches under DDP: each process's share of a batch, and the empty share.

Reference: one process's batches. Under 2 processes, rank r takes rows r::2 of the same
batch, so the two shares together are the one-process batch; a share that would be empty
(the epoch's last batch has fewer rows than processes) is a stand-in row that counts zero.
"""

from __future__ import annotations

import torch

from gptforge.train.tasks import EpochLoader, ExamplesTask


def _collate(rows: list[int]) -> dict[str, torch.Tensor]:
    return {"x": torch.tensor(rows), "attention_mask": torch.ones(len(rows), 3)}


def _loader(rank: int, world: int) -> EpochLoader:
    # 5 examples in batches of 4: every epoch ends with a batch of one row
    return EpochLoader(list(range(5)), _collate, lambda e: 1, batch_size=4, seed=7, sort_by_length=False,
                       rank=rank, world_size=world)  # fmt: skip


def test_shares_of_two_processes_are_the_one_process_batch() -> None:
    one, r0, r1 = _loader(0, 1), _loader(0, 2), _loader(1, 2)
    for _ in range(4):
        full, a, b = one.next_batch(), r0.next_batch(), r1.next_batch()
        if "stand_in" in b:  # the one-row batch: rank 1 had nothing of its own
            assert len(full["x"]) == 1 and torch.equal(a["x"], full["x"]) and torch.equal(b["x"], full["x"])
            continue
        assert sorted(a["x"].tolist() + b["x"].tolist()) == sorted(full["x"].tolist())
    assert one.position == r0.position == r1.position == 4


def test_stand_in_batch_counts_no_tokens_and_no_loss_weight() -> None:
    task = ExamplesTask("t", torch.nn.Linear(1, 1), None, list(range(5)), [], _collate, lambda e: 1,
                        lambda model, batch: (torch.tensor(2.0), len(batch["x"])), batch_size=4, seed=7)  # fmt: skip
    normal, stand_in = _collate([1, 2]), {**_collate([1]), "stand_in": True}
    assert task.batch_tokens(normal) == 6 and task.batch_tokens(stand_in) == 0
    # one process: the mean as it is (no process group, so no rescaling)
    assert task.loss(None, normal).item() == 2.0
