"""Benchmark: continuous batching in `gptforge serve` against one-at-a-time serving.

Starts the real server (`python -m gptforge serve`, a subprocess on 127.0.0.1) twice on
the same model: with batching (`--max-batch 64`) and without (`--max-batch 1`, what the
server did before continuous batching). For 1, 4, 16 and 64 concurrent streaming clients
each client sends requests back to back for a fixed window (the same prompts and seeds in
both runs; the end-of-text token is biased away so every request makes exactly --max-tokens
tokens) and the table shows, side by side: total generated tokens/s over the window, p50
time to first token (a request still waiting when the window closes counts as infinite),
and requests lost (an error, a 429 or a stream that did not end in [DONE]).

    python bench/serve.py                          # a gpt2-124M-shaped random fp32 model, CPU, 2 threads
    python bench/serve.py --model runs/demo --levels 1 4 16

The model is random (speed does not depend on the weights), saved once to a temp folder.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _machine import cpu_model, use_shared_data  # noqa: E402  (bench/_machine.py, beside this script)
from bench.serve_load import Server  # noqa: E402


def gpt2_shaped(out: Path, block_size: int) -> Path:
    import torch

    from gptforge import GPT, GPTConfig, load_tokenizer
    from gptforge.model.loading import save_model

    tok = load_tokenizer("gpt2")
    torch.manual_seed(0)
    save_model(GPT(GPTConfig.from_preset("gpt2", block_size=block_size)), out, tok)
    return out


def prepared(model_dir: Path, batch: int):
    """The model as `gptforge serve --max-batch batch` prepares it (kernels chosen by measuring)."""
    from gptforge.generate.cpu_decoding import prepare_for_decoding
    from gptforge.model.loading import load_model
    from gptforge.serve.batched_decoding import prepare_for_batching

    model = prepare_for_decoding(load_model(model_dir))
    if batch > 1:
        prepare_for_batching(model, rows=min(batch, 16), max_rows=batch)
    return model


def step_probe(model, rows: int, cached: int = 40, repeats: int = 12) -> dict:
    """The ceiling: the model forward of one batched decode step, ``rows`` rows x 1 token
    against a cache holding ``cached`` columns, built as the scheduler builds it (rows starting
    at different columns, so the attention mask and per-row positions are on), against one row.
    Best of ``repeats`` each; ``ceiling`` = rows x (one-row time) / (rows time), the speed-up
    that batching the model could give if nothing else cost anything."""
    import torch

    def best_ms(n: int) -> float:
        cache = model.make_kv_cache(n, max_seq_len=cached + 1)
        cache.k.normal_()
        cache.v.normal_()
        starts = torch.tensor([0] if n == 1 else [r % 8 for r in range(n)])  # (n,)
        pos = (cached - starts)[:, None]  # (n, 1)
        mask = None if n == 1 else torch.arange(cached + 1)[None, :] >= starts[:, None]  # (n, S)
        x = torch.full((n, 1), 11, dtype=torch.long)  # (n, 1)
        best = float("inf")
        with torch.inference_mode():
            for i in range(repeats + 2):
                cache.pos = cached
                t0 = time.perf_counter()
                model(x, kv_cache=cache, attention_mask=mask, position_ids=pos, last_only=True)
                if i >= 2:
                    best = min(best, time.perf_counter() - t0)
        return best * 1e3

    t1, tn = best_ms(1), best_ms(rows)
    return {"rows": rows, "one_row_ms": t1, "rows_ms": tn, "ceiling": rows * t1 / tn}


def scheduler_probe(model, clients: int, seconds: float, max_tokens: int, eot: int | None, batch: int) -> dict:
    """The server without HTTP: ``clients`` sequences at a time through the scheduler itself
    (the bench's requests: same prompts, sampling and logit bias; a finished one is replaced
    at once) for ``seconds``. Tokens/s and milliseconds per decode step."""
    import threading

    from gptforge.serve.scheduler import SamplingParams, Scheduler, Sequence

    tok = model.tokenizer
    sched = Scheduler(model, tok, max_batch=batch, max_queue=clients, cache_len=64 + max_tokens)
    lock, count, stop = threading.Lock(), [0], threading.Event()

    def submit(i: int) -> None:
        p = SamplingParams(max_tokens=max_tokens, temperature=0.8, seed=i, logprobs=0,
                           logit_bias={eot: -100.0} if eot is not None else None)

        def listener(ev, i: int = i) -> None:
            if ev.kind == "token":
                with lock:
                    count[0] += 1
            elif ev.kind in ("done", "error") and not stop.is_set():
                submit(i + 1000)

        sched.submit([Sequence(tok.encode(f"Request {i}: the king said that"), p, listener)])

    try:
        for c in range(clients):
            submit(c * 100000)
        time.sleep(min(5.0, seconds / 4))  # warm up: every client running
        n0, s0, t0 = count[0], sched.stats.steps, time.perf_counter()
        time.sleep(seconds)
        n1, s1, t1 = count[0], sched.stats.steps, time.perf_counter()
    finally:
        stop.set()
        sched.close()
    return {"clients": clients, "tokens_per_s": (n1 - n0) / (t1 - t0), "ms_per_step": (t1 - t0) / max(1, s1 - s0) * 1e3}


async def _one(client: httpx.AsyncClient, i: int, max_tokens: int, eot: int | None, stats: dict) -> None:
    """One streamed completion. ``logprobs: 0`` makes every token its own event, so tokens are
    counted as they arrive (a request cut off by the end of the window still counts its part)."""
    body = {"prompt": f"Request {i}: the king said that", "max_tokens": max_tokens, "temperature": 0.8,
            "seed": i, "stream": True, "logprobs": 0}
    if eot is not None:
        body["logit_bias"] = {str(eot): -100}  # every request makes exactly max_tokens tokens
    t0 = time.perf_counter()
    first = True
    stats["started"] += 1
    try:
        async with client.stream("POST", "/v1/completions", json=body) as r:
            if r.status_code != 200:
                stats["lost"] += 1
                return
            last = ""
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                last = line[6:]
                if last == "[DONE]":
                    break
                chunk = json.loads(last)
                lp = chunk["choices"][0]["logprobs"] if chunk["choices"] else None
                if lp and lp["tokens"]:
                    stats["tokens"] += len(lp["tokens"])
                    if first:
                        stats["ttft"].append(time.perf_counter() - t0)
                        first = False
            if last != "[DONE]":
                stats["lost"] += 1
            else:
                stats["done"] += 1
    except httpx.HTTPError:
        stats["lost"] += 1


async def run_level(url: str, clients: int, seconds: float, max_tokens: int, eot: int | None) -> dict:
    """``clients`` streaming clients, each sending requests back to back for ``seconds``."""
    stats: dict = {"tokens": 0, "ttft": [], "lost": 0, "done": 0, "started": 0}
    async with httpx.AsyncClient(base_url=url, timeout=1800,
                                 limits=httpx.Limits(max_connections=clients + 4)) as client:
        async def worker(c: int) -> None:
            j = 0
            while True:
                await _one(client, c * 1000 + j, max_tokens, eot, stats)
                j += 1

        tasks = [asyncio.ensure_future(worker(c)) for c in range(clients)]
        await asyncio.sleep(seconds)
        tokens, ttft = stats["tokens"], list(stats["ttft"])
        for t in tasks:  # requests still running when the window closes are cut off, not lost
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    waiting = stats["started"] - len(ttft) - stats["lost"]  # never got a first token in the window
    ttft += [float("inf")] * max(0, waiting)
    return {"clients": clients, "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "ttft_p50": statistics.median(ttft) if ttft else float("nan"), "lost": stats["lost"],
            "completed": stats["done"]}


def main() -> int:
    use_shared_data()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="a model dir (default: a random gpt2-shaped model)")
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--max-tokens", type=int, default=32, help="tokens per request")
    ap.add_argument("--seconds", type=float, default=40.0, help="measuring window per level")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the server")
    ap.add_argument("--batch", type=int, default=64, help="--max-batch of the batched run")
    ap.add_argument("--probe-only", action="store_true", help="only the in-process probes (no server)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    print(f"CPU: {cpu_model()}, load average at the start {os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)
    env_threads = str(args.threads)
    os.environ["OMP_NUM_THREADS"] = env_threads  # the server subprocess inherits it
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or gpt2_shaped(Path(tmp) / "gpt2-shape", block_size=1024)
        # The ceiling, measured in this run: the model step alone, then the scheduler without HTTP.
        served = prepared(model, args.batch)
        eot = served.tokenizer.eot_id
        probe = step_probe(served, 16)
        print(f"  probe: forward of 1 row {probe['one_row_ms']:.1f} ms, 16 rows {probe['rows_ms']:.1f} ms: "
              f"ceiling {probe['ceiling']:.1f}x", file=sys.stderr, flush=True)
        one_row_kernels = step_probe(prepared(model, 1), 16)  # the one-row kernels only (--max-batch 1)
        print(f"  probe with one-row kernels only: 1 row {one_row_kernels['one_row_ms']:.1f} ms, 16 rows "
              f"{one_row_kernels['rows_ms']:.1f} ms", file=sys.stderr, flush=True)
        alone = {}
        for c in (1, 16):
            alone[c] = scheduler_probe(served, c, 15.0, args.max_tokens, eot, args.batch)
            print(f"  scheduler alone, {c:>2} sequences: {alone[c]['tokens_per_s']:.1f} tok/s, "
                  f"{alone[c]['ms_per_step']:.1f} ms/step", file=sys.stderr, flush=True)
        del served
        rows: dict[int, dict] = {}
        for batch in () if args.probe_only else (args.batch, 1):
            flags = ["--max-batch", str(batch), "--max-queue", str(max(args.levels) * 2),
                     "--max-prompt-tokens", "64", "--max-tokens-limit", str(args.max_tokens)]
            with Server(model, *flags) as server:
                asyncio.run(run_level(server.url, 1, 5.0, 4, eot))  # warm-up
                for clients in args.levels:
                    r = asyncio.run(run_level(server.url, clients, args.seconds, args.max_tokens, eot))
                    rows.setdefault(clients, {})[batch] = r
                    print(f"  batch {batch:>3}  clients {clients:>3}: {r['tokens_per_s']:7.1f} tok/s  "
                          f"ttft p50 {r['ttft_p50']:.2f} s  completed {r['completed']}  lost {r['lost']}", file=sys.stderr, flush=True)
    load = os.getloadavg()
    print(f"\nCPU: {cpu_model()}, server torch threads {args.threads}, load average at the end {load[0]:.2f} "
          f"(other jobs may share the machine)")
    print(f"model: {'gpt2-124M shape, random fp32' if args.model is None else args.model}, "
          f"{args.max_tokens} tokens per request, streaming clients\n")
    print(f"ceiling probe (same run): model forward of one decode step, 1 row {probe['one_row_ms']:.1f} ms, "
          f"16 rows {probe['rows_ms']:.1f} ms -> at most {probe['ceiling']:.1f}x from batching the model alone "
          f"(with the one-row kernels only: {one_row_kernels['one_row_ms']:.1f} / {one_row_kernels['rows_ms']:.1f} ms)")
    print(f"scheduler without HTTP: 1 sequence {alone[1]['tokens_per_s']:.1f} tok/s "
          f"({alone[1]['ms_per_step']:.1f} ms/step), 16 sequences {alone[16]['tokens_per_s']:.1f} tok/s "
          f"({alone[16]['ms_per_step']:.1f} ms/step): {alone[16]['tokens_per_s'] / alone[1]['tokens_per_s']:.2f}x\n")
    if args.probe_only:
        return 0
    b = args.batch
    print(f"| clients | tok/s batched (--max-batch {b}) | tok/s one at a time (--max-batch 1) | speed-up "
          f"| TTFT p50 batched | TTFT p50 one at a time | lost (batched / one) |")
    print("|---|---|---|---|---|---|---|")
    for clients in args.levels:
        r1, r0 = rows[clients][b], rows[clients][1]
        print(f"| {clients} | {r1['tokens_per_s']:.1f} | {r0['tokens_per_s']:.1f} | "
              f"{r1['tokens_per_s'] / r0['tokens_per_s']:.2f}x | {r1['ttft_p50']:.2f} s | {r0['ttft_p50']:.2f} s | "
              f"{r1['lost']} / {r0['lost']} |")
    single = rows[args.levels[0]][b]["tokens_per_s"]
    if 16 in rows:
        print(f"\n16 clients batched / 1 client: {rows[16][b]['tokens_per_s'] / single:.2f}x (target >= 8x)")
    if args.json:
        print(json.dumps({"probe": probe, "probe_one_row_kernels": one_row_kernels, "scheduler": {str(c): r for c, r in alone.items()},
                          **{str(c): {str(k): v for k, v in r.items()} for c, r in rows.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
