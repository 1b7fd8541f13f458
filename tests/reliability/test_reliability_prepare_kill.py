"""SIGKILL `gptforge prepare` at many moments: no half dataset ever looks complete.

After each kill, ``--out`` is either absent or a complete dataset equal to the reference one
(same meta.json and the same shard bytes); running the same command again then succeeds
without --overwrite and gives that same dataset.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
from pathlib import Path

from gptforge.data.shards import open_dataset
from tests.reliability.conftest import run_harness, run_harness_killed

FLAGS = ["--tokenizer", "char", "--shard-size", "700", "--val-fraction", "0.1", "--test-fraction", "0.1",
         "--no-progress"]  # fmt: skip


def _snapshot(ds: Path) -> dict[str, object]:
    meta = json.loads((ds / "meta.json").read_text())
    for volatile in ("created", "stats", "sources"):  # a timestamp, timings, the input paths
        meta.pop(volatile, None)
    shards = {p.name: p.read_bytes() for p in sorted(ds.glob("*.bin"))}
    return {"meta": meta, "shards": shards}


def _assert_absent_or_complete(out: Path, reference: dict[str, object]) -> bool:
    if not out.exists():
        return False
    ds = open_dataset(out)  # validates meta.json and every shard's size
    for split in ds.splits:
        assert sum(len(m) for m in ds.shards(split)) == ds.num_tokens(split)
    assert _snapshot(out) == reference
    return True


def test_prepare_killed_anywhere_leaves_nothing_or_a_complete_dataset(
    corpus: Path, tmp_path: Path
) -> None:
    big = tmp_path / "corpus"
    big.mkdir()
    for i in range(6):  # several documents, so several shards per split
        (big / f"doc{i}.txt").write_text(corpus.read_text() * (i + 1), encoding="utf-8")
    ref = tmp_path / "reference"
    r = run_harness("prepare", "--input", str(big), "--out", str(ref), *FLAGS)
    assert r.returncode == 0, r.stderr
    reference = _snapshot(ref)
    assert len(reference["shards"]) >= 4

    out = tmp_path / "killed"
    kills = complete_seen = 0
    rng = random.Random(5)
    plan = [("shard", n) for n in (1, 2, 3, 5, 8, 13)] + [("random", 0)] * 4
    for point, n in plan:
        cmd = ["prepare", "--input", str(big), "--out", str(out), *FLAGS]
        if point == "random":
            res = run_harness_killed(*cmd, after_s=rng.uniform(0.05, 1.2))  # import, read, tokenize or write: wherever it is
        else:
            res = run_harness(*cmd, fi=f"{point}:{n}")
        code, err = res.returncode, res.stderr
        assert "Traceback" not in err, err
        if code == -signal.SIGKILL:
            kills += 1
        else:
            assert code == 0, err  # it finished before the kill
        if _assert_absent_or_complete(out, reference):
            complete_seen += 1
            shutil.rmtree(out)  # start the next attempt from nothing again
    assert kills >= 6
    r = run_harness("prepare", "--input", str(big), "--out", str(out), *FLAGS)
    assert r.returncode == 0, r.stderr
    assert _snapshot(out) == reference
    print(f"\nreliability: prepare kills={kills} complete_after_kill={complete_seen}")
