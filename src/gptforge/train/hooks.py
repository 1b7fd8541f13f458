"""What a caller sees of the training loop: its callbacks, its result and its stop signal.

:func:`gptforge.train.loop.train` takes :class:`TrainHooks` and returns a :class:`TrainResult`;
:class:`_StopFlag` turns Ctrl-C / SIGTERM into a clean stop (exit code from :data:`EXIT_CODES`). They live apart
from the loop so that code plugging into it (diagnostics, fine-tuning, tests) can import
them without the loop, and so that loop.py holds the loop itself.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class TrainHooks:
    """Callbacks into the loop; override what you need (every method is a no-op here).

    ``trainer`` is the :class:`~gptforge.train.loop.Trainer` that calls the hook (typed
    ``Any`` because this module sits below the loop and does not import it).
    """

    def on_start(self, trainer: Any) -> None: ...

    def after_backward(self, trainer: Any) -> None:
        """Gradients of the step are in ``.grad`` (unclipped; unscaled unless fp16)."""

    def on_step_end(self, trainer: Any, record: dict[str, Any] | None) -> None:
        """After each optimizer step; ``record`` is the metrics line when one was logged."""

    def on_eval(self, trainer: Any, record: dict[str, Any]) -> None: ...

    def on_end(self, trainer: Any, result: TrainResult) -> None: ...


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

