"""Tests of the volume benchmark's own logic (bench/bench_volume.py): the coherence sweep, its
entries, the report and the checks before any solve. The solves themselves are the pipeline's
(tests/test_volume.py); the committed runs are in bench/results."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from medrecon.errors import MedreconInputError
from medrecon.physics import build_operator
from medrecon.realscan import _score
from medrecon.volume import GUIDE_RANGE
from tests._scripts import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("bench/bench_volume.py")


def test_sweep_entries_take_a_width_and_an_optional_guide(bench):
    assert bench._sweep_entry("4", 0.065) == (4.0, 0.065)
    assert bench._sweep_entry(" 1.5:none", 0.065) == (1.5, None)
    assert bench._sweep_entry("3:0.05", 0.065) == (3.0, 0.05)
    for bad in ("wide", "-1", "4:0", "4:nan", "4:x", "auto"):
        with pytest.raises(MedreconInputError, match="sweep entry"):
            bench._sweep_entry(bad, 0.065)


def test_sweep_scores_the_volume_made_coherent(bench):
    """A stack of one anatomy with independent unmeasured errors on every slice: width 0 scores
    the result as it is, a width averages the errors away (both weightings)."""
    gen = torch.Generator().manual_seed(0)
    op = build_operator("sr", img_size=(16, 16), channels=1, seed=0, scale=4, kernel="box")
    truth = torch.rand(1, 1, 16, 16, generator=gen).repeat(8, 1, 1, 1)
    z = torch.randn(truth.shape, generator=gen)
    guess = truth + 0.2 * (z - op.A_dagger(op.A(z)))
    to_vol = lambda t: np.moveaxis(t[:, 0].numpy(), 0, 1)  # noqa: E731  slices on axis 1
    hr = SimpleNamespace(array=to_vol(truth), affine=np.eye(4))
    rows = bench._sweep(to_vol(guess), hr, 1, SimpleNamespace(scale=4, kernel="box"),
                        "0,2:none,2")
    assert [(r["coherence_mm"], r["guide_range"]) for r in rows] == [
        (0.0, GUIDE_RANGE), (2.0, None), (2.0, GUIDE_RANGE)]
    raw = _score(to_vol(guess), hr.array, 1)
    assert rows[0]["psnr"] == pytest.approx(raw["psnr"])
    assert rows[1]["psnr"] > raw["psnr"] + 3 and rows[2]["psnr"] > raw["psnr"] + 3
    assert rows[1]["interslice"] < raw["interslice"]


def _row(mode, psnr, seconds, threads=2, **extra):
    return {"mode": mode, "seconds": seconds, "seconds_per_slice": seconds / 10,
            "peak_rss_bytes": 2**30, "psnr": psnr, "ssim": 0.8, "psnr_reformat": psnr + 1,
            "ssim_reformat": 0.79, "interslice": 0.02, "threads": threads,
            "info": {"method": "iagan", "ensemble": 1}, "command": f"run {mode}",
            "date": "2026-11-29 22:00", **extra}


def test_report_compares_the_default_with_slice_by_slice(bench):
    sweep = [{"coherence_mm": 0.0, "guide_range": 0.065, "psnr": 29.0, "ssim": 0.8,
              "psnr_reformat": 30.0, "ssim_reformat": 0.8, "interslice": 0.03},
             {"coherence_mm": 1.5, "psnr": 30.0, "ssim": 0.8, "psnr_reformat": 31.0,
              "ssim_reformat": 0.8, "interslice": 0.02},  # a row from before the guide
             {"coherence_mm": 4.0, "guide_range": 0.065, "psnr": 30.2, "ssim": 0.81,
              "psnr_reformat": 31.2, "ssim_reformat": 0.81, "interslice": 0.019}]
    report = {"case": "test volume", "command": "bench", "machine": {
        "cpu": "cpu", "torch_threads": 2, "torch": "2"},
        "rows": [_row("default", 30.0, 100, coherence_sweep=sweep),
                 _row("slice-by-slice", 30.25, 400)]}
    md = bench.markdown(report)
    assert "| default | 0 | - | 29.00 |" in md and "| default | 1.5 | none | 30.00 |" in md
    assert "| default | 4 | 0.065 | 30.20 |" in md
    assert "-0.25 dB" in md and "per-slice cost ratio 0.250" in md
    report["rows"][1]["threads"] = 1
    assert "different thread counts: no cost ratio" in bench.markdown(report)
    # a stack thinner than SSIM's window has no reformat scores: the gap says n/a
    for r in report["rows"]:
        r["psnr_reformat"] = r["ssim_reformat"] = None
    assert "n/a dB / n/a on the reformats" in bench.markdown(report)
    report["rows"][0]["info"]["coupling"] = 1e-4
    assert "(ensemble 1; stage-1 coupling 0.0001)" in bench.markdown(report)
    report["machine"]["gpu"] = "NVIDIA H200"  # modes run on CUDA name the GPU
    assert "Machine: cpu, NVIDIA H200, 2 torch thread(s)" in bench.markdown(report)


def test_bad_invocations_stop_before_any_solve(bench, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench_volume.py", "--data", str(tmp_path)])
    assert bench.main() == 2
    assert "fetch it with" in capsys.readouterr().err
    (tmp_path / "colin27_ch2.nii.gz").write_bytes(b"")
    monkeypatch.setattr(sys, "argv", ["bench_volume.py", "--data", str(tmp_path),
                                      "--modes", "default,fastest"])
    assert bench.main() == 2
    assert "unknown mode(s) ['fastest']" in capsys.readouterr().err
    for opt in (["--coherence-sweep", "0,4:zero"], ["--coherence", "wide"]):
        monkeypatch.setattr(sys, "argv", ["bench_volume.py", "--data", str(tmp_path), *opt])
        assert bench.main() == 2
        assert "error: --coherence" in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", ["bench_volume.py", "--data", str(tmp_path), "--seed", "-1"])
    assert bench.main() == 2
    assert "error: --seed -1; expected an integer >= 0." in capsys.readouterr().err


def test_save_writes_the_modes_volume_on_the_truths_grid(bench, tmp_path):
    """``--save`` in a mode run (the cheap cubic mode on a synthetic volume the size of the
    benchmark's crop): a complete NIfTI with the ground truth's affine, nothing else left."""
    import nibabel as nib

    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    nib.Nifti1Image(rng.random((180, 112, 180), dtype=np.float32) * 100, aff).to_filename(
        data / "colin27_ch2.nii.gz")
    args = SimpleNamespace(data=data, slices=4, volume="colin27", threads=1, device="cpu",
                           save=tmp_path / "vols", coherence_sweep=None, batch_size=None)
    args.save.mkdir()
    row = bench.run_mode("scipy-cubic", args)
    files = sorted(p.name for p in args.save.iterdir())
    assert files == ["colin27_4slices_scipy-cubic.nii.gz"]
    img = nib.load(args.save / files[0])
    assert img.shape == (180, 4, 180) and np.isfinite(row["psnr"])
    assert np.allclose(img.affine[:3, :3], aff[:3, :3])
    args.seed = 2  # another seed's volume goes beside it, named by its seed
    bench.run_mode("scipy-cubic", args)
    assert sorted(p.name for p in args.save.iterdir()) == [
        "colin27_4slices_scipy-cubic.nii.gz", "colin27_4slices_scipy-cubic_seed2.nii.gz"]


def test_save_never_replaces_a_file(bench, tmp_path, monkeypatch, capsys):
    (tmp_path / "colin27_ch2.nii.gz").write_bytes(b"")
    out = tmp_path / "volumes"
    out.mkdir()
    (out / "colin27_24slices_default.nii.gz").write_bytes(b"mine")
    monkeypatch.setattr(sys, "argv", ["bench_volume.py", "--data", str(tmp_path), "--slices",
                                      "24", "--modes", "default", "--save", str(out)])
    assert bench.main() == 2
    assert "never replaces a file" in capsys.readouterr().err
    assert (out / "colin27_24slices_default.nii.gz").read_bytes() == b"mine"


def test_report_gives_the_per_slice_cost_against_a_lone_slice(bench):
    lone = _row("lone-slice", 30.4, 40, seconds_per_slice=40,
                info={"method": "iagan", "ensemble": 4, "offsets": [-1, 0, 1]})
    report = {"case": "test volume", "command": "bench", "machine": {
        "cpu": "cpu", "torch_threads": 2, "torch": "2"},
        "rows": [_row("default", 30.0, 100), lone]}
    md = bench.markdown(report)
    assert "one slice per call, median of 3" in md
    assert "10.00 s / 40.00 s = 0.250 (target: at most 0.25)" in md
    lone["threads"] = 1
    assert "against a lone slice: run with different thread counts" in bench.markdown(report)


def test_lone_slice_solves_each_slice_on_its_own(bench, tmp_path, monkeypatch):
    """The lone-slice mode: one reconstruct call per slice of LONE_OFFSETS, each given the
    one-slice scan of the stack's own measurements; the median time; scores on the stack's
    data range."""
    import nibabel as nib

    import medrecon.pipeline as P
    from medrecon.io import MedicalImage

    data = tmp_path / "data"
    data.mkdir()
    truth = np.random.default_rng(0).random((180, 112, 180), dtype=np.float32) * 100
    nib.Nifti1Image(truth, np.eye(4)).to_filename(data / "colin27_ch2.nii.gz")
    seen = []

    def fake(lr, **kw):  # nearest upsampling of the measurements, on the truth's grid
        seen.append((lr.array.shape, kw["plane"], kw["seed"]))
        arr = np.repeat(np.repeat(np.asarray(lr.array), 4, 0), 4, 2)
        return SimpleNamespace(image=MedicalImage(arr, np.eye(4)),
                               info={"method": "fake", "ensemble": 4, "plane": kw["plane"]})

    monkeypatch.setattr(P, "reconstruct", fake)
    args = SimpleNamespace(data=data, slices=6, volume="colin27", threads=1, device="cpu",
                           save=None, coherence_sweep=None, batch_size=None, seed=3)
    row = bench.run_mode("lone-slice", args)
    assert seen == [((45, 1, 45), "coronal", 3)] * len(bench.LONE_OFFSETS)  # --seed reaches it
    assert row["info"]["seed"] == 3
    assert row["mode"] == "lone-slice" and row["seconds"] == row["seconds_per_slice"]
    assert row["seconds"] == sorted(row["info"]["seconds_each"])[1]
    assert row["info"]["offsets"] == list(bench.LONE_OFFSETS)
    # the same slices cut from the stack's own low-resolution scan score the same
    from medrecon.realscan import _plane_scores, prepare_case

    hr, lr, axis = prepare_case(bench._case(data, 6, "colin27"))
    centre = 6 // 2  # the stack's centre slice, offset 0
    up = np.repeat(np.repeat(np.asarray(lr.array), 4, 0), 4, 2)
    rng_ = float(np.asarray(hr.array).max() - np.asarray(hr.array).min())
    want = np.mean([_plane_scores(up[:, centre + o:centre + o + 1], np.asarray(
        hr.array)[:, centre + o:centre + o + 1], axis, rng_)[0] for o in bench.LONE_OFFSETS])
    assert row["psnr"] == pytest.approx(want, rel=1e-6)
    assert row["psnr_reformat"] is None and row["interslice"] is None


def _saved_pair(bench, tmp_path, slices=20):
    """A synthetic truth the size of the benchmark's crop, and saved default / slice-by-slice
    volumes: the default worse on the first half of the stack, alike on the second."""
    import nibabel as nib

    from medrecon.realscan import prepare_case

    data, vols = tmp_path / "data", tmp_path / "vols"
    data.mkdir()
    vols.mkdir()
    rng = np.random.default_rng(1)
    nib.Nifti1Image(rng.random((180, 120, 180), dtype=np.float32) * 100, np.eye(4)).to_filename(
        data / "colin27_ch2.nii.gz")
    hr = prepare_case(bench._case(data, slices, "colin27"))[0]
    truth = np.asarray(hr.array, np.float32)
    noise = rng.normal(size=truth.shape).astype(np.float32)
    sbs = truth + 2 * noise
    default = sbs.copy()
    default[:, :slices // 2] += 3 * noise[:, :slices // 2]
    for mode, v in (("default", default), ("slice-by-slice", sbs)):
        nib.Nifti1Image(v, np.asarray(hr.affine)).to_filename(
            vols / f"colin27_{slices}slices_{mode}.nii.gz")
    return data, vols, truth, {"default": default, "slice-by-slice": sbs}


def test_per_slice_compares_the_saved_volumes_along_the_stack(bench, tmp_path):
    from medrecon.realscan import _plane_scores

    data, vols, truth, saved = _saved_pair(bench, tmp_path)
    args = SimpleNamespace(data=data, slices=20, volume="colin27", save=vols)
    ps = bench.per_slice(args)
    assert [r["slices"] for r in ps["stretches"]] == [[0, 10], [10, 20]]
    rng_ = float(truth.max() - truth.min())
    for r in ps["stretches"]:
        a, b = r["slices"]
        for mode, v in saved.items():
            want = _plane_scores(v[:, a:b], truth[:, a:b], 1, rng_)
            assert r[f"psnr_{mode}"] == pytest.approx(want[0], rel=1e-6)
            assert r[f"ssim_{mode}"] == pytest.approx(want[1], rel=1e-6)
        assert 1.0 <= r["support"] <= ps["support_full"] + 1e-6
    first, second = ps["stretches"]
    assert first["psnr_default"] < first["psnr_slice-by-slice"] - 1
    assert second["psnr_default"] == pytest.approx(second["psnr_slice-by-slice"])
    assert ps["sigma_slices"] == pytest.approx(4.0)  # 4 output pixels of 1 mm, 1 mm slices
    assert ps["support_full"] == pytest.approx(sum(np.exp(-0.5 * (k / 4) ** 2)
                                                   for k in range(-12, 13)), rel=1e-5)
    lines = "\n".join(bench._per_slice_lines(ps))
    assert "| 0-9 |" in lines and "| 10-19 |" in lines and "Correlation" in lines
    # a missing or mismatched volume is named
    (vols / "colin27_20slices_default.nii.gz").unlink()
    with pytest.raises(MedreconInputError, match="not found: run those modes with --save"):
        bench.per_slice(args)
    # volumes of 20 slices under the names of a 10-slice run
    for mode in ("default", "slice-by-slice"):
        (vols / f"colin27_10slices_{mode}.nii.gz").write_bytes(
            (vols / "colin27_20slices_slice-by-slice.nii.gz").read_bytes())
    with pytest.raises(MedreconInputError, match="another --slices"):
        bench.per_slice(SimpleNamespace(data=data, slices=10, volume="colin27", save=vols))


def test_compare_saved_adds_the_section_and_keeps_the_rows(bench, tmp_path, monkeypatch, capsys):
    import json

    data, vols, _, _ = _saved_pair(bench, tmp_path)
    out = tmp_path / "out"
    argv = ["bench_volume.py", "--data", str(data), "--slices", "20", "--out", str(out),
            "--machine", "m", "--compare-saved"]
    monkeypatch.setattr(sys, "argv", argv)
    assert bench.main() == 2  # no --save: nothing to compare
    assert "--compare-saved reads the volumes of --save" in capsys.readouterr().err
    out.mkdir()
    old = {"case": "c", "machine": {"cpu": "earlier", "torch_threads": 2, "torch": "t"},
           "command": "earlier command", "rows": [_row("default", 30.0, 100)],
           "default_run_earlier": _row("default", 29.0, 120)}
    (out / "volume_m_20slices.json").write_text(json.dumps(old))
    monkeypatch.setattr(sys, "argv", argv + ["--save", str(vols)])
    assert bench.main() == 0
    report = json.loads((out / "volume_m_20slices.json").read_text())
    assert report["rows"] == old["rows"] and report["machine"] == old["machine"]
    assert report["command"] == "earlier command"
    assert report["default_run_earlier"] == old["default_run_earlier"]  # kept as it was
    assert [r["slices"] for r in report["per_slice"]["stretches"]] == [[0, 10], [10, 20]]
    md = (out / "volume_m_20slices.md").read_text()
    assert "Where along the stack" in md and "| 10-19 |" in md


def test_report_names_a_rows_seed_when_not_zero(bench):
    report = {"case": "test volume", "command": "bench", "machine": {
        "cpu": "cpu", "torch_threads": 2, "torch": "2"},
        "rows": [_row("default", 30.0, 100, info={"method": "iagan", "ensemble": 1, "seed": 0}),
                 _row("slice-by-slice", 30.0, 400, info={"method": "iagan", "ensemble": 4,
                                                         "seed": 2})]}
    lines = bench.markdown(report).splitlines()
    row = lambda mode: next(x for x in lines if x.startswith(f"| {mode} |"))  # noqa: E731
    assert "seed" not in row("default")
    assert "ensemble 4; seed 2" in row("slice-by-slice")
