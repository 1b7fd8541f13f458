"""Benchmark: fp32 vs int8 (ours) vs int8 dynamic vs int4 (g=64), side by side in one run.

Two models:

1. **trained**: a GPT trained by gptforge on tinyshakespeare (characters, the
   ``shakespeare-char-cpu`` preset: 4 layers, n_embd 128, context 64). Pass one with
   ``--trained-model RUN_OR_DIR --data DATASET_DIR``, or let the script make it once under
   ``--work`` with ``gptforge prepare`` + ``gptforge train`` (OMP_NUM_THREADS=1: these
   matmuls are tiny, and extra threads only add synchronisation on a busy machine).
2. **gpt2-124M**: the ``gpt2`` preset (12 layers, n_embd 768, vocab 50257, tied
   embeddings) with random GPT-2 initialisation. Its val loss is evaluated on
   tinyshakespeare encoded with the GPT-2 BPE; for a random model only the KL and the
   sizes/speed mean anything.

Per variant: model.safetensors size, the quantized layers' weight bytes vs their fp32
bytes, greedy batch-1 decoding tokens/s (prompt 16, 32 new tokens, through
``gptforge.generate.engine.generate``; variants interleaved, best of ``--repeats``), val
loss and mean KL(fp32 || variant) on the same windows. The +emb rows quantize the
embeddings (and, tied, the LM head) too. A per-layer table times one 768x3072 matmul at
batch 1 for each kernel path.

  python bench/quantize.py                      # CPU, ~10 minutes the first time (training)
  python bench/quantize.py --skip-gpt2          # the trained model only
  python bench/quantize.py --device cuda        # GPU (CPU kernels do not apply: dequantize per call;
                                                # adds torchao rows when torchao is installed)

Targets: quantized layers' weights <= 27% (int8) and <= 16% (int4 g=64) of fp32; val loss
within 0.5% (int8) and 3% (int4) of fp32 on the trained model; int8 >= 1.3x fp32
decoding tokens/s on the gpt2-124M shape (CPU).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"

from gptforge.generate.cpu_decoding import prepare_for_decoding  # noqa: E402
from gptforge.model.config import GPTConfig  # noqa: E402
from gptforge.model.gpt import GPT  # noqa: E402
from gptforge.model.loading import load_model, save_model  # noqa: E402
from gptforge.quantize import int4, int8  # noqa: E402
from gptforge.quantize.convert import quantize, save_quantized  # noqa: E402
from gptforge.quantize.report import compare_quality, decode_tokens_per_s, linear_weight_bytes  # noqa: E402

VARIANTS = [  # label, method, options, timed
    ("fp32", None, {}, True),
    ("int8", "int8", {}, True),
    ("int8 dynamic", "int8-dynamic", {}, True),
    ("int4 g=64", "int4", {"group_size": 64}, True),
    ("int8 +emb", "int8", {"include_embeddings": True}, False),
    ("int4 g=64 +emb", "int4", {"group_size": 64, "include_embeddings": True}, False),
]


def _cli(*args: str, env: dict | None = None) -> None:
    cmd = [sys.executable, "-m", "gptforge", *args]
    print("$", " ".join(cmd[1:]), file=sys.stderr)
    subprocess.run(
        cmd, check=True, env=dict(os.environ, GPTFORGE_DATA_DIR=str(DATA), **(env or {}))
    )


def ensure_trained(work: Path, steps: int) -> tuple[Path, Path]:
    """A gptforge-trained tinyshakespeare char model and its dataset (made once, cached)."""
    data, run = work / "shakespeare-char", work / "run-char"
    if not (data / "meta.json").is_file():
        _cli(
            "prepare",
            "--input",
            str(DATA / "tinyshakespeare.txt"),
            "--tokenizer",
            "char",
            "--out",
            str(data),
            "--val-fraction",
            "0.1",
        )
    if not (run / "final" / "config.json").is_file():
        _cli(
            "train",
            "--preset",
            "shakespeare-char-cpu",
            "--data",
            str(data),
            "--out",
            str(run),
            "--overwrite",
            "--train.max_steps",
            str(steps),
            env={"OMP_NUM_THREADS": "1"},
        )
    return run, data


def trained_windows(data_dir: Path, block: int, n: int) -> torch.Tensor:
    from gptforge.data.shards import open_dataset
    from gptforge.quantize.report import eval_windows, split_tokens

    ds = open_dataset(data_dir)
    return eval_windows(split_tokens(ds, "val", (block + 1) * n + 1), block, n)


def gpt2_windows(n: int, length: int) -> torch.Tensor:
    """tinyshakespeare's last 10% encoded with the GPT-2 BPE: (n, length + 1)."""
    from gptforge.tokenizer import load_tokenizer

    text = (DATA / "tinyshakespeare.txt").read_text()
    ids = load_tokenizer("gpt2").encode(text[int(len(text) * 0.9) :])
    rows = [ids[i * length : i * length + length + 1] for i in range(n)]
    return torch.tensor(rows, dtype=torch.long)


