"""Measure solver cost (G forward+backward per image) and training cost of candidate prior sizes.

Usage: python scripts/measure_sizes.py [--threads 1] [--resolution 128]
Prints one JSON line per candidate; docs/priors.md records the numbers behind the shipped size.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from medrecon.training.loop import TrainConfig, Trainer

CANDIDATES = {
    "S (cb2048 cm128)": dict(channel_base=2048, channel_max=128),
    "M (cb4096 cm256)": dict(channel_base=4096, channel_max=256),
    "L (cb8192 cm256)": dict(channel_base=8192, channel_max=256),
}


class _Noise:
    """Random images standing in for a dataset (timing only)."""

    def __init__(self, n: int, r: int) -> None:
        self.data = torch.rand(n, 1, r, r, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def __len__(self) -> int:
        return len(self.data)

    def batch(self, idx):
        return self.data[idx]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for name, kw in CANDIDATES.items():
        cfg = TrainConfig(resolution=args.resolution, batch_size=args.batch, amp=False, **kw)
        tr = Trainer(_Noise(64, args.resolution), cfg)
        G = tr.G_ema
        n_g = sum(p.numel() for p in G.parameters())
        n_d = sum(p.numel() for p in tr.D.parameters())
        ws = G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(1)), None)
        ws = ws.detach().requires_grad_(True)
        G.requires_grad_(True)  # IAGAN adapts the weights too: include their gradients
        G.synthesis(ws).square().mean().backward()  # warm-up
        t0 = time.perf_counter()
        for _ in range(args.reps):
            G.synthesis(ws).square().mean().backward()
        solver = (time.perf_counter() - t0) / args.reps
        tr.train_step()
        t0 = time.perf_counter()
        tr.train_step()
        train = time.perf_counter() - t0
        print(json.dumps({"candidate": name, **kw, "G_params": n_g, "D_params": n_d,
                          "solver_fwd_bwd_s_per_image": round(solver, 4),
                          "train_step_s": round(train, 3), "batch": args.batch,
                          "train_img_per_s": round(args.batch / train, 2),
                          "threads": args.threads}), flush=True)


if __name__ == "__main__":
    main()
