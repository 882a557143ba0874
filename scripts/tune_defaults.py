#!/usr/bin/env python
"""Choose solver defaults on validation images that the reported evaluation never sees.

The held-out fold of a prior (``docs/results/<prior>_fold0_held_out.txt``) is split in two:

* the **test** images: the ``--test-limit`` images ``scripts/eval_results.sh`` reports
  (``medrecon eval --limit N`` takes indices ``floor(i * n / N)`` of the sorted list);
* the **validation** images: ``--n`` images evenly spaced over the rest (offset by half a
  stride), written to ``OUT/validation.txt``.

Every point of the option grid (cartesian product of the ``--grid`` axes) is evaluated with
:func:`medrecon.evaluation.evaluate_run` on the validation images only, next to the classical
``--baselines``; the table of means goes to ``OUT/tuning.md`` and every row to
``OUT/tuning.csv``. Change ``medrecon.solvers.DEFAULTS`` from these numbers, then run
``scripts/eval_results.sh`` once for the report.

Example (4x MRI on the brain prior)::

    python scripts/tune_defaults.py --prior brain_mri --task mri \\
        --data /path/to/brain_mri_cheng --held-out docs/results/brain_mri_fold0_held_out.txt \\
        --method iagan-bp --baselines tv --grid lr_weights=1e-3,3e-3,1e-2 --grid steps=100,150 \\
        --task-option acceleration=4 --out docs/results/tuning/brain_mri_mri4
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medrecon.evaluation import evaluate_run, summarize  # noqa: E402


def validation_split(held_out: list[str], *, test_limit: int, n: int) -> tuple[list[str], list[str]]:
    """``(test, validation)`` ids: the evaluation's evenly spaced test images, then ``n``
    evenly spaced images among the others."""
    ids = sorted(held_out)
    N = len(ids)
    test_idx = {(i * N) // test_limit for i in range(test_limit)} if test_limit < N else set(range(N))
    test = [ids[i] for i in sorted(test_idx)]
    rest = [x for i, x in enumerate(ids) if i not in test_idx]
    if n > len(rest):
        raise SystemExit(f"--n {n} is more than the {len(rest)} held-out images left after the test set.")
    return test, evenly_spaced(rest, n)


def evenly_spaced(items: list[str], n: int) -> list[str]:
    """``n`` items evenly spaced over ``items`` (the centres of ``n`` equal bins)."""
    M = len(items)
    return [items[min(M - 1, int((i + 0.5) * M / n))] for i in range(n)]


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _parse_axis(spec: str) -> tuple[str, list]:
    if "=" not in spec:
        raise SystemExit(f"--grid {spec!r}: expected KEY=V1,V2,... (KEY may be dotted, e.g. "
                         "stage1_options.steps=30,50).")
    key, values = spec.split("=", 1)
    return key.strip(), [_value(v.strip()) for v in values.split(",") if v.strip()]


def _nest(flat: dict) -> dict:
    out: dict = {}
    for key, v in flat.items():
        d = out
        *parents, leaf = key.split(".")
        for p in parents:
            d = d.setdefault(p, {})
        d[leaf] = v
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prior", required=True)
    ap.add_argument("--task", required=True)
    ap.add_argument("--data", required=True, type=Path, help="folder the held-out list is relative to")
    ap.add_argument("--held-out", required=True, type=Path, help="text list of held-out image paths")
    ap.add_argument("--method", required=True, help="method to tune, e.g. iagan-bp")
    ap.add_argument("--baselines", default="", help="comma-separated classical baselines")
    ap.add_argument("--grid", action="append", default=[], help="KEY=V1,V2,... (repeatable)")
    ap.add_argument("--task-option", action="append", default=[], help="KEY=VALUE (repeatable)")
    ap.add_argument("--noise-sigma", type=float, default=0.0)
    ap.add_argument("--n", type=int, default=6, help="validation images [6]")
    ap.add_argument("--test-limit", type=int, default=8, help="images the report uses [8]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True, type=Path)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)

    held = [ln.split("#", 1)[0].strip() for ln in a.held_out.read_text().splitlines()]
    held = [h for h in held if h]
    test, val = validation_split(held, test_limit=a.test_limit, n=a.n)
    assert not set(test) & set(val)
    a.out.mkdir(parents=True, exist_ok=True)
    # ids relative to --data, exactly as in the report's runs (same per-image seeds)
    data = a.data.resolve()
    val_list = a.out / "validation.txt"
    val_list.write_text(f"# validation images: {len(val)} of {a.held_out.name}, disjoint from "
                        f"the {len(test)} test images\n" + "".join(f"{v}\n" for v in val))
    axes = [_parse_axis(g) for g in a.grid]
    task_opts = {}
    for t in a.task_option:
        if "=" not in t:
            raise SystemExit(f"--task-option {t!r}: expected KEY=VALUE.")
        k, v = t.split("=", 1)
        task_opts[k.strip()] = _value(v.strip())
    points = [dict(zip([k for k, _ in axes], combo)) for combo in itertools.product(*[v for _, v in axes])]
    rows_out = []
    base_methods = [m for m in a.baselines.split(",") if m]
    common = dict(prior=a.prior, task=a.task, images=data, folds=str(val_list), fold=0,
                  noise_sigma=a.noise_sigma, seed=a.seed, device=a.device, lpips=False,
                  grid_images=0, **task_opts)
    if base_methods:
        t0 = time.time()
        run = evaluate_run(methods=base_methods, **common)
        for m, s in summarize(run.rows).items():
            rows_out.append({"method": m, "options": "-", **_cells(s), "wall_s": time.time() - t0})
    for point in points:
        t0 = time.time()
        run = evaluate_run(methods=[a.method], method_options={a.method: _nest(point)}, **common)
        s = summarize(run.rows)[a.method]
        label = ", ".join(f"{k}={v}" for k, v in point.items()) or "defaults"
        rows_out.append({"method": a.method, "options": label, **_cells(s),
                         "wall_s": time.time() - t0})
        print(f"{label}: {rows_out[-1]['psnr']:.2f} dB / {rows_out[-1]['ssim']:.3f}", flush=True)
    with (a.out / "tuning.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows_out[0]))
        w.writeheader()
        w.writerows(rows_out)
    machine = f"{platform.machine()} {platform.processor() or ''}".strip()
    lines = [f"# Tuning: {a.method} for {a.task} on {a.prior}", "",
             f"`python scripts/tune_defaults.py {' '.join(sys.argv[1:] if argv is None else argv)}`"
             .replace(str(a.data), "DATA"), "",
             f"{len(val)} validation images (held-out fold, disjoint from the {len(test)} images of "
             f"`docs/results`, listed in `validation.txt`), seed {a.seed}, "
             f"noise sigma {a.noise_sigma}, device {a.device}, {a.threads} torch thread(s), "
             f"torch {torch.__version__}, {machine}. PSNR/SSIM on [0, 1] (data_range 1), "
             "mean +- sample std.", "",
             "| method | options | PSNR (dB) | SSIM | s / image |", "|---|---|---:|---:|---:|"]
    for r in rows_out:
        lines.append(f"| {r['method']} | {r['options']} | {r['psnr']:.2f} +- {r['psnr_std']:.2f} | "
                     f"{r['ssim']:.3f} +- {r['ssim_std']:.3f} | {r['seconds']:.1f} |")
    (a.out / "tuning.md").write_text("\n".join(lines) + "\n")
    print((a.out / "tuning.md").read_text())
    return 0


def _cells(s: dict) -> dict:
    return {"n": s["n"], "psnr": s["psnr"][0], "psnr_std": s["psnr"][1], "ssim": s["ssim"][0],
            "ssim_std": s["ssim"][1], "seconds": s["seconds"][0]}


if __name__ == "__main__":
    raise SystemExit(main())
