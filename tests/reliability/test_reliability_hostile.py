"""Hostile files: loading anything never runs code from it.

Every payload here is a real pickle exploit: unpickling it calls ``open(MARKER, "w")``. A
control test first proves the payload is live (``torch.load(weights_only=False)`` does
create the marker), then each place gptforge reads a file is fed the payload through the
CLI; each must refuse with one ``error:`` line, leave no output, and never create the marker.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from gptforge.io import sha256_file, write_json
from gptforge.train.checkpoint import state_digest


class Payload:
    """Unpickling this runs ``open(marker, "w")``: the attack a .bin/.pt file can carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # noqa: ANN204 - pickle protocol
        return (open, (self.marker, "w"))


def _plant(path: Path, marker: Path) -> None:
    torch.save({"weight": torch.zeros(2), "evil": Payload(marker)}, path)


def _refused(r, marker: Path) -> str:  # noqa: ANN001 - CompletedProcess
    assert "Traceback" not in r.stderr, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    errors = [x for x in lines if x.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1, r.stderr
    assert not marker.exists(), "the payload ran"
    return errors[0]


def test_the_payload_is_live(tmp_path: Path) -> None:
    """The control: without weights_only the planted file really runs code."""
    marker = tmp_path / "pwned"
    _plant(tmp_path / "evil.pt", marker)
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


def _hf_folder(root: Path) -> Path:
    folder = root / "hf"
    folder.mkdir()
    cfg = {"model_type": "gpt2", "vocab_size": 64, "n_positions": 16, "n_ctx": 16, "n_embd": 8,
           "n_layer": 1, "n_head": 2, "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new"}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize(
    "command", ["import", "generate", pytest.param("eval", marks=pytest.mark.slow)]
)
def test_hf_pytorch_model_bin_payload(command: str, tmp_path: Path, cli) -> None:
    marker, folder = tmp_path / "pwned", _hf_folder(tmp_path)
    _plant(folder / "pytorch_model.bin", marker)
    out = tmp_path / "out"
    args = {
        "import": ["import", "--format", "hf", "--from", str(folder), "--out", str(out)],
        "generate": ["generate", "--model", str(folder), "--prompt", "hi", "--max-new-tokens", "2"],
        "eval": ["eval", "--model", str(folder), "--text", str(folder / "config.json")],
    }[command]
    line = _refused(cli(*args), marker)
    assert "pytorch_model.bin" in line and "refused" in line
    assert not out.exists()


def test_hf_sharded_bin_payload(tmp_path: Path, cli) -> None:
    marker, folder = tmp_path / "pwned", _hf_folder(tmp_path)
    _plant(folder / "pytorch_model-00001-of-00001.bin", marker)
    index = {"metadata": {}, "weight_map": {"wte.weight": "pytorch_model-00001-of-00001.bin"}}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    out = tmp_path / "out"
    line = _refused(
        cli("import", "--format", "hf", "--from", str(folder), "--out", str(out)), marker
    )
    assert "pytorch_model-00001-of-00001.bin" in line
    assert not out.exists()


def test_pickle_renamed_to_safetensors(tmp_path: Path, cli) -> None:
    marker, folder = tmp_path / "pwned", _hf_folder(tmp_path)
    _plant(folder / "model.safetensors", marker)
    _refused(
        cli("import", "--format", "hf", "--from", str(folder), "--out", str(tmp_path / "out")),
        marker,
    )
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def finished_run(char_ds: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gptforge.train.config import build_run_config
    from gptforge.train.loop import train

    cfg = build_run_config(None, None, {
        "model.n_layer": 1, "model.n_head": 2, "model.n_embd": 16, "model.block_size": 16,
        "train.batch_size": 2, "train.max_steps": 2, "train.eval_iters": 1, "train.device": "cpu",
        "log.progress": False, "data.dir": str(char_ds),
    })  # fmt: skip
    run = tmp_path_factory.mktemp("hostile") / "run"
    train(cfg, run)
    return run


def test_optimizer_state_payload_with_matching_checksum(
    finished_run: Path, tmp_path: Path, cli
) -> None:
    """An attacker who also rewrites state.json's checksum still cannot run code on --resume."""
    run, marker = tmp_path / "run", tmp_path / "pwned"
    shutil.copytree(finished_run, run)
    ckpt = run / "checkpoints" / "step_0000002"
    _plant(ckpt / "optimizer.pt", marker)
    state = json.loads((ckpt / "state.json").read_text())
    state["files"]["optimizer.pt"] = sha256_file(ckpt / "optimizer.pt")
    state["state_sha256"] = state_digest(state)  # and state.json's checksum of itself
    write_json(ckpt / "state.json", state)
    line = _refused(cli("train", "--resume", str(run), "--train.max_steps", "4"), marker)
    assert "optimizer.pt" in line and "refused" in line


def test_yaml_python_tags_are_not_constructed(
    finished_run: Path, tmp_path: Path, char_ds: Path, cli
) -> None:
    marker = tmp_path / "pwned"
    evil = f"train:\n  max_steps: !!python/object/apply:builtins.open ['{marker}', 'w']\n"
    (tmp_path / "evil.yaml").write_text(evil)
    _refused(cli("train", "--config", str(tmp_path / "evil.yaml"), "--data", str(char_ds),
                 "--out", str(tmp_path / "out")), marker)  # fmt: skip
    assert not (tmp_path / "out").exists()
    run = tmp_path / "run"  # the same payload in a run's own config.yaml, read by --resume
    shutil.copytree(finished_run, run)
    (run / "config.yaml").write_text(evil)
    _refused(cli("train", "--resume", str(run)), marker)


def test_pickle_as_dataset_shard_and_tokenizer(char_ds: Path, tmp_path: Path, cli) -> None:
    """Shards are raw token arrays read with np.memmap, tokenizers JSON: a pickle there is just bad data."""
    marker = tmp_path / "pwned"
    ds = tmp_path / "ds"
    shutil.copytree(char_ds, ds)
    _plant(ds / "train_000.bin", marker)
    line = _refused(
        cli("train", "--data", str(ds), "--out", str(tmp_path / "run"), "--train.max_steps", "1"),
        marker,
    )
    assert "train_000.bin" in line
    assert not (tmp_path / "run").exists()
    _plant(tmp_path / "tokenizer.json", marker)
    _refused(
        cli("tokenizer", "encode", "--tokenizer", str(tmp_path / "tokenizer.json"), "--text", "hi"),
        marker,
    )
