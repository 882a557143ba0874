"""medrecon inside MONAI: MetaTensor in and out, dictionary transforms, the solver as an
Inferer, and the bundles' MONAI checks."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage
from nibabel.testing import data_path as NIB_DATA

from medrecon.io import MedicalImage, load_image
from medrecon.pipeline import reconstruct

R = 16


@pytest.fixture(scope="module")
def prior():
    from tests._tiny import tiny_prior

    return tiny_prior(resolution=R, seed=0)


def test_reconstruct_gives_the_same_pixels_for_every_input_kind(prior, tmp_path):
    path = os.path.join(NIB_DATA, "anatomical.nii")
    med = load_image(path)
    mt = LoadImage(image_only=True, ensure_channel_first=True)(path)
    assert isinstance(mt, MetaTensor) and mt.shape == (1, *med.shape)
    kw = dict(task="sr", prior=prior, method="bicubic", scale=2, plane="axial")
    a = reconstruct(med, **kw)
    b = reconstruct(mt, **kw)
    c = reconstruct(np.asarray(med.array), affine=med.affine, **kw)
    assert isinstance(a.image, MedicalImage) and isinstance(c.image, np.ndarray)
    assert isinstance(b.image, MetaTensor) and b.image.shape == (1, *a.image.shape)
    np.testing.assert_allclose(b.image[0].numpy(), a.image.array, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(c.image, a.image.array, rtol=1e-5, atol=1e-4)
    # geometry: affine and pixdim of the result; spatial_shape and original_affine stay the
    # file's grid, as after Spacingd; the operation is traced
    np.testing.assert_allclose(b.image.affine.numpy(), a.image.affine, atol=1e-6)
    assert tuple(b.image.meta["spatial_shape"]) == med.shape
    sp = np.linalg.norm(a.image.affine[:3, :3], axis=0)
    np.testing.assert_allclose(b.image.pixdim.numpy(), sp, rtol=1e-6)
    np.testing.assert_allclose(b.image.meta["pixdim"][1:4], sp, rtol=1e-6)
    op = b.image.applied_operations[-1]
    assert op["class"] == "Reconstruct" and op["extra_info"]["task"] == "sr"
    assert tuple(op["orig_size"]) == med.shape
    from monai.transforms import SaveImage

    # resample=True: back onto the file's grid (it padded the result into the old spacing)
    SaveImage(output_dir=tmp_path, separate_folder=False, resample=True, print_log=False)(
        b.image.clone())
    back = nib.load(next(tmp_path.glob("*.nii.gz")))
    assert back.shape == med.shape
    np.testing.assert_allclose(back.affine, nib.load(path).affine, atol=1e-4)
    assert abs(float(np.mean(back.get_fdata())) - float(np.mean(med.array))) \
        < 0.05 * float(np.ptp(med.array))
    # the input MetaTensor itself is untouched
    assert mt.shape == (1, *med.shape) and not mt.applied_operations


def test_metatensor_input_is_checked_before_any_work(prior):
    from medrecon.errors import MedreconInputError

    two = MetaTensor(torch.zeros(2, 8, 8, 3))
    with pytest.raises(MedreconInputError, match="2 channels"):
        reconstruct(two, task="sr", prior=prior, method="bicubic")
    with pytest.raises(MedreconInputError, match="channel-first"):
        reconstruct(MetaTensor(torch.zeros(8, 8)), task="sr", prior=prior, method="bicubic")
    with pytest.raises(MedreconInputError, match="affine= is only for arrays"):
        reconstruct(MetaTensor(torch.zeros(1, 8, 8, 3)), affine=np.eye(4), task="sr",
                    prior=prior, method="bicubic")


def test_2d_png_metatensor(tmp_path, prior):
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((10, 14)) * 255).astype(np.uint8)).save(
        tmp_path / "a.png")
    mt = LoadImage(image_only=True, ensure_channel_first=True)(str(tmp_path / "a.png"))
    out = reconstruct(mt, task="sr", prior=prior, method="bicubic", scale=2).image
    assert isinstance(out, MetaTensor) and out.shape == (1, 28, 20)
    np.testing.assert_allclose(np.linalg.norm(out.affine.numpy()[:2, :2], axis=0), [0.5, 0.5])


# ------------------------------------------------------------------ transforms in a Compose
def _compose(out_dir, prior, **kw):
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, SaveImaged

    from medrecon.monai import Reconstructd

    return Compose([
        LoadImaged(keys="image", image_only=True),
        EnsureChannelFirstd(keys="image"),
        Reconstructd(keys="image", prior=prior, task="sr", method="bicubic", **kw),
        SaveImaged(keys="image", output_dir=str(out_dir), output_postfix="sr", resample=False,
                   separate_folder=False, print_log=False),
    ])


def test_compose_on_nifti_keeps_geometry(tmp_path, prior):
    import nibabel as nib

    src = os.path.join(NIB_DATA, "anatomical.nii")
    _compose(tmp_path, prior, scale=2, plane="axial")({"image": src})
    saved = nib.load(str(tmp_path / "anatomical_sr.nii.gz"))
    a = nib.load(src)
    assert saved.shape == (a.shape[0] * 2, a.shape[1] * 2, a.shape[2])
    np.testing.assert_allclose(saved.header.get_zooms()[:3],
                               (a.header.get_zooms()[0] / 2, a.header.get_zooms()[1] / 2,
                                a.header.get_zooms()[2]), rtol=1e-5)
    corner = lambda A, s: (A @ np.array([-0.5, -0.5, -0.5, 1.0]))[:3]  # noqa: E731
    np.testing.assert_allclose(corner(saved.affine, saved.shape), corner(a.affine, a.shape),
                               atol=1e-4)


def test_compose_on_a_dicom_series(tmp_path, prior):
    import copy

    import nibabel as nib
    import pydicom
    from pydicom.data import get_testdata_file

    series = tmp_path / "series"
    series.mkdir()
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    uid = pydicom.uid.generate_uid()
    for i in range(3):
        ds = copy.deepcopy(base)
        ipp = [float(v) for v in base.ImagePositionPatient]
        ds.ImagePositionPatient = [ipp[0], ipp[1], ipp[2] + 2.0 * i]
        ds.InstanceNumber, ds.SeriesInstanceUID = i + 1, uid
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(series / f"IM{i}.dcm")
    out = tmp_path / "out"
    _compose(out, prior, scale=2)({"image": str(series)})
    saved = nib.load(str(next(out.glob("*.nii.gz"))))
    assert saved.shape == (256, 256, 3)
    zooms = saved.header.get_zooms()[:3]
    sp = [float(v) for v in base.PixelSpacing]
    np.testing.assert_allclose(sorted(zooms[:2]), sorted([sp[0] / 2, sp[1] / 2]), rtol=1e-4)
    assert zooms[2] == pytest.approx(2.0, rel=1e-4)


def test_reconstructd_keys_std_and_missing(prior):
    from medrecon.monai import Reconstructd

    img = MetaTensor(torch.rand(1, 12, 12, 2) * 100, affine=torch.eye(4))
    t = Reconstructd(keys="image", prior=prior, task="sr", method="brgm", scale=2, steps=2,
                     samples=2, output_keys="sr", std_keys="sr_std", plane="axial")
    d = t({"image": img})
    assert d["sr"].shape == (1, 24, 24, 2) and d["sr_std"].shape == (1, 24, 24, 2)
    assert d["image"] is img
    t2 = Reconstructd(keys=["image", "other"], prior=prior, task="sr", method="bicubic",
                      allow_missing_keys=True, plane="axial")
    assert t2({"image": img})["image"].shape == (1, 48, 48, 2)


def test_a_metatensor_without_channel_axis_is_named_as_such(tmp_path, prior):
    """LoadImage without ensure_channel_first gives (X, Y, Z): the error says to make it
    channel-first, not to average 'channels' that are a spatial axis."""
    import nibabel as nib

    from medrecon.errors import MedreconInputError

    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((12, 12, 4), np.float32),
                             np.eye(4)), tmp_path / "v.nii.gz")
    plain = LoadImage(image_only=True)(str(tmp_path / "v.nii.gz"))
    assert tuple(plain.shape) == (12, 12, 4)
    with pytest.raises(MedreconInputError, match="no channel axis.*EnsureChannelFirst"):
        reconstruct(plain, task="sr", prior=prior, method="bicubic")
    first = LoadImage(image_only=True, ensure_channel_first=True)(str(tmp_path / "v.nii.gz"))
    assert reconstruct(first, task="sr", prior=prior, method="bicubic", scale=2).image.shape \
        == (1, 24, 24, 4)


def test_regridded_meta_updates_affine_and_pixdim_and_keeps_the_source_grid():
    """spatial_shape and original_affine stay the source file's grid, as after MONAI's
    Spacingd (spatial_shape set to the new shape made SaveImage(resample=True) pad the result
    into the old spacing)."""
    from medrecon.monai.convert import regridded_meta

    aff = np.diag([0.5, 0.25, 2.0, 1.0])
    src = {"pixdim": np.array([-1.0, 2, 1, 2, 0, 0, 0, 0]), "spatial_shape": np.array([1, 2, 3]),
           "original_affine": np.eye(4)}
    nifti = regridded_meta(src, aff)
    np.testing.assert_allclose(nifti["pixdim"], [-1.0, 0.5, 0.25, 2.0, 0, 0, 0, 0])
    np.testing.assert_array_equal(nifti["spatial_shape"], [1, 2, 3])
    np.testing.assert_array_equal(nifti["original_affine"], np.eye(4))
    torch.testing.assert_close(nifti["affine"], torch.as_tensor(aff))
    short = regridded_meta({"pixdim": [2.0, 2.0, 1.0]}, aff)  # not NIfTI-style
    np.testing.assert_allclose(short["pixdim"], [1.0, 0.5, 0.25, 2.0, 1, 1, 1, 1])
    assert "pixdim" not in regridded_meta({}, aff)


def test_intensity_window_keeps_every_channel():
    from medrecon.monai import IntensityWindowd

    img = MetaTensor(torch.rand(2, 6, 5, 3) * torch.tensor([10.0, 300.0]).view(2, 1, 1, 1))
    t = IntensityWindowd(keys="image")
    d = t({"image": img})
    assert d["image"].shape == img.shape
    assert float(d["image"][1].max()) > 0.9  # the second channel is windowed, not dropped
    back = t.inverse(d)["image"]
    np.testing.assert_allclose(back.numpy(), img.numpy(), rtol=1e-4, atol=1e-3)


def test_intensity_window_inverts_through_invertd():
    from monai.transforms import Compose, Invertd

    from medrecon.monai import IntensityWindowd

    img = MetaTensor(torch.rand(1, 10, 12) * 500 + 20, affine=torch.eye(3))
    pre = Compose([IntensityWindowd(keys="image")])
    d = pre({"image": img})
    assert d["image"].min() >= -1.2 and d["image"].max() <= 1.2
    d["pred"] = d["image"].clone()
    back = Invertd(keys="pred", transform=pre, orig_keys="image")(d)
    np.testing.assert_allclose(back["pred"].numpy(), img.numpy(), rtol=1e-4)


def test_invertd_around_a_reconstruction(prior):
    """Invertd undoes the invertible steps before a reconstruction on the reconstruction's own
    grid (the geometry stays the result's), and refuses to 'invert' the reconstruction."""
    from monai.transforms import Compose, Invertd

    from medrecon.errors import MedreconInputError
    from medrecon.monai import IntensityWindowd, Reconstructd

    img = MetaTensor(torch.rand(1, 10, 12) * 50 + 5, affine=torch.eye(3))
    pre = Compose([IntensityWindowd(keys="image")])
    recon = Reconstructd(keys="image", prior=prior, task="sr", method="bicubic", scale=2)
    d = recon(pre({"image": img}))
    sr_affine = d["image"].affine.clone()
    back = Invertd(keys="image", transform=pre, orig_keys="image")(d)
    assert back["image"].shape == (1, 20, 24)
    torch.testing.assert_close(back["image"].affine, sr_affine)
    direct = reconstruct(img, task="sr", prior=prior, method="bicubic", scale=2).image
    # bicubic is linear and the window affine: inverting after equals reconstructing directly
    np.testing.assert_allclose(back["image"].numpy(), direct.numpy(), rtol=1e-4, atol=1e-3)
    both = Compose([IntensityWindowd(keys="image"), recon])
    with pytest.raises(RuntimeError) as err:  # MONAI wraps the transform's own error
        Invertd(keys="image", transform=both, orig_keys="image")(both({"image": img}))
    cause = err.value.__cause__
    assert isinstance(cause, MedreconInputError) and "cannot be inverted" in str(cause)


@pytest.mark.parametrize("task", ["sr", "inpaint", "deblur", "denoise"])
def test_simulate_degradation(task):
    from medrecon.monai import SimulateDegradationd

    img = MetaTensor(torch.rand(1, 16, 12) * 10, affine=torch.diag(torch.tensor([0.5, 0.5, 1.0])))
    d = SimulateDegradationd(keys="image", task=task, scale=4, noise_sigma=0.1, seed=3)(
        {"image": img})
    again = SimulateDegradationd(keys="image", task=task, scale=4, noise_sigma=0.1, seed=3)(
        {"image": img})
    torch.testing.assert_close(d["image"].as_tensor(), again["image"].as_tensor())
    if task == "sr":
        assert d["image"].shape == (1, 4, 3)
        np.testing.assert_allclose(np.diag(d["image"].affine.numpy())[:2], [2.0, 2.0])
    else:
        assert d["image"].shape == img.shape
    if task == "inpaint":
        assert set(torch.unique(d["mask"]).tolist()) == {0.0, 1.0}
        assert bool((d["image"][d["mask"] > 0] == 0).all())


def test_simulated_sr_keeps_the_trace_and_updates_pixdim(tmp_path):
    """A loaded NIfTI volume after Orientation: the SR degradation keeps its
    applied_operations and writes the new voxel sizes into pixdim as into the affine."""
    import nibabel as nib
    from monai.transforms import Orientation

    from medrecon.monai import SimulateDegradation

    nib.save(nib.Nifti1Image(np.random.default_rng(1).random((16, 16, 4), np.float32),
                             np.diag([1.0, 1.0, 2.0, 1.0])), tmp_path / "v.nii.gz")
    img = Orientation("RAS", labels=None)(
        LoadImage(image_only=True, ensure_channel_first=True)(str(tmp_path / "v.nii.gz")))
    lr = SimulateDegradation("sr", scale=4)(img)
    assert lr.shape == (1, 4, 4, 4)
    # the change of grid is recorded (without an inverse); the spatial steps before it leave
    # the trace (named in its record): their inverse would undo them on the wrong grid
    assert [op["class"] for op in lr.applied_operations] == ["SimulateDegradation"]
    assert lr.applied_operations[0]["extra_info"]["earlier"] == ["Orientation"]
    assert [op["class"] for op in img.applied_operations] == ["Orientation"]
    with pytest.raises(RuntimeError):  # Invertd across it stops instead of undoing Orientation
        Orientation("RAS", labels=None).inverse(lr)
    np.testing.assert_allclose(lr.meta["pixdim"][1:4], [4.0, 4.0, 2.0])
    np.testing.assert_allclose(np.linalg.norm(lr.affine.numpy()[:3, :3], axis=0), [4.0, 4.0, 2.0])
    np.testing.assert_allclose(img.meta["pixdim"][1:4], [1.0, 1.0, 2.0])  # input untouched


@pytest.mark.parametrize("task", ["sr", "denoise", "inpaint", "deblur"])
def test_simulate_degradation_refuses_non_finite_images(task):
    """NaN voxels came back degraded (NaN measurements) without a word, where Reconstruct and
    IntensityWindow refuse them."""
    from monai.data import MetaTensor

    from medrecon.errors import MedreconInputError
    from medrecon.monai import SimulateDegradation

    img = torch.rand(1, 16, 16, 4)
    img[0, 3, 3, 1] = float("nan")
    said = (r"the image to degrade has 1 non-finite voxel\(s\) \(1 NaN, 0 \+/-Inf\) .* "
            "before degrading")
    with pytest.raises(MedreconInputError, match=said):
        SimulateDegradation(task, seed=0)(MetaTensor(img))
    from medrecon.monai import SimulateDegradationd  # and k-space simulation

    with pytest.raises(MedreconInputError, match=said):
        SimulateDegradationd(keys="image", task="mri", seed=0)({"image": MetaTensor(img[..., 1])})


def test_reconstruct_restores_the_plane_simulate_degradation_degraded(prior):
    """SimulateDegradation('sr') coarsens the plane across the last axis: Reconstruct, with no
    plane given, finds that plane (its axis's 1 mm stands out from 4 x 4 mm pixels) and
    restores the 1 mm grid (it used to cut axial slices and super-resolve the wrong axes)."""
    from medrecon.monai import Reconstruct, SimulateDegradation

    cor = torch.tensor([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]],
                       dtype=torch.float64)  # array axis 2 runs anterior: coronal slices
    hr = MetaTensor(torch.rand(1, 32, 32, 8), affine=cor)
    lr = SimulateDegradation("sr", scale=4)(hr)
    assert lr.shape == (1, 8, 8, 8)
    out = Reconstruct(prior, "sr", method="bicubic", scale=4, device="cpu")(lr)
    assert out.shape == (1, 32, 32, 8)
    np.testing.assert_allclose(np.linalg.norm(out.affine.numpy()[:3, :3], axis=0), [1, 1, 1])


