"""Blur and anti-aliasing kernels, and the strided convolution core shared by SR and blur.

Kernels are 2D ``float32`` tensors that sum to one. The convolution core implements
``y = decimate_s(k * x)`` as a strided ``conv2d`` on a padded image and its exact adjoint as a
``conv_transpose2d`` followed by the adjoint of the padding (border contributions folded back),
so the dot-product test holds to rounding error for every padding mode.

Alignment: output sample ``i`` sees the input window starting at ``i * s + floor((s - K) / 2)``
(``K`` the kernel size, ``s`` the stride). For a symmetric kernel whose size has the parity of
``s`` the window is centred on the block ``[i s, (i + 1) s)`` (the ``imresize`` convention); for
``s = 1`` it is the usual "same" convolution with the centre at index ``(K - 1) // 2``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812

from medrecon.errors import MedreconInputError
from medrecon.physics._utils import as_float, as_positive_int

__all__ = [
    "PADDINGS",
    "bicubic_kernel",
    "box_kernel",
    "conv_down",
    "conv_down_adjoint",
    "gaussian_kernel",
    "uniform_kernel",
]

#: Boundary handling of the convolution operators.
PADDINGS: tuple[str, ...] = ("reflect", "circular", "zeros")


def uniform_kernel(k: int) -> torch.Tensor:
    """Uniform ``k x k`` kernel (all entries ``1 / k^2``).

    Args:
        k: Side length, a positive integer.

    Returns:
        ``float32`` tensor ``[k, k]``.
    """
    k = as_positive_int(k, "k")
    return torch.full((k, k), 1.0 / (k * k), dtype=torch.float32)


def box_kernel(factor: int) -> torch.Tensor:
    """Box (block-average) anti-aliasing kernel for decimation by ``factor``: ``uniform(factor)``."""
    return uniform_kernel(factor)


def gaussian_kernel(sigma: float, *, size: int | None = None) -> torch.Tensor:
    """Isotropic Gaussian kernel, normalised to sum one.

    Args:
        sigma: Standard deviation in pixels, ``>= 0`` (``0`` gives a delta).
        size: Side length. Default ``2 * ceil(3 * sigma) + 1``. An even size samples the
            Gaussian at half-integer offsets (centred between pixels).

    Returns:
        ``float32`` tensor ``[size, size]``.
    """
    sigma = as_float(sigma, "sigma", minimum=0.0)
    size = 2 * math.ceil(3.0 * sigma) + 1 if size is None else as_positive_int(size, "size")
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    if sigma == 0.0:
        g = (t.abs() < 0.5 + 1e-12).to(torch.float64)
        if g.sum() == 0:  # even size: split the delta between the two centre pixels
            g = (t.abs() <= 0.5 + 1e-12).to(torch.float64)
    else:
        g = torch.exp(-0.5 * (t / sigma) ** 2)
    g = g / g.sum()
    return torch.outer(g, g).to(torch.float32)


def _cubic(t: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    """Keys' cubic convolution kernel (``a = -0.5``: MATLAB/PIL bicubic)."""
    t = t.abs()
    t2, t3 = t * t, t * t * t
    near = (a + 2) * t3 - (a + 3) * t2 + 1
    far = a * t3 - 5 * a * t2 + 8 * a * t - 4 * a
    return torch.where(t <= 1, near, torch.where(t < 2, far, torch.zeros_like(t)))


def bicubic_kernel(factor: int) -> torch.Tensor:
    """Anti-aliased bicubic kernel for decimation by ``factor`` (MATLAB ``imresize`` style).

    The cubic (Keys, ``a = -0.5``) is stretched by ``factor`` and sampled at the input pixel
    offsets from the block centre: ``4 * factor`` taps for an even factor, ``4 * factor - 1``
    for an odd one (so the window is centred on the block, see the module docstring).

    Args:
        factor: Integer decimation factor ``>= 1`` (``1`` gives a delta).

    Returns:
        ``float32`` tensor ``[K, K]`` summing to one.
    """
    factor = as_positive_int(factor, "factor")
    size = 4 * factor - (factor % 2)
    t = (torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0) / factor
    w = _cubic(t)
    w = w / w.sum()
    return torch.outer(w, w).to(torch.float32)


def check_kernel(kernel: object, name: str = "kernel") -> torch.Tensor:
    """Check a user kernel: a finite real 2D tensor/array, returned as ``float32``."""
    if not isinstance(kernel, torch.Tensor):
        try:
            kernel = torch.as_tensor(kernel)
        except (TypeError, ValueError, RuntimeError):
            raise MedreconInputError(
                f"{name} must be a 2D tensor or array, got {type(kernel).__name__}.") from None
    if kernel.ndim != 2 or kernel.is_complex() or kernel.numel() == 0:
        raise MedreconInputError(
            f"{name} must be a non-empty real 2D tensor [kh, kw], got shape "
            f"{tuple(kernel.shape)} and dtype {kernel.dtype}."
        )
    k = kernel.detach().to(torch.float32)
    if not bool(torch.isfinite(k).all()):
        raise MedreconInputError(f"{name} contains NaN/Inf values; expected finite weights.")
    if float(k.abs().sum()) == 0.0:
        raise MedreconInputError(f"{name} is all zeros; expected a kernel with nonzero weights.")
    return k


