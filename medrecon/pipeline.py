"""The one reconstruction entry point: scan in, reconstructed scan (with geometry) out.

The CLI, the MONAI bundles and the 3D Slicer module all call :func:`reconstruct` (an in-memory
:class:`~medrecon.io.MedicalImage`), :func:`reconstruct_file` (paths) or
:func:`reconstruct_directory` (a dataset folder). Nothing else holds reconstruction logic.

Per volume, :func:`reconstruct` runs one :class:`monai.transforms.Compose` of the steps in
:mod:`medrecon.steps` (details and the geometry rules in ``docs/pipeline.md``)::

    ReadVolume          volume (X, Y, Z) + RAS affine, checked
    CutSlices           display-oriented slices [N, H, W] in the acquired plane (exact)
    ChooseMethod        the method for these slices
    SliceMask           the inpainting mask cut like the image
    WindowIntensities   intensities to generator space by percentiles (exact)
    SolveSlices         measurements on the slices' own grid, the prior's grid inside the
                        forward model, batched solve (CSGM / BRGM / IAGAN / baselines)
    RestoreIntensities  invert the window
    StackSlices         MedicalImage with the input's affine (SR: in-plane spacing / scale)
    Summarise           what was done

This module holds the entry points and the helpers the steps call; k-space input
(:func:`reconstruct_kspace`) and files (:func:`reconstruct_file`).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from medrecon.errors import MedreconInputError, MedreconWarning
from medrecon.limits import MAX_ENSEMBLE, MAX_NOISE_SIGMA
from medrecon.transforms import PLANES, GridFit, IntensityWindow, SliceOrientation

__all__ = [
    "TASKS",
    "SIMULATE_ONLY_TASKS",
    "KSPACE_SUFFIXES",
    "PipelineResult",
    "reconstruct",
    "check_reconstruction",
    "reconstruct_kspace",
    "reconstruct_file",
    "reconstruct_directory",
    "default_output_path",
    "std_kind",
    "std_path_for",
    "load_kspace",
]

#: Tasks understood by the pipeline (the names of ``medrecon.physics.build_operator``).
TASKS = ("sr", "inpaint", "mri", "deblur", "denoise", "cs")
#: Tasks whose measurements cannot be stored as an image: the input is always simulated.
SIMULATE_ONLY_TASKS = ("cs",)
#: File suffixes read as fastMRI-style complex k-space for ``task='mri'``.
KSPACE_SUFFIXES = (".npy", ".h5", ".hdf5")
#: File suffixes :func:`reconstruct_directory` picks up.
IMAGE_SUFFIXES = (".nii", ".nii.gz", ".dcm", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy",
                  ".h5", ".mha", ".mhd", ".nrrd", ".nhdr")
#: Fallback method per task when neither the caller nor the prior's metadata picks one.
DEFAULT_METHOD = "iagan"

ProgressCallback = Callable[[dict], None]


@dataclass
class PipelineResult:
    """What a reconstruction returns.

    Attributes:
        image: The reconstruction with its geometry (same field of view as the input).
        std: Per-voxel std map in intensity units (``samples > 0``, or ``spread``), else None:
            a calibrated standard deviation of the error when the prior ships a calibration
            for the regime (``info["std_kind"] == "calibrated std"``, the entry in
            ``info["std_calibration"]``; :mod:`medrecon.solvers.calibration`), else the raw
            spread of the samples or runs (``"spread"``), a relative map.
        info: What was done: ``task, method, device, seconds, slices, plane, window, grid,
            scale, prior, seed, ...`` (JSON-serialisable).
        output_path: Where :func:`reconstruct_file` wrote ``image`` (None in memory).
        std_path: Where the std map was written, if any.
    """

    image: Any
    std: Any = None
    info: dict = field(default_factory=dict)
    output_path: Path | None = None
    std_path: Path | None = None


# ---------------------------------------------------------------------------------------------
# Helpers: prior, method, options
# ---------------------------------------------------------------------------------------------
def _resolve_prior(prior: Any) -> Any:
    if prior is None:
        raise MedreconInputError(
            "no prior given; pass a prior name (see `medrecon priors list`), a prior directory, "
            "or a Prior object."
        )
    if isinstance(prior, (str, Path)):
        from medrecon.priors import load_prior

        return load_prior(str(prior), device="cpu")
    return prior


def _prior_meta(prior: Any) -> dict:
    meta = getattr(prior, "metadata", None)
    return dict(meta) if isinstance(meta, Mapping) else {}


def _prior_resolution(prior: Any) -> tuple[int, int]:
    res = getattr(prior, "resolution", None)
    ch = getattr(prior, "channels", None)
    G = getattr(prior, "generator", prior)
    if res is None:
        res = getattr(G, "img_resolution", None)
    if ch is None:
        ch = getattr(G, "img_channels", 1)
    if res is None:
        raise MedreconInputError(
            f"the prior {type(prior).__name__} has no resolution; expected a medrecon Prior "
            "(from medrecon.priors.load_prior) or a StyleGAN2 generator with img_resolution."
        )
    return int(res), int(ch)


def _prior_name(prior: Any) -> str:
    meta = _prior_meta(prior)
    return str(getattr(prior, "name", None) or meta.get("name") or type(prior).__name__)


def _available_methods() -> tuple[str, ...]:
    from medrecon.solvers import METHODS

    return tuple(METHODS)


def _method_spec(method: str) -> Any:
    from medrecon.solvers import METHODS

    return METHODS[method]


def _accepts(method: str, option: str) -> bool:
    """Whether the solver of ``method`` takes the keyword ``option``."""
    return option in getattr(_method_spec(method), "defaults", {})


def _method_for_samples(method: str, samples: int) -> str:
    """Posterior samples need a sampling method: BRGM becomes variational BRGM."""
    if not samples or _accepts(method, "num_samples"):
        return method
    if method == "brgm" and "brgm_variational" in _available_methods():
        return "brgm_variational"
    samplers = [m for m in _available_methods() if _accepts(m, "num_samples")]
    raise MedreconInputError(
        f"samples={samples} asks for posterior samples, but method {method!r} gives a single "
        f"estimate; use method 'brgm' (variational BRGM: {', '.join(samplers)}) or samples=0."
    )


def _choose_method(method: str | None, task: str, prior: Any, samples: int = 0) -> str:
    if method is None:
        meta = _prior_meta(prior)
        per_task = meta.get("default_methods") or {}
        method = (per_task.get(task) if isinstance(per_task, Mapping) else None) or meta.get(
            "default_method"
        ) or DEFAULT_METHOD
    method = str(method).lower()
    methods = _available_methods()
    if method not in methods:
        raise MedreconInputError(
            f"unknown method {method!r}; expected one of {', '.join(methods)}."
        )
    from medrecon.solvers import check_method_task

    check_method_task(method, _SOLVER_TASK.get(task, task))
    return _method_for_samples(method, samples)


def _check_task(task: str) -> str:
    t = str(task).lower()
    if t not in TASKS:
        raise MedreconInputError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}.")
    return t


def check_noise_sigma(noise_sigma: Any) -> float:
    """``noise_sigma`` as a float in ``[0, MAX_NOISE_SIGMA]``."""
    from medrecon.solvers._common import is_real

    if not (is_real(noise_sigma) and math.isfinite(noise_sigma)
            and 0 <= noise_sigma <= MAX_NOISE_SIGMA):
        raise MedreconInputError(
            f"noise_sigma must be a number from 0 to {MAX_NOISE_SIGMA} (generator units: the "
            f"intensity window is [-1, 1]); got {noise_sigma!r}.")
    return float(noise_sigma)


def _check_int(name: str, value: Any, *, minimum: int, limit: int | None = None) -> int:
    """``value`` as an int ``>= minimum`` (and ``< limit`` when given)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum \
            or (limit is not None and value >= limit):
        bound = f">= {minimum}" if limit is None else f"from {minimum} to {limit - 1}"
        raise MedreconInputError(f"{name} must be an integer {bound}; got {value!r}.")
    return int(value)


#: Slices per solver call when ``batch_size`` is not given, by device type. CPU: 16 slices of
#: a 4-run SR ensemble took 12.4 s per slice and 3.9 GB in one call, 7.1 s and 1.8 GB in calls
#: of 4 (bench/results/shared-2core-amd-epyc-16slices*.md); on a GPU bigger batches fill the
#: device.
DEFAULT_BATCH: dict[str, int] = {"cpu": 4, "cuda": 16}
#: CPU slices per call when IAGAN runs once per slice (a thin volume's default, ``ensemble=1``):
#: there the calls of 4 left the two cores underused. 16 Colin27 slices, 40 steps a stage:
#: 14.8 s in calls of 8 against 16.2 s in calls of 4 and 16.0 s in one call (medians of 3,
#: interleaved); a 4-run ensemble stays at 4 (8 slices: 31 / 37 s in calls of 4, 42 / 51 s
#: in one call of 8).
CPU_SINGLE_RUN_BATCH = 8


def runs_per_slice(method: str, task: str, ensemble: int | None) -> int:
    """Solver runs per slice: ``ensemble``, or the method's default for the task (1 for a
    method without an ensemble)."""
    from medrecon.solvers import method_options

    if not _accepts(method, "ensemble"):
        return 1
    if ensemble is not None:
        return int(ensemble)
    return int(method_options(method, _SOLVER_TASK.get(task, task)).get("ensemble") or 1)


def default_batch_size(batch_size: Any, device: Any, *, single_run: bool = False) -> int:
    """``batch_size`` checked, or the default for the device ``device`` resolves to:
    :data:`DEFAULT_BATCH`, or :data:`CPU_SINGLE_RUN_BATCH` on the CPU when ``single_run``
    (IAGAN with one run per slice)."""
    if batch_size is not None:
        return _check_int("batch_size", batch_size, minimum=1)
    from medrecon.solvers import _common as C

    try:
        kind = C.resolve_device(device).type
    except MedreconInputError:  # a bad device is reported by the solver with its own message
        kind = "cpu"
    if kind == "cpu" and single_run:
        return CPU_SINGLE_RUN_BATCH
    return DEFAULT_BATCH.get(kind, DEFAULT_BATCH["cuda"])


def _check_ensemble(ensemble: Any, method: str) -> int | None:
    """``None`` (the solver's default) or a positive integer for a method that ensembles."""
    if ensemble is None:
        return None
    ensemble = _check_int("ensemble", ensemble, minimum=1, limit=MAX_ENSEMBLE + 1)
    if not _accepts(method, "ensemble"):
        ens = [m for m in _available_methods() if _accepts(m, "ensemble")]
        raise MedreconInputError(
            f"ensemble={ensemble} averages independent runs of {', '.join(ens)}; method "
            f"{method!r} has no such option. Drop ensemble or use method {ens[0]!r}.")
    return ensemble


