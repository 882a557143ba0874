"""Seeded mask generators for inpainting and Cartesian MRI, and mask file loading.

Convention: every mask returned here is a ``float32`` tensor ``[H, W]`` of 0/1 where
**1 marks an OBSERVED pixel / acquired k-space sample**, which is what the operators take. Mask
files given to the CLI (``--mask``) mark MISSING pixels: convert them with
:func:`missing_to_observed`.

Randomness comes only from the ``seed`` argument (a private ``numpy.random.Generator``); the
global numpy and torch RNGs are never touched, and the same seed gives the same mask on every
platform. Deterministic generators accept ``seed`` too (ignored) so that all share one call shape
``fn(shape, *, <options>, seed=0)``.

MRI masks are centred (DC at ``W // 2``) and vary along the last axis (phase encoding, one
column per readout line, the fastMRI layout); the acceleration is met exactly: the mask keeps
``round(H * W / acceleration)`` samples (``round(W / acceleration)`` lines for 1D masks), the
fully sampled centre included.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medrecon.errors import MedreconInputError
from medrecon.physics._utils import as_float, as_positive_int, as_size2, check_choice

__all__ = [
    "INPAINT_MASKS",
    "MRI_MASKS",
    "center_box",
    "equispaced_lines",
    "free_form",
    "half_image",
    "load_mask",
    "missing_to_observed",
    "random_boxes",
    "random_lines",
    "random_pixels",
    "variable_density_2d",
]


def _rng(seed: Any) -> np.random.Generator:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or int(seed) < 0:
        raise MedreconInputError(f"seed must be a non-negative int, got {seed!r}.")
    return np.random.default_rng(int(seed))


def _out(mask: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))


def _fraction(value: Any, name: str, *, allow_zero: bool = False, allow_one: bool = False
              ) -> float:
    v = as_float(value, name)
    lo_ok = v >= 0.0 if allow_zero else v > 0.0
    hi_ok = v <= 1.0 if allow_one else v < 1.0
    if not (lo_ok and hi_ok):
        rng = ("[0" if allow_zero else "(0") + ", " + ("1]" if allow_one else "1)")
        raise MedreconInputError(f"{name} must be in {rng}, got {value!r}.")
    return v


# ------------------------------------------------------------------------------------------
# Inpainting
# ------------------------------------------------------------------------------------------
def center_box(shape: Any, *, box_fraction: float = 0.5, seed: int = 0) -> torch.Tensor:
    """Everything observed except a centred box.

    Args:
        shape: ``H`` or ``(H, W)``.
        box_fraction: Side of the missing box as a fraction of each image side, in ``(0, 1)``.
            Default 0.5 (a quarter of the pixels missing).
        seed: Ignored (deterministic).

    Returns:
        ``float32`` ``[H, W]``, 1 = observed.
    """
    h, w = as_size2(shape, "shape")
    f = _fraction(box_fraction, "box_fraction")
    bh, bw = max(1, round(h * f)), max(1, round(w * f))
    top, left = (h - bh) // 2, (w - bw) // 2
    m = np.ones((h, w), np.float32)
    m[top: top + bh, left: left + bw] = 0
    return _out(m)


def random_boxes(shape: Any, *, n_boxes: int = 3, min_fraction: float = 0.1,
                 max_fraction: float = 0.3, seed: int = 0) -> torch.Tensor:
    """Randomly placed and sized missing rectangles (they may overlap).

    Args:
        shape: ``H`` or ``(H, W)``.
        n_boxes: Number of boxes. Default 3.
        min_fraction: Smallest box side as a fraction of the image side. Default 0.1.
        max_fraction: Largest box side as a fraction of the image side. Default 0.3.
        seed: Seed. Default 0.

    Returns:
        ``float32`` ``[H, W]``, 1 = observed.
    """
    h, w = as_size2(shape, "shape")
    n = as_positive_int(n_boxes, "n_boxes")
    lo = _fraction(min_fraction, "min_fraction")
    hi = _fraction(max_fraction, "max_fraction", allow_one=True)
    if lo > hi:
        raise MedreconInputError(
            f"min_fraction ({lo}) must be <= max_fraction ({hi}).")
    rng = _rng(seed)
    m = np.ones((h, w), np.float32)
    for _ in range(n):
        bh = max(1, round(h * rng.uniform(lo, hi)))
        bw = max(1, round(w * rng.uniform(lo, hi)))
        top = int(rng.integers(0, h - bh + 1))
        left = int(rng.integers(0, w - bw + 1))
        m[top: top + bh, left: left + bw] = 0
    return _out(m)


def free_form(shape: Any, *, n_strokes: int = 4, max_vertices: int = 6,
              max_length: float = 0.3, max_width: float = 0.08, seed: int = 0) -> torch.Tensor:
    """Free-form brush strokes (DeepFill v2 / SN-PatchGAN style): thick random polylines.

    Each stroke starts at a random point and takes up to ``max_vertices`` segments of random
    direction and length; every pixel closer than half the stroke width to a segment is
    missing. Rasterised with vectorised point-to-segment distances (no loop over pixels).

    Args:
        shape: ``H`` or ``(H, W)``.
        n_strokes: Number of strokes. Default 4.
        max_vertices: Maximum segments per stroke. Default 6.
        max_length: Maximum segment length, fraction of the smaller side. Default 0.3.
        max_width: Maximum stroke width, fraction of the smaller side. Default 0.08.
        seed: Seed. Default 0.

    Returns:
        ``float32`` ``[H, W]``, 1 = observed.
    """
    h, w = as_size2(shape, "shape")
    n = as_positive_int(n_strokes, "n_strokes")
    nv = as_positive_int(max_vertices, "max_vertices")
    max_len = _fraction(max_length, "max_length", allow_one=True) * min(h, w)
    max_wid = _fraction(max_width, "max_width", allow_one=True) * min(h, w)
    rng = _rng(seed)
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64),
                         indexing="ij")
    missing = np.zeros((h, w), bool)
    for _ in range(n):
        y0, x0 = rng.uniform(0, h - 1), rng.uniform(0, w - 1)
        half = 0.5 * max(1.0, rng.uniform(0.3 * max_wid, max_wid))
        for _ in range(int(rng.integers(1, nv + 1))):
            angle = rng.uniform(0, 2 * math.pi)
            length = rng.uniform(0.2 * max_len, max_len)
            y1 = float(np.clip(y0 + length * math.sin(angle), 0, h - 1))
            x1 = float(np.clip(x0 + length * math.cos(angle), 0, w - 1))
            dy, dx = y1 - y0, x1 - x0
            seg2 = dy * dy + dx * dx
            t = np.zeros_like(yy) if seg2 == 0 else np.clip(
                ((yy - y0) * dy + (xx - x0) * dx) / seg2, 0.0, 1.0)
            dist2 = (yy - (y0 + t * dy)) ** 2 + (xx - (x0 + t * dx)) ** 2
            missing |= dist2 <= half * half
            y0, x0 = y1, x1
    return _out(~missing)


def random_pixels(shape: Any, *, observed_fraction: float = 0.2, seed: int = 0
                  ) -> torch.Tensor:
    """Exactly ``round(observed_fraction * H * W)`` observed pixels, uniformly at random.

    Args:
        shape: ``H`` or ``(H, W)``.
        observed_fraction: Fraction of observed pixels in ``(0, 1]``. Default 0.2.
        seed: Seed. Default 0.

    Returns:
        ``float32`` ``[H, W]``, 1 = observed.
    """
    h, w = as_size2(shape, "shape")
    f = _fraction(observed_fraction, "observed_fraction", allow_one=True)
    k = max(1, round(f * h * w))
    m = np.zeros(h * w, np.float32)
    m[_rng(seed).permutation(h * w)[:k]] = 1
    return _out(m.reshape(h, w))


def half_image(shape: Any, *, side: str = "bottom", seed: int = 0) -> torch.Tensor:
    """One half of the image missing.

    Args:
        shape: ``H`` or ``(H, W)``.
        side: Missing half: ``'bottom'`` (default), ``'top'``, ``'left'`` or ``'right'``. For
            odd sizes the missing half is the smaller one.
        seed: Ignored (deterministic).

    Returns:
        ``float32`` ``[H, W]``, 1 = observed.
    """
    h, w = as_size2(shape, "shape")
    check_choice(side, "side", ("bottom", "top", "left", "right"))
    m = np.ones((h, w), np.float32)
    if side == "bottom":
        m[h - h // 2:] = 0
    elif side == "top":
        m[: h // 2] = 0
    elif side == "right":
        m[:, w - w // 2:] = 0
    else:
        m[:, : w // 2] = 0
    return _out(m)


# ------------------------------------------------------------------------------------------
# MRI
# ------------------------------------------------------------------------------------------
def _accel(acceleration: Any) -> float:
    a = as_float(acceleration, "acceleration")
    if a < 1.0:
        raise MedreconInputError(
            f"acceleration must be >= 1 (1 = fully sampled), got {acceleration!r}.")
    return a


def _centre(n: int, center_fraction: Any) -> tuple[int, int]:
    """Start and count of the fully sampled centre lines (fastMRI rounding and placement)."""
    cf = _fraction(center_fraction, "center_fraction", allow_zero=True, allow_one=True)
    n_low = round(n * cf)
    return (n - n_low + 1) // 2, n_low


def _budget(total: int, acceleration: float, n_centre: int, what: str, cf: Any) -> int:
    n_keep = max(1, round(total / acceleration))
    if n_centre > n_keep:
        raise MedreconInputError(
            f"acceleration {acceleration:g} cannot be met with center_fraction {cf!r}: the fully "
            f"sampled centre alone has {n_centre} {what}, the acceleration allows {n_keep} of "
            f"{total}. Lower center_fraction or the acceleration.")
    return n_keep


def random_lines(shape: Any, *, acceleration: float = 4.0, center_fraction: float = 0.08,
                 seed: int = 0) -> torch.Tensor:
    """1D random Cartesian lines with a fully sampled centre (fastMRI ``RandomMaskFunc`` layout).

    The centre ``round(W * center_fraction)`` columns are acquired; the other
    ``round(W / acceleration) - n_centre`` lines are drawn uniformly without replacement
    (exact count, where fastMRI draws a Bernoulli count with that expectation).

    Args:
        shape: ``H`` or ``(H, W)``; lines are columns (vary along ``W``).
        acceleration: ``W / acquired lines``, ``>= 1``. Default 4.
        center_fraction: Fraction of fully sampled centre columns in ``[0, 1]``. Default 0.08.
        seed: Seed. Default 0.

    Returns:
        ``float32`` ``[H, W]``, 1 = acquired.
    """
    h, w = as_size2(shape, "shape")
    a = _accel(acceleration)
    start, n_low = _centre(w, center_fraction)
    n_keep = _budget(w, a, n_low, "lines", center_fraction)
    lines = np.zeros(w, bool)
    lines[start: start + n_low] = True
    others = np.flatnonzero(~lines)
    lines[_rng(seed).choice(others, size=n_keep - n_low, replace=False)] = True
    return _out(np.broadcast_to(lines, (h, w)))


def equispaced_lines(shape: Any, *, acceleration: float = 4.0, center_fraction: float = 0.08,
                     seed: int = 0) -> torch.Tensor:
    """1D equispaced Cartesian lines plus a fully sampled centre.

    Outside the centre, lines are taken every ``spacing`` columns from a random offset
    (fastMRI ``EquispacedMaskFractionFunc``: the spacing is adapted so that the total count
    matches the acceleration), then trimmed/filled to exactly ``round(W / acceleration)`` lines.

    Args:
        shape: ``H`` or ``(H, W)``.
        acceleration: ``W / acquired lines``, ``>= 1``. Default 4.
        center_fraction: Fraction of fully sampled centre columns. Default 0.08.
        seed: Seed of the offset. Default 0.

    Returns:
        ``float32`` ``[H, W]``, 1 = acquired.
    """
    h, w = as_size2(shape, "shape")
    a = _accel(acceleration)
    start, n_low = _centre(w, center_fraction)
    n_keep = _budget(w, a, n_low, "lines", center_fraction)
    lines = np.zeros(w, bool)
    lines[start: start + n_low] = True
    n_extra = n_keep - n_low
    if n_extra > 0:
        others = np.flatnonzero(~lines)
        spacing = len(others) / n_extra
        offset = _rng(seed).uniform(0, spacing)
        idx = np.floor(offset + spacing * np.arange(n_extra)).astype(int)
        lines[others[np.clip(idx, 0, len(others) - 1)]] = True
    return _out(np.broadcast_to(lines, (h, w)))


def _poisson_disc(h: int, w: int, n_target: int, fixed: np.ndarray, rng: np.random.Generator,
                  *, max_passes: int = 10) -> np.ndarray:
    """Variable-density Poisson-disc sampling by greedy dart throwing on the pixel grid.

    The exclusion radius grows linearly with the distance to the centre
    (``r(p) = scale * (1 + 2 * |p|)``, ``|p|`` normalised to [0, 1] at the edge midpoints), so the
    density falls off roughly as ``1 / (1 + 2 |p|)^2``. ``scale`` is found by bisection so that
    the count is close to ``n_target``; the result is then trimmed/filled to exactly
    ``n_target``. Cost: ``O(H W)`` Python steps per pass.
    """
    yy, xx = np.meshgrid((np.arange(h) - h // 2) / max(h / 2, 1),
                         (np.arange(w) - w // 2) / max(w / 2, 1), indexing="ij")
    rad = np.sqrt(yy ** 2 + xx ** 2)
    cand = np.flatnonzero(~fixed.ravel())
    order = cand[rng.permutation(len(cand))]

    def throw(scale: float) -> np.ndarray:
        acc = np.zeros((h, w), bool)
        for p in order:
            y, x = divmod(int(p), w)
            r = scale * (1.0 + 2.0 * rad[y, x])
            ri = int(r)
            y0, y1, x0, x1 = max(0, y - ri), min(h, y + ri + 1), max(0, x - ri), min(w, x + ri + 1)
            win = acc[y0:y1, x0:x1]
            if win.any():
                dy = np.arange(y0, y1)[:, None] - y
                dx = np.arange(x0, x1)[None, :] - x
                if (win & (dy * dy + dx * dx < r * r)).any():
                    continue
            acc[y, x] = True
        return acc

    lo, hi = 0.25, float(max(h, w))
    best, best_err = np.zeros((h, w), bool), math.inf
    for _ in range(max_passes):
        mid = math.sqrt(lo * hi)  # geometric bisection on the radius scale
        acc = throw(mid)
        count = int(acc.sum())
        if abs(count - n_target) < best_err:
            best, best_err = acc, abs(count - n_target)
        if best_err <= max(1, n_target // 50):
            break
        if count > n_target:
            lo = mid
        else:
            hi = mid
    chosen = np.flatnonzero(best.ravel())
    if len(chosen) > n_target:
        chosen = rng.choice(chosen, size=n_target, replace=False)
    elif len(chosen) < n_target:
        rest = np.setdiff1d(cand, chosen)
        weight = 1.0 / (1.0 + 2.0 * rad.ravel()[rest]) ** 2
        extra = rng.choice(rest, size=n_target - len(chosen), replace=False, p=weight / weight.sum())
        chosen = np.concatenate([chosen, extra])
    out = np.zeros(h * w, bool)
    out[chosen] = True
    return out.reshape(h, w)


def variable_density_2d(shape: Any, *, acceleration: float = 4.0, center_fraction: float = 0.08,
                        kind: str = "gaussian", sigma: float = 0.5, seed: int = 0
                        ) -> torch.Tensor:
    """2D variable-density random k-space sampling with a fully sampled centre square.

    Exactly ``round(H * W / acceleration)`` samples, including the centre block of
    ``round(H * cf) x round(W * cf)`` samples.

    Args:
        shape: ``H`` or ``(H, W)``.
        acceleration: ``H * W / acquired samples``, ``>= 1``. Default 4.
        center_fraction: Side of the fully sampled centre as a fraction of each side.
            Default 0.08.
        kind: ``'gaussian'`` (default): the other samples are drawn without replacement with
            probability ``exp(-(u^2 + v^2) / (2 sigma^2))`` (``u, v`` in ``[-1, 1]``);
            ``'poisson'``: variable-density Poisson-disc (no two samples closer than a radius
            growing with the distance to the centre; slower, ``O(H W)`` Python steps per pass).
        sigma: Width of the Gaussian density in normalised units. Default 0.5.
        seed: Seed. Default 0.

    Returns:
        ``float32`` ``[H, W]``, 1 = acquired.
    """
    h, w = as_size2(shape, "shape")
    a = _accel(acceleration)
    check_choice(kind, "kind", ("gaussian", "poisson"))
    s = as_float(sigma, "sigma", minimum=0.0, strict=True)
    sy, ny = _centre(h, center_fraction)
    sx, nx = _centre(w, center_fraction)
    fixed = np.zeros((h, w), bool)
    fixed[sy: sy + ny, sx: sx + nx] = True
    n_keep = _budget(h * w, a, ny * nx, "samples", center_fraction)
    n_extra = n_keep - ny * nx
    rng = _rng(seed)
    if n_extra == 0:
        return _out(fixed)
    if kind == "gaussian":
        yy, xx = np.meshgrid((np.arange(h) - h // 2) / max(h / 2, 1),
                             (np.arange(w) - w // 2) / max(w / 2, 1), indexing="ij")
        dens = np.exp(-(yy ** 2 + xx ** 2) / (2 * s * s)).ravel()
        cand = np.flatnonzero(~fixed.ravel())
        # Weighted sampling without replacement (Efraimidis-Spirakis keys), exact count.
        keys = np.log(rng.uniform(size=len(cand))) / np.maximum(dens[cand], 1e-300)
        chosen = cand[np.argsort(-keys)[:n_extra]]
        out = fixed.ravel().copy()
        out[chosen] = True
        return _out(out.reshape(h, w))
    extra = _poisson_disc(h, w, n_extra, fixed, rng)
    return _out(fixed | extra)


# ------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------
def load_mask(path: str | os.PathLike[str], shape: Any = None) -> torch.Tensor:
    """Read a 2D mask from PNG/JPEG/TIFF/BMP, ``.npy`` or NIfTI (``.nii``, ``.nii.gz``).

    Every nonzero value becomes 1 (any nonzero channel for colour images). The array is used as
    stored (rows = first axis; for NIfTI the voxel array's first axis, squeezed of singleton
    axes, no reorientation). The meaning of 1 is the file's: masks for the operators mark
    observed pixels; CLI mask files mark missing ones (see :func:`missing_to_observed`).

    Args:
        path: File path.
        shape: Expected ``H`` or ``(H, W)``; checked when given.

    Returns:
        ``float32`` ``[H, W]`` of 0/1.
    """
    p = Path(path)
    if not p.is_file():
        raise MedreconInputError(f"mask file {str(p)!r} does not exist or is not a file.")
    name = p.name.lower()
    try:
        if name.endswith(".npy"):
            arr = np.load(p, allow_pickle=False)
        elif name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            arr = np.asarray(nib.load(str(p)).dataobj)
        elif name.endswith((".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")):
            from PIL import Image

            with Image.open(p) as im:
                arr = np.asarray(im)
            if arr.ndim == 3:
                arr = np.abs(arr.astype(np.float64)).max(axis=-1)
        else:
            raise MedreconInputError(
                f"unsupported mask file {p.name!r}; expected .png, .jpg, .tif, .bmp, .npy, .nii "
                f"or .nii.gz.")
    except MedreconInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad input file
        raise MedreconInputError(f"cannot read mask file {str(p)!r}: {exc}") from None
    arr = np.squeeze(np.asarray(arr))
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number) and arr.dtype != bool:
        raise MedreconInputError(
            f"mask file {p.name!r} holds an array of shape {arr.shape} and dtype {arr.dtype}; "
            f"expected a 2D numeric mask.")
    if np.iscomplexobj(arr) or not np.isfinite(arr.astype(np.float64)).all():
        raise MedreconInputError(f"mask file {p.name!r} has complex or NaN/Inf values.")
    m = _out(arr != 0)
    if shape is not None:
        expected = as_size2(shape, "shape")
        if tuple(m.shape) != expected:
            raise MedreconInputError(
                f"mask file {p.name!r} has shape {tuple(m.shape)}, expected {expected}. Resize "
                f"the mask to the image size (nearest neighbour).")
    return m


def missing_to_observed(mask: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Turn a mask marking MISSING pixels (nonzero = missing) into an operator mask (1 = observed).

    Args:
        mask: Tensor or array; nonzero entries mark missing pixels.

    Returns:
        ``float32`` tensor of the same shape, ``1`` where the input was zero.
    """
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(np.ascontiguousarray(mask))
    if not isinstance(mask, torch.Tensor):
        raise MedreconInputError(
            f"mask must be a tensor or numpy array, got {type(mask).__name__}.")
    return (mask == 0).to(torch.float32)


#: Inpainting mask generators by name (``build_operator(..., mask_type=...)``).
INPAINT_MASKS: dict[str, Callable[..., torch.Tensor]] = {
    "center_box": center_box,
    "random_boxes": random_boxes,
    "free_form": free_form,
    "random_pixels": random_pixels,
    "half": half_image,
}

#: MRI mask generators by name.
MRI_MASKS: dict[str, Callable[..., torch.Tensor]] = {
    "random": random_lines,
    "equispaced": equispaced_lines,
    "gaussian2d": lambda shape, **kw: variable_density_2d(shape, kind="gaussian", **kw),
    "poisson2d": lambda shape, **kw: variable_density_2d(shape, kind="poisson", **kw),
}
