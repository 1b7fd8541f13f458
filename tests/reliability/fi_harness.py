"""Run ``gptforge ARGS`` with a SIGKILL aimed at one moment of the job (fault injection).

Usage: ``python -m tests.reliability.fi_harness ARGS...`` with ``GPTFORGE_FI=POINT:N``:
the process kills itself with SIGKILL (no handler, no cleanup, exactly what a power
cut or the OOM killer does) the N-th time it reaches POINT. Without GPTFORGE_FI it
runs ``gptforge ARGS`` unchanged. Points (they wrap real functions, nothing is stubbed):

  step        after an optimizer step's backward and update, before the loop counts it
  eval        in the middle of an evaluation (after the first split's loss)
  ckpt_files  a checkpoint's model files written in its temp folder, state.json not yet
  ckpt_state  state.json written in the temp folder, the folder not yet renamed
  latest      the checkpoint folder renamed into place, ``latest`` not yet rewritten
  prune       ``latest`` rewritten, old checkpoints not yet pruned
  final       ``final/`` written in its temp folder, not yet renamed
  shard       (prepare) after the N-th shard/meta write inside the temp output folder
  ft_step     (finetune) after the N-th optimizer step of the fine-tuning loop
  ft_ckpt     (finetune) inside the N-th progress checkpoint: weights written, state.json not yet
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

_counts: dict[str, int] = {}


def _spec() -> tuple[str, int] | None:
    raw = os.environ.get("GPTFORGE_FI")
    if not raw:
        return None
    point, _, n = raw.partition(":")
    return point, int(n or 1)


def hit(point: str) -> None:
    """Count one arrival at ``point``; SIGKILL this process on the aimed one."""
    spec = _spec()
    if spec is None or spec[0] != point:
        return
    _counts[point] = _counts.get(point, 0) + 1
    if _counts[point] == spec[1]:
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def _after(fn: Callable, point: str) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        out = fn(*args, **kwargs)
        hit(point)
        return out

    return wrapper


def _before(fn: Callable, point: str) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        hit(point)
        return fn(*args, **kwargs)

    return wrapper


def install() -> None:
    """Wrap the functions the points name (imports stay lazy for commands that skip them)."""
    spec = _spec()
    if spec is None:
        return
    point = spec[0]
    if point in ("step", "eval", "ckpt_files", "ckpt_state", "latest", "prune", "final"):
        from gptforge.model import loading
        from gptforge.train import checkpoint, evaluate, loop

        loop.optimizer_step = _after(loop.optimizer_step, "step")
        original_eval = evaluate.estimate_loss

        def estimate_loss(
            model: Any, make: Any, splits: list[str], *args: Any, **kwargs: Any
        ) -> Any:
            first = original_eval(model, make, splits[:1], *args, **kwargs)
            hit("eval")
            return {**first, **original_eval(model, make, splits[1:], *args, **kwargs)}

        evaluate.estimate_loss = estimate_loss  # the pretraining task imports it at each evaluation
        checkpoint.save_model = _after(checkpoint.save_model, "ckpt_files")
        checkpoint.write_json = _after(checkpoint.write_json, "ckpt_state")
        checkpoint.atomic_write_bytes = _before(checkpoint.atomic_write_bytes, "latest")
        checkpoint.prune_checkpoints = _before(checkpoint.prune_checkpoints, "prune")
        loading.save_model = _after(
            loading.save_model, "final"
        )  # Trainer.save_final imports it late
    elif point == "shard":
        from gptforge.data import prepare

        prepare.write_json = _after(prepare.write_json, "shard")
        writer = prepare.ShardWriter
        for name in ("write", "add", "append", "close", "finish", "_flush", "_open_next"):
            if callable(getattr(writer, name, None)):
                setattr(writer, name, _after(getattr(writer, name), "shard"))
    elif point == "ft_step":
        import torch

        torch.optim.AdamW.step = _after(torch.optim.AdamW.step, "ft_step")
    elif point == "ft_ckpt":
        from gptforge.train import checkpoint

        # inside a checkpoint's writing: its model files are in the temporary folder, its state is not
        checkpoint.save_model = _after(checkpoint.save_model, "ft_ckpt")


if __name__ == "__main__":
    install()
    from gptforge.cli.main import main

    raise SystemExit(main(sys.argv[1:]))
