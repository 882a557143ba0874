"""Back-projection (IAGAN's BP step): make any estimate consistent with the measurements.

``x_bp = x + A^+ (y - A x)`` with the exact pseudo-inverse of the operator (closed form for
masks and orthonormal subsampled FFTs, conjugate gradients otherwise), or, for noisy data,
``x_bp = x + A^H (A A^H + eta I)^-1 (y - A x)`` which does not copy the noise into the image.

For a masking operator (inpainting) ``A^+`` corrects only the measured pixels, which leaves a
seam wherever the estimate disagrees with the measurements at a hole's edge. There the
correction is continued into the holes (:func:`seam_correction`): the biharmonic extension of
the residual, fading with the distance from the nearest measured pixel. It is still linear in
the residual and leaves ``A x_bp = y`` exact.

Real images under a complex operator (MRI) are handled as a real-linear map ``A_r``: the
correction is the minimum-norm *real* image with ``A d = y - A x``, solved by conjugate gradients
on ``Re(A^H A) d = Re(A^H r)`` (taking the real part of the complex pseudo-inverse would break
``A x = y`` for masks without conjugate symmetry).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from medrecon.errors import MedreconInputError
from medrecon.physics.inpainting import Inpainting
from medrecon.solvers import _common as C

#: Per-pixel std (generator units, [-1, 1]) of the generator's error assumed by the automatic
#: BP regularisation ``eta = sigma^2 / ERROR_STD^2`` (a Wiener-style ratio of noise variance to
#: the variance of the correction being estimated).
ERROR_STD = 0.1

#: Noise std (generator units) at or below which ``bp=None`` ("auto") applies back-projection.
#: 0.04 is 5/255 of the [0, 1] intensity range: above it BP adds more noise than it removes
#: generator error (IAGAN paper: BP helps for clean SR, not for CS/deblurring at 10/255).
AUTO_BP_MAX_SIGMA = 0.04


#: e-folding distance (pixels) of the correction continued into an inpainting hole
#: (:func:`seam_correction`). Chosen on 6 validation images of the brain prior (IAGAN): against
#: the plain paste it scored +0.27 dB / +0.003 SSIM on centred boxes of 1/4 of the side, +0.02 /
#: +0.003 at 1/2, +0.81 / +0.004 on free-form strokes, +0.01 / +0.002 on half images; the
#: undamped extension lost 0.6-2.8 dB on compact holes, and 2, 3, 6 or 8 pixels did no better
#: overall
#: (docs/results/tuning/brain_mri_inpaint_seam).
SEAM_DECAY = 4.0


def auto_eta(sigma: float) -> float:
    """Regularisation of back-projection for noise std ``sigma`` (0 for clean data)."""
    return 0.0 if sigma <= 0 else (sigma / ERROR_STD) ** 2


def back_project(
    x: torch.Tensor,
    y: torch.Tensor,
    operator: nn.Module,
    *,
    eta: float = 0.0,
    tol: float = 1e-6,
    max_iter: int = 100,
    seam: float | None = None,
) -> torch.Tensor:
    """Back-projects an estimate ``x`` onto the measurement-consistent set.

    Args:
        x: Estimate ``[B, C, H, W]`` (any device; the result is on ``x``'s device).
        y: Measurements ``[B, ...]`` of ``operator``.
        operator: A :class:`medrecon.physics.LinearPhysics`.
        eta: Regularisation ``>= 0`` (0: exact ``A^+``, so ``A x_bp = y``; use
            :func:`auto_eta` of the noise level for noisy data). Default 0.
        tol: CG tolerance where no closed form exists. Default 1e-6.
        max_iter: CG iteration cap. Default 100.
        seam: for a masking operator with ``eta == 0``: e-folding distance in pixels of the
            correction continued into the holes (:func:`seam_correction`); 0 pastes the
            measured pixels only. ``None`` = :data:`SEAM_DECAY`. Ignored by other operators.

    Returns:
        The back-projected images, shaped and typed like ``x``.

    Raises:
        MedreconInputError: invalid shapes, values or operator.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise MedreconInputError(
            f"x must be an image batch [B, C, H, W]; got "
            f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}.")
    y = C.check_measurements(y)
    operator = C.check_operator(operator)
    if not (C.is_real(eta) and math.isfinite(eta) and eta >= 0):
        raise MedreconInputError(f"eta={eta!r}; expected a finite number >= 0.")
    seam = SEAM_DECAY if seam is None else seam
    if not (C.is_real(seam) and math.isfinite(seam) and seam >= 0):
        raise MedreconInputError(f"seam={seam!r}; expected a finite number of pixels >= 0.")
    if y.shape[0] != x.shape[0]:
        raise MedreconInputError(
            f"x has {x.shape[0]} slices but y has {y.shape[0]}; pass matching batches.")
    dev = x.device
    y = y.to(dev)
    op = C.on_device(operator, dev)
    with torch.no_grad():
        ax = op.A(x)
        if tuple(ax.shape) != tuple(y.shape):
            raise MedreconInputError(
                f"operator maps x {tuple(x.shape)} to {tuple(ax.shape)} but y has shape "
                f"{tuple(y.shape)}; the estimate and the measurements do not match.")
        # The correction is computed in double precision: CG on the normal equations
        # stagnates (and float32 CG can blow up) at tolerances near float32 rounding.
        r = (y - ax).to(torch.complex128 if ax.is_complex() else torch.float64)
        probe = op.A_adjoint(r[:1])
        if probe.is_complex() and not x.is_complex():
            d = _real_dagger(op, r, eta=eta, tol=tol, max_iter=max_iter)
        elif eta == 0:
            d = op.A_dagger(r, tol=tol, max_iter=max_iter)
        else:
            d = op.A_dagger_reg(r, eta=float(eta), tol=tol, max_iter=max_iter)
        if seam > 0 and eta == 0 and isinstance(op, Inpainting) and not d.is_complex():
            d = d + seam_correction(d, op.mask.to(d.device), decay=float(seam))
    return (x.to(d.dtype) + d).to(x.dtype)


def seam_correction(d: torch.Tensor, mask: torch.Tensor, *, decay: float) -> torch.Tensor:
    """The correction ``d`` of the measured pixels continued into the holes of ``mask``.

    In every hole pixel: the thin-plate (discrete biharmonic) extension of ``d``
    (:func:`_biharmonic_solver`, the smoothest continuation of the measured pixels' correction)
    times
    ``exp(-(dist - 1) / decay)``, ``dist`` the Euclidean distance to the nearest measured
    pixel. Near the edge the estimate is shifted onto the measurements without a seam; deep in
    a large hole, where a continuation of the edge says nothing, the estimate is left alone.
    Linear in ``d``.

    Args:
        d: ``[B, C, H, W]`` correction, zero in the holes (``A^+ r`` of a mask).
        mask: 0/1 mask broadcastable to ``d`` (1 = measured).
        decay: e-folding distance in pixels (> 0).

    Returns:
        ``[B, C, H, W]``, zero on the measured pixels.
    """
    import numpy as np  # noqa: PLC0415
    from scipy.ndimage import distance_transform_edt  # noqa: PLC0415

    known = (mask > 0.5).expand(d.shape).cpu().numpy()
    dn = d.detach().cpu().double().numpy()
    out = np.zeros(dn.shape, dtype=np.float64)
    cache: dict[bytes, tuple] = {}  # one factorisation per distinct hole pattern
    for b in range(dn.shape[0]):
        for c in range(dn.shape[1]):
            hole = ~known[b, c]
            if not hole.any() or not known[b, c].any():
                continue
            key = np.packbits(hole).tobytes()
            if key not in cache:
                weight = np.exp(-(distance_transform_edt(hole) - 1.0) / decay)[hole]
                cache[key] = (_biharmonic_solver(hole), weight)
            solver, weight = cache[key]
            out[b, c][hole] = solver(dn[b, c][~hole]) * weight
    return torch.from_numpy(out).to(device=d.device, dtype=d.dtype)


def _biharmonic_solver(hole):
    """A function taking the values of the pixels outside ``hole`` (a 2-D bool array) to the
    values inside that minimise the squared discrete Laplacian summed over the image (a thin
    plate fixed by the known pixels; reflecting image edges). Linear; exact for affine ramps
    when the hole stays two pixels clear of the image edges.
    """
    import numpy as np  # noqa: PLC0415
    import scipy.sparse as sp  # noqa: PLC0415
    from scipy.sparse.linalg import factorized  # noqa: PLC0415

    H, W = hole.shape

    def path_laplacian(n: int):
        main = np.full(n, 2.0)
        main[[0, -1]] = 1.0
        return sp.diags([-np.ones(n - 1), main, -np.ones(n - 1)], [-1, 0, 1]) if n > 1 \
            else sp.csr_matrix((1, 1))

    lap = (sp.kron(sp.eye(H), path_laplacian(W)) + sp.kron(path_laplacian(H), sp.eye(W))).tocsr()
    flat = hole.ravel()
    inside, outside = np.flatnonzero(flat), np.flatnonzero(~flat)
    # rows of the Laplacian that touch the hole carry all of the energy that depends on it
    rows = np.flatnonzero(np.asarray(abs(lap[:, inside]).sum(axis=1)).ravel() > 0)
    Lr = lap[rows]
    Lu, Lk = Lr[:, inside].tocsc(), Lr[:, outside].tocsc()
    solve = factorized((Lu.T @ Lu).tocsc())
    LuT_Lk = (Lu.T @ Lk).tocsr()
    return lambda known_values: solve(-(LuT_Lk @ known_values))


def sample_spread(
    samples: torch.Tensor,
    operator: nn.Module | None,
    *,
    y: torch.Tensor | None = None,
    eta: float = 0.0,
    resample=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples (posterior draws, ensemble members) finished like the image, and their spread.

    Args:
        samples: ``[S, B, C, H, W]``.
        operator: back-project every sample with it (:func:`back_project`), or None to leave
            them as they are.
        y: the measurements ``[B, ...]``; None projects with ``y = 0``, i.e. ``s - L A s``,
            which has the same spread (back-projection is affine in the data).
        eta: back-projection regularisation.
        resample: optional callable taking ``[N, C, H, W]`` samples to the operator's grid first.

    Returns:
        ``(samples [S, B, ...], std [B, ...])``: the per-pixel sample std (``correction=1``),
        zeros for a single sample. Measured components carry no spread after projection.
    """
    S, B = samples.shape[:2]
    flat = samples.reshape(S * B, *samples.shape[2:]).float()
    if resample is not None:
        flat = resample(flat)
    if operator is not None:
        with torch.no_grad():
            if y is None:
                ys = torch.zeros_like(C.on_device(operator, flat.device).A(flat[:1]))
                ys = ys.expand(S * B, *([-1] * (ys.ndim - 1))).contiguous()
            else:
                ys = y.to(flat.device).repeat(S, *([1] * (y.ndim - 1)))
        flat = back_project(flat, ys, operator, eta=eta)
    out = flat.reshape(S, B, *flat.shape[1:])
    return out, (out.std(dim=0, correction=1) if S > 1 else torch.zeros_like(out[0]))


def _real_dagger(op, r, *, eta, tol, max_iter):
    """Minimum-norm real ``d`` with ``A d = r`` (or its Tikhonov version) by CG."""
    from medrecon.physics.cg import conjugate_gradient  # noqa: PLC0415

    b = op.A_adjoint(r).real

    def normal(v):
        out = op.A_adjoint(op.A(v)).real
        return out + eta * v if eta > 0 else out

    return conjugate_gradient(normal, b, tol=tol, max_iter=max_iter)
