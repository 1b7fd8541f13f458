"""Bad configs and bad inputs raise ConfigError / ModelError naming the field and the value;
through the CLI they give one line on stderr, exit code 2 and no traceback."""

from __future__ import annotations

import json

import pytest
import torch

from gptforge.errors import ConfigError, ModelError
from gptforge.model.config import GPTConfig
from gptforge.model.gpt import GPT


@pytest.mark.parametrize(
    "fields, pattern",
    [
        (dict(n_embd=100, n_head=3), r"model.n_embd \(100\) is not divisible by model.n_head \(3\)"),
        (dict(n_layer=0), r"model.n_layer must be a positive integer, got 0"),
        (dict(n_head=-2), r"model.n_head must be a positive integer, got -2"),
        (dict(block_size=True), r"model.block_size must be a positive integer, got True"),
        (dict(vocab_size=0), r"model.vocab_size must be a positive integer or None, got 0"),
        (dict(head_size=-1), r"model.head_size must be a positive integer or None, got -1"),
        (dict(dropout=1.0), r"model.dropout must be in \[0, 1\), got 1.0"),
        (dict(activation="silu"), r"model.activation must be one of gelu, relu, relu2, swiglu, got 'silu'"),
        (dict(attention="flash"), r"model.attention must be one of sdpa, explicit, got 'flash'"),
        (dict(layer_norm_eps=0.0), r"model.layer_norm_eps must be positive"),
    ],
)
def test_bad_config_names_field_and_value(fields: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        GPTConfig(**fields)


def test_all_config_problems_reported_at_once() -> None:
    with pytest.raises(ConfigError) as e:
        GPTConfig(n_layer=0, n_embd=-4, dropout=2.0)
    assert all(s in str(e.value) for s in ("model.n_layer", "model.n_embd", "model.dropout"))


def test_head_size_apart_from_n_embd_is_allowed() -> None:
    config = GPTConfig(n_embd=100, n_head=3, head_size=30)  # 3 * 30 != 100 is fine
    assert config.head_dim == 30


def test_unknown_preset_suggests() -> None:
    with pytest.raises(ConfigError, match="did you mean 'gpt2'"):
        GPTConfig.from_preset("gtp2")


def test_missing_vocab_size() -> None:
    with pytest.raises(ModelError, match="model.vocab_size is not set"):
        GPT(GPTConfig.from_preset("shakespeare-char"))


@pytest.fixture(scope="module")
def tiny() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.from_preset("test-tiny")).eval()  # vocab 256, block_size 32


