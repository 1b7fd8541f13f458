"""Import: Hugging Face GPT-2 folders -> gptforge models, checked against transformers."""

from __future__ import annotations

import time

import pytest
import torch

from gptforge.model.hf_gpt2 import load_hf_gpt2

transformers = pytest.importorskip("transformers")


def _hf_greedy(model: torch.nn.Module, idx: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy decoding with full recomputation: the plainest reference."""
    with torch.no_grad():
        for _ in range(steps):
            nxt = model(idx).logits[:, -1].argmax(-1, keepdim=True)
            idx = torch.cat([idx, nxt], dim=1)
    return idx


def _check_same(ours: torch.nn.Module, hf: torch.nn.Module, vocab: int, T: int, greedy_steps: int = 12) -> None:
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, vocab, (2, T), generator=g)
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), hf(idx).logits, rtol=0, atol=1e-4)
    prompt = idx[:, :5]
    want = _hf_greedy(hf, prompt, greedy_steps)
    got = ours.generate(prompt, greedy_steps, temperature=0)
    assert torch.equal(got, want)


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "pytorch_model.bin"])
def test_import_tiny_matches_transformers(make_hf_folder, safe: bool) -> None:
    folder, hf = make_hf_folder(safe=safe)
    ours = load_hf_gpt2(folder)
    assert ours.config.n_layer == 2 and ours.config.block_size == 64 and ours.config.tie_weights
    assert ours.lm_head.weight is ours.transformer.wte.weight
    _check_same(ours, hf, 50257, 64)


def test_import_variants_n_inner_relu_untied_eps(make_hf_folder) -> None:
    folder, hf = make_hf_folder(n_inner=40, activation_function="relu", tie_word_embeddings=False,
                                layer_norm_epsilon=1e-6)
    ours = load_hf_gpt2(folder)
    c = ours.config
    assert (c.mlp_hidden, c.activation, c.tie_weights, c.layer_norm_eps) == (40, "relu", False, 1e-6)
    _check_same(ours, hf, 50257, 64)


def test_load_model_accepts_hf_folder(make_hf_folder) -> None:
    import gptforge

    folder, hf = make_hf_folder()
    model = gptforge.load_model(folder)
    assert not model.training
    assert model.tokenizer is not None and model.tokenizer.kind == "gpt2"
    assert model.tokenizer.encode("Hello world") == [15496, 995]  # GPT-2's ids (tiktoken agrees)
    idx = torch.randint(0, 50257, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), hf(idx).logits, rtol=0, atol=1e-4)


def test_import_cli_writes_model_dir(make_hf_folder, tmp_path, cli) -> None:
    import gptforge

    folder, hf = make_hf_folder()
    out = tmp_path / "imported"
    r = cli("import", "--format", "hf", "--from", str(folder), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}
    model = gptforge.load_model(out)
    assert model.tokenizer.kind == "gpt2"
    idx = torch.randint(0, 50257, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), hf(idx).logits, rtol=0, atol=1e-4)


def test_import_without_tokenizer_falls_back_to_builtin_gpt2(make_hf_folder, caplog) -> None:
    import logging

    folder, _ = make_hf_folder(tokenizer=False)
    log = logging.getLogger("gptforge.model.hf_gpt2")
    log.addHandler(caplog.handler)  # direct, whatever another test did to propagation
    try:
        model = load_hf_gpt2(folder)
    finally:
        log.removeHandler(caplog.handler)
    assert model.tokenizer.kind == "gpt2"
    assert "built-in GPT-2 tokenizer" in caplog.text


@pytest.mark.slow  # 18 s on an idle 2-core CPU, about a minute under load
def test_import_gpt2_124m_config(make_hf_folder) -> None:
    """The full GPT-2 small shape (random weights); the other sizes share the generic config map."""
    t0 = time.perf_counter()
    folder, hf = make_hf_folder(n_positions=1024, n_embd=768, n_layer=12, n_head=12)
    ours = load_hf_gpt2(folder)
    assert ours.num_params() == sum(p.numel() for p in hf.parameters()) == 124_439_808
    _check_same(ours, hf, 50257, 128, greedy_steps=4)
    assert time.perf_counter() - t0 < 120


@pytest.mark.parametrize(
    "size,layers,heads,embd",
    [("medium", 24, 16, 1024), ("large", 36, 20, 1280), ("xl", 48, 25, 1600)],
)
def test_config_map_all_sizes(size: str, layers: int, heads: int, embd: int) -> None:
    """The published configs of the larger sizes map to the matching presets."""
    from gptforge.model.config import GPTConfig
    from gptforge.model.hf_gpt2 import gpt_config_from_hf

    hf = transformers.GPT2Config(n_layer=layers, n_head=heads, n_embd=embd, n_positions=1024, vocab_size=50257)
    ours = gpt_config_from_hf(hf.to_dict())
    preset = GPTConfig.from_preset(f"gpt2-{size}")
    for field in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "head_dim", "hidden_dim",
                  "activation", "norm", "tie_weights", "bias"):
        assert getattr(ours, field) == getattr(preset, field), field


def test_tokenizer_from_fast_tokenizer_json_only(make_hf_folder, tmp_path, monkeypatch) -> None:
    """A folder with only a fast ``tokenizer.json`` (no vocab.json/merges.txt) still gives GPT-2's ids."""
    import tempfile

    from gptforge import load_tokenizer
    from gptforge.model.hf_gpt2 import tokenizer_from_hf_folder

    folder, _ = make_hf_folder()
    fast = transformers.GPT2TokenizerFast.from_pretrained(folder, local_files_only=True)
    only = tmp_path / "fast_only"
    fast.save_pretrained(only)
    for name in ("vocab.json", "merges.txt"):
        (only / name).unlink(missing_ok=True)
    assert (only / "tokenizer.json").is_file()
    shared_tmp = tmp_path / "shared_tmp"  # stands for /tmp: nothing may be written there
    shared_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(shared_tmp))
    tok = tokenizer_from_hf_folder(only, 50257)
    text = "Hello world!  It's 2026: naïve café, 日本語 🎉\n\n  code()"
    assert tok.encode(text) == load_tokenizer("gpt2").encode(text) == fast(text)["input_ids"]
    assert list(shared_tmp.iterdir()) == []  # built in memory (a predictable /tmp folder once)
