"""``gpt2`` by name (nanoGPT's ``init_from='gpt2'``) from the Hugging Face cache on this disk.

The reference is transformers' own cache lookup: with ``local_files_only=True`` it reads the
same layout offline, so both must load the same weights from a cache laid out as the hub
client lays it out (``models--openai-community--gpt2/refs/main`` -> ``snapshots/<commit>``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import gptforge
from gptforge.errors import ModelError

transformers = pytest.importorskip("transformers")


def _cache_with(folder: Path, cache: Path, repo: str, commit: str = "0123abcd") -> None:
    """Lay ``folder`` out as the hub client does, with a decoy snapshot beside the real one."""
    shutil.copytree(folder, cache / repo / "snapshots" / commit)
    shutil.copytree(folder, cache / repo / "snapshots" / "old0000")
    (cache / repo / "refs").mkdir()
    (cache / repo / "refs" / "main").write_text(commit)


def test_gpt2_by_name_loads_the_cached_snapshot_as_transformers_does(make_hf_folder, tmp_path: Path,
                                                                       monkeypatch) -> None:
    folder, _ = make_hf_folder(seed=3)
    decoy, _ = make_hf_folder(name="decoy", seed=4)
    cache = tmp_path / "hub"
    _cache_with(folder, cache, "models--openai-community--gpt2")
    # the decoy snapshot is not the one refs/main names: a lookup that took any snapshot would fail
    shutil.rmtree(cache / "models--openai-community--gpt2" / "snapshots" / "old0000")
    shutil.copytree(decoy, cache / "models--openai-community--gpt2" / "snapshots" / "old0000")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)  # no folder named gpt2 here
    ours = gptforge.load_model("gpt2")
    ref = transformers.GPT2LMHeadModel.from_pretrained("openai-community/gpt2", cache_dir=cache,
                                                       local_files_only=True).eval()
    idx = torch.randint(0, 50257, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), ref(idx).logits, rtol=0, atol=1e-4)
    assert ours.tokenizer.encode("Hello world") == [15496, 995]
    assert gptforge.load_model("openai-community/gpt2").model_dir == ours.model_dir


def test_a_local_folder_named_gpt2_wins_over_the_cache(make_hf_folder, tmp_path: Path, monkeypatch) -> None:
    folder, _ = make_hf_folder(seed=3)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.chdir(folder.parent)
    folder.rename(folder.parent / "gpt2")
    assert gptforge.load_model("gpt2").model_dir == Path("gpt2")


def test_gpt2_not_in_the_cache_says_how_to_get_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError, match="gpt2-medium is not downloaded.*huggingface-cli download openai-community/gpt2-medium"):
        gptforge.load_model("gpt2-medium")