def test_simulated_kspace_uses_monai_reconstruction_keys():
    from medrecon.monai import SimulateDegradationd

    img = MetaTensor(torch.rand(1, 16, 16))
    d = SimulateDegradationd(keys="kspace", task="mri", acceleration=4, seed=1)({"kspace": img})
    assert d["kspace_masked"].shape == (1, 16, 16, 2) and d["mask"].shape[0] == 1
    assert d["kspace_masked_ifft"].shape == (1, 16, 16)
    frac = float(d["mask"].mean())
    assert 0.15 < frac < 0.5


def test_inferer_in_a_supervised_evaluator(tmp_path, prior):
    from monai.data import DataLoader, Dataset
    from monai.engines import SupervisedEvaluator
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

    from medrecon.monai import ReconstructionInferer

    src = os.path.join(NIB_DATA, "anatomical.nii")
    pre = Compose([LoadImaged(keys="image", image_only=True), EnsureChannelFirstd(keys="image")])
    loader = DataLoader(Dataset([{"image": src}], transform=pre), batch_size=1)
    seen = []
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=loader, network=prior.generator,
        inferer=ReconstructionInferer(prior, task="sr", method="bicubic", scale=2, plane="axial"),
        postprocessing=lambda d: (seen.append(d["pred"].shape), d)[1])
    evaluator.run()
    assert seen and tuple(seen[0])[-3:] == (66, 82, 25)


