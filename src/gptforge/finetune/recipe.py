"""Fine-tuning runs on the one training engine (:mod:`gptforge.train.loop`).

``finetune classify`` and ``finetune instruct`` differ in a small task (batches, loss,
what is saved); the run itself is the pretraining loop's: precision (auto/bf16/fp16 with
a GradScaler), ``grad_accum``, torchrun DDP, ``compile``, ``on_nan``, sinks, the progress
line, Ctrl-C/SIGTERM saving, atomic checkpoints and an exact resume. The fine-tuning
flags map onto the run config's sections (:func:`run_config`); any other setting is a
``--section.key VALUE`` flag, as for ``gptforge train``::

    --epochs E, --batch-size B       train.max_steps = E x ceil(N / B), train.batch_size = B
    --lr LR                          train.lr; train.min_lr = LR x min_lr_ratio (cosine decay)
    warmup_fraction                  train.warmup_steps = int(max_steps x warmup_fraction)
    --weight-decay, --seed           train.weight_decay, train.seed
    --checkpoint-every N             train.ckpt_interval (0: only at the end)
    one epoch                        train.eval_interval (val loss after every epoch)
    --device                         train.device

The engine's run dir is the work folder ``.OUT.resume/`` beside ``--out`` (config.yaml,
metrics.jsonl, checkpoints/): ``--out`` itself is written at the end, atomically, so
nothing half-done looks like a result; the same command (or ``--resume OUT``) continues
from the newest complete checkpoint. The folder is removed when the run completes.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptforge.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass
class LoopConfig:
    """Optimisation settings of a fine-tuning run (the flags of ``gptforge finetune``)."""

    epochs: int = 3
    batch_size: int = 8
    lr: float | None = None  # None: default_lr() for the model's size (the runners resolve it)
    min_lr_ratio: float = 0.1
    warmup_fraction: float = 0.05
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 123
    sort_by_length: bool = False
    log_interval: int = 10
    checkpoint_every: int = 100  # steps between checkpoints (and at the end); 0: only at the end
    progress: bool = True
    beta2: float = 0.999  # AdamW's default: fine-tuning runs are short, the pretraining 0.99 is not needed

    def __post_init__(self) -> None:
        problems = []
        if self.epochs < 1 or self.batch_size < 1:
            problems.append(f"--epochs ({self.epochs}) and --batch-size ({self.batch_size}) must be >= 1")
        if self.lr is not None and not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            problems.append(f"--lr must be a finite number > 0, got {self.lr}")
        if self.checkpoint_every < 0:
            problems.append(f"--checkpoint-every must be >= 0 (0: only at the end), got {self.checkpoint_every}")
        if problems:
            raise ConfigError("; ".join(problems))


# The default peak learning rate of full fine-tuning: 1e-3 (the best of those tried on the
# 1.9M and 3.8M-parameter bench bases, README) up to 10M parameters, then falling as
# 1/sqrt(N) (larger models want smaller steps) to 5e-5 (LLMs-from-scratch's rate for GPT-2
# 124M) at ~4B: 124M gets 2.8e-4. LoRA trains few, zero-started parameters: x LORA_FACTOR.
FULL_LR_MAX, FULL_LR_MIN, FULL_LR_KNEE = 1e-3, 5e-5, 10e6
LORA_FACTOR = {"classify": 2.0, "instruct": 10.0}


def default_lr(n_params: int, lora: bool, task: str) -> float:
    """The learning rate ``gptforge finetune`` uses when --lr is not given (see above)."""
    lr = min(FULL_LR_MAX, max(FULL_LR_MIN, FULL_LR_MAX * math.sqrt(FULL_LR_KNEE / max(n_params, 1))))
    return min(lr * LORA_FACTOR[task], 1e-2) if lora else lr


def resolve_lr(loop: LoopConfig, model: Any, lora: bool, task: str) -> LoopConfig:
    """``loop`` with its lr set: --lr as given, else :func:`default_lr` for this model."""
    from dataclasses import replace

    if loop.lr is not None:
        return loop
    n = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    lr = default_lr(n, lora, task)
    logger.info("learning rate %.3g (the default for %s%s of %s parameters; --lr to change)", lr,
                "LoRA on " if lora else "full fine-tuning of ", "a model", f"{n:,}")  # fmt: skip
    return replace(loop, lr=lr)


def run_config(loop: LoopConfig, model_config: Any, n_train: int, device: str,
               overrides: dict[str, Any] | None = None) -> Any:  # fmt: skip
    """The engine's RunConfig for a fine-tuning run (the mapping in the module docstring)."""
    from gptforge.config import apply, to_dict
    from gptforge.train.config import RunConfig

    steps_per_epoch = math.ceil(n_train / loop.batch_size)
    total = steps_per_epoch * loop.epochs
    values = {
        "train.batch_size": loop.batch_size, "train.max_steps": total, "train.lr": loop.lr,
        "train.min_lr": loop.lr * loop.min_lr_ratio, "train.warmup_steps": int(total * loop.warmup_fraction),
        "train.schedule": "cosine", "train.weight_decay": loop.weight_decay, "train.grad_clip": loop.grad_clip,
        "train.beta2": loop.beta2, "train.eval_interval": steps_per_epoch, "train.ckpt_interval": loop.checkpoint_every,
        "train.keep_last": 1, "train.seed": loop.seed, "train.device": device,
        "log.interval": loop.log_interval, "log.progress": loop.progress,
    }  # fmt: skip
    cfg = apply(RunConfig(), {f"model.{k}": v for k, v in to_dict(model_config).items()}, source="the base model")
    cfg = apply(cfg, values, source="the finetune flags")
    if overrides:
        cfg = apply(cfg, overrides, source="--section.key flags")
    return cfg


