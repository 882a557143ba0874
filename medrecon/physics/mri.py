"""Cartesian MRI: subsampled centred orthonormal Fourier transform, single and multi coil."""

from __future__ import annotations

from typing import Any

import torch

from medrecon.errors import MedreconInputError
from medrecon.physics._utils import (
    as_float,
    as_mask_tensor,
    check_broadcast,
    check_image,
    complex_dtype,
    mask_to_4d,
)
from medrecon.physics.base import LinearPhysics
from medrecon.physics.fft import fft2c, ifft2c
from medrecon.physics.noise import NoiseModel

__all__ = ["MRI", "MultiCoilMRI", "SubsampledFourier"]


class MRI(LinearPhysics):
    """Single-coil Cartesian MRI ``y = mask * fft2c(x)`` (complex-linear).

    ``fft2c`` is centred and orthonormal, so ``A A^H = diag(mask)`` and the zero-filled inverse
    FFT ``ifft2c(mask * y)`` is the exact pseudo-inverse (and equals the adjoint). The operator
    is complex-linear: real images are accepted and give complex64 k-space; adjoint and
    pseudo-inverse return complex images (take ``.real`` / ``.abs()`` for display; for real
    images the real-linear adjoint is ``A_adjoint(y).real``).

    Args:
        mask: 0/1 k-space sampling mask ``[H, W]``, ``[C, H, W]`` or ``[B, C, H, W]``
            (``1`` = acquired; centred, DC at ``[H // 2, W // 2]``), e.g. from
            :func:`medrecon.physics.masks.random_lines`.
        noise_model: Optional noise model; :class:`GaussianNoise` adds complex noise to the
            acquired samples only.

    Attributes:
        mask: Buffer ``[1|B, 1|C, H, W]`` of 0/1 ``float32``.
    """

    def __init__(self, mask: Any, *, noise_model: NoiseModel | None = None) -> None:
        super().__init__(noise_model=noise_model)
        self.register_buffer("mask", mask_to_4d(as_mask_tensor(mask)))

    @property
    def img_size(self) -> tuple[int, int]:
        """Spatial size ``(H, W)``."""
        return int(self.mask.shape[-2]), int(self.mask.shape[-1])

    @property
    def acceleration(self) -> float:
        """Nominal acceleration ``numel / acquired``."""
        return float(self.mask.numel() / max(float(self.mask.sum()), 1.0))

    def _mask_for(self, t: torch.Tensor, name: str) -> torch.Tensor:
        check_image(t, name, finite=False)
        check_broadcast(self.mask.shape, t, "mask", name)
        return self.mask.to(t.real.dtype if t.is_complex() else t.dtype)

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        m = self._mask_for(x, "x")
        return fft2c(x) * m

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        m = self._mask_for(y, "y")
        return ifft2c(y * m)

    def A_dagger(self, y: torch.Tensor, *, tol: float = 1e-6, max_iter: int = 100  # noqa: N802
                 ) -> torch.Tensor:
        """Exact pseudo-inverse: the zero-filled inverse FFT ``ifft2c(mask * y)``."""
        check_image(y, "y")
        return self.A_adjoint(y)

    def A_dagger_reg(self, y: torch.Tensor, *, eta: float, tol: float = 1e-6,  # noqa: N802
                     max_iter: int = 100) -> torch.Tensor:
        """Exact ``ifft2c(mask * y) / (1 + eta)``."""
        eta = as_float(eta, "eta", minimum=0.0)
        check_image(y, "y")
        return self.A_adjoint(y) / (1.0 + eta)

    def measure(self, x: torch.Tensor, *, generator: torch.Generator | None = None
                ) -> torch.Tensor:
        """``A(x)`` plus noise on the acquired samples (unacquired ones stay exactly zero)."""
        y = super().measure(x, generator=generator)
        return y * self.mask.to(y.real.dtype) if self.noise_model is not None else y

    def extra_repr(self) -> str:
        return f"mask={tuple(self.mask.shape)}, acceleration={self.acceleration:.2f}"


#: Alias: the IAGAN paper's "subsampled Fourier" compressed sensing is single-coil MRI.
SubsampledFourier = MRI


