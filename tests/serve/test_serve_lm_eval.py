"""lm-evaluation-harness scores a gptforge model through the server, as it does through HF.

A multiple-choice task (a task YAML over a local jsonl file, no hub download) runs twice
with lm-eval's own command line: ``--model local-completions`` against ``gptforge serve``
(``tokenizer_backend=remote``: lm-eval tokenizes through ``/tokenize``), and ``--model hf``
on the same model exported with ``gptforge export --format hf``. Accuracies and every
choice's log-likelihood must agree. Slow tier: two lm-eval runs take minutes on a CPU.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

WORDS = ["apple", "river", "stone", "cloud", "music", "green", "winter", "bread", "horse", "light"]


def _task(folder: Path) -> str:
    rng = random.Random(0)
    items = folder / "items.jsonl"
    with items.open("w") as f:
        for _ in range(12):
            question = " ".join(rng.choice(WORDS) for _ in range(5))
            choices = [" " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3))) for _ in range(4)]
            f.write(json.dumps({"question": question, "choices": choices, "answer": rng.randrange(4)}) + "\n")
    (folder / "gf_mc.yaml").write_text(
        "task: gf_mc\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {items}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: answer\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
    )
    return "gf_mc"


def _lm_eval(args: list[str], out: Path, tasks: Path) -> tuple[dict, list[dict]]:
    exe = shutil.which("lm_eval", path=str(Path(sys.executable).parent)) or shutil.which("lm_eval")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [exe, *args, "--include_path", str(tasks), "--tasks", "gf_mc", "--output_path", str(out), "--log_samples"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]["gf_mc"]
    samples = [json.loads(line) for line in next(out.rglob("samples_gf_mc_*.jsonl")).read_text().splitlines()]
    return results, sorted(samples, key=lambda s: s["doc_id"])


def test_lm_eval_through_the_server_equals_hf_backend(tiny_model_dir: Path, tmp_path: Path, cli) -> None:
    pytest.importorskip("lm_eval")
    pytest.importorskip("transformers")
    from tests.serve.server_utils import start_server

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    _task(tasks)
    hf = tmp_path / "hf"
    out = cli("export", "--model", str(tiny_model_dir), "--format", "hf", "--out", str(hf))
    assert out.returncode == 0, out.stderr
    ref, ref_samples = _lm_eval(["--model", "hf", "--model_args", f"pretrained={hf},dtype=float32",
                                 "--device", "cpu"], tmp_path / "out_hf", tasks)
    with start_server(tiny_model_dir) as s:
        model_args = (f"base_url={s.url}/v1/completions,tokenizer_backend=remote,model=tiny,"
                      "num_concurrent=1,max_retries=1,max_length=128")
        got, samples = _lm_eval(["--model", "local-completions", "--model_args", model_args],
                                tmp_path / "out_api", tasks)
    assert got["acc,none"] == ref["acc,none"] and got["acc_norm,none"] == ref["acc_norm,none"]
    for a, b in zip(samples, ref_samples, strict=True):
        lls = [float(r[0]) for r in a["filtered_resps"]]
        ref_lls = [float(r[0]) for r in b["filtered_resps"]]
        assert lls == pytest.approx(ref_lls, abs=1e-3), a["doc_id"]
