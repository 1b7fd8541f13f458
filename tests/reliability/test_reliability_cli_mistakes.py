"""The catalogue of user mistakes, through the real CLI (one subprocess per mistake).

Each row is a command a user could plausibly type wrong: wrong paths, wrong types, missing
files, an incompatible dataset and model, bad flags, out-of-range values, existing outputs.
Each must give exactly one stderr line, starting with ``error:``, a non-zero exit, no
traceback, and leave nothing behind: the planned output does not appear and every existing
file in the workspace keeps its bytes.
"""

from __future__ import annotations

import hashlib
import json
import string
from pathlib import Path

import pytest
import torch

# (id, argv with {placeholders}, a word the error line must contain)
CATALOGUE: list[tuple[str, list[str], str]] = [
    # -- the parser itself
    ("unknown-command", ["frobnicate"], "invalid choice"),
    ("unknown-flag", ["generate", "--model", "{model}", "--prompt", "hi", "--bogus"], "unrecognized"),
    ("int-flag-given-text", ["generate", "--model", "{model}", "--prompt", "hi", "--max-new-tokens", "lots"], "invalid int"),
    ("missing-required-flag", ["prepare", "--input", "{corpus}", "--tokenizer", "char"], "--out"),
    ("bad-choice", ["import", "--format", "onnx", "--from", "{model}", "--out", "{out}"], "invalid choice"),
    ("override-without-value", ["train", "--data", "{ds}", "--out", "{out}", "--train.lr"], "train.lr"),
    ("stray-argument", ["train", "--data", "{ds}", "--out", "{out}", "extra"], "extra"),
    # -- tokenizer
    ("bpe-vocab-too-small", ["tokenizer", "train", "--kind", "bpe", "--vocab-size", "10", "--input", "{corpus}", "--out", "{out}"], "256"),
    ("tokenizer-input-missing", ["tokenizer", "train", "--kind", "char", "--vocab-size", "50", "--input", "{missing}", "--out", "{out}"], "no/such/path"),
    ("tokenizer-out-exists", ["tokenizer", "train", "--kind", "char", "--vocab-size", "50", "--input", "{corpus}", "--out", "{tokdir}"], "exists"),
    ("tokenizer-spec-missing", ["tokenizer", "encode", "--tokenizer", "{missing}", "--text", "hi"], "no/such/path"),
    ("decode-ids-not-numbers", ["tokenizer", "decode", "--tokenizer", "{tokdir}", "--ids", "1 two 3"], "two"),
    ("decode-id-out-of-range", ["tokenizer", "decode", "--tokenizer", "{tokdir}", "--ids", "99999"], "99999"),
    ("tokenizer-json-malformed", ["tokenizer", "info", "--tokenizer", "{badjson}"], "json"),
    ("tokenizer-json-wrong-types", ["tokenizer", "info", "--tokenizer", "{wrongtok}"], "tokenizer"),
    # -- prepare
    ("prepare-input-missing", ["prepare", "--input", "{missing}", "--tokenizer", "char", "--out", "{out}"], "no/such/path"),
    ("prepare-out-exists", ["prepare", "--input", "{corpus}", "--tokenizer", "char", "--out", "{ds}"], "exists"),
    ("prepare-fraction-out-of-range", ["prepare", "--input", "{corpus}", "--tokenizer", "char", "--out", "{out}", "--val-fraction", "1.5"], "val-fraction"),
    ("prepare-unknown-tokenizer", ["prepare", "--input", "{corpus}", "--tokenizer", "nonsense", "--out", "{out}"], "nonsense"),
    # -- train
    ("train-data-missing", ["train", "--data", "{missing}", "--out", "{out}"], "no/such/path"),
    ("train-data-is-a-file", ["train", "--data", "{corpus}", "--out", "{out}"], "dataset"),
    ("train-run-exists", ["train", "--data", "{ds}", "--out", "{run}"], "exists"),
    ("train-key-typo", ["train", "--data", "{ds}", "--out", "{out}", "--model.n_layr", "2"], "n_layer"),
    ("train-wrong-type", ["train", "--data", "{ds}", "--out", "{out}", "--train.lr", "fast"], "train.lr"),
    ("train-negative-steps", ["train", "--data", "{ds}", "--out", "{out}", "--train.max_steps", "-5"], "max_steps"),
    ("train-unknown-preset", ["train", "--preset", "gpt5", "--data", "{ds}", "--out", "{out}"], "gpt5"),
    ("train-vocab-smaller-than-data", ["train", "--data", "{ds}", "--out", "{out}", "--model.vocab_size", "5"], "vocab_size"),
    ("train-block-longer-than-data", ["train", "--data", "{ds}", "--out", "{out}", "--model.block_size", "100000", "--model.n_layer", "1", "--model.n_embd", "16", "--model.n_head", "2"], "block"),
    ("train-config-yaml-malformed", ["train", "--config", "{badyaml}", "--data", "{ds}", "--out", "{out}"], "yaml"),
    ("resume-missing-run", ["train", "--resume", "{missing}"], "no/such/path"),
    ("resume-changes-shape", ["train", "--resume", "{run}", "--model.n_embd", "64"], "n_embd"),
    ("resume-with-out", ["train", "--resume", "{run}", "--out", "{out}"], "--resume"),
    # -- using models
    ("generate-model-missing", ["generate", "--model", "{missing}", "--prompt", "hi"], "no/such/path"),
    ("generate-model-is-a-file", ["generate", "--model", "{corpus}", "--prompt", "hi"], "model"),
    ("generate-negative-temperature", ["generate", "--model", "{model}", "--prompt", "hi", "--temperature", "-1"], "temperature"),
    ("generate-top-p-above-one", ["generate", "--model", "{model}", "--prompt", "hi", "--top-p", "1.5"], "top"),
    ("chat-model-missing", ["chat", "--model", "{missing}"], "no/such/path"),
    ("eval-incompatible-data", ["eval", "--model", "{model}", "--data", "{ds}"], "tokenizer"),
    ("eval-split-missing", ["eval", "--model", "{dsmodel}", "--data", "{ds}", "--split", "test"], "test"),
    ("classify-not-a-classifier", ["classify", "--model", "{model}", "--text", "hi"], "classif"),
    ("model-info-unknown-preset", ["model", "info", "--preset", "nope"], "nope"),
    ("plot-run-missing", ["plot", "{missing}"], "no/such/path"),
    # -- converting models
    ("import-folder-missing", ["import", "--format", "hf", "--from", "{missing}", "--out", "{out}"], "no/such/path"),
    ("export-out-exists", ["export", "--model", "{model}", "--format", "hf", "--out", "{existing}"], "exists"),
    ("quantize-unknown-method", ["quantize", "--model", "{model}", "--method", "int3", "--out", "{out}"], "int3"),
    ("quantize-out-exists", ["quantize", "--model", "{model}", "--method", "int8", "--out", "{existing}"], "exists"),
    # -- fine-tuning
    ("finetune-data-missing", ["finetune", "instruct", "--model", "{model}", "--data", "{missing}", "--out", "{out}"], "no/such/path"),
    ("finetune-zero-epochs", ["finetune", "instruct", "--model", "{model}", "--data", "{instr}", "--out", "{out}", "--epochs", "0"], "epochs"),
    ("finetune-negative-checkpoint-every", ["finetune", "instruct", "--model", "{model}", "--data", "{instr}", "--out", "{out}", "--checkpoint-every", "-1"], "--checkpoint-every"),
    ("finetune-out-exists", ["finetune", "instruct", "--model", "{model}", "--data", "{instr}", "--out", "{existing}"], "exists"),
    ("classify-data-without-labels", ["finetune", "classify", "--model", "{model}", "--data", "{instr}", "--out", "{out}"], "column"),
    # -- serving
    ("serve-model-missing", ["serve", "--model", "{missing}"], "no/such/path"),
    ("serve-port-out-of-range", ["serve", "--model", "{model}", "--port", "99999"], "port"),
]  # fmt: skip


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file()
        else "dir"
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture(scope="module")
def workspace(
    tmp_path_factory: pytest.TempPathFactory, corpus: Path, char_ds: Path
) -> dict[str, Path]:
    import shutil

    from gptforge import GPT, GPTConfig
    from gptforge.data.shards import open_dataset
    from gptforge.model.loading import save_model
    from gptforge.tokenizer.char import CharTokenizer
    from gptforge.train.config import build_run_config
    from gptforge.train.loop import train

    ws = tmp_path_factory.mktemp("workspace")
    shutil.copy(corpus, ws / "corpus.txt")
    shutil.copytree(char_ds, ws / "ds")
    torch.manual_seed(0)
    other = CharTokenizer.train(string.printable)  # not the dataset's tokenizer
    save_model(
        GPT(GPTConfig.from_preset("test-tiny", vocab_size=other.vocab_size)),
        ws / "model",
        tokenizer=other,
    )
    ds_tok = open_dataset(ws / "ds").load_tokenizer()
    save_model(
        GPT(GPTConfig.from_preset("test-tiny", vocab_size=ds_tok.vocab_size)),
        ws / "dsmodel",
        ds_tok,
    )
    cfg = build_run_config(None, None, {
        "model.n_layer": 1, "model.n_head": 2, "model.n_embd": 16, "model.block_size": 16,
        "train.batch_size": 2, "train.max_steps": 2, "train.eval_iters": 1, "train.device": "cpu",
        "log.progress": False, "data.dir": str(ws / "ds"),
    })  # fmt: skip
    train(cfg, ws / "run")
    other.save(ws / "tokdir")
    (ws / "existing").mkdir()
    (ws / "existing" / "keep.txt").write_text("precious")
    (ws / "badjson").mkdir()
    (ws / "badjson" / "tokenizer.json").write_text('{"kind": "char", "vocab_size": ')
    (ws / "wrongtok").mkdir()
    (ws / "wrongtok" / "tokenizer.json").write_text(json.dumps({"format_version": 1, "kind": "char",
                                                               "vocab_size": "many", "chars": 7}))  # fmt: skip
    (ws / "bad.yaml").write_text("train:\n  lr: [unclosed\n")
    (ws / "instr.json").write_text(
        json.dumps([{"instruction": "say hi", "input": "", "output": "hi"}] * 12)
    )
    return {
        "corpus": ws / "corpus.txt", "ds": ws / "ds", "model": ws / "model", "dsmodel": ws / "dsmodel",
        "run": ws / "run", "tokdir": ws / "tokdir", "existing": ws / "existing", "badjson": ws / "badjson",
        "wrongtok": ws / "wrongtok", "badyaml": ws / "bad.yaml", "instr": ws / "instr.json",
        "missing": ws / "no" / "such" / "path", "root": ws,
    }  # fmt: skip


