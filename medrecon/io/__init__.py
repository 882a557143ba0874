"""Medical image I/O that keeps geometry: NIfTI, DICOM (files, series, multi-frame), PNG/JPEG/TIFF.

Everything enters and leaves medrecon as a :class:`MedicalImage`: a float32 ``(X, Y, Z)`` array
in the file's voxel order plus a 4x4 voxel-to-RAS+ affine in mm (the NIfTI convention; LPS
conversions stay inside this package) and a ``meta`` dict.

* :func:`load_image` / :func:`save_image`: format by content and suffix, clear
  :class:`~medrecon.errors.MedreconInputError` messages, atomic writes that never overwrite inputs,
  derived DICOM series with correct geometry.
* :func:`load_array`: a generic 2D/3D array (masks) in the same axis convention.
* Geometry helpers: :func:`resample_affine_for_zoom`, :func:`slice_axis_for_plane`,
  :func:`plane_of_axis`, :func:`lps_to_ras`, :func:`ras_to_lps`.
"""

from medrecon.io.api import (
    SUPPORTED_READ,
    SUPPORTED_WRITE,
    check_image_output,
    load_array,
    load_image,
    save_image,
)
from medrecon.io.dicom_read import list_series
from medrecon.io.geometry import (
    lps_to_ras,
    plane_of_axis,
    ras_to_lps,
    resample_affine_for_zoom,
    slice_axis_for_plane,
)
from medrecon.io.image import MedicalImage

__all__ = [
    "MedicalImage",
    "load_image",
    "load_array",
    "save_image",
    "check_image_output",
    "list_series",
    "resample_affine_for_zoom",
    "slice_axis_for_plane",
    "plane_of_axis",
    "lps_to_ras",
    "ras_to_lps",
    "SUPPORTED_READ",
    "SUPPORTED_WRITE",
]
