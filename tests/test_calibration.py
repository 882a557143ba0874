"""Std-map calibration: the fit, the calibration error, matching a call, and solve()."""

from __future__ import annotations

import json
import math

import pytest
import torch

from medrecon.physics import Inpainting, SuperResolution
from medrecon.solvers import solve
from medrecon.solvers.calibration import (
    FRACTION_TOLERANCE,
    StdCalibration,
    apply_calibration,
    ence,
    exact_pixels,
    find_calibration,
    fit_std_calibration,
    operator_kind,
    regime_fraction,
)
from tests._scripts import load_script
from tests._tiny import tiny_prior

R = 16


def _synthetic(floor: float, scale: float, power: float = 1.0, n: int = 200_000, seed: int = 0):
    """Spreads and errors drawn with E[err^2 | s] = floor + scale * (s^2)^power."""
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(n, generator=g) * 0.2 + 1e-3
    err = torch.randn(n, generator=g) * (floor + scale * (s * s) ** power).sqrt()
    return s, err


def test_fit_recovers_floor_scale_and_power():
    s, err = _synthetic(1e-3, 6.0)
    floor, scale, power = fit_std_calibration(s, err)
    assert floor == pytest.approx(1e-3, rel=0.2)
    assert scale == pytest.approx(6.0, rel=0.2) and power == pytest.approx(1.0, abs=0.05)
    f2, s2, p2 = fit_std_calibration(*_synthetic(1e-3, 0.5, 0.5))
    assert f2 == pytest.approx(1e-3, rel=0.5) and s2 == pytest.approx(0.5, rel=0.2)
    assert p2 == pytest.approx(0.5, abs=0.05)
    # a flat error: the spread says nothing, the floor carries it
    f3, s3, p3 = fit_std_calibration(*_synthetic(4e-3, 0.0))
    assert f3 == pytest.approx(4e-3, rel=0.1)
    assert s3 * 0.04 ** p3 < 4e-4  # the spread's term stays under a tenth of the floor
    # exact pixels (zero spread and error) are left out, not fitted
    s4, e4 = _synthetic(1e-3, 6.0)
    s4, e4 = torch.cat([s4, torch.zeros(50_000)]), torch.cat([e4, torch.zeros(50_000)])
    ex = torch.arange(s4.numel()) >= 200_000
    f4, sc4, _ = fit_std_calibration(s4, e4, exact=ex)
    assert f4 == pytest.approx(1e-3, rel=0.2) and sc4 == pytest.approx(6.0, rel=0.2)


def test_ence_is_small_when_calibrated_and_large_for_the_raw_spread():
    s, err = _synthetic(1e-3, 6.0)
    c = StdCalibration(method="iagan", task="sr", fraction=1 / 16, floor=1e-3, scale=6.0)
    assert ence(apply_calibration(s, c), err) < 0.05
    assert ence(s, err) > 1.0  # the spread is 2.5x+ too small everywhere
    s2, e2 = _synthetic(1e-3, 0.5, 0.5)
    c2 = StdCalibration(method="iagan", task="sr", fraction=1 / 16,
                        **dict(zip(("floor", "scale", "power"), fit_std_calibration(s2, e2))))
    assert ence(apply_calibration(s2, c2), e2) < 0.05
    with pytest.raises(Exception, match="shape"):
        ence(s[:10], err[:11])


def test_apply_is_monotone_and_keeps_exact_pixels_at_zero():
    g = torch.Generator().manual_seed(1)
    s = torch.rand(2, 1, R, R, generator=g)
    op = Inpainting(torch.rand(R, R, generator=g) > 0.5)
    exact = exact_pixels(op, s.shape)
    assert exact.shape == s.shape and exact.dtype == torch.bool
    c = StdCalibration(method="iagan", task="inpainting", fraction=0.5, floor=1e-2, scale=4.0,
                       power=0.7)
    out = apply_calibration(s, c, exact=exact)
    assert float(out[exact].abs().max()) == 0.0
    free = ~exact
    torch.testing.assert_close(out[free], (1e-2 + 4.0 * (s[free] ** 2) ** 0.7).sqrt())
    order = torch.argsort(s[free])
    assert bool((out[free][order].diff() >= 0).all())  # ranks unchanged
    assert exact_pixels(SuperResolution(2, img_size=R), s.shape) is None


def test_operator_kind_names_the_sr_kernel():
    assert operator_kind(SuperResolution(4, img_size=R)) == "SuperResolution:bicubic"
    assert operator_kind(SuperResolution(4, img_size=R, kernel="box")) == "SuperResolution:box"
    assert operator_kind(SuperResolution(2, img_size=R, kernel=torch.ones(3, 3) / 9)) == \
        "SuperResolution:other"
    assert operator_kind(Inpainting(torch.ones(R, R, dtype=torch.bool))) == "Inpainting:custom"


