"""Loss terms of the generative solvers: latent colinearity and the pluggable perceptual term."""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from medrecon.errors import MedreconInputError, MissingWeightsError
from medrecon.solvers._common import warn_once

PerceptualFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def colinearity(ws: torch.Tensor) -> torch.Tensor:
    """BRGM's colinearity energy ``sum_{i<j} (1 - cos(w_i, w_j))`` per sample ``[N]``.

    Computed for every batch item (the reference code only read item 0).

    Args:
        ws: W+ latents ``[N, num_ws, w_dim]``.
    """
    u = F.normalize(ws.float(), dim=-1, eps=1e-8)
    gram = u @ u.transpose(1, 2)  # [N, L, L] cosines
    L = ws.shape[1]
    iu = torch.triu_indices(L, L, offset=1, device=ws.device)
    return (1.0 - gram[:, iu[0], iu[1]]).sum(1)


class PerceptualDistance(nn.Module):
    """Adapts an LPIPS-like network to medrecon images.

    Grayscale images are repeated to 3 channels, images smaller than ``min_size`` are
    bilinearly upsampled (VGG's five poolings need room), inputs stay in [-1, 1].

    Args:
        net: a module ``net(a, b) -> distances`` (e.g. ``lpips.LPIPS``) on [-1, 1] RGB images.
        min_size: minimum side length fed to ``net``. Default 32.
    """

    def __init__(self, net: nn.Module, *, min_size: int = 32) -> None:
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.min_size = int(min_size)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-sample distance ``[N]`` between two image batches ``[N, C, h, w]``."""
        if a.shape[1] == 1:
            a, b = a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1)
        elif a.shape[1] != 3:
            a, b = a.mean(1, keepdim=True).expand(-1, 3, -1, -1), b.mean(1, keepdim=True).expand(
                -1, 3, -1, -1)
        h, w = a.shape[-2:]
        if min(h, w) < self.min_size:
            s = self.min_size / min(h, w)
            size = (max(self.min_size, round(h * s)), max(self.min_size, round(w * s)))
            a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
            b = F.interpolate(b, size=size, mode="bilinear", align_corners=False)
        d = self.net(a.float(), b.float())
        return d.reshape(d.shape[0], -1).mean(1)


def load_lpips_vgg() -> nn.Module:
    """LPIPS-VGG with ImageNet backbone weights (:class:`medrecon.metrics.LPIPSMetric`).

    Never downloads: the backbone is read from the local torch hub checkpoints.

    Raises:
        MissingWeightsError: the VGG16 weights are not available locally.
    """
    from medrecon.metrics import LPIPSMetric  # noqa: PLC0415 - optional heavy import

    return LPIPSMetric(net="vgg")


def resolve_perceptual(perceptual: Any) -> tuple[PerceptualFn | None, str]:
    """Turns the ``perceptual`` option into a distance function and a description.

    Args:
        perceptual: ``'auto'`` (LPIPS-VGG when its weights are present, otherwise off with a
            warning), ``'lpips'`` (LPIPS-VGG or raise), ``'off'``/``None``/``False``, an
            ``nn.Module``/callable ``f(a, b) -> [N]`` distances on [-1, 1] images.

    Returns:
        ``(fn or None, description)`` - the description is stored in ``Reconstruction.info``.
    """
    if perceptual is None or perceptual is False or perceptual == "off":
        return None, "off"
    if isinstance(perceptual, str):
        if perceptual not in ("auto", "lpips", "lpips-vgg"):
            raise MedreconInputError(
                f"perceptual={perceptual!r}; expected 'auto', 'lpips', 'off', None, or a "
                "module f(a, b) -> per-sample distances."
            )
        try:
            net = load_lpips_vgg()
        except MissingWeightsError as exc:
            if perceptual != "auto":
                raise
            # Documented fall-back: without trained VGG features the perceptual term is
            # dropped (a random-feature "perceptual" loss only adds noise to the gradient);
            # BRGM then relies on the pixel term + latent priors.
            msg = (f"BRGM perceptual term is off: LPIPS-VGG weights unavailable ({exc}). "
                   "Reconstruction uses the pixel and latent-prior terms only.")
            warn_once(msg)
            return None, "off (LPIPS-VGG weights missing)"
        return PerceptualDistance(net), "lpips-vgg"
    if isinstance(perceptual, nn.Module):
        if isinstance(perceptual, PerceptualDistance):
            return perceptual, type(perceptual.net).__name__
        return PerceptualDistance(perceptual), type(perceptual).__name__
    if callable(perceptual):
        return perceptual, getattr(perceptual, "__name__", type(perceptual).__name__)
    raise MedreconInputError(
        f"perceptual={perceptual!r} of type {type(perceptual).__name__}; expected 'auto', "
        "'lpips', 'off', None, or a callable f(a, b) -> per-sample distances."
    )


def perceptual_applicable(y: torch.Tensor) -> bool:
    """The perceptual term compares ``A G(w)`` with ``y`` directly: only for real images."""
    return (not y.is_complex()) and y.ndim == 4 and min(y.shape[-2:]) >= 4
