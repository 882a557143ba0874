"""Real scans, not the ideal grid: evaluate the normal pipeline on whole volumes and large images.

``medrecon eval`` scores methods on ground truths resized to the prior's ``R x R`` grid. Real
inputs have any size, spacing and plane. This module takes real files (volumes or large 2D
images that no prior was trained or tuned on), simulates the acquisition at their *native*
resolution (SR: the acquisition kernel averages ``scale x scale`` in-plane pixels of the
ground truth onto one low-resolution pixel; the slices keep their size, spacing and plane),
reconstructs the low-resolution file through :func:`medrecon.pipeline.reconstruct` exactly as
the CLI would (default plane, default method), and scores the result on the native output grid
against native-grid baselines: cubic (scipy, independent of medrecon) and medrecon's bicubic and
Lanczos, with and without back-projection.

Metrics: PSNR and SSIM (``data_range`` = the ground truth's range over the case) per slice of
the acquired plane, averaged; for volumes with enough slices also on the two reformatted
planes (what a sagittal view of a coronal stack shows), and an inter-slice consistency figure
(:func:`interslice_error`).

Command: ``medrecon eval-scans CASES.json --out DIR``; ``scripts/real_scans.py`` fetches the
shipped public files and writes the case list used for ``docs/results/real_scans/``.
"""

from __future__ import annotations

import csv
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import click
import numpy as np
import torch

from medrecon.cli_types import OutputPath
from medrecon.errors import MedreconInputError

__all__ = [
    "ScanCase",
    "ScanRow",
    "evaluate_scans",
    "interslice_error",
    "load_cases",
    "prepare_case",
    "simulate_lowres",
]

#: The methods compared by default: the CLI's default and the native-grid baselines.
DEFAULT_METHODS = ("default", "scipy-cubic", "bicubic", "lanczos", "bicubic-bp", "lanczos-bp")
#: The columns of ``results.csv``.
CSV_COLUMNS = ("case", "method", "ran_as", "plane", "plane_source", "slices", "psnr", "ssim",
               "psnr_reformat", "ssim_reformat", "interslice", "effective_factor", "seconds")


@dataclass(frozen=True)
class ScanCase:
    """One real file and how it is degraded.

    Attributes:
        name: Short id (file names, tables).
        path: The ground truth: NIfTI, DICOM file or series folder, PNG... (any
            :func:`medrecon.io.load_image` input).
        prior: Prior name or path for the reconstruction.
        scale: SR factor.
        kernel: Acquisition blur simulating the low-resolution scan (``"box"``: pixel averaging,
            ``"bicubic"``, ``"gaussian"``) and given to the reconstruction as ``sr_kernel``.
        crop: Voxel ranges ``[[start, stop], ...]`` per array axis of the ground truth (``None``
            keeps an axis whole). In-plane sizes are then cut to a multiple of ``bin * scale``.
        bin: Block-averaging of the ground truth per axis before anything else (a coarser or
            anisotropic "truth", e.g. ``[1, 2, 1]``).
        slice_axis: Array axis across the acquired slices (the in-plane axes are the other two);
            ``None`` for a 2D image (its singleton axis).
        description: What the case is (shown in the report).
        source: Where the file comes from and its licence.
    """

    name: str
    path: str
    prior: str
    scale: int = 4
    kernel: str = "box"
    crop: Sequence[Sequence[int] | None] | None = None
    bin: Sequence[int] = (1, 1, 1)
    slice_axis: int | None = None
    description: str = ""
    source: str = ""


