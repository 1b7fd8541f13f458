"""Bad input to import/export/eval: one clear line on stderr, exit 2, nothing written or run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gptforge.cli.main import main

pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def _restore_logging() -> None:
    """``main()`` configures the ``gptforge`` logger (handler, no propagation); undo it after each test."""
    import logging

    log = logging.getLogger("gptforge")
    saved = (list(log.handlers), log.propagate, log.level)
    yield
    log.handlers[:], log.propagate, log.level = saved[0], saved[1], saved[2]


def _run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str]:
    """The CLI in-process (same code path as the subprocess, minus the interpreter start-up)."""
    code = main(list(argv))
    err = capsys.readouterr().err
    return code, err


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    return lines[0]


class _Payload:
    """Unpickling this runs ``open(marker, "w")``: the attack a .bin file can carry."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (open, (self.marker, "w"))


def test_pickle_payload_is_refused_and_not_run(make_hf_folder, tmp_path, cli) -> None:
    folder, _ = make_hf_folder(safe=False)
    marker = tmp_path / "pwned"
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    state["h.0.attn.bias"] = _Payload(str(marker))
    torch.save(state, folder / "pytorch_model.bin")
    r = cli("import", "--format", "hf", "--from", str(folder), "--out", str(tmp_path / "out"))
    assert r.returncode == 2
    line = _one_error_line(r.stderr)
    assert "refused" in line and "pytorch_model.bin" in line
    assert not marker.exists()
    assert not (tmp_path / "out").exists()
    r = cli("eval", "--model", str(folder), "--text", str(folder / "config.json"))  # load_model path too
    assert r.returncode == 2 and "refused" in _one_error_line(r.stderr)
    assert not marker.exists()


def test_not_a_gpt2_folder(tmp_path, cli, capsys) -> None:
    empty = tmp_path / "stuff"
    empty.mkdir()
    (empty / "notes.txt").write_text("hi")
    r = cli("import", "--format", "hf", "--from", str(empty), "--out", str(tmp_path / "out"))
    assert r.returncode == 2
    line = _one_error_line(r.stderr)
    assert "no config.json" in line and "notes.txt" in line
    (empty / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    code, err = _run(capsys, "import", "--from", str(empty), "--out", str(tmp_path / "out"))
    assert code == 2 and "llama" in _one_error_line(err)
    code, err = _run(capsys, "import", "--from", str(tmp_path / "missing"), "--out", str(tmp_path / "out"))
    assert code == 2 and "not a folder" in _one_error_line(err)
    assert not (tmp_path / "out").exists()


def test_unsupported_gpt2_options_are_named(make_hf_folder, tmp_path, capsys) -> None:
    folder, _ = make_hf_folder(activation_function="gelu", scale_attn_by_inverse_layer_idx=True)
    code, err = _run(capsys, "import", "--from", str(folder), "--out", str(tmp_path / "out"))
    line = _one_error_line(err)
    assert code == 2 and "activation_function 'gelu'" in line and "scale_attn_by_inverse_layer_idx" in line


def test_mismatched_shapes_and_missing_keys_are_named(make_hf_folder, tmp_path, capsys) -> None:
    from safetensors.torch import load_file, save_file

    folder, _ = make_hf_folder()
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "n_inner": 64}))  # weights hold 4 * 32 = 128
    code, err = _run(capsys, "import", "--from", str(folder), "--out", str(tmp_path / "out"))
    line = _one_error_line(err)
    assert code == 2 and "transformer.h.0.mlp.c_fc.weight (128, 32) != (64, 32)" in line
    (folder / "config.json").write_text(json.dumps(cfg))
    state = load_file(folder / "model.safetensors")
    del state["transformer.h.1.ln_2.bias"]
    state["score.weight"] = torch.zeros(2, 32)  # a sequence-classification head
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    code, err = _run(capsys, "import", "--from", str(folder), "--out", str(tmp_path / "out"))
    assert code == 2 and "score.weight" in _one_error_line(err)
    del state["score.weight"]
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    code, err = _run(capsys, "import", "--from", str(folder), "--out", str(tmp_path / "out"))
    assert code == 2 and "missing keys ['transformer.h.1.ln_2.bias']" in _one_error_line(err)
    assert not (tmp_path / "out").exists()


