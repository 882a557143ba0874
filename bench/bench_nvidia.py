"""Side-by-side generator step: medrecon's StyleGAN2 vs NVIDIA's stylegan2-ada-pytorch, equal weights.

NVIDIA's code is read from a checkout given at run time (``--nvidia-repo``); nothing of it is
copied, stored or pickled here. The script

1. loads a shipped prior (``--prior``) with :func:`medrecon.priors.load_prior`, builds
   NVIDIA's ``training.networks.Generator`` with the same constructor kwargs (the prior's
   ``generator.json``, ``G.init_kwargs``) and copies medrecon's weights into it. Both use the
   same module tree and names: medrecon imports NVIDIA pickles by reading each persistent
   module's ``_parameters``/``_buffers`` under its module path
   (``medrecon.generators.checkpoints._collect_state``), i.e. the name mapping is the
   identity, and its inverse is ``load_state_dict(strict=True)``;
2. verifies equality in fp32 before timing: same W+ latents -> same image (max abs diff, with
   ``noise_mode='const'`` and the same ``noise_const`` buffers), same gradient w.r.t. the
   latents and w.r.t. the synthesis weights; aborts (exit 1) if the image differs by more than
   ``--tolerance``;
3. times the solver's generator step at each batch size: ``G.synthesis(ws, noise_mode='const')``
   forward + backward of a scalar loss w.r.t. W+ latents ``ws`` (generator frozen, eval mode;
   CSGM/BRGM), and the IAGAN stage-2 step (gradients w.r.t. ``ws`` and every synthesis weight,
   weights shared by the batch). The implementations' repeats are interleaved (the order
   rotates every round: A B C, B C A, C A B, ...) so background load hits all of them alike.
   medrecon runs in plain fp32 and in its default solver path (a frozen copy,
   ``medrecon.solvers._common.autocast``: bf16 autocast on CUDA and on CPUs with native bf16,
   ``MEDRECON_CPU_BF16=0/1`` overrides); NVIDIA in its own default (fp32 on CPU; on CUDA its
   fp16 blocks as the prior configures them, ``num_fp16_res``).

It reports the median time per image, the ratio NVIDIA / medrecon (of the medians, and the
median of the per-round ratios), and writes ``<out>/nvidia_<machine>.json`` and ``.md``.

Usage::

    git clone https://github.com/NVlabs/stylegan2-ada-pytorch /tmp/stylegan2-ada-pytorch
    python bench/bench_nvidia.py --nvidia-repo /tmp/stylegan2-ada-pytorch --machine laptop
    python bench/bench_nvidia.py --nvidia-repo /tmp/stylegan2-ada-pytorch --device cuda \\
        --nvidia-ops custom --batch-sizes 1,8,32 --machine h100
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import json
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any, Callable

import torch

try:
    import medrecon  # noqa: F401
except ModuleNotFoundError:  # run from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from medrecon.priors import load_prior
from medrecon.solvers import _common as C

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generator import cpu_model  # noqa: E402  (the sibling benchmark's machine probe)

CLONE_HINT = "git clone https://github.com/NVlabs/stylegan2-ada-pytorch"
STEPS = {
    "wplus": "W+ step: grad w.r.t. ws, generator frozen (CSGM/BRGM)",
    "iagan2": "IAGAN stage-2 step: grad w.r.t. ws and all synthesis weights (shared by the batch)",
}


def fail(msg: str, code: int = 2) -> None:
    print(f"bench_nvidia.py: error: {msg}", file=sys.stderr)
    raise SystemExit(code)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nvidia-repo", type=Path, default=None,
                    help=f"checkout of NVlabs/stylegan2-ada-pytorch (required; `{CLONE_HINT}`)")
    ap.add_argument("--prior", default="brain_mri", help="shipped prior name or path (default: %(default)s)")
    ap.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=30, help="timed repeats per implementation (default: %(default)s)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls per implementation first (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default: %(default)s)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="default: %(default)s")
    ap.add_argument("--nvidia-ops", choices=("ref", "custom"), default=None,
                    help="NVIDIA's bias_act/upfirdn2d: their CUDA plugins ('custom', built at run time; needs "
                         "nvcc + ninja) or their reference PyTorch code ('ref'). Default: custom on CUDA, ref on "
                         "CPU (their plugins are CUDA-only; on CPU tensors they always run the reference code)")
    ap.add_argument("--nvidia-num-fp16-res", type=int, default=None,
                    help="override NVIDIA's num_fp16_res (CUDA only; default: as the prior configures it)")
    ap.add_argument("--steps", default="wplus,iagan2", help=f"which steps, of {list(STEPS)} (default: %(default)s)")
    ap.add_argument("--tolerance", type=float, default=1e-4, help="max abs image diff in fp32 (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the latents and the target (default: %(default)s)")
    ap.add_argument("--machine", default=None, help="names the output files (default: the host name)")
    ap.add_argument("--note", default="", help="free text added to the markdown (e.g. the machine's load)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results",
                    help="output folder (default: bench/results)")
    args = ap.parse_args(argv)

    if args.nvidia_repo is None:
        fail(f"--nvidia-repo PATH is required: a checkout of NVIDIA's stylegan2-ada-pytorch, fetched at bench "
             f"time and never committed. Get it with `{CLONE_HINT}` and pass its folder.")
    repo = args.nvidia_repo.expanduser().resolve()
    missing = [p for p in ("training/networks.py", "torch_utils/ops/bias_act.py", "dnnlib/util.py")
               if not (repo / p).is_file()]
    if missing:
        fail(f"--nvidia-repo {args.nvidia_repo} is not a stylegan2-ada-pytorch checkout (missing {missing}). "
             f"Get it with `{CLONE_HINT}` and pass its folder.")
    args.nvidia_repo = repo
    try:
        args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    except ValueError:
        fail(f"--batch-sizes {args.batch_sizes!r}: expected comma-separated positive integers, e.g. 1,8.")
    if not args.batch_sizes or min(args.batch_sizes) < 1:
        fail(f"--batch-sizes {args.batch_sizes!r}: expected comma-separated positive integers, e.g. 1,8.")
    args.steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    if not args.steps or any(s not in STEPS for s in args.steps):
        fail(f"--steps {args.steps!r}: expected a comma-separated subset of {list(STEPS)}.")
    for name in ("repeats", "threads"):
        if getattr(args, name) < 1:
            fail(f"--{name} {getattr(args, name)}: expected >= 1.")
    if args.warmup < 0:
        fail(f"--warmup {args.warmup}: expected >= 0.")
    if args.device == "cuda" and not torch.cuda.is_available():
        fail("--device cuda: torch sees no CUDA device on this machine.")
    if args.nvidia_ops is None:
        args.nvidia_ops = "custom" if args.device == "cuda" else "ref"
    if args.nvidia_num_fp16_res is not None and args.device != "cuda":
        fail("--nvidia-num-fp16-res applies to CUDA only (NVIDIA's default on CPU is fp32).")
    args.machine = args.machine or socket.gethostname()
    # every check that can fail runs before the long computation: the output folder must be writable
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        probe = args.out / f".nvidia_{args.machine}.probe"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        fail(f"--out {args.out} is not a writable folder ({e}).")
    return args


# ----------------------------------------------------------------------------------------
# NVIDIA's code, imported from the checkout at run time


def import_nvidia(repo: Path, ops: str) -> dict[str, Any]:
    """Import ``training.networks`` and the two custom-op modules from ``repo``."""
    if importlib.util.find_spec("requests") is None:
        # dnnlib.util imports requests for URL downloads only (open_url), which is never called here
        sys.modules["requests"] = types.ModuleType("requests")
    sys.path.insert(0, str(repo))
    try:
        import training.networks as nv_networks  # type: ignore[import-not-found]
        from torch_utils.ops import bias_act, upfirdn2d  # type: ignore[import-not-found]
    except Exception as e:  # noqa: BLE001 - their import chain may fail in many ways
        fail(f"cannot import NVIDIA's training.networks from {repo}: {type(e).__name__}: {e}")
    if not Path(nv_networks.__file__).resolve().is_relative_to(repo):
        fail(f"`training.networks` resolved to {nv_networks.__file__}, not inside --nvidia-repo {repo}.")
    if ops == "ref":  # their dispatch: impl == 'cuda' and x.is_cuda and _init() -> plugin, else reference
        bias_act._init = lambda: False
        upfirdn2d._init = lambda: False
    return dict(networks=nv_networks, bias_act=bias_act, upfirdn2d=upfirdn2d)


def nvidia_ops_ran(nv: dict[str, Any], requested: str, device: str) -> str:
    if device != "cuda":
        return ("ref (their reference PyTorch ops: bias_act/upfirdn2d dispatch to them for CPU tensors; "
                f"the CUDA plugins are CUDA-only; requested: {requested})")
    if requested == "ref":
        return "ref (their reference PyTorch ops, forced)"
    built = {name: getattr(nv[name], "_plugin", None) is not None for name in ("bias_act", "upfirdn2d")}
    if all(built.values()):
        return "custom (their CUDA plugins bias_act + upfirdn2d, built at run time)"
    failed = [k for k, v in built.items() if not v]
    return f"custom requested, but the {'/'.join(failed)} plugin failed to build: their reference ops ran instead"


def git_commit(repo: Path) -> str:
    """The commit of NVIDIA's checkout ``repo``: git's, when ``repo`` is the top of a checkout
    (not a folder inside another repository, such as a copy of their code in this one); else
    the first word of a ``COMMIT`` file beside their code (scripts/gpu_prepare.sh writes it)."""
    try:
        top = subprocess.run(["git", "-C", str(repo), "rev-parse", "--show-toplevel"],
                             capture_output=True, text=True, timeout=30)
        if top.returncode == 0 and Path(top.stdout.strip()).resolve() == repo.resolve():
            out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                 timeout=30)
            if out.returncode == 0:
                return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    stamp = repo / "COMMIT"
    if stamp.is_file() and stamp.read_text().split():
        return stamp.read_text().split()[0]
    return "unknown (not a git checkout, no COMMIT file)"


# ----------------------------------------------------------------------------------------
# Machine


def medrecon_commit() -> str:
    """``git describe``-style id of the medrecon checkout (``-dirty`` with uncommitted changes)."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"], capture_output=True,
                             text=True, timeout=30)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info(args: argparse.Namespace) -> dict[str, Any]:
    info: dict[str, Any] = {
        "machine": args.machine,
        "host": socket.gethostname(),
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_native_bf16": C.cpu_native_bf16() if hasattr(C, "cpu_native_bf16") else None,
        "medrecon_commit": medrecon_commit(),
        "MEDRECON_CPU_BF16": os.environ.get("MEDRECON_CPU_BF16"),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "device": args.device,
    }
    if args.device == "cuda":
        info.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(),
                    tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32,
                    cudnn_benchmark=torch.backends.cudnn.benchmark)
    return info


