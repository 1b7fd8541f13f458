"""Fixtures for the GPT-2 interop tests: random Hugging Face GPT-2 folders built in the test.

No network: the reference models are ``transformers.GPT2LMHeadModel`` with random
weights, and the tokenizer files are OpenAI's ``encoder.json``/``vocab.bpe`` from the
shared data folder (the same formats as ``vocab.json``/``merges.txt``).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DATA_DIR

TINY = dict(vocab_size=50257, n_positions=64, n_embd=32, n_layer=2, n_head=4)


@pytest.fixture
def gpt2_tokenizer_files() -> tuple[Path, Path]:
    enc, bpe = DATA_DIR / "gpt2" / "encoder.json", DATA_DIR / "gpt2" / "vocab.bpe"
    if not (enc.is_file() and bpe.is_file()):
        pytest.skip(f"GPT-2 tokenizer files not found under {DATA_DIR / 'gpt2'}")
    return enc, bpe


@pytest.fixture
def make_hf_folder(tmp_path: Path, gpt2_tokenizer_files: tuple[Path, Path]) -> Callable[..., tuple[Path, Any]]:
    """Build a random GPT2LMHeadModel, ``save_pretrained`` it, add tokenizer files.

    Returns a function ``(name="hf", safe=True, tokenizer=True, seed=0, **config) -> (folder, hf_model)``.
    ``safe=False`` writes ``pytorch_model.bin`` instead, in the layout of OpenAI's original
    upload (transformers 5 no longer writes .bin files): keys without the ``transformer.``
    prefix, the tied head included, and the ``attn.bias``/``attn.masked_bias`` buffers.
    """
    transformers = pytest.importorskip("transformers")
    import torch

    def make(name: str = "hf", safe: bool = True, tokenizer: bool = True, seed: int = 0, **config: Any):
        torch.manual_seed(seed)
        cfg = transformers.GPT2Config(**{**TINY, **config})
        model = transformers.GPT2LMHeadModel(cfg).eval()
        folder = tmp_path / name
        if safe:
            model.save_pretrained(folder)
        else:
            cfg.save_pretrained(folder)
            state = {k.removeprefix("transformer."): v.clone() for k, v in model.state_dict().items()}
            n = cfg.n_positions
            for i in range(cfg.n_layer):
                state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
                state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
            torch.save(state, folder / "pytorch_model.bin")
        if tokenizer:
            shutil.copy(gpt2_tokenizer_files[0], folder / "vocab.json")
            shutil.copy(gpt2_tokenizer_files[1], folder / "merges.txt")
        return folder, model

    return make