def test_missing_tokenizer_with_non_gpt2_vocab(make_hf_folder, tmp_path, capsys) -> None:
    folder, _ = make_hf_folder(vocab_size=1000, tokenizer=False)
    code, err = _run(capsys, "import", "--from", str(folder), "--out", str(tmp_path / "out"))
    line = _one_error_line(err)
    assert code == 2 and "no tokenizer" in line and "1000" in line


def test_existing_output_is_not_overwritten(make_hf_folder, tmp_path, capsys) -> None:
    folder, _ = make_hf_folder()
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, err = _run(capsys, "import", "--from", str(folder), "--out", str(out))
    assert code == 2 and "already exists" in _one_error_line(err)
    assert (out / "keep.txt").read_text() == "mine"
    code, err = _run(capsys, "export", "--model", str(folder), "--out", str(out))
    assert code == 2 and "--overwrite" in _one_error_line(err)
    code, err = _run(capsys, "import", "--from", str(folder), "--out", str(out), "--overwrite")
    assert code == 2 and "keep.txt" in _one_error_line(err)  # not a gptforge output: never replaced
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    code, _ = _run(capsys, "import", "--from", str(folder), "--out", str(out), "--overwrite")  # empty: replaced
    assert code == 0 and (out / "model.safetensors").is_file()
    code, _ = _run(capsys, "import", "--from", str(folder), "--out", str(out), "--overwrite")  # a model dir
    assert code == 0 and (out / "model.safetensors").is_file()


def test_export_post_ln_through_cli(tmp_path, capsys, gpt2_tokenizer_files) -> None:
    from gptforge import GPT, GPTConfig, load_tokenizer
    from gptforge.model.loading import save_model

    model = GPT(GPTConfig(vocab_size=50257, block_size=16, n_layer=1, n_head=2, n_embd=16, norm="post"))
    save_model(model, tmp_path / "m", tokenizer=load_tokenizer("gpt2"))
    code, err = _run(capsys, "export", "--model", str(tmp_path / "m"), "--format", "hf", "--out", str(tmp_path / "hf"))
    assert code == 2 and "post-LN" in _one_error_line(err)
    assert not (tmp_path / "hf").exists()


def test_eval_bad_input(make_hf_folder, tmp_path, capsys, data_dir) -> None:
    folder, _ = make_hf_folder()
    code, err = _run(capsys, "eval", "--model", str(folder), "--text", str(tmp_path / "nope.txt"))
    assert code == 2 and "not found" in _one_error_line(err)
    code, err = _run(capsys, "eval", "--model", str(folder), "--text", str(folder / "config.json"), "--stride", "0")
    assert code == 2 and "--stride" in _one_error_line(err)
    code, err = _run(capsys, "eval", "--model", str(folder), "--text", str(folder / "config.json"), "--stride", "65")
    assert code == 2 and "stride" in _one_error_line(err)
    ds = tmp_path / "chars"
    assert main(["prepare", "--input", str(data_dir / "the-verdict.txt"), "--tokenizer", "char", "--out", str(ds),
                 "--val-fraction", "0.5"]) == 0
    capsys.readouterr()
    code, err = _run(capsys, "eval", "--model", str(folder), "--data", str(ds))
    line = _one_error_line(err)
    assert code == 2 and "char" in line and "gpt2" in line
    code, err = _run(capsys, "eval", "--model", str(folder), "--data", str(Path(tmp_path / "nodata")))
    assert code == 2 and "not found" in _one_error_line(err)
