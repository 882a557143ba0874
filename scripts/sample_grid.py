"""Write docs/priors_samples.png: 16 samples of each shipped prior, side by side.

EMA generators as shipped (fp16 storage, loaded as fp32), z drawn from a generator seeded 0,
constant noise inputs, no truncation. Usage: python scripts/sample_grid.py [--out PATH]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from medrecon.priors import load_prior
from medrecon.training.loop import save_image_grid

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "priors_samples.png")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    halves = []
    for name in ("chest_xray", "brain_mri"):
        G = load_prior(name).generator
        z = torch.randn(16, G.z_dim, generator=torch.Generator().manual_seed(args.seed))
        with torch.no_grad():
            img = G.synthesis(G.mapping(z, None), noise_mode="const")  # [16, 1, R, R]
        r = img.shape[-1]
        grid = img.reshape(4, 4, r, r).permute(0, 2, 1, 3).reshape(4 * r, 4 * r)
        halves.append(grid)
    gap = torch.ones(4 * r, 8)  # white separator between the two priors
    both = torch.cat([halves[0], gap, halves[1]], dim=1)[None, None]
    save_image_grid(both, args.out, cols=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