def test_medrecon_reader_in_load_image(tmp_path):
    """LoadImage with medrecon's reader: a MONOCHROME1 radiograph comes inverted, one series
    of a folder of two is selected, and the geometry equals medrecon.io's."""
    import shutil

    from monai.transforms import LoadImage

    from medrecon.monai import MedreconReader

    data = os.path.join(os.path.dirname(__file__), "data")
    mono = LoadImage(image_only=True, ensure_channel_first=True,
                     reader=MedreconReader())(os.path.join(data, "cr_mono1.dcm"))
    ref = load_image(os.path.join(data, "cr_mono1.dcm"))
    np.testing.assert_allclose(mono[0].numpy(), ref.array[:, :, 0])
    folder = tmp_path / "two"
    shutil.copytree(os.path.join(data, "two_series"), folder)
    from medrecon.io import list_series

    uid = list_series(folder)[0]["series_uid"]
    one = LoadImage(image_only=True, ensure_channel_first=True,
                    reader=MedreconReader(series_uid=uid))(str(folder))
    med = load_image(folder, series_uid=uid)
    assert one.shape == (1, *med.shape)
    np.testing.assert_allclose(one.affine.numpy(), med.affine, atol=1e-6)


def test_save_image_writes_derived_dicom(tmp_path, prior):
    """SaveImage(output_ext='.dcm') writes through medrecon's derived-DICOM writer: a series
    folder for a volume, with the geometry of the MetaTensor, and never over a file."""
    import pydicom
    from monai.transforms import SaveImage

    import medrecon.monai  # noqa: F401 - registers the writer
    from medrecon.io import load_image

    aff = torch.tensor([[-0.5, 0, 0, 10.0], [0, 0.5, 0, -20.0], [0, 0, 2.0, 5.0], [0, 0, 0, 1]],
                       dtype=torch.float64)
    img = MetaTensor(torch.rand(1, 12, 10, 3) * 100, affine=aff,
                     meta={"filename_or_obj": "scan.nii.gz"})
    SaveImage(output_dir=str(tmp_path), output_ext=".dcm", output_postfix="sr",
              separate_folder=False, print_log=False)(img)
    series = tmp_path / "scan_sr"
    assert sorted(p.name for p in series.iterdir()) == ["IM00001.dcm", "IM00002.dcm", "IM00003.dcm"]
    ds = pydicom.dcmread(series / "IM00001.dcm")
    assert "DERIVED" in ds.ImageType and ds.Manufacturer == "medrecon"
    back = load_image(series)

    def world_values(a, affine):  # every voxel as (x, y, z, value), sorted: layout-free
        idx = np.indices(a.shape).reshape(3, -1)
        xyz = (np.asarray(affine)[:3, :3] @ idx + np.asarray(affine)[:3, 3:]).T
        rows = np.column_stack([np.round(xyz, 3), a.reshape(-1)])
        return rows[np.lexsort(rows[:, 2::-1].T)]

    got, want = world_values(back.array, back.affine), world_values(img[0].numpy(), aff.numpy())
    np.testing.assert_allclose(got[:, :3], want[:, :3], atol=1e-3)
    np.testing.assert_allclose(got[:, 3], want[:, 3], rtol=1e-3, atol=0.01)
    with pytest.raises(Exception):  # an existing output is never replaced silently
        SaveImage(output_dir=str(tmp_path), output_ext=".dcm", output_postfix="sr",
                  separate_folder=False, print_log=False)(img)


# ------------------------------------------------------------------ reconstruct_file: LoadImage / SaveImage
def _spy_calls(monkeypatch, cls) -> list:
    """Record every ``cls.__call__(self, *args, **kwargs)`` as ``(self, args, kwargs)``."""
    calls: list = []
    original = cls.__call__

    def spy(self, *args, **kwargs):
        calls.append((self, args, kwargs))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "__call__", spy)
    return calls


