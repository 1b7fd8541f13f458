"""Fine-tuning under torchrun (gloo, 2 processes) equals one process with the same global batch.

Reference: the same command in one process. Each process takes half the rows of every
batch (rows rank::2) and DDP averages the two halves' gradients. For classification (a
mean over examples, 2 + 2 of each batch of 4; 28 training texts, so no short batch) that is
the gradient of the whole batch as it stands. For instructions the halves hold different
numbers of response tokens, so each process's mean is rescaled by its share of the batch's
tokens (``train.tasks.global_mean_share``); without that the two runs differ from step 1.
Not bitwise, for the reason the pretraining DDP test gives (the all-reduce sums in another
order): the same tolerance.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gptforge.io import load_safetensors

pytestmark = [pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing"),
              pytest.mark.slow]  # fmt: skip


def _base(out: Path, block_size: int = 64) -> Path:
    import string

    from gptforge import GPT, GPTConfig
    from gptforge.model.loading import save_model
    from gptforge.tokenizer.char import CharTokenizer

    tok = CharTokenizer.train(string.printable)
    torch.manual_seed(0)
    save_model(GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=1, n_head=2, n_embd=16, dropout=0.0)),
               out, tokenizer=tok)  # fmt: skip
    return out


def _spam(path: Path) -> Path:
    rows = ["label\ttext"] + [f"{'spam' if i % 2 else 'ham'}\t{'win free cash' if i % 2 else 'see you later'} {i}"
                              for i in range(40)]  # fmt: skip
    path.write_text("\n".join(rows) + "\n")
    return path


def _instructions(path: Path) -> Path:
    # Responses of very different lengths: the two halves of a batch hold unequal token counts.
    words = ["cat", "dog", "sun", "sky", "sea", "owl", "fig", "ash"]
    records = [{"instruction": f"Repeat {w} {1 + i % 5} times.", "output": " ".join([w] * (1 + i % 5))}
               for i, w in enumerate(words * 4)]  # fmt: skip
    path.write_text(json.dumps(records))
    return path


def _classify_args(tmp_path: Path) -> list[str]:
    base, data = _base(tmp_path / "base"), _spam(tmp_path / "spam.tsv")
    return ["finetune", "classify", "--model", str(base), "--data", str(data), "--train", "all", "--epochs", "2",
            "--batch-size", "4", "--lr", "1e-3", "--no-progress", "--json", "--log.interval", "1"]  # fmt: skip


def _instruct_args(tmp_path: Path) -> list[str]:
    base, data = _base(tmp_path / "base", block_size=256), _instructions(tmp_path / "instructions.json")
    return ["finetune", "instruct", "--model", str(base), "--data", str(data), "--epochs", "1",
            "--batch-size", "4", "--lr", "1e-3", "--eval-samples", "0", "--no-progress", "--json",
            "--log.interval", "1"]  # fmt: skip


@pytest.mark.parametrize("task,mode", [("classify", "ddp"), ("instruct", "ddp"), ("classify", "fsdp"),
                                       ("instruct", "fsdp"), ("instruct-lora", "fsdp")])  # fmt: skip
def test_ddp_finetune_equals_one_process(tmp_path: Path, task: str, mode: str) -> None:
    """DDP, and FSDP (which shards the model in place: the results must come from the whole
    trained model, gathered into final/, and methods other than forward must gather too)."""
    args = _classify_args(tmp_path) if task == "classify" else _instruct_args(tmp_path)
    if task == "instruct-lora":
        args += ["--lora-rank", "4", "--lora-dropout", "0"]
    args += ["--train.distributed", mode]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    one = subprocess.run([sys.executable, "-m", "gptforge", *args, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "gptforge", *args, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    reports = [x for x in two.stdout.splitlines() if x.startswith("{")]
    assert len(reports) == 1  # only rank 0 reports
    # the results (scored after training, on rank 0 alone) come from the same trained weights
    ra, rb = json.loads([x for x in one.stdout.splitlines() if x.startswith("{")][-1]), json.loads(reports[0])
    for key in ("val_loss_after", "val_accuracy", "test_accuracy"):
        if key in ra:
            assert rb[key] == pytest.approx(ra[key], rel=1e-5), key

    def losses(run: Path) -> dict[int, float]:
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in lines if "loss" in r}

    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(a) == sorted(b) and len(a) >= 7
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=2e-6, abs=0), step
    wa = load_safetensors(tmp_path / "one" / "final" / "model.safetensors")
    wb = load_safetensors(tmp_path / "two" / "final" / "model.safetensors")
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-5, msg=k)
