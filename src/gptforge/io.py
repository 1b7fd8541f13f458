"""File helpers shared by every part of gptforge: JSON/YAML/safetensors, atomic
writes, format versions, the data cache, and refusing pickles.

Why atomic writes everywhere: a user who presses Ctrl-C (or whose machine dies)
in the middle of a save must never find a half-written file that looks
complete. We write to a temporary name in the same folder and ``os.replace`` it
into place, which is atomic on POSIX filesystems.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gptforge.errors import CheckpointError, GptforgeError, UnsafeFileError

FORMAT_VERSION = 1  # bump when an on-disk schema changes; readers upgrade older ones


def data_dir() -> Path:
    """The data cache: ``$GPTFORGE_DATA_DIR``, else ``~/.cache/gptforge``.

    Read at call time (never at import), so tests can point it elsewhere.
    """
    env = os.environ.get("GPTFORGE_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gptforge"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so large files cost no memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def find_bad_file(folder: Path, digests: dict[str, str]) -> tuple[Path, str] | None:
    """The first file named in ``digests`` (name -> sha256) that is ``"missing"`` from
    ``folder`` or ``"corrupt"`` (another sha256), as ``(path, problem)``; None if all match.

    Checkpoints record their files' sha256 when written, so bit rot or a half-copied
    folder is caught on load and named, instead of surfacing as a shape or decode error.
    """
    for name, digest in digests.items():
        path = folder / name
        if not path.is_file():
            return path, "missing"
        if sha256_file(path) != digest:
            return path, "corrupt"
    return None


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_tree(folder: Path) -> None:
    """fsync every file under ``folder``, then each folder (deepest first).

    Files written with plain ``open``/``torch.save``/``ndarray.tofile`` into an
    :func:`atomic_dir` (dataset shards, optimizer state) reach the disk only when the kernel
    decides; after a power cut the renamed folder could hold empty or short files that look
    complete. Called before the rename, so a visible folder's contents are on disk.
    """
    dirs = []
    for root, _, files in os.walk(folder):
        dirs.append(Path(root))
        for name in files:
            fd = os.open(Path(root) / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for d in reversed(dirs):
        _fsync_dir(d)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{_temp_tag()}-", dir=path.parent)  # see sweep_leftovers
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented UTF-8 JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode())


def json_line(record: dict[str, Any]) -> str:
    """``record`` as one line of strict JSON, for ``metrics.jsonl``-style logs.

    ``json.dumps`` writes NaN and infinities as bare ``NaN``/``Infinity``, which is not JSON
    (jq, pandas and most readers reject the whole file). Such a value is written as ``null``
    and the fact kept in ``"not_finite"``: ``{"loss": "nan", "layers.3.grad": "inf"}``
    (dotted paths into nested objects).

    Example: ``{"step": 2, "loss": nan}`` -> ``{"step": 2, "loss": null, "not_finite": {"loss": "nan"}}``
    """
    bad: dict[str, str] = {}

    def clean(value: Any, path: str) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            bad[path] = "nan" if value != value else ("inf" if value > 0 else "-inf")
            return None
        if isinstance(value, dict):
            return {k: clean(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v, f"{path}.{i}") for i, v in enumerate(value)]
        return value

    out = clean(record, "")
    if bad:
        out["not_finite"] = bad
    return json.dumps(out, allow_nan=False)


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Read a JSON file, turning a missing or malformed file into a clear error."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise GptforgeError(f"{what} not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GptforgeError(f"{what} {path} is not valid JSON ({e}); re-create it") from None


def write_yaml(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as YAML (keys in insertion order)."""
    import yaml

    atomic_write_bytes(path, yaml.safe_dump(obj, sort_keys=False).encode())


def read_yaml(path: str | os.PathLike, what: str = "YAML file") -> Any:
    """Read a YAML file with ``safe_load`` (never constructs arbitrary objects)."""
    import yaml

    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except FileNotFoundError:
        raise GptforgeError(f"{what} not found: {path}") from None
    except yaml.YAMLError as e:
        raise GptforgeError(f"{what} {path} is not valid YAML: {e}") from None


