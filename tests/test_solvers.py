"""Tests of the generative solvers (CSGM, BRGM MAP/variational, IAGAN), back-projection and
``solve`` with tiny random StyleGAN2 generators (16 px, a few ms per synthesis)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from medrecon.errors import MedreconInputError
from medrecon.physics.inpainting import Inpainting
from medrecon.physics.mri import MRI
from medrecon.physics.noise import GaussianNoise
from medrecon.physics.superres import SuperResolution
from medrecon.solvers import (
    METHODS,
    Reconstruction,
    back_project,
    brgm,
    brgm_variational,
    colinearity,
    csgm,
    iagan,
    solve,
)
from tests._tiny import tiny_generator

R = 16


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these tiny problems only lose time to thread hand-offs on a busy
    2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float) -> torch.Tensor:
    """Per-image PSNR in dB."""
    mse = ((a - b) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse)


@pytest.fixture(scope="module")
def G():
    """Tiny generator with an 8-dim W, so an in-range image is identifiable from few samples."""
    return tiny_generator(resolution=R, seed=0, z_dim=8, w_dim=8).requires_grad_(False)


@pytest.fixture(scope="module")
def truth(G):
    """Three in-range slices x = G(w*) (w* mapped with truncation 0.7, a typical sample)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        ws = G.mapping(torch.randn(3, G.z_dim, generator=g), None, truncation_psi=0.7)
        return G.synthesis(ws, noise_mode="const")


