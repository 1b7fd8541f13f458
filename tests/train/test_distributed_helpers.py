"""The distributed helpers without a process group: mode resolution, per-rank resume state, the
optimizer-state layouts FSDP converts between, and the no_sync choice per micro-step."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch

from gptforge.errors import ConfigError
from gptforge.model.config import GPTConfig
from gptforge.model.gpt import GPT
from gptforge.train import distributed as dist
from gptforge.train.config import TrainConfig
from gptforge.train.optim import build_optimizer


@pytest.mark.parametrize(("mode", "processes", "expected"), [
    ("auto", 1, "none"), ("auto", 2, "ddp"), ("ddp", 2, "ddp"), ("fsdp", 4, "fsdp"), ("none", 1, "none"),
    ("ddp", 1, "none"), ("fsdp", 1, "none"),
])
def test_resolve_mode(mode: str, processes: int, expected: str) -> None:
    assert dist.resolve_mode(mode, processes) == expected


def test_resolve_mode_refuses_separate_models_and_unknown_modes() -> None:
    with pytest.raises(ConfigError, match="separate models"):
        dist.resolve_mode("none", 2)
    with pytest.raises(ConfigError, match="auto, ddp, fsdp, none"):
        dist.resolve_mode("deepspeed", 2)


def test_state_for_rank_picks_its_own_entry() -> None:
    state = {"data": {"rank": 0}, "rng": "r0", "ranks": [{"data": {"rank": 0}, "rng": "r0"},
                                                         {"data": {"rank": 1}, "rng": "r1"}]}
    assert dist.state_for_rank(state, 1, 2) == {"data": {"rank": 1}, "rng": "r1"}
    assert dist.state_for_rank(state, 0, 2) == {"data": {"rank": 0}, "rng": "r0"}
    with pytest.raises(ConfigError, match="saved by 2 process.*runs 4.*--nproc_per_node 2"):
        dist.state_for_rank(state, 0, 4)
    single = {"data": {"rank": 0}, "rng": "r0"}  # a single-process checkpoint
    assert dist.state_for_rank(single, 0, 1) == single
    with pytest.raises(ConfigError, match="without torchrun"):
        dist.state_for_rank(single, 1, 2)


def test_optimizer_state_by_name_round_trips_to_torchs_layout() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=32, block_size=8, n_layer=1, n_head=2, n_embd=16))
    opt = build_optimizer(model, TrainConfig(), torch.device("cpu"))
    x = torch.randint(0, 32, (2, 8))
    model(x, x)[1].backward()
    opt.step()
    named = dist.optimizer_state_by_name(model, opt)
    assert "transformer.wte.weight" in named["state"] and "lm_head.weight" not in named["state"]  # tied: once
    back = dist.optimizer_state_by_index(named)
    ref = opt.state_dict()
    assert back["param_groups"] == ref["param_groups"]
    assert back["state"].keys() == ref["state"].keys()
    for i, s in ref["state"].items():
        for k, v in s.items():
            assert torch.equal(back["state"][i][k], v)


def test_micro_step_context_syncs_only_on_the_last_micro_batch() -> None:
    class FakeDDP:
        def __init__(self) -> None:
            self.entered = 0

        @contextlib.contextmanager
        def no_sync(self):  # noqa: ANN201
            self.entered += 1
            yield

    m = FakeDDP()
    for micro in range(4):
        with dist.micro_step_context(m, micro, 4):  # type: ignore[arg-type]
            pass
    assert m.entered == 3

    class FakeFSDP:
        def __init__(self) -> None:
            self.calls: list[bool] = []

        def set_requires_gradient_sync(self, value: bool) -> None:
            self.calls.append(value)

    f = FakeFSDP()
    for micro in range(3):
        dist.micro_step_context(f, micro, 3)  # type: ignore[arg-type]
    assert f.calls == [False, False, True]


def test_collectives_are_identities_without_a_process_group() -> None:
    t = torch.tensor(2.5)
    assert dist.mean_across_ranks(t) is t
    assert dist.mean_dict_across_ranks({"val": 1.0}, torch.device("cpu")) == {"val": 1.0}
    assert dist.gather_to_main({"a": 1}) == [{"a": 1}]
    assert dist.sync_stop(object(), True) is True


def test_bad_distributed_mode_is_one_line(cli, tmp_path: Path, char_data: Path) -> None:
    p = cli("train", "--data", str(char_data), "--out", str(tmp_path / "run"), "--train.distributed", "ddpp")
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "ddp" in lines[0], p.stderr
    assert not (tmp_path / "run").exists()
