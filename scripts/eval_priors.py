"""Held-out evaluation of a shipped prior (the numbers in docs/priors.md and the bundle READMEs).

For one prior, on images of its held-out fold (read from the bundle's models/folds.json):

1. representation error: the best CSGM and IAGAN fits to the clean image (task ``denoise`` with
   zero noise, i.e. the identity operator): how close the generator can get to unseen images;
2. SR x4 (bicubic kernel, noiseless): bicubic baseline vs CSGM, IAGAN, IAGAN + back-projection;
3. 4x accelerated MRI (random Cartesian mask, 8% centre): zero-filled vs CSGM, IAGAN.

Everything goes through :func:`medrecon.evaluation.evaluate_run` (seeded per image). IAGAN runs
once per image (``ensemble=1``, whatever the task default): these numbers measure the prior, and
the mean of several runs (docs/solvers.md) would mix the solver's averaging into them.
Usage:
    python scripts/eval_priors.py --prior chest_xray --data /path/to/shared/data/chest_xray_kermany \
        --out runs/eval_chest_xray --limit 4 --steps 100
Writes <out>/<task>/{results.csv,summary.md,grid.png} and <out>/metrics.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from medrecon.evaluation import evaluate_run, summarize

EXPERIMENTS = {
    "repr": dict(task="denoise", methods="csgm,iagan", task_options={}),
    "sr4": dict(task="sr", methods="bicubic,csgm,iagan,iagan-bp", task_options={"scale": 4}),
    "mri4": dict(task="mri", methods="zero_filled,csgm,iagan",
                 task_options={"acceleration": 4, "center_fraction": 0.08}),
}


def _one_run(methods: str) -> dict[str, dict]:
    """``ensemble=1`` for every IAGAN variant among ``methods``."""
    return {m: {"ensemble": 1} for m in methods.split(",") if m.split("-")[0] == "iagan"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prior", required=True)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--limit", type=int, default=4)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--only", default=",".join(EXPERIMENTS))
    ap.add_argument("--fold", type=int, default=None, help="default: the recorded held-out fold")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    metrics: dict[str, float | int | str] = {}
    for key in args.only.split(","):
        exp = EXPERIMENTS[key]
        t0 = time.time()
        run = evaluate_run(prior=args.prior, task=exp["task"], methods=exp["methods"],
                           images=args.data, folds=args.prior, fold=args.fold, limit=args.limit,
                           steps=args.steps, out_dir=args.out / key, device=args.device,
                           lpips=False, method_options=_one_run(exp["methods"]), overwrite=True,
                           **exp["task_options"])
        for method, s in summarize(run.rows).items():
            for m in ("psnr", "ssim", "seconds"):
                ms = s.get(m)
                if ms is not None:
                    mean = ms[0] if isinstance(ms, (tuple, list)) else ms
                    metrics[f"heldout_{key}_{method}_{m}"] = round(float(mean), 4)
        metrics[f"heldout_{key}_images"] = args.limit
        print(f"{key}: {time.time() - t0:.0f} s", flush=True)
    metrics["heldout_steps"] = "solver defaults" if args.steps is None else args.steps
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    print(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    main()