def test_sequence_longer_than_context(tiny: GPT) -> None:
    with pytest.raises(ModelError, match="sequence length 33 exceeds model.block_size 32"):
        tiny(torch.zeros(1, 33, dtype=torch.long))
    cache = tiny.make_kv_cache(1)
    tiny(torch.zeros(1, 30, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ModelError, match="sequence length 34 exceeds model.block_size 32"):
        tiny(torch.zeros(1, 4, dtype=torch.long), kv_cache=cache)
    assert cache.pos == 30  # nothing was written


@pytest.mark.parametrize("bad", [256, 1000, -1])
def test_token_id_out_of_range(tiny: GPT, bad: int) -> None:
    idx = torch.tensor([[1, 2, bad, 3]])
    with pytest.raises(ModelError, match=rf"token id {bad} is out of range for model.vocab_size 256"):
        tiny(idx)


def test_other_bad_inputs(tiny: GPT) -> None:
    with pytest.raises(ModelError, match="integer tensor of shape"):
        tiny(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ModelError, match="integer tensor of shape"):
        tiny(torch.zeros(1, 4))
    with pytest.raises(ModelError, match="empty sequence"):
        tiny(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ModelError, match=r"attention_mask must have shape"):
        tiny(torch.zeros(2, 4, dtype=torch.long), attention_mask=torch.ones(2, 5))
    with pytest.raises(ModelError, match="position id 40 is out of range for model.block_size 32"):
        tiny(torch.zeros(1, 2, dtype=torch.long), position_ids=torch.tensor([[39, 40]]))
    with pytest.raises(ModelError, match="KV cache holds 1 sequences but the batch has 2"):
        tiny(torch.zeros(2, 2, dtype=torch.long), kv_cache=tiny.make_kv_cache(1))
    cache = tiny.make_kv_cache(1, max_seq_len=4)
    with pytest.raises(ModelError, match="KV cache overflow: 5 positions exceed its size 4"):
        tiny(torch.zeros(1, 5, dtype=torch.long), kv_cache=cache)


def _one_line_error(result) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_cli_model_info_figures(cli) -> None:
    result = cli("model", "info", "--preset", "gpt2", "--json", "--tokens-per-s", "5e5", "--peak", "a100")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["params"]["total"] == 124_439_808  # Hugging Face's count for GPT-2 124M
    assert info["params"]["without_positions"] == 124_439_808 - 1024 * 768
    flops = 6 * info["params"]["without_positions"] + 12 * 12 * 12 * 64 * 1024
    assert info["flops_per_token_train"] == flops
    assert info["mfu"] == pytest.approx(5e5 * flops / 312e12)
    text = cli("model", "info", "--preset", "toygpt-large", "--model.n_layer", "2")
    assert text.returncode == 0, text.stderr
    assert "2 layers" in text.stdout and "FLOPs/token train" in text.stdout


def test_cli_model_info_config_and_model_dir(cli, tmp_path) -> None:
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("preset: shakespeare-char\nmodel:\n  n_layer: 3\n  vocab_size: 65\n")
    result = cli("model", "info", "--config", str(yaml_file), "--json")
    assert result.returncode == 0, result.stderr
    config = GPTConfig.from_preset("shakespeare-char", n_layer=3, vocab_size=65)
    with torch.device("meta"):
        expected = GPT(config).num_params()
    assert json.loads(result.stdout)["params"]["total"] == expected

    from gptforge.model.loading import save_model

    torch.manual_seed(0)
    save_model(GPT(GPTConfig.from_preset("test-tiny")), tmp_path / "m")
    result = cli("model", "info", "--model", str(tmp_path / "m"), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["params"]["total"] == GPT(GPTConfig.from_preset("test-tiny")).num_params()


BAD_INFO_ARGS = [
    (["--preset", "gpt2", "--model.n_head", "5"], "model.n_embd (768) is not divisible by model.n_head (5)"),
    (["--preset", "gpt2", "--model.n_layer", "0"], "model.n_layer must be a positive integer, got 0"),
    (["--preset", "gpt2", "--model.n_layers", "4"], "did you mean 'model.n_layer'"),
    (["--preset", "gpt2", "--train.lr", "4"], "unknown config key 'train'"),
    (["--preset", "gtp2"], "unknown preset 'gtp2'"),
    (["--preset", "gpt2", "--seq-len", "4096"], "--seq-len 4096"),
    (["--preset", "gpt2", "--tokens-per-s", "1", "--peak", "tpu9"], "unknown device 'tpu9'"),
    (["--model", "/nonexistent/model"], "does not exist"),
    (["--config", "/nonexistent/run.yaml"], "not found"),
]


@pytest.mark.parametrize("args, needle", BAD_INFO_ARGS[:3])
def test_cli_model_info_bad_input_subprocess(cli, args: list[str], needle: str) -> None:
    assert needle in _one_line_error(cli("model", "info", *args))


@pytest.mark.parametrize("args, needle", BAD_INFO_ARGS)
def test_cli_model_info_bad_input(capsys, args: list[str], needle: str) -> None:
    """The same entry point in-process (fast): exit code 2, one line, no traceback."""
    import subprocess

    from gptforge.cli.main import main

    code = main(["model", "info", *args])
    captured = capsys.readouterr()
    result = subprocess.CompletedProcess(args, code, captured.out, captured.err)
    assert needle in _one_line_error(result)


def test_model_file_without_the_token_embedding_names_the_key(tmp_path) -> None:
    """A tied model's file lacking ``transformer.wte.weight`` (the LM head is stored as it) once
    gave an AttributeError on None; the error names the missing key."""
    from gptforge.io import load_safetensors, save_safetensors
    from gptforge.model.loading import load_model, save_model

    torch.manual_seed(0)
    save_model(GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8)), tmp_path / "m")
    state = load_safetensors(tmp_path / "m" / "model.safetensors")
    del state["transformer.wte.weight"]
    save_safetensors(state, tmp_path / "m" / "model.safetensors")
    with pytest.raises(ModelError, match=r"missing keys \[.*'transformer.wte.weight'"):
        load_model(tmp_path / "m")
