#!/usr/bin/env python
"""Choose how back-projection treats an inpainting hole's edge (``SEAM_DECAY``) on validation images.

IAGAN (the default inpainting method, no back-projection) is solved once per validation image
and mask; its result is then finished in several ways and scored (PSNR / SSIM in [0, 1],
data range 1) against the truth:

* ``paste``: the plain back-projection ``x + A^+ (y - A x)`` (measured pixels pasted in);
* ``seam=D``: :func:`medrecon.solvers.back_project` with ``seam=D``: the correction continued
  into the hole, fading with e-folding distance ``D`` pixels (``inf``: not fading);
* ``biharmonic``: the classical baseline alone;
* ``blend=D``: biharmonic near the edge fading into IAGAN (weight ``exp(-(dist - 1) / D)``), a
  fallback for small holes that was tried and not adopted.

One mask per call (several calls can run side by side, one torch thread each); each appends a
JSON line to ``<out>/runs.jsonl``; ``--report`` writes ``<out>/tuning.md``::

    python scripts/tune_inpaint_seam.py --data DATA/brain_mri_cheng --mask free_form --out DIR
    python scripts/tune_inpaint_seam.py --data ... --mask center_box:0.25 --out DIR
    python scripts/tune_inpaint_seam.py --report --out DIR

The validation images are those of ``docs/results/tuning/brain_mri_inpaint_box_ensemble/
validation.txt`` (disjoint from the test images of the reports).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _runs import add_common, append_row, report_if_asked  # noqa: E402  (scripts/_runs.py)

ROOT = Path(__file__).resolve().parents[1]
VALIDATION = ROOT / "docs/results/tuning/brain_mri_inpaint_box_ensemble/validation.txt"
SEAMS = (0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, math.inf)
BLENDS = (1.0, 2.0, 4.0, 8.0)


def mask_options(mask: str) -> dict:
    kind, _, frac = mask.partition(":")
    return {"mask_type": kind, **({"box_fraction": float(frac)} if frac else {})}


def run(mask: str, data: Path, threads: int, cache: Path | None) -> dict:
    import numpy as np
    import torch
    from scipy.ndimage import distance_transform_edt
    from skimage.restoration import inpaint_biharmonic

    from medrecon import metrics, physics, solvers
    from medrecon.evaluation import _load_ground_truth, _to01, derive_seed
    from medrecon.priors import load_prior

    torch.set_num_threads(threads)
    prior = load_prior("brain_mri")
    op = physics.build_operator("inpaint", img_size=(128, 128), channels=1, seed=0,
                                noise_sigma=0.0, **mask_options(mask)).eval()
    names = [ln.strip() for ln in VALIDATION.read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    scores: dict[str, list[tuple[float, float]]] = {}

    def score(key: str, img, truth) -> None:
        pred = _to01(torch.as_tensor(np.asarray(img), dtype=torch.float32).reshape(truth.shape))
        ref = _to01(truth)
        scores.setdefault(key, []).append(
            (float(metrics.psnr(pred, ref, data_range=1.0).reshape(-1)[0]),
             float(metrics.ssim(pred, ref, data_range=1.0).reshape(-1)[0])))

    for name in names:
        x = _load_ground_truth(data / name, resolution=128, channels=1)
        with torch.no_grad():
            y = op.measure(x, generator=torch.Generator().manual_seed(derive_seed(0, name, "noise")))
        hit = cache / f"{mask.replace(':', '_')}_{name.replace('/', '_')}.pt" if cache else None
        if hit is not None and hit.is_file():
            g = torch.load(hit)
        else:
            g = solvers.solve(y, op, prior, method="iagan", bp=False, device="cpu",
                              seed=derive_seed(0, name, "solve")).image.detach()
            if hit is not None:
                hit.parent.mkdir(parents=True, exist_ok=True)
                torch.save(g, hit)
        for d in SEAMS:
            key = "paste" if d == 0 else f"seam={d:g}"
            score(key, solvers.back_project(g, y, op, seam=1e9 if math.isinf(d) else d), x)
        known = (op.mask.expand(x.shape) > 0.5)[0, 0].numpy()
        measured = y[0, 0].numpy()
        bih = inpaint_biharmonic(np.where(known, measured, 0.0), ~known)
        score("biharmonic", bih, x)
        dist = distance_transform_edt(~known)
        for d in BLENDS:
            wgt = np.exp(-(dist - 1.0) / d)
            score(f"blend={d:g}", np.where(known, measured, wgt * bih + (1 - wgt) * g[0, 0].numpy()), x)
    return {"mask": mask, "images": names, "threads": threads,
            "scores": {k: [[round(p, 3), round(s, 4)] for p, s in v] for k, v in scores.items()},
            "mean": {k: [round(float(np.mean([p for p, _ in v])), 3),
                         round(float(np.mean([s for _, s in v])), 4)] for k, v in scores.items()}}


def report(out: Path) -> str:
    rows = [json.loads(ln) for ln in (out / "runs.jsonl").read_text().splitlines() if ln]
    keys = list(rows[0]["mean"])
    lines = ["# Inpainting: back-projection at the hole's edge", "",
             "Brain prior, IAGAN (default settings, no back-projection) solved once per image "
             f"and mask on the {len(rows[0]['images'])} validation images of "
             "`docs/results/tuning/brain_mri_inpaint_box_ensemble/validation.txt`, then "
             "finished by each variant (see `scripts/tune_inpaint_seam.py`): `paste` is the "
             "plain back-projection, `seam=D` continues the correction into the hole with "
             "e-folding distance D pixels (`inf`: undamped), `blend=D` fades from biharmonic "
             "at the edge into IAGAN. Mean PSNR (dB) / SSIM in [0, 1], data range 1.", "",
             "| variant | " + " | ".join(r["mask"] for r in rows) + " |",
             "|---|" + "---|" * len(rows)]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(f"{r['mean'][k][0]:.2f} / {r['mean'][k][1]:.4f}"
                                            for r in rows) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/brain_mri_cheng"))
    ap.add_argument("--mask", help="free_form, half, center_box:FRACTION ...")
    ap.add_argument("--cache", type=Path, help="folder keeping the IAGAN solves for reruns")
    add_common(ap)
    a = ap.parse_args()
    if report_if_asked(a, report):
        return 0
    if not a.mask:
        ap.error("--mask is required (or --report)")
    if not a.data.is_dir():
        print(f"error: {a.data} is not a folder of brain MRI images.", file=sys.stderr)
        return 2
    row = run(a.mask, a.data, a.threads, a.cache)
    append_row(a.out, row, shown=row["mean"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