#: Formats whose files carry a voxel-to-world geometry (a PNG's or an array's is a default).
GEOMETRY_FORMATS = ("nifti", "dicom", "mha", "mhd", "nrrd", "nhdr")


def load_mask(mask: Any, image: Any = None) -> Any:
    """A mask path read as an image (the same axis convention as :func:`medrecon.io.load_image`,
    so a mask saved like the image lines up with it); an array or image as it is. When both
    the mask and ``image`` come from files with geometry (:data:`GEOMETRY_FORMATS`), the mask
    must lie on the image's grid: one saved flipped, shifted or at another spacing was applied
    to the wrong voxels without a word."""
    if isinstance(mask, (str, Path)):
        p = Path(mask)
        if not p.exists():
            raise MedreconInputError(f"mask file {str(p)!r} does not exist; pass an existing file.")
        from medrecon.io import load_image

        try:
            mask = load_image(p)
        except MedreconInputError as exc:  # say which file: the scan's and the mask's look alike
            raise MedreconInputError(f"the mask: {exc}") from None
    meta = getattr(mask, "meta", None) or {}
    img_meta = getattr(image, "meta", None) or {}
    if meta.get("format") in GEOMETRY_FORMATS and img_meta.get("format") in GEOMETRY_FORMATS:
        a, b = np.asarray(mask.affine, np.float64), np.asarray(image.affine, np.float64)
        tol = 1e-3 * max(1.0, float(np.abs(b[:3, :3]).max()))
        if a.shape == b.shape and not np.allclose(a, b, atol=tol):
            raise MedreconInputError(
                "the mask's geometry differs from the image's (another orientation, origin or "
                "spacing), so its voxels would mark the wrong places; resample the mask onto "
                "the image's grid (e.g. SimpleITK's Resample with the image as reference, "
                "nearest neighbour).")
    return mask


def _mask_array(mask: Any) -> np.ndarray | None:
    """A user mask (missing pixels nonzero) as a bool array, from an array, image or path."""
    if mask is None:
        return None
    mask = load_mask(mask)
    arr = getattr(mask, "array", mask)
    if isinstance(arr, torch.Tensor):
        arr = arr.detach().cpu().numpy()
    arr = np.asarray(arr)
    if arr.dtype == bool:
        return arr
    if not np.issubdtype(arr.dtype, np.number) or not np.all(np.isfinite(arr)):
        raise MedreconInputError("the mask holds non-numeric or NaN values; expected 0 (observed) / 1 (missing).")
    return arr != 0


#: Tasks whose measurements are images on the scan's own grid (:mod:`medrecon.native`).
NATIVE_TASKS = ("sr", "inpaint", "deblur", "denoise")
#: Below this fraction of the scan's resolution, a generative denoise / deblur is refused: the
#: result would be the prior's coarse image (deblurring back-projection cannot restore what the
#: blur removed, denoising has none). Above it but below 1 the CLI warns.
MIN_COVERAGE = 0.5


#: The generative SR default is used when the prior supplies at least this magnification per
#: input pixel (``effective_factor``); below it the default is Lanczos + back-projection
#: (:data:`SR_FALLBACK`). On validation images degraded at native size the generative default
#: beat Lanczos + BP at x2.84 (brain, 45 -> 180 px: 28.67 / 0.847 vs 27.93 / 0.840) and tied
#: at x2.29 (chest, 56 -> 224 px: 32.52 / 0.906 vs 32.63 / 0.905); docs/results/tuning/
#: *_sr4_native. The rule is on this factor, not on the requested scale: at x2 the prior's grid
#: can hold the whole request and still lose (chest 56 -> 112 px, x2.29: forced IAGAN-BP
#: 37.14 / 0.973 vs 38.35 / 0.975; brain 60 -> 120 px, x2.13: 33.34 / 0.946 vs 35.06 / 0.957;
#: 4 validation images each, every one behind; *_sr2_native). A method chosen by the user is
#: always run.
MIN_SR_PRIOR_FACTOR = 2.5
#: The default SR method where the prior supplies less than :data:`MIN_SR_PRIOR_FACTOR`.
SR_FALLBACK = "lanczos"


def may_fall_back(*, task: str, simulate: bool, method_chosen: bool, samples: int,
                  ensemble: int | None, generative_options: bool = False) -> bool:
    """Whether the SR default may give way to :data:`SR_FALLBACK` (:func:`sr_fallback`): not
    for a method, posterior samples, an ``ensemble`` or other options of the generative
    solver the user asked for (``generative_options``: warm starts, their steps, a coherence
    width, the ensemble's spread), each of which asks for it (they were refused or dropped as
    options Lanczos lacks)."""
    return (task == "sr" and not simulate and not method_chosen and not samples
            and ensemble is None and not generative_options)


def asks_generative(*, key_every: Any = None, warm_steps: Any = None, coherence: Any = None,
                    spread: Any = False) -> bool:
    """Whether these options were given for the generative solver: warm starts
    (``key_every > 1``), ``warm_steps``, a coherence width (a number > 0) or ``spread``."""
    from medrecon.volume import check_coherence

    try:
        width = check_coherence(coherence)
    except MedreconInputError:
        width = None  # refused where the options are checked
    try:
        warm = key_every is not None and int(key_every) > 1
    except (TypeError, ValueError):
        warm = False
    return bool(warm or warm_steps is not None or (isinstance(width, float) and width > 0)
                or spread)


def sr_fallback(method: str, in_hw: tuple[int, int], spacing_hw: Sequence[float], R: int,
                scale: int) -> tuple[str, str] | None:
    """``(method, message)`` replacing a generative SR default the prior cannot support, or None.

    Args:
        method: The default method chosen for the prior.
        in_hw: The input slices' in-plane size.
        spacing_hw: Their pixel spacing.
        R: The prior's resolution.
        scale: The SR factor.
    """
    from medrecon.solvers import METHODS

    if not METHODS[method].generative:
        return None
    out_hw = (in_hw[0] * scale, in_hw[1] * scale)
    fit = GridFit.fit(out_hw, (spacing_hw[0] / scale, spacing_hw[1] / scale), R)
    eff = min(fit.content[0] / in_hw[0], fit.content[1] / in_hw[1])
    if eff >= MIN_SR_PRIOR_FACTOR:
        return None
    return SR_FALLBACK, (
        f"the {R}x{R} prior's grid holds x{eff:.2f} the pixels of these {in_hw[0]}x{in_hw[1]} "
        f"slices per side, below the x{MIN_SR_PRIOR_FACTOR} where it beats Lanczos + "
        f"back-projection on validation images, so the default here is {SR_FALLBACK} + "
        f"back-projection at the scan's resolution. Pass --method {method} to use the prior "
        "anyway.")


def _missing_slices(mask: Any, vol: torch.Tensor, orient: SliceOrientation,
                    task: str) -> torch.Tensor | None:
    """The inpainting mask as display-oriented bool slices ``[N, h, w]`` (True = missing)."""
    missing = _mask_array(mask)
    if missing is None:
        return None
    m = torch.from_numpy(missing)
    if m.ndim == 2 and vol.shape[2] == 1:
        m = m[:, :, None]  # a 2D mask for a 2D image (X, Y, 1)
    if tuple(m.shape) != tuple(vol.shape):
        raise MedreconInputError(
            f"the mask has shape {tuple(missing.shape)} but the image has shape "
            f"{tuple(vol.shape)}; expected the same voxel grid. Resample the mask onto the "
            "image grid (same size and orientation).")
    ms = orient.volume_to_slices(m.float()) > 0  # [N, h, w]
    full = ms.flatten(1).all(dim=1)
    if bool(full.any()):
        k = int(torch.nonzero(full)[0])
        raise MedreconInputError(
            f"the mask marks every pixel of slice {k + 1} of {ms.shape[0]} as missing, so "
            f"nothing is measured there ({int(full.sum())} such slice(s)); inpainting needs "
            "observed pixels. Fix the mask (nonzero = missing, zero = observed).")
    return ms


def _check_prior_coverage(task: str, method: str, eff: tuple[float, float], problem: Any,
                          prior: Any, scale: int, simulate: bool) -> None:
    """Say up front how much of the output resolution the prior supplies.

    SR: warn when the prior adds less than the requested factor (the output grid is filled by
    the prior's image resampled and made consistent with every measured pixel). Other tasks:
    warn when the scan is finer than the prior's grid; refuse a generative denoise / deblur
    below :data:`MIN_COVERAGE` (it would return the prior's coarse image).
    """
    from medrecon.solvers import METHODS

    if not METHODS[method].generative:
        return
    R, _ = _prior_resolution(prior)
    e = min(eff)
    h, w = problem.in_hw
    name = _prior_name(prior)
    if task == "sr":
        if not simulate and e < scale * 0.99:
            warnings.warn(
                f"the prior {name!r} ({R}x{R}) supplies x{e:.2f} of the requested x{scale} for "
                f"these {h}x{w} slices; the {problem.out_hw[0]}x{problem.out_hw[1]} output is its "
                "image resampled there and made consistent with every measured pixel (fitted "
                f"to these slices' field of view, the prior's grid holds x{e:.2f} their pixels "
                f"per side). For the full x{scale}, use a prior of higher resolution.",
                MedreconWarning, stacklevel=2)
        return
    if e >= 0.99:
        return
    if task in ("denoise", "deblur") and e < MIN_COVERAGE:
        alt = "tv" if task == "denoise" else "wiener"
        raise MedreconInputError(
            f"{task} of {h}x{w} slices with the {R}x{R} prior {name!r} would return the prior's "
            f"{R}-pixel image (x{e:.2f} of the scan's resolution): the detail finer than "
            f"{1 / e:.0f} pixels would be lost. Use --method {alt} (it works at the scan's "
            f"resolution), downsample the scan to about {R} pixels, or use a prior of higher "
            "resolution.")
    what = ("measured pixels are kept exactly; the missing ones come from the prior"
            if task == "inpaint" else "the result is made consistent with the scan there")
    warnings.warn(
        f"the prior {name!r} ({R}x{R}) is coarser than these {h}x{w} slices (x{e:.2f}); "
        f"{what}, but it adds no detail finer than {1 / e:.1f} pixels.",
        MedreconWarning, stacklevel=2)


# ---------------------------------------------------------------------------------------------
# Solving batches of generator-space measurements
# ---------------------------------------------------------------------------------------------
def _build_operator(task: str, size: tuple[int, int], channels: int, seed: int, **options: Any):
    from medrecon.physics import build_operator

    opts = {k: v for k, v in options.items() if v is not None}
    return build_operator(task, img_size=size, channels=channels, seed=seed, **opts)


