"""`gptforge tokenizer train|encode|decode|info` through the real CLI, bad input included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gptforge import load_tokenizer


def assert_user_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """One line on stderr starting with 'error:', a non-zero exit, no traceback."""
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def verdict(data_dir: Path) -> Path:
    return data_dir / "the-verdict.txt"


def test_train_bpe_verbose_then_info_encode_decode(cli, tmp_path: Path, verdict: Path) -> None:  # noqa: ANN001
    out = tmp_path / "bpe"
    proc = cli(
        "tokenizer",
        "train",
        "--kind",
        "bpe",
        "--vocab-size",
        "300",
        "--input",
        str(verdict),
        "--out",
        str(out),
        "--verbose",
    )
    assert proc.returncode == 0, proc.stderr
    merge_lines = [line for line in proc.stdout.splitlines() if line.startswith("merge ")]
    assert len(merge_lines) == 44 and merge_lines[0].startswith("merge 1/44: (")
    tok = load_tokenizer(out)
    assert tok.kind == "bpe" and tok.vocab_size == 300

    info = cli("tokenizer", "info", "--tokenizer", str(out), "--file", str(verdict))
    assert info.returncode == 0, info.stderr
    text = verdict.read_text(encoding="utf-8")
    ratio = len(text.encode()) / len(tok.encode(text))
    assert f"compression ratio: {ratio:.2f}X" in info.stdout
    assert "vocab size: 300" in info.stdout and f"fingerprint: {tok.fingerprint()}" in info.stdout

    js = cli("tokenizer", "info", "--tokenizer", str(out), "--json")
    assert json.loads(js.stdout)["vocab_size"] == 300

    enc = cli("tokenizer", "encode", "--tokenizer", str(out), "--text", "I had always thought")
    ids = [int(x) for x in enc.stdout.split()]
    assert ids == tok.encode("I had always thought")
    dec = cli("tokenizer", "decode", "--tokenizer", str(out), "--ids", " ".join(map(str, ids)))
    assert dec.stdout == "I had always thought\n"


def test_gpt2_encode_decode_and_specials(cli) -> None:  # noqa: ANN001
    enc = cli("tokenizer", "encode", "--tokenizer", "gpt2", "--text", "Hello world<|endoftext|>")
    assert enc.returncode == 0 and "50256" not in enc.stdout.split()
    enc = cli(
        "tokenizer",
        "encode",
        "--tokenizer",
        "gpt2",
        "--text",
        "Hello world<|endoftext|>",
        "--allow-special",
    )
    assert enc.stdout.split() == ["15496", "995", "50256"]
    dec = cli("tokenizer", "decode", "--tokenizer", "gpt2", "--ids", "15496,995")
    assert dec.stdout == "Hello world\n"


def test_train_regex_bpe_and_char_and_hf(cli, tmp_path: Path, verdict: Path) -> None:  # noqa: ANN001
    proc = cli(
        "tokenizer",
        "train",
        "--kind",
        "regex-bpe",
        "--pattern",
        "gpt2",
        "--vocab-size",
        "400",
        "--input",
        str(verdict),
        "--out",
        str(tmp_path / "r"),
        "--special",
        "<|endoftext|>",
        "<|pad|>",
    )
    assert proc.returncode == 0, proc.stderr
    tok = load_tokenizer(tmp_path / "r")
    assert tok.kind == "regex-bpe" and tok.special_tokens == {"<|endoftext|>": 398, "<|pad|>": 399}
    proc = cli(
        "tokenizer",
        "train",
        "--kind",
        "char",
        "--input",
        str(verdict),
        "--out",
        str(tmp_path / "c"),
    )
    assert proc.returncode == 0, proc.stderr
    assert load_tokenizer(tmp_path / "c").chars == sorted(set(verdict.read_text(encoding="utf-8")))
    proc = cli(
        "tokenizer",
        "train",
        "--kind",
        "hf-bpe",
        "--vocab-size",
        "500",
        "--input",
        str(verdict),
        "--out",
        str(tmp_path / "h"),
    )
    assert proc.returncode == 0, proc.stderr
    assert load_tokenizer(tmp_path / "h").special_tokens == {"<pad>": 0, "<|endoftext|>": 1}


def test_existing_output_is_not_overwritten(cli, tmp_path: Path, verdict: Path) -> None:  # noqa: ANN001
    out = tmp_path / "t"
    out.mkdir()
    (out / "tokenizer.json").write_text("keep me")
    proc = cli(
        "tokenizer",
        "train",
        "--kind",
        "bpe",
        "--vocab-size",
        "260",
        "--input",
        str(verdict),
        "--out",
        str(out),
    )
    assert_user_error(proc, "already exists", "--overwrite")
    assert (out / "tokenizer.json").read_text() == "keep me"


def test_bad_input_empty_corpus(cli, tmp_path: Path) -> None:  # noqa: ANN001
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    for kind in ("bpe", "char", "hf-bpe"):
        proc = cli(
            "tokenizer",
            "train",
            "--kind",
            kind,
            "--vocab-size",
            "300",
            "--input",
            str(empty),
            "--out",
            str(tmp_path / kind),
        )
        assert_user_error(proc, "empty")
        assert not (tmp_path / kind).exists()


def test_bad_input_vocab_below_256(cli, tmp_path: Path, verdict: Path) -> None:  # noqa: ANN001
    proc = cli(
        "tokenizer",
        "train",
        "--kind",
        "bpe",
        "--vocab-size",
        "100",
        "--input",
        str(verdict),
        "--out",
        str(tmp_path / "t"),
    )
    assert_user_error(proc, "vocab size 100", "at least 256")
    proc = cli(
        "tokenizer",
        "train",
        "--kind",
        "regex-bpe",
        "--vocab-size",
        "256",
        "--input",
        str(verdict),
        "--out",
        str(tmp_path / "t"),
    )
    assert_user_error(proc, "at least 257")


def test_bad_input_non_utf8_file_and_replace(cli, tmp_path: Path) -> None:  # noqa: ANN001
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café au lait, naïve façade ".encode("latin-1") * 20)
    proc = cli(
        "tokenizer",
        "train",
        "--kind",
        "bpe",
        "--vocab-size",
        "260",
        "--input",
        str(bad),
        "--out",
        str(tmp_path / "t"),
    )
    assert_user_error(proc, str(bad), "not valid UTF-8", "--errors replace")
    proc = cli(
        "tokenizer",
        "train",
        "--kind",
        "bpe",
        "--vocab-size",
        "260",
        "--input",
        str(bad),
        "--out",
        str(tmp_path / "t"),
        "--errors",
        "replace",
    )
    assert proc.returncode == 0, proc.stderr
    proc = cli("tokenizer", "encode", "--tokenizer", "gpt2", "--file", str(bad))
    assert_user_error(proc, "latin1.txt")
    proc = cli("tokenizer", "info", "--tokenizer", "gpt2", "--file", str(tmp_path / "missing.txt"))
    assert_user_error(proc, "not found", "missing.txt")


def test_bad_input_unknown_spec(cli) -> None:  # noqa: ANN001
    assert_user_error(
        cli("tokenizer", "info", "--tokenizer", "gpt5"), "unknown tokenizer spec 'gpt5'", "gpt2"
    )
    # 'char' is built from the given text; decode has none, so it must say so
    assert_user_error(
        cli("tokenizer", "decode", "--tokenizer", "char", "--ids", "1"), "'char'", "corpus"
    )
    assert cli("tokenizer", "encode", "--tokenizer", "char", "--text", "x y").stdout.split() == [
        "1",
        "0",
        "2",
    ]


def test_bad_input_ids(cli) -> None:  # noqa: ANN001
    assert_user_error(
        cli("tokenizer", "decode", "--tokenizer", "gpt2", "--ids", "1 2 50257"),
        "50257 is out of range",
        "0..50256",
    )
    assert_user_error(
        cli("tokenizer", "decode", "--tokenizer", "gpt2", "--ids", "1 two"),
        "'two' is not an integer",
    )


def test_bad_input_gpt2_files_missing(tmp_path: Path) -> None:
    env = dict(os.environ, GPTFORGE_DATA_DIR=str(tmp_path))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gptforge",
            "tokenizer",
            "encode",
            "--tokenizer",
            "gpt2",
            "--text",
            "hi",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert_user_error(
        proc, str(tmp_path / "gpt2" / "encoder.json"), "vocab.bpe", "GPTFORGE_DATA_DIR"
    )


def test_bad_input_pattern_for_wrong_kind(cli, tmp_path: Path, verdict: Path) -> None:  # noqa: ANN001
    proc = cli(
        "tokenizer",
        "train",
        "--kind",
        "bpe",
        "--vocab-size",
        "300",
        "--pattern",
        "gpt4",
        "--input",
        str(verdict),
        "--out",
        str(tmp_path / "t"),
    )
    assert_user_error(proc, "--pattern")


def test_bad_input_output_is_a_file(cli, tmp_path: Path, verdict: Path) -> None:  # noqa: ANN001
    out = tmp_path / "afile"
    out.write_text("not a folder")
    proc = cli("tokenizer", "train", "--kind", "char", "--input", str(verdict), "--out", str(out))
    assert_user_error(proc, "cannot write", str(out))
    assert out.read_text() == "not a folder"
