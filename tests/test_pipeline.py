"""Tests for medrecon.pipeline: geometry, exact intensity round trips, k-space, files.

Everything runs on a tiny random StyleGAN2 prior (16 x 16) and small volumes; the exactness
checks use closed-form baselines (``pseudo_inverse``) so that the pipeline's own transforms are
what is being tested.
"""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import torch

from medrecon.errors import MedreconInputError
from medrecon.io import MedicalImage
from medrecon.pipeline import (
    PipelineResult,
    default_output_path,
    reconstruct,
    reconstruct_directory,
    reconstruct_file,
    reconstruct_kspace,
    std_path_for,
)
from tests._tiny import tiny_prior

R = 16


@pytest.fixture(scope="module")
def prior():
    return tiny_prior(resolution=R, seed=0)


def _affine(spacing=(0.8, 0.8, 2.5), origin=(-10.0, 20.0, 5.0), rot_deg=20.0):
    """RAS affine with an in-plane rotation about z (oblique but axial)."""
    c, s = math.cos(math.radians(rot_deg)), math.sin(math.radians(rot_deg))
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag(spacing)
    a[:3, 3] = origin
    return a


def _smooth_volume(shape, seed=0):
    g = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(0, 1, n) for n in shape], indexing="ij")
    v = 300 * np.sin(2 * x + 1) * np.cos(1.5 * y) + 50 * z + 100
    return (v + g.normal(0, 1e-3, shape)).astype(np.float32)


def _fov_corners(affine, shape):
    """World coordinates of the 8 outer corners of the voxel grid (voxel edges, not centres)."""
    out = []
    for i in (-0.5, shape[0] - 0.5):
        for j in (-0.5, shape[1] - 0.5):
            for k in (-0.5, shape[2] - 0.5):
                out.append((affine @ np.array([i, j, k, 1.0]))[:3])
    return np.array(out)


# ------------------------------------------------------------------ exact round trips
def test_identity_operator_round_trip_is_exact(prior):
    # 16 x 16 slices with square pixels fit the prior grid as-is: window + orientation + grid
    # + restack must give back the input (pseudo_inverse of the identity returns y).
    vol = _smooth_volume((16, 16, 3))
    img = MedicalImage(vol, _affine(spacing=(0.8, 0.8, 2.5)))
    res = reconstruct(img, task="denoise", prior=prior, method="pseudo_inverse", device="cpu")
    assert isinstance(res, PipelineResult)
    assert res.image.shape == img.shape
    np.testing.assert_allclose(res.image.array, vol, rtol=0, atol=1e-3)
    np.testing.assert_allclose(res.image.affine, img.affine)
    assert res.std is None
    assert res.info["slices"] == 3 and res.info["plane"] == "axial"
    assert res.info["window"]["low"] < res.info["window"]["high"]


def test_non_native_size_round_trip_keeps_fov_and_values(prior):
    # 24 x 12 slices with anisotropic pixels: resampled into the 16 x 16 grid and back.
    vol = _smooth_volume((24, 12, 2))
    img = MedicalImage(vol, _affine(spacing=(0.5, 1.0, 3.0)))
    res = reconstruct(img, task="denoise", prior=prior, method="pseudo_inverse", device="cpu")
    assert res.image.shape == img.shape
    np.testing.assert_allclose(res.image.affine, img.affine)
    err = np.abs(res.image.array - vol)[2:-2, 2:-2]  # interior: interpolation is smooth
    assert err.max() < 0.05 * (vol.max() - vol.min())
    # physical FOV 12 x 12 mm (24*0.5, 12*1) is square: content fills the whole grid
    assert res.info["grid"]["content"] == (16, 16)


def test_super_resolution_geometry(prior):
    # LR input 4 x 4 x 2 at scale 4 -> 16 x 16 HR grid (native: no resampling of the content)
    vol = _smooth_volume((4, 4, 2))
    aff = _affine(spacing=(2.0, 2.0, 3.0))
    img = MedicalImage(vol, aff)
    res = reconstruct(img, task="sr", prior=prior, method="bicubic", scale=4, device="cpu")
    out = res.image
    assert out.shape == (16, 16, 2)
    np.testing.assert_allclose(out.spacing, (0.5, 0.5, 3.0), rtol=1e-9)
    np.testing.assert_allclose(out.direction, img.direction, atol=1e-12)
    np.testing.assert_allclose(_fov_corners(out.affine, out.shape), _fov_corners(aff, img.shape),
                               atol=1e-9)
    # first voxel centre moves 3/8 of an old voxel towards the corner along each in-plane axis
    expected_origin = aff @ np.array([-0.375, -0.375, 0.0, 1.0])
    np.testing.assert_allclose(out.origin, expected_origin[:3], atol=1e-9)
    assert res.info["scale"] == 4 and res.info["effective_factor"] == (4.0, 4.0)
    # bicubic upsampling keeps the mean intensity of a smooth LR slice
    assert abs(float(out.array.mean()) - float(vol.mean())) < 0.05 * float(np.ptp(vol))


