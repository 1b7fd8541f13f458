"""Export: gptforge models -> Hugging Face GPT-2 folders, loaded back by transformers offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gptforge import GPT, GPTConfig, load_model, load_tokenizer
from gptforge.errors import ModelError, TokenizerError
from gptforge.interop.hf import export_hf, import_hf
from gptforge.model.loading import save_model

transformers = pytest.importorskip("transformers")

STRESS = (
    "Hello world!  Two  spaces, tabs\t\tand\nnew\n\nlines.   Trailing   \n"
    "It's, we'll, they've, I'm, you'd, she's: contractions. Numbers 123 4567 3.14159 1,000,000\n"
    "Ünïcödé, naïve café, 日本語のテキスト, 中文, 한국어, Ελληνικά, русский, עברית, عربى\n"
    "Emoji 🎉🎉 👩‍👩‍👧‍👦 🇫🇷 and symbols ©®™ ∑∫√ → ← \u200b zero width\r\n"
    "    def f(x):\n        return x ** 2  # code\n" + "a" * 300 + " " + "ab " * 50
)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """transformers must load the exported folder without the network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def _model_dir(tmp_path: Path, name: str = "ours", tokenizer: object = "gpt2", **overrides: object) -> tuple[Path, GPT]:
    torch.manual_seed(0)
    tok = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
    cfg = GPTConfig(**{**dict(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32), **overrides})
    model = GPT(cfg).eval()
    model.tokenizer = tok
    with torch.no_grad():  # non-trivial biases and norms, so a wrong map cannot pass by luck
        for name_, p in model.named_parameters():
            if name_.endswith("bias") or ".ln_" in name_:
                p.add_(torch.randn_like(p) * 0.1)
    return save_model(model, tmp_path / name, tokenizer=tok), model


@pytest.mark.parametrize(
    "overrides",
    [{}, {"bias": False}, {"activation": "relu", "tie_weights": False, "mlp_hidden": 48}, {"layer_norm_eps": 1e-6},
     {"pad_vocab_to": 64}, {"pad_vocab_to": 64, "tie_weights": False}],
    ids=["gpt2-like", "no-bias", "relu-untied-hidden48", "eps", "padded-vocab", "padded-vocab-untied"],
)
def test_export_loads_in_transformers_with_same_logits(tmp_path, gpt2_tokenizer_files, overrides) -> None:
    src, model = _model_dir(tmp_path, **overrides)
    out = tmp_path / "hf"
    export_hf(src, out, weights_only=bool(overrides))  # the tokenizer part is tested below
    hf = transformers.GPT2LMHeadModel.from_pretrained(out, local_files_only=True).eval()
    idx = torch.randint(0, model.config.vocab_size, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model(idx), rtol=0, atol=1e-4)


def test_export_import_round_trip_is_bit_identical(tmp_path, gpt2_tokenizer_files) -> None:
    src, _ = _model_dir(tmp_path, dropout=0.1, mlp_hidden=80)
    export_hf(src, tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "back")
    a, b = load_model(src), load_model(tmp_path / "back")
    assert a.config == b.config
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert b.tokenizer.fingerprint() == a.tokenizer.fingerprint()


def test_exported_gpt2_tokenizer_matches_ours(tmp_path, gpt2_tokenizer_files) -> None:
    src, model = _model_dir(tmp_path)
    export_hf(src, tmp_path / "hf")
    fast = transformers.GPT2TokenizerFast.from_pretrained(tmp_path / "hf", local_files_only=True)
    ours = model.tokenizer
    assert len(fast) == ours.vocab_size
    assert fast.eos_token_id == ours.eot_id == 50256
    assert fast(STRESS)["input_ids"] == ours.encode(STRESS)
    # the files are OpenAI's own, rebuilt: vocab.json == encoder.json, merges.txt == vocab.bpe (minus the header)
    import json

    enc, bpe = gpt2_tokenizer_files
    assert json.loads((tmp_path / "hf" / "vocab.json").read_text()) == json.loads(enc.read_text())
    strip = lambda p: [ln for ln in p.read_text(encoding="utf-8").split("\n")[1:] if ln]  # noqa: E731
    assert strip(tmp_path / "hf" / "merges.txt") == strip(bpe)


