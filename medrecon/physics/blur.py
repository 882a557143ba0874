"""Deblurring: convolution with a 2D kernel ("same" size) and reflect, circular or zero padding."""

from __future__ import annotations

import torch

from medrecon.physics._utils import (
    apply_real_linear,
    as_float,
    check_choice,
    check_finite,
    check_image,
    complex_dtype,
)
from medrecon.physics.base import LinearPhysics
from medrecon.physics.kernels import (
    PADDINGS,
    check_kernel,
    check_padding_fits,
    conv_down,
    conv_down_adjoint,
)
from medrecon.physics.noise import NoiseModel

__all__ = ["Blur"]


class Blur(LinearPhysics):
    """``y = k * x`` (true convolution, output of the image size, kernel centre at
    ``((kh - 1) // 2, (kw - 1) // 2)``).

    With ``padding='circular'`` the operator is diagonalised by the FFT, so :meth:`A_dagger` and
    :meth:`A_dagger_reg` are exact closed forms; otherwise they use conjugate gradients.

    Args:
        kernel: 2D kernel ``[kh, kw]`` (see :func:`uniform_kernel`, :func:`gaussian_kernel`);
            used as given (not normalised).
        padding: ``'reflect'`` (default; no edge repeat), ``'circular'`` or ``'zeros'``.
        rcond: Relative cutoff of the circular pseudo-inverse: frequencies with
            ``|k_hat| <= rcond * max |k_hat|`` are treated as not measured. Default ``1e-6``.
        noise_model: Optional noise model of the measurements.

    Attributes:
        kernel: Buffer, the ``[kh, kw]`` kernel.
    """

    def __init__(self, kernel: torch.Tensor, *, padding: str = "reflect", rcond: float = 1e-6,
                 noise_model: NoiseModel | None = None) -> None:
        super().__init__(noise_model=noise_model)
        self.padding = check_choice(padding, "padding", PADDINGS)
        self.rcond = as_float(rcond, "rcond", minimum=0.0)
        self.register_buffer("kernel", check_kernel(kernel))

    def _check(self, x: torch.Tensor, name: str) -> None:
        check_image(x, name, finite=False)
        kh, kw = self.kernel.shape
        check_padding_fits(x.shape[-2], x.shape[-1], kh, kw, 1, self.padding)

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        self._check(x, "x")
        return apply_real_linear(lambda t: conv_down(t, self.kernel, 1, self.padding), x)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        self._check(y, "y")
        size = (y.shape[-2], y.shape[-1])
        return apply_real_linear(
            lambda t: conv_down_adjoint(t, self.kernel, 1, self.padding, size), y)

    def otf(self, img_size: tuple[int, int], *, dtype: torch.dtype = torch.complex64
            ) -> torch.Tensor:
        """Transfer function of the circular convolution (non-centred ``fft2``), ``[H, W]``."""
        h, w = img_size
        kh, kw = self.kernel.shape
        psf = torch.zeros(h, w, dtype=dtype.to_real() if dtype.is_complex else dtype,
                          device=self.kernel.device)
        # each tap at its offset from the kernel's centre, modulo the image: a kernel larger
        # than the image wraps around as the circular convolution does
        rows = (torch.arange(kh, device=psf.device) - (kh - 1) // 2) % h
        cols = (torch.arange(kw, device=psf.device) - (kw - 1) // 2) % w
        psf.index_put_((rows[:, None].expand(kh, kw), cols[None, :].expand(kh, kw)),
                       self.kernel.to(psf.dtype), accumulate=True)
        return torch.fft.fft2(psf).to(dtype)

    def _fourier_filter(self, y: torch.Tensor, eta: float) -> torch.Tensor:
        otf = self.otf((y.shape[-2], y.shape[-1]), dtype=complex_dtype(y.dtype))
        mag2 = otf.abs() ** 2
        if eta > 0.0:
            filt = otf.conj() / (mag2 + eta)
        else:
            keep = otf.abs() > self.rcond * otf.abs().max()
            filt = torch.where(keep, otf.conj() / torch.where(keep, mag2, torch.ones_like(mag2)),
                               torch.zeros_like(otf))
        x = torch.fft.ifft2(torch.fft.fft2(y) * filt)
        return x if y.is_complex() else x.real

    def A_dagger(self, y: torch.Tensor, *, tol: float = 1e-6, max_iter: int = 100  # noqa: N802
                 ) -> torch.Tensor:
        """Pseudo-inverse: exact Fourier division for circular padding, CG otherwise.

        With zero or reflect padding the CG on the normal equations stops at ``max_iter``: a
        Gaussian blur is so ill-conditioned that ``A A^+ A = A`` then holds only to about
        1e-2 relative (1e-3 or so at 1000 iterations), and back-projection with ``eta = 0``
        matches the measurements to that accuracy, not exactly."""
        if self.padding != "circular":
            return super().A_dagger(y, tol=tol, max_iter=max_iter)
        self._check(y, "y")
        check_finite(y, "y")
        return self._fourier_filter(y, 0.0)

    def A_dagger_reg(self, y: torch.Tensor, *, eta: float, tol: float = 1e-6,  # noqa: N802
                     max_iter: int = 100) -> torch.Tensor:
        """``A^H (A A^H + eta I)^-1 y``: exact (Wiener-like) for circular padding, CG otherwise."""
        eta = as_float(eta, "eta", minimum=0.0)
        if self.padding != "circular" or eta == 0.0:
            return super().A_dagger_reg(y, eta=eta, tol=tol, max_iter=max_iter)
        self._check(y, "y")
        check_finite(y, "y")
        return self._fourier_filter(y, eta)

    def extra_repr(self) -> str:
        return f"kernel={tuple(self.kernel.shape)}, padding={self.padding!r}"
