"""Real scans, not the ideal grid: measurements stay on the scan's grid, the plane is the
acquired one, large inputs behave per task, and the real-scan evaluation runs end to end.

The operators ``A_native o U`` are in the generic registry of ``tests/test_physics.py``
(adjoint, linearity, pseudo-inverse); here they are checked inside the pipeline.
"""

from __future__ import annotations

import json
import os
import warnings

import nibabel as nib
import numpy as np
import pytest
import torch
from nibabel.testing import data_path as NIB_DATA

from medrecon.errors import MedreconInputError, MedreconWarning
from medrecon.io import MedicalImage
from medrecon.native import build_native_problem
from medrecon.physics import Blur, SuperResolution, uniform_kernel
from medrecon.pipeline import acquisition_axis, reconstruct

R = 16


@pytest.fixture(scope="module")
def prior():
    from tests._tiny import tiny_prior

    return tiny_prior(resolution=R, seed=0)


def _smooth(shape, seed=0) -> np.ndarray:
    g = np.random.default_rng(seed)
    x = g.random(shape)
    from scipy import ndimage

    return (100 * ndimage.gaussian_filter(x, 1.2) + 20).astype(np.float32)


def _gen_units(res, values: np.ndarray) -> torch.Tensor:
    w = res.info["window"]
    return torch.from_numpy(2 * (values.astype(np.float64) - w["low"]) / (w["high"] - w["low"]) - 1)


# ------------------------------------------------------------------ measurements stay put
@pytest.mark.parametrize("method", ["csgm", "bicubic"])
def test_sr_result_reproduces_the_measured_pixels_exactly(prior, method):
    """Noiseless + back-projection: the output, averaged by the acquisition kernel onto the
    input's own pixels, gives back the input: nothing was resampled before the data term."""
    lr = _smooth((11, 13, 1))  # off the prior's grid (R / 3 would be 5.33)
    img = MedicalImage(lr, np.diag([-0.7, -0.9, 1.0, 1.0]))
    res = reconstruct(img, task="sr", prior=prior, method=method, scale=3, sr_kernel="box",
                      steps=3, bp=True)
    out = res.image.array[:, :, 0]
    assert out.shape == (33, 39)
    op = SuperResolution(3, img_size=(39, 33), kernel="box")  # display rows = array axis 1
    y = op.A(_gen_units(res, out.T)[None, None])[0, 0]
    np.testing.assert_allclose(y.numpy(), _gen_units(res, lr[:, :, 0].T).numpy(), atol=2e-4)
    assert res.info["effective_factor"][0] == pytest.approx(16 / 13, rel=1e-6)  # the wider side


def test_inpaint_and_deblur_keep_the_scan_grid(prior):
    vol = _smooth((21, 17, 2))
    miss = np.zeros(vol.shape, bool)
    miss[5:9, 4:10] = True
    holes = vol.copy()
    holes[miss] = 0
    res = reconstruct(MedicalImage(holes, np.eye(4)), task="inpaint", prior=prior, method="csgm",
                      steps=3, mask=miss, bp=True)
    assert res.image.shape == vol.shape
    np.testing.assert_allclose(res.image.array[~miss], vol[~miss], rtol=1e-4, atol=1e-3)
    assert not np.allclose(res.image.array[miss], 0)
    # deblurring: the blurred scan is measured on its own grid, B(result) = y (the symmetric
    # kernel commutes with the display flips, so the array's transpose is enough here)
    b = Blur(uniform_kernel(9))
    blurred = np.stack([b.A(torch.from_numpy(vol[:, :, k].T.copy())[None, None])[0, 0].numpy().T
                        for k in range(2)], axis=2)
    res = reconstruct(MedicalImage(blurred, np.eye(4)), task="deblur", prior=prior,
                      method="csgm", steps=3, bp=True, plane="axial")
    for k in range(2):
        y = _gen_units(res, blurred[:, :, k].T)[None, None]
        x = _gen_units(res, res.image.array[:, :, k].T)[None, None]
        assert float((b.A(x) - y).norm() / y.norm()) < 1e-3


