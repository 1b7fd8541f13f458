"""A long document is read in pieces; for every tokenizer kind its ids must equal encoding it
whole (the docstring's promise). Long lines of code and minified JSON break the old cut rule:
with the GPT-4 pattern ``".\\n"`` is one pre-token, and without a newline it cut inside words."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from gptforge.data.prepare import PrepareOptions, prepare
from gptforge.data.shards import open_dataset


def _code() -> str:
    rng = random.Random(0)
    words = ["self", "value", "x1", "données", "résumé", "count", "i", "πr2", "ok"]
    ops = [" = ", " + ", "(", ")", ", ", "; ", ".", "[", "]", " == ", "{", "}", ":", "\n", ".\n", "!\n", "  "]
    return "".join(rng.choice(words) + rng.choice(ops) for _ in range(2500))


def _minified_json() -> str:
    rng = random.Random(1)
    rows = [{"id": i, "name": f"item{i}", "tags": ["a", "b", "ü"], "v": rng.random(), "ok": i % 3 == 0}
            for i in range(300)]
    return json.dumps(rows, separators=(",", ":"), ensure_ascii=False)


TEXTS = {"code": _code(), "minified-json": _minified_json()}


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> dict[str, str]:
    """Specs (tokenizer.json paths) of every kind, trained on both texts."""
    from gptforge.tokenizer.bpe import BPETokenizer
    from gptforge.tokenizer.hf import HFTokenizer

    root = tmp_path_factory.mktemp("toks")
    corpus = "".join(TEXTS.values())
    specs = {"gpt2": "gpt2", "char": "char"}
    specs["bpe"] = str(BPETokenizer.train(corpus[:20000], 400).save(root / "bpe"))
    for name in ("gpt2", "gpt4"):
        specs[f"regex-bpe-{name}"] = str(BPETokenizer.train(corpus[:20000], 400, pattern=name).save(root / name))
    specs["hf-bpe"] = str(HFTokenizer.train(corpus, 500).save(root / "hf"))
    return specs


@pytest.mark.parametrize("text_name", sorted(TEXTS))
@pytest.mark.parametrize("kind", ["gpt2", "char", "bpe", "regex-bpe-gpt2", "regex-bpe-gpt4", "hf-bpe"])
def test_pieces_give_the_ids_of_the_whole_document(tokenizers, tmp_path: Path, kind: str, text_name: str) -> None:
    text = TEXTS[text_name]
    src = tmp_path / "doc.txt"
    src.write_text(text, encoding="utf-8")
    assert len(text.encode()) > 10 * 1024  # read in 1 KiB chunks: many cuts
    prepare([str(src)], tokenizers[kind], tmp_path / "ds",
            PrepareOptions(progress=False, val_fraction=0.0, chunk_bytes=1024))
    ds = open_dataset(tmp_path / "ds")
    tok = ds.load_tokenizer()
    got = np.concatenate([np.asarray(s) for s in ds.shards("train")]).tolist()
    want = list(tok.encode_ordinary(text))  # one document: no end-of-text token is added
    first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    assert got == want, f"{len(got)} vs {len(want)} ids, first difference at {first}"
