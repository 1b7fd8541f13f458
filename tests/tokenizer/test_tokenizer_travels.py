"""A model dir whose tokenizer is ``gpt2`` carries the BPE tables in its tokenizer.json, so a
copy loads offline on a machine without ``~/.cache/gptforge/gpt2/`` (the same ids as the
built-in files give, and the same fingerprint, so old datasets stay compatible)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from gptforge import load_tokenizer
from gptforge.model.config import GPTConfig
from gptforge.model.gpt import GPT
from gptforge.model.loading import save_model

TEXT = "Hello world!  It's 2026: naïve café, 日本語 🎉\n\n  def f(x):\n\treturn x**2  # ok"


def test_model_dir_with_gpt2_tokenizer_loads_without_the_cache(tmp_path: Path) -> None:
    tok = load_tokenizer("gpt2")  # from the data cache (the reference)
    model = GPT(GPTConfig(vocab_size=50257, block_size=8, n_layer=1, n_head=1, n_embd=8))
    save_model(model, tmp_path / "m", tokenizer=tok)
    saved = json.loads((tmp_path / "m" / "tokenizer.json").read_text())
    assert saved["kind"] == "gpt2" and len(saved["encoder"]) == 50257 and len(saved["merges"]) == 50000
    elsewhere = tmp_path / "other-machine"
    shutil.copytree(tmp_path / "m", elsewhere / "m")
    (elsewhere / "empty-data").mkdir()
    (elsewhere / "home").mkdir()
    env = {**os.environ, "GPTFORGE_DATA_DIR": str(elsewhere / "empty-data"), "HOME": str(elsewhere / "home"),
           "TIKTOKEN_CACHE_DIR": str(elsewhere / "home"), "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    code = (
        "import json, sys; from gptforge import load_model; m = load_model(sys.argv[1]); "
        "print(json.dumps([m.tokenizer.encode(sys.argv[2]), m.tokenizer.fingerprint()]))"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(elsewhere / "m"), TEXT], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    ids, fingerprint = json.loads(proc.stdout.strip().splitlines()[-1])
    assert ids == tok.encode(TEXT) and fingerprint == tok.fingerprint()
    assert list((elsewhere / "empty-data").iterdir()) == []


def test_damaged_tables_are_refused(tmp_path: Path) -> None:
    import pytest

    from gptforge.errors import TokenizerError

    path = load_tokenizer("gpt2").save(tmp_path / "tokenizer.json")
    obj = json.loads(path.read_text())
    obj["merges"] = obj["merges"][:-1]
    path.write_text(json.dumps(obj))
    with pytest.raises(TokenizerError, match="tables_sha256"):
        load_tokenizer(str(path))