def test_ideal_grid_is_unchanged(prior):
    """On the prior's grid the map U is the identity: the model is the plain operator."""
    x = torch.zeros(2, 1, 4, 4)
    p = build_native_problem("sr", x, prior_resolution=R, spacing_hw=(1.0, 1.0), simulate=False,
                             seed=0, scale=4)
    assert p.grid.is_identity and p.out_hw == (R, R) and p.effective_factor == (4.0, 4.0)
    p = build_native_problem("sr", torch.zeros(1, 1, 5, 7), prior_resolution=R,
                             spacing_hw=(1.0, 1.0), simulate=False, seed=0, scale=4)
    assert not p.grid.is_identity and p.out_hw == (20, 28)
    assert p.grid.content == (11, 16)  # the 20x28 field of view on the 16 grid, isotropic


# ------------------------------------------------------------------ the acquired plane
def test_plane_choice():
    assert acquisition_axis((45, 3, 45), (1, 1, 1)) == 1  # a coronal slab
    assert acquisition_axis((256, 256, 30), (1, 1, 5)) == 2  # axial, thick slices
    assert acquisition_axis((64, 64, 64), (1, 1, 3)) == 2  # equal matrix: the thick axis
    assert acquisition_axis((64, 64, 64), (1, 1, 1)) is None  # isotropic cube: none
    assert acquisition_axis((512, 512, 600), (0.7, 0.7, 0.6), dicom_series=True) == 2
    # square pixels: the axis whose spacing stands out is sliced, thick or thin
    assert acquisition_axis((64, 64, 100), (3, 3, 5)) == 2  # more thick slices than pixels
    assert acquisition_axis((45, 150, 45), (4, 1, 4)) == 1  # coarse pixels, thin slices
    assert acquisition_axis((40, 150, 45), (4, 1, 4)) == 1  # not the 40-pixel axis
    assert acquisition_axis((12, 12, 48), (4, 4, 1)) == 2  # a SimulateDegradation output
    # a rectangular pixel (20 %) does not stand out: the fewest voxels decide
    assert acquisition_axis((256, 256, 60), (0.9, 1.0, 1.0)) == 2
    assert acquisition_axis((160, 256, 256), (1.2, 1.0, 1.0)) == 0


def test_default_plane_is_the_acquired_one(prior):
    slab = MedicalImage(_smooth((20, 3, 20)), np.diag([1.0, 1.0, 1.0, 1.0]))
    res = reconstruct(slab, task="sr", prior=prior, method="bicubic", scale=2)
    assert res.info["plane"] == "coronal" and res.info["plane_source"] == "acquisition"
    assert res.image.shape == (40, 3, 40)
    # oblique: a rotated slab is still sliced across its thin axis
    th = np.deg2rad(25)
    rot = np.array([[np.cos(th), -np.sin(th), 0, 0], [np.sin(th), np.cos(th), 0, 0],
                    [0, 0, 1, 0], [0, 0, 0, 1]])
    res = reconstruct(MedicalImage(_smooth((3, 20, 20)), rot), task="sr", prior=prior,
                      method="bicubic", scale=2)
    assert res.info["slice_axis"] == 0 and res.info["plane_source"] == "acquisition"
    # an isotropic cube has no acquired plane: the prior's default, else axial
    cube = MedicalImage(_smooth((12, 12, 12)), np.eye(4))
    res = reconstruct(cube, task="denoise", prior=prior, method="pseudo_inverse")
    assert res.info["plane"] == "axial" and res.info["plane_source"] == "default"
    # a 2D image keeps its layout
    res = reconstruct(MedicalImage(_smooth((20, 14, 1)), np.eye(4)), task="sr", prior=prior,
                      method="bicubic", scale=2)
    assert res.info["plane_source"] == "2D image" and res.image.shape == (40, 28, 1)
    # a requested plane that cuts the slab into lines is refused, naming the one that works
    with pytest.raises(MedreconInputError, match="--plane coronal"):
        reconstruct(slab, task="sr", prior=prior, method="bicubic", plane="axial")


