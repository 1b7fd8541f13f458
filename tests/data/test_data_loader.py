"""BatchLoader: windows come from the shards, resume is exact, DDP ranks are disjoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gptforge.data.loader import BatchLoader
from gptforge.data.shards import open_dataset
from gptforge.errors import DataError


def make_dataset(root: Path, splits: dict[str, list[np.ndarray]], vocab_size: int = 1000) -> Path:
    """A dataset dir whose shards hold exactly the given arrays (one file per array)."""
    root.mkdir(parents=True, exist_ok=True)
    meta_splits = {}
    for split, arrays in splits.items():
        shards = []
        for i, arr in enumerate(arrays):
            name = f"{split}_{i:03d}.bin"
            arr.astype("<u2").tofile(root / name)
            shards.append({"file": name, "tokens": len(arr)})
        meta_splits[split] = {
            "tokens": sum(len(a) for a in arrays),
            "documents": 1,
            "shards": shards,
        }
    meta = {
        "format_version": 1,
        "vocab_size": vocab_size,
        "dtype": "uint16",
        "eot_id": None,
        "tokenizer_fingerprint": "test",
        "tokenizer_kind": "test",
        "splits": meta_splits,
    }
    (root / "meta.json").write_text(json.dumps(meta))
    return root


@pytest.fixture
def two_shard_ds(tmp_path: Path):
    # token value == global position (mod vocab) so a window tells where it came from
    a = np.arange(0, 500) % 1000
    b = np.arange(500, 1000) % 1000
    return open_dataset(make_dataset(tmp_path / "ds", {"train": [a, b], "val": [np.arange(100)]}))


def _rows_are_windows(x: torch.Tensor, y: torch.Tensor, shards: list[np.ndarray]) -> None:
    for xr, yr in zip(x.tolist(), y.tolist()):
        full = xr + yr[-1:]
        assert yr == full[1:]
        # the window lies inside exactly one shard: consecutive values in one shard's range
        owner = [s for s in shards if s[0] <= full[0] <= s[-1]]
        assert len(owner) == 1 and full[-1] <= owner[0][-1], full
        assert full == list(range(full[0], full[0] + len(full)))


def test_random_windows_inside_shards(two_shard_ds):
    loader = BatchLoader(two_shard_ds, "train", batch_size=16, block_size=32, seed=3)
    shards = [np.arange(0, 500), np.arange(500, 1000)]
    starts = set()
    for _ in range(50):
        x, y = loader.next_batch()
        assert x.shape == (16, 32) and y.shape == (16, 32) and x.dtype == torch.long
        _rows_are_windows(x, y, shards)
        starts.update(x[:, 0].tolist())
    # both shards are drawn from, and no window runs past its shard's end
    assert any(s < 500 for s in starts) and any(s >= 500 for s in starts)
    assert max(s for s in starts if s < 500) <= 500 - 33


def test_random_starts_are_exactly_the_valid_ones(tmp_path):
    """Every valid start of every shard is drawn, and nothing else: nanoGPT's
    ``randint(len(data) - block_size)`` per shard is the reference (the old check, an upper
    bound only, passed with the last start of each shard unreachable)."""
    a, b = np.arange(0, 40), np.arange(100, 137)  # token value == position: a window names its start
    ds = open_dataset(make_dataset(tmp_path / "ds", {"train": [a, b], "val": [np.arange(20)]}))
    block = 8
    loader = BatchLoader(ds, "train", batch_size=16, block_size=block, seed=5)
    drawn = set()
    for _ in range(300):  # 4800 draws over 61 starts: each is missed with probability < 1e-30
        x, _ = loader.next_batch()
        drawn.update(x[:, 0].tolist())
    want = {int(shard[i]) for shard in (a, b) for i in range(len(shard) - block)}
    assert drawn == want, (sorted(want - drawn), sorted(drawn - want))


@pytest.mark.parametrize("mode", ["random", "sequential"])
def test_resume_continues_exactly(two_shard_ds, mode):
    ref = BatchLoader(two_shard_ds, "train", batch_size=4, block_size=16, mode=mode, seed=7)
    straight = [ref.next_batch() for _ in range(40)]

    first = BatchLoader(two_shard_ds, "train", batch_size=4, block_size=16, mode=mode, seed=7)
    for _ in range(13):
        first.next_batch()
    state = json.loads(json.dumps(first.state_dict()))  # must survive JSON
    resumed = BatchLoader(two_shard_ds, "train", batch_size=4, block_size=16, mode=mode, seed=123)
    resumed.load_state_dict(state)
    for i in range(13, 40):
        x, y = resumed.next_batch()
        assert torch.equal(x, straight[i][0]) and torch.equal(y, straight[i][1]), i


def test_random_matches_nanogpt_draw_on_one_shard(tmp_path):
    """One shard: the same draw as nanoGPT's get_batch with the same index stream."""
    data = (np.arange(3000) * 7) % 1000
    ds = open_dataset(make_dataset(tmp_path / "one", {"train": [data]}))
    loader = BatchLoader(ds, "train", batch_size=5, block_size=8, seed=11)
    rng = np.random.default_rng([11, 0])
    for _ in range(10):
        ix = rng.integers(0, len(data) - 8, size=5)
        x_ref = torch.stack([torch.from_numpy(data[i : i + 8].astype(np.int64)) for i in ix])
        y_ref = torch.stack(
            [torch.from_numpy(data[i + 1 : i + 1 + 8].astype(np.int64)) for i in ix]
        )
        x, y = loader.next_batch()
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)


