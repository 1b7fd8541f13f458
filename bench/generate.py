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

Bandwidth bound (``--precisions``, CPU, default fp32 bf16 int8 int4): batch-1 decoding reads
every weight once per token, so tokens/s can be at most (bytes/s the CPU streams) / (bytes a
step reads). The same run measures the bytes/s with three read probes on the same threads
(a 1 GiB fp32 tensor summed, copied, and multiplied by a vector as one (N, 4096) GEMV; median
of 7 each, the best of the three) and, per precision, gptforge's tokens/s through
``model.generate()`` from Python (32+128 greedy, the decoding kernels chosen on their own at
the first call) and transformers' at the same precision (fp32, bf16; transformers has no CPU
int8/int4 weight-only path without torchao, so those rows compare with its fp32 and bf16). Each
row gives the fraction of the bound; bf16 and int rows give greedy agreement with fp32
(identical leading tokens and equal positions of 128).

Usage:
  python bench/generate.py                       # CPU, fp32, 32+128 and 512+128, then the bound table
  python bench/generate.py --prompts --no-rss    # the bound table only
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

# bench/_machine.py, beside this script: imported before bench/ leaves sys.path below.
from _machine import cpu_model, use_shared_data

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


def build_models(device: str, dtype: torch.dtype, with_hf: bool, seed: int = 0, prepare: bool = True) -> tuple:
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

    model = model.to(device=device, dtype=dtype)
    return (prepare_for_decoding(model) if prepare else model), hf


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


def machine_info() -> str:
    """CPU model, cores, torch threads and load, printed with every table."""
    cpu = cpu_model()
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    return (f"{cpu}, {os.cpu_count()} cpus, torch {torch.__version__} {torch.backends.cpu.get_cpu_capability()}, "
            f"{torch.get_num_threads()} threads, load average {load}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


def _median_s(fn, n: int = 7) -> float:
    fn()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def read_bandwidth() -> dict[str, float]:
    """Bytes/s read by three probes over a 1 GiB fp32 tensor on torch's threads (median of 7 each)."""
    n = (1 << 30) // 4
    a = torch.full((n,), 0.5)
    out = {"sum": (1 << 30) / _median_s(lambda: a.sum())}
    out["copy"] = (1 << 30) / _median_s(lambda b=torch.empty_like(a): b.copy_(a))  # bytes read (as many written)
    w = a.view(-1, 4096)
    x = torch.full((4096,), 0.5)
    out["gemv"] = (1 << 30) / _median_s(lambda: torch.mv(w, x))
    return out


def _agreement(a: torch.Tensor, b: torch.Tensor, start: int) -> str:
    """'lead/equal of n': identical leading new tokens, equal positions, of n new tokens."""
    x, y = a[0, start:], b[0, start:]
    eq = (x == y).tolist()
    lead = eq.index(False) if False in eq else len(eq)
    return f"{lead}/{sum(eq)} of {len(eq)}"


def bound_table(args: argparse.Namespace, with_hf: bool) -> None:
    """Each precision's tokens/s as a fraction of the bandwidth bound, beside transformers."""
    import copy

    from gptforge.generate.cpu_decoding import step_read_bytes

    bw = read_bandwidth()
    best = max(bw.values())
    print("\n# read bandwidth GB/s: " + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in bw.items())
          + f" -> bound uses {best / 1e9:.1f}", flush=True)
    if args.model:
        from gptforge.model.loading import load_model

        base = load_model(args.model)
        hf_base = None
    else:
        base, hf_base = build_models("cpu", torch.float32, with_hf, prepare=False)
    T, n = 32, args.new
    idx = torch.randint(0, base.config.vocab_size, (1, T), generator=torch.Generator().manual_seed(T))
    print("| precision | engine | MB read/step | bound tok/s | tokens/s | % of bound | vs transformers "
          "| greedy vs fp32 (lead/equal) | kernels |")
    print("|---|---|---:|---:|---:|---:|---:|---|---|", flush=True)
    hf_cache: dict[str, tuple[float, float]] = {}
    ref_out = None
    for prec in args.precisions:
        m = copy.deepcopy(base).eval()
        if prec == "bf16":
            m = m.to(torch.bfloat16)
        elif prec in ("int8", "int4"):
            from gptforge.quantize import quantize

            m = quantize(m, prec, group_size=64)
        nbytes = step_read_bytes(m)
        bound = best / nbytes
        hf_dtype = "bf16" if prec == "bf16" else "fp32"  # int rows: compared with both
        hf = None
        if hf_base is not None and hf_dtype not in hf_cache:
            hf = copy.deepcopy(hf_base).to(torch.bfloat16 if hf_dtype == "bf16" else torch.float32)
        m.generate(idx, 4, temperature=0)  # first eval-mode call: kernels measured and chosen here
        times, hf_times = [], []
        out = None
        for _ in range(args.reps):
            t0 = time.perf_counter()
            out = m.generate(idx, n, temperature=0)
            times.append(time.perf_counter() - t0)
            if hf is not None:
                hf_times.append(run_hf(hf, idx, n, "cpu")[0])
        tps = n / statistics.median(times)
        if hf is not None:
            hf_tps = n / statistics.median(hf_times)
            hf_cache[hf_dtype] = (hf_tps, step_read_bytes(hf))
            del hf
        agree = "" if prec == "fp32" or ref_out is None else _agreement(out, ref_out, T)
        if prec == "fp32":
            ref_out = out
        from gptforge.generate.cpu_decoding import DecodeLinear

        kernels = sorted({f"{tuple(d.weight.shape)}:{d.kernel}" for d in m.modules() if isinstance(d, DecodeLinear)})
        vs = ", ".join(f"{tps / hf_cache[d][0]:.2f}x {d}" for d in (("fp32", "bf16") if prec in ("int8", "int4")
                                                                   else (hf_dtype,)) if d in hf_cache)
        print(f"| {prec} | gptforge | {nbytes / 1e6:.0f} | {bound:.1f} | {tps:.1f} | {100 * tps / bound:.0f}% "
              f"| {vs} | {agree} | {' '.join(kernels)} |", flush=True)
        if prec in ("fp32", "bf16") and hf_dtype in hf_cache:
            h_tps, h_bytes = hf_cache[hf_dtype]
            print(f"| {prec} | transformers | {h_bytes / 1e6:.0f} | {best / h_bytes:.1f} | {h_tps:.1f} "
                  f"| {100 * h_tps * h_bytes / best:.0f}% | 1.00x | | |", flush=True)
        del m
    print(f"# {machine_info()}")


