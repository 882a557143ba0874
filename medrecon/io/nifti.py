"""NIfTI-1/2 reading and writing with nibabel (``.nii``, ``.nii.gz``; 2D, 3D, 4D with a volume).

nibabel reads the header, applies ``scl_slope`` / ``scl_inter`` and chooses the affine (sform when
its code is set, else qform, else the pixdim fallback). We additionally honour ``xyzt_units`` so
the affine is always in millimetres.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medrecon.errors import MedreconInputError, MedreconWarning
from medrecon.io._paths import (MEDRECON_MARK, check_claimed_size, check_finite,
                                check_float32_range)
from medrecon.io.geometry import check_affine
from medrecon.io.image import MedicalImage

__all__ = ["read_nifti", "set_nifti_header", "write_nifti"]

_UNIT_TO_MM = {"meter": 1000.0, "mm": 1.0, "micron": 1e-3, "unknown": 1.0}


def _select_volume(shape: tuple[int, ...], volume: int | None, path: Path) -> tuple[Any, ...]:
    """Index selecting a 2D/3D image from a possibly 4D+ array (trailing size-1 dims dropped)."""
    dims = list(shape)
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    if len(dims) <= 3:
        if volume not in (None, 0):
            raise MedreconInputError(
                f"volume={volume} was requested but {path} is not 4D (shape {tuple(shape)}); "
                "omit --volume for 2D/3D images."
            )
        return tuple(slice(None) for _ in range(min(len(shape), 3))) + (0,) * max(0, len(shape) - 3)
    if len(dims) > 4:
        raise MedreconInputError(
            f"{path} has {len(dims)} dimensions (shape {tuple(shape)}); medrecon reads 2D, 3D, or "
            "one volume of a 4D image. Split the file first (e.g. fslsplit or nibabel)."
        )
    n = dims[3]
    if volume is None:
        raise MedreconInputError(
            f"{path} is 4D with {n} volumes (shape {tuple(shape)}); medrecon reconstructs one "
            f"2D/3D image at a time. Choose one with volume=N, 0 <= N < {n} (CLI: --volume N "
            "of the scan to reconstruct; a 4D mask or ground truth: save the volume you mean "
            "as its own file)."
        )
    if not isinstance(volume, (int, np.integer)) or not 0 <= int(volume) < n:
        raise MedreconInputError(
            f"volume={volume!r} is out of range for {path}, which has {n} volumes; expected an "
            f"integer 0 <= volume < {n}."
        )
    return (slice(None),) * 3 + (int(volume),) + (0,) * (len(shape) - 4)


def read_nifti(path: Path, *, volume: int | None = None) -> MedicalImage:
    """Read a NIfTI file into a :class:`MedicalImage` (float32, RAS+ affine in mm)."""
    with _nibabel_log(path):
        return _read_nifti(path, volume)


@contextlib.contextmanager
def _nibabel_log(path: Path) -> Any:
    """nibabel prints its header repairs (``pixdim[1,2,3] should be non-zero; setting 0 dims
    to 1``) to stderr through a handler of its own, which broke ``--log-format json`` and
    doubled an error's line: they are held here and said as one :class:`MedreconWarning`
    when the file was read (an error explains a file that was not)."""
    from nibabel import imageglobals

    held: list[str] = []

    class Hold(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            held.append(record.getMessage())

    hold = Hold()
    with imageglobals.LoggingOutputSuppressor():
        imageglobals.logger.addHandler(hold)
        try:
            yield
        finally:
            imageglobals.logger.removeHandler(hold)
    if held:
        warnings.warn(f"{Path(path).name}: nibabel repaired its header: {'; '.join(held)}.",
                      MedreconWarning, stacklevel=4)


def _read_nifti(path: Path, volume: int | None) -> MedicalImage:
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise MedreconInputError(
            f"cannot read {str(path)!r} as NIfTI: {type(exc).__name__}: {exc}. Expected a valid "
            ".nii or .nii.gz file; check that it is not truncated (re-export or re-download)."
        ) from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise MedreconInputError(
            f"{str(path)!r} was read as {type(img).__name__}, not NIfTI; convert it to .nii.gz."
        )
    hdr = img.header
    dtype = hdr.get_data_dtype()
    index = _select_volume(img.shape, volume, path)
    check_claimed_size(path, shape=tuple(img.shape), itemsize=dtype.itemsize,
                       data_offset=int(hdr.get_data_offset()),
                       compressed=str(path).lower().endswith(".gz"),
                       voxels=int(np.prod(img.shape[:3], dtype=np.int64)))
    try:
        if dtype.names is not None:  # RGB24 / RGBA32 structured dtype
            raw = np.asanyarray(img.dataobj)[index]
            data = 0.299 * raw["R"].astype(np.float32) + 0.587 * raw["G"] + 0.114 * raw["B"]
            warnings.warn(f"{path.name} holds RGB voxels; they were converted to grey (BT.601 "
                          "luminance).", MedreconWarning, stacklevel=2)
        else:
            if dtype.kind == "c":
                raise MedreconInputError(
                    f"{str(path)!r} holds complex voxels ({dtype}); medrecon expects a real "
                    "image. Save the magnitude image instead."
                )
            data = np.asarray(img.dataobj[index])
            check_float32_range(data, what=f"{str(path)!r}")
            data = data.astype(np.float32, copy=False)
    except (OSError, EOFError, ValueError) as exc:
        if isinstance(exc, MedreconInputError):
            raise
        raise MedreconInputError(
            f"cannot read the voxels of {str(path)!r}: {exc}. The file is probably truncated; "
            "re-export it."
        ) from None
    check_finite(data, what=f"{str(path)!r}")
    affine = np.array(img.affine, dtype=np.float64)
    space_unit = hdr.get_xyzt_units()[0]
    scale = _UNIT_TO_MM.get(space_unit, 1.0)
    if scale != 1.0:
        affine[:3, :] *= scale
    sform_code = int(hdr["sform_code"])
    qform_code = int(hdr["qform_code"])
    qform_from_sform = None
    if sform_code > 0 and qform_code > 0:  # two geometries (e.g. scanner and registered)
        qform = np.array(img.get_qform(), dtype=np.float64)
        qform[:3, :] *= scale
        if not np.allclose(qform, affine, atol=1e-4):
            # world-to-world, so that any grid's qform is this times its sform
            try:
                qform_from_sform = qform @ np.linalg.inv(affine)
            except np.linalg.LinAlgError:
                qform_from_sform = None  # a singular sform: check_affine below says so
    meta: dict[str, Any] = {
        "format": "nifti",
        "path": str(path),
        "source_paths": [str(path)],
        "modality": None,
        "photometric": None,
        "nifti_sform_code": sform_code,
        "nifti_qform_code": qform_code,
        "nifti_description": hdr["descrip"].tobytes().split(b"\0")[0].decode("latin-1"),
        "source_dtype": str(dtype),
        "full_shape": tuple(int(s) for s in img.shape),
    }
    if qform_from_sform is not None:
        meta["nifti_qform_from_sform"] = qform_from_sform
    if len(img.shape) > 3 and volume is not None:
        meta["volume_index"] = int(volume)
    cal_min, cal_max = float(hdr["cal_min"]), float(hdr["cal_max"])
    if cal_max > cal_min:
        meta["window_center"] = (cal_max + cal_min) / 2.0
        meta["window_width"] = cal_max - cal_min
    return MedicalImage(data, check_affine(affine, name=f"the affine of {str(path)!r}"), meta)


def from_3d_nifti(meta: Mapping[str, Any]) -> bool:
    """Whether an image came from a 3D NIfTI file: a single slice of one (``X x Y x 1``) is
    written 3D, its slice thickness in the header, not squeezed to 2D."""
    return meta.get("format") == "nifti" and len(meta.get("full_shape") or ()) >= 3


def write_nifti(image: MedicalImage, tmp: Path, *, description: str) -> None:
    """Write ``image`` as float32 NIfTI-1 to ``tmp`` (compression from its suffix), with the
    header of :func:`set_nifti_header`. A single slice is written 2D, except where it came
    from a 3D NIfTI (``X x Y x 1``): that stays 3D, its slice thickness in the header."""
    data = image.array[:, :, 0] if image.is_2d and not from_3d_nifti(image.meta) else image.array
    img = nib.Nifti1Image(data.astype(np.float32, copy=False), image.affine)
    set_nifti_header(img, image.affine, image.meta, description=description)
    nib.save(img, str(tmp))


def set_nifti_header(img: nib.Nifti1Image, affine: np.ndarray, meta: Mapping[str, Any], *,
                     description: str) -> None:
    """Fill the header of a result: units, sform/qform, description, display window.

    Both sform and qform are set from ``affine`` (codes kept from a NIfTI source,
    ``meta['nifti_sform_code']`` / ``meta['nifti_qform_code']``, else 1 = scanner); for a
    sheared affine (e.g. gantry tilt) the qform cannot represent it and its code is set to 0 so
    readers use the exact sform. A source whose qform held another geometry than its sform
    (scanner and registered space) keeps it: the qform is that geometry on the result's grid
    (``meta['nifti_qform_from_sform']`` times ``affine``). A source with both codes 0 (no
    geometry) keeps both 0. Units are mm and s; ``descrip`` is ``description`` (79 ASCII
    characters at most); ``cal_min`` / ``cal_max`` hold ``meta``'s display window when it has
    one. Also used by :class:`medrecon.monai.MedreconNiftiWriter`.
    """
    affine = np.asarray(affine, dtype=np.float64)
    hdr = img.header
    hdr.set_xyzt_units("mm", "sec")
    no_geometry = (meta.get("nifti_sform_code") == 0 and meta.get("nifti_qform_code") == 0)
    sform_code = 0 if no_geometry else int(meta.get("nifti_sform_code") or 1)
    qform_code = 0 if no_geometry else int(meta.get("nifti_qform_code") or sform_code)
    img.set_sform(affine, code=sform_code)
    q_of_s = meta.get("nifti_qform_from_sform")
    if hasattr(q_of_s, "detach"):  # a MetaTensor's metadata holds tensors
        q_of_s = q_of_s.detach().cpu().numpy()
    qform = affine if q_of_s is None else np.asarray(q_of_s, dtype=np.float64) @ affine
    rzs = qform[:3, :3]
    gram = rzs.T @ rzs
    orthogonal = np.allclose(gram - np.diag(np.diag(gram)), 0.0, atol=1e-6 * np.abs(gram).max())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img.set_qform(qform, code=qform_code if orthogonal else 0)
    if not description.startswith(MEDRECON_MARK):  # the mark an --overwrite looks for
        description = f"{MEDRECON_MARK} {description}"
    hdr["descrip"] = description.encode("ascii", "replace")[:79]
    wc, ww = meta.get("window_center"), meta.get("window_width")
    if wc is not None and ww:
        hdr["cal_min"], hdr["cal_max"] = float(wc) - float(ww) / 2, float(wc) + float(ww) / 2
