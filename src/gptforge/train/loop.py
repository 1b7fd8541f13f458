"""The pretraining loop: ``train(cfg, run_dir)`` runs or resumes one run.

One optimizer step (nanoGPT's loop, with the robustness around it)::

    lr = lr_at(step)                                   pure schedule, nothing to checkpoint
    for each of grad_accum micro-batches:
        x, y = loader.next_batch()                     (B, T) each
        loss = model(x, y) / grad_accum                under autocast (bf16/fp16) if asked
        loss.backward()                                (scaled for fp16)
    check the loss is finite                           stop (or skip the step: train.on_nan)
    clip the gradient norm, optimizer.step()
    every log.interval:     a metrics line + the progress line
    every eval_interval:    mean loss over eval_iters batches of train and val
    every ckpt_interval:    a checkpoint (and on Ctrl-C / SIGTERM, and at the end)

Extension points for what other parts add (distributed wrappers, diagnostics):
:class:`TrainHooks` callbacks, :meth:`Trainer.wrap_model` and
:meth:`Trainer.micro_step_context` (DDP's ``no_sync`` goes there).
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gptforge.errors import DataError, GptforgeError
from gptforge.io import atomic_dir
from gptforge.model.gpt import GPT
from gptforge.train import checkpoint as ckpt
from gptforge.train import distributed as dist
from gptforge.train import sinks as _sinks  # noqa: F401  (registers the TensorBoard and W&B sinks)
from gptforge.train.config import RunConfig, effective_grad_accum, model_changes
from gptforge.train.device import make_grad_scaler, maybe_compile, plan_device
from gptforge.train.evaluate import estimate_loss
from gptforge.train.metrics import (
    METRICS_FILE,
    MetricsLogger,
    Progress,
    Throughput,
    truncate_metrics,
)
from gptforge.train.optim import build_optimizer, set_lr
from gptforge.train.rundir import (
    check_new_run,
    discard_replaced,
    restore_replaced,
    start_new_run,
    write_run_config,
)
from gptforge.train.schedule import lr_at

logger = logging.getLogger(__name__)

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
MAX_SKIPPED_IN_A_ROW = 10


class TrainingError(GptforgeError):
    """Training cannot go on (non-finite loss, out of memory): the message says what to change."""


class TrainHooks:
    """Callbacks into the loop; override what you need (every method is a no-op here)."""

    def on_start(self, trainer: Trainer) -> None: ...

    def after_backward(self, trainer: Trainer) -> None:
        """Gradients of the step are in ``.grad`` (unclipped; unscaled unless fp16)."""

    def on_step_end(self, trainer: Trainer, record: dict[str, Any] | None) -> None:
        """After each optimizer step; ``record`` is the metrics line when one was logged."""

    def on_eval(self, trainer: Trainer, record: dict[str, Any]) -> None: ...

    def on_end(self, trainer: Trainer, result: TrainResult) -> None: ...


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    tokens: int
    stopped: str  # "done", "time_budget", "SIGINT" or "SIGTERM"
    exit_code: int  # 0, or 130/143 when stopped by a signal
    last_eval: dict[str, float] | None
    best_val_loss: float | None
    checkpoint: Path | None
    final_dir: Path | None
    train_time_s: float
    tokens_per_s: float


class _StopFlag:
    """Turns the first SIGINT/SIGTERM into a flag the loop checks between steps.

    A second Ctrl-C raises KeyboardInterrupt at once; checkpoints are atomic, so
    even that never leaves a half-written one behind.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum
        signal.signal(signal.SIGINT, signal.default_int_handler)
        logger.warning("\n%s received: saving a checkpoint and stopping (Ctrl-C again to abort)",
                       signal.Signals(signum).name)

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def optimizer_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    next_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    grad_accum: int = 1,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    scaler: torch.amp.GradScaler | None = None,
    grad_clip: float = 0.0,
    micro_step_context: Callable[[int], contextlib.AbstractContextManager] | None = None,
    after_backward: Callable[[], None] | None = None,
    reduce_loss: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[float, float | None]:
    """One optimizer step over ``grad_accum`` micro-batches; returns (mean loss, grad norm or None).

    ``model(x, y)`` must return ``(logits, loss)``. A non-finite loss leaves the
    weights untouched (gradients dropped, no optimizer step) and is returned for
    the caller to stop or skip. The benchmarks time other models through this
    same function.
    """
    loss_sum = None
    for micro in range(grad_accum):
        x, y = next_batch()
        with micro_step_context(micro) if micro_step_context else contextlib.nullcontext():
            with autocast():
                _, loss = model(x, y)
            loss = loss / grad_accum  # the mean over the accumulated batch
            loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
            (scaler.scale(loss) if scaler is not None else loss).backward()
    loss_value = float((reduce_loss(loss_sum) if reduce_loss else loss_sum).item())  # DDP: mean over ranks
    if not math.isfinite(loss_value):
        optimizer.zero_grad(set_to_none=True)
        return loss_value, None
    if after_backward is not None:
        after_backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    norm = None
    if grad_clip > 0:
        if scaler is not None:
            scaler.unscale_(optimizer)
        norm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip))
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_value, norm


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Holds a run's state; :meth:`run` trains. Build it with :func:`train`."""

    def __init__(
        self, cfg: RunConfig, run_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
        hooks: list[TrainHooks] | tuple[TrainHooks, ...] = (),
    ) -> None:
        from gptforge.data.loader import BatchLoader
        from gptforge.data.shards import open_dataset
        from gptforge.train.diagnostics import diagnostics_hooks

        self.run_dir = Path(run_dir)
        self.replaced: Path | None = None  # the run --overwrite moved aside, until the first checkpoint
        self.hooks = list(hooks)
        self.rank, self.world_size, self.is_main = dist.rank(), dist.world_size(), dist.is_main()
        self.plan = plan_device(cfg.train.device, cfg.train.precision, dist.local_rank())
        self.device = self.plan.device
        self.distributed = dist.resolve_mode(cfg.train.distributed, self.world_size)
        self.owns_process_group = dist.init(self.device)
        if cfg.data.dir is None:
            raise DataError("no dataset given; pass --data DIR (made by `gptforge prepare`) or set data.dir")
        self.dataset = open_dataset(cfg.data.dir)
        self.tokenizer = self.dataset.load_tokenizer()
        cfg = self._fit_model_to_data(cfg)
        self.grad_accum = effective_grad_accum(cfg.train, cfg.model.block_size, self.world_size)
        self.tokens_per_step = cfg.train.batch_size * cfg.model.block_size * self.grad_accum * self.world_size
        self.cfg = cfg
        self.hooks.extend(diagnostics_hooks(cfg.log, self.run_dir, self.is_main))

        resume_from: tuple[Path, dict[str, Any]] | None = None
        if resume:
            resume_from = ckpt.find_resume_checkpoint(self.run_dir)
            self._check_resumable(*resume_from)
        elif self.is_main:  # refuses an existing run (or a folder --overwrite may not replace) before any work
            check_new_run(self.run_dir, overwrite, protect=(cfg.data.dir,))

        seed_everything(cfg.train.seed)  # the same initial weights on every rank
        self.model = GPT(cfg.model).to(self.device)
        self.model.tokenizer = self.tokenizer
        self.optimizer = build_optimizer(self.model, cfg.train, self.device)
        self.scaler = make_grad_scaler(self.device, self.plan.precision)
        self.loader = BatchLoader(
            self.dataset, "train", cfg.train.batch_size, cfg.model.block_size, cfg.data.mode,
            cfg.train.seed, self.rank, self.world_size, self.device,
        )
        self.eval_splits = [s for s in ("train", "val") if self.dataset.has_split(s)]
        for split in self.eval_splits:  # fail now, not at the first evaluation
            self._eval_loader(split)
        if not resume and self.is_main:  # only once every check passed: a refused run leaves no dir behind
            self.replaced = start_new_run(self.run_dir, overwrite, protect=(cfg.data.dir,))
        if self.is_main:  # once every check passed: a refused run prints its one error line only
            for warning in cfg.train.schedule_warnings():
                logger.warning(warning)
        dist.barrier()
        torch.manual_seed(cfg.train.seed + self.rank)  # dropout differs per rank

        self.step, self.tokens = 0, 0
        self.best_val_loss: float | None = None
        self.last_eval: dict[str, float] | None = None
        self.last_eval_step: int | None = None
        self.last_ckpt: Path | None = None
        self.last_ckpt_step: int | None = None
        if resume_from is not None:
            self._restore(*resume_from)
        if self.is_main:
            write_run_config(self.run_dir, cfg)
        self.train_model = self.wrap_model(maybe_compile(self.model, cfg.train.compile, self.device))
        self.autocast = self.plan.autocast
        self.flops_per_token, self.peak_flops = self._mfu_inputs()

    # ------------------------------------------------------------------ set-up helpers
    def _fit_model_to_data(self, cfg: RunConfig) -> RunConfig:
        """Take the vocabulary size from the dataset; refuse a vocabulary or context that cannot fit."""
        from gptforge.config import apply

        vocab = self.dataset.vocab_size
        if cfg.model.vocab_size is None:
            cfg = apply(cfg, {"model.vocab_size": vocab}, source="dataset")
        elif cfg.model.vocab_size < vocab:
            raise DataError(
                f"model.vocab_size {cfg.model.vocab_size} is smaller than the dataset's vocabulary "
                f"({vocab}, {self.dataset.path}); leave model.vocab_size unset to take it from the data"
            )
        return cfg

    def _eval_loader(self, split: str) -> Any:
        from gptforge.data.loader import BatchLoader

        # A fixed seed of its own: the same eval batches every time, the training stream untouched.
        return BatchLoader(
            self.dataset, split, self.cfg.train.batch_size, self.cfg.model.block_size, "random",
            self.cfg.train.seed + 1000 + (split == "val"), self.rank, self.world_size, self.device,
        )

    def _check_resumable(self, path: Path, state: dict[str, Any]) -> None:
        from gptforge.config import from_dict
        from gptforge.io import read_json
        from gptforge.model.config import GPTConfig

        saved = from_dict(GPTConfig, read_json(path / "config.json")["model"], source=str(path))
        changes = model_changes(saved, self.cfg.model)
        if changes:
            raise GptforgeError(
                f"cannot resume {self.run_dir}: the model shape would change ({'; '.join(changes)}); "
                "drop those flags, or start a new run with --out"
            )
        fp = state.get("tokenizer_fingerprint")
        if fp is not None:
            self.dataset.check_compatible(fp)

    def _restore(self, path: Path, state: dict[str, Any]) -> None:
        ckpt.load_checkpoint_weights(path, self.model)
        ckpt.load_optimizer_state(path, self.optimizer)
        if self.scaler is not None and state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])
        own = dist.state_for_rank(state, self.rank, self.world_size)  # each rank's data position and RNG
        self.loader.load_state_dict(own["data"])
        ckpt.set_rng_state(own["rng"])
        self.step, self.tokens = int(state["step"]), int(state["tokens"])
        self.best_val_loss = state.get("best_val_loss")
        self.last_ckpt, self.last_ckpt_step = path, self.step
        if state.get("val_loss") is not None:
            self.last_eval = {"train": state.get("train_loss"), "val": state["val_loss"]}
            self.last_eval_step = self.step
        if self.is_main:
            dropped = truncate_metrics(self.run_dir / METRICS_FILE, self.step)
            if dropped:
                logger.info("dropped %d metrics lines after step %d (they are re-run)", dropped, self.step)
        logger.info("resuming %s from %s (step %d, %s tokens)", self.run_dir, path.name, self.step,
                    f"{self.tokens:,}")

    def _mfu_inputs(self) -> tuple[float, float | None]:
        from gptforge.model.accounting import flops_per_token, peak_flops

        fpt = flops_per_token(self.cfg.model)
        peak = None
        if self.device.type == "cuda":
            try:
                peak = peak_flops(torch.cuda.get_device_name(self.device),
                                  "fp32" if self.plan.precision == "fp32" else "bf16")
            except GptforgeError:
                peak = None
        return fpt, peak

    def wrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Hook for DDP/FSDP wrapping (the model to run forward/backward through)."""
        if self.distributed == "fsdp":  # shards self.model in place: the optimizer must follow the new parameters
            self.optimizer = dist.fsdp_shard(
                self.model, self.optimizer, lambda m: build_optimizer(m, self.cfg.train, self.device)
            )
            return model
        return dist.wrap_model(model, self.distributed, self.device)

    def micro_step_context(self, micro_step: int) -> contextlib.AbstractContextManager:
        """Context for one micro-batch's backward (DDP: ``no_sync`` except on the last)."""
        return dist.micro_step_context(self.train_model, micro_step, self.grad_accum)

    # ------------------------------------------------------------------ one step
    def train_step(self) -> tuple[float, float | None]:
        """One optimizer step over ``grad_accum`` micro-batches (see :func:`optimizer_step`)."""

        def after_backward() -> None:
            for hook in self.hooks:
                hook.after_backward(self)

        return optimizer_step(
            self.train_model, self.optimizer, self.loader.next_batch, self.grad_accum, self.autocast,
            self.scaler, self.cfg.train.grad_clip, self.micro_step_context, after_backward,
            dist.mean_across_ranks,
        )

    # ------------------------------------------------------------------ evaluation and saving
    def evaluate(self) -> dict[str, float]:
        def make(split: str) -> Any:
            return self._eval_loader(split).next_batch

        losses = estimate_loss(self.train_model, make, self.eval_splits, self.cfg.train.eval_iters, self.autocast)
        losses = dist.mean_dict_across_ranks(losses, self.device)
        self.last_eval, self.last_eval_step = losses, self.step
        val = losses.get("val")
        if val is not None and math.isfinite(val) and (self.best_val_loss is None or val < self.best_val_loss):
            self.best_val_loss = val
        return losses

    def save_checkpoint(self) -> Path | None:
        # Every rank's data position and RNG go into the checkpoint; rank 0 writes, the others wait.
        ranks = dist.gather_to_main({"data": self.loader.state_dict(), "rng": ckpt.get_rng_state()})
        model, optimizer = (dist.full_state_views(self.model, self.optimizer) if self.distributed == "fsdp"
                            else (self.model, self.optimizer))  # FSDP: full tensors gathered on rank 0
        path = self._write_checkpoint(ranks, model, optimizer)
        self.last_ckpt_step = self.step  # on every rank, so all agree on the final save
        dist.barrier()
        return path

    def _write_checkpoint(self, ranks: list[dict[str, Any]] | None, model: Any, optimizer: Any) -> Path | None:
        if not self.is_main:
            return None
        at_eval = self.last_eval_step == self.step and self.last_eval is not None
        state = {
            "tokens": self.tokens,
            "data": self.loader.state_dict(),
            "best_val_loss": self.best_val_loss,
            "train_loss": self.last_eval.get("train") if at_eval else None,
            "val_loss": self.last_eval.get("val") if at_eval else None,
            "tokenizer_fingerprint": self.dataset.tokenizer_fingerprint,
            "grad_scaler": self.scaler.state_dict() if self.scaler is not None else None,
            **({"ranks": ranks} if self.world_size > 1 else {}),
        }
        path = ckpt.save_checkpoint(
            self.run_dir, self.step, model, optimizer, self.tokenizer, state,
            extra_config=self._extra_config(), keep_last=self.cfg.train.keep_last,
        )
        self.last_ckpt, self.last_ckpt_step = path, self.step
        if self.replaced is not None:  # the new run has a checkpoint: the old one may go now
            discard_replaced(self.replaced)
            self.replaced = None
        return path

    def save_final(self) -> Path | None:
        model = dist.full_state_views(self.model)[0] if self.distributed == "fsdp" else self.model
        if not self.is_main:
            return None
        from gptforge.model.loading import save_model

        final = self.run_dir / "final"
        with atomic_dir(final, overwrite=True) as tmp:
            save_model(model, tmp, tokenizer=self.tokenizer, extra_config=self._extra_config())
        return final

    def _extra_config(self) -> dict[str, Any]:
        return {"training": {"step": self.step, "tokens": self.tokens, "val_loss": self.best_val_loss,
                             "preset": self.cfg.preset, "data": str(self.cfg.data.dir)}}

    # ------------------------------------------------------------------ the loop
    def run(self) -> TrainResult:
        try:
            return self._run()
        except torch.OutOfMemoryError:
            raise TrainingError(self._oom_message()) from None
        except RuntimeError as e:
            if "can't allocate memory" in str(e) or "not enough memory" in str(e):
                raise TrainingError(self._oom_message()) from None
            raise

    def _oom_message(self) -> str:
        t, m = self.cfg.train, self.cfg.model
        return (
            f"out of memory on {self.device} with train.batch_size {t.batch_size} x model.block_size "
            f"{m.block_size}; lower --train.batch_size (raise --train.grad_accum to keep the batch), "
            "lower --model.block_size, or use --train.precision bf16"
        )

    def _run(self) -> TrainResult:
        t, log_cfg = self.cfg.train, self.cfg.log
        metrics = MetricsLogger(self.run_dir if self.is_main else None, log_cfg)
        progress = Progress(t.max_steps, self.step, log_cfg.progress and self.is_main)
        throughput = Throughput()
        self.train_model.train()
        for hook in self.hooks:
            hook.on_start(self)
        start = time.perf_counter()
        start_tokens = self.tokens
        stopped, skipped_in_a_row = "done", 0
        try:
            with _StopFlag() as stop:
                while self.step < t.max_steps:
                    lr = lr_at(self.step, t)
                    set_lr(self.optimizer, lr)  # each group at lr x its lr_scale
                    loss, norm = self.train_step()
                    self.step += 1
                    self.tokens += self.tokens_per_step
                    throughput.add(self.tokens_per_step)
                    if not math.isfinite(loss):
                        skipped_in_a_row += 1
                        self._on_bad_loss(loss, skipped_in_a_row)
                    else:
                        skipped_in_a_row = 0
                    record = None
                    if self.step % log_cfg.interval == 0 or self.step == t.max_steps:
                        rate = throughput.rate()
                        mfu = (rate * self.flops_per_token / self.world_size / self.peak_flops
                               if self.peak_flops else None)
                        record = {"step": self.step, "tokens": self.tokens, "loss": loss, "lr": lr,
                                  "tokens_per_s": rate, "time_s": time.perf_counter() - start}
                        if norm is not None:
                            record["grad_norm"] = norm
                        if mfu is not None:
                            record["mfu"] = mfu
                        metrics.log(record)
                        progress.update(self.step, loss, lr, rate, mfu)
                    for hook in self.hooks:
                        hook.on_step_end(self, record)
                    over_budget = t.time_budget_s is not None and time.perf_counter() - start >= t.time_budget_s
                    over_budget = dist.sync_stop(stop, over_budget)  # all ranks stop at the same step
                    if over_budget and self.step < t.max_steps:
                        stopped = "time_budget"
                        progress.write(f"time budget of {t.time_budget_s:g}s reached at step {self.step}")
                        break
                    if stop.signum is not None:
                        stopped = signal.Signals(stop.signum).name
                        break
                    paused = throughput.pause()
                    if t.eval_interval and self.step % t.eval_interval == 0 and self.step < t.max_steps:
                        self._eval_and_log(metrics, progress)
                    if t.ckpt_interval and self.step % t.ckpt_interval == 0 and self.step < t.max_steps:
                        self.save_checkpoint()
                    throughput.resume(paused)
                    dist.sync_stop(stop)
                    if stop.signum is not None:  # arrived during eval/save
                        stopped = signal.Signals(stop.signum).name
                        break
                final_dir = None
                if stopped in ("done", "time_budget"):
                    if self.last_eval_step != self.step:
                        self._eval_and_log(metrics, progress)
                    if self.last_ckpt_step != self.step:
                        self.save_checkpoint()
                    final_dir = self.save_final()
                elif self.last_ckpt_step != self.step:
                    self.save_checkpoint()
        finally:
            progress.close()
            metrics.close()
        elapsed = time.perf_counter() - start
        result = TrainResult(
            run_dir=self.run_dir, step=self.step, tokens=self.tokens, stopped=stopped,
            exit_code=EXIT_CODES[signal.Signals[stopped]] if stopped.startswith("SIG") else 0,
            last_eval=self.last_eval, best_val_loss=self.best_val_loss, checkpoint=self.last_ckpt,
            final_dir=final_dir, train_time_s=elapsed,
            tokens_per_s=(self.tokens - start_tokens) / elapsed if elapsed > 0 else 0.0,
        )
        for hook in self.hooks:
            hook.on_end(self, result)
        return result

    def _eval_and_log(self, metrics: MetricsLogger, progress: Progress) -> None:
        losses = self.evaluate()
        record = {"step": self.step, "tokens": self.tokens,
                  "train_loss": losses.get("train"), "val_loss": losses.get("val")}
        metrics.log(record)
        shown = ", ".join(f"{k} loss {v:.4f}" for k, v in losses.items())
        progress.write(f"step {self.step}: {shown}")
        for hook in self.hooks:
            hook.on_eval(self, record)

    def _on_bad_loss(self, loss: float, in_a_row: int) -> None:
        last = f"the last good checkpoint is {self.last_ckpt}" if self.last_ckpt else "no checkpoint was saved yet"
        if self.cfg.train.on_nan == "stop":
            raise TrainingError(
                f"loss became {loss} at step {self.step}; the run stopped and {last}. "
                f"Lower --train.lr (now {self.cfg.train.lr:g}), keep --train.grad_clip on, use bf16 "
                "rather than fp16, then --resume; or pass --train.on_nan skip to skip such steps"
            )
        logger.warning("loss became %s at step %d; step skipped (weights unchanged)", loss, self.step)
        if in_a_row >= MAX_SKIPPED_IN_A_ROW:
            raise TrainingError(
                f"loss was non-finite for {in_a_row} steps in a row (up to step {self.step}); {last}. "
                f"Lower --train.lr (now {self.cfg.train.lr:g}) and --resume"
            )


def train(
    cfg: RunConfig, run_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
    hooks: list[TrainHooks] | tuple[TrainHooks, ...] = (),
) -> TrainResult:
    """Train (or, with ``resume``, continue) the run in ``run_dir``.

    Raises:
        GptforgeError subclasses for user-fixable problems: an existing run dir,
        a missing or incompatible dataset, a corrupt run, a non-finite loss, OOM.
    """
    trainer = Trainer(cfg, run_dir, resume=resume, overwrite=overwrite, hooks=hooks)
    try:
        result = trainer.run()
        dist.barrier()  # the other ranks wait while rank 0 writes final/
        return result
    except BaseException:
        if trainer.replaced is not None:  # failed before its first checkpoint: nothing was overwritten
            restore_replaced(trainer.run_dir, trainer.replaced)
        raise
    finally:
        if trainer.owns_process_group:
            dist.shutdown()


__all__ = ["TrainHooks", "TrainResult", "Trainer", "TrainingError", "optimizer_step", "train"]
