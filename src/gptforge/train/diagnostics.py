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

import logging
from pathlib import Path
from typing import Any

import torch

from gptforge.io import json_line
from gptforge.train.hooks import TrainHooks

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
        if getattr(trainer, "distributed", "none") == "fsdp":  # sharded tensors: stats would need every rank
            logger.warning("diagnostics are not recorded under FSDP; use DDP or a single process for them")
            self.interval, self.steps = 0, set()
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
            f.write(json_line(record) + "\n")  # NaN/inf as null + "not_finite"

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


def _hist_line(ax: Any, stats: dict[str, Any], label: str) -> None:
    h = stats["hist"]
    n = len(h["counts"])
    width = (h["hi"] - h["lo"]) / n
    centers = [h["lo"] + (i + 0.5) * width for i in range(n)]
    ax.plot(centers, h["counts"], label=label)


def plot_diagnostics(run_dir: str | Path) -> list[Path]:
    """Draw ``RUN/diagnostics_{activations,gradients,updates}.png`` from ``RUN/diagnostics.jsonl``.

    Histograms are those of the last recorded step (one line per layer, as in
    makemore part 3); the update/param ratios are drawn against the step, on a
    log scale with the 1e-3 rule-of-thumb line. Returns the images written ([]
    when the run recorded no diagnostics).

    Raises:
        GptforgeError: matplotlib is missing.
    """
    from gptforge.errors import GptforgeError

    records = read_diagnostics(run_dir)
    if not records:
        return []
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise GptforgeError("plotting needs matplotlib; install it with: pip install 'gptforge[plot]'") from None
    run_dir = Path(run_dir)
    last = records[-1]
    written = []

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5), dpi=110)
    for name, st in last.get("activations", {}).items():
        _hist_line(axes[0], st, f"{name} (mean {st['mean']:+.2f}, std {st['std']:.2f})")
    axes[0].set_title(f"block outputs, step {last['step']}")
    for name, st in last.get("mlp", {}).items():
        _hist_line(axes[1], st, f"{name} (std {st['std']:.2f}, dead {st['dead_pct']:.1f}%)")
    axes[1].set_title(f"MLP activations, step {last['step']}")
    axes[1].set_yscale("log")
    layers = sorted({k for r in records for k in r.get("mlp", {})})
    for name in layers:
        pts = [(r["step"], r["mlp"][name]["dead_pct"]) for r in records if name in r.get("mlp", {})]
        axes[2].plot(*zip(*pts), marker="o", label=f"{name} dead %")
        pts = [(r["step"], r["mlp"][name]["near_zero_pct"]) for r in records if name in r.get("mlp", {})]
        axes[2].plot(*zip(*pts), linestyle="--", label=f"{name} near-zero %")
    axes[2].set_title("dead MLP units (solid) and near-zero outputs (dashed), %")
    axes[2].set_xlabel("step")
    for ax in axes:
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    written.append(run_dir / "diagnostics_activations.png")
    fig.savefig(written[-1])
    plt.close(fig)

    grads = {k: v for k, v in last.get("gradients", {}).items() if k.endswith(".weight")}
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.5), dpi=110)
    for name, st in grads.items():
        if ".h." in name and (name.endswith("c_fc.weight") or name.endswith("c_attn.weight")):
            _hist_line(axes[0], st, f"{name} (std {st['std']:.1e})")
    axes[0].set_title(f"gradient histograms (weights), step {last['step']}")
    axes[0].legend(fontsize=6)
    names = list(grads)
    axes[1].barh(range(len(names)), [grads[n]["norm"] for n in names])
    axes[1].set_yticks(range(len(names)), names, fontsize=5)
    axes[1].set_xscale("log")
    axes[1].set_title("gradient norm per weight")
    fig.tight_layout()
    written.append(run_dir / "diagnostics_gradients.png")
    fig.savefig(written[-1])
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 5), dpi=110)
    params = sorted({k for r in records for k, v in r.get("update_ratio", {}).items()
                     if v and k.endswith(".weight") and "ln" not in k})
    for name in params:
        pts = [(r["step"], r["update_ratio"][name]) for r in records if r.get("update_ratio", {}).get(name)]
        if pts:
            ax.plot(*zip(*pts), marker=".", label=name)
    ax.axhline(1e-3, color="k", linestyle="--", linewidth=1, label="1e-3")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("||update|| / ||param||")
    ax.set_title("update / parameter ratio")
    ax.legend(fontsize=5, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    written.append(run_dir / "diagnostics_updates.png")
    fig.savefig(written[-1])
    plt.close(fig)
    return written


def diagnostics_hooks(log_cfg: Any, run_dir: str | Path, is_main: bool = True) -> list[TrainHooks]:
    """The loop's diagnostics hook when ``log.diagnostics_interval``/``diagnostics_steps`` ask for one (rank 0)."""
    interval = getattr(log_cfg, "diagnostics_interval", 0) or 0
    steps = list(getattr(log_cfg, "diagnostics_steps", None) or [])
    if not is_main or (interval <= 0 and not steps):
        return []
    return [Diagnostics(run_dir, interval, steps)]


__all__ = [
    "DIAGNOSTICS_FILE", "Diagnostics", "diagnostics_hooks", "plot_diagnostics", "read_diagnostics", "tensor_stats",
    "unit_stats",
]
