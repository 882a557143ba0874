"""Differentiable augmentation (DiffAugment, Zhao et al. 2020) for grayscale GAN training.

The same random transform family is applied to real and generated images before the
discriminator, so D cannot overfit a few thousand training images while G still learns the
un-augmented distribution (the transforms are differentiable, and they do not "leak" because
they are applied to both sides). All randomness comes from an explicit ``torch.Generator``.

Policies (comma separated): ``brightness``, ``contrast``, ``translation``, ``cutout``. Colour
saturation is omitted: images are single-channel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medrecon.errors import MedreconInputError

__all__ = ["DEFAULT_POLICY", "POLICIES", "diff_augment", "parse_policy"]

DEFAULT_POLICY = "brightness,contrast,translation,cutout"
POLICIES = ("brightness", "contrast", "translation", "cutout")


def parse_policy(policy: str) -> tuple[str, ...]:
    """Split and validate a policy string (``""`` or ``"none"`` means no augmentation)."""
    if policy in ("", "none"):
        return ()
    parts = tuple(p.strip() for p in policy.split(",") if p.strip())
    bad = [p for p in parts if p not in POLICIES]
    if bad:
        raise MedreconInputError(
            f"unknown augmentation {bad}; expected a comma-separated subset of {POLICIES} or 'none'."
        )
    return parts


def _rand(shape, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # Draw on the generator's device, then move: works for CPU generators with CUDA images.
    return torch.rand(shape, generator=generator, device=generator.device).to(x.device, x.dtype)


def _randint(high: int, shape, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(high, shape, generator=generator, device=generator.device).to(x.device)


def _brightness(x, g):
    return x + (_rand((x.shape[0], 1, 1, 1), x, g) - 0.5)


def _contrast(x, g):
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_rand((x.shape[0], 1, 1, 1), x, g) + 0.5) + mean


def _translation(x, g, ratio: float = 0.125):
    b, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = _randint(2 * sh + 1, (b, 1, 1), x, g) - sh
    tx = _randint(2 * sw + 1, (b, 1, 1), x, g) - sw
    gy, gx = torch.meshgrid(
        torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij"
    )
    gy = torch.clamp(gy[None] + ty + 1, 0, h + 1)  # [B, H, W] into the zero-padded image
    gx = torch.clamp(gx[None] + tx + 1, 0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1])  # zero border: shifted-in pixels are 0 (mid-gray)
    flat = padded.flatten(2)  # [B, C, (H+2)(W+2)]
    idx = (gy * (w + 2) + gx).flatten(1)[:, None].expand(-1, x.shape[1], -1)
    return flat.gather(2, idx).view_as(x)


def _cutout(x, g, ratio: float = 0.25):
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    oy = _randint(h + (1 - ch % 2), (b, 1, 1), x, g)
    ox = _randint(w + (1 - cw % 2), (b, 1, 1), x, g)
    gy = torch.arange(h, device=x.device)[None, :, None]
    gx = torch.arange(w, device=x.device)[None, None, :]
    y0, x0 = oy - ch // 2, ox - cw // 2  # top-left corner of the square hole [B, 1, 1]
    inside = (gy >= y0) & (gy < y0 + ch) & (gx >= x0) & (gx < x0 + cw)  # [B, H, W]
    return x * (~inside)[:, None].to(x.dtype)


_FUNCS = {"brightness": _brightness, "contrast": _contrast, "translation": _translation,
          "cutout": _cutout}


def diff_augment(
    x: torch.Tensor, *, policy: str | tuple[str, ...] = DEFAULT_POLICY,
    generator: torch.Generator,
) -> torch.Tensor:
    """Apply a DiffAugment policy to a batch ``[B, C, H, W]`` (differentiable in ``x``).

    Args:
        x: images in generator space.
        policy: comma-separated transform names or a tuple of them (default
            ``"brightness,contrast,translation,cutout"``).
        generator: source of all randomness (one draw per image and transform).

    Returns:
        Augmented images, same shape and dtype.
    """
    names = parse_policy(policy) if isinstance(policy, str) else policy
    for name in names:
        x = _FUNCS[name](x, generator)
    return x
