"""`gptforge quantize` end to end, and bad input through the CLI (one line, exit 2, nothing overwritten)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gptforge.model.config import GPTConfig
from gptforge.model.gpt import GPT
from gptforge.model.loading import load_model, save_model
from gptforge.quantize import QuantLinear


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory, request) -> tuple[Path, Path]:
    """A char-level dataset of the-verdict and a small untrained model dir with its tokenizer."""
    from tests.conftest import DATA_DIR, run_cli

    if not (DATA_DIR / "the-verdict.txt").is_file():
        pytest.skip(f"shared data not found at {DATA_DIR}")
    root = tmp_path_factory.mktemp("qcli")
    data = root / "data"
    r = run_cli(
        "prepare",
        "--input",
        str(DATA_DIR / "the-verdict.txt"),
        "--tokenizer",
        "char",
        "--out",
        str(data),
        "--val-fraction",
        "0.2",
    )
    assert r.returncode == 0, r.stderr
    from gptforge.tokenizer import load_tokenizer

    tok = load_tokenizer(str(data / "tokenizer.json"))
    torch.manual_seed(0)
    cfg = GPTConfig.from_preset("test-tiny", vocab_size=tok.vocab_size, n_embd=64, n_head=4)
    model_dir = root / "model"
    save_model(GPT(cfg), model_dir, tokenizer=tok)
    return model_dir, data


def _one_error_line(r) -> str:  # noqa: ANN001
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def _main(capsys, *args: str) -> str:
    """Run the CLI in this process (the happy paths; bad input goes through a subprocess below)."""
    from gptforge.cli.main import main

    rc = main(list(args))
    out = capsys.readouterr()
    assert rc == 0, out.err
    return out.out


def test_quantize_report_json(model_and_data, tmp_path: Path, capsys) -> None:
    model_dir, data = model_and_data
    out = tmp_path / "q8"
    stdout = _main(
        capsys,
        "quantize",
        "--model",
        str(model_dir),
        "--method",
        "int8",
        "--out",
        str(out),
        "--report",
        "--data",
        str(data),
        "--eval-windows",
        "4",
        "--json",
    )
    rep = json.loads(stdout)
    o, q = rep["original"], rep["quantized"]
    assert rep["quantization"]["method"] == "int8"
    assert q["file_bytes"] == (out / "model.safetensors").stat().st_size
    assert o["file_bytes"] == (model_dir / "model.safetensors").stat().st_size
    assert q["file_bytes"] < o["file_bytes"]
    assert q["quantized_layers_bytes"] / o["quantized_layers_bytes"] <= 0.27
    assert q["tokens_per_s"] > 0 and o["tokens_per_s"] > 0
    assert rep["eval_tokens"] == 4 * 32
    assert 0 <= q["kl"] < 1e-3 and abs(q["val_loss"] - o["val_loss"]) / o["val_loss"] < 0.005
    config = json.loads((out / "config.json").read_text())
    assert config["variants"][-1]["kind"] == "quantization" and config["variants"][-1]["bits"] == 8
    assert (out / "tokenizer.json").is_file()
    loaded = load_model(out)
    assert isinstance(loaded.transformer.h[0].mlp.c_fc, QuantLinear)
    assert loaded.tokenizer is not None


def test_quantize_int4_report_table_and_generate(model_and_data, tmp_path: Path, capsys) -> None:
    model_dir, data = model_and_data
    out = tmp_path / "q4"
    stdout = _main(
        capsys,
        "quantize",
        "--model",
        str(model_dir),
        "--method",
        "int4",
        "--group-size",
        "32",
        "--include-embeddings",
        "--out",
        str(out),
        "--data",
        str(data),
        "--eval-windows",
        "2",
    )
    for label in ("model.safetensors", "decode tokens/s", "val loss", "perplexity", "mean KL"):
        assert label in stdout
    # the quantized dir is used transparently by `gptforge generate`
    stdout = _main(
        capsys,
        "generate",
        "--model",
        str(out),
        "--prompt",
        "I had",
        "--max-new-tokens",
        "5",
        "--temperature",
        "0",
    )
    assert stdout.strip()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--method", "int3"], "unknown quantization method 'int3'"),
        (["--method", "int4", "--group-size", "48"], "group size 48"),
        (["--method", "int4", "--group-size", "128"], "does not divide"),
        (["--method", "int8", "--eval-windows", "0"], "--eval-windows"),
    ],
)
def test_bad_input_one_line(
    model_and_data, tmp_path: Path, cli, args: list[str], needle: str
) -> None:
    model_dir, _ = model_and_data
    out = tmp_path / "out"
    r = cli("quantize", "--model", str(model_dir), "--out", str(out), *args)
    assert needle in _one_error_line(r)
    assert not out.exists()


def test_already_quantized_and_existing_output(model_and_data, tmp_path: Path, cli) -> None:
    model_dir, _ = model_and_data
    q = tmp_path / "q"
    r = cli("quantize", "--model", str(model_dir), "--method", "int8-dynamic", "--out", str(q))
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and "of the original" in r.stdout  # no --report: a one-line summary
    r = cli("quantize", "--model", str(q), "--method", "int4", "--out", str(tmp_path / "qq"))
    assert "already quantized" in _one_error_line(r)
    before = (q / "model.safetensors").read_bytes()
    r = cli("quantize", "--model", str(model_dir), "--method", "int4", "--out", str(q))
    assert "already exists" in _one_error_line(r)
    assert (q / "model.safetensors").read_bytes() == before  # nothing overwritten
    r = cli(
        "quantize",
        "--model",
        str(tmp_path / "missing"),
        "--method",
        "int8",
        "--out",
        str(tmp_path / "x"),
    )
    assert "does not exist" in _one_error_line(r)
