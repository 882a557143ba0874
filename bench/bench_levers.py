"""CPU levers for the generator step: eager fp32, channels-last, torch.compile (inductor).

Times the solvers' W+ step (``G.synthesis(ws, noise_mode='const')`` forward + backward of a
scalar loss w.r.t. ``ws``, generator frozen) of a shipped prior at one batch size, the variants
interleaved round by round so background load hits them alike; reports the median per image,
the ratio to eager fp32, the max abs difference of the image to eager fp32 and, for
``torch.compile``, the one-off compile time. Writes ``<out>/levers_<machine>.json`` and ``.md``.

Usage::

    python bench/bench_levers.py --prior brain_mri --batch 4 --repeats 30 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generator import cpu_model  # noqa: E402

from medrecon.priors import load_prior  # noqa: E402


def _step(fn: Callable[[torch.Tensor], torch.Tensor], ws: torch.Tensor) -> tuple[float, torch.Tensor]:
    w = ws.detach().clone().requires_grad_(True)
    t0 = time.perf_counter()
    img = fn(w)
    img.float().square().mean().backward()
    return time.perf_counter() - t0, img.detach().float()


def variants(G: torch.nn.Module) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    eager = G.synthesis
    cl = copy.deepcopy(G.synthesis).to(memory_format=torch.channels_last)
    compiled = torch.compile(copy.deepcopy(G.synthesis))
    return {
        "eager fp32": lambda w: eager(w, noise_mode="const"),
        "channels_last": lambda w: cl(w, noise_mode="const"),
        "torch.compile (inductor)": lambda w: compiled(w, noise_mode="const"),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    G = load_prior(args.prior, device="cpu").generator.eval().requires_grad_(False)
    ws = G.mapping(torch.randn(args.batch, G.z_dim, generator=torch.Generator().manual_seed(0)),
                   None).detach()
    fns = variants(G)
    first: dict[str, float] = {}
    ref = None
    diffs: dict[str, float] = {}
    for name, fn in fns.items():  # warm-up; the first compiled call compiles
        t, img = _step(fn, ws)
        first[name] = t
        ref = img if ref is None else ref
        diffs[name] = float((img - ref).abs().max())
        for _ in range(args.warmup):
            _step(fn, ws)
    times: dict[str, list[float]] = {n: [] for n in fns}
    for r in range(args.repeats):
        order = list(fns)[r % len(fns):] + list(fns)[:r % len(fns)]
        for name in order:
            times[name].append(_step(fns[name], ws)[0] / args.batch)
    med = {n: statistics.median(v) for n, v in times.items()}
    base = med["eager fp32"]
    rows = [{"variant": n, "median_ms_per_image": med[n] * 1e3, "speedup_vs_eager": base / med[n],
             "first_call_s": first[n], "max_abs_diff_vs_eager": diffs[n]} for n in fns]
    return {"prior": args.prior, "batch": args.batch, "repeats": args.repeats,
            "threads": args.threads, "cpu": cpu_model(), "torch": torch.__version__,
            "command": "python bench/bench_levers.py " + " ".join(sys.argv[1:]), "rows": rows}


def markdown(rep: dict[str, Any]) -> str:
    lines = [f"# Generator W+ step on the CPU: levers ({rep['cpu']}, {rep['threads']} threads, "
             f"torch {rep['torch']})", "",
             f"Prior `{rep['prior']}`, batch {rep['batch']}, median of {rep['repeats']} "
             f"interleaved repeats. Command: `{rep['command']}`.", "",
             "| variant | ms / image | speed-up vs eager | first call (s) | max abs diff vs eager |",
             "|---|---:|---:|---:|---:|"]
    for r in rep["rows"]:
        lines.append(f"| {r['variant']} | {r['median_ms_per_image']:.2f} | "
                     f"{r['speedup_vs_eager']:.2f}x | {r['first_call_s']:.1f} | "
                     f"{r['max_abs_diff_vs_eager']:.1e} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", default="brain_mri")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--machine", default="cpu")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()
    rep = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"levers_{args.machine}"
    stem.with_suffix(".json").write_text(json.dumps(rep, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(rep))
    print(markdown(rep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
