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

Here: :class:`Trainer` (start-up, the loop, evaluation, saving) and :func:`train`. Beside it,
each readable alone: ``step.py`` (one optimizer step), ``state.py`` (the counters and RNG as
checkpoint parts), ``resume.py`` (continuing from a checkpoint), ``failures.py`` (NaN and OOM
rules) and ``hooks.py`` (callbacks, result, Ctrl-C); their public names import from here too.

Extension points for what other parts add (distributed wrappers, diagnostics):
:class:`TrainHooks` callbacks, :meth:`Trainer.wrap_model` and
:meth:`Trainer.micro_step_context` (DDP's ``no_sync`` goes there).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import time
from pathlib import Path
from typing import Any

import torch

from gptforge.errors import ConfigError
from gptforge.io import atomic_dir
from gptforge.model.loading import unwrap_model
from gptforge.train import checkpoint as ckpt
from gptforge.train import distributed as dist
from gptforge.train import sinks as _sinks  # noqa: F401  (registers the TensorBoard and W&B sinks)
from gptforge.train.allocator import keep_freed_memory
from gptforge.train.config import (
    RunConfig,
    effective_grad_accum,
    fit_model_to_data,
    run_config_to_dict,
)
from gptforge.train.device import (
    enable_tf32,
    make_grad_scaler,
    maybe_compile,
    mfu_inputs,
    plan_device,
)
from gptforge.train.failures import TrainingError, on_bad_loss, oom_message
from gptforge.train.hooks import EXIT_CODES, TrainHooks, TrainResult, _StopFlag
from gptforge.train.metrics import (
    METRICS_FILE,
    MetricsLogger,
    Progress,
    Throughput,
    truncate_metrics,
)
from gptforge.train.optim import build_optimizer, set_lr
from gptforge.train.resume import config_changes, find_checkpoint, restore_parts
from gptforge.train.rundir import (
    discard_replaced,
    restore_replaced,
    start_new_run,
    write_run_config,
)
from gptforge.train.schedule import lr_at
from gptforge.train.state import _RNG, TrainState, seed_everything, training_summary
from gptforge.train.step import LossForward, _call_with_batch, optimizer_step

logger = logging.getLogger(__name__)


class Trainer:
    """Holds a run's state; :meth:`run` trains. Build it with :func:`train`.

    ``task`` (see :mod:`gptforge.train.tasks`) supplies the model, batches and loss: by
    default :class:`~gptforge.train.tasks.PretrainTask` on ``cfg.data.dir``; fine-tuning
    passes an :class:`~gptforge.train.tasks.ExamplesTask`.
    """

    def __init__(
        self, cfg: RunConfig, run_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
        hooks: list[TrainHooks] | tuple[TrainHooks, ...] = (), task: Any = None,
        resume_from: str | Path | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.replaced: Path | None = None  # the run --overwrite moved aside, until the first checkpoint
        self.hooks = list(hooks)
        self._init_process(cfg)
        self.task = task if task is not None else self._pretrain_task(cfg)
        self.tokenizer = self.task.tokenizer
        self.cfg = self._resolve_config(cfg)
        self.hooks.extend(self._diagnostics_hooks())
        checkpoint = find_checkpoint(self.run_dir, self.cfg, self.task, resume=resume,
                                     resume_from=resume_from, overwrite=overwrite)  # fmt: skip
        self._build_model()
        self._build_optimizer()
        self.loader = self.task.loader(self.rank, self.world_size, self.device)
        self._check_eval()
        self._open_run_dir(resume, overwrite)
        self.state = TrainState()
        self._step_tokens = 0
        self.last_ckpt: Path | None = None
        self.last_ckpt_step: int | None = None
        if checkpoint is not None:
            self._restore(*checkpoint)
        if self.is_main:
            write_run_config(self.run_dir, self.cfg)
        self._wrap_model()

    # ------------------------------------------------------------------ start-up, one step each
    def _init_process(self, cfg: RunConfig) -> None:
        """Rank, device plan and distributed mode; joins the process group if nobody did."""
        self.rank, self.world_size, self.is_main = dist.rank(), dist.world_size(), dist.is_main()
        self.plan = plan_device(cfg.train.device, cfg.train.precision, dist.local_rank())
        self.device = self.plan.device
        self.distributed = dist.resolve_mode(cfg.train.distributed, self.world_size)
        self.owns_process_group = dist.init(self.device)  # False under train()'s process_group()
        enable_tf32(self.device, cfg.train)
        if self.device.type == "cpu":
            keep_freed_memory()  # each step's buffers are reused, not faulted in afresh

    def _pretrain_task(self, cfg: RunConfig) -> Any:
        from gptforge.train.tasks import PretrainTask

        return PretrainTask(cfg)

    def _resolve_config(self, cfg: RunConfig) -> RunConfig:
        """The vocabulary from the data (pretraining); micro-batches per step; tokens per step."""
        dataset = getattr(self.task, "dataset", None)
        if dataset is not None:
            cfg = fit_model_to_data(cfg, dataset)
            self.task.cfg = cfg
        self.grad_accum = effective_grad_accum(cfg.train, cfg.model.block_size, self.world_size)
        # fixed for pretraining; fine-tuning batches vary, so they are counted instead (None)
        self.tokens_per_step = (cfg.train.batch_size * cfg.model.block_size * self.grad_accum * self.world_size
                                if dataset is not None else None)  # fmt: skip
        return cfg

    def _diagnostics_hooks(self) -> list[TrainHooks]:
        from gptforge.train.diagnostics import diagnostics_hooks

        return diagnostics_hooks(self.cfg.log, self.run_dir, self.is_main)

    def _build_model(self) -> None:
        seed_everything(self.cfg.train.seed)  # the same initial weights on every rank
        self.model = self.task.model(self.device)
        self.model.tokenizer = self.tokenizer
        if self.cfg.train.activation_checkpointing:
            unwrap_model(self.model).activation_checkpointing = True
        if not any(p.requires_grad for p in self.model.parameters()):
            raise ConfigError("nothing to train: every parameter of the model is frozen")

    def _build_optimizer(self) -> None:
        self.optimizer = build_optimizer(self.model, self.cfg.train, self.device)
        self.scaler = make_grad_scaler(self.device, self.plan.precision)

    def _check_eval(self) -> None:
        """Open the evaluation data now (pretraining), so a problem fails here, not at the first eval."""
        if isinstance(self.task, _pretrain_task_type()):
            for split in self.task.eval_splits:
                self.task.eval_loader(split, self.rank, self.world_size, self.device)

    def _open_run_dir(self, resume: bool, overwrite: bool) -> None:
        """Create the run dir once every check passed (a refused run leaves none behind)."""
        if not resume and self.is_main:
            self.replaced = start_new_run(self.run_dir, overwrite, protect=(self.cfg.data.dir,))
        if self.is_main:  # once every check passed: a refused run prints its one error line only
            for warning in self.cfg.train.schedule_warnings():
                logger.warning(warning)
        dist.barrier()
        torch.manual_seed(self.cfg.train.seed + self.rank)  # dropout differs per rank

    def _wrap_model(self) -> None:
        """The module forward/backward run through: compiled, then DDP/FSDP-wrapped. A task
        with its own loss (fine-tuning) runs it as the forward of :class:`LossForward`, since
        DDP reduces the gradients of what ran through its forward (not of the model's other methods)."""
        inner = maybe_compile(self.model, self.cfg.train.compile, self.device)
        own_loss = not hasattr(self.task, "dataset")  # pretraining's loss is the model's forward
        if own_loss:
            inner = LossForward(inner, self.task.loss)
        self._loss_fn = _call_with_batch if own_loss else self.task.loss
        self._eval_model = self.model if own_loss else None
        self.train_model = self.wrap_model(inner)
        self.autocast = self.plan.autocast
        self.flops_per_token, self.peak_flops = mfu_inputs(self.cfg.model, self.device, self.plan.precision)

    # the counters live in self.state; these names read as before
    step = property(lambda self: self.state.step, lambda self, v: setattr(self.state, "step", v))
    tokens = property(lambda self: self.state.tokens, lambda self, v: setattr(self.state, "tokens", v))
    best_val_loss = property(lambda self: self.state.best_val_loss)
    last_eval = property(lambda self: self.state.last_eval)
    last_eval_step = property(lambda self: self.state.last_eval_step)

    # ------------------------------------------------------------------ resume and wrapping
    def checkpoint_parts(self) -> dict[str, Any]:
        """What a checkpoint holds besides the weights, by owner; each has state_dict/load_state_dict."""
        return {"train_state": self.state, "data": self.loader, "optimizer": self.optimizer,
                "scaler": self.scaler, "rng": _RNG}  # fmt: skip

    def _restore(self, path: Path, state: dict[str, Any]) -> None:
        restore_parts(path, state, model=self.model, optimizer=self.optimizer, scaler=self.scaler,
                      loader=self.loader, train_state=self.state, rank=self.rank,
                      world_size=self.world_size)  # fmt: skip
        self.last_ckpt, self.last_ckpt_step = path, self.step
        self.config_changes = config_changes(state, self.cfg)  # logged to metrics.jsonl by _run
        if self.is_main:
            dropped = truncate_metrics(self.run_dir / METRICS_FILE, self.step)
            if dropped:
                logger.info("dropped %d metrics lines after step %d (they are re-run)", dropped, self.step)
        logger.info("resuming %s from %s (step %d, %s tokens)", self.run_dir, path.name, self.step,
                    f"{self.tokens:,}")

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
            self.train_model, self.optimizer, self._next_batch, self.grad_accum, self.autocast,
            self.scaler, self.cfg.train.grad_clip, self.micro_step_context, after_backward,
            dist.mean_across_ranks, loss_fn=self._loss_fn,
        )

    def _next_batch(self) -> Any:
        batch = self.loader.next_batch()
        if self.tokens_per_step is None:
            self._step_tokens += self.task.batch_tokens(batch) * self.world_size
        return batch

    # ------------------------------------------------------------------ evaluation and saving
    def evaluate(self) -> dict[str, float]:
        model = self._eval_model if self._eval_model is not None else self.train_model
        losses = self.task.evaluate(model, self.autocast, self.rank, self.world_size, self.device)
        losses = dist.mean_dict_across_ranks(losses, self.device)
        self.state.last_eval, self.state.last_eval_step = losses, self.step
        val = losses.get("val")
        if val is not None and math.isfinite(val) and (self.best_val_loss is None or val < self.best_val_loss):
            self.state.best_val_loss, self.state.best_step = val, self.step
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

        state = {
            **self.state.state_dict(),
            "data": self.loader.state_dict(),
            **self.task.checkpoint_state(),
            "grad_scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "run_config": json.loads(json.dumps(run_config_to_dict(self.cfg), default=str)),  # it travels
            **({"ranks": ranks} if self.world_size > 1 else {}),
        }
        state.pop("step")  # save_checkpoint writes it
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
        return {**self.task.extra_config(), "training": training_summary(self.state, self.cfg)}

    # ------------------------------------------------------------------ the loop
    def run(self) -> TrainResult:
        try:
            return self._run()
        except torch.OutOfMemoryError:
            raise TrainingError(oom_message(self.cfg, self.device)) from None
        except RuntimeError as e:
            if "can't allocate memory" in str(e) or "not enough memory" in str(e):
                raise TrainingError(oom_message(self.cfg, self.device)) from None
            raise

    def _run(self) -> TrainResult:
        t, log_cfg = self.cfg.train, self.cfg.log
        self._metrics = MetricsLogger(self.run_dir if self.is_main else None, log_cfg)
        self._progress = Progress(t.max_steps, self.step, log_cfg.progress and self.is_main)
        self._throughput = Throughput()
        self._skipped_in_a_row = 0
        self.train_model.train()
        for hook in self.hooks:
            hook.on_start(self)
        self._start, start_tokens = time.perf_counter(), self.tokens
        self._log_config_changes()
        stopped, final_dir = "done", None
        try:
            with _StopFlag() as stop:
                while self.step < t.max_steps:
                    record = self._iteration()
                    for hook in self.hooks:
                        hook.on_step_end(self, record)
                    stopped = self._should_stop(stop)
                    if stopped != "done":
                        break
                    self._periodic_eval_and_save()
                    stopped = self._stopped_by_signal(stop)  # arrived during eval/save
                    if stopped != "done":
                        break
                final_dir = self._finish(stopped)
        finally:
            self._progress.close()
            self._metrics.close()
        elapsed = time.perf_counter() - self._start
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

    def _log_config_changes(self) -> None:
        changes = getattr(self, "config_changes", None)
        if changes:
            self._metrics.log({"step": self.step, "tokens": self.tokens, "config_changed": changes})

    def _iteration(self) -> dict[str, Any] | None:
        """Schedule, one optimizer step, counters, the bad-loss rule, the metrics line."""
        lr = lr_at(self.step, self.cfg.train)
        set_lr(self.optimizer, lr)  # each group at lr x its lr_scale
        self._step_tokens = 0
        loss, norm = self.train_step()
        step_tokens = self.tokens_per_step if self.tokens_per_step is not None else self._step_tokens
        self.step += 1
        self.tokens += step_tokens
        self._throughput.add(step_tokens)
        self._check_loss(loss)
        return self._log_step(loss, norm, lr)

    def _check_loss(self, loss: float) -> None:
        if not math.isfinite(loss):
            self._skipped_in_a_row += 1
            on_bad_loss(loss, self._skipped_in_a_row, self.step, self.cfg.train, self.last_ckpt)
        else:
            self._skipped_in_a_row = 0

    def _log_step(self, loss: float, norm: float | None, lr: float) -> dict[str, Any] | None:
        if not (self.step % self.cfg.log.interval == 0 or self.step == self.cfg.train.max_steps):
            return None
        rate = self._throughput.rate()
        mfu = rate * self.flops_per_token / self.world_size / self.peak_flops if self.peak_flops else None
        record = {"step": self.step, "tokens": self.tokens, "loss": loss, "lr": lr,
                  "tokens_per_s": rate, "time_s": time.perf_counter() - self._start}  # fmt: skip
        epoch = self.loader.epoch if hasattr(self.task, "steps_per_epoch") else None  # fine-tuning epochs
        if epoch is not None:
            record["epoch"] = epoch
        if norm is not None:
            record["grad_norm"] = norm
        if mfu is not None:
            record["mfu"] = mfu
        self._metrics.log(record)
        self._progress.update(self.step, loss, lr, rate, mfu)
        return record

    def _should_stop(self, stop: _StopFlag) -> str:
        """"done" to go on; "time_budget" or the signal's name to stop (the same on every rank)."""
        t = self.cfg.train
        over_budget = t.time_budget_s is not None and time.perf_counter() - self._start >= t.time_budget_s
        over_budget = dist.sync_stop(stop, over_budget)  # all ranks stop at the same step
        if over_budget and self.step < t.max_steps:
            self._progress.write(f"time budget of {t.time_budget_s:g}s reached at step {self.step}")
            return "time_budget"
        return signal.Signals(stop.signum).name if stop.signum is not None else "done"

    def _stopped_by_signal(self, stop: _StopFlag) -> str:
        dist.sync_stop(stop)
        return signal.Signals(stop.signum).name if stop.signum is not None else "done"

    def _periodic_eval_and_save(self) -> None:
        """Evaluate and checkpoint at their intervals (the clock paused meanwhile).

        Keep-best needs an evaluation of the checkpointed weights: a checkpoint step that is
        not an eval step evaluates too, so the best is found whatever the two intervals are.
        """
        t = self.cfg.train
        paused = self._throughput.pause()
        at_eval = bool(t.eval_interval) and self.step % t.eval_interval == 0 and self.step < t.max_steps
        at_ckpt = bool(t.ckpt_interval) and self.step % t.ckpt_interval == 0 and self.step < t.max_steps
        if at_eval or (at_ckpt and self.last_eval_step != self.step):
            self._eval_and_log()
        if at_ckpt:
            self.save_checkpoint()
        self._throughput.resume(paused)

    def _finish(self, stopped: str) -> Path | None:
        """The end of the run: a last eval, checkpoint and final/ when done; a checkpoint when stopped."""
        if stopped in ("done", "time_budget"):
            if self.last_eval_step != self.step:
                self._eval_and_log()
            if self.last_ckpt_step != self.step:
                self.save_checkpoint()
            return self.save_final()
        if self.last_ckpt_step != self.step:
            self.save_checkpoint()
        return None

    def _eval_and_log(self) -> None:
        losses = self.evaluate()
        record = {"step": self.step, "tokens": self.tokens,
                  "train_loss": losses.get("train"), "val_loss": losses.get("val")}
        epoch = self.loader.epoch if hasattr(self.task, "steps_per_epoch") else None  # fine-tuning epochs
        if epoch is not None:
            record["epoch"] = epoch
        self._metrics.log(record)
        shown = ", ".join(f"{k} loss {v:.4f}" for k, v in losses.items())
        self._progress.write(f"step {self.step}: {shown}")
        for hook in self.hooks:
            hook.on_eval(self, record)


def _pretrain_task_type() -> type:
    from gptforge.train.tasks import PretrainTask

    return PretrainTask


def train(
    cfg: RunConfig, run_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
    hooks: list[TrainHooks] | tuple[TrainHooks, ...] = (), task: Any = None,
    resume_from: str | Path | None = None,
) -> TrainResult:
    """Train (or, with ``resume``, continue) the run in ``run_dir``.

    Args:
        task: what to train on (default: pretraining on ``cfg.data.dir``; see gptforge.train.tasks).
        resume_from: a checkpoint folder to continue from (``RUN/checkpoints/step_N``).

    Raises:
        GptforgeError subclasses for user-fixable problems: an existing run dir,
        a missing or incompatible dataset, a corrupt run, a non-finite loss, OOM.
    """
    device = plan_device(cfg.train.device, cfg.train.precision, dist.local_rank()).device
    with dist.process_group(device):  # left whatever happens, a constructor error included
        trainer = Trainer(cfg, run_dir, resume=resume or resume_from is not None, overwrite=overwrite,
                          hooks=hooks, task=task, resume_from=resume_from)  # fmt: skip
        try:
            result = trainer.run()
            dist.barrier()  # the other ranks wait while rank 0 writes final/
        except BaseException:
            if trainer.replaced is not None:  # failed before its first checkpoint: nothing was overwritten
                restore_replaced(trainer.run_dir, trainer.replaced)
            raise
        trainer.result = result
        return result


__all__ = ["TrainHooks", "TrainResult", "TrainState", "Trainer", "TrainingError", "optimizer_step", "train"]
