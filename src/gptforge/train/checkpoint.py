"""Checkpoints that a crash cannot half-write, and an exact resume from them.

Layout of one checkpoint, ``RUN/checkpoints/step_NNNNNNN/``::

    config.json, model.safetensors, tokenizer.json   a loadable model dir (gptforge.load_model)
    optimizer.pt        the AdamW state dict (tensors + plain types; loads with weights_only=True)
    state.json          step, tokens seen, data-loader position, every RNG state, best val
                        loss, and the sha256 of every other file (written last)

How a save stays atomic: the folder is built under a temporary name and
renamed into place when complete (``io.atomic_dir``); only then is
``RUN/latest`` rewritten (atomically) to name it. A crash at any moment leaves
``latest`` naming a complete checkpoint. On resume each file is checked against
its checksum; a corrupt checkpoint is reported by name and the previous one
used instead.
"""

from __future__ import annotations

import base64
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gptforge.errors import CheckpointError, GptforgeError
from gptforge.io import (
    FORMAT_VERSION,
    atomic_dir,
    atomic_write_bytes,
    check_format_version,
    find_bad_file,
    load_safetensors,
    read_json,
    sha256_file,
    torch_load_safe,
    write_json,
)
from gptforge.model.loading import fill_tied, save_model, strip_wrapper_prefixes, unwrap_model

logger = logging.getLogger(__name__)

CKPT_RE = re.compile(r"^step_(\d+)$")
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.pt"


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


# ---------------------------------------------------------------- RNG states (JSON-able)


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def get_rng_state() -> dict[str, Any]:
    """Every RNG a run draws from: Python, NumPy, torch CPU and each CUDA device."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = [_unb64(s) for s in state["cuda"]]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            logger.warning(
                "checkpoint has CUDA RNG states for %d devices, this machine has %d; CUDA RNG not restored",
                len(cuda_states), torch.cuda.device_count(),
            )


def state_digest(state: dict[str, Any]) -> str:
    """sha256 of a state.json's content less its own ``state_sha256`` (canonical JSON)."""
    import hashlib
    import json

    body = {k: v for k, v in state.items() if k != "state_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, allow_nan=True).encode()).hexdigest()


# ---------------------------------------------------------------- saving


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete-looking checkpoint folders ``(step, path)``, oldest first (temp folders skipped)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = CKPT_RE.match(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p))
    return sorted(out)


def read_latest(run_dir: str | Path) -> str | None:
    """The checkpoint name that ``RUN/latest`` holds, or None."""
    latest = Path(run_dir) / "latest"
    if not latest.is_file():
        return None
    name = latest.read_text(encoding="utf-8").strip()
    return name or None


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    tokenizer: Any,
    state: dict[str, Any],
    extra_config: dict[str, Any] | None = None,
    keep_last: int = 2,
) -> Path:
    """Write ``RUN/checkpoints/step_NNNNNNN/`` atomically, point ``latest`` at it, prune old ones.

    Args:
        state: JSON-able training state (tokens, data position, best val loss...);
            the step, RNG states and checksums are added here.

    Returns:
        The checkpoint folder.
    """
    run_dir = Path(run_dir)
    name = checkpoint_name(step)
    final = run_dir / "checkpoints" / name
    try:
        with atomic_dir(final, overwrite=True) as tmp:
            save_model(unwrap_model(model), tmp, tokenizer=tokenizer, extra_config=extra_config)
            torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
            files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
            full = {"format_version": FORMAT_VERSION, "kind": "gptforge-checkpoint", "step": step, **state}
            full["rng"] = get_rng_state()
            full["files"] = files
            full["state_sha256"] = state_digest(full)  # state.json guards itself too
            write_json(tmp / STATE_FILE, full)
        atomic_write_bytes(run_dir / "latest", (name + "\n").encode())
    except OSError as e:  # disk full, quota, permissions: a user-fixable stop, not a traceback
        previous = read_latest(run_dir)
        kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
        raise CheckpointError(
            f"cannot write checkpoint {name} in {run_dir}: {e.strerror or e}; {kept}. "
            f"Free disk space (or fix permissions), then `gptforge train --resume {run_dir}`"
        ) from None
    prune_checkpoints(run_dir, keep_last)
    return final


