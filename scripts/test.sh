#!/usr/bin/env bash
# The README's test command: a fresh virtual environment, torch 2.13.0 (CPU) first,
# then gptforge with its [dev] extra, then the fast test tier.
# Slow tests: `bash scripts/test.sh -m slow`.
set -euo pipefail
cd "$(dirname "$0")/.."
export GPTFORGE_DATA_DIR="${GPTFORGE_DATA_DIR:-$(cd .. && pwd)/shared/data}"
# A relative path (GPTFORGE_DATA_DIR=../shared/data) is made absolute: tests run commands in other folders.
if [ -d "$GPTFORGE_DATA_DIR" ]; then GPTFORGE_DATA_DIR="$(cd "$GPTFORGE_DATA_DIR" && pwd)"; fi
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[dev]"
python -m pytest -q "$@"
