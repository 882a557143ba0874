"""End-to-end tests of the ``medrecon`` command line on real files.

Inputs: DICOM files shipped with pydicom (CT_small, MR_small, a series and a MONOCHROME1 image
written from them into tmp), NIfTI files shipped with nibabel, and small volumes written here.
The prior is a tiny random StyleGAN2 (16 x 16) saved to tmp; geometry-focused runs use the
closed-form baselines so that every check is exact and fast, one run per generative family
exercises the real solvers with a few steps.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from PIL import Image
import pytest
from click.testing import CliRunner
from nibabel.testing import data_path as NIB_DATA
from pydicom.data import get_testdata_file

from medrecon.cli import cli, main
from medrecon.io import MedicalImage, load_image, save_image

R = 16


# ------------------------------------------------------------------ fixtures and helpers
@pytest.fixture(scope="module")
def prior_dir(tmp_path_factory) -> str:
    from medrecon.priors import save_prior
    from tests._tiny import tiny_prior

    d = tmp_path_factory.mktemp("prior") / "tiny"
    save_prior(tiny_prior(resolution=R, seed=0), d)
    return str(d)


def _run(args, *, code=0):
    res = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    out = res.output + (res.stderr if hasattr(res, "stderr") and res.stderr not in res.output else "")
    assert res.exit_code == code, f"exit {res.exit_code} != {code}\n{out}"
    return out


def _digest(path: Path) -> str:
    p = Path(path)
    if p.is_dir():
        return "".join(_digest(q) for q in sorted(p.iterdir()))
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _corners(affine, shape):
    pts = [(i, j, k) for i in (-0.5, shape[0] - 0.5) for j in (-0.5, shape[1] - 0.5)
           for k in (-0.5, shape[2] - 0.5)]
    return np.array([(affine @ np.array([*p, 1.0]))[:3] for p in pts])


def _copy(src: str, dst: Path) -> Path:
    dst.write_bytes(Path(src).read_bytes())
    return dst


def _write_series(src: str, folder: Path, n: int = 3, *, monochrome1: bool = False) -> Path:
    """A small DICOM series from one pydicom test slice (positions along the slice normal)."""
    folder.mkdir()
    base = pydicom.dcmread(src)
    series_uid = pydicom.uid.generate_uid(entropy_srcs=[str(folder), "series"])
    for i in range(n):
        ds = copy.deepcopy(base)  # Dataset.copy() shares the data elements
        ipp = [float(v) for v in base.ImagePositionPatient]
        ds.ImagePositionPatient = [ipp[0], ipp[1], ipp[2] + 2.0 * i]
        ds.SliceLocation = ipp[2] + 2.0 * i
        ds.SliceThickness = 2.0
        ds.InstanceNumber = i + 1
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[str(folder), str(i)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        arr = base.pixel_array.astype(np.int32) + 10 * i
        if monochrome1:
            ds.PhotometricInterpretation = "MONOCHROME1"
        ds.PixelData = arr.astype(base.pixel_array.dtype).tobytes()
        ds.save_as(folder / f"IM{i:03d}.dcm")
    return folder


# ------------------------------------------------------------------ help, listing
def test_help_and_version():
    out = _run(["--help"])
    for cmd in ("sr", "inpaint", "mri", "deblur", "denoise", "demo", "priors"):
        assert cmd in out
    sr_help = _run(["sr", "--help"])
    for opt in ("--prior", "--method", "--bp / --no-bp", "--steps", "--scale", "--samples",
                "--device", "--batch-size", "--seed", "--overwrite", "--quiet", "--log-format"):
        assert opt in sr_help
    assert "--acceleration" in _run(["mri", "--help"]) and "--mask" in _run(["inpaint", "--help"])
    assert "0.1.0" in _run(["--version"])
    _run(["priors", "--help"])


# ------------------------------------------------------------------ NIfTI geometry
def test_nifti_sr_geometry_from_nibabel_file(tmp_path, prior_dir):
    # LAS orientation (x flipped), 2 mm voxels, 25 axial slices
    src = _copy(os.path.join(NIB_DATA, "anatomical.nii"), tmp_path / "anat.nii")
    before = _digest(src)
    out = _run(["sr", src, "--prior", prior_dir, "--method", "bicubic", "--scale", "4",
                "--plane", "axial", "--device", "cpu"])
    dst = tmp_path / "anat_sr_bicubic.nii"
    assert dst.exists() and "bicubic" in out and str(dst) in out
    assert _digest(src) == before
    a, b = nib.load(str(src)), nib.load(str(dst))
    sx, sy, sz = a.header.get_zooms()[:3]
    assert b.shape == (a.shape[0] * 4, a.shape[1] * 4, a.shape[2])
    np.testing.assert_allclose(b.header.get_zooms()[:3], (sx / 4, sy / 4, sz), rtol=1e-5)
    np.testing.assert_allclose(_corners(b.affine, b.shape), _corners(a.affine, a.shape), atol=1e-3)
    # direction cosines unchanged
    da = a.affine[:3, :3] / np.linalg.norm(a.affine[:3, :3], axis=0)
    db = b.affine[:3, :3] / np.linalg.norm(b.affine[:3, :3], axis=0)
    np.testing.assert_allclose(db, da, atol=1e-5)
    # origin: first voxel centre moved 3/8 of an input voxel towards the corner (in-plane)
    np.testing.assert_allclose(b.affine[:3, 3], (a.affine @ [-0.375, -0.375, 0, 1])[:3], atol=1e-3)


def test_nifti_denoise_keeps_geometry_and_values(tmp_path, prior_dir):
    src = _copy(os.path.join(NIB_DATA, "standard.nii.gz"), tmp_path / "std.nii.gz")
    dst = tmp_path / "out.nii.gz"
    _run(["denoise", src, "-o", dst, "--prior", prior_dir, "--method", "pseudo_inverse", "-q"])
    a, b = nib.load(str(src)), nib.load(str(dst))
    assert b.shape == a.shape
    np.testing.assert_allclose(b.affine, a.affine, atol=1e-5)
    # identity operator + pseudo-inverse: the pipeline's transforms must give back the input
    # (up to the resampling of the non-square 4 x 5 slices onto the square grid)
    va, vb = np.asarray(a.dataobj, float), np.asarray(b.dataobj, float)
    assert np.abs(va - vb).mean() < 0.1 * np.ptp(va)


# ------------------------------------------------------------------ DICOM in -> NIfTI / DICOM out
def test_dicom_ct_to_nifti_geometry(tmp_path, prior_dir):
    src = _copy(get_testdata_file("CT_small.dcm"), tmp_path / "ct.dcm")
    before = _digest(src)
    dst = tmp_path / "ct_x2.nii.gz"
    _run(["sr", src, "-o", dst, "--prior", prior_dir, "--method", "bicubic", "--scale", "2", "-q"])
    assert _digest(src) == before
    ds = pydicom.dcmread(src)
    b = nib.load(str(dst))
    assert b.shape[:2] == (256, 256) and (len(b.shape) == 2 or b.shape[2] == 1)
    ps = [float(v) for v in ds.PixelSpacing]
    np.testing.assert_allclose(b.header.get_zooms()[:2], (ps[1] / 2, ps[0] / 2), rtol=1e-5)
    # the input's first pixel centre (DICOM IPP, LPS) is the corner 1/4 input pixel inside
    ipp_ras = np.array([-1.0, -1.0, 1.0]) * np.array([float(v) for v in ds.ImagePositionPatient])
    first_out = (b.affine @ [0, 0, 0, 1])[:3]
    a = load_image(src)
    np.testing.assert_allclose(a.origin, ipp_ras, atol=1e-3)
    np.testing.assert_allclose(first_out, (a.affine @ [-0.25, -0.25, 0, 1])[:3], atol=1e-3)


def test_dicom_series_to_nifti_and_dicom(tmp_path, prior_dir):
    series = _write_series(get_testdata_file("MR_small.dcm"), tmp_path / "series")
    before = _digest(series)
    nii = tmp_path / "series_sr.nii.gz"
    _run(["sr", series, "-o", nii, "--prior", prior_dir, "--method", "bicubic", "--scale", "2",
          "--plane", "axial", "-q"])
    a = load_image(series)
    b = nib.load(str(nii))
    assert a.shape == (64, 64, 3) and b.shape == (128, 128, 3)
    np.testing.assert_allclose(b.header.get_zooms(), (0.15625, 0.15625, 2.0), rtol=1e-5)
    np.testing.assert_allclose(_corners(b.affine, b.shape), _corners(a.affine, a.shape), atol=1e-3)
    # DICOM series out (folder), read back with the same geometry
    out_dir = tmp_path / "series_out"
    _run(["sr", series, "-o", str(out_dir) + os.sep, "--prior", prior_dir, "--method", "bicubic",
          "--scale", "2", "--plane", "axial", "-q"])
    c = load_image(out_dir)
    assert c.shape == (128, 128, 3)
    np.testing.assert_allclose(c.affine, b.affine, atol=1e-3)
    assert _digest(series) == before
    # default output name for a series folder
    _run(["denoise", series, "--prior", prior_dir, "--method", "pseudo_inverse", "-q"])
    assert (tmp_path / "series_denoise_pseudo_inverse.nii.gz").exists()
    # one slice of the series: the default output goes beside the folder, not into it (a
    # derived series in the folder made it hold two series)
    _run(["denoise", series / "IM001.dcm", "--prior", prior_dir, "--method", "pseudo_inverse",
          "-q"])
    assert (tmp_path / "series_IM001_denoise_pseudo_inverse.dcm").is_file()
    assert _digest(series) == before and load_image(series).shape == (64, 64, 3)


def test_monochrome1_is_read_inverted(tmp_path, prior_dir):
    m1 = _write_series(get_testdata_file("MR_small.dcm"), tmp_path / "m1", n=1, monochrome1=True)
    m2 = _write_series(get_testdata_file("MR_small.dcm"), tmp_path / "m2", n=1)
    outs = []
    for folder in (m1, m2):
        src = next(folder.iterdir())
        before = _digest(src)
        dst = tmp_path / f"{folder.name}.nii.gz"
        _run(["denoise", src, "-o", dst, "--prior", prior_dir, "--method", "pseudo_inverse", "-q"])
        assert _digest(src) == before
        outs.append(np.asarray(nib.load(str(dst)).dataobj, float).ravel())
    # same stored pixels: MONOCHROME1 is read inverted (high stored values are dark), and the
    # pipeline is affine in the intensities, so the two outputs are exact negatives up to a shift
    slope, _ = np.polyfit(outs[1], outs[0], 1)
    np.testing.assert_allclose(slope, -1.0, atol=1e-3)
    assert np.corrcoef(outs[0], outs[1])[0, 1] < -0.9999


def test_dicom_single_file_out(tmp_path, prior_dir):
    src = _copy(get_testdata_file("MR_small.dcm"), tmp_path / "mr.dcm")
    _run(["sr", src, "--prior", prior_dir, "--method", "bicubic", "--scale", "2", "-q"])
    out = tmp_path / "mr_sr_bicubic.dcm"
    ds = pydicom.dcmread(out)
    assert (ds.Rows, ds.Columns) == (128, 128)
    np.testing.assert_allclose([float(v) for v in ds.PixelSpacing], [0.15625, 0.15625], rtol=1e-5)
    assert ds.SOPInstanceUID != pydicom.dcmread(src).SOPInstanceUID


# ------------------------------------------------------------------ generative runs, json log
def _json_sr_run(tmp_path, prior_dir, depth, *options):
    """``medrecon sr`` on a random 8 x 8 x depth volume with JSON logging; the parsed events."""
    vol = np.random.default_rng(0).normal(100, 20, (8, 8, depth)).astype(np.float32)
    src = tmp_path / "lr.nii.gz"
    save_image(MedicalImage(vol, np.diag([2.0, 2.0, 3.0, 1.0])), src)
    res = CliRunner().invoke(cli, ["sr", str(src), "--prior", prior_dir, "--steps", "2",
                                   "--scale", "2", "--log-format", "json", "--quiet", *options])
    assert res.exit_code == 0, res.output + res.stderr
    return [json.loads(line) for line in res.stderr.splitlines() if line.startswith("{")]


def test_generative_run_with_json_progress(tmp_path, prior_dir):
    events = _json_sr_run(tmp_path, prior_dir, 2, "--method", "csgm", "--seed", "1")
    prog = [e for e in events if e["event"] == "progress"]
    assert prog and all(0.0 <= e["fraction"] <= 1.0 and isinstance(e["message"], str) for e in prog)
    # the time so far and left, as the text bar shows them (eta null before 2 %)
    assert all(e["elapsed_s"] >= 0 and (e["eta_s"] is None) == (e["fraction"] < 0.02)
               for e in prog)
    assert all(e["eta_s"] >= 0 for e in prog if e["eta_s"] is not None)
    done = events[-1]
    assert done["event"] == "done" and done["std"] is None and done["seconds"] > 0
    assert Path(done["output"]).exists() and nib.load(done["output"]).shape == (16, 16, 2)


def test_ensemble_option_runs_iagan_that_many_times(tmp_path, prior_dir):
    events = _json_sr_run(tmp_path, prior_dir, 1, "--method", "iagan", "--ensemble", "3")
    assert any("run 3/3" in e.get("message", "") for e in events)
    assert events[-1]["event"] == "done" and events[-1]["std"] is None


def test_inpaint_with_mask_and_samples(tmp_path, prior_dir):
    img = np.random.default_rng(1).normal(50, 10, (16, 16)).astype(np.float32)
    src, mask = tmp_path / "img.nii.gz", tmp_path / "mask.nii.gz"
    save_image(MedicalImage(img, np.eye(4)), src)
    m = np.zeros((16, 16), np.float32)
    m[5:9, 4:10] = 1
    save_image(MedicalImage(m, np.eye(4)), mask)
    out = _run(["inpaint", src, "--mask", mask, "--prior", prior_dir, "--method", "brgm",
                "--steps", "2", "--samples", "2"])
    assert "brgm_variational" in out
    rec = tmp_path / "img_inpaint_brgm_variational-bp.nii.gz"
    std = tmp_path / "img_inpaint_brgm_variational-bp_std.nii.gz"
    assert rec.exists() and std.exists()
    assert (np.asarray(nib.load(str(std)).dataobj) >= 0).all()


def test_mri_kspace_npy_and_h5(tmp_path, prior_dir):
    import h5py
    import torch

    from medrecon.physics import fft2c

    img = torch.rand(2, R, R, generator=torch.Generator().manual_seed(0)) * 10
    k = fft2c(img.to(torch.complex64)).numpy()
    npy = tmp_path / "k.npy"
    np.save(npy, k)
    _run(["mri", npy, "--prior", prior_dir, "--method", "zero_filled", "-q"])
    out = nib.load(str(tmp_path / "k_mri_zero_filled.nii.gz"))
    np.testing.assert_allclose(np.asarray(out.dataobj).transpose(2, 1, 0), img.numpy(), atol=1e-3)
    h5 = tmp_path / "knee.h5"
    cols = np.zeros(R, bool)
    cols[::2] = True
    with h5py.File(h5, "w") as f:
        f["kspace"] = k * cols
        f["mask"] = cols
    _run(["mri", h5, "--prior", prior_dir, "--method", "zero_filled", "-q"])
    assert (tmp_path / "knee_mri_zero_filled.nii.gz").exists()
    # --simulate undersamples an image retrospectively
    src = tmp_path / "img.nii.gz"
    save_image(MedicalImage(img[0].numpy(), np.eye(4)), src)
    _run(["mri", src, "--simulate", "--acceleration", "2", "--prior", prior_dir, "--method",
          "zero_filled", "-q"])
    assert (tmp_path / "img_mri_zero_filled.nii.gz").exists()


# ------------------------------------------------------------------ bad inputs -> exit 2
def _bad_files(tmp):
    empty = tmp / "empty.nii.gz"
    empty.write_bytes(b"")
    text = tmp / "notes.dcm"
    text.write_text("this is not a DICOM file\n")
    four_d = _copy(os.path.join(NIB_DATA, "example_nifti2.nii.gz"), tmp / "fourd.nii.gz")
    # a real resampled volume with NaNs outside the original field of view
    nan = _copy(os.path.join(NIB_DATA, "resampled_anat_moved.nii"), tmp / "nan.nii")
    return {"empty": empty, "text": text, "4d": four_d, "nan": nan}


@pytest.mark.parametrize("case,needle", [("empty", "empty"), ("text", "DICOM"), ("4d", "4D"),
                                         ("nan", "NaN")])
def test_bad_input_files_exit_2(tmp_path, prior_dir, case, needle):
    files = _bad_files(tmp_path)
    src = files[case]
    before = _digest(src)
    res = CliRunner().invoke(cli, ["sr", str(src), "--prior", prior_dir, "--method", "bicubic",
                                   "--scale", "2"])
    out = res.output + res.stderr
    assert res.exit_code == 2, out
    assert "Error:" in out and "Traceback" not in out
    assert needle.lower() in out.lower(), out
    assert _digest(src) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in files.values())


def test_usage_errors_exit_2(tmp_path, prior_dir):
    src = tmp_path / "img.nii.gz"
    save_image(MedicalImage(np.ones((8, 8, 1), np.float32), np.eye(4)), src)
    before = _digest(src)
    bad_mask = tmp_path / "mask.nii.gz"
    save_image(MedicalImage(np.ones((7, 8, 1), np.float32), np.eye(4)), bad_mask)
    cases = [
        (["inpaint", src, "--mask", bad_mask, "--prior", prior_dir, "--method", "pseudo_inverse"], "mask"),
        (["sr", src, "--prior", "no_such_prior"], "no_such_prior"),
        (["sr", src, "--prior", prior_dir, "--method", "magic"], "magic"),
        (["sr", tmp_path / "missing.nii.gz", "--prior", prior_dir], "does not exist"),
        (["sr", src, "--device", "tpu"], "tpu"),
        (["sr", src, "--prior", prior_dir, "--ensemble", "0"], "--ensemble"),
        (["sr", src, "--prior", prior_dir, "--method", "bicubic", "--ensemble", "2"],
         "has no such option"),
    ]
    for args, needle in cases:
        res = CliRunner().invoke(cli, [str(a) for a in args])
        out = res.output + res.stderr
        assert res.exit_code == 2, (args, out)
        assert needle in out and "Traceback" not in out, (args, out)
    # output exists: refused without --overwrite, accepted with it; input never touched
    dst = tmp_path / "out.nii.gz"
    dst.write_bytes(b"keep me")
    res = CliRunner().invoke(cli, ["sr", str(src), "-o", str(dst), "--prior", prior_dir,
                                   "--method", "bicubic", "--scale", "2", "--log-format", "json"])
    assert res.exit_code == 2 and "already exists" in res.stderr
    err = [json.loads(x) for x in res.stderr.splitlines() if x.startswith("{")]
    assert err and err[-1]["event"] == "error" and err[-1]["exit_code"] == 2
    assert dst.read_bytes() == b"keep me"
    # ... and with --overwrite too: medrecon did not write it (no mark in its header)
    res = CliRunner().invoke(cli, ["sr", str(src), "-o", str(dst), "--prior", prior_dir,
                                   "--method", "bicubic", "--scale", "2", "--overwrite"])
    assert res.exit_code == 2 and "medrecon did not write it" in (res.output + res.stderr)
    assert dst.read_bytes() == b"keep me"
    dst.unlink()  # a result of medrecon's own is replaced with --overwrite
    for _ in range(2):
        _run(["sr", src, "-o", dst, "--prior", prior_dir, "--method", "bicubic", "--scale", "2",
              "--overwrite", "-q"])
    assert nib.load(str(dst)).shape[:2] == (16, 16)
    res = CliRunner().invoke(cli, ["sr", str(src), "-o", str(src), "--prior", prior_dir,
                                   "--method", "bicubic", "--overwrite"])
    assert res.exit_code == 2 and "input" in (res.output + res.stderr)
    assert _digest(src) == before


def test_internal_error_exit_1(tmp_path, prior_dir, monkeypatch):
    import medrecon.pipeline as pl

    def boom(*a, **k):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(pl, "reconstruct", boom)
    src = tmp_path / "img.nii.gz"
    save_image(MedicalImage(np.ones((8, 8, 1), np.float32), np.eye(4)), src)
    res = CliRunner().invoke(cli, ["sr", str(src), "--prior", prior_dir])
    assert res.exit_code == 1 and "kaboom" in res.stderr and "Traceback" not in res.stderr
    res = CliRunner().invoke(cli, ["--debug", "sr", str(src), "--prior", prior_dir])
    assert res.exit_code == 1 and "Traceback" in res.stderr
    # main() returns the same codes without raising
    assert main(["sr", str(src), "--prior", prior_dir]) == 1
    assert main(["sr", str(tmp_path / "nope.nii.gz")]) == 2
    assert main(["--help"]) == 0


# ------------------------------------------------------------------ demo
def test_demo_on_given_image(tmp_path, prior_dir):
    img = np.random.default_rng(2).normal(100, 20, (16, 16)).astype(np.float32)
    src = tmp_path / "hr.nii.gz"
    save_image(MedicalImage(img, np.eye(4)), src)
    out = _run(["demo", "--input", src, "--prior", prior_dir, "--method", "csgm", "--steps", "2",
                "-o", tmp_path / "demo"])
    assert "PSNR" in out and "SSIM" in out and "lanczos+bp" in out
    assert "(bicubic downsampling)" in out  # --input is degraded bicubically (it said box)
    assert "rounded to whole grey levels" not in out  # NIfTI results: scored as saved
    for name in ("sr.nii.gz", "lanczos_bp.nii.gz", "side_by_side.png"):
        assert (tmp_path / "demo" / name).exists()
    assert not (tmp_path / "demo" / "sr_std.nii.gz").exists()  # csgm gives no spread
    out = _run(["demo", "--input", src, "--prior", prior_dir, "--method", "iagan", "--steps", "2",
                "--scale", "2", "-o", tmp_path / "demo_iagan"])
    std = load_image(tmp_path / "demo_iagan" / "sr_std.nii.gz").array  # the ensemble's spread
    assert std.shape == img.shape[:2] + (1,) or std.shape == img.shape
    assert float(np.asarray(std).max()) > 0 and "sr_std.nii.gz" in out
    _run(["demo", "--input", src, "--prior", prior_dir, "-o", tmp_path / "demo"], code=2)
    # an unknown prior is named as such (it said "no sample image found ... pass --input")
    assert "Unknown prior 'nope'" in _run(["demo", "--prior", "nope", "-o", tmp_path / "d2"],
                                          code=2)
    # --overwrite with a method without spread: the previous run's std map goes with it
    _run(["demo", "--input", src, "--prior", prior_dir, "--method", "csgm", "--steps", "2",
          "--scale", "2", "-o", tmp_path / "demo_iagan", "--overwrite"])
    assert not (tmp_path / "demo_iagan" / "sr_std.nii.gz").exists()
    # a format medrecon reads but does not write (BMP): the outputs are NIfTI (it asked the
    # user to rename a real suffix)
    bmp = tmp_path / "r.bmp"
    Image.fromarray((np.random.default_rng(3).random((16, 16)) * 255).astype(np.uint8)).save(bmp)
    _run(["demo", "--input", bmp, "--prior", prior_dir, "--method", "csgm", "--steps", "2",
          "--scale", "2", "-o", tmp_path / "demo_bmp"])
    assert (tmp_path / "demo_bmp" / "sr.nii.gz").is_file()
    png = tmp_path / "r.png"  # PNG results are rounded when saved: the scores say they are not
    Image.fromarray((np.random.default_rng(3).random((16, 16)) * 255).astype(np.uint8)).save(png)
    out = _run(["demo", "--input", png, "--prior", prior_dir, "--method", "csgm", "--steps",
                "2", "--scale", "2", "-o", tmp_path / "demo_png"])
    assert "vs reference r.png (the results as computed: the saved PNGs are rounded to whole " \
        "grey levels):" in out


def test_demo_json_is_strict_and_a_volume_is_sized_by_its_slices(tmp_path, prior_dir):
    """An exact result (a constant image) has an infinite PSNR, which made the done event
    invalid JSON; a 64 x 64 x 6 volume was 'too small for x8' by its 6 slices."""
    import json

    const = tmp_path / "const.nii.gz"
    save_image(MedicalImage(np.full((16, 16), 7.0, np.float32), np.eye(4)), const)
    res = CliRunner().invoke(cli, ["demo", "--input", str(const), "--prior", prior_dir,
                                   "--method", "bicubic", "--scale", "2", "-o",
                                   str(tmp_path / "d"), "--log-format", "json"])
    assert res.exit_code == 0, res.output
    done = [json.loads(line, parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))
            for line in res.stderr.splitlines() if '"done"' in line]
    assert done and done[0]["metrics"]["bicubic"]["psnr"] is None
    vol = tmp_path / "vol.nii.gz"
    save_image(MedicalImage(np.random.default_rng(0).random((32, 32, 3), np.float32),
                            np.eye(4)), vol)
    out = _run(["demo", "--input", vol, "--prior", prior_dir, "--method", "bicubic",
                "--scale", "8", "-o", tmp_path / "v"])
    assert "PSNR" in out


def test_demo_reads_one_volume_of_a_4d_input(tmp_path, prior_dir):
    """demo --volume N picks the volume of a 4D --input (the loader's message names the
    option); without --input it is refused (the bundle's sample is one image)."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    data = np.stack([rng.random((32, 32, 3)), 5 + rng.random((32, 32, 3))], -1).astype(np.float32)
    src = tmp_path / "v4.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(src))
    assert "--volume N" in _run(["demo", "--input", src, "--prior", prior_dir, "--method",
                                 "bicubic", "-o", tmp_path / "a"], code=2)
    _run(["demo", "--input", src, "--volume", "1", "--prior", prior_dir, "--method", "bicubic",
          "--scale", "2", "-o", tmp_path / "b", "-q"])
    out = np.asarray(nib.load(str(tmp_path / "b" / "sr.nii.gz")).dataobj)
    assert out.shape == (32, 32, 3) and out.mean() > 4  # volume 1, not volume 0
    assert "--input" in _run(["demo", "--volume", "1", "-o", tmp_path / "c"], code=2)
    assert not (tmp_path / "c").exists()
    # a 4D mask: named as the mask, with a fix that exists for a mask (--volume picks the scan's)
    msg = _run(["inpaint", src, "--volume", "0", "--mask", src, "--prior", prior_dir,
                "--method", "biharmonic", "-o", tmp_path / "m.nii.gz"], code=2)
    assert msg.startswith("Error: the mask: ") and "v4.nii.gz is 4D" in msg and "as its own file" in msg


def test_demo_low_resolution_panel_is_what_the_solver_saw():
    """The figure's low-res panel is the reference measured with the demo's kernel (it was a
    box average for the bicubic --input case too)."""
    import torch

    from medrecon.cli import _lowres_view
    from medrecon.physics import SuperResolution

    gt = np.random.default_rng(0).normal(size=(16, 12, 1))
    box = _lowres_view(gt, 4, "box")
    np.testing.assert_allclose(box[::4, ::4, 0], gt.reshape(4, 4, 3, 4).mean(axis=(1, 3)),
                               atol=1e-12)
    cubic = _lowres_view(gt, 4, "bicubic")
    op = SuperResolution(4, img_size=(16, 12), kernel="bicubic")
    want = op.A(torch.from_numpy(gt[None, None, :, :, 0]))[0, 0].numpy()
    np.testing.assert_allclose(cubic[::4, ::4, 0], want, atol=1e-12)
    assert np.abs(cubic - box).max() > 1e-3


def test_demo_on_shipped_bundle_sample(tmp_path):
    from medrecon.cli import _find_demo_sample

    from medrecon.cli import DEMO_PRIOR, DEMO_SCALE

    found = _find_demo_sample(DEMO_PRIOR)
    if found is None or found[1] is None:
        pytest.skip(f"the {DEMO_PRIOR} bundle sample is not installed")
    lr, ref = found
    before = _digest(ref)
    # bicubic as "the method" keeps this fast; it exercises sample lookup, the simulated
    # low resolution, reference metrics and the side-by-side image
    out = _run(["demo", "--method", "bicubic", "-o", tmp_path / "d", "-q"])
    assert "PSNR" in out and ref.name in out and f"SR x{DEMO_SCALE}" in out
    assert (tmp_path / "d" / "side_by_side.png").exists()
    assert _digest(ref) == before
    out = _run(["demo", "--prior", "no_such_prior", "-o", tmp_path / "e"], code=2)
    assert "no_such_prior" in out


def test_every_documented_subcommand_is_mounted():
    """`medrecon --help` lists the task commands and the mounted priors/train/eval groups."""
    from click.testing import CliRunner

    from medrecon.cli import cli as _cli

    out = CliRunner().invoke(_cli, ["--help"]).output
    for name in ("sr", "inpaint", "mri", "deblur", "denoise", "demo", "priors", "train", "eval"):
        assert f"  {name} " in out, f"{name} missing from medrecon --help:\n{out}"


def test_folder_with_two_series_needs_series_option(tmp_path, prior_dir):
    """A folder with two series: exit 2 listing both UIDs; --series UID picks one."""
    a = _write_series(get_testdata_file("MR_small.dcm"), tmp_path / "a", n=2)
    b = _write_series(get_testdata_file("MR_small.dcm"), tmp_path / "b", n=3)
    both = tmp_path / "both"
    both.mkdir()
    for f in [*a.iterdir(), *b.iterdir()]:
        _copy(str(f), both / f"{f.parent.name}_{f.name}")
    uid_b = str(pydicom.dcmread(next(b.iterdir())).SeriesInstanceUID)
    uid_a = str(pydicom.dcmread(next(a.iterdir())).SeriesInstanceUID)
    before = _digest(both)
    out = _run(["denoise", both, "-o", tmp_path / "x.nii.gz", "--prior", prior_dir,
                "--method", "pseudo_inverse", "-q"], code=2)
    assert uid_a in out and uid_b in out and "--series" in out
    _run(["denoise", both, "-o", tmp_path / "b.nii.gz", "--prior", prior_dir,
          "--method", "pseudo_inverse", "--series", uid_b, "-q"])
    assert nib.load(str(tmp_path / "b.nii.gz")).shape[2] == 3
    assert _digest(both) == before


def test_volume_warm_start_options(tmp_path, prior_dir, monkeypatch):
    """--key-every / --warm-steps reach the pipeline; bad values are exit 2."""
    import medrecon.solvers as solvers

    vol = np.random.default_rng(0).random((8, 8, 4)).astype(np.float32)
    src = tmp_path / "vol.nii.gz"
    save_image(MedicalImage(vol, np.diag([1.0, 1.0, 3.0, 1.0])), src)
    calls = []
    real = solvers.solve
    monkeypatch.setattr(solvers, "solve", lambda y, op, p, **k: calls.append(
        (y.shape[0], k.get("steps"), "init" in k)) or real(y, op, p, **k))
    _run(["sr", src, "--prior", prior_dir, "--scale", "2", "--method", "iagan", "--steps", "3",
          "--ensemble", "1", "--key-every", "2", "--warm-steps", "1", "-o", tmp_path / "o.nii.gz",
          "-q"])
    assert sorted(calls) == [(2, 1, True), (2, 3, False)]  # 2 keys cold, 2 slices warm
    for bad in (["--key-every", "0"], ["--warm-steps", "0"], ["--coherence", "-1"],
                ["--coherence", "wide"]):
        out = _run(["sr", src, "--prior", prior_dir, *bad, "-o", tmp_path / "x.nii.gz"], code=2)
        assert "Traceback" not in out and bad[0] in out
    assert not (tmp_path / "x.nii.gz").exists()
    _run(["sr", src, "--prior", prior_dir, "--scale", "2", "--method", "iagan", "--steps", "2",
          "--ensemble", "1", "--key-every", "1", "--coherence", "0", "-o", tmp_path / "c0.nii.gz",
          "-q"])
    _run(["sr", src, "--prior", prior_dir, "--scale", "2", "--method", "iagan", "--steps", "2",
          "--ensemble", "1", "--key-every", "1", "--coherence", "3", "-o", tmp_path / "c3.nii.gz",
          "-q"])
    a, b = (nib.load(str(tmp_path / f)).get_fdata() for f in ("c0.nii.gz", "c3.nii.gz"))
    assert not np.allclose(a, b, atol=1e-4)  # --coherence reached the pipeline


def test_seed_option_takes_what_the_solvers_take(tmp_path):
    """--seed stops at exit 2 above the solvers' limit (it gave a ValueError from
    torch.Generator.manual_seed after reading the input)."""
    from medrecon.cli_types import SEED
    from medrecon.solvers._common import SEED_LIMIT

    assert (SEED.min, SEED.max) == (0, SEED_LIMIT - 1)
    r = CliRunner().invoke(cli, ["sr", str(tmp_path / "none.nii.gz"), "-o",
                                  str(tmp_path / "o.nii.gz"), "--seed", str(SEED_LIMIT)])
    assert r.exit_code == 2 and "--seed" in r.output


def test_one_slice_of_a_3d_nifti_stays_3d(tmp_path, prior_dir):
    """A 3D NIfTI of one slice (X x Y x 1) gives a 3D result with its slice thickness in the
    header (it was written 2D, the 3 mm lost from pixdim); a 2D NIfTI stays 2D."""
    for shape, out_shape, zooms in (((8, 8, 1), (16, 16, 1), (1.0, 1.0, 3.0)),
                                    ((8, 8), (16, 16), (1.0, 1.0))):
        src = tmp_path / f"in{len(shape)}.nii.gz"
        nib.save(nib.Nifti1Image(np.random.default_rng(0).random(shape, np.float32) * 100,
                                 np.diag([2.0, 2.0, 3.0, 1.0])), str(src))
        out = tmp_path / f"out{len(shape)}.nii.gz"
        _run(["sr", src, "-o", out, "--prior", prior_dir, "--method", "bicubic", "--scale", "2",
              "-q"])
        img = nib.load(str(out))
        assert img.shape == out_shape
        np.testing.assert_allclose(img.header.get_zooms(), zooms)
        # the library's writer keeps it the same way
        from medrecon.io import save_image

        saved = tmp_path / f"saved{len(shape)}.nii.gz"
        save_image(load_image(src), saved)
        assert nib.load(str(saved)).shape == shape


def test_a_series_with_a_missing_slice_keeps_its_positions_in_dicom(tmp_path, prior_dir):
    """Uneven slice gaps (a slice missing): the derived series writes every slice at its own
    position, not at the mean spacing of the single affine (up to 1 mm off here)."""
    src = get_testdata_file("MR_small.dcm")
    series = _write_series(src, tmp_path / "gap", n=5)
    (series / "IM002.dcm").unlink()  # positions 0, 2, 6, 8 mm (+ the first's)
    out = tmp_path / "out"
    _run(["sr", series, "-o", str(out) + os.sep, "--prior", prior_dir, "--method", "bicubic",
          "--scale", "2", "--plane", "axial", "-q"])

    def along(folder):
        ds = [pydicom.dcmread(p) for p in sorted(folder.iterdir())]
        iop = np.asarray(ds[0].ImageOrientationPatient, float)
        normal = np.cross(iop[:3], iop[3:])
        return sorted(float(np.asarray(d.ImagePositionPatient, float) @ normal) for d in ds)

    z0 = along(series)[0]
    np.testing.assert_allclose(np.array(along(series)) - z0, [0, 2, 6, 8], atol=1e-3)
    np.testing.assert_allclose(along(out), along(series), atol=1e-3)


@pytest.mark.parametrize("suffix", [".nii.gz", ".png", ".tif", ".dcm"])
def test_overwrite_replaces_only_results_medrecon_wrote(tmp_path, prior_dir, suffix):
    """Every image file medrecon writes carries its mark (NIfTI descrip, PNG/TIFF Software,
    DICOM Manufacturer); --overwrite replaces such a file and refuses one of the user's."""
    from medrecon.io.api import written_by_medrecon

    src = tmp_path / "in.png"
    Image.fromarray((np.random.default_rng(0).random((8, 8)) * 255).astype(np.uint8)).save(src)
    out = tmp_path / f"out{suffix}"
    args = ["sr", src, "-o", out, "--prior", prior_dir, "--method", "bicubic", "--scale", "2",
            "--overwrite", "-q"]
    _run(args)
    assert written_by_medrecon(out)
    _run(args)  # its own result: replaced
    theirs = tmp_path / f"theirs{suffix}"
    theirs.write_bytes(src.read_bytes() if suffix == ".png" else out.read_bytes())
    if suffix != ".png":  # the same bytes but without the mark: rewrite the file as a user's
        theirs.unlink()
        if suffix == ".nii.gz":
            nib.save(nib.Nifti1Image(np.zeros((4, 4), np.float32), np.eye(4)), str(theirs))
        elif suffix == ".tif":
            Image.fromarray(np.zeros((4, 4), np.float32)).save(theirs)
        else:
            ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
            ds.save_as(theirs)
    before = theirs.read_bytes()
    res = CliRunner().invoke(cli, [str(a) for a in args[:3]] + [str(theirs)] + args[4:])
    assert res.exit_code == 2 and "medrecon did not write it" in (res.output + res.stderr)
    assert theirs.read_bytes() == before


# ------------------------------------------------------------------ I/O review fixes
def test_default_output_from_inside_a_series_folder(tmp_path, prior_dir, monkeypatch):
    """Run from inside a series folder: a slice's result went into the folder (two series
    there), and the folder given as '.' failed with exit 1."""
    series = _write_series(get_testdata_file("CT_small.dcm"), tmp_path / "s1")
    monkeypatch.chdir(series)
    _run(["sr", "IM000.dcm", "--prior", prior_dir, "--method", "bicubic", "--scale", "2", "-q"])
    assert sorted(p.name for p in series.iterdir()) == ["IM000.dcm", "IM001.dcm", "IM002.dcm"]
    assert (tmp_path / "s1_IM000_sr_bicubic.dcm").is_file()
    _run(["sr", ".", "--prior", prior_dir, "--method", "bicubic", "--scale", "2", "-q"])
    assert (tmp_path / "s1_sr_bicubic.nii.gz").is_file()


def test_default_output_of_a_multi_frame_dicom_is_nifti(tmp_path, prior_dir):
    """A volume in one .dcm file got the default output <stem>_sr_<method>.dcm, which cannot
    hold a 3D result: the run stopped with exit 2 although the user gave no output."""
    src = tmp_path / "enh.dcm"
    shutil.copy(Path(__file__).resolve().parent / "data" / "enhanced_mr_4d.dcm", src)
    _run(["sr", src, "--volume", "0", "--prior", prior_dir, "--method", "bicubic", "--scale",
          "2", "-q"])
    assert load_image(tmp_path / "enh_sr_bicubic.nii.gz").shape[-1] == 3


def test_explicit_dicom_output_into_the_inputs_series_folder_is_refused(tmp_path, prior_dir):
    """`-o series/x.dcm` for one slice of that series made the folder hold two series; a
    NIfTI there (which the series reader skips) and a DICOM beside the folder are fine."""
    series = _write_series(get_testdata_file("CT_small.dcm"), tmp_path / "s1")
    names = sorted(p.name for p in series.iterdir())
    msg = _run(["sr", series / "IM000.dcm", "-o", series / "x.dcm", "--prior", prior_dir,
                "--method", "bicubic", "--scale", "2", "-q"], code=2)
    assert "would then hold two series" in msg
    assert sorted(p.name for p in series.iterdir()) == names
    _run(["sr", series / "IM000.dcm", "-o", series / "x.nii.gz", "--prior", prior_dir,
          "--method", "bicubic", "--scale", "2", "-q"])
    _run(["sr", series / "IM000.dcm", "-o", tmp_path / "x.dcm", "--prior", prior_dir,
          "--method", "bicubic", "--scale", "2", "-q"])
    assert load_image(series).shape[-1] == 3
    # standalone images of other series beside the input are no series: written there
    lone = tmp_path / "lone"
    lone.mkdir()
    for name, src in (("a.dcm", "CT_small.dcm"), ("b.dcm", "MR_small.dcm")):
        shutil.copy(get_testdata_file(src), lone / name)
    _run(["sr", lone / "a.dcm", "-o", lone / "a_sr.dcm", "--prior", prior_dir, "--method",
          "bicubic", "--scale", "2", "-q"])
    assert (lone / "a_sr.dcm").is_file()


def test_series_of_mixed_pixel_spacing_is_refused(tmp_path, prior_dir):
    series = _write_series(get_testdata_file("CT_small.dcm"), tmp_path / "s")
    ds = pydicom.dcmread(series / "IM001.dcm")
    ds.PixelSpacing = [0.9, 0.9]
    ds.save_as(series / "IM001.dcm")
    out = _run(["sr", series, "-o", tmp_path / "o.nii.gz", "--prior", prior_dir, "--method",
                "bicubic", "-q"], code=2)
    assert "different sizes, spacings or orientations" in out and "0.9x0.9 mm" in out


def test_derived_dicom_keeps_projection_orientation_and_enhanced_thickness(tmp_path, prior_dir):
    """A projection's PatientOrientation (its only orientation) and ViewPosition were
    dropped; an enhanced multi-frame source's SliceThickness (in its functional groups) was
    lost, and a CT's values were labelled RescaleType US."""
    cr = tmp_path / "cr.dcm"
    ds = pydicom.dcmread(Path(__file__).resolve().parent / "data" / "cr_mono1.dcm")
    ds.PatientOrientation, ds.ViewPosition = ["L", "F"], "PA"
    ds.save_as(cr)
    _run(["sr", cr, "-o", tmp_path / "cr2.dcm", "--prior", prior_dir, "--method", "bicubic",
          "--scale", "2", "-q"])
    out = pydicom.dcmread(tmp_path / "cr2.dcm")
    assert list(out.PatientOrientation) == ["L", "F"] and out.ViewPosition == "PA"
    enh = Path(__file__).resolve().parent / "data" / "enhanced_mr_4d.dcm"
    _run(["sr", enh, "--volume", "0", "-o", str(tmp_path / "enh") + os.sep, "--prior",
          prior_dir, "--method", "bicubic", "--scale", "2", "-q"])
    out = pydicom.dcmread(sorted((tmp_path / "enh").iterdir())[0])
    assert float(out.SliceThickness) == 3.0 and out.RescaleType == "US"  # an MR


def test_one_slice_along_any_axis_is_written_as_that_slice(tmp_path, prior_dir):
    """A coronal slice stored X x 1 x Z was written to a DICOM folder as 58 strips of 1 x 74
    pixels, and .dcm / .png outputs were refused as 3D. Now it is one image, every voxel at its
    place (checked through SimpleITK's physical points)."""
    import nibabel as nib
    import SimpleITK as sitk
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, shape, zooms in (("s1", (37, 1, 29), (0.7, 3.0, 0.7)),
                               ("s0", (1, 37, 29), (3.0, 0.7, 0.7))):
        src = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(rng.random(shape).astype(np.float32),
                                 np.diag([*zooms, 1.0])), str(src))
        outs = {ext: tmp_path / f"{name}_out{ext}" for ext in (".nii.gz", ".dcm", ".png")}
        for out in outs.values():
            _run(["sr", src, "-o", out, "--prior", prior_dir, "--method", "bicubic",
                  "--scale", "2", "-q"])
        _run(["sr", src, "-o", str(tmp_path / f"{name}_dir") + os.sep, "--prior", prior_dir,
              "--method", "bicubic", "--scale", "2", "-q"])
        assert len(list((tmp_path / f"{name}_dir").iterdir())) == 1
        ds = pydicom.dcmread(outs[".dcm"])
        assert (ds.Rows, ds.Columns) == (58, 74)
        assert np.asarray(Image.open(outs[".png"])).shape == (58, 74)
        nii, dcm = sitk.ReadImage(str(outs[".nii.gz"])), sitk.ReadImage(str(outs[".dcm"]))
        size = nii.GetSize()
        for _ in range(50):
            idx = tuple(int(rng.integers(0, n)) for n in size)
            j = dcm.TransformPhysicalPointToIndex(nii.TransformIndexToPhysicalPoint(idx))
            assert abs(nii.GetPixel(idx) - dcm.GetPixel(j)) < 1e-4