def test_reconstruct_file_reads_with_load_image_and_writes_with_save_image(tmp_path, prior,
                                                                           monkeypatch):
    """The file goes in through LoadImage with medrecon's reader and out through SaveImage with
    medrecon's NIfTI writer, into a staged temporary beside the output: the result has the SR
    geometry (same field of view, half the in-plane spacing) and the source's header codes."""
    import nibabel as nib
    from monai.transforms import SaveImage

    from medrecon.monai import MedreconReader
    from medrecon.monai.writer import MedreconNiftiWriter
    from medrecon.pipeline import reconstruct_file

    aff = np.array([[-2.0, 0, 0, 10], [0, 2.0, 0, -20], [0, 0, 3.0, 5], [0, 0, 0, 1]])
    im = nib.Nifti1Image(np.random.default_rng(0).random((6, 5, 3)).astype(np.float32) * 100, aff)
    im.set_sform(aff, code=2)
    im.set_qform(aff, code=2)
    nib.save(im, str(tmp_path / "scan.nii.gz"))
    loads, saves = _spy_calls(monkeypatch, LoadImage), _spy_calls(monkeypatch, SaveImage)
    res = reconstruct_file(tmp_path / "scan.nii.gz", tmp_path / "out.nii.gz", task="sr",
                           prior=prior, method="bicubic", scale=2, device="cpu")
    assert len(loads) == 1 and isinstance(loads[0][2]["reader"], MedreconReader)
    assert len(saves) == 1
    saver, _, kw = saves[0]
    assert [issubclass(w, MedreconNiftiWriter) for w in saver.writers] == [True]
    staged = tmp_path / (os.path.basename(kw["filename"]) + saver.output_ext)
    assert staged.name.startswith(".out.nii.gz.") and not staged.exists()  # committed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz", "scan.nii.gz"]
    want = aff.copy()
    want[:3, :2] /= 2  # x2 in-plane, the same field of view: voxel 0 at old index -1/4
    want[:3, 3] = (aff @ [-0.25, -0.25, 0, 1])[:3]
    out = nib.load(str(tmp_path / "out.nii.gz"))
    assert out.shape == (12, 10, 3) and out.get_data_dtype() == np.float32
    np.testing.assert_allclose(out.affine, want, atol=1e-6)
    np.testing.assert_allclose(out.header.get_zooms(), (1.0, 1.0, 3.0), rtol=1e-6)
    assert (int(out.header["sform_code"]), int(out.header["qform_code"])) == (2, 2)
    assert out.header["descrip"].tobytes().startswith(b"medrecon sr bicubic")
    assert isinstance(res.image, MetaTensor) and res.image.shape == (1, 12, 10, 3)
    np.testing.assert_allclose(res.image.affine.numpy(), want, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out.dataobj), res.image[0].numpy())


def test_reconstruct_file_dicom_slice_to_derived_dicom_through_save_image(tmp_path, prior,
                                                                         monkeypatch):
    """A CT slice (placed in 3D: position, thickness) to a .dcm file: SaveImage with
    MedreconDicomWriter keeps the patient and study, references the source image, and the
    slice keeps its position (a 2D affine would have lost z)."""
    import shutil

    import pydicom
    from monai.transforms import SaveImage
    from pydicom.data import get_testdata_file

    from medrecon.monai import MedreconDicomWriter
    from medrecon.pipeline import reconstruct_file

    src = tmp_path / "ct.dcm"
    shutil.copy(get_testdata_file("CT_small.dcm"), src)
    saves = _spy_calls(monkeypatch, SaveImage)
    reconstruct_file(src, tmp_path / "ct_x2.dcm", task="sr", prior=prior, method="bicubic",
                     scale=2, device="cpu")
    assert [issubclass(w, MedreconDicomWriter) for w in saves[0][0].writers] == [True]
    ref, ds = pydicom.dcmread(src), pydicom.dcmread(tmp_path / "ct_x2.dcm")
    for tag in ("PatientName", "PatientID", "StudyInstanceUID", "Modality"):
        assert ds[tag].value == ref[tag].value, tag
    assert ds.SeriesInstanceUID != ref.SeriesInstanceUID and "DERIVED" in ds.ImageType
    assert ds.SeriesDescription == "medrecon sr bicubic"
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == ref.SOPInstanceUID
    assert (ds.Rows, ds.Columns) == (2 * ref.Rows, 2 * ref.Columns)
    ps = np.array(ref.PixelSpacing, dtype=float)
    np.testing.assert_allclose(np.array(ds.PixelSpacing, dtype=float), ps / 2, rtol=1e-5)
    np.testing.assert_allclose(np.array(ds.ImageOrientationPatient, dtype=float),
                               np.array(ref.ImageOrientationPatient, dtype=float), atol=1e-6)
    iop = np.array(ref.ImageOrientationPatient, dtype=float)
    first = (np.array(ref.ImagePositionPatient, dtype=float)
             - 0.25 * ps[1] * iop[:3] - 0.25 * ps[0] * iop[3:])
    np.testing.assert_allclose(np.array(ds.ImagePositionPatient, dtype=float), first, atol=1e-3)


def test_reconstruct_file_keeps_medrecons_refusals_and_write_errors(tmp_path, prior,
                                                                    monkeypatch):
    """LoadImage must not fall back to MONAI's readers when medrecon refuses a file (its
    NibabelReader would read a 4D NIfTI), and a writer's OSError inside SaveImage (which
    wraps writer errors in RuntimeError) still reaches the user as an exit-2 error naming
    the output, with nothing left behind."""
    import errno

    import nibabel as nib

    from medrecon.errors import MedreconInputError
    from medrecon.monai.writer import MedreconNiftiWriter
    from medrecon.pipeline import reconstruct_file

    four = tmp_path / "four.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((6, 6, 3, 2)).astype(np.float32),
                             np.eye(4)), str(four))
    with pytest.raises(MedreconInputError, match="4D with 2 volumes"):
        reconstruct_file(four, tmp_path / "o.nii.gz", task="sr", prior=prior, method="bicubic")
    res = reconstruct_file(four, tmp_path / "o.nii.gz", task="sr", prior=prior,
                           method="bicubic", scale=2, volume=1, plane="axial")
    assert nib.load(str(res.output_path)).shape == (12, 12, 3)

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(MedreconNiftiWriter, "write", full)
    with pytest.raises(MedreconInputError, match="no space left") as err:
        reconstruct_file(four, tmp_path / "sub" / "o.nii.gz", task="sr", prior=prior,
                         method="bicubic", scale=2, volume=0, plane="axial")
    assert str(tmp_path / "sub" / "o.nii.gz") in str(err.value) and ".part" not in str(err.value)
    assert not (tmp_path / "sub").exists()


def test_reconstruct_file_metaimage_and_nrrd_inputs(tmp_path, prior):
    """.mha / .nrrd come in through MedreconReader (SimpleITK, LPS -> RAS) with the geometry
    medrecon.io reads; the NIfTI result keeps the field of view."""
    import nibabel as nib
    import SimpleITK as sitk

    from medrecon.pipeline import reconstruct_file

    arr = np.random.default_rng(1).random((4, 9, 11)).astype(np.float32)  # (z, y, x)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.7, 0.8, 2.5))
    img.SetOrigin((1.0, 2.0, 3.0))
    img.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, 1))
    for ext in (".mha", ".nrrd"):
        src = tmp_path / f"scan{ext}"
        sitk.WriteImage(img, str(src))
        a = load_image(src).affine
        res = reconstruct_file(src, tmp_path / f"out_{ext[1:]}.nii.gz", task="sr", prior=prior,
                               method="bicubic", scale=2, plane="axial")
        out = nib.load(str(res.output_path))
        assert out.shape == (22, 18, 4)
        want = a.copy()
        want[:3, :2] /= 2
        want[:3, 3] = (a @ [-0.25, -0.25, 0, 1])[:3]
        np.testing.assert_allclose(out.affine, want, atol=1e-5)


def test_medrecon_reader_keeps_a_placed_slice_in_3d():
    """A 2D image whose geometry is all in-plane is (1, X, Y) with a 3x3 affine; a slice with
    a position and thickness (CT) keeps its 4x4 affine as (1, X, Y, 1)."""
    from pydicom.data import get_testdata_file

    from medrecon.monai import MedreconReader

    reader = MedreconReader()
    ct = get_testdata_file("CT_small.dcm")
    img = LoadImage(image_only=True, ensure_channel_first=True)(ct, reader=reader)
    med = load_image(ct)
    assert img.shape == (1, *med.shape) and med.shape[2] == 1
    np.testing.assert_allclose(img.affine.numpy(), med.affine, atol=1e-9)
    assert reader.dicom_headers and reader.dicom_headers[0].PatientName == "CompressedSamples^CT1"
    cr = os.path.join(os.path.dirname(__file__), "data", "cr_mono1.dcm")
    flat = LoadImage(image_only=True, ensure_channel_first=True)(cr, reader=reader)
    assert flat.shape == (1, *load_image(cr).shape[:2]) and flat.affine.shape == (3, 3)