def test_super_resolution_other_sizes_and_planes(prior):
    vol = _smooth_volume((6, 3, 5))
    img = MedicalImage(vol, np.diag([1.0, 1.0, 1.0, 1.0]))
    res = reconstruct(img, task="sr", prior=prior, method="bicubic", scale=2, plane="coronal",
                      device="cpu")
    # coronal slices are taken along y (axis 1); x and z are in-plane and get the factor
    assert res.image.shape == (12, 3, 10)
    np.testing.assert_allclose(res.image.spacing, (0.5, 1.0, 0.5))
    assert res.info["plane"] == "coronal" and res.info["slices"] == 3


def test_prior_plane_metadata_is_the_default(prior):
    from medrecon.priors import Prior

    coronal = Prior(prior.generator, name="tiny_coronal", metadata={"default_plane": "coronal"})
    vol = _smooth_volume((5, 4, 6))
    res = reconstruct(MedicalImage(vol, np.eye(4)), task="denoise", prior=coronal,
                      method="pseudo_inverse", device="cpu")
    assert res.info["plane"] == "coronal" and res.info["slices"] == 4
    np.testing.assert_allclose(res.image.array, vol, atol=0.05 * np.ptp(vol))


# ------------------------------------------------------------------ generative runs
def test_generative_run_is_seeded_and_leaves_global_rng_alone(prior):
    vol = _smooth_volume((8, 8, 2))
    img = MedicalImage(vol, _affine(spacing=(1.0, 1.0, 1.0)))
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    kw = dict(task="sr", prior=prior, method="csgm", scale=2, steps=2, device="cpu", seed=3)
    a = reconstruct(img, **kw)
    b = reconstruct(img, **kw)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_state[1])
    assert a.image.shape == (16, 16, 2)
    assert np.isfinite(a.image.array).all()
    np.testing.assert_array_equal(a.image.array, b.image.array)
    assert a.info["method"].startswith("csgm") and a.info["device"] == "cpu"


def test_result_does_not_depend_on_batch_size(prior):
    """Each slice is seeded by its place in the scan and slices are independent problems, so a
    volume solved one slice at a time equals the volume solved in one batch, to rounding over
    a few steps (a lone slice rounds otherwise, which more steps amplify; batches of 2 or more
    agree to the last bits: tests/test_volume.py::test_batch_size_leaves_every_value_unchanged)."""
    vol = _smooth_volume((8, 8, 3), seed=2)
    img = MedicalImage(vol, _affine(spacing=(1.0, 1.0, 1.0)))
    kw = dict(task="sr", prior=prior, method="iagan", scale=2, steps=6, device="cpu", seed=4)
    one = reconstruct(img, batch_size=1, **kw).image.array
    three = reconstruct(img, batch_size=3, **kw).image.array
    np.testing.assert_allclose(one, three, rtol=1e-3, atol=1e-3 * float(np.abs(vol).max()))


def test_each_slice_of_a_scan_gets_its_own_seed(prior, monkeypatch):
    """A generative solver gets slice_seed(seed, i) for slice i of the scan, whatever the
    batch (slice 0 keeps the scan's seed); a baseline gets the scan's seed as it was."""
    import medrecon.solvers as S
    from medrecon.solvers._common import slice_seed

    calls = []
    real = S.solve

    def spy(y, op, prior_, **kw):
        calls.append((kw["method"], kw["seed"]))
        return real(y, op, prior_, **kw)

    monkeypatch.setattr(S, "solve", spy)
    vol = _smooth_volume((8, 8, 5), seed=2)
    img = MedicalImage(vol, _affine(spacing=(1.0, 1.0, 1.0)))
    kw = dict(task="sr", prior=prior, scale=2, steps=2, device="cpu", seed=4)
    reconstruct(img, method="csgm", batch_size=2, **kw)
    # 5 slices in calls of 2: the lone fifth joins the call before it (medrecon.volume._calls)
    assert calls == [("csgm", [4, slice_seed(4, 1)]),
                     ("csgm", [slice_seed(4, i) for i in (2, 3, 4)])]
    calls.clear()
    reconstruct(img, method="lanczos", **kw)
    assert calls and all(c == ("lanczos", 4) for c in calls)