def test_a_sheared_image_is_not_written_to_dicom(tmp_path, prior_dir):
    """A NIfTI whose in-plane axes are not perpendicular was written with an
    ImageOrientationPatient medrecon's own reader refuses (other readers drop the geometry);
    DICOM output is now refused before the solve, NIfTI still written."""
    import nibabel as nib

    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1] = [0.9, 0.0, 0.0], [0.3, 1.0, 0.0]
    src = tmp_path / "shear.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((20, 20, 1)).astype(np.float32),
                             affine), str(src))
    for out in (str(tmp_path / "dir") + os.sep, tmp_path / "one.dcm"):
        msg = _run(["sr", src, "-o", out, "--prior", prior_dir, "--method", "bicubic"], code=2)
        assert "meet at 73.30 degrees, not 90" in msg and "NIfTI" in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shear.nii.gz"]
    _run(["sr", src, "-o", tmp_path / "ok.nii.gz", "--prior", prior_dir, "--method", "bicubic",
          "-q"])
    from medrecon.errors import MedreconInputError
    from medrecon.io import MedicalImage, save_image

    with pytest.raises(MedreconInputError, match="not 90"):  # the API's writer too
        save_image(MedicalImage(np.zeros((4, 4, 2), np.float32), affine), tmp_path / "api/")
    assert not (tmp_path / "api").exists()