def test_sequential_walks_every_token_once(two_shard_ds):
    B, T = 3, 10
    loader = BatchLoader(two_shard_ds, "train", batch_size=B, block_size=T, mode="sequential")
    seen = []
    for _ in range(loader.batches_per_epoch):
        x, _ = loader.next_batch()
        seen.extend(x.flatten().tolist())
    # 49 windows per shard of 500 tokens; 98 windows, 32 batches of 3 -> 96 windows used
    assert loader.batches_per_epoch == 98 // 3
    assert len(seen) == len(set(seen)) == 96 * T
    x, _ = loader.next_batch()  # next epoch starts over at the first window
    assert x[0].tolist() == list(range(T)) and loader.epoch == 1


def test_ddp_ranks_never_share_a_window(two_shard_ds):
    world = 3
    loaders = [
        BatchLoader(
            two_shard_ds,
            "train",
            batch_size=2,
            block_size=10,
            mode="sequential",
            rank=r,
            world_size=world,
        )
        for r in range(world)
    ]
    steps = loaders[0].batches_per_epoch
    assert all(ld.batches_per_epoch == steps for ld in loaders)
    windows: list[tuple[int, ...]] = []
    for _ in range(steps):
        for ld in loaders:
            x, _ = ld.next_batch()
            windows.extend(tuple(r) for r in x.tolist())
    assert len(windows) == len(set(windows)) == steps * 2 * world
    # random mode: each rank its own stream
    r0 = BatchLoader(two_shard_ds, "train", 4, 10, rank=0, world_size=2).next_batch()[0]
    r1 = BatchLoader(two_shard_ds, "train", 4, 10, rank=1, world_size=2).next_batch()[0]
    assert not torch.equal(r0, r1)


def test_too_short_split_says_how_many_tokens(two_shard_ds):
    with pytest.raises(DataError, match=r"has 100 tokens.*needs 201"):
        BatchLoader(two_shard_ds, "val", batch_size=1, block_size=200)
    with pytest.raises(DataError, match="no 'test' split"):
        BatchLoader(two_shard_ds, "test", batch_size=1, block_size=4)


def test_resume_refuses_other_settings(two_shard_ds):
    state = BatchLoader(two_shard_ds, "train", 4, 16).state_dict()
    with pytest.raises(DataError, match="block_size"):
        BatchLoader(two_shard_ds, "train", 4, 8).load_state_dict(state)


def test_open_dataset_errors(tmp_path, two_shard_ds):
    with pytest.raises(DataError, match="not a gptforge dataset"):
        open_dataset(tmp_path)
    path = two_shard_ds.path
    with open(path / "train_001.bin", "ab") as f:
        f.write(b"xx")
    with pytest.raises(DataError, match=r"train_001.bin has 1,002 bytes"):
        open_dataset(path)
    (path / "meta.json").write_text("{}")
    with pytest.raises(DataError, match="missing key"):
        open_dataset(path)


def test_check_compatible(two_shard_ds):
    two_shard_ds.check_compatible("test")
    with pytest.raises(DataError, match="made with tokenizer test .* but model uses other"):
        two_shard_ds.check_compatible("other")
