#!/usr/bin/env python
"""Choose SR defaults for inputs off the prior's grid, on validation images only.

The SR defaults in ``medrecon.solvers.DEFAULTS`` were tuned on the ideal grid (a 32 x 32 input
for a 128 prior). Real inputs are not on that grid: the prior's image reaches the measurements
through the field-of-view resampling ``U`` (``medrecon.native``). This script scores settings
of the default method on validation images (the same validation lists as
``scripts/tune_defaults.py``: held-out fold 0, disjoint from the test images) degraded at their
native resolution, off the prior's grid (e.g. a 45 x 45 input for a 128 prior), through the
normal pipeline (:mod:`medrecon.realscan`), next to Lanczos + back-projection.

Usage:
    python scripts/tune_native_sr.py DATA_DIR --prior brain_mri \
        --validation docs/results/tuning/brain_mri_mri4_ensemble/validation.txt \
        --bin 2 --crop 180 --scale 4 --kernel box --set '{}' --set '{"steps": 200}' --out DIR
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medrecon.realscan import ScanCase, evaluate_scans  # noqa: E402
from medrecon.solvers import DEFAULTS, OFF_GRID_DEFAULTS  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--prior", required=True)
    ap.add_argument("--validation", type=Path, required=True)
    ap.add_argument("--bin", type=int, default=1, help="block-average the image first")
    ap.add_argument("--crop", type=int, default=180, help="centre crop (pixels, after --bin)")
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--kernel", default="box")
    ap.add_argument("--set", dest="settings", action="append", default=[],
                    help="JSON overrides of DEFAULTS['sr']['iagan'] (repeatable; '{}' = current)")
    ap.add_argument("--method", default="default",
                    help="the method scored next to Lanczos + BP: 'default' (what `medrecon sr` "
                    "runs, which may be the Lanczos fallback) or e.g. 'iagan-bp' (forced)")
    ap.add_argument("--limit", type=int, default=None, help="the first N validation images")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    names = [ln.strip() for ln in a.validation.read_text().splitlines()
             if ln.strip() and not ln.startswith("#")][:a.limit]
    cases = []
    from medrecon.io import load_image

    for rel in names:
        img = load_image(a.data / rel)
        W, H = img.shape[0] // a.bin, img.shape[1] // a.bin
        c0, c1 = (W - a.crop) // 2 * a.bin, (H - a.crop) // 2 * a.bin
        cases.append(ScanCase(name=rel, path=str(a.data / rel), prior=a.prior, scale=a.scale,
                              kernel=a.kernel, bin=(a.bin, a.bin, 1),
                              crop=[[c0, c0 + a.crop * a.bin], [c1, c1 + a.crop * a.bin], None]))
    base = dict(DEFAULTS["sr"]["iagan"])
    OFF_GRID_DEFAULTS["sr"]["iagan"] = {}  # the settings below are the whole story
    lines = [f"| setting | {a.method} PSNR | {a.method} SSIM | lanczos-bp PSNR | lanczos-bp "
             "SSIM | wall s |", "|---|---:|---:|---:|---:|---:|"]
    table = []
    for raw in a.settings or ["{}"]:
        over = json.loads(raw)
        DEFAULTS["sr"]["iagan"] = {**base, **over}
        t0 = time.time()
        rows = evaluate_scans(cases, methods=[a.method, "lanczos-bp"], device="cpu",
                              progress=lambda m: print(m, flush=True))
        d = [r for r in rows if r.method == a.method]
        lb = [r for r in rows if r.method == "lanczos-bp"]
        rec = {"setting": over, "psnr": float(np.mean([r.psnr for r in d])),
               "ssim": float(np.mean([r.ssim for r in d])),
               "lanczos_bp_psnr": float(np.mean([r.psnr for r in lb])),
               "lanczos_bp_ssim": float(np.mean([r.ssim for r in lb])),
               "per_image": [(r.case, r.psnr, r.ssim) for r in d],
               "lanczos_bp_per_image": [(r.case, r.psnr, r.ssim) for r in lb],
               "wall_s": time.time() - t0}
        table.append(rec)
        lines.append(f"| {json.dumps(over)} | {rec['psnr']:.2f} | {rec['ssim']:.4f} | "
                     f"{rec['lanczos_bp_psnr']:.2f} | {rec['lanczos_bp_ssim']:.4f} | "
                     f"{rec['wall_s']:.0f} |")
        print(lines[-1], flush=True)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "tuning.json").write_text(json.dumps(table, indent=1) + "\n")
    (a.out / "tuning.md").write_text(
        f"# SR off the prior's grid: {a.prior}, {len(cases)} validation images of {a.validation}, "
        f"bin {a.bin}, centre crop {a.crop}, x{a.scale} {a.kernel} kernel "
        f"(input {a.crop // a.scale} px)\n\nCommand: `python scripts/tune_native_sr.py "
        f"{' '.join(sys.argv[1:])}`\n\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
