"""Packaging: the SPDX license form (the TOML-table form is deprecated, and setuptools stops
building it on 2027-02-18, which would break the two set-up commands on a fresh machine), a
pinned build-backend range, and a build without warnings from our own files."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_license_is_an_spdx_string_with_its_file_and_the_backend_is_pinned() -> None:
    meta = _pyproject()
    assert meta["project"]["license"] == "MIT"
    files = meta["project"]["license-files"]
    assert files and all((REPO / f).is_file() for f in files)
    (backend,) = [r for r in meta["build-system"]["requires"] if r.startswith("setuptools")]
    low, high = re.fullmatch(r"setuptools>=([\d.]+),<([\d.]+)", backend).groups()
    assert tuple(map(int, low.split("."))) >= (77,)  # PEP 639 license expressions


@pytest.mark.slow
def test_wheel_builds_without_warnings_from_our_files(tmp_path: Path) -> None:
    """The build backend (fetched within the pinned range) warns about nothing we wrote."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = proc.stdout + proc.stderr
    ours = [ln for ln in log.splitlines() if re.search(r"(Deprecation|BuildBackend|Setuptools)\w*Warning", ln)]
    assert ours == [], ours
    (wheel,) = tmp_path.glob("gptforge-*.whl")
    with zipfile.ZipFile(wheel) as z:
        metadata = next(z.read(n).decode() for n in z.namelist() if n.endswith("METADATA"))
        assert any(n.endswith("licenses/LICENSE") for n in z.namelist())
    assert "License-Expression: MIT" in metadata
