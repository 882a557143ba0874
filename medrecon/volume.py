"""Whole volumes: neighbouring slices serve as the ensemble; warm starts along the slice axis.

Neighbouring slices of a scan are nearly the same image, so a volume need not be 150 solves
of a lone image. By default (:data:`VOLUME_ENSEMBLE`, :data:`DEFAULT_KEY_EVERY`) every slice
gets one IAGAN run instead of the 4-member ensemble of a lone image, and
:func:`cohere_slices` then replaces each slice's unmeasured part (in-plane detail finer than
the acquisition resolves: the prior's guess, made anew on every slice) by a weighted mean over
its neighbours, keeping its measured part exactly; a neighbour counts less where the
measurements show the anatomy changing. The neighbours' guesses stand in for the
ensemble's members at a quarter of the cost. This holds while the slices are close
(:data:`COHERENT_SIGMA`); thicker slices keep the ensemble.

Warm starts (opt-in): with ``key_every = L`` the slices (in their order along the slice axis)
are cut into segments of ``L``; the middle slice of each segment, its *key slice*, is solved in
full (IAGAN: stage-1 search and stage-2 adaptation of every ensemble member); then, round by
round, each slice one step further from its key is warm-started from the slice next to it
towards the key: stage 2 begins at that neighbour's adapted latents and weights (every member
its own) and runs ``warm_steps`` steps on the slice's own measurements. Warm starts need
neighbouring slices that share one operator: a volume whose inpainting mask changes from
slice to slice refuses them (:func:`medrecon.native.solve_native_problem`).

Every slice draws its random start from its own seed (its place in the scan:
:func:`medrecon.solvers._common.slice_seed`), so the neighbours' guesses are independent, as
an ensemble's members are; shared probes made neighbours start alike and averaged less
(the 150-slice benchmark, ``bench/results/volume_*``: 29.78 -> 29.85 dB, reformats 30.24 ->
30.35).

The starts are searched jointly, though: IAGAN's stage 1 (the latent search) couples each
slice to its neighbours within fixed slabs of :data:`SLAB` slices (:data:`SLICE_COUPLING`
times the squared distance between neighbouring W+ latents joins each slice's objective), so
a slice's start draws on its neighbours' measurements too. Stage 2, which invents the
unmeasured detail, stays per slice, and the guesses that :func:`cohere_slices` averages stay
the slices' own.

Guarantees: a slice's result depends on the seed and its place in the scan, on the slices
of its slab (the default's coupled stage 1), on its segment (the slices between it and its
key slice) with warm starts, and through :func:`cohere_slices` on its neighbours within three
widths; not on ``batch_size``, which only groups the problems of one round into solver
calls (with the coupling, whole slabs; a lone last slice joins the call before it). On the
CPU every ``batch_size`` of 2 or more gives the same values, to the last bits of the mapping
to the output grid after the solves (tests/test_volume.py); ``batch_size=1`` solves each
slice alone, with the CPU libraries' single-sample kernels, whose other rounding the
optimisation amplifies into another result of the same quality, as another seed would (the
coupled default takes whole slabs whatever the ``batch_size``). GPU libraries also choose
kernels by shape. ``key_every <= 1`` solves every slice cold.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from medrecon.errors import MedreconInputError
from medrecon.solvers._common import is_real

__all__ = ["DEFAULT_KEY_EVERY", "VOLUME_ENSEMBLE", "AUTO_PIXELS", "GUIDE_RANGE", "GUIDE_WINDOW",
           "COHERENT_SIGMA", "VOLUME_MIN_SUPPORT", "SLICE_COUPLING", "VOLUME_ADAPT_FACTOR", "SLAB",
           "WARM_FRACTION",
           "slab_links", "slice_batches", "stack_support",
           "warm_start_rounds", "solve_in_rounds", "supports_warm_start", "warm_steps_for",
           "check_coherence", "coherence_sigma", "cohere_slices", "neighbour_support"]

#: Segment length of a volume's warm starts (``key_every``) when the caller gives none: 1, every
#: slice solved from scratch. Warm starts are opt-in: with the 4-member ensemble on its key
#: slices, ``key_every=3`` costs about 480 generator steps per slice against 260 for one cold
#: run per slice made coherent (:data:`VOLUME_ENSEMBLE`; 300 since :data:`VOLUME_ADAPT_FACTOR`),
#: and scored the same or lower on 24
#: coronal slices of two brain volumes (docs/results/tuning/brain_mri_sr4_volume_default).
#: Segments of 3 remain the useful length: on 8 Colin27 slices, slices one step from their key
#: matched cold solves and slices further away lost 0.3-1.3 dB even with 100-200 warm steps
#: (docs/results/tuning/brain_mri_sr4_volume_warm, scripts/tune_warm_start.py).
DEFAULT_KEY_EVERY = 1
#: IAGAN runs per slice of a volume when the caller gives no ``ensemble`` (and asks for no
#: spread) and its slices are close enough to be made coherent (:data:`COHERENT_SIGMA`): the
#: neighbouring slices, averaged by :func:`cohere_slices`, stand in for the ensemble's members.
VOLUME_ENSEMBLE = 1
#: Width of ``coherence="auto"`` in output in-plane pixels, with :data:`GUIDE_RANGE` and
#: :data:`GUIDE_WINDOW`. Chosen on 24 coronal MNI152 slices (one IAGAN run per slice, SR x4,
#: 1 mm slices), checked on 24 of Colin27 (docs/results/tuning/brain_mri_sr4_volume_guided):
#: 27.61 / 0.881 and 28.50 / 0.843 dB / SSIM, against 27.45 / 0.873 and 28.43 / 0.841 for
#: the best plain Gaussian (1.5 pixels, no guide) and 26.93 / 0.848 and 27.55 / 0.821 without
#: coherence; 3-5 pixels are within 0.02 dB of each other on both volumes.
AUTO_PIXELS = 4.0
#: ``h`` of :func:`cohere_slices`' guide as a fraction of the measured intensity range (0.5-99.5
#: percentiles): neighbours whose measured content differs locally by much more than this
#: count little. 0.05-0.08 were within 0.03 dB on both tuning volumes.
GUIDE_RANGE = 0.065
#: Side in output pixels of the window over which :func:`cohere_slices` compares two slices'
#: measured content (3-7 within 0.02 dB).
GUIDE_WINDOW = 5
#: The smallest across-slice width (in slices, :func:`coherence_sigma`) at which an SR volume
#: gets :data:`VOLUME_ENSEMBLE`: with the automatic width, slices at most two output pixels
#: apart. Thicker slices keep the solver's ensemble (their neighbours are too far apart to
#: average).
COHERENT_SIGMA = AUTO_PIXELS / 2
#: The least mean number of guesses in reach of each slice (:func:`stack_support`, the
#: coherence step's Gaussian weights summed over the stack) at which an SR volume gets
#: :data:`VOLUME_ENSEMBLE`: the neighbours stand in for the 4 members of the ensemble only
#: where about 4 of them are in reach. A short stack keeps the ensemble: on 3 coronal Colin27
#: slices (support 2.9 at the automatic 4-slice width) one run per slice scored 27.47 / 0.834
#: against 27.82 / 0.839 for the ensemble (docs/results/real_scans); the 60- and 150-slice
#: volumes of bench/results/volume_* (support 9.5 and 9.8) are at par or ahead.
VOLUME_MIN_SUPPORT = 4.0
#: Weight of the coupling of neighbouring slices in IAGAN's stage 1 for the volume default
#: (``coupling`` of :func:`medrecon.solvers.csgm.csgm`): each slice's latent search also pays
#: this times the squared distance of its W+ latent to its neighbours' within its slab
#: (:data:`SLAB`), so neighbouring slices are searched jointly and each start draws on its
#: neighbours' measurements. Chosen on the 150-slice Colin27 benchmark
#: (bench/results/volume_*): see docs/results.md.
SLICE_COUPLING = 1e-4
#: IAGAN's adaptation (stage-2) steps in the volume default as a multiple of the method's
#: default for the task and grid (200 off the prior's grid -> 240) when the caller gives no
#: ``steps``. The method's steps were tuned for a 4-member ensemble; for one run per slice
#: made coherent, longer paid (presumably as the coherence step averages the extra detail a
#: longer adaptation invents over the neighbouring slices). On the 150 Colin27 slices of
#: bench/results/volume_* (seed 0), 1.2 took the default from 29.93 / 0.865 to 30.00 / 0.868
#: and 1.3 to 30.03 / 0.869, but 1.3 took 593 s on two threads, too close to the 10 minutes
#: the volume has (see docs/results.md).
VOLUME_ADAPT_FACTOR = 1.2
#: Slices per slab of the coupling: slice ``i`` is coupled to ``i - 1`` and ``i + 1`` when they
#: are in its slab ``i // SLAB`` (fixed by position, so not by ``batch_size``); a solver call
#: then holds whole slabs (:func:`solve_in_rounds`).
SLAB = 8
#: Steps of a warm-started slice as a fraction of the method's cold steps (``warm_steps``
#: when the caller gives none), at least :data:`MIN_WARM_STEPS`.
WARM_FRACTION = 0.25
MIN_WARM_STEPS = 10


def warm_steps_for(method: str, task: str | None, steps: int | None) -> int:
    """Default steps of a warm-started slice: :data:`WARM_FRACTION` of the cold steps
    (``steps``, else the method's default for ``task``), at least :data:`MIN_WARM_STEPS`
    and at most the cold steps."""
    from medrecon.solvers import method_options

    cold = steps if steps is not None else int(method_options(method, task).get("steps", 0) or 0)
    warm = max(MIN_WARM_STEPS, math.ceil(cold * WARM_FRACTION))
    return min(warm, cold) if cold > 0 else warm  # never more than a cold slice's


def supports_warm_start(method: str) -> bool:
    """Whether ``method`` can start from a neighbour's state (its solver takes ``init``)."""
    from medrecon.solvers import METHODS

    spec = METHODS.get(method)
    return spec is not None and "init" in spec.defaults and "return_state" in spec.defaults


def warm_start_rounds(indices: Sequence[int], key_every: int) -> list[list[tuple[int, int | None]]]:
    """The solve order of ``indices`` (slices in order along the slice axis) as rounds of
    ``(slice, parent)`` pairs: round 0 holds the key slices (parent None), round ``t`` the
    slices ``t`` steps from their key, each with its neighbour towards the key as parent.

    Args:
        indices: slice indices in their order along the slice axis.
        key_every: segment length ``L``; ``<= 1`` gives one round of cold solves.
    """
    idx = list(indices)
    if key_every <= 1 or len(idx) <= 1:
        return [[(i, None) for i in idx]]
    rounds: list[list[tuple[int, int | None]]] = [[]]
    for s0 in range(0, len(idx), key_every):
        seg = idx[s0:s0 + key_every]
        k = (len(seg) - 1) // 2
        rounds[0].append((seg[k], None))
        for t in range(1, max(k, len(seg) - 1 - k) + 1):
            while len(rounds) <= t:
                rounds.append([])
            if k - t >= 0:
                rounds[t].append((seg[k - t], seg[k - t + 1]))
            if k + t < len(seg):
                rounds[t].append((seg[k + t], seg[k + t - 1]))
    return rounds


def solve_in_rounds(
    indices: Sequence[int],
    *,
    key_every: int,
    batch_size: int,
    solve_chunk: Callable[[list[int], Any, bool], Any],
    slab: int = 1,
) -> None:
    """Solve ``indices`` in the order of :func:`warm_start_rounds`.

    Args:
        indices: slice indices in order along the slice axis.
        key_every: segment length (see :func:`warm_start_rounds`).
        batch_size: slices per solver call (a round is cut into calls of this size).
        slab: with ``slab > 1`` a call holds whole slabs (the slices ``i`` of one
            ``i // slab``): as many as fit in ``batch_size`` slices, at least one.
        solve_chunk: ``solve_chunk(slices, init, want_state)`` solves ``slices`` (all cold, or
            all warm-started from ``init``, the parents' states side by side) and returns
            their state (an object with ``select``/``cat``, e.g.
            :class:`medrecon.solvers.iagan.AdaptedState`) when ``want_state``, else None.
    """
    rounds = warm_start_rounds(indices, key_every)
    parents = [{p for _, p in rnd if p is not None} for rnd in rounds[1:]] + [set()]
    states: dict[int, Any] = {}
    for r, rnd in enumerate(rounds):
        needed = parents[r]  # slices of this round that the next round starts from
        for part in _calls(rnd, batch_size, slab):
            chunk = [i for i, _ in part]
            init = None
            if part[0][1] is not None:
                first = states[part[0][1]]
                init = type(first).cat([states[p] for _, p in part])
            want = any(i in needed for i in chunk)
            state = solve_chunk(chunk, init, want)
            if want and state is not None:
                for j, i in enumerate(chunk):
                    if i in needed:
                        states[i] = state.select([j])
        for _, p in rnd:  # the parents of this round are no longer needed
            if p is not None:
                states.pop(p, None)


def _calls(rnd: list[tuple[int, int | None]], batch_size: int, slab: int
           ) -> list[list[tuple[int, int | None]]]:
    """One round cut into solver calls of at most ``batch_size`` slices; with ``slab > 1``
    each call holds whole slabs (consecutive entries of one ``i // slab``), at least one.

    With ``batch_size >= 2`` (or slabs) no slice is left alone in a call when the round has
    others: a last call of one slice joins the call before it (one slice over
    ``batch_size``). A call of one slice runs other CPU kernels than a batch (a single
    sample's convolutions and matrix products sum in another order), and the solvers'
    optimisation amplifies that rounding into a visibly different result; calls of two or
    more slices give every slice the same values whatever their size (tests/test_volume.py)."""
    if slab <= 1:
        return slice_batches(rnd, batch_size)
    units: list[list[tuple[int, int | None]]] = []
    for item in rnd:
        if units and units[-1][-1][0] // slab == item[0] // slab:
            units[-1].append(item)
        else:
            units.append([item])
    calls = []
    for unit in units:
        if calls and len(calls[-1]) + len(unit) <= batch_size:
            calls[-1].extend(unit)
        else:
            calls.append(list(unit))
    return _no_lone_last(calls)


def slice_batches(items: Sequence[Any], batch_size: int) -> list[list[Any]]:
    """``items`` (slices) cut into solver calls of at most ``batch_size``; with
    ``batch_size >= 2`` a last call of one slice joins the call before it (one over
    ``batch_size``), so that every slice is solved in a call of two or more, whose values do
    not depend on the call's size (:func:`_calls`)."""
    calls = [list(items[b0:b0 + batch_size]) for b0 in range(0, len(items), batch_size)]
    return _no_lone_last(calls) if batch_size >= 2 else calls


def _no_lone_last(calls: list[list[Any]]) -> list[list[Any]]:
    """``calls`` with a last call of one slice joined to the call before it."""
    if len(calls) >= 2 and len(calls[-1]) == 1:
        last = calls.pop()
        calls[-1] = calls[-1] + last
    return calls


def slab_links(slices: Sequence[int], slab: int) -> list[bool]:
    """Which consecutive entries of ``slices`` (indices along the slice axis) are coupled
    neighbours: adjacent slices of one slab (``links`` of :func:`medrecon.solvers.csgm.csgm`)."""
    return [b == a + 1 and a // slab == b // slab for a, b in zip(slices, slices[1:])]


def check_coherence(value: Any) -> float | str:
    """``coherence`` as given by a caller or the CLI: ``"auto"`` (also for None) or a width in
    mm ``>= 0`` (a number or its text).

    Raises:
        MedreconInputError: anything else, naming the accepted values.
    """
    if value is None or value == "auto":
        return "auto"
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if is_real(value) and math.isfinite(value) and value >= 0:
        return float(value)
    raise MedreconInputError(
        f"coherence={value!r}; expected 'auto' or a width in mm >= 0 (0 turns it off).")


#: The widest across-slice width in slices (:func:`coherence_sigma`): far beyond any stack
#: medrecon takes, so every slice of one already weighs the same (``exp(-0.5 (n / 1e6)^2)``).
MAX_SIGMA = 1e6


def coherence_sigma(coherence: float | str | None, *, out_spacing_hw: Sequence[float],
                    slice_spacing: float) -> float:
    """The across-slice Gaussian width of :func:`cohere_slices`, in slices.

    Args:
        coherence: ``"auto"`` (or None): :data:`AUTO_PIXELS` output in-plane pixels (of the
            smaller of the two); a number: the width in mm; ``0``: off.
        out_spacing_hw: the output grid's in-plane pixel size in mm.
        slice_spacing: the distance between slices in mm.
    """
    if coherence is None or coherence == "auto":
        mm = AUTO_PIXELS * float(min(out_spacing_hw))
    else:
        mm = float(coherence)
    if mm <= 0 or not (slice_spacing > 0 and math.isfinite(slice_spacing)):
        return 0.0
    # wider than any stack weighs every slice alike: the limit, not an overflow to inf
    # (a legal width over very thin slices was refused after the whole solve)
    return min(mm / float(slice_spacing), MAX_SIGMA)


def stack_support(n: int, sigma: float) -> float:
    """The mean over ``n`` slices of Gaussian weights ``sigma`` slices wide summed over the
    slices of the stack, the slice itself counting 1: about how many guesses each slice's mean
    could hold before the measurements weigh them (about ``sigma * sqrt(2 pi)`` inside a long
    stack, fewer in a short one). A heuristic upper bound of :func:`neighbour_support`: the
    coherence step also stops at ``3 sigma`` and weighs neighbours by their measurements."""
    if n < 1 or sigma <= 0:
        return 1.0
    i = torch.arange(n, dtype=torch.float64)
    w = torch.exp(-0.5 * ((i[:, None] - i[None, :]) / sigma) ** 2)
    return float(w.sum() / n)


def _robust_range(x: torch.Tensor) -> float:
    """The 0.5-99.5 percentile range of ``x`` (of at most about a million evenly strided
    values: the range of a volume, not of every voxel); 1 where it is 0 or not finite."""
    flat = x.detach().reshape(-1)
    flat = flat[::max(1, flat.numel() // 2**20)].float()
    lo, hi = torch.quantile(flat, torch.tensor([0.005, 0.995], device=flat.device)).tolist()
    span = hi - lo
    return span if math.isfinite(span) and span > 0 else 1.0


def cohere_slices(images: torch.Tensor, groups: Sequence[tuple[Any, Sequence[int]]], *,
                  sigma: float, guide_range: float | None = GUIDE_RANGE,
                  guide_window: int = GUIDE_WINDOW) -> torch.Tensor:
    """Replace each slice's unmeasured part by a weighted mean of its neighbours'.

    With ``P_i = A_i^+ A_i`` slice ``i``'s measured (row-space) part, slice ``i`` becomes
    ``P_i x_i + (I - P_i) m_i``, ``m_i = sum_j w_ij (I - P_j) x_j / sum_j w_ij``: its measured
    part is kept (to the accuracy of ``A_i^+``) and its unmeasured part, the prior's guess made
    anew on every slice, is replaced by a mean of the neighbours' guesses, like an ensemble's
    mean. The weight of slice ``j`` at a pixel is a Gaussian of ``sigma`` slices in
    ``|i - j|`` times, unless ``guide_range`` is None, how alike the two slices' *measured*
    parts are around that pixel: ``exp(-d^2 / h^2)`` with ``d^2`` the mean of
    ``(P_i x_i - P_j x_j)^2`` over a ``guide_window`` x ``guide_window`` pixel window and
    ``h = guide_range`` times the measured parts' 0.5-99.5 percentile range (a joint bilateral
    filter across slices, guided by the measurements alone). Where the anatomy changes from
    slice to slice the measurements say so, and a neighbour's guess counts less there
    (:func:`neighbour_support`: how many guesses a pixel's mean then holds).

    Args:
        images: ``[N, C, H, W]`` real slices in their order along the slice axis.
        groups: ``(operator, slice indices)`` pairs covering every slice once (the operators
            of :class:`medrecon.native.NativeProblem`).
        sigma: width in slices (:func:`coherence_sigma`); ``<= 0`` or a single slice returns
            ``images`` unchanged. Neighbours up to ``3 sigma`` away take part.
        guide_range: ``h`` as a fraction of the measured intensity range. Default
            :data:`GUIDE_RANGE`; None: Gaussian weights alone.
        guide_window: side of the window of ``d^2`` in output pixels. Default
            :data:`GUIDE_WINDOW`.

    Returns:
        The new slices (a new tensor; ``images`` is not modified). Memory: about seven more
        stacks of ``images``' size at its peak (one channel; measured with torch's profiler,
        the operators' pseudo-inverses run :data:`MEASURE_CHUNK` slices at a time).
    """
    _check_guide(guide_range, guide_window)
    _check_sigma(sigma)
    if sigma <= 0 or images.shape[0] < 2:
        return images
    with torch.no_grad():
        measured = _measured(groups, images)  # P_i x_i
        unmeasured = images - measured
        num = torch.zeros_like(images)
        den = torch.zeros_like(measured[:, :1])
        for k, lo, hi, w in _neighbour_weights(measured, sigma, guide_range, guide_window):
            num[lo:hi].addcmul_(w, unmeasured[lo + k:hi + k])
            den[lo:hi].add_(w)
        del unmeasured
        mix = num.div_(den)
        mix.sub_(_measured(groups, mix))  # its unmeasured part, in place
        return mix.add_(measured)


def neighbour_support(images: torch.Tensor, groups: Sequence[tuple[Any, Sequence[int]]], *,
                      sigma: float, guide_range: float | None = GUIDE_RANGE,
                      guide_window: int = GUIDE_WINDOW) -> torch.Tensor:
    """How many guesses :func:`cohere_slices` averages at each pixel: the sum of its weights,
    the slice itself counting 1.

    It is between 1 and the sum of the Gaussian weights (about ``sigma * sqrt(2 pi)``) and
    lowest where the measurements show the anatomy changing from slice to slice, and at the
    ends of the stack (neighbours on one side). It depends on ``images`` only through their
    measured parts ``A_i^+ A_i x_i``, so the back-projected measurements give it before any
    solve. Same arguments as :func:`cohere_slices`.

    Returns:
        ``[N, 1, H, W]`` (ones when ``sigma <= 0`` or for a single slice).
    """
    _check_guide(guide_range, guide_window)
    _check_sigma(sigma)
    if sigma <= 0 or images.shape[0] < 2:
        return torch.ones_like(images[:, :1])
    with torch.no_grad():
        measured = _measured(groups, images)
        den = torch.zeros_like(measured[:, :1])
        for _, lo, hi, w in _neighbour_weights(measured, sigma, guide_range, guide_window):
            den[lo:hi].add_(w)
        return den


def _check_sigma(sigma: Any) -> None:
    """``sigma``: a finite number of slices (``<= 0``: no coherence)."""
    if not (is_real(sigma) and math.isfinite(sigma)):
        raise MedreconInputError(f"sigma={sigma!r}; expected a finite width in slices (0 or "
                                 "less: no coherence).")


def _check_guide(guide_range: Any, guide_window: Any) -> None:
    """``guide_range`` (a number > 0, or None) and ``guide_window`` (an odd number >= 1).

    Raises:
        MedreconInputError: naming the value and what is accepted.
    """
    if guide_range is not None and not (is_real(guide_range) and math.isfinite(guide_range)
                                        and guide_range > 0):
        raise MedreconInputError(f"guide_range={guide_range!r}; expected a number > 0, or None "
                                 "for Gaussian weights alone.")
    if isinstance(guide_window, bool) or not isinstance(guide_window, int) or guide_window < 1 \
            or guide_window % 2 == 0:
        raise MedreconInputError(f"guide_window={guide_window!r}; expected an odd number of "
                                 "pixels >= 1.")


def _neighbour_weights(measured: torch.Tensor, sigma: float, guide_range: float | None,
                       guide_window: int):
    """The weights of :func:`cohere_slices`, one slice offset ``k`` at a time: yields
    ``(k, lo, hi, w)``, slices ``lo <= i < hi`` taking slice ``i + k`` with weight ``w``
    ``[hi - lo, 1, H, W]`` (``measured``: the slices' measured parts ``[N, C, H, W]``)."""
    n = measured.shape[0]
    guide = measured if measured.shape[1] == 1 else measured.mean(1, keepdim=True)  # [N,1,H,W]
    inv_h2 = 0.0 if guide_range is None else 1.0 / (guide_range * _robust_range(guide)) ** 2
    radius = min(max(1, int(math.ceil(3.0 * sigma))), n - 1)  # no neighbour beyond the stack
    pad = guide_window // 2
    for k in range(-radius, radius + 1):
        lo, hi = max(0, -k), min(n, n - k)  # slice i (lo <= i < hi) takes slice i + k
        if lo >= hi:
            continue
        g = math.exp(-0.5 * (k / sigma) ** 2)
        if inv_h2 and k:
            d2 = torch.sub(guide[lo:hi], guide[lo + k:hi + k]).square_()
            w = F.avg_pool2d(d2, guide_window, stride=1, padding=pad, count_include_pad=False)
            del d2
            w.mul_(-inv_h2).exp_().mul_(g)
        else:
            w = torch.full_like(guide[lo:hi], g)
        yield k, lo, hi, w


#: Slices per pseudo-inverse call of :func:`_measured`: its temporaries (the operator's
#: padding, spectra, the float32 copy) are several times their input, so a whole stack at once
#: took 12 to 16 stacks of memory.
MEASURE_CHUNK = 8


def _measured(groups: Sequence[tuple[Any, Sequence[int]]], x: torch.Tensor) -> torch.Tensor:
    """Every slice's measured part ``A_i^+ A_i x_i`` (computed in float32, in ``x``'s dtype),
    :data:`MEASURE_CHUNK` slices at a time."""
    covered = sorted(int(i) for _, idx in groups for i in idx)
    if covered != list(range(x.shape[0])):
        raise MedreconInputError(f"the groups cover {len(set(covered))} distinct slice(s) of "
                                 f"{x.shape[0]} ({len(covered)} entries); expected every slice "
                                 "once (the operators of NativeProblem.groups).")
    out = torch.empty_like(x)
    for op, idx in groups:
        idx = list(idx)
        for k in range(0, len(idx), MEASURE_CHUNK):
            part = idx[k:k + MEASURE_CHUNK]
            out[part] = op.A_dagger(op.A(x[part].to(torch.float32))).to(x.dtype)
    return out