def test_dicom_series_is_sliced_as_stacked(tmp_path, prior):
    import copy

    import pydicom
    from pydicom.data import get_testdata_file

    from medrecon.io import load_image

    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    uid = pydicom.uid.generate_uid()
    for i in range(80):  # more slices than the 128 x 128 in-plane matrix would suggest
        ds = copy.deepcopy(base)
        ipp = [float(v) for v in base.ImagePositionPatient]
        ds.ImagePositionPatient = [ipp[0], ipp[1], ipp[2] + i]
        ds.InstanceNumber, ds.SeriesInstanceUID = i + 1, uid
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.Rows = ds.Columns = 16
        ds.PixelData = (np.arange(256, dtype=np.int16).reshape(16, 16) + i).tobytes()
        ds.save_as(tmp_path / f"s{i:03d}.dcm")
    img = load_image(tmp_path)
    assert img.shape == (16, 16, 80)
    res = reconstruct(img, task="denoise", prior=prior, method="pseudo_inverse")
    assert res.info["slice_axis"] == 2 and res.info["plane_source"] == "acquisition"


# ------------------------------------------------------------------ large inputs, per task
def test_large_inputs_per_task(prior):
    big = MedicalImage(_smooth((48, 48, 1)), np.eye(4))  # 3x the tiny prior's grid
    for task, kw in (("denoise", {}), ("deblur", {})):
        with pytest.raises(MedreconInputError, match="--method"):
            reconstruct(big, task=task, prior=prior, method="csgm", steps=2, **kw)
        # the native baselines work at the scan's resolution
        out = reconstruct(big, task=task, prior=prior,
                          method="tv" if task == "denoise" else "wiener", steps=5)
        assert out.image.shape == big.shape
    # inpainting: measured pixels kept exactly, a warning says the prior is coarser
    miss = np.zeros(big.shape, bool)
    miss[20:28, 20:28] = True
    with pytest.warns(MedreconWarning, match="coarser"):
        res = reconstruct(big, task="inpaint", prior=prior, method="csgm", steps=2, mask=miss)
    np.testing.assert_allclose(res.image.array[~miss], big.array[~miss], rtol=1e-4, atol=1e-3)
    # SR: the prior supplies less than asked: said, and the measurements still hold
    with pytest.warns(MedreconWarning, match=r"supplies x0\.\d+ of the requested x2"):
        res = reconstruct(big, task="sr", prior=prior, method="csgm", scale=2, steps=2)
    assert res.image.shape == (96, 96, 1)
    # between half and full coverage: a warning, not a refusal
    mid = MedicalImage(_smooth((24, 24, 1)), np.eye(4))
    with pytest.warns(MedreconWarning, match="coarser"):
        reconstruct(mid, task="denoise", prior=prior, method="csgm", steps=2)
    # baselines never warn: they work on the scan's grid
    with warnings.catch_warnings():
        warnings.simplefilter("error", MedreconWarning)
        reconstruct(big, task="sr", prior=prior, method="lanczos", scale=2)


def test_cli_reports_the_prior_factor(tmp_path, prior, capsys):
    from medrecon.cli import main
    from medrecon.io import save_image
    from medrecon.priors import save_prior

    save_prior(prior, tmp_path / "p")
    save_image(MedicalImage(_smooth((12, 12, 1)), np.eye(4)), tmp_path / "lr.nii.gz")
    code = main(["sr", str(tmp_path / "lr.nii.gz"), "--prior", str(tmp_path / "p"), "--method",
                 "csgm", "--steps", "2", "--scale", "2", "--log-format", "json"])
    err = capsys.readouterr().err
    assert code == 0
    events = [json.loads(x) for x in err.splitlines() if x.startswith("{")]
    warn = [e for e in events if e["event"] == "warning"]
    done = [e for e in events if e["event"] == "done"][0]
    assert warn and "supplies x1.33 of the requested x2" in warn[0]["message"]
    assert done["effective_factor"] == [pytest.approx(16 / 12, abs=1e-3)] * 2


