"""DICOM reading with pydicom: single files, series folders, legacy and enhanced multi-frame.

What is read and how:

* Files are parsed with :func:`pydicom.dcmread` (files without the 128-byte preamble are accepted
  when they parse as an image). Pixels are decoded by pydicom's pixel backends (native, RLE,
  and JPEG/JPEG 2000 through Pillow; install ``pylibjpeg`` or ``python-gdcm`` for others).
* Every 2D frame becomes a *slice* with its own position, orientation, spacing and rescale, from
  the classic tags (``ImagePositionPatient``, ``ImageOrientationPatient``, ``PixelSpacing``,
  ``RescaleSlope/Intercept``), from the enhanced functional groups (``PlanePositionSequence``,
  ``PlaneOrientationSequence``, ``PixelMeasuresSequence``, ``PixelValueTransformationSequence``),
  or from ``GridFrameOffsetVector`` (RT Dose). Slices of one series are sorted by their position
  along the slice normal, so file names and ``InstanceNumber`` do not matter.
* Several slices at the same position make a 4D series (echoes, phases, time points); one volume
  is chosen with ``volume=N`` (ordered by temporal position, trigger time, echo number,
  acquisition number, then instance number).
* Stored values go through the modality transform (rescale slope/intercept, Modality LUT; RT
  Dose ``DoseGridScaling``); ``MONOCHROME1`` images are then inverted as ``a + b - x`` where
  ``[a, b]`` is the transformed range of the stored bits, so bright means high in every image.
  Colour images (RGB, YBR, PALETTE COLOR) become BT.601 luminance.
* Array axes are ``(column, row, slice)``; the affine is built in LPS from the tags and flipped to
  RAS. Projection images (CR/DX/MG) without a patient position use ``ImagerPixelSpacing``.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import MPEGTransferSyntaxes

from medrecon.errors import MedreconInputError, MedreconWarning
from medrecon.io._paths import (DICOM_SUFFIXES, check_claimed_size, check_finite, describe_head,
                                is_regular_file, max_voxels, sniff)
from medrecon.io.geometry import lps_to_ras
from medrecon.io.image import MedicalImage
from medrecon.io.raster import rgb_to_gray
from medrecon.limits import MAX_DICOM_FRAMES

__all__ = ["read_dicom_file", "read_dicom_folder", "read_dicom_header", "list_series"]

_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
_GRID_FRAME_OFFSET = 0x3004000C


# ---------------------------------------------------------------------------------- parsing
def read_dicom_header(path: Path, *, stop_before_pixels: bool = True) -> Dataset | None:
    """Parse ``path`` as DICOM; return ``None`` when it is not DICOM at all.

    Raises:
        MedreconInputError: The file is DICOM (has the ``DICM`` marker) but truncated/corrupt.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's VR / value warnings are not actionable
            return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        pass
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on corrupt data
        if sniff(path) == "dicom":
            raise MedreconInputError(
                f"{str(path)!r} has a DICOM marker but cannot be parsed ({type(exc).__name__}: "
                f"{exc}); it is probably truncated or corrupt. Copy it again from the source."
            ) from None
        return None
    # No preamble: accept only if a forced parse gives a plausible image header.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
        ok = "SOPClassUID" in ds or ("Rows" in ds and "Columns" in ds)
        return ds if ok and len(ds) > 2 else None
    except Exception:  # noqa: BLE001
        return None


def _not_dicom_error(path: Path) -> MedreconInputError:
    kind = sniff(path)
    looks = {"text": "a text file", "png": "a PNG image", "jpeg": "a JPEG image",
             "tiff": "a TIFF image", "gzip": "gzip data", "nifti": "a NIfTI image",
             "npy": "a numpy array"}.get(kind or "", "unknown binary data")
    return MedreconInputError(
        f"{str(path)!r} is not a DICOM file: no 'DICM' marker at byte 128 and it does not parse "
        f"as DICOM; its content looks like {looks} (starts with {describe_head(path)}). Expected "
        "a DICOM image; rename it with its real suffix or pass the right file."
    )


