"""Load test: `gptforge serve` under concurrent clients that stream, complete and disconnect.

Starts the real server (`python -m gptforge serve`, a subprocess on 127.0.0.1, a free port)
on a model, then runs CLIENTS threads for SECONDS. Each client loops over a seeded mix of
requests: a plain completion, a streamed chat read to the end, a stream dropped after its
first event (a client that goes away), and a malformed body (must be a 400). Inside the
limits (clients <= --max-batch + --max-queue) no request may fail. The server's RSS is
sampled every second from /proc; after the load the server must report nothing in flight.

    python bench/serve_load.py                          # 4 clients, 180 s, a tiny random model
    python bench/serve_load.py --seconds 600 --clients 8 --model runs/demo --device cuda

Prints one table (and --json: one JSON object): requests by kind, failures, RSS after warm-up,
at the end and at its peak.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

PROMPTS = [
    "Once upon a time",
    "The quick brown fox",
    "To be, or not to be",
    "hello",
    "A B C D E F G",
]


def tiny_model(out: Path) -> Path:
    """A small random model with a byte-level tokenizer (any prompt encodes)."""
    import torch

    from gptforge import GPT, GPTConfig
    from gptforge.model.loading import save_model
    from gptforge.tokenizer.bpe import BPETokenizer

    tok = BPETokenizer.train(" ".join(PROMPTS) * 20, 300)
    torch.manual_seed(0)
    save_model(
        GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=2, n_head=2, n_embd=32)),
        out,
        tok,
    )
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Server:
    """`python -m gptforge serve` in a subprocess, on 127.0.0.1 only."""

    def __init__(self, model: Path, *flags: str, device: str = "cpu") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "gptforge", "serve", "--model", str(model), "--host", "127.0.0.1",
               "--port", str(self.port), "--device", device, *flags]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )

    def __enter__(self) -> Server:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read()}")
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("server did not start in 300 s")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _client(
    url: str, deadline: float, seed: int, counts: Counter, failures: list[str], lock: threading.Lock
) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=url, timeout=300) as client:
        while time.monotonic() < deadline:
            kind = rng.choice(["complete", "stream", "stream", "disconnect", "bad"])
            prompt = rng.choice(PROMPTS)
            problem = None
            try:
                if kind == "complete":
                    r = client.post(
                        "/v1/completions", json={"prompt": prompt, "max_tokens": rng.randint(1, 12)}
                    )
                    if r.status_code != 200 or not r.json()["choices"]:
                        problem = f"complete: {r.status_code} {r.text[:200]}"
                elif kind == "bad":
                    r = client.post("/v1/chat/completions", json={"messages": [], "max_tokens": -3})
                    if r.status_code != 400:
                        problem = f"bad: expected 400, got {r.status_code} {r.text[:200]}"
                else:
                    body = {"messages": [{"role": "user", "content": prompt}], "stream": True,
                            "max_tokens": rng.randint(4, 24)}  # fmt: skip
                    with client.stream("POST", "/v1/chat/completions", json=body) as r:
                        if r.status_code != 200:
                            problem = f"{kind}: {r.status_code} {r.read()[:200]!r}"
                        elif kind == "disconnect":
                            next(r.iter_lines(), None)  # one event, then hang up mid-stream
                        else:
                            lines = [x for x in r.iter_lines() if x]
                            if not lines or lines[-1] != "data: [DONE]":
                                problem = f"stream: ended without [DONE] ({lines[-1:]})"
            except httpx.HTTPError as e:
                problem = f"{kind}: {type(e).__name__}: {e}"
            with lock:
                counts[kind] += 1
                if problem:
                    failures.append(problem)


def run_load(url: str, pid: int, seconds: float, clients: int, seed: int = 0) -> dict[str, Any]:
    """Drive the server at ``url`` (process ``pid``) for ``seconds``; returns counts, failures, RSS."""
    counts: Counter = Counter()
    failures: list[str] = []
    lock = threading.Lock()
    start = time.monotonic()
    deadline = start + seconds
    threads = [threading.Thread(target=_client, args=(url, deadline, seed + i, counts, failures, lock), daemon=True)
               for i in range(clients)]  # fmt: skip
    for t in threads:
        t.start()
    samples: list[tuple[float, float]] = []
    while any(t.is_alive() for t in threads):
        samples.append((time.monotonic() - start, rss_mb(pid)))
        time.sleep(1.0)
    for t in threads:
        t.join()
    health: dict[str, Any] = {}
    for _ in range(60):  # dropped streams release their slot once the server notices
        health = httpx.get(url + "/health", timeout=30).json()
        if health.get("active") == 0 and health.get("queued") == 0:
            break
        time.sleep(0.5)
    samples.append((time.monotonic() - start, rss_mb(pid)))
    warm = [m for t, m in samples if t >= seconds / 3] or [samples[-1][1]]
    return {
        "seconds": round(time.monotonic() - start, 1), "clients": clients, "requests": sum(counts.values()),
        "by_kind": dict(counts), "failed": len(failures), "failures": failures[:10], "health_after": health,
        "rss_warm_mb": round(warm[0], 1), "rss_end_mb": round(samples[-1][1], 1),
        "rss_peak_mb": round(max(m for _, m in samples), 1),
    }  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default=None, help="model dir (default: a tiny random model)")
    ap.add_argument("--seconds", type=float, default=180.0)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--max-batch", type=int, default=1)
    ap.add_argument("--max-queue", type=int, default=16)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (passed to gptforge serve)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        model = Path(args.model) if args.model else tiny_model(Path(d) / "tiny")
        flags = ["--max-batch", str(args.max_batch), "--max-queue", str(args.max_queue)]
        with Server(model, *flags, device=args.device) as server:
            stats = run_load(server.url, server.proc.pid, args.seconds, args.clients, args.seed)
    if args.json:
        print(json.dumps(stats))
    else:
        print(
            f"{'seconds':>8} {'clients':>8} {'requests':>9} {'failed':>7} {'RSS warm':>9} {'RSS end':>8} {'RSS peak':>9}"
        )
        print(f"{stats['seconds']:>8} {stats['clients']:>8} {stats['requests']:>9} {stats['failed']:>7} "
              f"{stats['rss_warm_mb']:>8.1f}M {stats['rss_end_mb']:>7.1f}M {stats['rss_peak_mb']:>8.1f}M")  # fmt: skip
        print("by kind:", stats["by_kind"], "| after:", stats["health_after"])
        for f in stats["failures"]:
            print("FAILED:", f)
    return 1 if stats["failed"] else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
