"""``--overwrite`` is one rule for every command that writes an output (io.check_replaceable):
an empty folder or a recognisable gptforge output is replaced; any other folder is refused with
one line naming what is in it, and left as it was. Every command's --help says it in the same words."""

from __future__ import annotations

from pathlib import Path

import pytest

from gptforge.cli.main import main
from gptforge.errors import GptforgeError
from gptforge.io import OVERWRITE_HELP, check_replaceable, gptforge_output_kind


def _commands(tmp: Path) -> dict[str, list[str]]:
    """Each command writing an output, with arguments that get it as far as its --out check."""
    data = tmp / "in.txt"
    return {
        "train": ["train", "--data", str(tmp / "ds"), "--model.n_layer", "1", "--model.n_embd", "16",
                  "--model.n_head", "2", "--model.block_size", "8"],
        "prepare": ["prepare", "--input", str(data), "--tokenizer", "char"],
        "quantize": ["quantize", "--model", str(tmp / "nomodel"), "--method", "int8"],
        "finetune classify": ["finetune", "classify", "--model", str(tmp / "nomodel"), "--data", str(data)],
        "finetune instruct": ["finetune", "instruct", "--model", str(tmp / "nomodel"), "--data", str(data)],
        "import": ["import", "--format", "hf", "--from", str(tmp / "nomodel")],
        "export": ["export", "--model", str(tmp / "nomodel"), "--format", "hf"],
        "tokenizer train": ["tokenizer", "train", "--kind", "char", "--input", str(data)],
    }


COMMANDS = list(_commands(Path("unused")))


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gptforge.data.prepare import PrepareOptions, prepare

    root = tmp_path_factory.mktemp("ow")
    (root / "in.txt").write_text("hello world\n" * 50)
    prepare(["the-verdict"], "char", root / "ds", PrepareOptions(val_fraction=0.1, progress=False))
    return root


@pytest.mark.parametrize("command", COMMANDS)
def test_overwrite_refuses_a_folder_that_gptforge_did_not_write(command, tiny_dataset, tmp_path, capsys) -> None:
    argv = _commands(tiny_dataset)[command]
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    if command == "tokenizer train":  # replaces DIR/tokenizer.json: a foreign file of that name
        (out / "tokenizer.json").write_text('{"model": "not ours"}')
    code = main([*argv, "--out", str(out), "--overwrite"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: refusing to --overwrite"), err
    assert "notes.txt" in err[0] or "did not write" in err[0], err
    assert (out / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_overwrite_help_says_the_same(command, tmp_path, capsys) -> None:
    argv = [a for a in _commands(tmp_path)[command] if not a.startswith(("-", "/"))][: len(command.split())]
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert " ".join(OVERWRITE_HELP.split()) in text


def test_what_is_recognised(tmp_path, monkeypatch) -> None:
    assert check_replaceable(tmp_path / "absent") is None
    (tmp_path / "empty").mkdir()
    assert check_replaceable(tmp_path / "empty") == "empty folder"
    leftover = tmp_path / "left"
    (leftover / ".x.tmp-host-1-abc").mkdir(parents=True)  # our own temporary leftovers are not content
    assert gptforge_output_kind(leftover) == "empty folder"
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "config.json").write_text('{"kind": "someone-else"}')  # a name alone is no signature
    with pytest.raises(GptforgeError, match=r"not a gptforge output \(it holds config\.json\)"):
        check_replaceable(fake)
    many = tmp_path / "many"
    many.mkdir()
    for i in range(8):
        (many / f"f{i}").write_text("")
    with pytest.raises(GptforgeError, match="and 3 more"):
        check_replaceable(many)
    monkeypatch.chdir(tmp_path / "empty")
    for p in (".", "..", str(Path.home())):
        with pytest.raises(GptforgeError, match="current folder|home folder"):
            check_replaceable(p)
