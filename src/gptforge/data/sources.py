"""Where ``prepare``'s inputs come from: files, folders, registered datasets, Hugging Face.

An ``--input`` is resolved, in this order, as:

1. an existing file (``.jsonl`` -> one document per line, ``.parquet`` -> one per
   row, anything else -> the whole file is one document);
2. an existing folder (searched recursively; ``--glob`` picks the files, by
   default ``*.txt``, ``*.md``, ``*.text``, ``*.rst``, ``*.jsonl`` and ``*.parquet``);
3. ``hf:NAME[:CONFIG][:SPLIT]`` -> a Hugging Face dataset, streamed (needs the
   ``datasets`` package);
4. a registered dataset name (:data:`DATASETS`): the file is taken from the data
   cache (``$GPTFORGE_DATA_DIR``, default ``~/.cache/gptforge``), or downloaded
   from its canonical address and checked against its sha256.

To register another corpus, add one entry to :data:`DATASETS`.
"""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from gptforge.errors import DataError
from gptforge.io import atomic_write_bytes, data_dir, sha256_file

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegisteredDataset:
    """A named corpus: one file with a canonical address and a known sha256."""

    url: str
    sha256: str
    filename: str
    description: str = ""


# name -> where to get it. The hashes are those of the files at these addresses
# (tinyshakespeare: the file nanoGPT's shakespeare_char/prepare.py downloads).
DATASETS: dict[str, RegisteredDataset] = {
    "tinyshakespeare": RegisteredDataset(
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        filename="tinyshakespeare.txt",
        description="40,000 lines of Shakespeare (1.1 MB), char-rnn / nanoGPT",
    ),
    "the-verdict": RegisteredDataset(
        url="https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch02/01_main-chapter-code/the-verdict.txt",
        sha256="b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f",
        filename="the-verdict.txt",
        description='Edith Wharton\'s short story "The Verdict" (20 KB), LLMs-from-scratch ch. 2',
    ),
    # An evaluation task, not a corpus: read by `gptforge eval --task hellaswag`
    # (gptforge.evaluate.task_files), refused by prepare.
    "hellaswag": RegisteredDataset(
        url="https://raw.githubusercontent.com/klosax/hellaswag_text_data/"
        "1105d370f8340eac3c63a91fd1fa58e8999f9505/hellaswag_val_full.txt.bz2",
        sha256="50b637899e4263c2bc456c2dc726c95d2c8cd8e2a552ea5bd7719ce3cb03fe5b",
        filename="hellaswag_val.txt.bz2",
        description="the 10,042 HellaSwag validation tasks (Zellers et al., 2019) in llama.cpp's six-line text form",
    ),
}

# Registered datasets that are evaluation tasks: `prepare` refuses them.
TASK_DATASETS = ("hellaswag",)

TEXT_SUFFIXES = (".txt", ".md", ".text", ".rst")
DEFAULT_SUFFIXES = (*TEXT_SUFFIXES, ".jsonl", ".parquet")


def fetch_url(url: str, timeout: float = 60.0) -> bytes:
    """Download ``url`` (tests replace this function; they never touch the network)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - fixed https URLs
        return response.read()


def _where_to_put(name: str, entry: RegisteredDataset, target: Path) -> str:
    return (
        f"download {entry.url} yourself and save it as {target} "
        f"(or set GPTFORGE_DATA_DIR to a folder holding {entry.filename})"
    )


def resolve_registered(name: str) -> Path:
    """The local file of a registered dataset: from the data cache, else downloaded.

    The download is refused when ``$GPTFORGE_OFFLINE`` is set to ``1``.

    Raises:
        DataError: unknown name, a cached file with the wrong sha256, or no network
            (the message says where to put the file).
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; registered datasets: {', '.join(DATASETS)}")
    entry = DATASETS[name]
    target = data_dir() / entry.filename
    if target.is_file():
        digest = sha256_file(target)
        if digest != entry.sha256:
            raise DataError(
                f"{target} does not match the registered {name} (sha256 {digest[:12]}..., expected "
                f"{entry.sha256[:12]}...); delete it so it is downloaded again, or "
                + _where_to_put(name, entry, target)
            )
        return target
    if os.environ.get("GPTFORGE_OFFLINE", "") not in ("", "0"):
        raise DataError(
            f"dataset {name} is not in the data cache ({target} is missing) and GPTFORGE_OFFLINE is set; "
            + _where_to_put(name, entry, target)
        )
    logger.info("downloading %s from %s", name, entry.url)
    try:
        data = fetch_url(entry.url)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", None) or e
        raise DataError(
            f"dataset {name} is not in the data cache ({target} is missing) and downloading it failed "
            f"({reason}); " + _where_to_put(name, entry, target)
        ) from None
    import hashlib

    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.sha256:
        raise DataError(
            f"downloaded {entry.url} has sha256 {digest[:12]}..., expected {entry.sha256[:12]}...; "
            "the file at that address changed or the download was corrupted; "
            + _where_to_put(name, entry, target)
        )
    atomic_write_bytes(target, data)
    return target


