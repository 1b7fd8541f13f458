"""A stopped fine-tuning run continues from its last checkpoint, against the reference of
an uninterrupted run with the same settings: same final weights (bitwise on the CPU) and
the same logged losses."""

from __future__ import annotations

import json
import random
import string
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from gptforge.errors import ConfigError
from gptforge.finetune.classify import ClassifyOptions, run_classification
from gptforge.finetune.instruct import InstructOptions, run_instruct
from gptforge.finetune.recipe import LoopConfig
from gptforge.finetune.resume import resume_dir_for
from gptforge.io import load_safetensors
from gptforge.train.checkpoint import STATE_FILE, list_checkpoints, read_latest


@pytest.fixture(scope="module")
def char_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gptforge import GPT, GPTConfig
    from gptforge.model.loading import save_model
    from gptforge.tokenizer.char import CharTokenizer

    tok = CharTokenizer.train(string.printable)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=320, n_layer=1, n_head=2, n_embd=16, dropout=0.1))
    out = tmp_path_factory.mktemp("resume") / "base"
    save_model(model, out, tokenizer=tok)
    return out


def _instructions(path: Path) -> Path:
    rng = random.Random(0)
    words = ["speak", "famish", "citizen", "resolved", "proceed", "further"]
    path.write_text(json.dumps([{"instruction": f"Repeat the word {w}.", "input": "", "output": w}
                                for w in (rng.choice(words) for _ in range(40))]))  # fmt: skip
    return path


def _spam(path: Path) -> Path:
    rng = random.Random(1)
    rows = ["label\ttext"]
    for i in range(60):
        words = ["win", "free", "cash", "prize"] if i % 2 else ["lunch", "later", "tonight", "ok"]
        rows.append(f"{'spam' if i % 2 else 'ham'}\t{' '.join(rng.choice(words) for _ in range(5))}")
    path.write_text("\n".join(rows) + "\n")
    return path


class Stop(Exception):
    """Stands for a kill: raised after the n-th optimizer step."""


@pytest.fixture
def stop_after_step(monkeypatch):
    def arm(n: int, exc: type[BaseException] = Stop) -> None:
        original = torch.optim.AdamW.step
        count = {"n": 0}

        def step(self, *args, **kwargs):
            out = original(self, *args, **kwargs)
            count["n"] += 1
            if count["n"] == n:
                monkeypatch.setattr(torch.optim.AdamW, "step", original)  # the next run is not stopped
                raise exc
            return out

        monkeypatch.setattr(torch.optim.AdamW, "step", step)

    return arm


def _metrics(run: Path) -> list[dict]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k not in ("tokens_per_s", "time_s")} for line in lines]  # timing


def _assert_same_run(a: Path, b: Path) -> None:
    wa, wb = (load_safetensors(d / "final" / "model.safetensors") for d in (a, b))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert _metrics(a) == _metrics(b)


LOOP = LoopConfig(epochs=2, batch_size=4, lr=1e-3, checkpoint_every=3, log_interval=1, progress=False)


@pytest.mark.parametrize("stop_at", [5, 9, 10])  # mid-epoch, the epoch's last step (9 = 36 / 4), after it
def test_instruct_lora_resumed_equals_uninterrupted(char_model, tmp_path, stop_after_step, stop_at, caplog) -> None:
    data = _instructions(tmp_path / "data.json")
    opts = InstructOptions(model=str(char_model), data=str(data), out=str(tmp_path / "ref"), lora_rank=4,
                           lora_dropout=0.1, eval_samples=1, max_new_tokens=2)  # fmt: skip
    run_instruct(opts, LOOP)
    out = tmp_path / "stopped"
    stopped = replace(opts, out=str(out))
    stop_after_step(stop_at)
    with pytest.raises(Stop):
        run_instruct(stopped, LOOP)
    assert not out.exists()  # nothing half-done looks like a result
    work = resume_dir_for(out)
    saved = json.loads((work / "checkpoints" / read_latest(work) / STATE_FILE).read_text())
    assert saved["step"] == {5: 3, 9: 6, 10: 9}[stop_at]  # every 3 steps; the epoch end (9) after its eval
    with caplog.at_level("INFO", logger="gptforge"):
        run_instruct(stopped, LOOP)
    assert f"resuming from step {saved['step']} of 18" in caplog.text
    _assert_same_run(tmp_path / "ref", out)
    assert not resume_dir_for(out).exists()  # complete: the checkpoint is gone


