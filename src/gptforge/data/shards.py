"""Dataset dirs: ``meta.json`` plus raw token shards, opened with ``np.memmap``.

A dataset dir (written by ``gptforge prepare``) holds::

    meta.json        what the shards are: tokenizer fingerprint, dtype, eot id,
                     token/document counts and shard files per split, sources
    tokenizer.json   the tokenizer that made the ids (training saves it with the model)
    train_000.bin    raw little-endian uint16 (vocab <= 65536) or uint32 token ids
    val_000.bin ...

Why raw files and memmaps (as nanoGPT and llm.c do): a 10 GB corpus is never read
into memory; the OS pages in only the windows a batch touches, and every DDP rank
shares the same page cache. Why ``meta.json`` next to them: a shard is just numbers,
so without the tokenizer fingerprint nothing would stop a model from training on
ids from a different vocabulary.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gptforge.errors import DataError, GptforgeError
from gptforge.io import FORMAT_VERSION, read_json

if TYPE_CHECKING:  # pragma: no cover
    from gptforge.tokenizer.base import Tokenizer

logger = logging.getLogger(__name__)

DATASET_KIND = "gptforge-dataset"
META_FILE = "meta.json"
TOKENIZER_FILE = "tokenizer.json"
SPLITS = ("train", "val", "test")
DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}


def dtype_for_vocab(vocab_size: int) -> str:
    """``"uint16"`` when every id fits in 16 bits (vocab <= 65,536), else ``"uint32"``.

    Raises:
        DataError: the vocabulary is too large even for uint32.
    """
    if vocab_size <= 1 << 16:
        return "uint16"
    if vocab_size <= 1 << 32:
        return "uint32"
    raise DataError(
        f"vocabulary of {vocab_size:,} ids does not fit the shard format (at most 2**32 ids)"
    )


def shard_name(split: str, index: int) -> str:
    """``train_000.bin``, ``val_001.bin``, ... (more digits past 999)."""
    return f"{split}_{index:03d}.bin"


class TokenDataset:
    """A prepared dataset dir, validated on open.

    Attributes:
        path: the dataset dir.
        meta: the parsed ``meta.json``.
    """

    def __init__(self, path: str | os.PathLike, meta: dict[str, Any]) -> None:
        self.path = Path(path)
        self.meta = meta
        self._shards: dict[str, list[np.memmap]] = {}

    # -- what the ids are ------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def dtype(self) -> np.dtype:
        """The numpy dtype of the shards (little-endian uint16 or uint32)."""
        return DTYPES[self.meta["dtype"]]

    @property
    def eot_id(self) -> int | None:
        return self.meta.get("eot_id")

    @property
    def tokenizer_fingerprint(self) -> str:
        return str(self.meta["tokenizer_fingerprint"])

    @property
    def tokenizer_kind(self) -> str:
        return str(self.meta.get("tokenizer_kind", "?"))

    @property
    def splits(self) -> list[str]:
        """The splits this dataset has (``train`` always; ``val``/``test`` if prepared)."""
        return list(self.meta["splits"])

    def has_split(self, split: str) -> bool:
        return split in self.meta["splits"]

    def _split(self, split: str) -> dict[str, Any]:
        if split not in self.meta["splits"]:
            raise DataError(
                f"dataset {self.path} has no {split!r} split (it has {', '.join(self.splits)}); "
                f"prepare it with --{split}-fraction > 0"
                if split in ("val", "test")
                else f"dataset {self.path} has no {split!r} split (it has {', '.join(self.splits)})"
            )
        return self.meta["splits"][split]

    def num_tokens(self, split: str) -> int:
        """Total tokens in ``split`` (all shards)."""
        return int(self._split(split)["tokens"])

    def num_documents(self, split: str) -> int:
        return int(self._split(split).get("documents", 0))

    def shard_files(self, split: str) -> list[Path]:
        return [self.path / s["file"] for s in self._split(split)["shards"]]

    def shards(self, split: str) -> list[np.memmap]:
        """Read-only memmaps of the shards of ``split``, in order (opened once, then cached).

        Empty shards are left out (``np.memmap`` cannot map 0 bytes).
        """
        if split not in self._shards:
            maps = []
            for entry in self._split(split)["shards"]:
                n = int(entry["tokens"])
                if n > 0:
                    maps.append(
                        np.memmap(self.path / entry["file"], dtype=self.dtype, mode="r", shape=(n,))
                    )
            self._shards[split] = maps
        return self._shards[split]

    # -- the tokenizer -----------------------------------------------------------------
    def load_tokenizer(self) -> Tokenizer:
        """The tokenizer saved with the dataset (``tokenizer.json``)."""
        from gptforge.tokenizer import load_tokenizer

        path = self.path / TOKENIZER_FILE
        if not path.is_file():
            raise DataError(
                f"dataset {self.path} has no {TOKENIZER_FILE}; re-run `gptforge prepare`"
            )
        return load_tokenizer(str(path))

    def check_compatible(self, tokenizer_or_fingerprint: Tokenizer | str) -> None:
        """Refuse a model/tokenizer that would read these ids differently.

        Args:
            tokenizer_or_fingerprint: a Tokenizer, or its ``fingerprint()`` string.

        Raises:
            DataError: "dataset made with tokenizer X but model uses Y".
        """
        other = tokenizer_or_fingerprint
        if isinstance(other, str):
            fp, desc = other, other
        else:
            fp = other.fingerprint()
            desc = f"{other.kind} (vocab {other.vocab_size:,}, fingerprint {fp})"
        if fp != self.tokenizer_fingerprint:
            mine = f"{self.tokenizer_kind} (vocab {self.vocab_size:,}, fingerprint {self.tokenizer_fingerprint})"
            raise DataError(
                f"dataset {self.path} made with tokenizer {mine} but model uses {desc}; "
                "prepare the data again with the model's tokenizer (--tokenizer MODEL_DIR)"
            )

    def __repr__(self) -> str:
        counts = ", ".join(f"{s}={self.num_tokens(s):,}" for s in self.splits)
        return f"TokenDataset({str(self.path)!r}, {self.tokenizer_kind}, vocab={self.vocab_size}, {counts})"


def _bad(path: Path, problem: str) -> DataError:
    return DataError(
        f"{path / META_FILE}: {problem}; it is not a valid gptforge dataset, "
        "re-create it with `gptforge prepare --overwrite`"
    )


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def validate_meta(path: Path, meta: Any) -> dict[str, Any]:
    """Check the fields every reader relies on, with an error that names the file and the fix."""
    if not isinstance(meta, dict):
        raise _bad(path, "the top level is not a JSON object")
    version = meta.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise DataError(
            f"{path / META_FILE} has format_version {version!r}, but this gptforge reads up to "
            f"{FORMAT_VERSION}; upgrade gptforge"
        )
    for key in ("vocab_size", "dtype", "tokenizer_fingerprint", "splits"):
        if key not in meta:
            raise _bad(path, f"missing key {key!r}")
    if not isinstance(meta["dtype"], str) or meta["dtype"] not in DTYPES:
        raise _bad(path, f"dtype {meta['dtype']!r} is not one of {sorted(DTYPES)}")
    if not _is_count(meta["vocab_size"]) or meta["vocab_size"] <= 0:
        raise _bad(path, f"vocab_size {meta['vocab_size']!r} is not a positive integer")
    splits = meta["splits"]
    if not isinstance(splits, dict) or "train" not in splits:
        raise _bad(path, "'splits' must be an object with at least a 'train' entry")
    itemsize = DTYPES[meta["dtype"]].itemsize
    for split, info in splits.items():
        if not isinstance(info, dict) or not isinstance(info.get("shards"), list):
            raise _bad(path, f"split {split!r} has no 'shards' list")
        total = 0
        for entry in info["shards"]:
            if not isinstance(entry, dict) or "file" not in entry or "tokens" not in entry:
                raise _bad(path, f"split {split!r} has a shard entry without 'file' and 'tokens'")
            if not isinstance(entry["file"], str) or Path(entry["file"]).name != entry["file"] or not entry["file"]:
                raise _bad(path, f"split {split!r} shard file {entry['file']!r} is not a file name in the dataset dir")
            if not _is_count(entry["tokens"]):
                raise _bad(path, f"split {split!r} shard {entry['file']} has tokens {entry['tokens']!r}, not a count")
            f = path / entry["file"]
            if not f.is_file():
                raise DataError(
                    f"{path / META_FILE} lists shard {entry['file']} but {f} is missing; "
                    "the dataset is incomplete, re-create it with `gptforge prepare --overwrite`"
                )
            expected = int(entry["tokens"]) * itemsize
            actual = f.stat().st_size
            if actual != expected:
                raise DataError(
                    f"shard {f} has {actual:,} bytes but {path / META_FILE} says {entry['tokens']:,} "
                    f"{meta['dtype']} tokens ({expected:,} bytes); the file is truncated or was "
                    "changed, re-create the dataset with `gptforge prepare --overwrite`"
                )
            total += int(entry["tokens"])
        if not _is_count(info.get("tokens", total)) or int(info.get("tokens", total)) != total:
            raise _bad(
                path,
                f"split {split!r} says {info.get('tokens')} tokens but its shards hold {total}",
            )
        info["tokens"] = total
    return meta


def open_dataset(path: str | os.PathLike) -> TokenDataset:
    """Open and validate a dataset dir written by ``gptforge prepare``.

    Raises:
        DataError: the folder or ``meta.json`` is missing or invalid, or a shard is
            missing or has the wrong size (the message names the file and the fix).
    """
    path = Path(path)
    if not path.is_dir():
        raise DataError(
            f"dataset dir not found: {path}; create it with `gptforge prepare --out {path}`"
        )
    if not (path / META_FILE).is_file():
        raise DataError(
            f"{path} is not a gptforge dataset (no {META_FILE}); "
            f"create one with `gptforge prepare --input ... --tokenizer ... --out {path}`"
        )
    try:
        meta = read_json(path / META_FILE, what="dataset meta")
    except DataError:
        raise
    except GptforgeError as e:
        raise DataError(str(e)) from None
    return TokenDataset(path, validate_meta(path, meta))
