"""Evaluation speed: ``gptforge.evaluate.evaluate_tokens`` vs transformers on the same windows.

Both sides score the same random-weight GPT-2 (imported through gptforge's own HF
importer, so the weights are identical) on the same strided windows of the same
tokens, in the same process, one after the other; the table reports tokens scored per
second, the ratio, and the two losses (they must agree). Also times import/export of
the model folder.

  python bench/eval.py                                   # gpt2 (124M) on CPU, 2048 tokens
  python bench/eval.py --device cuda --dtype bfloat16 --tokens 65536 --batch-size 16
  python bench/eval.py --size tiny --tokens 4096         # a quick CPU check

Task mode (``--task``): HellaSwag accuracy and seconds of ``gptforge eval --task`` on each
``--model`` (or a random-weight model of ``--size``), beside a reference on the first
``--ref-items`` items: transformers' GPT2LMHeadModel (the ``export --format hf`` of the
same model) scoring every choice as its own full sequence (no shared context), summed by
hand; the table gives both sides' seconds per item and how many predictions agree.

  python bench/eval.py --task hellaswag --dtype bfloat16                 # whole val, random gpt2
  python bench/eval.py --task hellaswag --model runs/x/final --limit 1000
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _machine import cpu_model, use_shared_data  # noqa: E402  (bench/_machine.py, beside this script)

SIZES = {  # n_layer, n_head, n_embd
    "tiny": (2, 4, 128),
    "gpt2": (12, 12, 768),
    "gpt2-medium": (24, 16, 1024),
}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.inference_mode()
def hf_eval(hf: torch.nn.Module, tokens: np.ndarray, block: int, stride: int, batch_size: int, device: str) -> tuple[float, int]:
    """The transformers side: full logits for every window position, then CE on the scored ones."""
    from gptforge.evaluate import sliding_windows

    windows = sliding_windows(len(tokens), block, stride)
    nll, count = 0.0, 0
    for b in range(0, len(windows), batch_size):
        batch = windows[b : b + batch_size]
        x = torch.from_numpy(np.stack([tokens[w.start : w.end] for w in batch]).astype(np.int64)).to(device)
        y = torch.from_numpy(np.stack([tokens[w.start + 1 : w.end + 1] for w in batch]).astype(np.int64)).to(device)
        pos = torch.arange(x.shape[1], device=device)[None]
        first = torch.tensor([w.score_from - w.start - 1 for w in batch], device=device)[:, None]
        keep = pos >= first
        logits = hf(x).logits
        nll += float(F.cross_entropy(logits[keep].float(), y[keep], reduction="sum"))
        count += int(keep.sum())
    return nll / count, count


def main() -> None:
    use_shared_data()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=list(SIZES), default="gpt2")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--block-size", type=int, default=1024)
    ap.add_argument("--stride", type=int, default=None, help="default block_size // 2")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2, help="alternating timed runs per side (best is kept)")
    ap.add_argument("--task", default=None, help="task mode: hellaswag, mc:FILE or cloze:FILE")
    ap.add_argument("--model", action="append", default=[], help="task mode: model dirs (default: random --size)")
    ap.add_argument("--limit", type=int, default=None, help="task mode: first N items (default all)")
    ap.add_argument("--ref-items", type=int, default=40, help="task mode: items the reference side scores")
    args = ap.parse_args()
    if args.task:
        task_bench(args)
        return

    import transformers

    from gptforge.evaluate import evaluate_tokens
    from gptforge.interop.hf import export_hf, import_hf
    from gptforge.model.hf_gpt2 import load_hf_gpt2

    n_layer, n_head, n_embd = SIZES[args.size]
    stride = args.stride or args.block_size // 2
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=args.block_size)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "hf"
        transformers.GPT2LMHeadModel(cfg).save_pretrained(folder)
        t0 = time.perf_counter()
        import_hf(folder, Path(tmp) / "ours")  # no tokenizer files: the built-in gpt2 is used
        t_import = time.perf_counter() - t0
        t0 = time.perf_counter()
        export_hf(Path(tmp) / "ours", Path(tmp) / "back")
        t_export = time.perf_counter() - t0
        ours = load_hf_gpt2(folder, tokenizer=None).to(device=args.device, dtype=dtype).eval()
        hf = transformers.GPT2LMHeadModel.from_pretrained(folder, dtype=dtype).to(args.device).eval()
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, size=args.tokens)

    best = {"gptforge": math.inf, "transformers": math.inf}
    losses = {}
    for _ in range(args.repeats):
        _sync(args.device)
        t0 = time.perf_counter()
        r = evaluate_tokens(ours, tokens, block_size=args.block_size, stride=stride, batch_size=args.batch_size)
        _sync(args.device)
        best["gptforge"] = min(best["gptforge"], time.perf_counter() - t0)
        losses["gptforge"], n = r["loss"], r["tokens"]
        t0 = time.perf_counter()
        losses["transformers"], _ = hf_eval(hf, tokens, args.block_size, stride, args.batch_size, args.device)
        _sync(args.device)
        best["transformers"] = min(best["transformers"], time.perf_counter() - t0)

    print(f"eval: {args.size} (random weights), {args.device} {args.dtype}, {n} tokens scored, "
          f"block {args.block_size}, stride {stride}, batch {args.batch_size}, best of {args.repeats}")
    print(f"{'side':<14}{'seconds':>10}{'tokens/s':>12}{'loss':>12}")
    for side in ("gptforge", "transformers"):
        print(f"{side:<14}{best[side]:>10.2f}{n / best[side]:>12.0f}{losses[side]:>12.5f}")
    print(f"speed ratio gptforge / transformers: {best['transformers'] / best['gptforge']:.2f}x")
    print(f"import {t_import:.2f}s, export {t_export:.2f}s (HF folder <-> model dir, {args.size})")


def _machine() -> str:
    import os

    cpu = cpu_model()
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    return f"CPU {cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, load {load}"


@torch.inference_mode()
def _reference_choices(hf: torch.nn.Module, encoded: list, block: int) -> list[int]:
    """Per item, the argmax-sum choice from transformers' full logits, one sequence per choice."""
    preds = []
    for ctx, choices in encoded:
        ctx = ctx[-(block - max(map(len, choices))) :]
        sums = []
        for ch in choices:
            ids = torch.tensor([ctx + ch])
            logp = torch.log_softmax(hf(ids).logits[0].float(), dim=-1)  # (T, V)
            first = len(ctx)
            sums.append(sum(float(logp[first + k - 1, t]) for k, t in enumerate(ch)))
        preds.append(max(range(len(sums)), key=sums.__getitem__))
    return preds


