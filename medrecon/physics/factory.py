"""``build_operator``: the one factory used by the pipeline, the evaluation harness and bundles."""

from __future__ import annotations

import inspect
import math
import os
from typing import Any

import torch

from medrecon.errors import MedreconInputError
from medrecon.physics._utils import as_float, as_positive_int, as_size2, check_choice
from medrecon.physics.base import Identity, LinearPhysics
from medrecon.physics.blur import Blur
from medrecon.physics.cs import CompressedSensing
from medrecon.physics.inpainting import Inpainting
from medrecon.physics.kernels import PADDINGS, gaussian_kernel, uniform_kernel
from medrecon.physics.masks import INPAINT_MASKS, MRI_MASKS, load_mask, missing_to_observed
from medrecon.physics.mri import MRI
from medrecon.physics.noise import GaussianNoise, NoiseModel, RicianNoise
from medrecon.physics.superres import SR_KERNELS, SuperResolution

__all__ = ["TASKS", "TASK_OPTIONS", "build_operator"]

#: Tasks understood by :func:`build_operator`.
TASKS: tuple[str, ...] = ("sr", "inpaint", "mri", "cs", "deblur", "denoise")

_MASK_OPTIONS = sorted({
    name for fn in INPAINT_MASKS.values() for name in inspect.signature(fn).parameters
    if name not in ("shape", "seed")})

#: Task-specific options of :func:`build_operator` (besides the common ones).
TASK_OPTIONS: dict[str, tuple[str, ...]] = {
    "sr": ("scale", "kernel", "padding", "sigma"),
    "inpaint": ("mask", "mask_is_missing", "mask_type", *_MASK_OPTIONS),
    "mri": ("acceleration", "center_fraction", "mask_type", "mask", "sigma"),
    "cs": ("m", "ratio"),
    "deblur": ("kernel", "size", "sigma", "padding"),
    "denoise": (),
}

_NOISES = ("gaussian", "rician")


def _noise(sigma: Any, kind: str, floor: Any, task: str) -> NoiseModel | None:
    s = as_float(sigma, "noise_sigma", minimum=0.0)
    check_choice(kind, "noise", _NOISES)
    if kind == "rician":
        if task in ("mri", "cs"):
            raise MedreconInputError(
                f"noise='rician' is for real magnitude measurements, not task {task!r} "
                f"(complex/projection measurements); use noise='gaussian' (complex Gaussian "
                f"k-space noise gives Rician magnitude images).")
        return RicianNoise(s, floor=as_float(floor, "rician_floor"))
    return GaussianNoise(s) if s > 0 else None


