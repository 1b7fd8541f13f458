"""Option spellings every command shares: ``--device`` and ``--dtype`` (torch-free, so that
parsers and ``--help`` do not load torch).

One spelling is documented (``bf16``, ``fp16``, ``fp32``); torch's long names (``bfloat16``,
``float16``, ``float32``) are accepted by every command, which once each took only one of them.
"""

from __future__ import annotations

import argparse

DEVICE_HELP = "auto (CUDA, then MPS, then the CPU), cpu, cuda, cuda:N or mps"
DTYPE_HELP = "bf16, fp16 or fp32 (bfloat16, float16 and float32 are accepted too)"
DTYPE_NAMES = ("fp32", "bf16", "fp16")  # the keys of train.device.DTYPES
_DTYPE_ALIASES = {"float32": "fp32", "float": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}


def dtype_name(text: str, extra: tuple[str, ...] = ()) -> str:
    """argparse ``type=`` for every ``--dtype``: ``bf16``/``bfloat16`` -> ``"bf16"`` and so on
    (``extra`` names further accepted values, e.g. ``tf32`` for a peak-FLOPs figure).

    Raises:
        argparse.ArgumentTypeError: not a dtype name.
    """
    name = text.strip().lower()
    name = _DTYPE_ALIASES.get(name, name)
    if name in DTYPE_NAMES or name in extra:
        return name
    raise argparse.ArgumentTypeError(f"{text!r} is not a dtype; use {DTYPE_HELP}")