def test_classify_full_resumed_equals_uninterrupted(char_model, tmp_path, stop_after_step, caplog) -> None:
    data = _spam(tmp_path / "spam.tsv")
    opts = ClassifyOptions(model=str(char_model), data=str(data), out=str(tmp_path / "ref"), train="all")
    run_classification(opts, LOOP)
    stopped = replace(opts, out=str(tmp_path / "stopped"))
    stop_after_step(7)
    with pytest.raises(Stop):
        run_classification(stopped, LOOP)
    with caplog.at_level("INFO", logger="gptforge"):
        run_classification(stopped, LOOP)
    assert "resuming from step 6 of 22" in caplog.text  # 42 training texts: 11 steps per epoch
    _assert_same_run(tmp_path / "ref", tmp_path / "stopped")


def test_other_settings_are_refused_and_overwrite_starts_over(char_model, tmp_path, stop_after_step) -> None:
    data = _instructions(tmp_path / "data.json")
    opts = InstructOptions(model=str(char_model), data=str(data), out=str(tmp_path / "run"), eval_samples=0)
    stop_after_step(4)
    with pytest.raises(Stop):
        run_instruct(opts, LOOP)
    with pytest.raises(ConfigError, match=r"other settings \(loop.lr\).*--overwrite"):
        run_instruct(opts, replace(LOOP, lr=2e-3))
    data.write_text(data.read_text().replace("speak", "shout"))  # the data changed too
    with pytest.raises(ConfigError, match="data_sha256"):
        run_instruct(opts, LOOP)
    run_instruct(replace(opts, overwrite=True), replace(LOOP, lr=2e-3))  # starts over
    assert (tmp_path / "run" / "results.json").is_file() and not resume_dir_for(tmp_path / "run").exists()


def test_damaged_checkpoint_starts_over_with_a_warning(char_model, tmp_path, stop_after_step, caplog) -> None:
    data = _instructions(tmp_path / "data.json")
    opts = InstructOptions(model=str(char_model), data=str(data), out=str(tmp_path / "ref"), eval_samples=0)
    run_instruct(opts, LOOP)
    stopped = replace(opts, out=str(tmp_path / "stopped"))
    stop_after_step(8)
    with pytest.raises(Stop):
        run_instruct(stopped, LOOP)
    work = resume_dir_for(tmp_path / "stopped")
    weights = work / "checkpoints" / read_latest(work) / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with caplog.at_level("WARNING", logger="gptforge"):
        run_instruct(stopped, LOOP)
    assert "model.safetensors is corrupt" in caplog.text and "starting over" in caplog.text
    _assert_same_run(tmp_path / "ref", tmp_path / "stopped")  # from scratch, the same result


@pytest.mark.parametrize("bad", ["[1, 2]", '{"kind": "gptforge-checkpoint", "step": 3}'])
def test_malformed_state_starts_over_with_a_warning(char_model, tmp_path, stop_after_step, caplog, bad) -> None:
    data = _instructions(tmp_path / "data.json")
    opts = InstructOptions(model=str(char_model), data=str(data), out=str(tmp_path / "run"), eval_samples=0)
    stop_after_step(4)
    with pytest.raises(Stop):
        run_instruct(opts, LOOP)
    work = resume_dir_for(tmp_path / "run")
    state = work / "checkpoints" / read_latest(work) / STATE_FILE
    state.write_text(bad)
    with caplog.at_level("WARNING", logger="gptforge"):
        run_instruct(opts, LOOP)
    assert f"ignoring the fine-tuning checkpoints in {work}" in caplog.text and "starting over" in caplog.text
    assert (tmp_path / "run" / "results.json").is_file() and not work.exists()


def test_checkpoint_every_zero_writes_none(char_model, tmp_path, stop_after_step) -> None:
    data = _instructions(tmp_path / "data.json")
    opts = InstructOptions(model=str(char_model), data=str(data), out=str(tmp_path / "run"), eval_samples=0)
    stop_after_step(9)
    with pytest.raises(Stop):
        run_instruct(opts, replace(LOOP, checkpoint_every=0))
    assert not list_checkpoints(resume_dir_for(tmp_path / "run"))  # (only one at the end of a run)
    with pytest.raises(ConfigError, match="--checkpoint-every"):
        replace(LOOP, checkpoint_every=-1)


def test_ctrl_c_says_where_the_progress_is(char_model, tmp_path, stop_after_step, caplog) -> None:
    data = _instructions(tmp_path / "data.json")
    opts = InstructOptions(model=str(char_model), data=str(data), out=str(tmp_path / "run"), eval_samples=0)
    stop_after_step(5, KeyboardInterrupt)
    with caplog.at_level("WARNING", logger="gptforge"), pytest.raises(KeyboardInterrupt):
        run_instruct(opts, LOOP)
    progress = resume_dir_for(tmp_path / "run")
    assert f"the checkpoint of step_0000003 is in {progress}" in caplog.text  # 4 steps done, 3 saved