def build_operator(task: str, *, img_size: int | tuple[int, int], channels: int = 1,
                   seed: int = 0, noise_sigma: float = 0.0, noise: str = "gaussian",
                   rician_floor: float = -1.0, **options: Any) -> LinearPhysics:
    """Build the forward operator of a reconstruction task.

    Common arguments:
        task: One of :data:`TASKS`.
        img_size: Image size ``H`` or ``(H, W)`` (generator resolution).
        channels: Image channels ``C``. Default 1.
        seed: Seed of random masks / matrices. Default 0.
        noise_sigma: Noise standard deviation in the units of ``y`` (images in ``[-1, 1]``:
            ``2 * 10 / 255`` for "10/255"). Default 0 (noiseless).
        noise: ``'gaussian'`` (default; complex Gaussian for MRI) or ``'rician'`` (magnitude
            MRI images: tasks denoise, inpaint, sr, deblur).
        rician_floor: Zero-signal level for Rician noise. Default -1 (generator space).

    Task options (defaults in brackets):
        * ``sr``: ``scale`` [4], ``kernel`` ['bicubic' | 'box' | 'gaussian' | tensor],
          ``padding`` ['reflect'], ``sigma`` [None: see :func:`~medrecon.physics.sr_kernel`].
        * ``inpaint``: ``mask`` (tensor/array/path; 1 = observed unless
          ``mask_is_missing=True``) or ``mask_type`` ['center_box' | 'random_boxes' |
          'free_form' | 'random_pixels' | 'half'] with that generator's options.
        * ``mri``: ``acceleration`` [4], ``center_fraction`` [0.08], ``mask_type`` ['random' |
          'equispaced' | 'gaussian2d' | 'poisson2d'], ``sigma`` (gaussian2d width), or an
          explicit ``mask``.
        * ``cs``: ``m`` (measurements) or ``ratio`` [0.25] of ``C * H * W``.
        * ``deblur``: ``kernel`` ['uniform' | 'gaussian' | tensor], ``size`` [9 for uniform,
          ``2 ceil(3 sigma) + 1`` for gaussian], ``sigma`` [2.0], ``padding`` ['reflect'].
        * ``denoise``: none.

    Returns:
        A :class:`LinearPhysics` operator (on the CPU; move it with ``.to(device)``).

    Raises:
        MedreconInputError: Unknown task or option (the message lists the valid ones), or a
            bad option value.
    """
    if not isinstance(task, str) or task not in TASKS:
        raise MedreconInputError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}.")
    unknown = sorted(set(options) - set(TASK_OPTIONS[task]))
    if unknown:
        valid = ", ".join(TASK_OPTIONS[task]) or "none"
        raise MedreconInputError(
            f"unknown option(s) {', '.join(unknown)} for task {task!r}; valid task options: "
            f"{valid} (plus img_size, channels, seed, noise_sigma, noise, rician_floor).")
    h, w = as_size2(img_size, "img_size")
    c = as_positive_int(channels, "channels")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise MedreconInputError(f"seed must be a non-negative int, got {seed!r}.")
    nm = _noise(noise_sigma, noise, rician_floor, task)

    if task == "sr":
        kernel = options.get("kernel", "bicubic")
        if isinstance(kernel, str):
            check_choice(kernel, "kernel", SR_KERNELS)
        return SuperResolution(options.get("scale", 4), img_size=(h, w), kernel=kernel,
                               padding=options.get("padding", "reflect"),
                               sigma=options.get("sigma"), noise_model=nm)
    if task == "inpaint":
        op = Inpainting(_inpaint_mask(options, (h, w), seed), noise_model=nm)
        # the generator's name keys a std calibration (a given mask: None, "custom")
        op.mask_family = None if "mask" in options else options.get("mask_type", "center_box")
        return op
    if task == "mri":
        if "mask" in options:
            extra = {"acceleration", "center_fraction", "mask_type", "sigma"} & set(options)
            if extra:
                raise MedreconInputError(
                    f"task 'mri' got both mask and {', '.join(sorted(extra))}; pass either an "
                    f"explicit mask or the mask generator options.")
            mask = options["mask"]
            if isinstance(mask, (str, os.PathLike)):
                mask = load_mask(mask, (h, w))
            return MRI(mask, noise_model=nm)
        mask_type = options.get("mask_type", "random")
        check_choice(mask_type, "mask_type", tuple(MRI_MASKS))
        kw = {"acceleration": options.get("acceleration", 4.0),
              "center_fraction": options.get("center_fraction", 0.08), "seed": seed}
        if "sigma" in options:
            if mask_type != "gaussian2d":
                raise MedreconInputError(
                    f"option sigma is only used by mask_type 'gaussian2d', got {mask_type!r}.")
            kw["sigma"] = options["sigma"]
        op = MRI(MRI_MASKS[mask_type]((h, w), **kw), noise_model=nm)
        # keys a std calibration: phase-encoding lines, random or equispaced, are one family
        # (the random-lines fit held on equispaced lines: ENCE 0.08 on the held-out images of
        # docs/results/regimes/brain_mri_mri8_equispaced); each 2D pattern is its own
        op.mask_family = "lines" if mask_type in ("random", "equispaced") else mask_type
        return op
    if task == "cs":
        n = c * h * w
        if "m" in options and "ratio" in options:
            raise MedreconInputError("task 'cs' takes m or ratio, not both.")
        if "m" in options:
            m = as_positive_int(options["m"], "m")
        else:
            ratio = as_float(options.get("ratio", 0.25), "ratio", minimum=0.0, strict=True)
            m = max(1, round(ratio * n))
        return CompressedSensing(m, img_shape=(c, h, w), seed=seed, noise_model=nm)
    if task == "deblur":
        kernel = options.get("kernel", "uniform")
        if isinstance(kernel, str):
            check_choice(kernel, "kernel", ("uniform", "gaussian"))
            _check_kernel_fits(kernel, options, (h, w))
            if kernel == "uniform":
                if "sigma" in options:
                    raise MedreconInputError("option sigma is only used by kernel 'gaussian'.")
                kernel = uniform_kernel(options.get("size", 9))
            else:
                kernel = gaussian_kernel(options.get("sigma", 2.0), size=options.get("size"))
        elif "size" in options or "sigma" in options:
            raise MedreconInputError("options size/sigma apply to named kernels, not a tensor.")
        padding = options.get("padding", "reflect")
        check_choice(padding, "padding", PADDINGS)
        return Blur(kernel, padding=padding, noise_model=nm)
    return Identity(noise_model=nm)


