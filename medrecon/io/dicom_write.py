"""Writing a derived DICOM series with pydicom.

The output is a *new* series in the same study: new Series / SOP Instance UIDs
(:func:`pydicom.uid.generate_uid`), ``ImageType`` ``DERIVED\\SECONDARY``, a ``SeriesDescription``
naming medrecon and the method, and geometry tags (``ImagePositionPatient``,
``ImageOrientationPatient``, ``PixelSpacing``, ``Rows``/``Columns``, ``SliceThickness``,
``SpacingBetweenSlices`` where the slices are evenly spaced, ``SliceLocation``) computed from
the image's affine, so any viewer places the result exactly where the input was. One slice
stored along another axis (``X x 1 x Z``) is written as that slice; an affine whose in-plane
axes are not perpendicular is refused (:func:`check_dicom_axes`).

* With a classic single-frame CT or MR reference, each slice starts from the reference header
  (acquisition attributes kept, private tags, overlays, icons and all pixel-module attributes
  dropped) and keeps its SOP class.
* Otherwise (no reference, enhanced multi-frame, other modalities) a Secondary Capture series is
  written from scratch; patient, study and frame-of-reference tags are copied from the reference
  when there is one, and the Image Plane tags are included so geometry-aware readers use them.
* Pixels are stored as signed 16-bit integers with ``RescaleSlope`` / ``RescaleIntercept`` chosen
  so the float range fits without clipping (slope 1 when the data are already int16 integers).
"""

from __future__ import annotations

import copy
import datetime as _dt
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DSfloat

from medrecon import __version__
from medrecon.errors import MedreconInputError
from medrecon.io.geometry import ras_to_lps
from medrecon.io.image import MedicalImage, thin_axis

__all__ = ["write_dicom", "int16_rescale", "CT_IMAGE_STORAGE", "MR_IMAGE_STORAGE", "SC_IMAGE_STORAGE"]

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"

#: Patient / study / frame-of-reference tags copied from a reference into a from-scratch series.
COPIED_TAGS = (
    "SpecificCharacterSet",
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    "PatientAge", "PatientSize", "PatientWeight", "PatientComments", "PatientIdentityRemoved",
    "DeidentificationMethod",
    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber",
    "ReferringPhysicianName", "StudyDescription",
    "FrameOfReferenceUID", "PositionReferenceIndicator",
    "Modality", "BodyPartExamined", "PatientPosition", "Laterality", "ViewPosition",
)

#: Per-instance / pixel-describing tags removed from a copied classic header before re-filling.
_DROPPED = (
    "SOPInstanceUID", "ImageType", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription",
    "SeriesDate", "SeriesTime", "ContentDate", "ContentTime", "InstanceCreationDate",
    "InstanceCreationTime", "AcquisitionDateTime", "ReferencedImageSequence",
    "SourceImageSequence", "DerivationDescription", "DerivationCodeSequence",
    "ImagePositionPatient", "ImageOrientationPatient", "SliceLocation", "InstanceNumber",
    "ImagesInAcquisition", "SliceThickness", "SpacingBetweenSlices", "ImageComments",
    "IconImageSequence", "IrradiationEventUID", "NumberOfFrames",
    "ManufacturerModelName", "DeviceSerialNumber", "SoftwareVersions", "StationName",
)


def _located(ref: Dataset | None) -> bool:
    """Whether the source images have a place in the patient (an Image Plane position or the
    enhanced functional groups); a projection (CR, DX) has only the detector's spacing."""
    return (ref is None or "ImagePositionPatient" in ref
            or "PerFrameFunctionalGroupsSequence" in ref
            or "SharedFunctionalGroupsSequence" in ref)


def _source_thickness(ref: Dataset | None, normal: np.ndarray) -> float | None:
    """The source slices' nominal SliceThickness when the output slices are theirs (same
    slice direction); None when unknown."""
    if ref is None:
        return None

    def tag(seq: str, name: str) -> Any:  # top level, else the enhanced functional groups
        if name in ref:
            return ref.get(name)
        for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
            try:
                return getattr(getattr(ref, groups)[0], seq)[0].get(name)
            except (AttributeError, IndexError, TypeError):
                continue
        return None

    try:
        t = float(tag("PixelMeasuresSequence", "SliceThickness") or 0)
        iop = [float(v) for v in tag("PlaneOrientationSequence", "ImageOrientationPatient")
               or []]
    except (TypeError, ValueError):
        return None
    if t <= 0 or len(iop) != 6:
        return None
    src = np.cross(np.asarray(iop[:3]), np.asarray(iop[3:]))
    src /= np.linalg.norm(src) or 1.0
    return t if abs(abs(float(src @ normal)) - 1.0) < 1e-3 else None


