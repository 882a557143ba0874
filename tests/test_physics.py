"""Forward operators: one registry of operators drives the generic property tests."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import pytest
import torch

from medrecon.errors import MedreconInputError
from medrecon.physics import (
    MRI,
    Blur,
    CompressedSensing,
    GaussianNoise,
    GridResample,
    Identity,
    Inpainting,
    LinearPhysics,
    MultiCoilMRI,
    RicianNoise,
    SuperResolution,
    bicubic_kernel,
    build_operator,
    compose,
    conjugate_gradient,
    fft2c,
    gaussian_kernel,
    ifft2c,
    masks,
    uniform_kernel,
)

# A well-conditioned kernel (OTF >= 0.2 everywhere) so CG pseudo-inverses converge quickly.
_SHARP = torch.tensor([[0.0, 0.1, 0.0], [0.1, 0.6, 0.1], [0.0, 0.1, 0.0]])


def _coil_maps(h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, h, w, dtype=torch.complex64, generator=g)


# name -> (builder(seed) -> operator, image shape [C, H, W], closed-form pseudo-inverse?)
REGISTRY: dict[str, tuple[Callable[[int], LinearPhysics], tuple[int, int, int], bool]] = {
    "sr_bicubic_x3_reflect": (lambda s: SuperResolution(3, img_size=(15, 21)), (2, 15, 21),
                              False),
    "sr_bicubic_x4_circular": (lambda s: SuperResolution(4, img_size=(16, 12),
                                                         padding="circular"), (1, 16, 12), False),
    "sr_gaussian_x2_zeros": (lambda s: SuperResolution(2, img_size=(16, 12), kernel="gaussian",
                                                       padding="zeros"), (2, 16, 12), False),
    "sr_box_x3": (lambda s: SuperResolution(3, img_size=(15, 21), kernel="box"), (1, 15, 21),
                  False),
    "inpaint_pixels": (lambda s: Inpainting(masks.random_pixels((15, 21), seed=s)), (2, 15, 21),
                       True),
    "inpaint_per_channel": (lambda s: Inpainting(torch.stack(
        [masks.free_form((15, 21), seed=s), masks.random_boxes((15, 21), seed=s)])),
        (2, 15, 21), True),
    "mri_random": (lambda s: MRI(masks.random_lines((15, 21), acceleration=3, seed=s)),
                   (2, 15, 21), True),
    "mri_equispaced": (lambda s: MRI(masks.equispaced_lines((16, 12), acceleration=2, seed=s)),
                       (1, 16, 12), True),
    "mri_poisson2d": (lambda s: MRI(masks.variable_density_2d(
        (15, 21), acceleration=3, kind="poisson", seed=s)), (1, 15, 21), True),
    "mri_gaussian2d": (lambda s: MRI(masks.variable_density_2d(
        (16, 12), acceleration=4, seed=s)), (1, 16, 12), True),
    "mri_multicoil": (lambda s: MultiCoilMRI(masks.random_lines((15, 21), acceleration=2, seed=s),
                                             _coil_maps(15, 21, s)), (1, 15, 21), False),
    "cs_under": (lambda s: CompressedSensing(40, img_shape=(1, 9, 11), seed=s), (1, 9, 11), True),
    "cs_over": (lambda s: CompressedSensing(150, img_shape=(1, 9, 11), seed=s), (1, 9, 11),
                True),
    "blur_reflect": (lambda s: Blur(_SHARP), (2, 15, 21), False),
    "blur_circular_gauss": (lambda s: Blur(gaussian_kernel(0.6, size=5), padding="circular"),
                            (1, 15, 21), True),
    "blur_zeros_uniform": (lambda s: Blur(uniform_kernel(2), padding="zeros"), (1, 16, 12), False),
    "identity": (lambda s: Identity(), (2, 15, 21), True),
    "composed_sr_blur": (lambda s: SuperResolution(3, img_size=(15, 21), kernel="box") @
                         Blur(_SHARP, padding="circular"), (1, 15, 21), False),
    # the prior's grid inside the forward model: crop + resample onto a scan's own grid
    "grid_upsample": (lambda s: GridResample(16, (21, 15), content=(16, 12), offset=(0, 2)),
                      (1, 16, 16), True),
    "grid_downsample": (lambda s: GridResample(16, (9, 7), content=(14, 11), offset=(1, 2)),
                        (2, 16, 16), True),
    "sr_native_of_grid": (lambda s: SuperResolution(3, img_size=(24, 18)) @
                          GridResample(16, (24, 18), content=(16, 12), offset=(0, 2)),
                          (1, 16, 16), False),
    "inpaint_native_of_grid": (lambda s: Inpainting(masks.random_pixels((21, 15), seed=s)) @
                               GridResample(16, (21, 15), content=(16, 12), offset=(0, 2)),
                               (1, 16, 16), False),
}
NAMES = sorted(REGISTRY)


def _build(name: str, seed: int = 0) -> tuple[LinearPhysics, tuple[int, int, int]]:
    builder, shape, _ = REGISTRY[name]
    return builder(seed), shape


def _x(shape: tuple[int, int, int], *, b: int = 2, dtype=torch.float64, seed: int = 0
       ) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype.is_complex:
        return torch.complex(torch.randn(b, *shape, generator=g, dtype=torch.float64),
                             torch.randn(b, *shape, generator=g, dtype=torch.float64))
    return torch.randn(b, *shape, generator=g, dtype=dtype)


def _randn_like(t: torch.Tensor, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if t.is_complex():
        return torch.complex(torch.randn(t.shape, generator=g, dtype=t.real.dtype),
                             torch.randn(t.shape, generator=g, dtype=t.real.dtype))
    return torch.randn(t.shape, generator=g, dtype=t.dtype)


def _inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.conj() * b).sum() if (a.is_complex() or b.is_complex()) else (a * b).sum()


# ------------------------------------------------------------------------------------------
# Generic property tests
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128], ids=["real", "complex"])
def test_adjoint_dot_product(name, dtype):
    op, shape = _build(name)
    x = _x(shape, dtype=dtype)
    ax = op.A(x)
    y = _randn_like(ax if not dtype.is_complex else ax.to(torch.complex128))
    lhs, rhs = _inner(ax, y), _inner(x, op.A_adjoint(y))
    assert abs(lhs - rhs) / abs(lhs) < 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_linearity(name):
    op, shape = _build(name)
    x1, x2 = _x(shape, seed=1), _x(shape, seed=2)
    lhs = op.A(2.5 * x1 - 0.7 * x2)
    rhs = 2.5 * op.A(x1) - 0.7 * op.A(x2)
    torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_pseudo_inverse_on_range(name):
    op, shape = _build(name)
    y = op.A(_x(shape, b=1))
    x_dag = op.A_dagger(y, tol=1e-10, max_iter=300)
    assert x_dag.shape[-3:] == shape
    err = torch.linalg.vector_norm(op.A(x_dag) - y) / torch.linalg.vector_norm(y)
    assert err < 1e-4
    # Minimum norm: A^+ y lies in the row space, so A^+ A A^+ y == A^+ y.
    again = op.A_dagger(op.A(x_dag), tol=1e-10, max_iter=300)
    assert torch.linalg.vector_norm(again - x_dag) / torch.linalg.vector_norm(x_dag) < 1e-3


@pytest.mark.parametrize("name", [n for n in NAMES if REGISTRY[n][2]])
def test_closed_forms_agree_with_cg(name):
    op, shape = _build(name)
    y = op.A(_x(shape))
    exact = op.A_dagger(y)
    cg = LinearPhysics.A_dagger(op, y, tol=1e-12, max_iter=500)
    torch.testing.assert_close(exact, cg.to(exact.dtype), rtol=1e-4, atol=1e-4)
    y_noisy = y + 0.1 * _randn_like(y)
    exact = op.A_dagger_reg(y_noisy, eta=0.3)
    cg = LinearPhysics.A_dagger_reg(op, y_noisy, eta=0.3, tol=1e-12, max_iter=500)
    torch.testing.assert_close(exact, cg.to(exact.dtype), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_device_and_dtype_moves(name, device):
    op, shape = _build(name)
    x = _x(shape, dtype=torch.float32)
    ref = op.A(x)
    moved = copy.deepcopy(op).to(device)
    assert all(b.device.type == device.type for b in moved.buffers())
    out = moved.A(x.to(device))
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-4, atol=1e-5)
    assert moved.A_adjoint(out).device.type == device.type
    dbl = copy.deepcopy(op).double()
    assert dbl.A(x.double()).real.dtype == torch.float64


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name):
    op, shape = _build(name, seed=0)
    other, _ = _build(name, seed=7)
    other.load_state_dict(op.state_dict())
    x = _x(shape)
    torch.testing.assert_close(other.A(x), op.A(x))


@pytest.mark.parametrize("name", NAMES)
def test_gradients_are_finite_and_match_normal_operator(name):
    op, shape = _build(name)
    x = _x(shape).requires_grad_(True)
    y = op.A(x)
    loss = (y.abs() ** 2).sum()
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(grad).all()
    expected = 2 * op.A_normal(x.detach())
    torch.testing.assert_close(grad, expected.real if not x.is_complex() else expected,
                               rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", NAMES)
def test_measure_is_seeded_and_leaves_global_rng(name, global_rng_untouched):
    builder, shape, _ = REGISTRY[name]
    op = builder(0)
    op.noise_model = GaussianNoise(0.1)
    x = _x(shape, dtype=torch.float32)
    y1 = op.measure(x, generator=torch.Generator().manual_seed(3))
    y2 = op.measure(x, generator=torch.Generator().manual_seed(3))
    y3 = op.measure(x, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(y1, y2)
    assert not torch.equal(y1, y3)
    op.measure(x)  # generator=None: fresh entropy, still no global RNG use


@pytest.mark.parametrize("name", NAMES)
def test_nan_and_bad_rank_rejected(name):
    op, shape = _build(name)
    x = _x(shape)
    with pytest.raises(MedreconInputError, match="NaN"):
        op.measure(x.clone().index_fill_(-1, torch.tensor([0]), float("nan")))
    with pytest.raises(MedreconInputError, match=r"\[B, C, H, W\]|shape"):
        op.A(x[0])
    y = op.A(x)
    with pytest.raises(MedreconInputError, match="NaN"):
        op.A_dagger(y * float("nan"))


# ------------------------------------------------------------------------------------------
# FFT helpers
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(15, 21), (16, 12), (2, 3, 7, 9)])
def test_fft2c_matches_numpy(shape, np_rng):
    x = np_rng.standard_normal(shape) + 1j * np_rng.standard_normal(shape)
    axes = (-2, -1)
    ref = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=axes), norm="ortho"), axes=axes)
    out = fft2c(torch.from_numpy(x))
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-10, atol=1e-12)
    ref_inv = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(x, axes=axes), norm="ortho"),
                              axes=axes)
    np.testing.assert_allclose(ifft2c(torch.from_numpy(x)).numpy(), ref_inv, rtol=1e-10,
                               atol=1e-12)
    np.testing.assert_allclose(ifft2c(fft2c(torch.from_numpy(x))).numpy(), x, atol=1e-12)


def test_fft2c_dc_at_centre_and_unitary():
    x = torch.ones(1, 1, 15, 21, dtype=torch.float64)
    k = fft2c(x)
    assert k.dtype == torch.complex128
    assert torch.isclose(k[0, 0, 7, 10].real, torch.tensor(15 * 21, dtype=torch.float64).sqrt())
    assert k.abs().sum() - k[0, 0, 7, 10].abs() < 1e-9
    with pytest.raises(MedreconInputError):
        fft2c(torch.ones(5))


def _fft2c_torch(x: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """The previous hand-written formula, kept as the reference for the MONAI-backed helpers."""
    f = torch.fft.ifft2 if inverse else torch.fft.fft2
    x = torch.fft.ifftshift(x, dim=(-2, -1))
    return torch.fft.fftshift(f(x, dim=(-2, -1), norm="ortho"), dim=(-2, -1))


@pytest.mark.parametrize("shape", [(15, 21), (16, 12), (7, 8), (1, 1), (1, 5), (2, 3, 9, 7),
                                   (2, 1, 16, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64,
                                   torch.complex128])
def test_fft2c_equals_previous_formula(shape, dtype, rng):
    """fft2c/ifft2c (MONAI's fftn_centered_t) equal shift-fft-shift exactly, gradients too."""
    x = torch.randn(shape, dtype=dtype, generator=rng)
    for ours, inverse in ((fft2c, False), (ifft2c, True)):
        xa = x.clone().requires_grad_(True)
        xb = x.clone().requires_grad_(True)
        out, ref = ours(xa), _fft2c_torch(xb, inverse)
        assert out.dtype == ref.dtype == (torch.complex128 if dtype in (torch.float64,
                                          torch.complex128) else torch.complex64)
        assert out.shape == ref.shape == x.shape
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
        w = torch.randn(shape, dtype=out.dtype, generator=rng)
        (out * w).real.sum().backward()
        (ref * w).real.sum().backward()
        assert xa.grad is not None and xa.grad.dtype == dtype
        torch.testing.assert_close(xa.grad, xb.grad, rtol=0, atol=0)


def test_fft2c_conjugate_view_and_non_contiguous_input(rng):
    x = torch.randn(3, 9, 10, dtype=torch.complex64, generator=rng)
    torch.testing.assert_close(fft2c(x.conj()), _fft2c_torch(x.conj()), rtol=0, atol=0)
    xt = x.transpose(-2, -1)
    torch.testing.assert_close(ifft2c(xt), _fft2c_torch(xt, True), rtol=0, atol=0)
    with pytest.raises(MedreconInputError, match="H, W > 0"):
        ifft2c(torch.ones(2, 0, 4))
    with pytest.raises(MedreconInputError, match="got list"):
        fft2c([[1.0, 2.0]])


# ------------------------------------------------------------------------------------------
# Operator specifics
# ------------------------------------------------------------------------------------------
def test_sr_box_is_block_average_and_factor_one_is_identity():
    x = _x((2, 15, 21))
    op = SuperResolution(3, img_size=(15, 21), kernel="box")
    torch.testing.assert_close(op.A(x), torch.nn.functional.avg_pool2d(x, 3))
    ident = SuperResolution(1, img_size=(15, 21))
    torch.testing.assert_close(ident.A(x), x)


def test_sr_bicubic_kernel_properties():
    for f in (2, 3, 4):
        k = bicubic_kernel(f)
        assert k.shape == (4 * f - f % 2,) * 2
        assert torch.isclose(k.sum(), torch.tensor(1.0))
        torch.testing.assert_close(k, k.flip(0).flip(1))
    # A constant image stays constant (kernel sums to one, reflect padding).
    op = SuperResolution(4, img_size=(16, 12))
    y = op.A(torch.full((1, 1, 16, 12), 0.3))
    torch.testing.assert_close(y, torch.full((1, 1, 4, 3), 0.3))
    up = op.A_dagger(y, method="bicubic")
    assert up.shape == (1, 1, 16, 12)


def test_blur_reflect_matches_scipy(np_rng):
    import scipy.ndimage as ndi

    x = np_rng.standard_normal((15, 21))
    k = np_rng.random((3, 5))
    op = Blur(torch.from_numpy(k), padding="reflect")
    out = op.A(torch.from_numpy(x)[None, None])[0, 0].numpy()
    # scipy 'mirror' is reflection without edge repeat; origin 0 centres the kernel at size//2,
    # ours at (size - 1) // 2 (same for odd sizes).
    np.testing.assert_allclose(out, ndi.convolve(x, k, mode="mirror"), rtol=1e-5, atol=1e-5)
    circ = Blur(torch.from_numpy(k), padding="circular").A(torch.from_numpy(x)[None, None])
    np.testing.assert_allclose(circ[0, 0].numpy(), ndi.convolve(x, k, mode="wrap"), atol=1e-5)


def test_blur_circular_pseudo_inverse_handles_zero_frequencies():
    op = Blur(uniform_kernel(3), padding="circular")  # OTF has exact zeros on 15 x 21
    y = op.A(_x((1, 15, 21)))
    x = op.A_dagger(y)
    torch.testing.assert_close(op.A(x), y, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("k, hw", [(9, (8, 8)), (5, (4, 4)), (9, (5, 5)), (3, (1, 1)),
                                   (4, (7, 9))])
def test_blur_circular_transfer_function_wraps_a_kernel_larger_than_the_image(k, hw):
    """A circular blur whose kernel is larger than the image (accepted, A and A^H worked) made
    A_dagger and A_dagger_reg fail inside the transfer function (a 9 x 9 kernel put into an
    8 x 8 array). The taps now wrap around as the convolution does."""
    op = Blur(uniform_kernel(k), padding="circular").double()
    x = torch.randn(2, 1, *hw, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = op.A(x)
    fourier = torch.fft.ifft2(torch.fft.fft2(x) * op.otf(hw, dtype=torch.complex128)).real
    torch.testing.assert_close(fourier, y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(op.A(op.A_dagger(y)), y, rtol=1e-9, atol=1e-12)
    assert torch.isfinite(op.A_dagger_reg(y, eta=0.1)).all()


def test_mri_adjoint_is_zero_filled_ifft_and_noise_only_on_samples():
    mask = masks.random_lines((16, 12), acceleration=4, seed=1)
    op = MRI(mask, noise_model=GaussianNoise(0.5))
    x = _x((1, 16, 12), dtype=torch.float32)
    y = op.measure(x, generator=torch.Generator().manual_seed(0))
    assert y.dtype == torch.complex64
    assert bool((y[..., mask == 0] == 0).all())
    torch.testing.assert_close(op.A_dagger(y), ifft2c(y * mask))
    assert abs(op.compute_norm_squared(x) - 1.0) < 1e-4
    with pytest.raises(MedreconInputError, match="does not match"):
        op.A(torch.zeros(1, 1, 12, 16))


def test_cs_matrix_is_seeded_gaussian():
    a = CompressedSensing(200, img_shape=(1, 10, 10), seed=3)
    b = CompressedSensing(200, img_shape=(10, 10), seed=3)
    c = CompressedSensing(200, img_shape=(1, 10, 10), seed=4)
    assert torch.equal(a.matrix, b.matrix)
    assert not torch.equal(a.matrix, c.matrix)
    assert abs(float(a.matrix.mean())) < 0.01
    assert abs(float(a.matrix.var()) * 200 - 1.0) < 0.05
    with pytest.raises(MedreconInputError, match=r"\[B, 200\]"):
        a.A_adjoint(torch.zeros(2, 10))


def test_noise_models():
    y = torch.zeros(20000, dtype=torch.float64)
    n = GaussianNoise(0.3)(y, generator=torch.Generator().manual_seed(0))
    assert abs(float(n.std()) - 0.3) < 0.01
    r = RicianNoise(0.3, floor=-1.0)(y - 1.0, generator=torch.Generator().manual_seed(0))
    assert bool((r >= -1.0).all())  # magnitudes above the zero-signal floor
    assert abs(float((r + 1.0).mean()) - 0.3 * np.sqrt(np.pi / 2)) < 0.01  # Rayleigh mean
    with pytest.raises(MedreconInputError, match="GaussianNoise"):
        RicianNoise(0.1)(torch.zeros(2, dtype=torch.complex64))
    with pytest.raises(MedreconInputError):
        GaussianNoise(-1.0)


def test_compose_operator_and_noise():
    inner, outer = Blur(_SHARP), SuperResolution(3, img_size=(15, 21),
                                                 noise_model=GaussianNoise(0.1))
    both = compose(outer, inner)
    x = _x((1, 15, 21))
    torch.testing.assert_close(both.A(x), outer.A(inner.A(x)))
    assert both.noise_model is outer.noise_model
    assert compose(outer, inner, noise_model=None).noise_model is None
    with pytest.raises(MedreconInputError):
        compose(outer, torch.nn.Identity())


def test_conjugate_gradient_solves_batched_spd_systems():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(3, 6, 6, generator=g, dtype=torch.float64)
    spd = m @ m.transpose(1, 2) + 0.5 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(3, 6, generator=g, dtype=torch.float64)
    b[1] = 0.0
    x, info = conjugate_gradient(lambda v: (spd @ v[..., None])[..., 0], b, tol=1e-12,
                                 max_iter=50, return_info=True)
    torch.testing.assert_close(x, torch.linalg.solve(spd, b))
    assert info.converged and info.iterations <= 12
    assert torch.equal(x[1], torch.zeros(6, dtype=torch.float64))


# ------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("factor", [2.5, 0, -2, "4", True])
def test_sr_rejects_bad_factor(factor):
    with pytest.raises(MedreconInputError, match="factor"):
        SuperResolution(factor, img_size=16)


def test_sr_rejects_bad_sizes():
    with pytest.raises(MedreconInputError, match="divisible"):
        SuperResolution(4, img_size=(15, 16))
    with pytest.raises(MedreconInputError, match="too large"):
        SuperResolution(4, img_size=4)  # 16-tap bicubic needs 6 px of reflection
    op = SuperResolution(2, img_size=(16, 12))
    with pytest.raises(MedreconInputError, match=r"expected \(16, 12\)"):
        op.A(torch.zeros(1, 1, 12, 16))
    with pytest.raises(MedreconInputError, match=r"\(8, 6\)"):
        op.A_adjoint(torch.zeros(1, 1, 6, 8))


def test_masks_must_be_binary_and_match():
    with pytest.raises(MedreconInputError, match="binary"):
        Inpainting(torch.rand(8, 8))
    op = Inpainting(torch.ones(8, 8))
    with pytest.raises(MedreconInputError, match="does not match"):
        op.A(torch.zeros(1, 1, 8, 9))
    op = Inpainting(torch.ones(2, 8, 8))
    with pytest.raises(MedreconInputError, match="does not match"):
        op.A(torch.zeros(1, 3, 8, 8))
    with pytest.raises(MedreconInputError):
        MRI(torch.ones(5))
    with pytest.raises(MedreconInputError, match="floating"):
        Identity().A(torch.zeros(1, 1, 4, 4, dtype=torch.int64))


# ------------------------------------------------------------------------------------------
# build_operator
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task,options,kind", [
    ("sr", {"scale": 2}, SuperResolution),
    ("inpaint", {"mask_type": "random_boxes", "n_boxes": 2}, Inpainting),
    ("inpaint", {"mask_type": "half", "side": "left"}, Inpainting),
    ("mri", {"acceleration": 4, "center_fraction": 0.1, "mask_type": "equispaced"}, MRI),
    ("mri", {"mask_type": "gaussian2d", "sigma": 0.3}, MRI),
    ("cs", {"ratio": 0.5}, CompressedSensing),
    ("deblur", {"kernel": "gaussian", "sigma": 1.0}, Blur),
    ("deblur", {"size": 3, "padding": "circular"}, Blur),
    ("denoise", {}, Identity),
])
def test_build_operator_tasks(task, options, kind):
    op = build_operator(task, img_size=(16, 12), channels=1, seed=2, noise_sigma=0.1, **options)
    assert isinstance(op, kind)
    assert isinstance(op.noise_model, GaussianNoise) and op.noise_model.sigma == 0.1
    y = op.measure(_x((1, 16, 12), dtype=torch.float32), generator=torch.Generator())
    assert torch.isfinite(y.abs()).all()
    again = build_operator(task, img_size=(16, 12), seed=2, noise_sigma=0.1, **options)
    for a, b in zip(op.buffers(), again.buffers()):
        assert torch.equal(a, b)


def test_build_operator_masks_and_noise_options(tmp_path):
    missing = np.zeros((16, 12), np.uint8)
    missing[:4] = 255
    np.save(tmp_path / "m.npy", missing)
    op = build_operator("inpaint", img_size=(16, 12), mask=str(tmp_path / "m.npy"),
                        mask_is_missing=True)
    assert float(op.mask.sum()) == 12 * 12
    ric = build_operator("denoise", img_size=8, noise_sigma=0.2, noise="rician")
    assert isinstance(ric.noise_model, RicianNoise) and ric.noise_model.floor == -1.0
    cs = build_operator("cs", img_size=8, channels=2, m=20)
    assert cs.img_shape == (2, 8, 8) and cs.m == 20


@pytest.mark.parametrize("task,options,match", [
    ("warp", {}, "unknown task 'warp'; expected one of sr, inpaint"),
    ("sr", {"factor": 2}, "unknown option.*factor.*valid task options: scale"),
    ("sr", {"scale": 3}, "divisible"),
    ("mri", {"acceleration": 0.5}, "acceleration must be >= 1"),
    ("mri", {"acceleration": 8, "center_fraction": 0.5}, "cannot be met"),
    ("mri", {"mask": torch.ones(16, 12), "acceleration": 4}, "either"),
    ("mri", {"noise": "rician", "noise_sigma": 0.1}, "rician"),
    ("inpaint", {"mask_type": "center_box", "n_boxes": 3}, "do not apply"),
    ("inpaint", {"mask": torch.ones(8, 8)}, "spatial size"),
    ("cs", {"m": 10, "ratio": 0.1}, "not both"),
    ("deblur", {"kernel": "motion"}, "kernel must be one of"),
    ("denoise", {"noise_sigma": -1}, "noise_sigma"),
])
def test_build_operator_rejects_bad_options(task, options, match):
    with pytest.raises(MedreconInputError, match=match):
        build_operator(task, img_size=(16, 12), **options)


def test_cg_float32_tolerance_below_precision_does_not_diverge():
    """A tolerance below float32 precision must not make CG drift away from the solution."""
    from medrecon.physics import SuperResolution

    op = SuperResolution(4, img_size=(32, 32))
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    y = op.A(x)
    x_dag = op.A_dagger(y, tol=1e-12, max_iter=300)
    rel = (op.A(x_dag) - y).norm() / y.norm()
    assert rel < 1e-4


@pytest.mark.parametrize("options", [dict(size=100000), dict(kernel="gaussian", sigma=1e6),
                                     dict(kernel="gaussian", size=40)])
def test_a_blur_kernel_larger_than_the_image_is_refused_before_allocation(options):
    """size=100000 asked torch for 40 GB (exit 1): the side is checked against the image."""
    from medrecon.physics import build_operator

    with pytest.raises(MedreconInputError, match="does not fit 16x16 images"):
        build_operator("deblur", img_size=(16, 16), **options)
    build_operator("deblur", img_size=(16, 16), kernel="gaussian", sigma=2.0)


def test_cs_measurements_of_an_integer_dtype_are_refused():
    import torch

    from medrecon import physics as P
    from medrecon.errors import MedreconInputError

    op = P.build_operator("cs", img_size=8, m=10)
    with pytest.raises(MedreconInputError, match="floating or complex dtype"):
        op.A_dagger(torch.ones(2, 10, dtype=torch.int64))