def task_bench(args: argparse.Namespace) -> None:
    import transformers

    from gptforge.evaluate.task_files import load_task
    from gptforge.evaluate.tasks import encode_item, evaluate_task
    from gptforge.interop.hf import export_hf
    from gptforge.model.config import GPTConfig
    from gptforge.model.gpt import GPT
    from gptforge.model.loading import load_model, save_model
    from gptforge.tokenizer import load_tokenizer

    dtype = getattr(torch, args.dtype)
    task = load_task(args.task)
    print(f"task {task.name}: {len(task.items)} items; {args.device} {args.dtype}, batch {args.batch_size}")
    print(_machine())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        models = list(args.model)
        if not models:
            n_layer, n_head, n_embd = SIZES[args.size]
            torch.manual_seed(0)
            cfg = GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=1024, vocab_size=50257)
            save_model(GPT(cfg), Path(tmp) / "random", tokenizer=load_tokenizer("gpt2"))
            models = [str(Path(tmp) / "random")]
        for i, path in enumerate(models):
            name = f"random {args.size}" if not args.model else path
            model = load_model(path, device=args.device, dtype=dtype)
            result, samples = evaluate_task(model, task, batch_size=args.batch_size, limit=args.limit, progress=True)
            ref = None
            try:  # the reference needs an HF-exportable model
                if args.ref_items <= 0:
                    raise ValueError("--ref-items 0")
                export_hf(path, Path(tmp) / f"hf{i}")
                hf = transformers.GPT2LMHeadModel.from_pretrained(Path(tmp) / f"hf{i}", dtype=dtype).eval()
                items = task.items[: args.ref_items]
                encoded = [encode_item(model.tokenizer, it) for it in items]
                t0 = time.perf_counter()
                preds = _reference_choices(hf, encoded, model.config.block_size)
                seconds = time.perf_counter() - t0
                agree = sum(p == s["pred"] for p, s in zip(preds, samples, strict=False))
                ref = (seconds / len(items), agree, len(items))
            except Exception as e:  # noqa: BLE001 - a bench reports what it could not do
                print(f"  (no transformers reference for {name}: {e})")
            rows.append((name, result, ref))
    print(f"{'model':<34}{'items':>7}{'acc':>8}{'norm/tok':>10}{'norm/byte':>10}{'seconds':>9}"
          f"{'s/item':>8}{'ref s/item':>11}{'agree':>9}")
    for name, r, ref in rows:
        m = r["metrics"]
        refs = f"{ref[0]:>11.3f}{f'{ref[1]}/{ref[2]}':>9}" if ref else f"{'-':>11}{'-':>9}"
        print(f"{name[-34:]:<34}{r['items']:>7}{m['acc']:>8.4f}{m['acc_norm_token']:>10.4f}"
              f"{m['acc_norm_byte']:>10.4f}{r['seconds']:>9.1f}{r['seconds'] / r['items']:>8.3f}{refs}")
    print("anchors: GPT-2 124M acc_norm 0.2955 (completion style, llm.c), 0.3114 (lm-eval multiple-choice "
          "style); chance 0.25")
    print(_machine())


if __name__ == "__main__":
    main()
