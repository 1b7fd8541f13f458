"""Typed dataclass configs <-> dicts, YAML files and ``--section.key value`` flags.

Dataclasses are the single source of truth. Every way of setting a value (a
YAML file, a flag, a preset) goes through :func:`apply`, which coerces strings
from the field annotations, rejects unknown keys with a "did you mean"
suggestion, collects every problem, and raises once. This module imports no
torch, so the CLI can parse configs before paying for the torch import.

Two shapes are supported:

* a *section* dataclass (``GPTConfig``, ``TrainConfig``...): keys are field names;
* a *composite* dataclass whose fields are sections (``RunConfig``): keys are
  ``section.key`` (flat) or nested mappings ``{section: {key: value}}``.

Example::

    >>> @dataclass
    ... class Opt:
    ...     lr: float = cfg_field(1e-3, "peak learning rate")
    >>> apply(Opt(), {"lr": "3e-4"}).lr
    0.0003
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import types
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from gptforge.errors import ConfigError

T = TypeVar("T")

_TRUE = {"true", "1", "yes", "on", "y"}
_FALSE = {"false", "0", "no", "off", "n"}
_NONE = {"none", "null", "~", ""}


def cfg_field(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with a default and a one-line help string (shown in ``--help``)."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kwargs)
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def field_help(f: dataclasses.Field) -> str:
    return f.metadata.get("help", "")


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        return f"list of {_type_name(get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, name: str) -> Any:
    """Convert ``value`` (often a string from the command line) to the annotated type ``tp``.

    Raises:
        ValueError: with a message naming the field, the value and the expected type.
    """
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if type(None) in args and (value is None or (isinstance(value, str) and value.strip().lower() in _NONE)):
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, name)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(f"{name}: {value!r} is not a valid {_type_name(tp)}")
    if origin is Literal:
        choices = get_args(tp)
        for c in choices:
            if value == c or (isinstance(value, str) and str(c) == value.strip()):
                return c
        hint = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        extra = f"; did you mean {hint[0]!r}?" if hint else ""
        raise ValueError(f"{name}: {value!r} is not one of {', '.join(repr(c) for c in choices)}{extra}")
    if origin in (list, tuple):
        (item_tp, *_) = get_args(tp) or (str,)
        if isinstance(value, str):
            items = [v.strip() for v in value.split(",") if v.strip()]
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            raise ValueError(f"{name}: {value!r} is not a list")
        out = [coerce(v, item_tp, name) for v in items]
        return tuple(out) if origin is tuple else out
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueError(f"{name}: {value!r} is not a boolean (use true or false)")
    if tp is int:
        if isinstance(value, bool):
            raise ValueError(f"{name}: {value!r} is not an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            s = value.strip().replace("_", "")
            try:
                return int(s)
            except ValueError:
                try:
                    f = float(s)  # accept 1e6
                except ValueError:
                    f = None
                if f is not None and f.is_integer():
                    return int(f)
        raise ValueError(f"{name}: {value!r} is not an integer")
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(f"{name}: {value!r} is not a number")
        number = None
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):
            with contextlib.suppress(ValueError):
                number = float(value.strip())
        if number is None:
            raise ValueError(f"{name}: {value!r} is not a number")
        if not math.isfinite(number):  # a NaN clip once silently turned clipping off
            raise ValueError(f"{name}: {value!r} is not a finite number")
        return number
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"{name}: {value!r} is not a string")
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        raise ValueError(f"{name} is a section; set its keys as {name}.KEY")
    return value


def finite_float(text: str) -> float:
    """argparse ``type=`` for float flags: a number that is not NaN or infinite.

    ``float("nan")`` parses, and NaN compares False with every bound, so range checks
    written as ``x < 0`` let it through.
    """
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def nonfinite_fields(obj: Any, section: str) -> list[str]:
    """``section.field = value`` problems for every float field of the dataclass ``obj`` that
    is NaN or infinite (for ``__post_init__``: Python callers skip :func:`apply`'s coercion)."""
    return [
        f"{section}.{f.name} must be a finite number, got {getattr(obj, f.name)!r}"
        for f in dataclasses.fields(obj)
        if isinstance(getattr(obj, f.name), float) and not math.isfinite(getattr(obj, f.name))
    ]


def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _is_composite(cfg: Any) -> bool:
    hints = _hints(type(cfg))
    return any(dataclasses.is_dataclass(hints[f.name]) for f in dataclasses.fields(cfg))


def _unknown(key: str, known: list[str], where: str) -> str:
    hint = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    msg = f"unknown config key {key!r} in {where}"
    return msg + (f"; did you mean {hint[0]!r}?" if hint else f"; valid keys: {', '.join(sorted(known))}")


# An empty section (``{"log": {}}``, a YAML ``log: {}``) flattens to this, not to nothing, so
# that a misspelt empty section is still reported as unknown instead of silently dropped.
_EMPTY_SECTION = object()


def _flatten(mapping: Mapping, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in mapping.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and not v:
            flat[key] = _EMPTY_SECTION
        elif isinstance(v, Mapping):
            flat.update(_flatten(v, key + "."))
        else:
            flat[key] = v
    return flat


def apply(cfg: T, mapping: Mapping[str, Any] | None, source: str = "config") -> T:
    """Return a copy of ``cfg`` with ``mapping`` applied (values coerced, all problems reported).

    Args:
        cfg: a section or composite dataclass instance.
        mapping: ``{key: value}``, ``{"section.key": value}`` or ``{section: {key: value}}``.
        source: where the values came from (``"flags"``, a YAML path), for error messages.

    Raises:
        ConfigError: listing every unknown key (with suggestions), bad value, and
            failed cross-field check at once.
    """
    if not mapping:
        return _revalidate(cfg, source)
    if not isinstance(mapping, Mapping):  # e.g. `model: 3` in a YAML/JSON file
        raise ConfigError(f"{source}: expected a mapping of keys to values, got {type(mapping).__name__} {mapping!r}")
    flat = _flatten(mapping)
    problems: list[str] = []
    if _is_composite(cfg):
        sections = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
        per_section: dict[str, dict[str, Any]] = {name: {} for name in sections}
        top_level: dict[str, Any] = {}
        top_fields = [f.name for f in dataclasses.fields(cfg) if not dataclasses.is_dataclass(getattr(cfg, f.name))]
        for key, value in flat.items():
            section, _, sub = key.partition(".")
            if value is _EMPTY_SECTION and not sub and section in sections and dataclasses.is_dataclass(sections[section]):
                continue  # a known section with nothing in it
            if not sub:
                if section in top_fields:
                    top_level[section] = value
                else:
                    problems.append(_unknown(key, [f"{s}.KEY" for s in sections] + top_fields, source))
                continue
            if section not in sections or not dataclasses.is_dataclass(sections[section]):
                problems.append(_unknown(section, [s for s in sections if dataclasses.is_dataclass(sections[s])], source))
                continue
            per_section[section][sub] = value
        new_sections: dict[str, Any] = {}
        for name, sub_cfg in sections.items():
            if not dataclasses.is_dataclass(sub_cfg):
                continue
            try:
                new_sections[name] = _apply_section(sub_cfg, per_section[name], source, prefix=f"{name}.")
            except ConfigError as e:
                problems.extend(str(e).split("\n"))
        if problems:
            raise ConfigError("\n".join(problems))
        hints = _hints(type(cfg))
        for key, value in top_level.items():
            try:
                new_sections[key] = coerce(value, hints[key], key)
            except ValueError as e:
                problems.append(str(e))
        if problems:
            raise ConfigError("\n".join(problems))
        return _replace(cfg, new_sections, source)
    return _apply_section(cfg, flat, source)


def _apply_section(cfg: T, flat: Mapping[str, Any], source: str, prefix: str = "") -> T:
    hints = _hints(type(cfg))
    names = [f.name for f in dataclasses.fields(cfg) if f.init]
    changes: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in flat.items():
        if key not in names:
            problems.append(_unknown(prefix + key, [prefix + n for n in names], source))
            continue
        if value is _EMPTY_SECTION:
            problems.append(f"{source}: {prefix + key} is an empty mapping; give it a value")
            continue
        try:
            changes[key] = coerce(value, hints[key], prefix + key)
        except ValueError as e:
            problems.append(str(e))
    if problems:
        raise ConfigError("\n".join(problems))
    return _replace(cfg, changes, source)


def _replace(cfg: T, changes: dict[str, Any], source: str) -> T:
    try:
        return dataclasses.replace(cfg, **changes)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{source}: {e}") from None


def _revalidate(cfg: T, source: str) -> T:
    return _replace(cfg, {}, source)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain nested dict of a dataclass (tuples become lists), for JSON/YAML."""

    def convert(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: convert(getattr(v, f.name)) for f in dataclasses.fields(v) if f.init}
        if isinstance(v, (list, tuple)):
            return [convert(x) for x in v]
        if isinstance(v, dict):
            return {k: convert(x) for k, x in v.items()}
        return v

    return convert(cfg)


def from_dict(cls: type[T], mapping: Mapping[str, Any] | None, source: str = "config") -> T:
    """Build ``cls`` from defaults plus ``mapping`` (same checks as :func:`apply`)."""
    return apply(cls(), mapping, source)


def parse_dotted_flags(argv: list[str]) -> dict[str, str]:
    """Parse ``--section.key value`` and ``--section.key=value`` pairs.

    Only arguments whose name contains a dot are consumed; anything else is an
    error (argparse handles the ordinary flags before this is called).

    Raises:
        ConfigError: for a flag without a value or a stray argument.
    """
    out: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or "." not in arg.split("=", 1)[0]:
            raise ConfigError(f"unrecognized argument {arg!r}; config overrides look like --section.key VALUE")
        name = arg[2:]
        if "=" in name:
            name, value = name.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(argv):
                raise ConfigError(f"flag --{name} needs a value")
            value = argv[i + 1]
            i += 2
        out[name.replace("-", "_")] = value
    return out


def describe(cfg: Any, prefix: str = "") -> list[tuple[str, str, str]]:
    """``(flag, default, help)`` rows for every field, for ``--help`` text."""
    rows: list[tuple[str, str, str]] = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            rows.extend(describe(value, prefix=f"{prefix}{f.name}."))
        elif f.init:
            rows.append((f"--{prefix}{f.name}", repr(value), field_help(f)))
    return rows


__all__ = [
    "apply",
    "cfg_field",
    "coerce",
    "describe",
    "field_help",
    "from_dict",
    "parse_dotted_flags",
    "to_dict",
]
