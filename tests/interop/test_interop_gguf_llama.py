"""The real consumer: llama.cpp (through llama-cpp-python) loads our GGUF export and decodes
what gptforge decodes. Slow tier: needs ``pip install 'gptforge[gguf]'`` (a llama.cpp build).

f32: greedy 64 tokens from three prompts equal ``gptforge`` greedy decoding token for token.
f16 / q8_0: the agreement and the largest logit difference are printed and bounded; the same
for a quantized gptforge model (int8 -> q8_0, int4 group 32 -> q4_0 / q4_1, its own integers)
against gptforge's exact-in-float reference path on that model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gptforge.interop.gguf import export_gguf
from gptforge.model.config import GPTConfig
from gptforge.model.gpt import GPT
from gptforge.model.loading import load_model, save_model
from gptforge.tokenizer import load_tokenizer
from tests.conftest import DATA_DIR

pytestmark = pytest.mark.slow
llama_cpp = pytest.importorskip("llama_cpp")

PROMPTS = ["Hello, I'm a language model,", "The capital of France is", "def fibonacci(n):\n    "]
NEW = 64


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    if not (DATA_DIR / "gpt2" / "encoder.json").is_file():
        pytest.skip("GPT-2 tokenizer files not found")
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=256, vocab_size=50257, dropout=0.0)).eval()
    with torch.no_grad():  # peaked next-token distributions: no near-ties for float noise to flip
        model.transformer.wte.weight.mul_(30)
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.05 * torch.randn_like(p))
    out = tmp_path_factory.mktemp("llama") / "model"
    save_model(model, out, tokenizer=load_tokenizer("gpt2"))
    return out


def llama_greedy(path: Path, prompt_ids: list[int], n: int) -> tuple[list[int], np.ndarray]:
    """Greedy decoding in llama.cpp; returns the new ids and the logits that chose them (n, V)."""
    llm = llama_cpp.Llama(str(path), n_ctx=256, n_threads=2, n_batch=256, logits_all=True, verbose=False)
    llm.reset()
    llm.eval(prompt_ids)
    out, logits = [], []
    for _ in range(n):
        row = np.array(llm.scores[llm.n_tokens - 1])
        logits.append(row)
        nxt = int(row.argmax())
        out.append(nxt)
        llm.eval([nxt])
    return out, np.stack(logits)


def ours_greedy(model, prompt_ids: list[int], n: int) -> list[int]:
    idx = torch.tensor([prompt_ids])
    return model.generate(idx, n, temperature=0)[0, len(prompt_ids) :].tolist()


def test_llama_cpp_tokenizes_like_us(model_dir, tmp_path) -> None:
    path = tmp_path / "m.gguf"
    export_gguf(model_dir, path)
    llm = llama_cpp.Llama(str(path), n_ctx=64, n_threads=2, verbose=False, vocab_only=True)
    tok = load_tokenizer("gpt2")
    text = (DATA_DIR / "the-verdict.txt").read_text(encoding="utf-8")[:4000] + " 日本語 🎉  x\n\n\ty"
    assert llm.tokenize(text.encode("utf-8"), add_bos=False, special=False) == tok.encode(text)


def test_llama_cpp_f32_greedy_equals_gptforge(model_dir, tmp_path) -> None:
    path = tmp_path / "f32.gguf"
    export_gguf(model_dir, path, dtype="f32")
    model = load_model(model_dir)
    for prompt in PROMPTS:
        ids = model.tokenizer.encode(prompt)
        theirs, logits = llama_greedy(path, ids, NEW)
        assert theirs == ours_greedy(model, ids, NEW), prompt
        with torch.no_grad():
            want = model(torch.tensor([ids + theirs]))[0, len(ids) - 1 : -1].numpy()  # (NEW, V)
        assert np.abs(logits - want).max() < 1e-2


@pytest.mark.parametrize("dtype,max_diff", [("f16", 0.5), ("q8_0", 1.0)])
def test_llama_cpp_f16_q8_agreement(model_dir, tmp_path, dtype, max_diff) -> None:
    path = tmp_path / f"{dtype}.gguf"
    export_gguf(model_dir, path, dtype=dtype)
    model = load_model(model_dir)
    agree, total, worst = 0, 0, 0.0
    for prompt in PROMPTS:
        ids = model.tokenizer.encode(prompt)
        theirs, logits = llama_greedy(path, ids, NEW)
        ours = ours_greedy(model, ids, NEW)
        same = next((k for k, (a, b) in enumerate(zip(theirs, ours, strict=True)) if a != b), NEW)
        agree += same
        total += NEW
        with torch.no_grad():  # logits on llama.cpp's own sequence: the same inputs on both sides
            want = model(torch.tensor([ids + theirs]))[0, len(ids) - 1 : -1].numpy()
        worst = max(worst, float(np.abs(logits - want).max()))
    print(f"{dtype}: {agree}/{total} tokens agree before the first difference; max logit diff {worst:.4f}")
    assert worst < max_diff and agree >= total // 2


def _agreement(path: Path, model, label: str) -> tuple[int, int, float]:
    """Greedy tokens equal before the first difference (summed over the prompts), of how many,
    and the largest logit difference on llama.cpp's own sequences."""
    agree, total, worst = 0, 0, 0.0
    for prompt in PROMPTS:
        ids = model.tokenizer.encode(prompt)
        theirs, logits = llama_greedy(path, ids, NEW)
        ours = ours_greedy(model, ids, NEW)
        agree += next((k for k, (a, b) in enumerate(zip(theirs, ours, strict=True)) if a != b), NEW)
        total += NEW
        with torch.no_grad():
            want = model(torch.tensor([ids + theirs]))[0, len(ids) - 1 : -1].float().numpy()
        worst = max(worst, float(np.abs(logits - want).max()))
    print(f"{label}: {agree}/{total} tokens agree before the first difference; max logit diff {worst:.4f}")
    return agree, total, worst


@pytest.mark.parametrize("method,symmetric", [("int8", True), ("int4", True), ("int4", False)])
def test_llama_cpp_runs_quantized_gptforge_models(model_dir, tmp_path, method, symmetric) -> None:
    from gptforge.quantize import quantize, save_quantized, set_backend

    q = quantize(load_model(model_dir), method, group_size=32, symmetric=symmetric)
    save_quantized(q, tmp_path / "q", tokenizer=q.tokenizer)
    summary = export_gguf(tmp_path / "q", tmp_path / "q.gguf")
    model = set_backend(load_model(tmp_path / "q"), "reference")  # dequantized weights, fp32 matmuls
    agree, total, worst = _agreement(tmp_path / "q.gguf", model, f"{method} -> {summary['quantized_as']}")
    # llama.cpp also rounds the activations to 8 bits for these matmuls; gptforge does not
    assert worst < 1.0 and agree >= total // 2