def mri_mask(n: int = R) -> torch.Tensor:
    """4x Cartesian mask: every 4th column plus 4 central lines (28 % sampled at 16 px)."""
    m = torch.zeros(n, n)
    m[:, ::4] = 1
    m[:, n // 2 - 2:n // 2 + 2] = 1
    return m


def sr_op(**kw):
    return SuperResolution(4, img_size=R, **kw)


# ---------------------------------------------------------------------------------------------
# Recovery of in-range images: the optimisation is known to work


@pytest.mark.parametrize("task", ["sr", "mri"])
def test_csgm_recovers_in_range_image(G, truth, task):
    op = sr_op() if task == "sr" else MRI(mri_mask())
    y = op.A(truth)
    rec = csgm(y, op, G, space="w", steps=150, restarts=4, probes=32, device="cpu", seed=0)
    rng = float(truth.max() - truth.min())
    assert psnr(rec.image, truth, rng).min() > 35.0


def test_brgm_recovers_in_range_image_mri(G, truth):
    op = MRI(mri_mask())
    y = op.A(truth)
    rec = brgm(y, op, G, steps=150, perceptual="off", colinearity_weight=1e3, device="cpu")
    rng = float(truth.max() - truth.min())
    assert psnr(rec.image, truth, rng).min() > 35.0


# ---------------------------------------------------------------------------------------------
# Every solver reduces its objective, handles batches, returns CPU float32


@pytest.mark.parametrize("method", ["csgm", "brgm", "brgm_variational", "iagan"])
def test_solver_reduces_objective_and_handles_batch(G, truth, method):
    op = sr_op()
    y = op.A(truth)
    opts = {
        "csgm": dict(steps=30, restarts=2, probes=4),
        "brgm": dict(steps=30, perceptual="off"),
        "brgm_variational": dict(steps=30, samples_per_step=2, num_samples=3, perceptual="off"),
        "iagan": dict(steps=20, stage1_options=dict(steps=20, restarts=2, probes=4)),
    }[method]
    rec = solve(y, op, G, method=method, bp=False, device="cpu", **opts)
    assert isinstance(rec, Reconstruction)
    assert rec.image.shape == truth.shape and rec.image.dtype == torch.float32
    assert rec.image.device.type == "cpu" and torch.isfinite(rec.image).all()
    assert rec.latents.shape == (3, G.num_ws, G.w_dim)
    h = rec.loss_history
    assert len(h) >= 20 and all(isinstance(v, float) for v in h)
    if method == "brgm_variational":  # stochastic objective: compare averages
        assert sum(h[-5:]) / 5 < sum(h[:5]) / 5
        assert rec.samples.shape == (3, *truth.shape)
        assert rec.std.shape == truth.shape and bool((rec.std > 0).any())
    elif method == "iagan":  # stage 2 continues below the stage-1 result
        n1 = rec.info["stages"][0][1]
        assert h[-1] < h[0] and min(h[n1:]) <= h[n1]
    else:
        assert h[-1] < h[0]
    assert rec.seconds > 0 and rec.device == "cpu"


def test_batch_matches_single_slices(G, truth):
    """Slices are independent problems: the batched result equals per-slice runs."""
    op = MRI(mri_mask())
    y = op.A(truth)
    kw = dict(space="w", steps=15, restarts=2, probes=4, check_every=0, device="cpu", seed=3)
    both = csgm(y[:2], op, G, **kw)
    one = csgm(y[1:2], op, G, **kw)
    torch.testing.assert_close(both.image[1:2], one.image, atol=1e-4, rtol=1e-4)


def test_early_stopping_and_posterior_draws_are_per_slice(G, truth):
    """A slice's result does not depend on its batch-mates: early stopping freezes each problem
    on its own (the slices stop at different steps here) and the variational draws are shared."""
    op = MRI(mri_mask())
    y = op.A(truth)
    kw = dict(space="w+", steps=60, restarts=2, probes=4, check_every=5, patience=1, tol=0.2,
              device="cpu", seed=3)
    both = csgm(y, op, G, **kw)
    ones = [csgm(y[b:b + 1], op, G, **kw) for b in range(3)]
    assert len({o.info["steps_run"] for o in ones}) > 1  # solo runs stop at different steps
    assert both.info["steps_run"] == max(o.info["steps_run"] for o in ones)
    for b, one in enumerate(ones):
        torch.testing.assert_close(both.image[b:b + 1], one.image, atol=1e-4, rtol=1e-4)
    vkw = dict(steps=6, num_samples=3, samples_per_step=2, perceptual="off", seed=1,
               device="cpu")
    v = brgm_variational(y, op, G, **vkw)
    for b in range(3):
        vb = brgm_variational(y[b:b + 1], op, G, **vkw)
        torch.testing.assert_close(v.samples[:, b:b + 1], vb.samples, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(v.std[b:b + 1], vb.std, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# Seeds and RNG


def test_seeded_determinism_and_global_rng_untouched(G, truth):
    op = sr_op()
    y = op.A(truth[:1])
    state = torch.get_rng_state()
    kw = dict(steps=10, restarts=2, probes=8, device="cpu")
    a = csgm(y, op, G, seed=5, **kw)
    b = csgm(y, op, G, seed=5, **kw)
    c = csgm(y, op, G, seed=6, **kw)
    v1 = brgm_variational(y, op, G, steps=5, num_samples=2, samples_per_step=1,
                          perceptual="off", seed=1, device="cpu")
    v2 = brgm_variational(y, op, G, steps=5, num_samples=2, samples_per_step=1,
                          perceptual="off", seed=1, device="cpu")
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.image, b.image) and torch.equal(v1.samples, v2.samples)
    assert not torch.equal(a.latents, c.latents)


def test_slice_seeds_are_apart_and_keep_a_lone_images_seed():
    from medrecon.solvers._common import slice_seed
    from medrecon.solvers.iagan import member_seed

    assert slice_seed(7, 0) == 7  # a lone image (slice 0) keeps the caller's seed
    seeds = [slice_seed(7, i) for i in range(200)]
    assert len(set(seeds)) == 200 and all(0 <= s < 2**63 for s in seeds)
    assert not set(seeds[1:]) & {member_seed(7, k) for k in range(1, 200)}
    assert seeds == [slice_seed(7, i) for i in range(200)] and slice_seed(8, 1) != seeds[1]


def test_per_slice_seeds_give_each_slice_its_own_draws(G, truth):
    """One seed per slice: slice b of a batch is slice b solved alone with its own seed (no
    batch-mate changes it), equal seeds on equal data agree, different seeds start apart; in
    CSGM, IAGAN (member k of slice b: member_seed(seed[b], k)) and BRGM's posterior draws."""
    from medrecon.solvers.iagan import member_seed

    op = sr_op()
    y = op.A(truth[:1]).repeat(3, 1, 1, 1)  # one slice three times
    kw = dict(space="w+", steps=4, restarts=1, probes=4, probe_mean=False, check_every=0,
              device="cpu")
    rec = csgm(y, op, G, seed=[3, 4, 3], **kw)
    torch.testing.assert_close(rec.image[1:2], csgm(y[:1], op, G, seed=4, **kw).image,
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(rec.latents[0], rec.latents[2])
    assert not torch.allclose(rec.latents[0], rec.latents[1])
    ikw = dict(steps=3, lr_weights=1e-2, device="cpu",
               stage1_options=dict(steps=2, restarts=1, probes=3))
    ens = iagan(y[:2], op, G, ensemble=2, seed=[5, 9], **ikw)
    assert ens.info["member_seeds"] == [[5, 9], [member_seed(5, 1), member_seed(9, 1)]]
    alone = iagan(y[:1], op, G, ensemble=2, seed=9, **ikw)
    torch.testing.assert_close(ens.samples[:, 1:2], alone.samples, atol=1e-4, rtol=1e-4)
    vkw = dict(steps=3, num_samples=2, samples_per_step=2, perceptual="off", device="cpu")
    v = brgm_variational(y[:2], op, G, seed=[1, 2], **vkw)
    torch.testing.assert_close(v.samples[:, 1:2], brgm_variational(y[:1], op, G, seed=2,
                                                                   **vkw).samples,
                               atol=1e-4, rtol=1e-4)
    assert not torch.allclose(v.samples[:, 0], v.samples[:, 1])


@pytest.mark.parametrize("seed, match", [([1, 2], "2 seeds for 3 slice"), (-1, "seed=-1"),
                                         ([1, 2.5, 3], "seed=2.5"), (True, "seed=True"),
                                         (2**63, "from 0 to 2\\*\\*63 - 1")])
def test_bad_seeds_stop_before_any_solve(G, truth, seed, match):
    op = sr_op()
    y = op.A(truth)
    for solver, kw in ((csgm, dict(steps=1, probes=2)), (iagan, dict(steps=1)),
                       (brgm, dict(steps=1, probes=0, perceptual="off")),
                       (brgm_variational, dict(steps=1, perceptual="off"))):
        with pytest.raises(MedreconInputError, match=match):
            solver(y, op, G, seed=seed, device="cpu", **kw)


# ---------------------------------------------------------------------------------------------
# IAGAN


def test_iagan_keeps_caller_generator_and_returns_best_iterate(G, truth):
    op = sr_op()
    y = op.A(truth[:2])
    G2 = copy.deepcopy(G).requires_grad_(True)
    before = {k: v.clone() for k, v in G2.state_dict().items()}
    rec = iagan(y, op, G2, steps=25, lr_weights=1e-2, device="cpu",
                stage1_options=dict(steps=10, restarts=1, probes=4))
    after = G2.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.requires_grad for p in G2.parameters())  # flags untouched too
    # the returned image has the lowest objective seen in stage 2 (not the last iterate)
    n1 = rec.info["stages"][0][1]
    data = ((op.A(rec.image) - y) ** 2).flatten(1).mean(1)
    assert float(data.mean()) <= min(rec.loss_history[n1:]) + 1e-6
    torch.testing.assert_close(data, torch.tensor(rec.info["objective"]), rtol=1e-4, atol=1e-7)


def test_iagan_batched_adaptation_matches_single_slices(G, truth):
    """Stacked per-slice weights under vmap give each slice exactly its own IAGAN run, and the
    loop fall-back gives the same numbers."""
    from medrecon.solvers import _common as Cm
    from medrecon.solvers import adapt_weights
    from medrecon.solvers.iagan import _StackedSynthesis

    op = sr_op()
    y = op.A(truth)
    ws0 = G.mapping.w_avg[None, None].repeat(3, G.num_ws, 1)
    kw = dict(steps=8, lr_latent=1e-2, lr_weights=1e-2, noise_var=0.0,
              progress=Cm.Progress(None, stage="iagan", total_steps=8),
              amp=lambda: Cm.autocast(torch.device("cpu"), False))
    img, ws, obj, hist, done = adapt_weights(G, ws0, y, op, **kw)
    assert done == 8 and len(hist) == 8 and obj.shape == (3,)
    for b in range(3):
        img_b, ws_b, obj_b, _, _ = adapt_weights(G, ws0[b:b + 1], y[b:b + 1], op, **kw)
        torch.testing.assert_close(img[b:b + 1], img_b, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(obj[b], obj_b[0], atol=1e-7, rtol=1e-3)
    # adaptation lowered every slice's objective below the starting point
    with torch.no_grad():
        start = ((op.A(G.synthesis(ws0, noise_mode="const")) - y) ** 2).flatten(1).mean(1)
    assert bool((obj < start).all())
    # the loop fall-back evaluates the same stacked network
    net = _StackedSynthesis(G.synthesis, 3)
    with torch.no_grad():
        a = net(ws0)
        net.vectorised = False
        torch.testing.assert_close(net(ws0), a, atol=1e-5, rtol=1e-4)
    assert not any(p.requires_grad for p in G.parameters())


def test_iagan_adaptation_of_a_slice_does_not_depend_on_its_batch(G, truth):
    """The fused Adam update rounds some values of a tensor's scalar tail differently from its
    vector lanes, and the per-slice scalars (noise strengths, a 1-channel ToRGB bias) of the
    last slices of a stack were in that tail: a 2-run ensemble gave the same slice other
    values in a batch of another size. The stacks are padded so no slice is in a tail."""
    from medrecon.solvers import _common as Cm
    from medrecon.solvers import adapt_weights
    from medrecon.solvers.iagan import STACK_ALIGN, _aligned_stack

    leaf, view = _aligned_stack(torch.arange(6.0).reshape(3, 2))
    assert leaf.shape == (3, -(-2 // STACK_ALIGN) * STACK_ALIGN) and leaf.is_leaf
    assert torch.equal(view, torch.arange(6.0).reshape(3, 2)) and float(leaf[:, 2:].abs().sum()) == 0
    op = sr_op()
    gen = torch.Generator().manual_seed(0)
    n_max = 15
    ws = G.mapping.w_avg[None, None].repeat(n_max, G.num_ws, 1)
    ws = ws + 0.1 * torch.randn(ws.shape, generator=gen)
    y = op.A(truth[torch.arange(n_max) % truth.shape[0]])
    kw = dict(steps=12, lr_latent=1e-2, lr_weights=1e-2, noise_var=0.0,
              progress=Cm.Progress(None, stage="iagan", total_steps=12),
              amp=lambda: Cm.autocast(torch.device("cpu"), False))
    ref = adapt_weights(G, ws[:2], y[:2], op, **kw)[0]
    for n in (3, 5, 6, 7, 15):
        img = adapt_weights(G, ws[:n], y[:n], op, **kw)[0]
        assert torch.equal(img[:2], ref), n
        if n == 7:
            seven = img
    last = adapt_weights(G, ws[5:7], y[5:7], op, **kw)[0]  # the tail of the batch of 7
    assert torch.equal(seven[5:7], last)


def test_solve_merges_stage1_options_with_task_defaults(G, truth):
    from medrecon.solvers import DEFAULTS

    op = sr_op()
    rec = solve(op.A(truth[:1]), op, G, method="iagan", steps=3, device="cpu",
                stage1_options=dict(steps=4, probes=2))
    used = rec.info["stage1_options"]
    assert used["steps"] == 4 and used["probes"] == 2
    assert used["restarts"] == DEFAULTS["sr"]["iagan"]["stage1_options"]["restarts"]
    # the task's noise mode reaches both stages
    mode = DEFAULTS["sr"]["iagan"]["noise_mode"]
    assert rec.info["noise_mode"] == used["noise_mode"] == mode


def test_iagan_ensemble_averages_seeded_member_runs(G, truth):
    """ensemble=K runs K independent IAGANs (member 0 with the caller's seed), returns their
    mean, the members as samples and their spread as std, and reports progress per member."""
    from medrecon.solvers.iagan import member_seed

    op = sr_op()
    y = op.A(truth[:2])
    kw = dict(steps=6, lr_weights=1e-2, device="cpu",
              stage1_options=dict(steps=4, restarts=1, probes=2))
    events = []
    rec = iagan(y, op, G, ensemble=3, seed=5, callback=events.append, **kw)
    seeds = [member_seed(5, k) for k in range(3)]
    assert seeds[0] == 5 and len(set(seeds)) == 3
    assert seeds[1:] != [member_seed(6, k) for k in range(1, 3)]  # nearby seeds do not share
    # member k >= 1 leaves the mean out of its probes
    singles = [iagan(y, op, G, seed=s, **{**kw, "stage1_options": {
        **kw["stage1_options"], "probe_mean": k == 0}}) for k, s in enumerate(seeds)]
    stack = torch.stack([r.image for r in singles])
    assert rec.samples.shape == (3, 2, 1, R, R) and rec.std.shape == (2, 1, R, R)
    # the members' adaptations run as one stacked batch: equal to separate runs up to rounding
    close = dict(atol=5e-5, rtol=1e-4)
    torch.testing.assert_close(rec.samples, stack, **close)
    torch.testing.assert_close(rec.image, stack.mean(0), **close)
    torch.testing.assert_close(rec.std, stack.std(0), **close)
    assert float(rec.std.mean()) > 0  # the members differ
    assert rec.info["ensemble"] == 3 and rec.info["member_seeds"] == seeds
    torch.testing.assert_close(torch.tensor(rec.info["member_objective"]),
                               torch.tensor([r.info["objective"] for r in singles]),
                               atol=1e-7, rtol=1e-3)
    torch.testing.assert_close(rec.latents, singles[0].latents, **close)
    stage1 = [e for e in events if e["stage"] == "csgm"]
    assert {(e["member"], e["members"]) for e in stage1} == {(1, 3), (2, 3), (3, 3)}
    assert any(e["stage"] == "iagan" and e["slices"] == 6 for e in events)  # 3 members x 2
    # ensemble=1 is exactly the plain run
    one = iagan(y, op, G, ensemble=1, seed=5, **kw)
    torch.testing.assert_close(one.image, singles[0].image)
    assert one.samples is None and one.info["ensemble"] == 1
    # the option goes through solve; BP applies to the mean and to every member (so the std
    # describes the back-projected image)
    from medrecon.solvers import back_project

    rec2 = solve(y, op, G, method="iagan", ensemble=3, seed=5, bp=True, noise_mode="const", **kw)
    for k in range(3):
        torch.testing.assert_close(rec2.samples[k], back_project(rec.samples[k], y, op))
        torch.testing.assert_close(op.A(rec2.samples[k]), y, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(rec2.std, rec2.samples.std(0))
    torch.testing.assert_close(op.A(rec2.image), y, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "3"])
def test_iagan_rejects_bad_ensemble(G, truth, bad):
    op = sr_op()
    with pytest.raises(MedreconInputError, match="ensemble"):
        iagan(op.A(truth[:1]), op, G, ensemble=bad, steps=2, device="cpu")


def _zero_noise_copy(G):
    Gz = copy.deepcopy(G)
    with torch.no_grad():
        for m in Gz.modules():
            if hasattr(m, "noise_const"):
                m.noise_const.zero_()
    return Gz


@pytest.mark.parametrize("method", ["csgm", "brgm", "iagan"])
def test_noise_mode_none_turns_noise_inputs_off(G, truth, method):
    """noise_mode='none' is the solver run on a generator whose noise maps are zero; the
    caller's generator keeps its noise maps; 'const' differs from it."""
    assert any(float(m.noise_const.abs().sum()) > 0 for m in G.modules()
               if hasattr(m, "noise_const"))  # the tiny generator has noise inputs
    op = sr_op()
    y = op.A(truth[:2])
    kw = dict(steps=6, device="cpu", seed=3)
    if method == "iagan":
        kw["stage1_options"] = dict(steps=4, probes=2)
    before = {k: v.clone() for k, v in G.state_dict().items()}
    off = solve(y, op, G, method=method, noise_mode="none", **kw)
    assert all(torch.equal(before[k], v) for k, v in G.state_dict().items())
    ref = solve(y, op, _zero_noise_copy(G), method=method, noise_mode="const", **kw)
    torch.testing.assert_close(off.image, ref.image, atol=1e-5, rtol=1e-4)
    const = solve(y, op, G, method=method, noise_mode="const", **kw)
    assert float((const.image - off.image).abs().max()) > 1e-4
    if method == "iagan":
        assert off.info["noise_mode"] == "none"
        assert off.info["stage1_options"]["noise_mode"] == "none"


@pytest.mark.parametrize("method", ["csgm", "brgm", "brgm_variational", "iagan"])
def test_noise_mode_rejects_unknown(G, truth, method):
    op = sr_op()
    with pytest.raises(MedreconInputError, match="noise_mode='random'.*'const'.*'none'"):
        solve(op.A(truth[:1]), op, G, method=method, noise_mode="random", steps=2,
              device="cpu")


def test_iagan_halves_steps_under_noise(G, truth):
    op = sr_op(noise_model=GaussianNoise(0.05))
    y = op.measure(truth[:1], generator=torch.Generator().manual_seed(0))
    rec = iagan(y, op, G, steps=20, device="cpu",
                stage1_options=dict(steps=5, restarts=1, probes=2))
    assert rec.info["steps_run"] == 10


# ---------------------------------------------------------------------------------------------
# Back-projection


@pytest.mark.parametrize("kind", ["sr", "inpainting", "mri"])
def test_back_projection_is_measurement_consistent(truth, kind):
    g = torch.Generator().manual_seed(0)
    if kind == "sr":
        op = sr_op()
    elif kind == "inpainting":
        op = Inpainting((torch.rand(R, R, generator=g) > 0.5).float())
    else:
        op = MRI(mri_mask())
    y = op.A(truth)
    x0 = torch.randn(truth.shape, generator=g)
    xb = back_project(x0, y, op, max_iter=200, tol=1e-8)
    assert xb.dtype == x0.dtype and not xb.is_complex()
    r = op.A(xb) - y
    assert float(r.abs().max()) < 1e-3 * float(y.abs().max())
    # regularised BP moves less than exact BP
    xr = back_project(x0, y, op, eta=1.0, max_iter=200)
    assert torch.linalg.vector_norm(xr - x0) < torch.linalg.vector_norm(xb - x0)


def test_inpainting_back_projection_continues_the_correction_into_the_hole():
    import math

    from medrecon.solvers.backprojection import SEAM_DECAY

    n = 64
    mask = torch.ones(n, n)
    mask[8:56, 8:56] = 0  # a 48 x 48 hole: pixel (32, 32) is 24 pixels from the nearest measured one
    op = Inpainting(mask)
    truth = torch.linspace(-0.5, 0.5, n).reshape(1, 1, 1, n).expand(2, 1, n, n).contiguous()
    y = op.A(truth)
    est = truth + torch.tensor([0.2, -0.1]).reshape(2, 1, 1, 1)  # off by a constant per slice
    xb = back_project(est, y, op)
    assert torch.allclose(op.A(xb), y, atol=1e-6)  # still consistent with every measurement
    err = (xb - truth)[:, 0]
    offset = torch.tensor([0.2, -0.1])
    # next to the edge the offset is removed (the biharmonic extension of a constant residual
    # is that constant), fading with exp(-(dist - 1) / SEAM_DECAY) towards the middle
    assert torch.allclose(err[:, 8, 30], torch.zeros(2), atol=1e-4)
    assert torch.allclose(err[:, 10, 30], offset * (1 - math.exp(-2 / SEAM_DECAY)), atol=1e-3)
    assert torch.allclose(err[:, 32, 32], offset * (1 - math.exp(-23 / SEAM_DECAY)), atol=1e-4)
    # seam=0 is the plain paste: the whole hole keeps the estimate's offset
    plain = back_project(est, y, op, seam=0)
    assert torch.allclose(plain, torch.where(mask.bool(), truth, est), atol=1e-6)
    # linear in the residual (the std of back-projected samples relies on it)
    other = est + 0.05 * torch.randn(est.shape, generator=torch.Generator().manual_seed(1))
    both = back_project(est + other, 2 * y, op) - (est + other)
    assert torch.allclose(both, (xb - est) + (back_project(other, y, op) - other), atol=1e-5)
    with pytest.raises(MedreconInputError, match="seam"):
        back_project(est, y, op, seam=-1)


def test_sample_spread_is_the_spread_of_the_finished_samples():
    from medrecon.solvers.backprojection import sample_spread

    g = torch.Generator().manual_seed(3)
    mask = (torch.rand(R, R, generator=g) > 0.4).float()
    op = Inpainting(mask)
    samples = torch.randn(5, 2, 1, R, R, generator=g)
    y = op.A(torch.randn(2, 1, R, R, generator=g))
    same, std = sample_spread(samples, None)
    assert torch.equal(same, samples) and torch.allclose(std, samples.std(0))
    proj, std_y = sample_spread(samples, op, y=y)
    assert torch.allclose(proj[3], back_project(samples[3], y, op), atol=1e-6)
    _, std_0 = sample_spread(samples, op)  # y = 0: the same spread (affine in the data)
    assert torch.allclose(std_y, std_0, atol=1e-6)
    assert float(std_y[:, :, mask.bool()].abs().max()) < 1e-6  # measured pixels are certain
    assert float(std_y[:, :, ~mask.bool()].min()) > 0
    _, one = sample_spread(samples[:1], op, y=y)
    assert torch.equal(one, torch.zeros_like(one))


def test_solve_auto_bp_depends_on_noise(G, truth):
    kw = dict(method="csgm", steps=5, restarts=1, probes=2, device="cpu")
    clean = sr_op()
    rec = solve(clean.A(truth[:1]), clean, G, **kw)
    assert rec.method == "csgm+bp" and rec.info["bp"] and rec.info["bp_eta"] == 0.0
    torch.testing.assert_close(clean.A(rec.image), clean.A(truth[:1]), atol=1e-3, rtol=1e-3)
    noisy = sr_op(noise_model=GaussianNoise(0.2))
    y = noisy.measure(truth[:1], generator=torch.Generator().manual_seed(0))
    assert solve(y, noisy, G, **kw).method == "csgm"
    assert solve(y, noisy, G, bp=True, **kw).info["bp_eta"] > 0


# ---------------------------------------------------------------------------------------------
# BRGM terms


def test_colinearity_term():
    w = torch.randn(2, 1, 4).repeat(1, 4, 1)
    assert torch.allclose(colinearity(w), torch.zeros(2), atol=1e-5)
    eye = torch.eye(4)[None].repeat(3, 1, 1)  # 4 mutually orthogonal layers -> 6 pairs of 1
    torch.testing.assert_close(colinearity(eye), torch.full((3,), 6.0))
    # every batch item is read (the reference code read item 0 only)
    mixed = torch.cat([w[:1], eye[:1]])
    assert colinearity(mixed)[1] > 5.9


def test_variational_entropy_recovers_prior_without_data(G):
    """With no measurement the posterior is the prior: q's std must grow to sigma_w."""
    op = Inpainting(torch.zeros(R, R))
    y = op.A(torch.zeros(1, 1, R, R))
    rec = brgm_variational(y, op, G, steps=150, lr=0.05, init_std=0.2, colinearity_weight=0,
                           perceptual="off", num_samples=2, samples_per_step=2, device="cpu")
    from medrecon.solvers._common import latent_statistics

    _, sigma = latent_statistics(G)
    ratio = rec.info["latent_std"] / sigma
    assert 0.7 < float(ratio.mean()) < 1.3


def test_perceptual_plugins(G, truth):
    from medrecon.metrics import LPIPSMetric

    op = sr_op()
    y = op.A(truth[:1])
    net = LPIPSMetric(net="vgg", allow_random_backbone=True)
    rec = brgm(y, op, G, steps=3, probes=0, perceptual=net, device="cpu")
    assert rec.info["perceptual"] == "LPIPSMetric" and torch.isfinite(rec.image).all()
    import medrecon.solvers.losses as L

    def missing():
        from medrecon.errors import MissingWeightsError

        raise MissingWeightsError("offline")

    orig = L.load_lpips_vgg
    L.load_lpips_vgg = missing
    try:
        with pytest.warns(UserWarning, match="perceptual term is off"):
            rec = brgm(y, op, G, steps=2, probes=0, perceptual="auto", device="cpu")
        assert rec.info["perceptual"].startswith("off")
        with pytest.raises(MedreconInputError):
            brgm(y, op, G, steps=2, perceptual="lpips", device="cpu")
    finally:
        L.load_lpips_vgg = orig
    # MRI measurements are not images: the term is skipped and said so
    mri = MRI(mri_mask())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rec = brgm(mri.A(truth[:1]), mri, G, steps=2, probes=0, perceptual=net, device="cpu")
    assert "not an image" in rec.info["perceptual"]


# ---------------------------------------------------------------------------------------------
# Callback, registry, validation


def test_callback_reports_progress(G, truth):
    op = sr_op()
    seen = []
    solve(op.A(truth[:1]), op, G, method="iagan", steps=20, device="cpu", callback=seen.append,
          ensemble=1, stage1_options=dict(steps=20, restarts=1, probes=2, check_every=0))
    stages = {d["stage"] for d in seen}
    assert {"csgm", "iagan", "bp"} <= stages
    assert all({"stage", "step", "total_steps", "loss"} <= set(d) for d in seen)
    assert len(seen) <= 10  # throttled: every 10 steps, not every step


def test_registry_and_defaults():
    from medrecon.solvers import DEFAULTS, method_options

    assert {"csgm", "brgm", "brgm_variational", "iagan", "tv", "bicubic"} <= set(METHODS)
    assert method_options("iagan", "mri")["steps"] == DEFAULTS["mri"]["iagan"]["steps"]
    assert method_options("csgm", None)["space"] == "w+"


@pytest.mark.parametrize(
    "bad",
    [
        dict(method="nope"),
        dict(method="csgm", stepz=3),
        dict(method="csgm", steps=-1),
        dict(method="csgm", space="q"),
        dict(method="csgm", y="nan"),
        dict(method="csgm", y="shape"),
        dict(method="csgm", prior="junk"),
        dict(method="csgm", device="tpu"),
        dict(method="iagan", stage1="dip"),
    ],
)
def test_bad_input_raises_input_error(G, truth, bad):
    op = sr_op()
    y = op.A(truth[:1])
    bad = dict(bad)
    which = bad.pop("y", None)
    if which == "nan":
        y = y.clone()
        y[0, 0, 0, 0] = float("nan")
    elif which == "shape":
        y = torch.zeros(1, 1, 5, 5)
    prior = object() if bad.pop("prior", None) else G
    with pytest.raises(MedreconInputError) as info:
        solve(y, op, prior, **bad)
    assert len(str(info.value)) > 20


def test_accepts_prior_with_cached_w_stats(truth):
    from tests._tiny import tiny_prior

    prior = tiny_prior(resolution=R, seed=0, z_dim=8, w_dim=8)
    op = sr_op()
    rec = solve(op.A(truth[:1]), op, prior, method="brgm", steps=5, perceptual="off",
                device="cpu")
    assert rec.image.shape == truth[:1].shape


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_autocast_runs(G, truth):
    op = sr_op()
    rec = solve(op.A(truth), op, G, method="iagan", steps=10, device="cuda",
                stage1_options=dict(steps=10, restarts=2, probes=4))
    assert rec.device.startswith("cuda") and rec.image.device.type == "cpu"
    assert torch.isfinite(rec.image).all()


def test_back_projection_projects_the_samples_and_their_std():
    """With bp the std describes the returned image: a pixel that is measured exactly
    (inpainting) has no spread, and the samples satisfy the measurements like the image."""
    from medrecon.physics import build_operator
    from medrecon.solvers import solve
    from tests._tiny import tiny_prior

    prior = tiny_prior(resolution=16, seed=0)
    op = build_operator("inpaint", img_size=(16, 16), channels=1, seed=0)
    y = op.A(torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1)
    rec = solve(y, op, prior, method="iagan", bp=True, steps=3, ensemble=3, device="cpu",
                stage1_options={"steps": 2, "probes": 2})
    observed = op.mask.expand_as(rec.std) > 0
    assert rec.samples.shape[:2] == (3, 2)
    assert float(rec.std[observed].abs().max()) < 1e-5
    assert float(rec.std[~observed].mean()) > 0
    for s in rec.samples:
        assert torch.allclose(op.A(s), y, atol=1e-5)
    raw = solve(y, op, prior, method="iagan", bp=False, steps=3, ensemble=3, device="cpu",
                stage1_options={"steps": 2, "probes": 2})
    assert float(raw.std[observed].mean()) > 1e-4  # unprojected members do differ there


def test_sparse_sr_takes_less_weight_adaptation(G, monkeypatch):
    """SR measuring at most 1/256 of the pixels (x16) uses SPARSE_SR_DEFAULTS over DEFAULTS
    (chosen on validation images); x8 and explicit options keep theirs."""
    import dataclasses

    import medrecon.solvers.api as api
    from medrecon.physics import build_operator
    from medrecon.solvers import SPARSE_SR_DEFAULTS, measured_fraction

    seen = []

    def fake(y, operator, prior, **kw):
        seen.append(kw["lr_weights"])
        return Reconstruction(image=torch.zeros(y.shape[0], 1, 32, 32))

    monkeypatch.setitem(api.METHODS, "iagan", dataclasses.replace(api.METHODS["iagan"], fn=fake))
    for scale, expect in ((16, SPARSE_SR_DEFAULTS["iagan"]["lr_weights"]),
                          (8, api.DEFAULTS["sr"]["iagan"]["lr_weights"])):
        op = build_operator("sr", img_size=(32, 32), channels=1, scale=scale)
        y = op.A(torch.zeros(1, 1, 32, 32))
        assert measured_fraction(op, y) == pytest.approx(1 / scale**2)
        solve(y, op, G, method="iagan", bp=False, device="cpu")
        assert seen[-1] == expect
    solve(y, op, G, method="iagan", bp=False, device="cpu", lr_weights=5e-4)
    assert seen[-1] == 5e-4
    assert SPARSE_SR_DEFAULTS["iagan"]["lr_weights"] < api.DEFAULTS["sr"]["iagan"]["lr_weights"]


def test_iagan_members_start_apart_where_the_mean_fits_best(G):
    """Where the mean latent fits the measurements best it wins every member's probes; the
    members after the first leave it out, so the ensemble does not collapse into copies of
    one run (a zero spread that claims certainty) while member 0 stays the single run."""
    from medrecon.solvers import csgm

    with torch.no_grad():
        x_mean = G.synthesis(G.mapping.w_avg[None, None].repeat(1, G.num_ws, 1),
                             noise_mode="none")
    op = sr_op()
    y = op.A(x_mean)
    kw = dict(steps=4, lr_weights=1e-2, device="cpu", noise_mode="none",
              stage1_options=dict(steps=3, restarts=1, probes=4))
    # the mean wins the probes whatever the seed: plain CSGM runs coincide
    a, b = (csgm(y, op, G, steps=3, restarts=1, probes=4, noise_mode="none", seed=s,
                 device="cpu") for s in (1, 2))
    torch.testing.assert_close(a.latents, b.latents)
    rec = iagan(y, op, G, ensemble=3, seed=1, **kw)
    assert float(rec.std.min()) > 0  # every pixel: the members differ
    for k in (1, 2):
        assert float((rec.samples[k] - rec.samples[0]).abs().max()) > 1e-4
    one = iagan(y, op, G, ensemble=1, seed=1, **kw)
    torch.testing.assert_close(rec.samples[0], one.image, atol=5e-5, rtol=1e-4)
    assert csgm(y, op, G, steps=3, restarts=1, probes=4, noise_mode="none", seed=1,
                device="cpu", probe_mean=False).latents.sub(a.latents).abs().max() > 0


# ---------------------------------------------------------------------------------------------
# Coupling of neighbouring slices in the latent search (the volume default's stage 1)


def test_neighbour_penalty_sums_each_slices_linked_distances():
    from medrecon.solvers.csgm import neighbour_penalty

    ws = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 2.0], [5.0, 2.0]])  # 4 slices, 1 restart
    links = torch.tensor([1.0, 1.0, 0.0])  # slices 2 and 3 in different slabs
    assert neighbour_penalty(ws, links).tolist() == [1.0, 1.0 + 4.0, 4.0, 0.0]
    # two restarts per slice: restart r is coupled to restart r of the neighbour
    w2 = torch.tensor([[0.0], [10.0], [1.0], [13.0]])  # slice 0: r0 0, r1 10; slice 1: 1, 13
    assert neighbour_penalty(w2, torch.tensor([1.0]), restarts=2).tolist() == [1.0, 9.0, 1.0, 9.0]


def test_coupling_draws_neighbouring_slices_latents_together(G, truth):
    op = sr_op()
    y = op.A(truth)
    kw = dict(steps=30, restarts=1, probes=4, seed=[3, 4, 5], device="cpu")
    free = csgm(y, op, G, **kw)
    tied = csgm(y, op, G, coupling=10.0, **kw)
    gap = lambda r: float((r.latents[1:] - r.latents[:-1]).square().sum())  # noqa: E731
    assert gap(tied) < 0.5 * gap(free)
    assert tied.info["coupling"] == 10.0 and free.info["coupling"] == 0.0
    # no links: the slices are solved on their own, exactly as without coupling
    alone = csgm(y, op, G, coupling=10.0, links=[False, False], **kw)
    assert torch.equal(alone.latents, free.latents)
    # a link between slices 0 and 1 only: slice 2 as without coupling in its own search
    part = csgm(y, op, G, coupling=10.0, links=[True, False], **kw)
    assert float((part.latents[0] - part.latents[1]).square().sum()) < float(
        (free.latents[0] - free.latents[1]).square().sum())
    for bad in (dict(links=[True]), dict(links="yes"), dict(links=[True, 2]),
                dict(coupling=-1.0), dict(coupling=float("nan"))):
        with pytest.raises(MedreconInputError, match="links|coupling"):
            csgm(y, op, G, **{**kw, **bad})


def test_iagan_refuses_stage1_options_its_stage1_does_not_take(G, truth):
    op = sr_op()
    y = op.A(truth[:1])
    with pytest.raises(MedreconInputError, match=r"stage1_options \['coupling'\] are not options "
                                                 r"of stage1='brgm'"):
        iagan(y, op, G, stage1="brgm", stage1_options={"coupling": 1.0}, steps=2, device="cpu")
    with pytest.raises(MedreconInputError, match=r"\['speed'\]"):
        iagan(y, op, G, stage1_options={"speed": 2}, steps=2, device="cpu")
    # the coupling reaches IAGAN's stage 1 through stage1_options
    y3 = op.A(truth)
    kw = dict(steps=2, stage1_options={"steps": 10, "probes": 4}, seed=[1, 2, 3], device="cpu")
    free = iagan(y3, op, G, **kw)
    tied = iagan(y3, op, G, **{**kw, "stage1_options": {**kw["stage1_options"], "coupling": 10.0}})
    assert tied.info["stage1_info"]["coupling"] == 10.0
    assert not torch.allclose(free.image, tied.image)


def test_api_review_fixes_leave_the_callers_objects_and_refuse_early():
    """A solve left the caller's operator on its device (nn.Module.to is in place); 'meta'
    passed as a device; an IAGAN warm start skipped the operator and shape checks; a callback
    that is not callable failed after the solve; huge Gaussian SR kernels and CS matrices were
    allocated before any check; a missing-pixel mask of NaN became observed; 16-bit images
    were not numeric to the metrics."""
    import copy

    import numpy as np

    from medrecon import metrics as M
    from medrecon import physics as P
    from medrecon import solvers as S
    from medrecon.solvers import _common as C
    from tests._tiny import tiny_prior

    sr = P.build_operator("sr", img_size=16, scale=2)
    y = sr.A(torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0)))
    assert C.on_device(sr, torch.device("cpu")) is sr  # already there: no copy
    elsewhere = C.on_device(sr, torch.device("meta"))  # another device: a copy moves, not sr
    assert elsewhere is not sr and all(t.device.type == "meta" for t in elsewhere.buffers())
    assert all(t.device.type == "cpu" for t in sr.buffers())
    op = copy.deepcopy(sr).double()
    before = {k: v.dtype for k, v in op.state_dict().items()}
    with pytest.raises(MedreconInputError, match="cannot run a reconstruction"):
        S.solve(y, sr, None, method="tv", device="meta", steps=2)
    assert {k: v.device.type for k, v in sr.state_dict().items()} == {
        k: "cpu" for k in sr.state_dict()}
    assert {k: v.dtype for k, v in op.state_dict().items()} == before
    with pytest.raises(MedreconInputError, match="callback is a int"):
        S.solve(y, sr, None, method="tv", callback=3, steps=2)
    prior = tiny_prior(resolution=16)
    st = S.iagan(y, sr, prior, steps=2, stage1_options=dict(steps=2, probes=2),
                 return_state=True, device="cpu").state
    with pytest.raises(MedreconInputError, match="but the operator maps"):
        S.iagan(torch.randn(2, 1, 7, 7), sr, prior, steps=2, init=st, device="cpu")
    with pytest.raises(MedreconInputError, match="lacks"):
        S.iagan(y, None, prior, steps=2, init=st, device="cpu")
    with pytest.raises(MedreconInputError, match="y is complex"):
        S.iagan(y.to(torch.complex64), sr, prior, steps=2, init=st, device="cpu")
    with pytest.raises(MedreconInputError, match="does not fit 8x8"):
        P.build_operator("sr", img_size=8, scale=2, kernel="gaussian", sigma=1500)
    with pytest.raises(MedreconInputError, match="compressed-sensing matrix"):
        P.build_operator("cs", img_size=8, m=10**12)
    nan_mask = torch.tensor([[0.3, 0.0], [float("nan"), 1.0]])
    with pytest.raises(MedreconInputError, match="NaN"):
        P.build_operator("inpaint", img_size=2, mask=nan_mask, mask_is_missing=True)
    a = np.full((16, 16), 1000, np.uint16)
    b = a.copy()
    b[0, 0] = 1010
    assert M.psnr(a, b, data_range=4095) == pytest.approx(
        M.psnr(a.astype(np.float64), b.astype(np.float64), data_range=4095))


def test_early_stop_sends_a_last_report():
    """A stop between report steps ended without a report of the step it stopped at."""
    from medrecon import physics as P
    from medrecon import solvers as S
    from tests._tiny import tiny_prior

    sr = P.build_operator("sr", img_size=16, scale=2)
    y = sr.A(torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0)))
    seen = []
    rec = S.csgm(y, sr, tiny_prior(resolution=16), steps=200, restarts=1, probes=2,
                 check_every=3, patience=1, tol=1e9, device="cpu", callback=seen.append)
    assert rec.info["steps_run"] < 200
    assert seen[-1]["step"] == rec.info["steps_run"] and seen[-1].get("stopped_early")
