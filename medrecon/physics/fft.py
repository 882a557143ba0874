"""Centred, orthonormal 2D FFT helpers over the last two dimensions.

``fft2c`` places the zero frequency at the array centre (index ``n // 2``) and treats the image
centre (index ``n // 2``) as the spatial origin, which is the k-space convention of fastMRI and
of scanner data. With ``norm='ortho'`` the transform is unitary, so ``ifft2c`` is both its
inverse and its adjoint. Odd sizes are handled exactly (``ifftshift`` before, ``fftshift``
after).
"""

from __future__ import annotations

import torch

from medrecon.errors import MedreconInputError

__all__ = ["fft2c", "ifft2c"]

_DIMS = (-2, -1)


def _check(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim < 2:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise MedreconInputError(
            f"{name} expects a tensor with at least 2 dims [..., H, W], got {got}."
        )


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2D FFT over the last two dims.

    Args:
        x: Real or complex tensor ``[..., H, W]`` (image space).

    Returns:
        Complex tensor ``[..., H, W]`` (k-space, DC at ``[H // 2, W // 2]``); ``complex64`` for
        ``float32``/``complex64`` input, ``complex128`` for double precision.
    """
    _check(x, "fft2c")
    x = torch.fft.ifftshift(x, dim=_DIMS)
    return torch.fft.fftshift(torch.fft.fft2(x, dim=_DIMS, norm="ortho"), dim=_DIMS)


def ifft2c(k: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2D inverse FFT over the last two dims (inverse and adjoint of fft2c).

    Args:
        k: Complex (or real) tensor ``[..., H, W]`` in centred k-space.

    Returns:
        Complex tensor ``[..., H, W]`` in image space.
    """
    _check(k, "ifft2c")
    k = torch.fft.ifftshift(k, dim=_DIMS)
    return torch.fft.fftshift(torch.fft.ifft2(k, dim=_DIMS, norm="ortho"), dim=_DIMS)
