"""Tests for medrecon.io: geometry numerically, DICOM sorting/rescale/MONOCHROME1/multi-frame,
derived-series writing, raster and NIfTI round trips, safety of writes, and clear errors.

Ground truth comes from how the files were made (tests/data/make_samples.py, pydicom's and
nibabel's own test files read with those libraries directly) and from SimpleITK as an
independent DICOM/NIfTI geometry reader.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from nibabel.testing import data_path as NIB_DATA
from PIL import Image
from pydicom.data import get_testdata_file

from medrecon.errors import MedreconInputError
from medrecon.io import (
    MedicalImage,
    list_series,
    load_array,
    load_image,
    lps_to_ras,
    plane_of_axis,
    ras_to_lps,
    resample_affine_for_zoom,
    save_image,
    slice_axis_for_plane,
)
from medrecon.io.dicom_write import int16_rescale

DATA = Path(__file__).resolve().parent / "data"
_spec = importlib.util.spec_from_file_location("make_samples", DATA / "make_samples.py")
samples = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(samples)


def pydicom_file(name: str) -> str:
    path = get_testdata_file(name, download=False)
    if path is None:  # pragma: no cover - depends on the pydicom wheel
        pytest.skip(f"pydicom test file {name} not installed")
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def corners(affine: np.ndarray, shape) -> np.ndarray:
    """World coordinates of the 8 outer FOV corners (voxel -0.5 and n - 0.5)."""
    lo_hi = [(-0.5, n - 0.5) for n in shape]
    pts = np.array(np.meshgrid(*lo_hi, indexing="ij")).reshape(3, -1)
    return (affine[:3, :3] @ pts + affine[:3, 3:]).T


def oblique_affine() -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = samples.rotation(0.4, 0.2, -0.3) @ np.diag([0.8, 1.3, 2.5])
    a[:3, 3] = [10.0, -20.0, 5.5]
    return a


def sitk_affine_ras(img: sitk.Image) -> np.ndarray:
    """Voxel->RAS affine from a SimpleITK image (LPS spacing/origin/direction)."""
    a = np.eye(4)
    a[:3, :3] = np.array(img.GetDirection()).reshape(3, 3) @ np.diag(img.GetSpacing())
    a[:3, 3] = img.GetOrigin()
    return lps_to_ras(a)


# ============================================================================ geometry
def test_lps_ras_round_trip_and_sign():
    a = oblique_affine()
    np.testing.assert_allclose(ras_to_lps(lps_to_ras(a)), a)
    np.testing.assert_allclose(lps_to_ras(a)[:2], -a[:2])
    np.testing.assert_allclose(lps_to_ras(a)[2:], a[2:])


@pytest.mark.parametrize("zoom", [(4, 4, 1), (0.5, 2, 3), (3, 5)])
def test_resample_affine_for_zoom_keeps_fov_corners(zoom):
    a = oblique_affine()
    shape = (6, 10, 4)
    z = np.array(list(zoom) + [1] * (3 - len(zoom)), dtype=float)
    new_shape = np.array(shape) * z
    b = resample_affine_for_zoom(a, zoom)
    np.testing.assert_allclose(corners(b, new_shape), corners(a, shape), atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(b[:3, :3], axis=0),
                               np.linalg.norm(a[:3, :3], axis=0) / z)


def test_resample_affine_for_zoom_sr_x4_first_voxel_shift():
    b = resample_affine_for_zoom(np.diag([2.0, 2.0, 5.0, 1.0]), (4, 4, 1))
    # New voxel 0 centre sits at old coordinate (0.5/4 - 0.5) = -0.375 -> -0.75 mm.
    np.testing.assert_allclose(b[:3, 3], [-0.75, -0.75, 0.0])
    np.testing.assert_allclose(np.diag(b)[:3], [0.5, 0.5, 5.0])


def test_resample_affine_for_zoom_rejects_bad_factors():
    with pytest.raises(MedreconInputError, match="positive"):
        resample_affine_for_zoom(np.eye(4), (0, 1, 1))
    with pytest.raises(MedreconInputError, match="4x4|shape"):
        resample_affine_for_zoom(np.eye(3), (1, 1, 1))


def test_slice_axis_for_plane_follows_direction_cosines():
    # Voxel axes: 0 -> S (axial normal), 1 -> R (flipped), 2 -> A, slightly oblique.
    a = np.eye(4)
    a[:3, :3] = np.array([[0.05, -1.0, 0.0], [0.0, 0.02, 1.0], [1.0, 0.0, 0.1]]) * 2.0
    assert slice_axis_for_plane(a, "axial") == 0
    assert slice_axis_for_plane(a, "sagittal") == 1
    assert slice_axis_for_plane(a, "Coronal") == 2
    for axis in range(3):
        assert slice_axis_for_plane(a, plane_of_axis(a, axis)) == axis
    assert plane_of_axis(a, -3) == "axial"
    assert slice_axis_for_plane(np.eye(4), "transverse") == 2
    with pytest.raises(MedreconInputError, match="unknown plane 'oblique'"):
        slice_axis_for_plane(a, "oblique")
    with pytest.raises(MedreconInputError, match="axis"):
        plane_of_axis(a, 3)


def test_slice_axis_for_real_coronal_dicom_orientation():
    # DICOM coronal: rows along L (+x LPS), columns along F (-z LPS) -> slices along A/P.
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = [1, 0, 0], [0, 0, -1], [0, 1, 0]
    assert slice_axis_for_plane(lps_to_ras(lps), "coronal") == 2


# ============================================================================ MedicalImage
def test_medical_image_promotes_2d_and_exposes_geometry():
    img = MedicalImage(np.arange(12).reshape(3, 4), oblique_affine(), {"format": "npy"})
    assert img.array.dtype == np.float32 and img.shape == (3, 4, 1) and img.is_2d
    np.testing.assert_allclose(img.spacing, [0.8, 1.3, 2.5])
    np.testing.assert_allclose(img.origin, [10.0, -20.0, 5.5])
    np.testing.assert_allclose(img.direction, samples.rotation(0.4, 0.2, -0.3), atol=1e-12)
    assert "shape=(3, 4, 1)" in repr(img)


def test_with_array_keeps_meta_and_derives_zoomed_affine():
    img = MedicalImage(np.zeros((4, 6, 3)), oblique_affine(), {"modality": "MR"})
    same = img.with_array(np.ones((4, 6, 3)))
    np.testing.assert_array_equal(same.affine, img.affine)
    assert same.meta["modality"] == "MR" and same.meta is not img.meta
    sr = img.with_array(np.ones((16, 24, 3)))
    np.testing.assert_allclose(sr.affine, resample_affine_for_zoom(img.affine, (4, 4, 1)))
    explicit = img.with_array(np.ones((2, 2)), affine=np.eye(4))
    assert explicit.shape == (2, 2, 1) and np.array_equal(explicit.affine, np.eye(4))


@pytest.mark.parametrize(
    "array, match",
    [(np.zeros((2, 3, 4, 5)), "2D .* or 3D"), (np.zeros((3, 3), complex), "complex"),
     (np.array(["a"]), "numeric")],
)
def test_medical_image_rejects_bad_arrays(array, match):
    with pytest.raises(MedreconInputError, match=match):
        MedicalImage(array)


def test_a_file_with_a_zero_spacing_is_named_in_one_line(tmp_path):
    """A NIfTI whose sform has a zero column: one line naming the file and the fix (it was a
    multi-line matrix without the file)."""
    img = nib.Nifti1Image(np.ones((8, 8, 4), np.float32), np.diag([2.0, 2.0, 3.0, 1.0]))
    hdr = img.header.copy()
    hdr["srow_z"] = [0, 0, 0, 0]
    hdr["pixdim"][3] = 0
    hdr["sform_code"], hdr["qform_code"] = 1, 0
    hdr.set_data_offset(352)
    path = tmp_path / "zero.nii"
    path.write_bytes(hdr.binaryblock + b"\0" * 4 + np.ones((8, 8, 4), np.float32).tobytes("F"))
    with pytest.raises(MedreconInputError) as err:
        load_image(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "singular" in msg and "repair" in msg


def test_medical_image_rejects_singular_affine():
    with pytest.raises(MedreconInputError, match="singular"):
        MedicalImage(np.zeros((2, 2)), np.diag([1.0, 0.0, 1.0, 1.0]))


# ============================================================================ NIfTI
def test_nifti_real_file_values_and_affine():
    path = os.path.join(NIB_DATA, "anatomical.nii")
    ref = nib.load(path)
    img = load_image(path)
    np.testing.assert_array_equal(img.array, ref.get_fdata(dtype=np.float32))
    np.testing.assert_allclose(img.affine, ref.affine)
    assert img.meta["format"] == "nifti" and img.meta["source_paths"] == [str(Path(path).resolve())]


def test_nifti_round_trip_geometry_checked_by_simpleitk(tmp_path):
    arr = np.random.default_rng(0).normal(size=(5, 7, 3)).astype(np.float32)
    img = MedicalImage(arr, oblique_affine())
    out = save_image(img, tmp_path / "x.nii.gz", method="csgm")
    back = load_image(out)
    np.testing.assert_array_equal(back.array, arr)
    np.testing.assert_allclose(back.affine, img.affine, atol=1e-5)
    s = sitk.ReadImage(str(out))
    np.testing.assert_allclose(s.GetSpacing(), img.spacing, rtol=1e-5)
    np.testing.assert_allclose(sitk_affine_ras(s), img.affine, atol=1e-4)
    np.testing.assert_allclose(sitk.GetArrayFromImage(s).transpose(2, 1, 0), arr)
    assert b"medrecon csgm" in nib.load(out).header["descrip"].tobytes()


def test_nifti_sheared_affine_keeps_exact_sform(tmp_path):
    sheared = oblique_affine()
    sheared[:3, 2] += 0.3 * sheared[:3, 0]  # gantry-tilt-like shear
    out = save_image(MedicalImage(np.ones((3, 4, 5)), sheared), tmp_path / "tilt.nii")
    hdr = nib.load(out).header
    assert int(hdr["qform_code"]) == 0 and int(hdr["sform_code"]) > 0
    np.testing.assert_allclose(load_image(out).affine, sheared, atol=1e-5)


def test_nifti_2d_and_unit_conversion(tmp_path):
    im = nib.Nifti1Image(np.arange(6, dtype=np.float32).reshape(2, 3), np.diag([0.5, 0.5, 1, 1]))
    im.header.set_xyzt_units("micron")
    nib.save(im, tmp_path / "u.nii")
    img = load_image(tmp_path / "u.nii")
    assert img.shape == (2, 3, 1)
    np.testing.assert_allclose(img.spacing[:2], [0.0005, 0.0005])


def test_nifti_4d_requires_volume():
    path = os.path.join(NIB_DATA, "example4d.nii.gz")
    with pytest.raises(MedreconInputError, match=r"4D with 2 volumes.*--volume"):
        load_image(path)
    img = load_image(path, volume=1)
    ref = nib.load(path)
    np.testing.assert_allclose(img.array, ref.dataobj[..., 1].astype(np.float32))
    assert img.meta["volume_index"] == 1
    with pytest.raises(MedreconInputError, match="out of range"):
        load_image(path, volume=2)


def test_nifti_nan_is_rejected_with_location(tmp_path):
    a = np.zeros((3, 3, 2), np.float32)
    a[1, 2, 0], a[0, 0, 1] = np.nan, np.inf
    nib.save(nib.Nifti1Image(a, np.eye(4)), tmp_path / "nan.nii.gz")
    before = digest(tmp_path / "nan.nii.gz")
    with pytest.raises(MedreconInputError, match=r"2 non-finite voxel\(s\) \(1 NaN, 1 \+/-Inf\)"):
        load_image(tmp_path / "nan.nii.gz")
    assert digest(tmp_path / "nan.nii.gz") == before


# ============================================================================ DICOM reading
def test_dicom_series_sorted_by_position_with_per_slice_rescale():
    img = load_image(DATA / "ct_oblique")
    arr, aff_lps = samples.ct_expected()
    np.testing.assert_array_equal(img.array, arr)
    np.testing.assert_allclose(img.affine, lps_to_ras(aff_lps), atol=1e-5)
    np.testing.assert_allclose(img.spacing, [0.9, 0.7, 2.5], atol=1e-6)
    assert img.meta["modality"] == "CT" and img.meta["series_uid"] == samples.CT_SERIES
    assert len(img.meta["source_paths"]) == 4 and img.meta["window_center"] == 40.0
    # dicom_headers are in array (spatial) order
    first_ipp = np.array(img.meta["dicom_headers"][0].ImagePositionPatient, dtype=float)
    np.testing.assert_allclose(first_ipp, samples.CT_ORIGIN, atol=1e-5)


def test_dicom_series_geometry_matches_simpleitk():
    img = load_image(DATA / "ct_oblique")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(DATA / "ct_oblique")))
    ref = reader.Execute()
    assert ref.GetSize() == img.shape
    np.testing.assert_allclose(sitk_affine_ras(ref), img.affine, atol=1e-4)


def test_real_siemens_series_from_nibabel_matches_simpleitk(tmp_path):
    for name in ("0.dcm", "1.dcm"):
        shutil.copy(os.path.join(NIB_DATA, name), tmp_path / f"x{name}")
    img = load_image(tmp_path)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path)))
    ref = reader.Execute()
    assert ref.GetSize() == img.shape
    ours, itk = img.affine, sitk_affine_ras(ref)
    np.testing.assert_allclose(ours[:, [0, 1, 3]], itk[:, [0, 1, 3]], atol=1e-4)
    # The slices are stacked exactly along z while the plane is slightly tilted: ITK forces an
    # orthogonal grid (off by 0.016 mm at slice 1); we keep the true slice positions.
    ipp = [np.array(pydicom.dcmread(tmp_path / f"x{n}").ImagePositionPatient, float) for n in ("0.dcm", "1.dcm")]
    np.testing.assert_allclose(ras_to_lps(ours)[:3, 2], ipp[1] - ipp[0], atol=1e-6)
    normal = itk[:3, 2] / np.linalg.norm(itk[:3, 2])
    np.testing.assert_allclose(ours[:3, 2] @ normal, ref.GetSpacing()[2], atol=1e-4)
    np.testing.assert_allclose(sitk.GetArrayFromImage(ref).transpose(2, 1, 0), img.array)


def test_dicom_single_files_from_pydicom():
    path = pydicom_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    img = load_image(path)
    np.testing.assert_array_equal(img.array[:, :, 0], ds.pixel_array.T * 1.0 - 1024.0)
    lps = np.array(ds.ImagePositionPatient, dtype=float)
    np.testing.assert_allclose(img.origin, [-lps[0], -lps[1], lps[2]])
    np.testing.assert_allclose(img.spacing, [0.661468, 0.661468, 5.0])
    mr = load_image(pydicom_file("MR_small.dcm"))
    for variant in ("MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm"):
        other = load_image(pydicom_file(variant))
        np.testing.assert_array_equal(other.array, mr.array)
        np.testing.assert_allclose(other.affine, mr.affine)


def test_dicom_legacy_multiframe_rtdose():
    path = pydicom_file("rtdose.dcm")
    ds = pydicom.dcmread(path)
    img = load_image(path)
    assert img.shape == (10, 10, 15)
    expected = ds.pixel_array.transpose(2, 1, 0) * float(ds.DoseGridScaling)
    np.testing.assert_allclose(img.array, expected, rtol=1e-6)
    np.testing.assert_allclose(img.spacing, [10.0, 10.0, 5.0])
    ipp = np.array(ds.ImagePositionPatient, dtype=float)
    np.testing.assert_allclose(img.origin, [-ipp[0], -ipp[1], ipp[2]])


def test_dicom_enhanced_multiframe_4d():
    path = DATA / "enhanced_mr_4d.dcm"
    with pytest.raises(MedreconInputError, match=r"4D: 2 volumes of 3 slices.*--volume"):
        load_image(path)
    for t in (0, 1):
        img = load_image(path, volume=t)
        arr, aff = samples.emr_expected(t)
        np.testing.assert_allclose(img.array, arr, rtol=1e-6)
        np.testing.assert_allclose(img.affine, lps_to_ras(aff), atol=1e-5)
    with pytest.raises(MedreconInputError, match="out of range"):
        load_image(path, volume=2)


def test_dicom_series_4d_echoes():
    with pytest.raises(MedreconInputError, match="4D"):
        load_image(DATA / "mr_echoes")
    img = load_image(DATA / "mr_echoes", volume=1)
    expected = np.stack([samples.echo_stored(1, k).T for k in range(3)], axis=-1)
    np.testing.assert_array_equal(img.array, expected)
    np.testing.assert_allclose(img.origin, [0.0, 0.0, -5.0])
    assert img.meta["n_volumes"] == 2
    with pytest.raises(MedreconInputError, match="not 4D"):
        load_image(DATA / "ct_oblique", volume=1)


def test_folder_with_two_series_lists_them():
    with pytest.raises(MedreconInputError) as err:
        load_image(DATA / "two_series")
    msg = str(err.value)
    assert "2 DICOM series" in msg and "--series" in msg
    for uid, (desc, n) in samples.TWO_SERIES.items():
        assert uid in msg and desc in msg and f"{n} file(s)" in msg
    uid_b = list(samples.TWO_SERIES)[1]
    img = load_image(DATA / "two_series", series_uid=uid_b)
    assert img.shape == (4, 3, 1) and img.meta["series_description"] == "T2 axial"
    assert [r["n_files"] for r in list_series(DATA / "two_series")] == [2, 1]
    with pytest.raises(MedreconInputError, match="is not in folder"):
        load_image(DATA / "two_series", series_uid="1.2.3")


def test_monochrome1_is_inverted_over_stored_range():
    img = load_image(DATA / "cr_mono1.dcm")
    np.testing.assert_array_equal(img.array[:, :, 0], 4095.0 - samples.cr_stored().T)
    assert img.meta["photometric"] == "MONOCHROME1" and img.meta["inverted"]
    assert img.meta["window_center"] == 4095.0 - 1000.0
    np.testing.assert_allclose(img.spacing[:2], [0.15, 0.2])  # ImagerPixelSpacing (row, col)


def test_dicom_colour_becomes_luminance():
    path = pydicom_file("SC_rgb_small_odd.dcm")
    rgb = pydicom.dcmread(path).pixel_array.astype(np.float64)
    img = load_image(path)
    lum = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    np.testing.assert_allclose(img.array[:, :, 0], lum.T, rtol=1e-5)


# ============================================================================ DICOM writing
def read_series(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in sorted(folder.iterdir())]


def test_derived_dicom_series_from_ct_reference(tmp_path):
    src = load_image(DATA / "ct_oblique")
    result = src.with_array(src.array + 0.25)  # non-integer values -> rescale
    out = save_image(result, tmp_path / "recon", method="iagan", series_description="test")
    back = load_image(out)
    np.testing.assert_allclose(back.array, result.array, atol=0.02)
    np.testing.assert_allclose(back.affine, src.affine, atol=1e-4)
    files = read_series(out)
    assert len(files) == 4
    ref = src.meta["dicom_headers"][0]
    for ds in files:
        assert ds.SOPClassUID == samples.CT_IMAGE
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert ds.SeriesInstanceUID != ref.SeriesInstanceUID
        assert ds.StudyInstanceUID == ref.StudyInstanceUID
        assert ds.PatientID == "MEDRECON-0001" and ds.FrameOfReferenceUID == ref.FrameOfReferenceUID
        assert ds.SeriesDescription.startswith("medrecon iagan") and "test" in ds.SeriesDescription
        assert ds.KVP == "120" and ds.Modality == "CT"
        assert ds.Rows == 5 and ds.Columns == 7
        assert ds.PixelRepresentation == 1 and ds.BitsAllocated == 16
    sop = {ds.SOPInstanceUID for ds in files} | {h.SOPInstanceUID for h in src.meta["dicom_headers"]}
    assert len(sop) == 8 and len({ds.SeriesInstanceUID for ds in files}) == 1
    sources = [ds.SourceImageSequence[0].ReferencedSOPInstanceUID for ds in files]
    assert sources == [h.SOPInstanceUID for h in src.meta["dicom_headers"]]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(out)))
    np.testing.assert_allclose(sitk_affine_ras(reader.Execute()), src.affine, atol=1e-4)


def test_super_resolved_dicom_updates_pixel_spacing_and_positions(tmp_path):
    src = load_image(DATA / "ct_oblique")
    x, y, z = src.shape
    sr = src.with_array(np.repeat(np.repeat(src.array, 2, axis=0), 2, axis=1))
    out = save_image(sr, tmp_path / "sr/", method="brgm")
    ds = read_series(out)[0]
    assert (ds.Rows, ds.Columns) == (2 * y, 2 * x)
    np.testing.assert_allclose([float(v) for v in ds.PixelSpacing], [0.35, 0.45], atol=1e-6)
    back = load_image(out)
    np.testing.assert_allclose(back.affine, resample_affine_for_zoom(src.affine, (2, 2, 1)), atol=1e-4)
    np.testing.assert_allclose(corners(back.affine, back.shape), corners(src.affine, src.shape), atol=1e-3)


def test_dicom_from_scratch_secondary_capture(tmp_path):
    arr = np.random.default_rng(1).uniform(-3000.0, 5e4, size=(6, 5, 3)).astype(np.float32)
    img = MedicalImage(arr, oblique_affine(), {"format": "npy"})
    out = save_image(img, tmp_path / "sc")
    files = read_series(out)
    assert all(ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" for ds in files)
    assert files[0].SeriesDescription == "medrecon" and files[0].ConversionType == "WSD"
    assert files[0].StudyInstanceUID == files[2].StudyInstanceUID
    back = load_image(out)
    slope = float(files[0].RescaleSlope)
    assert np.abs(back.array - arr).max() <= slope / 2 + 1e-3 * np.abs(arr).max() * 1e-3
    np.testing.assert_allclose(back.affine, img.affine, atol=1e-4)


def test_single_2d_dicom_file_with_explicit_reference(tmp_path):
    ref = load_image(pydicom_file("MR_small.dcm"))
    result = MedicalImage(ref.array * 0.5, ref.affine)
    out = save_image(result, tmp_path / "one.dcm", reference=ref, method="csgm")
    ds = pydicom.dcmread(out)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4" and ds.PatientName == "CompressedSamples^MR1"
    np.testing.assert_allclose(load_image(out).array, result.array, atol=0.01)
    with pytest.raises(MedreconInputError, match="folder path"):
        save_image(load_image(DATA / "ct_oblique"), tmp_path / "vol.dcm")


def test_int16_rescale_never_clips():
    for data in (np.array([-1e6, 3.5, 2e6]), np.array([1e-4, 2e-4]), np.array([7.0, 7.0])):
        stored, slope, intercept = int16_rescale(data)
        assert stored.dtype == np.int16
        np.testing.assert_allclose(stored * slope + intercept, data, atol=slope / 2 + 1e-12)
    stored, slope, intercept = int16_rescale(np.array([-1024.0, 3071.0]))
    assert (slope, intercept) == (1.0, 0.0) and stored.tolist() == [-1024, 3071]


# ============================================================================ rasters / npy
def test_png_gray_rgb_and_16bit(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(gray).save(tmp_path / "g.png")
    img = load_image(tmp_path / "g.png")
    assert img.shape == (4, 3, 1)
    np.testing.assert_array_equal(img.array[:, :, 0], gray.T)
    rgb = np.random.default_rng(2).integers(0, 256, (3, 4, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    lum = rgb.astype(float) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(load_image(tmp_path / "c.png").array[:, :, 0], lum.T, rtol=1e-5)
    # 16-bit write/read round trip, values > 255 kept exactly
    img16 = MedicalImage(np.array([[0.0, 300.0], [65535.0, 1.0]]))
    out = save_image(img16, tmp_path / "w.png")
    np.testing.assert_array_equal(load_image(out).array, img16.array)
    np.testing.assert_array_equal(load_array(out), img16.array[:, :, 0])


def test_png_derived_from_8bit_png_stays_8bit_and_clips(tmp_path):
    Image.fromarray(np.full((3, 4), 100, np.uint8)).save(tmp_path / "in.png")
    src = load_image(tmp_path / "in.png")
    result = src.with_array(np.array([[-3.0, 100.4, 258.0]] * 4))
    out = save_image(result, tmp_path / "out.png", inputs=[tmp_path / "in.png"])
    with Image.open(out) as im:
        assert im.mode == "L"
        np.testing.assert_array_equal(np.array(im).T, [[0, 100, 255]] * 4)


def test_series_description_composition(tmp_path):
    src = load_image(DATA / "ct_oblique")
    out = save_image(src.with_array(src.array), tmp_path / "a", method="csgm")
    assert read_series(out)[0].SeriesDescription == "medrecon csgm: oblique phantom"
    out = save_image(src.with_array(src.array), tmp_path / "b", method="csgm",
                     series_description="medrecon sr csgm")
    assert read_series(out)[0].SeriesDescription == "medrecon sr csgm"


def test_truncated_uncompressed_dicom_says_truncated():
    with pytest.raises(MedreconInputError, match="truncated"):
        load_image(pydicom_file("MR_truncated.dcm"))


def test_tiff_float_round_trip_and_png_rescale_warning(tmp_path):
    arr = np.random.default_rng(3).normal(size=(5, 3)).astype(np.float32)
    out = save_image(MedicalImage(arr), tmp_path / "f.tif")
    np.testing.assert_array_equal(load_image(out).array[:, :, 0], arr)
    with pytest.warns(UserWarning, match="rescaled"):
        save_image(MedicalImage(arr), tmp_path / "f.png")
    with pytest.raises(MedreconInputError, match="3D result"):
        save_image(MedicalImage(np.zeros((2, 2, 2))), tmp_path / "v.png")


def test_npy_and_load_array(tmp_path):
    arr = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    np.save(tmp_path / "a.npy", arr)
    img = load_image(tmp_path / "a.npy")
    np.testing.assert_array_equal(img.array, arr)
    assert np.array_equal(img.affine, np.eye(4))
    mask = np.zeros((3, 5), bool)
    mask[1, 2] = True
    np.save(tmp_path / "m.npy", mask)
    m = load_array(tmp_path / "m.npy")
    assert m.shape == (3, 5) and m.dtype == np.float32 and m[1, 2] == 1.0
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(MedreconInputError, match="never unpickles"):
        load_image(tmp_path / "obj.npy")


# ============================================================================ write safety
def test_existing_output_refused_unless_overwrite(tmp_path):
    img = MedicalImage(np.ones((2, 3)))
    out = save_image(img, tmp_path / "o.nii.gz")
    before = digest(out)
    with pytest.raises(MedreconInputError, match="already exists.*--overwrite"):
        save_image(MedicalImage(np.zeros((2, 3))), out)
    assert digest(out) == before
    save_image(MedicalImage(np.zeros((2, 3))), out, overwrite=True)
    assert load_image(out).array.max() == 0.0
    series = save_image(img, tmp_path / "series")
    with pytest.raises(MedreconInputError, match="already exists"):
        save_image(img, series)
    save_image(img, series, overwrite=True)
    assert len(list(series.iterdir())) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_inputs_are_never_overwritten(tmp_path):
    src = tmp_path / "in.nii.gz"
    shutil.copy(os.path.join(NIB_DATA, "standard.nii.gz"), src)
    before = digest(src)
    img = load_image(src)
    with pytest.raises(MedreconInputError, match="never writes over"):
        save_image(img, src, overwrite=True)  # protected through meta['source_paths']
    with pytest.raises(MedreconInputError, match="never writes over"):
        save_image(MedicalImage(img.array), str(src), overwrite=True, inputs=[src])
    dcm_dir = tmp_path / "dcm"
    shutil.copytree(DATA / "ct_oblique", dcm_dir)
    with pytest.raises(MedreconInputError, match="never writes over"):
        save_image(MedicalImage(np.zeros((2, 2))), dcm_dir, overwrite=True, inputs=[dcm_dir / "slice_00.dcm"])
    assert digest(src) == before and len(list(dcm_dir.iterdir())) == 4


def test_failed_write_leaves_previous_output_and_no_temp(tmp_path, monkeypatch):
    import medrecon.io.api as api

    out = save_image(MedicalImage(np.ones((2, 2))), tmp_path / "keep.nii")
    before = digest(out)

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(api, "write_nifti", boom)
    monkeypatch.setattr(api, "write_dicom", boom)
    with pytest.raises(RuntimeError):
        save_image(MedicalImage(np.zeros((2, 2))), out, overwrite=True)
    with pytest.raises(RuntimeError):
        save_image(MedicalImage(np.zeros((2, 2))), tmp_path / "dicom_out")
    assert digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.nii"]


def test_writing_does_not_touch_global_rngs(tmp_path):
    import torch

    np_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state().clone()
    save_image(MedicalImage(np.ones((3, 3, 2))), tmp_path / "s")
    assert np.array_equal(np.random.get_state()[1], np_state)
    assert torch.equal(torch.get_rng_state(), torch_state)


# ============================================================================ bad inputs
def _bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    (tmp_path / "empty.dcm").write_bytes(b"")
    (tmp_path / "text.dcm").write_text("patient scan, see attached\n")
    (tmp_path / "fake.nii.gz").write_text("not really gzip")
    whole = gzip.compress((Path(NIB_DATA) / "anatomical.nii").read_bytes())
    (tmp_path / "trunc.nii.gz").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "scan.xyz").write_text("hello")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    shutil.copy(pydicom_file("rtplan.dcm"), tmp_path / "plan.dcm")
    (tmp_path / "nodicom").mkdir()
    (tmp_path / "nodicom" / "readme.txt").write_text("x")
    return {
        "missing": (tmp_path / "nope.nii.gz", "does not exist"),
        "empty": (tmp_path / "empty.dcm", "empty file"),
        "text": (tmp_path / "text.dcm", "not a DICOM file.*looks like a text file"),
        "fake_gz": (tmp_path / "fake.nii.gz", "not gzip-compressed NIfTI"),
        "truncated": (tmp_path / "trunc.nii.gz", "truncated|cannot read"),
        "suffix": (tmp_path / "scan.xyz", r"unsupported suffix '.xyz'; supported: .nii, .nii.gz"),
        "png": (tmp_path / "broken.png", "cannot read .* as a .png image"),
        "not_image": (tmp_path / "plan.dcm", "not an image"),
        "no_dicom_in_folder": (tmp_path / "nodicom", "none of them a DICOM image"),
    }


@pytest.mark.parametrize(
    "case", ["missing", "empty", "text", "fake_gz", "truncated", "suffix", "png", "not_image",
             "no_dicom_in_folder"],
)
def test_bad_inputs_raise_clear_errors_and_leave_files_intact(tmp_path, case):
    path, match = _bad_inputs(tmp_path)[case]
    before = digest(path) if path.is_file() else None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no stray warnings either
        with pytest.raises(MedreconInputError, match=match) as err:
            load_image(path)
    assert isinstance(err.value, ValueError)
    assert "Traceback" not in str(err.value)
    if before is not None:
        assert digest(path) == before


def test_bad_save_arguments(tmp_path):
    img = MedicalImage(np.ones((2, 2)))
    with pytest.raises(MedreconInputError, match="unsupported suffix '.jpg'"):
        save_image(img, tmp_path / "x.jpg")
    with pytest.raises(MedreconInputError, match="MedicalImage"):
        save_image(np.ones((2, 2)), tmp_path / "x.nii")
    bad = MedicalImage(np.array([[1.0, np.nan]]))
    with pytest.raises(MedreconInputError, match="non-finite"):
        save_image(bad, tmp_path / "x.nii")
    assert not (tmp_path / "x.nii").exists()


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_itk_formats_keep_geometry(tmp_path, suffix):
    """MetaImage and NRRD through SimpleITK: the same voxels and RAS affine as the NIfTI of
    the same image (nibabel), and a bound on the claimed size."""
    import nibabel as nib
    import SimpleITK as sitk

    from medrecon.io import load_image

    arr = np.random.default_rng(0).random((7, 6, 5)).astype(np.float32)  # (x, y, z)
    img = sitk.GetImageFromArray(arr.T)  # SimpleITK arrays are (z, y, x)
    img.SetSpacing((0.8, 1.1, 2.5))
    img.SetOrigin((10.0, -20.0, 5.0))
    th = np.deg2rad(20)
    img.SetDirection((np.cos(th), -np.sin(th), 0, np.sin(th), np.cos(th), 0, 0, 0, 1))
    sitk.WriteImage(img, str(tmp_path / f"v{suffix}"))
    sitk.WriteImage(img, str(tmp_path / "v.nii.gz"))
    a = load_image(tmp_path / f"v{suffix}")
    ref = nib.load(str(tmp_path / "v.nii.gz"))
    np.testing.assert_allclose(a.array, np.asarray(ref.dataobj), rtol=1e-6)
    np.testing.assert_allclose(a.affine, ref.affine, atol=1e-5)
    os.environ["MEDRECON_MAX_VOXELS"] = "100"
    try:
        with pytest.raises(MedreconInputError, match="MEDRECON_MAX_VOXELS"):
            load_image(tmp_path / f"v{suffix}")
    finally:
        del os.environ["MEDRECON_MAX_VOXELS"]


def test_dicom_without_pixel_spacing_says_1mm_is_assumed(tmp_path):
    """A DICOM image without any spacing tag silently got 1 mm pixels."""
    from medrecon.errors import MedreconWarning

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.PixelSpacing
    ds.save_as(tmp_path / "nosp.dcm")
    with pytest.warns(MedreconWarning, match="no pixel spacing"):
        img = load_image(tmp_path / "nosp.dcm")
    np.testing.assert_allclose(img.spacing[:2], (1.0, 1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", MedreconWarning)
        load_image(get_testdata_file("CT_small.dcm"))


def test_dicom_frame_claims_are_bounded_before_the_frames_are_listed(tmp_path):
    """A 700-byte file claiming two million 1x1 frames was listed frame by frame (2 GB, a
    minute) before its size was checked, in a series folder and, compressed, alone."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import (MPEG4HP41, ExplicitVRLittleEndian, JPEGBaseline8Bit,
                             SecondaryCaptureImageStorage, generate_uid)

    def make(path, frames, ts):
        fm = FileMetaDataset()
        fm.TransferSyntaxUID, fm.MediaStorageSOPClassUID = ts, SecondaryCaptureImageStorage
        fm.MediaStorageSOPInstanceUID = generate_uid()
        ds = Dataset()
        ds.file_meta, ds.SOPClassUID = fm, SecondaryCaptureImageStorage
        ds.SOPInstanceUID, ds.SeriesInstanceUID = fm.MediaStorageSOPInstanceUID, "1.2.3"
        ds.StudyInstanceUID, ds.Modality, ds.Rows, ds.Columns = "1.2.4", "OT", 1, 1
        ds.NumberOfFrames, ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored = frames, 1, 8, 8
        ds.HighBit, ds.PixelRepresentation, ds.PhotometricInterpretation = 7, 0, "MONOCHROME2"
        if ts == ExplicitVRLittleEndian:
            ds.PixelData = b"\0" * 64
        else:
            ds.PixelData = encapsulate([b"\xff\xd8\xff\xd9"])
            ds["PixelData"].VR = "OB"
        ds.save_as(path, enforce_file_format=True)

    (tmp_path / "s").mkdir()
    make(tmp_path / "s" / "f.dcm", 2_000_000, ExplicitVRLittleEndian)
    make(tmp_path / "c.dcm", 2_000_000, JPEGBaseline8Bit)
    make(tmp_path / "few.dcm", 1000, JPEGBaseline8Bit)  # 1000 frames in ~650 bytes
    for path in (tmp_path / "s", tmp_path / "c.dcm"):
        with pytest.raises(MedreconInputError, match="claims 2000000 frames.*at most 65536"):
            load_image(path)
    with pytest.raises(MedreconInputError, match="1000 compressed frames.*one per 8 bytes"):
        load_image(tmp_path / "few.dcm")
    # a video stream holds all its frames in one stream, not one item each: a long cine of
    # ~650 bytes is not truncated, and no pydicom decoder reads it; it is named as video
    make(tmp_path / "cine.dcm", 1000, MPEG4HP41)
    with pytest.raises(MedreconInputError, match="a video stream .MPEG-4 AVC/H.264 High "
                       "Profile / Level 4.1.*Export its frames"):
        load_image(tmp_path / "cine.dcm")


