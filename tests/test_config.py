"""The config machinery: coercion, unknown keys with suggestions, composite sections."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from gptforge.config import apply, cfg_field, parse_dotted_flags, to_dict
from gptforge.errors import ConfigError
from gptforge.model.config import PRESETS, GPTConfig


@dataclass
class Opt:
    lr: float = cfg_field(1e-3, "learning rate")
    steps: int = cfg_field(10, "steps")
    fused: bool = cfg_field(False, "fused")
    name: str | None = cfg_field(None, "name")


@dataclass
class Run:
    opt: Opt = field(default_factory=Opt)
    model: GPTConfig = field(default_factory=GPTConfig)


def test_coercion_from_strings() -> None:
    cfg = apply(Opt(), {"lr": "3e-4", "steps": "1e3", "fused": "true", "name": "none"})
    assert (cfg.lr, cfg.steps, cfg.fused, cfg.name) == (3e-4, 1000, True, None)


def test_unknown_key_suggests() -> None:
    with pytest.raises(ConfigError, match="did you mean 'lr'"):
        apply(Opt(), {"lrr": 1})


def test_bad_value_names_field() -> None:
    with pytest.raises(ConfigError, match="steps"):
        apply(Opt(), {"steps": "many"})


def test_composite_flat_and_nested() -> None:
    cfg = apply(Run(), {"opt.lr": "0.1", "model": {"n_layer": 2, "n_embd": 64, "n_head": 4}})
    assert cfg.opt.lr == 0.1 and cfg.model.n_layer == 2
    assert to_dict(cfg)["model"]["n_embd"] == 64


def test_composite_collects_all_problems() -> None:
    with pytest.raises(ConfigError) as e:
        apply(Run(), {"opt.lrr": 1, "model.n_layr": 2})
    assert "opt.lr" in str(e.value) and "model.n_layer" in str(e.value)


def test_cross_field_check() -> None:
    with pytest.raises(ConfigError, match="not divisible"):
        apply(GPTConfig(), {"n_embd": 100, "n_head": 3})


def test_parse_dotted_flags() -> None:
    assert parse_dotted_flags(["--train.lr", "1e-3", "--model.n_layer=2"]) == {"train.lr": "1e-3", "model.n_layer": "2"}
    with pytest.raises(ConfigError):
        parse_dotted_flags(["--train.lr"])


def test_every_preset_loads() -> None:
    for name in PRESETS:
        cfg = GPTConfig.from_preset(name)
        assert cfg.head_dim > 0


def test_unknown_preset_suggests() -> None:
    with pytest.raises(ConfigError, match="gpt2"):
        GPTConfig.from_preset("gpt-2")


def test_empty_sections_known_pass_and_unknown_are_reported() -> None:
    # A YAML `log: {}` is fine; a misspelt empty section used to vanish in flattening.
    from gptforge.train.config import RunConfig

    assert apply(RunConfig(), {"log": {}}, source="run.yaml") == RunConfig()
    with pytest.raises(ConfigError, match="modle"):
        apply(RunConfig(), {"modle": {}}, source="run.yaml")
    with pytest.raises(ConfigError, match="train.lr is an empty mapping"):
        apply(RunConfig(), {"train": {"lr": {}}}, source="run.yaml")
