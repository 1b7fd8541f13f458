"""DDP through torchrun on the CPU (gloo, 2 processes) against one process with the same global batch.

Reference: one process with ``batch_size 2B`` reads, in sequential mode, the
same rows of every global batch that two ranks with ``batch_size B`` read
between them (rank r takes rows r*B..(r+1)*B-1), and DDP averages the two
ranks' gradients, which equals the gradient of the mean over the 2B rows. So
the per-step losses and the final weights must agree. Not bitwise: DDP sums the
ranks' gradients in its all-reduce (and the logged loss is a mean over ranks),
a different floating-point summation order than one process summing over 2B
rows, which moves the last bits (fp32 eps ~1e-7 relative); the tolerance below
is a few hundred eps, far below what a wrong batch, a missed gradient sync or a
double-counted micro-batch would give (those change the loss in the 2nd-3rd digit).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gptforge.io import load_safetensors, read_json
from gptforge.train.config import build_run_config
from gptforge.train.loop import train

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")

SHAPE = {
    "model.n_layer": "2", "model.n_head": "2", "model.n_embd": "32", "model.block_size": "16",
    "model.dropout": "0", "data.mode": "sequential", "train.warmup_steps": "2", "train.lr_decay_steps": "6",
    "train.eval_iters": "2", "train.eval_interval": "3", "train.ckpt_interval": "3", "train.keep_last": "5",
    "log.interval": "1", "log.progress": "false",
}
STEPS = 6
GRAD_ACCUM = 2
B = 2  # per rank; the single-process reference uses 2 * B


def torchrun(args: list[str], nproc: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node N -m gptforge ARGS`` (same Python, its own rendezvous port)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "gptforge", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def flags(values: dict[str, str]) -> list[str]:
    return [a for k, v in values.items() for a in (f"--{k}", v)]


def train_losses(run: Path) -> dict[int, float]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in lines if "loss" in r}


def grad_norms(run: Path) -> dict[int, float]:
    """The logged gradient norm (before clipping) of each step."""
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["grad_norm"] for r in lines if "grad_norm" in r}


@pytest.fixture(scope="module")
def single_run(char_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("single") / "run"
    cfg = build_run_config(None, None, {**SHAPE, "data.dir": str(char_data), "train.batch_size": str(2 * B),
                                        "train.grad_accum": str(GRAD_ACCUM), "train.max_steps": str(STEPS)})
    result = train(cfg, run)
    assert result.step == STEPS
    return run


@pytest.fixture(scope="module")
def ddp_run(char_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("ddp") / "run"
    p = torchrun(["train", "--data", str(char_data), "--out", str(run), "--json",
                  *flags({**SHAPE, "train.batch_size": str(B), "train.grad_accum": str(GRAD_ACCUM),
                          "train.max_steps": str(STEPS)})])
    assert p.returncode == 0, p.stderr[-3000:]
    summaries = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1, p.stdout  # only rank 0 reports
    assert summaries[0]["step"] == STEPS
    return run


def test_ddp_losses_and_weights_equal_single_process(single_run: Path, ddp_run: Path) -> None:
    a, b = train_losses(single_run), train_losses(ddp_run)
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=2e-6, abs=0), step
    # the run learns (so the equality above is not two constants)
    assert a[STEPS] < a[1] - 0.05
    # the gradient itself, before clipping: weights after AdamW with clipping barely see a wrong
    # loss scale (a doubled scale moved them 7e-8), the logged grad_norm doubles
    ga, gb = grad_norms(single_run), grad_norms(ddp_run)
    assert sorted(ga) == sorted(gb) == list(range(1, STEPS + 1))
    for step in ga:
        assert gb[step] == pytest.approx(ga[step], rel=1e-5), step
    wa = load_safetensors(single_run / "final" / "model.safetensors")
    wb = load_safetensors(ddp_run / "final" / "model.safetensors")
    assert wa.keys() == wb.keys()  # no "module." prefixes
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-5, msg=k)  # seen: 1e-6
    # and the tokens count the global batch
    meta = [json.loads(x) for x in (ddp_run / "metrics.jsonl").read_text().splitlines()]
    assert meta[-1]["tokens"] == STEPS * GRAD_ACCUM * 2 * B * 16


def test_ddp_checkpoint_format_and_per_rank_state(single_run: Path, ddp_run: Path) -> None:
    ck_single = single_run / "checkpoints" / "step_0000006"
    ck_ddp = ddp_run / "checkpoints" / "step_0000006"
    assert sorted(p.name for p in ck_ddp.iterdir()) == sorted(p.name for p in ck_single.iterdir())
    state = read_json(ck_ddp / "state.json")
    ranks = state["ranks"]
    assert [r["data"]["rank"] for r in ranks] == [0, 1]
    assert all(r["data"]["world_size"] == 2 for r in ranks)
    # each rank read half of every global batch: the same number of batches on both
    assert ranks[0]["data"]["batch_in_epoch"] == ranks[1]["data"]["batch_in_epoch"]
    assert ranks[0]["data"] == state["data"]  # the top level is rank 0's
    assert (ddp_run / "latest").read_text().strip() == "step_0000006"
    assert not (ddp_run / "checkpoints" / "step_0000006" / "ranks").exists()


@pytest.mark.slow
def test_fsdp_resumed_run_equals_single_process(single_run: Path, char_data: Path, tmp_path: Path) -> None:
    """FSDP2 (``fully_shard``) on the CPU with gloo: 3 steps, a resume to 6, against one process.

    Also checks that FSDP checkpoints are in the plain format (full tensors,
    index-keyed optimizer state): the resume reads them back through the same
    code as a single-process checkpoint.
    """
    run = tmp_path / "run"
    common = {**SHAPE, "train.batch_size": str(B), "train.grad_accum": str(GRAD_ACCUM),
              "train.distributed": "fsdp"}
    p = torchrun(["train", "--data", str(char_data), "--out", str(run), *flags({**common, "train.max_steps": "3"})])
    assert p.returncode == 0, p.stderr[-3000:]
    ck = torch.load(run / "checkpoints" / "step_0000003" / "optimizer.pt", weights_only=True)
    single_ck = torch.load(single_run / "checkpoints" / "step_0000003" / "optimizer.pt", weights_only=True)
    assert [g["params"] for g in ck["param_groups"]] == [g["params"] for g in single_ck["param_groups"]]
    for i, s in single_ck["state"].items():
        torch.testing.assert_close(ck["state"][i]["exp_avg"], s["exp_avg"], rtol=1e-4, atol=1e-7)
    p = torchrun(["train", "--resume", str(run), "--train.max_steps", str(STEPS)])
    assert p.returncode == 0, p.stderr[-3000:]
    a, b = train_losses(single_run), train_losses(run)
    assert sorted(b) == list(range(1, STEPS + 1))
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=2e-6, abs=0), step
    wa = load_safetensors(single_run / "final" / "model.safetensors")
    wb = load_safetensors(run / "final" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-5, msg=k)


@pytest.mark.slow
def test_ddp_resume_restores_every_ranks_stream(char_data: Path, tmp_path: Path) -> None:
    """Random batches and dropout: each rank draws from its own data and torch RNG streams, so a
    resume must restore every rank's own state. 6 steps straight == 3 + resume + 3, exactly."""
    common = {**SHAPE, "data.mode": "random", "model.dropout": "0.1", "train.batch_size": str(B),
              "train.grad_accum": str(GRAD_ACCUM)}
    straight, split = tmp_path / "straight", tmp_path / "split"
    p = torchrun(["train", "--data", str(char_data), "--out", str(straight),
                  *flags({**common, "train.max_steps": str(STEPS)})])
    assert p.returncode == 0, p.stderr[-3000:]
    p = torchrun(["train", "--data", str(char_data), "--out", str(split), *flags({**common, "train.max_steps": "3"})])
    assert p.returncode == 0, p.stderr[-3000:]
    ranks = read_json(split / "checkpoints" / "step_0000003" / "state.json")["ranks"]
    assert ranks[0]["data"]["rng"] != ranks[1]["data"]["rng"] and ranks[0]["rng"] != ranks[1]["rng"]
    p = torchrun(["train", "--resume", str(split), "--train.max_steps", str(STEPS)])
    assert p.returncode == 0, p.stderr[-3000:]
    a, b = train_losses(straight), train_losses(split)
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    assert a == b  # same processes, same reduction order: bitwise
    wa = load_safetensors(straight / "final" / "model.safetensors")
    wb = load_safetensors(split / "final" / "model.safetensors")
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_of_one_process_equal_single_process(single_run: Path, char_data: Path, tmp_path: Path) -> None:
    """Multi-node as a user runs it: two torchrun launchers ("nodes" 0 and 1, one process each)
    meeting at one c10d rendezvous on 127.0.0.1, gloo. Same global batch as the reference."""
    run = tmp_path / "run"
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    args = ["train", "--data", str(char_data), "--out", str(run), "--json",
            *flags({**SHAPE, "train.batch_size": str(B), "train.grad_accum": str(GRAD_ACCUM),
                    "train.max_steps": str(STEPS)})]  # fmt: skip
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={r}", "--nproc_per_node=1",
             "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=gptforge-test",
             "-m", "gptforge", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        for r in (0, 1)
    ]
    outs = [p.communicate(timeout=600) for p in nodes]
    for p, (_, err) in zip(nodes, outs):
        assert p.returncode == 0, err[-3000:]
    assert sum(1 for out, _ in outs for line in out.splitlines() if line.startswith("{")) == 1  # global rank 0
    a, b = train_losses(single_run), train_losses(run)
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=2e-6, abs=0), step
    wa = load_safetensors(single_run / "final" / "model.safetensors")
    wb = load_safetensors(run / "final" / "model.safetensors")
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-5, msg=k)


@pytest.mark.slow
def test_ddp_with_muon_equals_single_process(char_data: Path, tmp_path: Path) -> None:
    """train.optimizer muon under DDP: the same losses as one process with the same global batch
    (Muon orthogonalises the all-reduced gradient, identical on every rank)."""
    muon = {**SHAPE, "train.optimizer": "muon", "train.muon_lr": "0.03", "model.positions": "rope",
            "model.normalization": "rmsnorm", "train.grad_accum": str(GRAD_ACCUM), "train.max_steps": str(STEPS)}
    single = tmp_path / "single"
    train(build_run_config(None, None, {**muon, "data.dir": str(char_data), "train.batch_size": str(2 * B)}), single)
    ddp = tmp_path / "ddp"
    p = torchrun(["train", "--data", str(char_data), "--out", str(ddp), *flags({**muon, "train.batch_size": str(B)})])
    assert p.returncode == 0, p.stderr[-3000:]
    a, b = train_losses(single), train_losses(ddp)
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=2e-5, abs=0), step
    assert a[STEPS] < a[1] - 0.05