def test_dicom_series_with_a_missing_slice_has_no_single_spacing(tmp_path, prior_dir):
    """A series at z = 0, 2, 4, 8 (one slice missing) was written with SpacingBetweenSlices
    the mean gap on every file; each file keeps its own position, and the spacing tag (which
    one number cannot fill) is left out."""
    series = _write_series(get_testdata_file("CT_small.dcm"), tmp_path / "s", n=4)
    f = sorted(series.iterdir())[-1]
    ds = pydicom.dcmread(f)
    ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], float(ds.ImagePositionPatient[2]) + 2]
    ds.save_as(f)
    _run(["sr", series, "-o", str(tmp_path / "out") + os.sep, "--prior", prior_dir,
          "--method", "bicubic", "--scale", "2", "-q"])
    outs = [pydicom.dcmread(p) for p in sorted((tmp_path / "out").iterdir())]
    z = [float(o.ImagePositionPatient[2]) for o in outs]
    np.testing.assert_allclose(np.diff(z), [2, 2, 4], atol=1e-6)
    assert all("SpacingBetweenSlices" not in o for o in outs)


def test_written_dicom_keeps_thickness_and_a_projection_stays_a_projection(tmp_path, prior_dir):
    """SliceThickness was the slice spacing (2.0 for 1 mm slices 2 mm apart); a projection
    (CR, only ImagerPixelSpacing) was given a patient position and orientation."""
    series = _write_series(get_testdata_file("CT_small.dcm"), tmp_path / "s")
    for f in series.iterdir():
        ds = pydicom.dcmread(f)
        ds.SliceThickness = 1.0
        ds.save_as(f)
    _run(["sr", series, "-o", str(tmp_path / "out") + os.sep, "--prior", prior_dir,
          "--method", "bicubic", "--scale", "2", "-q"])
    ds = pydicom.dcmread(sorted((tmp_path / "out").iterdir())[0])
    assert float(ds.SliceThickness) == 1.0 and float(ds.SpacingBetweenSlices) == 2.0
    cr = Path(__file__).resolve().parent / "data" / "cr_mono1.dcm"
    _run(["sr", cr, "-o", tmp_path / "cr.dcm", "--prior", prior_dir, "--method", "bicubic",
          "--scale", "2", "-q"])
    src, out = pydicom.dcmread(cr), pydicom.dcmread(tmp_path / "cr.dcm")
    assert "ImagePositionPatient" not in src and "ImagePositionPatient" not in out
    assert "PixelSpacing" not in out and "ImageOrientationPatient" not in out
    np.testing.assert_allclose([float(v) for v in out.ImagerPixelSpacing],
                               [float(v) / 2 for v in src.ImagerPixelSpacing])
    img = load_image(tmp_path / "cr.dcm")
    np.testing.assert_allclose(img.spacing[:2], np.asarray(load_image(cr).spacing[:2]) / 2)


