"""BRGM: Bayesian reconstruction through generative models (Marinescu et al. 2021).

MAP over W+ (noise inputs fixed; start at ``w_avg`` or, by default, at the best of a batch of
cheap probes that includes ``w_avg``)::

    L(w) = ||y - A G(w)||^2 / M                                  pixel term (weight 1)
         + perceptual_weight * d(A G(w), y)                      LPIPS-VGG when available
         + latent_weight * (s^2 / M) * sum_i ||(w_i - mu) / sigma||^2
         + colinearity_weight * (s^2 / M) * sum_{i<j} (1 - cos(w_i, w_j))

with ``mu, sigma`` the per-dimension Gaussian of 10,000 mapped samples and
``s = max(noise sigma, sigma_floor)``. The ``s^2 / M`` factor is the exact Bayesian weight of a
Gaussian prior once the likelihood ``||y - A x||^2 / (2 s^2)`` is divided by ``M / (2 s^2)``:
the priors matter more as the noise grows and as measurements get fewer, instead of a fixed
number tuned for one image size. ``sigma_floor`` keeps a weak prior on clean data.

Weights and where they come from:

* ``perceptual_weight = 0.06``: the paper's ``lambda_p = 1, lambda_x = 0.001`` with pixels on a
  0-255 scale; in [-1, 1] units that pixel weight is ``0.001 * 127.5^2 = 16``, so the
  perceptual:pixel ratio is 1:16.
* ``latent_weight = 1``: the Bayesian weight itself (the Gaussian W+ prior).
* ``colinearity_weight = 10`` per layer pair, in units of one standardised latent dimension:
  the paper's ratio ``lambda_c / lambda_w = 3 / 100`` applied per *mean* term (their code
  averages the latent term over ``num_ws * w_dim`` dims and the cosine term over the pairs),
  which for 12-14 layers and ``w_dim = 512`` is ~10-20 per pair.

The variational extension fits ``q(W+) = N(m, diag(exp(2 rho)))`` by minimising the negative
ELBO in the same units: ``E_q[L(w)] - (2 s^2 / M) * sum rho`` (the entropy of a diagonal Gaussian
is ``sum rho + const``; the reference code omitted it, which collapses q to a point).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from medrecon.solvers import _common as C
from medrecon.solvers.csgm import optimise_latent
from medrecon.solvers.latent import LatentSpace, lr_schedule, probe_init
from medrecon.solvers.losses import colinearity, perceptual_applicable, resolve_perceptual
from medrecon.solvers.result import Reconstruction


def _setup(y, operator, prior, device, perceptual, hp, noise_mode):
    y = C.check_measurements(y)
    operator = C.check_operator(operator)
    C.check_noise_mode(noise_mode)
    for name in ("steps", "num_samples", "samples_per_step"):
        if name in hp:
            C.check_positive(name, hp[name], integer=True)
    for name in ("lr", "sigma_floor", "init_std"):
        if name in hp:
            C.check_positive(name, hp[name])
    for name in ("latent_weight", "colinearity_weight", "perceptual_weight", "entropy_weight",
                 "tol"):
        if name in hp:
            C.check_positive(name, hp[name], allow_zero=True)
    dev = C.resolve_device(device)
    parts = C.unpack_prior(prior)
    G = C.frozen_copy(parts.generator, dev, noise_mode=noise_mode)
    img_shape = C.generator_resolution(G)
    op = C.on_device(operator, dev)
    yd = y.to(dev)
    C.check_shapes(yd, op, img_shape)
    mu, sigma = C.prior_w_stats(parts, G)
    lat = LatentSpace(G, "w+", mu.to(dev), sigma.to(dev))
    perc_fn, perc_desc = resolve_perceptual(perceptual if hp["perceptual_weight"] > 0 else "off")
    if perc_fn is not None and not perceptual_applicable(yd):
        perc_fn, perc_desc = None, "off (measurements are not an image)"
    if isinstance(perc_fn, nn.Module):
        perc_fn = perc_fn.to(dev)
    s = max(C.noise_sigma(operator), hp["sigma_floor"])
    M = C.measurement_count(yd)
    return yd, op, dev, G, lat, perc_fn, perc_desc, s, M


def _extra(op, y, perc_fn, perceptual_weight, colin_weight):
    def extra(latent, ws, x):
        e = colin_weight * colinearity(ws) if colin_weight > 0 else 0.0
        if perc_fn is not None:
            e = e + perceptual_weight * perc_fn(op.A(x), y)
        return e
    return extra


def brgm(
    y: torch.Tensor,
    operator: nn.Module,
    prior: Any,
    *,
    steps: int = 200,
    lr: float = 0.05,
    probes: int = 32,
    probe_mean: bool = True,
    latent_weight: float = 1.0,
    colinearity_weight: float = 10.0,
    perceptual: Any = "auto",
    perceptual_weight: float = 0.06,
    sigma_floor: float = 0.01,
    tol: float = 1e-3,
    patience: int = 3,
    check_every: int = 10,
    noise_mode: str = "const",
    device: str | torch.device = "auto",
    seed: int | Sequence[int] = 0,
    callback: C.ProgressCallback | None = None,
    amp: bool = True,
) -> Reconstruction:
    """BRGM MAP reconstruction in W+ from ``w_avg``.

    Args:
        y: measurements ``[B, ...]``.
        operator: a :class:`medrecon.physics.LinearPhysics` at the prior's resolution.
        prior: a :class:`medrecon.priors.Prior` or a bare generator (never modified).
        steps: maximum Adam steps. Default 200 (paper code ~500 at 1024 px; W+ from w_avg
            converges in 150-250 at 128-256 px).
        lr: peak Adam learning rate. Default 0.05.
        probes: random mapped latents scored (with ``w_avg``) in one batch by their data loss;
            the best one starts the optimisation. 0 starts at ``w_avg`` as the paper. Default
            32: a single start at ``w_avg`` stalls in local minima measurably more often
            (tiny in-range generators: 1 of 3 slices above 35 dB from ``w_avg`` vs 3 of 3).
        probe_mean: whether ``w_avg`` is a candidate among the probes (IAGAN's ensemble
            members after the first leave it out, so that they start apart). Default True.
        latent_weight: multiplier of the Bayesian Gaussian W+ prior weight. Default 1.
        colinearity_weight: weight per layer pair of ``1 - cos``, in prior units. Default 10.
        perceptual: ``'auto'`` (LPIPS-VGG if its weights are present, else off with a warning),
            ``'lpips'``, ``'off'``, or a module ``f(a, b) -> [N]``.
        perceptual_weight: weight of the perceptual distance relative to the pixel MSE.
            Default 0.06 (the paper's 1 : 0.001 on 0-255 pixels).
        sigma_floor: lower bound of the noise std used in the prior weights ([-1, 1] units).
            Default 0.01.
        tol, patience, check_every: early stopping as in :func:`csgm`.
        noise_mode: ``'const'`` or ``'none'``, as in :func:`~medrecon.solvers.csgm`. Default
            ``'const'``.
        device: ``'auto'``, ``'cpu'`` or ``'cuda'``.
        seed: seed of the initial probes (private ``torch.Generator``); one per slice gives
            each slice its own probes (:func:`medrecon.solvers._common.seed_generators`).
        callback: progress callable.
        amp: bf16 autocast of the synthesis on CUDA.

    Returns:
        A :class:`Reconstruction`; ``info['perceptual']`` says which perceptual term ran.
    """
    t0 = time.perf_counter()
    hp = dict(steps=steps, lr=lr, probes=probes, latent_weight=latent_weight,
              colinearity_weight=colinearity_weight, perceptual_weight=perceptual_weight,
              sigma_floor=sigma_floor, tol=tol)
    C.check_positive("patience", patience, integer=True)
    C.check_positive("check_every", check_every, integer=True, allow_zero=True)
    yd, op, dev, G, lat, perc_fn, perc_desc, s, M = _setup(y, operator, prior, device,
                                                          perceptual, hp, noise_mode)
    amp_ctx = lambda: C.autocast(dev, amp)  # noqa: E731
    B = yd.shape[0]
    C.check_positive("probes", probes, integer=True, allow_zero=True)
    gen = C.seed_generators(seed, B, dev)  # checks the seed even when no probe is drawn
    if probes > 0:
        w0 = probe_init(lat, yd, op, restarts=1, probes=probes, generator=gen,
                        include_mean=bool(probe_mean), force_mean=False, amp=amp_ctx)
    else:
        w0 = C.w_average(G).to(dev)[None, None].repeat(B, G.num_ws, 1)
    scale = s * s / M
    progress = C.Progress(callback, stage="brgm", total_steps=steps)
    best, _, best_data, hist = optimise_latent(
        lat, yd, op, w0, steps=steps, lr=lr, prior_weight=latent_weight * scale, tol=tol,
        patience=patience, check_every=check_every, noise_var=0.0, progress=progress,
        amp=amp_ctx,
        extra=_extra(op, yd, perc_fn, perceptual_weight, colinearity_weight * scale))
    with torch.no_grad(), amp_ctx():
        img = C.synthesize(G, best)
    info = dict(hp, patience=patience, check_every=check_every, seed=seed,
                perceptual=perc_desc, sigma_used=s, noise_sigma=C.noise_sigma(operator),
                steps_run=len(hist), data_loss=best_data.tolist(), stages=[("brgm", len(hist))])
    return Reconstruction(image=img, latents=best, loss_history=hist,
                          seconds=time.perf_counter() - t0, device=str(dev), method="brgm",
                          info=info)


def _normal(generator: torch.Generator | Sequence[torch.Generator], samples: int,
            shape: Sequence[int]) -> torch.Tensor:
    """Standard-normal draws ``[samples, 1 or B, *shape]``: from one generator, shared by the
    batch's slices (broadcast over them), or from one generator per slice, each its own."""
    if isinstance(generator, (list, tuple)):
        return torch.stack([torch.randn((samples, *shape), generator=g, device=g.device)
                            for g in generator], 1)
    return torch.randn((samples, 1, *shape), generator=generator, device=generator.device)


def variational_core(
    lat: LatentSpace,
    y: torch.Tensor,
    op: nn.Module,
    m0: torch.Tensor,
    rho0: torch.Tensor,
    *,
    steps: int,
    lr: float,
    samples_per_step: int,
    prior_weight: float,
    entropy_weight: float,
    extra,
    generator: torch.Generator | Sequence[torch.Generator],
    progress: C.Progress,
    amp,
) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Stochastic minimisation of the negative ELBO of ``q = N(m, diag(exp(2 rho)))``.

    Each step draws ``samples_per_step`` reparametrised samples per slice (one batch of
    ``S * B`` syntheses) from the seeded ``generator``; the standard-normal draws are shared by
    the slices of the batch, so each slice's result is independent of its batch-mates (one
    generator per slice: each slice's own draws, see :func:`_normal`).

    Returns:
        ``(m, rho, history)``.
    """
    m = m0.detach().clone().requires_grad_(True)
    rho = rho0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([m, rho], lr=lr)
    S, B = samples_per_step, m0.shape[0]
    y_rep = y.repeat(S, *([1] * (y.ndim - 1)))  # sample-major: [S * B, ...]
    hist = torch.zeros(steps, device=m0.device)
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_schedule(step, steps, base=lr)
        # the draws depend on the slice's seed alone, never on which other slices share its batch
        eps = _normal(generator, S, m0.shape[1:])
        ws = (m[None] + rho.exp()[None] * eps.to(m0.device)).reshape(S * B, *m0.shape[1:])
        with amp():
            x = C.synthesize(lat.G, ws)
        e = C.sq_residual(op.A(x), y_rep) + prior_weight * lat.prior_energy(ws)
        if extra is not None:
            e = e + extra(ws, ws, x)
        expected = e.view(S, B).mean(0)  # [B]
        entropy = rho.reshape(B, -1).sum(1)
        obj = expected - entropy_weight * entropy
        hist[step] = obj.detach().mean()
        opt.zero_grad(set_to_none=True)
        obj.sum().backward()
        opt.step()
        if progress.due(step):
            progress(step, obj)
    return m.detach(), rho.detach(), hist.tolist()


def brgm_variational(
    y: torch.Tensor,
    operator: nn.Module,
    prior: Any,
    *,
    steps: int = 200,
    lr: float = 0.05,
    samples_per_step: int = 4,
    num_samples: int = 16,
    init_std: float = 0.05,
    latent_weight: float = 1.0,
    colinearity_weight: float = 10.0,
    entropy_weight: float = 1.0,
    perceptual: Any = "auto",
    perceptual_weight: float = 0.06,
    sigma_floor: float = 0.01,
    noise_mode: str = "const",
    device: str | torch.device = "auto",
    seed: int | Sequence[int] = 0,
    callback: C.ProgressCallback | None = None,
    amp: bool = True,
) -> Reconstruction:
    """Variational BRGM: diagonal Gaussian posterior over W+ with the entropy term.

    Args:
        y: measurements ``[B, ...]``.
        operator: forward operator at the prior's resolution.
        prior: a Prior or a bare generator (never modified).
        steps: Adam steps. Default 200.
        lr: peak learning rate of ``m`` and ``rho``. Default 0.05.
        samples_per_step: Monte-Carlo samples per slice per step. Default 4.
        num_samples: posterior samples drawn at the end (``Reconstruction.samples``). Default 16.
        init_std: initial posterior std in units of the prior std ``sigma``. Default 0.05.
        latent_weight, colinearity_weight, perceptual, perceptual_weight, sigma_floor:
            as in :func:`brgm`.
        entropy_weight: multiplier of the exact entropy weight ``2 s^2 / M`` (1 = the ELBO).
        noise_mode: ``'const'`` or ``'none'``, as in :func:`~medrecon.solvers.csgm`. Default
            ``'const'``.
        device: ``'auto'``, ``'cpu'`` or ``'cuda'``.
        seed: seed of the Monte-Carlo draws (private ``torch.Generator``); one per slice gives
            each slice its own draws (:func:`medrecon.solvers._common.seed_generators`).
        callback: progress callable.
        amp: bf16 autocast of the synthesis on CUDA.

    Returns:
        A :class:`Reconstruction` whose ``image`` is the posterior mean (mean of the samples in
        image space), ``samples`` ``[N, B, C, H, W]``, ``std`` the per-pixel posterior std,
        ``latents`` the variational mean ``m`` and ``info['latent_std']`` ``exp(rho)``.
    """
    t0 = time.perf_counter()
    hp = dict(steps=steps, lr=lr, samples_per_step=samples_per_step, num_samples=num_samples,
              init_std=init_std, latent_weight=latent_weight,
              colinearity_weight=colinearity_weight, entropy_weight=entropy_weight,
              perceptual_weight=perceptual_weight, sigma_floor=sigma_floor)
    if num_samples < 2:
        raise C.MedreconInputError(
            f"num_samples={num_samples}; expected >= 2 posterior samples for a std map.")
    yd, op, dev, G, lat, perc_fn, perc_desc, s, M = _setup(y, operator, prior, device,
                                                          perceptual, hp, noise_mode)
    amp_ctx = lambda: C.autocast(dev, amp)  # noqa: E731
    B = yd.shape[0]
    gen = C.seed_generators(seed, B, dev)
    m0 = C.w_average(G).to(dev)[None, None].repeat(B, G.num_ws, 1)
    rho0 = (init_std * lat.sigma).log()[None, None].expand(B, G.num_ws, -1)
    scale = s * s / M
    progress = C.Progress(callback, stage="brgm_variational", total_steps=steps)
    m, rho, hist = variational_core(
        lat, yd, op, m0, rho0, steps=steps, lr=lr, samples_per_step=samples_per_step,
        prior_weight=latent_weight * scale, entropy_weight=entropy_weight * 2.0 * scale,
        extra=_extra(op, yd, perc_fn, perceptual_weight, colinearity_weight * scale),
        generator=gen, progress=progress, amp=amp_ctx)
    samples = []
    with torch.no_grad(), amp_ctx():
        for _ in range(num_samples):
            eps = _normal(gen, 1, m.shape[1:])[0].to(dev)
            samples.append(C.synthesize(G, m + rho.exp() * eps))
    stack = torch.stack(samples)  # [N, B, C, H, W]
    info = dict(hp, seed=seed, perceptual=perc_desc, sigma_used=s,
                noise_sigma=C.noise_sigma(operator), latent_std=rho.exp().cpu(),
                stages=[("brgm_variational", len(hist))])
    return Reconstruction(image=stack.mean(0), latents=m, loss_history=hist,
                          seconds=time.perf_counter() - t0, device=str(dev),
                          method="brgm_variational", samples=stack, std=stack.std(0),
                          info=info)
