"""The image reconstruction pipeline as a :class:`monai.transforms.Compose` of small steps.

:func:`medrecon.pipeline.reconstruct` (and through it the CLI, the MONAI transforms and
bundles, and the 3D Slicer module) runs :func:`build_steps`: one ``Compose`` whose steps read
and write one state dictionary. Each step is a :class:`monai.transforms.Transform` that does
one thing, in this order::

    ReadVolume           "image" (MedicalImage)   -> "volume" (X, Y, Z), "affine", "spacing"
    CutSlices            "volume"                 -> "orient", "slices" [N, h, w], "sp_hw"
    ChooseMethod         "slices"                 -> "method", "bp", "ensemble", "coherence",
                                                     "coupling", "fallback"
    SliceMask            "mask"                   -> "missing" [N, h, w] (inpainting)
    WindowIntensities    "volume", "slices"       -> "window", "x" [N, C, h, w] in [-1, 1]
    SolveSlices          "x" (+ "missing")        -> "img_g", "std_g", "solver_info", "zoom"
    RestoreIntensities   "img_g", "std_g"         -> "rec", "sd" [N, H', W'] in intensities
    StackSlices          "rec", "sd"              -> "out_image", "std_image" (MedicalImage)
    Summarise            everything               -> "info"

The options are checked once, before any step runs (:class:`ReconstructionSettings`); every
step may still refuse its input with :class:`~medrecon.errors.MedreconInputError` (a bad
volume, a mask on another grid, a prior that cannot serve the task), and :func:`run_steps`
passes that error on as it was raised, not wrapped in MONAI's ``RuntimeError``.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from monai.transforms import Compose, Transform

from medrecon import pipeline as P
from medrecon.errors import MedreconInputError, MedreconWarning
from medrecon.limits import MAX_KEY_EVERY, MAX_SAMPLES, MAX_SCALE, MAX_STEPS
from medrecon.solvers._common import SEED_LIMIT, resolve_device
from medrecon.transforms import PLANES, IntensityWindow
from medrecon.volume import (COHERENT_SIGMA, DEFAULT_KEY_EVERY, SLICE_COUPLING, VOLUME_ENSEMBLE,
                             VOLUME_MIN_SUPPORT, check_coherence, coherence_sigma, stack_support)

__all__ = [
    "ReconstructionSettings",
    "ReadVolume",
    "CutSlices",
    "ChooseMethod",
    "SliceMask",
    "WindowIntensities",
    "SolveSlices",
    "RestoreIntensities",
    "StackSlices",
    "Summarise",
    "build_steps",
    "run_steps",
]


@dataclass(frozen=True)
class ReconstructionSettings:
    """The options of one reconstruction, checked (see :func:`medrecon.pipeline.reconstruct`
    for their meaning and defaults). Build with :meth:`check`."""

    task: str
    prior: Any
    method: str
    chosen_by_user: bool
    steps: int | None
    bp: bool | None
    plane: str | None
    scale: int
    sr_kernel: str
    acceleration: int
    center_fraction: float
    mask_type: str
    noise_sigma: float
    samples: int
    ensemble: int | None
    device: str
    batch_size: int | None
    seed: int
    simulate: bool
    percentiles: tuple[float, float]
    key_every: int
    warm_steps: int | None
    coherence: float | str
    spread: bool

    @classmethod
    def check(cls, *, task: str, prior: Any, method: str | None = None, steps: Any = None,
              bp: bool | None = None, plane: str | None = None, scale: Any = 4,
              sr_kernel: str = "bicubic", acceleration: int = 4, center_fraction: float = 0.08,
              mask_type: str = "random", noise_sigma: Any = 0.0, samples: Any = 0,
              ensemble: Any = None, device: str = "auto", batch_size: Any = None, seed: Any = 0,
              simulate: bool = False, percentiles: tuple[float, float] = (0.5, 99.5),
              key_every: Any = None, warm_steps: Any = None, coherence: Any = None,
              spread: bool = False,
              has_mask: bool = False) -> "ReconstructionSettings":
        """Check every option (before any work), load the prior (a name, folder or Prior) and
        fill in the defaults that depend on the task and the prior (the method, ``simulate``
        for tasks that always simulate)."""
        task = P._check_task(task)
        if batch_size is not None:  # None: the default, chosen once the ensemble is known
            batch_size = P.default_batch_size(batch_size, device)
        samples = P._check_int("samples", samples, minimum=0, limit=MAX_SAMPLES + 1)
        seed = P._check_int("seed", seed, minimum=0, limit=SEED_LIMIT)
        if steps is not None:
            steps = P._check_int("steps", steps, minimum=1, limit=MAX_STEPS + 1)
        if plane is not None and plane not in PLANES:
            raise MedreconInputError(f"unknown plane {plane!r}; expected one of {', '.join(PLANES)}.")
        noise_sigma = P.check_noise_sigma(noise_sigma)
        if task == "sr":
            from medrecon.physics import SR_KERNELS
            from medrecon.physics._utils import check_choice

            scale = P._check_int("scale", scale, minimum=1, limit=MAX_SCALE + 1)
            check_choice(sr_kernel, "sr_kernel", SR_KERNELS)
        resolve_device(device)  # an unknown device, or CUDA on a machine without it
        key_every = DEFAULT_KEY_EVERY if key_every is None else P._check_int(
            "key_every", key_every, minimum=1, limit=MAX_KEY_EVERY + 1)
        if warm_steps is not None:
            warm_steps = P._check_int("warm_steps", warm_steps, minimum=1, limit=MAX_STEPS + 1)
        coherence = check_coherence(coherence)
        if has_mask and task != "inpaint":
            raise MedreconInputError(f"a mask is only used by task 'inpaint'; got task {task!r} "
                                     "with a mask.")
        prior = P._resolve_prior(prior)
        chosen = P._choose_method(method, task, prior, samples)
        P._check_ensemble(ensemble, chosen)  # its bound and method, before any work
        _check_volume_options(task, chosen, key_every=key_every, warm_steps=warm_steps,
                              coherence=coherence)
        if spread and not samples:  # with samples the std map is theirs: spread adds nothing
            _check_spread(task, chosen, ensemble)
        return cls(
            task=task, prior=prior, method=chosen,
            chosen_by_user=method is not None, steps=steps, bp=bp, plane=plane, scale=scale,
            sr_kernel=sr_kernel, acceleration=acceleration, center_fraction=center_fraction,
            mask_type=mask_type, noise_sigma=float(noise_sigma), samples=samples,
            ensemble=ensemble, device=device, batch_size=batch_size, seed=seed,
            simulate=bool(simulate or task in P.SIMULATE_ONLY_TASKS or task == "mri"),
            percentiles=(float(percentiles[0]), float(percentiles[1])), key_every=key_every,
            warm_steps=warm_steps, coherence=coherence, spread=bool(spread))



def _check_spread(task: str, method: str, ensemble: Any) -> None:
    """``spread`` asks for the per-pixel spread of an IAGAN ensemble on the scan's own grid;
    where there is none (another task or method, one run) it was accepted and dropped."""
    if task not in P.NATIVE_TASKS:
        raise MedreconInputError(
            f"spread (an IAGAN ensemble's per-pixel spread) is for tasks "
            f"{', '.join(P.NATIVE_TASKS)}; task {task!r} has none. Drop spread, or use "
            "samples=N with a method that draws posterior samples (brgm_variational).")
    if not P._accepts(method, "ensemble"):
        raise MedreconInputError(
            f"spread is the spread of an IAGAN ensemble; method {method!r} gives one estimate. "
            "Use method='iagan', or samples=N with a method that draws posterior samples.")
    if ensemble is not None and int(ensemble) < 2:
        raise MedreconInputError(
            f"spread with ensemble={ensemble}: one run has no spread. Use ensemble=2 or more "
            "(or leave ensemble out: the task's default ensemble).")


def _check_volume_options(task: str, method: str, *, key_every: int, warm_steps: int | None,
                          coherence: float | str) -> None:
    """Refuse volume options that would change nothing (they were dropped without a word):
    warm starts for a method that cannot start from a neighbour, ``warm_steps`` without warm
    starts, a coherence width for a task or method it does not apply to."""
    from medrecon.solvers import METHODS
    from medrecon.volume import supports_warm_start

    if key_every > 1 and not supports_warm_start(method):
        raise MedreconInputError(
            f"key_every={key_every} warm-starts slices from their neighbours, which method "
            f"{method!r} cannot; drop key_every (--key-every) or use method 'iagan'.")
    if key_every > 1 and task in ("mri", "cs"):
        raise MedreconInputError(
            f"key_every={key_every}: simulated {task} solves every slice cold (its slices are "
            "measured one by one); drop key_every (--key-every).")
    if warm_steps is not None and key_every <= 1:
        raise MedreconInputError(
            f"warm_steps={warm_steps} sets the steps of warm-started slices, and there are none "
            "without key_every >= 2 (--key-every); pass both or neither.")
    if isinstance(coherence, float) and coherence > 0:
        if task not in COHERENT_TASKS:
            raise MedreconInputError(
                f"coherence={coherence:g} mm applies to {', '.join(COHERENT_TASKS)}, not "
                f"{task}; drop it (--coherence).")
        if not METHODS[method].generative:
            raise MedreconInputError(
                f"coherence={coherence:g} mm averages the generative methods' guesses across "
                f"slices; method {method!r} makes none. Drop it, or use a generative method.")


class ReadVolume(Transform):
    """``"image"`` (a MedicalImage) -> ``"volume"`` ``(X, Y, Z)`` float32 tensor (checked:
    real, finite, numeric, at most 3D), ``"affine"`` and ``"spacing"`` (mm per axis)."""

    def __call__(self, d: dict) -> dict:
        image = d["image"]
        d["volume"] = P._volume_tensor(image)
        d["affine"] = np.asarray(getattr(image, "affine", np.eye(4)), dtype=np.float64)
        d["spacing"] = P._spacing(image, d["affine"])
        return d


class CutSlices(Transform):
    """Cut the volume into display-oriented 2D slices along the plane of
    :func:`medrecon.pipeline._slice_orientation` (the requested one, else the acquired one):
    ``"orient"`` (exactly invertible), ``"plane_source"``, ``"slices"`` ``[N, h, w]`` and their
    in-plane spacing ``"sp_hw"``."""

    def __init__(self, settings: ReconstructionSettings) -> None:
        self.s, self.plane, self.prior = settings, settings.plane, settings.prior

    def __call__(self, d: dict) -> dict:
        orient, source = P._slice_orientation(d["image"], d["volume"], d["affine"], d["spacing"],
                                              self.plane, self.prior)
        d["orient"], d["plane_source"] = orient, source
        d["slices"] = orient.volume_to_slices(d["volume"])
        d["sp_hw"] = orient.inplane_spacing(d["spacing"])
        check_result_size(tuple(d["slices"].shape), self.s)
        return d


def check_result_size(slices_shape: tuple[int, int, int], s: ReconstructionSettings) -> None:
    """Refuse a result larger than medrecon reads (``MEDRECON_MAX_VOXELS``), or whose float32
    copies (:data:`medrecon.limits.RESULT_COPIES`; ``COHERENT_RESULT_COPIES`` where the
    coherence step may run) would not fit in the free memory, before any solve: only the input
    was bounded, and a 512 x 512 x 300 scan at x4 (1.3 G voxels) ran for minutes and ended in
    an out-of-memory error."""
    import torch

    from medrecon.io._paths import max_voxels
    from medrecon.limits import COHERENT_RESULT_COPIES, RESULT_COPIES, free_memory
    from medrecon.solvers import METHODS

    n, h, w = slices_shape
    k = s.scale if s.task == "sr" else 1
    voxels = n * h * k * w * k
    coherent = (n > 1 and s.task in COHERENT_TASKS and METHODS[s.method].generative
                and s.coherence != 0.0)  # the coherence step may run: its stacks too
    copies = COHERENT_RESULT_COPIES if coherent else RESULT_COPIES
    need, free = voxels * 4 * copies, free_memory(torch.device("cpu"))
    if voxels > max_voxels() or (free is not None and need > free):
        gib = 2.0**30
        room = "" if free is None else f", {free / gib:.1f} GiB free"
        raise MedreconInputError(
            f"the result would be {n} slices of {h * k}x{w * k} ({voxels / 1e9:.2f} G voxels, "
            f"about {need / gib:.1f} GiB while it is assembled{room}; at most "
            f"MEDRECON_MAX_VOXELS={max_voxels()} voxels); crop the scan, reconstruct it in "
            "parts" + (" or use a smaller --scale" if k > 1 else "") + ".")


#: Tasks whose volumes :func:`medrecon.volume.cohere_slices` can smooth (``coherence`` in mm;
#: denoising measures every pixel, so it has nothing to smooth); ``"auto"`` turns it on for SR
#: only (:func:`_coherence_width`).
COHERENT_TASKS = ("sr", "inpaint", "deblur")


def _coherence_width(s: ReconstructionSettings, d: dict) -> float:
    """The across-slice width of :func:`medrecon.volume.cohere_slices` in slices. ``"auto"``
    applies to SR, where it was measured (docs/results/tuning/brain_mri_sr4_volume_guided);
    a width in mm applies to any task of :data:`COHERENT_TASKS`."""
    if s.task not in COHERENT_TASKS or (s.coherence == "auto" and s.task != "sr"):
        return 0.0
    out_sp = d["sp_hw"]
    if s.task == "sr" and not s.simulate:
        out_sp = (out_sp[0] / s.scale, out_sp[1] / s.scale)
    return coherence_sigma(s.coherence, out_spacing_hw=out_sp,
                           slice_spacing=float(d["spacing"][d["orient"].axis]))


class ChooseMethod(Transform):
    """The method and back-projection for these slices: the settings' method, except that a
    generative SR default the prior cannot support here becomes Lanczos + back-projection
    (:func:`medrecon.pipeline.sr_fallback`, said in a :class:`MedreconWarning`; not when a
    method, samples or an ensemble were asked for: :func:`medrecon.pipeline.may_fall_back`); ``denoise``
    does not back-project by default (it would return the noisy input). Also the across-slice
    width of the coherence step (``"coherence"``, in slices) and the ensemble: an SR volume of
    at least 3 slices close enough to be made coherent (:data:`medrecon.volume.COHERENT_SIGMA`),
    enough of them in reach (:data:`medrecon.volume.VOLUME_MIN_SUPPORT`), with no ``ensemble``
    or spread asked for gets :data:`medrecon.volume.VOLUME_ENSEMBLE`
    run(s) per slice, its neighbouring slices searched jointly in stage 1 (``"coupling"``:
    :data:`medrecon.volume.SLICE_COUPLING`; 0 otherwise)."""

    def __init__(self, settings: ReconstructionSettings) -> None:
        self.s, self.prior = settings, settings.prior

    def __call__(self, d: dict) -> dict:
        s = self.s
        method, bp, fallback = s.method, s.bp, None
        if d["slices"].shape[0] == 1 and (s.key_every > 1 or s.warm_steps is not None or (
                isinstance(s.coherence, float) and s.coherence > 0)):
            raise MedreconInputError(  # they were accepted and dropped
                "key_every, warm_steps and a coherence width act across the slices of a "
                "volume; this image has one slice. Drop them (--key-every, --warm-steps, "
                "--coherence).")
        if P.may_fall_back(task=s.task, simulate=s.simulate, method_chosen=s.chosen_by_user,
                           samples=s.samples, ensemble=s.ensemble,
                           generative_options=P.asks_generative(
                               key_every=s.key_every, warm_steps=s.warm_steps,
                               coherence=s.coherence, spread=s.spread)):
            n, h, w = d["slices"].shape
            R, _ = P._prior_resolution(self.prior)
            fallback = P.sr_fallback(method, (h, w), d["sp_hw"], R, s.scale)
            if fallback is not None:
                warnings.warn(fallback[1], MedreconWarning, stacklevel=2)
                method, bp = fallback[0], (True if bp is None else bp)
        d["ensemble"] = P._check_ensemble(s.ensemble, method)
        d["coherence"] = _coherence_width(s, d)
        d["coupling"] = 0.0
        if (s.task == "sr" and d["ensemble"] is None and not s.spread and d["slices"].shape[0] >= 3
                and d["coherence"] >= COHERENT_SIGMA and P._accepts(method, "ensemble")
                and not s.samples and stack_support(d["slices"].shape[0], d["coherence"])
                >= VOLUME_MIN_SUPPORT):
            d["ensemble"] = VOLUME_ENSEMBLE  # the neighbouring slices serve as the ensemble
            d["coupling"] = SLICE_COUPLING  # and are searched jointly in stage 1
        if s.task == "denoise" and bp is None:
            bp = False
        d["method"], d["bp"], d["fallback"] = method, bp, fallback
        return d


class SliceMask(Transform):
    """``"mask"`` (array, image or path on the volume's grid, nonzero = missing) ->
    ``"missing"``: bool slices ``[N, h, w]`` cut like the image (None without a mask)."""

    def __call__(self, d: dict) -> dict:
        mask = d.get("mask")
        if mask is not None:
            mask = P.load_mask(mask, d["image"])  # a file with geometry: on the image's grid
        d["missing"] = None if mask is None else P._missing_slices(mask, d["volume"], d["orient"],
                                                                   "inpaint")
        return d


class WindowIntensities(Transform):
    """Map intensities to the generator's range: the volume's ``percentiles`` go to -1 / +1
    (:class:`medrecon.transforms.IntensityWindow`, exactly invertible), one channel per
    generator channel: ``"window"`` and ``"x"`` ``[N, C, h, w]``."""

    def __init__(self, percentiles: tuple[float, float], channels: int) -> None:
        self.percentiles, self.channels = percentiles, channels

    def __call__(self, d: dict) -> dict:
        window = IntensityWindow.fit(d["volume"], lower=self.percentiles[0],
                                     upper=self.percentiles[1])
        x = window.apply(d["slices"])[:, None]
        d["window"] = window
        d["x"] = x.expand(-1, self.channels, -1, -1) if self.channels > 1 else x
        return d


class SolveSlices(Transform):
    """Measure (or take) the slices' measurements on their own grid and solve them in batches
    with the prior inside the forward model: SR / inpainting / deblurring / denoising through
    :mod:`medrecon.native`, simulated MRI through the slices' own k-space, CS on the prior's
    grid. Sets ``"img_g"`` / ``"std_g"`` (generator units, output grid), ``"solver_info"``,
    ``"out_hw"``, ``"extra"`` (task facts for the report), ``"zoom"`` (per-axis spacing
    divisor) and ``"progress"``."""

    def __init__(self, settings: ReconstructionSettings,
                 callback: Callable[[dict], None] | None) -> None:
        self.s, self.prior, self.callback = settings, settings.prior, callback

    def __call__(self, d: dict) -> dict:
        s, x = self.s, d["x"]
        progress = P._Progress(self.callback, x.shape[0], d["method"])
        # one IAGAN run per slice (an ensemble method asked for, or defaulting to, one run)
        single = P._accepts(d["method"], "ensemble") and P.runs_per_slice(
            d["method"], s.task, d["ensemble"]) == 1
        batch_size = P.default_batch_size(s.batch_size, s.device, single_run=single)
        kw = dict(method=d["method"], steps=s.steps, bp=d["bp"], samples=s.samples,
                  device=s.device, batch_size=batch_size, seed=s.seed, progress=progress,
                  ensemble=d["ensemble"])
        zoom = [1.0, 1.0, 1.0]
        if s.task in P.NATIVE_TASKS:  # volumes: warm starts along the slice axis
            out = P._solve_native_task(s.task, x, self.prior, sp_hw=d["sp_hw"],
                                       simulate=s.simulate, noise_sigma=s.noise_sigma,
                                       scale=s.scale, sr_kernel=s.sr_kernel,
                                       missing=d["missing"], key_every=s.key_every,
                                       warm_steps=s.warm_steps, spread=s.spread,
                                       coherence=d["coherence"], coupling=d["coupling"], **kw)
            if s.task == "sr" and not s.simulate:
                r_ax, c_ax = d["orient"].inplane_axes()
                zoom[r_ax] = zoom[c_ax] = float(s.scale)
        elif s.task == "mri":
            out = P._solve_simulated_kspace(
                x, d["window"], self.prior, acceleration=s.acceleration,
                center_fraction=s.center_fraction, mask_type=s.mask_type,
                noise_sigma=s.noise_sigma, **kw)
        else:
            out = P._solve_cs(x, self.prior, sp_hw=d["sp_hw"], noise_sigma=s.noise_sigma, **kw)
        d["img_g"], d["std_g"], d["solver_info"], d["out_hw"], d["extra"] = out
        d["zoom"], d["progress"] = zoom, progress
        return d



class RestoreIntensities(Transform):
    """Back to the scan's intensities: the channel mean of ``"img_g"`` through the inverse
    window (``"rec"`` ``[N, H', W']``) and the std map scaled by the window (``"sd"``, the
    root mean square over channels; None without one)."""

    def __call__(self, d: dict) -> dict:
        window = d["window"]
        d["rec"] = window.invert(d["img_g"].float().mean(dim=1, keepdim=True))[:, 0]
        std_g = d["std_g"]
        d["sd"] = None if std_g is None else window.invert_scale(
            std_g.float().pow(2).mean(dim=1).sqrt())
        return d


class StackSlices(Transform):
    """Restack the slices into a volume (the inverse of :class:`CutSlices`) with the input's
    affine, its in-plane spacing divided by ``"zoom"`` for SR: ``"out_image"`` and
    ``"std_image"`` (MedicalImages like the input)."""

    def __call__(self, d: dict) -> dict:
        image, orient, zoom = d["image"], d["orient"], d["zoom"]
        out_vol = orient.slices_to_volume(d["rec"])
        affine = d["affine"]
        out_affine = P._zoom_affine(affine, zoom) if zoom != [1.0, 1.0, 1.0] else affine.copy()
        d["out_shape"] = tuple(int(v) for v in out_vol.shape)
        d["out_image"] = image.with_array(out_vol.numpy().astype(np.float32), affine=out_affine)
        d["std_image"] = None if d["sd"] is None else image.with_array(
            orient.slices_to_volume(d["sd"]).numpy().astype(np.float32), affine=out_affine)
        return d


class Summarise(Transform):
    """``"info"``: what was done (JSON-serialisable; see :class:`medrecon.pipeline.PipelineResult`)."""

    def __init__(self, settings: ReconstructionSettings) -> None:
        self.s, self.prior = settings, settings.prior

    def __call__(self, d: dict) -> dict:
        s, sinfo = self.s, d["solver_info"]
        seconds = time.perf_counter() - d["t0"]
        info = {
            "task": s.task, "method": sinfo["method"], "device": sinfo["device"],
            "seconds": seconds, "solver_seconds": sinfo["solver_seconds"],
            "slices": int(d["slices"].shape[0]), "plane": d["orient"].plane,
            "plane_source": d["plane_source"], "slice_axis": d["orient"].axis,
            "input_shape": tuple(int(v) for v in d["volume"].shape),
            "output_shape": d["out_shape"], "prior": P._prior_name(self.prior),
            "prior_resolution": P._prior_resolution(self.prior)[0],
            "window": d["window"].to_dict(), "simulated": s.simulate, "seed": s.seed,
            "steps": s.steps, "bp": d["bp"], "samples": s.samples,
            "ensemble": sinfo.get("solver_info", {}).get("ensemble"),
            "noise_sigma": s.noise_sigma,
        }
        info.update(d["extra"])
        info.update({k: sinfo[k] for k in ("key_every", "warm_steps", "coherence_sigma", "coupling",
                                          "adapt_steps", "std_kind", "std_calibration",
                                          "std_note") if k in sinfo})
        if d["fallback"] is not None:
            info["fallback"] = d["fallback"][1]
        if s.task == "sr":
            info["scale"], info["sr_kernel"] = s.scale, s.sr_kernel
        d["progress"].emit(1.0, f"done in {seconds:.1f} s")  # no-op without a callback
        d["info"] = info
        return d


def build_steps(settings: ReconstructionSettings,
                callback: Callable[[dict], None] | None = None, *,
                checks_only: bool = False) -> Compose:
    """The reconstruction of one MedicalImage as a ``Compose`` of the steps above.

    Args:
        settings: The checked options and the prior.
        callback: Called with ``{"event": "progress", "fraction", "message", ...}`` dicts.
        checks_only: Only the steps before the solve, which check the image against the
            settings (its size, the result's size, the mask, the method for the scan) in a
            fraction of a second: what a run of many scans does to each before solving any.
    """
    _, channels = P._prior_resolution(settings.prior)
    checks = [ReadVolume(), CutSlices(settings), ChooseMethod(settings), SliceMask(),
              WindowIntensities(settings.percentiles, channels)]
    if checks_only:
        return Compose(checks)
    return Compose([*checks, SolveSlices(settings, callback), RestoreIntensities(),
                    StackSlices(), Summarise(settings)])


def _cause(err: BaseException) -> BaseException:
    """The error a step raised, under MONAI's ``RuntimeError('applying transform ...')``."""
    while (isinstance(err, RuntimeError) and err.__cause__ is not None
           and str(err).startswith("applying transform")):
        err = err.__cause__
    return err


def run_steps(steps: Compose, state: Mapping[str, Any]) -> dict:
    """Run ``steps`` on ``state``.

    A step's own error (``MedreconInputError``, ``MemoryError``, a torch error) is raised as it
    was, not wrapped by MONAI's ``apply_transform``; the steps' warnings are issued at the
    caller of :func:`medrecon.pipeline.reconstruct` (not inside MONAI's ``Compose``).
    """
    held: list = []
    try:
        with warnings.catch_warnings(record=True) as held:
            warnings.simplefilter("always")
            return steps(dict(state))
    except RuntimeError as err:
        cause = _cause(err)
        if cause is err:
            raise
        raise cause.with_traceback(cause.__traceback__) from None
    finally:
        for w in held:  # run_steps <- reconstruct <- its caller
            warnings.warn(w.message, w.category, stacklevel=3)
