"""Classical baselines: the bar the generative methods must clear.

Every baseline has the solver call shape ``baseline(y, operator, *, ...) -> Reconstruction``,
needs no prior, and returns images at the operator's image size. The image size and the
sampling pattern are read from the operator itself (``A^H y`` has the image shape; ``A^H A 1``
is the sampling mask of a masking operator), so the baselines do not depend on private
attributes; only :func:`wiener` needs the blur kernel (``operator.kernel``).

* :func:`adjoint`, :func:`pseudo_inverse` - any linear operator.
* :func:`zero_filled` - MRI: the zero-filled inverse FFT (real part; images are real).
* :func:`bicubic`, :func:`lanczos` - super-resolution by interpolation of the low-res image.
* :func:`tv` - total-variation regularised least squares by PDHG (Chambolle-Pock), any operator.
* :func:`biharmonic` - inpainting by biharmonic extension (``skimage``).
* :func:`wiener` - deconvolution by a Wiener filter with the operator's kernel.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medrecon.errors import MedreconInputError
from medrecon.solvers import _common as C
from medrecon.solvers.result import Reconstruction


def _no_extra(extra: dict, method: str) -> None:
    """Refuse keywords a baseline does not take (``tv(..., stpes=5)`` ran all 300 steps); the
    seed and callback every method is offered are taken and unused."""
    C.check_options({k: v for k, v in extra.items() if k not in ("seed", "callback")}, set(),
                    method)


def _prepare(y, operator, device):
    y = C.check_measurements(y)
    operator = C.check_operator(operator)
    dev = C.resolve_device(device)
    op = C.on_device(operator, dev)
    yd = y.to(dev)
    try:
        with torch.no_grad():
            back = op.A_adjoint(yd)
    except Exception as exc:  # noqa: BLE001
        if isinstance(exc, MemoryError) or "can't allocate" in str(exc):
            raise MedreconInputError(
                f"out of memory applying the operator to measurements of shape "
                f"{tuple(y.shape)}: they are too large for this machine; crop the scan or "
                "reconstruct it in parts.") from exc
        raise MedreconInputError(
            f"operator.A_adjoint cannot take y of shape {tuple(y.shape)} ({type(exc).__name__}: "
            f"{exc}); pass measurements produced by this operator.") from exc
    return yd, op, dev, back


def _pack(img, t0, dev, method, info=None, history=None) -> Reconstruction:
    img = img.real if img.is_complex() else img
    return Reconstruction(image=img, latents=None, loss_history=history or [],
                          seconds=time.perf_counter() - t0, device=str(dev), method=method,
                          info=info or {})


def adjoint(y: torch.Tensor, operator: nn.Module, *, device: str = "auto",
            **extra: Any) -> Reconstruction:
    """``A^H y`` (real part): the zero-filled / back-projected image."""
    _no_extra(extra, "adjoint")
    t0 = time.perf_counter()
    _, _, dev, back = _prepare(y, operator, device)
    return _pack(back, t0, dev, "adjoint")


def pseudo_inverse(y: torch.Tensor, operator: nn.Module, *, tol: float = 1e-6,
                   max_iter: int = 100, device: str = "auto", **extra: Any) -> Reconstruction:
    """Minimum-norm least-squares ``A^+ y`` (closed form or CG, as the operator provides).

    Args:
        y: measurements.
        operator: linear operator.
        tol: CG tolerance when no closed form exists. Default 1e-6.
        max_iter: CG iteration cap. Default 100.
        device: ``'auto'``, ``'cpu'`` or ``'cuda'``.
    """
    _no_extra(extra, "pseudo_inverse")
    C.check_positive("tol", tol, allow_zero=True)
    C.check_positive("max_iter", max_iter, integer=True)
    t0 = time.perf_counter()
    yd, op, dev, back = _prepare(y, operator, device)
    with torch.no_grad():
        if back.is_complex():  # real images under a complex operator: real-linear A^+
            from medrecon.solvers.backprojection import _real_dagger  # noqa: PLC0415

            x = _real_dagger(op, yd, eta=0.0, tol=tol, max_iter=max_iter)
        else:
            x = op.A_dagger(yd, tol=tol, max_iter=max_iter)
    return _pack(x, t0, dev, "pseudo_inverse", dict(tol=tol, max_iter=max_iter))


def zero_filled(y: torch.Tensor, operator: nn.Module, *, device: str = "auto",
                **extra: Any) -> Reconstruction:
    """Zero-filled inverse FFT for (Cartesian) MRI: ``Re(A^H y)``.

    For an orthonormal undersampled FFT ``A^H y`` is exactly the inverse FFT of the k-space with
    the missing samples set to zero. The real part is returned since the images are real
    (a magnitude would fold negative generator-space values).
    """
    _no_extra(extra, "zero_filled")
    t0 = time.perf_counter()
    yd, _, dev, back = _prepare(y, operator, device)
    if not yd.is_complex():
        raise MedreconInputError(
            f"zero_filled expects complex k-space measurements, got dtype {yd.dtype}; use "
            "'adjoint' or 'pseudo_inverse' for other operators.")
    return _pack(back, t0, dev, "zero_filled")


# ----------------------------------------------------------------------------------------------
# Super-resolution by interpolation


def _sr_geometry(yd: torch.Tensor, back: torch.Tensor) -> tuple[int, int]:
    if yd.is_complex() or yd.ndim != 4:
        raise MedreconInputError(
            f"interpolation baselines need low-resolution images [B, C, h, w]; got "
            f"{tuple(yd.shape)} ({yd.dtype}). Use them with a SuperResolution operator.")
    H, W = back.shape[-2:]
    h, w = yd.shape[-2:]
    if H < h or W < w or back.shape[1] != yd.shape[1]:
        raise MedreconInputError(
            f"operator images {tuple(back.shape[1:])} are not an upsampling of y "
            f"{tuple(yd.shape[1:])}; interpolation baselines apply to super-resolution only.")
    return H, W


def bicubic(y: torch.Tensor, operator: nn.Module, *, device: str = "auto",
            **extra: Any) -> Reconstruction:
    """Bicubic upsampling (Keys, a = -0.75 as PyTorch; pixel centres aligned) to image size."""
    _no_extra(extra, "bicubic")
    t0 = time.perf_counter()
    yd, _, dev, back = _prepare(y, operator, device)
    H, W = _sr_geometry(yd, back)
    x = F.interpolate(yd.float(), size=(H, W), mode="bicubic", align_corners=False)
    return _pack(x, t0, dev, "bicubic")


def lanczos_matrix(n_in: int, n_out: int, *, a: int = 3, dtype=torch.float32,
                   device=None) -> torch.Tensor:
    """Lanczos-``a`` interpolation matrix ``[n_out, n_in]`` (pixel centres aligned, edges
    replicated, rows normalised to sum to one)."""
    scale = n_in / n_out
    u = (torch.arange(n_out, dtype=torch.float64) + 0.5) * scale - 0.5  # source coordinate
    base = torch.floor(u).long()
    M = torch.zeros(n_out, n_in, dtype=torch.float64)
    for k in range(-a + 1, a + 1):
        j = base + k
        t = u - j
        wgt = torch.where(t.abs() < a, torch.sinc(t) * torch.sinc(t / a), torch.zeros_like(t))
        M.index_put_((torch.arange(n_out), j.clamp(0, n_in - 1)), wgt, accumulate=True)
    M = M / M.sum(1, keepdim=True)
    return M.to(dtype=dtype, device=device)


def lanczos(y: torch.Tensor, operator: nn.Module, *, a: int = 3, device: str = "auto",
            **extra: Any) -> Reconstruction:
    """Separable Lanczos upsampling to the operator's image size.

    Args:
        y: low-resolution images ``[B, C, h, w]``.
        operator: the super-resolution operator (gives the output size).
        a: Lanczos window (lobes). Default 3.
        device: ``'auto'``, ``'cpu'`` or ``'cuda'``.
    """
    _no_extra(extra, "lanczos")
    t0 = time.perf_counter()
    C.check_positive("a", a, integer=True)
    yd, _, dev, back = _prepare(y, operator, device)
    H, W = _sr_geometry(yd, back)
    Mh = lanczos_matrix(yd.shape[-2], H, a=a, device=dev)
    Mw = lanczos_matrix(yd.shape[-1], W, a=a, device=dev)
    x = Mh @ yd.float() @ Mw.T
    return _pack(x, t0, dev, "lanczos", dict(a=a))


# ----------------------------------------------------------------------------------------------
# Total variation by PDHG


def _grad(x: torch.Tensor) -> torch.Tensor:
    """Forward differences with Neumann boundary ``[B, C, 2, H, W]``."""
    gx = torch.zeros_like(x)
    gy = torch.zeros_like(x)
    gx[..., :, :-1] = x[..., :, 1:] - x[..., :, :-1]
    gy[..., :-1, :] = x[..., 1:, :] - x[..., :-1, :]
    return torch.stack([gy, gx], 2)


def _grad_adjoint(g: torch.Tensor) -> torch.Tensor:
    """Adjoint of :func:`_grad` (minus the divergence)."""
    gy, gx = g[:, :, 0], g[:, :, 1]
    out = torch.zeros_like(gy)
    out[..., :, :-1] -= gx[..., :, :-1]
    out[..., :, 1:] += gx[..., :, :-1]
    out[..., :-1, :] -= gy[..., :-1, :]
    out[..., 1:, :] += gy[..., :-1, :]
    return out


def tv_pdhg(
    A: Callable[[torch.Tensor], torch.Tensor],
    AH: Callable[[torch.Tensor], torch.Tensor],
    y: torch.Tensor,
    x0: torch.Tensor,
    *,
    weight: float,
    norm_sq: float,
    steps: int,
    tol: float,
) -> tuple[torch.Tensor, list[float]]:
    """PDHG core for ``min_x 1/2 ||A x - y||^2 + weight * TV_iso(x)`` over real ``x``.

    Args:
        A, AH: the operator and its adjoint (the real part of ``AH`` is used).
        y: measurements.
        x0: starting image.
        weight: TV weight.
        norm_sq: an upper bound of ``||A||^2``.
        steps: iterations.
        tol: stop when the relative change of ``x`` falls below it (checked every 10 steps).

    Returns:
        ``(x, objective history)``.
    """
    L = math.sqrt(norm_sq + 8.0)
    tau = sigma = 0.99 / L
    x = x0.clone()
    xbar = x.clone()
    p = torch.zeros_like(y)
    q = torch.zeros_like(_grad(x))
    hist = []
    for k in range(steps):
        p = (p + sigma * (A(xbar) - y)) / (1.0 + sigma)
        q = q + sigma * _grad(xbar)
        qn = torch.linalg.vector_norm(q, dim=2, keepdim=True)
        q = q / torch.clamp(qn / weight, min=1.0)
        back = AH(p)
        back = back.real if back.is_complex() else back
        x_new = x - tau * (back + _grad_adjoint(q))
        xbar = 2.0 * x_new - x
        if (k + 1) % 10 == 0 or k + 1 == steps:
            r = A(x_new) - y
            r2 = (r.real**2 + r.imag**2) if r.is_complex() else r * r
            tvv = torch.linalg.vector_norm(_grad(x_new), dim=2).sum()
            hist.append(float(0.5 * r2.sum() + weight * tvv) / x.shape[0])
            change = float(torch.linalg.vector_norm(x_new - x)
                           / torch.linalg.vector_norm(x_new).clamp_min(1e-12))
            x = x_new
            if change < tol:
                break
        else:
            x = x_new
    return x, hist


def tv(y: torch.Tensor, operator: nn.Module, *, weight: float | None = None, steps: int = 300,
       tol: float = 1e-5, device: str = "auto", callback: C.ProgressCallback | None = None,
       **extra: Any) -> Reconstruction:
    """Total-variation regularised least squares for any linear operator (PDHG).

    Args:
        y: measurements ``[B, ...]``.
        operator: linear operator.
        weight: TV weight ``lambda`` in ``1/2 ||A x - y||^2 + lambda TV(x)``. Default ``None``:
            ``max(2 sigma, 0.01)`` from the operator's noise std (a discrepancy-style scaling;
            0.01 keeps a little regularisation on clean data).
        steps: maximum PDHG iterations. Default 300.
        tol: relative-change stopping tolerance. Default 1e-5.
        device: ``'auto'``, ``'cpu'`` or ``'cuda'``.
        callback: receives one final progress report.
    """
    _no_extra(extra, "tv")
    t0 = time.perf_counter()
    C.check_positive("steps", steps, integer=True)
    C.check_positive("tol", tol, allow_zero=True)  # tol=nan never stopped, tol=-1 neither
    yd, op, dev, back = _prepare(y, operator, device)
    s = C.noise_sigma(operator)
    lam = max(2.0 * s, 0.01) if weight is None else C.check_positive("weight", weight)
    x0 = back.real if back.is_complex() else back
    with torch.no_grad():
        if hasattr(op, "compute_norm_squared"):
            norm_sq = op.compute_norm_squared(x0[:1], max_iter=50, tol=1e-4)
        else:
            norm_sq = _power_norm_sq(op, x0[:1])
        x, hist = tv_pdhg(op.A, op.A_adjoint, yd, x0.float(), weight=lam,
                          norm_sq=norm_sq * 1.01, steps=steps, tol=tol)
    if callback is not None:
        callback({"stage": "tv", "step": steps, "total_steps": steps,
                  "loss": hist[-1] if hist else float("nan")})
    return _pack(x, t0, dev, "tv", dict(weight=lam, steps=steps, tol=tol, norm_sq=norm_sq),
                 history=hist)


def _wavelet_prox(x: torch.Tensor, thresh: float, wavelet: str, level: int | None) -> torch.Tensor:
    """Soft-thresholding of the orthonormal wavelet coefficients of each image (PyWavelets,
    periodised, so the transform is orthonormal and this is the exact prox of the L1 norm)."""
    import pywt

    arr = x.detach().cpu().double().numpy()
    out = np.empty_like(arr)
    for idx in np.ndindex(*arr.shape[:-2]):
        coeffs = pywt.wavedec2(arr[idx], wavelet, mode="periodization", level=level)
        shrunk = [coeffs[0]] + [tuple(pywt.threshold(c, thresh, mode="soft") for c in d)
                                for d in coeffs[1:]]
        out[idx] = pywt.waverec2(shrunk, wavelet, mode="periodization")
    return torch.from_numpy(out).to(x)


def l1_wavelet(y: torch.Tensor, operator: nn.Module, *, weight: float | None = None,
               wavelet: str = "db4", level: int | None = None, steps: int = 200, tol: float = 1e-5,
               device: str = "auto", callback: C.ProgressCallback | None = None,
               **extra: Any) -> Reconstruction:
    """L1-wavelet regularised least squares for any linear operator (FISTA): the classical
    compressed-sensing MRI reconstruction (Lustig et al. 2007), ``1/2 ||A x - y||^2 + lambda
    ||W x||_1`` with ``W`` an orthonormal wavelet transform whose approximation band is not
    penalised.

    Args:
        y: measurements ``[B, ...]``.
        operator: linear operator.
        weight: ``lambda``. Default ``None``: ``max(2 sigma, 0.01)`` from the operator's noise
            std, the rule of :func:`tv`.
        wavelet: PyWavelets wavelet name. Default ``'db4'``.
        level: Decomposition levels. Default ``None``: as many as the image size allows for
            the wavelet (``pywt.dwt_max_level``; 4 for db4 on 128 pixels).
        steps: maximum FISTA iterations. Default 200.
        tol: relative-change stopping tolerance. Default 1e-5.
        device: ``'auto'``, ``'cpu'`` or ``'cuda'`` (the wavelet step runs on the CPU).
        callback: receives one final progress report.
    """
    _no_extra(extra, "l1_wavelet")
    t0 = time.perf_counter()
    C.check_positive("steps", steps, integer=True)
    C.check_positive("tol", tol, allow_zero=True)  # tol=nan never stopped, tol=-1 neither
    if level is not None:  # -1 and 2.5 reached pywt's own errors
        C.check_positive("level", level, integer=True)
    try:
        import pywt

        pywt.Wavelet(wavelet)
    except ValueError as exc:
        raise MedreconInputError(f"unknown wavelet {wavelet!r}; expected a PyWavelets "
                                 "discrete wavelet name such as 'db4', 'haar', 'sym8'.") from exc
    yd, op, dev, back = _prepare(y, operator, device)
    s = C.noise_sigma(operator)
    lam = max(2.0 * s, 0.01) if weight is None else C.check_positive("weight", weight)
    x = (back.real if back.is_complex() else back).float()
    with torch.no_grad():
        norm_sq = (op.compute_norm_squared(x[:1], max_iter=50, tol=1e-4)
                   if hasattr(op, "compute_norm_squared") else _power_norm_sq(op, x[:1]))
        t = 1.0 / (float(norm_sq) * 1.01)
        z, mom, hist = x.clone(), 1.0, []
        for _ in range(steps):
            r = op.A(z) - yd
            g = op.A_adjoint(r)
            x_new = _wavelet_prox(z - t * (g.real if g.is_complex() else g), lam * t, wavelet,
                                  level)
            mom_new = (1 + math.sqrt(1 + 4 * mom * mom)) / 2
            z = x_new + ((mom - 1) / mom_new) * (x_new - x)
            change = float((x_new - x).norm() / x.norm().clamp_min(1e-12))
            x, mom = x_new, mom_new
            hist.append(float(0.5 * r.abs().pow(2).sum()))
            if change < tol:
                break
    if callback is not None:
        callback({"stage": "l1_wavelet", "step": len(hist), "total_steps": steps,
                  "loss": hist[-1] if hist else float("nan")})
    return _pack(x, t0, dev, "l1_wavelet", dict(weight=lam, wavelet=wavelet, level=level,
                                                steps=len(hist), tol=tol), history=hist)


def _power_norm_sq(op, x_like, iters: int = 50) -> float:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(x_like.shape, generator=g).to(x_like)
    val = 0.0
    for _ in range(iters):
        x = x / torch.linalg.vector_norm(x)
        z = op.A_adjoint(op.A(x))
        z = z.real if z.is_complex() else z
        val = float(torch.linalg.vector_norm(z))
        x = z
    return val


# ----------------------------------------------------------------------------------------------
# Inpainting and deconvolution


def sampling_mask(op: nn.Module, like: torch.Tensor) -> torch.Tensor:
    """Observed-pixel mask of a masking operator: ``A^H A 1 > 1/2`` (bool, image shape)."""
    with torch.no_grad():
        m = op.A_adjoint(op.A(torch.ones_like(like)))
    m = m.real if m.is_complex() else m
    return m > 0.5


def biharmonic(y: torch.Tensor, operator: nn.Module, *, device: str = "auto",
               **extra: Any) -> Reconstruction:
    """Biharmonic inpainting (``skimage.restoration.inpaint_biharmonic``) of masked pixels.

    The known pixels are ``A^H y`` where the operator samples (``A^H A 1 > 1/2``).
    """
    _no_extra(extra, "biharmonic")
    from skimage.restoration import inpaint_biharmonic  # noqa: PLC0415

    t0 = time.perf_counter()
    yd, op, dev, back = _prepare(y, operator, device)
    if back.is_complex():
        raise MedreconInputError("biharmonic needs a real masking operator (Inpainting).")
    known = sampling_mask(op, back).expand_as(back)
    img = back.detach().cpu().double().numpy()
    unknown = (~known).cpu().numpy()
    out = np.empty_like(img)
    for b in range(img.shape[0]):
        for c in range(img.shape[1]):
            if unknown[b, c].all():
                raise MedreconInputError("the inpainting mask observes no pixel of a slice.")
            out[b, c] = inpaint_biharmonic(img[b, c], unknown[b, c]) if unknown[b, c].any() \
                else img[b, c]
    return _pack(torch.from_numpy(out).float(), t0, dev, "biharmonic")


#: Gain of the automatic Wiener noise-to-signal ratio over the white-signal value
#: ``sigma^2 / var(y)``: image power is concentrated at low frequencies, where the kernel
#: passes it, so the white estimate under-damps the high frequencies. 4 was the best of
#: {1, 4, 16} on a 24x24 smooth + block phantom, 5x5 uniform blur, sigma = 0.04 (MSE 0.011 vs
#: 0.016 for 1 and 0.021 for 16; the blurred input had 0.016). Re-tune on real slices.
WIENER_NSR_GAIN = 4.0


def wiener(y: torch.Tensor, operator: nn.Module, *, balance: float | None = None,
           device: str = "auto", **extra: Any) -> Reconstruction:
    """Wiener deconvolution with the operator's blur kernel (``operator.kernel``).

    ``X = conj(K) Y / (|K|^2 + balance)`` in the Fourier domain, on the mirror-extended
    ``2H x 2W`` image (periodic without jumps, so no wrap-around artefacts).

    Args:
        y: blurred images ``[B, C, H, W]``.
        operator: a :class:`medrecon.physics.Blur` (stride 1) with a ``kernel`` buffer.
        balance: noise-to-signal power ratio. Default ``None``:
            ``WIENER_NSR_GAIN * sigma^2 / var(y)`` from the operator's noise std, floored at
            1e-3 (clean data still needs a little damping of the kernel's near-zeros).
        device: ``'auto'``, ``'cpu'`` or ``'cuda'``.
    """
    _no_extra(extra, "wiener")
    t0 = time.perf_counter()
    yd, op, dev, back = _prepare(y, operator, device)
    kernel = getattr(op, "kernel", None)
    if not isinstance(kernel, torch.Tensor) or kernel.ndim != 2:
        raise MedreconInputError(
            f"wiener needs a blur operator with a 2D 'kernel' buffer; got "
            f"{type(operator).__name__}. Use 'tv' for other operators.")
    if tuple(back.shape) != tuple(yd.shape):
        raise MedreconInputError(
            f"wiener needs a same-size blur (y {tuple(yd.shape)} vs images "
            f"{tuple(back.shape)}); use 'tv' for blur with decimation.")
    yv = yd.float()
    s = C.noise_sigma(operator)
    if balance is None:
        var = yv.var(dim=(-2, -1), keepdim=True).clamp_min(1e-8)
        nsr = (WIENER_NSR_GAIN * s * s / var).clamp_min(1e-3)
    else:
        nsr = torch.tensor(C.check_positive("balance", balance, allow_zero=True), device=dev)
    kh, kw = kernel.shape
    H, W = yv.shape[-2:]
    # symmetric (mirror) extension to 2H x 2W: periodic without jumps, so the circular FFT
    # deconvolution adds no wrap-around edges
    if getattr(op, "padding", "reflect") == "circular":
        yp = yv  # the forward model is circular already
    else:
        yp = torch.cat([yv, yv.flip(-1)], -1)
        yp = torch.cat([yp, yp.flip(-2)], -2)
    Hp, Wp = yp.shape[-2:]
    psf = torch.zeros(Hp, Wp, device=dev)
    psf[:kh, :kw] = kernel.float()
    psf = torch.roll(psf, shifts=(-((kh - 1) // 2), -((kw - 1) // 2)), dims=(0, 1))
    K = torch.fft.rfft2(psf)
    Y = torch.fft.rfft2(yp)
    X = K.conj() * Y / (K.abs() ** 2 + nsr)
    x = torch.fft.irfft2(X, s=(Hp, Wp))[..., :H, :W]
    return _pack(x, t0, dev, "wiener", dict(balance=balance, noise_sigma=s))