class MultiCoilMRI(LinearPhysics):
    """Multi-coil SENSE ``y_c = mask * fft2c(S_c x)`` with given coil sensitivity maps.

    Images are ``[B, 1, H, W]`` (one complex/real channel), measurements ``[B, N_coils, H, W]``
    complex. The adjoint is ``sum_c conj(S_c) ifft2c(mask * y_c)``; the pseudo-inverse uses
    conjugate gradients (no closed form with undersampling), which stop at ``max_iter``
    (default 100) whether or not ``tol`` was reached: with random lines and a few coils it may
    need more (a 16 x 12 image, 4 coils: relative residual ~5e-5 at 100 iterations, converged
    at ~200), so pass ``max_iter=300`` where ``A A^+ A = A`` must hold tightly.

    Args:
        mask: 0/1 k-space mask ``[H, W]`` (shared by the coils) or ``[N_coils, H, W]``.
        sensitivity_maps: Complex maps ``[N_coils, H, W]`` or ``[B, N_coils, H, W]``.
        noise_model: Optional noise model (complex Gaussian on acquired samples).

    Attributes:
        mask: Buffer ``[1, 1|N_coils, H, W]``.
        sensitivity_maps: Buffer ``[1|B, N_coils, H, W]`` complex64.
    """

    def __init__(self, mask: Any, sensitivity_maps: torch.Tensor, *,
                 noise_model: NoiseModel | None = None) -> None:
        super().__init__(noise_model=noise_model)
        m = as_mask_tensor(mask)
        if m.ndim not in (2, 3):
            raise MedreconInputError(
                f"mask must be [H, W] or [N_coils, H, W], got shape {tuple(m.shape)}.")
        if not isinstance(sensitivity_maps, torch.Tensor) or sensitivity_maps.ndim not in (3, 4):
            got = tuple(sensitivity_maps.shape) if isinstance(sensitivity_maps, torch.Tensor) \
                else type(sensitivity_maps).__name__
            raise MedreconInputError(
                f"sensitivity_maps must be a tensor [N_coils, H, W] or [B, N_coils, H, W], "
                f"got {got}.")
        s = sensitivity_maps.detach()
        s = (s if s.ndim == 4 else s[None]).to(torch.complex64)
        if not bool(torch.isfinite(torch.view_as_real(s)).all()):
            raise MedreconInputError("sensitivity_maps contain NaN/Inf values.")
        m4 = mask_to_4d(m)
        if m4.shape[-2:] != s.shape[-2:] or m4.shape[1] not in (1, s.shape[1]):
            raise MedreconInputError(
                f"mask of shape {tuple(m.shape)} does not match sensitivity maps of shape "
                f"{tuple(s.shape)}: expected [H, W] or [N_coils, H, W] with the maps' H, W "
                f"and N_coils.")
        self.register_buffer("mask", m4)
        self.register_buffer("sensitivity_maps", s)

    @property
    def img_size(self) -> tuple[int, int]:
        """Spatial size ``(H, W)``."""
        return int(self.mask.shape[-2]), int(self.mask.shape[-1])

    def _maps(self, t: torch.Tensor) -> torch.Tensor:
        return self.sensitivity_maps.to(complex_dtype(t.dtype))

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        check_image(x, "x", finite=False)
        s = self._maps(x)
        if x.shape[1] != 1 or x.shape[-2:] != s.shape[-2:] or s.shape[0] not in (1, x.shape[0]):
            raise MedreconInputError(
                f"x of shape {tuple(x.shape)} does not match the sensitivity maps "
                f"{tuple(s.shape)}: expected [B, 1, {s.shape[-2]}, {s.shape[-1]}].")
        m = self.mask.to(s.real.dtype)
        return fft2c(x * s) * m

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        check_image(y, "y", finite=False)
        s = self._maps(y)
        check_broadcast(s.shape, y, "sensitivity maps", "y")
        m = self.mask.to(s.real.dtype)
        return (s.conj() * ifft2c(y * m)).sum(dim=1, keepdim=True)

    def measure(self, x: torch.Tensor, *, generator: torch.Generator | None = None
                ) -> torch.Tensor:
        """``A(x)`` plus noise on the acquired samples."""
        y = super().measure(x, generator=generator)
        return y * self.mask.to(y.real.dtype) if self.noise_model is not None else y

    def extra_repr(self) -> str:
        return f"coils={self.sensitivity_maps.shape[1]}, img_size={self.img_size}"