def _has_class(ds: Dataset) -> bool:
    """Whether ``ds`` names its SOP class (in its file meta or its dataset)."""
    meta_cls = getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None)
    return bool(meta_cls) or "SOPClassUID" in ds


def _image_class(ds: Dataset) -> str:
    """The name of ``ds``'s SOP class when it is an image storage class (``"MR Image
    Storage"``...), else ``""`` (structured reports, presentation states and the like)."""
    from pydicom.uid import UID

    meta_cls = getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None)
    cls = ds.get("SOPClassUID", None) or meta_cls
    name = UID(str(cls)).name if cls else ""
    return name if "Image Storage" in name else ""


def _is_image(ds: Dataset) -> bool:
    meta_cls = getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None)
    return str(meta_cls) != _DICOMDIR_CLASS and "Rows" in ds and "Columns" in ds


# ---------------------------------------------------------------------------------- slices
@dataclass
class _Slice:
    """One 2D frame with everything needed to place it in a volume."""

    path: Path
    frame: int | None  # None: single-frame file
    header: Dataset
    rows: int
    cols: int
    position: np.ndarray | None  # LPS mm of the centre of the first pixel
    orientation: np.ndarray | None  # (row_cosine, column_cosine) as a 6-vector
    pixel_spacing: tuple[float, float]  # (between rows, between columns)
    thickness: float | None
    slope: float | None
    intercept: float | None
    order_keys: tuple[float, ...] = field(default_factory=tuple)  # 4D ordering


def _floats(value: Any) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(v) for v in (value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value])]
    except (TypeError, ValueError):
        return None


def _first(value: Any) -> float | None:
    vals = _floats(value)
    return vals[0] if vals else None


def _fg(groups: Dataset | None, seq: str, tag: str) -> Any:
    """Attribute ``tag`` in functional group ``seq`` of a functional-groups item."""
    if groups is None or seq not in groups or not len(getattr(groups, seq)):
        return None
    return getattr(getattr(groups, seq)[0], tag, None)


def _order_keys(ds: Dataset, fg: Dataset | None = None) -> tuple[float, ...]:
    def num(v: Any) -> float:
        f = _first(v)
        return f if f is not None else 0.0

    temporal = _fg(fg, "FrameContentSequence", "TemporalPositionIndex")
    if temporal is None:
        temporal = ds.get("TemporalPositionIdentifier")
    echo = _fg(fg, "MREchoSequence", "EffectiveEchoTime")
    return (
        num(temporal),
        num(ds.get("TriggerTime")),
        num(echo if echo is not None else ds.get("EchoNumbers")),
        num(ds.get("AcquisitionNumber")),
        num(ds.get("InstanceNumber")),
    )


#: The pixel spacing of a DICOM image with none in its header (mm), said in a warning.
UNKNOWN_SPACING = (1.0, 1.0)


def _plain_spacing(ds: Dataset) -> tuple[float, float]:
    for key in ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing"):
        vals = _floats(ds.get(key))
        if vals and len(vals) >= 2 and vals[0] > 0 and vals[1] > 0:
            return (vals[0], vals[1])
    return UNKNOWN_SPACING


def _check_iop(path: Path, iop: list[float] | None) -> None:
    """Refuse an ImageOrientationPatient that is not two perpendicular directions (zeros, or
    a row along the column gave a non-finite affine and a message naming neither)."""
    if not iop or len(iop) != 6:
        return
    r, c = np.asarray(iop[:3]), np.asarray(iop[3:])
    nr, nc = float(np.linalg.norm(r)), float(np.linalg.norm(c))
    if not (np.isfinite(nr) and np.isfinite(nc)) or nr < 1e-3 or nc < 1e-3 \
            or abs(float(r @ c)) > 0.1 * nr * nc:
        raise MedreconInputError(
            f"{str(path)!r}: its ImageOrientationPatient {iop} is not two perpendicular "
            "directions (the rows' and the columns'); the header is corrupt. Repair the tag "
            "or export the series again.")


