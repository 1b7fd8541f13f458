"""Fixtures for trainer tests: a small char-level dataset built without `gptforge prepare`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gptforge.tokenizer.char import CharTokenizer

TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. resolved.\n\n"
) * 40


def write_char_dataset(root: Path, text: str = TEXT, val_fraction: float = 0.1,
                       tokenizer: CharTokenizer | None = None) -> Path:
    """A dataset dir (meta.json, tokenizer.json, train/val shards) of ``text`` with a char tokenizer."""
    tok = tokenizer or CharTokenizer.train(text)
    ids = np.array(tok.encode(text), dtype="<u2")
    n_val = int(len(ids) * val_fraction)
    root.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split, arr in (("train", ids[: len(ids) - n_val]), ("val", ids[len(ids) - n_val:])):
        name = f"{split}_000.bin"
        arr.tofile(root / name)
        splits[split] = {"tokens": len(arr), "documents": 1, "shards": [{"file": name, "tokens": len(arr)}]}
    tok.save(root / "tokenizer.json")
    meta = {"format_version": 1, "kind": "gptforge-dataset", "vocab_size": tok.vocab_size, "dtype": "uint16",
            "eot_id": None, "tokenizer_fingerprint": tok.fingerprint(), "tokenizer_kind": tok.kind,
            "splits": splits}
    (root / "meta.json").write_text(json.dumps(meta))
    return root


@pytest.fixture
def make_char_dataset():
    """:func:`write_char_dataset` for tests that build a second dataset.

    (A fixture, not ``from conftest import``: with several test folders holding a
    conftest.py, that import finds whichever one was loaded first.)
    """
    return write_char_dataset


@pytest.fixture(scope="session")
def char_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_char_dataset(tmp_path_factory.mktemp("chardata") / "ds")


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch):
    """Tiny models run fastest on one thread (and do not fight other processes for cores)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # for `gptforge` subprocesses
    yield
    torch.set_num_threads(before)
