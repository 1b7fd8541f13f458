"""Fixtures for the tokenizer tests: the GPT-2 files, tiktoken's reference encoding,
a unicode stress text and small trained tokenizers of every kind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tokenizer_stress import STRESS_TEXT  # noqa: F401 - re-exported for fixtures


def _tiktoken_gpt2_reference(gpt2_dir: Path):  # noqa: ANN202
    """tiktoken's gpt2 encoding built offline from the same two files (tiktoken's own loader and pattern)."""
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    old = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""  # read the files directly, never a stale cache copy
    try:
        ranks = data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=str(gpt2_dir / "vocab.bpe"),
            encoder_json_file=str(gpt2_dir / "encoder.json"),
        )
    finally:
        if old is None:
            os.environ.pop("TIKTOKEN_CACHE_DIR", None)
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = old
    return tiktoken.Encoding(
        name="gpt2-reference",
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": 50256},
        explicit_n_vocab=50257,
    )


@pytest.fixture(scope="session")
def gpt2_dir() -> Path:
    from gptforge.io import data_dir

    d = data_dir() / "gpt2"
    if not (d / "encoder.json").is_file() or not (d / "vocab.bpe").is_file():
        pytest.skip(f"GPT-2 files not found in {d}; set GPTFORGE_DATA_DIR")
    return d


@pytest.fixture(scope="session")
def tiktoken_gpt2(gpt2_dir: Path):  # noqa: ANN201
    return _tiktoken_gpt2_reference(gpt2_dir)


@pytest.fixture(scope="session")
def shakespeare() -> str:
    from gptforge.io import data_dir

    path = data_dir() / "tinyshakespeare.txt"
    if not path.is_file():
        pytest.skip(f"{path} not found; set GPTFORGE_DATA_DIR")
    return path.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def small_corpus(shakespeare: str) -> str:
    return shakespeare[:30_000] + STRESS_TEXT


@pytest.fixture(scope="session")
def tokenizers_by_kind(gpt2_dir: Path, small_corpus: str) -> dict:
    """One small tokenizer of every kind (and both gpt2 paths), trained once per session."""
    from gptforge.tokenizer.bpe import BPETokenizer
    from gptforge.tokenizer.char import CharTokenizer
    from gptforge.tokenizer.gpt2 import GPT2Tokenizer
    from gptforge.tokenizer.hf import HFTokenizer

    enc, voc = gpt2_dir / "encoder.json", gpt2_dir / "vocab.bpe"
    return {
        "char": CharTokenizer.train(small_corpus, ["<|endoftext|>"]),
        "bpe": BPETokenizer.train(small_corpus, 400),
        "regex-bpe-gpt2": BPETokenizer.train(small_corpus, 500, "gpt2", ["<|endoftext|>"]),
        "regex-bpe-gpt4": BPETokenizer.train(
            small_corpus, 500, "gpt4", ["<|endoftext|>", "<|pad|>"]
        ),
        "hf-bpe": HFTokenizer.train(small_corpus, 600),
        "gpt2-fast": GPT2Tokenizer(enc, voc, fast=True),
        "gpt2-pure": GPT2Tokenizer(enc, voc, fast=False),
    }