def test_medrecon_writers_in_a_plain_save_image(tmp_path):
    """medrecon's NIfTI / PNG writers in an ordinary SaveImage: a 2D MetaTensor with its 3x3
    affine and a 16-bit source depth keep geometry and depth."""
    import nibabel as nib
    from monai.transforms import SaveImage
    from PIL import Image

    from medrecon.monai import MedreconNiftiWriter, MedreconRasterWriter

    aff = torch.tensor([[-0.5, 0, 3.0], [0, -0.25, 4.0], [0, 0, 1]], dtype=torch.float64)
    img = MetaTensor(torch.arange(12.0).reshape(1, 4, 3) * 1000, affine=aff,
                     meta={"filename_or_obj": "a.png", "format": "png", "bit_depth": 16})
    SaveImage(output_dir=str(tmp_path), output_postfix="x", separate_folder=False,
              print_log=False, writer=MedreconNiftiWriter)(img)
    nii = nib.load(str(tmp_path / "a_x.nii.gz"))
    assert nii.shape == (4, 3)
    np.testing.assert_allclose(nii.affine, [[-0.5, 0, 0, 3], [0, -0.25, 0, 4], [0, 0, 1, 0],
                                            [0, 0, 0, 1]])
    SaveImage(output_dir=str(tmp_path), output_postfix="x", output_ext=".png",
              separate_folder=False, print_log=False, writer=MedreconRasterWriter)(img)
    with Image.open(tmp_path / "a_x.png") as png:
        assert png.mode.startswith("I") and png.size == (4, 3)
        np.testing.assert_array_equal(np.array(png), (np.arange(12).reshape(4, 3) * 1000).T)


def test_bundle_outputs_are_checked_before_any_work(tmp_path):
    """SaveImaged replaces files silently: the datalist refuses two images with one output
    and an existing output unless overwrite, before any image is read."""
    from medrecon.errors import MedreconInputError
    from medrecon.monai import bundle_datalist

    import nibabel as nib
    from PIL import Image

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir(), out.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(src / "a.png")
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 2), np.float32), np.eye(4)), str(src / "b.nii.gz"))
    kw = dict(output_dir=out, output_postfix="sr")
    assert [d["image"] for d in bundle_datalist(src, **kw)] == [str(src / "a.png"),
                                                                 str(src / "b.nii.gz")]
    (out / "b_sr.nii.gz").write_bytes(b"mine")
    with pytest.raises(MedreconInputError, match="b_sr.nii.gz' exists; pass --overwrite true"):
        bundle_datalist(src, **kw)
    # --overwrite true replaces medrecon's results only, never another program's file
    with pytest.raises(MedreconInputError, match="not written by medrecon; it is never replaced"):
        bundle_datalist(src, overwrite=True, **kw)
    ours = nib.Nifti1Image(np.zeros((8, 8), np.float32), np.eye(4))
    ours.header["descrip"] = b"medrecon 0.1"
    nib.save(ours, str(out / "b_sr.nii.gz"))
    assert len(bundle_datalist(src, overwrite=True, **kw)) == 2
    # evaluate.json's MetricsSaver report: the same rule, this bundle's metrics.csv is its own
    (out / "metrics.csv").write_text("subject,score\n")
    with pytest.raises(MedreconInputError, match="metrics.csv' exists and was not written"):
        bundle_datalist(src, overwrite=True, report_files=("metrics.csv",), **kw)
    (out / "metrics.csv").write_text("val_psnr,31.5\nval_ssim,0.85\n")
    with pytest.raises(MedreconInputError, match="metrics.csv' exists; pass --overwrite true"):
        bundle_datalist(src, output_dir=out, output_postfix="new", report_files=("metrics.csv",))
    assert len(bundle_datalist(src, overwrite=True, report_files=("metrics.csv",), **kw)) == 2
    (out / "b_sr.nii.gz").write_bytes(b"mine")
    (src / "a.nii.gz").write_bytes((src / "b.nii.gz").read_bytes())
    with pytest.raises(MedreconInputError, match="a.nii.gz and a.png would both be written"):
        bundle_datalist(src, overwrite=True, **kw)
    assert (out / "b_sr.nii.gz").read_bytes() == b"mine"
    # every file is read once first: a bad one stops the run before any item is solved
    (src / "a.nii.gz").unlink()
    nib.save(nib.Nifti1Image(np.full((8, 8, 2), np.nan, np.float32), np.eye(4)),
             str(src / "c.nii.gz"))
    with pytest.raises(MedreconInputError, match="image c.nii.gz: .*non-finite"):
        bundle_datalist(src)


def test_bundle_writer_writes_complete_marked_files_and_never_a_foreign_one(tmp_path, monkeypatch):
    """SaveImaged with the bundles' writer: medrecon's NIfTI header (the mark a later
    --overwrite true looks for); a file that appeared during the solve is not replaced; a write
    that fails half way leaves neither a partial result nor a temporary file."""
    import nibabel as nib
    from monai.data import MetaTensor
    from monai.transforms import SaveImage

    from medrecon.errors import MedreconInputError
    from medrecon.io.api import written_by_medrecon
    from medrecon.monai import bundle_writer

    img = MetaTensor(torch.rand(1, 6, 5), meta={"affine": torch.diag(torch.tensor(
        [0.5, 0.25, 1.0, 1.0], dtype=torch.float64)), "filename_or_obj": "a.png"})

    def save(overwrite):
        SaveImage(output_dir=str(tmp_path), output_postfix="sr", resample=False,
                  separate_folder=False, print_log=False,
                  writer=bundle_writer(overwrite=overwrite))(img)

    save(False)
    out = tmp_path / "a_sr.nii.gz"
    assert written_by_medrecon(out) and nib.load(str(out)).header.get_zooms()[:2] == (0.5, 0.25)
    with pytest.raises(RuntimeError):  # SaveImage's wrapper; report_input_errors names it
        save(False)
    save(True)  # ours: replaced
    out.write_bytes(b"mine")  # appeared while the image was solved
    with pytest.raises(RuntimeError):
        save(True)
    assert out.read_bytes() == b"mine"
    from medrecon.monai import bundle as bundle_mod

    assert "not written by medrecon" in str(bundle_mod._WRITER_ERRORS[-1])
    out.unlink()

    def broken(obj, filename):  # Ctrl-C half way through writing
        Path(filename).write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(nib, "save", broken)
    with pytest.raises(KeyboardInterrupt):
        _write_direct(img, out)
    assert sorted(tmp_path.iterdir()) == []


def _write_direct(img, out):
    from medrecon.monai import bundle_writer

    w = bundle_writer(overwrite=False)()
    w.set_data_array(img, channel_dim=0)
    w.set_metadata(img.meta, resample=False)
    w.write(str(out))


def test_bundle_run_reports_bad_input_in_one_line_with_exit_2(tmp_path):
    """python -m monai.bundle run: a medrecon input error is one line and exit code 2 (MONAI's
    runner printed the whole traceback with exit code 1)."""
    import subprocess
    import sys

    bundle = Path(__file__).resolve().parents[1] / "bundles" / "brain_mri_stylegan2"
    r = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                        str(bundle / "configs" / "inference.json"), "--bundle_root", str(bundle),
                        "--dataset_dir", str(tmp_path / "nope"), "--output_dir",
                        str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        f"medrecon: error: dataset_dir {str(tmp_path / 'nope')!r} is not a folder; pass "
        "--dataset_dir with the scans to reconstruct.")
    assert not (tmp_path / "out").exists()



