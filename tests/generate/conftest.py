"""Fixtures for the generation tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def gpt2_tokenizer():
    from gptforge.tokenizer import load_tokenizer

    try:
        return load_tokenizer("gpt2")
    except Exception as e:  # the GPT-2 BPE files live in the shared data folder
        pytest.skip(f"gpt2 tokenizer not available: {e}")


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine
    two threads per test process oversubscribe the CPU; restored afterwards."""
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # CLI subprocesses of these tests too
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
