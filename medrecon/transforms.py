"""Transforms between image space (a volume with geometry) and generator space.

A StyleGAN2 prior produces ``R x R`` images with intensities in about ``[-1, 1]``. A scan is a
volume of arbitrary size, spacing and intensity scale. This module holds the three exactly
invertible steps that bridge the two (see ``docs/pipeline.md`` for the full rationale):

1. :class:`SliceOrientation` - volume ``(X, Y, Z)`` <-> stack of 2D slices ``[N, H, W]`` in
   radiological display orientation (a pure axis permutation plus flips: exact inverse).
2. :class:`IntensityWindow` - a per-volume affine intensity map taking the ``lower``/``upper``
   percentiles to ``-1``/``+1``. No clipping, so :meth:`IntensityWindow.invert` is exact.
3. :class:`GridFit` - the in-plane field of view of a slice onto the prior's ``R x R`` grid:
   isotropic (in millimetres) resampling so that the longer physical side spans ``R`` pixels,
   then centred constant padding. :meth:`GridFit.from_grid` crops the padding and resamples to
   any requested output grid over the same field of view.

All tensor transforms take ``[B, C, H, W]`` float tensors and do not store a device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medrecon.errors import MedreconInputError
from medrecon.io._paths import check_finite

__all__ = [
    "PLANES",
    "IntensityWindow",
    "GridFit",
    "SliceOrientation",
    "resize_fov",
]

#: Anatomical planes understood by :meth:`SliceOrientation.from_affine`.
PLANES = ("axial", "coronal", "sagittal")

# World (RAS) axis normal to each plane.
_PLANE_NORMAL = {"sagittal": 0, "coronal": 1, "axial": 2}


# ---------------------------------------------------------------------------------------------
# Intensity window
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IntensityWindow:
    """Affine intensity map ``v -> 2 (v - low) / (high - low) - 1`` with an exact inverse.

    Values outside ``[low, high]`` are *not* clipped: they map outside ``[-1, 1]`` and come back
    unchanged through :meth:`invert`, so nothing measured is lost in the round trip.

    Attributes:
        low: Intensity mapped to ``-1``.
        high: Intensity mapped to ``+1`` (always ``> low``).
    """

    low: float
    high: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.high <= self.low:
            raise MedreconInputError(
                f"IntensityWindow needs finite low < high; got low={self.low!r}, "
                f"high={self.high!r}. Pass two distinct finite intensities."
            )

    @classmethod
    def fit(
        cls,
        values: np.ndarray | torch.Tensor,
        *,
        lower: float = 0.5,
        upper: float = 99.5,
    ) -> "IntensityWindow":
        """Fit the window to the percentiles of ``values``.

        Args:
            values: Any array of intensities (a whole volume: one window per volume keeps the
                slices of a reconstruction consistent with each other).
            lower: Percentile (0-100) mapped to ``-1``. Default 0.5 ignores isolated dark noise.
            upper: Percentile (0-100) mapped to ``+1``. Default 99.5 ignores a few bright
                outliers (metal, contrast) that would otherwise compress the tissue range.

        Returns:
            The fitted window. A constant input gets the window ``[v - h, v + h]`` (``h`` 0.5,
            or ``1e-6 |v|`` for huge values) so it maps to ``0`` and still inverts exactly.

        Raises:
            MedreconInputError: on empty input, non-finite values or bad percentiles.
        """
        if not (0.0 <= lower < upper <= 100.0):
            raise MedreconInputError(
                f"percentiles must satisfy 0 <= lower < upper <= 100; got lower={lower}, "
                f"upper={upper}."
            )
        arr = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
        if arr.size == 0:
            raise MedreconInputError("cannot fit an intensity window to an empty array.")
        check_finite(arr, what="the image")
        lo, hi = np.percentile(arr.astype(np.float64, copy=False), [lower, upper])
        lo, hi = float(lo), float(hi)
        if hi - lo <= 1e-12 * max(1.0, abs(lo), abs(hi)):
            # Percentiles collapse (constant or nearly binary image): fall back to min/max.
            lo, hi = float(arr.min()), float(arr.max())
            if hi - lo <= 1e-12 * max(1.0, abs(lo), abs(hi)):
                half = max(0.5, abs(lo) * 1e-6)  # +-0.5 vanished at 1e17 (low == high)
                return cls(lo - half, lo + half)
        return cls(lo, hi)

    @property
    def scale(self) -> float:
        """Generator units per intensity unit, ``2 / (high - low)``."""
        return 2.0 / (self.high - self.low)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Map intensities to generator space (computed in float64, returned in x's dtype)."""
        y = (x.double() - self.low) * self.scale - 1.0
        return y.to(x.dtype) if x.is_floating_point() else y.float()

    def invert(self, y: torch.Tensor) -> torch.Tensor:
        """Map generator-space values back to intensities (exact inverse of :meth:`apply`)."""
        x = (y.double() + 1.0) / self.scale + self.low
        return x.to(y.dtype) if y.is_floating_point() else x.float()

    def invert_scale(self, s: torch.Tensor) -> torch.Tensor:
        """Map a generator-space *spread* (a standard deviation) to intensity units."""
        return (s.double() / self.scale).to(s.dtype)

    def to_dict(self) -> dict:
        """Parameters as a JSON-serialisable dict (stored in the result's ``info``)."""
        return {"low": self.low, "high": self.high}


