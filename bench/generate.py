"""Generation speed: gptforge's KV-cache engine vs Hugging Face transformers vs a no-cache loop.

Batch 1, greedy, a gpt2-124M-shaped model with random weights (speed does not depend on
the values). The same weights are copied into ``transformers.GPT2LMHeadModel`` and the
three engines run interleaved in one process, so machine noise hits them alike; the
table reports the median of ``--reps`` runs. Greedy outputs of gptforge and
transformers are compared token for token ("same" column).

Rows:
  gptforge      gptforge.generate.engine.generate (prefill once, one token per step)
  transformers  GPT2LMHeadModel.generate(use_cache=True, do_sample=False)
  no-cache      what nanoGPT does: the full forward over the whole sequence every step
                (run with --nocache-new tokens only, default 32, because it is slow; its
                tokens/s is per new token over those steps)

Columns: new tokens/s over the whole call (prefill included), time to first token,
decode tokens/s after the first token, and the speedup of gptforge over the row.
Peak RSS is measured per engine in a fresh subprocess (Linux; skip with ``--no-rss``): the
peak resident memory during one 512+128 run (the peak is reset after the model is built, via
/proc/self/clear_refs), and its growth over the loaded model.

Usage:
  python bench/generate.py                       # CPU, fp32, 32+128 and 512+128
  python bench/generate.py --device cuda --dtype bf16 [--compile]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# Running a script puts its folder first on sys.path, where bench/tokenizers.py would shadow
# the `tokenizers` package that transformers imports.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import torch  # noqa: E402


def hf_model(c: object) -> torch.nn.Module:
    """transformers' GPT2LMHeadModel with the shape of GPTConfig ``c`` (random weights)."""
    import transformers

    hf_cfg = transformers.GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd,
                                     n_layer=c.n_layer, n_head=c.n_head, activation_function="gelu_new")
    return transformers.GPT2LMHeadModel(hf_cfg).eval()


def build_models(device: str, dtype: torch.dtype, with_hf: bool, seed: int = 0) -> tuple:
    from gptforge.model.config import GPTConfig
    from gptforge.model.gpt import GPT

    torch.manual_seed(seed)
    model = GPT(GPTConfig.from_preset("gpt2")).eval()  # prepared for decoding below, as `gptforge generate` does
    hf = None
    if with_hf:
        hf = hf_model(model.config)
        conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
        ours = model.state_dict()
        with torch.no_grad():
            for key, value in hf.state_dict().items():
                if key in ours:  # HF Conv1D stores (in, out): transpose
                    value.copy_(ours[key].t() if key.endswith(conv1d) else ours[key])
        hf = hf.to(device=device, dtype=dtype)
    from gptforge.generate.cpu_decoding import prepare_for_decoding

    return prepare_for_decoding(model.to(device=device, dtype=dtype)), hf


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_ours(model: torch.nn.Module, idx: torch.Tensor, n: int, device: str) -> tuple[float, float, torch.Tensor]:
    """(total seconds, seconds to first token, output ids) of the streaming engine."""
    from gptforge.generate.config import GenerationConfig
    from gptforge.generate.engine import stream_tokens

    sync(device)
    t0 = time.perf_counter()
    first = None
    toks = []
    for step in stream_tokens(model, idx, GenerationConfig(max_new_tokens=n, temperature=0)):
        toks.append(step)
        if first is None:
            sync(device)
            first = time.perf_counter() - t0
    sync(device)
    return time.perf_counter() - t0, first, torch.cat([idx, torch.stack(toks, 1)], 1)


class _FirstTokenTimer:
    """A transformers streamer that notes when the first new token arrives."""

    def __init__(self, t0: float, device: str) -> None:
        self.t0, self.device, self.calls, self.first = t0, device, 0, None

    def put(self, value: torch.Tensor) -> None:
        self.calls += 1
        if self.calls == 2:  # the first call carries the prompt
            sync(self.device)
            self.first = time.perf_counter() - self.t0

    def end(self) -> None:
        pass


def run_hf(hf: torch.nn.Module, idx: torch.Tensor, n: int, device: str) -> tuple[float, float, torch.Tensor]:
    sync(device)
    t0 = time.perf_counter()
    timer = _FirstTokenTimer(t0, device)
    with torch.inference_mode():
        out = hf.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=n, min_new_tokens=n,
                          do_sample=False, use_cache=True, eos_token_id=None, pad_token_id=0, streamer=timer)
    sync(device)
    return time.perf_counter() - t0, timer.first, out


@torch.inference_mode()
def run_nocache(model: torch.nn.Module, idx: torch.Tensor, n: int, device: str) -> tuple[float, float, torch.Tensor]:
    """nanoGPT's loop: crop to block_size, full forward, take the last logits, append."""
    sync(device)
    t0 = time.perf_counter()
    first = None
    for _ in range(n):
        logits = model(idx[:, -model.config.block_size :])[:, -1, :]
        idx = torch.cat([idx, logits.argmax(-1, keepdim=True)], dim=1)
        if first is None:
            sync(device)
            first = time.perf_counter() - t0
    sync(device)
    return time.perf_counter() - t0, first, idx


