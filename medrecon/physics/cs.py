"""Gaussian compressed sensing: a dense seeded ``N(0, 1/m)`` matrix on the flattened image."""

from __future__ import annotations

import torch

from medrecon.errors import MedreconInputError
from medrecon.physics._utils import as_float, as_positive_int, check_finite, check_image
from medrecon.physics.base import LinearPhysics
from medrecon.physics.noise import NoiseModel

__all__ = ["CompressedSensing"]


def _img_shape(img_shape: object) -> tuple[int, int, int]:
    shape = tuple(img_shape) if isinstance(img_shape, (tuple, list, torch.Size)) else None
    if shape is None or len(shape) not in (2, 3) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape):
        raise MedreconInputError(
            f"img_shape must be (C, H, W) or (H, W) of positive ints, got {img_shape!r}.")
    return (1, *shape) if len(shape) == 2 else shape  # type: ignore[return-value]


class CompressedSensing(LinearPhysics):
    """``y = M vec(x)`` with ``M`` an ``m x n`` matrix of i.i.d. ``N(0, 1/m)`` entries.

    ``n = C * H * W``. The matrix is drawn once from ``torch.Generator().manual_seed(seed)`` on
    the CPU (identical on every device) and stored as a buffer. The pseudo-inverse and its
    regularised version are exact through a cached eigendecomposition of the smaller Gram
    matrix (``M M^T`` when ``m <= n``, else ``M^T M``), computed in float64 at construction:
    ``A^+ = M^T U diag(1/s) U^T`` (or ``V diag(1/s) V^T M^T``), with eigenvalues below
    ``rcond * max`` treated as zero. "Exact" to the float32 storage of the factors: the Gram
    matrix squares the matrix's conditioning, so for ``m`` close to ``n`` (a nearly square,
    ill-conditioned Gaussian matrix) ``A A^+ A = A`` holds to about 1e-6 relative in float64
    and 1e-4 in float32, not to machine precision.

    Memory is ``m * n`` floats (e.g. 1 GiB for 25 % of a 256 x 256 image): intended for small
    images, as in the CSGM experiments.

    Args:
        m: Number of measurements, ``>= 1``.
        img_shape: ``(C, H, W)`` or ``(H, W)``.
        seed: Seed of the matrix. Default 0.
        rcond: Relative eigenvalue cutoff of the pseudo-inverse. Default ``1e-10``.
        noise_model: Optional noise model of the measurements.

    Attributes:
        matrix: Buffer ``[m, n]`` float32.
        gram_eigvecs: Buffer ``[k, k]`` (``k = min(m, n)``), eigenvectors of the Gram matrix.
        gram_eigvals: Buffer ``[k]``, its eigenvalues.
    """

    def __init__(self, m: int, *, img_shape: tuple[int, ...], seed: int = 0,
                 rcond: float = 1e-10, noise_model: NoiseModel | None = None) -> None:
        super().__init__(noise_model=noise_model)
        self.m = as_positive_int(m, "m")
        self.img_shape = _img_shape(img_shape)
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            # 1.7 became 1 and -1 wrapped around: the factory's rule
            raise MedreconInputError(f"seed must be an integer >= 0, got {seed!r}.")
        self.seed = seed
        self.rcond = as_float(rcond, "rcond", minimum=0.0)
        c, h, w = self.img_shape
        n = c * h * w
        from medrecon.io._paths import max_voxels

        if self.m * n > max_voxels():  # m=10**12 asked for terabytes before any check
            raise MedreconInputError(
                f"a compressed-sensing matrix of {self.m} x {n} values is more than medrecon "
                f"allocates (MEDRECON_MAX_VOXELS={max_voxels()}); use fewer measurements "
                "(m, or a ratio of at most a few).")
        g = torch.Generator().manual_seed(self.seed)
        mat = torch.randn(self.m, n, generator=g, dtype=torch.float32) / (self.m ** 0.5)
        m64 = mat.double()
        gram = m64 @ m64.T if self.m <= n else m64.T @ m64
        vals, vecs = torch.linalg.eigh(gram)
        self.register_buffer("matrix", mat)
        self.register_buffer("gram_eigvecs", vecs.float())
        self.register_buffer("gram_eigvals", vals.float())

    @property
    def n(self) -> int:
        """Image dimension ``C * H * W``."""
        return int(self.matrix.shape[1])

    def _check_x(self, x: torch.Tensor) -> None:
        check_image(x, "x", finite=False)
        if tuple(x.shape[1:]) != self.img_shape:
            raise MedreconInputError(
                f"x has shape {tuple(x.shape)}, expected [B, {', '.join(map(str, self.img_shape))}]"
                f" (the operator's img_shape).")

    def _check_y(self, y: torch.Tensor) -> None:
        if not isinstance(y, torch.Tensor) or y.ndim != 2 or y.shape[1] != self.m:
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise MedreconInputError(f"y must have shape [B, {self.m}], got {got}.")
        if not (y.is_floating_point() or y.is_complex()):  # int64 failed inside a product
            raise MedreconInputError(f"y must have a floating or complex dtype, got {y.dtype}. "
                                     "Convert with y.float().")

    def _mat(self, t: torch.Tensor) -> torch.Tensor:
        return self.matrix.to(t.real.dtype if t.is_complex() else t.dtype)

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        self._check_x(x)
        mat = self._mat(x)
        flat = x.reshape(x.shape[0], -1)
        if flat.is_complex():
            return torch.complex(flat.real @ mat.T, flat.imag @ mat.T)
        return flat @ mat.T

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        self._check_y(y)
        mat = self._mat(y)
        out = torch.complex(y.real @ mat, y.imag @ mat) if y.is_complex() else y @ mat
        return out.reshape(y.shape[0], *self.img_shape)

    def _spectral(self, y: torch.Tensor, eta: float) -> torch.Tensor:
        self._check_y(y)
        check_finite(y, "y")
        dt = y.real.dtype if y.is_complex() else y.dtype
        vecs, vals = self.gram_eigvecs.to(dt), self.gram_eigvals.to(dt)
        if eta > 0.0:
            inv = 1.0 / (vals + eta)
        else:
            keep = vals > self.rcond * vals.max()
            inv = torch.where(keep, 1.0 / torch.where(keep, vals, torch.ones_like(vals)),
                              torch.zeros_like(vals))

        def solve(t: torch.Tensor) -> torch.Tensor:
            if self.m <= self.n:  # M^T U diag(inv) U^T y
                return self.A_adjoint(((t @ vecs) * inv) @ vecs.T)
            # V diag(inv) V^T M^T y  ==  (M^T M + eta)^-1 M^T y
            b = self.A_adjoint(t).reshape(t.shape[0], -1)
            return (((b @ vecs) * inv) @ vecs.T).reshape(t.shape[0], *self.img_shape)

        if y.is_complex():
            return torch.complex(solve(y.real), solve(y.imag))
        return solve(y)

    def A_dagger(self, y: torch.Tensor, *, tol: float = 1e-6, max_iter: int = 100  # noqa: N802
                 ) -> torch.Tensor:
        """Exact pseudo-inverse from the cached Gram eigendecomposition."""
        return self._spectral(y, 0.0)

    def A_dagger_reg(self, y: torch.Tensor, *, eta: float, tol: float = 1e-6,  # noqa: N802
                     max_iter: int = 100) -> torch.Tensor:
        """Exact ``M^T (M M^T + eta I)^-1 y`` from the cached eigendecomposition."""
        return self._spectral(y, as_float(eta, "eta", minimum=0.0))

    def extra_repr(self) -> str:
        return f"m={self.m}, img_shape={self.img_shape}, seed={self.seed}"
