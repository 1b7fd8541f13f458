"""SIGKILL `gptforge finetune instruct` at random moments.

A fine-tuning run dir is built in a temporary folder and renamed when complete, and the
run keeps progress checkpoints beside it (``.OUT.resume/``, here every 2 steps). The
contract tested: after any kill ``--out`` does not exist (nothing half-written looks like a
result); the same command, without --overwrite, continues from the last complete
checkpoint (a kill inside a checkpoint's writing leaves the previous one); and the final
result is bitwise the result of an uninterrupted run with the same seed.
"""

from __future__ import annotations

import json
import random
import signal
import string
from pathlib import Path

import pytest
import torch

from gptforge.io import load_safetensors
from tests.reliability.conftest import run_harness, run_harness_killed


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Path:
    from gptforge import GPT, GPTConfig
    from gptforge.model.loading import save_model
    from gptforge.tokenizer.char import CharTokenizer

    tok = CharTokenizer.train(
        string.printable + corpus.read_text()
    )  # every character a template uses
    torch.manual_seed(0)
    model = GPT(
        GPTConfig(vocab_size=tok.vocab_size, block_size=320, n_layer=1, n_head=2, n_embd=16)
    )
    out = tmp_path_factory.mktemp("ftbase") / "base"
    save_model(model, out, tokenizer=tok)
    return out


def _records() -> list[dict[str, str]]:
    rng = random.Random(0)
    words = ["speak", "famish", "citizen", "resolved", "proceed", "further"]
    return [{"instruction": f"Repeat the word {w}.", "input": "", "output": w}
            for w in (rng.choice(words) for _ in range(48))]  # fmt: skip


FAST_PLAN = [("ft_step", 5), ("ft_ckpt", 2)]
SLOW_PLAN = [("ft_step", 1), ("ft_step", 5), ("ft_ckpt", 2), ("ft_step", 11), ("random", 0), ("random", 0)]


@pytest.mark.parametrize(
    "plan", [FAST_PLAN, pytest.param(SLOW_PLAN, marks=pytest.mark.slow)], ids=["fast", "slow"]
)
def test_finetune_killed_anywhere_restarts_cleanly(
    plan: list, base_model: Path, tmp_path: Path
) -> None:
    data = tmp_path / "instructions.json"
    data.write_text(json.dumps(_records()))
    flags = ["finetune", "instruct", "--model", str(base_model), "--data", str(data), "--epochs", "2",
             "--batch-size", "4", "--lr", "1e-3", "--eval-samples", "2", "--max-new-tokens", "4",
             "--checkpoint-every", "2", "--no-progress"]  # fmt: skip
    ref = tmp_path / "reference"
    r = run_harness(*flags, "--out", str(ref))
    assert r.returncode == 0, r.stderr

    out = tmp_path / "killed"
    rng = random.Random(3)
    kills, resumed = 0, 0
    for point, n in plan:
        cmd = [*flags, "--out", str(out)]
        if point == "random":
            res = run_harness_killed(*cmd, after_s=rng.uniform(1.0, 6.0))
        else:
            res = run_harness(*cmd, fi=f"{point}:{n}")
        code, err = res.returncode, res.stderr
        assert "Traceback" not in err, err
        resumed += "resuming from step" in err
        if code == -signal.SIGKILL:
            kills += 1
            if out.exists():
                # A random kill can land after the atomic rename, while the process exits:
                # then the output must be the complete one (it is compared below).
                names = sorted(p.name for p in out.iterdir())
                assert point == "random" and {"final", "results.json"} <= set(names), (
                    f"a killed fine-tune left {names}"
                )
                break
        else:
            assert code == 0, err  # finished before the random kill: a complete result
            break
    assert kills >= min(3, len(plan))
    assert resumed >= 1  # the run after the kill at step 5 continued from step 4
    if not out.exists():
        r = run_harness(*flags, "--out", str(out))  # no --overwrite needed after a kill
        assert r.returncode == 0, r.stderr
    wa = load_safetensors(ref / "final" / "model.safetensors")
    wb = load_safetensors(out / "final" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (ref, out))
    assert ra["val_loss_after"] == rb["val_loss_after"]
    print(f"\nreliability: finetune kills={kills}, resumed runs={resumed} (bitwise equal)")