def main() -> None:
    use_shared_data()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--compile", action="store_true", help="torch.compile the gptforge model (GPU runs)")
    p.add_argument("--prompts", type=int, nargs="*", default=[32, 512], help="prompt lengths (none: skip)")
    p.add_argument("--precisions", nargs="*", default=["fp32", "bf16", "int8", "int4"],
                   choices=["fp32", "bf16", "int8", "int4"], help="bandwidth-bound table (CPU; none: skip)")
    p.add_argument("--model", default=None, help="a gptforge model dir for the bound table (default: random gpt2)")
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
    machine = machine_info()
    print(f"# {machine}", flush=True)
    model, hf = (None, None) if not args.prompts else build_models(args.device, dtype, with_hf)
    if args.compile:
        model.forward = torch.compile(model.forward, dynamic=True)
    engines = {"gptforge": (run_ours, model, args.new)}
    if hf is not None:
        engines["transformers"] = (run_hf, hf, args.new)
    engines["no-cache"] = (run_nocache, model, args.nocache_new)

    meta = dict(device=args.device, dtype=args.dtype, compile=args.compile, threads=torch.get_num_threads(),
                torch=torch.__version__, reps=args.reps)
    if not args.json and args.prompts:  # rows are printed as they are measured, so a cut run still reports
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
    if not args.no_rss and args.prompts:
        for engine in ["gptforge"] + (["transformers"] if hf is not None else []):
            rss[engine] = peak_rss_mb(engine, args)
    if args.json:
        print(json.dumps(dict(meta=meta, machine=machine, results=results, peak_rss_mb=rss)))
    for engine, (peak, growth) in ({} if args.json else rss).items():
        print(f"peak RSS {engine}: {peak:.0f} MB (+{growth:.0f} MB over the loaded model), 512+{args.new}")
    if args.precisions and args.device == "cpu":
        del model, hf, engines
        bound_table(args, with_hf)


if __name__ == "__main__":
    main()
