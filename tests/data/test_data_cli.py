"""`gptforge prepare` through the CLI: output, bad input (one line, exit 2, nothing written), downloads."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest

from gptforge.data import sources
from gptforge.data.prepare import PrepareOptions, prepare
from gptforge.errors import DataError


def assert_one_line_error(res: subprocess.CompletedProcess, *needles: str) -> str:
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def run_with_env(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gptforge", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


def test_prepare_cli_json_summary(cli, data_dir, tmp_path):
    out = tmp_path / "ds"
    res = cli(
        "prepare", "--input", "the-verdict", "--tokenizer", "gpt2", "--out", str(out), "--json"
    )
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    meta = json.loads((out / "meta.json").read_text())
    assert summary["tokens"] == {s: v["tokens"] for s, v in meta["splits"].items()}
    assert (out / "tokenizer.json").is_file() and (out / "train_000.bin").is_file()
    # an existing output is refused and left alone
    before = (out / "train_000.bin").read_bytes()
    res = cli("prepare", "--input", "the-verdict", "--tokenizer", "char", "--out", str(out))
    assert_one_line_error(res, "already exists", "--overwrite")
    assert (out / "train_000.bin").read_bytes() == before
    res = cli(
        "prepare", "--input", "the-verdict", "--tokenizer", "char", "--out", str(out), "--overwrite"
    )
    assert res.returncode == 0 and "train" in res.stdout
    assert json.loads((out / "meta.json").read_text())["tokenizer_kind"] == "char"


def test_no_input(cli, tmp_path):
    res = cli("prepare", "--tokenizer", "gpt2", "--out", str(tmp_path / "o"))
    assert_one_line_error(res, "no input given")


def test_missing_input(cli, tmp_path):
    res = cli(
        "prepare",
        "--input",
        str(tmp_path / "nope.txt"),
        "--tokenizer",
        "gpt2",
        "--out",
        str(tmp_path / "o"),
    )
    assert_one_line_error(res, "not found", "registered dataset")


def test_empty_file(cli, tmp_path):
    (tmp_path / "empty.txt").write_text("")
    res = cli(
        "prepare",
        "--input",
        str(tmp_path / "empty.txt"),
        "--tokenizer",
        "gpt2",
        "--out",
        str(tmp_path / "o"),
    )
    assert_one_line_error(res, "empty.txt is empty")
    assert not (tmp_path / "o").exists()


def test_too_short_for_block_size(cli, tmp_path):
    text = "To be, or not to be, that is the question.\n" * 5
    (tmp_path / "short.txt").write_text(text)
    n_train = int(len(text) * 0.9)  # char tokenizer: one token per character
    res = cli(
        "prepare", "--input", str(tmp_path / "short.txt"), "--tokenizer", "char",
        "--out", str(tmp_path / "o"), "--block-size", "256",
    )  # fmt: skip
    line = assert_one_line_error(res, "tokens, but one window of block_size 256 needs 257")
    assert f"train split has {n_train} tokens" in line
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.tmp-*"))


def test_jsonl_line_without_field(cli, tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "a"}\n{"text": "b"}\n{"content": "c"}\n')
    res = cli("prepare", "--input", str(p), "--tokenizer", "char", "--out", str(tmp_path / "o"))
    assert_one_line_error(res, f"line 3 of {p}", "'text'", "--skip-bad-lines")
    assert not (tmp_path / "o").exists()


def test_bad_options(cli, tmp_path, data_dir):
    res = cli(
        "prepare", "--input", "the-verdict", "--tokenizer", "gpt2", "--out", str(tmp_path / "o"),
        "--val-fraction", "0.6", "--test-fraction", "0.5", "--workers", "0",
    )  # fmt: skip
    assert_one_line_error(res, "leaves no training data", "--workers 0")


def test_invalid_utf8(cli, tmp_path):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1") * 50)
    args = ["prepare", "--input", str(tmp_path / "latin1.txt"), "--tokenizer", "char"]
    res = cli(*args, "--out", str(tmp_path / "o"))
    assert_one_line_error(res, "not valid UTF-8", "offset 3", "--errors replace")
    assert cli(*args, "--out", str(tmp_path / "o"), "--errors", "replace").returncode == 0


def test_hf_input_without_datasets(cli, tmp_path):
    try:
        import datasets  # noqa: F401

        pytest.skip("datasets is installed; this checks the message when it is not")
    except ImportError:
        pass
    res = cli(
        "prepare",
        "--input",
        "hf:Skylion007/openwebtext",
        "--tokenizer",
        "gpt2",
        "--out",
        str(tmp_path / "o"),
    )
    assert_one_line_error(res, "needs the Hugging Face `datasets` package", "gptforge[datasets]")


def test_registered_name_without_cache_or_network(tmp_path):
    empty = tmp_path / "cache"
    empty.mkdir()
    # offline switch: no download attempted
    res = run_with_env(
        "prepare", "--input", "tinyshakespeare", "--tokenizer", "char", "--out", str(tmp_path / "o"),
        env={"GPTFORGE_DATA_DIR": str(empty), "GPTFORGE_OFFLINE": "1"},
    )  # fmt: skip
    assert_one_line_error(
        res, str(empty / "tinyshakespeare.txt"), "karpathy/char-rnn", "GPTFORGE_DATA_DIR"
    )
    # network unreachable: every https request goes to a closed local port
    res = run_with_env(
        "prepare", "--input", "tinyshakespeare", "--tokenizer", "char", "--out", str(tmp_path / "o"),
        env={"GPTFORGE_DATA_DIR": str(empty), "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"},
    )  # fmt: skip
    line = res.stderr.strip().splitlines()[-1]
    assert res.returncode == 2 and "downloading it failed" in line and "save it as" in line, (
        res.stderr
    )
    assert not (tmp_path / "o").exists() and list(empty.iterdir()) == []


def test_download_is_checked(tmp_path, monkeypatch, data_dir):
    cache = tmp_path / "cache"
    monkeypatch.setenv("GPTFORGE_DATA_DIR", str(cache))
    monkeypatch.delenv("GPTFORGE_OFFLINE", raising=False)
    good = (data_dir / "the-verdict.txt").read_bytes()
    calls = []

    def fake_fetch(url: str, timeout: float = 60.0) -> bytes:
        calls.append(url)
        return payload

    monkeypatch.setattr(sources, "fetch_url", fake_fetch)
    payload = good[:-1] + b"?"  # corrupted download: refused, nothing cached
    with pytest.raises(DataError, match="has sha256 .* expected b41e41a68f03"):
        sources.resolve_registered("the-verdict")
    assert not (cache / "the-verdict.txt").exists()
    payload = good
    path = sources.resolve_registered("the-verdict")
    assert (
        path == cache / "the-verdict.txt"
        and hashlib.sha256(path.read_bytes()).hexdigest() == sources.DATASETS["the-verdict"].sha256
    )
    assert calls == [sources.DATASETS["the-verdict"].url] * 2
    meta = prepare(["the-verdict"], "char", tmp_path / "ds", PrepareOptions(progress=False))
    assert len(calls) == 2  # served from the cache this time
    assert meta["sources"][0]["sha256"] == sources.DATASETS["the-verdict"].sha256

    def no_network(url: str, timeout: float = 60.0) -> bytes:
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(sources, "fetch_url", no_network)
    with pytest.raises(
        DataError, match=r"downloading it failed \(Name or service not known\).*save it as"
    ):
        sources.resolve_registered("tinyshakespeare")
    # a wrong file already in the cache is refused, not used
    (cache / "tinyshakespeare.txt").write_text("not shakespeare")
    with pytest.raises(DataError, match="does not match the registered tinyshakespeare"):
        sources.resolve_registered("tinyshakespeare")


def test_folder_glob_and_hidden(tmp_path, data_dir):
    root = tmp_path / "c"
    (root / ".git").mkdir(parents=True)
    (root / ".git" / "x.txt").write_text("hidden " * 100)
    (root / "a.md").write_text("alpha beta gamma\n" * 100)
    (root / "b.txt").write_text("delta epsilon\n" * 100)
    (root / "c.log").write_text("zeta\n" * 100)
    meta = prepare(
        [str(root)], "gpt2", tmp_path / "d1", PrepareOptions(progress=False, val_fraction=0.5)
    )
    assert meta["sources"][0]["files"] == 2 and meta["stats"]["documents"] == 2
    meta = prepare(
        [str(root)],
        "gpt2",
        tmp_path / "d2",
        PrepareOptions(progress=False, glob="*.log", val_fraction=0),
    )
    assert meta["sources"][0]["files"] == 1 and meta["split_method"] == "position"
    with pytest.raises(DataError, match=r"holds no files matching '\*.csv'"):
        prepare([str(root)], "gpt2", tmp_path / "d3", PrepareOptions(progress=False, glob="*.csv"))


def test_empty_hash_split_is_an_error(tmp_path: Path):
    p = tmp_path / "two.jsonl"
    p.write_text('{"text": "one document here"}\n{"text": "and another one"}\n')
    with pytest.raises(DataError, match="the val split is empty: none of the 2 documents"):
        prepare([str(p)], "gpt2", tmp_path / "o", PrepareOptions(progress=False, val_fraction=0.01))
