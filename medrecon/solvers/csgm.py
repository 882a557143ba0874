"""CSGM: compressed sensing with a generative model (Bora et al. 2017), batched and noise-aware.

``latent_hat = argmin ||y - A G(latent)||^2 / M + lambda * ||u(latent)||^2`` over z, W or W+,
with Adam, several seeded restarts run as extra batch entries, keeping per slice the restart
whose best iterate has the lowest data loss.

Noise awareness. Dividing the negative log posterior ``||y - A x||^2 / (2 s^2) + ||u||^2 / 2`` by
``M / (2 s^2)`` (``M`` real measurements, ``s`` the noise std) gives the objective above with
``lambda = s^2 / M``: the latent prior vanishes for clean data and grows with the noise, and
``prior_weight`` scales this Bayesian weight. Optimisation also stops once every data residual
reaches the noise level (discrepancy principle), which keeps CSGM from fitting the noise.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from medrecon.errors import MedreconInputError
from medrecon.solvers import _common as C
from medrecon.solvers.latent import LatentSpace, check_space, lr_schedule, probe_init
from medrecon.solvers.result import Reconstruction


def optimise_latent(
    lat: LatentSpace,
    y: torch.Tensor,
    operator: nn.Module,
    latent0: torch.Tensor,
    *,
    steps: int,
    lr: float,
    prior_weight: float,
    tol: float,
    patience: int,
    check_every: int,
    noise_var: float,
    progress: C.Progress,
    amp,
    extra: "Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None" = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[float]]:
    """The CSGM iteration core: Adam on the latents of N independent problems at once.

    Args:
        lat: latent parametrisation.
        y: measurements ``[N, ...]`` (already repeated per restart).
        operator: forward operator.
        latent0: initial latents ``[N, ...]``.
        steps: maximum number of Adam steps.
        lr: peak learning rate.
        prior_weight: effective weight of ``sum u^2`` (already noise-scaled).
        tol: relative change of a problem's windowed mean objective below which a check
            counts as flat for that problem.
        patience: number of consecutive flat checks after which a problem is frozen.
        check_every: steps between stopping checks (the only host syncs of the loop).
        noise_var: per-real-measurement noise variance; when > 0 a problem is also frozen once
            its data residual is at or below it.
        progress: throttled progress reporter.
        amp: callable returning the autocast context for the synthesis.
        extra: optional extra energy ``extra(latent, ws, x) -> [N]`` added to the objective
            (BRGM's perceptual and colinearity terms).

    Early stopping is decided per problem: a frozen problem keeps its latent (its later
    updates are undone) and the loop ends when every problem is frozen. A slice's result is
    therefore the same whether it is solved alone or in a batch (up to float rounding).

    Returns:
        ``(best_latent, best_objective, best_data, history)`` where the best iterate is tracked
        per problem and ``history`` is the batch-mean objective per step.
    """
    latent = latent0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([latent], lr=lr, betas=(0.9, 0.999))
    best_latent = latent0.detach().clone()
    N = latent0.shape[0]
    dev = latent0.device
    best_obj = torch.full((N,), float("inf"), device=dev)
    best_data = torch.full((N,), float("inf"), device=dev)
    hist = torch.zeros(steps, device=dev)
    per_problem = torch.zeros(check_every if check_every > 0 else 1, N, device=dev)
    dof_scale = 2.0 if y.is_complex() else 1.0
    shape = (N,) + (1,) * (latent.ndim - 1)
    prev_window: torch.Tensor | None = None
    flat = torch.zeros(N, dtype=torch.long, device=dev)
    frozen = torch.zeros(N, dtype=torch.bool, device=dev)
    held = latent0.detach().clone()  # the latents of frozen problems
    done = 0
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_schedule(step, steps, base=lr)
        ws = lat.to_ws(latent)
        with amp():
            x = C.synthesize(lat.G, ws)
        data, obj = _objective(lat, latent, ws, x, y, operator, prior_weight, extra)
        with torch.no_grad():
            better = obj < best_obj
            best_obj = torch.where(better, obj, best_obj)
            best_data = torch.where(better, data, best_data)
            best_latent = torch.where(better.view(shape), latent, best_latent)
            hist[step] = obj.mean()
            if check_every > 0:
                per_problem[step % check_every] = obj
        opt.zero_grad(set_to_none=True)
        obj.sum().backward()
        opt.step()
        with torch.no_grad():
            latent.copy_(torch.where(frozen.view(shape), held, latent))
        done = step + 1
        if progress.due(step):
            progress(step, obj)
        if check_every > 0 and done % check_every == 0 and done < steps:
            with torch.no_grad():
                window = per_problem.mean(0)
                stop = frozen.clone()
                if noise_var > 0:
                    stop |= data.detach() / dof_scale <= noise_var
                if prev_window is not None:
                    rel = (prev_window - window) / prev_window.abs().clamp_min(1e-12)
                    flat = torch.where(rel < tol, flat + 1, torch.zeros_like(flat))
                    stop |= flat >= patience
                prev_window = window
                held = torch.where(stop.view(shape) & ~frozen.view(shape), latent, held)
                frozen = stop
            if bool(frozen.all()):
                if progress.callback is not None and not progress.due(step):
                    progress(step, obj, stopped_early=True)  # the last report, when it stops
                break
    # score the final iterate too (the loop above scores each iterate before its update)
    with torch.no_grad():
        ws = lat.to_ws(latent)
        with amp():
            x = C.synthesize(lat.G, ws)
        data, obj = _objective(lat, latent, ws, x, y, operator, prior_weight, extra)
        better = obj < best_obj
        best_obj = torch.where(better, obj, best_obj)
        best_data = torch.where(better, data, best_data)
        shape = (N,) + (1,) * (latent.ndim - 1)
        best_latent = torch.where(better.view(shape), latent.detach(), best_latent)
    return best_latent, best_obj, best_data, hist[:done].tolist()


def _objective(lat, latent, ws, x, y, operator, prior_weight, extra):
    """``(data [N], objective [N])`` of one iterate."""
    data = C.sq_residual(operator.A(x), y)
    obj = data
    if prior_weight > 0:
        obj = obj + prior_weight * lat.prior_energy(latent)
    if extra is not None:
        obj = obj + extra(latent, ws, x)
    return data, obj


def csgm(
    y: torch.Tensor,
    operator: nn.Module,
    prior: Any,
    *,
    space: str = "w+",
    steps: int = 200,
    lr: float = 0.05,
    restarts: int = 4,
    probes: int = 32,
    probe_mean: bool = True,
    prior_weight: float = 1.0,
    tol: float = 1e-3,
    patience: int = 3,
    check_every: int = 10,
    noise_mode: str = "const",
    device: str | torch.device = "auto",
    seed: int | Sequence[int] = 0,
    callback: C.ProgressCallback | None = None,
    amp: bool = True,
    coupling: float = 0.0,
    links: Sequence[bool] | None = None,
) -> Reconstruction:
    """CSGM latent search with seeded, batched restarts.

    Args:
        y: measurements ``[B, ...]`` of ``B`` slices (real or complex64).
        operator: a :class:`medrecon.physics.LinearPhysics` at the prior's resolution.
        prior: a :class:`medrecon.priors.Prior` or a bare StyleGAN2 generator (never modified).
        space: latent space, ``'z'``, ``'w'`` or ``'w+'``. Default ``'w+'``: it represents
            out-of-distribution slices far better than z (Bora's z search plateaus early).
        steps: maximum Adam steps per restart. Default 200.
        lr: peak Adam learning rate (warm-up 5 %, cosine ramp-down over the last 25 %).
            Default 0.05 (W+ in raw units; z space works with 0.05-0.1).
        restarts: restarts per slice, run as extra batch entries. Default 4.
        probes: random latents scored in one batch to pick the starting points (with several
            restarts, restart 0 always starts at the mean; a single restart starts at the best
            probe, the mean included). Default 32.
        probe_mean: whether the mean latent (``w_avg``; ``z = 0``) is a candidate. IAGAN's
            ensemble members after the first leave it out, so that they start apart even where
            the mean fits best. Default True.
        prior_weight: multiplier of the Bayesian latent-prior weight ``sigma^2 / M`` (0 for
            clean data). Default 1.0.
        tol: relative decrease of the windowed objective under which a check counts as flat.
            Default 1e-3.
        patience: consecutive flat checks before stopping early. Default 3.
        check_every: steps between early-stopping checks. Default 10 (0 disables).
        noise_mode: StyleGAN2's per-layer noise inputs: ``'const'`` (the generator's stored
            noise maps, held fixed, as BRGM and NVIDIA's projector do) or ``'none'`` (turned
            off, i.e. set to their mean: the detail they add is random with respect to the
            measurements). Default ``'const'``; the per-task defaults are in
            :data:`medrecon.solvers.DEFAULTS`.
        device: ``'auto'``, ``'cpu'`` or ``'cuda'``.
        seed: seed of the probes (private ``torch.Generator``); one per slice gives each
            slice its own probes (:func:`medrecon.solvers._common.seed_generators`).
        callback: progress callable, receives ``{stage, step, total_steps, loss, ...}``.
        amp: bf16 autocast of the synthesis on CUDA (ignored on CPU).
        coupling: weight of a coupling of neighbouring slices of the batch: each slice's
            objective gains ``coupling`` times the squared distance of its W+ latent to its
            linked neighbours' (restart r to restart r), so that slices next to each other along
            the slice axis are solved jointly (:mod:`medrecon.volume`). Default 0: every slice
            on its own.
        links: ``B - 1`` booleans, entry ``b`` True where slices ``b`` and ``b + 1`` of the
            batch are neighbours along the slice axis. Default None: every consecutive pair
            (the batch is one stretch of neighbouring slices, in order).

    Returns:
        A :class:`Reconstruction` with ``latents`` in W+.
    """
    t0 = time.perf_counter()
    y = C.check_measurements(y)
    operator = C.check_operator(operator)
    space = check_space(space)
    _check_options(steps=steps, lr=lr, restarts=restarts, probes=probes,
                   prior_weight=prior_weight, tol=tol, patience=patience,
                   check_every=check_every, noise_mode=noise_mode, coupling=coupling)
    link = _check_links(links, y.shape[0])
    dev = C.resolve_device(device)
    parts = C.unpack_prior(prior)
    G = C.frozen_copy(parts.generator, dev, noise_mode=noise_mode)
    img_shape = C.generator_resolution(G)
    op = C.on_device(operator, dev)
    yd = y.to(dev)
    C.check_shapes(yd, op, img_shape)
    mu, sigma = _stats_for(space, parts, G, dev)
    lat = LatentSpace(G, space, mu, sigma)
    amp_ctx = lambda: C.autocast(dev, amp)  # noqa: E731
    s = C.noise_sigma(operator)
    M = C.measurement_count(yd)
    B = yd.shape[0]
    gen = C.seed_generators(seed, B, dev)
    # restart 0 starts at the mean when there are several restarts (a safe, diverse anchor);
    # a single restart starts at the best probe, the mean included.
    latent0 = probe_init(lat, yd, op, restarts=restarts, probes=probes, generator=gen,
                         include_mean=bool(probe_mean), force_mean=restarts > 1, amp=amp_ctx)
    y_rep = yd.repeat_interleave(restarts, 0)
    progress = C.Progress(callback, stage="csgm", total_steps=steps, restarts=restarts)
    best_latent, _, best_data, hist = optimise_latent(
        lat, y_rep, op, latent0, steps=steps, lr=lr, prior_weight=prior_weight * s * s / M,
        tol=tol, patience=patience, check_every=check_every, noise_var=s * s,
        progress=progress, amp=amp_ctx, extra=_coupling_term(coupling, link, restarts, dev))
    pick = best_data.view(B, restarts).argmin(1)  # best restart per slice, by data loss
    rows = torch.arange(B, device=dev) * restarts + pick
    with torch.no_grad():
        ws = lat.to_ws(best_latent[rows]).detach().float()
        with amp_ctx():
            img = C.synthesize(G, ws)
    info = dict(space=space, steps=steps, steps_run=len(hist), lr=lr, restarts=restarts,
                probes=probes, prior_weight=prior_weight, tol=tol, patience=patience,
                check_every=check_every, seed=seed, noise_sigma=s, coupling=coupling,
                data_loss=best_data.view(B, restarts).min(1).values.tolist(),
                restart_chosen=pick.tolist(), stages=[("csgm", len(hist))])
    return Reconstruction(image=img, latents=ws, loss_history=hist,
                          seconds=time.perf_counter() - t0, device=str(dev), method="csgm",
                          info=info)


def _check_options(*, steps: Any, lr: Any, restarts: Any, probes: Any, prior_weight: Any,
                   tol: Any, patience: Any, check_every: Any, noise_mode: Any,
                   coupling: Any) -> None:
    """:func:`csgm`'s numeric options, checked before any solve (each error names its option)."""
    C.check_positive("steps", steps, integer=True)
    C.check_positive("lr", lr)
    C.check_positive("restarts", restarts, integer=True)
    C.check_positive("probes", probes, integer=True, allow_zero=True)
    C.check_positive("prior_weight", prior_weight, allow_zero=True)
    C.check_positive("tol", tol, allow_zero=True)
    C.check_positive("patience", patience, integer=True)
    C.check_positive("check_every", check_every, integer=True, allow_zero=True)
    C.check_noise_mode(noise_mode)
    C.check_positive("coupling", coupling, allow_zero=True)


def _coupling_term(coupling: float, link: list[bool], restarts: int, dev: torch.device
                   ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """The ``extra`` energy of :func:`optimise_latent` that couples linked neighbouring slices
    (:func:`neighbour_penalty` times ``coupling``), or None when nothing is coupled."""
    if coupling <= 0 or not any(link):
        return None
    pairs = torch.tensor(link, dtype=torch.float32, device=dev)
    return lambda latent, ws, x: coupling * neighbour_penalty(ws, pairs, restarts)


def neighbour_penalty(ws: torch.Tensor, links: torch.Tensor, restarts: int = 1) -> torch.Tensor:
    """Each batch entry's squared W+ distance to its linked neighbours, ``[B * restarts]``.

    Args:
        ws: ``[B * restarts, ...]`` latents, slice-major (a slice's restarts together).
        links: ``[B - 1]`` weights (1: slices ``b`` and ``b + 1`` are neighbours, 0: not).
        restarts: restarts per slice; restart ``r`` of a slice is coupled to restart ``r`` of
            its neighbours.
    """
    w = ws.reshape(ws.shape[0] // restarts, restarts, -1)
    d = (w[1:] - w[:-1]).square().sum(-1) * links.to(w.dtype)[:, None]  # [B - 1, restarts]
    pen = torch.zeros(w.shape[:2], dtype=w.dtype, device=w.device)
    pen[1:] += d
    pen[:-1] += d
    return pen.reshape(-1)


def _check_links(links: Any, batch: int) -> list[bool]:
    """``links`` of :func:`csgm` for a batch of ``batch`` slices (None: every pair linked).

    Raises:
        MedreconInputError: not ``batch - 1`` booleans.
    """
    if links is None:
        return [True] * max(0, batch - 1)
    if isinstance(links, (np.ndarray, torch.Tensor)):  # numpy / torch booleans or 0/1
        links = links.tolist() if links.ndim == 1 else None
    vals = list(links) if isinstance(links, (list, tuple)) else None
    if vals is not None:  # numpy / torch scalars as Python values
        vals = [v.item() if isinstance(v, np.generic)
                or (isinstance(v, torch.Tensor) and v.numel() == 1) else v for v in vals]
    if vals is None or len(vals) != batch - 1 or not all(
            isinstance(v, (bool, int)) and v in (0, 1) for v in vals):
        raise MedreconInputError(f"links={links!r}; expected {batch - 1} booleans (one per pair of "
                                 f"consecutive slices of the batch of {batch}), or None.")
    return [bool(v) for v in vals]


def _stats_for(space: str, parts: C.PriorParts, G: nn.Module, dev: torch.device):
    """W statistics on ``dev``; the z space needs none (its prior is N(0, I))."""
    if space == "z":
        w_avg = C.w_average(G).to(dev)
        return w_avg, torch.ones_like(w_avg)
    mu, sigma = C.prior_w_stats(parts, G)
    return mu.to(dev), sigma.to(dev)
