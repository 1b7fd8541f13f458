"""Where the time of one training step of a Shakespeare preset goes: forward + backward,
Muon's Newton-Schulz iterations (stacked as the optimizer runs them, and one matrix at a
time), AdamW, gradient clipping, and one evaluation batch.

    flock /tmp/gptforge-bench.lock python bench/modern_step.py
    flock /tmp/gptforge-bench.lock python bench/modern_step.py --batch 24 --block 64 \\
        --set n_layer=3 --set n_embd=160       # a candidate shape of the modern preset

The parts run round-robin (a few calls each, for several rounds), so load from other
processes hits them alike; the table gives the median of each in ms. A fixed random
batch of the preset's size; no data loading, logging or checkpoints (bench/recipes.py
times whole runs). The model options are those of the preset, or ``--set FIELD=VALUE``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent / "src"))
sys.path.append(str(_HERE))

import torch  # noqa: E402
from _machine import cpu_model, use_shared_data  # noqa: E402

from gptforge.config import apply  # noqa: E402
from gptforge.model.gpt import GPT  # noqa: E402
from gptforge.train.config import preset_config  # noqa: E402
from gptforge.train.muon import newton_schulz  # noqa: E402
from gptforge.train.optim import MuonWithAdamW, build_optimizer  # noqa: E402


def timed(parts: dict[str, Callable[[], object]], rounds: int, calls: int) -> dict[str, float]:
    """Median ms per call of each part, the parts interleaved round by round."""
    times: dict[str, list[float]] = {name: [] for name in parts}
    for fn in parts.values():  # warm-up: allocator, kernels chosen
        fn()
    for _ in range(rounds):
        for name, fn in parts.items():
            for _ in range(calls):
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1000)
    return {name: statistics.median(v) for name, v in times.items()}


def main() -> int:
    use_shared_data()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="shakespeare-char-modern-cpu")
    p.add_argument("--batch", type=int, help="sequences per step (default: the preset's)")
    p.add_argument("--block", type=int, help="context length (default: the preset's)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="a model field")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=4)
    args = p.parse_args()
    rc = preset_config(args.preset)
    overrides = dict(kv.split("=", 1) for kv in args.set)
    if args.block:
        overrides["block_size"] = str(args.block)
    model_cfg = apply(dataclasses.replace(rc.model, vocab_size=65), overrides, source="--set")
    B, T = args.batch or rc.train.batch_size, model_cfg.block_size
    torch.manual_seed(0)
    model = GPT(model_cfg)
    opt = build_optimizer(model, rc.train, torch.device("cpu"))
    x = torch.randint(0, 65, (B, T))
    y = torch.roll(x, -1, 1)

    def fwd_bwd() -> None:
        opt.zero_grad(set_to_none=True)
        model(x, y)[1].backward()

    fwd_bwd()  # every parameter has a gradient from here on
    parts: dict[str, Callable[[], object]] = {"forward + backward": fwd_bwd}
    parts["clip grad norm"] = lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    if isinstance(opt, MuonWithAdamW):
        muon_params = [q for g in opt._muon.param_groups for q in g["params"]]
        grads = [torch.randn_like(q) for q in muon_params]
        parts["Muon step (stacked)"] = opt._muon.step
        parts["  Newton-Schulz, one matrix at a time"] = lambda: [newton_schulz(g) for g in grads]
        parts["AdamW step (the rest)"] = opt._adamw.step
    else:
        parts["AdamW step"] = opt.step

    def eval_batch() -> None:
        model.eval()
        with torch.no_grad():
            model(x, y)
        model.train()

    parts["eval batch (forward, no grad)"] = eval_batch
    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}); "
          f"uptime: {os.popen('uptime').read().strip()}")
    print(f"{args.preset} {' '.join(args.set)}: batch {B} x {T}, {model.num_params():,} parameters")
    result = timed(parts, args.rounds, args.calls)
    for name, ms in result.items():
        print(f"  {name:40s} {ms:8.2f} ms")
    step = sum(ms for name, ms in result.items() if not name.startswith(" ") and not name.startswith("eval"))
    print(f"  {'one step (sum of the parts above)':40s} {step:8.2f} ms = {B * T / step * 1000:,.0f} tokens/s")
    print(f"uptime after: {os.popen('uptime').read().strip()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