# ----------------------------------------------------------------------------------------
# Networks and the equality check


def build_pair(args: argparse.Namespace, nv: dict[str, Any]) -> tuple[Any, torch.nn.Module, torch.nn.Module, dict]:
    dev = torch.device(args.device)
    prior = load_prior(args.prior, device="cpu")
    G = prior.generator
    kwargs = G.init_kwargs  # what the prior's generator.json holds
    nv_kwargs = copy.deepcopy(kwargs)
    if args.nvidia_num_fp16_res is not None:
        nv_kwargs.setdefault("synthesis_kwargs", {})["num_fp16_res"] = args.nvidia_num_fp16_res
    G_nv = nv["networks"].Generator(**nv_kwargs)
    ours = G.state_dict()
    theirs = G_nv.state_dict()
    if set(ours) != set(theirs):
        fail(f"state dicts differ: only medrecon {sorted(set(ours) - set(theirs))[:5]}, "
             f"only NVIDIA {sorted(set(theirs) - set(ours))[:5]}", code=1)
    G_nv.load_state_dict(ours, strict=True)
    G_nv = G_nv.eval().requires_grad_(False).to(dev)
    G_mr = C.frozen_copy(G, dev)  # the solvers' working copy: deep copy, eval, frozen
    weights_diff = max(float((a.to(dev).float() - b.float()).abs().max()) if a.numel() else 0.0
                       for a, b in zip(G_mr.state_dict().values(), G_nv.state_dict().values()))
    return prior, G_mr, G_nv, dict(kwargs=kwargs, nvidia_kwargs=nv_kwargs, weights_max_abs_diff=weights_diff,
                                   num_tensors=len(ours))