# Pipeline task name -> the solvers' task name (selects their per-task defaults).
_SOLVER_TASK = {"inpaint": "inpainting"}


class _Progress:
    """Turns per-batch solver callbacks into overall ``{"event": "progress", ...}`` events."""

    def __init__(self, callback: ProgressCallback | None, n_slices: int, method: str) -> None:
        self.callback = callback
        self.n = max(1, n_slices)
        self.done = 0
        self.batch = 0
        self.stages: list[str] = []
        self.n_stages = 2 if method == "iagan" else 1
        self.best = 0.0

    def emit(self, fraction: float, message: str, **more: Any) -> None:
        if self.callback is None:
            return
        self.best = max(self.best, min(1.0, fraction))
        self.callback({"event": "progress", "fraction": round(self.best, 4), "message": message, **more})

    def solver_callback(self, chunk: Sequence[int]) -> ProgressCallback | None:
        """The callback of a solver call on the slices ``chunk`` (in any order: warm-start
        rounds and mask groups are not runs of neighbours). Its fraction counts the slices
        done before the call (:attr:`done`) and this call's share of ``len(chunk)``."""
        if self.callback is None:
            return None
        self.stages = []
        base, size = self.done, len(chunk)
        ordered = sorted(int(i) + 1 for i in chunk)
        if size == 1:
            sl = f"slice {ordered[0]}/{self.n}"
        elif ordered == list(range(ordered[0], ordered[-1] + 1)):
            sl = f"slices {ordered[0]}-{ordered[-1]}/{self.n}"
        else:
            shown = ", ".join(map(str, ordered[:4])) + (", ..." if size > 4 else "")
            sl = f"slices {shown}/{self.n}"

        def cb(d: dict) -> None:
            stage = str(d.get("stage", ""))
            if stage not in self.stages:
                self.stages.append(stage)
            k = self.stages.index(stage)
            total = max(1, int(d.get("total_steps") or 1))
            step = int(d.get("step") or 0)
            # an IAGAN ensemble runs its stage-1 searches once per member, one after the other
            member, members = int(d.get("member") or 1), max(1, int(d.get("members") or 1))
            in_stage = (member - 1 + step / total) / members
            within = min(1.0, (k + in_stage) / max(self.n_stages, len(self.stages)))
            frac = (base + within * size) / self.n
            run = f"run {member}/{members}, " if members > 1 else ""
            msg = f"{sl}, {run}{stage + ' ' if stage else ''}step {step}/{total}"
            self.emit(frac, msg, step=step, total_steps=total, stage=stage, loss=d.get("loss"))

        return cb


