"""Voxel-to-world geometry helpers (RAS+ affines, LPS conversion, zoomed grids, planes).

Every :class:`~medrecon.io.MedicalImage` carries a 4x4 ``affine`` mapping voxel indices
``(i, j, k, 1)`` to RAS+ world coordinates in millimetres (the NIfTI / nibabel convention).
DICOM and ITK use LPS+; the conversion between the two is a sign flip of the first two world
axes and stays inside :mod:`medrecon.io`.

Conventions used throughout:

* Voxel ``(i, j, k)`` is the *centre* of a voxel; the voxel covers ``[i - 0.5, i + 0.5]``.
* Column ``n`` of ``affine[:3, :3]`` is the world step of one voxel along array axis ``n``; its
  norm is the spacing and its direction the direction cosine of that axis.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from nibabel.orientations import io_orientation

from medrecon.errors import MedreconInputError

__all__ = [
    "LPS_TO_RAS",
    "PLANES",
    "check_affine",
    "lps_to_ras",
    "ras_to_lps",
    "affine_from_geometry",
    "resample_affine_for_zoom",
    "slice_axis_for_plane",
    "plane_of_axis",
]

#: Diagonal flip between LPS+ (DICOM, ITK) and RAS+ (NIfTI); it is its own inverse.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: Anatomical planes and the RAS world axis normal to each (0 = R, 1 = A, 2 = S).
PLANES = {"sagittal": 0, "coronal": 1, "axial": 2}


def check_affine(affine: object, *, name: str = "affine") -> np.ndarray:
    """Validate and return a 4x4 float64 voxel-to-world affine.

    Args:
        affine: Array-like of shape ``(4, 4)``.
        name: Name used in error messages.

    Returns:
        A new contiguous float64 array.

    Raises:
        MedreconInputError: Wrong shape, non-finite entries, a last row other than
            ``[0, 0, 0, 1]``, or a singular 3x3 part.
    """
    try:
        a = np.array(affine, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise MedreconInputError(
            f"{name} must be a 4x4 numeric matrix; got {type(affine).__name__} that numpy cannot "
            f"convert ({exc}). Pass e.g. numpy.eye(4) or an affine read from a file."
        ) from None
    if a.shape != (4, 4):
        raise MedreconInputError(
            f"{name} must have shape (4, 4); got {a.shape}. Pass a homogeneous voxel-to-world "
            "matrix (e.g. nibabel's img.affine)."
        )
    if not np.all(np.isfinite(a)):
        raise MedreconInputError(f"{name} has non-finite entries ({_one_line(a)}); expected finite "
                                 "values: repair the file's geometry (e.g. its NIfTI sform/qform).")
    if not np.allclose(a[3], [0.0, 0.0, 0.0, 1.0]):
        raise MedreconInputError(
            f"{name} last row must be [0, 0, 0, 1]; got {a[3].tolist()}. Use a homogeneous affine."
        )
    if abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise MedreconInputError(
            f"{name} is singular, a zero spacing or collinear axes ({_one_line(a)}); expected "
            "three independent axis vectors of non-zero length: repair the file's geometry "
            "(e.g. a zero NIfTI pixdim or srow)."
        )
    return a


def _one_line(a: np.ndarray) -> str:
    """A matrix on one line, rows as lists (for error messages)."""
    return str(np.round(a, 6).tolist())


def lps_to_ras(affine_lps: np.ndarray) -> np.ndarray:
    """Convert a voxel->LPS+ affine (DICOM/ITK) into a voxel->RAS+ affine (NIfTI)."""
    return LPS_TO_RAS @ np.asarray(affine_lps, dtype=np.float64)


def ras_to_lps(affine_ras: np.ndarray) -> np.ndarray:
    """Convert a voxel->RAS+ affine (NIfTI) into a voxel->LPS+ affine (DICOM/ITK)."""
    return LPS_TO_RAS @ np.asarray(affine_ras, dtype=np.float64)


def affine_from_geometry(
    spacing: Sequence[float],
    origin: Sequence[float],
    direction: np.ndarray | None = None,
) -> np.ndarray:
    """Build a 4x4 affine from spacing, origin and a direction-cosine matrix (same frame).

    Args:
        spacing: Three voxel sizes in mm (positive).
        origin: World position of voxel ``(0, 0, 0)``'s centre.
        direction: 3x3 matrix whose columns are the unit direction of each array axis;
            identity when ``None``.

    Returns:
        ``A`` with ``A[:3, :3] = direction @ diag(spacing)`` and ``A[:3, 3] = origin``.
    """
    d = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
    a = np.eye(4)
    a[:3, :3] = d @ np.diag(np.asarray(spacing, dtype=np.float64))
    a[:3, 3] = np.asarray(origin, dtype=np.float64)
    return check_affine(a)


def resample_affine_for_zoom(affine: np.ndarray, zoom_per_axis: Sequence[float]) -> np.ndarray:
    """Affine of the same field of view sampled on a grid zoomed by ``zoom_per_axis``.

    Convention: the *outer corners* of the field of view are preserved. An axis with ``n``
    voxels covers voxel coordinates ``[-0.5, n - 0.5]``; after zooming by ``z`` it holds ``n * z``
    voxels of size ``spacing / z`` covering the same world interval. The centre of new voxel ``j``
    therefore sits at old voxel coordinate ``(j + 0.5) / z - 0.5``, i.e.::

        new_affine = affine @ [[1/z0, 0, 0, (1/z0 - 1)/2],
                               [0, 1/z1, 0, (1/z1 - 1)/2],
                               [0, 0, 1/z2, (1/z2 - 1)/2],
                               [0, 0, 0, 1]]

    Example: super-resolution x4 in-plane is ``zoom_per_axis=(4, 4, 1)``; the spacing becomes a
    quarter and the first voxel centre moves 3/8 of an old voxel towards the corner.
    Factors below 1 describe downsampling with the same convention.

    Args:
        affine: 4x4 voxel-to-world affine of the original grid.
        zoom_per_axis: One positive factor per array axis (2 or 3 values; a missing third
            value means 1).

    Returns:
        The 4x4 float64 affine of the zoomed grid.

    Raises:
        MedreconInputError: Bad affine or non-positive / non-finite factors.
    """
    a = check_affine(affine)
    z = np.asarray(tuple(zoom_per_axis), dtype=np.float64).ravel()
    if z.size == 2:
        z = np.append(z, 1.0)
    if z.size != 3 or not np.all(np.isfinite(z)) or np.any(z <= 0):
        raise MedreconInputError(
            f"zoom_per_axis must be 2 or 3 positive finite factors; got {tuple(zoom_per_axis)}. "
            "Example: (4, 4, 1) for x4 in-plane super-resolution."
        )
    scale = np.eye(4)
    scale[:3, :3] = np.diag(1.0 / z)
    scale[:3, 3] = (1.0 / z - 1.0) / 2.0
    return a @ scale


def _plane_name(plane: str) -> str:
    key = str(plane).strip().lower()
    aliases = {"transverse": "axial", "transversal": "axial", "frontal": "coronal"}
    key = aliases.get(key, key)
    if key not in PLANES:
        raise MedreconInputError(
            f"unknown plane {plane!r}; expected one of {sorted(PLANES)}."
        )
    return key


def slice_axis_for_plane(affine: np.ndarray, plane: str) -> int:
    """Array axis along which to slice to obtain images in an anatomical plane.

    The axis is the one whose direction cosine is closest to the plane's normal
    (axial: S, coronal: A, sagittal: R), resolved jointly for all axes with
    :func:`nibabel.orientations.io_orientation` so oblique acquisitions get a consistent,
    one-to-one assignment.

    Args:
        affine: 4x4 voxel-to-RAS affine.
        plane: ``'axial'``, ``'coronal'`` or ``'sagittal'`` (``'transverse'`` is accepted).

    Returns:
        The array axis (0, 1 or 2). Indexing ``array[..., k]`` along it yields the plane.
    """
    world = PLANES[_plane_name(plane)]
    ornt = io_orientation(check_affine(affine))
    for axis, (w, _flip) in enumerate(ornt):
        if np.isfinite(w) and int(w) == world:
            return axis
    # io_orientation can leave an axis unassigned for degenerate affines; fall back to argmax.
    cos = np.abs(check_affine(affine)[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0))
    return int(np.argmax(cos[world]))


def plane_of_axis(affine: np.ndarray, axis: int) -> str:
    """Anatomical plane obtained by slicing along ``axis`` (inverse of :func:`slice_axis_for_plane`).

    Args:
        affine: 4x4 voxel-to-RAS affine.
        axis: Array axis, 0..2 (negative values count from the end).

    Returns:
        ``'axial'``, ``'coronal'`` or ``'sagittal'``.
    """
    if not isinstance(axis, (int, np.integer)) or not -3 <= int(axis) <= 2:
        raise MedreconInputError(f"axis must be an integer in [-3, 2]; got {axis!r}.")
    axis = int(axis) % 3
    for name in PLANES:
        if slice_axis_for_plane(affine, name) == axis:
            return name
    raise AssertionError("unreachable: the three planes cover the three axes")  # pragma: no cover
