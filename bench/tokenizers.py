"""Tokenizer benchmark: our BPE trainers vs Hugging Face `tokenizers`, and GPT-2 encode speed.

On tinyshakespeare, in one run, side by side:

* training time of ``bpe`` (no split pattern) and ``regex-bpe`` (GPT-2 split
  pattern, the same pre-tokenization as Hugging Face's ByteLevel) at each vocab
  size, against the Hugging Face BPE trainer (byte-level) at the same size;
* GPT-2 encode throughput (MB/s of UTF-8 input) of our pure-Python path (cold
  cache: a fresh tokenizer per repeat), our fast path, and tiktoken's gpt2
  encoding built offline from the same ``encoder.json`` / ``vocab.bpe``.

Targets (issue 2): regex-bpe at 8192 within 5x of Hugging Face's training time;
pure gpt2 encode >= 1 MB/s; fast path >= 0.9x tiktoken.

At scale (``--mb``): the corpus is the first N MB of the ``.py`` files of this Python's
site-packages, sorted by path (real, diverse text on every machine; the packages it came
from are printed). One venv may hold fewer MB than asked (this one: ~226 MB); then name more
folders, read in order, no file twice: ``--site-packages VENV/site-packages OTHER/site-packages
OTHER/lib/python3.11`` (a standard library). Our ``regex-bpe`` trainer (GPT-2 pattern, ``<|endoftext|>`` special,
``--workers``) and Hugging Face's BPE trainer (ByteLevel pre-tokenizer, which splits with the
same GPT-2 pattern, the same special) each run in a fresh process that streams the files:
wall time, that process's peak RSS (its worker processes' peak apart), and how many of the
first 1,000 merges agree (as byte pairs, in order).

Usage::

    python bench/tokenizers.py                      # full table (about a minute on 2 cores)
    python bench/tokenizers.py --mb 30 100 300 --vocab 4096 32768 [--workers 2]
    python bench/tokenizers.py --sizes 512 --repeats 1
    python bench/tokenizers.py --json

Tokenizers run on the CPU; ``--device`` is accepted for uniformity with the other
benchmarks and ignored. Timings on a shared machine are noisy: compare the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from _machine import cpu_model  # noqa: E402  (bench/_machine.py, beside this script)

# This file is named like the Hugging Face package it benchmarks, and a script run from
# bench/ has bench/ first on sys.path, so `import tokenizers` would find this file:
# * run as a script, we drop bench/ from sys.path before anything imports `tokenizers`;
# * imported as `tokenizers` by another bench script (e.g. through transformers), we load
#   the real package and put it in our place in sys.modules (the import system returns
#   whatever sys.modules holds once this file has run).
_HERE = Path(__file__).resolve().parent


def _without_here(paths: list[str]) -> list[str]:
    return [p for p in paths if Path(p or ".").resolve() != _HERE]


if __name__ == "tokenizers":
    import importlib

    _saved_path = sys.path[:]
    _me = sys.modules.pop("tokenizers")
    sys.path[:] = _without_here(sys.path)
    try:
        sys.modules["tokenizers"] = importlib.import_module("tokenizers")
    except ImportError:
        sys.modules["tokenizers"] = _me
        raise
    finally:
        sys.path[:] = _saved_path
else:
    sys.path[:] = _without_here(sys.path)


def best_time(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of ``fn``: the fastest of ``repeats`` runs for each.

    CPU time (``time.process_time``, all of this process's threads) is what a busy
    shared machine disturbs least; for multi-threaded code (Hugging Face's trainer,
    which uses every core) it is the total work, which can exceed the wall time.
    """
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus)


def hf_train(text: str, vocab_size: int) -> int:
    """Hugging Face's byte-level BPE trainer (the same set-up as gptforge's hf-bpe, no specials)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([text], trainer)
    return tok.get_vocab_size()


def tiktoken_gpt2(gpt2_dir: Path):  # noqa: ANN201
    """tiktoken's gpt2 Encoding, built offline from the two files with tiktoken's own loader."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    os.environ["TIKTOKEN_CACHE_DIR"] = ""  # read the files, never a cached copy
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(gpt2_dir / "vocab.bpe"), encoder_json_file=str(gpt2_dir / "encoder.json")
    )
    return tiktoken.Encoding(
        name="gpt2-ref",
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": 50256},
        explicit_n_vocab=50257,
    )


def site_packages_roots(roots: list[str] | None = None) -> list[Path]:
    """The folders the at-scale corpus is read from: ``--site-packages`` as given, else this
    Python's site-packages."""
    import sysconfig

    return [Path(r) for r in roots] if roots else [Path(sysconfig.get_paths()["purelib"])]


