"""Plot a run's losses: RUN/loss.png with train and val loss against steps (and tokens).

  gptforge plot runs/shk-cpu
  gptforge plot runs/shk-cpu --out loss.png
  gptforge plot runs/classic runs/modern --out compare.png    # several runs: val loss overlaid


Also draws RUN/diagnostics_*.png when the run recorded diagnostics (--log.diagnostics_interval N).
Needs matplotlib: pip install 'gptforge[plot]'.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", nargs="+", help="a run dir made by `gptforge train` (several: one overlay)")
    parser.add_argument("--out", metavar="FILE.png", help="where to write the image (default RUN/loss.png; "
                        "compare.png for several runs)")
    parser.add_argument("--x", choices=["time", "tokens", "step"], default="time",
                        help="x axis of an overlay of several runs (default: training time in seconds)")


def run(args: argparse.Namespace) -> int:
    from gptforge.train.diagnostics import plot_diagnostics
    from gptforge.train.plot import plot_losses, plot_overlay

    if len(args.run) > 1:
        print(f"wrote {plot_overlay(args.run, args.out or 'compare.png', args.x)}")
        return 0
    path = plot_losses(args.run[0], args.out)
    print(f"wrote {path}")
    for extra in plot_diagnostics(args.run[0]):  # when the run recorded diagnostics (log.diagnostics_*)
        print(f"wrote {extra}")
    return 0
