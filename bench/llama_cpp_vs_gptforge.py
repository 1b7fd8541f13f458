"""GGUF export against llama.cpp: file sizes per dtype, greedy-token agreement and decode
tokens/s of llama.cpp (llama-cpp-python) and gptforge on the same model, batch 1, CPU.

    python bench/llama_cpp_vs_gptforge.py                       # random-weight gpt2 (124M) shape, 3 prompts x 64 tokens
    python bench/llama_cpp_vs_gptforge.py --model runs/x/final --threads 2

Both sides decode greedily from the same prompt ids; tokens/s is new tokens over the wall
time of the whole call (prompt included), best of --repeats. Agreement: tokens equal to
gptforge's before the first difference, summed over the prompts.

``--quantized int8,int4``: the model is also quantized by gptforge (int4 in groups of 32, the
size of a GGUF block) and that model exported (its own integers as q8_0 / q4_1); gptforge's
quantized decoding and llama.cpp's run on the same integer weights, and agreement is counted
against gptforge's quantized tokens.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _machine import cpu_model, use_shared_data  # noqa: E402  (bench/_machine.py, beside this script)

PROMPTS = ["Hello, I'm a language model,", "The capital of France is", "def fibonacci(n):\n    "]


def main() -> None:
    use_shared_data()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model dir (default: a random gpt2-shaped model)")
    ap.add_argument("--dtypes", default="f32,f16,q8_0,q4_0")
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--quantized", default="", help="also gptforge-quantized models: int8,int4 (group 32)")
    args = ap.parse_args()

    import llama_cpp

    from gptforge.interop.gguf import export_gguf
    from gptforge.model.config import GPTConfig
    from gptforge.model.gpt import GPT
    from gptforge.model.loading import load_model, save_model
    from gptforge.tokenizer import load_tokenizer

    torch.set_num_threads(args.threads)
    cpu = cpu_model()
    print(f"CPU {cpu}, {os.cpu_count()} cores, {args.threads} threads both sides, load {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model
        if path is None:
            torch.manual_seed(0)
            cfg = GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257)
            path = str(Path(tmp) / "random-gpt2")
            save_model(GPT(cfg), path, tokenizer=load_tokenizer("gpt2"))
        model = load_model(path)
        prompts = [model.tokenizer.encode(p) for p in PROMPTS]

        def ours(m) -> tuple[list[list[int]], float]:  # noqa: ANN001
            best, out = float("inf"), []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                out = [m.generate(torch.tensor([ids]), args.new, temperature=0)[0, len(ids):].tolist() for ids in prompts]
                best = min(best, time.perf_counter() - t0)
            return out, len(prompts) * args.new / best

        def llama(f: Path, want: list[list[int]]) -> tuple[float, str]:
            llm = llama_cpp.Llama(str(f), n_ctx=model.config.block_size, n_threads=args.threads,
                                  n_threads_batch=args.threads, logits_all=True, verbose=False)
            # logits_all: llama-cpp-python fills `scores` only then (0.3.x); it adds the head's cost
            # on prompt positions, which is small next to the decode steps.
            best = float("inf")
            for _ in range(args.repeats):
                got = []
                t0 = time.perf_counter()
                for ids in prompts:
                    llm.reset()
                    llm.eval(ids)
                    out = []
                    for _ in range(args.new):
                        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))  # the last position's logits
                        out.append(nxt)
                        llm.eval([nxt])
                    got.append(out)
                best = min(best, time.perf_counter() - t0)
            del llm
            agree = sum(next((k for k, (a, b) in enumerate(zip(g, w, strict=True)) if a != b), args.new)
                        for g, w in zip(got, want, strict=True))
            return len(prompts) * args.new / best, f"{agree}/{len(prompts) * args.new}"

        want, tps = ours(model)
        rows = [("gptforge (torch f32)", "-", tps, "-")]
        for dtype in [d for d in args.dtypes.split(",") if d]:
            f = Path(tmp) / f"m-{dtype}.gguf"
            size = export_gguf(path, f, dtype=dtype)["bytes"]
            tps, agree = llama(f, want)
            rows.append((f"llama.cpp {dtype}", f"{size / 1e6:.1f}", tps, agree))
        for method in [m for m in args.quantized.split(",") if m]:
            from gptforge.quantize import quantize, save_quantized

            qdir = Path(tmp) / f"q-{method}"
            save_quantized(quantize(load_model(path), method, group_size=32), qdir, tokenizer=model.tokenizer)
            qmodel = load_model(qdir)
            qwant, tps = ours(qmodel)
            rows.append((f"gptforge {method}", f"{(qdir / 'model.safetensors').stat().st_size / 1e6:.1f}", tps, "-"))
            f = Path(tmp) / f"q-{method}.gguf"
            summary = export_gguf(qdir, f)
            tps, agree = llama(f, qwant)
            rows.append((f"llama.cpp {summary['quantized_as']} ({method})", f"{summary['bytes'] / 1e6:.1f}", tps, agree))
            del qmodel
    print(f"{'side':<28}{'file MB':>9}{'tokens/s':>10}{'agree':>10}")
    for name, size, tps, agree in rows:
        print(f"{name:<28}{size:>9}{tps:>10.1f}{agree:>10}")
    print(f"load {os.getloadavg()}")


if __name__ == "__main__":
    main()
