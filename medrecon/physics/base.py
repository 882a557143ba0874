"""Base classes of the forward operators: :class:`Physics`, :class:`LinearPhysics`, composition.

Conventions (see docs/architecture.md):

* Images are ``[B, C, H, W]`` tensors (float, or complex where natural); measurements have an
  operator-specific shape (complex64 k-space for MRI, ``[B, m]`` for compressed sensing).
* Masks, kernels and matrices are registered buffers; an operator never stores a device, so
  ``op.to(device)`` / ``op.double()`` just work. Buffers are cast to the input's precision at call
  time, so float64 checks (adjoint tests) run on a float32 operator.
* Per-call arguments never mutate an operator.
* Shape checks happen on every call (cheap); NaN/Inf checks (one device sync) happen at the user
  boundaries only: :meth:`Physics.measure`, :meth:`LinearPhysics.A_dagger` and
  :meth:`LinearPhysics.A_dagger_reg`, not in the ``A``/``A_adjoint`` calls of a solver loop.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medrecon.errors import MedreconInputError
from medrecon.physics._utils import as_float, check_finite, check_image
from medrecon.physics.cg import conjugate_gradient
from medrecon.physics.noise import NoiseModel

__all__ = [
    "ComposedLinearPhysics",
    "ComposedPhysics",
    "Identity",
    "LinearPhysics",
    "Physics",
    "compose",
]


def _check_noise_model(noise_model: Any) -> NoiseModel | None:
    if noise_model is not None and not isinstance(noise_model, NoiseModel):
        raise MedreconInputError(
            f"noise_model must be None, GaussianNoise(sigma) or RicianNoise(sigma), got "
            f"{type(noise_model).__name__}."
        )
    return noise_model


class Physics(nn.Module):
    """A forward operator ``y = A(x)`` with an optional noise model.

    Subclasses implement :meth:`A`. ``forward`` is ``A`` so an operator can be used like any
    module.

    Args:
        noise_model: ``GaussianNoise(sigma)``, ``RicianNoise(sigma)`` or ``None`` (noiseless).
    """

    def __init__(self, *, noise_model: NoiseModel | None = None) -> None:
        super().__init__()
        self.noise_model = _check_noise_model(noise_model)

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802 - standard notation
        """Apply the forward model to images ``x`` ``[B, C, H, W]``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`A`."""
        return self.A(x)

    def measure(self, x: torch.Tensor, *, generator: torch.Generator | None = None
                ) -> torch.Tensor:
        """Simulate measurements ``A(x) + noise``.

        Args:
            x: Images ``[B, C, H, W]``, finite.
            generator: Source of the noise. ``None`` draws from a fresh non-deterministically
                seeded generator (the global RNG is never used); pass
                ``torch.Generator().manual_seed(seed)`` for reproducible noise.

        Returns:
            Noisy measurements, shaped like ``A(x)``.
        """
        check_image(x, "x")
        y = self.A(x)
        return y if self.noise_model is None else self.noise_model(y, generator=generator)

    def __matmul__(self, other: Physics) -> Physics:
        return compose(self, other)


class LinearPhysics(Physics):
    """A linear operator with adjoint, pseudo-inverse and regularised pseudo-inverse.

    Subclasses implement :meth:`A` and :meth:`A_adjoint` and override :meth:`A_dagger` /
    :meth:`A_dagger_reg` where a closed form exists. The defaults use
    :func:`~medrecon.physics.conjugate_gradient`.
    """

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        """Apply the adjoint ``A^H`` to measurements ``y``."""
        raise NotImplementedError

    def A_normal(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        """``A^H A x``."""
        return self.A_adjoint(self.A(x))

    def A_dagger(self, y: torch.Tensor, *, tol: float = 1e-6, max_iter: int = 100  # noqa: N802
                 ) -> torch.Tensor:
        """Moore-Penrose pseudo-inverse ``A^+ y`` (minimum-norm least-squares solution).

        The base implementation runs conjugate gradients on the normal equations
        ``A^H A x = A^H y`` from ``x = 0`` (which stays in the row space, hence minimum norm).
        Operators with a closed form override it and ignore ``tol``/``max_iter``.

        Args:
            y: Measurements, finite.
            tol: Relative residual tolerance of CG. Default ``1e-6``.
            max_iter: Maximum CG iterations. Default 100.

        Returns:
            Images ``[B, C, H, W]``.
        """
        check_finite(y, "y")
        b = self.A_adjoint(y)
        return conjugate_gradient(self.A_normal, b, tol=tol, max_iter=max_iter)

    def A_dagger_reg(self, y: torch.Tensor, *, eta: float, tol: float = 1e-6,  # noqa: N802
                     max_iter: int = 100) -> torch.Tensor:
        """Regularised pseudo-inverse ``A^H (A A^H + eta I)^-1 y`` (noisy back-projection).

        Args:
            y: Measurements, finite.
            eta: Regularisation weight ``>= 0``; ``0`` is :meth:`A_dagger`.
            tol: Relative residual tolerance of CG (when no closed form). Default ``1e-6``.
            max_iter: Maximum CG iterations. Default 100.

        Returns:
            Images ``[B, C, H, W]``.
        """
        eta = as_float(eta, "eta", minimum=0.0)
        if eta == 0.0:
            return self.A_dagger(y, tol=tol, max_iter=max_iter)
        check_finite(y, "y")
        u = conjugate_gradient(lambda v: self.A(self.A_adjoint(v)) + eta * v, y, tol=tol,
                               max_iter=max_iter)
        return self.A_adjoint(u)

    def compute_norm_squared(self, x_like: torch.Tensor, *, max_iter: int = 100,
                             tol: float = 1e-5, seed: int = 0) -> float:
        """Largest eigenvalue of ``A^H A`` (``||A||_2^2``) by power iteration.

        Args:
            x_like: A tensor with the image shape, dtype and device (values unused).
            max_iter: Maximum iterations. Default 100.
            tol: Relative change of the estimate at which to stop. Default ``1e-5``.
            seed: Seed of the random start vector. Default 0.

        Returns:
            The estimate, a Python float (step sizes of gradient solvers are ``< 2 / value``).
        """
        g = torch.Generator().manual_seed(int(seed))
        x = torch.randn(x_like.shape, generator=g, dtype=x_like.real.dtype).to(x_like.device)
        if x_like.is_complex():
            x = x.to(x_like.dtype)
        x = x / torch.linalg.vector_norm(x)
        est = 0.0
        with torch.no_grad():
            for _ in range(int(max_iter)):
                z = self.A_normal(x)
                new = float(torch.linalg.vector_norm(z))
                if new == 0.0:
                    return 0.0
                x = z / new
                if abs(new - est) <= tol * new:
                    est = new
                    break
                est = new
        return est


class ComposedPhysics(Physics):
    """``outer(inner(x))`` for general (possibly non-linear) operators.

    Args:
        outer: Applied second.
        inner: Applied first.
        noise_model: Noise of the composition. Default: the outer operator's noise model (the
            inner operator's noise model is not used).
    """

    def __init__(self, outer: Physics, inner: Physics, *,
                 noise_model: NoiseModel | None | str = "outer") -> None:
        super().__init__(noise_model=outer.noise_model if noise_model == "outer" else noise_model)
        self.outer = outer
        self.inner = inner

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        return self.outer.A(self.inner.A(x))


class ComposedLinearPhysics(ComposedPhysics, LinearPhysics):
    """``outer(inner(x))`` for linear operators; adjoint ``inner^H(outer^H(y))``.

    The pseudo-inverse uses conjugate gradients (the composition of two pseudo-inverses is not
    the pseudo-inverse of the composition in general).

    Args:
        outer: Applied second.
        inner: Applied first.
        noise_model: Noise of the composition. Default: the outer operator's noise model.
    """

    outer: LinearPhysics
    inner: LinearPhysics

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        return self.inner.A_adjoint(self.outer.A_adjoint(y))


def compose(outer: Physics, inner: Physics, *,
            noise_model: NoiseModel | None | str = "outer") -> Physics:
    """Compose two operators: ``compose(A1, A2)(x) == A1(A2(x))`` (also ``A1 @ A2``).

    Args:
        outer: Applied second.
        inner: Applied first.
        noise_model: Noise of the composition; default ``"outer"`` keeps ``outer``'s.

    Returns:
        A :class:`ComposedLinearPhysics` when both are linear, else a :class:`ComposedPhysics`.
    """
    for name, op in (("outer", outer), ("inner", inner)):
        if not isinstance(op, Physics):
            raise MedreconInputError(
                f"compose expects medrecon.physics operators, got {type(op).__name__} for {name}."
            )
    if isinstance(outer, LinearPhysics) and isinstance(inner, LinearPhysics):
        return ComposedLinearPhysics(outer, inner, noise_model=noise_model)
    return ComposedPhysics(outer, inner, noise_model=noise_model)


class Identity(LinearPhysics):
    """Identity operator (denoising): ``A x = x``.

    Args:
        noise_model: Noise model of the measurements (Gaussian, or Rician for magnitude MRI).
    """

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        return check_image(x, "x", finite=False)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        return self.A(y)

    def A_dagger(self, y: torch.Tensor, *, tol: float = 1e-6, max_iter: int = 100  # noqa: N802
                 ) -> torch.Tensor:
        check_image(y, "y")
        return y

    def A_dagger_reg(self, y: torch.Tensor, *, eta: float, tol: float = 1e-6,  # noqa: N802
                     max_iter: int = 100) -> torch.Tensor:
        eta = as_float(eta, "eta", minimum=0.0)
        check_image(y, "y")
        return y / (1.0 + eta)
