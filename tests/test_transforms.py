"""Tests for medrecon.transforms: exact inverses, field-of-view geometry, display orientation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medrecon.errors import MedreconInputError
from medrecon.transforms import GridFit, IntensityWindow, SliceOrientation, resize_fov


# ------------------------------------------------------------------ intensity window
def test_window_maps_percentiles_and_inverts_exactly():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 7, 3, generator=g, dtype=torch.float32) * 300 + 40
    w = IntensityWindow.fit(x, lower=1.0, upper=99.0)
    lo, hi = np.percentile(x.numpy().astype(np.float64), [1.0, 99.0])
    assert w.low == pytest.approx(lo) and w.high == pytest.approx(hi)
    y = w.apply(x)
    assert y.dtype == x.dtype
    # not clipped: the extremes go past +-1 and come back unchanged
    assert y.min() < -1 and y.max() > 1
    torch.testing.assert_close(w.invert(y), x, rtol=0, atol=1e-4)
    torch.testing.assert_close(w.apply(torch.tensor([lo, hi], dtype=torch.float64)),
                               torch.tensor([-1.0, 1.0], dtype=torch.float64))
    # a spread maps linearly
    torch.testing.assert_close(w.invert_scale(torch.tensor([2.0], dtype=torch.float64)),
                               torch.tensor([hi - lo], dtype=torch.float64))


def test_window_constant_and_bad_inputs():
    w = IntensityWindow.fit(np.full((3, 3), 7.0))
    torch.testing.assert_close(w.apply(torch.tensor([7.0])), torch.tensor([0.0]))
    said = (r"the image has 1 non-finite voxel\(s\) \(1 NaN, 0 \+/-Inf\) out of 2, "
            r"the first at index \(1,\)")
    with pytest.raises(MedreconInputError, match=said):
        IntensityWindow.fit(np.array([1.0, np.nan]))
    with pytest.raises(MedreconInputError, match="empty"):
        IntensityWindow.fit(np.zeros((0,)))
    with pytest.raises(MedreconInputError, match="percentiles"):
        IntensityWindow.fit(np.ones(3), lower=50, upper=10)
    with pytest.raises(MedreconInputError):
        IntensityWindow(1.0, 1.0)


# ------------------------------------------------------------------ grid fit
@pytest.mark.parametrize(
    "shape,spacing,size,content,offset",
    [
        ((32, 32), (1.0, 1.0), 32, (32, 32), (0, 0)),
        ((40, 20), (1.0, 1.0), 16, (16, 8), (0, 4)),
        ((20, 40), (1.0, 1.0), 16, (8, 16), (4, 0)),
        # anisotropic pixels: 10 x 2mm = 20mm rows vs 20 x 0.5mm = 10mm columns
        ((10, 20), (2.0, 0.5), 16, (16, 8), (0, 4)),
        ((7, 5), (1.0, 1.0), 16, (16, 11), (0, 2)),
    ],
)
def test_gridfit_layout(shape, spacing, size, content, offset):
    f = GridFit.fit(shape, spacing, size)
    assert f.content == content and f.offset == offset
    assert max(f.content) == size
    # grid pixels are (nearly) square in mm: the generator was trained on square pixels
    gh, gw = f.grid_spacing
    assert abs(gh - gw) / max(gh, gw) < 1.0 / min(content) + 1e-9


def test_gridfit_round_trip_identity_when_native():
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    f = GridFit.fit((16, 16), (0.7, 0.7), 16)
    torch.testing.assert_close(f.from_grid(f.to_grid(x)), x)


def test_gridfit_pads_centered_and_crops_back():
    x = torch.rand(1, 1, 16, 8, generator=torch.Generator().manual_seed(2))
    f = GridFit.fit((16, 8), (1.0, 1.0), 16)
    g = f.to_grid(x, pad_value=-1.0)
    assert g.shape == (1, 1, 16, 16)
    assert torch.all(g[..., :, :4] == -1) and torch.all(g[..., :, 12:] == -1)
    torch.testing.assert_close(g[..., :, 4:12], x)
    torch.testing.assert_close(f.from_grid(g), x)
    assert f.valid_mask().sum() == 16 * 8


def test_gridfit_resampling_keeps_field_of_view():
    # a linear ramp over the FOV stays the same ramp after resampling (edges fixed)
    h = 12
    ramp = (torch.arange(h, dtype=torch.float64) + 0.5) / h  # pixel centres in [0, 1]
    x = ramp.view(1, 1, h, 1).expand(1, 1, h, h).clone()
    f = GridFit.fit((h, h), (1.0, 1.0), 24)
    g = f.to_grid(x, mode="bilinear")
    centres = (torch.arange(24, dtype=torch.float64) + 0.5) / 24
    torch.testing.assert_close(g[0, 0, 2:-2, 5], centres[2:-2], atol=1e-6, rtol=0)


def test_gridfit_scaled_for_super_resolution():
    lr = GridFit.fit((10, 6), (1.0, 1.0), 8)
    hr = lr.scaled(4)
    assert hr.size == 32 and hr.content == (lr.content[0] * 4, lr.content[1] * 4)
    assert hr.offset == (lr.offset[0] * 4, lr.offset[1] * 4)
    with pytest.raises(MedreconInputError):
        GridFit.fit((4, 4), (0.0, 1.0), 8)
    with pytest.raises(MedreconInputError):
        lr.to_grid(torch.zeros(1, 1, 3, 3))


def test_resize_fov_nearest_for_masks():
    m = torch.zeros(1, 1, 4, 4)
    m[..., :2, :] = 1
    r = resize_fov(m, (8, 8), mode="nearest")
    assert set(r.unique().tolist()) <= {0.0, 1.0}
    assert r[..., :4, :].all() and not r[..., 4:, :].any()


# ------------------------------------------------------------------ orientation
def _vol(shape):
    return torch.arange(int(np.prod(shape)), dtype=torch.float32).reshape(shape)


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_orientation_round_trip(plane):
    rng = np.random.default_rng(3)
    # a random rotated/flipped affine: a permutation matrix with random signs
    perm = rng.permutation(3)
    a = np.zeros((4, 4))
    a[3, 3] = 1
    for i, p in enumerate(perm):
        a[p, i] = rng.choice([-1.0, 1.0]) * (i + 1)
    vol = _vol((3, 4, 5))
    o = SliceOrientation.from_affine(a, vol.shape, plane=plane)
    s = o.volume_to_slices(vol)
    assert s.shape[0] == vol.shape[o.axis]
    assert torch.equal(o.slices_to_volume(s), vol)


def test_orientation_radiological_display_for_ras_identity():
    # RAS identity: array x -> patient right(+)... display axial: rows A->P (decreasing y),
    # columns R->L (decreasing x)
    vol = _vol((3, 4, 5))
    o = SliceOrientation.from_affine(np.eye(4), vol.shape, plane="axial")
    assert o.axis == 2 and o.transpose and o.flip_rows and o.flip_cols
    s = o.volume_to_slices(vol)
    assert s.shape == (5, 4, 3)
    assert s[0, 0, 0] == vol[2, 3, 0]  # top-left = max x (right), max y (anterior)
    # LPS-like affine (diag(-1,-1,1)) is already in display order
    o2 = SliceOrientation.from_affine(np.diag([-1.0, -1.0, 1.0, 1.0]), vol.shape, plane="axial")
    assert o2.transpose and not o2.flip_rows and not o2.flip_cols
    # coronal slices along y; rows superior->inferior
    o3 = SliceOrientation.from_affine(np.eye(4), vol.shape, plane="coronal")
    assert o3.axis == 1 and o3.volume_to_slices(vol).shape == (4, 5, 3)


def test_orientation_2d_image_keeps_stored_layout():
    img = _vol((6, 4, 1))  # (X=cols, Y=rows, 1)
    o = SliceOrientation.from_affine(np.eye(4), img.shape)
    assert o.plane == "image" and o.axis == 2
    s = o.volume_to_slices(img)
    assert s.shape == (1, 4, 6)
    assert torch.equal(s[0], img[:, :, 0].T)
    assert o.inplane_spacing((0.5, 0.25, 3.0)) == (0.25, 0.5)


def test_orientation_bad_inputs():
    with pytest.raises(MedreconInputError, match="plane"):
        SliceOrientation.from_affine(np.eye(4), (2, 2, 2), plane="oblique")
    with pytest.raises(MedreconInputError, match="3D"):
        SliceOrientation.from_affine(np.eye(4), (2, 2), plane="axial")
