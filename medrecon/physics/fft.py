"""Centred, orthonormal 2D FFT helpers over the last two dimensions, from MONAI.

``fft2c`` places the zero frequency at the array centre (index ``n // 2``) and treats the image
centre (index ``n // 2``) as the spatial origin, which is the k-space convention of fastMRI and
of scanner data. With ``norm='ortho'`` the transform is unitary, so ``ifft2c`` is both its
inverse and its adjoint.

Both are thin wrappers over MONAI's :func:`monai.networks.blocks.fft_utils_t.fftn_centered_t`
and :func:`~monai.networks.blocks.fft_utils_t.ifftn_centered_t` (``spatial_dims=2``), which
compute ``fftshift(fft(ifftshift(x)), norm='ortho')`` exactly as medrecon did before: MONAI's
shifts roll by ``n // 2`` (``fftshift``) and ``(n + 1) // 2`` (``ifftshift``, equal to
``-(n // 2)`` modulo ``n``), so odd sizes give bit-identical results. MONAI's functions speak
"real tensor with a trailing real/imag dim of 2" for complex data, so complex input is passed as
``torch.view_as_real`` (``is_complex=True``), real input as is (``is_complex=False``), and the
result is turned back into a native complex tensor with ``torch.view_as_complex``. These are
views, so dtypes (``complex64`` for ``float32``/``complex64``, ``complex128`` for double) and
autograd are those of ``torch.fft``. What stays here is the input check and the complex
<-> real-pair conversion.
"""

from __future__ import annotations

import torch
from monai.networks.blocks.fft_utils_t import fftn_centered_t, ifftn_centered_t

from medrecon.errors import MedreconInputError

__all__ = ["fft2c", "ifft2c"]


def _to_monai(x: torch.Tensor, name: str) -> tuple[torch.Tensor, bool]:
    """Check ``[..., H, W]`` input; return MONAI's layout and its ``is_complex`` flag."""
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or 0 in x.shape[-2:]:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise MedreconInputError(
            f"{name} expects a tensor with at least 2 dims [..., H, W] and H, W > 0, got {got}."
        )
    if x.is_complex():
        return torch.view_as_real(x.resolve_conj()), True  # [..., H, W, 2]
    return x, False


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2D FFT over the last two dims.

    Args:
        x: Real or complex tensor ``[..., H, W]`` (image space).

    Returns:
        Complex tensor ``[..., H, W]`` (k-space, DC at ``[H // 2, W // 2]``); ``complex64`` for
        ``float32``/``complex64`` input, ``complex128`` for double precision.
    """
    xm, is_complex = _to_monai(x, "fft2c")
    return torch.view_as_complex(fftn_centered_t(xm, spatial_dims=2, is_complex=is_complex))


def ifft2c(k: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2D inverse FFT over the last two dims (inverse and adjoint of fft2c).

    Args:
        k: Complex (or real) tensor ``[..., H, W]`` in centred k-space.

    Returns:
        Complex tensor ``[..., H, W]`` in image space.
    """
    km, is_complex = _to_monai(k, "ifft2c")
    return torch.view_as_complex(ifftn_centered_t(km, spatial_dims=2, is_complex=is_complex))
