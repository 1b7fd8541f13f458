"""GGUF export: transformers reads the file (its own GGUF loader and GPT-2 forward) and
computes our logits; the tokenizer inside gives tiktoken's / our ids; bad models are refused
by name. The llama.cpp checks (the real consumer) are in the slow tier."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gptforge.errors import ModelError, TokenizerError
from gptforge.interop.gguf import export_gguf
from gptforge.model.config import GPTConfig
from gptforge.model.gpt import GPT
from gptforge.model.loading import load_model, save_model
from gptforge.tokenizer import load_tokenizer
from tests.conftest import DATA_DIR, run_cli

pytest.importorskip("gguf")

TEXT = "Hello world! It's  a test: 1234 日本語 🎉\n\tend"


def _model_dir(tmp_path: Path, name: str = "m", tokenizer=None, **cfg) -> Path:
    if not (DATA_DIR / "gpt2" / "encoder.json").is_file():
        pytest.skip("GPT-2 tokenizer files not found")
    torch.manual_seed(0)
    # block_size 1024: transformers maps GGUF context_length to n_ctx, not n_positions (default 1024)
    base = dict(n_layer=2, n_head=4, n_embd=64, block_size=1024, vocab_size=50257, dropout=0.0)
    model = GPT(GPTConfig(**{**base, **cfg})).eval()
    with torch.no_grad():  # biases and norms away from their init, so a mix-up shows
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    out = tmp_path / name
    save_model(model, out, tokenizer=tokenizer or load_tokenizer("gpt2"))
    return out


# One case in the fast tier; the untied and padded ones (~20 s each: transformers' GGUF reader) in the slow tier.
@pytest.mark.parametrize("cfg", [
    {},
    pytest.param({"tie_weights": False}, marks=pytest.mark.slow),
    pytest.param({"bias": False, "pad_vocab_to": 64}, marks=pytest.mark.slow),
])
def test_transformers_reads_f32_gguf_with_our_logits(tmp_path, cfg) -> None:
    transformers = pytest.importorskip("transformers")
    src = _model_dir(tmp_path, **cfg)
    summary = export_gguf(src, tmp_path / "g" / "model.gguf")
    assert summary["tied"] == cfg.get("tie_weights", True)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "g", gguf_file="model.gguf").eval()
    ours = load_model(src)
    ids = torch.tensor([ours.tokenizer.encode(TEXT)])
    with torch.no_grad():
        want = ours(ids)
        got = hf(ids).logits
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_gguf_tokenizer_gives_our_ids(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    src = _model_dir(tmp_path)
    export_gguf(src, tmp_path / "g" / "model.gguf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "g", gguf_file="model.gguf")
    ours = load_tokenizer("gpt2")
    text = (DATA_DIR / "the-verdict.txt").read_text(encoding="utf-8")[:3000] + TEXT
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == ours.encode(text)
    assert hf_tok.eos_token == "<|endoftext|>"


def test_regex_bpe_with_gpt2_pattern_gives_our_ids(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    from gptforge.tokenizer.bpe import BPETokenizer

    text = (DATA_DIR / "the-verdict.txt").read_text(encoding="utf-8")
    tok = BPETokenizer.train(text[:5000], vocab_size=400, pattern="gpt2", specials=["<|endoftext|>"])
    src = _model_dir(tmp_path, tokenizer=tok, vocab_size=tok.vocab_size)
    export_gguf(src, tmp_path / "g" / "model.gguf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "g", gguf_file="model.gguf")
    sample = text[5000:7000] + TEXT
    assert hf_tok(sample, add_special_tokens=False)["input_ids"] == tok.encode(sample)


def test_char_tokenizer_is_written_exactly(tmp_path) -> None:
    """An ASCII char vocabulary (tinyshakespeare's) is a byte-level vocabulary with no merges."""
    transformers = pytest.importorskip("transformers")
    from gptforge.tokenizer.char import CharTokenizer

    corpus = (DATA_DIR / "tinyshakespeare.txt").read_text(encoding="utf-8")
    tok = CharTokenizer.train(corpus)
    src = _model_dir(tmp_path, tokenizer=tok, vocab_size=tok.vocab_size)
    export_gguf(src, tmp_path / "g" / "model.gguf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "g", gguf_file="model.gguf")
    text = corpus[:2000] + "  \n\n  ROMEO: what's this?!"
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == tok.encode(text)
    multi = CharTokenizer.train("ça va")
    with pytest.raises(TokenizerError, match="'ç', 2 UTF-8 bytes"):
        export_gguf(_model_dir(tmp_path, "multi", tokenizer=multi, vocab_size=multi.vocab_size), tmp_path / "x.gguf")


@pytest.mark.slow  # ~25 s (gguf's numpy quantizers / a CLI run per dtype)
def test_quantized_dtypes_are_smaller_and_close(tmp_path) -> None:
    gguf = pytest.importorskip("gguf")
    src = _model_dir(tmp_path)
    sizes = {}
    for dtype in ("f32", "f16", "q8_0", "q4_0"):
        s = export_gguf(src, tmp_path / f"{dtype}.gguf", dtype=dtype)
        sizes[dtype] = s["bytes"]
        reader = gguf.GGUFReader(tmp_path / f"{dtype}.gguf")
        t = {x.name: x for x in reader.tensors}
        assert t["position_embd.weight"].tensor_type == gguf.GGMLQuantizationType.F32
        assert t["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
        qkv = t["blk.0.attn_qkv.weight"]
        assert qkv.tensor_type.name.lower() == dtype
        back = gguf.quants.dequantize(qkv.data, qkv.tensor_type).reshape(192, 64)
        want = load_model(src).transformer.h[0].attn.c_attn.weight.detach().numpy()
        tol = {"f32": 0, "f16": 1e-3, "q8_0": 0.01, "q4_0": 0.1}[dtype]
        assert np.abs(back - want).max() <= tol * max(1.0, np.abs(want).max())
    assert sizes["f32"] > sizes["f16"] > sizes["q8_0"] > sizes["q4_0"]


def test_refusals_name_the_reason(tmp_path) -> None:
    with pytest.raises(ModelError, match="activation 'relu'"):
        export_gguf(_model_dir(tmp_path, "relu", activation="relu"), tmp_path / "x.gguf")
    with pytest.raises(ModelError, match="post-LN"):
        export_gguf(_model_dir(tmp_path, "post", norm="post"), tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_patternless_bpe_is_refused_with_the_reason(tmp_path) -> None:
    from gptforge.tokenizer.bpe import BPETokenizer

    text = (DATA_DIR / "the-verdict.txt").read_text(encoding="utf-8")[:2000]
    tok = BPETokenizer.train(text, vocab_size=300)
    assert tok.kind == "bpe"
    src = _model_dir(tmp_path, tokenizer=tok, vocab_size=tok.vocab_size)
    with pytest.raises(TokenizerError, match="always pre-splits text"):
        export_gguf(src, tmp_path / "x.gguf")


@pytest.mark.slow  # ~25 s (gguf's numpy quantizers / a CLI run per dtype)
def test_cli_gguf(tmp_path) -> None:
    src = _model_dir(tmp_path)
    r = run_cli("export", "--model", str(src), "--format", "gguf", "--out", str(tmp_path / "m.gguf"), "--dtype", "q8_0")
    assert r.returncode == 0, r.stderr
    assert "m.gguf" in r.stdout and "q8_0" in r.stdout
    r = run_cli("export", "--model", str(src), "--format", "gguf", "--out", str(tmp_path / "m.gguf"))
    assert r.returncode == 2 and r.stderr.startswith("error: output") and "--overwrite" in r.stderr
    r = run_cli("export", "--model", str(src), "--format", "gguf", "--out", str(tmp_path / "m.gguf"), "--overwrite")
    assert r.returncode == 0, r.stderr
    (tmp_path / "notes.txt").write_text("mine")
    r = run_cli("export", "--model", str(src), "--format", "gguf", "--out", str(tmp_path / "notes.txt"), "--overwrite")
    assert r.returncode == 2 and "is not a GGUF file" in r.stderr
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("method,symmetric,qtype", [("int8", True, "q8_0"), ("int4", True, "q4_0"), ("int4", False, "q4_1")])
def test_quantized_model_keeps_its_integers(tmp_path, method, symmetric, qtype) -> None:
    """A quantized model's matrices go as GGUF blocks holding its own integers: gguf's own
    dequantizer (the reader's code, not ours) gives our dequantized weights, but for the f16
    rounding of the scales (and of q4_1's minimums), a relative 2^-11 each."""
    gguf = pytest.importorskip("gguf")
    from gptforge.quantize import quantize, save_quantized

    src = _model_dir(tmp_path)
    q = quantize(load_model(src), method, group_size=32, symmetric=symmetric, include_embeddings=True)
    save_quantized(q, tmp_path / "q", tokenizer=q.tokenizer)
    summary = export_gguf(tmp_path / "q", tmp_path / "q.gguf")
    assert summary["quantized_as"] == qtype and summary["tensor_types"][qtype] == 2 * 4 + 1  # 4 per block + wte
    tensors = {x.name: x for x in gguf.GGUFReader(tmp_path / "q.gguf").tensors}
    model = load_model(tmp_path / "q")
    assert "output.weight" not in tensors  # tied: llama.cpp reads token_embd for the head
    for name, module in [("blk.0.attn_qkv.weight", model.transformer.h[0].attn.c_attn),
                         ("blk.1.ffn_down.weight", model.transformer.h[1].mlp.c_proj),
                         ("token_embd.weight", model.transformer.wte)]:  # fmt: skip
        t = tensors[name]
        assert t.tensor_type.name.lower() == qtype, name
        want = module.dequantized_weight().numpy()  # (N, K)
        got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(want.shape)
        tol = 2**-9 * np.abs(want).max(axis=1, keepdims=True) + 1e-7  # 3 roundings of 2^-11 at most, per row
        assert (np.abs(got - want) <= tol).all(), name
    assert tensors["position_embd.weight"].tensor_type == gguf.GGMLQuantizationType.F32


def test_quantized_layout_without_a_gguf_block_is_refused(tmp_path) -> None:
    from gptforge.quantize import quantize, save_quantized

    src = _model_dir(tmp_path)
    q = quantize(load_model(src), "int4", group_size=64)
    save_quantized(q, tmp_path / "q", tokenizer=q.tokenizer)
    with pytest.raises(ModelError, match="groups of 64.*--group-size 32"):
        export_gguf(tmp_path / "q", tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_unmerged_lora_is_refused(tmp_path) -> None:
    """The variants are read from config.json's "variants" list (the check once looked in the
    extra config, where they no longer are, and let an unmerged LoRA model through)."""
    from gptforge.model.lora import apply_lora

    model = load_model(_model_dir(tmp_path))
    apply_lora(model, rank=4)
    save_model(model, tmp_path / "lora", tokenizer=model.tokenizer)
    with pytest.raises(ModelError, match="unmerged LoRA"):
        export_gguf(tmp_path / "lora", tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()