def _check_kernel_fits(kernel: str, options: dict[str, Any], size: tuple[int, int]) -> None:
    """A named blur kernel's side (given, or ``2 ceil(3 sigma) + 1``) must fit the image (its
    half-width below the smaller side, as the padding needs), checked before it is allocated:
    ``size=100000`` asked for 40 GB."""
    if "size" in options:
        side = as_positive_int(options["size"], "size")
    elif kernel == "gaussian":
        side = 2 * math.ceil(3.0 * as_float(options.get("sigma", 2.0), "sigma", minimum=0.0)) + 1
    else:
        side = 9
    limit = 2 * min(size) - 1
    if side > limit:
        raise MedreconInputError(
            f"a {kernel} blur kernel of side {side} does not fit {size[0]}x{size[1]} images "
            f"(at most {limit}); choose a smaller size or sigma.")


def _inpaint_mask(options: dict[str, Any], size: tuple[int, int], seed: int) -> torch.Tensor:
    gen_options = {k: v for k, v in options.items() if k in _MASK_OPTIONS}
    if "mask" in options:
        if "mask_type" in options or gen_options:
            raise MedreconInputError(
                "task 'inpaint' got both mask and mask generator options; pass one of them.")
        mask = options["mask"]
        if isinstance(mask, (str, os.PathLike)):
            mask = load_mask(mask, size)
        elif not isinstance(mask, torch.Tensor):
            mask = torch.as_tensor(mask)
        if tuple(mask.shape[-2:]) != size:
            raise MedreconInputError(
                f"mask has shape {tuple(mask.shape)}, expected spatial size {size} (img_size).")
        if options.get("mask_is_missing", False):
            m = mask.float() if mask.dtype == torch.bool else mask
            if not torch.isfinite(m).all():  # NaN became observed (0) without a word
                raise MedreconInputError("the mask holds NaN/Inf values; expected 0 (observed) "
                                         "and nonzero (missing).")
            return missing_to_observed(mask)
        return mask
    if "mask_is_missing" in options:
        raise MedreconInputError("mask_is_missing applies only with an explicit mask.")
    mask_type = options.get("mask_type", "center_box")
    check_choice(mask_type, "mask_type", tuple(INPAINT_MASKS))
    fn = INPAINT_MASKS[mask_type]
    allowed = set(inspect.signature(fn).parameters) - {"shape", "seed"}
    wrong = sorted(set(gen_options) - allowed)
    if wrong:
        raise MedreconInputError(
            f"option(s) {', '.join(wrong)} do not apply to mask_type {mask_type!r}; its options "
            f"are {', '.join(sorted(allowed)) or 'none'}.")
    return fn(size, seed=seed, **gen_options)