def _slices_of(path: Path, ds: Dataset) -> list[_Slice]:
    """Split one (header-only) dataset into its frames."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    n_frames = int(_first(ds.get("NumberOfFrames")) or 1)
    ipp = _floats(ds.get("ImagePositionPatient"))
    iop = _floats(ds.get("ImageOrientationPatient"))
    _check_iop(path, iop)
    thickness = _first(ds.get("SliceThickness"))
    spacing = _plain_spacing(ds)
    slope, intercept = _first(ds.get("RescaleSlope")), _first(ds.get("RescaleIntercept"))

    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and len(per_frame) == n_frames:  # enhanced multi-frame
        out = []
        for f, item in enumerate(per_frame):
            def get(seq: str, tag: str) -> Any:
                v = _fg(item, seq, tag)
                return v if v is not None else _fg(shared, seq, tag)

            f_ipp = _floats(get("PlanePositionSequence", "ImagePositionPatient"))
            f_iop = _floats(get("PlaneOrientationSequence", "ImageOrientationPatient"))
            _check_iop(path, f_iop)
            f_sp = _floats(get("PixelMeasuresSequence", "PixelSpacing"))
            f_th = _first(get("PixelMeasuresSequence", "SliceThickness"))
            f_slope = _first(get("PixelValueTransformationSequence", "RescaleSlope"))
            f_int = _first(get("PixelValueTransformationSequence", "RescaleIntercept"))
            out.append(_Slice(
                path, f, ds, rows, cols,
                np.array(f_ipp) if f_ipp and len(f_ipp) == 3 else None,
                np.array(f_iop) if f_iop and len(f_iop) == 6 else None,
                (f_sp[0], f_sp[1]) if f_sp and len(f_sp) >= 2 else spacing,
                f_th if f_th is not None else thickness,
                f_slope if f_slope is not None else slope,
                f_int if f_int is not None else intercept,
                _order_keys(ds, item) + (float(f),),
            ))
        return out

    orientation = np.array(iop) if iop and len(iop) == 6 else None
    position = np.array(ipp) if ipp and len(ipp) == 3 else None
    if n_frames == 1:
        return [_Slice(path, None, ds, rows, cols, position, orientation, spacing, thickness,
                       slope, intercept, _order_keys(ds))]

    offsets = _floats(ds.get("GridFrameOffsetVector"))
    pointer = ds.get("FrameIncrementPointer")
    uses_grid = offsets is not None and len(offsets) == n_frames and (
        pointer is None or _GRID_FRAME_OFFSET in (pointer if isinstance(pointer, list) else [pointer])
    )
    out = []
    for f in range(n_frames):
        pos = None
        if uses_grid and position is not None and orientation is not None:
            normal = np.cross(orientation[:3], orientation[3:])
            rel = offsets[f] - (offsets[0] if offsets[0] != 0 else 0.0)
            pos = position + rel * normal
        out.append(_Slice(path, f, ds, rows, cols, pos, orientation, spacing, thickness, slope,
                          intercept, _order_keys(ds) + (float(f),)))
    return out


# ---------------------------------------------------------------------------------- pixels
def _check_pixel_claim(path: Path, ds: Dataset) -> None:
    """Bound the pixel array the header claims before pydicom allocates it: uncompressed data
    must be in the file, and any image within :func:`medrecon.io._paths.max_voxels`."""
    try:
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        frames = int(_first(ds.get("NumberOfFrames")) or 1)
        spp = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.get("BitsAllocated", 16) or 16)
    except (TypeError, ValueError):
        return  # malformed tags: pydicom reports them when decoding
    if frames > MAX_DICOM_FRAMES:
        raise MedreconInputError(
            f"{str(path)!r}: its header claims {frames} frames (NumberOfFrames); medrecon reads at "
            f"most {MAX_DICOM_FRAMES} per file. The header is probably wrong; copy the file again "
            "from the source.")
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is not None and ts in MPEGTransferSyntaxes:  # before the bound: one stream, no items
        raise MedreconInputError(
            f"{str(path)!r}: its pixels are a video stream ({getattr(ts, 'name', ts)}), which "
            "no DICOM pixel decoder reads. Export its frames as images (e.g. ffmpeg, or the "
            "viewer's export to uncompressed DICOM or PNG) and pass those.")
    shape = (frames, rows, cols, spp)
    size = path.stat().st_size
    if ts is not None and getattr(ts, "is_compressed", False) and frames > size // 8:
        raise MedreconInputError(  # every encapsulated frame has an item header of 8 bytes
            f"{str(path)!r}: its header claims {frames} compressed frames, but a file of {size} "
            "bytes holds at most one per 8 bytes; it is truncated or its header is wrong. Copy "
            "it again from the source.")
    # a compressed transfer syntax, or Deflated Explicit VR (the whole dataset zlib-deflated,
    # not flagged is_compressed): the file is smaller than the pixels it holds
    if ts is not None and (getattr(ts, "is_compressed", False)
                           or getattr(ts, "is_deflated", False)):
        check_claimed_size(path, shape=shape, itemsize=max(1, bits // 8), bound_by_file=False,
                           voxels=frames * rows * cols)
        return
    data = ds.get("PixelData") if "PixelData" in ds else None
    held = len(data) if isinstance(data, (bytes, bytearray)) else size
    n = frames * rows * cols * spp
    if n * bits > 8 * held + 64:
        raise MedreconInputError(
            f"{str(path)!r}: its header claims {frames} frame(s) of {rows}x{cols} pixels "
            f"({bits}-bit), but the file holds only {held} bytes of pixel data; it is truncated "
            "or its header is wrong. Copy it again from the source.")
    check_claimed_size(path, shape=shape, itemsize=max(1, bits // 8), bound_by_file=False,
                       voxels=frames * rows * cols)


def _decode(path: Path) -> tuple[Dataset, np.ndarray]:
    ds = read_dicom_header(path, stop_before_pixels=False)
    if ds is None:
        raise _not_dicom_error(path)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise MedreconInputError(
            f"{str(path)!r} is DICOM but holds no pixel data (Modality "
            f"{ds.get('Modality', '?')}, SOP class {ds.get('SOPClassUID', '?')}); expected an "
            "image. Pass an image file or the folder of an image series."
        )
    _check_pixel_claim(path, ds)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(ts, "name", ts)
        if ts is None or not getattr(ts, "is_compressed", True):
            raise MedreconInputError(
                f"cannot read the pixels of {str(path)!r} (uncompressed, {name}): {exc} The file "
                "is probably truncated or its image tags are wrong; copy it again from the source."
            ) from None
        raise MedreconInputError(
            f"cannot decode the pixels of {str(path)!r} (transfer syntax {name}): {exc}. "
            "Install a decoder (pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg, or "
            "python-gdcm), or decompress the file first (e.g. gdcmconv --raw)."
        ) from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        arr = pydicom.pixels.apply_color_lut(arr, ds)
    return ds, arr


def _frame_values(s: _Slice, arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """Modality-transformed, MONOCHROME1-corrected float64 values of one frame, shape (R, C)."""
    n_frames = int(_first(ds.get("NumberOfFrames")) or 1)
    frame = arr[s.frame] if (n_frames > 1 and s.frame is not None) else arr
    if frame.ndim == 3:  # colour (R, C, 3)
        if s.frame in (None, 0):  # once per file
            warnings.warn(f"{s.path.name} is a colour DICOM image; it was converted to grey "
                          "(BT.601 luminance).", MedreconWarning, stacklevel=2)
        return rgb_to_gray(frame).astype(np.float64)
    frame = frame.astype(np.float64)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if s.frame is not None and "PerFrameFunctionalGroupsSequence" in ds:
        slope = 1.0 if s.slope is None else s.slope
        intercept = 0.0 if s.intercept is None else s.intercept
        transform = lambda x: x * slope + intercept  # noqa: E731
    elif "ModalityLUTSequence" in ds and "RescaleSlope" not in ds:
        transform = lambda x: np.asarray(pydicom.pixels.apply_modality_lut(x, ds), np.float64)  # noqa: E731
    else:
        slope = 1.0 if s.slope is None else s.slope
        intercept = 0.0 if s.intercept is None else s.intercept
        transform = lambda x: x * slope + intercept  # noqa: E731
    values = transform(frame)
    if "DoseGridScaling" in ds:
        values = values * float(ds.DoseGridScaling)
    if photometric == "MONOCHROME1":
        bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
        signed = int(ds.get("PixelRepresentation", 0)) == 1
        lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        ends = transform(np.array([lo, hi], dtype=np.float64))
        values = ends.min() + ends.max() - values
    return values


# ---------------------------------------------------------------------------------- assembly
def _orientation_key(s: _Slice) -> tuple:
    """What the slices of one stack share: size, orientation and pixel spacing (a slice of
    another spacing was stacked with the first slice's, its geometry wrong)."""
    o = None if s.orientation is None else tuple(np.round(s.orientation, 4))
    return (s.rows, s.cols, o, tuple(np.round(s.pixel_spacing, 4)))


def _describe_group(slices: list[_Slice]) -> str:
    s = slices[0]
    o = "no orientation" if s.orientation is None else f"orientation {np.round(s.orientation, 3).tolist()}"
    sp = "x".join(f"{v:g}" for v in s.pixel_spacing)
    return f"{len(slices)} slice(s) of {s.rows}x{s.cols} at {sp} mm, {o}"


def _assemble(slices: list[_Slice], *, volume: int | None, source: str) -> MedicalImage:
    """One stack (of one volume) of ``slices`` as an image: checked to be one orientation and
    size, ordered along the slice normal, with its LPS affine, pixels and DICOM metadata."""
    groups: dict[tuple, list[_Slice]] = defaultdict(list)
    for s in slices:
        groups[_orientation_key(s)].append(s)
    if len(groups) > 1:
        listing = "; ".join(_describe_group(g) for g in groups.values())
        raise MedreconInputError(
            f"{source} mixes images of different sizes, spacings or orientations ({listing}); expected one "
            "stack. Pass the files of one stack only (e.g. move localizers to another folder)."
        )
    located = all(s.position is not None and s.orientation is not None for s in slices)
    if slices[0].pixel_spacing is UNKNOWN_SPACING:
        warnings.warn(f"{source} has no pixel spacing in its header (PixelSpacing, "
                      "ImagerPixelSpacing); 1 mm pixels are assumed, so sizes in mm are not "
                      "physical.", MedreconWarning, stacklevel=3)
    slices, axes, dist = _slice_axis(slices, located=located, source=source)
    stack, d, n_vol = _choose_volume(slices, dist, volume=volume, source=source)
    affine_lps = _stack_affine(stack, d, axes, located=located, source=source)
    data = _read_stack(stack, source=source)
    meta = _dicom_meta(stack, slices, located=located)
    if n_vol > 1:
        meta["volume_index"] = int(volume)
        meta["n_volumes"] = n_vol
    return MedicalImage(data, lps_to_ras(affine_lps), meta)


def _slice_axis(slices: list[_Slice], *, located: bool, source: str
                ) -> tuple[list[_Slice], tuple[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    """The slices (file order when unlocated), the row/column/normal direction cosines and each
    slice's distance along the normal (its index when the frames carry no position)."""
    if located:
        o = slices[0].orientation
        row_cos, col_cos = o[:3] / np.linalg.norm(o[:3]), o[3:] / np.linalg.norm(o[3:])
        normal = np.cross(row_cos, col_cos)
        dist = np.array([float(s.position @ normal) for s in slices])
        return slices, (row_cos, col_cos, normal), dist
    row_cos, col_cos, normal = np.eye(3)
    slices = sorted(slices, key=lambda s: s.order_keys)
    if len(slices) > 1:
        warnings.warn(
            f"{source}: frames carry no patient position/orientation; they are stacked along Z "
            "in file order with 1 mm spacing and an LPS-identity orientation.",
            stacklevel=5,
        )
    return slices, (row_cos, col_cos, normal), np.arange(len(slices), dtype=np.float64)


def _choose_volume(slices: list[_Slice], dist: np.ndarray, *, volume: int | None, source: str
                   ) -> tuple[list[_Slice], np.ndarray, int]:
    """Slices grouped by position (tolerance: 1 % of the in-plane spacing); for a 4-D series
    (several images per position) the ``volume``-th of each. Returns the stack in order along
    the normal, its distances and the number of volumes."""
    order = sorted(range(len(slices)), key=lambda i: (dist[i], slices[i].order_keys))
    tol = 0.01 * min(slices[0].pixel_spacing)
    positions: list[list[int]] = []
    for i in order:
        if positions and abs(dist[i] - dist[positions[-1][0]]) <= tol:
            positions[-1].append(i)
        else:
            positions.append([i])
    counts = Counter(len(p) for p in positions)
    n_vol = len(positions[0])
    if len(counts) > 1:
        raise MedreconInputError(
            f"{source}: {len(slices)} images at {len(positions)} slice positions with unequal "
            f"repeats ({dict(counts)} positions x repeats); expected the same number of images at "
            "every position. The series is incomplete or mixes acquisitions: pass one "
            "acquisition's files."
        )
    if n_vol > 1:
        if volume is None:
            raise MedreconInputError(
                f"{source} is 4D: {n_vol} volumes of {len(positions)} slices (several images per "
                f"slice position: echoes, phases or time points). Choose one with volume=N, "
                f"0 <= N < {n_vol} (CLI: --volume N of the scan to reconstruct; a 4D mask or "
                "ground truth: save the volume you mean as its own series)."
            )
        if not isinstance(volume, (int, np.integer)) or not 0 <= int(volume) < n_vol:
            raise MedreconInputError(
                f"volume={volume!r} is out of range for {source}, which has {n_vol} volumes; "
                f"expected an integer 0 <= volume < {n_vol}."
            )
        chosen = [sorted(p, key=lambda i: slices[i].order_keys)[int(volume)] for p in positions]
    else:
        if volume not in (None, 0):
            raise MedreconInputError(
                f"volume={volume} was requested but {source} is not 4D ({len(positions)} slices, "
                "one image each); omit --volume."
            )
        chosen = [p[0] for p in positions]
    return [slices[i] for i in chosen], np.array([dist[i] for i in chosen]), n_vol


def _stack_affine(stack: list[_Slice], d: np.ndarray, axes, *, located: bool,
                  source: str) -> np.ndarray:
    """The LPS voxel-to-patient affine of the stack (mean slice step; warns when uneven)."""
    row_cos, col_cos, normal = axes
    first = stack[0]
    d_row, d_col = first.pixel_spacing  # between rows (along column cosine), between columns
    if len(stack) > 1:
        if located:
            step = (stack[-1].position - first.position) / (len(stack) - 1)
        else:
            step = normal * 1.0
        gaps = np.diff(d)
        if located and np.max(np.abs(gaps - gaps.mean())) > 0.01 * abs(gaps.mean()) + 1e-3:
            warnings.warn(
                f"{source}: slice spacing is not uniform (from {gaps.min():.4g} to "
                f"{gaps.max():.4g} mm; missing slices?). The affine uses the mean spacing "
                f"{gaps.mean():.4g} mm, so positions of some slices are approximate in a NIfTI "
                "result; a DICOM result keeps every slice's own position.",
                stacklevel=5,
            )
    else:
        th = _first(first.header.get("SpacingBetweenSlices")) or first.thickness or 1.0
        step = normal * float(th)
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_cos * d_col
    affine_lps[:3, 1] = col_cos * d_row
    affine_lps[:3, 2] = step
    affine_lps[:3, 3] = first.position if located else 0.0
    return affine_lps


def _read_stack(stack: list[_Slice], *, source: str) -> np.ndarray:
    """The stack's values ``(cols, rows, slices)`` float32, each file decoded once, after the
    voxel-count guard."""
    first = stack[0]
    n_vox = first.cols * first.rows * len(stack)
    if n_vox > max_voxels():
        raise MedreconInputError(
            f"{source}: {len(stack)} slice(s) of {first.rows}x{first.cols} pixels are {n_vox:,} "
            f"voxels, more than medrecon reads at once ({max_voxels():,}); crop or downsample "
            "the series first, or raise MEDRECON_MAX_VOXELS if you have the memory.")
    data = np.empty((first.cols, first.rows, len(stack)), dtype=np.float32)
    cache: dict[Path, tuple[Dataset, np.ndarray]] = {}
    for k, s in enumerate(stack):
        if s.path not in cache:
            cache = {s.path: _decode(s.path)}  # one file decoded at a time
        ds, arr = cache[s.path]
        data[:, :, k] = _frame_values(s, arr, ds).T
    check_finite(data, what=source)
    return data


def _dicom_meta(stack: list[_Slice], slices: list[_Slice], *, located: bool) -> dict[str, Any]:
    """The image metadata: identifiers, every slice's header and frame (for writing back),
    photometric interpretation and the display window (in stored-value terms)."""
    first = stack[0]
    hdr = first.header
    photometric = str(hdr.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    meta: dict[str, Any] = {
        "format": "dicom",
        "modality": str(hdr.get("Modality", "")) or None,
        "photometric": photometric,
        "inverted": photometric == "MONOCHROME1",
        "series_uid": str(hdr.get("SeriesInstanceUID", "")) or None,
        "series_description": str(hdr.get("SeriesDescription", "")) or None,
        "study_uid": str(hdr.get("StudyInstanceUID", "")) or None,
        "frame_of_reference_uid": str(hdr.get("FrameOfReferenceUID", "")) or None,
        "dicom_headers": [s.header for s in stack],
        "dicom_frames": [s.frame for s in stack],
        "geometry": "patient" if located else "unknown",
        "source_paths": sorted({str(s.path) for s in slices}),
        "slice_thickness": first.thickness,
    }
    wc, ww = _first(hdr.get("WindowCenter")), _first(hdr.get("WindowWidth"))
    if wc is not None and ww:
        if meta["inverted"]:
            s0 = first.slope if first.slope is not None else 1.0
            i0 = first.intercept if first.intercept is not None else 0.0
            bits = int(hdr.get("BitsStored", hdr.get("BitsAllocated", 16)))
            signed = int(hdr.get("PixelRepresentation", 0)) == 1
            lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
            wc = (lo * s0 + i0) + (hi * s0 + i0) - wc
        meta["window_center"], meta["window_width"] = wc, ww
    return meta


# ---------------------------------------------------------------------------------- entry points
def read_dicom_file(path: Path, *, volume: int | None = None) -> MedicalImage:
    """Read one DICOM file (single- or multi-frame) into a :class:`MedicalImage`."""
    ds = read_dicom_header(path)
    if ds is None:
        raise _not_dicom_error(path)
    if not _is_image(ds):
        raise MedreconInputError(
            f"{str(path)!r} is DICOM but not an image (Modality {ds.get('Modality', '?')}, "
            f"SOP class {getattr(ds.get('SOPClassUID'), 'name', ds.get('SOPClassUID', '?'))}); "
            "expected an image. Pass an image file or the folder of an image series."
        )
    if "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        _check_pixel_claim(path, ds)  # before anything is allocated
    image = _assemble(_slices_of(path, ds), volume=volume, source=repr(str(path)))
    image.meta["path"] = str(path)
    return image


def _scan(folder: Path) -> tuple[dict[str, list[tuple[Path, Dataset]]], list[Path]]:
    """Group the image DICOM files under ``folder`` (recursively) by SeriesInstanceUID."""
    series: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    skipped: list[Path] = []

    def unreadable(exc: OSError) -> None:  # os.walk ignored it: "holds no files"
        raise MedreconInputError(
            f"cannot list folder {str(exc.filename or folder)!r}: {exc.strerror or exc}. Fix "
            "its permissions, or pass a folder you can read.") from None

    for root, dirs, files in os.walk(folder, onerror=unreadable):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            p = Path(root) / name
            if (name.startswith(".") or name.upper() == "DICOMDIR" or not is_regular_file(p)
                    or p.stat().st_size == 0):  # devices, pipes and link loops are never read
                skipped.append(p)
                continue
            try:
                ds = read_dicom_header(p)
            except MedreconInputError:
                ds = None
            except OSError as exc:  # e.g. one file without read permission
                raise MedreconInputError(
                    f"cannot read {str(p)!r} in the series folder: {exc.strerror or exc}. Fix "
                    "its permissions, or move it out of the folder.") from None
            if ds is None and p.suffix.lower() in DICOM_SUFFIXES:
                # named as DICOM but not DICOM: a damaged slice, dropped without a word
                raise MedreconInputError(
                    f"{str(p)!r} in the series folder is named as DICOM but is not a readable "
                    "DICOM file (damaged or truncated); copy it again from the source, or move "
                    "it out of the folder.")
            if ds is not None and not _has_class(ds) and not _is_image(ds):
                raise MedreconInputError(  # every DICOM object names its SOP class first
                    f"{str(p)!r} in the series folder has a DICOM marker but no SOP class: the "
                    "file is damaged or truncated. Copy it again from the source, or move it "
                    "out of the folder.")
            if ds is not None and not _is_image(ds) and _image_class(ds):
                # an image whose header stops before its size: a truncated slice, which was
                # left out of its series without a word
                raise MedreconInputError(
                    f"{str(p)!r} in the series folder is a {_image_class(ds)} object without "
                    "its image size (Rows / Columns): the file is damaged or truncated. Copy it "
                    "again from the source, or move it out of the folder.")
            if ds is None or not _is_image(ds):
                skipped.append(p)
                continue
            series[str(ds.get("SeriesInstanceUID", "")) or "<no SeriesInstanceUID>"].append((p, ds))
    return series, skipped


def list_series(folder: str | os.PathLike) -> list[dict[str, Any]]:
    """Describe every image series under ``folder``.

    Returns:
        One dict per series with ``series_uid``, ``modality``, ``series_number``,
        ``description`` and ``n_files``, sorted by series number.
    """
    series, _ = _scan(Path(folder))
    rows = []
    for uid, items in series.items():
        ds = items[0][1]
        rows.append({
            "series_uid": uid,
            "modality": str(ds.get("Modality", "")),
            "series_number": ds.get("SeriesNumber"),
            "description": str(ds.get("SeriesDescription", "")),
            "n_files": len(items),
        })
    return sorted(rows, key=lambda r: (r["series_number"] is None, r["series_number"] or 0, r["series_uid"]))


def _series_table(folder: Path) -> str:
    return "\n".join(
        f"  {r['series_uid']}  {r['modality'] or '?':>3}  #{r['series_number']}  "
        f"{r['description'] or '(no description)'!r}  {r['n_files']} file(s)"
        for r in list_series(folder)
    )


def read_dicom_folder(
    folder: Path, *, series_uid: str | None = None, volume: int | None = None
) -> MedicalImage:
    """Read one image series from a folder of DICOM files (searched recursively)."""
    series, skipped = _scan(folder)
    if not series:
        what = f"{len(skipped)} file(s), none of them a DICOM image" if skipped else "no files"
        raise MedreconInputError(
            f"folder {str(folder)!r} holds {what}; expected DICOM image files (a series folder). "
            "Pass the folder that contains the .dcm files, or a single image file."
        )
    if series_uid is None:
        if len(series) > 1:
            raise MedreconInputError(
                f"folder {str(folder)!r} holds {len(series)} DICOM series; choose one with "
                f"series_uid=... (CLI: --series UID). Series found:\n{_series_table(folder)}"
            )
        uid = next(iter(series))
    else:
        uid = str(series_uid).strip()
        if uid not in series:
            raise MedreconInputError(
                f"series {uid!r} is not in folder {str(folder)!r}. Series found:\n"
                f"{_series_table(folder)}"
            )
    for p, ds in series[uid]:
        if "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
            _check_pixel_claim(p, ds)  # before its frames are listed
    slices = [s for p, ds in series[uid] for s in _slices_of(p, ds)]
    image = _assemble(slices, volume=volume, source=f"series {uid} in {str(folder)!r}")
    image.meta["path"] = str(folder)
    return image