def test_npz_member_headers_and_h5_masks_are_bounded_before_reading(tmp_path):
    """A stored .npz member whose own .npy header claimed a huge array gave MemoryError (exit
    1), and an .h5 'mask' dataset was read whole before its shape was checked."""
    import io
    import zipfile

    import h5py

    from medrecon.pipeline import load_kspace

    def member(shape):
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            buf, {"descr": "<f8", "fortran_order": False, "shape": shape})
        return buf.getvalue() + b"\0" * 64

    for shape, says in (((2**20, 2**20, 2**10), "voxels"), ((1000, 1000), "more than the member")):
        path = tmp_path / f"m{len(shape)}.npz"
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
            zf.writestr("arr_0.npy", member(shape))
        with pytest.raises(MedreconInputError, match=says):
            load_image(path)
    ok = tmp_path / "ok.npz"
    np.savez(ok, np.ones((8, 9), np.float32))
    assert load_image(ok).shape[:2] == (8, 9)
    with h5py.File(tmp_path / "k.h5", "w") as f:
        f["kspace"] = np.ones((1, 32, 32), np.complex64)
        f.create_dataset("mask", shape=(9000, 9000), dtype="f8", chunks=(100, 100))
    with pytest.raises(MedreconInputError, match=r"mask of shape \(9000, 9000\) is larger"):
        load_kspace(tmp_path / "k.h5")