def test_bundle_datalist_reads_dicom_series_and_checks_pairs_before_any_work(tmp_path):
    """A DICOM series is one volume, as the CLI reads it (its slices were separate 2D
    results); a mask off its image's grid, a task without its mask (or a mask it does not
    take), an output folder that is the input folder and a volume to score as 2D are refused
    before any item is reconstructed (they were found mid-run, after earlier results)."""
    import shutil

    import nibabel as nib
    from PIL import Image

    from medrecon.errors import MedreconInputError
    from medrecon.monai import bundle_datalist

    data = Path(__file__).resolve().parent / "data"
    series = tmp_path / "series"
    shutil.copytree(data / "ct_oblique", series)  # loose slices of one series: one volume
    assert [d["image"] for d in bundle_datalist(series)] == [str(series)]
    ds = tmp_path / "ds"
    ds.mkdir()
    shutil.copytree(data / "ct_oblique", ds / "ct")  # a series subfolder: one volume
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(ds / "a.png")
    assert [d["image"] for d in bundle_datalist(ds)] == [str(ds / "a.png"), str(ds / "ct")]
    shutil.copy(data / "ct_oblique" / "slice_00.dcm", ds / "s0.dcm")
    shutil.copy(data / "ct_oblique" / "slice_01.dcm", ds / "s1.dcm")
    with pytest.raises(MedreconInputError, match="subfolder of its own"):
        bundle_datalist(ds)
    (ds / "s0.dcm").unlink(), (ds / "s1.dcm").unlink()
    # masks: on the image's grid, and only for inpainting
    masks = tmp_path / "masks"
    masks.mkdir()
    Image.fromarray(np.zeros((4, 8), np.uint8)).save(masks / "a.png")
    shutil.copytree(data / "ct_oblique", masks / "ct")
    with pytest.raises(MedreconInputError, match="mask a.png is 8x4x1 but image a.png is 8x8x1"):
        bundle_datalist(ds, mask_dir=masks, task="inpaint")
    with pytest.raises(MedreconInputError, match="task inpaint needs a mask"):
        bundle_datalist(ds, task="inpaint")
    vols, vmasks = tmp_path / "vols", tmp_path / "vmasks"
    vols.mkdir(), vmasks.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 2), np.float32), np.eye(4)), str(vols / "v.nii.gz"))
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = 7
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 2), np.float32), flip), str(vmasks / "v.nii.gz"))
    with pytest.raises(MedreconInputError, match="mask v.nii.gz: the mask's geometry differs"):
        bundle_datalist(vols, mask_dir=vmasks, task="inpaint")
    with pytest.raises(MedreconInputError, match="only used by task inpaint"):
        bundle_datalist(ds, mask_dir=masks, task="sr")
    with pytest.raises(MedreconInputError, match="is the input folder"):
        bundle_datalist(ds, output_dir=ds, output_postfix="sr")
    refs = tmp_path / "refs"
    refs.mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(refs / "a.png")
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 2), np.float32), np.eye(4)), str(refs / "ct.nii.gz"))
    with pytest.raises(MedreconInputError, match="evaluate.json scores 2D images"):
        bundle_datalist(ds, reference_dir=refs)


def test_bundle_checks_every_scan_against_its_inferer_before_any_work(tmp_path, prior):
    """A scan too small for the task, beside a good one, stopped the run after the good one's
    result was written (with the engine's tracebacks); the bundle's datalist now checks every
    scan against the inferer's settings before the first solve, and the shipped configs pass
    their inferer."""
    import json

    from PIL import Image

    from medrecon.errors import MedreconInputError
    from medrecon.monai import ReconstructionInferer, bundle_datalist

    ds = tmp_path / "ds"
    ds.mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(ds / "a.png")
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(ds / "b.png")
    inferer = ReconstructionInferer(prior, "sr", method="bicubic", scale=2)
    assert len(bundle_datalist(ds)) == 2  # without an inferer: only read
    with pytest.raises(MedreconInputError, match="image b.png: .*too small to reconstruct"):
        bundle_datalist(ds, output_dir=tmp_path / "out", output_postfix="sr", inferer=inferer)
    assert not (tmp_path / "out").exists()
    (ds / "b.png").unlink()
    assert len(bundle_datalist(ds, inferer=inferer)) == 1
    # an output_dir that cannot take a file fails before the solve (a read-only one failed at
    # the first write, exit 1 with the engine's tracebacks)
    (tmp_path / "f.txt").write_text("mine")
    with pytest.raises(MedreconInputError, match="is a file, not a folder"):
        bundle_datalist(ds, output_dir=tmp_path / "f.txt" / "out", output_postfix="sr")
    root = Path(__file__).resolve().parents[1] / "bundles"
    for cfg in root.glob("*/configs/*.json"):
        data = json.loads(cfg.read_text())
        if "dataset_data" in data:
            assert "inferer=@inferer" in data["dataset_data"], cfg


def test_bundle_overwrite_is_a_strict_yes_or_no(tmp_path):
    """`python -m monai.bundle run --overwrite false` passes the word 'false', which was taken
    as true: an existing result was replaced. The words are read as what they say, any other
    value is refused before any work."""
    import nibabel as nib
    from PIL import Image

    from medrecon.errors import MedreconInputError
    from medrecon.monai import bundle_datalist, bundle_flag, bundle_writer

    assert [bundle_flag(v) for v in (True, 1, "true", "Yes", " ON ", "1")] == [True] * 6
    assert [bundle_flag(v) for v in (False, 0, "false", "No", "off", "0")] == [False] * 6
    for bad in ("maybe", "", 2, None, 0.5):
        with pytest.raises(MedreconInputError, match="neither true nor false; pass --overwrite true"):
            bundle_flag(bad)
    with pytest.raises(MedreconInputError, match="--overwrite 'maybe'"):
        bundle_writer(overwrite="maybe")
    assert bundle_writer(overwrite="false").overwrite is False
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir(), out.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(src / "a.png")
    ours = nib.Nifti1Image(np.zeros((8, 8), np.float32), np.eye(4))
    ours.header["descrip"] = b"medrecon 0.1"
    nib.save(ours, str(out / "a_sr.nii.gz"))
    kw = dict(output_dir=out, output_postfix="sr")
    for word in ("false", "no", "0"):
        with pytest.raises(MedreconInputError, match="exists; pass --overwrite true"):
            bundle_datalist(src, overwrite=word, **kw)
    with pytest.raises(MedreconInputError, match="neither true nor false"):
        bundle_datalist(src, overwrite="maybe", **kw)
    assert len(bundle_datalist(src, overwrite="true", **kw)) == 1


def test_bundle_reference_off_the_results_grid_is_refused_before_the_solve(tmp_path, prior):
    """evaluate.json with --scale 2 (or another task) solved the shipped sample, wrote the
    result, then failed in the metric with the engine's traceback: its reference is on the x4
    grid. The result's shape is now known before the solve and checked against the reference."""
    from PIL import Image

    from medrecon.errors import MedreconInputError
    from medrecon.monai import ReconstructionInferer, bundle_datalist

    ds, ref = tmp_path / "ds", tmp_path / "ref"
    ds.mkdir(), ref.mkdir()
    Image.fromarray(np.zeros((16, 12), np.uint8)).save(ds / "a_lr.png")
    Image.fromarray(np.zeros((64, 48), np.uint8)).save(ref / "a.png")
    x4 = ReconstructionInferer(prior, "sr", method="bicubic", scale=4)
    assert len(bundle_datalist(ds, reference_dir=ref, inferer=x4)) == 1
    for inferer, want in ((ReconstructionInferer(prior, "sr", method="bicubic", scale=2), "24x32x1"),
                          (ReconstructionInferer(prior, "deblur", method="wiener"), "12x16x1")):
        with pytest.raises(MedreconInputError, match=f"reference a.png is 48x64x1 but the result "
                           f"for a_lr.png will be {want}"):
            bundle_datalist(ds, reference_dir=ref, output_dir=tmp_path / "out",
                            output_postfix="sr", inferer=inferer)
    assert not (tmp_path / "out").exists()


