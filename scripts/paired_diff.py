#!/usr/bin/env python
"""Paired per-image difference of two methods in a ``medrecon eval`` results.csv.

The methods of one evaluation see the same images, so the per-image difference is far less
noisy than the difference of the two means (whose spreads include the image-to-image
variation). Prints the mean difference of PSNR and SSIM, its standard error
(sample std / sqrt(n)) and how many images favour the method.

Two reports of the same images (e.g. a prior and its untrained ablation) are compared with
``--against OTHER.csv``: ``baseline`` is then read from OTHER.csv.

Usage: python scripts/paired_diff.py RESULTS.csv METHOD BASELINE [--against OTHER.csv]
"""

from __future__ import annotations

import csv
import math
import statistics
import sys
from pathlib import Path


def _by_method(path: Path) -> dict[str, dict[str, dict[str, str]]]:
    by: dict[str, dict[str, dict[str, str]]] = {}
    for r in csv.DictReader(path.open()):
        by.setdefault(r["method"], {})[r["image"]] = r
    return by


def paired(path: Path, method: str, baseline: str, *, against: Path | None = None
           ) -> dict[str, tuple[float, float, int, int]]:
    """``{metric: (mean difference, standard error, images where method > baseline, n)}``;
    ``baseline`` from ``against`` when given (same images, another report)."""
    mine = _by_method(path)
    other = _by_method(against) if against is not None else mine
    for src, table, m in ((path, mine, method), (against or path, other, baseline)):
        if m not in table:
            raise SystemExit(f"{src}: no method {m!r}; it has {', '.join(sorted(table))}.")
    ours, theirs = mine[method], other[baseline]
    images = sorted(set(ours) & set(theirs))
    if not images:
        raise SystemExit("the two methods share no image.")
    out = {}
    for metric in ("psnr", "ssim"):
        d = [float(ours[i][metric]) - float(theirs[i][metric]) for i in images]
        se = statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
        out[metric] = (statistics.fmean(d), se, sum(x > 0 for x in d), len(d))
    return out


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    against = None
    if "--against" in args:
        k = args.index("--against")
        if k + 1 >= len(args):
            raise SystemExit(__doc__.strip().splitlines()[-1])
        against = Path(args[k + 1])
        del args[k:k + 2]
    if len(args) != 3:
        raise SystemExit(__doc__.strip().splitlines()[-1])
    path, method, baseline = Path(args[0]), args[1], args[2]
    for metric, (mean, se, wins, n) in paired(path, method, baseline, against=against).items():
        digits = 2 if metric == "psnr" else 3
        print(f"{method} - {baseline} {metric}: {mean:+.{digits}f} +- {se:.{digits}f} (SE), "
              f"higher on {wins}/{n} images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
