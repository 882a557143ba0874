"""Generate the tiny DICOM samples used by tests/test_io.py (a few KB in total).

Run ``python tests/data/make_samples.py`` to (re)create them; the output is deterministic (fixed
UIDs, no timestamps). The functions ``*_expected()`` give the ground truth the tests compare
against: voxel values in medrecon's ``(column, row, slice)`` order and the LPS geometry used to
write the files, so the readers are checked against how the files were made, not against
themselves.

Samples:

* ``ct_oblique/``: CT series, 4 oblique slices of 5 rows x 7 columns, anisotropic pixels
  (0.7 mm between rows, 0.9 mm between columns), 2.5 mm slices, per-slice rescale, file names and
  InstanceNumbers in scrambled order (sorting must use positions).
* ``two_series/``: two MR series in one folder (2 and 1 slices) plus a non-DICOM text file.
* ``mr_echoes/``: one MR series with 2 echoes x 3 slice positions (a 4D series).
* ``cr_mono1.dcm``: MONOCHROME1 CR, 12-bit, ImagerPixelSpacing only.
* ``enhanced_mr_4d.dcm``: Enhanced MR multi-frame, 3 positions x 2 temporal positions, frames
  stored shuffled, per-frame rescale in functional groups.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

HERE = Path(__file__).resolve().parent
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
STUDY_UID = generate_uid(entropy_srcs=["medrecon-test-study"])
FOR_UID = generate_uid(entropy_srcs=["medrecon-test-for"])


def uid(*parts: object) -> str:
    """Deterministic UID for the given labels."""
    return generate_uid(entropy_srcs=["medrecon-test", *map(str, parts)])


def rotation(a: float, b: float, c: float) -> np.ndarray:
    """Rotation matrix from three angles (radians) about x, y, z."""
    ca, sa, cb, sb, cc, sc = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(c), np.sin(c)
    rx = np.array([[1, 0, 0], [0, ca, -sa], [0, sa, ca]])
    ry = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    rz = np.array([[cc, -sc, 0], [sc, cc, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _base(sop_class: str, sop_uid: str, modality: str, series_uid: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.PatientName, ds.PatientID = "Test^Phantom", "MEDRECON-0001"
    ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
    ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = STUDY_UID, "20240102", "101500"
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "ACC1", ""
    ds.StudyDescription = "medrecon test study"
    ds.SeriesInstanceUID, ds.Modality = series_uid, modality
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = FOR_UID, ""
    ds.Manufacturer = "medrecon-tests"
    return ds


def _pixels(ds: Dataset, stored: np.ndarray, *, bits: int = 16, signed: bool = True) -> None:
    ds.SamplesPerPixel = 1
    ds.Rows, ds.Columns = stored.shape[-2:]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
    ds.PixelRepresentation = int(signed)
    ds.PixelData = stored.astype("<i2" if signed else "<u2").tobytes()


def _save(ds: Dataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


# ----------------------------------------------------------------------------- CT oblique series
CT_ROWS, CT_COLS, CT_SLICES = 5, 7, 4
CT_ROW_SPACING, CT_COL_SPACING, CT_GAP = 0.7, 0.9, 2.5
CT_R = rotation(0.3, -0.2, 0.5)  # columns: row cosine, column cosine, normal
CT_ORIGIN = np.array([-12.5, 30.25, 101.0])
CT_SERIES = uid("ct-series")
CT_FILE_ORDER = [2, 0, 3, 1]  # spatial slice k is written as file/instance CT_FILE_ORDER[k]


def ct_stored(k: int) -> np.ndarray:
    """Stored int16 values of spatial slice k, shape (rows, cols)."""
    r, c = np.mgrid[:CT_ROWS, :CT_COLS]
    return (10 * r + c + 100 * k - 150).astype(np.int16)


def ct_rescale(k: int) -> tuple[float, float]:
    return 1.0 + 0.5 * k, -1024.0 + k


def ct_expected() -> tuple[np.ndarray, np.ndarray]:
    """(array (cols, rows, slices), LPS affine) of the CT series."""
    arr = np.stack([(ct_stored(k) * ct_rescale(k)[0] + ct_rescale(k)[1]).T
                    for k in range(CT_SLICES)], axis=-1)
    aff = np.eye(4)
    aff[:3, 0] = CT_R[:, 0] * CT_COL_SPACING
    aff[:3, 1] = CT_R[:, 1] * CT_ROW_SPACING
    aff[:3, 2] = CT_R[:, 2] * CT_GAP
    aff[:3, 3] = CT_ORIGIN
    return arr.astype(np.float32), aff


def make_ct(folder: Path) -> None:
    for k in range(CT_SLICES):
        n = CT_FILE_ORDER[k]
        ds = _base(CT_IMAGE, uid("ct", k), "CT", CT_SERIES)
        ds.SeriesNumber, ds.SeriesDescription = 3, "oblique phantom"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = n + 1
        ds.KVP = "120"
        ds.ImagePositionPatient = [f"{v:.6f}" for v in CT_ORIGIN + k * CT_GAP * CT_R[:, 2]]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in np.r_[CT_R[:, 0], CT_R[:, 1]]]
        ds.PixelSpacing = [str(CT_ROW_SPACING), str(CT_COL_SPACING)]
        ds.SliceThickness = str(CT_GAP)
        slope, intercept = ct_rescale(k)
        ds.RescaleSlope, ds.RescaleIntercept = str(slope), str(intercept)
        ds.WindowCenter, ds.WindowWidth = "40", "400"
        ds.PhotometricInterpretation = "MONOCHROME2"
        _pixels(ds, ct_stored(k))
        _save(ds, folder / f"slice_{n:02d}.dcm")


# ----------------------------------------------------------------------------- two series
TWO_SERIES = {uid("series-a"): ("T1 axial", 2), uid("series-b"): ("T2 axial", 1)}


def make_two_series(folder: Path) -> None:
    for s, (series_uid, (desc, n)) in enumerate(TWO_SERIES.items()):
        for k in range(n):
            ds = _base(MR_IMAGE, uid("two", s, k), "MR", series_uid)
            ds.SeriesNumber, ds.SeriesDescription, ds.InstanceNumber = s + 1, desc, k + 1
            ds.ImageType = ["ORIGINAL", "PRIMARY", "M"]
            ds.ScanningSequence, ds.SequenceVariant = "SE", "NONE"
            ds.ImagePositionPatient = [0, 0, 4.0 * k]
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.PixelSpacing = [1.0, 1.0]
            ds.SliceThickness = 4.0
            ds.PhotometricInterpretation = "MONOCHROME2"
            _pixels(ds, np.full((3, 4), 10 * s + k, dtype=np.int16))
            _save(ds, folder / f"s{s}_{k}.dcm")
    (folder / "notes.txt").write_text("not a DICOM file\n")


# ----------------------------------------------------------------------------- 4D echoes
ECHO_SERIES = uid("echo-series")
ECHO_TIMES = (12.0, 80.0)


def echo_stored(e: int, k: int) -> np.ndarray:
    r, c = np.mgrid[:3, :4]
    return (1000 * (e + 1) + 10 * k + 4 * r + c).astype(np.int16)


def make_echoes(folder: Path) -> None:
    i = 0
    for k in (2, 0, 1):
        for e in (1, 0):
            ds = _base(MR_IMAGE, uid("echo", e, k), "MR", ECHO_SERIES)
            ds.SeriesNumber, ds.SeriesDescription, ds.InstanceNumber = 5, "dual echo", 10 - i
            ds.ImageType = ["ORIGINAL", "PRIMARY", "M"]
            ds.ScanningSequence, ds.SequenceVariant = "SE", "NONE"
            ds.EchoNumbers, ds.EchoTime = e + 1, ECHO_TIMES[e]
            ds.ImagePositionPatient = [0.0, 0.0, -5.0 + 3.0 * k]
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.PixelSpacing = [1.5, 1.5]
            ds.SliceThickness = 3.0
            ds.PhotometricInterpretation = "MONOCHROME2"
            _pixels(ds, echo_stored(e, k))
            _save(ds, folder / f"img{i:02d}.dcm")
            i += 1


# ----------------------------------------------------------------------------- MONOCHROME1 CR
def cr_stored() -> np.ndarray:
    r, c = np.mgrid[:6, :4]
    return (100 * r + 7 * c).astype(np.uint16)


def make_mono1(path: Path) -> None:
    ds = _base(CR_IMAGE, uid("cr"), "CR", uid("cr-series"))
    ds.SeriesNumber, ds.SeriesDescription, ds.InstanceNumber = 1, "chest PA", 1
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.ImagerPixelSpacing = [0.2, 0.15]
    ds.WindowCenter, ds.WindowWidth = "1000", "2000"
    ds.PhotometricInterpretation = "MONOCHROME1"
    _pixels(ds, cr_stored(), bits=12, signed=False)
    _save(ds, path)


# ----------------------------------------------------------------------------- enhanced MR 4D
EMR_R = rotation(0.0, 0.1, -0.25)
EMR_ORIGIN = np.array([5.0, -7.5, 20.0])
EMR_SPACING = (0.8, 0.6)  # between rows, between columns
EMR_GAP = 3.0
EMR_FRAMES = [(1, 2), (0, 0), (1, 0), (0, 2), (1, 1), (0, 1)]  # stored order: (temporal, slice)


def emr_stored(t: int, k: int) -> np.ndarray:
    r, c = np.mgrid[:4, :5]
    return (500 * t + 20 * k + 5 * r + c).astype(np.int16)


def emr_rescale(t: int, k: int) -> tuple[float, float]:
    return 0.5 + 0.25 * t, 10.0 * k


def emr_expected(t: int) -> tuple[np.ndarray, np.ndarray]:
    arr = np.stack([(emr_stored(t, k) * emr_rescale(t, k)[0] + emr_rescale(t, k)[1]).T
                    for k in range(3)], axis=-1)
    aff = np.eye(4)
    aff[:3, 0] = EMR_R[:, 0] * EMR_SPACING[1]
    aff[:3, 1] = EMR_R[:, 1] * EMR_SPACING[0]
    aff[:3, 2] = EMR_R[:, 2] * EMR_GAP
    aff[:3, 3] = EMR_ORIGIN
    return arr.astype(np.float32), aff


def make_enhanced(path: Path) -> None:
    ds = _base(ENHANCED_MR, uid("emr"), "MR", uid("emr-series"))
    ds.SeriesNumber, ds.SeriesDescription, ds.InstanceNumber = 7, "cine enhanced", 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.NumberOfFrames = len(EMR_FRAMES)
    shared = Dataset()
    pm = Dataset()
    pm.PixelSpacing, pm.SliceThickness = list(EMR_SPACING), EMR_GAP
    po = Dataset()
    po.ImageOrientationPatient = [f"{v:.8f}" for v in np.r_[EMR_R[:, 0], EMR_R[:, 1]]]
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = Sequence([pm]), Sequence([po])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for t, k in EMR_FRAMES:
        item = Dataset()
        pp = Dataset()
        pp.ImagePositionPatient = [f"{v:.6f}" for v in EMR_ORIGIN + k * EMR_GAP * EMR_R[:, 2]]
        fc = Dataset()
        fc.TemporalPositionIndex = t + 1
        pv = Dataset()
        pv.RescaleSlope, pv.RescaleIntercept = [str(v) for v in emr_rescale(t, k)]
        pv.RescaleType = "US"
        item.PlanePositionSequence = Sequence([pp])
        item.FrameContentSequence = Sequence([fc])
        item.PixelValueTransformationSequence = Sequence([pv])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PhotometricInterpretation = "MONOCHROME2"
    _pixels(ds, np.stack([emr_stored(t, k) for t, k in EMR_FRAMES]))
    _save(ds, path)


def main(out: Path = HERE) -> None:
    """Write every sample under ``out`` (replacing older copies)."""
    for name in ("ct_oblique", "two_series", "mr_echoes"):
        shutil.rmtree(out / name, ignore_errors=True)
    make_ct(out / "ct_oblique")
    make_two_series(out / "two_series")
    make_echoes(out / "mr_echoes")
    make_mono1(out / "cr_mono1.dcm")
    make_enhanced(out / "enhanced_mr_4d.dcm")


if __name__ == "__main__":
    main()
