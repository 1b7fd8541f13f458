"""``loss.png``: train and val loss of a run against steps, with tokens on a second axis.

matplotlib is optional (``pip install 'gptforge[plot]'``) and imported only here.
"""

from __future__ import annotations

from pathlib import Path

from gptforge.errors import CheckpointError, GptforgeError
from gptforge.train.metrics import METRICS_FILE, read_metrics


def plot_losses(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw ``RUN/loss.png`` (or ``out``) from ``RUN/metrics.jsonl``; returns the image path.

    Raises:
        GptforgeError: matplotlib is missing, or the run has no metrics yet.
    """
    run_dir = Path(run_dir)
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir} has no {METRICS_FILE}; is it a run dir made by `gptforge train`?")
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise GptforgeError("plotting needs matplotlib; install it with: pip install 'gptforge[plot]'") from None
    records = read_metrics(path)
    train = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
    evals = [r for r in records if "val_loss" in r or "train_loss" in r]
    if not train and not evals:
        raise CheckpointError(f"{path} holds no loss values yet; train for a few steps first")
    out = Path(out) if out is not None else run_dir / "loss.png"
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    if train:
        ax.plot(*zip(*train), label="train loss (per step)", color="tab:blue", alpha=0.35, linewidth=1)
    for key, label, color in (("train_loss", "train loss (eval)", "tab:blue"), ("val_loss", "val loss", "tab:orange")):
        pts = [(r["step"], r[key]) for r in evals if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", markersize=3, label=label, color=color)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.set_title(f"{run_dir.name}")
    ax.grid(alpha=0.3)
    ax.legend()
    with_tokens = [r for r in records if r.get("step") and r.get("tokens")]
    if with_tokens:
        per_step = with_tokens[-1]["tokens"] / with_tokens[-1]["step"]
        top = ax.secondary_xaxis("top", functions=(lambda s: s * per_step, lambda t: t / per_step))
        top.set_xlabel("tokens")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def _timed_evals(records: list[dict]) -> list[tuple[float, float, float]]:
    """(seconds, tokens, val loss) of each evaluation; its time is that of the training
    line logged at the same (or the nearest earlier) step."""
    time_at, out, last = {}, [], 0.0
    for r in records:
        if r.get("time_s") is not None:
            time_at[r["step"]] = r["time_s"]
    for r in records:
        if r.get("val_loss") is None:
            continue
        earlier = [s for s in time_at if s <= r["step"]]
        last = time_at[max(earlier)] if earlier else 0.0
        out.append((last, r.get("tokens", 0), r["val_loss"]))
    return out


def overlay_series(run_dirs: list[str | Path], x: str = "time") -> dict[str, list[tuple[float, float]]]:
    """The (x, val loss) points of each run, keyed by its run dir's name (the legend label).

    Args:
        run_dirs: run dirs with a ``metrics.jsonl`` (a peer's log converted to one works too).
        x: ``time`` (seconds of training, from the ``time_s`` of the training lines),
            ``tokens`` or ``step``.

    Raises:
        CheckpointError: a run has no metrics.
    """
    series = {}
    for run in map(Path, run_dirs):
        path = run / METRICS_FILE
        if not path.is_file():
            raise CheckpointError(f"{run} has no {METRICS_FILE}; is it a run dir made by `gptforge train`?")
        records = read_metrics(path)
        if x == "step":
            series[run.name] = [(r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
        else:
            series[run.name] = [(t if x == "time" else n, v) for t, n, v in _timed_evals(records)]
    return series


def plot_overlay(run_dirs: list[str | Path], out: str | Path, x: str = "time") -> Path:
    """Val loss of several runs on one plot (see :func:`overlay_series`); returns the image path.

    Raises:
        GptforgeError: matplotlib is missing, a run has no metrics, or no run has val losses.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise GptforgeError("plotting needs matplotlib; install it with: pip install 'gptforge[plot]'") from None
    series = {name: pts for name, pts in overlay_series(run_dirs, x).items() if pts}
    if not series:
        raise CheckpointError("none of the runs has val losses yet; train with an eval first")
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for name, pts in series.items():
        ax.plot(*zip(*pts), marker="o", markersize=3, label=name)
    ax.set_xlabel({"time": "training time (s)", "tokens": "tokens", "step": "step"}[x])
    ax.set_ylabel("val loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
