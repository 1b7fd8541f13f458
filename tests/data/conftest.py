"""Fixtures of the data tests: the reference GPT-2 encoder (tiktoken from the shared files)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

GPT2_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def shared_data() -> Path:
    """The shared data folder (tests/conftest.py points GPTFORGE_DATA_DIR at it)."""
    return Path(os.environ["GPTFORGE_DATA_DIR"])


@pytest.fixture(scope="session")
def tiktoken_gpt2():
    """The reference: tiktoken's GPT-2 encoding built offline from the shared files."""
    data = shared_data()
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    if not (data / "gpt2" / "vocab.bpe").is_file():
        pytest.skip("GPT-2 files not in the shared data")
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(data / "gpt2" / "vocab.bpe"),
        encoder_json_file=str(data / "gpt2" / "encoder.json"),
    )
    return tiktoken.Encoding(
        "gpt2-ref", pat_str=GPT2_PAT, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256}
    )