def test_calibration_key_holds_the_mask_family():
    """A fit on random lines was applied to Gaussian / Poisson-disc 2D sampling, and one on
    free-form strokes to random boxes, of the same measured fraction: the maps were labelled
    calibrated and were 1.1-1.9 times the error. The mask family is now part of the key; a
    given mask is 'custom' and matches no shipped fit. Random and equispaced lines are one
    family (the random-lines fit held on equispaced lines, ENCE 0.08 on held-out images)."""
    from medrecon.physics import build_operator
    from medrecon.priors import load_prior

    kinds = {t: operator_kind(build_operator(t, img_size=(R, R), seed=0, **kw))
             for t, kw in (("mri", {"mask_type": "poisson2d"}), ("inpaint", {}))}
    assert kinds == {"mri": "MRI:poisson2d", "inpaint": "Inpainting:center_box"}
    for mt in ("random", "equispaced"):  # phase-encoding lines: one family
        assert operator_kind(build_operator("mri", img_size=(R, R), seed=0, mask_type=mt)) \
            == "MRI:lines"
    given = build_operator("inpaint", img_size=(R, R), seed=0,
                           mask=torch.ones(R, R, dtype=torch.bool))
    assert operator_kind(given) == "Inpainting:custom"
    brain = load_prior("brain_mri")
    common = dict(method="iagan", bp=True, noise_sigma=0.0,
                  options={"ensemble": 2, "steps": 500})
    assert find_calibration(brain, task="mri", fraction=0.125, operator="MRI:lines",
                            **common) is not None
    for fam in ("MRI:poisson2d", "MRI:gaussian2d", "MRI:custom"):
        assert find_calibration(brain, task="mri", fraction=0.125, operator=fam, **common) is None
    common["options"] = {"ensemble": 4, "steps": 150}
    assert find_calibration(brain, task="inpainting", fraction=0.9026,
                            operator="Inpainting:free_form", **common) is not None
    assert find_calibration(brain, task="inpainting", fraction=0.9026,
                            operator="Inpainting:random_boxes", **common) is None