def test_ensemble_option_reaches_iagan_and_reports_progress(prior):
    """ensemble=K is passed to IAGAN (recorded in the info), the progress fraction still rises
    monotonically to 1 over the K runs, and no std map is made (that is what samples is for)."""
    vol = _smooth_volume((8, 8, 2), seed=3)
    img = MedicalImage(vol, _affine(spacing=(1.0, 1.0, 1.0)))
    events = []
    kw = dict(task="sr", prior=prior, method="iagan", scale=2, steps=4, device="cpu", seed=1)
    res = reconstruct(img, ensemble=2, callback=events.append, **kw)
    assert res.info["ensemble"] == 2 and res.std is None
    fr = [e["fraction"] for e in events]
    assert fr == sorted(fr) and fr[-1] == 1.0
    assert any("run 2/2" in e["message"] for e in events)
    one = reconstruct(img, ensemble=1, **kw)
    assert one.info["ensemble"] == 1
    assert not np.allclose(one.image.array, res.image.array)  # two runs averaged differ from one


@pytest.mark.parametrize("bad, match", [(0, "ensemble must be an integer from 1 to 64"),
                                        (2.0, "ensemble must be an integer"),
                                        ("tv", "ensemble must be an integer")])
def test_bad_ensemble_is_refused(prior, bad, match):
    img = MedicalImage(_smooth_volume((8, 8, 1)), np.eye(4))
    with pytest.raises(MedreconInputError, match=match):
        reconstruct(img, task="sr", prior=prior, method="iagan", scale=2, ensemble=bad, device="cpu")


def test_ensemble_with_a_method_that_has_none_is_refused(prior):
    img = MedicalImage(_smooth_volume((8, 8, 1)), np.eye(4))
    with pytest.raises(MedreconInputError, match="method 'bicubic' has no such option.*iagan"):
        reconstruct(img, task="sr", prior=prior, method="bicubic", scale=2, ensemble=2)


def test_posterior_samples_give_std_map(prior):
    vol = _smooth_volume((16, 16, 1))
    img = MedicalImage(vol, np.eye(4))
    events = []
    res = reconstruct(img, task="inpaint", prior=prior, method="brgm", steps=2, samples=2,
                      mask=np.pad(np.ones((4, 4)), 6)[:, :, None], device="cpu",
                      callback=events.append)
    assert res.info["method"].startswith("brgm_variational")
    assert res.std is not None and res.std.shape == img.shape
    assert (res.std.array >= 0).all() and np.isfinite(res.std.array).all()
    fr = [e["fraction"] for e in events]
    assert fr == sorted(fr) and fr[-1] == 1.0 and all(e["event"] == "progress" for e in events)


def test_inpaint_observed_pixels_are_kept_by_pseudo_inverse(prior):
    vol = _smooth_volume((16, 16, 2))
    missing = np.zeros(vol.shape, bool)
    missing[4:8, 5:9, :] = True
    img = MedicalImage(vol, np.eye(4))
    res = reconstruct(img, task="inpaint", prior=prior, method="pseudo_inverse", mask=missing,
                      device="cpu")
    np.testing.assert_allclose(res.image.array[~missing], vol[~missing], atol=1e-3)
    # missing pixels were zero in generator space: the window's midpoint
    mid = 0.5 * (res.info["window"]["low"] + res.info["window"]["high"])
    np.testing.assert_allclose(res.image.array[missing], mid, atol=1e-3)


def test_simulated_mri_and_cs_run(prior):
    vol = _smooth_volume((16, 16, 1))
    img = MedicalImage(vol, np.eye(4))
    res = reconstruct(img, task="mri", prior=prior, method="zero_filled", acceleration=2,
                      center_fraction=0.25, device="cpu")
    assert res.info["simulated"] and res.image.shape == img.shape
    err = np.abs(res.image.array - vol).mean() / np.ptp(vol)
    assert 0 < err < 0.5  # undersampled, but close to the image
    res_cs = reconstruct(img, task="cs", prior=prior, method="pseudo_inverse", device="cpu")
    assert res_cs.image.shape == img.shape