def _ds(value: float) -> str:
    """A DICOM DS string (at most 16 characters) for ``value``."""
    return str(DSfloat(float(value), auto_format=True))


def int16_rescale(data: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Quantise float data to int16 with a DICOM rescale that does not clip.

    Returns:
        ``(stored, slope, intercept)`` with ``stored * slope + intercept ~= data``. Data that are
        already integers within the int16 range are stored exactly (slope 1, intercept 0).
        Otherwise the range ``[min, max]`` is centred on the intercept and spread over about
        +/-32500 steps; slope and intercept are the values exactly as written in the DS strings,
        so decoding reproduces the data within half a step.
    """
    lo, hi = float(data.min()), float(data.max())
    if lo >= -32768 and hi <= 32767 and np.array_equal(data, np.rint(data)):
        return data.astype(np.int16), 1.0, 0.0
    intercept = float(_ds((lo + hi) / 2.0))
    half = max(abs(hi - intercept), abs(lo - intercept))
    slope = float(_ds(half / 32500.0)) if half > 0 else 1.0
    stored = np.rint((data.astype(np.float64) - intercept) / slope)
    if stored.min() < -32768 or stored.max() > 32767:  # pragma: no cover - guarded by the margin
        raise AssertionError("int16 rescale overflow")
    return stored.astype(np.int16), slope, intercept


def _now() -> tuple[str, str]:
    now = _dt.datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")


def _is_classic(ref: Dataset | None) -> bool:
    return (
        ref is not None
        and str(ref.get("SOPClassUID", "")) in (CT_IMAGE_STORAGE, MR_IMAGE_STORAGE)
        and "PerFrameFunctionalGroupsSequence" not in ref
        and int(ref.get("NumberOfFrames", 1) or 1) == 1
    )


def _base_from_reference(ref: Dataset) -> Dataset:
    base = copy.deepcopy(ref)
    base.remove_private_tags()
    lossy = base.get("LossyImageCompression")
    for elem in list(base):
        group = elem.tag.group
        if group in (0x0028, 0x7FE0, 0x0088) or 0x5000 <= group <= 0x50FF or 0x6000 <= group <= 0x60FF:
            del base[elem.tag]
    for key in _DROPPED:
        if key in base:
            delattr(base, key)
    if lossy is not None:
        base.LossyImageCompression = lossy
    if hasattr(base, "file_meta"):
        del base.file_meta
    return base


def _base_from_scratch(ref: Dataset | None) -> Dataset:
    base = Dataset()
    if ref is not None:
        for key in COPIED_TAGS:
            if key in ref:
                setattr(base, key, copy.deepcopy(ref.data_element(key).value))
    base.SpecificCharacterSet = base.get("SpecificCharacterSet", "ISO_IR 192")
    for key in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName"):
        if key not in base:
            setattr(base, key, "")
    if not base.get("StudyInstanceUID"):
        base.StudyInstanceUID = generate_uid()
    if not base.get("FrameOfReferenceUID"):
        base.FrameOfReferenceUID = generate_uid()
    if "PositionReferenceIndicator" not in base:
        base.PositionReferenceIndicator = ""
    base.Modality = base.get("Modality") or "OT"
    base.SOPClassUID = SC_IMAGE_STORAGE
    base.ConversionType = "WSD"
    # a projection's only orientation: the directions of its rows and columns, which the
    # result keeps (a located image has ImageOrientationPatient instead)
    base.PatientOrientation = (copy.deepcopy(ref.get("PatientOrientation", "")) if ref is not None
                               and not _located(ref) else "")
    return base


#: File names of the slices of a series folder medrecon writes (``IM00001.dcm`` ...).
SLICE_NAME = re.compile(r"IM\d{5}\.dcm")


def is_medrecon_slice(path: Path) -> bool:
    """Whether ``path`` is a slice file medrecon wrote into a series folder.

    True for a regular file named like :data:`SLICE_NAME` whose DICOM header says medrecon
    made it (``Manufacturer`` "medrecon" and our ``ImplementationVersionName``). ``--overwrite``
    replaces a series folder only when every entry passes this test.
    """
    if not SLICE_NAME.fullmatch(path.name) or path.is_symlink() or not path.is_file():
        return False
    return made_by_medrecon(path)


def made_by_medrecon(path: Path) -> bool:
    """Whether the DICOM file ``path`` says medrecon made it (``Manufacturer`` "medrecon" and
    our ``ImplementationVersionName``); False for anything unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Manufacturer"])
    except Exception:  # noqa: BLE001 - unreadable means not ours
        return False
    impl = str(getattr(getattr(ds, "file_meta", None), "ImplementationVersionName", "") or "")
    return str(ds.get("Manufacturer", "")) == "medrecon" and impl.startswith("MEDRECON")


def _series_header(references: Sequence[Dataset], series_description: str | None,
                   method: str | None) -> tuple[Dataset, str, str]:
    """The tags every slice of the derived series shares (patient, study, a new series naming
    medrecon and the method, the derivation), and the series' date and time."""
    ref = references[0] if references else None
    classic = _is_classic(ref)
    base = _base_from_reference(ref) if classic else _base_from_scratch(ref)

    date, time = _now()
    label = "medrecon" + (f" {method}" if method else "")
    extra = series_description if series_description else (
        str(ref.get("SeriesDescription", "")) if ref is not None else ""
    )
    if series_description and "medrecon" in series_description.lower():
        base.SeriesDescription = series_description[:64]  # already names medrecon (and method)
    else:
        base.SeriesDescription = (f"{label}: {extra}" if extra else label)[:64]
    base.SeriesInstanceUID = generate_uid()
    ref_number = ref.get("SeriesNumber") if ref is not None else None
    base.SeriesNumber = int(ref_number) + 1000 if ref_number not in (None, "") else 1000
    base.SeriesDate, base.SeriesTime = date, time
    base.Manufacturer = "medrecon"
    base.SoftwareVersions = f"medrecon {__version__}"
    image_type = ["DERIVED", "SECONDARY"]
    ref_type = list(ref.get("ImageType", [])) if ref is not None else []
    if classic and len(ref_type) >= 3:
        image_type.append(ref_type[2])
    base.ImageType = image_type
    n_src = len(references)
    src_uid = ref.get("SeriesInstanceUID", "?") if ref is not None else None
    base.DerivationDescription = (
        f"{label} {__version__} reconstruction"
        + (f" from {n_src} image(s) of series {src_uid}" if ref is not None else "")
    )[:1024]
    base.BurnedInAnnotation = "NO"
    return base, date, time


#: Largest |cos| of the angle between the written rows' and columns' directions: DICOM's
#: ImageOrientationPatient holds two perpendicular unit vectors (medrecon's reader refuses
#: more than 0.1, other readers drop the geometry).
MAX_AXES_COS = 1e-3


def check_dicom_axes(shape: Sequence[int], affine: Any) -> None:
    """Refuse geometry DICOM cannot hold: in-plane axes (the two a slice is written along,
    :meth:`~medrecon.io.MedicalImage.slice_last`) that are not perpendicular, a sheared
    affine (the slice axis may be oblique to the plane: a tilted gantry's series).

    Raises:
        MedreconInputError: the angle, and the format to write instead.
    """
    shape = tuple(int(n) for n in shape)
    a = np.asarray(affine, dtype=np.float64)[:3, :3]
    thin = thin_axis(shape)
    u, v = (a[:, i] for i in range(3) if i != thin)
    cos = abs(float(u @ v)) / max(float(np.linalg.norm(u) * np.linalg.norm(v)), 1e-300)
    if cos > MAX_AXES_COS:
        angle = float(np.degrees(np.arccos(min(cos, 1.0))))
        raise MedreconInputError(
            f"the image's in-plane axes meet at {angle:.2f} degrees, not 90 (a sheared "
            "affine); DICOM stores perpendicular rows and columns only, so the result's "
            "geometry would be lost. Write it as NIfTI (.nii.gz) instead.")


def write_dicom(
    image: MedicalImage,
    target: Path,
    *,
    single_file: bool,
    references: Sequence[Dataset],
    series_description: str | None,
    method: str | None,
) -> list[Path]:
    """Write ``image`` as a derived series: one file per slice into folder ``target``, or the
    single slice of a 2D image to file ``target`` when ``single_file``.

    Args:
        image: The image to write (finite values; geometry from its affine).
        target: Destination folder (must exist) or file path.
        single_file: Write a 2D image to ``target`` itself.
        references: Pixel-less reference headers (``image.meta['dicom_headers']`` or given
            explicitly); may be empty.
        series_description: Free text appended to ``"medrecon <method>"``.
        method: Reconstruction method name, e.g. ``"iagan"``.

    Returns:
        The written file paths, in slice order.
    """
    image = image.slice_last()  # one slice stored along another axis is that slice
    check_dicom_axes(image.shape, image.affine)
    ref = references[0] if references else None
    base, date, time = _series_header(references, series_description, method)

    # Geometry in LPS.
    lps = ras_to_lps(image.affine)
    col_x, col_y, step = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    dx, dy = float(np.linalg.norm(col_x)), float(np.linalg.norm(col_y))
    row_cos, col_cos = col_x / dx, col_y / dy
    normal = np.cross(row_cos, col_cos)
    normal /= np.linalg.norm(normal)
    slice_gap = abs(float(step @ normal))

    nx, ny, nz = image.shape
    stored, slope, intercept = int16_rescale(image.array)
    wc, ww = image.meta.get("window_center"), image.meta.get("window_width")
    if wc is None or not ww:
        p_lo, p_hi = np.percentile(image.array, [0.5, 99.5])
        wc, ww = (p_lo + p_hi) / 2.0, max(float(p_hi - p_lo), 1e-3)

    same_slices = len(references) == nz
    # the slices' true places along the normal (a series with a missing slice has uneven gaps,
    # which the image's single affine spreads evenly): one output slice per source slice
    along = _reference_offsets(references, normal) if same_slices else None
    gaps = np.abs(np.diff(along)) if along is not None and len(along) > 1 else None
    # one spacing for the series only where the slices are evenly spaced (optional tag)
    even = gaps is None or float(gaps.max() - gaps.min()) <= 1e-3 * max(float(gaps.mean()), 1e-6)
    located = _located(ref)
    thickness = _source_thickness(ref, normal) if same_slices else None
    written = []
    for k in range(nz):
        ds = copy.deepcopy(base)
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        ds.ContentDate, ds.ContentTime = date, time
        ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
        position = lps[:3, :3] @ np.array([0.0, 0.0, float(k)]) + lps[:3, 3]
        if along is not None:
            position = position + normal * (along[k] - float(position @ normal))
        if located:
            ds.ImagePositionPatient = [_ds(v) for v in position]
            ds.ImageOrientationPatient = [_ds(v) for v in np.concatenate([row_cos, col_cos])]
            ds.PixelSpacing = [_ds(dy), _ds(dx)]  # (between rows, between columns)
            # the acquisition's nominal thickness is kept; unknown stays empty (type 2): the
            # spacing of the slices is SpacingBetweenSlices and the positions
            ds.SliceThickness = "" if thickness is None else _ds(thickness)
            if even:
                ds.SpacingBetweenSlices = _ds(slice_gap)
            ds.SliceLocation = _ds(float(position @ normal))
        else:  # a projection (CR, DX): its spacing is the detector's, it has no patient place
            ds.ImagerPixelSpacing = [_ds(dy), _ds(dx)]
        if same_slices and "SOPInstanceUID" in references[k]:
            item = Dataset()
            item.ReferencedSOPClassUID = references[k].SOPClassUID
            item.ReferencedSOPInstanceUID = references[k].SOPInstanceUID
            ds.SourceImageSequence = DicomSequence([item])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = ny, nx
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1
        ds.RescaleSlope, ds.RescaleIntercept = _ds(slope), _ds(intercept)
        if ds.SOPClassUID != CT_IMAGE_STORAGE:  # a CT's values stay Hounsfield units
            ds.RescaleType = "HU" if str(ds.get("Modality", "")).upper() == "CT" else "US"
        ds.WindowCenter, ds.WindowWidth = _ds(wc), _ds(ww)
        ds.add_new(0x7FE00010, "OW", np.ascontiguousarray(stored[:, :, k].T).astype("<i2").tobytes())

        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.ImplementationVersionName = f"MEDRECON_{__version__}"[:16]
        path = target if single_file else target / f"IM{k + 1:05d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        written.append(path)
    return written


def _reference_offsets(references: Sequence[Dataset], normal: np.ndarray) -> list[float] | None:
    """Each reference slice's position along ``normal`` (LPS, mm), in order, or None where a
    reference has no position or lies in another orientation (then the affine's evenly spaced
    positions are written)."""
    out = []
    for ds in references:
        ipp, iop = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
        if ipp is None or iop is None or len(ipp) != 3 or len(iop) != 6:
            return None
        iop = np.asarray([float(v) for v in iop])
        n = np.cross(iop[:3], iop[3:])
        if not np.isfinite(n).all() or abs(abs(float(n @ normal)) - 1.0) > 1e-3:
            return None
        out.append(float(np.asarray([float(v) for v in ipp]) @ normal))
    return out
