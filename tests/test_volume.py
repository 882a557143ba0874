"""Whole volumes: warm starts along the slice axis (medrecon.volume, IAGAN init/return_state)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import medrecon.solvers as solvers
from medrecon.errors import MedreconInputError
from medrecon.physics import build_operator
from medrecon.pipeline import reconstruct
from medrecon.solvers.iagan import AdaptedState, iagan
from medrecon.volume import (SLAB, SLICE_COUPLING, VOLUME_ENSEMBLE, cohere_slices, coherence_sigma,
                             neighbour_support, slab_links, solve_in_rounds, warm_start_rounds,
                             warm_steps_for)
from tests._scripts import load_script
from tests._tiny import tiny_prior


@pytest.fixture(scope="module")
def prior():
    return tiny_prior(resolution=16, seed=0)


@pytest.mark.parametrize("n,L", [(1, 8), (7, 1), (10, 4), (150, 8), (9, 3), (5, 16)])
def test_rounds_cover_every_slice_once_from_an_adjacent_solved_parent(n, L):
    idx = list(range(100, 100 + n))
    rounds = warm_start_rounds(idx, L)
    seen: dict[int, int] = {}
    for r, rnd in enumerate(rounds):
        for i, parent in rnd:
            assert i not in seen
            if parent is None:
                assert r == 0
            else:
                assert abs(parent - i) == 1 and seen[parent] == r - 1
                assert (parent - 100) // L == (i - 100) // L  # never across a segment
            seen[i] = r
    assert sorted(seen) == idx
    keys = [i for i, p in rounds[0]]
    assert len(keys) == (n + L - 1) // L if L > 1 else n
    if L > 1:
        assert len(rounds) - 1 <= L // 2


class _SliceIds:
    """A stand-in solver state for solve_in_rounds: which slices it holds."""

    def __init__(self, ids):
        self.ids = list(ids)

    def select(self, j):
        return _SliceIds([self.ids[k] for k in j])

    @staticmethod
    def cat(states):
        return _SliceIds([i for st in states for i in st.ids])


def test_slice_batches_never_leave_a_slice_alone_and_mri_uses_them(monkeypatch):
    """Simulated MRI and CS cut their slices into calls of their own, where a lone last slice
    was solved alone (other CPU kernels than a batch: batch size 2 against 5 changed that
    slice by 2 % of the range). Every path now cuts with slice_batches."""
    from medrecon.volume import slice_batches

    assert slice_batches(list(range(5)), 2) == [[0, 1], [2, 3, 4]]
    assert slice_batches(list(range(5)), 5) == [[0, 1, 2, 3, 4]]
    assert slice_batches(list(range(3)), 1) == [[0], [1], [2]]
    assert slice_batches([7], 4) == [[7]]
    import medrecon.native as N

    calls = []
    real_kwargs = N.solver_kwargs

    def spy(method, **kw):
        calls.append(list(kw["slices"]))
        return real_kwargs(method, **kw)

    monkeypatch.setattr(N, "solver_kwargs", spy)
    vol = np.random.default_rng(0).random((16, 16, 5)).astype(np.float32)
    reconstruct(vol, affine=np.eye(4), task="mri", prior="brain_mri", simulate=True,
                method="zero_filled", batch_size=2)
    assert sorted(len(c) for c in calls) == [2, 3], calls


def test_batch_size_only_groups_a_rounds_problems():
    calls = []
    S = _SliceIds

    def solve_chunk(chunk, init, want):
        calls.append((list(chunk), None if init is None else init.ids, want))
        return S(chunk)

    for bs in (1, 3, 64):
        calls.clear()
        solve_in_rounds(list(range(20)), key_every=5, batch_size=bs, solve_chunk=solve_chunk)
        # at most batch_size slices, one more where a lone last slice joined the call before
        assert all(len(c) <= bs + 1 for c, _, _ in calls)
        if bs == 3:  # rounds of 4 keys, then 8 and 8 slices: no slice alone
            assert [len(c) for c, _, _ in calls] == [4, 3, 3, 2, 3, 3, 2]
        parent_of = {}
        for chunk, init, _ in calls:
            for k, i in enumerate(chunk):
                parent_of[i] = None if init is None else init[k]
        if bs == 1:
            ref = parent_of
        assert parent_of == ref
    assert sum(p is None for p in ref.values()) == 4  # one key per segment of 5


def test_a_coupled_volume_is_solved_in_whole_slabs():
    """With ``slab`` a call holds whole slabs (fixed by position): as many as fit in the
    batch size, at least one; the links couple adjacent slices of one slab only."""
    seen = []
    for bs in (1, 3, 8, 16, 64):
        seen.clear()
        solve_in_rounds(list(range(20)), key_every=1, batch_size=bs, slab=8,
                        solve_chunk=lambda c, init, want: seen.append(list(c)))
        assert sorted(i for c in seen for i in c) == list(range(20))
        for c in seen:  # never a slab cut in two
            assert {i // 8 for i in c} == {i // 8 for i in range(c[0], c[-1] + 1)}
            assert len(c) <= max(bs, 8)
        if bs <= 8:
            assert seen == [list(range(0, 8)), list(range(8, 16)), list(range(16, 20))]
    assert seen == [list(range(20))]  # 64: everything in one call
    assert slab_links([6, 7, 8, 9], 8) == [True, False, True]


@pytest.mark.parametrize("n, bs, slab, sizes", [
    (7, 3, 1, [3, 4]),  # the 7th slice joins the second call instead of going alone
    (7, 2, 1, [2, 2, 3]),
    (7, 1, 1, [1] * 7),  # batch_size 1: every slice alone, as asked
    (17, 8, 8, [8, 9]),  # the lone 17th slice (a slab of its own) joins the slab before
    (17, 1, 8, [8, 9]),
    (17, 64, 8, [17]),
    (1, 8, 1, [1]),
])
def test_no_slice_is_left_alone_in_a_call(n, bs, slab, sizes):
    """A call of one slice runs other CPU kernels than a batch, so a lone last slice joins
    the call before it; only batch_size 1 (or a lone slice) solves a slice alone."""
    seen = []
    solve_in_rounds(list(range(n)), key_every=1, batch_size=bs, slab=slab,
                    solve_chunk=lambda c, init, want: seen.append(list(c)))
    assert [len(c) for c in seen] == sizes
    assert [i for c in seen for i in c] == list(range(n))
    assert slab_links([2, 4, 5], 8) == [False, True]  # not adjacent along the axis: not linked
    assert slab_links([3], 8) == []


def test_default_volume_couples_neighbouring_slices_in_stage1(prior, monkeypatch):
    """The SR volume default passes the coupling and its slab links to IAGAN's stage 1; a lone
    image, a chosen ensemble and coherence 0 are solved as before, without it; the result
    does not depend on the batch size."""
    vol, _ = _volume(10)
    thin = np.diag([1.0, 1.0, 0.5, 1.0])
    kw = dict(affine=thin, task="sr", prior=prior, scale=2, method="iagan", steps=3, seed=2)
    seen = []
    real = solvers.solve
    monkeypatch.setattr(solvers, "solve", lambda y, op, p, **k: seen.append(
        k.get("stage1_options")) or real(y, op, p, **k))
    a = reconstruct(vol, batch_size=1, **kw)
    assert a.info["coupling"] == SLICE_COUPLING
    assert seen == [{"steps": 3, "coupling": SLICE_COUPLING, "links": [True] * 7},
                    {"steps": 3, "coupling": SLICE_COUPLING, "links": [True]}]
    b = reconstruct(vol, batch_size=10, **kw)
    assert seen[-1]["links"] == [True] * 7 + [False, True]  # both slabs in one call
    assert np.allclose(a.image, b.image, atol=1e-5)
    for other in (dict(ensemble=1), dict(coherence=0)):
        seen.clear()
        r = reconstruct(vol, **{**kw, **other})
        assert "coupling" not in r.info and all("coupling" not in (o or {}) for o in seen)
        if "ensemble" in other:  # the same solve but for the coupling: it does change it
            assert not np.allclose(a.image, r.image, atol=1e-4)
    seen.clear()
    assert "coupling" not in reconstruct(vol[..., :1], **kw).info


def test_default_volume_adapts_longer_unless_steps_are_given(prior, monkeypatch):
    """The SR volume default runs VOLUME_ADAPT_FACTOR times the method's adaptation steps
    (its task and grid defaults), says so in info["adapt_steps"], and leaves stage 1 as it
    is; --steps, a chosen ensemble and a lone image keep the method's own."""
    from medrecon.solvers import OFF_GRID_DEFAULTS, method_options
    from medrecon.volume import VOLUME_ADAPT_FACTOR

    vol, _ = _volume(10)
    thin = np.diag([1.0, 1.0, 0.5, 1.0])
    seen = []
    real = solvers.solve

    def solve(y, op, p, **k):  # what the pipeline asked for; solved short
        seen.append((k.get("steps"), (k.get("stage1_options") or {}).get("steps")))
        return real(y, op, p, **{**k, "steps": 2,
                                 "stage1_options": {**k.get("stage1_options", {}), "steps": 1}})

    monkeypatch.setattr(solvers, "solve", solve)
    kw = dict(affine=thin, task="sr", prior=prior, scale=2, method="iagan", seed=2)
    on_grid = method_options("iagan", "sr")["steps"]
    want = round(on_grid * VOLUME_ADAPT_FACTOR)
    assert want > on_grid
    r = reconstruct(vol, **kw)  # 8 x 8 slices at x2: the 16-pixel prior's own grid
    assert r.info["adapt_steps"] == want and {s for s, _ in seen} == {want}
    assert {s1 for _, s1 in seen} == {None}  # stage 1: the method's default
    seen.clear()
    off = reconstruct(np.pad(vol, ((0, 2), (0, 2), (0, 0)), mode="edge"), **kw)  # 10 x 10
    off_steps = round(OFF_GRID_DEFAULTS["sr"]["iagan"]["steps"] * VOLUME_ADAPT_FACTOR)
    assert off.info["adapt_steps"] == off_steps and {s for s, _ in seen} == {off_steps}
    for other in (dict(steps=7), dict(ensemble=1)):
        seen.clear()
        r = reconstruct(vol, **{**kw, **other})
        assert "adapt_steps" not in r.info
        assert {s for s, _ in seen} == {other.get("steps")}
    seen.clear()
    assert "adapt_steps" not in reconstruct(vol[..., :1], **kw).info and seen == [(None, None)]