def test_regime_fraction():
    y = torch.zeros(1, 1, R // 4, R // 4)
    assert regime_fraction(SuperResolution(4, img_size=R), y) == pytest.approx(1 / 16)
    m = torch.zeros(R, R, dtype=torch.bool)
    m[:, : R // 4] = True
    assert regime_fraction(Inpainting(m), torch.zeros(1, 1, R, R)) == pytest.approx(0.25)


def _prior_with(entries):
    p = tiny_prior(resolution=R)
    p.metadata["std_calibration"] = [e.as_dict() for e in entries]
    return p


def test_find_calibration_matches_only_its_regime():
    base = StdCalibration(method="iagan", task="sr", fraction=1 / 16, floor=1e-3, scale=4.0,
                          options={"ensemble": 4, "steps": 100})
    x8 = StdCalibration(method="iagan", task="sr", fraction=1 / 64, floor=2e-3, scale=5.0,
                        options={"ensemble": 4, "steps": 100})
    p = _prior_with([base, x8])
    call = dict(method="iagan", task="sr", bp=True, noise_sigma=0.0,
                options={"ensemble": 4, "steps": 100, "lr_weights": 1e-2})
    assert find_calibration(p, fraction=1 / 16, **call) == base
    assert find_calibration(p, fraction=1 / 64, **call) == x8
    assert find_calibration(p, fraction=1 / 16 * FRACTION_TOLERANCE * 0.99, **call) == base
    assert find_calibration(p, fraction=1 / 32, **call) is None  # between: no fit applies
    assert find_calibration(p, fraction=1 / 16, operator="SuperResolution:box", **call) == base
    boxed = _prior_with([StdCalibration(**{**base.as_dict(), "operator": "SuperResolution:box"})])
    assert find_calibration(boxed, fraction=1 / 16, operator="SuperResolution:box", **call)
    assert find_calibration(boxed, fraction=1 / 16, operator="SuperResolution:bicubic",
                            **call) is None
    for change in ({"method": "brgm_variational"}, {"task": "mri"}, {"bp": False},
                   {"noise_sigma": 0.05}, {"options": {"ensemble": 2, "steps": 100}},
                   {"options": {"ensemble": 4, "steps": 30}}):
        assert find_calibration(p, fraction=1 / 16, **{**call, **change}) is None, change
    assert find_calibration(tiny_prior(resolution=R), fraction=1 / 16, **call) is None
    # an entry of another format, or a damaged one, is skipped with a warning, not an error
    p.metadata["std_calibration"].append({"method": "iagan", "unknown": 1})
    p.metadata["std_calibration"].append({**base.as_dict(), "fraction": "a lot"})
    p.metadata["std_calibration"].append({**base.as_dict(), "options": [1]})
    with pytest.warns(UserWarning, match="malformed std_calibration"):
        assert find_calibration(p, fraction=1 / 16, **call) == base
    p.metadata["std_calibration"] = [{**base.as_dict(), "scale": -1.0}]  # never a negative variance
    assert find_calibration(p, fraction=1 / 16, **call) is None


def test_solve_calibrates_the_ensemble_std_of_a_matching_regime():
    """solve() maps the back-projected spread through the prior's matching calibration and
    says which kind of map it returns; without a match the raw spread comes back."""
    g = torch.Generator().manual_seed(3)
    op = SuperResolution(4, img_size=R)
    y = op.A(torch.rand(2, 1, R, R, generator=g) * 2 - 1)
    kw = dict(method="iagan", ensemble=2, steps=3, device="cpu", seed=0, bp=True,
              stage1_options=dict(steps=2, probes=2))
    raw = solve(y, op, tiny_prior(resolution=R), **kw)
    assert raw.info["std_kind"] == "spread"
    regime = raw.info["std_regime"]
    assert regime["fraction"] == pytest.approx(1 / 16)
    assert regime["options"] == {"ensemble": 2, "steps": 3}
    assert regime["operator"] == "SuperResolution:bicubic"
    c = StdCalibration(method="iagan", task="sr", fraction=1 / 16, floor=1e-3, scale=9.0,
                       options={"ensemble": 2, "steps": 3})
    cal = solve(y, op, _prior_with([c]), **kw)
    assert cal.info["std_kind"] == "calibrated std"
    assert cal.info["std_calibration"]["scale"] == 9.0
    torch.testing.assert_close(cal.image, raw.image)
    torch.testing.assert_close(cal.std, (1e-3 + 9.0 * raw.std ** 2).sqrt())
    # other steps: the fit does not apply
    other = solve(y, op, _prior_with([c]), **{**kw, "steps": 4})
    assert other.info["std_kind"] == "spread"


def test_calibrate_script_writes_the_entry_into_prior_json(tmp_path):
    mod = load_script("scripts/calibrate_std.py")
    pj = tmp_path / "prior.json"
    pj.write_text(json.dumps({"name": "x", "metadata": {"modality": "mri"}}))
    e = StdCalibration(method="iagan", task="sr", fraction=0.0625, floor=1e-3, scale=4.0,
                       options={"ensemble": 4, "steps": 100}).as_dict()
    mod.write_prior_entry(pj, e)
    mod.write_prior_entry(pj, {**e, "fraction": 0.015625})
    mod.write_prior_entry(pj, {**e, "scale": 5.0})  # refit of the first regime replaces it
    info = json.loads(pj.read_text())
    entries = info["metadata"]["std_calibration"]
    assert info["metadata"]["modality"] == "mri" and len(entries) == 2
    assert [x["fraction"] for x in entries] == [0.0625, 0.015625]
    assert entries[0]["scale"] == 5.0
    assert not list(tmp_path.glob("*.tmp"))
    assert math.isclose(StdCalibration.from_dict(entries[1]).fraction, 1 / 64)


def test_calibrate_report_never_replaces_a_foreign_readme(tmp_path):
    """`calibrate_std.py --report DIR` replaced any DIR/README.md."""
    mod = load_script("scripts/calibrate_std.py")
    (tmp_path / "README.md").write_text("my notes\n")
    with pytest.raises(SystemExit, match="did not write it"):
        mod.report(tmp_path)
    assert (tmp_path / "README.md").read_text() == "my notes\n"
    (tmp_path / "README.md").unlink()
    text = mod.report(tmp_path)
    assert mod.report(tmp_path) == text  # its own: replaced


def test_calibration_inputs_are_checked():
    """bins=0 gave a raw RuntimeError; NaN was dropped by the fit and turned ENCE into NaN;
    an exact mask of another shape gave an IndexError."""
    import torch

    from medrecon.errors import MedreconInputError
    from medrecon.solvers import calibration as K

    g = torch.Generator().manual_seed(0)
    s, e = torch.rand(64, generator=g) + 0.1, torch.randn(64, generator=g)
    with pytest.raises(MedreconInputError, match="bins=0"):
        K.ence(s, e, bins=0)
    bad = s.clone()
    bad[3] = float("nan")
    for fn in (K.ence, K.fit_std_calibration):
        with pytest.raises(MedreconInputError, match="NaN"):
            fn(bad, e)
    with pytest.raises(MedreconInputError, match="exact mask"):
        K.binned(s, e, bins=4, exact=torch.zeros(10, dtype=torch.bool))
    assert len(K.binned(s, e, bins=4)) == 4
