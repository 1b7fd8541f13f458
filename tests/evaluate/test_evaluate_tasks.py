"""Task evaluation (HellaSwag, mc:, cloze:) checked against transformers' own forward.

The reference: the gptforge model is exported with ``gptforge export --format hf``, loaded
back as ``transformers.GPT2LMHeadModel``, and each choice is scored by hand from its full
logits on the unpadded sequence ``context + choice`` (one sequence at a time, no cache,
no batching): a different code path from the batched, cache-sharing scorer.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from tests.conftest import DATA_DIR, run_cli

from gptforge.errors import DataError
from gptforge.evaluate.task_files import (
    load_task,
    parse_hellaswag,
    read_cloze_jsonl,
    read_mc_jsonl,
    split_last_word,
)
from gptforge.evaluate.tasks import encode_item, evaluate_task
from gptforge.interop.hf import export_hf
from gptforge.model.config import GPTConfig
from gptforge.model.gpt import GPT
from gptforge.model.loading import load_model, save_model
from gptforge.tokenizer import load_tokenizer

HAND_MADE = """\
Baking cookies: A woman mixes flour and sugar in a bowl. she
2
throws the bowl out of the window.
paints the bowl blue.
adds eggs and stirs the dough.
starts to sing loudly.
Swimming: A boy jumps into the pool. he
0
swims to the other side.
climbs a tree.
drives a car away.
reads a book on the moon.
"""


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random 2-layer GPT with the GPT-2 tokenizer, a short context (so truncation is
    exercised) and a padded vocabulary (whose rows must never be scored)."""
    if not (DATA_DIR / "gpt2" / "encoder.json").is_file():
        pytest.skip("GPT-2 tokenizer files not found")
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=2, n_head=4, n_embd=32, block_size=48, vocab_size=50257, pad_vocab_to=64, dropout=0.0)
    model = GPT(cfg).eval()
    with torch.no_grad():  # a non-flat output distribution, so choices really differ
        model.transformer.wte.weight.mul_(40)
        model.transformer.wte.weight[50257:] = 5 * torch.randn(47, 32)  # padding rows: large logits unless cut
    out = tmp_path_factory.mktemp("tasks") / "model"
    save_model(model, out, tokenizer=load_tokenizer("gpt2"))
    return out


