"""The :class:`MedicalImage` container: a float32 voxel array plus its RAS+ affine and metadata."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medrecon.errors import MedreconInputError
from medrecon.io._paths import check_float32_range
from medrecon.io.geometry import check_affine, resample_affine_for_zoom

__all__ = ["MedicalImage"]


def _as_volume(array: object, *, name: str = "array") -> np.ndarray:
    """Return ``array`` as a contiguous float32 ``(X, Y, Z)`` array (2D promoted to Z = 1)."""
    if hasattr(array, "detach") and hasattr(array, "cpu"):  # torch.Tensor without importing torch
        array = array.detach().cpu().numpy()
    try:
        a = np.asarray(array)
    except (TypeError, ValueError) as exc:
        raise MedreconInputError(
            f"{name} must be a numeric array; got {type(array).__name__} ({exc})."
        ) from None
    if a.dtype.kind == "c":
        raise MedreconInputError(
            f"{name} is complex ({a.dtype}); expected a real image. Pass the magnitude "
            "(numpy.abs) or the real part explicitly."
        )
    if a.dtype.kind not in "biuf":
        raise MedreconInputError(f"{name} must be numeric; got dtype {a.dtype}.")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3:
        raise MedreconInputError(
            f"{name} must be 2D (X, Y) or 3D (X, Y, Z); got shape {a.shape}. Select one volume "
            "of a 4D series first (load_image(..., volume=N))."
        )
    if min(a.shape) < 1:
        raise MedreconInputError(f"{name} is empty (shape {a.shape}): it holds no pixel; "
                                 "expected an image.")
    check_float32_range(a, what=name)
    return np.ascontiguousarray(a, dtype=np.float32)


def thin_axis(shape: tuple[int, ...]) -> int:
    """The axis a 3D image's one slice lies across: ``Z`` (2) when it has one voxel or no axis
    has, else the last single-voxel axis (a coronal slice stored ``X x 1 x Z``: 1)."""
    if shape[2] == 1 or 1 not in shape:
        return 2
    return max(i for i, n in enumerate(shape) if n == 1)


@dataclass(eq=False)
class MedicalImage:
    """A 2D or 3D scalar image with geometry, as read from or written to a medical file.

    Attributes:
        array: float32 voxels of shape ``(X, Y, Z)`` in the file's voxel order; 2D images are
            ``(X, Y, 1)``. For DICOM and raster files ``X`` runs along a row (the column index)
            and ``Y`` down the image (the row index), as in ITK and MONAI.
        affine: 4x4 float64 map from voxel index ``(i, j, k, 1)`` to RAS+ world millimetres.
        meta: Free-form metadata. Keys set by the readers include ``format`` (``'nifti'``,
            ``'dicom'``, ``'png'``, ...), ``path``, ``source_paths`` (every file read; never
            overwritten by :func:`~medrecon.io.save_image`), ``modality``, ``photometric``,
            ``inverted`` (MONOCHROME1 was inverted), ``window_center`` / ``window_width``,
            ``series_uid``, ``series_description``, ``dicom_headers`` (pixel-less
            :class:`pydicom.Dataset` per slice, in array order, used to write a derived series),
            ``volume_index`` for 4D inputs.

    The constructor converts ``array`` to contiguous float32 (2D is promoted to ``(X, Y, 1)``)
    and validates ``affine``; it does not reject NaNs (the readers and writers do).
    """

    array: np.ndarray
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.array = _as_volume(self.array)
        self.affine = check_affine(self.affine)
        if not isinstance(self.meta, dict):
            raise MedreconInputError(f"meta must be a dict; got {type(self.meta).__name__}.")

    # ------------------------------------------------------------------ geometry properties
    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(X, Y, Z)``."""
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def is_2d(self) -> bool:
        """True when the image has a single slice (``Z == 1``)."""
        return self.array.shape[2] == 1

    @property
    def one_slice(self) -> bool:
        """True when any axis has a single voxel: one 2D image, whichever axis is the thin one
        (a coronal slice of a NIfTI may be stored ``X x 1 x Z``). What the 2D formats take
        (:meth:`slice_last`)."""
        return 1 in self.array.shape

    def slice_last(self) -> "MedicalImage":
        """This image with its single-voxel axis last (``(X, 1, Z) -> (X, Z, 1)``, the affine's
        columns permuted alike: the same voxels at the same places), as the 2D writers (PNG,
        DICOM) store one slice; the image itself when ``Z == 1`` or no axis is single."""
        thin = thin_axis(self.array.shape)
        if thin == 2:
            return self
        order = [i for i in range(3) if i != thin] + [thin]
        affine = self.affine.copy()
        affine[:3, :3] = self.affine[:3, order]
        return MedicalImage(np.ascontiguousarray(np.transpose(self.array, order)), affine,
                            dict(self.meta))

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along each array axis (norms of the affine's columns)."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def origin(self) -> tuple[float, float, float]:
        """RAS+ world position (mm) of the centre of voxel ``(0, 0, 0)``."""
        return tuple(float(v) for v in self.affine[:3, 3])  # type: ignore[return-value]

    @property
    def direction(self) -> np.ndarray:
        """3x3 matrix whose columns are the RAS+ unit direction of each array axis."""
        return self.affine[:3, :3] / np.linalg.norm(self.affine[:3, :3], axis=0)

    # ------------------------------------------------------------------ derivation
    def with_array(self, new_array: object, affine: np.ndarray | None = None) -> "MedicalImage":
        """Derive a new image (e.g. a reconstruction) that keeps this image's metadata.

        Args:
            new_array: The new voxels, 2D or 3D, convertible to float32 (a CPU/GPU tensor works).
            affine: Geometry of ``new_array``. When ``None``: the same affine if the shape is
                unchanged, otherwise the affine of the *same field of view* on the new grid
                (:func:`~medrecon.io.resample_affine_for_zoom` with ``zoom = new / old`` per
                axis), which is what super-resolution needs.

        Returns:
            A new :class:`MedicalImage`; ``meta`` is a shallow copy (DICOM headers are shared,
            they are never modified) with ``derived_from_shape`` recording the source shape.
        """
        arr = _as_volume(new_array, name="new_array")
        if affine is None:
            if arr.shape == self.array.shape:
                affine = self.affine.copy()
            else:
                zoom = [n / o for n, o in zip(arr.shape, self.array.shape)]
                affine = resample_affine_for_zoom(self.affine, zoom)
        meta = copy.copy(self.meta)
        meta["derived_from_shape"] = self.shape
        return MedicalImage(arr, affine, meta)

    def __repr__(self) -> str:
        sp = ", ".join(f"{s:.4g}" for s in self.spacing)
        org = ", ".join(f"{s:.4g}" for s in self.origin)
        return (
            f"MedicalImage(shape={self.shape}, spacing=({sp}) mm, origin=({org}) mm RAS, "
            f"format={self.meta.get('format')!r}, modality={self.meta.get('modality')!r})"
        )