def _torchao_variants(model: GPT, device: str) -> list[tuple[str, GPT]]:
    """torchao's weight-only int8/int4 on a copy of the model, when torchao is installed (GPU)."""
    try:
        from torchao.quantization import quantize_
    except ImportError:
        print("torchao not installed: no torchao rows", file=sys.stderr)
        return []
    out = []
    try:
        from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig

        configs = [
            ("torchao int8wo", Int8WeightOnlyConfig(), torch.float32),
            ("torchao int4wo g=64", Int4WeightOnlyConfig(group_size=64), torch.bfloat16),
        ]
    except ImportError:  # older torchao spells them as functions
        from torchao.quantization import int4_weight_only, int8_weight_only

        configs = [
            ("torchao int8wo", int8_weight_only(), torch.float32),
            ("torchao int4wo g=64", int4_weight_only(group_size=64), torch.bfloat16),
        ]
    for label, cfg, dtype in configs:
        try:
            m = copy.deepcopy(model).to(device=device, dtype=dtype)
            quantize_(m, cfg)
            out.append((label, m))
        except Exception as e:  # an optional comparison: report and go on
            print(f"{label}: {type(e).__name__}: {e}", file=sys.stderr)
    return out


def bench_model(
    name: str, base: GPT, windows: torch.Tensor, work: Path, args: argparse.Namespace
) -> list[dict]:
    """Every variant of ``base``: sizes, tokens/s (interleaved), val loss and KL vs fp32."""
    device = args.device
    base = base.to(device).eval()
    fp32_dir = work / f"{name}-fp32"
    save_model(base, fp32_dir)
    rows, models = [], {}
    for label, method, opts, timed in VARIANTS:
        if method is None:
            m, mdir = base, fp32_dir
        else:
            mdir = work / f"{name}-{label.replace(' ', '_').replace('=', '').replace('+', '')}"
            save_quantized(quantize(copy.deepcopy(base).cpu(), method, **opts), mdir)
            m = load_model(mdir, device=device)  # what is on disk
        q = getattr(m, "quantization", None)
        names = (q["linear"] + q["embedding"]) if q else None
        row = {
            "model": name,
            "variant": label,
            "file_bytes": (mdir / "model.safetensors").stat().st_size,
        }
        if names:
            row["layers_ratio"] = linear_weight_bytes(m, names) / linear_weight_bytes(base, names)
        rows.append(row)
        models[label] = (m, timed)
    if device == "cuda" or args.torchao:
        for label, m in _torchao_variants(base, device):
            rows.append({"model": name, "variant": label, "file_bytes": None})
            models[label] = (m, True)
    prompt = windows[:1, :16].to(device)
    for m, _ in models.values():
        prepare_for_decoding(m)  # as `gptforge generate` runs them (CPU layout; values unchanged)
    speeds: dict[str, list[float]] = {r["variant"]: [] for r in rows}
    for _ in range(args.repeats):  # interleaved, so background load hits every variant alike
        for label, (m, timed) in models.items():
            if timed or args.time_all:
                speeds[label].append(decode_tokens_per_s(m, prompt, args.new_tokens))
    x = windows.to(device)
    for row in rows:
        m, _ = models[row["variant"]]
        if speeds[row["variant"]]:
            row["tokens_per_s"] = max(speeds[row["variant"]])
        qual = compare_quality(base, m, x, batch_size=args.eval_batch)
        row.update(val_loss=qual["loss_quantized"], kl=qual["kl"], top1_agree=qual["agree"])
    fp = rows[0]
    for row in rows:
        row["file_ratio"] = row["file_bytes"] / fp["file_bytes"] if row["file_bytes"] else None
        row["val_loss_rel"] = row["val_loss"] / fp["val_loss"] - 1
        if "tokens_per_s" in row:
            row["speedup"] = row["tokens_per_s"] / fp["tokens_per_s"]
    return rows


