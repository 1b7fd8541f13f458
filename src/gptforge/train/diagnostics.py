"""Training diagnostics: what the activations, gradients and updates look like at chosen steps.

The health checks of Karpathy's "makemore part 3" lecture and the BPE-500 seed
project, recorded during real training (``log.diagnostics_interval N`` and/or
``log.diagnostics_steps 1,100,1000``). At a chosen step, for the first
micro-batch of that step (rank 0 only):

- **activations**: the output of every transformer block (the residual stream)
  and of every MLP non-linearity: mean, std and a histogram. A std that grows
  layer by layer, or collapses, shows a bad init or a missing norm.
- **dead units**: an MLP unit is *dead* when it outputs 0 for every token of the
  micro-batch (ReLU: its input was negative everywhere, so it gets no gradient).
  GELU never outputs exactly 0, so for it the figure is the share of outputs
  with ``|y| < NEAR_ZERO`` (also recorded for ReLU).
- **gradients**: per parameter, the gradient norm, mean, std and a histogram
  (after the all-reduce, before clipping, unscaled).
- **update/param ratio**: ``||p_after - p_before|| / ||p_before||`` per parameter
  for that step. About 1e-3 is healthy (Karpathy's rule of thumb); much larger
  means the learning rate is too high for that layer, much smaller that it learns little.

Each recorded step is one line of ``RUN/diagnostics.jsonl``; histograms are
JSON lists (``counts`` over ``bins`` equal-width bins between ``lo`` and
``hi``). ``gptforge plot RUN`` draws them into ``RUN/diagnostics_*.png``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from gptforge.train.loop import TrainHooks

logger = logging.getLogger(__name__)

DIAGNOSTICS_FILE = "diagnostics.jsonl"
BINS = 40
NEAR_ZERO = 1e-2  # |y| below this counts as "near zero" (a GELU unit that is nearly off)


def tensor_stats(x: torch.Tensor, bins: int = BINS) -> dict[str, Any]:
    """Mean, std, min, max and an equal-width histogram of all the elements of ``x``."""
    x = x.detach().float().flatten()
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:  # a constant tensor: one bin around it
        hi = lo + 1e-12
    counts = torch.histc(x, bins=bins, min=lo, max=hi)
    return {
        "mean": float(x.mean()), "std": float(x.std()) if x.numel() > 1 else 0.0,
        "min": lo, "max": hi, "hist": {"lo": lo, "hi": hi, "counts": [int(c) for c in counts.tolist()]},
    }


def unit_stats(y: torch.Tensor) -> dict[str, float]:
    """Dead units and near-zero share of an MLP activation ``y`` of shape (..., H).

    ``dead_pct``: percent of the H units that are exactly 0 on every token.
    ``near_zero_pct``: percent of all outputs with ``|y| < NEAR_ZERO``.
    """
    flat = y.detach().float().reshape(-1, y.shape[-1])  # (N, H)
    dead = (flat == 0).all(dim=0).float().mean()
    near = (flat.abs() < NEAR_ZERO).float().mean()
    return {"dead_pct": 100.0 * float(dead), "near_zero_pct": 100.0 * float(near)}


class Diagnostics(TrainHooks):
    """Records the statistics above at the steps :meth:`wanted` says; writes ``RUN/diagnostics.jsonl``."""

    def __init__(self, run_dir: str | Path, interval: int = 0, steps: list[int] | tuple[int, ...] = (),
                 bins: int = BINS) -> None:
        self.path = Path(run_dir) / DIAGNOSTICS_FILE
        self.interval, self.steps, self.bins = interval, set(steps), bins
        self._recording = False
        self._record: dict[str, Any] = {}
        self._before: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []
        self._model: torch.nn.Module | None = None

    def wanted(self, step: int) -> bool:
        """Whether step ``step`` (1-based: the step being computed) is recorded."""
        return step in self.steps or (self.interval > 0 and step % self.interval == 0)

    # ------------------------------------------------------------------ hooks into the loop
    def on_start(self, trainer: Any) -> None:
        from gptforge.model.loading import unwrap_model

        self._model = unwrap_model(trainer.model)
        self.attach(self._model)
        if trainer.step == 0 and self.path.exists():
            self.path.unlink()  # a fresh run (the run dir was just made): no stale lines
        elif trainer.step > 0:
            self._truncate(trainer.step)  # a resume re-runs the steps after the checkpoint
        self._arm(trainer.step + 1)

    def after_backward(self, trainer: Any) -> None:
        if not self._recording:
            return
        scale = float(trainer.scaler.get_scale()) if getattr(trainer, "scaler", None) is not None else 1.0
        grads = {}
        for name, p in self._named_params():
            if p.grad is not None:
                g = p.grad.detach() / scale
                stats = tensor_stats(g, self.bins)
                stats["norm"] = float(g.float().norm())
                grads[name] = stats
            self._before[name] = p.detach().clone()
        self._record["gradients"] = grads

    def on_step_end(self, trainer: Any, record: dict[str, Any] | None) -> None:
        if self._recording:
            ratios = {}
            for name, p in self._named_params():
                before = self._before.get(name)
                if before is None:
                    continue
                denom = float(before.float().norm())
                ratios[name] = float((p.detach() - before).float().norm()) / denom if denom > 0 else None
            self._record["update_ratio"] = ratios
            self._record["step"] = trainer.step
            self._record["lr"] = trainer.optimizer.param_groups[0]["lr"]
            self._write(self._record)
        self._arm(trainer.step + 1)

    def on_end(self, trainer: Any, result: Any) -> None:
        self.detach()

    # ------------------------------------------------------------------ the forward hooks
    def attach(self, model: torch.nn.Module) -> None:
        """Forward hooks on each block's output and each MLP non-linearity (they record only when armed)."""
        blocks = getattr(getattr(model, "transformer", None), "h", None)
        if blocks is None:
            logger.warning("diagnostics: the model has no transformer.h blocks; activations not recorded")
            return
        for i, block in enumerate(blocks):
            self._handles.append(block.register_forward_hook(self._make_hook(f"block.{i}", "activations")))
            act = getattr(getattr(block, "mlp", None), "act", None)
            if act is not None:
                self._handles.append(act.register_forward_hook(self._make_hook(f"block.{i}.mlp.act", "mlp")))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _make_hook(self, name: str, kind: str) -> Any:
        def hook(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
            # Training forwards only (evaluation runs in eval mode), and only the first micro-batch.
            if not self._recording or not module.training or name in self._record.setdefault(kind, {}):
                return
            stats = tensor_stats(output, self.bins)
            if kind == "mlp":
                stats.update(unit_stats(output))
            self._record[kind][name] = stats

        return hook

    # ------------------------------------------------------------------ helpers
    def _arm(self, step: int) -> None:
        self._recording = self.wanted(step)
        self._record, self._before = {}, {}

    def _named_params(self) -> list[tuple[str, torch.nn.Parameter]]:
        assert self._model is not None  # set in on_start
        return [(n, p) for n, p in self._model.named_parameters() if p.requires_grad]

    def _write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def _truncate(self, after_step: int) -> None:
        if self.path.is_file():
            from gptforge.train.metrics import truncate_metrics

            truncate_metrics(self.path, after_step)


def read_diagnostics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``RUN/diagnostics.jsonl`` ([] when the run recorded none)."""
    path = Path(run_dir) / DIAGNOSTICS_FILE
    if not path.is_file():
        return []
    from gptforge.train.metrics import read_metrics

    return read_metrics(path)


def diagnostics_hooks(log_cfg: Any, run_dir: str | Path, is_main: bool = True) -> list[TrainHooks]:
    """The loop's diagnostics hook when ``log.diagnostics_interval``/``diagnostics_steps`` ask for one (rank 0)."""
    interval = getattr(log_cfg, "diagnostics_interval", 0) or 0
    steps = list(getattr(log_cfg, "diagnostics_steps", None) or [])
    if not is_main or (interval <= 0 and not steps):
        return []
    return [Diagnostics(run_dir, interval, steps)]


__all__ = ["DIAGNOSTICS_FILE", "Diagnostics", "diagnostics_hooks", "read_diagnostics", "tensor_stats", "unit_stats"]
