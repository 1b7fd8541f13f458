"""Placeholder: this command is being built (see the issues)."""

from __future__ import annotations

import argparse

from gptforge.errors import GptforgeError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise GptforgeError("this command is not implemented yet")
