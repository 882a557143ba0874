"""medrecon.steps: reconstruct is one MONAI Compose of small steps over a state dictionary."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from monai.transforms import Compose, Transform

from medrecon.errors import MedreconInputError, MedreconWarning
from medrecon.io import MedicalImage
from medrecon.pipeline import reconstruct
from medrecon.steps import (
    ChooseMethod,
    CutSlices,
    ReadVolume,
    ReconstructionSettings,
    RestoreIntensities,
    SliceMask,
    SolveSlices,
    StackSlices,
    Summarise,
    WindowIntensities,
    build_steps,
    run_steps,
)
from tests._tiny import tiny_prior

ORDER = [ReadVolume, CutSlices, ChooseMethod, SliceMask, WindowIntensities, SolveSlices,
         RestoreIntensities, StackSlices, Summarise]


@pytest.fixture(scope="module")
def prior():
    return tiny_prior(resolution=16, seed=0)


def _image(shape=(10, 12, 3), spacing=(0.7, 0.7, 3.0)) -> MedicalImage:
    arr = np.random.default_rng(1).normal(100.0, 20.0, shape).astype(np.float32)
    return MedicalImage(arr, np.diag([*spacing, 1.0]), {"format": "array"})


def test_pipeline_is_a_compose_of_the_documented_steps(prior):
    s = ReconstructionSettings.check(task="sr", prior=prior, method="bicubic", scale=2)
    pipe = build_steps(s)
    assert isinstance(pipe, Compose)
    assert [type(t) for t in pipe.transforms] == ORDER
    assert all(isinstance(t, Transform) for t in pipe.transforms)


def test_each_step_writes_its_keys(prior):
    img = _image()
    s = ReconstructionSettings.check(task="sr", prior=prior, method="bicubic", scale=2)
    d = {"image": img, "mask": None, "t0": 0.0}
    for step in build_steps(s).transforms:
        d = step(d)
        if isinstance(step, ReadVolume):
            assert tuple(d["volume"].shape) == (10, 12, 3) and d["spacing"] == (0.7, 0.7, 3.0)
        elif isinstance(step, CutSlices):  # the acquired (thick) axis is the slice axis
            assert d["orient"].axis == 2 and d["slices"].shape[0] == 3
            assert d["sp_hw"] == pytest.approx((0.7, 0.7))
        elif isinstance(step, WindowIntensities):
            assert d["x"].shape[:2] == (3, 1)
            lo, hi = np.percentile(d["volume"].numpy(), [0.5, 99.5])
            assert np.percentile(d["x"].numpy(), [0.5, 99.5]) == pytest.approx([-1, 1], abs=1e-4)
            assert d["window"].low == pytest.approx(lo, rel=1e-4)
            assert d["window"].high == pytest.approx(hi, rel=1e-4)
        elif isinstance(step, SolveSlices):
            assert d["img_g"].shape[-2:] == tuple(2 * v for v in d["slices"].shape[-2:])
            assert d["zoom"][2] == 1.0 and d["zoom"][0] == d["zoom"][1] == 2.0
        elif isinstance(step, StackSlices):
            assert d["out_image"].shape == (20, 24, 3)
            assert np.allclose(np.diag(d["out_image"].affine)[:3], (0.35, 0.35, 3.0))
    assert d["info"]["method"] == "bicubic" and d["info"]["slices"] == 3
    # the same as the one entry point
    ref = reconstruct(img, task="sr", prior=prior, method="bicubic", scale=2)
    assert np.array_equal(np.asarray(ref.image.array), np.asarray(d["out_image"].array))


def test_a_steps_error_is_not_wrapped_by_monai(prior):
    s = ReconstructionSettings.check(task="inpaint", prior=prior, method="biharmonic")
    bad_mask = np.zeros((3, 3, 3))
    with pytest.raises(MedreconInputError, match="the mask has shape"):
        run_steps(build_steps(s), {"image": _image(), "mask": bad_mask, "t0": 0.0})
    nan = _image()
    nan.array[0, 0, 0] = np.nan
    with pytest.raises(MedreconInputError, match="NaN"):
        reconstruct(nan, task="sr", prior=prior, method="bicubic", scale=2)


def test_options_are_checked_before_any_step(prior, monkeypatch):
    ran = []
    monkeypatch.setattr(ReadVolume, "__call__", lambda self, d: ran.append(1) or d)
    for kw, msg in [({"plane": "oblique"}, "unknown plane"), ({"seed": -1}, "seed"),
                    ({"seed": 2**63}, "seed must be an integer from 0 to 9223372036854775807"),
                    ({"noise_sigma": float("nan")}, "noise_sigma"), ({"scale": 0}, "scale"),
                    ({"mask": np.zeros((10, 12, 3))}, "only used by task 'inpaint'")]:
        with pytest.raises(MedreconInputError, match=msg):
            reconstruct(_image(), task="sr", prior=prior, method="bicubic", **kw)
    assert not ran


def test_numpy_scalars_are_numbers(prior):
    """Options read from numpy (np.float32, np.int64) are accepted like Python numbers; numpy
    booleans are not numbers."""
    from medrecon.solvers._common import check_positive
    from medrecon.volume import check_coherence

    assert check_coherence(np.float32(2.0)) == 2.0 and check_coherence(np.int64(0)) == 0.0
    with pytest.raises(MedreconInputError, match="coherence"):
        check_coherence(np.bool_(True))
    assert check_positive("steps", np.int64(3), integer=True) == 3
    assert check_positive("lr", np.float32(0.5)) == np.float32(0.5)
    out = reconstruct(_image(), task="denoise", prior=prior, method="pseudo_inverse",
                      noise_sigma=np.float32(0.01))
    assert out.info["noise_sigma"] == pytest.approx(0.01)


def test_steps_warnings_point_at_the_caller(prior):
    # a 12 x 12 slice x2 on a 16 x 16 prior: the prior supplies less than asked (warning)
    img = MedicalImage(np.random.default_rng(0).random((12, 12, 1)).astype(np.float32),
                       np.eye(4), {"format": "array"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reconstruct(img, task="sr", prior=prior, method="csgm", steps=1, scale=2)
    ours = [w for w in caught if issubclass(w.category, MedreconWarning)]
    assert ours and all(w.filename == __file__ for w in ours)


def test_settings_are_immutable_and_fill_task_defaults(prior):
    s = ReconstructionSettings.check(task="mri", prior=prior, method="zero_filled")
    assert s.simulate is True and s.batch_size is None  # the default, chosen at the solve
    assert ReconstructionSettings.check(task="mri", prior=prior, batch_size=3).batch_size == 3
    with pytest.raises(MedreconInputError, match="batch_size"):
        ReconstructionSettings.check(task="mri", prior=prior, batch_size=0)
    with pytest.raises(Exception):
        s.task = "sr"  # type: ignore[misc]


def test_counts_are_bounded_before_any_solve():
    """--steps 1e23 ended in an internal error after the first solves; --ensemble 1e20 ran
    without end; --mapping-layers 1e6 hung in the memory check."""
    from medrecon.errors import MedreconInputError
    from medrecon.limits import MAX_ENSEMBLE, MAX_STEPS
    from medrecon.steps import ReconstructionSettings
    from medrecon.training.loop import TrainConfig
    from tests._tiny import tiny_prior

    p = tiny_prior(resolution=16, seed=0)
    for kw, name in ((dict(steps=MAX_STEPS + 1), "steps"), (dict(steps=10**23), "steps"),
                     (dict(ensemble=MAX_ENSEMBLE + 1), "ensemble"),
                     (dict(samples=10**20), "samples"), (dict(key_every=10**9), "key_every"),
                     (dict(key_every=3, warm_steps=10**20), "warm_steps")):
        with pytest.raises(MedreconInputError, match=f"{name} must be an integer from"):
            ReconstructionSettings.check(task="sr", prior=p, method="iagan", **kw)
    with pytest.raises(MedreconInputError, match="mapping_layers"):
        TrainConfig(mapping_layers=10**6)


@pytest.mark.parametrize("kw, match", [
    (dict(task="mri"), "task 'mri' has none"),
    (dict(task="sr", method="csgm"), "method 'csgm' gives one estimate"),
    (dict(task="sr", method="lanczos"), "method 'lanczos' gives one estimate"),
    (dict(task="sr", ensemble=1), "ensemble=1: one run has no spread"),
])
def test_spread_where_there_is_none_is_refused(kw, match):
    """spread=True was accepted and dropped (std None, no word) for MRI, CSGM, Lanczos and one
    run; it is refused before any work."""
    from medrecon.errors import MedreconInputError
    from medrecon.steps import ReconstructionSettings

    with pytest.raises(MedreconInputError, match=match):
        ReconstructionSettings.check(prior="brain_mri", spread=True, **kw)
    ReconstructionSettings.check(prior="brain_mri", task="sr", spread=True, ensemble=2)
    # with posterior samples the std map is theirs: spread is accepted as before
    ReconstructionSettings.check(prior="brain_mri", task="sr", method="brgm", samples=2,
                                 spread=True)
