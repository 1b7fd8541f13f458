"""Appending token ids to rolling shard files, one writer per split.

Used by ``prepare``: ids arrive in arbitrary pieces, are appended to
``{split}_{NNN}.bin`` and a new file is started every ``shard_size`` tokens, so
memory never holds more than one piece.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from gptforge.data.shards import DTYPES, shard_name


class ShardWriter:
    """Writes one split's ids as little-endian shards of at most ``shard_size`` tokens.

    Args:
        folder: where the shard files go.
        split: the split name (file prefix).
        dtype: ``"uint16"`` or ``"uint32"``.
        shard_size: tokens per file before the next one is started.
    """

    def __init__(self, folder: Path, split: str, dtype: str, shard_size: int) -> None:
        self.folder, self.split, self.shard_size = Path(folder), split, int(shard_size)
        self.dtype = DTYPES[dtype]
        self.shards: list[dict[str, Any]] = []  # [{"file": name, "tokens": n}]
        self.tokens = 0
        self.documents = 0
        self._file: io.BufferedWriter | None = None

    def _open_next(self) -> None:
        self.close()
        name = shard_name(self.split, len(self.shards))
        self._file = open(self.folder / name, "wb", buffering=1 << 20)  # noqa: SIM115 - closed in close()
        self.shards.append({"file": name, "tokens": 0})

    def write(self, ids: np.ndarray) -> None:
        """Append ``ids`` (any integer dtype; values must fit ``dtype``)."""
        ids = np.asarray(ids)
        if ids.dtype != self.dtype:
            ids = ids.astype(self.dtype)
        pos = 0
        while pos < len(ids):
            if self._file is None or self.shards[-1]["tokens"] >= self.shard_size:
                self._open_next()
            room = self.shard_size - self.shards[-1]["tokens"]
            part = ids[pos : pos + room]
            assert self._file is not None
            self._file.write(part.tobytes())
            self.shards[-1]["tokens"] += len(part)
            self.tokens += len(part)
            pos += len(part)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def finish(self) -> dict[str, Any]:
        """Close the last file and return this split's ``meta.json`` entry.

        A split that received no ids still gets one empty shard file, so every
        split named in ``meta.json`` has at least one file.
        """
        if not self.shards:
            self._open_next()
        self.close()
        return {"tokens": self.tokens, "documents": self.documents, "shards": self.shards}
