"""Time the StyleGAN2 generator: forward and forward+backward (w.r.t. W+) per image.

Measures 128^2 and 256^2, batch 1 and 16, for several channel configurations, with the
solver's call shape (``G.synthesis(ws, noise_mode='const')`` on a frozen eval-mode G,
gradient w.r.t. ``ws``). Writes ``bench/results/generator_<host>.json`` and ``.md`` and
prints the machine (CPU model, threads, torch version).

Usage::

    python bench/bench_generator.py                      # default configs
    python bench/bench_generator.py --configs small --repeats 5 --modconv both
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import time
from pathlib import Path

import torch

try:
    import medrecon  # noqa: F401
except ModuleNotFoundError:  # run from a source checkout without installing
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from medrecon.generators import Generator

CONFIGS = {
    # name: (channel_base, channel_max)
    "small": (4096, 128),  # candidate shipped 128^2 prior
    "medium": (8192, 256),
    "paper256": (16384, 512),  # NVIDIA stylegan2-ada 'paper256' config
}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def time_call(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_one(cfg: str, res: int, batch: int, repeats: int, fused: bool | None, device: str) -> dict:
    base, cmax = CONFIGS[cfg]
    G = Generator(img_resolution=res, img_channels=1, synthesis_kwargs=dict(channel_base=base, channel_max=cmax))
    G = G.eval().requires_grad_(False).to(device)
    gen = torch.Generator().manual_seed(0)
    ws = G.mapping(torch.randn(batch, G.z_dim, generator=gen).to(device)).detach()

    def fwd():
        with torch.no_grad():
            G.synthesis(ws, fused_modconv=fused)

    def fwd_bwd():
        w = ws.clone().requires_grad_(True)
        G.synthesis(w, fused_modconv=fused).square().mean().backward()

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    t_f = time_call(lambda: (fwd(), sync()), repeats)
    t_fb = time_call(lambda: (fwd_bwd(), sync()), repeats)
    return dict(config=cfg, channel_base=base, channel_max=cmax, resolution=res, batch=batch,
                modconv={None: "default", True: "fused", False: "unfused"}[fused],
                params_M=round(sum(p.numel() for p in G.parameters()) / 1e6, 2),
                fwd_ms_per_image=1000 * t_f / batch, fwd_bwd_ms_per_image=1000 * t_fb / batch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--resolutions", nargs="+", type=int, default=[128, 256])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    ap.add_argument("--repeats", type=int, default=2, help="timed repeats (min is reported)")
    ap.add_argument("--modconv", choices=["default", "fused", "unfused", "both"], default="default")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()

    machine = dict(host=socket.gethostname(), cpu=cpu_model(), threads=torch.get_num_threads(),
                   torch=torch.__version__, python=platform.python_version(), device=args.device)
    print(json.dumps(machine))
    modes = {"default": [None], "fused": [True], "unfused": [False], "both": [True, False]}[args.modconv]
    rows = []
    for cfg in args.configs:
        for res in args.resolutions:
            for batch in args.batches:
                for fused in modes:
                    r = bench_one(cfg, res, batch, args.repeats, fused, args.device)
                    rows.append(r)
                    print(json.dumps(r), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"generator_{args.device.split(':')[0]}"
    stem.with_suffix(".json").write_text(json.dumps(dict(machine=machine, results=rows), indent=2) + "\n")
    lines = [
        f"# StyleGAN2 generator timings ({machine['device']})",
        "",
        f"CPU: {machine['cpu']}, torch threads: {machine['threads']}, torch {machine['torch']}, "
        f"python {machine['python']}. Synthesis only (mapping excluded), noise_mode='const', eval mode, "
        "gradient w.r.t. W+; best of the timed repeats, per image.",
        "",
        "| config (base/max) | params (M) | res | batch | modconv | fwd ms/img | fwd+bwd ms/img |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['config']} ({r['channel_base']}/{r['channel_max']}) | {r['params_M']} | {r['resolution']} | "
                     f"{r['batch']} | {r['modconv']} | {r['fwd_ms_per_image']:.1f} | {r['fwd_bwd_ms_per_image']:.1f} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
