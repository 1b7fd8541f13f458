"""Errors a user can cause and fix.

Library code raises these; ``cli/main.py`` turns them into one line on stderr
(``error: ...``) and exit code 2. Anything else that escapes is a bug and keeps
its traceback. A message says what was wrong (with the value), what was
expected, and what to do about it.
"""

from __future__ import annotations


class GptforgeError(Exception):
    """Base class for every error caused by input the user can change."""


class ConfigError(GptforgeError, ValueError):
    """A config value, YAML file or ``--section.key`` flag is invalid."""


class TokenizerError(GptforgeError):
    """A tokenizer spec, file, corpus or id sequence is invalid."""


class DataError(GptforgeError):
    """A dataset input or dataset dir is missing, malformed or incompatible."""


class ModelError(GptforgeError):
    """A model dir or model input (shapes, token ids) is invalid."""


class CheckpointError(GptforgeError):
    """A run dir or checkpoint is missing, incomplete or corrupt."""


class UnsafeFileError(GptforgeError):
    """A file would need to execute code (a pickle) to load, and is refused."""
