"""Evaluation: sliding windows, and loss/perplexity/bits per byte checked against transformers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from gptforge.evaluate import evaluate_text, evaluate_tokens, sliding_windows, text_tokens
from gptforge.model.hf_gpt2 import load_hf_gpt2

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("n", [2, 3, 10, 31, 32, 33, 100, 257])
@pytest.mark.parametrize("block,stride", [(1, 1), (4, 1), (8, 3), (8, 8), (16, 8), (32, 31)])
def test_windows_score_each_token_once_with_context(n: int, block: int, stride: int) -> None:
    windows = sliding_windows(n, block, stride)
    scored: list[int] = []
    for w in windows:
        assert w.end - w.start == min(block, n - 1)  # one length: windows batch together
        assert w.start <= w.score_from - 1 < w.end  # the first scored target is inside the window
        targets = range(max(w.score_from, w.start + 1), w.end + 1)
        scored += targets
        for t in targets:  # target t sees tokens start..t-1: full block, or the block - stride overlap
            assert t - w.start >= min(t, block - stride + 1, block)
    assert scored == list(range(1, n))


def _hf_window_loss(hf: torch.nn.Module, ids: list[int], block: int, stride: int) -> tuple[float, int]:
    """Mean loss over the same windows, computed by transformers' own labels/shift/loss code."""
    total, count = 0.0, 0
    with torch.no_grad():
        for w in sliding_windows(len(ids), block, stride):
            x = torch.tensor([ids[w.start : w.end + 1]])  # inputs plus the last target: HF shifts labels itself
            labels = x.clone()
            labels[:, : w.score_from - w.start] = -100
            n = int((labels[:, 1:] != -100).sum())
            total += float(hf(x, labels=labels).loss) * n
            count += n
    return total / count, count


@pytest.mark.parametrize("block,stride", [(32, 16), (32, 32), (24, 5)])
def test_eval_loss_equals_transformers(make_hf_folder, block: int, stride: int) -> None:
    folder, hf = make_hf_folder(vocab_size=512, tokenizer=False)  # context 64: HF's block + 1 fits
    model = load_hf_gpt2(folder, tokenizer=None)
    ids = np.random.default_rng(block + stride).integers(0, 512, size=300).tolist()
    byte_lengths = np.random.default_rng(1).integers(0, 5, size=512)
    want, count = _hf_window_loss(hf, ids, block, stride)
    got = evaluate_tokens(model, ids, block_size=block, stride=stride, batch_size=3, byte_lengths=byte_lengths)
    assert got["tokens"] == count == len(ids) - 1
    assert got["loss"] == pytest.approx(want, abs=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(want), rel=1e-5)
    assert got["bytes"] == int(byte_lengths[ids[1:]].sum())
    assert got["bits_per_byte"] == pytest.approx(want * count / math.log(2) / got["bytes"], rel=1e-6)


def test_eval_text_scores_every_byte(make_hf_folder, data_dir) -> None:
    folder, hf = make_hf_folder()
    model = load_hf_gpt2(folder)
    text = (data_dir / "the-verdict.txt").read_text(encoding="utf-8")[:600] + " 日本語 🎉"
    ids = text_tokens(model.tokenizer, text)
    assert ids[0] == model.tokenizer.eot_id  # <|endoftext|> first, so the text's first token is scored
    want, count = _hf_window_loss(hf, ids, 32, 16)
    got = evaluate_text(model, text, block_size=32, stride=16)
    assert got["loss"] == pytest.approx(want, abs=1e-5) and got["tokens"] == count
    assert got["bytes"] == len(text.encode("utf-8"))


def test_eval_batch_size_does_not_change_the_result(make_hf_folder) -> None:
    folder, _ = make_hf_folder(vocab_size=512, tokenizer=False)
    model = load_hf_gpt2(folder, tokenizer=None)
    tokens = np.random.default_rng(0).integers(0, 512, size=500)
    a = evaluate_tokens(model, tokens, block_size=64, stride=20, batch_size=1)
    b = evaluate_tokens(model, torch.from_numpy(tokens), block_size=64, stride=20, batch_size=7)
    assert a["loss"] == pytest.approx(b["loss"], abs=1e-5) and a["tokens"] == b["tokens"] == 499


def test_eval_cli_text_and_data(make_hf_folder, data_dir, tmp_path, cli) -> None:
    folder, hf = make_hf_folder()
    text_file = tmp_path / "t.txt"
    text_file.write_text((data_dir / "the-verdict.txt").read_text(encoding="utf-8")[:1200], encoding="utf-8")
    r = cli("eval", "--model", str(folder), "--text", str(text_file), "--stride", "16", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    want = evaluate_text(load_hf_gpt2(folder), text_file.read_text(encoding="utf-8"), stride=16)
    assert out["loss"] == pytest.approx(want["loss"], abs=1e-5)
    assert out["stride"] == 16 and out["block_size"] == 64

    ds = tmp_path / "ds"
    r = cli("prepare", "--input", str(text_file), "--tokenizer", "gpt2", "--out", str(ds), "--val-fraction", "0.5")
    assert r.returncode == 0, r.stderr
    r = cli("eval", "--model", str(folder), "--data", str(ds), "--split", "val", "--max-tokens", "100", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    val = np.fromfile(ds / "val_000.bin", dtype="<u2")[:100]
    want = evaluate_tokens(load_hf_gpt2(folder), val)
    assert out["tokens"] == len(val) - 1 and out["loss"] == pytest.approx(want["loss"], abs=1e-5)
