"""Whole-volume benchmark: a real brain volume super-resolved with the default and the
earlier ways of solving a volume.

The volume: the Colin27 T1 (``--volume colin27``, the benchmark) or the MNI152 T1 template
(``--volume mni152``, the volume the defaults were chosen on), 1 mm, fetched by
``scripts/real_scans.py --fetch-only`` into ``--data``; ``--slices`` coronal slices from the
middle of the brain, each box-averaged x4 in-plane at native size (45 x 45 -> 180 x 180,
:func:`medrecon.realscan.simulate_lowres`), reconstructed with the brain prior by each mode:

* ``default``: what ``medrecon sr`` runs on a volume (:mod:`medrecon.volume`: one IAGAN run
  per slice, the unmeasured detail made coherent across slices);
* ``slice-by-slice``: every slice on its own, as a lone image is solved (the 4-member IAGAN
  ensemble, ``key_every=1``, ``coherence=0``): the default for volumes until warm starts;
* ``warm-starts``: the volume default before this one (``key_every=3``: key slices with the
  4-member ensemble, the others warm-started from their neighbour; ``coherence=0``);
* ``scipy-cubic`` and ``lanczos-bp``: the interpolation baselines;
* ``lone-slice``: the cost of one slice reconstructed on its own, as a user with a single
  slice runs it (a one-slice scan gets the lone-image default, the 4-member ensemble): the
  slices at :data:`LONE_OFFSETS` from the centre of the stack, each its own
  :func:`medrecon.pipeline.reconstruct` call in one process; the row's time is their median,
  its scores their mean on the acquired plane (data range of the whole stack). The default's per-slice cost is reported
  against it (the target: at most a quarter).

Each mode runs in its own process (so the peak memory is its own) and reports the wall time
per volume and per slice, the peak resident memory, PSNR / SSIM on the acquired (coronal)
plane and on the two reformats (axial, sagittal), and the inter-slice consistency
(:func:`medrecon.realscan.interslice_error`: RMS of the slice-to-slice change minus the
truth's, lower is better). Writes ``<out>/volume_<machine>_<N>slices[_<volume>].json`` and
``.md``; rows of modes not run this time are kept from an earlier report of the same name
(each row records its own command, threads and date), so a long mode can run on its own.

``--compare-saved`` solves nothing: from the default and slice-by-slice volumes that earlier
runs with ``--save`` wrote there, it adds to the report where along the stack the two differ
(:func:`per_slice`: PSNR / SSIM by stretches of :data:`STRETCH` slices, next to the neighbour
support of the default's coherence step, :func:`medrecon.volume.neighbour_support`).

Usage::

    python bench/bench_volume.py --data ~/.cache/medrecon/real_scans --slices 150 \
        --machine shared-2core-amd-epyc
    python bench/bench_volume.py --slices 24 --volume mni152 --modes default,slice-by-slice
    python bench/bench_volume.py --slices 150 --save VOLS --compare-saved
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

MODES = ("default", "slice-by-slice", "warm-starts", "scipy-cubic", "lanczos-bp", "lone-slice")
#: Slices of the ``lone-slice`` mode, as offsets from the centre of the stack.
LONE_OFFSETS = (-1, 0, 1)
#: Slices per stretch of the per-slice comparison (``--compare-saved``).
STRETCH = 10
#: Foreground of the neighbour support's per-slice mean: measured intensity above this
#: fraction of the stack's largest (the air around the head is alike on every slice).
FOREGROUND = 0.1
#: Options of the modes that run :func:`medrecon.pipeline.reconstruct` (on top of the task's).
MODE_OPTIONS: dict[str, dict[str, Any]] = {
    "default": {},
    "slice-by-slice": {"key_every": 1, "ensemble": 4, "coherence": 0},
    "warm-starts": {"key_every": 3, "ensemble": 4, "coherence": 0},
    "lanczos-bp": {"method": "lanczos", "bp": True},
}
#: file, 180 x 180 in-plane crop (array axes 0 and 2) and the centre of the coronal slices
#: (array axis 1), per volume.
VOLUMES = {
    "colin27": ("colin27_ch2.nii.gz", (0, 0), 108, "Colin27 T1"),
    "mni152": ("mni152_t1.nii.gz", (8, 4), 116, "MNI152 T1 template"),
}


def _case(data: Path, slices: int, volume: str = "colin27", offset: int = 0) -> Any:
    """The benchmark's case: ``slices`` coronal slices around the volume's centre (moved by
    ``offset`` slices)."""
    from medrecon.realscan import ScanCase

    file, (r0, c0), centre, title = VOLUMES[volume]
    lo = max(0, centre + offset - slices // 2)
    return ScanCase(name=f"{volume}_coronal_{slices}", path=str(data / file),
                    prior="brain_mri", scale=4, kernel="box",
                    crop=[[r0, r0 + 180], [lo, lo + slices], [c0, c0 + 180]], slice_axis=1,
                    description=f"{title}, {slices} coronal slices, 4 mm box average "
                                "in-plane: 45 x 45 -> 180 x 180")


def run_mode(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """One mode in this process: reconstruct, time, score."""
    import numpy as np
    import torch

    from medrecon.pipeline import reconstruct
    from medrecon.realscan import _score, _scipy_cubic, prepare_case

    torch.set_num_threads(args.threads)
    if mode == "lone-slice":
        return _lone_slice(args)
    case = _case(args.data, args.slices, args.volume)
    hr, lr, axis = prepare_case(case)
    t0 = time.perf_counter()
    info: dict[str, Any] = {}
    if mode == "scipy-cubic":
        out = _scipy_cubic(lr.array, case.scale, axis)
    else:
        # the plane is given, so the benchmark does not depend on the acquired-plane rule
        # (which finds coronal here too: the 1 mm axis stands out from the 4 x 4 mm pixels)
        kw: dict[str, Any] = {"task": "sr", "prior": case.prior, "scale": case.scale,
                              "sr_kernel": case.kernel, "device": args.device, "seed": args.seed,
                              "plane": "coronal", **MODE_OPTIONS[mode]}
        if mode == "default":
            for opt in ("key_every", "warm_steps", "ensemble", "coherence"):
                if getattr(args, opt) is not None:
                    kw[opt] = getattr(args, opt)
        if args.batch_size is not None:
            kw["batch_size"] = args.batch_size
        res = reconstruct(lr, **kw)
        out = np.asarray(res.image.array, np.float32)
        info = {k: res.info.get(k) for k in ("method", "key_every", "warm_steps", "ensemble",
                                             "coherence_sigma", "coupling", "adapt_steps",
                                             "plane",
                                             "effective_factor")}
        info["seed"] = args.seed
    seconds = time.perf_counter() - t0
    if args.save is not None:  # the result, for per-slice analysis (the target was checked free)
        import nibabel as nib

        target = _saved(args, mode)
        part = target.with_name(f".part-{target.name}")  # the name appears only when complete
        nib.Nifti1Image(out, np.asarray(hr.affine)).to_filename(part)
        os.replace(part, target)
    scores = _score(out, np.asarray(hr.array, np.float32), axis)
    if args.coherence_sweep and mode not in ("scipy-cubic", "lanczos-bp"):
        scores["coherence_sweep"] = _sweep(out, hr, axis, case, args.coherence_sweep)
    return _row(mode, args, seconds, args.slices, scores, info)


def _lone_slice(args: argparse.Namespace) -> dict[str, Any]:
    """The ``lone-slice`` mode: each slice at :data:`LONE_OFFSETS` reconstructed on its own
    (a one-slice scan, prepared like the stack's, so the same measurements), timed one by one;
    the row's seconds are their median (the first call also loads the prior)."""
    import statistics

    import numpy as np

    from medrecon.pipeline import reconstruct
    from medrecon.realscan import _plane_scores, prepare_case

    stack = np.asarray(prepare_case(_case(args.data, args.slices, args.volume))[0].array)
    data_range = float(stack.max() - stack.min())  # the stack's, as its rows are scored
    times, scores, info = [], [], {}
    for off in LONE_OFFSETS:
        case = _case(args.data, 1, args.volume, offset=off)
        hr, lr, axis = prepare_case(case)
        t0 = time.perf_counter()
        res = reconstruct(lr, task="sr", prior=case.prior, scale=case.scale,
                          sr_kernel=case.kernel, device=args.device, seed=args.seed,
                          plane="coronal",
                          **({"batch_size": args.batch_size} if args.batch_size else {}))
        times.append(time.perf_counter() - t0)
        scores.append(_plane_scores(np.asarray(res.image.array, np.float32),
                                    np.asarray(hr.array, np.float32), axis, data_range))
        info = {k: res.info.get(k) for k in ("method", "ensemble", "plane")}
        info["seed"] = args.seed
    info.update(offsets=list(LONE_OFFSETS), seconds_each=times)
    mean = {k: float(np.mean([s[i] for s in scores])) for i, k in enumerate(("psnr", "ssim"))}
    return _row("lone-slice", args, statistics.median(times), 1,
                {**mean, "psnr_reformat": None, "ssim_reformat": None, "interslice": None}, info)


def _row(mode: str, args: argparse.Namespace, seconds: float, slices: int,
         scores: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """One report row: time, peak memory of this process, scores and how it ran."""
    peak = None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {"mode": mode, "seconds": seconds, "seconds_per_slice": seconds / slices,
            "peak_rss_bytes": peak, **scores, "info": info, "threads": args.threads,
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "command": "python bench/bench_volume.py " + " ".join(sys.argv[1:]).replace(
                f"--one {mode}", f"--modes {mode}")}


def _sweep(out: Any, hr: Any, axis: int, case: Any, widths: str) -> list[dict[str, Any]]:
    """Scores of ``out`` made coherent afterwards at each entry of ``widths``
    (``--coherence-sweep``; meant for a mode run with ``--coherence 0``): ``MM`` (a width in
    mm with the default guide, :data:`medrecon.volume.GUIDE_RANGE`) or ``MM:H`` (guide range
    ``H``; ``none`` for Gaussian weights alone). :func:`medrecon.volume.cohere_slices` runs on
    the output volume with the acquisition operator on the output grid (linear, and the guide
    is relative to the intensity range, so the same as in the pipeline's generator units up
    to rounding)."""
    import numpy as np
    import torch

    from medrecon.physics import build_operator
    from medrecon.realscan import _score
    from medrecon.volume import GUIDE_RANGE, cohere_slices

    vol = np.moveaxis(np.asarray(out, np.float32), axis, 0)  # [N, a, b]
    op = build_operator("sr", img_size=vol.shape[1:], channels=1, seed=0, scale=case.scale,
                        kernel=case.kernel)
    slice_mm = float(np.linalg.norm(np.asarray(hr.affine)[:3, axis]))
    rows = []
    for mm, guide in (_sweep_entry(e, GUIDE_RANGE) for e in widths.split(",")):
        sm = cohere_slices(torch.from_numpy(vol)[:, None], [(op, range(vol.shape[0]))],
                           sigma=mm / slice_mm, guide_range=guide)[:, 0].numpy()
        rows.append({"coherence_mm": mm, "guide_range": guide,
                     **_score(np.moveaxis(sm, 0, axis), np.asarray(hr.array, np.float32), axis)})
    return rows


def _sweep_entry(entry: str, default_guide: float) -> tuple[float, float | None]:
    """``"MM"`` or ``"MM:H"`` (``H`` a number > 0 or ``none``) -> ``(mm, guide_range)``.

    Raises:
        MedreconInputError: anything else, naming the entry.
    """
    import math

    from medrecon.errors import MedreconInputError
    from medrecon.volume import check_coherence

    mm_text, _, guide = entry.strip().partition(":")
    try:
        mm = check_coherence(mm_text.strip())
        h = (default_guide if not guide else None if guide.strip().lower() == "none"
             else float(guide))
    except (MedreconInputError, ValueError):
        mm, h = "auto", -1.0
    if mm == "auto" or (h is not None and not (math.isfinite(h) and h > 0)):
        raise MedreconInputError(
            f"sweep entry {entry!r}; expected MM or MM:H (a width in mm >= 0; H a guide range "
            "> 0 or none), e.g. 0,1.5:none,4,4:0.05.")
    return float(mm), h


def per_slice(args: argparse.Namespace) -> dict[str, Any]:
    """Default against slice by slice along the stack, from the volumes ``--save`` wrote.

    Per stretch of :data:`STRETCH` slices: the mean PSNR / SSIM of both on the acquired plane
    (the stack's data range, as the rows are scored) and the default's neighbour support: the
    number of guesses its coherence step averages (:func:`medrecon.volume.neighbour_support`
    at the automatic width, from the measurements alone: the truth's measured part, which is
    what the noise-free measurements give), its mean over each slice's foreground
    (:data:`FOREGROUND`). Also the correlation over slices of the PSNR gap with the support.

    Raises:
        MedreconInputError: a volume missing or not on the truth's grid.
    """
    import nibabel as nib
    import numpy as np
    import torch

    from medrecon.errors import MedreconInputError
    from medrecon.metrics import psnr, ssim
    from medrecon.physics import build_operator
    from medrecon.realscan import prepare_case
    from medrecon.volume import coherence_sigma, neighbour_support

    case = _case(args.data, args.slices, args.volume)
    hr, _, axis = prepare_case(case)
    ref = np.asarray(hr.array, np.float32)
    modes = ("default", "slice-by-slice")
    missing = [str(_saved(args, m)) for m in modes if not _saved(args, m).is_file()]
    if missing:
        raise MedreconInputError(f"{', '.join(missing)} not found: run those modes with --save "
                                 f"{args.save} first.")
    vols = {m: np.asarray(nib.load(_saved(args, m)).dataobj, np.float32) for m in modes}
    for m, v in vols.items():
        if v.shape != ref.shape:
            raise MedreconInputError(f"{_saved(args, m)} is {v.shape}, the truth {ref.shape}: "
                                     "saved for another --slices or --volume.")
    data_range = float(ref.max() - ref.min()) or 1.0
    def stack(a: Any) -> torch.Tensor:  # [N, 1, H, W], slices first
        return torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, axis, 0), np.float64))[:, None]

    truth = stack(ref)
    scores = {m: (torch.as_tensor(psnr(stack(v), truth, data_range=data_range)),
                  torch.as_tensor(ssim(stack(v), truth, data_range=data_range)))
              for m, v in vols.items()}
    n = truth.shape[0]
    op = build_operator("sr", img_size=tuple(truth.shape[2:]), channels=1, seed=0,
                        scale=case.scale, kernel=case.kernel)
    spacing = np.linalg.norm(np.asarray(hr.affine)[:3, :3], axis=0)
    sigma = coherence_sigma("auto", slice_spacing=float(spacing[axis]),
                            out_spacing_hw=[float(spacing[a]) for a in range(3) if a != axis])
    truth = truth.float()
    support = neighbour_support(truth, [(op, range(n))], sigma=sigma)[:, 0]
    measured = op.A_dagger(op.A(truth))[:, 0]
    fg = (measured > FOREGROUND * float(measured.max())).float()
    support = ((support * fg).sum((1, 2)) / fg.sum((1, 2)).clamp(min=1)).double()
    gap = scores["default"][0] - scores["slice-by-slice"][0]
    stretches = []
    for a in range(0, n, STRETCH):
        b = min(n, a + STRETCH)
        stretches.append({"slices": [a, b], "support": float(support[a:b].mean()),
                          **{f"{k}_{m}": float(scores[m][j][a:b].mean())
                             for m in modes for j, k in enumerate(("psnr", "ssim"))}})
    corr = float(np.corrcoef(gap.numpy(), support.numpy())[0, 1]) if n > 2 else None
    return {"stretch": STRETCH, "sigma_slices": sigma, "stretches": stretches,
            "support_full": _full_support(sigma),
            "gap_support_correlation": corr,
            "command": "python bench/bench_volume.py " + " ".join(sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M")}


def _full_support(sigma: float) -> float:
    """The neighbour support in the middle of a stack of identical slices long enough for the
    weights' reach (``3 sigma``) on both sides: the most a slice can have at width ``sigma``."""
    import math

    import torch

    from medrecon.physics import build_operator
    from medrecon.volume import neighbour_support

    n = 2 * (math.ceil(3 * sigma) + 1) + 1
    op = build_operator("sr", img_size=(4, 4), channels=1, seed=0, scale=2, kernel="box")
    return float(neighbour_support(torch.zeros(n, 1, 4, 4), [(op, range(n))],
                                   sigma=sigma)[n // 2].mean())


def _saved(args: argparse.Namespace, mode: str) -> Path:
    """Where ``--save`` writes a mode's volume (named by its seed when that is not 0)."""
    seed = f"_seed{args.seed}" if getattr(args, "seed", 0) else ""
    return args.save / f"{args.volume}_{args.slices}slices_{mode}{seed}.nii.gz"


def _machine(threads: int, device: str = "cpu") -> dict[str, Any]:
    """The machine of a report: its CPU, and its GPU when the modes ran on CUDA."""
    import platform

    import torch
    from bench_generator import cpu_model  # the sibling benchmark's machine probe

    m = {"cpu": cpu_model(), "logical_cores": os.cpu_count(), "torch_threads": threads,
         "torch": torch.__version__, "python": platform.python_version()}
    if device.startswith("cuda") and torch.cuda.is_available():
        m["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return m


def _f(v: float | None, digits: int) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _gap(a: dict[str, Any], b: dict[str, Any], key: str, digits: int) -> str:
    """``a[key] - b[key]`` signed, or n/a where either is missing (reformats of a stack of
    fewer slices than SSIM's window are not scored)."""
    if a.get(key) is None or b.get(key) is None:
        return "n/a"
    return f"{a[key] - b[key]:+.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    m, rows = report["machine"], report["rows"]
    lines = [f"# Volume benchmark: {report['case']}", "",
             f"Machine: {m['cpu']}{', ' + m['gpu'] if m.get('gpu') else ''}, "
             f"{m['torch_threads']} torch thread(s), torch {m['torch']}. "
             f"Command: `{report['command']}`.", "",
             "| mode | ran as | threads | s / volume | s / slice | peak RSS (GiB) | PSNR coronal | "
             "SSIM coronal | PSNR reformats | SSIM reformats | inter-slice error |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        i = r.get("info") or {}
        ran = i.get("method") or r["mode"]
        opts = [f"ensemble {i['ensemble']}"] if i.get("ensemble") else []
        if i.get("key_every"):
            opts.append(f"key_every {i['key_every']}, warm_steps {i.get('warm_steps')}")
        if i.get("coherence_sigma"):
            opts.append(f"coherence {i['coherence_sigma']:g} slice")
        if i.get("coupling"):
            opts.append(f"stage-1 coupling {i['coupling']:g}")
        if i.get("adapt_steps"):
            opts.append(f"{i['adapt_steps']} adaptation steps")
        if i.get("seed"):
            opts.append(f"seed {i['seed']}")
        if i.get("offsets"):
            opts.append(f"one slice per call, median of {len(i['offsets'])}")
        if opts:
            ran += f" ({'; '.join(opts)})"
        mem = "" if r["peak_rss_bytes"] is None else f"{r['peak_rss_bytes'] / 2**30:.2f}"
        lines.append(f"| {r['mode']} | {ran} | {r.get('threads', m['torch_threads'])} | "
                     f"{r['seconds']:.0f} | {r['seconds_per_slice']:.2f} "
                     f"| {mem} | {_f(r['psnr'], 2)} | {_f(r['ssim'], 4)} | "
                     f"{_f(r['psnr_reformat'], 2)} | {_f(r['ssim_reformat'], 4)} | "
                     f"{_f(r['interslice'], 5)} |")
    swept = [r for r in rows if r.get("coherence_sweep")]
    if swept:
        lines += ["", "Each result made coherent afterwards (`--coherence-sweep`, width in mm; "
                  "guide range as a fraction of the measured intensity range, none: Gaussian "
                  "weights alone):", "", "| mode | width (mm) | guide | PSNR coronal | "
                  "SSIM coronal | PSNR reformats | SSIM reformats | inter-slice error |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in swept:
            for c in r["coherence_sweep"]:
                g = c.get("guide_range")  # None also in rows from before the guide
                g = "-" if not c["coherence_mm"] else "none" if g is None else f"{g:g}"
                lines.append(f"| {r['mode']} | {c['coherence_mm']:g} | {g} | "
                             f"{_f(c['psnr'], 2)} | "
                             f"{_f(c['ssim'], 4)} | {_f(c['psnr_reformat'], 2)} | "
                             f"{_f(c['ssim_reformat'], 4)} | {_f(c['interslice'], 5)} |")
    by = {r["mode"]: r for r in rows}
    d, sbs = by.get("default"), by.get("slice-by-slice")
    if d and sbs:
        same = d.get("threads") == sbs.get("threads")
        lines += ["", f"Default against slice-by-slice: {_gap(d, sbs, 'psnr', 2)} dB / "
                  f"{_gap(d, sbs, 'ssim', 4)} SSIM on the coronal plane, "
                  f"{_gap(d, sbs, 'psnr_reformat', 2)} dB / "
                  f"{_gap(d, sbs, 'ssim_reformat', 4)} on the reformats; "
                  + (f"per-slice cost ratio {d['seconds'] / sbs['seconds']:.3f}."
                     if same else "run with different thread counts: no cost ratio.")]
    lone = by.get("lone-slice")
    if d and lone:
        lines += ["", "Default's per-slice cost against a lone slice: "
                  + (f"{d['seconds_per_slice']:.2f} s / {lone['seconds']:.2f} s = "
                     f"{d['seconds_per_slice'] / lone['seconds']:.3f} (target: at most 0.25)."
                     if d.get("threads") == lone.get("threads")
                     else "run with different thread counts: no cost ratio.")]
    lines += _per_slice_lines(report.get("per_slice"))
    lines += ["", "Rows: " + "; ".join(f"{r['mode']}: `{r.get('command', report['command'])}` "
                                       f"({r.get('date', 'n/a')})" for r in rows) + "."]
    return "\n".join(lines) + "\n"


def _per_slice_lines(ps: dict[str, Any] | None) -> list[str]:
    """The report's per-slice section (:func:`per_slice`), or nothing."""
    if not ps:
        return []
    lines = ["", f"Where along the stack the default and slice-by-slice differ (`{ps['command']}`, "
             f"{ps['date']}): mean PSNR / SSIM on the acquired plane by stretches of "
             f"{ps['stretch']} slices, and the default's neighbour support, the number of "
             f"guesses its coherence step averages ({ps['sigma_slices']:g} slices wide; at most "
             f"{ps['support_full']:.2f}, inside a stack that does not change), on the slices' "
             "foreground:", "",
             "| slices | neighbour support | PSNR default | PSNR slice-by-slice | PSNR gap | "
             "SSIM default | SSIM slice-by-slice | SSIM gap |", "|---|---|---|---|---|---|---|---|"]
    for r in ps["stretches"]:
        a, b = r["slices"]
        lines.append(f"| {a}-{b - 1} | {r['support']:.2f} | {r['psnr_default']:.2f} | "
                     f"{r['psnr_slice-by-slice']:.2f} | "
                     f"{r['psnr_default'] - r['psnr_slice-by-slice']:+.2f} | "
                     f"{r['ssim_default']:.4f} | {r['ssim_slice-by-slice']:.4f} | "
                     f"{r['ssim_default'] - r['ssim_slice-by-slice']:+.4f} |")
    if ps.get("gap_support_correlation") is not None:
        lines += ["", "Correlation over the slices of the PSNR gap with the neighbour support: "
                  f"{ps['gap_support_correlation']:.2f}."]
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path.home() / ".cache" / "medrecon" / "real_scans")
    ap.add_argument("--slices", type=int, default=150)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--volume", choices=sorted(VOLUMES), default="colin27")
    ap.add_argument("--key-every", type=int, default=None)
    ap.add_argument("--warm-steps", type=int, default=None)
    ap.add_argument("--ensemble", type=int, default=None)
    ap.add_argument("--coherence", default=None, help="default mode: 'auto' or mm")
    ap.add_argument("--coherence-sweep", default=None,
                    help="widths in mm, each optionally with a guide range, e.g. "
                    "0,1.5:none,4,4:0.05: also score each result made coherent afterwards "
                    "(run the mode with --coherence 0)")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0,
                    help="seed of the reconstructions (default: %(default)s); runs with other "
                         "seeds show the spread of a mode's scores")
    ap.add_argument("--save", type=Path, default=None,
                    help="also write each mode's volume here as <volume>_<N>slices_<mode>.nii.gz "
                    "(<mode>_seed<K> for --seed K) "
                    "(on the ground truth's grid; an existing file is never replaced)")
    ap.add_argument("--compare-saved", action="store_true",
                    help="solve nothing: add to the report where along the stack the default and "
                         "slice-by-slice volumes saved in --save differ")
    ap.add_argument("--machine", default=os.uname().nodename)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one mode, print JSON
    args = ap.parse_args()
    from medrecon.errors import MedreconInputError
    from medrecon.volume import GUIDE_RANGE, check_coherence

    try:  # option values, checked before any solve
        if args.coherence is not None:
            args.coherence = check_coherence(args.coherence)
        if args.coherence_sweep is not None:
            for e in args.coherence_sweep.split(","):
                _sweep_entry(e, GUIDE_RANGE)
    except MedreconInputError as exc:
        print(f"error: --coherence: {exc}", file=sys.stderr)
        return 2
    if args.seed < 0:
        print(f"error: --seed {args.seed}; expected an integer >= 0.", file=sys.stderr)
        return 2
    vol_file = args.data / VOLUMES[args.volume][0]
    if not vol_file.is_file():
        print(f"error: {vol_file} not found; fetch it with "
              f"`python scripts/real_scans.py --data {args.data} --fetch-only`.", file=sys.stderr)
        return 2
    if args.one:
        print(json.dumps(run_mode(args.one, args)))
        return 0
    if args.compare_saved:
        if args.save is None:
            print("error: --compare-saved reads the volumes of --save DIR; give the folder.",
                  file=sys.stderr)
            return 2
        try:
            section = per_slice(args)
        except MedreconInputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        report = {**_report(args, []), "per_slice": section}
        _write(args, report)
        print(markdown(report))
        return 0
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        print(f"error: unknown mode(s) {unknown}; choose from {', '.join(MODES)}.", file=sys.stderr)
        return 2
    taken = [str(_saved(args, m)) for m in modes if args.save and _saved(args, m).exists()]
    if taken:
        print(f"error: {', '.join(taken)} exist(s); --save never replaces a file: move it or "
              "choose another folder.", file=sys.stderr)
        return 2
    if args.save is not None:
        args.save.mkdir(parents=True, exist_ok=True)
    rows = []
    base = [sys.executable, __file__, "--data", str(args.data), "--slices", str(args.slices),
            "--threads", str(args.threads), "--device", args.device, "--volume", args.volume]
    for opt in ("key_every", "warm_steps", "ensemble", "coherence", "coherence_sweep",
                "batch_size", "save"):
        if getattr(args, opt) is not None:
            base += [f"--{opt.replace('_', '-')}", str(getattr(args, opt))]
    if args.seed:
        base += ["--seed", str(args.seed)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    for mode in modes:
        print(f"[{time.strftime('%H:%M:%S')}] {mode} ...", file=sys.stderr, flush=True)
        out = subprocess.run(base + ["--one", mode], env=env, capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            return out.returncode
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  {rows[-1]['seconds']:.0f} s, PSNR {rows[-1]['psnr']:.2f}", file=sys.stderr)
    report = _report(args, rows)
    _write(args, report)
    print(markdown(report))
    return 0


def _stem(args: argparse.Namespace) -> Path:
    suffix = "" if args.volume == "colin27" else f"_{args.volume}"
    return args.out / f"volume_{args.machine}_{args.slices}slices{suffix}"


def _report(args: argparse.Namespace, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The report of this run: its rows, with the rows of the modes not run this time and
    whatever else (the per-slice section, entries added by hand) kept from an earlier report
    of the same name; when no row ran (``--compare-saved``), that report's machine and
    command too."""
    old: dict[str, Any] = {}
    if _stem(args).with_suffix(".json").is_file():
        old = json.loads(_stem(args).with_suffix(".json").read_text())
    ran = {r["mode"] for r in rows}
    rows = [r for r in old.get("rows", []) if r["mode"] not in ran] + rows
    rows.sort(key=lambda r: MODES.index(r["mode"]) if r["mode"] in MODES else len(MODES))
    report = {"case": _case(args.data, args.slices, args.volume).description,
              "machine": _machine(args.threads, args.device),
              "command": "python bench/bench_volume.py " + " ".join(sys.argv[1:]), "rows": rows}
    if not ran:
        report.update({k: old[k] for k in ("machine", "command") if k in old})
    # anything else the earlier report holds (its per-slice section, rows kept by hand)
    return {**report, **{k: v for k, v in old.items() if k not in report}}


def _write(args: argparse.Namespace, report: dict[str, Any]) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    _stem(args).with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    _stem(args).with_suffix(".md").write_text(markdown(report))


if __name__ == "__main__":
    sys.exit(main())
