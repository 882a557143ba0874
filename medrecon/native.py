"""Measurements on the scan's own grid: the forward model ``A_native o U`` and its solve.

A StyleGAN2 prior makes ``R x R`` images; a scan's slices have any size and spacing. Nothing
measured is resampled: the measurements ``y`` stay on the grid they were acquired on, and the
prior's grid enters the forward model instead (``docs/pipeline.md``)::

    G(w)  [R x R]  --U-->  output grid [H x W]  --A_native-->  y  (the scan's own samples)

``U`` (:class:`medrecon.physics.GridResample`) crops the part of the prior grid that covers the
slice's field of view and resamples it onto the output grid, with an exact adjoint.
``A_native`` is the acquisition on the output grid: decimation by the SR kernel onto the input
pixels (SR), the mask at the input's resolution (inpainting), the blur (deblurring) or the
identity (denoising). Generative solvers fit ``A_native(U(G(w)))`` to ``y``; their image is
brought to the output grid with ``U`` and made consistent with ``y`` there by back-projection
with ``A_native`` (``x + A_native^+ (y - A_native x)``, regularised under noise), so what was
measured is never lost, whatever the prior can represent. Classical baselines run on the
output grid directly (bicubic interpolation of the scan itself, TV, biharmonic, Wiener).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from medrecon.errors import MedreconInputError
from medrecon.physics import GridResample, LinearPhysics, build_operator, compose
from medrecon.volume import (SLAB, VOLUME_ADAPT_FACTOR, cohere_slices, slab_links,
                             solve_in_rounds, supports_warm_start, warm_steps_for)

__all__ = ["NativeProblem", "build_native_problem", "solve_native_problem"]


@dataclass
class NativeProblem:
    """The measurements of ``N`` slices on their own grid and the operators that explain them.

    Attributes:
        task: ``"sr"``, ``"inpaint"``, ``"deblur"`` or ``"denoise"``.
        y: Measurements ``[N, C, h, w]`` in generator units, on the measurement grid.
        groups: ``(A_native, slice indices)``: the acquisition operator on the output grid
            (one per distinct inpainting mask, else one for all slices) with its noise model.
        grid: ``U``, the prior's ``R x R`` grid onto the output grid over the same field of view.
        in_hw: The measurement grid (the input's in-plane size).
        out_hw: The output grid.
    """

    task: str
    y: torch.Tensor
    groups: list[tuple[LinearPhysics, list[int]]]
    grid: GridResample
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    info: dict = field(default_factory=dict)

    @property
    def effective_factor(self) -> tuple[float, float]:
        """Prior pixels over the field of view per measured pixel, per axis.

        For SR this is the magnification the prior itself supplies (``scale`` on the ideal
        grid ``R / scale``); for the other tasks it is ``1`` when the prior's grid matches the
        scan's and below ``1`` when the scan is finer than the prior can represent.
        """
        c = self.grid.content
        return c[0] / self.in_hw[0], c[1] / self.in_hw[1]


def build_native_problem(
    task: str,
    x: torch.Tensor,
    *,
    prior_resolution: int,
    spacing_hw: Sequence[float],
    simulate: bool,
    seed: int,
    noise_sigma: float = 0.0,
    scale: int = 4,
    sr_kernel: str = "bicubic",
    missing: torch.Tensor | None = None,
) -> NativeProblem:
    """Set up the measurements of ``x`` on its own grid.

    Args:
        task: ``"sr"``, ``"inpaint"``, ``"deblur"`` or ``"denoise"``.
        x: Slices ``[N, C, h, w]`` in generator units: the measurements themselves, or with
            ``simulate`` the clean images to measure.
        prior_resolution: ``R``.
        spacing_hw: In-plane pixel size of ``x`` in mm (``(dh, dw)``).
        simulate: Measure ``x`` with the operator (seeded noise) instead of taking it as ``y``.
        seed: Seed of simulated masks and noise.
        noise_sigma: Noise std of the measurements (generator units).
        scale: SR factor. Without ``simulate`` ``x`` is the low-resolution scan and the output
            grid is ``scale`` times finer; with it ``x`` is the high-resolution truth and its
            size must be divisible by ``scale``.
        sr_kernel: Blur of the SR acquisition (``"bicubic"``, ``"box"``, ``"gaussian"``).
        missing: Bool ``[N, h, w]`` of missing pixels (inpainting), on ``x``'s grid.

    Returns:
        The :class:`NativeProblem`.
    """
    from medrecon.transforms import GridFit

    n, c, h, w = x.shape
    noise = {"noise_sigma": float(noise_sigma)} if noise_sigma else {}
    out_hw, out_sp, in_hw = (h, w), (float(spacing_hw[0]), float(spacing_hw[1])), (h, w)
    task_opts: dict[str, Any] = {}
    if task == "sr":
        task_opts = {"scale": int(scale), "kernel": sr_kernel}
        if simulate:
            if h % scale or w % scale:
                raise MedreconInputError(
                    f"simulated SR x{scale} needs slices whose size is a multiple of {scale}; got "
                    f"{h}x{w}. Crop the image to {h - h % scale}x{w - w % scale} pixels first.")
            in_hw = (h // scale, w // scale)
        else:
            out_hw = (h * scale, w * scale)
            out_sp = (out_sp[0] / scale, out_sp[1] / scale)
    fit = GridFit.fit(out_hw, out_sp, prior_resolution)
    grid = fit.operator(out_hw)
    groups: list[tuple[LinearPhysics, list[int]]] = []
    if task == "inpaint" and missing is not None:
        keyed: dict[bytes, list[int]] = {}
        for i in range(n):
            keyed.setdefault(missing[i].numpy().tobytes(), []).append(i)
        for idx in keyed.values():
            observed = ~missing[idx[0]]
            groups.append((build_operator(task, img_size=out_hw, channels=c, seed=seed,
                                          mask=observed, **noise), idx))
    else:
        if task == "inpaint" and not simulate:
            raise MedreconInputError(
                "inpainting needs a mask of the missing pixels (nonzero = missing); pass "
                "mask=... / --mask FILE, or simulate=True / --simulate to draw one.")
        groups.append((build_operator(task, img_size=out_hw, channels=c, seed=seed, **noise,
                                      **task_opts), list(range(n))))
    gen = torch.Generator().manual_seed(seed)
    ys: list[torch.Tensor | None] = [None] * n
    for op, idx in groups:
        with torch.no_grad():
            if simulate:
                meas = op.measure(x[idx], generator=gen)
            elif task in ("sr", "deblur", "denoise"):
                meas = x[idx]
            else:  # inpaint: zero the missing pixels the way the operator represents them
                meas = op.A(x[idx])
        for j, i in enumerate(idx):
            ys[i] = meas[j]
    y = torch.stack([t for t in ys if t is not None])
    return NativeProblem(task, y, groups, grid, in_hw, out_hw,
                         {"grid": {"size": fit.size, "content": fit.content, "offset": fit.offset}})


def volume_adapt_steps(method: str, task: str | None, overrides: dict | None) -> int:
    """IAGAN's adaptation steps in the volume default: :data:`medrecon.volume.VOLUME_ADAPT_FACTOR`
    times the method's default for ``task`` refined by ``overrides`` (the off-grid defaults)."""
    from medrecon.solvers import method_options

    base = int({**method_options(method, task), **(overrides or {})}["steps"])
    return max(1, int(round(base * VOLUME_ADAPT_FACTOR)))


def solver_kwargs(method: str, *, device: Any, seed: int, slices: Sequence[int], callback: Any,
                  bp: bool | None, steps: int | None = None, samples: int = 0,
                  ensemble: int | None = None, task: str | None = None,
                  overrides: dict | None = None, coupling: float = 0.0) -> dict[str, Any]:
    """The keywords of one :func:`medrecon.solvers.solve` call of the pipeline on ``slices``
    (their indices in the scan).

    A generative method gets one seed per slice, :func:`medrecon.solvers._common.slice_seed`
    ``(seed, i)`` (``seed`` itself for slice 0): each slice draws its own random start, so a
    slice's result does not depend on the batch it is solved in, and neighbouring slices'
    guesses of what is not measured are independent (they average in
    :func:`medrecon.volume.cohere_slices` as an ensemble's members do). ``overrides`` (e.g.
    :data:`medrecon.solvers.OFF_GRID_DEFAULTS`) refine the method's defaults; the user's
    ``steps`` then win (IAGAN: the same budget for both stages). With ``coupling > 0`` IAGAN's
    stage 1 couples the adjacent slices of one slab among ``slices``
    (:func:`medrecon.volume.slab_links`, :data:`medrecon.volume.SLAB`).
    """
    from medrecon.solvers import METHODS
    from medrecon.solvers._common import slice_seed

    per_slice = METHODS[method].generative and "seed" in METHODS[method].defaults
    kw: dict[str, Any] = {"method": method, "device": device,
                          "seed": [slice_seed(seed, i) for i in slices] if per_slice else seed,
                          "callback": callback, **(overrides or {})}
    if bp is not None:
        kw["bp"] = bp
    defaults = METHODS[method].defaults
    if steps is not None and "steps" in defaults:
        kw["steps"] = steps
        if "stage1_options" in defaults:
            kw["stage1_options"] = {"steps": steps}
    if coupling > 0 and "stage1_options" in defaults:  # the volume default (steps.py)
        kw["stage1_options"] = {**kw.get("stage1_options", {}), "coupling": coupling,
                                "links": slab_links(list(slices), SLAB)}
        if steps is None:  # one run per slice, made coherent: it adapts longer
            kw["steps"] = volume_adapt_steps(method, task, overrides)
    if samples:
        kw["num_samples"] = samples
    if ensemble is not None:
        kw["ensemble"] = ensemble
    if task is not None:
        kw["task"] = task
    return kw


def solve_native_problem(
    problem: NativeProblem,
    prior: Any,
    *,
    method: str,
    batch_size: int,
    seed: int,
    progress: Any,
    steps: int | None = None,
    bp: bool | None = None,
    samples: int = 0,
    ensemble: int | None = None,
    device: str = "auto",
    solver_task: str | None = None,
    key_every: int = 1,
    warm_steps: int | None = None,
    spread: bool = False,
    coherence: float = 0.0,
    coupling: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    """Solve every slice of ``problem``; return images ``[N, C, H, W]`` on the output grid,
    the posterior std (when ``samples``) and the solver information.

    With ``key_every > 1`` and a method that can be warm-started (IAGAN), the slices of each
    operator group are solved in the rounds of :mod:`medrecon.volume`: key slices cold, the
    others from their neighbour's state with ``warm_steps`` steps (None:
    :func:`medrecon.volume.warm_steps_for`). With ``spread`` an IAGAN ensemble's members give
    the std map (their per-pixel spread after back-projection), calibrated to a std of the
    error when the prior has a fit for the regime (:mod:`medrecon.solvers.calibration`).
    With ``coherence > 0`` (a width in slices) a generative method's slices then have their
    unmeasured part smoothed across slices (:func:`medrecon.volume.cohere_slices`). With
    ``coupling > 0`` (cold solves of a method whose stage 1 takes it: IAGAN) neighbouring
    slices are searched jointly in stage 1 within slabs of :data:`medrecon.volume.SLAB`
    slices, and every solver call holds whole slabs.

    Generative methods solve with ``A_native o U`` and no back-projection of their own; their
    image is mapped with ``U`` and back-projected with ``A_native`` on the output grid when the
    solver would back-project (:func:`medrecon.solvers.will_back_project`). Baselines solve
    with ``A_native`` on the output grid (their ``bp`` applies there too). Each slice draws
    its random numbers from its own seed (:func:`solver_kwargs`), so a slice's result does not
    depend on ``batch_size`` (of 2 or more; see :mod:`medrecon.volume` for ``1``).
    """
    from medrecon.solvers import METHODS, OFF_GRID_DEFAULTS, solve, will_back_project
    from medrecon.solvers import _common as C
    from medrecon.solvers.calibration import StdMaps

    generative = METHODS[method].generative
    n = problem.y.shape[0]
    images: list[torch.Tensor | None] = [None] * n
    maps = StdMaps(n)  # std maps, calibrated all or none
    info: dict = {"device": None, "method": method, "solver_seconds": 0.0}
    U = problem.grid
    warm = key_every > 1 and not samples and supports_warm_start(method)
    if warm:
        _check_warm_groups(problem.groups, n)
    coupled = (coupling > 0 and generative and not warm
               and "stage1_options" in METHODS[method].defaults)
    for op_native, idx in problem.groups:
        sigma = C.noise_sigma(op_native)
        do_bp = generative and will_back_project(method, bp=bp, noise_sigma=sigma)
        op = op_native if (not generative or U.is_identity) else compose(op_native, U)
        off_grid = generative and not U.is_identity  # the prior reaches y through U

        def solve_chunk(chunk: list[int], init: Any, want_state: bool) -> Any:
            kw = solver_kwargs(
                method, device=device, seed=seed, slices=chunk, bp=False if generative else bp,
                steps=steps,
                callback=progress.solver_callback(chunk), samples=samples,
                ensemble=ensemble, task=solver_task, coupling=coupling if coupled else 0.0,
                overrides=OFF_GRID_DEFAULTS.get(problem.task, {}).get(method) if off_grid else None)
            if coupled and steps is None:  # the volume default's longer adaptation
                info["adapt_steps"] = kw["steps"]
            if warm:
                kw["return_state"] = want_state
                if init is not None:
                    kw["init"] = init
                    kw["steps"] = warm_steps or warm_steps_for(method, solver_task, kw.get("steps"))
                    info["warm_steps"] = kw["steps"]
            y = problem.y[chunk]
            rec = solve(y, op, prior if generative else None, **kw)
            img, label = rec.image, rec.method or method
            if generative:
                img, label, eta = _on_output_grid(rec, y, op_native, U, do_bp=do_bp, sigma=sigma)
                if eta is not None:
                    info["bp_eta"] = eta
            _put_std(maps, chunk, rec, prior, op_native, U, do_bp=do_bp, sigma=sigma,
                     samples=samples, spread=spread)
            for j, i in enumerate(chunk):
                images[i] = img[j]
            info["device"] = str(rec.device)
            info["method"] = label
            info["solver_seconds"] += float(rec.seconds)
            info["solver_info"] = rec.info
            progress.done += len(chunk)
            progress.emit(progress.done / progress.n, f"slice {progress.done}/{progress.n} done")
            return rec.state

        solve_in_rounds(list(idx), key_every=key_every if warm else 1, batch_size=batch_size,
                        solve_chunk=solve_chunk, slab=SLAB if coupled else 1)
    if warm:
        info["key_every"] = key_every
    if coupled:
        info["coupling"] = coupling
    img_all = torch.stack([t for t in images if t is not None])
    if generative and coherence > 0 and n > 1:
        img_all = cohere_slices(img_all, problem.groups, sigma=coherence)
        info["coherence_sigma"] = round(float(coherence), 4)
    std_all, how = maps.result()
    info.update(how)
    return img_all, std_all, info


def _check_warm_groups(groups: Sequence[tuple[Any, Sequence[int]]], n: int) -> None:
    """Warm starts go from a slice to the one next to it, within one operator's slices: refuse
    them when an operator's slices are not a run of neighbours (an inpainting mask that
    differs from slice to slice): slice 0 was warm-started from slice 2, or every slice was
    solved cold while the result said ``key_every`` 3."""
    for _, idx in groups:
        idx = sorted(int(i) for i in idx)
        if idx != list(range(idx[0], idx[-1] + 1)) or (len(idx) == 1 and n > 1):
            raise MedreconInputError(
                "warm starts (key_every > 1) need neighbouring slices that share one operator, "
                "but this volume's slices have different ones (e.g. an inpainting mask that "
                "changes from slice to slice). Solve every slice cold: drop key_every / "
                "--key-every.")


def _on_output_grid(rec: Any, y: torch.Tensor, op_native: Any, U: Any, *, do_bp: bool,
                    sigma: float | None) -> tuple[torch.Tensor, str, float | None]:
    """A generative result on the output grid: mapped with ``U``, then back-projected with
    ``A_native`` when ``do_bp``. Returns the image, the method label and the BP eta (or None)."""
    from medrecon.solvers import auto_eta, back_project

    img, label, eta = rec.image, rec.method, None
    if not U.is_identity:
        with torch.no_grad():
            img = U.A(img.float())
    if do_bp:
        eta = auto_eta(sigma)
        img = back_project(img, y, op_native, eta=eta)
        label += "+bp"
    return img, label, eta


def _put_std(maps: Any, chunk: list[int], rec: Any, prior: Any, op_native: Any, U: Any, *,
             do_bp: bool, sigma: float | None, samples: int, spread: bool) -> None:
    """The std map of ``chunk`` on the output grid, into ``maps``
    (:class:`medrecon.solvers.calibration.StdMaps`): the samples' spread back-projected like
    the image (measured parts certain), calibrated when the prior has a fit for the regime,
    on the prior's grid only; else the solver's own std, resampled."""
    from medrecon.solvers import auto_eta
    from medrecon.solvers.backprojection import sample_spread
    from medrecon.solvers.calibration import exact_pixels

    if (samples or spread) and rec.samples is not None:
        std = sample_spread(rec.samples, op_native if do_bp else None, eta=auto_eta(sigma),
                            resample=None if U.is_identity else U.A)[1]
        exact = exact_pixels(op_native, std.shape) if do_bp and not sigma else None
        maps.put(chunk, std, prior, rec.info.get("std_regime") if U.is_identity else None,
                 bp=do_bp, exact=exact)
    elif samples and rec.std is not None:
        std = rec.std if U.is_identity else U.A(rec.std.float()).clamp_min(0)
        maps.put(chunk, std, prior, None, bp=do_bp)
