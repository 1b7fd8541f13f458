"""Training throughput (tokens/s, MFU) of our GPT against Hugging Face transformers'
GPT2LMHeadModel of the same shape, both trained by the same optimizer step
(``gptforge.train.loop.optimizer_step``: AdamW with our parameter groups, grad clipping,
autocast) in the same run.

    python bench/train.py                                        # CPU fp32: shakespeare-char and gpt2
    python bench/train.py --shapes shakespeare-char --steps 20
    python bench/train.py --device cuda --dtype bf16 --compile --shapes gpt2 --batch 16 --steps 30
                                                                 # an H100: gpt2 124M at context 1024
    python bench/train.py ... --pad-vocab-to 64                  # 50257 -> 50304 rows (both models)

A step is one forward, backward and AdamW update on a fixed random batch. The two models
run round-robin (``--steps`` timed steps each per round, for ``--rounds`` rounds) so that load
from other processes on a shared machine hits both alike; the table reports each model's
best round (the least disturbed) and the ratio. MFU uses ``gptforge.model.accounting``
(6N + 12 L nh hs T FLOPs per token) against the device's dense peak (GPUs only).

The shapes keep their layers, heads, width and context, with biases and no dropout on
both sides (HF GPT-2 always has biases; dropout would make the two runs differ).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# `python bench/train.py` puts bench/ first on sys.path, where bench/tokenizers.py would
# shadow the `tokenizers` package that transformers imports; use src/ instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent / "src"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from gptforge.config import apply  # noqa: E402
from gptforge.model import accounting  # noqa: E402
from gptforge.model.config import GPTConfig  # noqa: E402
from gptforge.model.gpt import GPT  # noqa: E402
from gptforge.train.config import TrainConfig  # noqa: E402
from gptforge.train.device import autocast_context, make_grad_scaler, maybe_compile  # noqa: E402
from gptforge.train.loop import optimizer_step  # noqa: E402
from gptforge.train.optim import build_optimizer  # noqa: E402

SHAPES = {
    # name: (preset, vocab, default CPU batch)
    "shakespeare-char": ("shakespeare-char", 65, 8),
    "gpt2": ("gpt2", 50257, 1),
}


class HFWithOurLoss(torch.nn.Module):
    """GPT2LMHeadModel behind our ``model(x, y) -> (logits, loss)`` interface.

    ``y`` is already shifted (the next token of each position), so the loss is our
    cross-entropy on all positions; HF's own ``labels=`` would shift again.
    """

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        import transformers

        hf_config = transformers.GPT2Config(
            vocab_size=cfg.padded_vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
            n_head=cfg.n_head, n_inner=cfg.hidden_dim, activation_function="gelu_new", resid_pdrop=0.0,
            embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=cfg.layer_norm_eps, tie_word_embeddings=True,
            bos_token_id=None, eos_token_id=None,
        )
        hf_config._attn_implementation = "sdpa"  # the fused kernel, as ours
        self.hf = transformers.GPT2LMHeadModel(hf_config)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.hf(input_ids=x).logits  # (B, T, V)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))
        return logits, loss


def build(impl: str, cfg: GPTConfig, device: torch.device, compile_: bool) -> tuple[torch.nn.Module, object]:
    torch.manual_seed(0)
    model = (GPT(cfg) if impl == "ours" else HFWithOurLoss(cfg)).to(device)
    model.train()
    opt = build_optimizer(model, TrainConfig(lr=1e-4, min_lr=0.0), device)
    return maybe_compile(model, compile_, device), opt


def time_steps(model: torch.nn.Module, opt: object, batch: tuple[torch.Tensor, torch.Tensor], steps: int,
               autocast: object, scaler: object, device: torch.device) -> float:
    """Seconds for ``steps`` optimizer steps (the device synchronised at both ends)."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        optimizer_step(model, opt, lambda: batch, 1, autocast, scaler, grad_clip=1.0)
    sync()
    return time.perf_counter() - t0