@dataclass
class ScanRow:
    """One method on one case (a line of ``results.csv``)."""

    case: str
    method: str
    ran_as: str
    plane: str
    plane_source: str
    slices: int
    psnr: float
    ssim: float
    psnr_reformat: float | None
    ssim_reformat: float | None
    interslice: float | None
    effective_factor: float | None
    seconds: float
    extra: dict = field(default_factory=dict)

    def as_csv(self) -> dict[str, Any]:
        def f(v: Any, d: int) -> Any:
            return "" if v is None else (round(v, d) if isinstance(v, float) else v)

        return {"case": self.case, "method": self.method, "ran_as": self.ran_as,
                "plane": self.plane, "plane_source": self.plane_source, "slices": self.slices,
                "psnr": f(self.psnr, 4), "ssim": f(self.ssim, 5),
                "psnr_reformat": f(self.psnr_reformat, 4), "ssim_reformat": f(self.ssim_reformat, 5),
                "interslice": f(self.interslice, 5), "effective_factor": f(self.effective_factor, 3),
                "seconds": f(self.seconds, 2)}


def load_cases(path: str | Path) -> list[ScanCase]:
    """Read a JSON list of cases (relative ``path`` entries are relative to the JSON file)."""
    from medrecon.io._paths import check_input_file

    p = check_input_file(path, what="case list")  # no device, pipe or folder is read
    if p.is_dir() or p.stat().st_size > 16 * 2**20:
        raise MedreconInputError(f"case list {str(p)!r} is not a JSON file of at most 16 MiB; "
                                 "expected a JSON list of cases (name, path, prior).")
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MedreconInputError(f"cannot read the case list {str(p)!r}: {exc}.") from None
    items = raw.get("cases", raw) if isinstance(raw, dict) else raw
    if not isinstance(items, list) or not items:
        raise MedreconInputError(f"{str(p)!r} holds no cases; expected a JSON list of objects "
                                 "with name, path and prior.")
    cases = []
    known = set(ScanCase.__dataclass_fields__)
    for item in items:
        unknown = sorted(set(item) - known) if isinstance(item, dict) else []
        if not isinstance(item, dict) or unknown or not {"name", "path", "prior"} <= set(item):
            raise MedreconInputError(
                f"case {item!r} in {str(p)!r}: expected name, path, prior and optionally "
                f"{', '.join(sorted(known - {'name', 'path', 'prior'}))}"
                + (f"; unknown {unknown}" if unknown else "") + ".")
        entry = dict(item)
        _check_case_fields(entry, p)
        fp = Path(entry["path"]).expanduser()
        entry["path"] = str(fp if fp.is_absolute() else p.parent / fp)
        if any(c.name == entry["name"] for c in cases):
            raise MedreconInputError(
                f"two cases in {str(p)!r} are named {entry['name']!r}; their rows of "
                "results.csv could not be told apart. Give each case its own name.")
        cases.append(ScanCase(**entry))
    return cases


def _check_case_fields(entry: dict, source: Path) -> None:
    """The types and ranges of one case's fields (a bad one gave a ZeroDivisionError,
    IndexError... from deep inside the degradation: exit 1)."""
    def bad(key: str, expected: str) -> MedreconInputError:
        return MedreconInputError(
            f"case {entry.get('name')!r} in {str(source)!r}: {key}={entry[key]!r}; expected "
            f"{expected}.")

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    for key in ("name", "path", "prior", "kernel", "description", "source"):
        if key in entry and not isinstance(entry[key], str):
            raise bad(key, "a string")
    if "scale" in entry and not (is_int(entry["scale"]) and 2 <= entry["scale"] <= 32):
        raise bad("scale", "an integer from 2 to 32")
    if entry.get("slice_axis") is not None and not (is_int(entry["slice_axis"])
                                                    and 0 <= entry["slice_axis"] <= 2):
        raise bad("slice_axis", "0, 1, 2 or null")
    if "bin" in entry and not (isinstance(entry["bin"], list) and len(entry["bin"]) == 3
                               and all(is_int(b) and b >= 1 for b in entry["bin"])):
        raise bad("bin", "three integers >= 1, one per array axis")
    crop = entry.get("crop")
    if crop is not None and not (
            isinstance(crop, list) and len(crop) <= 3
            and all(c is None or (isinstance(c, list) and len(c) == 2
                                  and all(is_int(v) and v >= 0 for v in c) and c[0] < c[1])
                    for c in crop)):
        raise bad("crop", "null, or up to three [start, stop] voxel ranges (or null) per axis")


