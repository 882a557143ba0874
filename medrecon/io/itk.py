"""MetaImage (``.mha`` / ``.mhd``) and NRRD (``.nrrd`` / ``.nhdr``) through SimpleITK.

SimpleITK reads the header first (:class:`SimpleITK.ImageFileReader` ``ReadImageInformation``)
so the claimed size is bounded before any voxel is allocated; its LPS geometry (origin,
spacing, direction) becomes medrecon's RAS affine. Vector (colour) voxels become grey by
BT.601 luminance, with a warning.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from medrecon.errors import MedreconInputError, MedreconWarning
from medrecon.io._paths import ITK_SUFFIXES, check_finite, max_voxels
from medrecon.io.geometry import check_affine, lps_to_ras
from medrecon.io.image import MedicalImage

__all__ = ["ITK_SUFFIXES", "read_itk"]


def read_itk(path: Path, *, volume: int | None = None) -> MedicalImage:
    """Read a MetaImage or NRRD file into a :class:`MedicalImage` (float32, RAS affine, mm)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise MedreconInputError(
            f"cannot read {str(path)!r} as {path.suffix} (SimpleITK: "
            f"{str(exc).strip().splitlines()[-1]}). Check that the file and, for .mhd/.nhdr, its "
            "data file are complete.") from None
    size = reader.GetSize()
    n = int(np.prod(size, dtype=np.int64)) * max(1, reader.GetNumberOfComponents())
    if len(size) > 3:
        raise MedreconInputError(f"{str(path)!r} is {len(size)}D {size}; expected 2D or 3D.")
    if volume not in (None, 0):
        raise MedreconInputError(f"volume={volume} was requested but {str(path)!r} is a single "
                                 "2D/3D image; omit --volume.")
    if n > max_voxels():
        raise MedreconInputError(
            f"{str(path)!r} holds {n:,} voxels ({'x'.join(map(str, size))}), more than medrecon "
            f"reads at once ({max_voxels():,}); crop it first or raise MEDRECON_MAX_VOXELS.")
    try:
        img = reader.Execute()
    except RuntimeError as exc:
        raise MedreconInputError(
            f"cannot read the voxels of {str(path)!r} (SimpleITK: "
            f"{str(exc).strip().splitlines()[-1]}); the file is probably truncated.") from None
    arr = sitk.GetArrayFromImage(img)  # (z, y, x[, c]) or (y, x[, c])
    if img.GetNumberOfComponentsPerPixel() > 1:
        if arr.shape[-1] >= 3:
            arr = 0.299 * arr[..., 0] + 0.587 * arr[..., 1] + 0.114 * arr[..., 2]
            warnings.warn(f"{path.name} holds colour voxels; they were converted to grey (BT.601 "
                          "luminance).", MedreconWarning, stacklevel=3)
        else:
            arr = arr[..., 0]
    data = np.ascontiguousarray(np.asarray(arr, dtype=np.float32).T)  # (x, y[, z])
    dim = img.GetDimension()
    spacing = np.ones(3)
    spacing[:dim] = img.GetSpacing()
    origin = np.zeros(3)
    origin[:dim] = img.GetOrigin()
    direction = np.eye(3)
    direction[:dim, :dim] = np.asarray(img.GetDirection()).reshape(dim, dim)
    lps = np.eye(4)
    lps[:3, :3] = direction * spacing[None, :]
    lps[:3, 3] = origin
    if data.ndim == 2:
        data = data[:, :, None]
    check_finite(data, what=f"{str(path)!r}")
    meta = {"format": path.suffix.lower()[1:], "path": str(path), "source_paths": [str(path)],
            "modality": None, "photometric": None}
    return MedicalImage(data, check_affine(lps_to_ras(lps), name=f"the geometry of {str(path)!r}"),
                        meta)
