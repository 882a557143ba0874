"""bf16 autocast of the synthesis on CPUs with native bf16: detection and its error bound."""

from __future__ import annotations

import contextlib

import pytest
import torch

from medrecon.physics import build_operator
from medrecon.solvers import _common as C
from medrecon.solvers import solve
from tests._tiny import tiny_prior


def test_cpu_bf16_is_opt_in_and_needs_native_support(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv("MEDRECON_CPU_BF16", raising=False)
    assert not C.cpu_bf16() and isinstance(C.autocast(cpu), contextlib.nullcontext)
    monkeypatch.setenv("MEDRECON_CPU_BF16", "1")
    monkeypatch.setattr(C, "cpu_native_bf16", lambda: False)  # emulated bf16: slower, stay fp32
    assert not C.cpu_bf16()
    monkeypatch.setattr(C, "cpu_native_bf16", lambda: True)
    ctx = C.autocast(cpu)
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16
    assert isinstance(C.autocast(cpu, enabled=False), contextlib.nullcontext)
    monkeypatch.setenv("MEDRECON_CPU_BF16", "0")
    assert isinstance(C.autocast(cpu), contextlib.nullcontext)


def _force_bf16(monkeypatch, on: bool) -> None:
    monkeypatch.setenv("MEDRECON_CPU_BF16", "1" if on else "0")
    monkeypatch.setattr(C, "cpu_native_bf16", lambda: True)  # torch emulates it where absent


def test_bf16_synthesis_stays_within_its_rounding(monkeypatch):
    G = tiny_prior(resolution=16, seed=0).generator.eval()
    ws = G.mapping(torch.randn(4, G.z_dim, generator=torch.Generator().manual_seed(0)), None)
    with torch.no_grad():
        ref = G.synthesis(ws, noise_mode="const")
        _force_bf16(monkeypatch, True)
        with C.autocast(torch.device("cpu")):
            low = G.synthesis(ws, noise_mode="const").float()
    err = (low - ref).abs()
    # bf16 keeps 8 significant bits: relative error ~2^-8 per operation, a few layers deep
    assert float(err.max()) < 0.05 * float(ref.abs().max())
    assert float(err.mean()) < 0.01 * float(ref.abs().mean()) + 1e-3


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(4.0 / (a - b).pow(2).mean().clamp_min(1e-12)))  # range [-1, 1]


@pytest.mark.parametrize("method", ["csgm", "iagan"])
def test_bf16_solves_are_as_good_as_fp32(monkeypatch, method):
    """The optimisation paths differ (IAGAN adapts weights: rounding changes its trajectory),
    so the test bounds what matters, the error against the truth, not the difference."""
    prior = tiny_prior(resolution=16, seed=0)
    G = prior.generator.eval()
    with torch.no_grad():  # a truth the prior can represent, so the solves converge
        x = G.synthesis(G.mapping(torch.randn(3, G.z_dim, generator=torch.Generator().manual_seed(4)),
                                  None), noise_mode="const").clamp(-1, 1)
    op = build_operator("sr", img_size=(16, 16), channels=1, scale=2)
    y = op.A(x)
    kw = dict(method=method, steps=30, device="cpu", seed=0, bp=False)
    if method == "iagan":
        kw.update(ensemble=2, stage1_options={"steps": 10, "probes": 8})
    _force_bf16(monkeypatch, False)
    ref = _psnr(solve(y, op, prior, **kw).image, x)
    _force_bf16(monkeypatch, True)
    low = _psnr(solve(y, op, prior, **kw).image, x)
    assert low > ref - 1.0, (low, ref)