@torch.no_grad()
def kernel_table(repeats: int = 200) -> list[dict]:
    """One 768 -> 3072 layer at batch 1: time per matmul for each path (CPU)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3072, 768, generator=g) * 0.02
    x = torch.randn(1, 768, generator=g)
    q8, s8 = int8.quantize_int8(w)
    s8b = s8.to(torch.bfloat16)
    p4, sc4, z4 = int4.quantize_int4(w, 64)
    k4 = int4.Int4CpuKernel(p4, sc4, z4) if int4.Int4CpuKernel.accepts(3072, 768) else None
    paths = {
        "fp32 F.linear": lambda: F.linear(x, w),
        "int8 kernel (_weight_int8pack_mm, bf16 act.)": lambda: int8.int8_linear_kernel(
            x, q8, s8b, None
        ),
        "int8 dequantize per call": lambda: int8.int8_linear_reference(x, q8, s8, None),
        "int8 dynamic (_int_mm)": lambda: int8.int8_linear_dynamic(x, q8, s8, None),
        "int4 dequantize per call": lambda: int4.int4_linear_reference(x, p4, sc4, z4, None),
    }
    if k4 is not None:
        paths["int4 kernel (_weight_int4pack_mm_for_cpu, bf16 act.)"] = lambda: k4(x, None)
    best: dict[str, float] = {k: float("inf") for k in paths}
    for _ in range(3):  # rounds, interleaved
        for name, fn in paths.items():
            for _ in range(5):
                fn()
            n = repeats if "dequantize" not in name else max(10, repeats // 10)
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            best[name] = min(best[name], (time.perf_counter() - t0) / n * 1e6)
    return [{"path": k, "us": v, "vs_fp32": best["fp32 F.linear"] / v} for k, v in best.items()]


def _fmt_rows(rows: list[dict]) -> str:
    head = [
        "model",
        "variant",
        "file MB",
        "file/fp32",
        "layers/fp32",
        "tok/s",
        "x fp32",
        "val loss",
        "d loss",
        "KL",
        "top1",
    ]
    lines = [head]
    for r in rows:
        lines.append(
            [
                r["model"],
                r["variant"],
                f"{r['file_bytes'] / 1e6:.2f}" if r["file_bytes"] else "-",
                f"{r['file_ratio']:.3f}" if r.get("file_ratio") else "-",
                f"{r['layers_ratio']:.3f}" if "layers_ratio" in r else "-",
                f"{r['tokens_per_s']:.1f}" if "tokens_per_s" in r else "-",
                f"{r['speedup']:.2f}" if "speedup" in r else "-",
                f"{r['val_loss']:.4f}",
                f"{100 * r['val_loss_rel']:+.2f}%",
                f"{r['kl']:.2e}",
                f"{r['top1_agree']:.3f}",
            ]
        )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    return "\n".join(
        "  ".join(
            str(c).rjust(w) if i > 1 else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(line, widths))
        )
        for line in lines
    )


def check_targets(rows: list[dict]) -> list[str]:
    out = []
    by = {(r["model"], r["variant"]): r for r in rows}

    def line(ok: bool, text: str) -> None:
        out.append(f"[{'PASS' if ok else 'FAIL'}] {text}")

    for model in sorted({r["model"] for r in rows}):
        r8, r4 = by.get((model, "int8")), by.get((model, "int4 g=64"))
        if r8:
            line(
                r8["layers_ratio"] <= 0.27,
                f"{model}: int8 layers {r8['layers_ratio']:.1%} of fp32 (<= 27%)",
            )
        if r4:
            line(
                r4["layers_ratio"] <= 0.16,
                f"{model}: int4 g=64 layers {r4['layers_ratio']:.1%} of fp32 (<= 16%)",
            )
    if ("trained", "int8") in by:
        r8, r4 = by[("trained", "int8")], by[("trained", "int4 g=64")]
        line(
            abs(r8["val_loss_rel"]) <= 0.005,
            f"trained: int8 val loss {100 * r8['val_loss_rel']:+.2f}% (<= 0.5%)",
        )
        line(
            abs(r4["val_loss_rel"]) <= 0.03,
            f"trained: int4 val loss {100 * r4['val_loss_rel']:+.2f}% (<= 3%)",
        )
    if ("gpt2-124M", "int8") in by and "speedup" in by[("gpt2-124M", "int8")]:
        s = by[("gpt2-124M", "int8")]["speedup"]
        line(s >= 1.3, f"gpt2-124M: int8 decoding {s:.2f}x fp32 tokens/s (>= 1.3x)")
    return out


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--trained-model", help="a gptforge model/run dir trained on --data (default: train one)"
    )
    p.add_argument("--data", help="dataset dir of --trained-model")
    p.add_argument(
        "--work",
        default="/tmp/gptforge-bench-quantize",
        help="cache for the trained model and files",
    )
    p.add_argument(
        "--train-steps", type=int, default=2000, help="steps when training the model here"
    )
    p.add_argument("--skip-gpt2", action="store_true", help="only the trained model")
    p.add_argument("--skip-trained", action="store_true", help="only the gpt2-124M shape")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=3, help="timing rounds (best of)")
    p.add_argument("--new-tokens", type=int, default=32, help="tokens generated per timing")
    p.add_argument(
        "--eval-windows", type=int, default=32, help="trained model: val windows (block_size each)"
    )
    p.add_argument(
        "--gpt2-windows", type=int, default=4, help="gpt2-124M: val windows of 256 tokens"
    )
    p.add_argument("--eval-batch", type=int, default=4)
    p.add_argument("--time-all", action="store_true", help="also time the +emb variants")
    p.add_argument(
        "--torchao",
        action="store_true",
        help="add torchao weight-only rows on CPU too (default: cuda only)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args()
    os.environ.setdefault("GPTFORGE_DATA_DIR", str(DATA))  # the GPT-2 BPE files and the corpus
    import logging

    logging.basicConfig(
        level=logging.ERROR
    )  # bench dirs carry no tokenizer.json: no warning about it
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    rows: list[dict] = []
    t0 = time.time()
    if not args.skip_trained:
        if args.trained_model:
            if not args.data:
                p.error("--trained-model needs --data (the dataset it was trained on)")
            model_path, data_dir = Path(args.trained_model), Path(args.data)
        else:
            model_path, data_dir = ensure_trained(work, args.train_steps)
        base = load_model(model_path)
        windows = trained_windows(data_dir, base.config.block_size, args.eval_windows)
        rows += bench_model("trained", base, windows, work, args)
    if not args.skip_gpt2:
        base = GPT(GPTConfig.from_preset("gpt2", vocab_size=50257)).eval()
        rows += bench_model("gpt2-124M", base, gpt2_windows(args.gpt2_windows, 256), work, args)
    kernels = kernel_table() if args.device == "cpu" else []
    result = {
        "rows": rows,
        "kernels": kernels,
        "targets": check_targets(rows),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": args.device,
        "seconds": round(time.time() - t0, 1),
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}; "
        f"decode: batch 1, greedy, prompt 16, {args.new_tokens} new tokens, best of {args.repeats}"
    )
    print(_fmt_rows(rows))
    if kernels:
        print("\none 768x3072 layer, batch 1 (best of 3 rounds):")
        width = max(len(k["path"]) for k in kernels)
        for k in kernels:
            print(f"  {k['path'].ljust(width)}  {k['us']:9.1f} us  {k['vs_fp32']:5.2f}x fp32")
    print()
    print("\n".join(result["targets"]))
    print(f"({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