@pytest.fixture(scope="module")
def hf_reference(tiny_model_dir: Path, tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("tasks_hf") / "hf"
    export_hf(tiny_model_dir, folder)
    return transformers.GPT2LMHeadModel.from_pretrained(folder).eval()


def _reference_scores(hf, ctx: list[int], choices: list[list[int]], block: int) -> list[tuple[float, bool]]:
    out = []
    ctx = ctx[-(block - max(map(len, choices))) :]  # keeps its last tokens, so the longest choice fits
    for ch in choices:
        ids = ctx + ch
        with torch.no_grad():
            logits = hf(torch.tensor([ids])).logits[0].double()  # (T, V)
        logp = torch.log_softmax(logits, dim=-1)
        first = len(ids) - len(ch)
        total, greedy = 0.0, True
        for k, tok in enumerate(ch):  # token k is predicted at position first + k - 1
            row = logp[first + k - 1]
            total += float(row[tok])
            greedy &= int(row.argmax()) == tok
        out.append((total, greedy))
    return out


def _mc_file(tmp_path: Path, n: int = 14) -> Path:
    verdict = (DATA_DIR / "the-verdict.txt").read_text(encoding="utf-8").split()
    lines = []
    for i in range(n):
        start = 7 * i
        context = " ".join(verdict[start : start + 3 + 5 * (i % 4)])  # lengths vary: padding is exercised
        if i == 3:
            context = " ".join(verdict[:60])  # longer than block_size 48: truncated from the left
        choices = [" " + " ".join(verdict[start + 20 + j : start + 21 + j + (j * i) % 4]) for j in range(2 + i % 3)]
        lines.append(json.dumps({"context": context, "choices": choices, "label": i % len(choices), "id": f"q{i}"}))
    path = tmp_path / "quiz.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir: Path) -> GPT:
    return load_model(tiny_model_dir)


@pytest.mark.parametrize("batch_size", [1, 5])
def test_mc_choices_equal_transformers(tiny_model, hf_reference, tmp_path, batch_size) -> None:
    model = tiny_model
    task = load_task(f"mc:{_mc_file(tmp_path)}")
    result, samples = evaluate_task(model, task, batch_size=batch_size)
    assert result["items"] == len(task.items) == 14
    right = {"acc": 0, "acc_norm_token": 0, "acc_norm_byte": 0}
    for item, sample in zip(task.items, samples, strict=True):
        ctx, choices = encode_item(model.tokenizer, item)
        ref = _reference_scores(hf_reference, ctx, choices, model.config.block_size)
        lp = [r[0] for r in ref]
        assert sample["logprobs"] == pytest.approx(lp, abs=2e-3)
        by_token = [s / len(c) for s, c in zip(lp, choices, strict=True)]
        by_byte = [s / len(c.encode()) for s, c in zip(lp, item.choices, strict=True)]
        assert sample["pred"] == max(range(len(lp)), key=lp.__getitem__)
        assert sample["pred_norm_token"] == max(range(len(lp)), key=by_token.__getitem__)
        assert sample["pred_norm_byte"] == max(range(len(lp)), key=by_byte.__getitem__)
        right["acc"] += sample["pred"] == item.label
        right["acc_norm_token"] += sample["pred_norm_token"] == item.label
        right["acc_norm_byte"] += sample["pred_norm_byte"] == item.label
    for k, v in right.items():
        assert result["metrics"][k] == pytest.approx(v / 14)
    assert result["metrics"]["acc_norm"] == result["metrics"]["acc_norm_token"]


def test_cloze_equals_transformers(tiny_model, hf_reference, tmp_path) -> None:
    model = tiny_model
    verdict = (DATA_DIR / "the-verdict.txt").read_text(encoding="utf-8").split()
    texts = [" ".join(verdict[i : i + 4 + i % 9]) for i in range(0, 200, 17)]
    path = tmp_path / "cloze.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    task = load_task(f"cloze:{path}")
    result, samples = evaluate_task(model, task, batch_size=4)
    nll, hits = 0.0, 0
    for item, sample in zip(task.items, samples, strict=True):
        ctx, (target,) = encode_item(model.tokenizer, item)
        ((lp, greedy),) = _reference_scores(hf_reference, ctx, [target], model.config.block_size)
        assert sample["logprob"] == pytest.approx(lp, abs=2e-3)
        assert sample["greedy_correct"] == greedy
        nll -= lp
        hits += greedy
    assert result["metrics"]["perplexity"] == pytest.approx(math.exp(nll / len(texts)), rel=1e-3)
    assert result["metrics"]["acc"] == hits / len(texts)


def test_greedy_flag_against_a_model_that_predicts_its_input(tmp_path) -> None:
    """Hand-worked check of the cloze hit: a model whose argmax is always token 7 is
    greedy-right on a target of 7s and wrong on anything else."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=11, dropout=0.0)).eval()
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.transformer.ln_f.bias.zero_()
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias[0] = 1.0
        model.lm_head.weight[7, 0] = 5.0  # logits = 5 on id 7 whatever the input
    from gptforge.evaluate.continuations import score_batch

    (hit, miss), = score_batch(model, [([1, 2, 3], [[7, 7], [7, 3]])])
    assert hit.greedy and not miss.greedy
    # log p(7) = 5 - log(e^5 + 10), log p(other) = -log(e^5 + 10)
    z = math.log(math.exp(5) + 10)
    assert hit.logprob == pytest.approx(2 * (5 - z), abs=1e-5)
    assert miss.logprob == pytest.approx((5 - z) + (-z), abs=1e-5)


def test_hellaswag_parser_on_a_hand_made_file() -> None:
    items = parse_hellaswag(HAND_MADE, source="hand.txt")
    assert [(i.id, i.label) for i in items] == [("0", 2), ("1", 0)]
    assert items[0].context == "Baking cookies: A woman mixes flour and sugar in a bowl. she"
    assert items[0].choices == (
        " throws the bowl out of the window.", " paints the bowl blue.",
        " adds eggs and stirs the dough.", " starts to sing loudly.",
    )
    assert items[1].choices[3] == " reads a book on the moon."


def test_hellaswag_registered_file_reads_whole(tiny_model) -> None:
    path = DATA_DIR / "hellaswag_val.txt.bz2"
    if not path.is_file():
        pytest.skip("hellaswag_val.txt.bz2 not in the shared data")
    task = load_task("hellaswag")
    assert len(task.items) == 10042
    assert task.items[0].context == "Roof shingle removal: A man is sitting on a roof. he"
    assert task.items[0].label == 3 and task.items[0].choices[3] == " starts pulling up roofing on a roof."
    assert {i.label for i in task.items} == {0, 1, 2, 3}
    result, _ = evaluate_task(tiny_model, task, limit=6, batch_size=3)
    assert result["items"] == 6 and set(result["metrics"]) >= {"acc", "acc_norm", "acc_norm_byte"}


@pytest.mark.parametrize(
    "text,where",
    [
        (HAND_MADE.replace("\n2\n", "\n7\n", 1), "task 1 (line 2) has label '7'"),
        (HAND_MADE.replace("\n0\n", "\n\n", 1), "task 2 (line 8) has label ''"),
        ("\n".join(HAND_MADE.split("\n")[:10]) + "\n", "task 2 is incomplete"),
    ],
)
def test_hellaswag_bad_files_name_the_task(text: str, where: str) -> None:
    with pytest.raises(DataError, match=r"^hand\.txt: " + where.replace("(", r"\(").replace(")", r"\)")):
        parse_hellaswag(text, source="hand.txt")


@pytest.mark.parametrize(
    "obj,message",
    [
        ({"context": "a", "choices": [" b", " c"]}, "task 2 (line 2) has no 'label'"),
        ({"context": "a", "choices": [" b"], "label": 0}, "task 2 (line 2) has 1 choice(s); a multiple-choice task needs at least 2"),
        ({"context": "a", "choices": [" b", " c"], "label": 2}, "task 2 (line 2) has label 2; expected an integer index 0..1"),
        ({"context": "a", "choices": [" b", " c"], "label": True}, "task 2 (line 2) has label True"),
        ({"choices": [" b", " c"], "label": 0}, "task 2 (line 2) has no string 'context'"),
    ],
)
def test_mc_bad_files_name_file_and_task(tmp_path, obj, message) -> None:
    path = tmp_path / "bad.jsonl"
    good = {"context": "x", "choices": [" y", " z"], "label": 1}
    path.write_text(json.dumps(good) + "\n" + json.dumps(obj) + "\n")
    with pytest.raises(DataError) as e:
        read_mc_jsonl(path)
    assert str(e.value).startswith(f"{path}: {message}")


def test_cloze_bad_file_and_split() -> None:
    assert split_last_word("It was a dark and stormy night.\n") == ("It was a dark and stormy", " night.")


def test_cloze_one_word_is_refused(tmp_path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "two words"}\n{"text": "one"}\n')
    with pytest.raises(DataError, match=r"task 2 \(line 2\) needs at least two words"):
        read_cloze_jsonl(path)


def test_cli_task_json_and_samples(tiny_model_dir, tmp_path) -> None:
    quiz = _mc_file(tmp_path, n=5)
    samples = tmp_path / "samples.jsonl"
    r = run_cli("eval", "--model", str(tiny_model_dir), "--task", f"mc:{quiz}", "--json",
                "--log-samples", str(samples), "--norm", "byte", "--batch-size", "2")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)["results"]["quiz"]
    assert out["items"] == 5 and out["norm"] == "byte"
    assert out["metrics"]["acc_norm"] == out["metrics"]["acc_norm_byte"]
    lines = [json.loads(x) for x in samples.read_text().splitlines()]
    assert [x["id"] for x in lines] == [f"q{i}" for i in range(5)]
    acc = sum(x["pred"] == x["label"] for x in lines) / 5
    assert out["metrics"]["acc"] == pytest.approx(acc)


def test_cli_bad_task_file_is_one_line(tiny_model_dir, tmp_path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"context": "a", "choices": [" b", " c"], "label": 5}\n')
    r = run_cli("eval", "--model", str(tiny_model_dir), "--task", f"mc:{path}")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"error: {path}: task 1 (line 1) has label 5; expected an integer index 0..1"
    ]
    r = run_cli("eval", "--model", str(tiny_model_dir), "--task", "nonsense")
    assert r.returncode == 2 and "unknown task 'nonsense'" in r.stderr and "Traceback" not in r.stderr


def test_docstring_examples() -> None:
    import doctest

    import gptforge.evaluate.task_files as module

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_prepare_refuses_the_task_dataset() -> None:
    from gptforge.data.sources import resolve_inputs

    with pytest.raises(DataError, match="'hellaswag' is an evaluation task, not a training corpus"):
        resolve_inputs(["hellaswag"])