def test_16_bit_colour_png_keeps_its_bits(tmp_path):
    """Pillow reads a PNG of 16-bit RGB samples as 8 bits (the high byte): 500..1499 came out
    as 1..5, without a word. RGB48 is read by SimpleITK; 16-bit grey + alpha is refused."""
    import struct
    import zlib

    def png(path, arr, colour_type):
        h, w = arr.shape[:2]
        raw = b"".join(b"\x00" + arr[i].astype(">u2").tobytes() for i in range(h))

        def chunk(t, d):
            return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))

        path.write_bytes(b"\x89PNG\r\n\x1a\n"
                         + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))
                         + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))

    yy, xx = np.mgrid[:37, :91]
    g = (1000 + 500 * np.sin(xx / 6.0) * np.cos(yy / 5.0)).astype(np.uint16)
    png(tmp_path / "rgb48.png", np.stack([g, g, g], -1), 2)
    img = load_image(tmp_path / "rgb48.png")
    np.testing.assert_allclose(img.array[:, :, 0].T, g, atol=0.5)
    assert img.meta["bit_depth"] == 16
    png(tmp_path / "la16.png", np.stack([g, np.full_like(g, 65535)], -1), 4)
    with pytest.raises(MedreconInputError, match="16-bit samples with an alpha channel"):
        load_image(tmp_path / "la16.png")