# ---------------------------------------------------------------------------------------------
# Resampling keeping the field of view
# ---------------------------------------------------------------------------------------------
def resize_fov(x: torch.Tensor, size: Sequence[int], *, mode: str = "bicubic") -> torch.Tensor:
    """Resample ``[B, C, H, W]`` to ``size`` over the same field of view.

    Pixel centres follow the ``align_corners=False`` convention: the outer *edges* of the first
    and last pixels stay fixed, which is what keeping the physical field of view means. Shrinking
    uses antialiasing so it does not alias. A size equal to the input returns the input.

    Args:
        x: Real tensor ``[B, C, H, W]``.
        size: Target ``(H', W')``.
        mode: ``"bicubic"`` (default; images), ``"bilinear"`` or ``"nearest"`` (labels, masks).

    Returns:
        Tensor ``[B, C, H', W']`` with x's dtype.
    """
    size = (int(size[0]), int(size[1]))
    if min(size) < 1:
        raise MedreconInputError(f"target size must be positive; got {size}.")
    if tuple(x.shape[-2:]) == size:
        return x
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest-exact")
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=shrink)


@dataclass(frozen=True)
class GridFit:
    """How one slice's field of view sits on the prior's ``size x size`` grid.

    The slice (``shape`` pixels of ``spacing`` mm) covers ``shape * spacing`` mm. The longer
    physical side is mapped to ``size`` pixels, the other side to proportionally fewer, so the
    grid has square pixels of ``max(FOV) / size`` mm (the generator was trained on images with
    square pixels). The content is centred and the remainder is padded. The padding is split
    ``floor/ceil`` (top/left gets the smaller half).

    Attributes:
        shape: In-plane ``(H, W)`` of the slice in pixels.
        spacing: In-plane ``(dH, dW)`` pixel size in mm.
        size: Side of the prior grid ``R`` (or of an LR grid, see :meth:`for_super_resolution`).
        content: ``(h, w)`` pixels of the grid covered by the slice (``max(h, w) == size``).
        offset: ``(top, left)`` of the content in the grid.
    """

    shape: tuple[int, int]
    spacing: tuple[float, float]
    size: int
    content: tuple[int, int]
    offset: tuple[int, int]

    @classmethod
    def fit(cls, shape: Sequence[int], spacing: Sequence[float], size: int) -> "GridFit":
        """Compute the isotropic fit of a ``shape`` slice with ``spacing`` into ``size x size``.

        Args:
            shape: ``(H, W)`` in pixels.
            spacing: ``(dH, dW)`` in mm (any positive unit; only the ratio matters).
            size: Grid side.

        Raises:
            MedreconInputError: for non-positive shapes, spacings or size.
        """
        h, w = int(shape[0]), int(shape[1])
        sh, sw = float(spacing[0]), float(spacing[1])
        if h < 1 or w < 1 or size < 1:
            raise MedreconInputError(f"slice shape and grid size must be positive; got {shape}, {size}.")
        if not (sh > 0 and sw > 0 and math.isfinite(sh) and math.isfinite(sw)):
            raise MedreconInputError(
                f"pixel spacing must be positive and finite; got {spacing}. Check the file's "
                "header (pixdim / PixelSpacing)."
            )
        fov_h, fov_w = h * sh, w * sw
        pix = max(fov_h, fov_w) / size
        ch = min(size, max(1, int(round(fov_h / pix))))
        cw = min(size, max(1, int(round(fov_w / pix))))
        return cls((h, w), (sh, sw), int(size), (ch, cw), ((size - ch) // 2, (size - cw) // 2))

    @property
    def grid_spacing(self) -> tuple[float, float]:
        """Physical pixel size (mm) of the grid along ``(H, W)`` over the slice's exact FOV."""
        return (
            self.shape[0] * self.spacing[0] / self.content[0],
            self.shape[1] * self.spacing[1] / self.content[1],
        )

    def scaled(self, factor: int) -> "GridFit":
        """The same layout on a grid ``factor`` times finer (content and offsets scale exactly).

        Used by super-resolution: the fit is computed on the low-resolution grid ``R / factor``
        and scaled so that every LR pixel covers exactly ``factor x factor`` HR pixels.
        """
        return GridFit(
            self.shape,
            self.spacing,
            self.size * factor,
            (self.content[0] * factor, self.content[1] * factor),
            (self.offset[0] * factor, self.offset[1] * factor),
        )

    def valid_mask(self) -> torch.Tensor:
        """Boolean ``[size, size]``: True inside the content, False on the padding."""
        m = torch.zeros(self.size, self.size, dtype=torch.bool)
        t, l = self.offset
        m[t : t + self.content[0], l : l + self.content[1]] = True
        return m

    def operator(self, shape: Sequence[int] | None = None, *, mode: str = "bicubic"):
        """:meth:`from_grid` as a linear operator with exact adjoint and pseudo-inverse.

        Returns:
            :class:`medrecon.physics.GridResample` from the ``size x size`` grid to ``shape``
            (default the slice's own shape) over the slice's field of view.
        """
        from medrecon.physics.resample import GridResample

        out = self.shape if shape is None else (int(shape[0]), int(shape[1]))
        return GridResample(self.size, out, content=self.content, offset=self.offset, mode=mode)

    def to_grid(self, x: torch.Tensor, *, pad_value: float = -1.0, mode: str = "bicubic") -> torch.Tensor:
        """Resample ``[B, C, H, W]`` slices to the content size and pad to ``size x size``.

        Args:
            x: Slices, shape ``[B, C, *self.shape]``.
            pad_value: Constant for the padding, in x's units. Default ``-1`` is black in
                generator space, matching the dark background of radiological images.
            mode: Interpolation mode (see :func:`resize_fov`).
        """
        if tuple(x.shape[-2:]) != self.shape:
            raise MedreconInputError(f"GridFit expects slices of shape {self.shape}; got {tuple(x.shape[-2:])}.")
        y = resize_fov(x, self.content, mode=mode)
        t, l = self.offset
        b, r = self.size - t - self.content[0], self.size - l - self.content[1]
        return F.pad(y, (l, r, t, b), mode="constant", value=float(pad_value))

    def from_grid(
        self, y: torch.Tensor, *, shape: Sequence[int] | None = None, mode: str = "bicubic"
    ) -> torch.Tensor:
        """Crop the content out of ``[B, C, size, size]`` and resample it to ``shape``.

        Args:
            y: Grid images.
            shape: Output ``(H', W')`` over the slice's field of view; default the input shape.
            mode: Interpolation mode (see :func:`resize_fov`).
        """
        if tuple(y.shape[-2:]) != (self.size, self.size):
            raise MedreconInputError(
                f"GridFit.from_grid expects {self.size}x{self.size} images; got {tuple(y.shape[-2:])}."
            )
        t, l = self.offset
        c = y[..., t : t + self.content[0], l : l + self.content[1]]
        return resize_fov(c, self.shape if shape is None else shape, mode=mode)


# ---------------------------------------------------------------------------------------------
# Volume <-> slices
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SliceOrientation:
    """Which array axis is sliced and how each slice is turned into display orientation.

    A slice ``array.take(k, axis)`` has two in-plane array axes ``(a0, a1)`` (increasing order).
    The displayed slice is ``s.T`` when ``transpose`` and then flipped along rows/columns, so that
    rows run anterior->posterior (axial) or superior->inferior (coronal, sagittal) and columns
    run right->left (axial, coronal; radiological convention) or anterior->posterior (sagittal).
    Every step is a permutation, so :meth:`slices_to_volume` is the exact inverse.

    Attributes:
        axis: Array axis that is sliced (0, 1 or 2).
        transpose: Whether display rows follow ``a1`` (True) or ``a0`` (False).
        flip_rows: Reverse the display rows.
        flip_cols: Reverse the display columns.
        plane: Plane name, or ``"image"`` for 2D inputs kept in their stored layout.
    """

    axis: int
    transpose: bool
    flip_rows: bool
    flip_cols: bool
    plane: str

    @classmethod
    def from_affine(
        cls, affine: np.ndarray, shape: Sequence[int], *, plane: str | None = None, axis: int | None = None
    ) -> "SliceOrientation":
        """Orientation for slicing a volume of ``shape`` with a RAS ``affine``.

        Args:
            affine: 4x4 voxel-to-RAS matrix.
            shape: Volume shape ``(X, Y, Z)``.
            plane: ``"axial"``, ``"coronal"`` or ``"sagittal"``. If the volume has exactly one
                singleton axis (a 2D image) and ``plane`` is None, that axis is sliced and the
                stored pixel layout is kept (rows = array axis 1, columns = array axis 0, which
                is the DICOM/PNG row-column order).
            axis: Array axis to slice, when already known (e.g. from
                ``medrecon.io.slice_axis_for_plane``); computed from the affine otherwise.

        Raises:
            MedreconInputError: unknown plane or a shape that is not 3D.
        """
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3:
            raise MedreconInputError(f"expected a 3D volume (X, Y, Z); got shape {shape}.")
        if plane is not None and plane not in PLANES:
            raise MedreconInputError(f"unknown plane {plane!r}; expected one of {', '.join(PLANES)}.")
        singletons = [i for i, s in enumerate(shape) if s == 1]
        if plane is None and axis is None:
            if len(singletons) >= 1:
                ax = singletons[-1]
                return cls(ax, True, False, False, "image")
            plane = "axial"
        aff = np.asarray(affine, dtype=np.float64)[:3, :3]
        dirs = aff / np.maximum(np.linalg.norm(aff, axis=0, keepdims=True), 1e-12)  # columns = axis dirs
        if plane is None:  # axis given: name the plane by the world axis it is closest to
            world = int(np.argmax(np.abs(dirs[:, int(axis)])))
            plane = {v: k for k, v in _PLANE_NORMAL.items()}[world]
        if axis is None:
            axis = int(np.argmax(np.abs(dirs[_PLANE_NORMAL[plane], :])))
        if axis not in (0, 1, 2):
            raise MedreconInputError(f"slice axis must be 0, 1 or 2; got {axis}.")
        a0, a1 = [i for i in range(3) if i != axis]
        # Display convention in RAS (+x right, +y anterior, +z superior): rows run A->P (axial)
        # or S->I (coronal, sagittal); columns run R->L (axial, coronal: radiological view, the
        # patient's right on the viewer's left) or A->P (sagittal). All are decreasing RAS
        # coordinates, hence the -1 signs.
        row_world = 1 if plane == "axial" else 2
        col_world = 1 if plane == "sagittal" else 0
        row_sign = col_sign = -1.0
        # Pick the in-plane array axis most aligned with the row world axis.
        if abs(dirs[row_world, a1]) > abs(dirs[row_world, a0]):
            row_ax, col_ax, transpose = a1, a0, True
        else:
            row_ax, col_ax, transpose = a0, a1, False
        flip_rows = bool(np.sign(dirs[row_world, row_ax]) != np.sign(row_sign))
        flip_cols = bool(np.sign(dirs[col_world, col_ax]) != np.sign(col_sign))
        return cls(int(axis), transpose, flip_rows, flip_cols, plane)

    def volume_to_slices(self, vol: torch.Tensor) -> torch.Tensor:
        """``(X, Y, Z)`` -> ``[N, H, W]`` display-oriented slices (a view when possible)."""
        if vol.ndim != 3:
            raise MedreconInputError(f"expected a 3D volume; got shape {tuple(vol.shape)}.")
        s = torch.movedim(vol, self.axis, 0)  # [N, a0, a1]
        if self.transpose:
            s = s.transpose(1, 2)
        dims = [d for d, f in ((1, self.flip_rows), (2, self.flip_cols)) if f]
        return torch.flip(s, dims) if dims else s

    def slices_to_volume(self, slices: torch.Tensor) -> torch.Tensor:
        """Exact inverse of :meth:`volume_to_slices` (``[N, H, W]`` -> volume)."""
        if slices.ndim != 3:
            raise MedreconInputError(f"expected slices [N, H, W]; got shape {tuple(slices.shape)}.")
        dims = [d for d, f in ((1, self.flip_rows), (2, self.flip_cols)) if f]
        s = torch.flip(slices, dims) if dims else slices
        if self.transpose:
            s = s.transpose(1, 2)
        return torch.movedim(s, 0, self.axis).contiguous()

    def inplane_axes(self) -> tuple[int, int]:
        """Array axes that become display ``(rows, columns)``."""
        a0, a1 = [i for i in range(3) if i != self.axis]
        return (a1, a0) if self.transpose else (a0, a1)

    def inplane_spacing(self, spacing: Sequence[float]) -> tuple[float, float]:
        """Display ``(row, column)`` pixel size from the volume's per-axis ``spacing``."""
        r, c = self.inplane_axes()
        return float(spacing[r]), float(spacing[c])
