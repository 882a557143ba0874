"""Tiny random-weight StyleGAN2 networks for fast tests (no downloads, milliseconds per call).

Other test modules import these helpers::

    from tests._tiny import tiny_generator, tiny_prior
"""

from __future__ import annotations

from typing import Any

import torch

from medrecon.generators import Discriminator, Generator

TINY_Z_DIM = 32
TINY_W_DIM = 32


def tiny_generator(*, resolution: int = 16, channels: int = 1, seed: int = 0, **kw: Any) -> Generator:
    """A small random StyleGAN2 generator in eval mode.

    Args:
        resolution: Output resolution (power of two >= 4).
        channels: Image channels.
        seed: Initialisation seed (weights, ``noise_const``, non-zero noise strengths and
            ``w_avg`` are all derived from it, so outputs are not trivially flat).
        **kw: Overrides of the constructor arguments (``z_dim``, ``w_dim``, ``c_dim``,
            ``mapping_kwargs``, ``synthesis_kwargs``); ``synthesis_kwargs`` is merged into the
            tiny defaults (``channel_base=512, channel_max=32``).

    Returns:
        :class:`medrecon.generators.Generator` with ``requires_grad`` left on.
    """
    synthesis_kwargs = dict(channel_base=512, channel_max=32)
    synthesis_kwargs.update(kw.pop("synthesis_kwargs", {}) or {})
    mapping_kwargs = dict(num_layers=2)
    mapping_kwargs.update(kw.pop("mapping_kwargs", {}) or {})
    args: dict[str, Any] = dict(z_dim=TINY_Z_DIM, w_dim=TINY_W_DIM, c_dim=0)
    args.update(kw)
    G = Generator(
        img_resolution=resolution, img_channels=channels, mapping_kwargs=mapping_kwargs,
        synthesis_kwargs=synthesis_kwargs, seed=seed, **args,
    )
    gen = torch.Generator().manual_seed(10_000 + seed)
    with torch.no_grad():
        # A trained network has non-zero noise strengths and a meaningful w_avg.
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.copy_(0.1 * torch.randn([], generator=gen))
        z = torch.randn([256, G.z_dim], generator=gen)
        c = None
        if G.c_dim > 0:
            c = torch.nn.functional.one_hot(torch.arange(256) % G.c_dim, G.c_dim).float()
        G.mapping.w_avg.copy_(G.mapping(z, c)[:, 0].mean(0))
    return G.eval()


def tiny_discriminator(*, resolution: int = 16, channels: int = 1, seed: int = 0, **kw: Any) -> Discriminator:
    """A small random StyleGAN2 discriminator (``channel_base=512, channel_max=32``)."""
    args: dict[str, Any] = dict(channel_base=512, channel_max=32)
    args.update(kw)
    return Discriminator(img_resolution=resolution, img_channels=channels, seed=seed, **args)


def tiny_prior(*, resolution: int = 16, channels: int = 1, seed: int = 0, name: str = "tiny", **kw: Any):
    """A :class:`medrecon.priors.Prior` wrapping :func:`tiny_generator`.

    W statistics are computed from 1,000 mapped z (seeded) so the call stays fast.

    Args:
        resolution: Output resolution.
        channels: Image channels.
        seed: Seed of the weights and of the W statistics.
        name: Prior name.
        **kw: Passed to :func:`tiny_generator`.
    """
    from medrecon.priors import Prior

    G = tiny_generator(resolution=resolution, channels=channels, seed=seed, **kw)
    prior = Prior(G, name=name, metadata={"modality": "test", "description": "tiny random-weight prior for tests"})
    prior.compute_w_stats(num_samples=1000, seed=seed)
    return prior
