"""Tests of the evaluation harness (``medrecon eval``) and of the benchmark script.

Everything runs on a tiny random-weight prior (16 px) and two tiny PNGs written into tmp, with
2-3 solver steps, so the whole module takes seconds on one CPU core.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from medrecon import evaluation as ev
from medrecon.errors import MedreconInputError, MedreconWarning, MissingWeightsError
from tests._scripts import load_script

R = 16
#: Keep CSGM to one start and no probe batch: the tests check plumbing, not quality.
FAST = {"restarts": 1, "probes": 0}


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def prior():
    from tests._tiny import tiny_prior

    return tiny_prior(resolution=R, seed=3)


@pytest.fixture(scope="module")
def prior_path(prior, tmp_path_factory):
    from medrecon.priors import save_prior

    path = tmp_path_factory.mktemp("prior") / "tiny"
    out = save_prior(prior, path)
    return Path(out) if out is not None else path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Two 8-bit PNGs: one already R x R, one 20 x 24 (resampled and padded to the grid)."""
    root = tmp_path_factory.mktemp("gt")
    rng = np.random.default_rng(1234)
    yy, xx = np.mgrid[0:R, 0:R]
    a = (127 + 100 * np.sin(xx / 3.0) * np.cos(yy / 4.0)).astype(np.uint8)
    Image.fromarray(a, mode="L").save(root / "a.png")
    sub = root / "sub"
    sub.mkdir()
    b = rng.integers(0, 256, size=(20, 24), dtype=np.uint8)
    Image.fromarray(b, mode="L").save(sub / "b.png")
    (root / "notes.txt").write_text("not an image\n")
    return root


@pytest.fixture()
def offline_lpips(monkeypatch):
    """Make LPIPS behave as on a machine without the AlexNet weights (deterministic)."""
    from medrecon import metrics

    def missing(*_a, **_k):
        raise MissingWeightsError("alexnet-owt-7be5be79.pth not found in the torch hub cache")

    monkeypatch.setattr(metrics, "lpips_distance", missing)


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------
def test_cli_writes_results_summary_and_grid(prior_path, images, tmp_path, offline_lpips):
    out = tmp_path / "run"
    res = CliRunner().invoke(ev.eval_command, [
        "--prior", str(prior_path), "--task", "sr", "--scale", "2",
        "--methods", "bicubic,csgm,csgm-bp", "--images", str(images), "--steps", "2",
        "--method-option", "csgm.restarts=1", "--method-option", "csgm.probes=0",
        "--method-option", "csgm-bp.restarts=1", "--method-option", "csgm-bp.probes=0",
        "--seed", "0", "--device", "cpu", "--out", str(out)])
    assert res.exit_code == 0, res.output
    cols, rows = _read_csv(out / "results.csv")
    assert cols == list(ev.CSV_COLUMNS)
    assert [(r["image"], r["method"]) for r in rows] == [
        (i, m) for i in ("a.png", "sub/b.png") for m in ("bicubic", "csgm", "csgm-bp")]
    for r in rows:
        assert math.isfinite(float(r["psnr"])) and float(r["psnr"]) > 0
        assert -1.0 <= float(r["ssim"]) <= 1.0
        assert r["lpips"] == ""  # offline: empty, not zero
        assert float(r["seconds"]) >= 0 and r["device"] == "cpu"
    summary = (out / "summary.md").read_text()
    for m in ("bicubic", "csgm", "csgm-bp"):
        assert f"| {m} | 2 |" in summary
    assert "data_range=1" in summary and "scale=2" in summary
    assert "LPIPS column empty" in summary and "alexnet" in summary
    with Image.open(out / "grid.png") as im:
        w, h = im.size
    # 2 images (rows) x (ground truth, measurement, 3 methods) columns of R px tiles.
    assert w >= 5 * R and h >= 2 * R
    settings = json.loads((out / "settings.json").read_text())
    assert settings["task"] == "sr" and settings["method_options"]["csgm"] == FAST


