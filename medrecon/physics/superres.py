"""Super-resolution: anti-aliasing blur followed by decimation by an integer factor."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812

from medrecon.errors import MedreconInputError
from medrecon.physics._utils import (
    apply_real_linear,
    as_float,
    as_positive_int,
    as_size2,
    check_choice,
    check_image,
    check_spatial,
)
from medrecon.physics.base import LinearPhysics
from medrecon.physics.kernels import (
    PADDINGS,
    bicubic_kernel,
    box_kernel,
    check_kernel,
    check_padding_fits,
    conv_down,
    conv_down_adjoint,
    gaussian_kernel,
)
from medrecon.physics.noise import NoiseModel

__all__ = ["SR_KERNELS", "SuperResolution", "sr_kernel"]

#: Named anti-aliasing kernels of :class:`SuperResolution`.
SR_KERNELS: tuple[str, ...] = ("bicubic", "box", "gaussian")


def sr_kernel(name: str, factor: int, *, sigma: float | None = None) -> torch.Tensor:
    """The named anti-aliasing kernel for decimation by ``factor``.

    Args:
        name: ``'bicubic'`` (MATLAB ``imresize`` antialiasing, the IAGAN/BRGM setting),
            ``'box'`` (block average) or ``'gaussian'``.
        factor: Integer decimation factor.
        sigma: Width of the Gaussian in input pixels. Default ``max((factor - 1) / 2, 0.5)``
            for ``factor > 1`` (scikit-image's anti-aliasing rule), ignored by the others.

    Returns:
        ``float32`` kernel summing to one. The Gaussian has the parity of ``factor`` so that it
        is centred on each block.
    """
    check_choice(name, "kernel", SR_KERNELS)
    factor = as_positive_int(factor, "factor")
    if name == "bicubic":
        return bicubic_kernel(factor)
    if name == "box":
        return box_kernel(factor)
    if factor == 1 and sigma is None:
        return torch.ones(1, 1)
    sigma = max((factor - 1) / 2.0, 0.5) if sigma is None else as_float(sigma, "sigma",
                                                                         minimum=0.0)
    size = 2 * int(torch.ceil(torch.tensor(3.0 * sigma))) + 1
    if size % 2 != factor % 2:
        size += 1
    return gaussian_kernel(sigma, size=size)


class SuperResolution(LinearPhysics):
    """``y = decimate_factor(k * x)``: anti-aliased downsampling by an integer factor.

    Implemented as a strided convolution of the padded image (exact adjoint by
    ``conv_transpose2d`` and the adjoint of the padding). Output pixel ``i`` is the kernel
    average centred on the input block ``[i * factor, (i + 1) * factor)``. Real and complex
    images are supported (complex parts are filtered separately).

    Args:
        factor: Integer downsampling factor ``>= 1``.
        img_size: High-resolution image size ``H`` or ``(H, W)``, each divisible by ``factor``.
        kernel: ``'bicubic'`` (default), ``'box'``, ``'gaussian'`` or a 2D tensor (used as
            given, not normalised; a true convolution kernel).
        padding: Boundary handling ``'reflect'`` (default; no edge repeat, like
            ``numpy.pad(mode='reflect')``), ``'circular'`` or ``'zeros'``.
        sigma: Width of the ``'gaussian'`` kernel (see :func:`sr_kernel`). Default None.
        noise_model: Optional noise model of the measurements.

    Attributes:
        kernel: Buffer, the ``[kh, kw]`` kernel.
    """

    def __init__(self, factor: int, *, img_size: int | tuple[int, int],
                 kernel: str | torch.Tensor = "bicubic", padding: str = "reflect",
                 sigma: float | None = None, noise_model: NoiseModel | None = None) -> None:
        super().__init__(noise_model=noise_model)
        self.factor = as_positive_int(factor, "factor")
        self.img_size = as_size2(img_size, "img_size")
        self.padding = check_choice(padding, "padding", PADDINGS)
        h, w = self.img_size
        if isinstance(kernel, str) and kernel == "gaussian" and sigma is not None:
            side = 2 * math.ceil(3.0 * as_float(sigma, "sigma", minimum=0.0)) + 1
            if side > 2 * min(h, w) - 1:  # checked before the kernel is allocated
                raise MedreconInputError(
                    f"a gaussian SR kernel of sigma {sigma} ({side} pixels) does not fit "
                    f"{h}x{w} images (at most {2 * min(h, w) - 1}); choose a smaller sigma.")
        if self.factor > min(h, w):
            raise MedreconInputError(
                f"factor {self.factor} is larger than the image {h}x{w}: the low-resolution "
                "image would have no pixel. Use a factor of at most the image's smaller side.")
        if h % self.factor or w % self.factor:
            raise MedreconInputError(
                f"img_size {self.img_size} is not divisible by the factor {self.factor}; "
                f"expected multiples of {self.factor}. Crop or pad the image to e.g. "
                f"{(h - h % self.factor, w - w % self.factor)}."
            )
        k = sr_kernel(kernel, self.factor, sigma=sigma) if isinstance(kernel, str) else \
            check_kernel(kernel)
        check_padding_fits(h, w, k.shape[0], k.shape[1], self.factor, self.padding)
        self.register_buffer("kernel", k)

    @property
    def out_size(self) -> tuple[int, int]:
        """Low-resolution size ``(H // factor, W // factor)``."""
        return self.img_size[0] // self.factor, self.img_size[1] // self.factor

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        check_image(x, "x", finite=False)
        check_spatial(x, "x", self.img_size,
                      "Resize the image or build the operator with img_size=x.shape[-2:].")
        return apply_real_linear(
            lambda t: conv_down(t, self.kernel, self.factor, self.padding), x)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        check_image(y, "y", finite=False)
        check_spatial(y, "y", self.out_size,
                      f"Low-resolution measurements of this operator are {self.out_size}.")
        return apply_real_linear(
            lambda t: conv_down_adjoint(t, self.kernel, self.factor, self.padding,
                                        self.img_size), y)

    def A_dagger(self, y: torch.Tensor, *, tol: float = 1e-6, max_iter: int = 100,  # noqa: N802
                 method: str = "cg") -> torch.Tensor:
        """Pseudo-inverse by conjugate gradients, or a bicubic-upsampling approximation.

        Args:
            y: Low-resolution measurements ``[B, C, H // f, W // f]``.
            tol: CG tolerance. Default ``1e-6``.
            max_iter: CG iterations. Default 100.
            method: ``'cg'`` (default, the true ``A^+``) or ``'bicubic'`` (``F.interpolate``,
                the approximation of IAGAN's code: cheaper, not a pseudo-inverse).

        Returns:
            High-resolution images ``[B, C, H, W]``.
        """
        check_choice(method, "method", ("cg", "bicubic"))
        if method == "cg":
            return super().A_dagger(y, tol=tol, max_iter=max_iter)
        check_image(y, "y")
        check_spatial(y, "y", self.out_size)
        return apply_real_linear(
            lambda t: F.interpolate(t, size=self.img_size, mode="bicubic", align_corners=False),
            y)

    def extra_repr(self) -> str:
        return (f"factor={self.factor}, img_size={self.img_size}, kernel={tuple(self.kernel.shape)}"
                f", padding={self.padding!r}")