def site_packages_files(mb: float, roots: list[str] | None = None) -> tuple[list[tuple[Path, int]], list[str]]:
    """The sorted .py files of the site-packages folders that make the first ``mb`` MB: ((path,
    bytes to read) per file, the top-level packages they belong to). Several folders (one
    venv's site-packages holds ~200 MB of .py) are read in the order given, each sorted by path;
    a file already taken (the same path inside an earlier folder: the same package file, or the
    same file on disk, as a standard library folder holding site-packages) is skipped, so no
    file counts twice. Fewer MB than asked is an error: a row labelled 300 MB must hold 300 MB."""
    budget = int(mb * 1e6)
    out: list[tuple[Path, int]] = []
    seen: set[Path] = set()  # paths inside a root, and resolved paths
    packages: set[str] = set()
    for root in site_packages_roots(roots):
        for path in sorted(root.rglob("*.py")):
            if budget <= 0:
                break
            rel = path.relative_to(root)
            if rel in seen or path.resolve() in seen or not path.is_file():
                continue
            seen.update((rel, path.resolve()))
            size = min(path.stat().st_size, budget)
            out.append((path, size))
            packages.add(rel.parts[0].removesuffix(".py"))
            budget -= size
    if budget > 0:
        got = (int(mb * 1e6) - budget) / 1e6
        raise SystemExit(f"error: the .py files of {', '.join(map(str, site_packages_roots(roots)))} hold only "
                         f"{got:.1f} MB, fewer than --mb {mb:g}; add folders with --site-packages DIR ...")
    return out, sorted(packages)


def _read_files(files: list[tuple[Path, int]]):  # noqa: ANN202 - a generator
    for path, size in files:
        with open(path, "rb") as f:
            yield f.read(size).decode("utf-8", errors="replace")


def _scale_worker(engine: str, mb: float, vocab: int, workers: int, roots: list[str] | None = None) -> dict:
    """One training run in this (fresh) process: seconds, peak RSS, the first 1,000 merges as hex pairs."""
    import resource

    from gptforge.tokenizer.gpt2 import bytes_to_unicode

    files, _ = site_packages_files(mb, roots)
    t0 = time.perf_counter()
    if engine == "hf":
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(_read_files(files), trainer)
        seconds = time.perf_counter() - t0
        decoder = {c: b for b, c in bytes_to_unicode().items()}
        merges = json.loads(tok.to_str())["model"]["merges"]
        pairs = []
        for m in merges[:1000]:
            a, b = m if isinstance(m, list) else m.split(" ")
            pairs.append([bytes(decoder[c] for c in a).hex(), bytes(decoder[c] for c in b).hex()])
    else:
        from gptforge.tokenizer.bpe import BPETokenizer

        tok = BPETokenizer.train(_read_files(files), vocab, "gpt2", ["<|endoftext|>"], workers=workers)
        seconds = time.perf_counter() - t0
        vocab_bytes = [bytes([i]) for i in range(256)]
        for a, b in tok.merges:
            vocab_bytes.append(vocab_bytes[a] + vocab_bytes[b])
        pairs = [[vocab_bytes[a].hex(), vocab_bytes[b].hex()] for a, b in list(tok.merges)[:1000]]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB -> MB (Linux)
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"seconds": seconds, "peak_mb": peak, "workers_peak_mb": children, "merges": pairs}


