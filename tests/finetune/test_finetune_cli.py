"""`gptforge finetune classify|instruct` and `gptforge classify` end to end, and bad input."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch

from gptforge import GPT, GPTConfig


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from gptforge.model.loading import save_model
    from gptforge.tokenizer import load_tokenizer

    data = Path(os.environ.get("GPTFORGE_DATA_DIR", ""))  # set by conftest for every test
    if not (data / "gpt2" / "encoder.json").is_file():
        pytest.skip(f"GPT-2 BPE files not found under {data}; set GPTFORGE_DATA_DIR")

    tok = load_tokenizer("gpt2")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=32))
    out = tmp_path_factory.mktemp("ft") / "tiny"
    save_model(model, out, tokenizer=tok)
    return out


def _write_spam(path: Path, n: int = 80) -> Path:
    rng = random.Random(0)
    spam = ["WIN a FREE prize now", "claim your cash reward, call 0800", "URGENT you won a free holiday"]
    ham = ["see you at lunch", "ok i will call you later", "are we still on for tonight"]
    rows = ["label\ttext"]
    for i in range(n):
        label = "spam" if i % 2 else "ham"
        rows.append(f"{label}\t{rng.choice(spam if i % 2 else ham)} {rng.randint(0, 99)}")
    path.write_text("\n".join(rows) + "\n")
    return path


class _Result:
    """What `gptforge ARGS` produced when run in this process (no interpreter start-up)."""

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def gf(capsys):
    """Run the CLI in-process through ``gptforge.cli.main.main`` (same code path as the
    console script, minus the subprocess); `cli` (a real subprocess) is used where the
    process boundary matters."""
    import logging

    from gptforge.cli.main import main

    def run(*args: str) -> _Result:
        capsys.readouterr()
        rc = main(list(args))
        out, err = capsys.readouterr()
        logging.getLogger("gptforge").handlers[:] = []  # main() set a handler on the old stderr
        return _Result(rc, out, err)

    return run


def _assert_one_line_error(proc, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert lines[-1].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[-1], lines[-1]


def _assert_training_entry_matches_metrics(run) -> None:
    """final/config.json says which step and val loss its weights belong to: the run's last ones."""
    training = json.loads((run / "final" / "config.json").read_text())["training"]
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    assert training["step"] == max(x["step"] for x in lines)
    assert training["val_loss"] == next(x["val_loss"] for x in reversed(lines) if "val_loss" in x)


