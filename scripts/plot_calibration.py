#!/usr/bin/env python
"""Calibration figure of ``medrecon eval`` std maps: RMS error against predicted std, binned.

Reads the ``calibration.csv`` of one or more ``medrecon eval`` reports (equal-count bins of
the predicted per-pixel std; :func:`medrecon.evaluation.calibration_bins`) and plots, per
method, the RMS error of each bin against its root mean predicted variance (RMV; the mean
std in reports from before that column), on log axes, with the diagonal of a calibrated std. Needs matplotlib (not a medrecon dependency)::

    python scripts/plot_calibration.py docs/results/regimes/chest_xray_sr4_calibration/calibration.csv \
        -o docs/results/regimes/calibration.png
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path


def read(paths: list[Path]) -> dict[str, list[tuple[float, float]]]:
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for p in paths:
        with p.open(newline="") as f:
            for row in csv.DictReader(f):
                label = row["method"] if len(paths) == 1 else f"{p.parent.name}: {row['method']}"
                x = float(row.get("rmv") or row["mean_std"])
                if x > 0 and float(row["rmse"]) > 0:  # log axes
                    series[label].append((x, float(row["rmse"])))
    return series


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", nargs="+", type=Path, help="calibration.csv file(s)")
    ap.add_argument("-o", "--output", type=Path, required=True, help="figure (.png / .pdf)")
    ap.add_argument("--title", default="Calibration of the per-pixel std (generator units)")
    a = ap.parse_args(argv)
    missing = [str(p) for p in a.csv if not p.is_file()]
    if missing:
        print(f"error: not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("error: matplotlib is needed for the figure (pip install matplotlib).", file=sys.stderr)
        return 2
    series = read(a.csv)
    fig, ax = plt.subplots(figsize=(4.8, 4.2), dpi=120)
    lo, top = float("inf"), 0.0
    for label, pts in series.items():
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="o", ms=3, label=label)
        top = max(top, max(xs), max(ys))
        lo = min(lo, min(xs), min(ys))
    ax.plot([lo, top], [lo, top], "k--", lw=0.8, label="calibrated (RMS error = std)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("predicted std (bin RMV)")
    ax.set_ylabel("RMS error in the bin")
    ax.set_title(a.title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(a.output)
    print(f"wrote {a.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
