"""The quantization methods and their options, checked without importing torch (the CLI checks first)."""

from __future__ import annotations

import difflib

from gptforge.errors import ConfigError

METHODS = ("int8", "int8-dynamic", "int4")
BITS = {"int8": 8, "int8-dynamic": 8, "int4": 4}
GROUP_SIZES = (32, 64, 128)  # int4 groups along the input width


def check_method(method: str, group_size: int) -> None:
    """Raise ConfigError for an unknown method or an unsupported int4 group size."""
    if method not in METHODS:
        close = difflib.get_close_matches(method, METHODS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"unknown quantization method {method!r}: expected one of {', '.join(METHODS)}{hint}"
        )
    if method == "int4" and group_size not in GROUP_SIZES:
        raise ConfigError(
            f"group size {group_size} is not supported: expected one of {', '.join(map(str, GROUP_SIZES))}"
        )
