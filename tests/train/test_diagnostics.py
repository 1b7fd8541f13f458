"""Diagnostics: the recorded statistics equal a recomputation from the checkpoints around the step.

Reference: with a checkpoint after step 2 and after step 3, step 3's record must
hold the activations and gradients of the step-2 weights on the step-3 batch
(recomputed here with plain forward hooks and one backward), and the
update/param ratios ||w3 - w2|| / ||w2||. The histogram and dead-unit helpers
are checked against numpy and hand-built tensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gptforge.data.loader import BatchLoader
from gptforge.data.shards import open_dataset
from gptforge.io import load_safetensors
from gptforge.model.loading import load_model
from gptforge.train.config import build_run_config
from gptforge.train.diagnostics import (
    NEAR_ZERO,
    plot_diagnostics,
    read_diagnostics,
    tensor_stats,
    unit_stats,
)
from gptforge.train.loop import train

TINY = {
    "model.n_layer": "2", "model.n_head": "2", "model.n_embd": "32", "model.block_size": "16",
    "model.dropout": "0", "model.activation": "relu", "data.mode": "sequential", "train.batch_size": "4",
    "train.warmup_steps": "1", "train.max_steps": "4", "train.eval_iters": "1", "train.eval_interval": "0",
    "train.ckpt_interval": "1", "train.keep_last": "10", "log.interval": "1", "log.progress": "false",
    "log.diagnostics_steps": "1,3",
}


def test_tensor_stats_match_numpy() -> None:
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 3 + 1
    st = tensor_stats(x, bins=20)
    a = x.numpy().astype(np.float64)
    assert st["mean"] == pytest.approx(a.mean(), rel=1e-5)
    assert st["std"] == pytest.approx(a.std(ddof=1), rel=1e-5)
    counts, _ = np.histogram(a, bins=20, range=(a.min(), a.max()))
    assert st["hist"]["counts"] == counts.tolist()
    assert sum(st["hist"]["counts"]) == 1000
    assert (st["min"], st["max"]) == (pytest.approx(a.min()), pytest.approx(a.max()))


def test_unit_stats_hand_built() -> None:
    # (B=2, T=2, H=4): unit 0 is zero everywhere (dead), unit 1 is zero on 3 of 4 tokens, units 2-3 alive.
    y = torch.tensor([[[0.0, 0.0, 1.0, 2.0], [0.0, 0.0, 3.0, 0.001]],
                      [[0.0, 5.0, 1.0, 2.0], [0.0, 0.0, 0.5, 4.0]]])
    st = unit_stats(y)
    assert st["dead_pct"] == pytest.approx(25.0)  # 1 unit of 4
    near = int((y.abs() < NEAR_ZERO).sum())  # 7 zeros + the 0.001
    assert near == 8
    assert st["near_zero_pct"] == pytest.approx(100.0 * near / y.numel())


@pytest.fixture(scope="module")
def diag_run(char_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("diag") / "run"
    cfg = build_run_config(None, None, {**TINY, "data.dir": str(char_data)})
    assert train(cfg, run).step == 4
    return run


def test_records_at_the_chosen_steps(diag_run: Path) -> None:
    records = read_diagnostics(diag_run)
    assert [r["step"] for r in records] == [1, 3]
    rec = records[0]
    assert sorted(rec["activations"]) == ["block.0", "block.1"]
    assert sorted(rec["mlp"]) == ["block.0.mlp.act", "block.1.mlp.act"]
    # the tied LM head is one parameter: it appears once, under the embedding's name
    assert "transformer.wte.weight" in rec["gradients"] and "lm_head.weight" not in rec["gradients"]
    metrics = [json.loads(x) for x in (diag_run / "metrics.jsonl").read_text().splitlines()]
    grad_norm = {r["step"]: r["grad_norm"] for r in metrics if "grad_norm" in r}
    for r in records:  # the per-parameter norms add up to the clipped-over total norm of the step
        total = sum(g["norm"] ** 2 for g in r["gradients"].values()) ** 0.5
        assert total == pytest.approx(grad_norm[r["step"]], rel=1e-4)


def test_step_three_equals_recomputation_from_checkpoints(diag_run: Path, char_data: Path) -> None:
    rec = read_diagnostics(diag_run)[1]
    assert rec["step"] == 3
    ck2, ck3 = diag_run / "checkpoints" / "step_0000002", diag_run / "checkpoints" / "step_0000003"
    model = load_model(ck2)
    model.train()
    state = json.loads((ck2 / "state.json").read_text())
    loader = BatchLoader(open_dataset(char_data), "train", 4, 16, "sequential", 1337)
    loader.load_state_dict(state["data"])
    x, y = loader.next_batch()

    seen: dict[str, torch.Tensor] = {}
    for i, block in enumerate(model.transformer.h):
        block.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(f"block.{i}", out.detach()))
        block.mlp.act.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(f"block.{i}.mlp.act", out.detach()))
    _, loss = model(x, y)
    loss.backward()

    for name in ("block.0", "block.1"):
        assert rec["activations"][name]["mean"] == pytest.approx(float(seen[name].mean()), abs=1e-6)
        assert rec["activations"][name]["std"] == pytest.approx(float(seen[name].std()), rel=1e-5)
    for name in ("block.0.mlp.act", "block.1.mlp.act"):
        act = seen[name].reshape(-1, seen[name].shape[-1])
        assert rec["mlp"][name]["std"] == pytest.approx(float(act.std()), rel=1e-5)
        assert rec["mlp"][name]["dead_pct"] == pytest.approx(100 * float((act == 0).all(0).float().mean()))
        assert rec["mlp"][name]["near_zero_pct"] == pytest.approx(100 * float((act.abs() < NEAR_ZERO).float().mean()))
    for name, p in model.named_parameters():
        if name == "lm_head.weight":
            continue
        assert rec["gradients"][name]["norm"] == pytest.approx(float(p.grad.norm()), rel=1e-4), name

    w2, w3 = load_safetensors(ck2 / "model.safetensors"), load_safetensors(ck3 / "model.safetensors")
    for name, ratio in rec["update_ratio"].items():
        expected = float((w3[name] - w2[name]).norm() / w2[name].norm())
        assert ratio == pytest.approx(expected, rel=1e-4), name


def test_plot_writes_the_diagnostics_images(diag_run: Path, cli) -> None:
    pytest.importorskip("matplotlib")
    p = cli("plot", str(diag_run))
    assert p.returncode == 0, p.stderr
    for kind in ("activations", "gradients", "updates"):
        img = diag_run / f"diagnostics_{kind}.png"
        assert img.is_file() and img.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert str(img) in p.stdout
    assert plot_diagnostics(diag_run / "nonexistent") == []


def test_diagnostics_config_is_validated(char_data: Path) -> None:
    from gptforge.errors import ConfigError

    with pytest.raises(ConfigError, match="diagnostics_interval"):
        build_run_config(None, None, {"log.diagnostics_interval": "-1"})
