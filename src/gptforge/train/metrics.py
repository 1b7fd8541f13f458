"""Where a run's numbers go: ``metrics.jsonl`` (always), optional sinks, and the live progress line.

A *sink* is any object with ``log(record: dict) -> None`` and ``close() -> None``;
TensorBoard and W&B sinks plug in through :data:`SINK_FACTORIES` (each a
function ``(log_cfg, run_dir) -> sink | None``) without the loop knowing about
them. Only rank 0 builds a :class:`MetricsLogger` that writes anything.

Records: train lines ``{"step", "tokens", "loss", "lr", "tokens_per_s", ["mfu"], "time_s"}``,
eval lines ``{"step", "tokens", "train_loss", "val_loss"}``.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from gptforge.io import json_line

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


class Sink(Protocol):
    def log(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


# Factories for optional sinks: (log_cfg, run_dir) -> Sink | None. Appended to by sink modules.
SINK_FACTORIES: list[Callable[[Any, Path], Sink | None]] = []


class JsonlSink:
    """One JSON object per line, flushed per record, so a crash loses nothing already logged."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def log(self, record: dict[str, Any]) -> None:
        self._f.write(json_line(record) + "\n")  # NaN/inf as null + "not_finite": strict JSON
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def truncate_metrics(path: Path, after_step: int) -> int:
    """Drop lines with ``step > after_step`` (a resume replays those steps). Returns lines dropped."""
    if not path.is_file():
        return 0
    from gptforge.io import atomic_write_bytes

    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            step = json.loads(line).get("step", 0)
        except json.JSONDecodeError:
            dropped += 1  # a line cut by a crash
            continue
        if step > after_step:
            dropped += 1
        else:
            kept.append(line)
    if dropped:
        atomic_write_bytes(path, "".join(k + "\n" for k in kept).encode())
    return dropped


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (malformed lines skipped)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


class MetricsLogger:
    """Fans a record out to ``metrics.jsonl`` and every configured sink (rank 0 only)."""

    def __init__(self, run_dir: Path | None, log_cfg: Any = None) -> None:
        self.sinks: list[Sink] = []
        if run_dir is not None:
            self.sinks.append(JsonlSink(Path(run_dir) / METRICS_FILE))
            for factory in SINK_FACTORIES:
                sink = factory(log_cfg, Path(run_dir))
                if sink is not None:
                    self.sinks.append(sink)

    def log(self, record: dict[str, Any]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) and k != "loss" else v)
                 for k, v in record.items()}
        for sink in self.sinks:
            sink.log(clean)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def format_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """The live line on stderr: ``step 120/2000 | loss 2.31 | lr 9.9e-04 | 18.2k tok/s | mfu 3.1% | eta 01:43``."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total, initial=initial, file=sys.stderr, dynamic_ncols=True, unit="step",
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]",
                mininterval=0.5,
            )
        self._last = initial

    def update(self, step: int, loss: float, lr: float, tokens_per_s: float, mfu: float | None) -> None:
        if self.bar is None:
            return
        parts = [f"loss {loss:.4f}", f"lr {lr:.2e}", f"{tokens_per_s / 1000:.1f}k tok/s"]
        if mfu is not None:
            parts.append(f"mfu {100 * mfu:.1f}%")
        self.bar.set_postfix_str(" | ".join(parts), refresh=False)
        self.bar.update(step - self._last)
        self._last = step

    def write(self, message: str) -> None:
        """A line above the bar (eval results), or plain stderr without a bar."""
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            logger.info(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Throughput:
    """Tokens per second over the steps since the last report (eval time excluded by the caller)."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.tokens = 0

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    def rate(self) -> float:
        dt = time.perf_counter() - self.t0
        r = self.tokens / dt if dt > 0 else 0.0
        self.t0, self.tokens = time.perf_counter(), 0
        return r

    def pause(self) -> float:
        """Start of a pause (eval, checkpoint): returns the time to pass to :meth:`resume`."""
        return time.perf_counter()

    def resume(self, paused_at: float) -> None:
        self.t0 += time.perf_counter() - paused_at