# ------------------------------------------------------------------ k-space input
def test_kspace_fully_sampled_round_trip(prior):
    from medrecon.physics import fft2c

    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(2, R, R, generator=g) * 40 + 5
    k = fft2c(imgs.to(torch.complex64)).numpy()
    res = reconstruct_kspace(k, prior=prior, method="zero_filled", device="cpu")
    out = res.image.array  # (W, H, N)
    assert out.shape == (R, R, 2)
    np.testing.assert_allclose(np.transpose(out, (2, 1, 0)), imgs.numpy(), atol=1e-3)
    # larger k-space: Fourier-resized to the prior grid and back, shape preserved
    big = fft2c(torch.rand(1, 20, 24, generator=g).to(torch.complex64)).numpy()
    res2 = reconstruct_kspace(big, prior=prior, method="zero_filled", device="cpu")
    assert res2.image.shape == (24, 20, 1)


def test_kspace_undersampled_columns(prior):
    from medrecon.physics import fft2c

    img = torch.rand(1, R, R, generator=torch.Generator().manual_seed(1))
    k = fft2c(img.to(torch.complex64))
    cols = np.zeros(R, bool)
    cols[::2] = True
    cols[6:10] = True
    k = (k * torch.from_numpy(cols)).numpy()
    res = reconstruct_kspace(k, prior=prior, sampled=cols, method="csgm", steps=2, device="cpu")
    assert np.isfinite(res.image.array).all()
    assert 0.5 < res.info["sampling_fraction"] < 1.0
    with pytest.raises(MedreconInputError, match="no sampled"):
        reconstruct_kspace(np.zeros((R, R), np.complex64), prior=prior, method="zero_filled")


# ------------------------------------------------------------------ bad inputs
def test_bad_inputs_raise_clear_errors(prior):
    vol = _smooth_volume((8, 8, 2))
    img = MedicalImage(vol, np.eye(4))
    nan = MedicalImage(np.where(np.arange(128).reshape(8, 8, 2) == 5, np.nan, vol), np.eye(4))
    with pytest.raises(MedreconInputError, match="NaN"):
        reconstruct(nan, task="denoise", prior=prior, method="pseudo_inverse")
    with pytest.raises(MedreconInputError, match="task"):
        reconstruct(img, task="segment", prior=prior)
    with pytest.raises(MedreconInputError, match="method"):
        reconstruct(img, task="sr", prior=prior, method="magic")
    # any integer factor: the prior's grid sits inside the forward model, it need not divide R
    assert reconstruct(img, task="sr", prior=prior, method="bicubic", scale=3).image.shape == \
        (24, 24, 2)
    with pytest.raises(MedreconInputError, match="mask has shape"):
        reconstruct(img, task="inpaint", prior=prior, method="pseudo_inverse", mask=np.zeros((7, 8, 2)))
    with pytest.raises(MedreconInputError, match="needs a mask"):
        reconstruct(img, task="inpaint", prior=prior, method="pseudo_inverse")
    with pytest.raises(MedreconInputError, match="samples"):
        reconstruct(img, task="sr", prior=prior, method="csgm", samples=2)
    with pytest.raises(MedreconInputError, match="plane"):
        reconstruct(img, task="sr", prior=prior, plane="oblique")
    with pytest.raises(MedreconInputError, match="MetaTensor, a medrecon.io.MedicalImage"):
        reconstruct(vol.tolist(), task="sr", prior=prior)
    with pytest.raises(MedreconInputError, match="4x4"):
        reconstruct(vol, affine=np.eye(3), task="sr", prior=prior)


# ------------------------------------------------------------------ files
def test_default_paths(tmp_path):
    assert default_output_path(tmp_path / "a.nii.gz", "sr", "iagan").name == "a_sr_iagan.nii.gz"
    assert default_output_path(tmp_path / "b.dcm", "inpaint", "brgm").name == "b_inpaint_brgm.dcm"
    assert default_output_path(tmp_path / "k.h5", "mri", "csgm").name == "k_mri_csgm.nii.gz"
    (tmp_path / "series").mkdir()
    assert default_output_path(tmp_path / "series", "sr", "iagan").name == "series_sr_iagan.nii.gz"
    # a DICOM file among others (a slice of a series): beside the folder, never into it
    from pathlib import Path

    from pydicom.data import get_testdata_file

    for name in ("IM1.dcm", "IM2"):
        (tmp_path / "series" / name).write_bytes(Path(get_testdata_file("MR_small.dcm")).read_bytes())
    assert default_output_path(tmp_path / "series" / "IM1.dcm", "sr", "iagan") == \
        tmp_path / "series_IM1_sr_iagan.dcm"
    (tmp_path / "lone").mkdir()  # a DICOM file alone in its folder, or beside other files
    (tmp_path / "lone" / "notes.txt").write_text("x")
    (tmp_path / "lone" / "IM1.dcm").write_bytes((tmp_path / "series" / "IM1.dcm").read_bytes())
    assert default_output_path(tmp_path / "lone" / "IM1.dcm", "sr", "iagan") == \
        tmp_path / "lone" / "IM1_sr_iagan.dcm"