# ------------------------------------------------------------------------------ degradation
def _inplane_axes(slice_axis: int) -> tuple[int, int]:
    a, b = [i for i in range(3) if i != slice_axis]
    return a, b


def simulate_lowres(hr: Any, *, scale: int, kernel: str, slice_axis: int) -> Any:
    """The low-resolution scan of ``hr`` acquired in the plane across ``slice_axis``.

    Every slice is blurred by the SR acquisition kernel and decimated by ``scale`` along its
    two in-plane axes (:class:`medrecon.physics.SuperResolution`, the forward model the
    reconstruction uses); the slice axis is untouched. The affine keeps the field of view
    (in-plane spacing times ``scale``).

    Args:
        hr: :class:`medrecon.io.MedicalImage` whose in-plane sizes are multiples of ``scale``.
        scale: Decimation factor.
        kernel: ``"box"``, ``"bicubic"`` or ``"gaussian"``.
        slice_axis: Array axis across the slices.

    Returns:
        The low-resolution :class:`~medrecon.io.MedicalImage`.
    """
    from medrecon.io import MedicalImage, resample_affine_for_zoom
    from medrecon.physics import SuperResolution

    vol = torch.from_numpy(np.ascontiguousarray(hr.array, dtype=np.float32))
    a, b = _inplane_axes(slice_axis)
    if vol.shape[a] % scale or vol.shape[b] % scale:
        raise MedreconInputError(
            f"in-plane size {vol.shape[a]}x{vol.shape[b]} is not a multiple of scale {scale}.")
    s = torch.movedim(vol, slice_axis, 0)  # [N, a, b] in increasing axis order
    op = SuperResolution(scale, img_size=(s.shape[1], s.shape[2]), kernel=kernel)
    with torch.no_grad():
        lr = op.A(s[:, None].double())[:, 0].float()
    lr = torch.movedim(lr, 0, slice_axis).numpy()
    zoom = [1.0, 1.0, 1.0]
    zoom[a] = zoom[b] = 1.0 / scale
    meta = {k: v for k, v in hr.meta.items() if k not in ("dicom_headers", "source_paths", "path")}
    return MedicalImage(lr, resample_affine_for_zoom(hr.affine, tuple(zoom)), meta)


