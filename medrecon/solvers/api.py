"""One call shape for every solver: :func:`solve`, the :data:`METHODS` registry and the
per-task :data:`DEFAULTS`.

``solve(y, operator, prior, method=..., bp=None, **options)`` validates the options against the
method's signature, fills in the per-task defaults, runs the method and optionally
back-projects the result (``'+bp'`` is appended to ``Reconstruction.method``).

Per-task defaults (:data:`DEFAULTS`). Where they come from: the paper settings (IAGAN: stage-2
lr 1e-4 latent / 1e-3 weights, half the steps under noise; BRGM: W+ from ``w_avg``, weights of
:mod:`medrecon.solvers.brgm`) cut to a budget of <= 60 s per 128x128 slice on a 2-core CPU with
the shipped priors, and measured with ``medrecon.evaluation`` on held-out fold-0 images of both
priors (tables, timings and reproducing commands in ``docs/solvers.md``).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch
from torch import nn

from medrecon.errors import MedreconInputError
from medrecon.solvers import _common as C
from medrecon.solvers import baselines as BL
from medrecon.solvers.backprojection import AUTO_BP_MAX_SIGMA, auto_eta, back_project, sample_spread
from medrecon.solvers.calibration import calibrate, exact_after, std_regime
from medrecon.solvers.brgm import brgm, brgm_variational
from medrecon.solvers.csgm import csgm
from medrecon.solvers.iagan import STAGE1_DEFAULTS, iagan
from medrecon.solvers.result import Reconstruction


@dataclass(frozen=True)
class MethodSpec:
    """A registered method.

    Attributes:
        fn: the solver function ``fn(y, operator, [prior,] **options) -> Reconstruction``.
        generative: whether it needs a prior.
        defaults: its keyword defaults (read from the signature).
        description: one line for ``--help`` texts.
        tasks: the tasks it solves (``None``: any linear problem).
    """

    fn: Callable[..., Reconstruction]
    generative: bool
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)
    tasks: tuple[str, ...] | None = None


def _sig_defaults(fn) -> dict[str, Any]:
    out = {}
    for name, p in inspect.signature(fn).parameters.items():
        if p.kind is inspect.Parameter.KEYWORD_ONLY:
            out[name] = p.default
    return out


def _spec(fn, generative, description, tasks=None):
    return MethodSpec(fn=fn, generative=generative, description=description,
                      defaults=_sig_defaults(fn), tasks=tasks)


#: Registry of every method ``solve`` accepts.
METHODS: dict[str, MethodSpec] = {
    "csgm": _spec(csgm, True, "CSGM latent search (z/W/W+), batched seeded restarts"),
    "brgm": _spec(brgm, True, "BRGM MAP in W+ with Gaussian latent prior and colinearity"),
    "brgm_variational": _spec(brgm_variational, True,
                              "BRGM variational: posterior samples and a std map"),
    "iagan": _spec(iagan, True, "IAGAN: CSGM then per-slice latent + weight adaptation"),
    "adjoint": _spec(BL.adjoint, False, "A^H y"),
    "pseudo_inverse": _spec(BL.pseudo_inverse, False, "minimum-norm least squares A^+ y"),
    "zero_filled": _spec(BL.zero_filled, False, "MRI: zero-filled inverse FFT", ("mri",)),
    "bicubic": _spec(BL.bicubic, False, "SR: bicubic upsampling", ("sr",)),
    "lanczos": _spec(BL.lanczos, False, "SR: Lanczos-3 upsampling", ("sr",)),
    "tv": _spec(BL.tv, False, "TV-regularised least squares (PDHG), any linear operator"),
    "l1_wavelet": _spec(BL.l1_wavelet, False,
                        "L1-wavelet regularised least squares (FISTA, PyWavelets db4)"),
    "biharmonic": _spec(BL.biharmonic, False, "inpainting: biharmonic extension", ("inpainting",)),
    "wiener": _spec(BL.wiener, False, "deblurring: Wiener filter", ("deblur",)),
}

#: Tasks and the operator class names they correspond to (for ``task=None`` inference).
TASK_OF_OPERATOR = {
    "SuperResolution": "sr",
    "MRI": "mri",
    "Inpainting": "inpainting",
    "Blur": "deblur",
    "CompressedSensing": "cs",
    "Identity": "denoise",
}

#: Per-task overrides of the method defaults (``DEFAULTS[task][method] -> options``).
#: IAGAN (the default method) is budgeted for <= 60 s per 128x128 slice on a 2-core CPU with the
#: shipped priors: a 50-step single-restart CSGM stage from the best of 32 probes, then 100 (SR),
#: 150 (inpainting, CS), 200 (denoise), 600 (deblur; halved under noise) or 500 (MRI) adaptation
#: steps, and the mean of ``ensemble`` such runs (4 for SR, inpainting and deblurring, 2 for
#: MRI), chosen on validation images (scripts/tune_defaults.py). Measurements and the commands
#: that reproduce them: docs/solvers.md.
_IAGAN_STAGE1 = dict(STAGE1_DEFAULTS)
DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    # SR: few measurements per pixel (1/16 at x4).
    "sr": {
        "csgm": {"steps": 200, "restarts": 4},
        "brgm": {"steps": 200},
        # Mean of 4 runs: each run invents its own unmeasured detail, the mean keeps what they
        # agree on (16 validation X-rays, noise inputs on, 50 steps: 1 run 30.04 / 0.858, 2:
        # 30.24 / 0.865, 4: 30.32 / 0.868, 8: 30.38 / 0.870; Lanczos 29.89 / 0.851;
        # chest_xray_sr4_ensemble). Noise inputs off: their fine detail is random with respect
        # to the 1/16 of the pixels measured. With them off, 100 adaptation steps at lr_weights
        # 1e-2 scored best (4 runs: 50 steps at 3e-3 30.57 / 0.877, 100 at 3e-3 30.60 / 0.878,
        # 100 at 1e-2 30.72 / 0.877; Lanczos followed by back-projection 30.53 / 0.870;
        # chest_xray_sr4_noise_mode). With noise on, longer adaptation overfitted (6 images:
        # 50 steps 27.76 / 0.817, 150: 27.34 / 0.809, 500: 26.56 / 0.785; chest_xray_sr4).
        "iagan": {"steps": 100, "lr_weights": 1e-2, "ensemble": 4, "noise_mode": "none",
                  "stage1_options": dict(_IAGAN_STAGE1)},
    },
    # MRI / CS: the data term is stronger (k-space), adaptation profits from more steps.
    "mri": {
        "csgm": {"steps": 200, "restarts": 4},
        "brgm": {"steps": 200},
        # L1-wavelet (db4) on 4 validation brain MRIs, 8x random lines: 22.85 dB as the weight
        # goes to 0, 22.50 at 1e-3, 22.34 at 3e-3 (zero-filled 22.38, TV 23.40): the
        # sparsity term does not help these 128x128 images, so a small weight
        "l1_wavelet": {"weight": 1e-3},
        # 500 adaptation steps at lr_weights 3e-3 (validation brain MRI, 98 kimg prior: 150
        # steps 30.79 dB / 0.843, 300: 31.43 / 0.861, 500: 31.70 / 0.869; TV 27.92 / 0.822;
        # docs/results/tuning/brain_mri_mri4). Mean of 2 runs: 32.16 / 0.878 (3 runs: 32.42 /
        # 0.885 but ~53 s per slice, too close to the budget; 4 runs of 300 steps: 32.20 /
        # 0.877; brain_mri_mri4_ensemble*).
        "iagan": {"steps": 500, "lr_weights": 3e-3, "ensemble": 2,
                  "stage1_options": dict(_IAGAN_STAGE1)},
    },
    "cs": {
        "csgm": {"steps": 200, "restarts": 4},
        "iagan": {"steps": 150, "stage1_options": dict(_IAGAN_STAGE1)},
    },
    # Inpainting of a large box: the latent prior carries the hole; more restarts for CSGM.
    "inpainting": {
        "csgm": {"steps": 200, "restarts": 6},
        "brgm": {"steps": 250},
        # mean of 4 runs (6 validation brain slices: 25.25 dB / 0.839 vs 1 run 24.88 / 0.837;
        # biharmonic 18.64 / 0.786; brain_mri_inpaint_box_ensemble). The mean fills the hole
        # with what the runs agree on, so it is smoother than one run: ensemble=1 for a sharp
        # plausible fill.
        "iagan": {"steps": 150, "ensemble": 4, "stage1_options": dict(_IAGAN_STAGE1)},
    },
    # Deblurring 9x9 uniform at 10/255: steps halved automatically under noise (600 -> 300),
    # and each slice stops once its residual reaches the noise level (discrepancy principle).
    # 6 validation X-rays, mean of 4 runs: 200 steps 24.55 / 0.629, 400: 25.13 / 0.663, 600:
    # 25.26 / 0.672, 1000: 25.26 / 0.673 (the discrepancy stop ends it); one run of 600 steps
    # 24.86 / 0.655; Wiener 23.78 / 0.629 (docs/results/tuning/chest_xray_deblur9_*).
    # Noise inputs off: 4 runs of 600 steps 25.89 / 0.711 against 25.26 / 0.672 with them
    # fixed (chest_xray_deblur9_noise_mode).
    "deblur": {
        "csgm": {"steps": 200, "restarts": 4},
        "iagan": {"steps": 600, "ensemble": 4, "noise_mode": "none",
                  "stage1_options": dict(_IAGAN_STAGE1)},
    },
    "denoise": {
        "iagan": {"steps": 200, "stage1_options": dict(_IAGAN_STAGE1)},
    },
}

#: The default method of :func:`solve`.
DEFAULT_METHOD = "iagan"


def infer_task(operator: nn.Module) -> str | None:
    """Task name of an operator from its class (and its bases), or ``None``."""
    for cls in type(operator).__mro__:
        task = TASK_OF_OPERATOR.get(cls.__name__)
        if task is not None:
            return task
    return None


#: Overrides of :data:`DEFAULTS` when the prior's grid is not the measurement grid (an input
#: off the ideal ``R / scale`` size, so the prior reaches the measurements through the
#: field-of-view resampling of :mod:`medrecon.native`). Chosen on validation images degraded
#: at their native size (``scripts/tune_native_sr.py``; docs/results/tuning/*_sr4_native):
#: 200 adaptation steps instead of 100 - brain, 45 -> 180 px, box kernel: 28.20 / 0.832 ->
#: 28.67 / 0.847 (Lanczos + BP 27.93 / 0.840); chest, 56 -> 224 px, bicubic kernel:
#: 32.48 / 0.9043 -> 32.52 / 0.9055 (Lanczos + BP 32.63 / 0.9047).
OFF_GRID_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "sr": {"iagan": {"steps": 200}},
}


#: SR where at most this fraction of the image's pixels is measured (x16 and beyond: 8 x 8 of
#: 128 x 128) takes :data:`SPARSE_SR_DEFAULTS` over :data:`DEFAULTS`.
SPARSE_SR_FRACTION = 1 / 256
#: Less weight adaptation when very little is measured. SR x16 on 6 validation images (100
#: steps, 4 runs): lr_weights 1e-2 -> 3e-3 took chest X-ray from 20.43 / 0.467 to 21.08 /
#: 0.505 and brain MRI from 19.96 / 0.463 to 20.73 / 0.574 (Lanczos + BP 19.60 / 0.436 and
#: 19.53 / 0.431; docs/results/tuning/*_sr16). At x8 the priors disagreed (chest +0.18 dB,
#: brain -0.17 dB, SSIM up on both; *_sr8), so x8 keeps :data:`DEFAULTS`.
SPARSE_SR_DEFAULTS: dict[str, dict[str, Any]] = {"iagan": {"lr_weights": 3e-3}}


def measured_fraction(operator: nn.Module, y: torch.Tensor) -> float:
    """Measurements per image pixel (real numbers of one slice of ``y`` over the pixels of one
    slice of ``A^H y``; e.g. 1/64 for SR x8; 1 for operators that keep the image shape with
    zeros where nothing is measured, such as masks)."""
    try:
        with torch.no_grad():
            x = operator.A_adjoint(y[:1])
    except (RuntimeError, ValueError, TypeError, AttributeError, IndexError):
        return 1.0  # unusable measurements: the solver's own checks say what is wrong
    per = 2 if y.is_complex() and not x.is_complex() else 1
    return float(y[0].numel() * per) / float(x[0].numel())


def methods_for_task(task: str) -> list[str]:
    """The registered methods that solve ``task`` (solver task names, e.g. ``'inpainting'``)."""
    return [m for m, spec in METHODS.items() if spec.tasks is None or task in spec.tasks]


def check_method_task(method: str, task: str | None) -> None:
    """Refuse a method that does not solve ``task`` (a baseline of another task), saying which
    methods do."""
    spec = _get(method)
    task = "inpainting" if task == "inpaint" else task
    if task is None or spec.tasks is None or task in spec.tasks:
        return
    raise MedreconInputError(
        f"method {method!r} ({spec.description}) solves {' / '.join(spec.tasks)}, not {task}; "
        f"for {task} use one of {', '.join(methods_for_task(task))}.")


def _check_observed(operator: nn.Module) -> None:
    """One rule for every method: an inpainting slice must observe at least one pixel."""
    mask = getattr(operator, "mask", None)
    if not isinstance(mask, torch.Tensor) or mask.ndim < 2:
        return
    empty = mask.reshape(-1, mask.shape[-2] * mask.shape[-1]).eq(0).all(dim=1)
    if bool(empty.any()):
        raise MedreconInputError(
            "the inpainting mask marks every pixel of a slice as missing, so nothing is measured "
            "there; every method needs observed pixels. Fix the mask (the operator's mask is 1 "
            "where observed; a mask file given to the CLI is nonzero where missing).")


def method_options(method: str, task: str | None) -> dict[str, Any]:
    """Effective defaults of ``method`` for ``task`` (signature defaults + task overrides)."""
    spec = _get(method)
    opts = dict(spec.defaults)
    if task is not None:
        opts.update(DEFAULTS.get(task, {}).get(method, {}))
    return opts


def _get(method: str) -> MethodSpec:
    if not isinstance(method, str) or method not in METHODS:
        raise MedreconInputError(
            f"method={method!r}; expected one of {sorted(METHODS)}.")
    return METHODS[method]


def will_back_project(method: str, *, bp: bool | None = None,
                      noise_sigma: float | None = 0.0) -> bool:
    """Whether :func:`solve` back-projects the result of ``method``.

    Args:
        method: a key of :data:`METHODS`.
        bp: the ``bp`` argument of :func:`solve` (``None`` = auto).
        noise_sigma: the operator's noise std (generator units); ``None`` means 0.

    Returns:
        ``bp`` when given; otherwise ``True`` for generative methods at noise std
        ``<= AUTO_BP_MAX_SIGMA``.
    """
    if bp is not None:
        return bool(bp)
    return _get(method).generative and float(noise_sigma or 0.0) <= AUTO_BP_MAX_SIGMA


def solve(
    y: torch.Tensor,
    operator: nn.Module,
    prior: Any = None,
    *,
    method: str = DEFAULT_METHOD,
    bp: bool | None = None,
    bp_eta: float | None = None,
    task: str | None = None,
    device: str | torch.device = "auto",
    seed: int | Sequence[int] = 0,
    callback: C.ProgressCallback | None = None,
    **options: Any,
) -> Reconstruction:
    """Reconstructs a batch of slices with any registered method.

    Args:
        y: measurements ``[B, ...]`` (generator space for images; complex64 k-space for MRI).
        operator: a :class:`medrecon.physics.LinearPhysics` at the prior's resolution.
        prior: a :class:`medrecon.priors.Prior` or a StyleGAN2 generator; ignored (may be
            ``None``) for the baselines.
        method: a key of :data:`METHODS`. Default ``'iagan'``.
        bp: back-project the result onto ``{x: A x = y}``: ``True``, ``False`` or ``None``
            (auto: when the operator's noise std is ``<= AUTO_BP_MAX_SIGMA``, for generative
            methods only).
        bp_eta: BP regularisation; ``None`` -> :func:`auto_eta` of the noise std (0 if clean).
        task: ``'sr'``, ``'mri'``, ``'inpainting'``, ``'deblur'``, ``'cs'``, ``'denoise'``;
            selects :data:`DEFAULTS` (and, for SR measuring at most
            :data:`SPARSE_SR_FRACTION` of the pixels, :data:`SPARSE_SR_DEFAULTS` over them).
            ``None`` infers it from the operator class.
        device: ``'auto'`` (CUDA if available), ``'cpu'`` or ``'cuda'``.
        seed: seed of every random choice; generative methods also take one per slice (each
            slice then draws its own random start; the pipeline gives slice ``i`` of a scan
            :func:`medrecon.solvers._common.slice_seed` ``(seed, i)``).
        callback: progress callable receiving dicts ``{stage, step, total_steps, loss, ...}``.
        **options: method options (see the method's docstring); unknown ones raise.

    Returns:
        The :class:`Reconstruction`.
    """
    t0 = time.perf_counter()
    spec = _get(method)
    if task is None:
        task = infer_task(operator)
    elif task not in DEFAULTS:
        raise MedreconInputError(f"task={task!r}; expected one of {sorted(DEFAULTS)} or None.")
    check_method_task(method, task)
    if task == "inpainting":
        _check_observed(operator)
    allowed = set(spec.defaults) - {"device", "seed", "callback"}
    C.check_options(options, allowed, method)
    if callback is not None and not callable(callback):  # it failed after the solve
        raise MedreconInputError(f"callback is a {type(callback).__name__}; expected a callable "
                                 "receiving progress dicts, or None.")
    if bp not in (None, True, False):
        raise MedreconInputError(f"bp={bp!r}; expected True, False or None (auto).")
    opts = {k: v for k, v in method_options(method, task).items() if k in allowed}
    if (task == "sr" and isinstance(y, torch.Tensor) and y.ndim >= 2
            and measured_fraction(operator, y) <= SPARSE_SR_FRACTION * (1 + 1e-6)):
        opts.update({k: v for k, v in SPARSE_SR_DEFAULTS.get(method, {}).items() if k in allowed})
    for k, v in options.items():
        # dict-valued options (IAGAN's stage1_options) refine the task default, key by key
        if isinstance(v, dict) and isinstance(opts.get(k), dict):
            opts[k] = {**opts[k], **v}
        else:
            opts[k] = v
    call = {k: v for k, v in opts.items() if k in spec.defaults}
    if "device" in spec.defaults:
        call["device"] = device
    if "seed" in spec.defaults:
        call["seed"] = seed
    if "callback" in spec.defaults:
        call["callback"] = callback
    if spec.generative:
        rec = spec.fn(y, operator, prior, **call)
    else:
        rec = spec.fn(y, operator, **call)
    sigma = C.noise_sigma(operator)
    do_bp = will_back_project(method, bp=bp, noise_sigma=sigma)
    rec.info.setdefault("task", task)
    rec.info["bp"] = bool(do_bp)
    if spec.generative and rec.samples is not None:
        rec.info["std_regime"] = std_regime(method=method, task=task, operator=operator, y=y,
                                            noise_sigma=sigma or 0.0, options=call)
    if do_bp:
        eta = auto_eta(sigma) if bp_eta is None else bp_eta
        dev = C.resolve_device(device)
        img = back_project(rec.image.to(dev), y.to(dev), operator, eta=eta)
        rec.info["bp_eta"] = eta
        samples, std = _projected_samples(rec, y.to(dev), operator, eta=eta)
        rec = replace(rec, image=img, method=rec.method + "+bp", samples=samples, std=std)
        if callback is not None:
            callback({"stage": "bp", "step": 1, "total_steps": 1, "loss": float("nan")})
    if rec.std is not None and "std_regime" in rec.info:
        std, how = calibrate(rec.std, prior, rec.info["std_regime"], bp=do_bp,
                             exact=exact_after(rec.info, operator, rec.std.shape))
        rec = replace(rec, std=std)
        rec.info.update(how)
    rec.seconds = time.perf_counter() - t0
    return rec


def _projected_samples(rec: Reconstruction, y: torch.Tensor, operator: nn.Module, *,
                       eta: float) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The samples (posterior draws, ensemble members) back-projected like the image, and
    their per-pixel std: the measured components then carry no spread, so the std map
    describes the returned (back-projected) image. Without samples, ``rec``'s own."""
    if rec.samples is None or rec.samples.shape[0] < 2:
        return rec.samples, rec.std
    return sample_spread(rec.samples.to(y.device), operator, y=y, eta=eta)
