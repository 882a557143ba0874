"""Measurement noise models, seeded only through an explicit :class:`torch.Generator`.

A noise model is a small :class:`torch.nn.Module` (no buffers, no stored device) called as
``noise(y, generator=g)``. With ``generator=None`` a fresh, non-deterministically seeded
generator is used, so the global torch RNG is never read or advanced; pass a seeded generator for
reproducible measurements.
"""

from __future__ import annotations

import torch
from torch import nn

from medrecon.errors import MedreconInputError
from medrecon.physics._utils import as_float

__all__ = ["GaussianNoise", "NoiseModel", "RicianNoise", "randn_like"]


def randn_like(y: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal samples of the shape/dtype/device of real ``y`` from ``generator``.

    Samples are drawn on the generator's device and moved to ``y``'s device, so a CPU
    generator gives the same noise on CPU and CUDA.
    """
    if generator is None:
        generator = torch.Generator(device=y.device)
        generator.seed()  # OS entropy; the global RNG is not touched.
    if not isinstance(generator, torch.Generator):
        raise MedreconInputError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}. "
            f"Use torch.Generator().manual_seed(seed)."
        )
    n = torch.randn(y.shape, generator=generator, device=generator.device, dtype=y.dtype)
    return n.to(y.device)


class NoiseModel(nn.Module):
    """Base class: ``forward(y, *, generator=None)`` returns a noisy copy of ``y``."""

    sigma: float

    def forward(self, y: torch.Tensor, *, generator: torch.Generator | None = None
                ) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"sigma={self.sigma:g}"


class GaussianNoise(NoiseModel):
    """Additive white Gaussian noise ``y + sigma * n``.

    For complex measurements (k-space) real and imaginary parts each get independent
    ``N(0, sigma^2)`` noise (the usual thermal-noise model; the magnitude of a zero-filled image
    is then Rician distributed).

    Args:
        sigma: Standard deviation, in the units of the measurements (e.g. ``2 * 10 / 255`` for
            "10/255" noise on images in ``[-1, 1]``). Must be ``>= 0``.
    """

    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.sigma = as_float(sigma, "sigma", minimum=0.0)

    def forward(self, y: torch.Tensor, *, generator: torch.Generator | None = None
                ) -> torch.Tensor:
        if self.sigma == 0.0:
            return y
        if y.is_complex():
            re = randn_like(y.real, generator)
            im = randn_like(y.real, generator)
            return y + self.sigma * torch.complex(re, im)
        return y + self.sigma * randn_like(y, generator)


class RicianNoise(NoiseModel):
    """Rician noise for magnitude images: ``floor + |(y - floor) + sigma * (n1 + i n2)|``.

    Models magnitude MR images reconstructed from k-space with complex Gaussian noise. The
    measurements must be real magnitudes; ``floor`` is the value that stands for zero signal
    (``0`` for intensities, ``-1`` for images in the generator range ``[-1, 1]``).

    Args:
        sigma: Standard deviation of each of the two Gaussian components, ``>= 0``.
        floor: Value of zero signal in ``y``. Default ``0.0``.
    """

    def __init__(self, sigma: float, *, floor: float = 0.0) -> None:
        super().__init__()
        self.sigma = as_float(sigma, "sigma", minimum=0.0)
        self.floor = as_float(floor, "floor")

    def forward(self, y: torch.Tensor, *, generator: torch.Generator | None = None
                ) -> torch.Tensor:
        if y.is_complex():
            raise MedreconInputError(
                "RicianNoise applies to real magnitude measurements, got complex data "
                f"(dtype {y.dtype}). For k-space use GaussianNoise: complex Gaussian noise in "
                "k-space already gives Rician magnitude images."
            )
        if self.sigma == 0.0:
            return y
        n1 = randn_like(y, generator)
        n2 = randn_like(y, generator)
        s = y - self.floor
        return self.floor + torch.sqrt((s + self.sigma * n1) ** 2 + (self.sigma * n2) ** 2)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma:g}, floor={self.floor:g}"