def check_format_version(obj: dict, path: str | os.PathLike, what: str) -> dict:
    """Check the ``format_version`` field of a loaded JSON object.

    Files without a version are treated as version 1 (the first format). A file
    from a newer gptforge is refused with a hint to upgrade.
    """
    version = obj.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise GptforgeError(
            f"{what} {path} has format_version {version!r}, but this gptforge reads up to "
            f"{FORMAT_VERSION}; upgrade gptforge"
        )
    return obj


def _temp_tag() -> str:
    """``HOST-PID``, in the names of this process's temporary folders: a later process can
    then tell the leftovers of a killed one (same host, process gone) from live work."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def sweep_leftovers(folder: Path) -> list[Path]:
    """Remove the temporary folders that killed processes on this host left in ``folder``.

    :func:`atomic_dir` names them ``.NAME.tmp-HOST-PID-XXXX`` (and ``.NAME.old-HOST-PID-``
    while swapping), :func:`atomic_write_bytes` its temporary files the same way; a SIGKILL
    gives no chance to remove them. Only entries of this host
    whose process is gone are removed (a folder on a shared disk may hold another host's
    live work). Returns what was removed.
    """
    pattern = re.compile(rf"^\..+\.(?:tmp|old)-{re.escape(socket.gethostname())}-(\d+)-")
    removed = []
    with contextlib.suppress(OSError):
        for entry in folder.iterdir():
            m = pattern.match(entry.name)
            if m and not _pid_alive(int(m.group(1))):
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed.append(entry)
    return removed


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name and rename it to ``final`` when complete.

    Usage::

        with atomic_dir(out) as tmp:
            write files into tmp
        # now `out` exists and is complete

    If the block raises, ``final`` is untouched and the temporary folder is removed. If
    the process is killed, the folder (``.final.tmp-HOST-PID-XXXX``) stays until the next
    ``atomic_dir`` in the same parent folder sweeps it (:func:`sweep_leftovers`).
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise GptforgeError(f"output {final} already exists; pass --overwrite or choose another path")
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(final.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{_temp_tag()}-", dir=final.parent))
    try:
        yield tmp
        fsync_tree(tmp)  # the rename must not become visible before the data it names
        if final.exists():
            trash = final.with_name(f".{final.name}.old-{_temp_tag()}-")
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --overwrite: one rule and one help text for every command that writes an output.
OVERWRITE_HELP = (
    "replace --out if it exists, but only an empty folder or a gptforge output (a run, dataset, "
    "model, tokenizer or export); anything else is refused. The old output is removed only once "
    "the new one is written (train: at its first checkpoint)"
)
_MODEL_KIND, _DATASET_KIND = "gptforge-model", "gptforge-dataset"  # model/loading.py, data/shards.py


def _json_object(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def gptforge_output_kind(path: str | os.PathLike) -> str | None:
    """What gptforge output ``path`` is, or None when it is not recognisably one.

    A folder is recognised by the file that each command writes with a signature in it: a
    run's ``config.yaml`` (``model`` and ``train`` sections), a dataset's ``meta.json`` and a
    model dir's ``config.json`` (their ``kind``), a fine-tuning run's ``results.json`` next to
    ``final/``, a tokenizer dir's ``tokenizer.json`` (``kind`` and ``format_version``), an
    export's Hugging Face GPT-2 ``config.json`` next to ``model.safetensors``. Our own
    temporary leftovers (``.NAME.tmp-...``) do not count as content.
    """
    path = Path(path)
    if path.is_file():  # tokenizer train --out DIR replaces DIR/tokenizer.json only
        obj = _json_object(path) if path.suffix == ".json" else {}
        return "gptforge tokenizer file" if {"kind", "format_version"} <= obj.keys() else None
    if not path.is_dir():
        return None
    names = {e.name for e in path.iterdir()} - {e.name for e in _our_temporaries(path)}
    if not names:
        return "empty folder"
    if "config.yaml" in names:
        with contextlib.suppress(GptforgeError):
            cfg = read_yaml(path / "config.yaml")
            if isinstance(cfg, dict) and {"model", "train"} <= cfg.keys():
                return "gptforge run dir"
    if "meta.json" in names and _json_object(path / "meta.json").get("kind") == _DATASET_KIND:
        return "gptforge dataset"
    config = _json_object(path / "config.json") if "config.json" in names else {}
    if config.get("kind") == _MODEL_KIND:
        return "gptforge model dir"
    if "results.json" in names and "final" in names and "task" in _json_object(path / "results.json"):
        return "gptforge fine-tuning run"
    if "tokenizer.json" in names and {"kind", "format_version"} <= _json_object(path / "tokenizer.json").keys():
        return "gptforge tokenizer dir"
    if config.get("model_type") == "gpt2" and "model.safetensors" in names:
        return "Hugging Face GPT-2 folder"
    return None


def _our_temporaries(folder: Path) -> list[Path]:
    pattern = re.compile(r"^\..+\.(?:tmp|old)-")
    return [e for e in folder.iterdir() if pattern.match(e.name)]


def check_replaceable(path: str | os.PathLike, protect: tuple[str | os.PathLike | None, ...] = ()) -> str | None:
    """``--overwrite``'s rule, the same for every command: may ``path`` be replaced?

    Returns None when ``path`` does not exist, else what it is (:func:`gptforge_output_kind`).
    Refused: anything not recognisably a gptforge output (``--out ~/thesis --overwrite``
    must never delete a thesis), the current folder or a folder above it, the home folder,
    and a folder holding one of ``protect`` (e.g. the dataset a run reads).

    Raises:
        GptforgeError: one line naming the folder and what is in it.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return None
    real = path.resolve()
    hint = "remove it yourself, or choose another --out"
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    if real == cwd or real in cwd.parents or real == home or real == Path(real.anchor):
        which = "the current folder" if real == cwd else "the home folder" if real == home else "above the current folder"
        raise GptforgeError(f"refusing to --overwrite {path}: it is {which}; choose another --out")
    for p in protect:
        if p is None:  # an input a task does not have (fine-tuning has no dataset dir)
            continue
        p = Path(p).resolve()
        if p == real or real in p.parents:
            raise GptforgeError(f"refusing to --overwrite {path}: it holds {p}, which this command reads; {hint}")
    kind = gptforge_output_kind(path)
    if kind is None:
        if path.is_dir():
            names = sorted(e.name + ("/" if e.is_dir() else "") for e in path.iterdir())
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            what = f"it is not a gptforge output (it holds {shown})"
        else:
            what = "it is a file that gptforge did not write"
        raise GptforgeError(f"refusing to --overwrite {path}: {what}; {hint}")
    return kind