def test_inputs_and_outputs_the_io_review_found(tmp_path, prior_dir):
    """A deflated DICOM was refused as truncated; a name too long and /dev/null gave exit 1
    or a wrong message; JPEG and .npz inputs had no default output; a black-and-white PNG
    came back as 0 / 1."""
    kw = ["--prior", prior_dir, "--method", "bicubic", "--scale", "2", "-q"]
    _run(["sr", get_testdata_file("image_dfl.dcm"), "-o", tmp_path / "dfl.nii.gz", *kw])
    Image.fromarray((np.random.default_rng(0).random((16, 16)) * 255).astype(np.uint8)).save(
        tmp_path / "g.jpg")
    np.savez(tmp_path / "a.npz", a=np.random.default_rng(0).random((16, 16)).astype(np.float32))
    _run(["sr", tmp_path / "g.jpg", *kw])
    _run(["sr", tmp_path / "a.npz", *kw])
    assert (tmp_path / "g_sr_bicubic.png").is_file() and (tmp_path / "a_sr_bicubic.nii.gz").is_file()
    out = _run(["sr", tmp_path / "g.jpg", "-o", tmp_path / ("a" * 300 + ".nii.gz"), *kw], code=2)
    assert "too long" in out
    if os.path.exists("/dev/null"):
        out = _run(["sr", tmp_path / "g.jpg", "-o", "/dev/null", "--overwrite", *kw], code=2)
        assert "not a regular file or folder" in out
    Image.fromarray(np.random.default_rng(0).random((16, 16)) > 0.5).save(tmp_path / "bw.png")
    assert set(np.unique(load_image(tmp_path / "bw.png").array)) == {0.0, 255.0}