def _solve_batches(
    y: torch.Tensor,
    operators: Sequence[tuple[Any, Sequence[int]]],
    prior: Any,
    *,
    method: str,
    steps: int | None,
    bp: bool | None,
    samples: int,
    device: str,
    batch_size: int,
    seed: int,
    progress: _Progress,
    task: str | None = None,
    ensemble: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    """Solve slices in batches; ``operators`` pairs an operator with the slice indices it serves.

    Returns images ``[N, C, R, R]``, std ``[N, C, R, R]`` or None, and merged solver info.
    """
    from medrecon.native import solver_kwargs
    from medrecon.solvers import solve

    n = y.shape[0]
    images: list[torch.Tensor | None] = [None] * n
    stds: list[torch.Tensor | None] = [None] * n
    info: dict = {"device": None, "method": method, "solver_seconds": 0.0}
    from medrecon.volume import slice_batches

    for op, idx in operators:
        for chunk in slice_batches(list(idx), batch_size):
            kw = solver_kwargs(method, device=device, seed=seed, slices=chunk, bp=bp,
                               steps=steps, samples=samples, ensemble=ensemble,
                               callback=progress.solver_callback(chunk),
                               task=None if task is None else _SOLVER_TASK.get(task, task))
            rec = solve(y[chunk], op, prior, **kw)
            for j, i in enumerate(chunk):
                images[i] = rec.image[j]
                if samples and rec.std is not None:  # not an IAGAN ensemble's spread
                    stds[i] = rec.std[j]
            if samples and rec.std is not None:  # one operator and options: one kind of map
                info.update({k: rec.info[k] for k in ("std_kind", "std_calibration")
                             if k in rec.info})
            info["device"] = str(rec.device)
            info["method"] = rec.method or method
            info["solver_seconds"] += float(rec.seconds)
            info["solver_info"] = rec.info
            progress.done += len(chunk)
            progress.emit(progress.done / progress.n, f"slice {progress.done}/{progress.n} done")
    img = torch.stack([t for t in images if t is not None])
    std = torch.stack([t for t in stds]) if all(t is not None for t in stds) else None  # type: ignore[misc]
    return img, std, info


# ---------------------------------------------------------------------------------------------
# reconstruct: MedicalImage -> PipelineResult
# ---------------------------------------------------------------------------------------------
def _volume_tensor(image: Any) -> torch.Tensor:
    arr = getattr(image, "array", None)
    if arr is None:
        raise MedreconInputError(
            f"expected a medrecon.io.MedicalImage (with .array and .affine); got {type(image).__name__}."
            " Load files with medrecon.io.load_image."
        )
    arr = np.asarray(arr)
    if np.iscomplexobj(arr):
        raise MedreconInputError(
            "the image is complex-valued; expected real intensities. For k-space use "
            "task='mri' with a .npy/.h5 file (reconstruct_file) or reconstruct_kspace()."
        )
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise MedreconInputError(
            f"the image has shape {arr.shape} ({arr.ndim}D); expected a 2D image or a 3D volume "
            "(X, Y, Z). For 4D series (time, diffusion, channels) extract one volume first, "
            "e.g. `load_image(path, volume=0)` or `--volume 0`."
        )
    if min(arr.shape) < 1:
        raise MedreconInputError(f"the image is empty (shape {arr.shape}); expected at least one voxel.")
    if not np.issubdtype(arr.dtype, np.number) and arr.dtype != bool:
        raise MedreconInputError(f"the image has dtype {arr.dtype}; expected numeric intensities.")
    vol = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if not torch.isfinite(vol).all():
        bad = int((~torch.isfinite(vol)).sum())
        raise MedreconInputError(
            f"the image holds {bad} NaN/Inf voxels out of {vol.numel()}; expected finite "
            "intensities. Repair the file (or mask those voxels and use `inpaint`)."
        )
    return vol


def _spacing(image: Any, affine: np.ndarray) -> tuple[float, float, float]:
    sp = getattr(image, "spacing", None)
    if sp is None:
        sp = np.linalg.norm(affine[:3, :3], axis=0)
    sp = tuple(float(s) for s in np.asarray(sp).ravel()[:3])
    if len(sp) < 3:
        sp = sp + (1.0,) * (3 - len(sp))
    return sp  # type: ignore[return-value]


def _zoom_affine(affine: np.ndarray, zoom: Sequence[float]) -> np.ndarray:
    try:
        from medrecon.io import resample_affine_for_zoom
    except ImportError:  # pragma: no cover - io always provides it
        resample_affine_for_zoom = None
    if resample_affine_for_zoom is not None:
        return np.asarray(resample_affine_for_zoom(affine, tuple(float(z) for z in zoom)), dtype=np.float64)
    a = np.asarray(affine, dtype=np.float64).copy()
    z = np.asarray(zoom, dtype=np.float64)
    out = a.copy()
    out[:3, :3] = a[:3, :3] / z[None, :]
    # keep the FOV edges: new voxel 0 centre sits at old index -1/2 + 1/(2 zoom)
    out[:3, 3] = a[:3, :3] @ (-0.5 + 0.5 / z) + a[:3, 3]
    return out


def _slice_axis(affine: np.ndarray, plane: str) -> int | None:
    try:
        from medrecon.io import slice_axis_for_plane
    except ImportError:  # pragma: no cover
        return None
    return int(slice_axis_for_plane(affine, plane))


#: Smallest slice side medrecon reconstructs (pixels).
MIN_SLICE_SIDE = 4
#: A plane of a 3D volume whose slices are narrower than this is refused when another plane
#: gives wider slices (e.g. axial cuts of a thin coronal slab).
THIN_SLICE_SIDE = 8


#: How much the spacing of one axis must differ (as a fraction of the other two's common
#: spacing) to make it the sliced axis of :func:`acquisition_axis`: more than a rectangular
#: in-plane pixel (up to about 20 %), less than an SR factor.
ODD_SPACING = 0.25


def acquisition_axis(shape: Sequence[int], spacing: Sequence[float], *,
                     dicom_series: bool = False) -> int | None:
    """The array axis across the acquired slices of a 3D volume, or ``None`` when no plane
    stands out.

    A DICOM series is stacked along axis 2 (one acquired slice per file or frame). Otherwise
    acquired pixels are square: when two axes share a spacing (within 1 %) and the third's
    differs from it by more than :data:`ODD_SPACING`, the third is the sliced axis, whether
    its slices are thick (a clinical stack) or thin (coarse pixels, as a simulated
    low-resolution scan, ``SimulateDegradation``, has them). Else the acquired plane holds
    the two axes with the largest matrix: the sliced axis is the one with the fewest voxels,
    ties broken by the coarsest spacing; an isotropic cube (equal matrix and spacing within
    1 %) has no acquired plane.
    """
    shape = [int(v) for v in shape]
    if dicom_series and shape[2] > 1:
        return 2
    sp = [float(v) for v in spacing]
    for a in range(3):
        b, c = (x for x in range(3) if x != a)
        pair = (sp[b] + sp[c]) / 2
        if abs(sp[b] - sp[c]) <= 0.01 * pair and abs(sp[a] - pair) > ODD_SPACING * pair:
            return a
    smallest = min(shape)
    cand = [a for a in range(3) if shape[a] == smallest]
    if len(cand) == 1:
        return cand[0]
    coarse = max(float(spacing[a]) for a in cand)
    thick = [a for a in cand if float(spacing[a]) >= coarse * 0.99]
    return thick[0] if len(thick) == 1 else None


def _slice_orientation(image: Any, vol: torch.Tensor, affine: np.ndarray,
                       spacing: Sequence[float], plane: str | None,
                       prior: Any) -> tuple[SliceOrientation, str]:
    """How to cut ``vol`` into 2D slices, and why (``'--plane'``, ``'acquisition'``,
    ``'prior'``, ``'default'`` or ``'2D image'``).

    Order: the requested plane; for a 2D image its stored layout; the acquired plane of a 3D
    volume (:func:`acquisition_axis`); the prior's ``default_plane``; axial. Slices narrower
    than :data:`THIN_SLICE_SIDE` are refused when another plane is wider (naming it), and any
    slice under :data:`MIN_SLICE_SIDE` pixels is refused.
    """
    shape = tuple(int(v) for v in vol.shape)
    singleton = any(v == 1 for v in shape)
    source = "--plane"
    axis = None
    if plane is None and singleton:
        orient = SliceOrientation.from_affine(affine, shape)
        source = "2D image"
    else:
        if plane is None:
            meta = getattr(image, "meta", None) or {}
            axis = acquisition_axis(shape, spacing, dicom_series=meta.get("format") == "dicom")
            if axis is not None:
                source = "acquisition"
            else:
                pmeta = _prior_meta(prior)
                meta_plane = pmeta.get("default_plane", pmeta.get("plane"))
                plane, source = (meta_plane, "prior") if meta_plane in PLANES else ("axial", "default")
        if axis is None:
            axis = _slice_axis(affine, plane)
        orient = SliceOrientation.from_affine(affine, shape, plane=plane if source != "acquisition" else None,
                                              axis=axis)
    def inplane(ax: int) -> tuple[int, int]:
        return tuple(shape[b] for b in range(3) if b != ax)  # type: ignore[return-value]

    side = min(inplane(orient.axis))
    best_axis = max(range(3), key=lambda a: (min(inplane(a)), -a))
    best_side = min(inplane(best_axis))
    if best_side < MIN_SLICE_SIDE:
        raise MedreconInputError(
            f"the image is {'x'.join(map(str, shape))} voxels: too small to reconstruct (slices "
            f"need at least {MIN_SLICE_SIDE} x {MIN_SLICE_SIDE} pixels). Check that this is the "
            "intended file.")
    if side < MIN_SLICE_SIDE or (side < THIN_SLICE_SIDE and best_side > side):
        rows, cols = inplane(orient.axis)
        if singleton:
            fix = "omit --plane (plane=None) to keep the 2D image's own layout"
        else:
            good = plane_name_of_axis(affine, best_axis)
            fix = (f"use --plane {good} (plane={good!r}: {shape[best_axis]} slice(s) of "
                   f"{'x'.join(map(str, inplane(best_axis)))} pixels)")
        raise MedreconInputError(
            f"slicing the {'x'.join(map(str, shape))} volume in the {orient.plane} plane gives "
            f"{shape[orient.axis]} slice(s) of only {rows}x{cols} pixels; {fix}.")
    return orient, source


def plane_name_of_axis(affine: np.ndarray, axis: int) -> str:
    """The anatomical plane obtained by slicing along ``axis`` (``medrecon.io.plane_of_axis``)."""
    from medrecon.io import plane_of_axis

    return plane_of_axis(affine, axis)


def _solve_native_task(task: str, x: torch.Tensor, prior: Any, *, sp_hw: Sequence[float],
                       simulate: bool, noise_sigma: float, scale: int, sr_kernel: str,
                       missing: torch.Tensor | None, **solve_kw: Any) -> tuple:
    """SR, inpainting, deblurring, denoising: the measurements on the slices' own grid and the
    prior's grid inside the forward model (:mod:`medrecon.native`)."""
    from medrecon.native import build_native_problem, solve_native_problem

    R, _ = _prior_resolution(prior)
    n, _, h, w = x.shape
    method, progress, seed = solve_kw["method"], solve_kw["progress"], solve_kw["seed"]
    problem = build_native_problem(
        task, x, prior_resolution=R, spacing_hw=sp_hw, simulate=simulate, seed=seed,
        noise_sigma=noise_sigma, scale=scale, sr_kernel=sr_kernel, missing=missing)
    eff = problem.effective_factor
    _check_prior_coverage(task, method, eff, problem, prior, scale if task == "sr" else 1,
                          simulate)
    progress.emit(0.0, f"{n} slice(s) {h}x{w} -> {problem.out_hw[0]}x{problem.out_hw[1]} "
                  f"(prior {R}x{R}), method {method}")
    img, std, sinfo = solve_native_problem(problem, prior, solver_task=_SOLVER_TASK.get(task, task),
                                           **solve_kw)
    return img, std, sinfo, problem.out_hw, {"grid": problem.info["grid"], "effective_factor": eff}


def _solve_simulated_kspace(x: torch.Tensor, window: IntensityWindow, prior: Any, *,
                            acceleration: float, center_fraction: float, mask_type: str,
                            noise_sigma: float, **solve_kw: Any) -> tuple:
    """``mri --simulate``: the slices' own k-space, undersampled at their size (seeded), solved
    like measured k-space (:func:`_solve_kspace`)."""
    from medrecon.physics import fft2c

    R, _ = _prior_resolution(prior)
    n, _, h, w = x.shape
    seed = solve_kw["seed"]
    gen = torch.Generator().manual_seed(seed)
    native = _build_operator("mri", (h, w), 1, seed, acceleration=acceleration,
                             center_fraction=center_fraction, mask_type=mask_type,
                             noise_sigma=float(noise_sigma) if noise_sigma else None)
    m = (native.mask.reshape(-1, h, w)[0] > 0).expand(n, h, w).contiguous()
    v = window.invert(x[:, 0].double()).float()  # intensities
    clean = fft2c(v.to(torch.complex64)) * m
    k = clean
    if noise_sigma:  # the noise is in generator units: scale it to intensities
        k = clean + (native.measure(v[:, None], generator=gen)[:, 0] - clean) / window.scale
    solve_kw["progress"].emit(0.0, f"{n} slice(s) {h}x{w} (k-space), method {solve_kw['method']}")
    img, std, sinfo = _solve_kspace(k * m, m, window, prior, noise_sigma=noise_sigma, **solve_kw)
    return img, std, sinfo, (h, w), {"effective_factor": (min(R, h) / h, min(R, w) / w),
                                     "sampling_fraction": float(m.float().mean())}


def _solve_cs(x: torch.Tensor, prior: Any, *, sp_hw: Sequence[float], noise_sigma: float,
              **solve_kw: Any) -> tuple:
    """``cs``: a research benchmark of random projections of the slice fitted to the prior's
    grid (simulated only; no scan is acquired this way)."""
    R, C = _prior_resolution(prior)
    n, _, h, w = x.shape
    fit = GridFit.fit((h, w), sp_hw, R)
    x_grid = fit.to_grid(x, pad_value=-1.0)
    op = _build_operator("cs", (R, R), C, solve_kw["seed"],
                         noise_sigma=float(noise_sigma) if noise_sigma else None)
    y = op.measure(x_grid, generator=torch.Generator().manual_seed(solve_kw["seed"]))
    solve_kw["progress"].emit(0.0, f"{n} slice(s) {h}x{w} -> {R}x{R}, method {solve_kw['method']}")
    img_r, std_r, sinfo = _solve_batches(y, [(op, list(range(n)))], prior, task="cs", **solve_kw)
    img = fit.from_grid(img_r.float(), shape=(h, w))
    std = None if std_r is None else fit.from_grid(std_r.float(), shape=(h, w),
                                                   mode="bilinear").clamp_min(0)
    return img, std, sinfo, (h, w), {"grid": {"size": fit.size, "content": fit.content,
                                              "offset": fit.offset}}


def reconstruct(
    image: Any,
    *,
    affine: Any = None,
    task: str,
    prior: Any,
    method: str | None = None,
    steps: int | None = None,
    bp: bool | None = None,
    plane: str | None = None,
    scale: int = 4,
    sr_kernel: str = "bicubic",
    mask: Any = None,
    acceleration: int = 4,
    center_fraction: float = 0.08,
    mask_type: str = "random",
    noise_sigma: float = 0.0,
    samples: int = 0,
    ensemble: int | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    seed: int = 0,
    simulate: bool = False,
    callback: ProgressCallback | None = None,
    percentiles: tuple[float, float] = (0.5, 99.5),
    key_every: int | None = None,
    warm_steps: int | None = None,
    coherence: float | str | None = None,
    spread: bool = False,
) -> PipelineResult:
    """Reconstruct a scan with a StyleGAN2 prior (or a classical baseline).

    Args:
        image: The input: a :class:`medrecon.io.MedicalImage` (array ``(X, Y, Z)``, RAS
            affine), a channel-first :class:`monai.data.MetaTensor` ``(1, X, Y[, Z])`` (as
            from ``LoadImage(image_only=True, ensure_channel_first=True)``), or an array
            ``(X, Y[, Z])`` with ``affine``. The result comes back as the same kind (a
            MetaTensor with its affine and ``pixdim`` updated, ``spatial_shape`` the source
            file's as after ``Spacingd``, and the reconstruction recorded in
            ``applied_operations``). For ``sr`` it IS the low-resolution scan; for ``inpaint`` the scan with missing
            pixels (marked by ``mask``); for ``deblur``/``denoise`` the degraded scan. With
            ``simulate=True`` it is a clean scan that is degraded retrospectively first.
        affine: The 4x4 voxel-to-RAS affine of an array input (default identity).
        task: ``"sr"``, ``"inpaint"``, ``"mri"``, ``"deblur"``, ``"denoise"`` or ``"cs"``
            (``mri`` on an image and ``cs`` always simulate; k-space goes through
            :func:`reconstruct_kspace`).
        prior: Prior name (``"chest_xray"``, ``"brain_mri"``), prior directory, or Prior object.
        method: ``"iagan"``, ``"brgm"``, ``"csgm"`` or a baseline (``medrecon.solvers.METHODS``).
            Default: the prior's ``default_methods[task]`` / ``default_method`` metadata, else
            ``"iagan"``.
        steps: Optimisation steps (None: the solver's default for the method); for IAGAN the
            steps of each of its two stages.
        bp: Back-projection onto the measurements (None: the solver's default, which projects
            when the noise is low; ``denoise`` defaults to False since projecting onto the noisy
            image would return it unchanged).
        plane: ``"axial"``, ``"coronal"`` or ``"sagittal"``. Default: for 3D volumes the
            acquired plane (:func:`acquisition_axis`: the slices a scan was acquired in),
            else the prior's ``plane`` metadata (``default_plane``), else axial; 2D images (one
            singleton axis) keep their stored layout.
        scale: Super-resolution factor (``sr``): the output grid has ``scale`` times the
            input's pixels along each in-plane axis. Default 4.
        sr_kernel: Anti-aliasing kernel of the SR forward model: ``"bicubic"`` (default, the
            papers' setting), ``"box"`` (pixel averaging, e.g. binned acquisitions) or
            ``"gaussian"``.
        mask: Inpainting mask, nonzero = missing pixel: array, MedicalImage or path, shaped like
            the volume (or like one slice for 2D images). Simulated ``inpaint`` without a mask
            lets the operator draw one from ``seed``.
        acceleration: MRI undersampling factor (simulated ``mri``). Default 4.
        center_fraction: Fully sampled fraction of central k-space lines. Default 0.08.
        mask_type: MRI sampling pattern (``"random"`` or ``"equispaced"``). Default ``"random"``.
        noise_sigma: Measurement noise std in generator units ([-1, 1] range); used by the solver
            (regularised back-projection) and, when simulating, to add noise. Default 0.
        samples: Posterior samples per slice (variational BRGM); > 0 adds a std map. Default 0.
        ensemble: IAGAN only: independent runs per slice whose images are averaged (see
            :func:`medrecon.solvers.iagan`); ``1`` is one run (fastest). Default ``None``: the
            solver's per-task default (``medrecon.solvers.DEFAULTS``), except for an SR volume
            of at least 3 slices whose coherence width spans 2 slices or more (the automatic
            width: slices at most two output pixels apart), with about 4 guesses in reach of
            each slice (:data:`medrecon.volume.VOLUME_MIN_SUPPORT`) and no ``spread`` asked for:
            :data:`medrecon.volume.VOLUME_ENSEMBLE` (1) run per slice, its neighbours made
            coherent by ``coherence`` standing in for the ensemble and its stage 1 coupled to
            theirs in slabs of :data:`medrecon.volume.SLAB` (:mod:`medrecon.volume`).
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:N]"``. Default ``"auto"``.
        batch_size: Slices solved together. Default ``None``: :data:`DEFAULT_BATCH` of the
            device (16 on CUDA, 4 on the CPU, where bigger batches of IAGAN's per-slice networks
            are slower per slice and use more memory), and on the CPU
            :data:`CPU_SINGLE_RUN_BATCH` (8) when IAGAN runs once per slice; the SR volume
            default's coupled calls hold whole slabs (at least :data:`medrecon.volume.SLAB`).
        seed: Seed of every random choice (operator pattern, simulated noise, solver probes).
            Slice ``i`` of a generative method draws its probes from its own seed,
            :func:`medrecon.solvers._common.slice_seed` ``(seed, i)`` (``seed`` itself for a
            lone image), so neighbouring slices start apart, and the solvers treat the slices
            of a batch as independent problems, so a slice's result does not depend on
            ``batch_size``: on the CPU every ``batch_size`` of 2 or more gives the same values
            (to the last bits of the final resampling), while ``batch_size=1`` runs
            single-sample kernels whose other rounding the optimisation amplifies into another
            result of the same quality (:mod:`medrecon.volume`; the SR volume default takes
            whole slabs whatever the ``batch_size``). With warm starts a slice depends on the
            slices of its segment (``key_every``), in the SR volume default on those of its
            slab, which ``batch_size`` does not change. Default 0.
        simulate: Treat ``image`` as the ground truth and measure it with the operator (seeded).
        callback: Called with ``{"event": "progress", "fraction", "message", ...}`` dicts.
        percentiles: Intensity percentiles mapped to ``-1``/``+1``. Default ``(0.5, 99.5)``.
        key_every: Volumes (``sr``, ``inpaint``, ``deblur``, ``denoise`` with IAGAN): the
            slices are cut into segments of ``key_every`` along the slice axis; each
            segment's middle slice is solved in full and the others are warm-started from
            their solved neighbour (:mod:`medrecon.volume`). ``1`` solves every slice from
            scratch. Default ``None``: :data:`medrecon.volume.DEFAULT_KEY_EVERY` (1: warm
            starts are opt-in; ``3`` is the measured useful segment length).
        warm_steps: Steps of a warm-started slice. Default ``None``:
            :func:`medrecon.volume.warm_steps_for` (a quarter of the cold steps).
        coherence: Volumes (``sr``, ``inpaint``, ``deblur``, generative methods): the width
            in mm across slices over which the part of each slice its measurements do not
            determine is averaged, neighbours weighted by how alike their measured content
            is, leaving the measured part as it is (:func:`medrecon.volume.cohere_slices`).
            ``0`` turns it off. Default ``None`` (``"auto"``): for ``sr``
            :data:`medrecon.volume.AUTO_PIXELS` (4) output in-plane pixels, so thick slices
            (spacing of several output pixels) are averaged little; off for the other tasks.
        spread: IAGAN ensembles (``sr``, ``inpaint``, ``deblur``, ``denoise``): return the
            members' per-pixel spread after back-projection as ``std`` (zero where a pixel is
            measured exactly), calibrated when the prior ships a calibration for the regime
            (see :class:`PipelineResult`). Default False.

    Returns:
        :class:`PipelineResult` with the reconstruction (and std map) in the input's field of
        view, as the input's kind.

    Raises:
        MedreconInputError: bad image (4D, NaN, empty) or input kind, unknown
            task/method/plane, mask shape mismatch, a generative denoise/deblur of a scan far
            finer than the prior.
    """
    from medrecon.monai.convert import to_medical_image
    from medrecon.steps import ReconstructionSettings, build_steps, run_steps

    image, back = to_medical_image(image, affine=affine)
    t0 = time.perf_counter()
    settings = ReconstructionSettings.check(
        task=task, prior=prior, method=method, steps=steps, bp=bp, plane=plane, scale=scale,
        sr_kernel=sr_kernel, acceleration=acceleration, center_fraction=center_fraction,
        mask_type=mask_type, noise_sigma=noise_sigma, samples=samples, ensemble=ensemble,
        device=device, batch_size=batch_size, seed=seed, simulate=simulate,
        percentiles=percentiles, key_every=key_every, warm_steps=warm_steps, coherence=coherence,
        spread=spread, has_mask=mask is not None)
    d = run_steps(build_steps(settings, callback), {"image": image, "mask": mask, "t0": t0})
    info = d["info"]
    std = d["std_image"]
    return PipelineResult(back(d["out_image"], info),
                          None if std is None else back(std, {**info, "method": f"{info.get('method')} std"}),
                          info)



def check_reconstruction(image: Any, *, task: str, prior: Any, mask: Any = None,
                         affine: Any = None, **options: Any) -> tuple[int, int, int]:
    """Check that :func:`reconstruct` would take ``image`` with these options, without solving:
    the options, then the steps before the solve (the image, its slices and the result's size,
    the mask on its grid, the method for this scan). A fraction of a second; what a run of
    many scans does to each before solving the first (a bad later one stopped a bundle run
    after earlier results were written).

    Returns:
        The shape ``(X, Y, Z)`` the result will have (``reconstruct(...).image.shape``): the
        image's, its in-plane axes times ``scale`` for SR of a measured (not simulated) scan.

    Raises:
        MedreconInputError: as :func:`reconstruct` would, before its solve.
    """
    from medrecon.monai.convert import to_medical_image
    from medrecon.steps import ReconstructionSettings, build_steps, run_steps

    image, _ = to_medical_image(image, affine=affine)
    settings = ReconstructionSettings.check(task=task, prior=prior, has_mask=mask is not None,
                                            **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the solve's own run says them
        d = run_steps(build_steps(settings, checks_only=True),
                      {"image": image, "mask": mask, "t0": time.perf_counter()})
    k = settings.scale if settings.task == "sr" and not settings.simulate else 1
    return tuple(int(n) if ax == d["orient"].axis else int(n) * k
                 for ax, n in enumerate(d["volume"].shape))


# ---------------------------------------------------------------------------------------------
# k-space (fastMRI single-coil layout)
# ---------------------------------------------------------------------------------------------
def load_kspace(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Read complex k-space ``[N, H, W]`` (and the sampling mask, if stored) from .npy / .h5.

    ``.h5`` follows the fastMRI single-coil layout: dataset ``kspace`` (complex, ``[slices, H,
    W]``) and optional ``mask`` (``[W]`` sampled columns). ``.npy`` holds complex k-space
    ``[H, W]`` or ``[N, H, W]``, or real ``[..., 2]`` (real, imaginary). Without a stored mask
    the sampled positions are the nonzero k-space samples.

    Raises:
        MedreconInputError: unreadable file, missing ``kspace`` dataset, wrong dimensionality.
    """
    from medrecon.io._paths import check_claimed_size, check_input_file, check_numpy_file

    p = check_input_file(path)
    mask = None
    if p.suffix.lower() not in (".h5", ".hdf5"):
        check_numpy_file(p)
    try:
        if p.suffix.lower() in (".h5", ".hdf5"):
            import h5py

            with h5py.File(p, "r") as f:
                if "kspace" not in f:
                    raise MedreconInputError(
                        f"{p.name} has no 'kspace' dataset (found {sorted(f.keys())}); expected "
                        "the fastMRI single-coil layout."
                    )
                ds = f["kspace"]
                check_claimed_size(p, shape=tuple(ds.shape), itemsize=ds.dtype.itemsize,
                                   compressed=ds.compression is not None)
                k = np.asarray(ds[()])
                if "mask" in f:  # bounded by the k-space before it is read
                    m = f["mask"]
                    if int(np.prod(m.shape)) > int(np.prod(ds.shape)):
                        raise MedreconInputError(
                            f"{p.name}: its sampling mask of shape {tuple(m.shape)} is larger "
                            f"than its k-space {tuple(ds.shape)}; expected [W] (sampled "
                            "columns), [H, W] or the k-space's shape. Repair or drop the "
                            "'mask' dataset.")
                    mask = _sampling_mask(np.asarray(m[()]), p)
        else:
            k = np.load(p, allow_pickle=False)
    except MedreconInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad input file
        raise MedreconInputError(f"cannot read k-space from {str(p)!r}: {exc}. Expected .npy or fastMRI .h5.") from exc
    if not np.iscomplexobj(k):
        if k.ndim >= 3 and k.shape[-1] == 2:
            k = k[..., 0] + 1j * k[..., 1]
        else:
            raise MedreconInputError(
                f"{p.name} holds real data of shape {k.shape}; expected complex k-space (or a "
                "trailing axis of 2 = real, imaginary). For an image to undersample, use --simulate."
            )
    if k.ndim == 2:
        k = k[None]
    if k.ndim != 3:
        raise MedreconInputError(
            f"k-space has shape {k.shape}; expected [H, W] or [slices, H, W] single-coil data "
            "(multi-coil data must be coil-combined first)."
        )
    if not np.all(np.isfinite(k)):
        raise MedreconInputError(f"k-space in {p.name} holds NaN/Inf values; expected finite samples.")
    if min(k.shape[1:]) < MIN_SLICE_SIDE:
        raise MedreconInputError(
            f"k-space in {p.name} is {'x'.join(map(str, k.shape[1:]))} per slice: too small to "
            f"reconstruct (slices need at least {MIN_SLICE_SIDE} x {MIN_SLICE_SIDE} samples). "
            "Check that this is the intended file.")
    return k.astype(np.complex64), mask


def _sampling_mask(mask: np.ndarray, path: Path) -> np.ndarray:
    """A stored sampling mask as bool: its values must be 0 / 1 (or bool); a mask of 0.2 / 0.7
    became all sampled, NaN too."""
    if mask.dtype != bool:
        if not np.issubdtype(mask.dtype, np.number) or not np.all(np.isin(mask, (0, 1))):
            raise MedreconInputError(
                f"the sampling mask in {path.name} holds values other than 0 and 1 (e.g. "
                f"{np.unique(mask)[:4].tolist()}); expected 1 for sampled columns, 0 for the "
                "others.")
    return mask.astype(bool)


def _fourier_resize(k: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Centred crop / zero-pad of centred k-space ``[..., H, W]`` to ``size`` (same FOV), with
    the orthonormal-FFT rescaling that keeps image intensities."""
    H, W = k.shape[-2:]
    h, w = size
    out = torch.zeros(*k.shape[:-2], h, w, dtype=k.dtype)
    # DC sits at index n // 2 (centred FFT); align the two DCs and copy the overlap.
    src, dst = [], []
    for n_in, n_out in ((H, h), (W, w)):
        c = min(n_in, n_out)
        s0, d0 = n_in // 2 - c // 2, n_out // 2 - c // 2
        src.append(slice(s0, s0 + c))
        dst.append(slice(d0, d0 + c))
    out[..., dst[0], dst[1]] = k[..., src[0], src[1]]
    return out * math.sqrt((h * w) / (H * W))


def _solve_kspace(
    k: torch.Tensor,
    m: torch.Tensor,
    window: IntensityWindow,
    prior: Any,
    *,
    method: str,
    steps: int | None,
    bp: bool | None,
    noise_sigma: float,
    samples: int,
    ensemble: int | None,
    device: str,
    batch_size: int,
    seed: int,
    progress: _Progress,
) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    """Reconstruct measured k-space ``k [N, H, W]`` (samples where ``m``) in generator units.

    The generator's ``R x R`` image is compared with the samples through the exact Fourier
    resize (centred crop / zero-fill of k-space, orthonormal scaling: the same field of view),
    so no measured sample is interpolated; samples outside the prior's band only add a
    constant to the data term. The result is Fourier-resized to ``H x W`` and, like every
    task, made consistent with all the samples there by back-projection with the ``H x W``
    operator. Baselines (zero-filled, TV) run on the ``H x W`` grid directly.

    Returns:
        Images ``[N, 1, H, W]`` and std ``[N, 1, H, W]`` (or None) in generator units, solver info.
    """
    from medrecon.native import solver_kwargs
    from medrecon.physics import fft2c, ifft2c
    from medrecon.solvers import METHODS, auto_eta, back_project, solve, will_back_project
    from medrecon.solvers.backprojection import sample_spread
    from medrecon.solvers.calibration import StdMaps

    n, H, W = k.shape
    R, C = _prior_resolution(prior)
    generative = METHODS[method].generative
    a, b = window.scale, -1.0 - window.low * window.scale
    # generator units: g = a v + b  =>  F(g) = a F(v) + b F(1), F(1) a DC spike
    y_native = (a * k + b * fft2c(torch.ones(1, H, W, dtype=torch.complex64))) * m
    mr = _fourier_resize(m.to(torch.complex64), (R, R)).abs() > 0
    y_grid = _fourier_resize(y_native, (R, R)) * mr
    noise = float(noise_sigma) if noise_sigma else None
    keyed: dict[bytes, list[int]] = {}
    for i in range(n):
        keyed.setdefault(m[i].numpy().tobytes(), []).append(i)

    def back(t: torch.Tensor) -> torch.Tensor:  # [B, C, R, R] generator -> [B, 1, H, W]
        kk = _fourier_resize(fft2c(t.float().mean(1).to(torch.complex64)), (H, W))
        return ifft2c(kk).real[:, None]

    images: list[torch.Tensor | None] = [None] * n
    from medrecon.volume import slice_batches

    maps = StdMaps(n)  # posterior-sample spreads, calibrated all or none
    info: dict = {"device": None, "method": method, "solver_seconds": 0.0}
    for idx in keyed.values():
        native = _build_operator("mri", (H, W), 1, seed, mask=m[idx[0]], noise_sigma=noise)
        grid_op = _build_operator("mri", (R, R), C, seed, mask=mr[idx[0]], noise_sigma=noise)
        do_bp = generative and will_back_project(method, bp=bp, noise_sigma=noise)
        for chunk in slice_batches(list(idx), batch_size):
            kw = solver_kwargs(method, device=device, seed=seed, slices=chunk, task="mri",
                               steps=steps, bp=False if generative else bp, samples=samples,
                               ensemble=ensemble,
                               callback=progress.solver_callback(chunk))
            yn = y_native[chunk][:, None]
            if generative:
                yg = y_grid[chunk][:, None].expand(-1, C, -1, -1).contiguous()
                rec = solve(yg, grid_op, prior, **kw)
                img = back(rec.image)
                label = rec.method or method
                if do_bp:
                    img = back_project(img, yn, native, eta=auto_eta(noise or 0.0))
                    label += "+bp"
            else:
                rec = solve(yn, native, None, **kw)
                img, label = rec.image.float(), rec.method or method
            if samples and rec.samples is not None:
                std = sample_spread(rec.samples, native if do_bp else None,
                                    eta=auto_eta(noise or 0.0), resample=back)[1]
                # calibrations are fitted on the prior's grid: off it the spread stays raw
                on_grid = (H, W) == (R, R) and "std_regime" in rec.info
                maps.put(chunk, std, prior, rec.info["std_regime"] if on_grid else None,
                         bp=do_bp)
            for j, i in enumerate(chunk):
                images[i] = img[j]
            info.update(device=str(rec.device), method=label, solver_info=rec.info)
            info["solver_seconds"] += float(rec.seconds)
            progress.done += len(chunk)
            progress.emit(progress.done / progress.n, f"slice {progress.done}/{progress.n} done")
    img_all = torch.stack([t for t in images if t is not None])
    std_all, how = maps.result()
    info.update(how)
    return img_all, std_all, info


def reconstruct_kspace(
    kspace: np.ndarray | torch.Tensor,
    *,
    prior: Any,
    sampled: np.ndarray | None = None,
    method: str | None = None,
    steps: int | None = None,
    bp: bool | None = None,
    noise_sigma: float = 0.0,
    samples: int = 0,
    ensemble: int | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    seed: int = 0,
    callback: ProgressCallback | None = None,
    spacing: tuple[float, float] = (1.0, 1.0),
) -> PipelineResult:
    """Reconstruct measured single-coil k-space ``[N, H, W]`` (centred, orthonormal FFT).

    The prior's ``R x R`` image is compared with the samples through the exact Fourier resize
    (centred crop / zero-fill, the same field of view), and the result, Fourier-resized to
    ``H x W``, is made consistent with every measured sample on that grid (see
    :func:`_solve_kspace`). Non-square k-space is therefore stretched to a square prior grid
    (documented in ``docs/pipeline.md``). The generator is real-valued, so the reconstruction
    is the real image whose spectrum best matches the samples (magnitude data with smooth
    phase).

    Args:
        kspace: Complex k-space ``[N, H, W]`` or ``[H, W]``, unsampled entries zero.
        prior: Prior name, directory or object.
        sampled: Bool sampling mask broadcastable to ``[N, H, W]`` (e.g. fastMRI ``[W]``
            columns); default: the nonzero entries of each slice of ``kspace`` (its own).
        method, steps, bp, noise_sigma, samples, ensemble, device, batch_size, seed, callback:
            as in :func:`reconstruct`.
        spacing: In-plane pixel size of the image grid in mm (default 1, 1).

    Returns:
        :class:`PipelineResult`; ``image`` is a MedicalImage ``(W, H, N)`` (display rows along Y)
        with a diagonal LPS-display affine of ``spacing``.
    """
    from medrecon.io import MedicalImage
    from medrecon.physics import ifft2c

    t0 = time.perf_counter()
    k = torch.as_tensor(np.asarray(kspace)).to(torch.complex64)
    if k.ndim == 2:
        k = k[None]
    if k.ndim != 3:
        raise MedreconInputError(f"k-space has shape {tuple(k.shape)}; expected [N, H, W] or [H, W].")
    bad = int((~torch.isfinite(k)).sum())
    if bad:  # named here: after the FFT one NaN sample spreads over the whole image
        raise MedreconInputError(f"the k-space holds {bad} NaN/Inf sample(s); expected finite "
                                 "measurements.")
    n, H, W = k.shape
    if min(H, W) < MIN_SLICE_SIDE:
        raise MedreconInputError(f"k-space of {H}x{W} per slice is too small to reconstruct "
                                 f"(at least {MIN_SLICE_SIDE}x{MIN_SLICE_SIDE}).")
    if sampled is None:  # each slice's own samples (a slice's result needs no other slice)
        m = k.abs() > 0
        empty = [i for i in range(n) if not bool(m[i].any())]
        if empty and len(empty) < n:  # none at all: said below
            raise MedreconInputError(
                f"slice(s) {', '.join(str(i + 1) for i in empty[:5])} of the k-space hold no "
                "sample (all zero); drop them, or store the sampling mask (a fastMRI .h5 'mask' "
                "dataset; sampled= in Python) so that their zeros are measured zeros.")
    else:
        raw = np.asarray(sampled)
        if raw.dtype != bool and (raw.dtype.kind not in "biuf" or not np.isin(raw, (0, 1)).all()):
            raise MedreconInputError(  # 0.5 or NaN became 'sampled'
                f"the sampling mask holds values other than 0 and 1 (dtype {raw.dtype}); expected "
                "a boolean mask (True = sampled).")
        sm = torch.as_tensor(raw).bool()
        if sm.ndim == 1:  # fastMRI: one flag per phase-encoding column
            sm = sm.view(1, 1, -1)
        try:
            m = torch.broadcast_to(sm, k.shape)
        except RuntimeError as exc:
            raise MedreconInputError(
                f"sampling mask of shape {tuple(sm.shape)} does not match k-space {tuple(k.shape)}."
            ) from exc
    if not bool(m.any()):
        raise MedreconInputError("the k-space holds no sampled (nonzero) entries; expected measured data.")
    m = m.contiguous()
    prior = _resolve_prior(prior)
    R, _ = _prior_resolution(prior)
    method = _choose_method(method, "mri", prior, samples)
    batch_size = default_batch_size(batch_size, device)
    samples = _check_int("samples", samples, minimum=0)
    seed = _check_int("seed", seed, minimum=0)
    ensemble = _check_ensemble(ensemble, method)

    # window on the zero-filled image of the prior's grid (what the generator will match)
    window = IntensityWindow.fit(ifft2c(_fourier_resize(k * m, (R, R))).real)
    progress = _Progress(callback, n, method)
    img_g, std_g, sinfo = _solve_kspace(
        k * m, m, window, prior, method=method, steps=steps, bp=bp, noise_sigma=noise_sigma,
        samples=samples, ensemble=ensemble, device=device, batch_size=batch_size, seed=seed,
        progress=progress)
    rec = window.invert(img_g[:, 0])
    affine = np.diag([-spacing[1], -spacing[0], 1.0, 1.0])
    vol = rec.permute(2, 1, 0).contiguous().numpy().astype(np.float32)  # (W=X, H=Y, N=Z)
    out = MedicalImage(vol, affine)
    std_image = None
    if std_g is not None:
        s = window.invert_scale(std_g[:, 0].clamp_min(0))
        std_image = MedicalImage(s.permute(2, 1, 0).contiguous().numpy().astype(np.float32), affine)
    info = {
        "task": "mri", "method": sinfo["method"], "device": sinfo["device"],
        "seconds": time.perf_counter() - t0, "solver_seconds": sinfo["solver_seconds"],
        "slices": n, "plane": "image", "input_shape": (n, H, W), "output_shape": vol.shape,
        "prior": _prior_name(prior), "prior_resolution": R, "window": window.to_dict(),
        "sampling_fraction": float(m.float().mean()), "seed": seed, "steps": steps, "bp": bp,
        "samples": samples, "ensemble": sinfo.get("solver_info", {}).get("ensemble"),
        "noise_sigma": float(noise_sigma), "simulated": False,
        "effective_factor": (min(R, H) / H, min(R, W) / W),
    }
    info.update({k: sinfo[k] for k in ("std_kind", "std_calibration", "std_note") if k in sinfo})
    return PipelineResult(out, std_image, info)


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------
_DOUBLE_SUFFIXES = (".nii.gz",)


def _split_suffix(path: Path) -> tuple[str, str]:
    name = path.name
    for ds in _DOUBLE_SUFFIXES:
        if name.lower().endswith(ds):
            return name[: -len(ds)], name[-len(ds):]
    if path.is_dir():
        return name, ""
    return path.stem, path.suffix


def default_output_path(input_path: str | Path, task: str, method: str) -> Path:
    """``<input stem>_<task>_<method><suffix>`` beside the input.

    :func:`reconstruct_file` passes the method as it runs (``iagan-bp`` when the result is
    back-projected).

    A DICOM series directory (``.`` included) gives ``<dir>_<task>_<method>.nii.gz`` beside it;
    k-space or array input (``.npy``/``.h5``) gives ``.nii.gz`` (the output is an image, not
    k-space), and so does any format medrecon does not write (``.npz``, MetaImage, NRRD); a
    JPEG gives ``.png``. A DICOM file in a folder
    of other DICOM files (one slice of a series) gives ``<dir>_<stem>_<task>_<method>.dcm``
    beside that folder: a derived DICOM written into it would make the user's series folder
    hold two series. A volume in a one-image file (a multi-frame DICOM) gives ``.nii.gz``.
    """
    from medrecon.io._paths import WRITE_SUFFIXES, in_dicom_series_folder

    p = Path(input_path)
    if p.name in ("", ".", ".."):  # a folder given as '.': named after itself, written beside it
        p = p.resolve()
    stem, suffix = _split_suffix(p)
    if suffix.lower() in (".jpg", ".jpeg"):
        suffix = ".png"  # medrecon writes no JPEG (lossy)
    elif suffix.lower() not in WRITE_SUFFIXES or suffix.lower() in KSPACE_SUFFIXES:
        suffix = ".nii.gz"  # a folder, k-space or an array, .npz, MetaImage, NRRD...
    volume = _multi_frame(p)  # a DICOM volume in one file: .dcm holds one 2D image
    if volume:
        suffix = ".nii.gz"
    if p.is_file() and in_dicom_series_folder(p.absolute()):
        folder = p.absolute().parent
        return folder.with_name(f"{folder.name}_{stem}_{task}_{method}"
                                f"{'.nii.gz' if volume else '.dcm'}")
    return p.with_name(f"{stem}_{task}_{method}{suffix}")


def _multi_frame(path: Path) -> bool:
    """Whether ``path`` is a DICOM file of several frames (a volume), by its header."""
    from medrecon.io.dicom_read import read_dicom_header

    try:
        ds = read_dicom_header(path) if path.is_file() else None
        return ds is not None and int(ds.get("NumberOfFrames", 1) or 1) > 1
    except (MedreconInputError, OSError, TypeError, ValueError):
        return False


def _output_label(method: str, options: Mapping[str, Any]) -> str:
    """The method as it will run, for file names: ``iagan-bp`` when the solver back-projects."""
    from medrecon.solvers import METHODS, will_back_project

    if method not in METHODS:
        return method
    bp = will_back_project(method, bp=options.get("bp"), noise_sigma=options.get("noise_sigma"))
    return f"{method}-bp" if bp else method


def std_kind(info: dict) -> str:
    """What a result's std map holds: ``'calibrated std'`` (the prior's calibration for the
    regime) or ``'spread'`` (the samples' raw spread, uncalibrated)."""
    return "calibrated std" if info.get("std_kind") == "calibrated std" else "spread"


def std_path_for(output_path: str | Path) -> Path:
    """``<output stem>_std<suffix>``."""
    p = Path(output_path)
    stem, suffix = _split_suffix(p)
    return p.with_name(f"{stem}_std{suffix}")


def _is_kspace_input(path: Path, task: str, simulate: bool) -> bool:
    if task != "mri" or simulate:
        return False
    name = path.name.lower()
    return any(name.endswith(s) for s in KSPACE_SUFFIXES)


def prior_files(prior: Any) -> list[Path]:
    """The files or folders a prior was read from (protected from being written over).

    A shipped name or a path resolves to its prior folder (a bundle's whole folder for its
    ``models/``) or file (with its ``.json`` twin); a loaded :class:`~medrecon.priors.Prior`
    gives the folder of its statistics cache when it has one.
    """
    out: list[Path] = []
    if isinstance(prior, (str, Path)):
        from medrecon.priors import resolve_prior_path

        try:
            target = resolve_prior_path(prior)
        except MedreconInputError:
            return out
        if target.is_dir():
            out.append(target.parent if target.name == "models" else target)
        else:
            out += [target, target.with_suffix(".json"), target.with_suffix(".safetensors")]
    else:
        stats = getattr(prior, "stats_path", None)
        if stats is not None and Path(stats).parent.is_dir():
            out.append(Path(stats).parent)
    return out


def _check_mri_input(inp: Path, task: str, simulate: bool) -> None:
    if task == "mri" and not simulate and not _is_kspace_input(inp, task, simulate):
        raise MedreconInputError(
            f"task 'mri' reconstructs measured k-space (.npy, fastMRI .h5), but {str(inp)!r} is "
            "an image. Pass --simulate (simulate=True) to undersample the image "
            "retrospectively, or give the k-space file.")


#: What :func:`reconstruct_kspace` takes of :func:`reconstruct_file`'s options.
KSPACE_OPTIONS = ("steps", "bp", "noise_sigma", "ensemble", "device", "batch_size", "seed",
                  "callback")


def _check_kspace_options(options: Mapping[str, Any], *, series_uid: Any, volume: Any) -> None:
    """Refuse options that do not apply to measured k-space (they were dropped without a word:
    ``--plane``, ``--volume``, an ``--acceleration`` without ``--simulate``...); an option at
    :func:`reconstruct`'s default is not counted as given."""
    import inspect

    defaults = {n: p.default for n, p in inspect.signature(reconstruct).parameters.items()}
    given = [n for n, v in options.items()
             if n not in KSPACE_OPTIONS and (n not in defaults or v != defaults[n])]
    given += [n for n, v in (("series_uid", series_uid), ("volume", volume)) if v is not None]
    if given:
        raise MedreconInputError(
            f"option(s) {', '.join(sorted(given))} do not apply to measured k-space (its "
            "sampling is what the file holds); drop them, or pass --simulate to undersample an "
            "image.")


def _planned_sr_fallback(image: Any, prior: Any, method: str, options: Mapping[str, Any]
                         ) -> str | None:
    """The SR method :func:`reconstruct` will fall back to for ``image`` (see
    :func:`sr_fallback`), computed before the solve for the default output name."""
    vol = _volume_tensor(image)
    affine = np.asarray(getattr(image, "affine", np.eye(4)), dtype=np.float64)
    spacing = _spacing(image, affine)
    orient, _ = _slice_orientation(image, vol, affine, spacing, options.get("plane"), prior)
    n, h, w = orient.volume_to_slices(vol).shape
    R, _ = _prior_resolution(prior)
    fb = sr_fallback(method, (h, w), orient.inplane_spacing(spacing), R,
                     _check_int("scale", options.get("scale", 4), minimum=1))
    return None if fb is None else fb[0]


def reconstruct_file(
    input_path: str | Path,
    output_path: str | Path | None = None,
    *,
    task: str,
    prior: Any,
    method: str | None = None,
    overwrite: bool = False,
    samples: int = 0,
    simulate: bool = False,
    mask: Any = None,
    series_uid: str | None = None,
    volume: int | None = None,
    _protected: Sequence[Path] = (),
    **options: Any,
) -> PipelineResult:
    """Read a scan, reconstruct it and write the result (and the std map when ``samples > 0``).

    The scan is read by MONAI's ``LoadImage`` with :class:`medrecon.monai.MedreconReader`
    (medrecon's DICOM series selection, MONOCHROME1, multi-frame, 4D volumes, size bounds;
    MetaImage / NRRD through SimpleITK) into a channel-first MetaTensor, reconstructed by
    :func:`reconstruct`, and written by MONAI's ``SaveImage`` with medrecon's writer for the
    output's format (:mod:`medrecon.monai.writer`). k-space input (``.npy`` / ``.h5``) is read
    by :func:`load_kspace`.

    Files are handled by the rules of :mod:`medrecon.io.outputs`: every input (the scan, the
    mask file, the prior's files) is only read and never written over, even with
    ``overwrite``; the outputs are validated (format, dimensionality, inputs, an existing
    output, a writable place) before the reconstruction starts; ``SaveImage`` writes the result
    and its std map under temporary names, put in place together, exclusively, only when both
    are complete. DICOM outputs reuse the input's patient/study tags.

    Args:
        input_path: NIfTI / DICOM file or series directory / PNG / MetaImage / NRRD / ...; for
            ``task="mri"`` without ``simulate``, fastMRI ``.h5`` or ``.npy`` k-space.
        output_path: Output file; default :func:`default_output_path` beside the input.
        task, prior, method, samples, simulate, mask: as in :func:`reconstruct`.
        overwrite: Replace existing outputs that medrecon wrote (never an input). Default False.
        series_uid: Pick one series from a multi-series DICOM directory.
        volume: Pick one volume of a 4D file.
        **options: Any other :func:`reconstruct` keyword (steps, bp, plane, scale, ...).

    Returns:
        :class:`PipelineResult` with ``output_path`` (and ``std_path``) set; ``image`` and
        ``std`` are channel-first MetaTensors (what was written).

    Raises:
        MedreconInputError: missing/unreadable input, output exists without ``overwrite``,
            output equal to (or inside) an input, an output that cannot be written, an image
            given to ``mri`` without ``simulate``, plus everything :func:`reconstruct` raises.
    """
    from medrecon.io import check_image_output
    from medrecon.io._paths import check_input_file, full_suffix
    from medrecon.monai.convert import to_medical_image
    from medrecon.monai.reader import load_scan
    from medrecon.monai.writer import as_metatensor

    task = _check_task(task)
    inp = check_input_file(input_path)
    protected: list[Path] = [inp]
    if isinstance(mask, (str, Path)):
        protected.append(check_input_file(mask, what="mask"))
    protected += prior_files(prior) + list(_protected)
    prior_obj = _resolve_prior(prior)
    method_name = _choose_method(method, task, prior_obj, samples)
    _check_mri_input(inp, task, simulate)

    # read the input first (cheap), then validate the outputs before the long computation
    kspace = None
    image = None
    headers: list = []
    if _is_kspace_input(inp, task, simulate):
        _check_kspace_options(options, series_uid=series_uid, volume=volume)
        kspace = load_kspace(inp)
        is_2d = kspace[0].shape[0] == 1 if kspace[0].ndim == 3 else True
    else:
        # LoadImage(reader=MedreconReader(series_uid, volume), image_only=True,
        # ensure_channel_first=True); headers: the pixel-less DICOM headers, the reference of
        # a derived DICOM series (they cannot travel in the MetaTensor's metadata)
        image, headers = load_scan(inp, series_uid=series_uid, volume=volume)
        protected += [Path(s) for s in image.meta.get("source_paths") or []]
        is_2d = _is_2d(image)
    label = _output_label(method_name, options)
    if image is not None and may_fall_back(
            task=task, simulate=simulate, method_chosen=method is not None, samples=samples,
            ensemble=options.get("ensemble"), generative_options=asks_generative(
                key_every=options.get("key_every"), warm_steps=options.get("warm_steps"),
                coherence=options.get("coherence"), spread=options.get("spread"))):
        planned = _planned_sr_fallback(to_medical_image(image)[0], prior_obj, method_name, options)
        if planned is not None:  # the name says what will run
            bp = options.get("bp")  # the fallback back-projects unless told not to
            label = _output_label(planned, {**options, "bp": True if bp is None else bp})
    out = (Path(output_path) if output_path is not None
           else default_output_path(inp, task, label))
    out, as_dir = check_image_output(out, is_2d=is_2d, overwrite=overwrite, inputs=protected)
    if image is not None and (as_dir or full_suffix(out) == ".dcm"):
        from medrecon.io.dicom_write import check_dicom_axes

        check_dicom_axes(tuple(image.shape[1:]) + (1,) * (4 - image.ndim),
                         np.asarray(image.affine))  # the result keeps these axes
    std_out = (_checked_std_output(out, is_2d=is_2d, overwrite=overwrite, inputs=protected)
               if samples else None)

    if kspace is not None:
        k, sampled = kspace
        kopts = {k_: v for k_, v in options.items() if k_ in KSPACE_OPTIONS}
        result = reconstruct_kspace(k, prior=prior_obj, sampled=sampled, method=method_name,
                                    samples=samples, **kopts)
        result.image = as_metatensor(result.image)
        result.std = None if result.std is None else as_metatensor(result.std)
    else:
        # the user's method (None: the default, which may give way to the SR fallback; the
        # resolved name made every default count as chosen, so the CLI never fell back)
        result = reconstruct(image, task=task, prior=prior_obj, method=method, samples=samples,
                             simulate=simulate, mask=mask, **options)
    _save_result(result, out, std_out, task=task, overwrite=overwrite, inputs=protected,
                 headers=headers)
    return result


def _checked_std_output(out: Path, *, is_2d: bool, overwrite: bool,
                        inputs: Sequence[Path]) -> Path:
    """The std map's path beside ``out``, checked before the solve; a PNG, which rounds the
    map to whole grey levels, is said to."""
    from medrecon.io import check_image_output
    from medrecon.io._paths import full_suffix

    std_out, _ = check_image_output(std_path_for(out), is_2d=is_2d, overwrite=overwrite,
                                    inputs=inputs)
    if full_suffix(std_out) == ".png":
        warnings.warn(
            f"the std map {std_out.name} is stored as PNG, in whole grey levels of its image "
            "(stds below half a level become 0); write the output as .tif or .nii.gz to keep "
            "its values.", MedreconWarning, stacklevel=3)
    return std_out


def _save_result(result: PipelineResult, out: Path, std_out: Path | None, *, task: str,
                 overwrite: bool, inputs: Sequence[Path], headers: Any) -> None:
    """Write the result (and its std map) all or none, and record the paths in it."""
    from medrecon.io.outputs import OutputStage

    desc = f"medrecon {task} {result.info['method']}"
    with OutputStage(overwrite=overwrite) as stage:
        _save_output(result.image, out, stage=stage, inputs=inputs, description=desc,
                     method=result.info["method"], reference=headers)
        if std_out is not None and result.std is not None:
            _save_output(result.std, std_out, stage=stage, inputs=inputs,
                         description=f"{desc} {std_kind(result.info)}",
                         method=result.info["method"], reference=headers)
            result.std_path = std_out
    result.output_path = out
    result.info["output"] = str(out)
    result.info["std"] = str(result.std_path) if result.std_path else None


def _is_2d(image: Any) -> bool:
    """Whether a channel-first MetaTensor ``(1, X, Y[, Z])`` holds one slice (along any axis:
    the 2D writers store it as that slice, :meth:`medrecon.io.MedicalImage.slice_last`)."""
    spatial = tuple(image.shape[1:])
    return len(spatial) == 2 or 1 in spatial


def _save_output(image: Any, out: Path, *, stage: Any, inputs: Sequence[Path], description: str,
                 method: str, reference: Any) -> None:
    """Write one result through ``SaveImage`` into ``stage`` (committed by the caller).

    The output is checked again first (an output that appeared during the solve is refused
    before anything is written), then ``SaveImage`` writes a temporary file beside ``out`` (or
    a temporary folder for a DICOM series) with medrecon's writer for the format.
    """
    from medrecon.io import check_image_output
    from medrecon.io._paths import full_suffix
    from medrecon.io.api import _dicom_series_foreign
    from medrecon.monai.writer import (
        MedreconDicomWriter,
        MedreconNiftiWriter,
        MedreconRasterWriter,
        save_staged,
        writer_for,
    )

    out, as_dir = check_image_output(out, is_2d=_is_2d(image), overwrite=stage.overwrite,
                                     inputs=inputs)
    suffix = "" if as_dir else full_suffix(out)
    writer = writer_for(suffix, as_dir=as_dir)
    attributes: dict[str, Any] = {}
    if writer is MedreconDicomWriter:
        attributes = {"reference": reference, "method": method, "series_description": description}
    elif writer is MedreconNiftiWriter:
        attributes = {"description": description}
    elif writer is MedreconRasterWriter:
        attributes = {"target": str(out)}
    tmp = stage.folder(out, foreign=_dicom_series_foreign) if as_dir else stage.file(out)
    save_staged(image, tmp, writer=writer, suffix=suffix, **attributes)


def reconstruct_directory(
    dataset_dir: str | Path,
    output_dir: str | Path,
    *,
    task: str,
    prior: Any,
    method: str | None = None,
    overwrite: bool = False,
    **options: Any,
) -> list[PipelineResult]:
    """Reconstruct every scan in ``dataset_dir`` into ``output_dir`` (used by the MONAI bundles).

    Files with a known suffix are processed in sorted order, as are sub-directories (DICOM
    series). Each output keeps its input's name with ``_<task>_<method>`` appended. The
    method is one for the folder (``method``, else the prior's default), named before any image
    is read: the SR default does not give way to Lanczos per image here, as it does in
    :func:`reconstruct_file` where the prior supplies little. The prior is
    loaded once.

    Args:
        dataset_dir: Folder of inputs.
        output_dir: Folder for outputs (created if missing; never the input folder).
        task, prior, method, overwrite, **options: as in :func:`reconstruct_file`.

    Returns:
        One :class:`PipelineResult` per input, in order.
    """
    from medrecon.io.outputs import overlaps_input

    src, dst = Path(dataset_dir).expanduser(), Path(output_dir).expanduser()
    if not src.is_dir():
        raise MedreconInputError(f"dataset folder {str(src)!r} does not exist or is not a folder.")
    if overlaps_input(dst, src):
        raise MedreconInputError(
            f"output_dir {str(dst)!r} is, lies inside, or contains dataset_dir {str(src)!r}; "
            "choose an output folder outside the inputs so they are never touched.")
    inputs = [p for p in sorted(src.iterdir())
              if not p.name.startswith(".") and (p.is_dir() or any(p.name.lower().endswith(s) for s in IMAGE_SUFFIXES))]
    if not inputs:
        raise MedreconInputError(
            f"no images found in {str(src)!r}; expected files ending in {', '.join(IMAGE_SUFFIXES)} "
            "or DICOM series folders."
        )
    task = _check_task(task)
    prior_protected = prior_files(prior)
    prior_obj = _resolve_prior(prior)
    method_name = _choose_method(method, task, prior_obj)
    outs = [dst / default_output_path(p, task, _output_label(method_name, options)).name for p in inputs]
    results = []
    for p, out in zip(inputs, outs):
        _check_mri_input(p, task, bool(options.get("simulate")))
        if out.exists() and not overwrite:  # every existing output is named before any work
            existing = [str(o) for o in outs if o.exists()]
            raise MedreconInputError(
                f"{len(existing)} output(s) exist already in {str(dst)!r} (e.g. {existing[0]!r}); "
                "pass overwrite=True (--overwrite) to replace them, or choose another output_dir.")
    for p, out in zip(inputs, outs):
        results.append(reconstruct_file(p, out, task=task, prior=prior_obj, method=method_name,
                                        overwrite=overwrite, _protected=prior_protected, **options))
    return results
