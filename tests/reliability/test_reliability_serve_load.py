"""The server under a bounded load on loopback: clients streaming, completing and hanging up.

Drives a real `gptforge serve` subprocess with the driver in ``bench/serve_load.py`` (the
bench runs the same thing for minutes): inside the limits no request fails, every dropped
stream gives its slot back, the server stays up, and its RSS stays flat after warm-up.
Fast tier: 4 clients for 20 s; ``pytest -m slow``: 8 clients for 3 minutes one at a time, and
16 clients for 60 s batched together (``--max-batch 16``: rows join and leave every step).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("httpx")

BENCH = Path(__file__).resolve().parents[2] / "bench" / "serve_load.py"


def _driver() -> ModuleType:
    spec = importlib.util.spec_from_file_location("serve_load", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("seconds", "clients", "batch"),
    [(20, 4, 1), pytest.param(180, 8, 1, marks=pytest.mark.slow),
     pytest.param(60, 16, 16, marks=pytest.mark.slow)],
    ids=["20s", "3min", "16clients-batched"],
)
def test_load_loses_nothing_and_memory_stays_flat(
    seconds: int, clients: int, batch: int, tmp_path: Path
) -> None:
    load = _driver()
    model = load.tiny_model(tmp_path / "tiny")
    with load.Server(model, "--max-batch", str(batch), "--max-queue", "16") as server:
        stats = load.run_load(server.url, server.proc.pid, seconds, clients)
        assert server.proc.poll() is None, "the server died under load"
    print(f"\nreliability: serve load {stats}")
    assert stats["failed"] == 0, stats["failures"]
    assert stats["requests"] >= clients  # every client got at least one answer
    assert stats["by_kind"].get("disconnect", 0) + stats["by_kind"].get("stream", 0) > 0
    assert stats["health_after"] == {
        **stats["health_after"],
        "status": "ok",
        "active": 0,
        "queued": 0,
    }
    growth = stats["rss_end_mb"] - stats["rss_warm_mb"]
    assert growth < max(50.0, 0.25 * stats["rss_warm_mb"]), stats  # flat: no per-request leak
