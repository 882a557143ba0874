"""Tests of the classical baselines on small synthetic images (no prior needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medrecon.errors import MedreconInputError
from medrecon.physics.base import Identity
from medrecon.physics.blur import Blur
from medrecon.physics.inpainting import Inpainting
from medrecon.physics.mri import MRI
from medrecon.physics.noise import GaussianNoise
from medrecon.physics.superres import SuperResolution
from medrecon.solvers import (
    adjoint,
    bicubic,
    biharmonic,
    lanczos,
    pseudo_inverse,
    solve,
    tv,
    wiener,
    zero_filled,
)
from medrecon.solvers.baselines import lanczos_matrix

H = 24


def mse(a, b):
    return float(((a - b) ** 2).mean())


@pytest.fixture(scope="module")
def smooth():
    """Two smooth images in [-1, 1] (sums of low-frequency cosines), 24x24."""
    t = torch.linspace(0, 1, H)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    a = 0.6 * torch.cos(2.0 * xx + 1.0 * yy) + 0.3 * torch.sin(3.0 * yy)
    b = 0.5 * torch.cos(1.5 * yy - 2.5 * xx) - 0.2
    return torch.stack([a, b])[:, None].float()


@pytest.fixture(scope="module")
def blocks():
    """Piecewise-constant images (a TV-friendly phantom)."""
    x = -torch.ones(2, 1, H, H)
    x[0, :, 5:15, 4:12] = 0.5
    x[0, :, 12:20, 14:21] = 0.9
    x[1, :, 3:21, 8:16] = 0.2
    return x


def test_interpolation_baselines_sr(smooth):
    op = SuperResolution(4, img_size=H)
    y = op.A(smooth)
    zero = mse(adjoint(y, op, device="cpu").image, smooth)
    for fn in (bicubic, lanczos):
        rec = fn(y, op, device="cpu")
        assert rec.image.shape == smooth.shape and rec.latents is None
        assert mse(rec.image, smooth) < 0.1 * zero
    # constants are reproduced exactly
    c = torch.full((1, 1, H // 4, H // 4), 0.3)
    torch.testing.assert_close(lanczos(c, op, device="cpu").image, torch.full((1, 1, H, H), 0.3))
    M = lanczos_matrix(6, 24)
    torch.testing.assert_close(M.sum(1), torch.ones(24))
    with pytest.raises(MedreconInputError):
        bicubic(torch.zeros(1, 1, H, H, dtype=torch.complex64), MRI(torch.ones(H, H)))


def test_zero_filled_is_masked_ifft(smooth):
    mask = torch.zeros(H, H)
    mask[:, ::3] = 1
    op = MRI(mask)
    y = op.A(smooth)
    rec = zero_filled(y, op, device="cpu")
    ref = torch.fft.ifftshift(torch.fft.ifft2(torch.fft.fftshift(y, dim=(-2, -1)), norm="ortho"),
                              dim=(-2, -1)).real
    torch.testing.assert_close(rec.image, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(MedreconInputError):
        zero_filled(smooth, Identity())


def test_pseudo_inverse_consistent(smooth):
    op = SuperResolution(2, img_size=H)
    y = op.A(smooth)
    rec = pseudo_inverse(y, op, device="cpu")
    torch.testing.assert_close(op.A(rec.image), y, atol=1e-4, rtol=1e-4)


def test_tv_denoising_and_mri(blocks):
    g = torch.Generator().manual_seed(0)
    op = Identity(noise_model=GaussianNoise(0.2))
    y = op.measure(blocks, generator=g)
    rec = tv(y, op, steps=200, device="cpu")
    assert mse(rec.image, blocks) < 0.5 * mse(y, blocks)
    assert rec.loss_history[-1] < rec.loss_history[0]
    mask = torch.zeros(H, H)
    mask[:, ::2] = 1
    mask[:, H // 2 - 3:H // 2 + 3] = 1
    mri = MRI(mask)
    ym = mri.A(blocks)
    zf = zero_filled(ym, mri, device="cpu").image
    rec = solve(ym, mri, None, method="tv", weight=0.01, steps=300, device="cpu")
    assert rec.image.dtype == torch.float32 and not rec.image.is_complex()
    assert mse(rec.image, blocks) < 0.5 * mse(zf, blocks)


def test_biharmonic_fills_box(smooth):
    mask = torch.ones(H, H)
    mask[8:16, 8:16] = 0
    op = Inpainting(mask)
    y = op.A(smooth)
    rec = biharmonic(y, op, device="cpu")
    known = mask.bool().expand_as(smooth)
    torch.testing.assert_close(rec.image[known], smooth[known])
    assert mse(rec.image, smooth) < 0.05 * mse(y, smooth)


def test_wiener_deblurs(smooth, blocks):
    k = torch.ones(5, 5) / 25
    op = Blur(k)
    x = 0.5 * smooth + 0.5 * blocks
    y = op.A(x)
    rec = wiener(y, op, device="cpu")
    assert mse(rec.image, x) < 0.1 * mse(y, x)
    noisy = Blur(k, padding="circular", noise_model=GaussianNoise(0.04))
    yn = noisy.measure(x, generator=torch.Generator().manual_seed(0))
    assert mse(wiener(yn, noisy, device="cpu").image, x) < 0.8 * mse(yn, x)
    with pytest.raises(MedreconInputError):
        wiener(y, Identity())


def test_solve_runs_baselines_without_prior(smooth):
    op = SuperResolution(4, img_size=H)
    rec = solve(op.A(smooth), op, method="bicubic", device="cpu")
    assert rec.method == "bicubic" and rec.info["bp"] is False
    rec = solve(op.A(smooth), op, method="lanczos", bp=True, device="cpu")
    torch.testing.assert_close(op.A(rec.image), op.A(smooth), atol=1e-4, rtol=1e-4)
    with pytest.raises(MedreconInputError):
        solve(op.A(smooth), op, method="bicubic", weight=3)


def test_l1_wavelet_solves_its_problem_for_undersampled_mri():
    """Cross-check of the FISTA solution with the optimality (KKT) conditions of
    ``1/2 ||A x - y||^2 + lambda ||W_detail x||_1`` computed independently with PyWavelets:
    in the orthonormal wavelet domain the gradient of the data term vanishes on the
    approximation band, equals ``-lambda sign(c)`` where a detail coefficient ``c`` is nonzero
    and is at most ``lambda`` in size where it is zero."""
    import pywt

    from medrecon.physics import build_operator
    from medrecon.solvers import solve

    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    clean = (((xx ** 2 + yy ** 2) < 0.5).float() * 1.5 - 0.75 + 0.2 * xx)[None, None]
    op = build_operator("mri", img_size=(32, 32), channels=1, acceleration=4, seed=0)
    y = op.A(clean)
    lam = 0.01
    rec = solve(y, op, None, method="l1_wavelet", bp=False, weight=lam, wavelet="haar",
                steps=3000, tol=1e-12)
    grad = op.A_adjoint(op.A(rec.image) - y).real[0, 0].double().numpy()
    cg = pywt.wavedec2(grad, "haar", mode="periodization")
    cx = pywt.wavedec2(rec.image[0, 0].double().numpy(), "haar", mode="periodization")
    assert np.abs(cg[0]).max() < 1e-3 * lam
    support = 0
    for bands_g, bands_x in zip(cg[1:], cx[1:]):
        for bg, bx in zip(bands_g, bands_x):
            nz = np.abs(bx) > 1e-7
            support += int(nz.sum())
            assert np.abs(bg[nz] + lam * np.sign(bx[nz])).max(initial=0) < 1e-2 * lam
            assert np.abs(bg[~nz]).max(initial=0) <= lam * (1 + 1e-3)
    assert 0 < support < 32 * 32  # a sparse, non-trivial solution


def test_l1_wavelet_is_soft_thresholding_for_the_identity_and_helps_denoising():
    """Cross-check with PyWavelets: for A = I the minimiser is W^T soft(W y, lambda)."""
    import pywt

    from medrecon.physics import build_operator
    from medrecon.solvers import solve

    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    clean = ((xx ** 2 + yy ** 2) < 0.5).float()[None, None] * 1.5 - 0.75  # piecewise constant
    y = clean + 0.1 * torch.randn(clean.shape, generator=g)
    op = build_operator("denoise", img_size=(32, 32), channels=1)
    rec = solve(y, op, None, method="l1_wavelet", bp=False, weight=0.1, wavelet="haar")
    c = pywt.wavedec2(y[0, 0].double().numpy(), "haar", mode="periodization")
    ref = pywt.waverec2([c[0]] + [tuple(pywt.threshold(b, 0.1, mode="soft") for b in d)
                                  for d in c[1:]], "haar", mode="periodization")
    assert np.allclose(rec.image[0, 0].numpy(), ref, atol=1e-4)
    assert float((rec.image - clean).pow(2).mean()) < 0.7 * float((y - clean).pow(2).mean())
    with pytest.raises(MedreconInputError, match="unknown wavelet"):
        solve(y, op, None, method="l1_wavelet", wavelet="nope")


def test_baselines_refuse_unknown_keywords_and_bad_tolerances():
    """tv(..., stpes=5) ran all 300 steps (unknown keywords were swallowed); tol=nan was
    taken."""
    import torch

    from medrecon import physics as P
    from medrecon import solvers as S
    from medrecon.errors import MedreconInputError

    sr = P.build_operator("sr", img_size=16, scale=2)
    y = sr.A(torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(MedreconInputError, match=r"unknown option\(s\) \['stpes'\]"):
        S.tv(y, sr, stpes=5)
    with pytest.raises(MedreconInputError, match="tol"):
        S.tv(y, sr, tol=float("nan"), steps=2)
    S.tv(y, sr, steps=2, seed=0, callback=None)  # what every method is offered


def test_baseline_option_values_that_gave_raw_errors():
    import torch

    from medrecon import physics as P
    from medrecon import solvers as S
    from medrecon.errors import MedreconInputError

    sr = P.build_operator("sr", img_size=16, scale=2)
    y = sr.A(torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0)))
    for kw in (dict(level=-1), dict(level=2.5)):
        with pytest.raises(MedreconInputError, match="level"):
            S.solve(y, sr, None, method="l1_wavelet", steps=2, **kw)
    with pytest.raises(MedreconInputError, match="tol"):
        S.pseudo_inverse(y, sr, tol="x")