def test_nifti_qform_and_missing_geometry_are_kept(tmp_path, prior_dir):
    """A qform holding another geometry than the sform (scanner and registered space) was
    overwritten with the zoomed sform, so readers that prefer the qform (SimpleITK) put the
    result 65 mm away; a file with no geometry codes got made-up scanner ones (1/1)."""
    data = (np.arange(24 * 30 * 6) % 97).reshape(24, 30, 6).astype(np.int16)
    q = np.diag([-1.0, 1.0, 3.0, 1.0])
    q[:3, 3] = [10, -20, 5]
    s = np.array([[0.98, -0.2, 0, -30], [0.2, 0.98, 0, 40], [0, 0, 3.0, -12], [0, 0, 0, 1]])
    img = nib.Nifti1Image(data, s)
    img.set_qform(q, code=1)
    img.set_sform(s, code=4)
    nib.save(img, tmp_path / "qs.nii.gz")
    _run(["sr", tmp_path / "qs.nii.gz", "-o", tmp_path / "qs2.nii.gz", "--prior", prior_dir,
          "--method", "bicubic", "--scale", "2", "-q"])
    out = nib.load(tmp_path / "qs2.nii.gz")
    assert (int(out.header["qform_code"]), int(out.header["sform_code"])) == (1, 4)
    zoom = np.array([[0.5, 0, 0, -0.25], [0, 0.5, 0, -0.25], [0, 0, 1, 0], [0, 0, 0, 1]])
    np.testing.assert_allclose(out.get_qform(), q @ zoom, atol=1e-4)
    np.testing.assert_allclose(out.get_sform(), s @ zoom, atol=1e-4)
    none = nib.Nifti1Image(data, None)
    none.header.set_zooms((0.8, 0.8, 3.0))
    none.header["qform_code"] = none.header["sform_code"] = 0
    nib.save(none, tmp_path / "none.nii.gz")
    _run(["sr", tmp_path / "none.nii.gz", "-o", tmp_path / "none2.nii.gz", "--prior",
          prior_dir, "--method", "bicubic", "--scale", "2", "-q"])
    out = nib.load(tmp_path / "none2.nii.gz")
    assert (int(out.header["qform_code"]), int(out.header["sform_code"])) == (0, 0)
    np.testing.assert_allclose(out.header.get_zooms(), (0.4, 0.4, 3.0), rtol=1e-5)
    centre = lambda im: im.affine @ np.r_[(np.array(im.shape) - 1) / 2, 1]  # noqa: E731
    np.testing.assert_allclose(centre(out), centre(nib.load(tmp_path / "none.nii.gz")),
                               atol=1e-4)


