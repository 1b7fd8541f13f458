"""Fine-tuning data: read labelled tables and instruction files, split, balance.

Batching (padding, attention mask, ignore-index labels) is :func:`gptforge.data.collate.pad_collate`.

Readers return plain Python records and raise :class:`~gptforge.errors.DataError`
naming the file and the record (1-based line or item number) for bad input.

- :func:`read_labelled` reads TSV / CSV / JSONL with a text and a label column.
- :func:`read_instructions` reads Alpaca JSON / JSONL (``instruction``, optional
  ``input``, ``output``) or chat JSONL (``messages``: ``[{role, content}, ...]``)
  and returns conversations as message lists (see :mod:`gptforge.templates`).
"""

from __future__ import annotations

import csv
import json
import logging
import random
from collections import Counter
from pathlib import Path
from typing import Any

from gptforge.errors import DataError

logger = logging.getLogger(__name__)



# -- labelled tables (classification) -------------------------------------------------
def read_labelled(
    path: str | Path, text_column: str | None = None, label_column: str | None = None
) -> list[tuple[str, str]]:
    """``(text, label)`` records from a ``.tsv``, ``.csv`` or ``.jsonl`` file.

    Tables need a header line. Column names default to the first of ``text``/
    ``sms``/``sentence``/``content`` and ``label``/``class``/``category`` found
    (case-insensitive), so ``sms_spam.tsv`` (``Label\\tSMS``) works as is.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file {p} does not exist")
    suffix = p.suffix.lower()
    if suffix in (".tsv", ".csv", ".txt"):
        delim = "," if suffix == ".csv" else "\t"
        with open(p, newline="", encoding="utf-8") as f:
            reader = csv.reader(f, delimiter=delim, quoting=csv.QUOTE_MINIMAL if delim == "," else csv.QUOTE_NONE)
            rows = list(reader)
        if not rows:
            raise DataError(f"{p} is empty; expected a header line and labelled rows")
        header = rows[0]
        records = [dict(zip(header, r)) | {"__line": i + 2, "__ncol": len(r)} for i, r in enumerate(rows[1:]) if r]
    elif suffix in (".jsonl", ".json"):
        records, header = [], []
        for i, obj in enumerate(_read_json_records(p)):
            if not isinstance(obj, dict):
                raise DataError(f"{p} record {i + 1} is not a JSON object")
            header = header or list(obj)
            records.append(obj | {"__line": i + 1, "__ncol": None})
    else:
        raise DataError(f"{p}: unknown file type {suffix!r}; expected .tsv, .csv or .jsonl")
    if not records:
        raise DataError(f"{p} holds no records; expected a header line and labelled rows")
    text_col = _pick_column(p, header, text_column, ("text", "sms", "sentence", "content", "message"), "text")
    label_col = _pick_column(p, header, label_column, ("label", "labels", "class", "category"), "label")
    out = []
    for rec in records:
        text, label = rec.get(text_col), rec.get(label_col)
        where = f"{p} record {rec['__line']}"
        if rec["__ncol"] is not None and rec["__ncol"] != len(header):
            raise DataError(f"{where} has {rec['__ncol']} columns, the header has {len(header)}")
        if label is None or str(label).strip() == "":
            raise DataError(f"{where} has no label in column {label_col!r}; every row needs one")
        if text is None or str(text).strip() == "":
            raise DataError(f"{where} has no text in column {text_col!r}")
        out.append((str(text), str(label).strip()))
    labels = Counter(label for _, label in out)
    if len(labels) < 2:
        raise DataError(f"{p} has a single class {list(labels)}; classification needs at least two labels")
    return out


def _pick_column(p: Path, header: list[str], wanted: str | None, defaults: tuple[str, ...], what: str) -> str:
    if wanted is not None:
        if wanted not in header:
            raise DataError(f"{p} has no column {wanted!r}; columns are {header}")
        return wanted
    lower = {h.lower(): h for h in header}
    for name in defaults:
        if name in lower:
            return lower[name]
    raise DataError(f"{p}: cannot find the {what} column among {header}; pass --{what}-column NAME")


def _read_json_records(p: Path) -> list[Any]:
    """A JSON array file, or one JSON value per non-empty line (JSONL)."""
    text = p.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{p} is not valid JSON: {e}") from None
        return data
    out = []
    for i, line in enumerate(text.splitlines()):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{p} line {i + 1} is not valid JSON: {e.msg}") from None
    return out


def split_records(
    records: list[Any], val_fraction: float, test_fraction: float, seed: int
) -> tuple[list[Any], list[Any], list[Any]]:
    """Shuffle with ``seed`` and cut into (train, val, test)."""
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise DataError(
            f"--val-fraction {val_fraction} and --test-fraction {test_fraction} must be in [0, 1) and sum below 1"
        )
    items = list(records)
    random.Random(seed).shuffle(items)
    n = len(items)
    n_test, n_val = round(n * test_fraction), round(n * val_fraction)
    test, val, train = items[:n_test], items[n_test : n_test + n_val], items[n_test + n_val :]
    if not train:
        raise DataError(f"no training examples left after the split ({n} records)")
    return train, val, test


def balance_classes(records: list[tuple[str, str]], seed: int) -> list[tuple[str, str]]:
    """Downsample every class to the size of the smallest one (seeded)."""
    by_label: dict[str, list[tuple[str, str]]] = {}
    for rec in records:
        by_label.setdefault(rec[1], []).append(rec)
    n = min(len(v) for v in by_label.values())
    rng = random.Random(seed)
    out = []
    for label in sorted(by_label):
        out.extend(rng.sample(by_label[label], n))
    return out


# -- instruction data -----------------------------------------------------------------
def read_instructions(path: str | Path) -> list[list[dict[str, Any]]]:
    """Conversations (message lists) from Alpaca JSON/JSONL or chat JSONL records."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file {p} does not exist")
    items = _read_json_records(p)
    if not isinstance(items, list):
        raise DataError(f"{p} must hold a JSON array or JSON lines of records")
    if not items:
        raise DataError(f"{p} holds no records; expected Alpaca or chat records")
    out = []
    for i, rec in enumerate(items):
        where = f"{p} record {i + 1}"
        if not isinstance(rec, dict):
            raise DataError(f"{where} is not a JSON object")
        if "messages" in rec:
            msgs = rec["messages"]
            if not isinstance(msgs, list) or not msgs:
                raise DataError(f"{where}: 'messages' must be a non-empty list of {{role, content}}")
            for j, m in enumerate(msgs):
                if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
                    raise DataError(f"{where} message {j + 1}: role must be system, user or assistant")
                if not isinstance(m.get("content"), str):
                    raise DataError(f"{where} message {j + 1}: 'content' must be a string")
            if not any(m["role"] == "assistant" for m in msgs):
                raise DataError(f"{where} has no assistant message to learn from")
            out.append([{"role": m["role"], "content": m["content"]} for m in msgs])
        else:
            if not isinstance(rec.get("instruction"), str):
                raise DataError(f"{where} has no 'instruction' string (Alpaca records need instruction, output)")
            if not isinstance(rec.get("output"), str):
                raise DataError(f"{where} is missing 'output' (the response to learn); every record needs one")
            user: dict[str, Any] = {"role": "user", "content": rec["instruction"]}
            if rec.get("input"):
                user["input"] = str(rec["input"])
            out.append([user, {"role": "assistant", "content": rec["output"]}])
    return out