# ------------------------------------------------------------------ real-scan evaluation
def test_real_scan_evaluation_end_to_end(tmp_path, prior):
    from medrecon.priors import save_prior
    from medrecon.realscan import ScanCase, evaluate_scans, load_cases, prepare_case

    save_prior(prior, tmp_path / "p")
    src = os.path.join(NIB_DATA, "anatomical.nii")  # a real T1 shipped with nibabel
    cases_file = tmp_path / "cases.json"
    cases_file.write_text(json.dumps([
        {"name": "anat_x2", "path": src, "prior": str(tmp_path / "p"), "scale": 2,
         "kernel": "box", "crop": [None, None, [10, 13]], "slice_axis": 2,
         "description": "nibabel's anatomical.nii, 3 axial slices"}]))
    case = load_cases(cases_file)[0]
    assert isinstance(case, ScanCase)
    hr, lr, axis = prepare_case(case)
    a = nib.load(src)
    assert hr.shape == (a.shape[0] // 2 * 2, a.shape[1] // 2 * 2, 3) and axis == 2
    assert lr.shape == (hr.shape[0] // 2, hr.shape[1] // 2, 3)
    np.testing.assert_allclose(lr.array[0, 0, 0], hr.array[:2, :2, 0].mean(), rtol=1e-5)
    np.testing.assert_allclose(np.abs(lr.affine[:3, :3]).sum(0)[:2],
                               2 * np.abs(hr.affine[:3, :3]).sum(0)[:2], rtol=1e-6)
    rows = evaluate_scans([case], methods=["default", "scipy-cubic", "lanczos-bp"], steps=2,
                          out_dir=tmp_path / "report", device="cpu")
    assert [r.method for r in rows] == ["default", "scipy-cubic", "lanczos-bp"]
    d = rows[0]
    # 16 px of prior over 20 px of input: x0.8 < MIN_SR_PRIOR_FACTOR, the default is Lanczos-BP
    assert d.ran_as == "lanczos+bp" and d.plane_source == "acquisition"
    assert all(np.isfinite(r.psnr) and 0 < r.ssim <= 1 for r in rows)
    assert {p.name for p in (tmp_path / "report").iterdir()} == {
        "results.csv", "summary.md", "grid.png", "settings.json"}
    assert "Default against the best native-grid baseline" in (
        tmp_path / "report" / "summary.md").read_text()


def test_off_grid_defaults_reach_the_solver(prior, monkeypatch):
    """Off the prior's grid the SR default adapts longer (OFF_GRID_DEFAULTS); on it, and when
    the user gives steps, the per-task defaults and the user's value hold."""
    import medrecon.solvers as S

    seen: list[dict] = []
    real = S.solve

    def spy(y, op, pr, **kw):
        if kw.get("method") != "iagan":
            return real(y, op, pr, **kw)
        seen.append(dict(kw))
        return real(y, op, pr, **{**kw, "steps": 1, "stage1_options": {"steps": 1}})

    monkeypatch.setattr(S, "solve", spy)
    off = MedicalImage(_smooth((6, 6, 1)), np.eye(4))  # 6 != 16 / 4
    reconstruct(off, task="sr", prior=prior, method="iagan", scale=4, ensemble=1)
    assert seen[-1]["steps"] == S.OFF_GRID_DEFAULTS["sr"]["iagan"]["steps"]
    on = MedicalImage(_smooth((4, 4, 1)), np.eye(4))  # exactly 16 / 4
    reconstruct(on, task="sr", prior=prior, method="iagan", scale=4, ensemble=1)
    assert "steps" not in seen[-1]
    reconstruct(off, task="sr", prior=prior, method="iagan", scale=4, ensemble=1, steps=7)
    assert seen[-1]["steps"] == 7


def test_sr_default_falls_back_where_the_prior_supplies_little(prior, tmp_path):
    from medrecon.io import save_image
    from medrecon.pipeline import MIN_SR_PRIOR_FACTOR, reconstruct_file

    low = MedicalImage(_smooth((10, 10, 1)), np.eye(4))  # x1.6 of the asked x4
    with pytest.warns(MedreconWarning, match="default here is lanczos"):
        res = reconstruct(low, task="sr", prior=prior, scale=4)
    assert res.info["method"] == "lanczos+bp" and "fallback" in res.info
    assert min(res.info["effective_factor"]) < MIN_SR_PRIOR_FACTOR
    # a method the user chose always runs
    res = reconstruct(low, task="sr", prior=prior, scale=4, method="csgm", steps=2)
    assert res.info["method"].startswith("csgm") and "fallback" not in res.info
    # so does an ensemble asked for (an IAGAN option: it was refused as Lanczos lacks it)
    res = reconstruct(low, task="sr", prior=prior, scale=4, ensemble=2, steps=1)
    assert res.info["method"].startswith("iagan") and "fallback" not in res.info
    # on the prior's grid (x4) the generative default runs
    ideal = MedicalImage(_smooth((4, 4, 1)), np.eye(4))
    res = reconstruct(ideal, task="sr", prior=prior, scale=4, steps=1, ensemble=1)
    assert res.info["method"].startswith("iagan")
    # the default file name says what ran
    save_image(low, tmp_path / "low.nii.gz")
    with pytest.warns(MedreconWarning):
        out = reconstruct_file(tmp_path / "low.nii.gz", task="sr", prior=prior, scale=4)
    assert out.output_path.name == "low_sr_lanczos-bp.nii.gz"
    # ... and it is what ran: reconstruct_file passed the resolved default on as the user's
    # choice, so the CLI (bp=None) ran IAGAN into a file named lanczos, never falling back
    assert out.info["method"] == "lanczos+bp"
    with pytest.warns(MedreconWarning):
        out = reconstruct_file(tmp_path / "low.nii.gz", task="sr", prior=prior, scale=4,
                               bp=None, output_path=tmp_path / "cli.nii.gz")
    assert out.info["method"] == "lanczos+bp"
    with pytest.warns(MedreconWarning):
        named = reconstruct_file(tmp_path / "low.nii.gz", task="sr", prior=prior, scale=4,
                                 bp=None, overwrite=True)
    assert named.output_path.name == "low_sr_lanczos-bp.nii.gz"
    out = reconstruct_file(tmp_path / "low.nii.gz", task="sr", prior=prior, scale=4, ensemble=2,
                           steps=1)
    assert out.output_path.name.startswith("low_sr_iagan")


def test_eval_scans_command(tmp_path, prior, capsys):
    from medrecon.cli import main
    from medrecon.priors import save_prior

    save_prior(prior, tmp_path / "p")
    cases = tmp_path / "cases.json"
    cases.write_text(json.dumps([
        {"name": "anat", "path": os.path.join(NIB_DATA, "anatomical.nii"),
         "prior": str(tmp_path / "p"), "scale": 2, "crop": [None, None, [10, 13]],
         "slice_axis": 2}]))
    out = tmp_path / "report"
    assert main(["eval-scans", str(cases), "--out", str(out), "--methods",
                 "scipy-cubic,bicubic-bp"]) == 0
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[1].startswith("anat,scipy-cubic")
    capsys.readouterr()
    assert main(["eval-scans", str(cases), "--out", str(out), "--methods", "bicubic"]) == 2
    assert "--overwrite" in capsys.readouterr().err  # the report is never replaced silently
    # its settings.json lists what it wrote, so --overwrite replaces exactly that
    made = json.loads((out / "settings.json").read_text())["report_files"]
    assert sorted(made) == ["grid.png", "results.csv", "summary.md"]
    assert main(["eval-scans", str(cases), "--out", str(out), "--methods", "bicubic",
                 "--overwrite"]) == 0
    (out / "summary.md").write_text("my notes\n")  # changed since: never replaced
    assert main(["eval-scans", str(cases), "--out", str(out), "--methods", "bicubic",
                 "--overwrite"]) == 2
    assert "report did not write" in capsys.readouterr().err
    assert (out / "summary.md").read_text() == "my notes\n"
    assert main(["eval-scans", str(cases), "--out", str(tmp_path / "r2"), "--cases", "nope"]) == 2
    # every case and method is checked before the first run (a bad last one stopped the run
    # only when reached, after the earlier ones had run)
    good = json.loads(cases.read_text())[0]
    for extra, methods, says in (
            ({"name": "gone", "path": "missing.nii"}, "scipy-cubic", "case 'gone': "),
            ({"name": "noprior", "prior": "nope"}, "bicubic", "case 'noprior': Unknown prior"),
            ({"name": "axis", "slice_axis": None}, "scipy-cubic", "case 'axis': a 3D volume"),
            ({}, "scipy-cubic,nope", "unknown method(s) 'nope'"),
            ({}, "scipy-cubic,biharmonic", "solves inpainting, not sr")):
        cases.write_text(json.dumps([good, {**good, "name": "b", **extra}]))
        capsys.readouterr()
        assert main(["eval-scans", str(cases), "--out", str(tmp_path / "r4"),
                     "--methods", methods]) == 2
        err = capsys.readouterr().err
        assert says in err and "anat:" not in err, err  # nothing ran
        assert not (tmp_path / "r4").exists()
    cases.write_text(json.dumps([good]))
    cases.write_text(json.dumps([{"name": "x", "path": "a.nii", "prior": "p", "colour": 1}]))
    assert main(["eval-scans", str(cases), "--out", str(tmp_path / "r3")]) == 2
    assert "unknown ['colour']" in capsys.readouterr().err
    # a case that is a (DICOM series) folder: the report never goes into it
    series = tmp_path / "series"
    series.mkdir()
    cases.write_text(json.dumps([{"name": "s", "path": str(series), "prior": str(tmp_path / "p"),
                                  "scale": 2}]))
    assert main(["eval-scans", str(cases), "--out", str(series / "report")]) == 2
    assert "scan folder" in capsys.readouterr().err and list(series.iterdir()) == []


@pytest.mark.parametrize("bad", [{"scale": 0}, {"scale": "2"}, {"scale": 64}, {"bin": [0, 1, 1]},
                                 {"bin": [1, 1]}, {"crop": [[0]]}, {"slice_axis": 5},
                                 {"name": ["x"]}])
def test_case_fields_are_checked_when_read(tmp_path, bad):
    """A bad field of a case gave ZeroDivisionError, IndexError... (exit 1) from inside the
    degradation, after the earlier cases had run; now one line naming the case and field."""
    from medrecon.realscan import load_cases

    cases = tmp_path / "c.json"
    cases.write_text(json.dumps([{"name": "x", "path": "a.nii", "prior": "p", **bad}]))
    with pytest.raises(MedreconInputError, match=f"{next(iter(bad))}=.*expected"):
        load_cases(cases)


def test_eval_scans_case_that_leaves_no_slices_says_so(tmp_path):
    """A crop, bin or slice axis that leaves nothing, or slices under 4 x 4, failed later with
    'array is empty' or a shape mismatch naming neither."""
    from medrecon.realscan import ScanCase, prepare_case

    path = os.path.join(NIB_DATA, "anatomical.nii")
    with pytest.raises(MedreconInputError, match="low-resolution slices would be 1x"):
        prepare_case(ScanCase(name="a", path=path, prior="p", scale=2,
                              crop=[[0, 3], None, None], slice_axis=2))
    with pytest.raises(MedreconInputError, match="leave no voxel"):
        prepare_case(ScanCase(name="b", path=path, prior="p", scale=2, bin=[100, 1, 1],
                              slice_axis=2))


def test_eval_scans_case_list_is_a_regular_file(tmp_path):
    """/dev/zero as the case list was read until memory ran out; a pipe blocked forever."""
    from medrecon.realscan import load_cases

    os.mkfifo(tmp_path / "pipe")
    for path, says in (("/dev/zero", "character device"), (tmp_path / "pipe", "named pipe"),
                       (tmp_path, "not a JSON file")):
        with pytest.raises(MedreconInputError, match=says):
            load_cases(path)


def test_eval_scans_refuses_two_cases_of_one_name(tmp_path):
    from medrecon.realscan import load_cases

    cases = tmp_path / "c.json"
    cases.write_text(json.dumps([{"name": "a", "path": "x.nii", "prior": "p", "scale": 4},
                                 {"name": "a", "path": "x.nii", "prior": "p", "scale": 2}]))
    with pytest.raises(MedreconInputError, match="two cases .* named 'a'"):
        load_cases(cases)