def test_bundle_inferer_checks_its_options_when_built(prior):
    """A bad method, steps, kernel, device or option name is found when the bundle's config
    builds the inferer, before any batch (it stopped the run per batch, inside the engine's
    traceback, after earlier results were written)."""
    from medrecon.errors import MedreconInputError
    from medrecon.monai import ReconstructionInferer, bundle_device

    ok = ReconstructionInferer(prior, "sr", method="csgm", steps=2, scale=4,
                               sr_kernel="box", device="cpu")
    assert ok.prior is not None
    for kw, says in ((dict(method="nosuch"), "unknown method 'nosuch'"),
                     (dict(steps=0), "steps"), (dict(scale=0), "scale"),
                     (dict(sr_kernel="foo"), "sr_kernel must be one of"),
                     (dict(colour=1), "unknown reconstruction option"),
                     (dict(device="tpu"), "not a device")):
        with pytest.raises(MedreconInputError, match=says):
            ReconstructionInferer(prior, "sr", **kw)
    if not torch.cuda.is_available():
        with pytest.raises(MedreconInputError, match="CUDA is not available"):
            bundle_device("cuda")
    assert bundle_device("cpu") == torch.device("cpu")


def test_bundle_error_hook_stays_out_of_the_users_process(tmp_path, monkeypatch):
    """report_input_errors() changes sys.excepthook only in `python -m monai.bundle`'s own
    process, and a writer's error is reported only for the RuntimeError of its own file."""
    import sys

    from medrecon.monai import bundle as bundle_mod
    from medrecon.errors import MedreconInputError

    before = sys.excepthook
    bundle_mod.report_input_errors()
    assert sys.excepthook is before
    monkeypatch.setattr(bundle_mod, "_WRITER_ERRORS", [("/o/a_sr.nii.gz", MedreconInputError("x"))])
    assert bundle_mod._writer_error(RuntimeError("unrelated")) is None
    assert bundle_mod._writer_error(RuntimeError(
        "SaveImage cannot find a suitable writer for /o/a_sr.nii.gz.\n ...")) is not None


def test_transforms_follow_monai_conventions(prior):
    """Randomness from MONAI's random state (the items of a dataset differ, set_random_state
    repeats them; a fixed seed repeats every call), plain tensors under set_track_meta(False),
    a backend, one intensity window per channel with the input's dtype back from the
    inverse, the k-space mask under mask_key, and a batch refused with its fix."""
    from monai.data import set_track_meta
    from monai.transforms import Compose
    from monai.utils import TransformBackends

    from medrecon.errors import MedreconInputError
    from medrecon.monai import (IntensityWindowd, Reconstruct, SimulateDegradation,
                                SimulateDegradationd)

    img = MetaTensor(torch.rand(1, 16, 16), affine=torch.eye(4))
    noisy = SimulateDegradation("denoise", noise_sigma=0.1)
    a, b = noisy(img), noisy(img)
    assert not torch.equal(a, b)  # each call draws its own noise
    noisy.set_random_state(seed=5)
    c = noisy(img)
    noisy.set_random_state(seed=5)
    assert torch.equal(c, noisy(img))
    fixed = SimulateDegradation("denoise", noise_sigma=0.1, seed=3)
    assert torch.equal(fixed(img), fixed(img))
    with pytest.raises(MedreconInputError, match="seed must be an integer"):
        SimulateDegradation("denoise", seed=-1)  # the pipeline's seed rule
    pipe = Compose([SimulateDegradationd(keys="image", task="inpaint", mask_type="random_boxes")])
    pipe.set_random_state(seed=1)
    m1 = pipe({"image": img})["mask"]
    pipe.set_random_state(seed=1)
    assert torch.equal(m1, pipe({"image": img})["mask"])
    assert not torch.equal(m1, pipe({"image": img})["mask"])
    k = SimulateDegradationd(keys="image", task="mri", mask_key="kmask", seed=2)({"image": img})
    assert isinstance(k["kmask"], MetaTensor) and "mask" not in k
    for t in (Reconstruct(prior, "sr"), IntensityWindowd("image"), noisy):
        assert TransformBackends.TORCH in t.backend
    set_track_meta(False)
    try:
        assert type(noisy(img)) is torch.Tensor
        assert type(IntensityWindowd("image")({"image": img})["image"]) is torch.Tensor
    finally:
        set_track_meta(True)
    g = torch.Generator().manual_seed(0)
    two = MetaTensor(torch.stack([torch.randint(0, 1000, (8, 8), generator=g),
                                  torch.randint(0, 3, (8, 8), generator=g)]).to(torch.int16),
                     affine=torch.eye(4))
    win = IntensityWindowd("image", lower=0, upper=100)
    out = win({"image": two})["image"]
    for ch in out:  # each channel on its own window
        assert float(ch.min()) == pytest.approx(-1) and float(ch.max()) == pytest.approx(1)
    back = win.inverse({"image": out})["image"]
    assert back.dtype == torch.int16 and torch.equal(back.as_tensor(), two.as_tensor())
    batch = MetaTensor(torch.rand(2, 1, 8, 8))
    batch.is_batch = True
    with pytest.raises(MedreconInputError, match=r"got a batch \(2, 1, 8, 8\)\. Decollate"):
        Reconstruct(prior, "sr")(batch)


def test_invertd_recipe_keeps_the_super_resolution(prior):
    """The documented Invertd recipe (the intensity window alone) maps a result back to
    intensities on the reconstruction's grid (inverting the spatial steps too would resample
    it onto the coarse input grid), and the error of a Compose with Reconstructd says so."""
    from monai.transforms import Compose, Invertd

    from medrecon.errors import MedreconInputError
    from medrecon.monai import IntensityWindowd, Reconstructd

    lr = MetaTensor(torch.rand(1, 8, 8) * 500 + 100, affine=torch.diag(torch.tensor(
        [4.0, 4.0, 1.0, 1.0], dtype=torch.float64)))
    window = IntensityWindowd("image")
    recon = Reconstructd("image", prior, "sr", method="bicubic", scale=2, output_keys="pred",
                         bp=False)
    d = recon(window({"image": lr}))
    assert d["pred"].shape == (1, 16, 16)
    back = window.inverse({"image": d["pred"]})["image"]  # the result under output_keys
    assert back.shape == (1, 16, 16) and 50 < float(back.mean()) < 700
    torch.testing.assert_close(back.affine, d["pred"].affine)  # the result's 2 mm grid
    np.testing.assert_allclose(back.pixdim.numpy(), [2.0, 2.0])
    # Invertd(orig_keys='image') gives the result the input's trace and 4 mm geometry: refused
    with pytest.raises(MedreconInputError, match="Invertd gave it the trace and geometry of"):
        Invertd(keys="pred", transform=window, orig_keys="image")(d)
    # the result under the input's key: Invertd with the window alone keeps its grid
    same = Reconstructd("image", prior, "sr", method="bicubic", scale=2, bp=False)(
        window({"image": lr}))
    inv = Invertd(keys="image", transform=window)(same)["image"]
    torch.testing.assert_close(inv.as_tensor(), back.as_tensor())
    torch.testing.assert_close(inv.affine, d["pred"].affine)
    with pytest.raises(RuntimeError) as info:  # MONAI's wrapper around the transform's error
        Invertd(keys="pred", transform=Compose([window, recon]), orig_keys="image")(d)
    cause = info.value.__cause__
    assert isinstance(cause, MedreconInputError) and "the intensity window alone" in str(cause)