def test_unknown_method_exits_2_and_lists_valid_ones(prior_path, images, tmp_path):
    res = CliRunner().invoke(ev.eval_command, [
        "--prior", str(prior_path), "--task", "sr", "--methods", "csgm,magic",
        "--images", str(images), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2
    assert "'magic'" in res.output
    for valid in ("csgm", "iagan", "iagan-bp", "bicubic"):
        assert valid in res.output
    assert not (tmp_path / "x").exists()


def test_method_unfit_for_task_is_a_usage_error(prior_path, images, tmp_path):
    res = CliRunner().invoke(ev.eval_command, [
        "--prior", str(prior_path), "--task", "mri", "--methods", "wiener",
        "--images", str(images), "--out", str(tmp_path / "y"), "--device", "cpu"])
    assert res.exit_code == 2, res.output
    assert "wiener" in res.output and "Traceback" not in res.output


# ---------------------------------------------------------------------------------------------
# Reproducibility and the protocol
# ---------------------------------------------------------------------------------------------
def _metrics(rows):
    return [(r.image, r.method, r.psnr, r.ssim) for r in rows]


def test_reproducible_under_seed_and_global_rng_untouched(prior, images, offline_lpips):
    kw = dict(prior=prior, task="inpaint", methods="csgm,biharmonic", images=images, steps=2,
              noise_sigma=0.05, device="cpu", lpips=False, method_options={"csgm": FAST})
    torch.manual_seed(99)
    state = torch.get_rng_state()
    np_state = np.random.get_state()[1].copy()
    first = ev.evaluate(seed=5, **kw)
    assert torch.equal(torch.get_rng_state(), state)
    assert np.array_equal(np.random.get_state()[1], np_state)
    again = ev.evaluate(seed=5, **kw)
    other = ev.evaluate(seed=6, **kw)
    assert _metrics(first) == _metrics(again)
    assert _metrics(first) != _metrics(other)


def test_back_projection_after_a_baseline(prior, images):
    """``-bp`` works after a closed-form baseline (the fair comparison for generative -bp)."""
    rows = ev.evaluate(prior=prior, task="sr", scale=2, methods="bicubic,bicubic-bp",
                       images=images, device="cpu", lpips=False, seed=0)
    by = {}
    for r in rows:
        by.setdefault(r.method, []).append(r.psnr)
    assert set(by) == {"bicubic", "bicubic-bp"} and len(by["bicubic"]) == len(by["bicubic-bp"])
    assert by["bicubic"] != by["bicubic-bp"]  # the projection changed the images


def test_image_result_does_not_depend_on_the_other_images(prior, images):
    kw = dict(prior=prior, task="sr", scale=2, methods="csgm", steps=2, noise_sigma=0.02,
              device="cpu", lpips=False, seed=1, method_options={"csgm": FAST})
    both = ev.evaluate(images=images, **kw)
    only_b = images / "only_b.txt"
    only_b.write_text("sub/b.png\n")
    try:
        alone = ev.evaluate(images=only_b, **kw)
    finally:
        only_b.unlink()
    assert [r.image for r in alone] == ["sub/b.png"]
    b_both = next(r for r in both if r.image == "sub/b.png")
    assert (alone[0].psnr, alone[0].ssim) == (b_both.psnr, b_both.ssim)


def test_derive_seed_is_stable_and_distinct():
    s = ev.derive_seed(0, "a.png")
    assert s == ev.derive_seed(0, "a.png") and 0 <= s < 2**63
    assert len({s, ev.derive_seed(1, "a.png"), ev.derive_seed(0, "b.png"),
                ev.derive_seed(0, "a.png", "noise")}) == 4
    # Pinned: a change here silently changes every published number.
    assert s == int.from_bytes(__import__("hashlib").sha256(
        "medrecon-eval\x1f0\x1fa.png".encode()).digest()[:8], "little") & (2**63 - 1)


def test_ground_truth_matches_the_training_mapping(images):
    x = ev._load_ground_truth(images / "a.png", resolution=R, channels=1)
    raw = torch.from_numpy(np.asarray(Image.open(images / "a.png"), dtype=np.float32))
    assert x.shape == (1, 1, R, R)
    torch.testing.assert_close(x[0, 0], raw / 127.5 - 1.0, atol=1e-5, rtol=0)
    y = ev._load_ground_truth(images / "sub" / "b.png", resolution=R, channels=1)
    assert y.shape == (1, 1, R, R) and float(y.min()) >= -1 and float(y.max()) <= 1
    assert torch.all(y[0, 0, :1] == -1.0)  # 20x24 -> 13x16 content, padded with black


def test_metrics_are_in_unit_range_with_data_range_1():
    from medrecon import metrics

    ref = torch.zeros(1, 1, R, R)
    pred = torch.full((1, 1, R, R), 0.1)  # 0.05 on [0, 1]: MSE 0.0025 -> 26.02 dB
    psnr, ssim, lp = ev._image_metrics(ev._to01(pred), ev._to01(ref), ev._Lpips(False))
    assert psnr == pytest.approx(10 * math.log10(1 / 0.05**2), abs=1e-3)
    assert ssim == pytest.approx(float(metrics.ssim(ev._to01(pred), ev._to01(ref),
                                                    data_range=1.0)))
    assert lp is None


# ---------------------------------------------------------------------------------------------
# Inputs, writers
# ---------------------------------------------------------------------------------------------
def test_discover_images_folder_list_and_limit(images, tmp_path):
    found = ev.discover_images(images)
    assert [i for i, _ in found] == ["a.png", "sub/b.png"]
    assert [i for i, _ in ev.discover_images(images, limit=1)] == ["a.png"]
    lst = images / "held_out.txt"
    lst.write_text("# held-out fold\nsub/b.png\n\n")
    assert [i for i, _ in ev.discover_images(lst)] == ["sub/b.png"]
    with pytest.raises(MedreconInputError, match="no ground-truth images"):
        ev.discover_images(tmp_path)
    with pytest.raises(MedreconInputError, match="does not exist"):
        ev.discover_images(tmp_path / "nope")
    with pytest.raises(MedreconInputError, match="limit"):
        ev.discover_images(images, limit=0)
    lst.unlink()


def test_limit_takes_evenly_spaced_images(tmp_path):
    for i in range(5):
        (tmp_path / f"img{i}.png").write_bytes(b"")  # discovery does not read the files
    assert [i for i, _ in ev.discover_images(tmp_path, limit=2)] == ["img0.png", "img2.png"]
    assert len(ev.discover_images(tmp_path, limit=9)) == 5


def test_held_out_fold_selection(images, tmp_path):
    from medrecon.training.folds import FoldAssignment, save_folds

    fa = FoldAssignment(files=("a.png", "sub/b.png"), folds=(0, 1), groups=("a", "b"), k=2,
                        scheme="image")
    models = tmp_path / "bundle" / "models"
    models.mkdir(parents=True)
    save_folds(fa, models / "folds.json")
    (models / "training.json").write_text(json.dumps({"held_out_fold": 1}))
    assert ev.held_out_images(tmp_path / "bundle") == (["sub/b.png"], 1)
    assert ev.held_out_images(models / "folds.json", fold=0) == (["a.png"], 0)
    subset, _ = ev.held_out_images(models)
    assert [i for i, _ in ev.discover_images(images, subset=subset)] == ["sub/b.png"]
    with pytest.raises(MedreconInputError, match="not under"):
        ev.discover_images(images / "sub", subset=subset)
    lst = tmp_path / "fold1.txt"
    lst.write_text("# held-out\nsub/b.png\n")
    assert ev.held_out_images(lst) == (["sub/b.png"], -1)
    (models / "training.json").unlink()
    with pytest.raises(MedreconInputError, match="held-out fold"):
        ev.held_out_images(models)


def test_parse_methods():
    assert ev.parse_methods(" CSGM, iagan-bp ,csgm") == ["csgm", "iagan-bp"]
    # back-projection is offered after any method, baselines included (the fair comparison)
    assert ev.parse_methods("lanczos-bp,bicubic") == ["lanczos-bp", "bicubic"]
    with pytest.raises(MedreconInputError, match="valid methods are.*append '-bp' to any"):
        ev.parse_methods("magic-bp")
    with pytest.raises(MedreconInputError, match="no method"):
        ev.parse_methods(" , ")


def test_summary_statistics_and_table():
    rows = [ev.EvalRow("a", "m", 20.0, 0.5, None, 1.0, "cpu"),
            ev.EvalRow("b", "m", 24.0, 0.7, None, 3.0, "cpu"),
            ev.EvalRow("a", "n", 30.0, 0.9, 0.1, 0.5, "cpu")]
    s = ev.summarize(rows)
    assert s["m"]["n"] == 2 and s["m"]["psnr"][0] == pytest.approx(22.0)
    assert s["m"]["psnr"][1] == pytest.approx(np.std([20.0, 24.0], ddof=1))
    assert s["m"]["lpips"] is None and s["n"]["lpips"] == (0.1, 0.0)
    table = ev.summary_table(rows)
    assert "| m | 2 | 22.00 +- 2.83 | 0.6000 +- 0.1414 | - |" in table


def test_render_grid_shape_and_errors():
    cols = {"ground truth": [torch.zeros(1, R, R), torch.ones(1, R, R)],
            "x": [torch.full((1, R, R), 0.5)] * 2}
    a = ev.render_grid(cols, label_height=10, pad=2)
    assert a.dtype == np.uint8 and a.shape == (10 + 2 * (R + 2) + 2, 2 * (R + 2) + 2)
    assert a[10 + 2 + R + 2 + 5, 2 + 5] == 255  # second row, first column: white image
    with pytest.raises(MedreconInputError):
        ev.render_grid({"a": [torch.zeros(1, R, R)], "b": []})


def test_bad_arguments_raise_input_errors(prior, images):
    with pytest.raises(MedreconInputError, match="unknown task"):
        ev.evaluate(prior=prior, task="xray", methods="csgm", images=images)
    with pytest.raises(MedreconInputError, match="batch_size"):
        ev.evaluate(prior=prior, task="sr", methods="csgm", images=images, batch_size=0)
    with pytest.raises(MedreconInputError, match="noise_sigma"):
        ev.evaluate(prior=prior, task="sr", methods="csgm", images=images, noise_sigma=-1)
    with pytest.raises(MedreconInputError, match="not among the evaluated methods"):
        ev.evaluate(prior=prior, task="sr", methods="csgm", images=images,
                    method_options={"iagan": {"steps": 1}})


# ---------------------------------------------------------------------------------------------
# Benchmark script
# ---------------------------------------------------------------------------------------------
def _bench_module():
    return load_script("bench/bench_solvers.py", register=True)


def test_bench_writes_json_and_markdown(prior_path, tmp_path):
    bench = _bench_module()
    rc = bench.main(["--prior", str(prior_path), "--batch-sizes", "1,2", "--repeats", "1",
                     "--methods", "bicubic,csgm,iagan", "--steps", "2", "--devices", "cpu",
                     "--task", "sr", "--scale", "2", "--machine", "unit test",
                     "--out", str(tmp_path)])
    assert rc == 0
    report = json.loads((tmp_path / "unit-test.json").read_text())
    dev = report["priors"][0]["devices"][0]
    assert [g["batch"] for g in dev["generator"]] == [1, 2]
    for g in dev["generator"]:
        assert g["forward"]["s_per_image"] > 0 and g["forward_backward"]["s_per_image"] > 0
        assert g["forward"]["peak_mem_bytes"] > 0
    by = {r["method"]: r for r in dev["solvers"]}
    assert by["bicubic"]["extrapolated"] is False and "error" not in by["bicubic"]
    assert by["csgm"]["extrapolated"] is True
    csgm = by["csgm"]
    assert csgm["run_steps"] == {"steps": 2} and csgm["default_steps"]["steps"] > 2
    assert csgm["seconds_per_iteration"] >= 0 and csgm["seconds_fixed"] >= 0
    assert csgm["seconds_per_slice"] >= csgm["seconds_measured"] > 0
    # the SR default of IAGAN averages 4 runs: recorded and shown with the iterations
    from medrecon.solvers import DEFAULTS

    assert by["iagan"]["ensemble"] == DEFAULTS["sr"]["iagan"]["ensemble"] > 1
    assert csgm["ensemble"] == 1
    md = (tmp_path / "unit-test.md").read_text()
    assert "(extrapolated" in md and "fwd+bwd" in md and report["machine"]["torch"] in md
    assert f"x {by['iagan']['ensemble']} runs (ensemble)" in md


def test_bench_times_a_volume_in_solver_batches(prior_path, tmp_path):
    bench = _bench_module()
    assert bench.main(["--prior", str(prior_path), "--batch-sizes", "1", "--repeats", "1",
                       "--methods", "tv,csgm-bp", "--steps", "2", "--devices", "cpu",
                       "--task", "sr", "--scale", "2", "--slices", "3", "--solver-batch", "2",
                       "--machine", "vol", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "vol.json").read_text())
    rows = {r["method"]: r for r in report["priors"][0]["devices"][0]["solvers"]}
    for r in rows.values():
        assert "error" not in r, r
        assert r["slices"] == 3 and r["solver_batch"] == 2
        assert r["seconds_per_volume"] == pytest.approx(3 * r["seconds_per_slice"])
    md = (tmp_path / "vol.md").read_text()
    assert "a volume of 3 slices, 2 per solver call" in md and "Seconds per volume" in md
    with pytest.raises(ValueError, match="slices"):
        bench.bench_solvers(None, torch.device("cpu"), ["tv"], task="sr", task_options={},
                            steps=None, slices=0)


# ---------------------------------------------------------------------------------------------
# scripts/tune_defaults.py: defaults are chosen on validation images the report never sees
# ---------------------------------------------------------------------------------------------
def _tune_module():
    return load_script("scripts/tune_defaults.py")


def test_tuning_validation_split_is_disjoint_from_the_report_images():
    tune = _tune_module()
    ids = [f"c/{i:03d}.png" for i in range(50)]
    test, val = tune.validation_split(ids, test_limit=8, n=6)
    # the report's images are exactly what `medrecon eval --limit 8` picks
    assert test == [sorted(ids)[(i * 50) // 8] for i in range(8)]
    assert len(val) == 6 == len(set(val)) and not set(val) & set(test)
    with pytest.raises(SystemExit, match="more than"):
        tune.validation_split(ids[:9], test_limit=8, n=2)


def test_tuning_script_runs_a_grid(prior_path, tmp_path, offline_lpips):
    tune = _tune_module()
    data = tmp_path / "data"
    data.mkdir()
    yy, xx = np.mgrid[0:R, 0:R]
    for i in range(5):
        a = (127 + 90 * np.sin(xx / (2.0 + i)) * np.cos(yy / 3.0)).astype(np.uint8)
        Image.fromarray(a, mode="L").save(data / f"{i}.png")
    held = tmp_path / "held.txt"
    held.write_text("# header\n" + "".join(f"{i}.png\n" for i in range(5)))
    out = tmp_path / "tune"
    assert tune.main(["--prior", str(prior_path), "--task", "sr", "--data", str(data),
                      "--held-out", str(held), "--method", "csgm-bp", "--baselines", "bicubic",
                      "--grid", "steps=1,2", "--grid", "restarts=1", "--task-option", "scale=2",
                      "--n", "2", "--test-limit", "2", "--out", str(out)]) == 0
    _, rows = _read_csv(out / "tuning.csv")
    assert [(r["method"], r["options"]) for r in rows] == [
        ("bicubic", "-"), ("csgm-bp", "steps=1, restarts=1"), ("csgm-bp", "steps=2, restarts=1")]
    assert all(r["n"] == "2" and math.isfinite(float(r["psnr"])) for r in rows)
    val = [ln for ln in (out / "validation.txt").read_text().splitlines() if not ln.startswith("#")]
    assert val and not {"0.png", "2.png"} & set(val)  # the 2 report images are left out
    assert "| csgm-bp | steps=2, restarts=1 |" in (out / "tuning.md").read_text()


def test_confirmation_set_avoids_report_and_validation_images(tmp_path):
    """scripts/confirm_set.py lists held-out images that neither the report nor any tuning
    validation set uses, and writes them as an image record ``medrecon eval --folds`` reads."""
    tune = _tune_module()
    mod = load_script("scripts/confirm_set.py")
    ids = [f"c/{i:03d}.png" for i in range(100)]
    got = mod.confirmation_set(ids, n=20, test_limit=8, validation_sizes=[6, 16])
    test, _ = tune.validation_split(ids, test_limit=8, n=0)
    used = set(test)
    for k in (6, 16):
        used |= set(tune.validation_split(ids, test_limit=8, n=k)[1])
    assert len(got) == 20 == len(set(got)) and not set(got) & used
    with pytest.raises(SystemExit, match="more than"):
        mod.confirmation_set(ids, n=80, test_limit=8, validation_sizes=[6, 16])
    held = tmp_path / "held.txt"
    held.write_text("# header\n" + "".join(f"{i}\n" for i in ids))
    out = tmp_path / "confirm" / "images.txt"
    assert mod.main(["--held-out", str(held), "--n", "20", "--out", str(out)]) == 0
    listed = [ln for ln in out.read_text().splitlines() if not ln.startswith("#")]
    assert listed == got
    assert mod.main(["--held-out", str(held), "--n", "20", "--out", str(out)]) == 0  # its own
    # never over its input list, nor a file it did not write (it replaced both)
    before = held.read_text()
    with pytest.raises(SystemExit):
        mod.main(["--held-out", str(held), "--n", "20", "--out", str(held)])
    mine = tmp_path / "mine.txt"
    mine.write_text("notes\n")
    with pytest.raises(SystemExit):
        mod.main(["--held-out", str(held), "--n", "20", "--out", str(mine)])
    assert held.read_text() == before and mine.read_text() == "notes\n"


def test_paired_difference_script(tmp_path, capsys):
    mod = load_script("scripts/paired_diff.py")
    csv_path = tmp_path / "results.csv"
    lines = ["image,method,psnr,ssim,lpips,seconds,device"]
    for i, (a, b) in enumerate([(30.0, 29.0), (28.0, 28.5), (31.0, 29.5)]):
        lines += [f"im{i},base,{b},0.80,,0,cpu", f"im{i},gen,{a},{0.80 + 0.01 * i},,1,cpu"]
    csv_path.write_text("\n".join(lines) + "\n")
    out = mod.paired(csv_path, "gen", "base")
    mean, se, wins, n = out["psnr"]
    assert (n, wins) == (3, 2) and mean == pytest.approx(2.0 / 3)
    assert se == pytest.approx(np.std([1.0, -0.5, 1.5], ddof=1) / np.sqrt(3))
    assert out["ssim"][0] == pytest.approx(0.01) and out["ssim"][2] == 2
    assert mod.main([str(csv_path), "gen", "base"]) == 0
    assert "higher on 2/3 images" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no method 'tv'"):
        mod.paired(csv_path, "tv", "base")
    # the same method in two reports of the same images (an ablation)
    other = tmp_path / "ablation.csv"
    other.write_text("image,method,psnr,ssim,lpips,seconds,device\n"
                     + "".join(f"im{i},gen,{a - 1.0},0.70,,1,cpu\n"
                               for i, a in enumerate([30.0, 28.0, 31.0])))
    out = mod.paired(csv_path, "gen", "gen", against=other)
    assert out["psnr"][:3] == (pytest.approx(1.0), pytest.approx(0.0), 3)
    assert mod.main([str(csv_path), "gen", "gen", "--against", str(other)]) == 0


def test_std_error_spearman_helper():
    g = torch.Generator().manual_seed(0)
    err = torch.randn(1, 8, 8, generator=g)
    assert ev.std_error_spearman(err.abs() * 3 + 1, err) == pytest.approx(1.0)
    assert ev.std_error_spearman(-err.abs(), err) == pytest.approx(-1.0)
    assert ev.std_error_spearman(torch.ones(1, 8, 8), err) is None  # a flat map ranks nothing
    with pytest.raises(MedreconInputError, match="shape"):
        ev.std_error_spearman(torch.ones(1, 4, 4), err)


def test_eval_reports_std_error_spearman_for_methods_with_a_std_map(tmp_path, monkeypatch):
    """Variational BRGM (posterior samples) and an IAGAN ensemble (member spread) give the
    column; a baseline leaves it empty; the CSV and the summary carry it."""
    from tests._tiny import tiny_prior

    imgs = tmp_path / "gt"
    imgs.mkdir()
    from PIL import Image

    for i in range(2):
        Image.fromarray((np.random.default_rng(i).random((16, 16)) * 255).astype(np.uint8)).save(
            imgs / f"g{i}.png")
    run = ev.evaluate_run(
        prior=tiny_prior(resolution=16), task="inpaint", methods="biharmonic,brgm_variational,iagan-bp",
        images=imgs, steps=2, lpips=False, out_dir=tmp_path / "out", grid_images=0,
        method_options={"brgm_variational": {"num_samples": 3},
                        "iagan-bp": {"ensemble": 2, "stage1_options": {"steps": 1}}},
        mask_type="center_box")
    by = {(r.image, r.method): r for r in run.rows}
    assert by[("g0.png", "biharmonic")].std_error_spearman is None
    for m in ("brgm_variational", "iagan-bp"):
        rho = by[("g0.png", m)].std_error_spearman
        assert rho is not None and -1 <= rho <= 1
    text = (tmp_path / "out" / "results.csv").read_text().splitlines()
    assert text[0].endswith("std_error_spearman")
    assert "std-error Spearman" in (tmp_path / "out" / "summary.md").read_text()
    calib = (tmp_path / "out" / "calibration.csv").read_text().splitlines()
    assert calib[0] == "method,bin,std_low,std_high,mean_std,rmv,rmse,mae,pixels"
    assert {line.split(",")[0] for line in calib[1:]} == {"brgm_variational", "iagan-bp"}
    assert set(run.calibration) == {"brgm_variational", "iagan-bp"}
    # the box's measured pixels are exact after back-projection: left out of the bins, the
    # rank correlation and the ENCE of the summary
    maps = run.std_maps["iagan-bp"]
    hole = 16 * 16 - int(maps["exact"][:256].sum())
    assert 0 < hole < 256 and int(maps["exact"].sum()) == 2 * (256 - hole)
    assert float(maps["std"][maps["exact"]].abs().max()) < 1e-5  # exact: no spread
    assert sum(b["pixels"] for b in run.calibration["iagan-bp"]) == 2 * hole
    assert sum(b["pixels"] for b in run.calibration["brgm_variational"]) == 2 * 256  # no BP
    assert maps["std_kind"] == "spread"  # the tiny prior has no calibration
    assert maps["regime"]["fraction"] == pytest.approx(1 - hole / 256)
    assert "iagan-bp: spread, ENCE" in (tmp_path / "out" / "summary.md").read_text()


def test_eval_leaves_the_calibrations_fitting_images_out_of_its_figures(tmp_path, monkeypatch):
    """A calibrated std scored on the images it was fitted on reported an in-sample ENCE as
    if held out. The fit's images (``fitted_on``) are now left out of the calibration
    figures, and the summary says how many."""
    from PIL import Image

    from medrecon import solvers
    from tests._tiny import tiny_prior

    imgs = tmp_path / "gt"
    (imgs / "a").mkdir(parents=True)
    for i in range(3):
        Image.fromarray((np.random.default_rng(i).random((16, 16)) * 255).astype(np.uint8)).save(
            imgs / "a" / f"g{i}.png")
    real = solvers.solve

    def solve(*args, **kwargs):  # as if the prior's calibration, fitted on a/g1.png, applied
        rec = real(*args, **kwargs)
        rec.info["std_kind"] = "calibrated std"
        rec.info["std_calibration"] = {"fitted_on": ["a/g1.png"]}
        return rec

    monkeypatch.setattr(solvers, "solve", solve)
    kw = dict(prior=tiny_prior(resolution=16), task="inpaint", methods="iagan-bp", steps=2,
              lpips=False, grid_images=0, batch_size=1, mask_type="center_box",
              method_options={"iagan-bp": {"ensemble": 2, "stage1_options": {"steps": 1}}})
    run = ev.evaluate_run(images=imgs, out_dir=tmp_path / "out", **kw)
    maps = run.std_maps["iagan-bp"]
    assert maps["left_out"] == 1 and maps["std"].numel() == 2 * 256  # two of three images
    assert sum(b["pixels"] for b in run.calibration["iagan-bp"]) == int((~maps["exact"]).sum())
    assert "(1 image(s) its calibration was fitted on left out)" in (
        tmp_path / "out" / "summary.md").read_text()
    assert len(run.rows) == 3  # PSNR / SSIM: every image
    only = ev.evaluate_run(images=imgs / "a" / "g1.png", **kw)
    assert only.std_maps["iagan-bp"]["std"] is None and "iagan-bp" not in only.calibration
    assert "not scored (its calibration was fitted on all 1" in ev._std_map_text(only.std_maps)
    # another class's image of the same file name is not the fit's (it was left out too)
    (imgs / "b").mkdir()
    (imgs / "a" / "g1.png").rename(imgs / "b" / "g1.png")
    for images in (imgs, imgs / "b", imgs / "b" / "g1.png"):
        other = ev.evaluate_run(images=images, **kw)
        assert other.std_maps["iagan-bp"]["left_out"] == 0, images


def test_calibration_bins():
    g = torch.Generator().manual_seed(0)
    std = torch.rand(4, 32, 32, generator=g) + 0.1
    err = torch.randn(4, 32, 32, generator=g) * std  # calibrated: error ~ N(0, std^2)
    bins = ev.calibration_bins(std, err, bins=5)
    assert len(bins) == 5 and sum(b["pixels"] for b in bins) == std.numel()
    means = [b["mean_std"] for b in bins]
    assert means == sorted(means)
    for b in bins:
        assert b["std_low"] <= b["mean_std"] <= b["std_high"]
        assert b["rmse"] == pytest.approx(b["mean_std"], rel=0.15)  # calibrated std
    flat = ev.calibration_bins(torch.ones(100), torch.randn(100, generator=g), bins=4)
    assert [b["pixels"] for b in flat] == [25, 25, 25, 25]
    with pytest.raises(MedreconInputError, match="shape"):
        ev.calibration_bins(torch.ones(3), torch.ones(4))


def test_seam_tuning_script_options_and_report(tmp_path):
    """scripts/tune_inpaint_seam.py: mask specs parse into build_operator options, and the
    report tabulates every variant of every mask from runs.jsonl."""
    mod = load_script("scripts/tune_inpaint_seam.py")
    assert mod.mask_options("center_box:0.25") == {"mask_type": "center_box", "box_fraction": 0.25}
    assert mod.mask_options("free_form") == {"mask_type": "free_form"}
    rows = [{"mask": m, "images": ["a.png", "b.png"], "mean": {"paste": [30.0 + k, 0.9],
                                                               "seam=4": [31.0 + k, 0.95]}}
            for k, m in enumerate(("half", "free_form"))]
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = mod.report(tmp_path)
    assert "| variant | half | free_form |" in text and "2 validation images" in text
    assert "| seam=4 | 31.00 / 0.9500 | 32.00 / 0.9500 |" in text


def test_operator_options_eval_sets_itself_are_refused(tmp_path):
    """--option img_size=... (or channels, seed, noise_sigma) reached build_operator twice and
    ended in a TypeError (exit 1): now one clear error."""
    from PIL import Image

    from tests._tiny import tiny_prior

    imgs = tmp_path / "gt"
    imgs.mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(imgs / "g0.png")
    with pytest.raises(MedreconInputError, match="needs the fold record"):
        ev.evaluate_run(prior=tiny_prior(resolution=16), task="sr", methods="bicubic",
                        images=imgs, lpips=False, fold=1)  # was ignored: every image scored
    ran = []
    real = ev._score_method
    ev._score_method = lambda m, **kw: ran.append(m) or real(m, **kw)
    try:  # checked before any method runs (bicubic ran first, then brgm failed)
        with pytest.raises(MedreconInputError, match=r"unknown option\(s\) \['bogus'\]"):
            ev.evaluate_run(prior=tiny_prior(resolution=16), task="sr", methods="bicubic,brgm",
                            images=imgs, lpips=False, method_options={"brgm": {"bogus": 1}})
    finally:
        ev._score_method = real
    assert ran == []
    with pytest.raises(MedreconInputError, match="--folds 'nope.json' is neither"):
        ev.evaluate_run(prior=tiny_prior(resolution=16), task="sr", methods="bicubic",
                        images=imgs, lpips=False, folds="nope.json")  # said "Prior file"
    for key in ("img_size", "channels"):
        with pytest.raises(MedreconInputError, match="set by eval itself"):
            ev.evaluate_run(prior=tiny_prior(resolution=16), task="sr", methods="bicubic",
                            images=imgs, lpips=False, **{key: 1})
    from click.testing import CliRunner

    from medrecon.cli import cli

    for key in ev.EVAL_OWNED_OPTIONS:
        res = CliRunner().invoke(cli, ["eval", "--prior", "chest_xray", "--task", "sr",
                                       "--methods", "bicubic", "--images", str(imgs),
                                       "--no-lpips", "--out", str(tmp_path / "o"),
                                       "--option", f"{key}=1"])
        assert res.exit_code == 2 and "set by eval itself" in res.output, res.output


def test_eval_review_round_two(prior, tmp_path):
    """--option scale=8 silently replaced --scale 4; an input error was a four-line usage
    message; a constant ground truth scored PSNR inf (and made a method's mean inf)."""
    from click.testing import CliRunner
    from PIL import Image

    from medrecon.cli import cli
    from medrecon.priors import save_prior

    imgs = tmp_path / "gt"
    imgs.mkdir()
    Image.fromarray((np.random.default_rng(0).random((16, 16)) * 255).astype(np.uint8)).save(
        imgs / "g0.png")
    save_prior(prior, tmp_path / "p")
    base = ["eval", "--prior", str(tmp_path / "p"), "--task", "sr", "--methods", "bicubic",
            "--images", str(imgs), "--no-lpips", "--out", str(tmp_path / "o")]
    res = CliRunner().invoke(cli, [*base, "--scale", "4", "--option", "scale=8"])
    assert res.exit_code == 2 and "has its own option (--scale)" in res.output
    res = CliRunner().invoke(cli, [*base[:-1], str(imgs / "r")])  # --out inside --images
    assert res.exit_code == 2 and "Usage:" not in res.output and "--images" in res.output
    for shape in ((16, 16), (24, 24), (40, 40), (13, 13), (16, 24)):  # resized or padded to
        Image.fromarray(np.full(shape, 7, np.uint8)).save(imgs / "flat.png")  # the prior's grid
        with pytest.raises(MedreconInputError, match="flat.png' is one constant value"):
            ev.evaluate_run(prior=prior, task="sr", methods="bicubic", images=imgs, lpips=False)


def test_eval_never_scores_its_own_report_as_a_ground_truth(prior, tmp_path):
    """--out above --images was taken (the report lay over the ground truths), and an
    evaluation of the folder above then scored grid.png and an older report's grid as ground
    truths. Now --out may not hold --images, and a report folder's images are skipped."""
    from click.testing import CliRunner
    from PIL import Image

    from medrecon.cli import cli
    from medrecon.priors import save_prior

    ev_dir = tmp_path / "ev"
    imgs = ev_dir / "imgs"
    imgs.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray((rng.random((16, 16)) * 255).astype(np.uint8)).save(imgs / f"g{i}.png")
    save_prior(prior, tmp_path / "p")
    base = ["eval", "--prior", str(tmp_path / "p"), "--task", "sr", "--methods", "bicubic",
            "--no-lpips", "--scale", "2"]
    res = CliRunner().invoke(cli, [*base, "--images", str(imgs), "--out", str(ev_dir)])
    assert res.exit_code == 2 and "holds the --images folder" in res.output, res.output
    assert sorted(p.name for p in ev_dir.iterdir()) == ["imgs"]
    res = CliRunner().invoke(cli, [*base, "--images", str(imgs), "--out", str(ev_dir / "report")])
    assert res.exit_code == 0, res.output
    assert (ev_dir / "report" / "grid.png").is_file()
    found = [i for i, _ in ev.discover_images(ev_dir)]
    assert found == ["imgs/g0.png", "imgs/g1.png"]
    (ev_dir / "report" / "notes").mkdir()  # below a report too
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(ev_dir / "report" / "notes" / "x.png")
    assert [i for i, _ in ev.discover_images(ev_dir)] == found


def test_eval_refuses_bad_lists_and_option_values_before_any_method(prior, tmp_path):
    """A binary file as --images gave a UnicodeDecodeError (exit 1); csgm.steps=0 was found
    only when csgm started, after the methods before it had run on every image; TIFF ground
    truths (which train folds lists) were not images to eval."""
    from PIL import Image

    (tmp_path / "scan.npy").write_bytes(b"\x93NUMPY\x01\x00\xff\xfe" * 8)
    with pytest.raises(MedreconInputError, match="neither an image folder nor a text list"):
        ev.evaluate_run(prior=prior, task="sr", methods="bicubic", images=tmp_path / "scan.npy",
                        lpips=False)
    with pytest.raises(MedreconInputError, match=r"csgm: steps=0; expected an integer from 1 to"):
        ev.evaluate_run(prior=prior, task="sr", methods="bicubic,csgm", images=tmp_path,
                        lpips=False, method_options={"csgm": {"steps": 0}})
    with pytest.raises(MedreconInputError, match="lr=-1"):
        ev.evaluate_run(prior=prior, task="sr", methods="csgm", images=tmp_path, lpips=False,
                        method_options={"csgm": {"lr": -1}})
    tif = tmp_path / "tifs"
    tif.mkdir()
    Image.fromarray((np.arange(256).reshape(16, 16) % 255).astype(np.uint8)).save(tif / "a.tif")
    assert [i for i, _ in ev.discover_images(tif)] == ["a.tif"]


def test_eval_refuses_a_fold_the_prior_was_trained_on():
    """--fold 1 on a prior that held out fold 0, or another prior's fold record, scored the
    prior on its own training images with exit 0."""
    from types import SimpleNamespace

    p = SimpleNamespace(name="p", metadata={"training": {"held_out_fold": 0,
                                                         "folds_sha256": "a" * 64}})
    ev.check_fold_is_held_out(p, 0, "a" * 64)
    ev.check_fold_is_held_out(p, -1, None)  # a plain list names no fold
    with pytest.raises(MedreconInputError, match="fold 1 holds its training images"):
        ev.check_fold_is_held_out(p, 1, "a" * 64)
    with pytest.raises(MedreconInputError, match="not the one prior 'p' was trained with"):
        ev.check_fold_is_held_out(p, 0, "b" * 64)
    ev.check_fold_is_held_out(SimpleNamespace(name="nv", metadata={}), 3, "c" * 64)  # no record
    ids, fold, digest = ev._fold_record("brain_mri")  # the shipped prior and its own record
    from medrecon.priors import load_prior

    brain = load_prior("brain_mri")
    ev.check_fold_is_held_out(brain, fold, digest)
    with pytest.raises(MedreconInputError, match="trained on every fold but 0"):
        ev.check_fold_is_held_out(brain, 2, digest)


def test_eval_refuses_training_images_whatever_folds_names(prior, tmp_path):
    """A .txt list given to --folds (or no --folds at all) was never checked against the
    prior's own fold record: training images were scored and labelled as held out. Each
    ground truth is now looked up in the prior's record by the tail of its path."""
    from medrecon.priors import save_prior
    from medrecon.training.folds import FoldAssignment, save_folds

    data = tmp_path / "data"
    for rel in ("a/1.png", "a/2.png", "b/1.png", "b/2.png"):
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((np.random.default_rng(len(rel)).random((16, 16)) * 255)
                        .astype(np.uint8)).save(data / rel)
    fa = FoldAssignment(files=("a/1.png", "a/2.png", "b/1.png", "b/2.png"), folds=(0, 1, 0, 1),
                        groups=("a1", "a2", "b1", "b2"), k=2, scheme="image")
    prior.metadata = {**(prior.metadata or {}),
                      "training": {"held_out_fold": 0, "folds_sha256": fa.digest()}}
    save_prior(prior, tmp_path / "p")
    save_folds(fa, tmp_path / "p" / "models" / "folds.json")
    from medrecon.priors import load_prior

    loaded = load_prior(tmp_path / "p")
    assert loaded.metadata["training"]["held_out_fold"] == 0
    (tmp_path / "train.txt").write_text("a/2.png\nb/2.png\n")
    kw = dict(prior=tmp_path / "p", task="sr", methods="bicubic", lpips=False,
              scale=2)
    with pytest.raises(MedreconInputError, match=r"2 of the 2 selected images \(a/2.png, "
                       "b/2.png\) are training images of prior"):
        ev.evaluate_run(images=data, folds=tmp_path / "train.txt", fold=0, **kw)
    # no --folds: a folder scored whole may be another dataset with the same file names (the
    # record holds paths, not pixels): scored, with a warning and a note in the report
    with pytest.warns(MedreconWarning, match="2 of the 4 images .* have the paths of training"):
        whole = ev.evaluate_run(images=data, **kw)
    assert len(whole.rows) == 4
    assert "have the paths of training images" in whole.settings["selection"]
    with pytest.warns(MedreconWarning, match="1 of the 1 images"):  # one file
        ev.evaluate_run(images=data / "b" / "2.png", **kw)
    (tmp_path / "held.txt").write_text("a/1.png\nb/1.png\n")
    run = ev.evaluate_run(images=data, folds=tmp_path / "held.txt", **kw)
    assert sorted(r.image for r in run.rows) == ["a/1.png", "b/1.png"]
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16).T.copy()).save(other / "x.png")
    Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).save(other / "2.png")
    assert len(ev.evaluate_run(images=other, **kw).rows) == 2  # not in the record: scored


def test_a_non_square_ground_truth_is_scored_without_its_padding(prior, tmp_path):
    """A 2:1 ground truth is padded to the prior's square grid with -1; the padding, which
    every method reproduces, was scored and lifted PSNR by ~2 dB. Only the content counts."""
    from medrecon import metrics

    R = int(prior.resolution)
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((R, 3 * R // 4)) * 255).astype(np.uint8)).save(
        tmp_path / "tall.png")
    run = ev.evaluate_run(prior=prior, task="sr", methods="bicubic", images=tmp_path / "tall.png",
                          lpips=False, scale=2)
    x, box = ev._ground_truth_on_grid(tmp_path / "tall.png", resolution=R, channels=1)
    assert box == (0, R // 8, R, 3 * R // 4)
    out, gt = run.grid["bicubic"][0][None], run.grid["ground truth"][0][None]
    content = float(metrics.psnr(ev._crop(out, box), ev._crop(gt, box), data_range=1.0))
    whole = float(metrics.psnr(out, gt, data_range=1.0))
    assert run.rows[0].psnr == pytest.approx(content, abs=1e-4)
    assert whole > content + 1.0  # what was reported before
    assert run.rows[0].ssim == pytest.approx(float(metrics.ssim(
        ev._crop(out, box), ev._crop(gt, box), data_range=1.0)), abs=1e-5)
    # content thinner than SSIM's window: refused before any method runs
    Image.fromarray((rng.random((R, R // 2)) * 255).astype(np.uint8)).save(tmp_path / "thin.png")
    with pytest.raises(MedreconInputError, match=f"covers {R} x {R // 2} pixels .* less than "
                       "the 11 x 11 window"):
        ev.evaluate_run(prior=prior, task="sr", methods="bicubic", lpips=False, scale=2,
                        images=tmp_path / "thin.png")


def test_a_listed_ground_truth_that_does_not_exist_is_named(prior, tmp_path):
    """A list naming a missing file reported the --out rule (beside the ground truths) instead
    of the missing file."""
    (tmp_path / "list.txt").write_text("nonexist.png\n")
    with pytest.raises(MedreconInputError) as info:
        ev.evaluate_run(prior=prior, task="sr", methods="bicubic", images=tmp_path / "list.txt",
                        lpips=False, out_dir=tmp_path / "rep")
    assert "nonexist.png" in str(info.value) and "--out" not in str(info.value)


def test_calibrate_script_writes_all_or_nothing_and_never_a_foreign_file(prior, tmp_path, capsys):
    """scripts/calibrate_std.py replaced any fit.json / validation.txt in --out, and a bad
    option ended in a traceback (exit 1) after validation.txt was written. Now: existing files
    only with --overwrite and only its own, input errors one line with exit 2, and its files
    all or none."""
    from medrecon.priors import save_prior

    mod = load_script("scripts/calibrate_std.py")
    save_prior(prior, tmp_path / "p")
    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        Image.fromarray((np.random.default_rng(i).random((16, 16)) * 255).astype(np.uint8)
                        ).save(data / f"g{i}.png")
    (tmp_path / "held.txt").write_text("".join(f"g{i}.png\n" for i in range(4)))
    out = tmp_path / "cal"
    base = ["--prior", str(tmp_path / "p"), "--task", "sr", "--data", str(data), "--held-out",
            str(tmp_path / "held.txt"), "--regime", "r", "--n", "2", "--test-limit", "2",
            "--out", str(out)]
    assert mod.main([*base, "--task-option", "scale=3"]) == 2  # 16 px is not divisible by 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0]
    assert not out.exists()
    out.mkdir()
    (out / "fit.json").write_text("mine\n")
    for extra in ([], ["--overwrite"]):
        assert mod.main([*base, "--task-option", "scale=2", *extra]) == 2
        assert (out / "fit.json").read_text() == "mine\n"
        assert sorted(p.name for p in out.iterdir()) == ["fit.json"]
    assert "--overwrite" in capsys.readouterr().err
    mod.check_out(tmp_path / "nothing-there", overwrite=False)
    (out / "fit.json").write_text('{\n  "ence_after": 0.1\n}\n')  # its own
    mod.check_out(out, overwrite=True)
    (out / "fit.json").unlink()
    assert mod.main([*base, "--task-option", "scale=2"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["calibration.md", "fit.json", "validation.txt"]
    assert json.loads((out / "fit.json").read_text())["images"] == 2
    assert mod.main([*base, "--task-option", "scale=2"]) == 2  # a second run: --overwrite
    assert mod.main([*base, "--task-option", "scale=2", "--overwrite"]) == 0


def test_one_small_image_leaves_only_its_own_lpips_empty(tmp_path, monkeypatch):
    """LPIPS needs 31 x 31 pixels; once content was scored without its padding, one narrow
    ground truth turned LPIPS off for every image of the run. Only its own row is empty now;
    missing weights still empty the whole column."""
    import torchvision

    from tests._tiny import tiny_prior

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        features = torchvision.models.alexnet(weights=None).features
    hub = tmp_path / "hub"
    hub.mkdir()
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()},
               hub / "alexnet-owt-7be5be79.pth")
    monkeypatch.setenv("MEDRECON_WEIGHTS_DIR", str(hub))
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((64, 32)) * 255).astype(np.uint8)).save(imgs / "0narrow.png")
    for name in ("a.png", "b.png"):
        Image.fromarray((rng.random((32, 32)) * 255).astype(np.uint8)).save(imgs / name)
    run = ev.evaluate_run(prior=tiny_prior(resolution=32), task="sr", methods="bicubic",
                          images=imgs, scale=2, lpips=True)
    lp = {r.image: r.lpips for r in run.rows}
    assert lp["0narrow.png"] is None and lp["a.png"] is not None and lp["b.png"] is not None
    assert run.lpips_note.startswith("LPIPS left empty for 1 row(s)")


def test_exact_results_read_inf_in_the_summary_without_a_numpy_warning(prior, tmp_path):
    """Exact results (denoising without noise) gave 'inf +- nan' in summary.md and a stray
    'invalid value encountered in subtract' on stderr."""
    import warnings

    from PIL import Image

    imgs = tmp_path / "gt"
    imgs.mkdir()
    for i in range(2):
        Image.fromarray((np.random.default_rng(i).random((16, 16)) * 255).astype(np.uint8)).save(
            imgs / f"g{i}.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        run = ev.evaluate_run(prior=prior, task="denoise", methods="pseudo_inverse",
                              images=imgs, lpips=False, out_dir=tmp_path / "out")
    assert all(math.isinf(r.psnr) for r in run.rows)
    text = (tmp_path / "out" / "summary.md").read_text()
    assert "| pseudo_inverse | 2 | inf | 1.0000 +- 0.0000 |" in text and "nan" not in text


def test_a_colour_ground_truth_is_said_to_be_scored_as_grey(prior, tmp_path):
    """An RGB ground truth was scored as grey without a word (every other command warns);
    an RGB file holding grey values is no colour image and says nothing."""
    import warnings

    from PIL import Image

    from medrecon.errors import MedreconWarning

    imgs = tmp_path / "gt"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).save(imgs / "c.png")
    grey = (rng.random((16, 16)) * 255).astype(np.uint8)
    Image.fromarray(np.stack([grey] * 3, -1)).save(imgs / "g.png")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        ev.evaluate_run(prior=prior, task="sr", methods="bicubic", images=imgs, lpips=False)
    said = [str(w.message) for w in seen if issubclass(w.category, MedreconWarning)]
    assert [m for m in said if "colour" in m] == [
        "c.png is a colour image; it is scored as grey (ITU-R 601 luminance), as the grey "
        "prior sees it."]