def peak_rss_mb(engine: str, args: argparse.Namespace) -> tuple[float, float]:
    """Run one 512+128 generation of ``engine`` in a fresh process: (peak RSS MB, growth MB)."""
    cmd = [sys.executable, __file__, "--_rss-worker", engine, "--device", args.device, "--dtype", args.dtype,
           "--new", str(args.new), "--threads", str(args.threads or 0)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    peak, base = json.loads(out)
    return peak, peak - base


def _status_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def _rss_worker(args: argparse.Namespace) -> None:
    import gc

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    if args._rss_worker == "transformers":  # its own random weights: values do not change memory
        from gptforge.model.config import GPTConfig

        model, hf = None, hf_model(GPTConfig.from_preset("gpt2")).to(device=args.device, dtype=dtype)
    else:
        model, hf = build_models(args.device, dtype, with_hf=False)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:  # Linux: reset the peak (VmHWM) to the current RSS,
        f.write("5")  # so model construction does not count
    base = _status_mb("VmRSS")
    idx = torch.randint(0, 50257, (1, 512), generator=torch.Generator().manual_seed(0)).to(args.device)
    fn = {"gptforge": run_ours, "transformers": run_hf}[args._rss_worker]
    fn(hf if args._rss_worker == "transformers" else model, idx, args.new, args.device)
    print(json.dumps([_status_mb("VmHWM"), base]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--compile", action="store_true", help="torch.compile the gptforge model (GPU runs)")
    p.add_argument("--prompts", type=int, nargs="+", default=[32, 512], help="prompt lengths")
    p.add_argument("--new", type=int, default=128, help="new tokens per run")
    p.add_argument("--nocache-new", type=int, default=32, help="new tokens for the no-cache row")
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions (median reported)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--no-hf", action="store_true", help="skip transformers")
    p.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocesses")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--_rss-worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._rss_worker:
        return _rss_worker(args)

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    with_hf = not args.no_hf
    if with_hf:
        try:
            import transformers  # noqa: F401
        except ImportError:
            with_hf = False
    model, hf = build_models(args.device, dtype, with_hf)
    if args.compile:
        model.forward = torch.compile(model.forward, dynamic=True)
    engines = {"gptforge": (run_ours, model, args.new)}
    if hf is not None:
        engines["transformers"] = (run_hf, hf, args.new)
    engines["no-cache"] = (run_nocache, model, args.nocache_new)

    meta = dict(device=args.device, dtype=args.dtype, compile=args.compile, threads=torch.get_num_threads(),
                torch=torch.__version__, reps=args.reps)
    if not args.json:  # rows are printed as they are measured, so a cut run still reports
        print(f"# generation, batch 1, greedy, gpt2-124M shape, {meta}")
        print("| prompt+new | engine | tokens/s | TTFT ms | decode tok/s | gptforge speedup | same tokens |")
        print("|---|---|---:|---:|---:|---:|---|", flush=True)
    results = []
    for T in args.prompts:
        idx = torch.randint(0, 50257, (1, T), generator=torch.Generator().manual_seed(T)).to(args.device)
        for fn, m, n in engines.values():  # warm-up (allocator, kernels, compile)
            fn(m, idx, min(n, 4), args.device)
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in engines}
        outs = {}
        for _ in range(args.reps):
            for name, (fn, m, n) in engines.items():
                total, first, out = fn(m, idx, n, args.device)
                runs[name].append((total, first))
                outs[name] = out
        same = None
        if "transformers" in outs:
            same = bool(torch.equal(outs["gptforge"].cpu(), outs["transformers"].cpu()))
        ours_tps = None
        for name, (_, _, n) in engines.items():
            total = statistics.median(r[0] for r in runs[name])
            first = statistics.median(r[1] for r in runs[name])
            tps = n / total
            decode_tps = (n - 1) / (total - first) if n > 1 else float("nan")
            ours_tps = tps if name == "gptforge" else ours_tps
            r = dict(prompt=T, engine=name, new_tokens=n, tokens_per_s=tps, ttft_ms=first * 1e3,
                     decode_tokens_per_s=decode_tps, gptforge_speedup=ours_tps / tps,
                     same_tokens=same if name == "transformers" else None)
            results.append(r)
            if not args.json:
                mark = "" if r["same_tokens"] is None else ("yes" if r["same_tokens"] else "NO")
                print(f"| {T}+{n} | {name} | {tps:.1f} | {first * 1e3:.0f} | {decode_tps:.1f} "
                      f"| {r['gptforge_speedup']:.2f}x | {mark} |", flush=True)
    rss = {}
    if not args.no_rss:
        for engine in ["gptforge"] + (["transformers"] if hf is not None else []):
            rss[engine] = peak_rss_mb(engine, args)
    if args.json:
        print(json.dumps(dict(meta=meta, results=results, peak_rss_mb=rss)))
        return
    for engine, (peak, growth) in rss.items():
        print(f"peak RSS {engine}: {peak:.0f} MB (+{growth:.0f} MB over the loaded model), 512+{args.new}")


if __name__ == "__main__":
    main()