def latents(G: torch.nn.Module, batch: int, seed: int, dev: torch.device) -> torch.Tensor:
    """W+ latents of seeded z draws, each layer's w slightly perturbed (as an inversion moves them)."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, G.z_dim, generator=gen)
    with torch.no_grad():
        ws = C.map_z(G, z.to(dev))
    ws = ws + 0.1 * torch.randn(ws.shape, generator=gen).to(dev)
    return ws.detach()


def target_image(G: torch.nn.Module, batch: int, seed: int, dev: torch.device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed + 1)
    r = G.img_resolution
    return (0.5 * torch.randn(batch, G.img_channels, r, r, generator=gen)).to(dev)


@contextlib.contextmanager
def exact_fp32(dev: torch.device):
    """TF32 off while checking equality (CUDA); restored afterwards."""
    if dev.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def nvidia_synth_default(G_nv: torch.nn.Module, dev: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    # NVIDIA's default: fp16 blocks as configured on CUDA; their blocks would also run fp16 on a CPU,
    # which is not their default there (fp32), so force_fp32 on CPU
    force = dev.type != "cuda"
    return lambda w: G_nv.synthesis(w, noise_mode="const", force_fp32=force)


def medrecon_default_is_bf16(dev: torch.device) -> bool:
    return not isinstance(C.autocast(dev), contextlib.nullcontext)


def grads(synth: Callable[[torch.Tensor], torch.Tensor], net: torch.nn.Module, ws: torch.Tensor,
          target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    params = [p for p in net.parameters() if p.is_floating_point()]
    for p in params:
        p.requires_grad_(True)
        p.grad = None
    w = ws.clone().requires_grad_(True)
    try:
        img = synth(w)
        loss = (img.float() - target).square().mean()
        loss.backward()
        return img.detach().float(), w.grad.detach(), [p.grad.detach().clone() for p in params]
    finally:
        for p in params:
            p.grad = None
            p.requires_grad_(False)


def check_equal(args: argparse.Namespace, G_mr: torch.nn.Module, G_nv: torch.nn.Module, dev: torch.device) -> dict:
    B = max(2, min(4, max(args.batch_sizes)))
    ws = latents(G_mr, B, args.seed + 1000, dev)
    target = target_image(G_mr, B, args.seed + 1000, dev)
    with exact_fp32(dev):
        img_mr, gw_mr, gp_mr = grads(lambda w: G_mr.synthesis(w, noise_mode="const", force_fp32=True), G_mr.synthesis,
                                     ws, target)
        img_nv, gw_nv, gp_nv = grads(lambda w: G_nv.synthesis(w, noise_mode="const", force_fp32=True),
                                     G_nv.synthesis, ws, target)
        with torch.no_grad():
            nv_default = nvidia_synth_default(G_nv, dev)(ws).float()
            with C.autocast(dev):
                mr_default = C.synthesize(G_mr, ws)
    rel = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)) for a, b in zip(gp_mr, gp_nv))
    out = dict(
        batch=B,
        image_max_abs_diff=float((img_mr - img_nv).abs().max()),
        image_max_abs=float(img_nv.abs().max()),
        grad_ws_max_abs_diff=float((gw_mr - gw_nv).abs().max()),
        grad_ws_max_abs=float(gw_nv.abs().max()),
        grad_weights_max_rel_diff=rel,
        num_weight_grads=len(gp_mr),
        nvidia_default_vs_fp32_max_abs_diff=float((nv_default - img_nv).abs().max()),
        medrecon_default_vs_fp32_max_abs_diff=float((mr_default - img_mr).abs().max()),
        tolerance=args.tolerance,
    )
    out["passed"] = out["image_max_abs_diff"] < args.tolerance
    return out


# ----------------------------------------------------------------------------------------
# Timing


class Candidate:
    """One implementation at one precision, with its own step function."""

    def __init__(self, key: str, impl: str, precision: str, synth: Callable, net: torch.nn.Module,
                 amp: Callable[[], contextlib.AbstractContextManager]) -> None:
        self.key, self.impl, self.precision = key, impl, precision
        self.synth, self.net, self.amp = synth, net, amp
        self.times: list[float] = []

    def prepare(self, step: str, ws: torch.Tensor, target: torch.Tensor) -> None:
        self.w = ws.clone().requires_grad_(True)
        self.target = target
        self.params = [p for p in self.net.parameters() if p.is_floating_point()] if step == "iagan2" else []
        for p in self.params:
            p.requires_grad_(True)
        self.times = []

    def finish(self) -> None:
        for p in self.params:
            p.grad = None
            p.requires_grad_(False)

    def __call__(self) -> None:
        self.w.grad = None
        for p in self.params:
            p.grad = None
        with self.amp():
            img = self.synth(self.w)
        loss = (img.float() - self.target).square().mean()
        loss.backward()


def fp16_blocks(G: torch.nn.Module) -> list[int]:
    """Resolutions of the synthesis blocks built with ``use_fp16`` (both implementations run them in
    fp16 on CUDA unless ``force_fp32``; medrecon runs them in fp32 on a CPU)."""
    syn = G.synthesis
    return [r for r in syn.block_resolutions if getattr(syn, f"b{r}").use_fp16]


def candidates(G_mr: torch.nn.Module, G_nv: torch.nn.Module, dev: torch.device, nv_precision: str) -> list[Candidate]:
    null = contextlib.nullcontext
    out = [
        Candidate("nvidia", "NVIDIA stylegan2-ada-pytorch", nv_precision, nvidia_synth_default(G_nv, dev),
                  G_nv.synthesis, null),
        Candidate("medrecon_fp32", "medrecon", fp32_label(dev),  # force_fp32: fp32 even where blocks are fp16
                  lambda w: G_mr.synthesis(w, noise_mode="const", force_fp32=True), G_mr.synthesis, null),
    ]
    if medrecon_default_is_bf16(dev):
        fp16 = fp16_blocks(G_mr) if dev.type == "cuda" else []
        label = "bf16 autocast (medrecon.solvers._common.autocast)" + (f", fp16 blocks {fp16}" if fp16 else "")
        out.append(Candidate("medrecon_default", "medrecon (solver default)", label,
                             lambda w: C.synthesize(G_mr, w), G_mr.synthesis, lambda: C.autocast(dev)))
    return out


def fp32_label(dev: torch.device) -> str:
    if dev.type == "cuda" and torch.backends.cudnn.allow_tf32:
        return "fp32 (cuDNN may use TF32 convolutions: torch default)"
    return "fp32"


def nvidia_precision(G_nv: torch.nn.Module, dev: torch.device) -> str:
    fp16 = fp16_blocks(G_nv)
    if dev.type != "cuda":
        return "fp32 (their default on CPU)" + (f"; fp16 blocks {fp16} forced to fp32" if fp16 else "")
    if fp16:
        return f"fp16 in blocks {fp16} (their default, num_fp16_res), fp32 elsewhere"
    return f"{fp32_label(dev)} (their default: num_fp16_res=0, no fp16 blocks)"


def time_step(step: str, batch: int, cands: list[Candidate], G_mr: torch.nn.Module, args: argparse.Namespace,
              dev: torch.device) -> list[dict]:
    ws = latents(G_mr, batch, args.seed, dev)
    target = target_image(G_mr, batch, args.seed, dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for c in cands:
        c.prepare(step, ws, target)
    try:
        for _ in range(args.warmup):
            for c in cands:
                c()
        sync()
        n = len(cands)
        for r in range(args.repeats):
            for c in cands[r % n:] + cands[: r % n]:  # A B C, B C A, C A B, ...
                sync()
                t0 = time.perf_counter()
                c()
                sync()
                c.times.append(time.perf_counter() - t0)
    finally:
        for c in cands:
            c.finish()
    # bf16 vs fp32 image of the timed latents
    diffs: dict[str, float] = {}
    with torch.no_grad():
        ref = G_mr.synthesis(ws, noise_mode="const", force_fp32=True).float()
        for c in cands:
            with c.amp():
                img = c.synth(ws).float()
            diffs[c.key] = float((img - ref).abs().max())
    nv = next(c for c in cands if c.key == "nvidia")
    rows = []
    for c in cands:
        per_img = [t / batch * 1000 for t in c.times]
        q = statistics.quantiles(per_img, n=4) if len(per_img) >= 2 else [per_img[0]] * 3
        row = dict(
            step=step, batch=batch, key=c.key, implementation=c.impl, precision=c.precision,
            median_ms_per_image=statistics.median(per_img), p25_ms_per_image=q[0], p75_ms_per_image=q[2],
            min_ms_per_image=min(per_img), repeats=len(per_img),
            max_abs_diff_vs_medrecon_fp32=diffs[c.key],
            times_s=c.times,
        )
        if c is not nv:
            row["ratio_nvidia_over_this"] = statistics.median(nv.times) / statistics.median(c.times)
            row["paired_ratio_median"] = statistics.median(a / b for a, b in zip(nv.times, c.times))
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------
# Output


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| step | batch | implementation | precision | median ms/img | p25-p75 ms/img | NVIDIA / this (medians) "
        "| NVIDIA / this (median of per-round ratios) | max abs diff vs medrecon fp32 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = f"**{r['ratio_nvidia_over_this']:.2f}x**" if "ratio_nvidia_over_this" in r else "1 (reference)"
        paired = f"{r['paired_ratio_median']:.2f}x" if "paired_ratio_median" in r else "-"
        lines.append(
            f"| {r['step']} | {r['batch']} | {r['implementation']} | {r['precision']} | {r['median_ms_per_image']:.2f} | "
            f"{r['p25_ms_per_image']:.2f}-{r['p75_ms_per_image']:.2f} | {ratio} | {paired} | "
            f"{r['max_abs_diff_vs_medrecon_fp32']:.2e} |")
    return lines


def write_results(args: argparse.Namespace, report: dict) -> tuple[Path, Path]:
    stem = args.out / f"nvidia_{args.machine}"
    eq = report["equality"]
    m = report["machine"]
    lines = [
        f"# Generator step: medrecon vs NVIDIA stylegan2-ada-pytorch ({args.machine})",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: CPU {m['cpu']} ({m['logical_cores']} logical cores, {m['affinity_cores']} usable), torch threads "
        f"{m['torch_threads']}, torch {m['torch']}, Python {m['python']}, device {m['device']}"
        + (f" ({m['gpu']}, CUDA {m['cuda']}, TF32 matmul/cuDNN {m['tf32_matmul']}/{m['tf32_cudnn']})"
           if m["device"] == "cuda" else "")
        + f"; CPU native bf16: {m['cpu_native_bf16']}; load average at start {_load(m['loadavg_start'])}, "
        f"at end {_load(m.get('loadavg_end'))}.",
        "",
        f"Prior `{report['prior']['name']}` ({report['prior']['resolution']}^2, weights sha256 "
        f"{str(report['prior']['weights_sha256'])[:12]}...), kwargs `{json.dumps(report['prior']['kwargs'])}`.",
        f"NVIDIA: {report['nvidia']['repo_url_hint']} at commit {report['nvidia']['commit']}, fetched at bench time "
        f"(not part of this repository); ops: {report['nvidia']['ops_ran']}.",
        "",
        "## Equality check (fp32, before timing)",
        "",
        f"Weights copied with `load_state_dict(strict=True)` ({report['prior']['num_tensors']} tensors, identical "
        f"names; max abs diff after the copy {report['prior']['weights_max_abs_diff']:.1e}). Same W+ latents "
        f"(batch {eq['batch']}), `noise_mode='const'`, same `noise_const` buffers:",
        "",
        f"* image max abs diff **{eq['image_max_abs_diff']:.2e}** (image max |x| {eq['image_max_abs']:.2f}; "
        f"tolerance {eq['tolerance']:.0e}: {'passed' if eq['passed'] else 'FAILED'})",
        f"* gradient w.r.t. ws: max abs diff {eq['grad_ws_max_abs_diff']:.2e} (max |g| {eq['grad_ws_max_abs']:.2e})",
        f"* gradients w.r.t. the {eq['num_weight_grads']} synthesis weights: max relative diff "
        f"{eq['grad_weights_max_rel_diff']:.2e}",
        f"* NVIDIA default path vs its fp32: {eq['nvidia_default_vs_fp32_max_abs_diff']:.2e}; medrecon default "
        f"path vs its fp32: {eq['medrecon_default_vs_fp32_max_abs_diff']:.2e}",
        "",
        "## Timings",
        "",
        f"Per image, median of {args.repeats} timed repeats after {args.warmup} warm-up calls per implementation; "
        "repeats interleaved (the order rotates every round), so background load hits every implementation alike. "
        "Steps: " + "; ".join(f"`{s}` = {STEPS[s]}" for s in args.steps) + ". Loss: mean squared difference "
        "to a fixed image. The last column is the max abs diff of each row's image (its precision) vs medrecon "
        "fp32 on the timed latents.",
        "",
        *table(report["rows"]),
        "",
    ]
    lines += summary_lines(report["rows"])
    if not any(r["key"] == "medrecon_default" for r in report["rows"]):
        lines.append("* medrecon's solver default is fp32 here (`medrecon.solvers._common.autocast` is off: bf16 on "
                     "the CPU is opt-in, `MEDRECON_CPU_BF16=1`, and needs native bf16), so its fp32 rows are its "
                     "default path.")
    if args.note:
        lines += ["", args.note]
    stem.with_suffix(".md.tmp").write_text("\n".join(lines) + "\n")
    stem.with_suffix(".json.tmp").write_text(json.dumps(report, indent=2) + "\n")
    os.replace(stem.with_suffix(".md.tmp"), stem.with_suffix(".md"))
    os.replace(stem.with_suffix(".json.tmp"), stem.with_suffix(".json"))
    return stem.with_suffix(".json"), stem.with_suffix(".md")


def _load(v: Any) -> str:
    return "n/a" if not v else "/".join(f"{x:.2f}" for x in v)


def summary_lines(rows: list[dict]) -> list[str]:
    out = []
    for key in ("medrecon_fp32", "medrecon_default"):
        rs = [r for r in rows if r["key"] == key]
        if rs:
            ratios = ", ".join(f"{r['step']} batch {r['batch']}: {r['ratio_nvidia_over_this']:.2f}x" for r in rs)
            out.append(f"* NVIDIA / {rs[0]['implementation']} [{rs[0]['precision']}]: {ratios}.")
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    nv = import_nvidia(args.nvidia_repo, args.nvidia_ops)
    command = "python " + " ".join(shlex.quote(a) for a in ([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])))
    if os.environ.get("MEDRECON_CPU_BF16"):
        command = f"MEDRECON_CPU_BF16={os.environ['MEDRECON_CPU_BF16']} " + command
    machine = machine_info(args)
    print(json.dumps(machine), flush=True)
    prior, G_mr, G_nv, pinfo = build_pair(args, nv)

    eq = check_equal(args, G_mr, G_nv, dev)
    print("equality (fp32): " + json.dumps(eq), flush=True)
    if not eq["passed"]:
        fail(f"the two generators disagree: image max abs diff {eq['image_max_abs_diff']:.3e} >= tolerance "
             f"{args.tolerance:.1e}; not timing different networks.", code=1)
    ops_ran = nvidia_ops_ran(nv, args.nvidia_ops, args.device)
    print(f"NVIDIA ops: {ops_ran}", flush=True)

    cands = candidates(G_mr, G_nv, dev, nvidia_precision(G_nv, dev))
    rows: list[dict] = []
    for step in args.steps:
        for batch in args.batch_sizes:
            new = time_step(step, batch, cands, G_mr, args, dev)
            rows += new
            for line in table(new)[2:]:
                print(line, flush=True)
    machine["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    report = dict(
        command=command,
        machine=machine,
        settings=dict(batch_sizes=args.batch_sizes, repeats=args.repeats, warmup=args.warmup, threads=args.threads,
                      steps=args.steps, seed=args.seed, device=args.device, nvidia_ops_requested=args.nvidia_ops,
                      nvidia_num_fp16_res=args.nvidia_num_fp16_res),
        prior=dict(name=prior.name, resolution=G_mr.img_resolution, weights_sha256=prior.weights_sha256,
                   kwargs=pinfo["kwargs"], nvidia_kwargs=pinfo["nvidia_kwargs"], num_tensors=pinfo["num_tensors"],
                   weights_max_abs_diff=pinfo["weights_max_abs_diff"]),
        nvidia=dict(repo=str(args.nvidia_repo), repo_url_hint="https://github.com/NVlabs/stylegan2-ada-pytorch",
                    commit=git_commit(args.nvidia_repo), ops_requested=args.nvidia_ops, ops_ran=ops_ran),
        equality=eq,
        rows=rows,
    )
    print()
    print("\n".join(table(rows)))
    print("\n".join(summary_lines(rows)))
    js, md = write_results(args, report)
    print(f"wrote {js} and {md}")


if __name__ == "__main__":
    main()
