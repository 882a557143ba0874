"""Mask generators (seeded, exact accelerations) and mask files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medrecon.errors import MedreconInputError
from medrecon.physics import masks

SHAPE = (24, 30)
ALL = {**{f"inpaint:{k}": v for k, v in masks.INPAINT_MASKS.items()},
       **{f"mri:{k}": v for k, v in masks.MRI_MASKS.items()}}
RANDOM = [k for k in ALL if k not in ("inpaint:center_box", "inpaint:half")]


@pytest.mark.parametrize("name", sorted(ALL))
def test_masks_are_binary_float_and_reproducible(name, global_rng_untouched):
    fn = ALL[name]
    m1, m2 = fn(SHAPE, seed=5), fn(SHAPE, seed=5)
    assert m1.shape == SHAPE and m1.dtype == torch.float32
    assert bool(((m1 == 0) | (m1 == 1)).all())
    assert 0 < float(m1.sum()) < m1.numel()
    assert torch.equal(m1, m2)


@pytest.mark.parametrize("name", RANDOM)
def test_random_masks_depend_on_seed(name):
    fn = ALL[name]
    assert not torch.equal(fn(SHAPE, seed=1), fn(SHAPE, seed=2))


@pytest.mark.parametrize("fn", [masks.random_lines, masks.equispaced_lines])
@pytest.mark.parametrize("accel,cf", [(4, 0.08), (3, 0.2), (2.5, 0.0)])
def test_line_masks_exact_acceleration_and_centre(fn, accel, cf):
    w = 30
    m = fn((7, w), acceleration=accel, center_fraction=cf, seed=0)
    assert torch.equal(m, m[:1].expand_as(m))  # lines: constant along H
    lines = m[0]
    assert int(lines.sum()) == round(w / accel)
    n_low = round(w * cf)
    start = (w - n_low + 1) // 2
    assert bool((lines[start: start + n_low] == 1).all())


def test_equispaced_lines_are_evenly_spread():
    lines = masks.equispaced_lines((4, 64), acceleration=4, center_fraction=0.0, seed=3)[0]
    gaps = np.diff(np.flatnonzero(lines.numpy()))
    assert set(gaps.tolist()) <= {4}


@pytest.mark.parametrize("kind", ["gaussian", "poisson"])
def test_variable_density_exact_count_centre_and_density(kind):
    h, w = 32, 28
    m = masks.variable_density_2d((h, w), acceleration=4, center_fraction=0.125, kind=kind,
                                  seed=1)
    assert int(m.sum()) == round(h * w / 4)
    ny, nx = round(h * 0.125), round(w * 0.125)
    sy, sx = (h - ny + 1) // 2, (w - nx + 1) // 2
    assert bool((m[sy: sy + ny, sx: sx + nx] == 1).all())
    inner = m[h // 4: 3 * h // 4, w // 4: 3 * w // 4].mean()
    outer = (m.sum() - m[h // 4: 3 * h // 4, w // 4: 3 * w // 4].sum()) / (h * w * 3 / 4)
    assert inner > outer  # denser near the k-space centre


def test_poisson_disc_keeps_samples_apart():
    m = masks.variable_density_2d((40, 40), acceleration=8, center_fraction=0.0, kind="poisson",
                                  seed=2).numpy()
    pts = np.argwhere(m > 0)
    d = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1)) + np.eye(len(pts)) * 1e9
    # Without clustering almost no sample has a direct neighbour (pure random: about a third).
    assert (d.min(axis=1) <= 1.0).mean() < 0.1


@pytest.mark.parametrize("call,match", [
    (lambda: masks.random_lines(SHAPE, acceleration=0.9), "acceleration must be >= 1"),
    (lambda: masks.random_lines(SHAPE, acceleration=10, center_fraction=0.5), "cannot be met"),
    (lambda: masks.variable_density_2d(SHAPE, acceleration=20, center_fraction=0.5),
     "cannot be met"),
    (lambda: masks.variable_density_2d(SHAPE, kind="radial"), "kind must be one of"),
    (lambda: masks.random_lines(SHAPE, center_fraction=1.5), "center_fraction"),
    (lambda: masks.center_box(SHAPE, box_fraction=1.0), "box_fraction"),
    (lambda: masks.random_pixels(SHAPE, observed_fraction=0.0), "observed_fraction"),
    (lambda: masks.random_boxes(SHAPE, min_fraction=0.5, max_fraction=0.2), "min_fraction"),
    (lambda: masks.random_pixels((0, 5)), "shape"),
    (lambda: masks.random_pixels(SHAPE, seed=-1), "seed"),
    (lambda: masks.half_image(SHAPE, side="middle"), "side"),
])
def test_bad_mask_options(call, match):
    with pytest.raises(MedreconInputError, match=match):
        call()


def test_inpainting_mask_geometry():
    box = masks.center_box((20, 10), box_fraction=0.5)
    assert float((box == 0).sum()) == 10 * 5 and float(box[10, 5]) == 0 and float(box[0, 0]) == 1
    half = masks.half_image((21, 10), side="bottom")
    assert float(half[:11].min()) == 1 and float(half[11:].max()) == 0
    pix = masks.random_pixels((20, 10), observed_fraction=0.3, seed=0)
    assert int(pix.sum()) == 60
    strokes = masks.free_form((40, 40), n_strokes=2, seed=0)
    assert 0 < float((strokes == 0).sum()) < 40 * 40 / 2


def test_load_mask_formats(tmp_path):
    import nibabel as nib
    from PIL import Image

    arr = np.zeros((12, 9), np.uint8)
    arr[2:5, 3:7] = 255
    expected = torch.from_numpy((arr > 0).astype(np.float32))
    np.save(tmp_path / "m.npy", arr)
    Image.fromarray(arr).save(tmp_path / "m.png")
    Image.fromarray(np.stack([arr, 0 * arr, 0 * arr], -1)).save(tmp_path / "rgb.png")
    nib.save(nib.Nifti1Image(arr[..., None].astype(np.float32), np.eye(4)),
             str(tmp_path / "m.nii.gz"))
    for name in ("m.npy", "m.png", "rgb.png", "m.nii.gz"):
        assert torch.equal(masks.load_mask(tmp_path / name, (12, 9)), expected), name
    assert torch.equal(masks.missing_to_observed(expected), 1 - expected)
    assert torch.equal(masks.missing_to_observed(arr), 1 - expected)


def test_load_mask_errors(tmp_path):
    np.save(tmp_path / "m.npy", np.ones((4, 5)))
    with pytest.raises(MedreconInputError, match=r"shape \(4, 5\), expected \(5, 4\)"):
        masks.load_mask(tmp_path / "m.npy", (5, 4))
    with pytest.raises(MedreconInputError, match="does not exist"):
        masks.load_mask(tmp_path / "nope.png")
    np.save(tmp_path / "vol.npy", np.ones((2, 4, 5)))
    with pytest.raises(MedreconInputError, match="2D"):
        masks.load_mask(tmp_path / "vol.npy")
    (tmp_path / "m.txt").write_text("1 0")
    with pytest.raises(MedreconInputError, match="unsupported"):
        masks.load_mask(tmp_path / "m.txt")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(MedreconInputError, match="cannot read"):
        masks.load_mask(tmp_path / "bad.png")
