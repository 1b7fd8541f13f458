"""The run config: ``RunConfig`` = model + data + train + log sections.

Every value a run uses lives here, with a default and a help string; YAML files
and ``--section.key value`` flags map 1:1 onto the fields (through
:func:`gptforge.config.apply`). The order of precedence, lowest first:

    defaults  <  --preset NAME (model shape + its training recipe)  <  --config FILE.yaml  <  flags

Key names follow nanoGPT where it has one (``train.lr``, ``train.max_steps``...).
Imports no torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gptforge.config import apply, cfg_field, nonfinite_fields, to_dict
from gptforge.errors import ConfigError, DataError
from gptforge.model.config import PRESETS, GPTConfig


@dataclass
class DataConfig:
    """Where the token shards are and how batches are drawn from them."""

    dir: str | None = cfg_field(None, "dataset dir written by `gptforge prepare` (--data DIR)")
    mode: Literal["random", "sequential"] = cfg_field(
        "random", "how batches are drawn: random windows (nanoGPT) or sequential"
    )


@dataclass
class TrainConfig:
    """Optimizer, schedule, batch, precision and checkpointing of a pretraining run."""

    batch_size: int = cfg_field(12, "sequences per micro-batch (per process)")
    grad_accum: int = cfg_field(1, "micro-batches accumulated per optimizer step")
    tokens_per_batch: int | None = cfg_field(
        None, "target tokens per optimizer step; sets grad_accum = this / (batch_size * block_size * processes)"
    )
    max_steps: int = cfg_field(2000, "optimizer steps to train for (the run's length)")
    time_budget_s: float | None = cfg_field(None, "stop (and save) after this many seconds of training")
    lr: float = cfg_field(1e-3, "peak learning rate")
    min_lr: float = cfg_field(1e-4, "learning rate at the end of the decay (cosine/linear)")
    schedule: Literal["constant", "cosine", "linear"] = cfg_field(
        "cosine", "learning-rate schedule after the warmup"
    )
    warmup_steps: int = cfg_field(100, "steps of linear warmup from 0 to lr")
    lr_decay_steps: int | None = cfg_field(None, "step at which the decay reaches min_lr; None = max_steps")
    optimizer: Literal["adamw", "muon"] = cfg_field(
        "adamw", "adamw, or muon: Muon for the matrices inside the blocks, AdamW (at lr) for the rest"
    )
    muon_lr: float = cfg_field(0.02, "optimizer muon: peak learning rate of the Muon matrices (scheduled like lr)")
    muon_momentum: float = cfg_field(0.95, "optimizer muon: Muon's (Nesterov) momentum")
    weight_decay: float = cfg_field(0.1, "weight decay (on 2-D weights only; Muon's matrices too)")
    beta1: float = cfg_field(0.9, "AdamW beta1")
    beta2: float = cfg_field(0.99, "AdamW beta2")
    grad_clip: float = cfg_field(1.0, "clip the gradient norm to this; 0 = no clipping")
    eval_interval: int = cfg_field(250, "evaluate every N steps (and at the end); 0 = only at the end")
    eval_iters: int = cfg_field(20, "batches averaged per split at each evaluation")
    ckpt_interval: int = cfg_field(500, "checkpoint every N steps (and at the end); 0 = only at the end")
    keep_last: int = cfg_field(2, "checkpoints kept (plus the best by val loss)")
    seed: int = cfg_field(1337, "random seed: the same seed and config give the same run")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = cfg_field(
        "auto", "auto = bf16 on GPUs that have it, fp16 (+grad scaler) on older GPUs, fp32 on CPU/MPS"
    )
    compile: bool = cfg_field(False, "torch.compile the model (turned off with a warning where unsupported)")
    activation_checkpointing: bool = cfg_field(
        False, "recompute each block's activations in backward instead of keeping them (less memory, ~1/3 more compute)"
    )
    tf32: bool = cfg_field(True, "CUDA: TF32 matmuls for fp32 work unless train.precision is fp32 (strict fp32 then)")
    device: str = cfg_field("auto", "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    on_nan: Literal["stop", "skip"] = cfg_field(
        "stop", "on a NaN/inf loss: stop (keeping the last good checkpoint) or skip that step"
    )
    fused: bool | None = cfg_field(None, "fused AdamW; None = on CUDA, and on the CPU for optimizer adamw, where torch has it")
    distributed: Literal["auto", "ddp", "fsdp", "none"] = cfg_field(
        "auto", "under torchrun: ddp (one model copy per process), fsdp (sharded); auto = ddp with >1 process"
    )

    def __post_init__(self) -> None:
        problems = nonfinite_fields(self, "train")  # NaN passes every `x < 0` check below
        for name in ("batch_size", "grad_accum", "max_steps", "eval_iters", "keep_last"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                problems.append(f"train.{name} must be a positive integer, got {value!r}")
        for name in ("warmup_steps", "eval_interval", "ckpt_interval"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                problems.append(f"train.{name} must be an integer >= 0, got {value!r}")
        if self.tokens_per_batch is not None and self.tokens_per_batch <= 0:
            problems.append(f"train.tokens_per_batch must be positive or None, got {self.tokens_per_batch!r}")
        if self.lr_decay_steps is not None and self.lr_decay_steps <= 0:
            problems.append(f"train.lr_decay_steps must be positive or None, got {self.lr_decay_steps!r}")
        if self.lr < 0 or self.min_lr < 0:
            problems.append(f"train.lr ({self.lr}) and train.min_lr ({self.min_lr}) must be >= 0")
        if self.min_lr > self.lr:
            problems.append(f"train.min_lr ({self.min_lr}) is larger than train.lr ({self.lr}); lower it")
        if not (0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0):
            problems.append(f"train.beta1/beta2 must be in [0, 1), got {self.beta1}, {self.beta2}")
        if self.optimizer not in ("adamw", "muon"):
            problems.append(f"train.optimizer must be adamw or muon, got {self.optimizer!r}")
        if self.muon_lr < 0 or not 0.0 <= self.muon_momentum < 1.0:
            problems.append(f"train.muon_lr must be >= 0 and train.muon_momentum in [0, 1), got "
                            f"{self.muon_lr}, {self.muon_momentum}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            problems.append("train.weight_decay and train.grad_clip must be >= 0")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            problems.append(f"train.time_budget_s must be positive or None, got {self.time_budget_s!r}")
        if problems:
            raise ConfigError("\n".join(problems))

    def schedule_warnings(self) -> list[str]:
        """Settings that are allowed but almost certainly not meant, with the numbers."""
        out = []
        if self.schedule != "constant" and self.warmup_steps > 0 and self.warmup_steps >= self.decay_steps:
            out.append(f"train.warmup_steps ({self.warmup_steps}) >= the decay end ({self.decay_steps}, "
                       f"train.lr_decay_steps or train.max_steps): the lr drops from {self.lr:g} to "
                       f"train.min_lr ({self.min_lr:g}) when the warmup ends, with no decay")
        if self.max_steps < self.warmup_steps:
            out.append(f"train.max_steps ({self.max_steps}) < train.warmup_steps ({self.warmup_steps}): "
                       f"the run ends during the warmup, at lr {self.lr * self.max_steps / (self.warmup_steps + 1):.3g} "
                       f"of {self.lr:g}")
        return out

    @property
    def decay_steps(self) -> int:
        """The step at which the decay ends (``lr_decay_steps`` or ``max_steps``)."""
        return self.lr_decay_steps if self.lr_decay_steps is not None else self.max_steps


@dataclass
class LogConfig:
    """What the run reports while it trains."""

    interval: int = cfg_field(10, "write a metrics line (and refresh the progress line) every N steps")
    progress: bool = cfg_field(True, "show the live progress line on stderr")
    tensorboard: bool = cfg_field(False, "also log to TensorBoard in RUN/tensorboard (pip install 'gptforge[tb]')")
    wandb: bool = cfg_field(False, "also log to Weights & Biases (pip install 'gptforge[wandb]'; WANDB_MODE=offline works)")
    wandb_project: str = cfg_field("gptforge", "the W&B project name")
    diagnostics_interval: int = cfg_field(0, "record activation/gradient diagnostics every N steps; 0 = off")
    diagnostics_steps: list[int] = cfg_field([], "also record diagnostics at these steps (comma list: 1,50,500)")

    def __post_init__(self) -> None:
        if not isinstance(self.interval, int) or self.interval <= 0:
            raise ConfigError(f"log.interval must be a positive integer, got {self.interval!r}")
        if not isinstance(self.diagnostics_interval, int) or self.diagnostics_interval < 0:
            raise ConfigError(f"log.diagnostics_interval must be an integer >= 0, got {self.diagnostics_interval!r}")


@dataclass
class RunConfig:
    """Everything a pretraining run needs; written to ``RUN/config.yaml``."""

    preset: str | None = cfg_field(None, "the preset this config started from (model shape + recipe)")
    model: GPTConfig = field(default_factory=GPTConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)


# Training recipes that go with a preset's model shape (keys of TrainConfig).
TRAIN_RECIPES: dict[str, dict[str, Any]] = {
    # nanoGPT README, "I only have a macbook": config/train_shakespeare_char.py with
    # --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000
    # --lr_decay_iters=2000 --dropout=0.0 --eval_iters=20 (reported val loss 1.88).
    "shakespeare-char-cpu": dict(
        batch_size=12, max_steps=2000, lr=1e-3, min_lr=1e-4, lr_decay_steps=2000, warmup_steps=100,
        beta2=0.99, weight_decay=0.1, grad_clip=1.0, eval_interval=250, eval_iters=20, ckpt_interval=500,
    ),
    # nanoGPT config/train_shakespeare_char.py (the baby GPT, one GPU, ~3 minutes on an A100).
    "shakespeare-char": dict(
        batch_size=64, max_steps=5000, lr=1e-3, min_lr=1e-4, lr_decay_steps=5000, warmup_steps=100,
        beta2=0.99, weight_decay=0.1, grad_clip=1.0, eval_interval=250, eval_iters=200, ckpt_interval=1000,
    ),
    # nanoGPT config/train_gpt2.py: ~0.5M tokens per step (12 x 1024 x 40), 600k steps.
    "gpt2": dict(
        batch_size=12, tokens_per_batch=491520, max_steps=600000, lr=6e-4, min_lr=6e-5,
        lr_decay_steps=600000, warmup_steps=2000, beta2=0.95, weight_decay=0.1, grad_clip=1.0,
        eval_interval=1000, eval_iters=200, ckpt_interval=1000,
    ),
    # The modern recipe: Muon for the block matrices, AdamW (3x nanoGPT's lr) for the rest.
    # Chosen by measurement (bench/recipes.py, README "A modern recipe"): the schedule is sized
    # to end inside nanoGPT's CPU-recipe wall time on a 2-core EPYC (~190 s with evaluation and
    # checkpoints; a modern step costs ~0.14 s there): 1300 steps, a short warmup (Muon needs
    # little) and a linear decay to ~0 (lower loss at the end than cosine to lr/10).
    # muon_lr 0.03 was worse (1.681 vs 1.661 after 1200 steps); batch 24 for half the steps
    # was 0.024 worse at the same tokens. No weight decay: with it off the val loss of steps
    # 500-750 was 0.02-0.05 lower in each of 3 seeds (the end ~the same), so nanoGPT's loss
    # comes ~100 steps sooner; evaluations every 100 steps show when. Muon momentum 0.85
    # (not 0.95): the end 0.019 lower over 3 seeds, each seed's crossing as soon or sooner;
    # 0.9 and 0.8 did less well (README "No weight decay, lower Muon momentum", 2026-12-06).
    "shakespeare-char-modern-cpu": dict(
        batch_size=12, max_steps=1300, optimizer="muon", muon_lr=0.02, muon_momentum=0.85, lr=3e-3,
        min_lr=3e-5, schedule="linear", lr_decay_steps=1300, warmup_steps=50, beta2=0.99, weight_decay=0.0,
        grad_clip=1.0, eval_interval=100, eval_iters=20, ckpt_interval=500,
    ),
    "shakespeare-char-modern": dict(
        batch_size=64, max_steps=5000, optimizer="muon", muon_lr=0.02, lr=3e-3, min_lr=3e-4,
        lr_decay_steps=5000, warmup_steps=100, beta2=0.99, weight_decay=0.1, grad_clip=1.0,
        eval_interval=250, eval_iters=200, ckpt_interval=1000,
    ),
    # A few steps for tests.
    "test-tiny": dict(batch_size=4, max_steps=20, lr=1e-3, min_lr=1e-4, warmup_steps=2, eval_interval=10,
                      eval_iters=2, ckpt_interval=10),
}


def preset_config(name: str) -> RunConfig:
    """A RunConfig holding the preset's model shape and, where one exists, its training recipe."""
    model = GPTConfig.from_preset(name)  # raises with a suggestion on an unknown name
    train = apply(TrainConfig(), TRAIN_RECIPES.get(name, {}), source=f"preset {name}")
    return RunConfig(preset=name, model=model, train=train)


