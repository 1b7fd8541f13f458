"""Benchmark `gptforge prepare`: throughput and peak memory against raw tiktoken.

Builds a corpus of --mb megabytes in a temporary folder from the shared data
(tinyshakespeare, the-verdict and the instruction data: their lines shuffled into
many documents of varied length, one text file each), then, in the same run:

* tiktoken: single-thread ``encode_ordinary`` of every document (text already in
  memory; only the encode is timed) -- the reference;
* ``gptforge prepare --tokenizer gpt2`` with 1 and with 2 workers, each in a
  subprocess whose whole process tree's RSS is sampled from /proc.

Targets (issue 3): 1 worker >= 0.8x tiktoken; 2 workers >= 1.6x; peak RSS < 500 MB.

    python bench/prepare.py                 # 200 MB, workers 1 and 2
    python bench/prepare.py --mb 50 --workers 1 2 4 --json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _machine import cpu_model  # noqa: E402  (bench/_machine.py, beside this script)

REPO = Path(__file__).resolve().parents[1]
# tiktoken's own spelling of GPT-2's split (tiktoken_ext/openai_public.py, r50k_pat_str), so the
# reference is exactly tiktoken.get_encoding("gpt2") built offline from the shared files
GPT2_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


def data_dir() -> Path:
    env = os.environ.get("GPTFORGE_DATA_DIR")
    return Path(env) if env else REPO.parent / "shared" / "data"


def source_lines(data: Path) -> list[str]:
    lines = (data / "tinyshakespeare.txt").read_text().splitlines()
    lines += (data / "the-verdict.txt").read_text().splitlines()
    for rec in json.loads((data / "instruction-data.json").read_text()):
        for key in ("instruction", "input", "output"):
            lines += [ln for ln in rec.get(key, "").splitlines()]
    return lines


def build_corpus(folder: Path, megabytes: float, seed: int = 0) -> tuple[int, int]:
    """Documents of 20..2000 random lines (some blank, some indented), one file each."""
    rng = random.Random(seed)
    lines = source_lines(data_dir())
    target = int(megabytes * 1e6)
    written, docs = 0, 0
    while written < target:
        n = rng.randint(20, 2000)
        body = "\n".join(
            ("    " if rng.random() < 0.05 else "") + rng.choice(lines)
            if rng.random() > 0.08
            else ""
            for _ in range(n)
        )
        path = folder / f"{docs // 1000:03d}" / f"doc{docs:06d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = (body + "\n").encode()
        path.write_bytes(data)
        written += len(data)
        docs += 1
    return docs, written


def tiktoken_reference(folder: Path) -> tuple[int, float]:
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    d = data_dir() / "gpt2"
    ranks = data_gym_to_mergeable_bpe_ranks(str(d / "vocab.bpe"), str(d / "encoder.json"))
    enc = tiktoken.Encoding(
        "gpt2", pat_str=GPT2_PAT, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256}
    )
    tokens, seconds = 0, 0.0
    for path in sorted(folder.rglob("*.txt")):
        text = path.read_text()
        t = time.perf_counter()
        tokens += len(enc.encode_ordinary(text))
        seconds += time.perf_counter() - t
    return tokens, seconds


def tree_rss(pid: int) -> int:
    """Sum of VmRSS (bytes) of ``pid`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        stack.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def run_prepare(folder: Path, out: Path, workers: int) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "gptforge",
        "prepare",
        "--input",
        str(folder),
        "--tokenizer",
        "gpt2",
        "--out",
        str(out),
        "--workers",
        str(workers),
        "--json",
        "--no-progress",
        "--overwrite",
    ]
    peak = 0
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, tree_rss(proc.pid))
            time.sleep(0.05)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    stdout, stderr = proc.communicate()
    stop.set()
    th.join()
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"prepare failed ({proc.returncode}): {stderr.strip()}")
    summary = json.loads(stdout)
    summary.update(wall=wall, peak_rss=peak)
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--mb", type=float, default=200.0, help="corpus size in MB (default 200)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--tmp", default=None, help="where to build the corpus (default: a temp dir)")
    ap.add_argument("--json", action="store_true", help="print the results as one JSON object")
    args = ap.parse_args()

    cpu, load_before = cpu_model(), os.getloadavg()[0]
    print(f"# {cpu}, load average {load_before:.2f}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
          file=sys.stderr, flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="gptforge-bench-prepare-") as tmp:
        corpus = Path(tmp) / "corpus"
        t = time.perf_counter()
        docs, nbytes = build_corpus(corpus, args.mb)
        print(
            f"corpus: {docs:,} documents, {nbytes / 1e6:.1f} MB ({time.perf_counter() - t:.1f} s to build)",
            file=sys.stderr,
        )
        # the reference is timed before and after the prepare runs and averaged, so a change
        # in machine load during the run hits both sides
        ref_tokens, ref_s = tiktoken_reference(corpus)
        rows = []
        for w in args.workers:
            s = run_prepare(corpus, Path(tmp) / f"out{w}", w)
            tokens = sum(s["tokens"].values())
            if tokens != ref_tokens + s["documents"]:
                raise SystemExit(
                    f"prepare wrote {tokens} tokens, tiktoken + eots gives {ref_tokens + s['documents']}"
                )
            rows.append(
                {
                    "name": f"gptforge prepare --workers {w}",
                    "tokens": tokens,
                    "seconds": s["seconds"],
                    "tokens_per_s": tokens / s["seconds"],
                    "peak_rss_mb": s["peak_rss"] / 1e6,
                    "wall_s": s["wall"],
                }
            )
        ref_tokens2, ref_s2 = tiktoken_reference(corpus)
    ref_rate = 2 * ref_tokens / (ref_s + ref_s2)
    for r in rows:
        r["ratio"] = r["tokens_per_s"] / ref_rate
    rows.insert(
        0,
        {
            "name": "tiktoken encode_ordinary (1 thread, in memory)",
            "tokens": ref_tokens,
            "seconds": (ref_s + ref_s2) / 2,
            "tokens_per_s": ref_rate,
            "ratio": 1.0,
            "peak_rss_mb": None,
            "seconds_before_after": [ref_s, ref_s2],
        },
    )
    result = {
        "corpus_mb": nbytes / 1e6,
        "documents": docs,
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "load_average_before": load_before,
        "load_average": os.getloadavg()[0],
        "rows": rows,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"\n{cpu}; corpus {nbytes / 1e6:.1f} MB, {docs:,} documents, {os.cpu_count()} CPUs, load average "
        f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after; tiktoken timed before/after: "
        f"{rows[0]['seconds_before_after'][0]:.1f} s / {rows[0]['seconds_before_after'][1]:.1f} s"
    )
    print(f"{'':48} {'tokens':>12} {'s':>7} {'Mtok/s':>8} {'x tiktoken':>10} {'peak RSS MB':>12}")
    for r in rows:
        rss = f"{r['peak_rss_mb']:.0f}" if r["peak_rss_mb"] is not None else "-"
        print(
            f"{r['name']:48} {r['tokens']:>12,} {r['seconds']:>7.2f} {r['tokens_per_s'] / 1e6:>8.2f} "
            f"{r['ratio']:>10.2f} {rss:>12}"
        )


if __name__ == "__main__":
    main()