def prepare_case(case: ScanCase) -> tuple[Any, Any, int]:
    """Load a case's ground truth, crop and bin it, and simulate its low-resolution scan.

    Returns:
        ``(ground truth, low-resolution scan, slice axis)`` as :class:`medrecon.io.MedicalImage`.
    """
    from medrecon.io import MedicalImage, load_image, resample_affine_for_zoom

    img = load_image(case.path)
    arr = np.asarray(img.array, dtype=np.float32)
    affine = np.asarray(img.affine, dtype=np.float64).copy()
    slice_axis = case.slice_axis
    if slice_axis is None:
        singles = [i for i, n in enumerate(arr.shape) if n == 1]
        if not singles:
            raise MedreconInputError(f"case {case.name!r}: a 3D volume needs slice_axis.")
        slice_axis = singles[-1]
    starts = [0, 0, 0]
    if case.crop is not None:
        idx = []
        for ax, rng in enumerate(case.crop):
            lo, hi = (0, arr.shape[ax]) if rng is None else (int(rng[0]), int(rng[1]))
            if not 0 <= lo < hi <= arr.shape[ax]:
                raise MedreconInputError(f"case {case.name!r}: crop {rng} outside axis {ax} "
                                         f"of size {arr.shape[ax]}.")
            idx.append(slice(lo, hi))
            starts[ax] = lo
        arr = arr[tuple(idx)]
    bins = [int(v) for v in case.bin]
    stop = list(arr.shape)
    for ax in _inplane_axes(slice_axis):
        stop[ax] -= stop[ax] % (bins[ax] * case.scale)
    for ax in range(3):
        stop[ax] -= stop[ax] % bins[ax]
    arr = arr[: stop[0], : stop[1], : stop[2]]
    _check_case_size(case, arr.shape, bins, slice_axis)
    affine[:3, 3] = (affine @ np.array([*starts, 1.0]))[:3]
    if any(v > 1 for v in bins):
        shp = []
        for ax in range(3):
            shp += [arr.shape[ax] // bins[ax], bins[ax]]
        arr = arr.reshape(shp).mean(axis=(1, 3, 5))
        affine = resample_affine_for_zoom(affine, tuple(1.0 / v for v in bins))
    meta = {k: v for k, v in img.meta.items() if k not in ("dicom_headers", "source_paths", "path")}
    hr = MedicalImage(np.ascontiguousarray(arr, dtype=np.float32), affine, meta)
    lr = simulate_lowres(hr, scale=case.scale, kernel=case.kernel, slice_axis=slice_axis)
    return hr, lr, slice_axis


def _check_case_size(case: ScanCase, shape: tuple[int, ...], bins: list[int],
                     slice_axis: int) -> None:
    """The cropped, binned ground truth must leave low-resolution slices the pipeline can
    solve (an empty array or 1 x 20 slices failed later with messages naming neither)."""
    from medrecon.pipeline import MIN_SLICE_SIDE

    if slice_axis >= len(shape) or any(n // b < 1 for n, b in zip(shape, bins)):
        raise MedreconInputError(
            f"case {case.name!r}: crop {case.crop}, bin {list(case.bin)} and slice_axis "
            f"{slice_axis} leave no voxel of the {'x'.join(map(str, shape))} ground truth; "
            "check them against the file's shape.")
    low = [shape[ax] // bins[ax] // case.scale for ax in _inplane_axes(slice_axis)]
    if min(low) < MIN_SLICE_SIDE:
        raise MedreconInputError(
            f"case {case.name!r}: the low-resolution slices would be {low[0]}x{low[1]} pixels "
            f"(crop, bin and scale {case.scale}); slices need at least {MIN_SLICE_SIDE} x "
            f"{MIN_SLICE_SIDE}. Crop less, bin less or use a smaller scale.")


# ------------------------------------------------------------------------------ metrics
def _plane_scores(out: np.ndarray, ref: np.ndarray, axis: int, data_range: float
                  ) -> tuple[float, float] | None:
    """Mean PSNR / SSIM over the 2D slices across ``axis`` (None under SSIM's 11 x 11 window)."""
    from medrecon.metrics import psnr, ssim

    a = torch.from_numpy(np.ascontiguousarray(np.moveaxis(out, axis, 0), dtype=np.float64))[:, None]
    r = torch.from_numpy(np.ascontiguousarray(np.moveaxis(ref, axis, 0), dtype=np.float64))[:, None]
    if min(a.shape[-2:]) < 11:
        return None
    p = torch.as_tensor(psnr(a, r, data_range=data_range), dtype=torch.float64)
    s = torch.as_tensor(ssim(a, r, data_range=data_range), dtype=torch.float64)
    return float(p.mean()), float(s.mean())


def interslice_error(out: np.ndarray, ref: np.ndarray, slice_axis: int, data_range: float
                     ) -> float | None:
    """Inter-slice consistency: RMS difference, relative to ``data_range``, between the
    slice-to-slice changes of the result and those of the ground truth along ``slice_axis``.

    0 means neighbouring slices differ exactly as they do in the truth; independent per-slice
    errors (flicker in a reformatted view) raise it. ``None`` for fewer than two slices.
    """
    if out.shape[slice_axis] < 2:
        return None
    d_out = np.diff(np.asarray(out, np.float64), axis=slice_axis)
    d_ref = np.diff(np.asarray(ref, np.float64), axis=slice_axis)
    return float(np.sqrt(np.mean((d_out - d_ref) ** 2)) / data_range)


def _score(out: np.ndarray, ref: np.ndarray, slice_axis: int) -> dict[str, float | None]:
    data_range = float(ref.max() - ref.min()) or 1.0
    acq = _plane_scores(out, ref, slice_axis, data_range)
    if acq is None:
        raise MedreconInputError("slices under 11 x 11 pixels cannot be scored with SSIM.")
    ref_scores = [s for s in (_plane_scores(out, ref, ax, data_range)
                              for ax in range(3) if ax != slice_axis) if s is not None]
    return {
        "psnr": acq[0], "ssim": acq[1],
        "psnr_reformat": float(np.mean([s[0] for s in ref_scores])) if ref_scores else None,
        "ssim_reformat": float(np.mean([s[1] for s in ref_scores])) if ref_scores else None,
        "interslice": interslice_error(out, ref, slice_axis, data_range),
    }


# ------------------------------------------------------------------------------ methods
def _scipy_cubic(lr: np.ndarray, scale: int, slice_axis: int) -> np.ndarray:
    """Cubic-spline interpolation of every slice by ``scale`` (scipy; pixel edges aligned,
    mirrored borders)."""
    from scipy import ndimage

    zoom = [float(scale)] * 3
    zoom[slice_axis] = 1.0
    return ndimage.zoom(np.asarray(lr, np.float64), zoom, order=3, grid_mode=True,
                        mode="reflect").astype(np.float32)


def _run_method(method: str, case: ScanCase, lr: Any, *, device: str, seed: int,
                steps: int | None, slice_axis: int) -> tuple[np.ndarray, dict]:
    from medrecon.pipeline import reconstruct

    if method == "scipy-cubic":
        return _scipy_cubic(lr.array, case.scale, slice_axis), {"method": "scipy-cubic"}
    name, bp = (method[:-3], True) if method.endswith("-bp") else (method, None)
    kw: dict[str, Any] = {"task": "sr", "prior": case.prior, "scale": case.scale,
                          "sr_kernel": case.kernel, "device": device, "seed": seed}
    if name != "default":
        kw["method"] = name
        if bp is not None:
            kw["bp"] = bp
    if steps is not None:
        kw["steps"] = steps
    res = reconstruct(lr, **kw)
    return np.asarray(res.image.array, np.float32), res.info


def evaluate_scans(
    cases: Sequence[ScanCase],
    *,
    methods: Sequence[str] = DEFAULT_METHODS,
    device: str = "auto",
    seed: int = 0,
    steps: int | None = None,
    out_dir: str | Path | None = None,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
) -> list[ScanRow]:
    """Degrade each case at its native resolution, reconstruct it with each method, score it.

    Args:
        cases: The cases.
        methods: ``"default"`` (what ``medrecon sr`` runs without ``--method``),
            ``"scipy-cubic"``, or any pipeline method with an optional ``-bp`` suffix
            (``"bicubic"``, ``"lanczos-bp"``, ``"iagan"``...).
        device: Where to compute.
        seed: Seed of the reconstructions.
        steps: Solver steps (``None``: the method defaults; tests use a few).
        out_dir: Where to write ``results.csv``, ``summary.md``, ``grid.png`` and
            ``settings.json`` (checked before any work; see :func:`medrecon.evaluation.check_report_dir`).
        overwrite: Replace a previous report there.
        progress: Receives one-line progress messages.

    Returns:
        The rows, cases in order, methods in order.

    Raises:
        MedreconInputError: before any reconstruction, for an unknown method, a case whose
            file, prior, crop or slice axis is bad, or a report folder that may not be written.
    """
    from medrecon.evaluation import check_report_dir

    if not cases:
        raise MedreconInputError("no cases to evaluate.")
    methods = [m.strip() for m in methods if m.strip()]
    if not methods:
        raise MedreconInputError("no methods given; e.g. default,scipy-cubic,lanczos-bp.")
    if out_dir is not None:
        check_report_dir(out_dir, images=[c.path for c in cases if Path(c.path).is_file()],
                         overwrite=overwrite)
        out = Path(out_dir).expanduser().resolve()
        for c in cases:  # a DICOM series folder: the report never goes into it
            folder = Path(c.path).expanduser().resolve()
            if folder.is_dir() and (out == folder or folder in out.parents):
                raise MedreconInputError(
                    f"--out {str(out_dir)!r} is, or lies inside, the scan folder {str(c.path)!r} "
                    f"of case {c.name!r}; choose an --out folder outside it.")
    _check_runs(cases, methods)
    say = progress or (lambda _m: None)
    rows: list[ScanRow] = []
    panels: dict[str, list[np.ndarray]] = {}
    for case in cases:
        hr, lr, axis = prepare_case(case)
        say(f"{case.name}: ground truth {hr.shape}, low resolution {lr.shape} (x{case.scale}, "
            f"{case.kernel} kernel)")
        ref = np.asarray(hr.array, np.float32)
        mid = ref.shape[axis] // 2
        panels.setdefault("ground truth", []).append(np.take(ref, mid, axis=axis))
        panels.setdefault("low resolution", []).append(
            np.kron(np.take(np.asarray(lr.array), mid, axis=axis), np.ones((case.scale,) * 2)))
        for method in methods:
            t0 = time.perf_counter()
            out, info = _run_method(method, case, lr, device=device, seed=seed, steps=steps,
                                    slice_axis=axis)
            secs = time.perf_counter() - t0
            if out.shape != ref.shape:
                raise MedreconInputError(
                    f"{case.name}: {method} returned {out.shape}, the ground truth is {ref.shape}.")
            sc = _score(out, ref, axis)
            eff = info.get("effective_factor")
            row = ScanRow(case.name, method, str(info.get("method", method)),
                          str(info.get("plane", "-")), str(info.get("plane_source", "-")),
                          int(ref.shape[axis]), sc["psnr"], sc["ssim"], sc["psnr_reformat"],
                          sc["ssim_reformat"], sc["interslice"],
                          float(min(eff)) if eff else None, secs)
            rows.append(row)
            panels.setdefault(method, []).append(np.take(out, mid, axis=axis))
            say(f"  {method:<12s} ({row.ran_as}) PSNR {row.psnr:6.2f}  SSIM {row.ssim:.4f}  "
                f"{secs:6.1f} s")
    if out_dir is not None:
        _write_report(rows, cases, methods, panels, Path(out_dir), overwrite=overwrite,
                      settings={"device": device, "seed": seed, "steps": steps})
    return rows


def _check_runs(cases: Sequence[ScanCase], methods: Sequence[str]) -> None:
    """Everything the runs need, before the first: every method name (an SR method of the
    pipeline, ``default`` or ``scipy-cubic``), every case's prior, file, crop and slice axis
    (:func:`prepare_case` on each, one at a time). A bad last case or method stopped the run
    only when reached, after the earlier ones had run for minutes."""
    from medrecon.evaluation import parse_methods
    from medrecon.priors import resolve_prior_path
    from medrecon.solvers import check_method_task

    solver = [m for m in methods if m not in ("default", "scipy-cubic")]
    if solver:
        try:
            names = parse_methods(solver)
        except MedreconInputError as exc:
            raise MedreconInputError(f"{exc} eval-scans also runs 'default' (the CLI's choice) "
                                     "and 'scipy-cubic'.") from None
        for name in names:
            check_method_task(name[:-3] if name.endswith("-bp") else name, "sr")
    for case in cases:
        try:
            if any(m != "scipy-cubic" for m in methods):
                resolve_prior_path(case.prior)
            prepare_case(case)
        except MedreconInputError as exc:
            text = str(exc)
            raise MedreconInputError(text if text.startswith(f"case {case.name!r}")
                                     else f"case {case.name!r}: {text}") from None


# ------------------------------------------------------------------------------ report
def _best_baseline(rows: list[ScanRow], metric: str) -> ScanRow | None:
    base = [r for r in rows if r.method not in ("default",) and not _generative(r.ran_as)]
    return max(base, key=lambda r: getattr(r, metric)) if base else None


def _generative(ran_as: str) -> bool:
    return ran_as.split("+")[0] in ("iagan", "brgm", "brgm_variational", "csgm")


def summary_markdown(rows: Sequence[ScanRow], cases: Sequence[ScanCase],
                     settings: dict) -> str:
    """The report: one table per case and the default against the best native baseline."""
    lines = ["# Real scans: medrecon sr at native resolution", "",
             f"Machine: {settings.get('cpu')} ({settings.get('threads')} torch threads), "
             f"device {settings.get('device')}; medrecon {settings.get('medrecon')}, "
             f"torch {settings.get('torch')}. PSNR / SSIM on the acquired plane (mean over "
             "slices, data range = the ground truth's range); reformat = the two orthogonal "
             "planes; inter-slice = RMS error of slice-to-slice changes (lower is better).", ""]
    by_case: dict[str, list[ScanRow]] = {}
    for r in rows:
        by_case.setdefault(r.case, []).append(r)
    verdict = ["| case | default | best baseline PSNR | best baseline SSIM | default >= best on both |",
               "|---|---|---|---|---|"]
    for case in cases:
        rs = by_case.get(case.name, [])
        if not rs:
            continue
        lines += [f"## {case.name}", "", case.description or "", "",
                  f"Source: {case.source or case.path}. x{case.scale} with the {case.kernel} "
                  f"kernel; prior `{case.prior}`.", "",
                  "| method | ran as | plane (chosen by) | PSNR | SSIM | PSNR reformat | "
                  "SSIM reformat | inter-slice | prior factor | seconds |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rs:
            def f(v: Any, d: int) -> str:
                return "-" if v is None else f"{v:.{d}f}"
            lines.append(f"| {r.method} | {r.ran_as} | {r.plane} ({r.plane_source}) | "
                         f"{r.psnr:.2f} | {r.ssim:.4f} | {f(r.psnr_reformat, 2)} | "
                         f"{f(r.ssim_reformat, 4)} | {f(r.interslice, 4)} | "
                         f"{f(r.effective_factor, 2)} | {r.seconds:.1f} |")
        lines.append("")
        d = next((r for r in rs if r.method == "default"), None)
        bp, bs = _best_baseline(rs, "psnr"), _best_baseline(rs, "ssim")
        if d is not None and bp is not None and bs is not None:
            ok = d.psnr >= bp.psnr and d.ssim >= bs.ssim
            verdict.append(f"| {case.name} | {d.ran_as} {d.psnr:.2f} / {d.ssim:.4f} | "
                           f"{bp.method} {bp.psnr:.2f} | {bs.method} {bs.ssim:.4f} | "
                           f"{'yes' if ok else 'no'} |")
    return "\n".join(lines[:1] + [""] + ["## Default against the best native-grid baseline", ""]
                     + verdict + [""] + lines[2:]) + "\n"


def _write_report(rows: list[ScanRow], cases: Sequence[ScanCase], methods: Sequence[str],
                  panels: dict[str, list[np.ndarray]], out: Path, *, overwrite: bool,
                  settings: dict) -> None:
    import medrecon
    from medrecon.evaluation import _cpu_name  # noqa: PLC2701 - the same machine description
    from medrecon.evaluation import write_report_settings
    from medrecon.io.outputs import OutputStage

    settings = {**settings, "medrecon": medrecon.__version__, "torch": torch.__version__,
                "python": platform.python_version(), "cpu": _cpu_name(),
                "threads": torch.get_num_threads(), "methods": list(methods),
                "cases": [asdict(c) for c in cases]}
    with OutputStage(overwrite=overwrite) as stage:
        staged = {n: stage.file(out / n) for n in ("results.csv", "summary.md", "grid.png")}
        with open(staged["results.csv"], "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=list(CSV_COLUMNS))
            w.writeheader()
            for r in rows:
                w.writerow(r.as_csv())
        staged["summary.md"].write_text(summary_markdown(rows, cases, settings), encoding="utf-8")
        _write_grid(panels, staged["grid.png"])
        write_report_settings(settings, staged, stage.file(out / "settings.json"))


def _write_grid(panels: dict[str, list[np.ndarray]], path: Path) -> None:
    """One row per case (middle slice), one column per method, each case at a common width."""
    from PIL import Image, ImageDraw

    cols = list(panels)
    n = len(panels[cols[0]])
    tile = 160
    rows = []
    for i in range(n):
        ref = panels["ground truth"][i]
        lo, hi = np.percentile(ref, [0.5, 99.5])
        hi = hi if hi > lo else lo + 1
        row = []
        for c in cols:
            a = np.clip((panels[c][i] - lo) / (hi - lo), 0, 1)
            im = Image.fromarray((a.T * 255).astype(np.uint8))  # rows = array axis 1
            scale = tile / max(im.size)
            im = im.resize((max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale))),
                           Image.NEAREST)
            canvas = Image.new("L", (tile, tile), 0)
            canvas.paste(im, ((tile - im.size[0]) // 2, (tile - im.size[1]) // 2))
            row.append(canvas)
        rows.append(row)
    grid = Image.new("L", (len(cols) * (tile + 2), 14 + n * (tile + 2)), 255)
    draw = ImageDraw.Draw(grid)
    for j, c in enumerate(cols):
        draw.text((j * (tile + 2) + 2, 1), c[:26], fill=0)
        for i in range(n):
            grid.paste(rows[i][j], (j * (tile + 2), 14 + i * (tile + 2)))
    grid.save(path, format="PNG")


# ------------------------------------------------------------------------------ CLI
@click.command("eval-scans", context_settings={"show_default": True})
@click.argument("cases_json", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out_dir", required=True, type=OutputPath(file_okay=False, path_type=Path),
              help="Report folder: results.csv, summary.md, grid.png, settings.json.")
@click.option("--methods", default=",".join(DEFAULT_METHODS),
              help="Comma-separated: default (the CLI's choice), scipy-cubic, or pipeline "
                   "methods with an optional -bp suffix (bicubic, lanczos-bp, iagan, ...).")
@click.option("--cases", "only", default=None, help="Comma-separated case names to run.")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Solver steps [default: each method's own].")
@click.option("--device", default="auto", help="auto, cpu or cuda.")
@click.option("--seed", type=click.IntRange(min=0), default=0)
@click.option("--overwrite", is_flag=True, help="Replace a previous report in --out.")
def eval_scans_command(cases_json: Path, out_dir: Path, methods: str, only: str | None,
                       steps: int | None, device: str, seed: int, overwrite: bool) -> None:
    """Evaluate super-resolution on real scans at their native resolution.

    CASES_JSON lists the cases: {"name", "path", "prior", "scale", "kernel", "crop", "bin",
    "slice_axis", "description", "source"} (see medrecon.realscan.ScanCase). Each ground truth
    is degraded in its own plane at its own resolution, reconstructed exactly as `medrecon sr`
    would, and scored on the native output grid against native-grid interpolation.
    """
    cases = load_cases(cases_json)
    if only:
        wanted = [c.strip() for c in only.split(",") if c.strip()]
        missing = sorted(set(wanted) - {c.name for c in cases})
        if missing:
            raise MedreconInputError(f"no case named {', '.join(missing)} in {cases_json}; "
                                     f"known: {', '.join(c.name for c in cases)}.")
        cases = [c for c in cases if c.name in wanted]
    evaluate_scans(cases, methods=methods.split(","), device=device, seed=seed, steps=steps,
                   out_dir=out_dir, overwrite=overwrite, progress=lambda m: click.echo(m, err=True))
    click.echo(f"wrote {out_dir}/results.csv, summary.md, grid.png", err=True)