def build_run_config(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> RunConfig:
    """Resolve a RunConfig from a preset, a YAML file and ``section.key`` overrides (in that order).

    A YAML file may name its own ``preset:``; ``--preset`` on the command line wins.
    """
    from gptforge.io import read_yaml

    file_values: dict[str, Any] = {}
    if config_file is not None:
        loaded = read_yaml(config_file, what="config file")
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {config_file} must hold a mapping of sections, got {type(loaded).__name__}")
        file_values = dict(loaded)
    preset = preset or file_values.pop("preset", None)
    file_values.pop("preset", None)
    cfg = preset_config(preset) if preset else RunConfig()
    if file_values:
        cfg = apply(cfg, file_values, source=str(config_file))
    if overrides:
        cfg = apply(cfg, overrides, source="command-line flags")
    return cfg


def run_config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    """The plain dict written to ``RUN/config.yaml``."""
    return to_dict(cfg)


def run_config_from_dict(values: dict[str, Any], source: str) -> RunConfig:
    """Rebuild a RunConfig from ``RUN/config.yaml`` (unknown keys are an error)."""
    return apply(RunConfig(), values, source=source)


# GPTConfig fields that may change on resume: they do not change any weight's shape or meaning.
RESUMABLE_MODEL_FIELDS = ("dropout", "attention")


def model_changes(saved: GPTConfig, new: GPTConfig) -> list[str]:
    """The model fields that differ in a way that breaks a resume, as ``name: old -> new``."""
    out = []
    for f in dataclasses.fields(GPTConfig):
        if f.name in RESUMABLE_MODEL_FIELDS:
            continue
        a, b = getattr(saved, f.name), getattr(new, f.name)
        if a != b:
            out.append(f"model.{f.name}: {a!r} -> {b!r}")
    return out


__all__ = [
    "DataConfig",
    "LogConfig",
    "PRESETS",
    "RunConfig",
    "TRAIN_RECIPES",
    "TrainConfig",
    "build_run_config",
    "model_changes",
    "preset_config",
]


def effective_grad_accum(train: TrainConfig, block_size: int, world_size: int = 1) -> int:
    """Micro-batches per optimizer step: ``grad_accum``, or what ``tokens_per_batch`` asks for.

    Raises:
        ConfigError: ``tokens_per_batch`` is not a whole number of micro-batches.
    """
    if train.tokens_per_batch is None:
        return train.grad_accum
    per = train.batch_size * block_size * world_size
    if train.tokens_per_batch % per != 0 or train.tokens_per_batch < per:
        nearest = max(1, round(train.tokens_per_batch / per)) * per
        raise ConfigError(
            f"train.tokens_per_batch {train.tokens_per_batch} is not a multiple of batch_size x block_size x "
            f"processes = {train.batch_size} x {block_size} x {world_size} = {per}; use e.g. {nearest}"
        )
    return train.tokens_per_batch // per


def fit_model_to_data(cfg: RunConfig, dataset: Any) -> RunConfig:
    """Take the vocabulary size from the dataset; refuse a vocabulary or context that cannot fit."""
    vocab = dataset.vocab_size
    if cfg.model.vocab_size is None:
        cfg = apply(cfg, {"model.vocab_size": vocab}, source="dataset")
    elif cfg.model.vocab_size < vocab:
        raise DataError(
            f"model.vocab_size {cfg.model.vocab_size} is smaller than the dataset's vocabulary "
            f"({vocab}, {dataset.path}); leave model.vocab_size unset to take it from the data"
        )
    return cfg
