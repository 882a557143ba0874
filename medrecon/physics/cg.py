"""Batched conjugate gradients for Hermitian positive (semi-)definite systems.

Used by :class:`~medrecon.physics.LinearPhysics` for pseudo-inverses without a closed form and by
the solvers (back-projection, regularised least squares). Each batch item is its own system:
step sizes are computed per item, so one hard image does not slow down the convergence test of
the others, and items that have converged stop moving.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from medrecon.errors import MedreconInputError

__all__ = ["CGInfo", "conjugate_gradient"]


@dataclasses.dataclass(frozen=True)
class CGInfo:
    """Convergence report of :func:`conjugate_gradient`.

    Attributes:
        iterations: Number of iterations run.
        converged: Whether every batch item reached the tolerance.
        relative_residual: Final ``||b - A x|| / ||b||`` per batch item, shape ``[B]``.
    """

    iterations: int
    converged: bool
    relative_residual: torch.Tensor


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Real part of the per-item inner product ``<a, b>``, shape ``[B, 1, ..., 1]``."""
    dims = tuple(range(1, a.ndim))
    prod = a.conj() * b if a.is_complex() else a * b
    return prod.sum(dim=dims, keepdim=True).real if prod.is_complex() else prod.sum(
        dim=dims, keepdim=True)


def conjugate_gradient(
    operator: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    *,
    x0: torch.Tensor | None = None,
    tol: float = 1e-6,
    max_iter: int = 100,
    return_info: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, CGInfo]:
    """Solve ``operator(x) = b`` for a Hermitian positive semi-definite linear ``operator``.

    The first dimension of ``b`` is a batch of independent systems. Starting from ``x0 = 0``
    on a consistent singular system, the iterates stay in the range of the operator, so CG
    returns the minimum-norm solution (this is what makes CG on the normal equations a
    pseudo-inverse). Differentiable through the iterations (no in-place updates).

    Args:
        operator: Linear map, Hermitian and positive (semi-)definite, shape-preserving.
        b: Right-hand side ``[B, ...]``, real or complex.
        x0: Initial guess of the shape of ``b``. Default zeros.
        tol: Stop when ``||b - A x|| <= tol * ||b||`` for every batch item. Default ``1e-6``.
            Floored at ``10 * eps`` of ``b``'s dtype (1.2e-6 in float32): below that the
            recursive residual no longer tracks the true one and the iterates drift away.
        max_iter: Maximum number of iterations. Default 100.
        return_info: Also return a :class:`CGInfo`. Default False.

    Returns:
        The solution ``x`` (shape of ``b``), and the :class:`CGInfo` when ``return_info``.
    """
    if not isinstance(b, torch.Tensor) or b.ndim < 1:
        raise MedreconInputError(f"b must be a tensor with a batch dim, got {type(b).__name__}.")
    if not (tol >= 0.0) or int(max_iter) < 0:
        raise MedreconInputError(
            f"tol must be >= 0 and max_iter >= 0, got tol={tol!r}, max_iter={max_iter!r}.")
    tol = max(float(tol), 10.0 * torch.finfo(b.real.dtype if b.is_complex() else b.dtype).eps)
    x = torch.zeros_like(b) if x0 is None else x0
    r = b - operator(x) if x0 is not None else b
    p = r
    rs = _dot(r, r)
    b_norm2 = _dot(b, b)
    thresh = (tol ** 2) * b_norm2
    # Items with b = 0 have the solution 0 and are converged from the start.
    active = rs > thresh
    iters = 0
    for iters in range(1, int(max_iter) + 1):
        if not bool(active.any()):
            iters -= 1
            break
        ap = operator(p)
        pap = _dot(p, ap)
        # Inactive or degenerate items take a zero step (p in the null space has p^H A p = 0).
        safe = active & (pap > 0)
        alpha = torch.where(safe, rs / torch.where(safe, pap, torch.ones_like(pap)),
                            torch.zeros_like(pap))
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = _dot(r, r)
        beta = torch.where(safe, rs_new / torch.where(safe, rs, torch.ones_like(rs)),
                           torch.zeros_like(rs))
        p = r + beta * p
        rs = rs_new
        active = safe & (rs > thresh)
    if not return_info:
        return x
    rel = (rs / b_norm2.clamp_min(torch.finfo(rs.dtype).tiny)).sqrt().reshape(-1).detach()
    return x, CGInfo(iterations=iters, converged=not bool(active.any()), relative_residual=rel)
