"""Evaluation task files: HellaSwag's six-line text, multiple-choice jsonl, cloze jsonl.

A task spec names where the items come from (``gptforge eval --task SPEC``):

* ``hellaswag``: the 10,042 validation tasks, a registered dataset
  (:data:`gptforge.data.sources.DATASETS`) found in the data cache like tinyshakespeare.
  The file (``hellaswag_val.txt.bz2``, llama.cpp's ``perplexity --hellaswag`` input)
  holds six lines per task: ``activity_label + ": " + ctx``, the gold ending's index
  (0-3), then the four endings. Each ending is scored as ``" " + ending`` after the
  context, as llm.c's and llama.cpp's HellaSwag evaluations do.
* ``mc:PATH.jsonl``: one object per line, ``context`` (str), ``choices`` (list of at
  least 2 str), ``label`` (index into choices), optional ``id``. A choice is appended to
  the context as written, so put the leading space in the choice (``" Paris"``).
* ``cloze:PATH.jsonl``: one object per line with ``text``; its last whitespace-separated
  word (with the space before it) is the target, the rest the context (LAMBADA style).

Every reader raises one :class:`DataError` naming the file and the task number (1-based)
for a malformed item, so a bad file never turns into a traceback or a silent skip.
"""

from __future__ import annotations

import bz2
import json
from dataclasses import dataclass
from pathlib import Path

from gptforge.errors import DataError

HELLASWAG_DATASET = "hellaswag"
HELLASWAG_LINES = 6  # context, label, four endings


@dataclass(frozen=True)
class ChoiceItem:
    """One task: a context and the continuations to score after it.

    ``label`` is the index of the right continuation (always 0 for a cloze item, whose one
    continuation is the target).
    """

    id: str
    context: str
    choices: tuple[str, ...]
    label: int


@dataclass(frozen=True)
class Task:
    """A named list of items. ``kind`` is ``mc`` (multiple choice) or ``cloze``."""

    name: str
    kind: str
    source: str
    items: list[ChoiceItem]


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"task file not found: {path}")
    opener = bz2.open if path.suffix == ".bz2" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e}); convert it first") from None
    except OSError as e:  # a corrupt .bz2
        raise DataError(f"cannot read {path}: {e}") from None


