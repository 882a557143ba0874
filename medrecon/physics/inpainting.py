"""Inpainting: pixel-wise masking ``y = mask * x`` (``mask == 1`` marks OBSERVED pixels)."""

from __future__ import annotations

import os
from typing import Any

import torch

from medrecon.physics._utils import (
    as_float,
    as_mask_tensor,
    check_broadcast,
    check_image,
    mask_to_4d,
)
from medrecon.physics.base import LinearPhysics
from medrecon.physics.noise import NoiseModel

__all__ = ["Inpainting"]


class Inpainting(LinearPhysics):
    """``y = mask * x``: the measurements keep the image shape with zeros at missing pixels.

    ``A`` is an orthogonal projection, so ``A^H = A^+ = A`` and the regularised pseudo-inverse
    is ``mask * y / (1 + eta)`` (all exact).

    Args:
        mask: 0/1 (or bool) tensor/array ``[H, W]``, ``[C, H, W]`` or ``[B, C, H, W]`` with
            ``1 = observed``, or a path to a mask file read by
            :func:`medrecon.physics.masks.load_mask` (nonzero = observed; for files that mark
            missing pixels use :func:`~medrecon.physics.masks.missing_to_observed` first).
        noise_model: Optional noise model of the measurements.

    Attributes:
        mask: Buffer ``[1|B, 1|C, H, W]`` of 0/1 ``float32``.
    """

    def __init__(self, mask: Any, *, noise_model: NoiseModel | None = None) -> None:
        super().__init__(noise_model=noise_model)
        if isinstance(mask, (str, os.PathLike)):
            from medrecon.physics.masks import load_mask

            mask = load_mask(mask)
        self.register_buffer("mask", mask_to_4d(as_mask_tensor(mask)))

    @property
    def img_size(self) -> tuple[int, int]:
        """Spatial size ``(H, W)`` of the mask."""
        return int(self.mask.shape[-2]), int(self.mask.shape[-1])

    def _masked(self, x: torch.Tensor, name: str) -> torch.Tensor:
        check_image(x, name, finite=False)
        check_broadcast(self.mask.shape, x, "mask", name)
        m = self.mask.to(x.real.dtype if x.is_complex() else x.dtype)
        return x * m

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        return self._masked(x, "x")

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        return self._masked(y, "y")

    def A_dagger(self, y: torch.Tensor, *, tol: float = 1e-6, max_iter: int = 100  # noqa: N802
                 ) -> torch.Tensor:
        """Exact pseudo-inverse ``mask * y``."""
        check_image(y, "y")
        return self._masked(y, "y")

    def A_dagger_reg(self, y: torch.Tensor, *, eta: float, tol: float = 1e-6,  # noqa: N802
                     max_iter: int = 100) -> torch.Tensor:
        """Exact ``mask * y / (1 + eta)``."""
        eta = as_float(eta, "eta", minimum=0.0)
        check_image(y, "y")
        return self._masked(y, "y") / (1.0 + eta)

    def extra_repr(self) -> str:
        frac = float(self.mask.mean()) if self.mask.numel() else 0.0
        return f"mask={tuple(self.mask.shape)}, observed={frac:.3f}"