def test_exported_regex_bpe_tokenizer_matches_ours(tmp_path) -> None:
    """A BPE trained here with GPT-2's split is also expressible as vocab.json + merges.txt."""
    from gptforge.tokenizer.bpe import BPETokenizer

    corpus = STRESS * 3 + "the quick brown fox jumps over the lazy dog " * 20
    tok = BPETokenizer.train(corpus, 400, pattern="gpt2", specials=["<|endoftext|>"])
    src, model = _model_dir(tmp_path, tokenizer=tok)
    export_hf(src, tmp_path / "hf")
    fast = transformers.GPT2TokenizerFast.from_pretrained(tmp_path / "hf", local_files_only=True)
    text = STRESS + " foxes jumped over lazy dogs"
    assert fast(text)["input_ids"] == tok.encode(text)
    assert fast.eos_token_id == tok.eot_id


def test_export_refuses_what_gpt2_cannot_express(tmp_path, gpt2_tokenizer_files) -> None:
    src, _ = _model_dir(tmp_path, "post", norm="post")
    with pytest.raises(ModelError, match="post-LN"):
        export_hf(src, tmp_path / "hf1")
    src, _ = _model_dir(tmp_path, "heads", n_head=2, n_embd=32, head_size=12)
    with pytest.raises(ModelError, match="head size 12"):
        export_hf(src, tmp_path / "hf2")
    assert not (tmp_path / "hf1").exists() and not (tmp_path / "hf2").exists()


def test_export_char_tokenizer_needs_weights_only(tmp_path) -> None:
    from gptforge.tokenizer.char import CharTokenizer

    tok = CharTokenizer.train("hello world, a tiny corpus")
    src, model = _model_dir(tmp_path, tokenizer=tok)
    with pytest.raises(TokenizerError, match="--weights-only"):
        export_hf(src, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    export_hf(src, tmp_path / "hf", weights_only=True)
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["config.json", "model.safetensors"]
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    idx = torch.randint(0, tok.vocab_size, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model(idx), rtol=0, atol=1e-4)


LLAMA = dict(positions="rope", normalization="rmsnorm", activation="swiglu", bias=False, tie_weights=False,
             mlp_multiple_of=32, rope_base=1000.0)


@pytest.mark.parametrize("overrides", [LLAMA, {**LLAMA, "pad_vocab_to": 64, "tie_weights": True}],
                         ids=["llama", "llama-padded-tied"])
def test_modern_model_exports_as_llama_with_same_logits(tmp_path, overrides) -> None:
    src, model = _model_dir(tmp_path, **overrides)
    out = tmp_path / "hf"
    export_hf(src, out, weights_only=True)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    idx = torch.randint(0, model.config.vocab_size, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model(idx), rtol=0, atol=1e-4)


@pytest.mark.parametrize("overrides,named", [
    ({**LLAMA, "qk_norm": True}, "qk_norm"),
    ({**LLAMA, "activation": "relu2"}, "activation 'relu2'"),
    ({**LLAMA, "logit_softcap": 30.0}, "logit_softcap 30.0"),
    ({"activation": "relu2"}, "activation 'relu2'"),
    ({"normalization": "rmsnorm"}, "normalization 'rmsnorm'"),
    ({"logit_softcap": 30.0}, "logit_softcap 30.0"),
])
def test_export_refuses_modern_combinations_by_name(tmp_path, overrides, named) -> None:
    src, _ = _model_dir(tmp_path, **overrides)
    with pytest.raises(ModelError, match=named):
        export_hf(src, tmp_path / "hf", weights_only=True)
    assert not (tmp_path / "hf").exists()
