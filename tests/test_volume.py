"""Whole volumes: warm starts along the slice axis (medrecon.volume, IAGAN init/return_state)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import medrecon.solvers as solvers
from medrecon.errors import MedreconInputError
from medrecon.physics import build_operator
from medrecon.pipeline import reconstruct
from medrecon.solvers.iagan import AdaptedState, iagan
from medrecon.volume import solve_in_rounds, warm_start_rounds, warm_steps_for
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


def test_batch_size_only_groups_a_rounds_problems():
    calls = []
    S = _SliceIds

    def solve_chunk(chunk, init, want):
        calls.append((list(chunk), None if init is None else init.ids, want))
        return S(chunk)

    for bs in (1, 3, 64):
        calls.clear()
        solve_in_rounds(list(range(20)), key_every=5, batch_size=bs, solve_chunk=solve_chunk)
        assert all(len(c) <= bs for c, _, _ in calls)
        parent_of = {}
        for chunk, init, _ in calls:
            for k, i in enumerate(chunk):
                parent_of[i] = None if init is None else init[k]
        if bs == 1:
            ref = parent_of
        assert parent_of == ref
    assert sum(p is None for p in ref.values()) == 4  # one key per segment of 5


def test_tuning_scripts_star_order_starts_every_slice_from_its_key(monkeypatch):
    """scripts/tune_warm_start.py's alternative order (measured, not offered) is a valid
    solve order: one warm round, each slice's parent is its segment's key slice."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "tune_warm_start.py"
    spec = importlib.util.spec_from_file_location("tune_warm_start", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
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


def test_baselines_and_samplers_ignore_warm_starts(prior):
    vol, aff = _volume(4)
    a = reconstruct(vol, affine=aff, task="sr", prior=prior, method="bicubic", key_every=2)
    assert "key_every" not in a.info


def test_default_warm_steps_are_a_quarter_of_the_cold_steps():
    assert warm_steps_for("iagan", "sr", 200) == 50
    assert warm_steps_for("iagan", "sr", 8) == 10
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
    base = reconstruct(vol, affine=aff, task="sr", prior=prior, scale=2, method="bicubic",
                       spread=True)
    assert base.std is None
