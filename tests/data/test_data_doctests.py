"""The worked examples in the data modules' docstrings are true."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize(
    "name",
    [
        "gptforge.data.loader",
        "gptforge.data.prepare",
        "gptforge.data.readers",
        "gptforge.data.sources",
        "gptforge.data.collate",
    ],
)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
