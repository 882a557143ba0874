"""IAGAN: image-adaptive GAN reconstruction (Abu Hussein, Tirer, Giryes 2019).

Stage 1 finds a latent with CSGM (or BRGM MAP). Stage 2 jointly minimises
``||y - A G_theta(w)||^2 / M`` over the W+ latent and the synthesis weights ``theta``, starting
from the pre-trained weights, with separate learning rates; under noise it runs half the steps
and stops at the noise level (discrepancy principle) so as not to fit the noise. The returned
image is the iterate with the lowest objective (each iterate is scored before its update, and
the final iterate is scored too), not the last one.

Batches: the paper adapts the generator to one image. Sharing one adapted copy across slices
would let slices pull the weights against each other, so each slice adapts its own deep copy
of the synthesis network, in a loop (per-slice optimisers are independent; the loop costs one
synthesis of batch 1 per step per slice). The caller's generator is never touched.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
from torch import nn

from medrecon.errors import MedreconInputError
from medrecon.solvers import _common as C
from medrecon.solvers.brgm import brgm
from medrecon.solvers.csgm import csgm
from medrecon.solvers.latent import lr_schedule
from medrecon.solvers.result import Reconstruction


def adapt_one(
    G: nn.Module,
    ws0: torch.Tensor,
    y: torch.Tensor,
    op: nn.Module,
    *,
    steps: int,
    lr_latent: float,
    lr_weights: float,
    noise_var: float,
    progress: C.Progress,
    amp,
    check_every: int = 10,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[float]]:
    """The IAGAN stage-2 core for one slice on a private copy of ``G``.

    Args:
        G: the frozen working generator (deep-copied here; not modified).
        ws0: stage-1 W+ latent ``[1, num_ws, w_dim]``.
        y: the slice's measurements ``[1, ...]``.
        op: forward operator.
        steps: Adam steps.
        lr_latent: learning rate of the latent.
        lr_weights: learning rate of the synthesis weights.
        noise_var: per-real-measurement noise variance (0: no discrepancy stop).
        progress: throttled reporter.
        amp: autocast context factory.
        check_every: steps between discrepancy checks (host syncs).

    Returns:
        ``(best_image [1, C, H, W], best_ws, best_objective, history)``.
    """
    Gs = copy.deepcopy(G.synthesis)
    weights = [p for p in Gs.parameters() if p.is_floating_point()]
    for p in weights:
        p.requires_grad_(True)
    w = ws0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([{"params": [w], "lr": lr_latent},
                            {"params": weights, "lr": lr_weights}])
    base = [lr_latent, lr_weights]
    dev = ws0.device
    best_obj = torch.full((), float("inf"), device=dev)
    best_img = None
    best_ws = w.detach().clone()
    hist = torch.zeros(steps, device=dev)
    dof_scale = 2.0 if y.is_complex() else 1.0
    done = 0
    for step in range(steps):
        for g, b in zip(opt.param_groups, base):
            g["lr"] = lr_schedule(step, steps, base=b, rampup=0.0)
        with amp():
            x = Gs(w, noise_mode="const").float()
        obj = C.sq_residual(op.A(x), y)[0]
        with torch.no_grad():
            better = obj < best_obj
            best_obj = torch.where(better, obj, best_obj)
            best_img = x.detach().clone() if best_img is None else torch.where(better, x,
                                                                               best_img)
            best_ws = torch.where(better, w, best_ws)
            hist[step] = obj
        opt.zero_grad(set_to_none=True)
        obj.backward()
        opt.step()
        done = step + 1
        if progress.due(step):
            progress(step, obj)
        if noise_var > 0 and done % check_every == 0 and float(obj.detach()) / dof_scale <= noise_var:
            break
    with torch.no_grad():
        with amp():
            x = Gs(w, noise_mode="const").float()
        obj = C.sq_residual(op.A(x), y)[0]
        better = obj < best_obj
        best_obj = torch.where(better, obj, best_obj)
        best_img = torch.where(better, x, best_img)
        best_ws = torch.where(better, w.detach(), best_ws)
    del Gs, opt
    return best_img, best_ws, best_obj, hist[:done].tolist()


def iagan(
    y: torch.Tensor,
    operator: nn.Module,
    prior: Any,
    *,
    stage1: str = "csgm",
    stage1_options: dict | None = None,
    steps: int = 300,
    lr_latent: float = 1e-4,
    lr_weights: float = 1e-3,
    noisy_step_factor: float = 0.5,
    device: str | torch.device = "auto",
    seed: int = 0,
    callback: C.ProgressCallback | None = None,
    amp: bool = True,
) -> Reconstruction:
    """IAGAN: stage-1 latent search, then per-slice joint latent + weight adaptation.

    Args:
        y: measurements ``[B, ...]``.
        operator: forward operator at the prior's resolution.
        prior: a Prior or a bare generator (never modified: stage 2 adapts private copies).
        stage1: ``'csgm'`` or ``'brgm'``. Default ``'csgm'`` (as the paper).
        stage1_options: keyword options of the stage-1 solver (its own defaults otherwise).
        steps: stage-2 Adam steps for clean data. Default 300 (paper: 300-500 for SR,
            500-600 for CS).
        lr_latent: stage-2 learning rate of the W+ latent. Default 1e-4 (paper).
        lr_weights: stage-2 learning rate of the synthesis weights. Default 1e-3 (paper, PGGAN;
            StyleGAN2 stores weights unscaled, ~N(0, 1), like PGGAN's equalised lr).
        noisy_step_factor: fraction of ``steps`` run when the operator has noise. Default 0.5.
        device: ``'auto'``, ``'cpu'`` or ``'cuda'``.
        seed: seed passed to stage 1.
        callback: progress callable (stages ``'csgm'``/``'brgm'`` then ``'iagan'``).
        amp: bf16 autocast of the synthesis on CUDA.

    Returns:
        A :class:`Reconstruction`; ``latents`` are the adapted latents (meaningful only with
        the adapted weights, which are not returned), ``info['stage1']`` the stage-1 info.
    """
    t0 = time.perf_counter()
    y = C.check_measurements(y)
    C.check_positive("steps", steps, integer=True)
    C.check_positive("lr_latent", lr_latent, allow_zero=True)
    C.check_positive("lr_weights", lr_weights, allow_zero=True)
    C.check_positive("noisy_step_factor", noisy_step_factor)
    if stage1 not in ("csgm", "brgm"):
        raise MedreconInputError(f"stage1={stage1!r}; expected 'csgm' or 'brgm'.")
    opts = dict(stage1_options or {})
    if not isinstance(stage1_options, (dict, type(None))):
        raise MedreconInputError(
            f"stage1_options is a {type(stage1_options).__name__}; expected a dict of options.")
    solver1 = csgm if stage1 == "csgm" else brgm
    first = solver1(y, operator, prior, device=device, seed=seed, callback=callback, amp=amp,
                    **opts)
    dev = C.resolve_device(device)
    parts = C.unpack_prior(prior)
    G = C.frozen_copy(parts.generator, dev)
    op = operator.to(dev)
    yd = y.to(dev)
    s = C.noise_sigma(operator)
    n_steps = max(1, int(round(steps * noisy_step_factor))) if s > 0 else steps
    amp_ctx = lambda: C.autocast(dev, amp)  # noqa: E731
    ws1 = first.latents.to(dev)
    images, latents, objs, hist = [], [], [], []
    B = yd.shape[0]
    for b in range(B):
        progress = C.Progress(callback, stage="iagan", total_steps=n_steps, slice=b,
                              slices=B)
        img, wb, ob, hb = adapt_one(G, ws1[b:b + 1], yd[b:b + 1], op, steps=n_steps,
                                    lr_latent=lr_latent, lr_weights=lr_weights,
                                    noise_var=s * s, progress=progress, amp=amp_ctx)
        images.append(img)
        latents.append(wb)
        objs.append(ob)
        hist.append(hb)
    # batch-mean history per step (slices may stop at different steps: pad with their last)
    length = max(len(h) for h in hist)
    padded = [h + [h[-1]] * (length - len(h)) if h else [float("nan")] * length for h in hist]
    hist2 = [sum(col) / B for col in zip(*padded)]
    info = dict(stage1=stage1, stage1_info=first.info, steps=steps, steps_run=n_steps,
                lr_latent=lr_latent, lr_weights=lr_weights,
                noisy_step_factor=noisy_step_factor, seed=seed, noise_sigma=s,
                objective=torch.stack(objs).tolist(), adaptation="per-slice copy",
                stages=[(stage1, len(first.loss_history)), ("iagan", length)])
    return Reconstruction(image=torch.cat(images), latents=torch.cat(latents),
                          loss_history=first.loss_history + hist2,
                          seconds=time.perf_counter() - t0, device=str(dev), method="iagan",
                          info=info)