def test_degenerate_image_orientation_is_named(tmp_path):
    """ImageOrientationPatient of zeros gave a divide warning and 'affine has non-finite
    entries ... (e.g. its NIfTI sform/qform)', naming neither the file nor the tag."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.ImageOrientationPatient = [0, 0, 0, 0, 0, 0]
    ds.save_as(tmp_path / "bad.dcm")
    with pytest.raises(MedreconInputError, match="bad.dcm.*ImageOrientationPatient.*not two "
                                                 "perpendicular"):
        load_image(tmp_path / "bad.dcm")


def test_a_singular_sform_beside_a_qform_is_the_affine_error(tmp_path):
    """Keeping the qform's geometry inverted the sform first: a singular one was an internal
    LinAlgError instead of the affine's own message."""
    s = np.diag([1.0, 1.0, 1.0, 1.0])
    s[1, :3] = 0.0
    img = nib.Nifti1Image(np.ones((4, 4, 2), np.float32), np.eye(4))
    img.set_sform(s, code=2)
    img.set_qform(np.eye(4), code=1)
    nib.save(img, tmp_path / "sing.nii.gz")
    with pytest.raises(MedreconInputError, match="affine"):
        load_image(tmp_path / "sing.nii.gz")


def test_a_truncated_slice_of_a_series_is_named_not_dropped(tmp_path):
    """A slice cut after its first 132 - 1000 bytes parsed as DICOM without an image size and
    was skipped as a non-image object: the volume silently lost a slice. A DICOM object
    without a SOP class, or of an image class without Rows / Columns, is now named as damaged;
    a real non-image object (a structured report) beside the slices is still skipped."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
        ds.ImagePositionPatient = [0.0, 0.0, 5.0 * i]
        ds.InstanceNumber = i + 1
        ds.save_as(src / f"s{i}.dcm")
    whole = (src / "s2.dcm").read_bytes()
    for n, msg in ((132, "no SOP class"), (500, "MR Image Storage object without its image size"),
                   (1000, "without its image size")):
        series = tmp_path / f"cut{n}"
        series.mkdir()
        for f in src.iterdir():
            (series / f.name).write_bytes(f.read_bytes())
        (series / "s2.dcm").write_bytes(whole[:n])
        for name in ("s2.dcm", "s2"):  # with or without the suffix
            with pytest.raises(MedreconInputError, match=msg):
                load_image(series)
            (series / "s2.dcm").rename(series / "s2") if name == "s2.dcm" else None
    sr = pydicom.Dataset()
    sr.SOPClassUID = pydicom.uid.UID("1.2.840.10008.5.1.4.1.1.88.11")  # Basic Text SR
    sr.SOPInstanceUID = pydicom.uid.generate_uid()
    sr.file_meta = pydicom.dataset.FileMetaDataset()
    sr.file_meta.MediaStorageSOPClassUID = sr.SOPClassUID
    sr.file_meta.MediaStorageSOPInstanceUID = sr.SOPInstanceUID
    sr.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    sr.save_as(src / "report.dcm", enforce_file_format=True)
    assert load_image(src).shape[-1] == 3


def test_series_folder_damage_is_named(tmp_path):
    """A text file named IM00002.dcm in a series was dropped without a word (the volume lost
    a slice); a file without read permission was an internal PermissionError; a folder that
    cannot be listed 'held no files'."""
    from medrecon.io.dicom_read import _scan

    series = tmp_path / "s"
    series.mkdir()
    for i in range(3):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.ImagePositionPatient = [0.0, 0.0, float(i)]
        ds.InstanceNumber = i + 1
        ds.save_as(series / f"IM{i:05d}.dcm")
    assert load_image(series).shape[-1] == 3
    (series / "IM00001.dcm").write_text("not dicom at all, seventy bytes of text" * 2)
    with pytest.raises(MedreconInputError, match="IM00001.dcm.*not a readable DICOM"):
        load_image(series)
    (series / "IM00001.dcm").unlink()
    (series / "notes.txt").write_text("mine")  # other files are no slices: skipped
    assert load_image(series).shape[-1] == 2

    def denied(p, *a, **k):
        raise PermissionError(13, "Permission denied", str(p))

    import medrecon.io.dicom_read as dr

    real = dr.read_dicom_header
    dr.read_dicom_header = denied
    try:
        with pytest.raises(MedreconInputError, match="cannot read .*Permission denied"):
            _scan(series)
    finally:
        dr.read_dicom_header = real
    real_walk = dr.os.walk

    def walk(folder, onerror=None):  # as os.walk reports a folder it cannot list
        onerror(PermissionError(13, "Permission denied", str(folder)))
        return iter(())

    dr.os.walk = walk
    try:
        with pytest.raises(MedreconInputError, match="cannot list folder .*Permission denied"):
            _scan(series)
    finally:
        dr.os.walk = real_walk


def test_extreme_values_are_named_by_what_they_are():
    """A constant image of 1e17 said 'IntensityWindow needs finite low < high' (an internal
    class); float64 values beyond float32 were called '+/-Inf voxels'."""
    from medrecon.transforms import IntensityWindow

    w = IntensityWindow.fit(np.full(16, 1e17))
    assert w.low < 1e17 < w.high
    with pytest.raises(MedreconInputError, match="beyond float32's range"):
        MedicalImage(np.full((8, 8), 1.7e308), np.eye(4))
    with pytest.raises(MedreconInputError, match="holds no pixel"):
        MedicalImage(np.zeros((0, 8)), np.eye(4))


def test_files_beyond_float32_are_named_so_not_non_finite(tmp_path):
    """A .npy or NIfTI of float64 with 1e300 was cast first: 'overflow encountered in cast'
    and then '1 non-finite voxel(s) ... numpy.nan_to_num', a fix that does not apply."""
    import warnings

    import nibabel as nib

    a = np.ones((8, 8, 2))
    a[3, 3, 1] = 1e300
    np.save(tmp_path / "big.npy", a)
    nib.save(nib.Nifti1Image(a, np.eye(4)), str(tmp_path / "big.nii.gz"))
    for name in ("big.npy", "big.nii.gz"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no RuntimeWarning from the cast either
            with pytest.raises(MedreconInputError, match="up to 1e\\+300, beyond float32's range"):
                load_image(tmp_path / name)


def test_nibabel_header_repairs_are_one_warning_not_stray_stderr(tmp_path, capfd):
    """nibabel printed its header repairs to stderr through a handler of its own: a raw line
    among --log-format json's events, and a second line before an error. They are now one
    MedreconWarning when the file is read, and nothing when it is not."""
    import struct

    import nibabel as nib

    from medrecon.errors import MedreconWarning

    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((8, 8, 2)).astype(np.float32),
                             np.eye(4)), str(tmp_path / "ok.nii"))
    raw = bytearray((tmp_path / "ok.nii").read_bytes())
    pix0 = bytearray(raw)
    pix0[80:92] = struct.pack("<fff", 0, 0, 0)  # pixdim[1:4]
    pix0[252:256] = struct.pack("<hh", 0, 0)  # no qform / sform: pixdim is the geometry
    (tmp_path / "pix0.nii").write_bytes(pix0)
    bad = bytearray(raw)
    bad[70:72] = struct.pack("<h", 1234)  # datatype
    (tmp_path / "dtype.nii").write_bytes(bad)
    capfd.readouterr()
    with pytest.warns(MedreconWarning, match="pix0.nii: nibabel repaired its header: pixdim"):
        img = load_image(tmp_path / "pix0.nii")
    assert img.spacing == (1.0, 1.0, 1.0)
    with pytest.raises(MedreconInputError, match="data code 1234 not recognized"):
        load_image(tmp_path / "dtype.nii")
    assert capfd.readouterr().err == ""
