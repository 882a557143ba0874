"""The prior's grid inside the forward model: exact, separable field-of-view resampling.

A StyleGAN2 prior makes ``R x R`` images with square pixels. A scan's slice (and the output
grid the user asked for) has any size and spacing. :class:`GridResample` is the linear map
from the prior's grid to such a grid over the same physical field of view: crop the part of
the ``R x R`` grid the slice's field of view covers (its ``content``, placed at ``offset``), then
resample it to ``out_size`` with antialiased bicubic interpolation (``align_corners=False``:
the outer pixel edges, i.e. the field of view, stay fixed).

It is written as two matrices, ``A x = Mr x Mc^T`` with ``Mr [H, R]`` and ``Mc [W, R]``, built
by resampling the identity, so it equals :func:`medrecon.transforms.resize_fov` of the cropped
content to float rounding, its adjoint ``Mr^T y Mc`` is exact, and so is its pseudo-inverse
``pinv(Mr) y pinv(Mc)^T``. Composed with an acquisition operator on the scan's own grid
(``SuperResolution``, ``Inpainting``, ``Blur``, ``Identity``), it lets the solvers compare the
generator's image with the measurements where they were measured, without resampling the data.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812

from medrecon.errors import MedreconInputError
from medrecon.physics._utils import as_size2, check_image, check_spatial
from medrecon.physics.base import LinearPhysics
from medrecon.physics.noise import NoiseModel

__all__ = ["GridResample", "resample_matrix"]


def resample_matrix(n_in: int, n_out: int, *, mode: str = "bicubic") -> torch.Tensor:
    """The ``[n_out, n_in]`` matrix of 1D field-of-view resampling (float64).

    Column ``j`` is the resampled unit vector ``e_j``: exactly the weights
    ``F.interpolate(..., align_corners=False, antialias=<shrinking>)`` applies along one axis.
    """
    if n_in < 1 or n_out < 1:
        raise MedreconInputError(f"resample sizes must be positive; got {n_in} -> {n_out}.")
    eye = torch.eye(n_in, dtype=torch.float64)[None, None]  # [1, 1, n_in, n_in]
    if n_in == n_out:
        return eye[0, 0].clone()
    if mode == "nearest":
        out = F.interpolate(eye, size=(n_out, n_in), mode="nearest-exact")
    else:
        out = F.interpolate(eye, size=(n_out, n_in), mode=mode, align_corners=False,
                            antialias=n_out < n_in)
    return out[0, 0].contiguous()


class GridResample(LinearPhysics):
    """``[B, C, R, R]`` prior grid -> ``[B, C, H, W]`` grid over the same field of view.

    Args:
        in_size: The prior grid ``R`` or ``(R, R)``.
        out_size: Output ``(H, W)``.
        content: ``(h, w)`` pixels of the input grid the field of view covers. Default: all.
        offset: ``(top, left)`` of the content in the input grid. Default ``(0, 0)``.
        mode: ``'bicubic'`` (default), ``'bilinear'`` or ``'nearest'``.
        noise_model: Optional noise model (rarely useful for a resampling).

    Attributes:
        Mr: Buffer ``[H, R]`` (rows).
        Mc: Buffer ``[W, R]`` (columns).
    """

    def __init__(self, in_size: int | tuple[int, int], out_size: int | tuple[int, int], *,
                 content: tuple[int, int] | None = None, offset: tuple[int, int] = (0, 0),
                 mode: str = "bicubic", noise_model: NoiseModel | None = None) -> None:
        super().__init__(noise_model=noise_model)
        self.in_size = as_size2(in_size, "in_size")
        self.out_size = as_size2(out_size, "out_size")
        content = self.in_size if content is None else as_size2(content, "content")
        t, l = int(offset[0]), int(offset[1])
        if t < 0 or l < 0 or t + content[0] > self.in_size[0] or l + content[1] > self.in_size[1]:
            raise MedreconInputError(
                f"content {content} at offset {(t, l)} does not fit the input grid "
                f"{self.in_size}; expected a window inside it.")
        self.content, self.offset, self.mode = content, (t, l), mode
        mr = torch.zeros(self.out_size[0], self.in_size[0], dtype=torch.float64)
        mc = torch.zeros(self.out_size[1], self.in_size[1], dtype=torch.float64)
        mr[:, t:t + content[0]] = resample_matrix(content[0], self.out_size[0], mode=mode)
        mc[:, l:l + content[1]] = resample_matrix(content[1], self.out_size[1], mode=mode)
        self.register_buffer("Mr", mr.float())
        self.register_buffer("Mc", mc.float())
        # float64 copies for the exact pseudo-inverse (tiny: [R, H] and [R, W])
        self.register_buffer("Pr", torch.linalg.pinv(mr).float(), persistent=False)
        self.register_buffer("Pc", torch.linalg.pinv(mc).float(), persistent=False)

    @property
    def is_identity(self) -> bool:
        """True when the output grid is the input grid itself (no resampling at all)."""
        return self.out_size == self.in_size == self.content and self.offset == (0, 0)

    @staticmethod
    def _sandwich(x: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        dt = x.real.dtype if x.is_complex() else x.dtype
        left, right = left.to(device=x.device, dtype=dt), right.to(device=x.device, dtype=dt)
        if x.is_complex():
            return torch.complex(left @ x.real @ right.T, left @ x.imag @ right.T)
        return left @ x @ right.T

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        check_image(x, "x", finite=False)
        check_spatial(x, "x", self.in_size, "GridResample maps the prior's grid to the scan's.")
        return self._sandwich(x, self.Mr, self.Mc)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        check_image(y, "y", finite=False)
        check_spatial(y, "y", self.out_size)
        return self._sandwich(y, self.Mr.T, self.Mc.T)

    def A_dagger(self, y: torch.Tensor, *, tol: float = 1e-6, max_iter: int = 100  # noqa: N802
                 ) -> torch.Tensor:
        """Exact pseudo-inverse ``pinv(Mr) y pinv(Mc)^T`` (pinv of a Kronecker product)."""
        check_image(y, "y")
        check_spatial(y, "y", self.out_size)
        return self._sandwich(y, self.Pr, self.Pc)

    def extra_repr(self) -> str:
        return (f"in_size={self.in_size}, out_size={self.out_size}, content={self.content}, "
                f"offset={self.offset}, mode={self.mode!r}")
