"""``gptforge prepare``: raw text of any size -> a dataset dir of token shards.

The pipeline (streaming; memory holds a few ~1 MB chunks whatever the corpus size)::

    inputs --(main: read, hash, cut into chunks)--> workers: decode + tokenize
           --(main, in order)--> assign each document a split --> append to shards

Workers are processes, or threads when the tokenizer encodes outside Python's GIL
(the ``gpt2`` fast path: tiktoken's Rust encoder), which saves copying every chunk
and its ids between processes.

How documents are split into train / val / test:

* **one document** (a single text file, e.g. tinyshakespeare): by position, as
  nanoGPT does: the first ``1 - val - test`` of the bytes are train, then val, then
  test. Each part is tokenized on its own and no end-of-text token is added
  (there is nothing to separate). For ASCII text the cut is nanoGPT's exactly.
* **several text files**: each file is a document; a seeded shuffle of the file
  indexes picks exactly ``round(n * fraction)`` documents for val and test.
* **records** (jsonl lines, parquet rows, Hugging Face rows), whose count is not
  known before reading: document ``i`` goes to a split decided by a seeded hash of
  ``i`` (:func:`split_by_hash`), so no list of documents is ever held.

Documents are followed by the tokenizer's end-of-text id. The output is built
in a temporary folder and renamed into place only when complete.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing as mp
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from gptforge.data import readers
from gptforge.data.shards import DATASET_KIND, META_FILE, SPLITS, TOKENIZER_FILE, dtype_for_vocab
from gptforge.data.sources import DATASETS, InputSpec, resolve_inputs
from gptforge.data.writer import ShardWriter
from gptforge.errors import DataError
from gptforge.io import FORMAT_VERSION, atomic_dir, check_replaceable, write_json

logger = logging.getLogger(__name__)

EOT = "<|endoftext|>"
DEFAULT_SHARD_SIZE = 100_000_000  # tokens per file (200 MB of uint16), as nanoGPT's fineweb shards


@dataclass
class PrepareOptions:
    """Everything ``prepare`` can be told (the CLI flags, one to one)."""

    val_fraction: float = 0.1
    test_fraction: float = 0.0
    workers: int = 1
    shard_size: int = DEFAULT_SHARD_SIZE
    text_field: str = "text"
    glob: str | None = None
    seed: int = 1337
    overwrite: bool = False
    skip_bad_lines: bool = False
    block_size: int | None = None
    errors: str = "strict"
    chunk_bytes: int = 1 << 20
    progress: bool | None = None  # None: a bar when stderr is a terminal

    def validate(self) -> None:
        problems = []
        for name in ("val_fraction", "test_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                problems.append(f"--{name.replace('_', '-')} {v} must be in [0, 1)")
        if self.val_fraction + self.test_fraction >= 1.0:
            problems.append(
                f"--val-fraction + --test-fraction = {self.val_fraction + self.test_fraction} leaves no training data"
            )
        if self.workers < 1:
            problems.append(f"--workers {self.workers} must be >= 1")
        if self.shard_size < 1:
            problems.append(f"--shard-size {self.shard_size} must be >= 1")
        if self.block_size is not None and self.block_size < 1:
            problems.append(f"--block-size {self.block_size} must be >= 1")
        if self.errors not in ("strict", "replace"):
            problems.append(f"--errors {self.errors!r} must be 'strict' or 'replace'")
        if self.chunk_bytes < 1024:
            problems.append(f"chunk_bytes {self.chunk_bytes} must be >= 1024")
        if problems:
            raise DataError("; ".join(problems))


# -- split assignment (pure) ------------------------------------------------------------------
def split_by_hash(
    index: np.ndarray, seed: int, val_fraction: float, test_fraction: float
) -> np.ndarray:
    """The split of each document index: 0 train, 1 val, 2 test, from a seeded hash.

    splitmix64(seed, index) gives a uniform number u in [0, 1): test if
    ``u < test_fraction``, val if ``u < test_fraction + val_fraction``, else train.
    It depends only on (seed, index), never on chunking or worker count.

    >>> split_by_hash(np.arange(8), 0, 0.5, 0.0).tolist()
    [0, 0, 0, 1, 1, 1, 0, 1]
    """
    with np.errstate(over="ignore"):
        z = np.asarray(index, dtype=np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15) % (1 << 64))
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    out = np.zeros(len(u), dtype=np.int8)
    out[u < test_fraction + val_fraction] = 1
    out[u < test_fraction] = 2
    return out


def split_by_shuffle(n: int, seed: int, val_fraction: float, test_fraction: float) -> np.ndarray:
    """Splits of ``n`` documents from a seeded permutation: exactly round(n * fraction) each.

    A split asked for gets at least one document, and train keeps at least one.

    Raises:
        DataError: too few documents for the splits asked for.
    """
    n_test = max(round(n * test_fraction), 1 if test_fraction > 0 else 0)
    n_val = max(round(n * val_fraction), 1 if val_fraction > 0 else 0)
    if n_val + n_test >= n:
        raise DataError(
            f"{n} documents are too few for val ({n_val}) + test ({n_test}) and at least one train "
            "document; add documents, lower --val-fraction/--test-fraction, or pass one text file "
            "(a single document is split by position)"
        )
    perm = np.random.default_rng(seed).permutation(n)
    out = np.zeros(n, dtype=np.int8)
    out[perm[n_test : n_test + n_val]] = 1
    out[perm[:n_test]] = 2
    return out


# -- worker pool -------------------------------------------------------------------------------
def _ordered_map(fn: Callable, chunks: Iterable, workers: int, init_args: tuple) -> Iterator:
    """``map(fn, chunks)`` over ``workers`` workers, in order, with at most a few chunks in flight.

    Workers are threads when the tokenizer encodes outside the GIL (they share the
    tokenizer and the chunks' memory, nothing is pickled; even one worker thread helps,
    as this thread reads, hashes and writes meanwhile), else processes.
    """
    tok = init_args[0]
    if tok is not None and tok.encodes_without_gil:
        from concurrent.futures import ThreadPoolExecutor

        readers.init_worker(*init_args)
        with ThreadPoolExecutor(workers, thread_name_prefix="prepare") as pool:
            try:
                yield from _in_order(lambda chunk: pool.submit(fn, chunk), lambda fut: fut.result(), chunks, workers)
            finally:  # an error or Ctrl-C: drop what has not started
                pool.shutdown(cancel_futures=True)
        return
    if workers == 1:
        readers.init_worker(*init_args)
        yield from map(fn, chunks)
        return
    args = (tok.to_dict() if tok is not None else None, *init_args[1:], True)
    ctx = mp.get_context("spawn")  # no fork of a process holding threads/locks
    with ctx.Pool(workers, initializer=readers.init_worker, initargs=args) as pool:
        yield from _in_order(lambda chunk: pool.apply_async(fn, (chunk,)), lambda res: res.get(), chunks, workers)


def _in_order(submit: Callable, result: Callable, chunks: Iterable, workers: int) -> Iterator:
    """Submit chunks and yield their results in order, keeping ``2 * workers + 2`` in flight.

    (``Pool.imap`` would read the whole input ahead of the workers; the bound keeps
    memory flat whatever the corpus size.)
    """
    pending: deque = deque()
    for chunk in chunks:
        pending.append(submit(chunk))
        if len(pending) >= 2 * workers + 2:
            yield result(pending.popleft())
    while pending:
        yield result(pending.popleft())


def _progress(total: int | None, enabled: bool | None, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1000,
        desc=desc,
        disable=None if enabled is None else not enabled,
        dynamic_ncols=True,
        leave=False,
    )


# -- the job -----------------------------------------------------------------------------------
class _Plan:
    """What the inputs are and how they will be split (decided before reading any text)."""

    def __init__(self, specs: list[InputSpec], opts: PrepareOptions) -> None:
        self.specs = specs
        self.items: list[Any] = []
        for spec in specs:
            if spec.kind == "hf":
                self.items.append(spec.hf)
            else:
                empty = [f for f in spec.files if f.size == 0]
                if empty:
                    logger.warning("skipping %d empty file(s) in %s", len(empty), spec.arg)
                self.items.extend(f for f in spec.files if f.size > 0)
        if not self.items:
            raise DataError("all input files are empty; pass files with some text")
        all_text = all(getattr(i, "kind", "hf") == "text" for i in self.items)
        self.total_bytes: int | None = (
            sum(i.size for i in self.items) if all(hasattr(i, "size") for i in self.items) else None
        )
        self.cuts: list[int] = []
        if all_text and len(self.items) == 1:
            self.method = "position"
            f = self.items[0]
            bounds, table = [], [0]
            if opts.val_fraction > 0:
                bounds.append(1.0 - opts.val_fraction - opts.test_fraction)
                table.append(1)
            if opts.test_fraction > 0:
                bounds.append(1.0 - opts.test_fraction)
                table.append(2)
            self.cuts = [readers.char_boundary(f.path, int(f.size * b)) for b in bounds]
            self.table: np.ndarray | None = np.array(table, np.int8)
        elif all_text:
            self.method = "shuffle"
            self.table = split_by_shuffle(
                len(self.items), opts.seed, opts.val_fraction, opts.test_fraction
            )
        else:
            self.method = "hash"
            self.table = None
        self.add_eot = self.method != "position"
        self.splits = ["train"] + [
            s for s, f in (("val", opts.val_fraction), ("test", opts.test_fraction)) if f > 0
        ]

    def split_of(self, doc_index: np.ndarray, opts: PrepareOptions) -> np.ndarray:
        if self.table is not None:
            return self.table[doc_index]
        return split_by_hash(doc_index, opts.seed, opts.val_fraction, opts.test_fraction)


def _char_tokenizer(plan: _Plan, opts: PrepareOptions) -> Any:
    """Build the char vocabulary in one pass over the inputs (only the set of characters is kept)."""
    from gptforge.tokenizer.char import CharTokenizer

    reader = readers.ChunkReader(opts.chunk_bytes, plan.cuts, opts.text_field)
    seen: set[str] = set()
    bar = _progress(plan.total_bytes, opts.progress, "char vocabulary")
    init = (None, opts.text_field, opts.errors, True, False, "uint32")
    with bar:
        for chars, _docs, nbytes in _ordered_map(
            readers.chars_of_chunk, reader.chunks(plan.items), opts.workers, init
        ):
            seen.update(chars)
            bar.update(nbytes)
    if not seen:
        raise DataError("the inputs hold no text; a char tokenizer needs some characters")
    specials = [EOT] if plan.add_eot else []
    return CharTokenizer.train("".join(sorted(seen)), specials)


def _load_tokenizer(spec: str, plan: _Plan, opts: PrepareOptions) -> Any:
    if spec == "char":
        return _char_tokenizer(plan, opts)
    from gptforge.tokenizer import load_tokenizer

    return load_tokenizer(spec)


def _sources_meta(plan: _Plan, sha: dict[Path, str]) -> list[dict[str, Any]]:
    out = []
    for spec in plan.specs:
        entry: dict[str, Any] = {"input": spec.arg, "kind": spec.kind}
        if spec.kind == "hf":
            assert spec.hf is not None
            entry.update(name=spec.hf.name, config=spec.hf.config, split=spec.hf.split)
        else:
            files = [f for f in spec.files if f.size > 0]
            entry.update(
                path=str(spec.path), files=len(files), bytes=sum(f.size for f in spec.files)
            )
            if spec.kind == "registered":
                entry["url"] = DATASETS[spec.arg].url
            if len(files) == 1:
                entry["sha256"] = sha.get(files[0].path)
            else:  # a folder: hash of the (relative path, file hash) list
                h = hashlib.sha256()
                for f in files:
                    h.update(f"{f.path.relative_to(spec.path)}\t{sha.get(f.path)}\n".encode())
                entry["sha256"] = h.hexdigest()
        out.append(entry)
    return out


def prepare(
    inputs: list[str], tokenizer: str, out: str | os.PathLike, opts: PrepareOptions | None = None
) -> dict[str, Any]:
    """Tokenize ``inputs`` into a dataset dir at ``out`` (see the module docstring).

    Args:
        inputs: files, folders, ``hf:NAME[:CONFIG][:SPLIT]`` or registered dataset names.
        tokenizer: a tokenizer spec (``gpt2``, ``char``, a tokenizer.json or a folder).
        out: the dataset dir to create.
        opts: everything else (:class:`PrepareOptions`).

    Returns:
        The ``meta.json`` content, plus a ``"summary"`` of bytes, time and throughput.

    Raises:
        DataError: bad inputs or options; nothing is left at ``out``.
    """
    opts = opts or PrepareOptions()
    opts.validate()
    out = Path(out)
    if out.exists() and not opts.overwrite:
        raise DataError(
            f"output {out} already exists; pass --overwrite to replace it, or choose another --out"
        )
    if opts.overwrite:  # the one --overwrite rule (io.check_replaceable), before any work
        check_replaceable(out, protect=tuple(p for p in inputs if Path(p).exists()))
    t0 = time.perf_counter()
    plan = _Plan(resolve_inputs(list(inputs), opts.glob), opts)
    tok = _load_tokenizer(tokenizer, plan, opts)
    dtype = dtype_for_vocab(tok.vocab_size)
    eot = tok.eot_id
    if plan.add_eot and eot is None:
        logger.warning(
            "tokenizer %s has no end-of-text token; documents are joined without a separator",
            tok.kind,
        )

    # long documents are cut only where the ids stay those of the whole document (readers.cut_rule)
    reader = readers.ChunkReader(opts.chunk_bytes, plan.cuts, opts.text_field, **readers.cut_rule(tok))
    init = (tok, opts.text_field, opts.errors, opts.skip_bad_lines, plan.add_eot, dtype)
    docs_done = 0  # documents finished so far (global document index of the next one)
    tokens = 0
    skipped: list[str] = []
    n_skipped = 0
    with atomic_dir(out, overwrite=opts.overwrite) as tmp:
        writers = {s: ShardWriter(tmp, s, dtype, opts.shard_size) for s in plan.splits}
        code_to_split = {0: "train", 1: "val", 2: "test"}
        bar = _progress(plan.total_bytes, opts.progress, "prepare")
        with bar:
            for ids, lens, ends, nbytes, bad in _ordered_map(
                readers.encode_chunk, reader.chunks(plan.items), opts.workers, init
            ):
                n_skipped += len(bad)
                skipped.extend(bad[: max(0, 5 - len(skipped))])
                if len(lens):
                    # document index of each piece: pieces before a doc's last one share its index
                    starts = np.concatenate(([0], np.cumsum(ends[:-1], dtype=np.int64)))
                    split = plan.split_of(docs_done + starts, opts)
                    docs_done += int(ends.sum())
                    if (split == split[0]).all():
                        writers[code_to_split[int(split[0])]].write(ids)
                    else:
                        per_token = np.repeat(split, lens)
                        for code in np.unique(split):
                            writers[code_to_split[int(code)]].write(ids[per_token == code])
                    for code in np.unique(split[ends]):
                        writers[code_to_split[int(code)]].documents += int(
                            (split[ends] == code).sum()
                        )
                tokens += len(ids)
                bar.update(nbytes)
                bar.set_postfix_str(
                    f"{tokens / max(bar.format_dict['elapsed'], 1e-9) / 1e6:.2f} Mtok/s",
                    refresh=False,
                )
        splits_meta = {s: w.finish() for s, w in writers.items()}
        if n_skipped:
            logger.warning("skipped %d bad line(s)/row(s), e.g. %s", n_skipped, ", ".join(skipped))
        _check_splits(splits_meta, plan, opts)
        elapsed = time.perf_counter() - t0
        nbytes_total = reader.bytes_read
        meta: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "kind": DATASET_KIND,
            "tokenizer_kind": tok.kind,
            "tokenizer_fingerprint": tok.fingerprint(),
            "vocab_size": tok.vocab_size,
            "dtype": dtype,
            "eot_id": eot,
            "eot_between_documents": bool(plan.add_eot and eot is not None),
            "split_method": plan.method,
            "val_fraction": opts.val_fraction,
            "test_fraction": opts.test_fraction,
            "seed": opts.seed,
            "splits": splits_meta,
            "sources": _sources_meta(plan, reader.sha256),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "gptforge_version": _version(),
            "stats": {
                "documents": 1 if plan.method == "position" else docs_done,
                "tokens": tokens,
                "bytes": nbytes_total,
                "bytes_per_token": round(nbytes_total / max(tokens, 1), 4),
                "seconds": round(elapsed, 3),
                "skipped_records": n_skipped,
                "options": {
                    k: v for k, v in asdict(opts).items() if k not in ("progress", "overwrite")
                },
            },
        }
        tok.save(tmp / TOKENIZER_FILE)
        write_json(tmp / META_FILE, meta)
    return meta


def _fraction_text(split: str, opts: PrepareOptions) -> str:
    """``--val-fraction 0.1``; train has no flag of its own (it gets what val and test leave)."""
    if split == "train":
        return f"train gets 1 - --val-fraction - --test-fraction = {1 - opts.val_fraction - opts.test_fraction:g}"
    return f"--{split}-fraction {getattr(opts, split + '_fraction')}"


def _check_splits(splits: dict[str, dict[str, Any]], plan: _Plan, opts: PrepareOptions) -> None:
    """Every split asked for must hold at least one training window (``block_size + 1`` tokens)."""
    need = (opts.block_size or 1) + 1
    for name in SPLITS:
        if name not in splits:
            continue
        info = splits[name]
        longest = max((s["tokens"] for s in info["shards"]), default=0)
        if info["tokens"] == 0 and plan.method == "hash":
            raise DataError(
                f"the {name} split is empty: none of the {sum(s['documents'] for s in splits.values())} documents "
                f"was drawn for it ({_fraction_text(name, opts)}); add documents, "
                f"raise the fraction, or change --seed"
            )
        if longest < need:
            what = f"block_size {opts.block_size}" if opts.block_size else "the smallest block (1)"
            raise DataError(
                f"the {name} split has {info['tokens']:,} tokens, but one window of {what} needs {need:,}; "
                "add more text, lower --block-size, or change --val-fraction/--test-fraction"
            )


def _version() -> str:
    from gptforge import __version__

    return __version__
