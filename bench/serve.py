"""Benchmark: the HTTP server under 1, 4 and 16 concurrent clients on loopback.

Starts `gptforge serve`'s app in-process (uvicorn on 127.0.0.1, a free port),
then for each concurrency level sends a fixed number of completion requests
from that many client threads and prints a table: completion tokens/s, p50 and
p95 latency, and failed requests (there must be none inside the limits).

    python bench/serve.py                       # a small random gpt2-tokenizer model
    python bench/serve.py --model runs/demo     # a trained model
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _tiny_model(out: Path, n_layer: int, n_embd: int) -> Path:
    import torch

    from gptforge import GPT, GPTConfig, load_tokenizer
    from gptforge.model.loading import save_model

    tok = load_tokenizer("gpt2")
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=256, n_layer=n_layer, n_head=4, n_embd=n_embd)
    save_model(GPT(cfg), out, tok)
    return out


def _percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    k = max(0, min(len(values) - 1, round(q * (len(values) - 1))))
    return values[k]


def run_level(url: str, clients: int, requests: int, max_tokens: int, stream: bool) -> dict:
    latencies: list[float] = []
    tokens = 0
    failures = 0
    lock = threading.Lock()

    def one(i: int) -> None:
        nonlocal tokens, failures
        body = {"prompt": f"Request {i}: the king said", "max_tokens": max_tokens, "temperature": 0.8,
                "seed": i, "stream": stream}
        t0 = time.perf_counter()
        try:
            with httpx.Client(timeout=300) as client:
                if stream:
                    n = 0
                    with client.stream("POST", url + "/v1/completions", json=body) as r:
                        r.raise_for_status()
                        for line in r.iter_lines():
                            if line.startswith("data: {"):
                                n += 1
                    got = max(n - 1, 0)  # the last event carries the finish reason only
                else:
                    r = client.post(url + "/v1/completions", json=body)
                    r.raise_for_status()
                    got = r.json()["usage"]["completion_tokens"]
        except Exception:  # noqa: BLE001 - counted and reported
            with lock:
                failures += 1
            return
        with lock:
            latencies.append(time.perf_counter() - t0)
            tokens += got

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(requests)))
    wall = time.perf_counter() - t0
    return {
        "clients": clients,
        "requests": requests,
        "failed": failures,
        "tokens_per_s": tokens / wall,
        "p50_s": _percentile(latencies, 0.5) if latencies else float("nan"),
        "p95_s": _percentile(latencies, 0.95) if latencies else float("nan"),
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model dir (default: a small random model)")
    parser.add_argument("--requests", type=int, default=32, help="requests per concurrency level")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--levels", default="1,4,16")
    parser.add_argument("--max-concurrent", type=int, default=2, help="server's concurrent generations")
    parser.add_argument("--stream", action="store_true", help="streaming requests")
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=256)
    args = parser.parse_args()

    from tests.serve.server_utils import start_server

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model) if args.model else _tiny_model(Path(tmp) / "m", args.n_layer, args.n_embd)
        levels = [int(x) for x in args.levels.split(",")]
        with start_server(model_dir, max_concurrent=args.max_concurrent, max_queue=max(levels)) as server:
            run_level(server.url, 1, 2, 4, args.stream)  # warm-up
            rows = [run_level(server.url, c, args.requests, args.max_tokens, args.stream) for c in levels]
    print(f"\nserver: max_concurrent={args.max_concurrent}, {args.requests} requests per level, "
          f"max_tokens={args.max_tokens}, stream={args.stream}")
    print(f"{'clients':>8} {'requests':>9} {'failed':>7} {'tok/s':>9} {'p50 s':>8} {'p95 s':>8} {'wall s':>8}")
    for r in rows:
        print(f"{r['clients']:>8} {r['requests']:>9} {r['failed']:>7} {r['tokens_per_s']:>9.1f} "
              f"{r['p50_s']:>8.3f} {r['p95_s']:>8.3f} {r['wall_s']:>8.1f}")
    if any(r["failed"] for r in rows):
        raise SystemExit("some requests failed")


if __name__ == "__main__":
    main()