def resume_wanted(work: Path) -> bool:
    """Whether the work folder holds a checkpoint to continue from."""
    from gptforge.train.checkpoint import list_checkpoints, read_latest

    return read_latest(work) is not None or bool(list_checkpoints(work))


def check_out(opts: Any) -> Path:
    """``opts.out`` as a Path, refused before any work if it exists (without ``--overwrite``)
    or may not be replaced (``--overwrite`` never replaces the base model or the data)."""
    from gptforge.io import check_replaceable

    out = Path(opts.out)
    if out.exists() and not opts.overwrite:
        raise ConfigError(f"output {out} already exists; pass --overwrite or choose another --out")
    if opts.overwrite:
        check_replaceable(out, protect=(opts.model, opts.data))
    return out


def run_task(task: Any, cfg: Any, work: Path, explicit_resume: bool = False) -> Any:
    """Train ``task`` on the engine in the work folder; resumes when it holds a checkpoint.

    A work folder whose checkpoints are all damaged is discarded with a warning: the run
    starts over, which gives the same result, only later. Returns the engine's TrainResult;
    the trained model is ``task.prepared_model``.
    """
    from gptforge.errors import CheckpointError
    from gptforge.finetune.resume import discard_progress
    from gptforge.train.checkpoint import find_resume_checkpoint, read_latest
    from gptforge.train.loop import train

    resume = resume_wanted(work)
    if explicit_resume and not resume:
        raise ConfigError(f"nothing to resume: {work} holds no checkpoint of a stopped run")
    if resume:
        try:
            path, state = find_resume_checkpoint(work)
        except CheckpointError as e:
            logger.warning("ignoring the fine-tuning checkpoints in %s (%s); starting over", work, e)
            discard_progress(work)
            resume = False
        else:
            logger.info("resuming from step %d of %d (checkpoint %s)", int(state["step"]), cfg.train.max_steps, path)
    try:
        result = train(cfg, work, resume=resume, overwrite=True, task=task)
    except KeyboardInterrupt:
        name = read_latest(work)
        where = f"the checkpoint of {name} is in {work}: run the same command again to continue from it" if name \
            else "no checkpoint was saved yet"  # fmt: skip
        logger.warning("stopped; %s", where)
        raise
    from gptforge.train.distributed import is_fsdp

    if result.final_dir is not None and is_fsdp(task.prepared_model):
        from gptforge.model.loading import load_model

        device = next(iter(task.prepared_model.state_dict().values())).device
        task.prepared_model = load_model(result.final_dir, device=device).train()
    return result


def copy_metrics(work: Path, dest: Path) -> list[dict[str, Any]]:
    """Copy the run's metrics.jsonl into the result folder; returns its lines."""
    from gptforge.train.metrics import METRICS_FILE

    src = work / METRICS_FILE
    text = src.read_text(encoding="utf-8") if src.is_file() else ""
    (dest / METRICS_FILE).write_text(text, encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def training_entry(result: Any) -> dict[str, Any]:
    """final/config.json's ``training`` entry: the step, and which val loss belongs to these weights."""
    val = result.last_eval.get("val") if result.last_eval else None
    return {"step": result.step, "tokens": result.tokens, "val_loss": val, "best_val_loss": result.best_val_loss}


def stopped_result(task: str, result: Any, work: Path) -> dict[str, Any]:
    """What a run stopped by a signal returns (nothing is written to --out)."""
    logger.warning("stopped at step %d; the checkpoint of step %d is in %s: run the same command again "
                   "(or pass --resume) to continue from it", result.step, result.step, work)
    return {"task": task, "stopped": result.stopped, "exit_code": result.exit_code, "step": result.step,
            "resume_dir": str(work)}  # fmt: skip