def test_default_output_name_says_when_the_result_is_back_projected(tmp_path, prior):
    from medrecon.pipeline import _output_label

    assert _output_label("iagan", {}) == "iagan-bp"  # noiseless: auto BP
    assert _output_label("iagan", {"bp": False}) == "iagan"
    assert _output_label("csgm", {"noise_sigma": 0.1}) == "csgm"  # noisy: no auto BP
    assert _output_label("tv", {"bp": None}) == "tv"  # baselines are never back-projected
    src = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(_smooth_volume((8, 8, 1)), np.eye(4)), str(src))
    res = reconstruct_file(src, task="sr", prior=prior, method="csgm", scale=2, steps=2,
                           device="cpu")
    assert res.output_path.name == "scan_sr_csgm-bp.nii.gz" and res.output_path.exists()
    assert res.info["method"] == "csgm+bp"
    assert std_path_for(tmp_path / "x_sr.nii.gz").name == "x_sr_std.nii.gz"


def test_reconstruct_file_and_directory(tmp_path, prior):
    from medrecon.io import load_image, save_image

    src = tmp_path / "in"
    src.mkdir()
    for i in range(2):
        save_image(MedicalImage(_smooth_volume((4, 4, 2), seed=i), _affine(spacing=(2, 2, 3))),
                   src / f"case{i}.nii.gz")
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    res = reconstruct_file(src / "case0.nii.gz", task="sr", prior=prior, method="bicubic",
                           scale=4, device="cpu")
    assert res.output_path == src / "case0_sr_bicubic.nii.gz" and res.output_path.exists()
    back = load_image(res.output_path)
    np.testing.assert_allclose(back.affine, res.image.affine, atol=1e-5)
    with pytest.raises(MedreconInputError, match="already exists"):
        reconstruct_file(src / "case0.nii.gz", task="sr", prior=prior, method="bicubic", scale=4)
    with pytest.raises(MedreconInputError, match="never writes over"):
        reconstruct_file(src / "case0.nii.gz", src / "case0.nii.gz", task="sr", prior=prior,
                         method="bicubic", overwrite=True)
    res.output_path.unlink()
    outs = reconstruct_directory(src, tmp_path / "out", task="sr", prior=prior, method="bicubic",
                                 scale=4, device="cpu")
    assert [r.output_path.name for r in outs] == ["case0_sr_bicubic.nii.gz", "case1_sr_bicubic.nii.gz"]
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before


def test_plane_giving_lines_and_stray_mask_are_rejected(prior):
    img = MedicalImage(_smooth_volume((8, 8, 1)), np.eye(4))
    with pytest.raises(MedreconInputError, match="plane"):
        reconstruct(img, task="denoise", prior=prior, method="pseudo_inverse", plane="coronal")
    with pytest.raises(MedreconInputError, match="only used by task 'inpaint'"):
        reconstruct(img, task="sr", prior=prior, method="bicubic", mask=np.zeros((8, 8, 1)))


@pytest.mark.gpu
def test_cuda_run_matches_cpu_geometry(prior):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    vol = _smooth_volume((8, 8, 3))
    img = MedicalImage(vol, _affine(spacing=(1.0, 1.0, 2.0)))
    kw = dict(task="sr", prior=prior, scale=2, seed=0)
    gpu = reconstruct(img, method="csgm", steps=3, device="cuda", **kw)
    cpu = reconstruct(img, method="bicubic", device="cpu", **kw)
    assert gpu.info["device"].startswith("cuda")
    assert gpu.image.shape == cpu.image.shape
    np.testing.assert_allclose(gpu.image.affine, cpu.image.affine)
    assert np.isfinite(gpu.image.array).all()
    ref = reconstruct(img, method="pseudo_inverse", device="cuda", task="denoise", prior=prior)
    np.testing.assert_allclose(ref.image.array, vol, atol=1e-2 * np.ptp(vol))