def parse_hellaswag(text: str, source: str = "hellaswag") -> list[ChoiceItem]:
    """Items of HellaSwag's six-line text format.

    >>> items = parse_hellaswag("Cooking: A man cuts bread. he\\n1\\nsings.\\nspreads butter.\\nflies.\\nsleeps.\\n")
    >>> items[0].context, items[0].choices[1], items[0].label
    ('Cooking: A man cuts bread. he', ' spreads butter.', 1)

    Raises:
        DataError: a line count that is not a multiple of six, a label that is not 0-3,
            an empty context; the message names ``source`` and the task number.
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline
    lines = [line.rstrip("\r") for line in lines]
    if not lines:
        raise DataError(f"{source} holds no tasks")
    if len(lines) % HELLASWAG_LINES:
        n = len(lines) // HELLASWAG_LINES + 1
        raise DataError(
            f"{source}: task {n} is incomplete: {len(lines)} lines is not a multiple of {HELLASWAG_LINES} "
            "(each task is a context line, a label line 0-3 and four ending lines)"
        )
    items = []
    for n, start in enumerate(range(0, len(lines), HELLASWAG_LINES), 1):
        context, label, *endings = lines[start : start + HELLASWAG_LINES]
        if not context.strip():
            raise DataError(f"{source}: task {n} (line {start + 1}) has an empty context")
        if label.strip() not in ("0", "1", "2", "3"):
            raise DataError(f"{source}: task {n} (line {start + 2}) has label {label!r}; expected 0, 1, 2 or 3")
        items.append(ChoiceItem(str(n - 1), context, tuple(" " + e for e in endings), int(label)))
    return items


def _jsonl_objects(path: Path) -> list[tuple[int, dict]]:
    out = []
    for n, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: task {len(out) + 1} (line {n}) is not valid JSON: {e.msg}") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}: task {len(out) + 1} (line {n}) is not a JSON object")
        out.append((n, obj))
    if not out:
        raise DataError(f"{path} holds no tasks (expected one JSON object per line)")
    return out


def read_mc_jsonl(path: str | Path) -> list[ChoiceItem]:
    """Items of a multiple-choice jsonl file (see the module docstring).

    Raises:
        DataError: naming the file and the task number, for a missing or non-string
            context, fewer than 2 choices, a missing label or one out of range.
    """
    path = Path(path)
    items = []
    for n, (line, obj) in enumerate(_jsonl_objects(path), 1):
        where = f"{path}: task {n} (line {line})"
        context, choices, label = obj.get("context"), obj.get("choices"), obj.get("label")
        if not isinstance(context, str):
            raise DataError(f"{where} has no string 'context'")
        if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
            raise DataError(f"{where}: 'choices' must be a list of strings")
        if len(choices) < 2:
            raise DataError(f"{where} has {len(choices)} choice(s); a multiple-choice task needs at least 2")
        if any(not c for c in choices):
            raise DataError(f"{where} has an empty choice; every choice needs some text to score")
        if "label" not in obj:
            raise DataError(f"{where} has no 'label' (the index of the right choice)")
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
            raise DataError(f"{where} has label {label!r}; expected an integer index 0..{len(choices) - 1}")
        items.append(ChoiceItem(str(obj.get("id", n - 1)), context, tuple(choices), label))
    return items


def split_last_word(text: str) -> tuple[str, str]:
    """``(context, target)``: the target is the last word with the whitespace before it.

    >>> split_last_word("the cat sat on the mat")
    ('the cat sat on the', ' mat')
    """
    stripped = text.rstrip()
    cut = max(stripped.rfind(c) for c in (" ", "\n", "\t"))
    if cut <= 0:  # one word: no context
        return "", stripped.lstrip()
    return stripped[:cut], stripped[cut:]


def read_cloze_jsonl(path: str | Path) -> list[ChoiceItem]:
    """Items of a cloze jsonl file: context = all but the last word, the one choice = the last word.

    Raises:
        DataError: naming the file and the task number, for a missing ``text`` or a text
            of fewer than two words.
    """
    path = Path(path)
    items = []
    for n, (line, obj) in enumerate(_jsonl_objects(path), 1):
        text = obj.get("text")
        if not isinstance(text, str):
            raise DataError(f"{path}: task {n} (line {line}) has no string 'text'")
        context, target = split_last_word(text)
        if not context.strip() or not target.strip():
            raise DataError(f"{path}: task {n} (line {line}) needs at least two words (a context and the last word)")
        items.append(ChoiceItem(str(obj.get("id", n - 1)), context, (target,), 0))
    return items


def load_task(spec: str) -> Task:
    """The task named by ``spec``: ``hellaswag``, ``mc:PATH.jsonl`` or ``cloze:PATH.jsonl``.

    Raises:
        DataError: an unknown spec (the message lists the forms), or a bad file.
    """
    if spec == HELLASWAG_DATASET:
        from gptforge.data.sources import resolve_registered

        path = resolve_registered(HELLASWAG_DATASET)
        return Task("hellaswag", "mc", str(path), parse_hellaswag(_read_text(path), source=str(path)))
    kind, sep, rest = spec.partition(":")
    if sep and kind == "mc" and rest:
        return Task(Path(rest).stem, "mc", rest, read_mc_jsonl(rest))
    if sep and kind == "cloze" and rest:
        return Task(Path(rest).stem, "cloze", rest, read_cloze_jsonl(rest))
    raise DataError(f"unknown task {spec!r}; use hellaswag, mc:PATH.jsonl or cloze:PATH.jsonl")
