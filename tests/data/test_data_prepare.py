"""prepare: token counts and ids equal a direct tiktoken encode; splits; workers; formats."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from gptforge.data import readers
from gptforge.data.prepare import PrepareOptions, prepare, split_by_hash
from gptforge.data.shards import dtype_for_vocab, open_dataset
from gptforge.errors import DataError


def shared_data() -> Path:
    """The shared data folder (tests/conftest.py points GPTFORGE_DATA_DIR at it)."""
    return Path(os.environ["GPTFORGE_DATA_DIR"])


def split_ids(ds, split: str) -> np.ndarray:
    shards = ds.shards(split)
    return np.concatenate([np.asarray(s) for s in shards]) if shards else np.zeros(0, np.int64)


def docs_of(ids: np.ndarray, eot: int) -> list[list[int]]:
    """Cut a stream at each eot (every document is followed by one)."""
    out, cur = [], []
    for t in ids.tolist():
        if t == eot:
            out.append(cur)
            cur = []
        else:
            cur.append(t)
    assert cur == [], "the stream must end with an eot"
    return out


def opts(**kw) -> PrepareOptions:
    kw.setdefault("progress", False)
    return PrepareOptions(**kw)


@pytest.fixture(scope="module")
def shakespeare(data_dir_module) -> str:
    return (data_dir_module / "tinyshakespeare.txt").read_text()


@pytest.fixture(scope="module")
def data_dir_module():
    DATA_DIR = shared_data()
    if not (DATA_DIR / "tinyshakespeare.txt").is_file():
        pytest.skip("shared data not found")
    return DATA_DIR


def test_single_document_gpt2_matches_nanogpt_split(tmp_path, shakespeare, tiktoken_gpt2):
    """nanoGPT shakespeare/prepare.py: first 90% of the text train, rest val, each encoded."""
    # small chunks: the text is cut into ~80 pieces, which must not change a single id
    meta = prepare(["tinyshakespeare"], "gpt2", tmp_path / "ds", opts(chunk_bytes=16384))
    n = len(shakespeare)
    ref_train = tiktoken_gpt2.encode_ordinary(shakespeare[: int(n * 0.9)])
    ref_val = tiktoken_gpt2.encode_ordinary(shakespeare[int(n * 0.9) :])
    assert meta["splits"]["train"]["tokens"] == len(ref_train) == 301_966
    assert meta["splits"]["val"]["tokens"] == len(ref_val) == 36_059
    ds = open_dataset(tmp_path / "ds")
    assert ds.dtype == np.dtype("<u2") and ds.vocab_size == 50257 and ds.eot_id == 50256
    assert split_ids(ds, "train").tolist() == ref_train
    assert split_ids(ds, "val").tolist() == ref_val
    tok = ds.load_tokenizer()
    ds.check_compatible(tok)
    assert (
        tok.decode(split_ids(ds, "train").tolist()) + tok.decode(split_ids(ds, "val").tolist())
        == shakespeare
    )
    assert (
        meta["sources"][0]["sha256"]
        == "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    )


def test_char_tokenizer_reproduces_nanogpt_shakespeare_char(tmp_path, shakespeare):
    meta = prepare(["tinyshakespeare"], "char", tmp_path / "ds", opts())
    assert meta["vocab_size"] == 65
    assert meta["splits"]["train"]["tokens"] == 1_003_854
    assert meta["splits"]["val"]["tokens"] == 111_540
    # nanoGPT: stoi = {ch: i for i, ch in enumerate(sorted(set(data)))}
    stoi = {ch: i for i, ch in enumerate(sorted(set(shakespeare)))}
    ref = np.array([stoi[c] for c in shakespeare], dtype=np.uint16)
    ds = open_dataset(tmp_path / "ds")
    assert np.array_equal(split_ids(ds, "train"), ref[:1_003_854])
    assert np.array_equal(split_ids(ds, "val"), ref[1_003_854:])


def test_three_way_position_split(tmp_path, shakespeare):
    meta = prepare(
        ["tinyshakespeare"], "char", tmp_path / "ds", opts(val_fraction=0.1, test_fraction=0.1)
    )
    n = len(shakespeare)
    tokens = {s: v["tokens"] for s, v in meta["splits"].items()}
    assert tokens == {
        "train": int(n * 0.8),
        "val": int(n * 0.9) - int(n * 0.8),
        "test": n - int(n * 0.9),
    }


@pytest.fixture
def doc_folder(tmp_path, shakespeare) -> tuple[Path, list[str]]:
    """40 documents (chunks of tinyshakespeare by speech groups) as text files in nested folders."""
    paras = shakespeare.split("\n\n")
    docs = ["\n\n".join(paras[i : i + 180]) for i in range(0, 180 * 40, 180)]
    root = tmp_path / "corpus"
    for i, d in enumerate(docs):
        p = root / f"part{i % 3}" / f"doc{i:02d}.txt"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(d)
    (root / "ignored.bin").write_bytes(b"\x00\x01")
    return root, docs


def test_folder_documents_split_disjoint_and_deterministic(tmp_path, doc_folder, tiktoken_gpt2):
    root, docs = doc_folder
    meta = prepare([str(root)], "gpt2", tmp_path / "a", opts(val_fraction=0.1, test_fraction=0.1))
    assert meta["split_method"] == "shuffle"
    assert {s: v["documents"] for s, v in meta["splits"].items()} == {
        "train": 32,
        "val": 4,
        "test": 4,
    }
    ds = open_dataset(tmp_path / "a")
    got = {s: docs_of(split_ids(ds, s), 50256) for s in ("train", "val", "test")}
    ref = {tuple(tiktoken_gpt2.encode_ordinary(d)) for d in docs}
    seen = [tuple(d) for s in got for d in got[s]]
    assert len(seen) == 40 and set(seen) == ref  # every document once, in exactly one split
    # decoding a split gives back its source files' text, each followed by the separator
    tok = ds.load_tokenizer()
    text = tok.decode(split_ids(ds, "val").tolist())
    pieces = text.split("<|endoftext|>")
    assert pieces[-1] == "" and len(pieces) == 5 and set(pieces[:-1]) <= set(docs)
    assert sum(v["tokens"] for v in meta["splits"].values()) == sum(len(d) + 1 for d in ref)
    # same seed -> identical shards; another seed -> another assignment
    prepare([str(root)], "gpt2", tmp_path / "b", opts(val_fraction=0.1, test_fraction=0.1))
    for f in ("train_000.bin", "val_000.bin", "test_000.bin"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    prepare([str(root)], "gpt2", tmp_path / "c", opts(val_fraction=0.1, test_fraction=0.1, seed=7))
    assert (tmp_path / "a" / "val_000.bin").read_bytes() != (
        tmp_path / "c" / "val_000.bin"
    ).read_bytes()


@pytest.fixture
def jsonl_file(tmp_path, shakespeare) -> tuple[Path, list[str]]:
    lines = [ln for ln in shakespeare.split("\n\n") if ln.strip()][:1500]
    path = tmp_path / "docs.jsonl"
    with open(path, "w") as f:
        for i, ln in enumerate(lines):
            f.write(json.dumps({"id": i, "body": ln}) + "\n")
            if i == 10:
                f.write("\n")  # blank lines are skipped
    return path, lines


def test_jsonl_workers_identical_and_counts_match(tmp_path, jsonl_file, tiktoken_gpt2):
    path, lines = jsonl_file
    o = dict(text_field="body", chunk_bytes=8192, shard_size=20_000)
    m1 = prepare([str(path)], "gpt2", tmp_path / "w1", opts(workers=1, **o))
    m2 = prepare([str(path)], "gpt2", tmp_path / "w2", opts(workers=2, **o))
    assert m1["split_method"] == "hash" and m1["splits"] == m2["splits"]
    assert len(m1["splits"]["train"]["shards"]) > 1  # rolled over into several shards
    files = sorted(p.name for p in (tmp_path / "w1").glob("*.bin"))
    assert files == sorted(p.name for p in (tmp_path / "w2").glob("*.bin"))
    for f in files:
        assert (tmp_path / "w1" / f).read_bytes() == (tmp_path / "w2" / f).read_bytes(), f
    # reference: each line encoded on its own plus an eot, assigned by the documented hash
    which = split_by_hash(np.arange(len(lines)), 1337, 0.1, 0.0)
    ds = open_dataset(tmp_path / "w1")
    for code, split in ((0, "train"), (1, "val")):
        ref = [
            t
            for i in np.flatnonzero(which == code)
            for t in tiktoken_gpt2.encode_ordinary(lines[i]) + [50256]
        ]
        assert split_ids(ds, split).tolist() == ref
        assert m1["splits"][split]["documents"] == int((which == code).sum())


def test_parquet_rows(tmp_path, jsonl_file, tiktoken_gpt2):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    _, lines = jsonl_file
    pq.write_table(pa.table({"text": lines[:300]}), tmp_path / "d.parquet")
    meta = prepare([str(tmp_path / "d.parquet")], "gpt2", tmp_path / "ds", opts(val_fraction=0.2))
    total = sum(len(tiktoken_gpt2.encode_ordinary(t)) + 1 for t in lines[:300])
    assert sum(v["tokens"] for v in meta["splits"].values()) == total
    assert meta["stats"]["documents"] == 300


def test_jsonl_bad_line_and_skip(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"text": "hello there"}\n{"text": "general kenobi"}\n{"body": "no text"}\n' * 3
    )
    with pytest.raises(DataError, match=r"line 3 of .*bad.jsonl has no string field 'text'"):
        prepare([str(path)], "gpt2", tmp_path / "out", opts())
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.tmp-*"))  # the temporary folder is gone too
    meta = prepare(
        [str(path)], "gpt2", tmp_path / "out", opts(skip_bad_lines=True, val_fraction=0.0)
    )
    assert meta["stats"]["documents"] == 6 and meta["stats"]["skipped_records"] == 3


def test_safe_cut_keeps_gpt2_ids(tiktoken_gpt2):
    text = "Hello world.\nThe 42 cats\n\n  said: 'hi'!\nend\n" * 50
    data = text.encode()
    pieces, rest = [], data
    while len(rest) > 100:
        k = readers.safe_cut(rest, 99)
        pieces.append(rest[:k])
        rest = rest[k:]
    pieces.append(rest)
    assert b"".join(pieces) == data and len(pieces) > 10
    ids = [t for p in pieces for t in tiktoken_gpt2.encode_ordinary(p.decode())]
    assert ids == tiktoken_gpt2.encode_ordinary(text)


def test_dtype_choice():
    assert dtype_for_vocab(65) == "uint16" and dtype_for_vocab(65536) == "uint16"
    assert dtype_for_vocab(65537) == "uint32"
    with pytest.raises(DataError, match="does not fit"):
        dtype_for_vocab(2**32 + 1)


def test_hash_split_is_uniform_and_seeded():
    idx = np.arange(100_000)
    a = split_by_hash(idx, 1, 0.1, 0.05)
    assert abs((a == 1).mean() - 0.1) < 0.01 and abs((a == 2).mean() - 0.05) < 0.01
    assert np.array_equal(a, split_by_hash(idx, 1, 0.1, 0.05))
    assert not np.array_equal(a, split_by_hash(idx, 2, 0.1, 0.05))


def test_hf_streaming_with_a_fake_datasets_module(tmp_path, monkeypatch, jsonl_file, tiktoken_gpt2):
    """The hf: path with a stand-in for `datasets.load_dataset(..., streaming=True)`."""
    import sys
    import types

    _, lines = jsonl_file
    calls = []

    def load_dataset(name, config=None, split=None, streaming=False):
        calls.append((name, config, split, streaming))
        return ({"content": t, "n": i} for i, t in enumerate(lines[:700]))

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    meta = prepare(
        ["hf:someone/corpus:en:validation"], "gpt2", tmp_path / "ds", opts(text_field="content")
    )
    assert calls == [("someone/corpus", "en", "validation", True)]
    assert meta["split_method"] == "hash" and meta["sources"][0]["name"] == "someone/corpus"
    which = split_by_hash(np.arange(700), 1337, 0.1, 0.0)
    ds = open_dataset(tmp_path / "ds")
    ref = [
        t
        for i in np.flatnonzero(which == 1)
        for t in tiktoken_gpt2.encode_ordinary(lines[i]) + [50256]
    ]
    assert split_ids(ds, "val").tolist() == ref


def test_gpt2_array_encode_equals_tiktoken(tiktoken_gpt2, shakespeare):
    """The array path (what prepare uses) gives tiktoken's ids; an eot in the text stays text."""
    from gptforge.tokenizer import load_tokenizer

    tok = load_tokenizer("gpt2")
    text = shakespeare[:20_000] + " <|endoftext|> café 日本語 🙂"
    arr = tok.encode_ordinary_array(text)
    assert arr.dtype == np.uint32
    assert arr.tolist() == tiktoken_gpt2.encode_ordinary(text)