def prune_checkpoints(run_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints, the best by val loss and ``latest``."""
    ckpts = list_checkpoints(run_dir)
    keep = {p for _, p in ckpts[-keep_last:]}
    latest = read_latest(run_dir)
    best: tuple[float, Path] | None = None
    for _, p in ckpts:
        try:
            val = read_json(p / STATE_FILE).get("val_loss")
        except GptforgeError:
            continue
        if isinstance(val, (int, float)) and np.isfinite(val) and (best is None or val < best[0]):
            best = (float(val), p)
    if best is not None:
        keep.add(best[1])
    removed = []
    for _, p in ckpts:
        if p in keep or p.name == latest:
            continue
        trash = p.with_name(f".{p.name}.trash-{os.getpid()}")
        os.replace(p, trash)  # out of sight first, so a crash never leaves half a checkpoint listed
        shutil.rmtree(trash, ignore_errors=True)
        removed.append(p)
    return removed


# ---------------------------------------------------------------- loading


def verify_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read ``state.json`` and check every file against its sha256.

    Raises:
        CheckpointError: naming the missing or corrupt file.
    """
    path = Path(path)
    try:
        state = read_json(path / STATE_FILE, what="checkpoint state")
    except GptforgeError as e:
        raise CheckpointError(str(e)) from None
    if not isinstance(state, dict) or "files" not in state or "step" not in state:
        raise CheckpointError(f"{path / STATE_FILE} is incomplete (no step or checksums)")
    check_format_version(state, path / STATE_FILE, "checkpoint state")
    if "state_sha256" in state and state["state_sha256"] != state_digest(state):
        raise CheckpointError(f"checkpoint file {path / STATE_FILE} is corrupt (its state_sha256 does not match)")
    bad = find_bad_file(path, state["files"])
    if bad is not None:
        file, problem = bad
        why = " (sha256 mismatch)" if problem == "corrupt" else ""
        raise CheckpointError(f"checkpoint file {file} is {problem}{why}")
    return state


def find_resume_checkpoint(run_dir: str | Path) -> tuple[Path, dict[str, Any]]:
    """The checkpoint to resume from: the one ``latest`` names, else the newest one that verifies.

    A corrupt checkpoint gets a warning naming the bad file, and the previous
    complete checkpoint is used.

    Raises:
        CheckpointError: when no checkpoint in the run verifies.
    """
    run_dir = Path(run_dir)
    ckpts = list_checkpoints(run_dir)
    latest = read_latest(run_dir)
    ordered = [p for _, p in reversed(ckpts)]
    if latest is not None:
        named = run_dir / "checkpoints" / latest
        ordered = [named] + [p for p in ordered if p != named]
    problems = []
    for p in ordered:
        try:
            state = verify_checkpoint(p)
        except CheckpointError as e:
            logger.warning("%s; falling back to the previous checkpoint", e)
            problems.append(str(e))
            continue
        return p, state
    if not ordered:
        raise CheckpointError(f"run {run_dir} has no checkpoints to resume from; start it again with --overwrite")
    raise CheckpointError(f"no complete checkpoint in {run_dir}: {'; '.join(problems)}")


def load_checkpoint_weights(path: str | Path, model: torch.nn.Module) -> None:
    """Load ``model.safetensors`` into ``model`` in place (the tied LM head is shared, not stored)."""
    model = unwrap_model(model)
    state = fill_tied(strip_wrapper_prefixes(load_safetensors(Path(path) / "model.safetensors")), model)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"weights in {path} do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    with torch.no_grad():
        for k, v in expected.items():
            v.copy_(state[k])


def load_optimizer_state(path: str | Path, optimizer: torch.optim.Optimizer) -> None:
    optimizer.load_state_dict(torch_load_safe(Path(path) / OPTIMIZER_FILE))
