"""Forward + backward throughput of our GPT (explicit and fused attention) against Hugging
Face transformers' GPT2LMHeadModel of the same shape with the same weights, in one run.

    python bench/model.py                                   # CPU, fp32: shakespeare-char and gpt2 shapes
    python bench/model.py --shapes gpt2 --batch 4 --seq-len 128
    python bench/model.py --device cuda --dtype bf16 --compile --shapes gpt2 \\
        --batch 16 --seq-len 1024 --impls sdpa,hf            # an H100: tokens/s and MFU

Each step is one forward and one backward of the next-token loss on a fixed random
batch (no optimizer step). The implementations run round-robin (a few steps each, for
several rounds) so that load from other processes hits all of them alike; the table
reports the fastest step of each (the least disturbed by other processes on a shared machine)
and the median, in wall-clock time, and also tokens per CPU-second of this process: with
``--threads 1`` that figure ignores the time the process waited for a core, the fairest
comparison on a loaded machine. MFU uses gptforge.model.accounting (6N + 12 L nh hs T
FLOPs per token, PaLM appendix B) against the device's dense peak.

For the comparison the model shapes keep their layers, heads, width and context but use
biases and no dropout (HF GPT-2 always has biases; dropout would make the runs differ).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

# `python bench/model.py` puts bench/ first on sys.path, where bench/tokenizers.py would
# shadow the `tokenizers` package that transformers imports; use src/ instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent / "src"))

import torch  # noqa: E402

from gptforge.model import accounting  # noqa: E402
from gptforge.model.config import GPTConfig  # noqa: E402
from gptforge.model.gpt import GPT  # noqa: E402

# shape name -> (preset, vocab size for presets without one, CPU batch, CPU context)
SHAPES = {
    "shakespeare-char": ("shakespeare-char", 65, 4, 256),
    "gpt2": ("gpt2", None, 2, 64),  # a short context keeps a CPU row under a minute
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def bench_config(shape: str, pad_vocab_to: int) -> GPTConfig:
    preset, vocab, _, _ = SHAPES[shape]
    config = GPTConfig.from_preset(preset)
    vocab = config.vocab_size or vocab
    if pad_vocab_to > 1:  # nanoGPT's 50304 trick: a vocabulary that tiles evenly on the GPU
        vocab = -(-vocab // pad_vocab_to) * pad_vocab_to
    return dataclasses.replace(config, vocab_size=vocab, bias=True, dropout=0.0)


def hf_twin(model: GPT, attn_implementation: str) -> torch.nn.Module:
    """GPT2LMHeadModel of the same shape holding the same weights (Conv1D weights transposed)."""
    import transformers

    c = model.config
    hf_config = transformers.GPT2Config(
        vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer,
        n_head=c.n_head, n_inner=c.hidden_dim, activation_function="gelu_new",
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=c.layer_norm_eps,
        bos_token_id=0, eos_token_id=0,
    )
    hf_config._attn_implementation = attn_implementation  # "sdpa" is transformers' default
    hf = transformers.GPT2LMHeadModel(hf_config)
    transposed = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    ours = model.state_dict()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            src = ours[name]
            p.copy_(src.t() if name.endswith(transposed) else src)
    return hf


def make_step(model: torch.nn.Module, is_hf: bool, idx: torch.Tensor, autocast: torch.dtype | None) -> Callable[[], float]:
    device_type = idx.device.type

    def step() -> float:
        with torch.autocast(device_type, dtype=autocast, enabled=autocast is not None):
            if is_hf:
                loss = model(idx, labels=idx).loss  # HF shifts the labels inside
            else:
                _, loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        for p in model.parameters():
            p.grad = None
        return loss.item()  # a device sync, so the step is fully timed

    return step


def run_shape(shape: str, args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    config = bench_config(shape, args.pad_vocab_to)
    _, _, cpu_batch, cpu_seq = SHAPES[shape]
    batch = args.batch or (cpu_batch if device.type == "cpu" else 16)
    seq = args.seq_len or (cpu_seq if device.type == "cpu" else config.block_size)
    torch.manual_seed(0)
    models: dict[str, torch.nn.Module] = {}
    ours = GPT(dataclasses.replace(config, attention="explicit"))
    for impl in args.impls:
        if impl == "explicit":
            models[impl] = ours
        elif impl == "sdpa":
            fused = GPT(dataclasses.replace(config, attention="sdpa"))
            fused.load_state_dict(ours.state_dict())
            models[impl] = fused
        elif impl == "hf":
            models[impl] = hf_twin(ours, args.hf_attn)
    # +1 so that our model sees (B, seq) inputs like HF: ours shifts outside, HF inside.
    idx = torch.randint(0, config.vocab_size, (batch, seq + 1), generator=torch.Generator().manual_seed(1)).to(device)
    check = {}
    ref = None
    for name, m in models.items():
        m.to(device).train()
        if args.dtype != "fp32" and device.type == "cpu":
            m.to(DTYPES[args.dtype])  # CPU: plain low-precision weights
        with torch.no_grad():  # same weights -> same logits: the comparison is like for like
            out = m(idx[:2, :16]).logits if name == "hf" else m(idx[:2, :16])  # before compiling,
        ref = out if ref is None else ref  # so the compiled graphs see one shape only
        check[name] = (out.float() - ref.float()).abs().max().item()
        models[name] = torch.compile(m) if args.compile else m
    autocast = None
    if args.dtype != "fp32" and device.type == "cuda":
        autocast = DTYPES[args.dtype]  # GPU: fp32 master weights under autocast, as training does
    steps = {
        name: make_step(m, name == "hf", idx if name != "hf" else idx[:, :-1], autocast)
        for name, m in models.items()
    }
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    cpu_times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            for _ in range(args.steps):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0, c0 = time.perf_counter(), time.process_time()
                step()
                times[name].append(time.perf_counter() - t0)
                cpu_times[name].append(time.process_time() - c0)
    peak = None
    if args.peak:
        peak = accounting.peak_flops(args.peak, args.dtype)
    elif device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if accounting.device_key(name):
            peak = accounting.peak_flops(name, "tf32" if args.dtype == "fp32" else args.dtype)
    flops = accounting.flops_per_token(config, seq)
    rows = []
    for name, ts in times.items():
        tokens_per_s = batch * seq / min(ts)
        rows.append(
            dict(shape=shape, impl=name, batch=batch, seq_len=seq, vocab=config.vocab_size, dtype=args.dtype,
                 compile=args.compile, device=str(device), tokens_per_s=tokens_per_s,
                 step_s_min=min(ts), step_s_median=statistics.median(ts), steps=len(ts),
                 tokens_per_s_median=batch * seq / statistics.median(ts),
                 tokens_per_cpu_s=batch * seq / min(cpu_times[name]),
                 max_logit_diff_vs_first=check[name],
                 mfu=accounting.mfu(tokens_per_s, flops, peak) if peak else None)
        )
    hf = next((row for row in rows if row["impl"] == "hf"), None)
    for row in rows:
        row["vs_hf"] = row["tokens_per_s"] / hf["tokens_per_s"] if hf else None
        row["vs_hf_cpu"] = row["tokens_per_cpu_s"] / hf["tokens_per_cpu_s"] if hf else None
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="shakespeare-char,gpt2", help=f"comma list of {', '.join(SHAPES)}")
    parser.add_argument("--impls", default="explicit,sdpa,hf", help="comma list of explicit, sdpa, hf")
    parser.add_argument("--batch", type=int, default=None, help="batch size (CPU default per shape; GPU 16)")
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per row (CPU default per shape; GPU block_size)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per implementation per round (CPU 1, GPU 10)")
    parser.add_argument("--rounds", type=int, default=3, help="round-robin rounds")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per implementation first (CPU 1, GPU 3)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    parser.add_argument("--compile", action="store_true", help="torch.compile every model")
    parser.add_argument("--hf-attn", default="sdpa", choices=["sdpa", "eager"], help="HF attention implementation")
    parser.add_argument("--pad-vocab-to", type=int, default=1, help="round the vocabulary up to a multiple (64: nanoGPT's 50304)")
    parser.add_argument("--peak", default=None, help="device peak for MFU: a name (h100-sxm, a100) or FLOP/s (e.g. 1e12 for a CPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per row")
    args = parser.parse_args()
    args.impls = [s.strip() for s in args.impls.split(",") if s.strip()]
    on_gpu = args.device.startswith("cuda")
    args.steps = args.steps or (10 if on_gpu else 1)
    args.warmup = args.warmup if args.warmup is not None else (3 if on_gpu else 1)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    import transformers

    print(f"# torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()}, "
          f"device {args.device}{' (' + torch.cuda.get_device_name() + ')' if args.device.startswith('cuda') else ''}, "
          f"HF attention {args.hf_attn}", file=sys.stderr)
    header = f"{'shape':<17} {'impl':<9} {'B x T':>9} {'dtype':>5} {'tokens/s':>10} {'median':>10} {'vs HF':>6} {'tok/cpu-s':>10} {'vs HF':>6} {'MFU':>6} {'logit diff':>10}"
    if not args.json:
        print(header)
    for shape in args.shapes.split(","):
        for row in run_shape(shape.strip(), args):
            if args.json:
                print(json.dumps(row))
                continue
            vs = f"{row['vs_hf']:.2f}x" if row["vs_hf"] else "-"
            vs_cpu = f"{row['vs_hf_cpu']:.2f}x" if row["vs_hf_cpu"] else "-"
            mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "-"
            print(f"{row['shape']:<17} {row['impl']:<9} {str(row['batch']) + ' x ' + str(row['seq_len']):>9} "
                  f"{row['dtype']:>5} {row['tokens_per_s']:>10,.0f} {row['tokens_per_s_median']:>10,.0f} {vs:>6} "
                  f"{row['tokens_per_cpu_s']:>10,.0f} {vs_cpu:>6} {mfu:>6} {row['max_logit_diff_vs_first']:>10.1e}",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