def test_classify_end_to_end(cli, gf, tiny_model, tmp_path) -> None:
    data = _write_spam(tmp_path / "spam.tsv")
    run = tmp_path / "run"
    proc = gf("finetune", "classify", "--model", str(tiny_model), "--data", str(data), "--out", str(run),
               "--train", "all", "--epochs", "3", "--batch-size", "8", "--lr", "3e-3", "--no-progress", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    on_disk = json.loads((run / "results.json").read_text())
    assert on_disk["test_accuracy"] == results["test_accuracy"] >= 0.9  # an easy, separable task
    assert on_disk["labels"] == ["ham", "spam"]
    assert set(results["reports"]["test"]) >= {"accuracy", "per_class", "confusion_matrix"}
    assert (run / "metrics.jsonl").is_file() and (run / "final" / "model.safetensors").is_file()
    _assert_training_entry_matches_metrics(run)
    proc = cli("classify", "--model", str(run), "--text", "claim your FREE cash prize now", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["label"] == "spam"
    # nothing is overwritten without --overwrite
    proc = gf("finetune", "classify", "--model", str(tiny_model), "--data", str(data), "--out", str(run))
    _assert_one_line_error(proc, "already exists")


def test_instruct_end_to_end_with_lora_merge(gf, tiny_model, tmp_path) -> None:
    records = [{"instruction": f"Repeat the word {w}.", "output": f"{w} {w}"} for w in ["cat", "dog", "sun", "sky"] * 6]
    data = tmp_path / "inst.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in records))
    run = tmp_path / "irun"
    proc = gf("finetune", "instruct", "--model", str(tiny_model), "--data", str(data), "--out", str(run),
               "--lora-rank", "4", "--lora-alpha", "8", "--merge", "--epochs", "3", "--lr", "1e-2", "--batch-size", "4",
               "--val-fraction", "0.25", "--eval-samples", "2", "--max-new-tokens", "4", "--no-progress")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    res = json.loads((run / "results.json").read_text())
    assert res["val_loss_after"] < res["val_loss_before"]
    _assert_training_entry_matches_metrics(run)
    assert res["trainable_params"] < 0.05 * res["total_params"]
    rows = [json.loads(x) for x in (run / "responses.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all({"prompt", "reference", "response"} <= set(r) for r in rows)
    cfg = json.loads((run / "final" / "config.json").read_text())
    assert cfg["template"]["name"] == "alpaca" and "lora" not in cfg  # merged: a plain GPT
    from gptforge.model.loading import load_model

    model = load_model(run)
    assert type(model) is GPT
    assert not any("lora" in k for k in model.state_dict())


def test_instruct_lora_on_the_tied_lm_head_saves_a_tied_gpt(gf, tiny_model, tmp_path) -> None:
    records = [{"instruction": f"Name a {w}.", "output": w} for w in ["cat", "dog", "sun", "sky"] * 4]
    data = tmp_path / "inst.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in records))
    run = tmp_path / "hrun"
    proc = gf("finetune", "instruct", "--model", str(tiny_model), "--data", str(data), "--out", str(run),
               "--lora-rank", "2", "--lora-targets", "c_attn,lm_head", "--merge", "--epochs", "1", "--batch-size", "4",
               "--val-fraction", "0.25", "--eval-samples", "0", "--no-progress")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    from gptforge.model.loading import load_model

    model, base = load_model(run), load_model(tiny_model)
    assert type(model) is GPT and model.config.tie_weights
    assert model.lm_head.weight is model.transformer.wte.weight
    assert not torch.equal(model.transformer.wte.weight, base.transformer.wte.weight)  # the adapter was folded in


def test_bad_input(cli, gf, tiny_model, tmp_path) -> None:
    m = str(tiny_model)
    out = str(tmp_path / "never")
    no_label = tmp_path / "nolabel.tsv"
    no_label.write_text("label\ttext\nham\thello\n\tno label here\n")
    _assert_one_line_error(cli("finetune", "classify", "--model", m, "--data", str(no_label), "--out", out),
                           "nolabel.tsv record 3", "no label")  # fmt: skip
    single = tmp_path / "single.tsv"
    single.write_text("label\ttext\nham\thello\nham\tbye\n")
    _assert_one_line_error(gf("finetune", "classify", "--model", m, "--data", str(single), "--out", out),
                           "single class")  # fmt: skip
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    _assert_one_line_error(gf("finetune", "instruct", "--model", m, "--data", str(empty), "--out", out),
                           "empty.jsonl", "no records")  # fmt: skip
    no_output = tmp_path / "noout.json"
    no_output.write_text(json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c"}]))
    _assert_one_line_error(gf("finetune", "instruct", "--model", m, "--data", str(no_output), "--out", out),
                           "noout.json record 2", "output")  # fmt: skip
    _assert_one_line_error(gf("classify", "--model", m, "--text", "hi"), "not a classifier")
    _assert_one_line_error(gf("finetune", "instruct", "--model", m, "--data", str(no_output), "--out", out,
                              "--lora-rank", "4", "--lora-targets", "c_attn,lm_head"), "lm_head needs --merge")  # fmt: skip
    assert not Path(out).exists()


def test_too_long_records_skip_or_truncate(gf, tiny_model, tmp_path) -> None:
    long = {"instruction": "Say a lot.", "output": "word " * 200}
    short = {"instruction": "Say hi.", "output": "hi"}
    data = tmp_path / "long.json"
    data.write_text(json.dumps([long, short, short, short]))
    common = ["finetune", "instruct", "--model", str(tiny_model), "--data", str(data), "--epochs", "1",
              "--val-fraction", "0", "--eval-samples", "0", "--no-progress", "--json"]  # fmt: skip
    proc = gf(*common, "--out", str(tmp_path / "t"), "--on-too-long", "truncate")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["n_train"] == 4 and "longer than 64 tokens" in proc.stderr
    proc = gf(*common, "--out", str(tmp_path / "s"), "--on-too-long", "skip")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["n_train"] == 3


@pytest.mark.parametrize(
    ("n_params", "lora", "task", "expected"),
    [
        (1_860_000, False, "classify", 1e-3),  # the bench bases: the rate measured best there
        (3_750_000, False, "instruct", 1e-3),
        (3_750_000, True, "instruct", 1e-2),  # LoRA: x10 (the bench's LoRA rate)
        (3_750_000, True, "classify", 2e-3),
        (40_000_000, False, "instruct", 5e-4),  # past 10M: 1e-3 x sqrt(10M / N)
        (124_000_000, False, "instruct", 1e-3 * (10e6 / 124e6) ** 0.5),
        (10_000_000_000, False, "instruct", 5e-5),  # floor
    ],
)
def test_default_lr_from_the_model_size(n_params: int, lora: bool, task: str, expected: float) -> None:
    from gptforge.finetune.recipe import default_lr

    assert default_lr(n_params, lora, task) == pytest.approx(expected)


@pytest.mark.parametrize(("argv", "expected"), [(["instruct"], None), (["instruct", "--lr", "2e-5"], 2e-5),
                                                (["classify", "--train", "lora", "--lr", "3e-4"], 3e-4)])  # fmt: skip
def test_explicit_lr_wins(argv: list[str], expected: float | None) -> None:
    import argparse

    from gptforge.cli import finetune

    parser = argparse.ArgumentParser()
    finetune.add_arguments(parser)
    args = parser.parse_args([*argv, "--model", "m", "--data", "d", "--out", "o"])
    loop = finetune._loop(args, lora=False)
    assert loop.lr == expected and loop.sort_by_length  # None: resolved from the model's size


def test_device_auto_and_dtype_spellings(gf, tiny_model, tmp_path) -> None:
    """``finetune --device auto`` once crashed (torch.device("auto")); ``classify`` and the
    other model commands take it too, and every --dtype takes bf16 and bfloat16 alike."""
    data = _write_spam(tmp_path / "spam.tsv", n=20)
    run = tmp_path / "run"
    proc = gf("finetune", "classify", "--model", str(tiny_model), "--data", str(data), "--out", str(run),
              "--train", "head", "--epochs", "1", "--batch-size", "8", "--no-progress", "--device", "auto")
    assert proc.returncode == 0, proc.stderr
    proc = gf("classify", "--model", str(run / "final"), "--text", "WIN a FREE prize", "--device", "auto")
    assert proc.returncode == 0 and ("spam" in proc.stdout or "ham" in proc.stdout), proc.stderr
    outs = []
    for spelling in ("bf16", "bfloat16", "BFloat16"):
        proc = gf("generate", "--model", str(tiny_model), "--prompt", "hi", "--max-new-tokens", "3",
                  "--temperature", "0", "--device", "auto", "--dtype", spelling)
        assert proc.returncode == 0, proc.stderr
        outs.append(proc.stdout)
    assert outs[0] == outs[1] == outs[2]
    with pytest.raises(SystemExit) as exit_:  # argparse's own exit, with one error line
        gf("generate", "--model", str(tiny_model), "--prompt", "hi", "--dtype", "bf17")
    assert exit_.value.code == 2


def test_every_dtype_flag_takes_both_spellings() -> None:
    import argparse

    from gptforge.cli.main import build_parser

    parser = build_parser()
    for argv in (["eval", "--model", "m", "--data", "d"], ["generate", "--model", "m", "--prompt", "p"],
                 ["model", "info", "--preset", "gpt2"]):
        got = {parser.parse_known_args([*argv, "--dtype", s])[0].dtype for s in ("bf16", "bfloat16")}
        assert got == {"bf16"}, argv
        got = {parser.parse_known_args([*argv, "--dtype", s])[0].dtype for s in ("fp32", "float32")}
        assert got == {"fp32"}, argv
    assert isinstance(parser, argparse.ArgumentParser)