def test_an_empty_output_path_is_refused(tmp_path, prior_dir, monkeypatch):
    """-o "" / --out "" became the current folder: eval and demo wrote their reports there,
    beside the inputs."""
    from click.testing import CliRunner

    from medrecon.cli import cli

    monkeypatch.chdir(tmp_path)
    Image.fromarray((np.random.default_rng(0).random((16, 16)) * 255).astype(np.uint8)).save(
        tmp_path / "g.png")
    before = sorted(p.name for p in tmp_path.iterdir())
    for args in (["demo", "-o", "", "--input", "g.png", "--prior", prior_dir, "--method",
                  "bicubic", "--scale", "2"],
                 ["eval", "--prior", prior_dir, "--task", "sr", "--methods", "bicubic",
                  "--images", ".", "--out", " ", "--no-lpips"],
                 ["sr", "g.png", "-o", "", "--prior", prior_dir, "--method", "bicubic"],
                 ["train", "folds", "--data", ".", "--out", ""]):
        res = CliRunner().invoke(cli, [str(a) for a in args])
        assert res.exit_code == 2 and "is empty" in res.output, (args[0], res.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_samples_say_whether_their_std_map_is_calibrated(tmp_path):
    """The std map of --samples is the prior's calibrated std where the prior has a fit for
    the regime and the raw spread elsewhere: the summary line, the JSON 'done' event and the
    file's description say which (all three read the same either way)."""
    from medrecon.priors import save_prior
    from medrecon.solvers.calibration import StdCalibration
    from tests._tiny import tiny_prior

    src = tmp_path / "lr.nii.gz"
    save_image(MedicalImage(np.random.default_rng(0).normal(100, 20, (8, 8)).astype(np.float32),
                            np.eye(4)), src)
    p = tiny_prior(resolution=R, seed=0)
    save_prior(p, tmp_path / "raw")
    p.metadata["std_calibration"] = [StdCalibration(
        method="brgm_variational", task="sr", fraction=0.25, floor=0.0, scale=4.0,
        bp=True).as_dict()]
    save_prior(p, tmp_path / "fitted")
    said = {}
    for kind in ("raw", "fitted"):
        out = tmp_path / f"{kind}.nii.gz"
        args = ["sr", src, "-o", out, "--prior", tmp_path / kind, "--method", "brgm",
                "--samples", "2", "--steps", "2", "--scale", "2"]
        line = next(x for x in _run(args).splitlines() if "medrecon sr:" in x)
        res = CliRunner().invoke(cli, [str(a) for a in args[:3]] + [
            str(tmp_path / f"{kind}_j.nii.gz")] + [str(a) for a in args[4:]]
            + ["--log-format", "json", "--quiet"])
        done = [json.loads(x) for x in res.stderr.splitlines() if x.startswith("{")][-1]
        descrip = nib.load(str(tmp_path / f"{kind}_std.nii.gz")).header["descrip"].tobytes()
        said[kind] = line, done["std_kind"], descrip.rstrip(b"\0").decode()
    assert said["raw"][0].endswith("raw_std.nii.gz (the samples' raw spread: no calibration "
                                   "for this regime)")
    assert said["fitted"][0].endswith("fitted_std.nii.gz (calibrated for this regime)")
    assert [said[k][1] for k in ("raw", "fitted")] == ["spread", "calibrated std"]
    assert said["raw"][2].endswith(" spread") and said["fitted"][2].endswith(" calibrated std")


def test_a_png_std_map_is_said_to_be_rounded_before_the_solve(tmp_path, prior_dir):
    """--samples with a PNG output stored the std in whole grey levels of the 8-bit input
    (most of its pixels 0) without a word."""
    from PIL import Image

    src = tmp_path / "lr.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8), dtype=np.uint8)).save(src)
    out = _run(["sr", src, "-o", tmp_path / "p.png", "--prior", prior_dir, "--method", "brgm",
                "--samples", "2", "--steps", "2", "--scale", "2"])
    assert "the std map p_std.png is stored as PNG, in whole grey levels" in out
    assert "write the output as .tif or .nii.gz" in out
    assert (tmp_path / "p_std.png").exists()


def test_summary_says_what_the_prior_supplied_of_the_request(tmp_path, prior_dir):
    """A 6 x 6 input at x2 for a 16-pixel prior read 'prior magnification x2.67', more than
    was asked (the prior's grid is finer than the 12 x 12 output), and a baseline, which runs
    no prior, reported one too."""
    src = tmp_path / "lr.nii.gz"
    save_image(MedicalImage(np.random.default_rng(0).normal(100, 20, (6, 6)).astype(np.float32),
                            np.eye(4)), src)
    lines = {}
    for method in ("iagan", "bicubic"):
        out = _run(["sr", src, "-o", tmp_path / f"{method}.nii.gz", "--prior", prior_dir,
                    "--method", method, "--steps", "2", "--scale", "2", "--ensemble", "1"]
                   if method == "iagan" else
                   ["sr", src, "-o", tmp_path / f"{method}.nii.gz", "--prior", prior_dir,
                    "--method", method, "--scale", "2"])
        lines[method] = next(x for x in out.splitlines() if "medrecon sr:" in x)
    assert ", prior magnification x2.00," in lines["iagan"]
    assert "prior magnification" not in lines["bicubic"]