def test_tuning_scripts_star_order_starts_every_slice_from_its_key(monkeypatch):
    """scripts/tune_warm_start.py's alternative order (measured, not offered) is a valid
    solve order: one warm round, each slice's parent is its segment's key slice."""
    mod = load_script("scripts/tune_warm_start.py")
    rounds = mod.star_rounds(list(range(12)), 5)
    assert [i for i, _ in rounds[0]] == [2, 7, 10]
    assert sorted(i for rnd in rounds for i, _ in rnd) == list(range(12))
    assert all(p == {0: 2, 1: 7, 2: 10}[i // 5] for i, p in rounds[1])
    assert mod.star_rounds([4], 5) == [[(4, None)]]
    # solve_in_rounds accepts the order (it keeps the key's state for every slice it starts)
    import medrecon.volume as volume

    monkeypatch.setattr(volume, "warm_start_rounds", mod.star_rounds)
    S = _SliceIds
    parents = {}

    def solve_chunk(chunk, init, want):
        for k, i in enumerate(chunk):
            parents[i] = None if init is None else init.ids[k]
        return S(chunk)

    volume.solve_in_rounds(list(range(12)), key_every=5, batch_size=3, solve_chunk=solve_chunk)
    assert parents == {i: (None if i in (2, 7, 10) else {0: 2, 1: 7, 2: 10}[i // 5])
                       for i in range(12)}


def test_iagan_state_round_trip_and_warm_start(prior):
    op = build_operator("sr", img_size=(16, 16), channels=1, scale=2)
    y = op.A(torch.rand(3, 1, 16, 16) * 2 - 1)
    cold = iagan(y, op, prior, steps=3, ensemble=2, seed=1, device="cpu",
                 stage1_options={"steps": 2, "probes": 2}, return_state=True)
    st = cold.state
    assert isinstance(st, AdaptedState) and st.latents.shape[:2] == (2, 3)
    assert all(t.shape[:2] == (2, 3) for t in st.weights.values())
    warm = iagan(y[1:], op, prior, steps=2, ensemble=2, seed=1, device="cpu",
                 init=st.select([1, 2]))
    assert warm.info["stage1"] == "warm start" and warm.info["stages"] == [("iagan", 2)]
    # with no steps to take (learning rates 0) the warm start returns the state's images
    frozen = iagan(y[1:], op, prior, steps=1, ensemble=2, seed=1, device="cpu",
                   init=st.select([1, 2]), lr_latent=0.0, lr_weights=0.0, return_state=True)
    assert torch.equal(frozen.state.latents, st.latents[:, 1:])
    with pytest.raises(MedreconInputError, match="ensemble=3"):
        iagan(y[1:], op, prior, steps=1, ensemble=3, device="cpu", init=st.select([1, 2]))
    with pytest.raises(MedreconInputError, match="AdaptedState"):
        iagan(y, op, prior, steps=1, device="cpu", init={"latents": 1})


def _volume(n=10):
    rng = np.random.default_rng(0)
    base = rng.random((8, 8)).astype(np.float32)
    vol = np.stack([base + 0.05 * k for k in range(n)], axis=-1)  # slowly varying slices
    return vol, np.diag([1.0, 1.0, 3.0, 1.0])


def test_volume_warm_starts_are_deterministic_and_batch_independent(prior, monkeypatch):
    vol, aff = _volume()
    kw = dict(task="sr", prior=prior, scale=2, method="iagan", steps=4, ensemble=2, seed=3)
    calls = []
    real = solvers.solve

    def spy(y, op, pr, **k):
        calls.append((y.shape[0], "init" in k, k.get("steps")))
        return real(y, op, pr, **k)

    monkeypatch.setattr(solvers, "solve", spy)
    a = reconstruct(vol, affine=aff, key_every=4, warm_steps=2, batch_size=2, **kw)
    assert sum(n for n, warm, _ in calls if not warm) == 3  # keys of 4 + 4 + 2 slices
    assert all(s == 2 for n, warm, s in calls if warm)
    assert sum(n for n, *_ in calls) == 10
    b = reconstruct(vol, affine=aff, key_every=4, warm_steps=2, batch_size=10, **kw)
    c = reconstruct(vol, affine=aff, key_every=4, warm_steps=2, batch_size=2, **kw)
    assert np.allclose(a.image, b.image, atol=1e-5)
    assert np.array_equal(a.image, c.image)
    assert a.info["key_every"] == 4
    calls.clear()
    cold = reconstruct(vol, affine=aff, key_every=1, batch_size=10, **kw)
    assert calls == [(10, False, 4)] and "key_every" not in cold.info


def test_warm_start_options_are_checked(prior):
    vol, aff = _volume(3)
    for kw, msg in [({"key_every": 0}, "key_every"), ({"warm_steps": 0}, "warm_steps")]:
        with pytest.raises(MedreconInputError, match=msg):
            reconstruct(vol, affine=aff, task="sr", prior=prior, method="iagan", **kw)


def test_volume_options_that_would_change_nothing_are_refused(prior):
    """Warm starts for a method without them, warm_steps without warm starts, and a coherence
    width for a task or method it does not apply to were dropped without a word."""
    vol, aff = _volume(4)
    kw = dict(affine=aff, prior=prior)
    for extra, says in ((dict(task="sr", method="bicubic", key_every=2), "cannot; drop key_every"),
                        (dict(task="sr", method="iagan", warm_steps=5), "pass both or neither"),
                        (dict(task="sr", method="bicubic", coherence=2.0), "makes none"),
                        (dict(task="denoise", method="iagan", coherence=2.0), "not denoise")):
        with pytest.raises(MedreconInputError, match=says):
            reconstruct(vol, **kw, **extra)
    a = reconstruct(vol, **kw, task="sr", method="bicubic", coherence=0)  # off: allowed
    b = reconstruct(vol, **kw, task="sr", method="bicubic", coherence="auto")
    assert "key_every" not in a.info and np.array_equal(np.asarray(a.image), np.asarray(b.image))


def test_default_warm_steps_are_a_quarter_of_the_cold_steps():
    assert warm_steps_for("iagan", "sr", 200) == 50
    assert warm_steps_for("iagan", "sr", 20) == 10
    assert warm_steps_for("iagan", "sr", 8) == 8  # never more than a cold slice's (it was 10)
    assert warm_steps_for("iagan", "sr", 2) == 2
    assert warm_steps_for("iagan", "sr", None) >= 10


def test_spread_returns_the_ensembles_projected_std(prior):
    vol, aff = _volume(2)
    res = reconstruct(vol, affine=aff, task="sr", prior=prior, scale=2, method="iagan", steps=2,
                      ensemble=2, spread=True)
    assert res.std is not None and res.std.shape == res.image.shape
    assert float(np.asarray(res.std).max()) > 0
    plain = reconstruct(vol, affine=aff, task="sr", prior=prior, scale=2, method="iagan",
                        steps=2, ensemble=2)
    assert plain.std is None  # only on request: an ensemble spread is not a posterior std
    with pytest.raises(MedreconInputError, match="gives one estimate"):  # was dropped silently
        reconstruct(vol, affine=aff, task="sr", prior=prior, scale=2, method="bicubic",
                    spread=True)


# ---- coherence across slices (cohere_slices) ------------------------------------------------


def _null_noise(op, shape, gen):
    """Random images in the null space of ``op``."""
    z = torch.randn(shape, generator=gen)
    return z - op.A_dagger(op.A(z))


@pytest.mark.parametrize("kind", ["sr_box", "sr_bicubic", "inpaint"])
def test_cohere_slices_keeps_every_slices_measured_part(kind):
    gen = torch.Generator().manual_seed(0)
    if kind == "inpaint":
        mask = torch.rand(16, 16, generator=gen) > 0.5
        op = build_operator("inpaint", img_size=(16, 16), channels=1, seed=0, mask=mask)
    else:
        op = build_operator("sr", img_size=(16, 16), channels=1, seed=0, scale=2,
                            kernel=kind.split("_")[1])
    x = torch.randn(6, 1, 16, 16, generator=gen)
    before = x.clone()
    out = cohere_slices(x, [(op, [0, 2, 4]), (op, [1, 3, 5])], sigma=1.0)
    assert torch.equal(x, before)  # the input is not modified
    assert torch.allclose(op.A(out), op.A(x), atol=1e-4)
    assert not torch.allclose(out, x, atol=1e-3)  # the unmeasured part did change


def test_cohere_slices_averages_independent_guesses_of_the_unmeasured_detail():
    gen = torch.Generator().manual_seed(1)
    op = build_operator("sr", img_size=(16, 16), channels=1, seed=0, scale=4, kernel="box")
    truth = torch.randn(1, 1, 16, 16, generator=gen).repeat(12, 1, 1, 1)  # the same anatomy
    guess = truth + _null_noise(op, truth.shape, gen)  # consistent, each its own null-space error
    err = lambda v: float((v - truth).pow(2).mean())  # noqa: E731
    out = cohere_slices(guess, [(op, range(12))], sigma=1.0)
    assert err(out) < 0.5 * err(guess)
    # a stack that is the same on every slice has nothing to smooth
    assert torch.allclose(cohere_slices(truth, [(op, range(12))], sigma=2.0), truth, atol=1e-5)


def test_cohere_slices_is_off_for_zero_width_or_one_slice():
    op = build_operator("sr", img_size=(8, 8), channels=1, seed=0, scale=2, kernel="box")
    x = torch.randn(3, 1, 8, 8)
    assert cohere_slices(x, [(op, range(3))], sigma=0.0) is x
    assert cohere_slices(x[:1], [(op, [0])], sigma=2.0) is x[:1] or torch.equal(
        cohere_slices(x[:1], [(op, [0])], sigma=2.0), x[:1])


def test_cohere_slices_guide_keeps_a_changing_anatomy_apart():
    """Where the measured content changes from one slice to the next, the neighbours across
    the change count little: a step between two anatomies is kept sharper than by Gaussian
    weights alone, while a uniform stack is averaged as much."""
    gen = torch.Generator().manual_seed(3)
    op = build_operator("sr", img_size=(16, 16), channels=1, seed=0, scale=4, kernel="box")
    a, b = torch.randn(2, 1, 1, 16, 16, generator=gen)
    truth = torch.cat([a.repeat(6, 1, 1, 1), b.repeat(6, 1, 1, 1)])
    guess = truth + 0.3 * _null_noise(op, truth.shape, gen)
    err = lambda v: float((v - truth).pow(2).mean())  # noqa: E731
    guided = cohere_slices(guess, [(op, range(12))], sigma=3.0)
    plain = cohere_slices(guess, [(op, range(12))], sigma=3.0, guide_range=None)
    assert err(guided) < 0.5 * err(plain)
    assert err(guided) < 0.5 * err(guess)


def test_cohere_slices_plain_weights_are_a_truncated_gaussian():
    gen = torch.Generator().manual_seed(4)
    op = build_operator("sr", img_size=(8, 8), channels=1, seed=0, scale=2, kernel="box")
    x = torch.randn(7, 1, 8, 8, generator=gen)
    sigma = 0.8  # neighbours up to ceil(3 * 0.8) = 3 slices away
    P = lambda v: op.A_dagger(op.A(v))  # noqa: E731
    null = x - P(x)
    ref = torch.empty_like(x)
    for i in range(7):
        js = [j for j in range(7) if abs(j - i) <= 3]
        w = torch.tensor([math.exp(-0.5 * ((j - i) / sigma) ** 2) for j in js])
        m = (w.view(-1, 1, 1, 1) * null[js]).sum(0) / w.sum()
        ref[i] = P(x[i:i + 1])[0] + m - P(m[None])[0]
    out = cohere_slices(x, [(op, range(7))], sigma=sigma, guide_range=None)
    assert torch.allclose(out, ref, atol=1e-5)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(MedreconInputError, match="guide_range"):
            cohere_slices(x, [(op, range(7))], sigma=sigma, guide_range=bad)
    for bad in (4, 0, 2.5, True):
        with pytest.raises(MedreconInputError, match="guide_window"):
            cohere_slices(x, [(op, range(7))], sigma=sigma, guide_window=bad)


def test_neighbour_support_counts_the_guesses_each_pixel_averages():
    """The sum of cohere_slices' weights: the full truncated Gaussian inside a uniform stack,
    less at its ends, less across a change of anatomy, 1 without neighbours; only the
    measured parts matter (the back-projected measurements give it before a solve)."""
    gen = torch.Generator().manual_seed(5)
    op = build_operator("sr", img_size=(16, 16), channels=1, seed=0, scale=4, kernel="box")
    a, b = torch.randn(2, 1, 1, 16, 16, generator=gen)
    stack = torch.cat([a.repeat(8, 1, 1, 1), b.repeat(8, 1, 1, 1)])
    groups = [(op, range(16))]
    sigma = 1.0
    full = sum(math.exp(-0.5 * (k / sigma) ** 2) for k in range(-3, 4))
    s = neighbour_support(stack, groups, sigma=sigma)
    assert s.shape == (16, 1, 16, 16)
    plain = neighbour_support(stack, groups, sigma=sigma, guide_range=None)
    assert torch.allclose(plain[3:13], torch.full_like(plain[3:13], full), atol=1e-5)
    assert torch.allclose(plain[0], torch.full_like(plain[0], full - sum(
        math.exp(-0.5 * k ** 2) for k in (1, 2, 3))), atol=1e-5)  # one side only
    assert torch.allclose(s[2], plain[2], atol=1e-4)  # uniform there: the guide changes nothing
    assert float(s[7].mean()) < float(plain[7].mean()) - 0.5  # next to the change: less
    assert float(s.min()) >= 1.0 - 1e-6
    # the unmeasured detail does not enter
    noisy = stack + _null_noise(op, stack.shape, gen)
    assert torch.allclose(neighbour_support(noisy, groups, sigma=sigma), s, atol=1e-4)
    assert torch.equal(neighbour_support(stack, groups, sigma=0.0), torch.ones_like(s))
    with pytest.raises(MedreconInputError, match="guide_window"):
        neighbour_support(stack, groups, sigma=sigma, guide_window=2)


def test_coherence_width_is_four_output_pixels_in_slices():
    assert coherence_sigma("auto", out_spacing_hw=(0.5, 0.6), slice_spacing=2.0) == 1.0
    assert coherence_sigma(None, out_spacing_hw=(1.0, 1.0), slice_spacing=1.0) == 4.0
    assert coherence_sigma(3.0, out_spacing_hw=(1.0, 1.0), slice_spacing=1.5) == 2.0
    assert coherence_sigma(0.0, out_spacing_hw=(1.0, 1.0), slice_spacing=1.0) == 0.0
    # a legal width over very thin slices overflowed to inf, refused after the whole solve:
    # it is the widest width, every slice of the stack weighed alike
    from medrecon.volume import MAX_SIGMA

    wide = coherence_sigma(1e306, out_spacing_hw=(1.0, 1.0), slice_spacing=1e-3)
    assert wide == MAX_SIGMA == coherence_sigma("auto", out_spacing_hw=(1e150, 1e150),
                                                 slice_spacing=1e-160)
    op = build_operator("sr", img_size=(8, 8), channels=1, seed=0, scale=2, kernel="box")
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    flat = cohere_slices(x, [(op, range(6))], sigma=wide, guide_range=None)
    measured = op.A_dagger(op.A(x))  # each slice keeps its own; the rest is the stack's mean
    torch.testing.assert_close(flat - measured, (x - measured).mean(0, keepdim=True)
                               .expand_as(x), atol=1e-5, rtol=0)


def test_volume_coherence_in_the_pipeline(prior):
    vol, aff = _volume(5)  # 3 mm slices, 1 mm pixels -> x2 SR: 0.5 mm output pixels
    kw = dict(task="sr", prior=prior, scale=2, sr_kernel="box", method="iagan", steps=3,
              ensemble=1, seed=2, key_every=1)
    a = reconstruct(vol, affine=aff, **kw)
    assert a.info["coherence_sigma"] == pytest.approx(4 * 0.5 / 3.0, abs=1e-4)
    b = reconstruct(vol, affine=aff, coherence=0, **kw)
    c = reconstruct(vol, affine=aff, coherence=3.0, **kw)  # one slice of width
    assert "coherence_sigma" not in b.info and c.info["coherence_sigma"] == 1.0
    again = reconstruct(vol, affine=aff, coherence=3.0, **kw)
    assert np.array_equal(c.image, again.image)  # deterministic under the seed
    assert not np.allclose(b.image, c.image, atol=1e-4)
    # the low-resolution content (2 x 2 box means) is that of the uncohered result
    def low(v):
        v = np.asarray(v, np.float64)
        return v.reshape(v.shape[0] // 2, 2, v.shape[1] // 2, 2, -1).mean(axis=(1, 3))
    assert np.abs(low(c.image) - low(b.image)).max() < 1e-3 * np.abs(b.image).max() + 1e-6
    # baselines are left alone
    base = reconstruct(vol, affine=aff, task="sr", prior=prior, scale=2, method="bicubic")
    assert "coherence_sigma" not in base.info


@pytest.mark.parametrize("bad", [-1.0, "wide", float("nan"), True])
def test_coherence_option_is_checked(prior, bad):
    vol, aff = _volume(3)
    with pytest.raises(MedreconInputError, match="coherence"):
        reconstruct(vol, affine=aff, task="sr", prior=prior, method="iagan", coherence=bad)


def test_sr_volumes_of_thin_slices_get_one_run_per_slice(prior, monkeypatch):
    """The neighbours stand in for the ensemble where they are close enough to be averaged;
    a lone image, thick slices, a spread request or an explicit ensemble keep the ensemble."""
    vol, _ = _volume(5)
    thin, thick = np.diag([1.0, 1.0, 0.5, 1.0]), np.diag([1.0, 1.0, 3.0, 1.0])
    kw = dict(task="sr", prior=prior, scale=2, method="iagan", steps=2)
    calls = []
    real = solvers.solve
    monkeypatch.setattr(solvers, "solve", lambda y, op, p, **k: calls.append(
        (k.get("ensemble"), "init" in k)) or real(y, op, p, **k))
    a = reconstruct(vol, affine=thin, **kw)
    assert a.info["ensemble"] == VOLUME_ENSEMBLE == 1
    assert a.info["coherence_sigma"] == pytest.approx(4.0)  # 0.5 mm pixels, 0.5 mm slices
    assert calls and all(not warm for _, warm in calls)  # warm starts are opt-in
    default = solvers.method_options("iagan", "sr").get("ensemble")
    assert default and default > 1
    for other in (dict(affine=thick), dict(affine=thin, spread=True)):
        assert reconstruct(vol, **other, **kw).info["ensemble"] == default
    assert reconstruct(vol[..., :1], affine=thin, **kw).info["ensemble"] == default
    assert reconstruct(vol, affine=thin, ensemble=2, **kw).info["ensemble"] == 2
    inp = dict(affine=thin, task="inpaint", prior=prior, method="iagan", steps=2, simulate=True)
    lone = reconstruct(vol[..., :1], **inp).info["ensemble"]
    assert lone > 1 and reconstruct(vol, **inp).info["ensemble"] == lone  # measured on SR only


def test_cpu_batch_default_follows_the_runs_per_slice(prior, monkeypatch):
    """On the CPU one IAGAN run per slice (the thin-volume default) is solved 8 slices a call,
    an ensemble 4 a call; a batch size given is kept, except that the default's coupled
    stage 1 solves whole slabs."""
    from medrecon.pipeline import CPU_SINGLE_RUN_BATCH, DEFAULT_BATCH

    vol, _ = _volume(9)
    kw = dict(affine=np.diag([1.0, 1.0, 0.5, 1.0]), task="sr", prior=prior, scale=2,
              method="iagan", steps=1, device="cpu")
    calls = []
    real = solvers.solve
    monkeypatch.setattr(solvers, "solve", lambda y, op, p, **k: calls.append(
        y.shape[0]) or real(y, op, p, **k))
    assert reconstruct(vol, **kw).info["ensemble"] == 1
    # 9 slices: the lone 9th joins the call before it (volume._calls)
    assert calls == [CPU_SINGLE_RUN_BATCH + 1] and CPU_SINGLE_RUN_BATCH == 8
    calls.clear()
    reconstruct(vol, ensemble=2, **kw)
    assert calls == [DEFAULT_BATCH["cpu"], DEFAULT_BATCH["cpu"] + 1]
    calls.clear()  # a batch size given is kept where slices are solved on their own ...
    reconstruct(vol, batch_size=3, ensemble=1, **kw)
    assert calls == [3, 3, 3]
    calls.clear()  # ... while the default's coupled stage 1 takes whole slabs of SLAB slices
    reconstruct(vol, batch_size=3, **kw)
    assert calls == [SLAB + 1] and SLAB == 8
    calls.clear()
    reconstruct(vol, batch_size=16, **kw)
    assert calls == [9]
    calls.clear()  # a task whose IAGAN default is one run per slice (no ensemble option given)
    assert solvers.method_options("iagan", "denoise").get("ensemble", 1) == 1
    reconstruct(vol, **{**kw, "task": "denoise", "scale": None})
    assert calls == [CPU_SINGLE_RUN_BATCH + 1]
    calls.clear()  # SR of thick slices: the solver's default ensemble of 4
    reconstruct(vol, **{**kw, "affine": np.diag([1.0, 1.0, 3.0, 1.0])})
    assert calls == [DEFAULT_BATCH["cpu"], DEFAULT_BATCH["cpu"] + 1]


def test_default_volume_result_is_batch_independent_and_seeded(prior):
    """One run per slice + coherence (the SR volume default): the batch size only groups the
    slices' independent solves; the coherence step sees the whole stack either way."""
    vol, _ = _volume(6)
    thin = np.diag([1.0, 1.0, 0.5, 1.0])
    kw = dict(affine=thin, task="sr", prior=prior, scale=2, method="iagan", steps=3, seed=4)
    a = reconstruct(vol, batch_size=1, **kw)
    b = reconstruct(vol, batch_size=6, **kw)
    c = reconstruct(vol, batch_size=1, **kw)
    assert a.info["ensemble"] == 1 and a.info["coherence_sigma"] == pytest.approx(4.0)
    assert np.allclose(a.image, b.image, atol=1e-5)
    assert np.array_equal(a.image, c.image)
    d = reconstruct(vol, batch_size=1, **{**kw, "seed": 5})
    assert not np.allclose(a.image, d.image, atol=1e-4)


def test_iagan_adam_falls_back_where_no_fused_kernel_exists(prior, monkeypatch):
    """The fused Adam update is an optimisation: where torch has no fused kernel for the
    parameters, the default update runs instead, and both give the same result to rounding."""
    iagan_mod = __import__("sys").modules["medrecon.solvers.iagan"]
    op = build_operator("sr", img_size=(16, 16), channels=1, seed=0, scale=2, kernel="box")
    y = op.A(torch.rand(2, 1, 16, 16) * 2 - 1)
    a = iagan(y, op, prior, steps=3, seed=0, stage1_options={"steps": 2, "probes": 4})
    real = torch.optim.Adam

    def no_fused(groups, **kw):
        if kw.get("fused"):
            raise RuntimeError("fused=True is not supported here")
        return real(groups, **kw)

    monkeypatch.setattr(iagan_mod.torch.optim, "Adam", no_fused)
    b = iagan(y, op, prior, steps=3, seed=0, stage1_options={"steps": 2, "probes": 4})
    assert torch.allclose(a.image, b.image, atol=1e-4)


@pytest.mark.parametrize("options, sizes", [
    (dict(), (1, 8, 16)),  # the SR volume default: coupled slabs, coherence
    (dict(ensemble=1, coherence=0), (2, 3, 8)),  # one run per slice, slices on their own
    (dict(ensemble=2, coherence=0), (2, 4)),  # an ensemble's members
    (dict(ensemble=1, coherence=0, key_every=3, warm_steps=4), (2, 3, 8)),  # warm starts
])
def test_batch_size_leaves_every_value_unchanged(prior, options, sizes):
    """Enough steps for the optimisation to amplify any difference in rounding: every batch
    size (>= 2; any, for the coupled default, whose calls hold whole slabs) gives the same
    values to float rounding (the solves bit for bit; the mapping to the output grid after
    them may differ in the last bit). Before, the optimisation amplified rounding where a call
    held 1-3 slices (the CPU's BLAS multiplies fewer than 4 rows in another order; a lone last
    slice): 1e-4 to 2e-3 here, up to 10 % of the range on the brain prior."""
    vol, _ = _volume(10)
    kw = dict(affine=np.diag([1.0, 1.0, 0.5, 1.0]), task="sr", prior=prior, scale=2,
              method="iagan", steps=15, seed=1, device="cpu", **options)
    first, *others = [reconstruct(vol, batch_size=bs, **kw).image for bs in sizes]
    for other in others:
        np.testing.assert_allclose(other, first, rtol=0, atol=1e-5 * float(np.ptp(vol)))


def test_cohere_slices_bounds_its_width_memory_and_inputs():
    """A huge width looped over 3 sigma neighbours that do not exist (1e12 mm hung after the
    solves); sigma NaN / inf / text and groups that miss slices failed with raw errors (or
    read uninitialised memory); the pseudo-inverse of the whole stack at once took 12-16
    stacks of memory. The values are those of the formula."""
    import time

    from torch.profiler import ProfilerActivity, profile

    from medrecon.errors import MedreconInputError
    from medrecon.physics import build_operator
    from medrecon.volume import cohere_slices

    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 1, 64, 64, generator=g)
    op = build_operator("sr", img_size=(64, 64), channels=1, seed=0, scale=4, kernel="bicubic")
    groups = [(op, list(range(20)))]
    out = cohere_slices(x, groups, sigma=2.0)
    # the formula, on the whole stack at once
    from medrecon.volume import _neighbour_weights

    meas = op.A_dagger(op.A(x))
    num, den = torch.zeros_like(x), torch.zeros_like(x)
    for k, lo, hi, w in _neighbour_weights(meas, 2.0, 0.065, 5):
        num[lo:hi] += w * (x - meas)[lo + k:hi + k]
        den[lo:hi] += w
    mix = num / den
    torch.testing.assert_close(out, meas + mix - op.A_dagger(op.A(mix)), atol=1e-5, rtol=1e-5)
    t0 = time.perf_counter()
    cohere_slices(x[:4], [(op, [0, 1, 2, 3])], sigma=1e12)
    assert time.perf_counter() - t0 < 60  # 3 neighbours, not 3e12 (it never finished)
    for bad in (float("nan"), float("inf"), "4"):
        with pytest.raises(MedreconInputError, match="sigma="):
            cohere_slices(x, groups, sigma=bad)
    with pytest.raises(MedreconInputError, match="cover 10 distinct slice"):
        cohere_slices(x, [(op, list(range(10)))], sigma=2.0)
    with pytest.raises(MedreconInputError, match="cover 19 distinct slice"):  # 18 twice
        cohere_slices(x, [(op, [*range(19), 18])], sigma=2.0)
    big = torch.randn(20, 1, 256, 256, generator=g)
    op = build_operator("sr", img_size=(256, 256), channels=1, seed=0, scale=4, kernel="bicubic")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        cohere_slices(big, [(op, list(range(20)))], sigma=4.0)
    cur = peak = 0
    for _, b in sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                       if e.name() == "[memory]"):
        cur += b
        peak = max(peak, cur)
    assert peak / (big.numel() * 4) < 9.5  # stacks of the input (15.8 before)


def test_progress_counts_slices_of_calls_that_are_not_neighbours():
    """A warm-start round solves slices 1, 4, 7 in one call: the progress took them as slices
    1-7 and reported 0.89 ('slice 3/9 done') after 3 of 9 slices, then stood still."""
    import numpy as np

    from medrecon.pipeline import reconstruct

    prior = tiny_prior(resolution=16, seed=0)
    v = np.random.default_rng(0).random((8, 8, 9)).astype(np.float32)
    events = []
    reconstruct(v, affine=np.diag([1.0, 1.0, 3.0, 1.0]), task="sr", prior=prior, scale=2,
                method="iagan", steps=4, ensemble=1, key_every=3, warm_steps=2, seed=0,
                batch_size=3, callback=events.append)
    done, fracs = 0, []
    for e in events:
        if e.get("event") != "progress":
            continue
        if e["message"].endswith("done") and e["message"].startswith("slice "):
            done = int(e["message"].split()[1].split("/")[0])
        else:
            assert e["fraction"] <= (done + 3) / 9 + 1e-6, e  # at most this call's 3 slices on
        fracs.append(e["fraction"])
    assert fracs == sorted(fracs) and done == 9
    assert any("slices 2, 5, 8/9" in e.get("message", "") for e in events)


def test_warm_starts_need_neighbours_that_share_an_operator():
    """Inpainting masks alternating from slice to slice warm-started slice 0 from slice 2;
    a mask per slice solved every slice cold while info said key_every 3. Both are refused;
    one mask for the volume keeps its warm starts."""
    import numpy as np

    from medrecon.errors import MedreconInputError
    from medrecon.pipeline import reconstruct

    prior = tiny_prior(resolution=16, seed=0)
    v = np.random.default_rng(0).random((8, 8, 6)).astype(np.float32)
    alt = np.zeros(v.shape, bool)
    alt[2:4, 2:5, 0::2] = True
    alt[4:6, 1:3, 1::2] = True
    own = np.zeros(v.shape, bool)
    for k in range(6):
        own[k, 1:2 + k, k] = True
    kw = dict(task="inpaint", prior=prior, method="iagan", steps=4, ensemble=1, key_every=3,
              warm_steps=2)
    for mask in (alt, own):
        with pytest.raises(MedreconInputError, match="neighbouring slices that share one"):
            reconstruct(v, mask=mask, **kw)
    one = np.zeros(v.shape, bool)
    one[2:4, 2:5, :] = True
    assert reconstruct(v, mask=one, **kw).info["key_every"] == 3


def test_volume_options_that_would_be_dropped_are_refused_or_kept():
    """On a single slice key_every / warm_steps / a coherence width were accepted and dropped
    (info still said key_every 3); simulated MRI and CS took key_every and solved cold; the SR
    fallback to Lanczos dropped warm starts and coherence with only its generic warning (they
    ask for the generative solver, which now runs)."""
    import numpy as np

    from medrecon.errors import MedreconInputError
    from medrecon.pipeline import asks_generative, may_fall_back, reconstruct

    prior = tiny_prior(resolution=16, seed=0)
    img = np.random.default_rng(0).random((8, 8, 1)).astype(np.float32)
    for kw in ({"key_every": 3, "warm_steps": 2}, {"coherence": 5.0}):
        with pytest.raises(MedreconInputError, match="this image has one slice"):
            reconstruct(img, task="sr", prior=prior, scale=2, method="iagan", steps=2, **kw)
    vol = np.random.default_rng(0).random((16, 16, 4)).astype(np.float32)
    for task in ("mri", "cs"):
        with pytest.raises(MedreconInputError, match="solves every slice cold"):
            reconstruct(vol, task=task, prior=prior, method="iagan", steps=2, ensemble=1,
                        key_every=3, simulate=True)
    assert asks_generative(key_every=3) and asks_generative(coherence="3")
    assert asks_generative(warm_steps=5) and asks_generative(spread=True)
    assert not asks_generative(key_every=1, coherence="auto")
    assert not asks_generative(coherence=0.0)
    assert not may_fall_back(task="sr", simulate=False, method_chosen=False, samples=0,
                             ensemble=None, generative_options=True)
    assert may_fall_back(task="sr", simulate=False, method_chosen=False, samples=0,
                         ensemble=None)


def test_a_warm_start_state_is_checked_against_the_generator(prior):
    """iagan(init=...) checked only the member and slice counts: a missing weight was a
    KeyError inside the solver, a wrongly shaped one was broadcast, another architecture's
    state ran that network and NaN latents returned a NaN image. csgm's links took no numpy
    or torch booleans ('expected 2 booleans')."""
    from medrecon.solvers.csgm import _check_links

    op = build_operator("sr", img_size=(16, 16), channels=1, seed=0, scale=2, kernel="box")
    y = op.A(torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    st = iagan(y, op, prior, steps=2, stage1_options={"steps": 2}, return_state=True).state
    bad = dict(st.weights)
    bad["b4.const"] = bad["b4.const"][..., :1]
    other = tiny_prior(resolution=16, seed=0, synthesis_kwargs=dict(channel_max=16))
    for p, init, says in ((prior, AdaptedState(st.latents, {}), "not this generator's"),
                          (prior, AdaptedState(st.latents, bad), "'b4.const' is"),
                          (other, st, "expected"),
                          (prior, AdaptedState(st.latents * float("nan"), st.weights), "NaN")):
        with pytest.raises(MedreconInputError, match=says):
            iagan(y, op, p, steps=2, init=init)
    assert iagan(y, op, prior, steps=2, init=st).image.shape == (3, 1, 16, 16)
    assert _check_links(np.array([True, False]), 3) == [True, False]
    assert _check_links(torch.tensor([1, 0]), 3) == [True, False]
    with pytest.raises(MedreconInputError, match="expected 2 booleans"):
        _check_links(np.array([2, 0]), 3)


def test_a_short_stack_keeps_the_ensemble(prior, monkeypatch):
    """One run per slice needs about 4 guesses in reach of each slice: 3 slices (support 2.9
    at a 4-slice width) kept one run per slice and lost 0.25 dB to the ensemble on Colin27."""
    from medrecon.volume import VOLUME_MIN_SUPPORT, stack_support

    assert stack_support(3, 4.0) == pytest.approx(2.88, abs=0.01)
    assert stack_support(150, 4.0) == pytest.approx(9.81, abs=0.01)
    assert stack_support(1, 4.0) == 1.0 and stack_support(5, 0.0) == 1.0
    assert stack_support(4, 4.0) < VOLUME_MIN_SUPPORT <= stack_support(5, 4.0)
    seen = []
    real = solvers.solve
    monkeypatch.setattr(solvers, "solve", lambda y, op, p, **k: seen.append(
        k.get("ensemble")) or real(y, op, p, **k))
    thin = np.diag([1.0, 1.0, 0.25, 1.0])  # thin slices: a coherence width of several slices
    for n, one_run in ((3, False), (10, True)):
        vol, _ = _volume(n)
        seen.clear()
        r = reconstruct(vol, affine=thin, task="sr", prior=prior, scale=2, method="iagan",
                        steps=2, seed=0)
        assert (r.info.get("coupling") is not None) == one_run
        assert all((e == 1) == one_run for e in seen), seen
