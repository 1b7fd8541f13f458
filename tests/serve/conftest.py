"""Fixtures: a tiny gpt2-tokenizer model and a server for it on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from tests.serve.server_utils import RunningServer, start_server  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from gptforge import GPT, GPTConfig, load_tokenizer
    from gptforge.model.loading import save_model

    tokenizer = load_tokenizer("gpt2")
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("test-tiny", vocab_size=tokenizer.vocab_size, block_size=128))
    out = tmp_path_factory.mktemp("served") / "tiny"
    save_model(model, out, tokenizer)
    return out


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path) -> Iterator[RunningServer]:
    with start_server(tiny_model_dir) as s:
        yield s