@dataclass
class InputFile:
    """One local file to read: ``kind`` is ``text`` (one document), ``jsonl`` or ``parquet``."""

    path: Path
    kind: str
    size: int


@dataclass
class HFInput:
    """A Hugging Face dataset read in streaming mode."""

    name: str
    config: str | None
    split: str


@dataclass
class InputSpec:
    """One ``--input`` and what it resolved to."""

    arg: str
    kind: str  # file | folder | registered | hf
    path: Path | None = None
    files: list[InputFile] = field(default_factory=list)
    hf: HFInput | None = None


def file_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return "jsonl"
    if suffix == ".parquet":
        return "parquet"
    return "text"


def parse_hf(arg: str) -> HFInput:
    """``hf:NAME[:CONFIG][:SPLIT]`` -> HFInput (split defaults to ``train``).

    >>> parse_hf("hf:Skylion007/openwebtext")
    HFInput(name='Skylion007/openwebtext', config=None, split='train')
    >>> parse_hf("hf:wikitext:wikitext-103-raw-v1:validation")
    HFInput(name='wikitext', config='wikitext-103-raw-v1', split='validation')
    """
    parts = arg[3:].split(":")
    if not parts[0] or len(parts) > 3:
        raise DataError(f"bad Hugging Face input {arg!r}; expected hf:NAME[:CONFIG][:SPLIT]")
    config = parts[1] if len(parts) > 1 and parts[1] else None
    split = parts[2] if len(parts) > 2 and parts[2] else "train"
    return HFInput(parts[0], config, split)


def _folder_files(folder: Path, glob: str | None) -> list[InputFile]:
    pattern = glob or "*"
    out = []
    for p in sorted(folder.rglob(pattern)):
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        if glob is None and p.suffix.lower() not in DEFAULT_SUFFIXES:
            continue
        out.append(InputFile(p, file_kind(p), p.stat().st_size))
    if not out:
        what = (
            f"matching {glob!r}" if glob else f"with a known suffix ({', '.join(DEFAULT_SUFFIXES)})"
        )
        raise DataError(
            f"folder {folder} holds no files {what}; pass --glob PATTERN (e.g. '*.txt')"
        )
    return out


def resolve_inputs(inputs: list[str], glob: str | None = None) -> list[InputSpec]:
    """Turn the ``--input`` arguments into files / HF streams (see the module docstring).

    Raises:
        DataError: no inputs, an input that is none of the above, an empty file.
    """
    if not inputs:
        raise DataError(
            "no input given; pass --input PATH (a text/.jsonl/.parquet file or a folder) "
            f"or a registered dataset name ({', '.join(DATASETS)})"
        )
    specs = []
    for arg in inputs:
        path = Path(arg).expanduser()
        if path.is_file():
            size = path.stat().st_size
            if size == 0:
                raise DataError(f"input file {path} is empty; pass a file with some text")
            specs.append(InputSpec(arg, "file", path, [InputFile(path, file_kind(path), size)]))
        elif path.is_dir():
            specs.append(InputSpec(arg, "folder", path, _folder_files(path, glob)))
        elif arg.startswith("hf:"):
            specs.append(InputSpec(arg, "hf", hf=parse_hf(arg)))
        elif arg in TASK_DATASETS:
            raise DataError(f"{arg!r} is an evaluation task, not a training corpus; use gptforge eval --task {arg}")
        elif arg in DATASETS:
            file = resolve_registered(arg)
            specs.append(
                InputSpec(arg, "registered", file, [InputFile(file, "text", file.stat().st_size)])
            )
        else:
            raise DataError(
                f"input {arg!r} not found: it is not a file, a folder, hf:NAME, or a registered dataset "
                f"({', '.join(DATASETS)})"
            )
    return specs