def test_default_batch_size_depends_on_the_device(monkeypatch):
    from medrecon.pipeline import DEFAULT_BATCH, default_batch_size

    assert default_batch_size(None, "cpu") == DEFAULT_BATCH["cpu"] == 4
    assert default_batch_size(7, "cpu") == 7
    assert default_batch_size(None, "cpu", single_run=True) == 8
    assert default_batch_size(5, "cpu", single_run=True) == 5
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_batch_size(None, "auto") == DEFAULT_BATCH["cuda"] == 16
    assert default_batch_size(None, "auto", single_run=True) == 16
    with pytest.raises(MedreconInputError, match="batch_size must be an integer >= 1"):
        default_batch_size(0, "cpu")


def test_spread_is_calibrated_all_or_none_by_the_priors_fit():
    """The ensemble spread of a volume is mapped through the prior's calibration for the
    regime; when some slices fall outside it (warm-started slices run other steps), every
    slice keeps its raw spread and the info says why."""
    from medrecon.solvers.calibration import StdCalibration

    p = tiny_prior(resolution=R, seed=0)
    img = MedicalImage(_smooth_volume((R // 2, R // 2, 3)), np.eye(4))
    kw = dict(task="sr", prior=p, method="iagan", scale=2, steps=2, ensemble=2, spread=True,
              device="cpu", seed=0)
    raw = reconstruct(img, key_every=1, **kw)
    assert raw.info["std_kind"] == "spread" and raw.std is not None
    fit = StdCalibration(method="iagan", task="sr", fraction=0.25, floor=0.0, scale=4.0,
                         operator="SuperResolution:bicubic", options={"ensemble": 2, "steps": 2})
    p.metadata["std_calibration"] = [fit.as_dict()]
    cal = reconstruct(img, key_every=1, **kw)
    assert cal.info["std_kind"] == "calibrated std"
    assert cal.info["std_calibration"]["scale"] == 4.0
    np.testing.assert_allclose(cal.image.array, raw.image.array)
    np.testing.assert_allclose(cal.std.array, 2 * raw.std.array, rtol=1e-5, atol=1e-6)
    mixed = reconstruct(img, key_every=3, warm_steps=3, **kw)  # 2 of 3 slices warm: 3 steps
    assert mixed.info["std_kind"] == "spread" and "warm" in mixed.info["std_note"]


def test_kspace_posterior_std_is_calibrated_on_the_priors_grid_only():
    """reconstruct_kspace maps the samples' spread through the prior's matching fit when the
    k-space is on the prior's grid, and returns the raw spread (marked) off it."""
    from medrecon.physics import fft2c
    from medrecon.solvers.calibration import StdCalibration

    p = tiny_prior(resolution=R, seed=0)
    img = torch.rand(1, R, R, generator=torch.Generator().manual_seed(1))
    cols = np.zeros(R, bool)
    cols[::2] = True
    cols[6:10] = True
    k = (fft2c(img.to(torch.complex64)) * torch.from_numpy(cols)).numpy()
    kw = dict(sampled=cols, method="brgm", steps=2, samples=2, device="cpu", seed=0)
    raw = reconstruct_kspace(k, prior=p, **kw)
    assert raw.info["std_kind"] == "spread"
    p.metadata["std_calibration"] = [StdCalibration(
        method="brgm_variational", task="mri", fraction=float(cols.mean()), floor=0.0,
        scale=4.0, operator="MRI:lines").as_dict()]  # a scanner's mask of whole lines
    cal = reconstruct_kspace(k, prior=p, **kw)
    assert cal.info["std_kind"] == "calibrated std"
    np.testing.assert_allclose(cal.std.array, 2 * raw.std.array, rtol=1e-4, atol=1e-6)
    big = np.zeros((1, 2 * R, 2 * R), np.complex64)  # the same field of view, twice the grid
    big[:, R // 2:3 * R // 2, R // 2:3 * R // 2] = k
    bcols = np.zeros(2 * R, bool)
    bcols[R // 2:3 * R // 2] = cols
    off = reconstruct_kspace(big, prior=p, **{**kw, "sampled": bcols})
    assert off.info["std_kind"] == "spread"


# ------------------------------------------------------- bad input found before the work
def test_scale_and_noise_have_the_clis_bounds_in_python(prior):
    """scale=100000 allocated until the machine ran out (the CLI capped it at 32); a noise std
    of 1e30 overflowed the solvers into NaN after the work."""
    img = MedicalImage(np.random.default_rng(0).random((8, 8, 1), np.float32), np.eye(4))
    with pytest.raises(MedreconInputError, match="scale must be an integer from 1 to 32"):
        reconstruct(img, task="sr", prior=prior, method="bicubic", scale=100000)
    with pytest.raises(MedreconInputError, match="noise_sigma must be a number from 0 to 2"):
        reconstruct(img, task="denoise", prior=prior, method="tv", noise_sigma=1e30)
    from medrecon.physics import SuperResolution

    with pytest.raises(MedreconInputError, match="larger than the image 8x8"):
        SuperResolution(16, img_size=8)


def test_a_mask_file_off_the_images_grid_is_refused(prior, tmp_path):
    """A mask saved flipped, or at another spacing, was applied to the wrong voxels."""
    aff = np.diag([1.0, 1.0, 5.0, 1.0])
    img = np.random.default_rng(0).random((20, 16, 2)).astype(np.float32)
    nib.save(nib.Nifti1Image(img, aff), str(tmp_path / "img.nii.gz"))
    m = np.zeros_like(img)
    m[:5] = 1
    nib.save(nib.Nifti1Image(m, aff), str(tmp_path / "mask.nii.gz"))
    flip = aff.copy()
    flip[0, 0], flip[0, 3] = -1, 19
    nib.save(nib.Nifti1Image(m[::-1].copy(), flip), str(tmp_path / "flip.nii.gz"))
    kw = dict(task="inpaint", prior=prior, method="biharmonic")
    out = reconstruct_file(tmp_path / "img.nii.gz", tmp_path / "ok.nii.gz",
                           mask=tmp_path / "mask.nii.gz", **kw)
    assert out.output_path.is_file()
    with pytest.raises(MedreconInputError, match="the mask's geometry differs"):
        reconstruct_file(tmp_path / "img.nii.gz", tmp_path / "no.nii.gz",
                         mask=tmp_path / "flip.nii.gz", **kw)
    assert not (tmp_path / "no.nii.gz").exists()


def test_kspace_input_refuses_what_does_not_apply(prior, tmp_path):
    """Tiny k-space crashed at save (exit 1); --volume, --plane, --acceleration without
    --simulate were dropped without a word; a stored mask of 0.2 / 0.7 became all sampled."""
    import h5py

    k = np.fft.fft2(np.random.default_rng(0).random((2, 16, 16))).astype(np.complex64)
    np.save(tmp_path / "k.npy", k)
    np.save(tmp_path / "tiny.npy", k[:, :2, :2])
    kw = dict(task="mri", prior=prior, method="zero_filled")
    assert reconstruct_file(tmp_path / "k.npy", tmp_path / "k.nii.gz", **kw).output_path.is_file()
    with pytest.raises(MedreconInputError, match="2x2 per slice: too small"):
        reconstruct_file(tmp_path / "tiny.npy", tmp_path / "t.nii.gz", **kw)
    for extra in (dict(volume=1), dict(plane="sagittal"), dict(acceleration=8), dict(foo=1)):
        with pytest.raises(MedreconInputError, match="do not apply to measured k-space"):
            reconstruct_file(tmp_path / "k.npy", tmp_path / "x.nii.gz", **kw, **extra)
    with h5py.File(tmp_path / "m.h5", "w") as f:
        f["kspace"] = k
        f["mask"] = np.where(np.arange(16) % 2, 0.7, 0.2)
    with pytest.raises(MedreconInputError, match="values other than 0 and 1"):
        reconstruct_file(tmp_path / "m.h5", tmp_path / "m.nii.gz", **kw)


def test_a_result_too_large_is_refused_before_the_solve(prior, monkeypatch):
    """Only the input was bounded: a 512 x 512 x 300 scan at x4 (1.3 G voxels) ran for minutes
    and ended out of memory. The result is checked against MEDRECON_MAX_VOXELS and the free
    memory when the slices are cut."""
    import medrecon.solvers as solvers

    img = MedicalImage(np.random.default_rng(0).random((16, 16, 4), np.float32), np.eye(4))
    monkeypatch.setenv("MEDRECON_MAX_VOXELS", str(16 * 16 * 4 * 15))  # under x4's 16x
    reconstruct(img, task="sr", prior=prior, method="bicubic", scale=2, plane="axial")
    called = []
    monkeypatch.setattr(solvers, "solve", lambda *a, **k: called.append(1))
    with pytest.raises(MedreconInputError, match=r"4 slices of 64x64 .* smaller --scale"):
        reconstruct(img, task="sr", prior=prior, method="bicubic", scale=4, plane="axial")
    assert not called


def test_kspace_stack_without_a_stored_mask_uses_each_slices_own_samples():
    """The sampled positions were the union over the slices: lines sampled only in slice 1
    were measured zeros of slice 0, which back-projection then forced to 0 there."""
    from medrecon.physics import fft2c, masks

    H = W = 16
    rng = np.random.default_rng(0)
    imgs = torch.from_numpy(rng.uniform(10, 100, (2, H, W)).astype(np.float32))
    k = fft2c(imgs.to(torch.complex64)).numpy()
    m0, m1 = (masks.random_lines((H, W), acceleration=3, center_fraction=0.125, seed=s)
              .numpy().astype(bool) for s in (1, 2))
    ku = np.stack([k[0] * m0, k[1] * m1])
    r = reconstruct_kspace(ku, prior=tiny_prior(resolution=R, seed=0), method="csgm", steps=3,
                           device="cpu", seed=0)
    assert r.info["sampling_fraction"] == pytest.approx((m0.mean() + m1.mean()) / 2)
    x0 = np.asarray(r.image.array)[:, :, 0].T  # (H, W) of slice 0
    only1 = m1[0] & ~m0[0]
    out = fft2c(torch.from_numpy(np.ascontiguousarray(x0)).to(torch.complex64)).numpy()
    assert np.abs(out[:, only1]).max() > 0.1  # a guess there, not a measured zero


def test_kspace_api_checks_its_mask_size_and_samples():
    """reconstruct_kspace took a mask of 0.5 or NaN as fully sampled, 2x2 k-space, and named
    one NaN sample as '16384 NaN/Inf values' of the image; CS took seed 1.7 as 1."""
    from medrecon.physics import CompressedSensing

    k = np.ones((1, 16, 16), np.complex64)
    p = tiny_prior(resolution=R, seed=0)
    for sampled in (np.full(16, 0.5), np.full(16, np.nan)):
        with pytest.raises(MedreconInputError, match="other than 0 and 1"):
            reconstruct_kspace(k, prior=p, sampled=sampled, method="zero_filled", device="cpu")
    with pytest.raises(MedreconInputError, match="too small"):
        reconstruct_kspace(np.ones((2, 2), np.complex64), prior=p, method="zero_filled",
                           device="cpu")
    k[0, 3, 4] = np.nan
    with pytest.raises(MedreconInputError, match="holds 1 NaN/Inf sample"):
        reconstruct_kspace(k, prior=p, method="zero_filled", device="cpu")
    for seed in (1.7, -1):
        with pytest.raises(MedreconInputError, match="seed must be an integer"):
            CompressedSensing(8, img_shape=(1, 4, 4), seed=seed)


def test_kspace_slices_without_samples_are_refused_and_result_copies_by_path(monkeypatch):
    """An all-zero slice got an empty mask (a prior-only guess); the result-size check took the
    coherence step's copies for every path."""
    from types import SimpleNamespace

    from medrecon.limits import COHERENT_RESULT_COPIES, RESULT_COPIES
    from medrecon.solvers.calibration import operator_kind
    from medrecon.physics import build_operator
    from medrecon.steps import check_result_size

    k = np.ones((2, 16, 16), np.complex64)
    k[1] = 0
    with pytest.raises(MedreconInputError, match="slice.s. 2 of the k-space hold no sample"):
        reconstruct_kspace(k, prior=tiny_prior(resolution=R, seed=0), method="zero_filled",
                           device="cpu")
    full = build_operator("mri", img_size=(16, 16), seed=0, mask=torch.ones(16, 16))
    assert operator_kind(full) == "MRI:custom"  # fully sampled: no lines regime
    assert RESULT_COPIES < COHERENT_RESULT_COPIES
    import medrecon.limits as limits

    voxels = 3 * 16 * 16  # 3 slices of 8 x 8 at x2
    monkeypatch.setattr(limits, "free_memory", lambda device: voxels * 4 * 10)
    check_result_size((3, 8, 8), SimpleNamespace(scale=2, task="sr", method="bicubic",
                                                 coherence="auto"))  # 9 copies fit in 10
    with pytest.raises(MedreconInputError, match="the result would be"):  # 13 do not
        check_result_size((3, 8, 8), SimpleNamespace(scale=2, task="sr", method="iagan",
                                                     coherence="auto"))
    check_result_size((3, 8, 8), SimpleNamespace(scale=2, task="sr", method="iagan",
                                                 coherence=0.0))  # no coherence step