def test_catalogue_has_at_least_thirty_distinct_mistakes() -> None:
    ids = [row[0] for row in CATALOGUE]
    assert len(ids) == len(set(ids)) and len(ids) >= 30
    commands = {row[1][0] for row in CATALOGUE}
    assert {"tokenizer", "prepare", "train", "generate", "chat", "eval", "import", "export", "quantize",
            "finetune", "classify", "plot", "model", "serve"} <= commands  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "needle"), [row[1:] for row in CATALOGUE], ids=[row[0] for row in CATALOGUE]
)
def test_mistake_gives_one_clear_line(
    argv: list[str], needle: str, workspace: dict[str, Path], tmp_path: Path, cli
) -> None:
    out = tmp_path / "out"
    paths = {k: str(v) for k, v in workspace.items()} | {"out": str(out)}
    args = [a.format(**paths) for a in argv]
    before = _snapshot(workspace["root"])
    r = cli(*args, cwd=tmp_path, timeout=300)
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode != 0, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert needle.lower() in lines[0].lower(), lines[0]
    assert not out.exists(), f"{out} was left behind"
    assert sorted(p.name for p in tmp_path.iterdir()) == [], (
        "files were written to the working directory"
    )
    assert _snapshot(workspace["root"]) == before, "an existing file was changed"
