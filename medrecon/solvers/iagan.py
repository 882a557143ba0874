"""IAGAN: image-adaptive GAN reconstruction (Abu Hussein, Tirer, Giryes 2019).

Stage 1 finds a latent with CSGM (or BRGM MAP). Stage 2 jointly minimises
``||y - A G_theta(w)||^2 / M`` over the W+ latent and the synthesis weights ``theta``, starting
from the pre-trained weights, with separate learning rates; under noise it runs
``noisy_step_factor`` of the steps and freezes each slice once its residual reaches the noise
level (discrepancy principle), so as not to fit the noise. The returned image is, per slice, the
iterate with the lowest objective (each iterate is scored before its update, and the final
iterate is scored too), not the last one.

Batches: the paper adapts the generator to one image. Sharing one adapted network across slices
would let slices pull the weights against each other, so every slice has its own weights. They
are *stacked* (``[B, *shape]`` per parameter) and the synthesis network is evaluated once per
step for all slices with ``torch.func.functional_call`` vectorised by ``torch.func.vmap`` (a
grouped convolution per layer), so a 150-slice volume costs one batched forward/backward per
step instead of 150. Adam is element-wise, so one optimiser over the stacked tensors is exactly
``B`` independent optimisers. The caller's generator is never copied per slice nor modified.
Generators whose operations ``vmap`` cannot batch fall back to a loop over slices (same
results, slower).
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from medrecon.errors import MedreconInputError
from medrecon.solvers import _common as C
from medrecon.solvers.brgm import brgm
from medrecon.solvers.csgm import csgm
from medrecon.solvers.latent import lr_schedule
from medrecon.solvers.result import Reconstruction

#: Stage-1 options used by :func:`iagan` unless ``stage1_options`` overrides them: one 50-step
#: CSGM restart from the best of 32 probes (all scored in one batch). Stage 2 adapts the weights
#: anyway, so a long latent search buys little with the shipped priors (docs/solvers.md).
STAGE1_DEFAULTS: dict[str, Any] = {"steps": 50, "restarts": 1, "probes": 32}


@dataclass
class AdaptedState:
    """What IAGAN's stage 2 ends with, per member and slice: the W+ latents and the adapted
    synthesis weights (float32, CPU). Passed back as ``init`` it starts stage 2 there instead
    of at stage 1's latent and the pre-trained weights: a warm start, e.g. from the
    neighbouring slice of a volume (:mod:`medrecon.volume`).

    Attributes:
        latents: ``[K, B, num_ws, w_dim]`` (``K`` ensemble members, ``B`` slices).
        weights: synthesis parameter name -> ``[K, B, *shape]``.
    """

    latents: torch.Tensor
    weights: dict[str, torch.Tensor]

    @property
    def members(self) -> int:
        return int(self.latents.shape[0])

    def select(self, slices: list[int]) -> "AdaptedState":
        """The state of the given slices (indices along ``B``)."""
        return AdaptedState(self.latents[:, slices].clone(),
                            {n: t[:, slices].clone() for n, t in self.weights.items()})

    @staticmethod
    def cat(states: list["AdaptedState"]) -> "AdaptedState":
        """Slices of several states side by side (along ``B``)."""
        return AdaptedState(torch.cat([st.latents for st in states], dim=1),
                            {n: torch.cat([st.weights[n] for st in states], dim=1)
                             for n in states[0].weights})


#: Elements per slice of each stacked weight are padded to a multiple of this (with zeros that
#: never change), so the fused Adam update never processes a slice's weights in its scalar
#: tail: that tail rounds some values differently from the vector lanes, so the same slice
#: got other values in a batch of another size (2-run ensembles: up to 3 % of the range
#: after 20 steps).
STACK_ALIGN = 64


def _aligned_stack(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(leaf, view)``: a zero-padded ``[B, m]`` leaf (``m`` a multiple of
    :data:`STACK_ALIGN`) holding ``t [B, *shape]``, and the ``[B, *shape]`` view of it."""
    b, shape = t.shape[0], tuple(t.shape[1:])
    n = int(math.prod(shape))
    m = -(-n // STACK_ALIGN) * STACK_ALIGN
    if m == n:
        leaf = t.detach().clone().requires_grad_(True)
        return leaf, leaf
    leaf = t.new_zeros(b, m)
    leaf[:, :n] = t.detach().reshape(b, n)
    leaf.requires_grad_(True)
    return leaf, leaf[:, :n].view(b, *shape)


class _StackedSynthesis:
    """Per-slice copies of the synthesis weights, stacked, and their batched evaluation.

    Args:
        synthesis: the (frozen) synthesis network whose weights initialise every slice.
        batch: number of slices ``B``.
    """

    def __init__(self, synthesis: nn.Module, batch: int,
                 init: dict[str, torch.Tensor] | None = None) -> None:
        self.module = synthesis
        stacks = {
            n: (p.detach().unsqueeze(0).repeat(batch, *([1] * p.ndim)) if init is None
                else init[n].to(p.device, p.dtype))  # per-slice weights: a warm start
            for n, p in synthesis.named_parameters() if p.is_floating_point()
        }  # each [B, *shape]
        self.leaves: list[torch.Tensor] = []  # what the optimiser updates
        self.params: dict[str, torch.Tensor] = {}  # views of them, [B, *shape]
        for n, t in stacks.items():
            leaf, view = _aligned_stack(t)
            self.leaves.append(leaf)
            self.params[n] = view
        self.fixed = {n: p for n, p in synthesis.named_parameters() if not p.is_floating_point()}
        self.buffers = dict(synthesis.named_buffers())
        self.vectorised = batch > 1

    def _one(self, params: dict[str, torch.Tensor], w: torch.Tensor) -> torch.Tensor:
        # one slice: params unbatched, w [num_ws, w_dim] -> [C, H, W]
        return functional_call(self.module, ({**params, **self.fixed}, self.buffers),
                               (w[None],), {"noise_mode": "const"})[0]

    def __call__(self, ws: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C, H, W]`` of latents ``ws [B, num_ws, w_dim]``, slice b with weights b."""
        if ws.shape[0] == 1:
            return self._one({n: p[0] for n, p in self.params.items()}, ws[0])[None]
        if self.vectorised:
            try:
                return vmap(self._one)(self.params, ws)
            except (RuntimeError, NotImplementedError, ValueError):
                # an operation vmap cannot batch (custom generators): loop instead, for good
                self.vectorised = False
        return torch.stack([self._one({n: p[b] for n, p in self.params.items()}, ws[b])
                            for b in range(ws.shape[0])])


def adapt_weights(
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
    init_weights: dict[str, torch.Tensor] | None = None,
    final: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[float], int]:
    """The IAGAN stage-2 core: every slice adapts its own latent and synthesis weights.

    Args:
        G: the frozen working generator (read only: its weights initialise the stacks).
        ws0: stage-1 W+ latents ``[B, num_ws, w_dim]``.
        y: measurements ``[B, ...]``.
        op: forward operator.
        steps: Adam steps.
        lr_latent: learning rate of the latents.
        lr_weights: learning rate of the synthesis weights.
        noise_var: per-real-measurement noise variance; when > 0 a slice is frozen (its best
            iterate no longer changes) once its residual reaches it.
        progress: throttled reporter.
        amp: autocast context factory.
        check_every: steps between discrepancy checks (the only host syncs of the loop).
        init_weights: per-slice synthesis weights ``[B, *shape]`` to start from instead of
            the pre-trained ones (a warm start).
        final: when a dict, receives the final latents (``"latents"``) and weights
            (``"weights"``, stacked ``[B, *shape]``), detached on the CPU.

    Returns:
        ``(best_images [B, C, H, W], best_ws, best_objective [B], history, steps_run)``; the
        history is the batch-mean objective per step.
    """
    B = ws0.shape[0]
    net = _StackedSynthesis(G.synthesis, B, init=init_weights)
    w = ws0.detach().clone().requires_grad_(True)
    opt = _adam([{"params": [w], "lr": lr_latent},
                 {"params": net.leaves, "lr": lr_weights}])
    base = [lr_latent, lr_weights]
    dev = ws0.device
    best_obj = torch.full((B,), float("inf"), device=dev)
    best_img: torch.Tensor | None = None
    best_ws = w.detach().clone()
    active = torch.ones(B, dtype=torch.bool, device=dev)
    hist = torch.zeros(steps, device=dev)
    dof_scale = 2.0 if y.is_complex() else 1.0
    img_dims = None
    done = 0

    def score(x, obj):
        nonlocal best_obj, best_img, best_ws, img_dims
        with torch.no_grad():
            better = (obj < best_obj) & active
            best_obj = torch.where(better, obj, best_obj)
            if best_img is None:
                img_dims = (1,) * (x.ndim - 1)
                best_img = x.detach().clone()
            else:
                best_img = torch.where(better.view(B, *img_dims), x, best_img)
            best_ws = torch.where(better.view(B, 1, 1), w, best_ws)

    for step in range(steps):
        for g, b in zip(opt.param_groups, base):
            g["lr"] = lr_schedule(step, steps, base=b, rampup=0.0)
        with amp():
            x = net(w).float()
        obj = C.sq_residual(op.A(x), y)  # [B]
        score(x, obj.detach())
        hist[step] = obj.detach().mean()
        opt.zero_grad(set_to_none=True)
        obj.sum().backward()  # slices are independent: the sum keeps per-slice gradients
        opt.step()
        done = step + 1
        if progress.due(step):
            progress(step, obj)
        if noise_var > 0 and done % check_every == 0:
            # discrepancy principle: freeze slices whose best residual reached the noise level
            active &= best_obj / dof_scale > noise_var
            if not bool(active.any()):
                break
    with torch.no_grad():
        with amp():
            x = net(w).float()
        score(x, C.sq_residual(op.A(x), y))
    if final is not None:
        final["latents"] = w.detach().float().cpu()
        final["weights"] = {n: p.detach().float().cpu().contiguous() for n, p in net.params.items()}
    return best_img, best_ws, best_obj, hist[:done].tolist(), done


def _adam(groups: list[dict]) -> torch.optim.Adam:
    """Adam over the stacked per-slice weights, fused into one kernel where this torch has it
    for the parameters' device: the default (foreach) update made about 10 passes over the
    weights, 14 % of an IAGAN step on the CPU (10.8 against 2.4 ms for 4 slices' 5 M values,
    2 threads). Same update to rounding."""
    try:
        return torch.optim.Adam(groups, fused=True)
    except (RuntimeError, TypeError, ValueError):  # no fused kernel here: the default update
        return torch.optim.Adam(groups)


def adapt_one(G, ws0, y, op, **kwargs):
    """Backwards-compatible single-slice form of :func:`adapt_weights`.

    Returns:
        ``(best_image [1, C, H, W], best_ws, best_objective (scalar), history)``.
    """
    img, ws, obj, hist, _ = adapt_weights(G, ws0, y, op, **kwargs)
    return img, ws, obj[0], hist


def iagan(
    y: torch.Tensor,
    operator: nn.Module,
    prior: Any,
    *,
    stage1: str = "csgm",
    stage1_options: dict | None = None,
    steps: int = 200,
    lr_latent: float = 1e-4,
    lr_weights: float = 1e-3,
    noisy_step_factor: float = 0.5,
    ensemble: int = 1,
    noise_mode: str = "const",
    device: str | torch.device = "auto",
    seed: int | Sequence[int] = 0,
    callback: C.ProgressCallback | None = None,
    amp: bool = True,
    init: AdaptedState | None = None,
    return_state: bool = False,
) -> Reconstruction:
    """IAGAN: stage-1 latent search, then per-slice joint latent + weight adaptation.

    Args:
        y: measurements ``[B, ...]``.
        operator: forward operator at the prior's resolution.
        prior: a Prior or a bare generator (never modified: stage 2 adapts stacked per-slice
            weights).
        stage1: ``'csgm'`` or ``'brgm'``. Default ``'csgm'`` (as the paper).
        stage1_options: keyword options of the stage-1 solver, merged over
            :data:`STAGE1_DEFAULTS` (``steps=50, restarts=1, probes=32`` for CSGM; ``restarts``
            is ignored by BRGM, which always runs one start).
        steps: stage-2 Adam steps for clean data. Default 200 (paper: 300-500 for SR, 500-600
            for CS; the per-task defaults use 150: 250 measured no better on held-out images
            of the shipped priors, see docs/solvers.md).
        lr_latent: stage-2 learning rate of the W+ latent. Default 1e-4 (paper).
        lr_weights: stage-2 learning rate of the synthesis weights. Default 1e-3 (paper, PGGAN;
            StyleGAN2 stores weights unscaled, ~N(0, 1), like PGGAN's equalised lr).
        noisy_step_factor: fraction of ``steps`` run when the operator has noise. Default 0.5.
        ensemble: number of independent IAGAN runs (members) whose images are averaged.
            Default 1 (the paper's single run). Member ``k``'s stage 1 runs with seed
            :func:`member_seed` ``(seed, k)`` (member 0 with ``seed`` itself, so
            ``ensemble=1`` is exactly one run); members ``k >= 1`` leave the mean latent out
            of their stage-1 probes (``probe_mean=False``), so that they start apart even
            where the mean fits the measurements best. Where the measurements leave much of
            the image undetermined (SR: 1/16 of the pixels at x4), each run fills the unmeasured part
            with its own plausible detail; the mean of ``K`` runs is a Monte-Carlo estimate of
            the posterior mean, the minimum-MSE estimate; its squared error is never above the
            members' average (convexity), and on held-out images it scored higher PSNR/SSIM
            than one run (``docs/solvers.md``). Costs ``K`` runs: the stage-1 searches run one
            after the other, the stage-2 adaptations of all members run as one stacked batch
            of ``K * B`` slices (one vmapped forward/backward per step, which is what a GPU
            wants; on the CPU it costs about ``K`` single runs). The members come back
            as ``samples`` ``[K, B, C, H, W]`` and their per-pixel standard deviation as ``std``
            (an ensemble spread; :mod:`medrecon.solvers.calibration` maps it to a std of the
            error); ``latents`` and
            ``info['stage1_info']`` are member 0's, ``info['member_objective']`` is ``[K][B]``.
        noise_mode: StyleGAN2's per-layer noise inputs in both stages: ``'const'`` (the
            generator's stored noise maps, held fixed) or ``'none'`` (turned off, i.e. set to
            their mean). The noise inputs add fine detail that is random with respect to the
            measurements; where much of the image is unmeasured (SR) it costs PSNR, and turning
            it off scored higher on held-out images (``docs/solvers.md``). Default ``'const'``;
            stage 1 uses the same mode unless ``stage1_options`` sets its own.
        device: ``'auto'``, ``'cpu'`` or ``'cuda'``.
        seed: seed passed to stage 1 (of member 0; see ``ensemble``); one per slice gives each
            slice its own stage-1 probes (:func:`medrecon.solvers._common.seed_generators`),
            member ``k`` of slice ``b`` then seeded by ``member_seed(seed[b], k)``.
        callback: progress callable (stages ``'csgm'``/``'brgm'`` then ``'iagan'``).
        amp: bf16 autocast of the synthesis on CUDA.
        init: a warm start (:class:`AdaptedState` of ``ensemble`` members and ``B`` slices,
            e.g. the neighbouring slices' results): stage 1 is skipped and stage 2 starts from
            these latents and weights, running ``steps`` steps. Default None (cold start).
        return_state: also return the final latents and weights of every member and slice as
            ``state`` (an :class:`AdaptedState`, about 4 bytes per synthesis parameter per
            member and slice). Default False.

    Returns:
        A :class:`Reconstruction`; ``latents`` are the adapted latents (meaningful only with
        the adapted weights, which are not returned; of member 0 for an ensemble),
        ``info['stage1_info']`` the stage-1 info (of member 0; ``info['member_stage1_info']``
        holds every member's when ``ensemble > 1``).
    """
    t0 = time.perf_counter()
    y = C.check_measurements(y)
    _check_options(steps=steps, lr_latent=lr_latent, lr_weights=lr_weights,
                   noisy_step_factor=noisy_step_factor, ensemble=ensemble, stage1=stage1,
                   stage1_options=stage1_options, noise_mode=noise_mode)
    opts = {**STAGE1_DEFAULTS, "noise_mode": noise_mode, **(stage1_options or {})}
    if stage1 == "brgm" and "restarts" not in (stage1_options or {}):
        opts.pop("restarts")
    K = ensemble
    B = y.shape[0]
    seed = C.check_seed(seed, B)  # a bad seed stops before any solve
    seeds = [[member_seed(sb, k) for sb in seed] if isinstance(seed, list)
             else member_seed(seed, k) for k in range(K)]
    if init is not None:
        _check_init(init, K, B, C.unpack_prior(prior).generator)
    solver1 = csgm if stage1 == "csgm" else brgm
    # members after the first leave the mean latent out of their probes: where it fits best,
    # every member would otherwise start there and, with fixed noise, end identical
    firsts = [] if init is not None else [
        solver1(y, operator, prior, device=device, seed=sk, amp=amp,
                callback=_member_callback(callback, k, K),
                **(opts if k == 0 else {**opts, "probe_mean": False}))
        for k, sk in enumerate(seeds)]
    dev = C.resolve_device(device)
    parts = C.unpack_prior(prior)
    G = C.frozen_copy(parts.generator, dev, noise_mode=noise_mode)
    op = C.on_device(C.check_operator(operator), dev)
    yd = y.to(dev)
    # stage 1 checks these; a warm start skips it (a wrong y failed deep in a product)
    C.check_shapes(yd, op, C.generator_resolution(G))
    # every member's slices in one stacked batch, member-major: entry k * B + b
    yd = yd.repeat(K, *([1] * (y.ndim - 1)))
    ws1, w_init = _stage2_start(firsts, init, dev)
    s = C.noise_sigma(operator)
    n_steps = max(1, int(round(steps * noisy_step_factor))) if s > 0 else steps
    amp_ctx = lambda: C.autocast(dev, amp)  # noqa: E731
    progress = C.Progress(callback, stage="iagan", total_steps=n_steps, slices=K * B)
    final: dict | None = {} if return_state else None
    img, ws, obj, hist, done = adapt_weights(
        G, ws1, yd, op, steps=n_steps, lr_latent=lr_latent, lr_weights=lr_weights,
        noise_var=s * s, progress=progress, amp=amp_ctx, init_weights=w_init, final=final)
    state = None if final is None else AdaptedState(
        _unstack(final["latents"], K), {n: _unstack(t, K) for n, t in final["weights"].items()})
    stage1_hist = [v for f in firsts for v in f.loss_history]
    info = dict(stage1=stage1 if init is None else "warm start", stage1_options=opts,
                stage1_info=firsts[0].info if firsts else None, steps=steps,
                steps_run=n_steps, steps_done=done, lr_latent=lr_latent,
                lr_weights=lr_weights, noisy_step_factor=noisy_step_factor, seed=seed,
                noise_mode=noise_mode,
                noise_sigma=s, ensemble=K, adaptation="stacked per-slice weights",
                stages=[(stage1, len(f.loss_history)) for f in firsts] + [("iagan", len(hist))])
    if K == 1:
        info["objective"] = obj.tolist()
        return Reconstruction(image=img, latents=ws, loss_history=stage1_hist + hist,
                              seconds=time.perf_counter() - t0, device=str(dev),
                              method="iagan", info=info, state=state)
    samples = img.reshape(K, B, *img.shape[1:])
    info.update(member_seeds=seeds, member_objective=obj.reshape(K, B).tolist(),
                member_stage1_info=[f.info for f in firsts])
    return Reconstruction(image=samples.mean(0), latents=ws[:B], loss_history=stage1_hist + hist,
                          seconds=time.perf_counter() - t0, device=str(dev), method="iagan",
                          samples=samples, std=samples.std(0, correction=1), info=info,
                          state=state)


def _check_options(*, steps: Any, lr_latent: Any, lr_weights: Any, noisy_step_factor: Any,
                   ensemble: Any, stage1: Any, stage1_options: Any, noise_mode: Any) -> None:
    """:func:`iagan`'s options, checked before any solve (each error names the option)."""
    C.check_positive("steps", steps, integer=True)
    C.check_positive("lr_latent", lr_latent, allow_zero=True)
    C.check_positive("lr_weights", lr_weights, allow_zero=True)
    C.check_positive("noisy_step_factor", noisy_step_factor)
    C.check_positive("ensemble", ensemble, integer=True)
    if ensemble < 1:
        raise MedreconInputError(f"ensemble={ensemble!r}; expected an integer >= 1.")
    if stage1 not in ("csgm", "brgm"):
        raise MedreconInputError(f"stage1={stage1!r}; expected 'csgm' or 'brgm'.")
    if not isinstance(stage1_options, (dict, type(None))):
        raise MedreconInputError(
            f"stage1_options is a {type(stage1_options).__name__}; expected a dict of options.")
    # the keys the stage-1 solver takes (IAGAN itself sets its device, seed, progress and amp)
    known = set(inspect.signature(csgm if stage1 == "csgm" else brgm).parameters) - {
        "y", "operator", "prior", "device", "seed", "callback", "amp"}
    unknown = sorted(set(stage1_options or {}) - known)
    if unknown:
        raise MedreconInputError(f"stage1_options {unknown} are not options of stage1={stage1!r}; "
                                 f"its options: {', '.join(sorted(known))}.")
    C.check_noise_mode(noise_mode)


def _unstack(t: torch.Tensor, members: int) -> torch.Tensor:
    """``[K * B, ...]`` (member-major) -> ``[K, B, ...]``."""
    return t.reshape(members, t.shape[0] // members, *t.shape[1:])


def _stage2_start(firsts: list[Reconstruction], init: AdaptedState | None,
                  dev: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
    """Stage 2's starting latents ``[K * B, num_ws, w_dim]`` (member-major) and per-slice
    weights: stage 1's latents and the pre-trained weights (``None``), or a warm start's."""
    if init is None:
        return torch.cat([f.latents for f in firsts]).to(dev), None
    ws = init.latents.reshape(-1, *init.latents.shape[2:]).to(dev)
    return ws, {n: t.reshape(-1, *t.shape[2:]) for n, t in init.weights.items()}


def _check_init(init: Any, members: int, slices: int, G: Any) -> None:
    """``init`` is an :class:`AdaptedState` of this call's members and slices, for this
    generator: its W+ shape, every synthesis weight by name and shape, finite values (a
    missing weight was a KeyError deep in the solver, a wrong shape was broadcast, another
    architecture's state ran that network, NaN latents gave a NaN image)."""
    if not isinstance(init, AdaptedState):
        raise MedreconInputError(
            f"init is a {type(init).__name__}; expected an AdaptedState (the `state` of an "
            "earlier iagan(..., return_state=True)).")
    if tuple(init.latents.shape[:2]) != (members, slices):
        raise MedreconInputError(
            f"init holds {init.latents.shape[0]} member(s) x {init.latents.shape[1]} slice(s); "
            f"this call has ensemble={members} and {slices} slice(s). Warm-start with the "
            "state of the same ensemble size, one entry per slice.")
    fix = ("Warm-start with the state of an iagan call on the same prior.")
    ws = (int(G.synthesis.num_ws), int(G.w_dim))
    if tuple(init.latents.shape[2:]) != ws:
        raise MedreconInputError(f"init's latents are {tuple(init.latents.shape[2:])} per slice; "
                                 f"this generator's W+ is {ws}. {fix}")
    want = {n: tuple(p.shape) for n, p in G.synthesis.named_parameters() if p.is_floating_point()}
    got = {n: tuple(t.shape[2:]) for n, t in init.weights.items()}
    if set(got) != set(want):
        missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        raise MedreconInputError(
            f"init's weights are not this generator's (missing {missing[:3]}, unknown "
            f"{extra[:3]}). {fix}")
    for n, shape in want.items():
        if got[n] != shape or tuple(init.weights[n].shape[:2]) != (members, slices):
            raise MedreconInputError(
                f"init's weight {n!r} is {tuple(init.weights[n].shape)}; expected "
                f"{(members, slices, *shape)}. {fix}")
    if not bool(torch.isfinite(init.latents).all()) or not all(
            bool(torch.isfinite(t).all()) for t in init.weights.values()):
        raise MedreconInputError(f"init holds NaN or infinite values. {fix}")


def member_seed(seed: int, k: int) -> int:
    """Seed of ensemble member ``k``: ``seed`` for ``k == 0``, else a 63-bit value drawn from
    ``numpy.random.SeedSequence([seed, k])`` (members of nearby seeds do not coincide)."""
    if k == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed) % 2**63, int(k)]).generate_state(2, np.uint64)[0]
               >> np.uint64(1))


def _member_callback(callback, k: int, n: int):
    """Adds ``member`` (1-based) and ``members`` to every progress dict of member ``k``'s
    stage 1 (stage 2 adapts all members at once)."""
    if callback is None or n == 1:
        return callback
    return lambda d: callback({**d, "member": k + 1, "members": n})