def bench_shape(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    preset, vocab, cpu_batch = SHAPES[name]
    cfg = apply(GPTConfig.from_preset(preset), {"vocab_size": vocab, "bias": True, "dropout": 0.0,
                                                "pad_vocab_to": args.pad_vocab_to})
    if args.seq_len:
        cfg = apply(cfg, {"block_size": args.seq_len})
    B = args.batch or (cpu_batch if device.type == "cpu" else 16)
    T = cfg.block_size
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab, (B, T), generator=g)
    batch = (x.to(device), torch.roll(x, -1, dims=1).to(device))
    autocast = autocast_context(device, args.dtype)
    impls = {}
    for impl in ("ours", "hf"):
        model, opt = build(impl, cfg, device, args.compile)
        scaler = make_grad_scaler(device, args.dtype)
        time_steps(model, opt, batch, args.warmup, autocast, scaler, device)  # compile, allocator, caches
        impls[impl] = (model, opt, scaler)
    best = {impl: float("inf") for impl in impls}
    for _ in range(args.rounds):
        for impl, (model, opt, scaler) in impls.items():
            best[impl] = min(best[impl], time_steps(model, opt, batch, args.steps, autocast, scaler, device))
    tokens = B * T * args.steps
    fpt = accounting.flops_per_token(cfg)
    peak = None
    if device.type == "cuda":
        try:
            peak = accounting.peak_flops(torch.cuda.get_device_name(device), "fp32" if args.dtype == "fp32" else "bf16")
        except Exception:
            peak = None
    row = {"shape": name, "device": str(device), "dtype": args.dtype, "compile": args.compile, "batch": B,
           "seq_len": T, "params_M": round(accounting.count_params(cfg).total / 1e6, 2)}
    for impl in impls:
        tps = tokens / best[impl]
        row[f"{impl}_tok_s"] = round(tps, 1)
        row[f"{impl}_mfu"] = round(accounting.mfu(tps, fpt, peak), 4) if peak else None
    row["ratio"] = round(row["ours_tok_s"] / row["hf_tok_s"], 3)
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="shakespeare-char,gpt2", help="comma list of: " + ", ".join(SHAPES))
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--batch", type=int, help="sequences per step (default 8 / 1 on CPU, 16 on GPU)")
    p.add_argument("--seq-len", type=int, help="context length (default: the preset's)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (compile needs ~3)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--pad-vocab-to", type=int, default=1,
                   help="ours: --model.pad_vocab_to N; transformers: the padded vocabulary (64 on GPUs)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    rows = [bench_shape(s.strip(), args, device) for s in args.shapes.split(",") if s.strip()]
    if args.json:
        print(json.dumps({"rows": rows, "threads": torch.get_num_threads(), "torch": torch.__version__}))
        return 0
    print(f"training tokens/s, best of {args.rounds} rounds x {args.steps} steps "
          f"(torch {torch.__version__}, {torch.get_num_threads()} CPU threads)")
    head = f"{'shape':<18}{'device':<8}{'dtype':<6}{'B x T':>10}{'ours tok/s':>13}{'HF tok/s':>12}{'ratio':>8}"
    head += f"{'ours MFU':>10}{'HF MFU':>9}"
    print(head)
    for r in rows:
        mfu_o = f"{100 * r['ours_mfu']:.1f}%" if r["ours_mfu"] else "-"
        mfu_h = f"{100 * r['hf_mfu']:.1f}%" if r["hf_mfu"] else "-"
        print(f"{r['shape']:<18}{r['device']:<8}{r['dtype']:<6}{r['batch']:>5} x {r['seq_len']:<4}"
              f"{r['ours_tok_s']:>13,.0f}{r['hf_tok_s']:>12,.0f}{r['ratio']:>7.2f}x{mfu_o:>10}{mfu_h:>9}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
