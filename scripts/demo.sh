#!/usr/bin/env bash
# The README's main-job command: a fresh virtual environment, torch 2.13.0 (CPU) first,
# then gptforge, then `gptforge demo` on tinyshakespeare.
set -euo pipefail
cd "$(dirname "$0")/.."
# The shared data folder beside the checkout is the data cache unless GPTFORGE_DATA_DIR says otherwise.
if [ -z "${GPTFORGE_DATA_DIR:-}" ] && [ -d ../shared/data ]; then
  export GPTFORGE_DATA_DIR="$(cd ../shared/data && pwd)"
fi
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[plot]"
gptforge demo "$@"