def test_workers_use_threads_only_for_gil_free_tokenizers():
    """gpt2 (tiktoken releases the GIL) runs in threads of this process; others in processes."""
    import threading

    from gptforge.data.prepare import _ordered_map
    from gptforge.tokenizer import load_tokenizer

    def where(_chunk):
        return os.getpid(), threading.current_thread().name

    gpt2 = load_tokenizer("gpt2")
    init = (gpt2, "text", "strict", False, True, "uint16")
    seen = list(_ordered_map(where, range(6), 2, init))
    assert {pid for pid, _ in seen} == {os.getpid()}
    assert all(name.startswith("prepare") for _, name in seen)
    from gptforge.tokenizer.gpt2 import GPT2Tokenizer

    assert gpt2.encodes_without_gil and not GPT2Tokenizer(fast=False).encodes_without_gil


def test_pure_python_tokenizer_workers_identical(tmp_path, shakespeare):
    """A tokenizer without a GIL-free encoder goes through worker processes: same shards."""
    from gptforge.tokenizer.bpe import BPETokenizer

    tok = BPETokenizer.train(shakespeare[:30_000], 300, pattern="gpt2", specials=["<|endoftext|>"])
    assert not tok.encodes_without_gil
    spec = tok.save(tmp_path / "tok")
    docs = tmp_path / "docs"
    docs.mkdir()
    paras = [p for p in shakespeare.split("\n\n") if p.strip()][:60]
    for i, p in enumerate(paras):
        (docs / f"d{i:02d}.txt").write_text(p)
    o = dict(chunk_bytes=2048, val_fraction=0.2)
    m1 = prepare([str(docs)], str(spec), tmp_path / "w1", opts(workers=1, **o))
    m2 = prepare([str(docs)], str(spec), tmp_path / "w2", opts(workers=2, **o))
    assert m1["splits"] == m2["splits"]
    for f in sorted(p.name for p in (tmp_path / "w1").glob("*.bin")):
        assert (tmp_path / "w1" / f).read_bytes() == (tmp_path / "w2" / f).read_bytes(), f
    total = sum(len(tok.encode_ordinary(p)) + 1 for p in paras)
    assert sum(v["tokens"] for v in m1["splits"].values()) == total
