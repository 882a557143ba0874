"""Latent parametrisations (z, W, W+), initialisation by batched probes, and schedules.

The three latent spaces of StyleGAN2 inversion:

* ``'z'``:  ``z [N, z_dim]`` through the mapping network; prior ``z ~ N(0, I)``.
* ``'w'``:  one ``w [N, w_dim]`` broadcast to every synthesis layer.
* ``'w+'``: one w per layer, ``[N, num_ws, w_dim]`` (most expressive; BRGM, IAGAN here).

For ``'w'``/``'w+'`` the latent prior is the per-dimension Gaussian ``N(mu, diag(sigma^2))`` of
mapped samples (BRGM). Every latent is turned into W+ ``ws`` by :meth:`LatentSpace.to_ws`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch
from torch import nn

from medrecon.errors import MedreconInputError
from medrecon.solvers._common import map_z, sq_residual, synthesize, w_average

SPACES = ("z", "w", "w+")


def check_space(space: str) -> str:
    """Normalises and validates a latent-space name."""
    s = str(space).lower().replace("plus", "+")
    if s not in SPACES:
        raise MedreconInputError(f"space={space!r}; expected one of {list(SPACES)}.")
    return s


class LatentSpace:
    """Maps between a latent space and W+, and evaluates the standardised latent prior.

    Args:
        G: the (frozen) generator.
        space: ``'z'``, ``'w'`` or ``'w+'``.
        mu: per-dimension mean of w ``[w_dim]`` (on G's device).
        sigma: per-dimension std of w ``[w_dim]``.
    """

    def __init__(self, G: nn.Module, space: str, mu: torch.Tensor, sigma: torch.Tensor) -> None:
        self.G = G
        self.space = check_space(space)
        self.mu = mu
        self.sigma = sigma

    def to_ws(self, latent: torch.Tensor) -> torch.Tensor:
        """Latent -> W+ ``[N, num_ws, w_dim]``."""
        if self.space == "z":
            return map_z(self.G, latent)
        if self.space == "w":
            return latent[:, None, :].expand(-1, self.G.num_ws, -1)
        return latent

    def standardised(self, latent: torch.Tensor) -> torch.Tensor:
        """Latent in prior-standard units (``z`` itself, or ``(w - mu) / sigma``)."""
        if self.space == "z":
            return latent
        return (latent - self.mu) / self.sigma

    def prior_energy(self, latent: torch.Tensor) -> torch.Tensor:
        """Per-sample ``sum u^2`` of the standardised latent ``u`` ``[N]``."""
        u = self.standardised(latent)
        return (u * u).reshape(u.shape[0], -1).sum(1)

    def dim(self) -> int:
        """Number of latent dimensions per sample."""
        G = self.G
        return {"z": G.z_dim, "w": G.w_dim, "w+": G.num_ws * G.w_dim}[self.space]

    def from_w(self, w: torch.Tensor) -> torch.Tensor:
        """A single w per sample ``[N, w_dim]`` -> latent in this space (not for ``'z'``)."""
        if self.space == "w":
            return w
        if self.space == "w+":
            return w[:, None, :].repeat(1, self.G.num_ws, 1)
        raise MedreconInputError("cannot express a w in z space")  # pragma: no cover


@torch.no_grad()
def probe_init(
    lat: LatentSpace,
    y: torch.Tensor,
    operator: nn.Module,
    *,
    restarts: int,
    probes: int,
    generator: torch.Generator | Sequence[torch.Generator],
    include_mean: bool = True,
    force_mean: bool = True,
    amp=None,
    chunk: int = 32,
) -> torch.Tensor:
    """Initial latents: the best of ``probes`` cheap random draws, per slice, chosen in one batch.

    All probes are synthesised once (in chunks) and every probe is scored against every slice
    by its data loss ``mean |A G(.) - y_b|^2``; each slice gets its ``restarts`` best probes
    (``w_avg``/``z = 0`` is a candidate when ``include_mean``, and always restart 0 when also
    ``force_mean``), so restarts start from diverse, already plausible points.

    ``generator`` is one RNG, whose probes every slice shares, or one per slice
    (:func:`medrecon.solvers._common.seed_generators`), each slice then scoring its own
    ``probes`` draws (``B`` times the syntheses): the slices of a scan then start from
    independent points, as the members of an ensemble do.

    Returns:
        Latents ``[B * restarts, ...]`` ordered slice-major (restarts of slice b are contiguous).
    """
    G = lat.G
    B = y.shape[0]
    dev = y.device
    n_rand = max(probes, restarts)

    def candidates(gen: torch.Generator) -> torch.Tensor:  # [P, ...] in the latent space
        z = torch.randn(n_rand, G.z_dim, generator=gen, device=gen.device).to(dev)
        if lat.space == "z":
            return torch.cat([torch.zeros_like(z[:1]), z], 0) if include_mean else z
        w = map_z(G, z)[:, 0]
        if include_mean:
            w = torch.cat([w_average(G)[None].to(w), w], 0)
        return lat.from_w(w)

    own = isinstance(generator, (list, tuple))  # one candidate set per slice
    cands = torch.cat([candidates(g) for g in generator]) if own else candidates(generator)
    P = cands.shape[0] // B if own else cands.shape[0]
    scores = []
    for start in range(0, cands.shape[0], chunk):
        c = cands[start:start + chunk]
        with amp() if amp is not None else contextlib.nullcontext():
            x = synthesize(G, lat.to_ws(c))
        ax = operator.A(x)  # [n, ...]
        if own:  # each candidate against its own slice
            diff = ax - y[torch.arange(start, start + c.shape[0], device=dev) // P]
        else:  # pairwise [B, n] without materialising B x n copies of the images
            diff = ax[None] - y[:, None]
        d2 = (diff.real**2 + diff.imag**2) if diff.is_complex() else diff * diff
        scores.append(d2.flatten(1 if own else 2).mean(-1))  # [n] or [B, n]
    score = torch.cat(scores, -1).reshape(B, P)
    if include_mean and force_mean:
        score[:, 0] = -math.inf  # the mean is always restart 0
    idx = score.topk(restarts, dim=1, largest=False).indices  # [B, R]
    if own:
        idx = idx + P * torch.arange(B, device=idx.device)[:, None]
    return cands[idx.reshape(-1)].clone()


def lr_schedule(step: int, total: int, *, base: float, rampup: float = 0.05,
                rampdown: float = 0.25) -> float:
    """Learning rate with a short linear warm-up and a cosine ramp-down (as NVIDIA's projector).

    Args:
        step: 0-based step.
        total: number of steps.
        base: peak learning rate.
        rampup: fraction of steps of linear warm-up.
        rampdown: fraction of final steps over which the rate decays to 0 by a half cosine.
    """
    t = step / max(total, 1)
    ramp = min(1.0, (1.0 - t) / rampdown) if rampdown > 0 else 1.0
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    ramp = ramp * (min(1.0, t / rampup) if rampup > 0 else 1.0)
    return base * max(ramp, 1e-2)


def data_term(x: torch.Tensor, y: torch.Tensor, operator: nn.Module) -> torch.Tensor:
    """``mean |A x - y|^2`` per sample ``[N]`` (float32, complex aware)."""
    return sq_residual(operator.A(x), y)
