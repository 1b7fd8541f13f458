"""Reading inputs as a stream of chunks, and turning one chunk into token ids (in a worker).

The main process reads files in blocks of about ``chunk_bytes`` and makes
*chunks*; worker processes decode and tokenize them; results come back in order.
Memory therefore holds a few chunks at a time, whatever the corpus size.

A chunk is a plain tuple (cheap to send to a worker):

* ``("text", [(data: bytes, ends_doc: bool, label: str, offset: int), ...])``:
  pieces of text files. Small files are grouped into one chunk; a large file is cut
  into pieces, and ``ends_doc`` is True on the piece that ends it.
* ``("jsonl", data: bytes, label, first_line)``: whole lines of a ``.jsonl`` file.
* ``("strs", [str | None, ...], label, first_row)``: rows of a parquet file or a
  Hugging Face dataset, one document each.

Where a long document is cut (:func:`cut_rule`): for a tokenizer with a split pattern
(gpt2, regex-bpe, hf-bpe's byte-level GPT-2 split), at the start of the last pre-token
the pattern finds in the buffer, which is where the pattern splits the whole document
too; the char tokenizer at any character boundary; plain ``bpe`` (merges may cross any
point) never: such a document is read whole. So the ids are exactly those of encoding
each document at once, for every tokenizer kind.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from gptforge.errors import DataError

logger = logging.getLogger(__name__)

Chunk = tuple


def cut_rule(tok: Any) -> dict[str, Any]:
    """How :class:`ChunkReader` may cut a long document for ``tok``: ``split_pattern`` (a
    regex whose pre-token starts are safe cuts) or ``whole_documents`` (never cut)."""
    kind = getattr(tok, "kind", None)
    if kind == "char":
        return {}
    if kind == "gpt2" or kind == "hf-bpe":  # hf-bpe: ByteLevel pre-tokenizer = GPT-2's regex
        from gptforge.tokenizer.gpt2 import GPT2_PATTERN

        return {"split_pattern": GPT2_PATTERN}
    pattern = getattr(tok, "pattern", None)
    if kind == "regex-bpe" and isinstance(pattern, str):
        return {"split_pattern": pattern}
    return {"whole_documents": True}  # plain bpe, or a kind we cannot reason about


def pattern_cut(buf: bytes, limit: int, split: Any) -> int:
    """The byte offset ``<= limit`` of the start of the last pre-token that ``split`` (a
    compiled regex) finds in ``buf[:limit]``, or 0 when there is no such cut.

    ``buf`` starts where the whole document's pre-tokenization has a boundary (its start,
    or the previous cut). Every pre-token of the buffer but the last one is then the
    document's own (each one's match depends on its characters and one character of
    look-ahead, all inside the buffer), so the last one's start is a boundary of the whole
    document's split; of those starts the last one where the pre-token before it matches the
    same when the text ends there is taken. The ids of the two sides then equal those of the
    document encoded whole. Bytes that are not UTF-8 map to one character each (surrogateescape), so
    character and byte offsets agree.

    >>> import regex
    >>> pattern_cut(b"x = foo(bar)+1", 14, regex.compile(r" ?\\w+| ?[^\\w\\s]+|\\s+"))  # ")+" stays whole
    11
    """
    # Back to a character boundary: a character cut in half would be a pre-token of its own
    # and move the last start into a word. (At len(buf) nothing follows to tell.)
    limit = min(limit, len(buf) - 1)
    while limit > 0 and (buf[limit] & 0xC0) == 0x80:
        limit -= 1
    text = buf[:limit].decode("utf-8", errors="surrogateescape")
    spans = [m.span() for m in split.finditer(text)]
    # The last start is a boundary of the whole document; the left piece, though, ends there
    # and loses the look-ahead its final pre-tokens saw ("\n\n" before "B" is two pre-tokens,
    # at the end of a piece one).
    # Step back to a start where the piece ending there splits its tail as the document does
    # (re-split from 8 pre-tokens back: look-ahead reaches one or two pre-tokens at most).
    for j in range(len(spans) - 1, 0, -1):
        p, r = spans[j][0], spans[max(0, j - 8)][0]
        if [m.span() for m in split.finditer(text, r, p)] == spans[max(0, j - 8) : j]:
            return len(text[:p].encode("utf-8", errors="surrogateescape"))
    return 0


def safe_cut(buf: bytes, limit: int) -> int:
    """A position ``<= limit`` in ``buf`` where text may be cut without changing its ids.

    Prefers a newline that follows an ASCII letter/digit (searching back over the last
    half of the window), then any newline that follows a non-space, then any UTF-8
    character boundary.

    >>> safe_cut(b"ab.\\ncd\\nef", 9)
    6
    """
    lo = limit // 2
    pos = limit
    while True:
        nl = buf.rfind(b"\n", lo, pos)
        if nl <= 0:
            break
        prev = buf[nl - 1]
        if 48 <= prev <= 57 or 65 <= prev <= 90 or 97 <= prev <= 122:
            return nl
        pos = nl
    nl = buf.rfind(b"\n", lo, limit)
    while nl > 0 and buf[nl - 1] in b" \t\r\n":
        nl = buf.rfind(b"\n", lo, nl)
    if nl > 0:
        return nl
    cut = limit
    while cut > 0 and (buf[cut] & 0xC0) == 0x80:  # do not split a multi-byte character
        cut -= 1
    return cut


def char_boundary(path: Path, pos: int) -> int:
    """``pos`` moved forward to the start of a UTF-8 character of the file at ``path``."""
    with open(path, "rb") as f:
        f.seek(pos)
        tail = f.read(4)
    skip = 0
    while skip < len(tail) and (tail[skip] & 0xC0) == 0x80:
        skip += 1
    return pos + skip


class ChunkReader:
    """Yields chunks from resolved input files, hashing each file as it is read.

    Args:
        chunk_bytes: target size of a chunk.
        cuts: for the single-document (tail split) case: byte offsets in the one text
            file where a document must end (the train/val/test boundaries).
        text_field: the field of a jsonl record / parquet column / HF record holding the text.
        split_pattern, whole_documents: where a long document may be cut (:func:`cut_rule`);
            neither: at any character boundary (the char tokenizer).
    """

    def __init__(
        self, chunk_bytes: int = 1 << 20, cuts: list[int] | None = None, text_field: str = "text",
        split_pattern: str | None = None, whole_documents: bool = False,
    ) -> None:
        self.chunk_bytes = int(chunk_bytes)
        self.text_field = text_field
        self.cuts = sorted(cuts or [])
        import regex

        self._split = regex.compile(split_pattern) if split_pattern is not None else None
        self.whole_documents = whole_documents
        self.sha256: dict[Path, str] = {}
        self.bytes_read = 0

    def chunks(self, files: list[Any]) -> Iterator[Chunk]:
        """Chunks from ``files`` (InputFile or HFInput), in order."""
        group: list[tuple[bytes, bool, str, int]] = []
        size = 0
        for item in files:
            kind = getattr(item, "kind", "hf")
            if kind != "text":
                if group:
                    yield ("text", group)
                    group, size = [], 0
                if kind == "jsonl":
                    yield from self._jsonl(item.path)
                elif kind == "parquet":
                    yield from self._parquet(item.path)
                else:
                    yield from self._hf(item)
                continue
            for piece in self._text_pieces(item.path):
                group.append(piece)
                size += len(piece[0])
                if size >= self.chunk_bytes:
                    yield ("text", group)
                    group, size = [], 0
        if group:
            yield ("text", group)

    def _text_pieces(self, path: Path) -> Iterator[tuple[bytes, bool, str, int]]:
        label = str(path)
        h = hashlib.sha256()
        cuts = list(self.cuts)
        buf, start = b"", 0  # buf holds file bytes from offset `start`
        with open(path, "rb") as f:
            while True:
                block = f.read(self.chunk_bytes)
                h.update(block)
                self.bytes_read += len(block)
                buf += block
                eof = not block
                while cuts and cuts[0] <= start + len(buf) and (eof or cuts[0] < start + len(buf)):
                    k = cuts.pop(0) - start
                    yield buf[:k], True, label, start
                    buf, start = buf[k:], start + k
                if eof:
                    yield buf, True, label, start
                    break
                if len(buf) >= self.chunk_bytes and not self.whole_documents:
                    if self._split is not None:
                        k = pattern_cut(buf, len(buf) - 1, self._split)
                    else:  # the char tokenizer: any character boundary (preferably a line end)
                        k = safe_cut(buf, len(buf) - 1)
                    if k > 0:
                        yield buf[:k], False, label, start
                        buf, start = buf[k:], start + k
        self.sha256[path] = h.hexdigest()

    def _jsonl(self, path: Path) -> Iterator[Chunk]:
        label = str(path)
        h = hashlib.sha256()
        line = 1
        rest = b""
        with open(path, "rb") as f:
            while True:
                block = f.read(self.chunk_bytes)
                h.update(block)
                self.bytes_read += len(block)
                if not block:
                    if rest:
                        yield ("jsonl", rest, label, line)
                    break
                data = rest + block
                end = data.rfind(b"\n")
                if end < 0:
                    rest = data
                    continue
                yield ("jsonl", data[: end + 1], label, line)
                line += data.count(b"\n", 0, end + 1)
                rest = data[end + 1 :]
        self.sha256[path] = h.hexdigest()

    def _parquet(self, path: Path) -> Iterator[Chunk]:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(
                f"reading {path} needs pyarrow; install it with `pip install 'gptforge[parquet]'`"
            ) from None
        field = self.text_field
        try:
            pf = pq.ParquetFile(path)
        except Exception as e:  # pyarrow raises several types for a bad file
            raise DataError(f"cannot read parquet file {path}: {e}") from None
        names = pf.schema_arrow.names
        if field not in names:
            raise DataError(
                f"parquet file {path} has no column {field!r} (columns: {', '.join(names)}); "
                "pass --text-field COLUMN"
            )
        row = 1
        for batch in pf.iter_batches(batch_size=1024, columns=[field]):
            values = batch.column(0).to_pylist()
            self.bytes_read += sum(len(v) for v in values if isinstance(v, str))
            yield ("strs", values, str(path), row)
            row += len(values)
        self.sha256[path] = _sha256_path(path)

    def _hf(self, item: Any) -> Iterator[Chunk]:
        try:
            import datasets
        except ImportError:
            raise DataError(
                f"reading hf:{item.name} needs the Hugging Face `datasets` package; "
                "install it with `pip install 'gptforge[datasets]'`"
            ) from None
        label = f"hf:{item.name}"
        try:
            stream = datasets.load_dataset(item.name, item.config, split=item.split, streaming=True)
            it = iter(stream)
            row = 1
            while True:
                batch = list(itertools.islice(it, 256))
                if not batch:
                    break
                values = [r.get(self.text_field) if isinstance(r, dict) else None for r in batch]
                self.bytes_read += sum(len(v.encode()) for v in values if isinstance(v, str))
                yield ("strs", values, label, row)
                row += len(values)
        except DataError:
            raise
        except Exception as e:  # network, unknown dataset, bad config...
            raise DataError(f"cannot read Hugging Face dataset {item.name}: {e}") from None


def _sha256_path(path: Path) -> str:
    from gptforge.io import sha256_file

    return sha256_file(path)


# -- worker side ---------------------------------------------------------------------------
_STATE: dict[str, Any] = {}


def init_worker(
    tokenizer: Any,
    text_field: str,
    errors: str,
    skip_bad_lines: bool,
    add_eot: bool,
    dtype: str,
    child: bool = False,
) -> None:
    """Set up a worker: the tokenizer (an object, or its ``to_dict()`` to rebuild) and options.

    In a child process Ctrl-C is ignored: the main process handles it (stops the pool,
    removes the unfinished output), so the user sees one message, not one per worker.
    """
    if child:
        import signal

        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if isinstance(tokenizer, dict):
        from gptforge.tokenizer.files import tokenizer_from_dict

        tokenizer = tokenizer_from_dict(tokenizer)
    _STATE.update(
        tokenizer=tokenizer,
        text_field=text_field,
        errors=errors,
        skip_bad=skip_bad_lines,
        eot=getattr(tokenizer, "eot_id", None) if tokenizer is not None else None,
        add_eot=add_eot,
        dtype=np.dtype({"uint16": "<u2", "uint32": "<u4"}[dtype]),
    )


def decode_chunk(chunk: Chunk) -> tuple[list[str], list[bool], list[str], int]:
    """A chunk -> (document texts, ends-document flags, skipped "file:line" labels, bytes)."""
    kind = chunk[0]
    errors, skip_bad = _STATE["errors"], _STATE["skip_bad"]
    texts: list[str] = []
    ends: list[bool] = []
    bad: list[str] = []
    nbytes = 0
    if kind == "text":
        for data, end, label, offset in chunk[1]:
            nbytes += len(data)
            try:
                texts.append(data.decode("utf-8", errors=errors))
            except UnicodeDecodeError as e:
                raise DataError(
                    f"{label} is not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {offset + e.start}); "
                    "convert it to UTF-8, or pass --errors replace to replace bad bytes with U+FFFD"
                ) from None
            ends.append(end)
        return texts, ends, bad, nbytes
    field = _STATE["text_field"]
    if kind == "jsonl":
        _, data, label, first = chunk
        nbytes = len(data)
        for i, raw in enumerate(data.split(b"\n")):
            if not raw.strip():
                continue
            problem = None
            try:
                obj = json.loads(raw.decode("utf-8", errors=errors))
                value = obj.get(field) if isinstance(obj, dict) else None
                if not isinstance(value, str):
                    problem = f"has no string field {field!r}"
            except (ValueError, UnicodeDecodeError) as e:
                problem = f"is not valid JSON ({e})"
            if problem:
                where = f"{label}:{first + i}"
                if not skip_bad:
                    raise DataError(
                        f"line {first + i} of {label} {problem}; fix the file, pass --text-field FIELD, "
                        "or --skip-bad-lines to skip such lines"
                    )
                bad.append(where)
                continue
            texts.append(value)
            ends.append(True)
        return texts, ends, bad, nbytes
    _, values, label, first = chunk
    for i, value in enumerate(values):
        if not isinstance(value, str):
            if not skip_bad:
                raise DataError(
                    f"row {first + i} of {label} has no text in field {field!r} (got {type(value).__name__}); "
                    "pass --text-field FIELD, or --skip-bad-lines to skip such rows"
                )
            bad.append(f"{label}:{first + i}")
            continue
        nbytes += len(value.encode("utf-8", errors="replace"))
        texts.append(value)
        ends.append(True)
    return texts, ends, bad, nbytes


def chars_of_chunk(chunk: Chunk) -> tuple[str, int, int]:
    """The distinct characters of a chunk (for the char tokenizer), its documents and bytes."""
    texts, ends, _, nbytes = decode_chunk(chunk)
    seen: set[str] = set()
    for t in texts:
        seen.update(t)
    return "".join(sorted(seen)), sum(ends), nbytes


def encode_chunk(chunk: Chunk) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, list[str]]:
    """Tokenize a chunk.

    Returns:
        ids: all token ids of the chunk, an end-of-text id after each finished
            document when ``add_eot``; lens: tokens per piece (eot included);
            ends: whether each piece ends a document; the bytes read; skipped lines.
    """
    texts, ends, bad, nbytes = decode_chunk(chunk)
    tok, eot, add_eot = _STATE["tokenizer"], _STATE["eot"], _STATE["add_eot"]
    encode = tok.encode_ordinary_array
    eot_piece = np.array([eot if eot is not None else 0], dtype=np.uint32)
    pieces: list[np.ndarray] = []
    lens = np.empty(len(texts), dtype=np.int64)
    for i, (text, end) in enumerate(zip(texts, ends)):
        ids = encode(text)
        pieces.append(ids)
        lens[i] = len(ids)
        if end and add_eot and eot is not None:
            pieces.append(eot_piece)
            lens[i] += 1
    dtype = _STATE["dtype"]
    ids = np.concatenate(pieces).astype(dtype, copy=False) if pieces else np.zeros(0, dtype)
    return ids, lens, np.asarray(ends, dtype=bool), nbytes, bad
