#!/usr/bin/env python
"""Choose the volume warm-start defaults (``key_every``, ``warm_steps``) on a real volume.

A stack of ``--slices`` Colin27 coronal slices (the file of ``scripts/real_scans.py``; no
prior was trained or tuned on it) is box-averaged x4 in-plane (45 x 45 -> 180 x 180) and
super-resolved with the brain prior's default method, every slice cold (``cold``) or with warm
starts (``KEY_EVERY:WARM_STEPS``: each slice from its neighbour towards the key, as
:mod:`medrecon.volume` does; ``KEY_EVERY:WARM_STEPS:star``: every slice of a segment straight
from the key slice, an alternative measured here and not offered by medrecon). Per slice PSNR /
SSIM against the 1 mm truth show how the quality changes with the distance from the segment's
key slice.

One configuration per call (they can run side by side, one torch thread each); each call
appends a JSON line to ``<out>/runs.jsonl``; ``--report`` writes ``<out>/tuning.md``::

    python scripts/tune_warm_start.py --data ~/.cache/medrecon/real_scans --config cold --out DIR
    python scripts/tune_warm_start.py --data ... --config 3:50 --out DIR
    python scripts/tune_warm_start.py --data ... --config 5:50:star --out DIR
    python scripts/tune_warm_start.py --report --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _runs import add_common, append_row, report_if_asked  # noqa: E402  (scripts/_runs.py)

CENTRE = 108  # Colin27 coronal slice (array axis 1) at the middle of the brain


def star_rounds(indices, key_every):
    """Like :func:`medrecon.volume.warm_start_rounds`, but every slice of a segment is
    warm-started straight from the segment's key slice (one warm round)."""
    idx = list(indices)
    if key_every <= 1 or len(idx) <= 1:
        return [[(i, None) for i in idx]]
    keys, warm = [], []
    for s0 in range(0, len(idx), key_every):
        seg = idx[s0:s0 + key_every]
        k = (len(seg) - 1) // 2
        keys.append((seg[k], None))
        warm += [(seg[j], seg[k]) for j in range(len(seg)) if j != k]
    return [keys, warm] if warm else [keys]


def run(config: str, data: Path, n: int, threads: int) -> dict:
    import numpy as np
    import torch

    from medrecon.pipeline import reconstruct
    from medrecon.realscan import ScanCase, _plane_scores, prepare_case

    torch.set_num_threads(threads)
    lo = CENTRE - n // 2
    case = ScanCase(name="colin27", path=str(data / "colin27_ch2.nii.gz"), prior="brain_mri",
                    scale=4, kernel="box", crop=[[0, 180], [lo, lo + n], [0, 180]], slice_axis=1)
    hr, lr, axis = prepare_case(case)
    kw = dict(task="sr", prior="brain_mri", scale=4, sr_kernel="box", device="cpu", seed=0)
    if config == "cold":
        kw["key_every"] = 1
    else:
        k, w, *topology = config.split(":")
        kw.update(key_every=int(k), warm_steps=int(w))
        if topology == ["star"]:
            import medrecon.volume

            medrecon.volume.warm_start_rounds = star_rounds  # solve_in_rounds looks it up here
    t0 = time.perf_counter()
    res = reconstruct(lr, **kw)
    sec = time.perf_counter() - t0
    out, ref = np.asarray(res.image.array), np.asarray(hr.array)
    dr = float(ref.max() - ref.min())
    per = [_plane_scores(out[:, k:k + 1], ref[:, k:k + 1], axis, dr) for k in range(n)]
    return {"config": config, "slices": n, "seconds": round(sec, 1), "threads": threads,
            "bf16": os.environ.get("MEDRECON_CPU_BF16", "auto"),
            "psnr": [round(p[0], 2) for p in per], "ssim": [round(p[1], 4) for p in per],
            "mean_psnr": round(float(np.mean([p[0] for p in per])), 3),
            "mean_ssim": round(float(np.mean([p[1] for p in per])), 4)}


def report(out: Path) -> str:
    rows = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines() if line]
    lines = ["# Volume warm starts: key_every and warm_steps", "",
             "Colin27 T1, coronal slices around the middle of the brain, 4 mm box average "
             "in-plane (45 x 45 -> 180 x 180), brain prior, default method (IAGAN, ensemble "
             "4, 200 cold adaptation steps off the prior's grid), seed 0. `cold` solves every "
             "slice from scratch; `L:S` cuts the slices into segments of L with the middle one "
             "cold and the others warm-started from their neighbour with S steps (`L:S:star`: "
             "each straight from the key slice). PSNR / SSIM "
             "per slice on the acquired plane against the 1 mm truth (data range of the "
             "volume). Produced by `scripts/tune_warm_start.py` (commands in its docstring), "
             "runs side by side on a shared 2-core AMD EPYC, so the seconds are only "
             "indicative.", "",
             "| config | slices | mean PSNR | mean SSIM | per-slice PSNR | s (1 thread) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['slices']} | {r['mean_psnr']:.2f} | "
                     f"{r['mean_ssim']:.4f} | {' '.join(f'{p:.2f}' for p in r['psnr'])} | "
                     f"{r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path.home() / ".cache" / "medrecon" / "real_scans")
    ap.add_argument("--config", help="cold, KEY_EVERY:WARM_STEPS or KEY_EVERY:WARM_STEPS:star")
    ap.add_argument("--slices", type=int, default=8)
    add_common(ap)
    a = ap.parse_args()
    if report_if_asked(a, report):
        return 0
    if not a.config:
        ap.error("--config is required (or --report)")
    if not (a.data / "colin27_ch2.nii.gz").is_file():
        print(f"error: {a.data / 'colin27_ch2.nii.gz'} not found; run `python "
              f"scripts/real_scans.py --data {a.data} --fetch-only` first.", file=sys.stderr)
        return 2
    row = run(a.config, a.data, a.slices, a.threads)
    append_row(a.out, row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