def move_aside(path: Path) -> Path:
    """Rename ``path`` to a hidden sibling (``.NAME.replaced-PID-XXXX``) and return it: the old
    output stays until the new one is complete (:func:`check_replaceable` decided it may go).
    The name is not one :func:`sweep_leftovers` removes, so an interrupted run loses nothing."""
    aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.replaced-{os.getpid()}-", dir=path.parent))
    aside.rmdir()
    os.replace(path, aside)
    _fsync_dir(path.parent)
    return aside


def save_safetensors(tensors: dict, path: str | os.PathLike, metadata: dict | None = None) -> None:
    """Atomically save a dict of tensors as safetensors (contiguous copies, string metadata)."""
    from safetensors.torch import save

    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    atomic_write_bytes(path, save(clean, metadata=meta))


def load_safetensors(path: str | os.PathLike, device: str = "cpu") -> dict:
    """Load a safetensors file into a dict of tensors, with a clear error when it is bad."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise GptforgeError(f"weights file not found: {path}")
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: {e}; the file is corrupt or not safetensors") from None


def torch_load_safe(path: str | os.PathLike, map_location: str = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True``: a file that needs code to load is refused.

    Pickles can run arbitrary code when loaded; ``weights_only`` restricts the
    unpickler to tensors and plain containers, so a planted payload raises
    instead of executing.
    """
    import pickle

    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise GptforgeError(f"file not found: {path}") from None
    except (pickle.UnpicklingError, AttributeError, RuntimeError, EOFError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsafeFileError(
            f"refused to load {path}: it is not a plain tensor file ({first}); "
            "gptforge never runs code from files; convert it to safetensors"
        ) from None
