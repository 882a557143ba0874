"""Public entry points: :func:`load_image`, :func:`load_array`, :func:`save_image`."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from medrecon.errors import MedreconInputError
from medrecon.io import _paths, outputs
from medrecon.io._paths import (
    DICOM_SUFFIXES,
    ITK_SUFFIXES,
    NIFTI_SUFFIXES,
    NUMPY_SUFFIXES,
    RASTER_SUFFIXES,
    READ_SUFFIXES,
    MEDRECON_MARK,
    WRITE_SUFFIXES,
    check_finite,
    check_input_file,
    full_suffix,
    in_dicom_series_folder,
    sniff,
)
from medrecon.io.dicom_read import _scan, read_dicom_file, read_dicom_folder, read_dicom_header
from medrecon.io.dicom_write import made_by_medrecon, write_dicom
from medrecon.io.image import MedicalImage
from medrecon.io.nifti import read_nifti, write_nifti
from medrecon.io.raster import read_numpy, read_raster, write_numpy, write_raster

__all__ = ["load_image", "load_array", "save_image", "check_image_output", "SUPPORTED_READ",
           "SUPPORTED_WRITE"]

SUPPORTED_READ = READ_SUFFIXES + ("<DICOM folder>", "<DICOM file without suffix>")
SUPPORTED_WRITE = WRITE_SUFFIXES + ("<folder: DICOM series>",)


def _unsupported(path: Path, what: str) -> MedreconInputError:
    return MedreconInputError(
        f"{what} {str(path)!r}: unsupported suffix {full_suffix(path) or '(none)'!r}; supported: "
        f"{', '.join(SUPPORTED_READ if what == 'cannot read' else SUPPORTED_WRITE)}. "
        "Convert the file or rename it with its real suffix."
    )


def load_image(
    path: str | os.PathLike,
    *,
    series_uid: str | None = None,
    volume: int | None = None,
) -> MedicalImage:
    """Read a medical image file or DICOM folder into a :class:`MedicalImage`.

    Which library reads what:

    * ``.nii`` / ``.nii.gz``: nibabel (scaling applied, sform/qform affine, units to mm).
    * DICOM (``.dcm``, ``.dicom``, ``.ima``, no suffix, or any file with the ``DICM`` marker),
      single- or multi-frame, and DICOM series folders: pydicom, sorted by slice position (see
      :mod:`medrecon.io.dicom_read`); rescale slope/intercept applied, MONOCHROME1 inverted.
    * ``.png`` / ``.jpg`` / ``.jpeg`` / ``.tif`` / ``.tiff``: Pillow; colour becomes BT.601
      luminance ``0.299 R + 0.587 G + 0.114 B``; array is ``(W, H, 1)``.
    * ``.npy`` / ``.npz`` (one array): numpy, taken as ``(X, Y[, Z])`` with an identity affine.
    * ``.mha`` / ``.mhd`` / ``.nrrd`` / ``.nhdr``: SimpleITK (header checked before reading,
      LPS geometry to RAS).

    Args:
        path: File or folder.
        series_uid: For a folder holding several DICOM series, the SeriesInstanceUID to read.
            Default ``None`` requires the folder to hold exactly one series.
        volume: For a 4D input (NIfTI 4th dimension, or a DICOM series with several images
            per slice position), the 0-based volume to read. Default ``None`` rejects 4D input.

    Returns:
        The image; ``meta['source_paths']`` lists (absolute) every file read.

    Raises:
        MedreconInputError: Missing or empty file, unsupported suffix, not DICOM, several series
            without ``series_uid``, 4D without ``volume``, NaN/Inf voxels, undecodable pixels.
    """
    p = check_input_file(path)
    if p.is_dir():
        image = read_dicom_folder(p, series_uid=series_uid, volume=volume)
    else:
        suffix = full_suffix(p)
        kind = sniff(p)
        if suffix in NIFTI_SUFFIXES:
            expected = "gzip" if suffix == ".nii.gz" else "nifti"
            if kind != expected:
                raise MedreconInputError(
                    f"{str(p)!r} is named {suffix} but its content is not "
                    f"{'gzip-compressed NIfTI' if expected == 'gzip' else 'NIfTI'} (looks like "
                    f"{kind or 'unknown binary data'}, starts with {_paths.describe_head(p)}). "
                    "Rename it with its real suffix or re-export it."
                )
            image = read_nifti(p, volume=volume)
        elif suffix in DICOM_SUFFIXES or kind == "dicom" or (suffix == "" and kind != "text"):
            image = read_dicom_file(p, volume=volume)
        elif suffix in ITK_SUFFIXES:
            from medrecon.io.itk import read_itk

            image = read_itk(p, volume=volume)
        elif suffix in RASTER_SUFFIXES or suffix in NUMPY_SUFFIXES:
            if volume not in (None, 0):
                raise MedreconInputError(
                    f"volume={volume} was requested but {str(p)!r} is a single 2D/3D image; "
                    "omit --volume."
                )
            image = read_raster(p) if suffix in RASTER_SUFFIXES else read_numpy(p)
        else:
            raise _unsupported(p, "cannot read")
        if series_uid is not None and image.meta.get("series_uid") != str(series_uid).strip():
            raise MedreconInputError(
                f"series_uid={series_uid!r} does not match {str(p)!r}, whose series is "
                f"{image.meta.get('series_uid')!r}. Pass the folder holding that series, or omit "
                "series_uid for a single file."
            )
    image.meta["source_paths"] = [str(Path(s).resolve()) for s in image.meta.get("source_paths", [])]
    return image


def load_array(path: str | os.PathLike) -> np.ndarray:
    """Read a generic 2D/3D array (a mask, a sampling pattern, a weight map) from any format.

    The array has the same axis convention as :attr:`MedicalImage.array` for the same file, so a
    mask stored next to an image in the same format lines up with it (``.npy`` is taken as is;
    rasters come back as ``(W, H)``). Geometry is dropped.

    Args:
        path: Any file :func:`load_image` reads.

    Returns:
        float32 array of shape ``(X, Y)`` for single-slice inputs, else ``(X, Y, Z)``.
    """
    image = load_image(path)
    return image.array[:, :, 0] if image.is_2d else image.array


def _references(reference: Any, image: MedicalImage) -> list[Dataset]:
    """Pixel-less reference headers for a derived DICOM series."""
    if reference is None:
        return list(image.meta.get("dicom_headers") or [])
    if isinstance(reference, MedicalImage):
        return list(reference.meta.get("dicom_headers") or [])
    if isinstance(reference, Dataset):
        return [reference]
    if isinstance(reference, (list, tuple)) and all(isinstance(r, Dataset) for r in reference):
        return list(reference)
    if isinstance(reference, (str, os.PathLike)):
        p = check_input_file(reference)
        if p.is_dir():
            series, _ = _scan(p)
            if len(series) != 1:
                raise MedreconInputError(
                    f"reference folder {str(p)!r} holds {len(series)} DICOM image series; "
                    "expected exactly one. Pass a single reference file instead."
                )
            return [ds for _, ds in next(iter(series.values()))][:1]
        ds = read_dicom_header(p)
        if ds is None:
            raise MedreconInputError(
                f"reference {str(p)!r} is not a DICOM file; expected a DICOM file or folder, a "
                "pydicom Dataset or a MedicalImage read from DICOM."
            )
        return [ds]
    raise MedreconInputError(
        f"reference must be None, a MedicalImage, a pydicom Dataset (or list of them) or a path; "
        f"got {type(reference).__name__}."
    )


def _dicom_series_foreign(folder: Path) -> list[str]:
    """Entries of ``folder`` that are not a DICOM slice written by medrecon (``IM00001.dcm``...)."""
    from medrecon.io.dicom_write import is_medrecon_slice

    return sorted(e.name for e in folder.iterdir() if not is_medrecon_slice(e))

def written_by_medrecon(path: Path) -> bool:
    """Whether the image file ``path`` carries :data:`MEDRECON_MARK` where medrecon's writers
    put it (read from the header only; False for anything unreadable or unmarked)."""
    try:
        kind = sniff(path)
        if kind in ("nifti", "gzip"):
            import nibabel as nib

            descrip = nib.load(str(path)).header["descrip"].tobytes()
            return descrip.startswith(MEDRECON_MARK.encode())
        if kind == "dicom":
            return made_by_medrecon(path)
        if kind in ("png", "tiff"):
            from PIL import Image

            with Image.open(path) as im:
                soft = im.info.get("Software") or (im.tag_v2.get(305) if kind == "tiff" else None)
            return str(soft or "").startswith(MEDRECON_MARK)
    except Exception:  # noqa: BLE001 - unreadable or not an image: not ours
        return False
    return False


def _series_beside(path: Path, *, look: int = 64) -> bool:
    """Whether the DICOM file ``path`` has another slice of its own series in its folder (of
    the first ``look`` other DICOM files there): standalone images (CR, DX) or a previous
    result beside it are no series."""
    if not in_dicom_series_folder(path, look=look):
        return False
    try:
        ds = read_dicom_header(path)
    except (MedreconInputError, OSError):
        return False  # the input itself is read (and refused) with its own message
    uid = str(ds.get("SeriesInstanceUID", "")) if ds is not None else ""
    if not uid:
        return True  # no UID to tell them apart: keep the folder to one series
    seen = 0
    for other in path.parent.iterdir():
        if other == path or other.name.startswith(".") or not other.is_file():
            continue
        if sniff(other) != "dicom":
            continue
        seen += 1
        if seen > look:
            break
        try:
            o = read_dicom_header(other)
        except (MedreconInputError, OSError):
            continue
        if o is not None and str(o.get("SeriesInstanceUID", "")) == uid:
            return True
    return False


def _check_not_into_series(out: Path, as_dir: bool, inputs: Iterable[str | os.PathLike]) -> None:
    """Refuse a DICOM file output in the folder of an input DICOM file that is one slice of a
    series: that folder would then hold two series, and reading it again would ask which (the
    default output goes beside the folder instead)."""
    if as_dir or full_suffix(out) not in DICOM_SUFFIXES:  # a series folder: its own folder
        return
    try:
        target = out.absolute().parent.resolve()
    except OSError:
        return
    for src in inputs:
        src = Path(src).absolute()
        try:
            if src.is_file() and src.parent.resolve() == target and _series_beside(src):
                raise MedreconInputError(
                    f"refusing to write the DICOM output {str(out)!r} into {str(src.parent)!r}, "
                    f"the series folder of the input {str(src)!r}: the folder would then hold two "
                    "series. Write it elsewhere (by default it goes beside that folder), or as "
                    ".nii.gz.")
        except OSError:
            continue


def check_image_output(
    path: str | os.PathLike,
    *,
    is_2d: bool,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike] = (),
) -> tuple[Path, bool]:
    """Validate where an image will be written, before any computation.

    Checks the format (suffix), that a 3D image is not sent to a one-image format, that the
    target is none of ``inputs`` (nor inside nor around one), that an existing output is only
    replaced with ``overwrite`` and that a DICOM series folder holds only medrecon's slices, and
    that the place is writable (see :func:`medrecon.io.outputs.check_output`).

    Args:
        path: The output path (a folder, ending in ``/`` or without suffix, for a DICOM series).
        is_2d: The image to write has one slice.
        overwrite: Allow replacing a previous medrecon output.
        inputs: Files and folders that must never be written over.

    Returns:
        ``(path, as_dir)``: the output path and whether it is a DICOM series folder.

    Raises:
        MedreconInputError: Any of the problems above, with the fix.
    """
    raw = os.fspath(path)
    out = outputs.resolve_user_path(raw)
    suffix = full_suffix(out)
    try:
        is_dir = out.is_dir()
    except OSError as exc:  # a name too long, a loop of links...
        raise MedreconInputError(outputs.os_error_message(exc, out)) from None
    as_dir = raw.endswith(("/", os.sep)) or (is_dir and suffix not in WRITE_SUFFIXES) or suffix == ""
    if not as_dir and suffix not in WRITE_SUFFIXES:
        raise _unsupported(out, "cannot write")
    if suffix in (".png", ".tif", ".tiff", ".dcm") and not as_dir and not is_2d:
        hint = ("a folder path (e.g. out_dicom/) for a DICOM series" if suffix == ".dcm"
                else ".nii.gz, or a folder path for a DICOM series")
        raise MedreconInputError(
            f"cannot write a 3D result to {str(out)!r}: {suffix} holds one 2D image. Use {hint}."
        )
    inputs = list(inputs)
    _check_not_into_series(out, as_dir, inputs)
    outputs.check_output(out, overwrite=overwrite, protected=inputs, want_dir=as_dir,
                         foreign=_dicom_series_foreign if as_dir else None)
    if not as_dir and out.is_file() and not written_by_medrecon(out):
        if suffix == ".npy":  # numpy's header has no room for a mark: nobody's is told apart
            raise MedreconInputError(
                f"{str(out)!r} exists, and a .npy file carries no mark of the program that "
                "wrote it, so medrecon cannot tell its own result from a file of yours; it is "
                "never replaced. Choose another output path, or remove it yourself.")
        raise MedreconInputError(
            f"{str(out)!r} exists and medrecon did not write it (its header has no medrecon "
            "mark); --overwrite replaces only medrecon's own results, never a file of yours. "
            "Choose another output path, or move that file away yourself.")
    return out, as_dir


def save_image(
    image: MedicalImage,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    reference: MedicalImage | Dataset | str | os.PathLike | None = None,
    series_description: str | None = None,
    method: str | None = None,
    inputs: Iterable[str | os.PathLike] = (),
    stage: outputs.OutputStage | None = None,
) -> Path:
    """Write ``image`` in the format given by the output path, exclusively and atomically.

    Formats by suffix: ``.nii`` / ``.nii.gz`` (float32 NIfTI-1, exact affine); ``.dcm`` (one 2D
    DICOM image); a path ending in ``/`` or without a suffix (a DICOM series folder, one file per
    slice, see :mod:`medrecon.io.dicom_write`); ``.png`` (2D, 8/16-bit) and ``.tif`` / ``.tiff``
    (2D, float32); ``.npy`` (raw array). The rules of :mod:`medrecon.io.outputs` apply: the
    result is written under a temporary name in the same folder and moved into place only when
    complete, a new output is created exclusively (a concurrent writer cannot be replaced), an
    existing one only with ``overwrite`` and only if medrecon wrote it, never an input, and
    the file gets the user's default permissions.

    Args:
        image: The image to write; must be finite.
        path: Output path; parent folders are created.
        overwrite: Replace an existing output. Default ``False`` refuses.
        reference: DICOM headers for a derived series: a :class:`MedicalImage` read from DICOM,
            a pydicom Dataset (or list), or a DICOM file/folder. Default ``None`` uses
            ``image.meta['dicom_headers']`` when present, else writes a Secondary Capture
            series from scratch. A MedicalImage reference also lends its display window to a
            result that has none. Ignored otherwise for non-DICOM outputs.
        series_description: Text appended to ``"medrecon <method>: "`` in the DICOM
            SeriesDescription / NIfTI ``descrip``; used verbatim when it already names medrecon.
            Default ``None``: the reference's SeriesDescription is appended.
        method: Reconstruction method name recorded in the descriptions (e.g. ``"iagan"``).
        inputs: Paths that must never be written over, even with ``overwrite`` (the CLI passes
            its input files). ``image.meta['source_paths']`` are always protected too.
        stage: Write into this :class:`~medrecon.io.outputs.OutputStage` (committed by the
            caller together with other outputs). Default: a stage of its own, committed at once.

    Returns:
        The output path (a folder for a DICOM series).

    Raises:
        MedreconInputError: Unsupported suffix, 3D image to a 2D format, non-finite values,
            existing output without ``overwrite``, an output that is one of the inputs, or a
            place that cannot be written (no space, permission, read-only).
    """
    if not isinstance(image, MedicalImage):
        raise MedreconInputError(
            f"save_image expects a medrecon.io.MedicalImage; got {type(image).__name__}. Wrap "
            "an array with MedicalImage(array, affine)."
        )
    check_finite(image.array, what="the image to save")
    protected = list(inputs) + list(image.meta.get("source_paths") or [])
    if image.meta.get("path"):
        protected.append(image.meta["path"])
    overwrite = bool(overwrite or (stage is not None and stage.overwrite))
    out, as_dir = check_image_output(path, is_2d=image.one_slice, overwrite=overwrite, inputs=protected)
    suffix = full_suffix(out)

    description = "medrecon" + (f" {method}" if method else "")
    if series_description and "medrecon" in series_description.lower():
        description = series_description
    elif series_description:
        description += f": {series_description}"
    if (
        isinstance(reference, MedicalImage)
        and image.meta.get("window_center") is None
        and reference.meta.get("window_center") is not None
    ):  # keep the input's display window for the result
        image = MedicalImage(image.array, image.affine, {
            **image.meta,
            "window_center": reference.meta["window_center"],
            "window_width": reference.meta.get("window_width"),
        })
    refs = _references(reference, image) if (as_dir or suffix == ".dcm") else []
    own = stage is None
    st = outputs.OutputStage(overwrite=overwrite) if own else stage
    try:
        if as_dir:
            tmp = st.folder(out, foreign=_dicom_series_foreign)
            write_dicom(image, tmp, single_file=False, references=refs,
                        series_description=series_description, method=method)
        else:
            tmp = st.file(out)
            if suffix == ".dcm":
                write_dicom(image, tmp, single_file=True, references=refs,
                            series_description=series_description, method=method)
            elif suffix in NIFTI_SUFFIXES:
                write_nifti(image, tmp, description=description)
            elif suffix == ".npy":
                write_numpy(image, tmp)
            else:
                write_raster(image, tmp, suffix=suffix, out=out)
    except BaseException as exc:
        if own:
            st.discard()
        if isinstance(exc, OSError):
            raise MedreconInputError(outputs.os_error_message(exc, out)) from None
        raise
    if own:
        try:
            st.commit()
        except BaseException:
            st.discard()
            raise
    return out
