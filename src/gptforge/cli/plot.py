"""Plot a run's losses: RUN/loss.png with train and val loss against steps (and tokens).

  gptforge plot runs/shk-cpu
  gptforge plot runs/shk-cpu --out loss.png

Also draws RUN/diagnostics_*.png when the run recorded diagnostics (--log.diagnostics_interval N).
Needs matplotlib: pip install 'gptforge[plot]'.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="a run dir made by `gptforge train`")
    parser.add_argument("--out", metavar="FILE.png", help="where to write the image (default RUN/loss.png)")


def run(args: argparse.Namespace) -> int:
    from gptforge.train.diagnostics import plot_diagnostics
    from gptforge.train.plot import plot_losses

    path = plot_losses(args.run, args.out)
    print(f"wrote {path}")
    for extra in plot_diagnostics(args.run):  # when the run recorded diagnostics (log.diagnostics_*)
        print(f"wrote {extra}")
    return 0
