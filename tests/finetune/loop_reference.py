"""The fixed set-up of the one-loop equivalence test, and the capture of its reference.

``old_loop_reference.json`` holds what the *old* fine-tuning loop (``finetune/loop.py``,
deleted when both tasks moved onto the one training engine under ``train/``) produced for
these three runs: every logged training loss, every val loss and results.json's figures,
as exact float reprs. It was written by running this file with the old loop in the tree
(main at 57bd4b6, and again on the engine branch before the loop moved: identical files)::

    PYTHONPATH=src python tests/finetune/loop_reference.py tests/finetune/data/old_loop_reference.json

It cannot be re-run now that the old loop is gone; ``test_finetune_engine_equivalence.py``
compares the engine's runs of the same set-up with it.
"""

from __future__ import annotations

import json
import random
import string
import sys
import tempfile
from pathlib import Path

import torch

# name -> (task, options beyond model/data/out, loop settings); fp32, CPU, one thread
RUNS: dict[str, tuple[str, dict, dict]] = {
    "classify_all": ("classify", {"train": "all"},
                     {"epochs": 2, "batch_size": 8, "lr": 1e-3, "seed": 7, "log_interval": 1}),
    "instruct_full": ("instruct", {},
                      {"epochs": 2, "batch_size": 4, "lr": 1e-3, "seed": 7, "log_interval": 1}),
    "instruct_lora": ("instruct", {"lora_rank": 2, "lora_alpha": 4.0, "lora_dropout": 0.1},
                      {"epochs": 1, "batch_size": 4, "lr": 1e-2, "seed": 7, "log_interval": 1,
                       "sort_by_length": True}),
}  # fmt: skip


def make_base(out: Path) -> Path:
    """A 1-layer char-level GPT with dropout (so the RNG stream matters), saved as a model dir."""
    from gptforge import GPT, GPTConfig
    from gptforge.model.loading import save_model
    from gptforge.tokenizer.char import CharTokenizer

    tok = CharTokenizer.train(string.printable)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=256, n_layer=1, n_head=2, n_embd=16, dropout=0.1))
    save_model(model, out, tokenizer=tok)
    return out


def write_spam(path: Path) -> Path:
    rng = random.Random(1)
    rows = ["label\ttext"]
    for i in range(48):
        words = ["win", "free", "cash", "prize"] if i % 2 else ["lunch", "later", "tonight", "ok"]
        rows.append(f"{'spam' if i % 2 else 'ham'}\t{' '.join(rng.choice(words) for _ in range(rng.randint(2, 7)))}")
    path.write_text("\n".join(rows) + "\n")
    return path


def write_instructions(path: Path) -> Path:
    rng = random.Random(0)
    words = ["speak", "famish", "citizen", "resolved", "proceed", "further"]
    path.write_text(json.dumps([{"instruction": f"Repeat the word {w}" + "!" * rng.randint(0, 6), "input": "",
                                 "output": w} for w in (rng.choice(words) for _ in range(30))]))  # fmt: skip
    return path


def summarize(run_dir: Path) -> dict:
    """Losses and figures of a finished run, as exact reprs (the comparison is bitwise or stated)."""
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    results = json.loads((run_dir / "results.json").read_text())
    keys = ("test_accuracy", "val_accuracy", "val_loss_before", "val_loss_after", "trainable_params")
    return {
        "train_loss": [repr(x["loss"]) for x in lines if "loss" in x],
        "steps": [x["step"] for x in lines if "loss" in x],
        "val_loss": [repr(x["val_loss"]) for x in lines if "val_loss" in x],
        "results": {k: repr(results[k]) for k in keys if k in results},
    }


def _capture(out_file: Path) -> None:  # pragma: no cover - ran once, with the old loop
    from gptforge.finetune.loop import LoopConfig  # the old loop: this ran before it was deleted

    from gptforge.finetune.classify import ClassifyOptions, run_classification
    from gptforge.finetune.instruct import InstructOptions, run_instruct

    torch.set_num_threads(1)
    ref = {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = make_base(tmp / "base")
        spam, inst = write_spam(tmp / "spam.tsv"), write_instructions(tmp / "inst.json")
        for name, (task, opts, loop) in RUNS.items():
            cfg = LoopConfig(**loop, progress=False, checkpoint_every=0)
            out = tmp / name
            if task == "classify":
                run_classification(ClassifyOptions(model=str(base), data=str(spam), out=str(out), **opts), cfg)
            else:
                run_instruct(InstructOptions(model=str(base), data=str(inst), out=str(out), eval_samples=0,
                                             **opts), cfg)  # fmt: skip
            ref[name] = summarize(out)
    out_file.write_text(json.dumps(ref, indent=1) + "\n")


if __name__ == "__main__":
    _capture(Path(sys.argv[1]))