def _geometry(n: int, size: int, stride: int) -> tuple[int, int, int, int]:
    """Padding before/after, window start in the padded signal, number of outputs."""
    n_out = n // stride
    off = (stride - size) // 2  # floor division: floor((s - K) / 2)
    before = max(0, -off)
    last = (n_out - 1) * stride + off + size - 1
    after = max(0, last - (n - 1))
    return before, after, off + before, n_out


def check_padding_fits(h: int, w: int, kh: int, kw: int, stride: int, padding: str) -> None:
    """Raise when the kernel needs more padding than the image size allows."""
    pt, pb, _, _ = _geometry(h, kh, stride)
    pl, pr, _, _ = _geometry(w, kw, stride)
    limit_h, limit_w = (h - 1, w - 1) if padding == "reflect" else (h, w)
    if padding != "zeros" and (max(pt, pb) > limit_h or max(pl, pr) > limit_w):
        raise MedreconInputError(
            f"kernel of size {(kh, kw)} is too large for {padding!r} padding of an image of size "
            f"{(h, w)} (padding {(max(pt, pb), max(pl, pr))} needed, at most "
            f"{(limit_h, limit_w)} possible): the image is too small for this kernel (on the "
            f"command line: a smaller --scale or a larger image; in Python also "
            f"padding='zeros')."
        )


def _pad1d_adjoint(z: torch.Tensor, before: int, after: int, n: int, mode: str, dim: int
                   ) -> torch.Tensor:
    """Adjoint of padding ``n`` samples by ``before``/``after`` along ``dim`` (-1 or -2)."""
    core = z.narrow(dim, before, n)
    if mode == "zeros" or (before == 0 and after == 0):
        return core
    out = core
    if mode == "circular":
        if before:
            out = out + F.pad(z.narrow(dim, 0, before), _pad_spec(dim, n - before, 0))
        if after:
            out = out + F.pad(z.narrow(dim, before + n, after), _pad_spec(dim, 0, n - after))
        return out
    # reflect (no edge repeat): padded index before - j (j = 1..before) mirrors input index j,
    # padded index before + n - 1 + j mirrors input index n - 1 - j.
    if before:
        head = z.narrow(dim, 0, before).flip(dim)  # mirrors of input indices 1..before
        out = out + F.pad(head, _pad_spec(dim, 1, n - 1 - before))
    if after:
        tail = z.narrow(dim, before + n, after).flip(dim)  # mirrors of n-1-after..n-2
        out = out + F.pad(tail, _pad_spec(dim, n - 1 - after, 1))
    return out


def _pad_spec(dim: int, before: int, after: int) -> tuple[int, ...]:
    return (before, after) if dim == -1 else (0, 0, before, after)


def _pad(x: torch.Tensor, pads: tuple[int, int, int, int], mode: str) -> torch.Tensor:
    if not any(pads):
        return x
    return F.pad(x, pads, mode="constant" if mode == "zeros" else mode)


def conv_down(x: torch.Tensor, kernel: torch.Tensor, stride: int, padding: str) -> torch.Tensor:
    """``decimate_stride(kernel * x)`` with the given boundary handling.

    Args:
        x: ``[B, C, H, W]`` real tensor.
        kernel: ``[kh, kw]`` convolution kernel (true convolution, not correlation).
        stride: Decimation factor.
        padding: One of :data:`PADDINGS`.

    Returns:
        ``[B, C, H // stride, W // stride]``.
    """
    b, c, h, w = x.shape
    kh, kw = kernel.shape
    pt, pb, sh, nh = _geometry(h, kh, stride)
    pl, pr, sw, nw = _geometry(w, kw, stride)
    xp = _pad(x.reshape(b * c, 1, h, w), (pl, pr, pt, pb), padding)
    xp = xp[..., sh: sh + (nh - 1) * stride + kh, sw: sw + (nw - 1) * stride + kw]
    weight = kernel.flip((0, 1)).to(x.dtype)[None, None]
    y = F.conv2d(xp, weight, stride=stride)
    return y.reshape(b, c, nh, nw)


def conv_down_adjoint(y: torch.Tensor, kernel: torch.Tensor, stride: int, padding: str,
                      img_size: tuple[int, int]) -> torch.Tensor:
    """Exact adjoint of :func:`conv_down` for images of size ``img_size``."""
    b, c = y.shape[:2]
    h, w = img_size
    kh, kw = kernel.shape
    pt, pb, sh, nh = _geometry(h, kh, stride)
    pl, pr, sw, nw = _geometry(w, kw, stride)
    weight = kernel.flip((0, 1)).to(y.dtype)[None, None]
    z = F.conv_transpose2d(y.reshape(b * c, 1, nh, nw), weight, stride=stride)
    hp, wp = h + pt + pb, w + pl + pr
    z = F.pad(z, (sw, wp - sw - z.shape[-1], sh, hp - sh - z.shape[-2]))
    z = _pad1d_adjoint(z, pt, pb, h, padding, -2)
    z = _pad1d_adjoint(z, pl, pr, w, padding, -1)
    return z.reshape(b, c, h, w)
