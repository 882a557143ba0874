#!/usr/bin/env python
"""Paired per-image difference of two methods in a ``medrecon eval`` results.csv.

The methods of one evaluation see the same images, so the per-image difference is far less
noisy than the difference of the two means (whose spreads include the image-to-image
variation). Prints the mean difference of PSNR and SSIM, its standard error
(sample std / sqrt(n)) and how many images favour the method.

Usage: python scripts/paired_diff.py docs/results/chest_xray_sr4/results.csv iagan-bp lanczos
"""

from __future__ import annotations

import csv
import math
import statistics
import sys
from pathlib import Path


def paired(path: Path, method: str, baseline: str) -> dict[str, tuple[float, float, int, int]]:
    """``{metric: (mean difference, standard error, images where method > baseline, n)}``."""
    rows = list(csv.DictReader(path.open()))
    by: dict[str, dict[str, dict[str, str]]] = {}
    for r in rows:
        by.setdefault(r["method"], {})[r["image"]] = r
    for m in (method, baseline):
        if m not in by:
            raise SystemExit(f"{path}: no method {m!r}; it has {', '.join(sorted(by))}.")
    images = sorted(set(by[method]) & set(by[baseline]))
    out = {}
    for metric in ("psnr", "ssim"):
        d = [float(by[method][i][metric]) - float(by[baseline][i][metric]) for i in images]
        se = statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
        out[metric] = (statistics.fmean(d), se, sum(x > 0 for x in d), len(d))
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        raise SystemExit(__doc__.strip().splitlines()[-1])
    path, method, baseline = Path(args[0]), args[1], args[2]
    for metric, (mean, se, wins, n) in paired(path, method, baseline).items():
        digits = 2 if metric == "psnr" else 3
        print(f"{method} - {baseline} {metric}: {mean:+.{digits}f} +- {se:.{digits}f} (SE), "
              f"higher on {wins}/{n} images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