def scale_table(args: argparse.Namespace) -> int:
    import subprocess

    cpu = cpu_model()
    _, packages = site_packages_files(max(args.mb), args.site_packages)
    print(f"# {cpu}, {os.cpu_count()} cpus, load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    roots = " then ".join(map(str, site_packages_roots(args.site_packages)))
    print(f"# corpus: .py files of {roots}, sorted by path; {max(args.mb)} MB span {len(packages)} "
          f"packages: {' '.join(packages)}")
    print("| MB | vocab | HF s | ours s | time ratio | HF peak MB | ours peak MB (+workers) | memory ratio "
          "| first 1000 merges agree |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    for mb in args.mb:
        for vocab in args.vocab:
            res = {}
            for engine in ("hf", "ours"):  # alternating, one fresh process each
                cmd = [sys.executable, __file__, "--_scale-worker", engine, "--mb", str(mb), "--vocab", str(vocab),
                       "--workers", str(args.workers)]
                if args.site_packages:
                    cmd += ["--site-packages", *args.site_packages]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                res[engine] = json.loads(out.strip().splitlines()[-1])
            hf, ours = res["hf"], res["ours"]
            agree = sum(a == b for a, b in zip(hf["merges"], ours["merges"]))
            w = f" (+{ours['workers_peak_mb']:.0f})" if args.workers > 1 else ""
            print(f"| {mb} | {vocab} | {hf['seconds']:.1f} | {ours['seconds']:.1f} | "
                  f"{ours['seconds'] / hf['seconds']:.2f}x | {hf['peak_mb']:.0f} | {ours['peak_mb']:.0f}{w} | "
                  f"{ours['peak_mb'] / hf['peak_mb']:.2f}x | {agree} |", flush=True)
    print(f"# load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from gptforge.io import data_dir
    from gptforge.tokenizer.bpe import BPETokenizer
    from gptforge.tokenizer.gpt2 import GPT2Tokenizer, gpt2_files

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--input", default=None, help="corpus (default: $GPTFORGE_DATA_DIR/tinyshakespeare.txt)"
    )
    ap.add_argument(
        "--sizes", type=int, nargs="+", default=[512, 4096, 8192], help="vocab sizes to train"
    )
    ap.add_argument(
        "--repeats", type=int, default=2, help="timed repeats per measurement (best is kept)"
    )
    ap.add_argument(
        "--skip-bpe", action="store_true", help="skip the plain bpe kind (the slowest to train)"
    )
    ap.add_argument("--device", default="cpu", help="ignored: tokenizers run on the CPU")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    ap.add_argument("--mb", type=float, nargs="*", default=None,
                    help="at-scale table: corpus sizes in MB of site-packages .py files")
    ap.add_argument("--vocab", type=int, nargs="+", default=[4096, 32768], help="at-scale vocab sizes")
    ap.add_argument("--workers", type=int, default=1, help="at-scale: our trainer's counting processes")
    ap.add_argument("--site-packages", nargs="+", default=None, metavar="DIR",
                    help="at-scale: folders whose .py files make the corpus, in order (default: this "
                         "Python's site-packages; a file path already taken is skipped)")
    ap.add_argument("--_scale-worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._scale_worker:
        print(json.dumps(_scale_worker(args._scale_worker, args.mb[0], args.vocab[0], args.workers, args.site_packages)))
        return 0
    if args.mb:
        return scale_table(args)

    path = Path(args.input) if args.input else data_dir() / "tinyshakespeare.txt"
    if not path.is_file():
        print(
            f"error: corpus {path} not found; pass --input or set GPTFORGE_DATA_DIR",
            file=sys.stderr,
        )
        return 2
    text = path.read_text(encoding="utf-8")
    mb = len(text.encode("utf-8")) / 1e6
    result: dict = {"corpus": str(path), "corpus_mb": mb, "train": [], "encode": {}}

    for size in args.sizes:
        row: dict = {"vocab_size": size}
        row["hf"] = best_time(lambda s=size: hf_train(text, s), args.repeats)
        row["regex_bpe"] = best_time(
            lambda s=size: BPETokenizer.train(text, s, "gpt2"), args.repeats
        )
        if not args.skip_bpe:
            row["bpe"] = best_time(lambda s=size: BPETokenizer.train(text, s), 1)
        result["train"].append(row)
        print(f"trained vocab {size}", file=sys.stderr)

    enc_path, voc_path = gpt2_files()
    ref = tiktoken_gpt2(enc_path.parent)
    fast = GPT2Tokenizer(enc_path, voc_path, fast=True)
    fast.encode("warm up")
    expected = ref.encode_ordinary(text)
    assert fast.encode(text) == expected, "fast path differs from tiktoken"

    def pure_cold() -> list[int]:
        # the parsed files are cached between instances; the per-chunk encode cache is not
        return GPT2Tokenizer(enc_path, voc_path, fast=False).encode(text)

    assert pure_cold() == expected, "pure path differs from tiktoken"
    times = {
        "tiktoken": best_time(lambda: ref.encode_ordinary(text), args.repeats + 1),
        "fast": best_time(lambda: fast.encode(text), args.repeats + 1),
        "pure": best_time(pure_cold, args.repeats),
    }
    for k, clock in enumerate(("wall", "cpu")):
        result["encode"][clock] = {f"{name}_mb_s": mb / t[k] for name, t in times.items()}

    if args.json:
        print(json.dumps(result))
        return 0
    print(f"corpus: {path} ({mb:.2f} MB)\n")
    print(
        f"training time, seconds (best of {args.repeats}; bpe: 1 run); ratio = ours / Hugging Face"
    )
    print(
        f"{'vocab':>6} | {'clock':>5} | {'HF':>7} | {'regex-bpe':>9} | {'ratio':>6} | {'bpe':>7} | {'ratio':>6}"
    )
    print("-" * 64)
    for r in result["train"]:
        for k, clock in enumerate(("wall", "cpu")):
            hf, rb = r["hf"][k], r["regex_bpe"][k]
            bpe = (
                f"{r['bpe'][k]:7.2f} | {r['bpe'][k] / hf:5.1f}x"
                if "bpe" in r
                else f"{'-':>7} | {'-':>6}"
            )
            print(
                f"{r['vocab_size']:>6} | {clock:>5} | {hf:7.2f} | {rb:9.2f} | {rb / hf:5.1f}x | {bpe}"
            )
    print("\ngpt2 encode throughput, MB/s (pure: cold chunk cache); ratio = ours / tiktoken")
    print(
        f"{'clock':>5} | {'tiktoken':>8} | {'ours fast':>9} | {'ratio':>6} | {'ours pure':>9} | {'ratio':>6}"
    )
    print("-" * 60)
    for clock, e in result["encode"].items():
        ref_speed = e["tiktoken_mb_s"]
        print(
            f"{clock:>5} | {ref_speed:8.2f} | {e['fast_mb_s']:9.2f} | {e['fast_mb_s'] / ref_speed:5.2f}x | "
            f"{e['pure_mb_s']:9.2f} | {e['pure_mb_s'] / ref_speed:5.2f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