def test_bundle_runner_turns_sigterm_into_exit_143(monkeypatch):
    """In the bundle runner's process SIGTERM raises SystemExit(143) where the run is, so the
    staged result being written is discarded (the default action left its .part file)."""
    import signal
    import sys
    from types import SimpleNamespace

    from medrecon.monai import report_input_errors

    main = sys.modules["__main__"]
    monkeypatch.setattr(main, "__spec__", SimpleNamespace(name="monai.bundle.__main__"),
                        raising=False)
    before_hook, before_term = sys.excepthook, signal.getsignal(signal.SIGTERM)
    try:
        report_input_errors()
        handler = signal.getsignal(signal.SIGTERM)
        with pytest.raises(SystemExit) as info:
            handler(signal.SIGTERM, None)
        assert info.value.code == 143
        assert getattr(sys.excepthook, "medrecon_bundle_hook", False)
    finally:
        sys.excepthook = before_hook
        signal.signal(signal.SIGTERM, before_term)


def test_monai_review_round_two(prior):
    """Plain tensors in and out of the reconstruction under set_track_meta(False) (it failed
    inside medrecon); one draw per SimulateDegradationd call for all its keys (the first key's
    holes did not match the mask); std_keys with IAGAN's spread; Invertd over spatial steps
    applied before a change of grid stops (MONAI >= 1.5 looked past the record and undid them
    on the new grid)."""
    from monai.data import set_track_meta
    from monai.transforms import Compose, Invertd, SpatialPadd

    from medrecon.errors import MedreconInputError
    from medrecon.monai import (ReconstructionInferer, Reconstruct, Reconstructd, Reconstructor,
                                SimulateDegradationd)

    set_track_meta(False)
    try:
        out = Reconstruct(prior, "sr", method="bicubic", scale=2)(torch.rand(1, 8, 8))
        assert type(out) is torch.Tensor and out.shape == (1, 16, 16)
        d = Reconstructd("image", prior, "sr", method="bicubic", scale=2)(
            {"image": MetaTensor(torch.rand(1, 8, 8))})
        assert type(d["image"]) is torch.Tensor
        net = Reconstructor(ReconstructionInferer(prior, "sr", method="bicubic", scale=2))
        out = net(torch.rand(2, 1, 8, 8))
        assert type(out) is torch.Tensor and out.shape == (2, 1, 16, 16)
    finally:
        set_track_meta(True)
    img = MetaTensor(torch.rand(1, 16, 16) + 1, affine=torch.eye(4))
    for task, kw in (("inpaint", {"mask_type": "random_boxes"}), ("denoise", {"noise_sigma": 0.5})):
        t = SimulateDegradationd(keys=["a", "b"], task=task, **kw)
        t.set_random_state(seed=4)
        d = t({"a": img, "b": img.clone()})
        torch.testing.assert_close(d["a"].as_tensor(), d["b"].as_tensor())
        if task == "inpaint":
            assert bool((d["a"][d["mask"] > 0] == 0).all())
    Reconstructd("image", prior, "sr", method="iagan", std_keys="std", spread=True, ensemble=2)
    with pytest.raises(MedreconInputError, match="spread=True"):
        Reconstructd("image", prior, "sr", method="iagan", std_keys="std")
    pre = Compose([SpatialPadd(keys="image", spatial_size=(20, 20)),
                   SimulateDegradationd(keys="image", task="sr", scale=4)])
    d = pre({"image": img})
    assert d["image"].applied_operations[-1]["extra_info"]["earlier"] == ["SpatialPad"]
    with pytest.raises(RuntimeError):  # MONAI's transform mismatch, not a wrong (1, 2, 2) image
        Invertd(keys="image", transform=pre, orig_keys="image")(d)
    pad = Compose([SpatialPadd(keys="image", spatial_size=(20, 20))])
    d = Reconstructd("image", prior, "sr", method="bicubic", scale=2)(pad({"image": img}))
    with pytest.raises(RuntimeError):  # it returned a (38, 38) result with a shifted origin
        Invertd(keys="image", transform=pad, orig_keys="image")(d)
    # an inpainting keeps the grid, so the steps before it stay invertible
    d = pad({"image": img})
    d["mask"] = torch.zeros(1, 20, 20)
    d["mask"][0, 5:8, 5:8] = 1
    d = Reconstructd("image", prior, "inpaint", method="biharmonic", mask_key="mask")(d)
    assert Invertd(keys="image", transform=pad, orig_keys="image")(d)["image"].shape == (1, 16, 16)
    # the window inverted after a grid change MONAI records itself (a pad): not refused
    from medrecon.monai import IntensityWindowd

    win = IntensityWindowd("image")
    padded = SpatialPadd(keys="image", spatial_size=(20, 20))(win({"image": img}))
    back = win.inverse(padded)["image"]
    assert back.shape == (1, 20, 20)


_STOP_RUNNER = """
import os, runpy, signal, sys
import medrecon.monai.inferer as inf

how = sys.argv.pop()

def stop(self, *a, **k):
    if how == "term":
        os.kill(os.getpid(), signal.SIGTERM)
    if how == "bug":
        raise RuntimeError("a bug")
    if how == "input":
        from medrecon.errors import MedreconInputError
        raise MedreconInputError("found mid-run")
    raise KeyboardInterrupt

inf.ReconstructionInferer.__call__ = stop
sys.argv = ["monai.bundle", *sys.argv[1:]]
runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("how, code, line", [
    ("int", 130, "medrecon: interrupted; the result in progress was not written."),
    ("term", 143, "medrecon: terminated (SIGTERM); the result in progress was not written."),
    ("input", 2, "medrecon: error: found mid-run")])
def test_bundle_run_stopped_mid_solve_is_one_line(tmp_path, how, code, line):
    """Ctrl-C, SIGTERM or an input error in the middle of a bundle's solve: one line and the
    CLI's exit codes (ignite and MONAI's StatsHandler logged a traceback of ~70-270 lines
    each time, and Ctrl-C ended with Python's own traceback and exit code 1)."""
    import subprocess
    import sys

    import nibabel as nib

    bundle = Path(__file__).resolve().parents[1] / "bundles" / "brain_mri_stylegan2"
    (tmp_path / "in").mkdir()
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((12, 12), dtype=np.float32),
                             np.eye(4)), str(tmp_path / "in" / "a.nii.gz"))
    r = subprocess.run([sys.executable, "-c", _STOP_RUNNER, "run", "--config_file",
                        str(bundle / "configs" / "inference.json"), "--bundle_root", str(bundle),
                        "--dataset_dir", str(tmp_path / "in"), "--output_dir",
                        str(tmp_path / "out"), how], capture_output=True, text=True, timeout=300)
    assert r.returncode == code, r.stderr[-3000:]
    both = r.stdout + r.stderr  # the bundles' logging.conf logs to stdout
    assert "Traceback" not in both and "terminating due to exception" not in both
    assert r.stderr.strip().splitlines()[-1] == line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_bundle_run_keeps_the_traceback_of_a_bug(tmp_path):
    """Only stops and input errors lose their logged traceback: a bug keeps it."""
    import subprocess
    import sys

    import nibabel as nib

    bundle = Path(__file__).resolve().parents[1] / "bundles" / "brain_mri_stylegan2"
    (tmp_path / "in").mkdir()
    nib.save(nib.Nifti1Image(np.ones((12, 12), np.float32), np.eye(4)),
             str(tmp_path / "in" / "a.nii.gz"))
    r = subprocess.run([sys.executable, "-c", _STOP_RUNNER, "run", "--config_file",
                        str(bundle / "configs" / "inference.json"), "--bundle_root", str(bundle),
                        "--dataset_dir", str(tmp_path / "in"), "--output_dir",
                        str(tmp_path / "out"), "bug"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "RuntimeError: a bug" in r.stderr
    both = r.stdout + r.stderr
    assert "Exception: a bug" in both and "terminating due to exception: a bug" in both
