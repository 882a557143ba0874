#!/usr/bin/env python
"""Speed and memory benchmark of medrecon's priors and solvers.

For each prior (the shipped ones by default, or ``--prior NAME_OR_PATH``, repeatable) and each
device (CPU, and CUDA when present), measures:

* the generator's forward time per image (``G.synthesis(G.mapping(z))`` under ``no_grad``) and
  forward+backward time per image (gradient w.r.t. the W+ latents, what every solver step pays),
  for batch sizes 1, 4 and 16 (``--batch-sizes``);
* each method's wall-clock seconds per slice at its default hyperparameters on one slice at the
  prior's resolution (SR x4 by default, ``--task``). With ``--steps N`` the solvers run only N
  iterations per stage and the time is extrapolated linearly to the default iteration count;
  such rows are marked ``extrapolated`` in both outputs;
* the peak memory of each measurement: CUDA ``torch.cuda.max_memory_allocated``; on CPU the
  peak resident set size of the process (Linux ``VmHWM``, reset before each measurement through
  ``/proc/self/clear_refs``; elsewhere the lifetime peak, labelled as such);
* the machine: CPU model, torch threads, torch version, GPU name.

Writes ``<out>/<machine>.json`` (everything) and ``<out>/<machine>.md`` (tables).

Examples::

    python bench/bench_solvers.py                               # shipped priors, full defaults
    python bench/bench_solvers.py --steps 10 --methods csgm,iagan --batch-sizes 1,4
    python bench/bench_solvers.py --prior path/to/prior --devices cpu --machine laptop
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

try:  # an installed medrecon, else the checkout this script lives in
    import medrecon  # noqa: F401
except ModuleNotFoundError:  # pragma: no cover - running from a source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))



# ---------------------------------------------------------------------------------------------
# Machine and memory
# ---------------------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    """CPU model, logical cores, torch threads, torch/python versions, GPU name."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {
        "hostname": platform.node(),
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": None,
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info["cuda"] = {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                        "torch_cuda": torch.version.cuda}
    with contextlib.suppress(Exception):
        import medrecon

        info["medrecon"] = medrecon.__version__
    return info


def _vm_hwm_bytes() -> int | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


def _reset_rss_peak() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux >= 4.0). True on success."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, Any]]:
    """Measure the peak memory of the enclosed block; fills ``{"bytes", "kind"}`` on exit."""
    out: dict[str, Any] = {"bytes": None, "kind": None}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield out
        torch.cuda.synchronize(device)
        out["bytes"] = int(torch.cuda.max_memory_allocated(device))
        out["kind"] = "cuda max_memory_allocated"
        return
    reset = _reset_rss_peak()
    yield out
    peak = _vm_hwm_bytes()
    if peak is not None:
        out["bytes"] = peak
        out["kind"] = "process peak RSS (VmHWM, reset before)" if reset else \
            "process peak RSS since start (VmHWM; reset unavailable)"
    else:
        import resource

        scale = 1 if sys.platform == "darwin" else 1024
        out["bytes"] = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale
        out["kind"] = "process peak RSS since start (ru_maxrss)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------
# Generator timing
# ---------------------------------------------------------------------------------------------
def _timed(fn: Callable[[], Any], device: torch.device, *, repeats: int, warmup: int = 2
           ) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def bench_generator(G: torch.nn.Module, device: torch.device, batch_sizes: Sequence[int], *,
                    repeats: int, seed: int = 0) -> list[dict[str, Any]]:
    """Forward and forward+backward seconds per image of ``G`` for each batch size.

    Forward is ``G.synthesis(G.mapping(z), noise_mode='const')`` without gradients. Backward is
    the gradient of a scalar of the image with respect to W+ latents (the generator frozen), the
    cost of one CSGM/BRGM step without the operator.
    """
    import copy

    Gd = copy.deepcopy(G).eval().requires_grad_(False).to(device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    rows = []
    for b in batch_sizes:
        z = torch.randn(b, Gd.z_dim, generator=gen).to(device)
        c = torch.zeros(b, getattr(Gd, "c_dim", 0), device=device)

        def fwd() -> None:
            with torch.no_grad():
                Gd.synthesis(Gd.mapping(z, c), noise_mode="const")

        with torch.no_grad():
            ws0 = Gd.mapping(z, c)

        def fwd_bwd() -> None:
            ws = ws0.detach().clone().requires_grad_(True)
            img = Gd.synthesis(ws, noise_mode="const")
            img.square().mean().backward()

        entry: dict[str, Any] = {"batch": b}
        for name, fn in (("forward", fwd), ("forward_backward", fwd_bwd)):
            try:
                with peak_memory(device) as mem:
                    t = _timed(fn, device, repeats=repeats)
            except torch.OutOfMemoryError:
                entry[name] = {"error": "out of memory"}
                continue
            entry[name] = {"s_per_image": statistics.median(t) / b,
                           "s_per_batch_min": min(t), "repeats": len(t),
                           "peak_mem_bytes": mem["bytes"], "peak_mem_kind": mem["kind"]}
        rows.append(entry)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


# ---------------------------------------------------------------------------------------------
# Solver timing
# ---------------------------------------------------------------------------------------------
def default_steps(method: str, task: str | None) -> dict[str, int]:
    """Iteration counts a method runs with its defaults for ``task`` (empty for closed forms).

    Reads :func:`medrecon.solvers.method_options` (signature defaults plus the per-task
    overrides). IAGAN's stage-1 search counts as ``stage1_steps`` (its stage-1 solver's default).
    """
    from medrecon import solvers

    opts = solvers.method_options(method, task)
    out: dict[str, int] = {}
    if isinstance(opts.get("steps"), int):
        out["steps"] = int(opts["steps"])
    if "stage1" in opts:
        s1 = dict(opts.get("stage1_options") or {})
        inner = solvers.method_options(str(opts["stage1"]), task)
        steps1 = s1.get("steps", inner.get("steps"))
        if isinstance(steps1, int):
            out["stage1_steps"] = int(steps1)
    return out


def _capped_options(method: str, defaults: dict[str, int], steps: int) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    if "steps" in defaults:
        opts["steps"] = min(steps, defaults["steps"])
    if "stage1_steps" in defaults:
        opts["stage1_options"] = {"steps": min(steps, defaults["stage1_steps"])}
    return opts


def bench_solvers(prior: Any, device: torch.device, methods: Sequence[str], *, task: str,
                  task_options: dict[str, Any], steps: int | None, seed: int = 0,
                  slices: int = 1, solver_batch: int | None = None) -> list[dict[str, Any]]:
    """Seconds per slice of each method on ``slices`` slices at the prior's resolution.

    The slices are samples of the prior itself (seeded), measured with the task's operator
    (noiseless, so generative methods may stop early once the fit is flat). They are solved in
    batches of ``solver_batch`` slices (default: all at once), as the pipeline does with
    ``--batch-size``; ``slices=150`` times a 150-slice volume. With ``steps`` set,
    the method runs twice with every iteration count capped at ``steps // 2`` and ``steps``;
    the fixed cost and the cost per iteration fitted to the two times give the default run's
    time (marked extrapolated; an upper bound when the full run would stop early).
    Back-projection is explicit (``-bp`` suffix).
    """
    if slices < 1 or (solver_batch is not None and solver_batch < 1):
        raise ValueError(f"slices={slices}, solver_batch={solver_batch}: expected >= 1.")
    from medrecon import physics, solvers

    G = prior.generator
    R, C = int(prior.resolution), int(prior.channels)
    gen = torch.Generator().manual_seed(seed)
    batch = min(slices, solver_batch or slices)
    with torch.no_grad():
        z = torch.randn(slices, G.z_dim, generator=gen)
        x = torch.cat([G(z[i:i + 16], torch.zeros(len(z[i:i + 16]), getattr(G, "c_dim", 0)),
                         noise_mode="const") for i in range(0, slices, 16)]).clamp(-1, 1)
    op = physics.build_operator(task, img_size=(R, R), channels=C, seed=seed, **task_options)
    y = op.measure(x, generator=torch.Generator().manual_seed(seed + 1))
    solver_task = solvers.infer_task(op)

    def run(base: str, bp: bool, opts: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """Solve every slice, ``batch`` at a time; ``rec.seconds`` is the total per slice."""
        with peak_memory(device) as mem:
            t0 = time.perf_counter()
            for b0 in range(0, slices, batch):
                rec = solvers.solve(y[b0:b0 + batch], op, prior, method=base, bp=bp,
                                    device=str(device), seed=seed, **opts)
            _sync(device)
            rec.seconds = (time.perf_counter() - t0) / slices
        return rec, mem

    rows = []
    for method in methods:
        base, bp = (method[:-3], True) if method.endswith("-bp") else (method, False)
        defaults = default_steps(base, solver_task)
        short = steps is not None and bool(defaults) and any(v > steps for v in defaults.values())
        entry: dict[str, Any] = {"method": method, "default_steps": defaults,
                                 "slices": slices, "solver_batch": batch,
                                 # runs averaged per slice (IAGAN ensembles); each runs the steps
                                 "ensemble": int(solvers.method_options(base, solver_task)
                                                 .get("ensemble", 1))}
        try:
            if not short:
                rec, mem = run(base, bp, {})
                entry.update({"run_steps": defaults, "seconds_measured": float(rec.seconds),
                              "seconds_per_slice": float(rec.seconds), "extrapolated": False})
            else:
                # Two short runs (n and 2n iterations per stage) give the fixed cost and the
                # cost per iteration; the default run is extrapolated linearly from them.
                n = max(1, int(steps) // 2)
                points = []
                for cap in (n, 2 * n):
                    ran = {k: min(cap, v) for k, v in defaults.items()}
                    rec, mem = run(base, bp, _capped_options(base, defaults, cap))
                    points.append((sum(ran.values()), float(rec.seconds)))
                (i1, t1), (i2, t2) = points
                per_iter = max(0.0, (t2 - t1) / max(1, i2 - i1))
                fixed = max(0.0, t2 - per_iter * i2)
                entry.update({"run_steps": ran, "seconds_measured": t2,
                              "seconds_short_runs": [t1, t2],
                              "seconds_fixed": fixed, "seconds_per_iteration": per_iter,
                              "seconds_per_slice": fixed + per_iter * sum(defaults.values()),
                              "extrapolated": True,
                              # the longer run must cost more; if not, the load swamped it
                              "fit_reliable": t2 > t1 and t2 - per_iter * i2 >= 0})
        except torch.OutOfMemoryError:
            entry["error"] = "out of memory"
            rows.append(entry)
            continue
        except Exception as exc:  # noqa: BLE001 - a method unfit for the task is reported, not fatal
            entry["error"] = f"{type(exc).__name__}: {exc}"
            rows.append(entry)
            continue
        entry["seconds_per_volume"] = entry["seconds_per_slice"] * slices
        entry.update({"device": str(rec.device), "peak_mem_bytes": mem["bytes"],
                      "peak_mem_kind": mem["kind"]})
        rows.append(entry)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def _mib(b: int | None) -> str:
    return "-" if b is None else f"{b / 2**20:.0f}"


def to_markdown(report: dict[str, Any]) -> str:
    """Markdown tables of a benchmark report (the ``.md`` output)."""
    m = report["machine"]
    s = report["settings"]
    cuda = m.get("cuda")
    lines = [
        f"# medrecon benchmark: {report['machine_name']}",
        "",
        f"- date: {report['date']}",
        f"- CPU: {m['cpu']} ({m['logical_cores']} logical cores, {m['affinity_cores']} usable, "
        f"torch threads {m['torch_threads']}); GPU: "
        f"{cuda['name'] + ' ' + str(cuda['memory_gib']) + ' GiB' if cuda else 'none'}",
        f"- torch {m['torch']}, python {m['python']}, medrecon {m.get('medrecon', '?')}",
        f"- solver slice: task `{s['task']}` {s['task_options'] or ''} at the prior's resolution; "
        f"steps: {'defaults' if s['steps'] is None else str(s['steps'] // 2) + ' and ' + str(s['steps']) + ' per stage, extrapolated linearly to the defaults'}",
        f"- repeats per generator timing: {s['repeats']} (median reported, after 2 warm-ups)",
        "",
    ]
    for p in report["priors"]:
        lines += [f"## Prior `{p['prior']}` ({p['resolution']}x{p['resolution']}, "
                  f"{p['channels']} ch, {p['parameters'] / 1e6:.2f} M parameters)", ""]
        for d in p["devices"]:
            dev = d["device"]
            lines += [f"### Generator on {dev}", "",
                      "| batch | forward ms / image | fwd+bwd ms / image | peak MiB fwd | "
                      "peak MiB fwd+bwd |", "|---:|---:|---:|---:|---:|"]
            for g in d["generator"]:
                f, fb = g.get("forward", {}), g.get("forward_backward", {})
                ff = f"{f['s_per_image'] * 1e3:.1f}" if "s_per_image" in f else f.get("error", "-")
                bb = f"{fb['s_per_image'] * 1e3:.1f}" if "s_per_image" in fb else fb.get("error", "-")
                lines.append(f"| {g['batch']} | {ff} | {bb} | {_mib(f.get('peak_mem_bytes'))} | "
                             f"{_mib(fb.get('peak_mem_bytes'))} |")
            kind = next((g["forward"].get("peak_mem_kind") for g in d["generator"]
                         if "peak_mem_kind" in g.get("forward", {})), None)
            lines += ["", f"Memory: {kind}.", ""]
            if d["solvers"]:
                n_sl = s.get("slices", 1)
                per_call = s.get("solver_batch") or n_sl
                what = ("one slice" if n_sl == 1 else
                        f"a volume of {n_sl} slices, {min(per_call, n_sl)} per solver call; "
                        f"seconds / slice = volume time / {n_sl}")
                lines += [f"### Solvers on {dev} ({what})", "",
                          "| method | seconds / slice | measured s | iterations run (default) | "
                          "fixed s + s / iteration | peak MiB |", "|---|---:|---:|---|---:|---:|"]
                for r in d["solvers"]:
                    if "error" in r:
                        lines.append(f"| {r['method']} | {r['error']} | | | | |")
                        continue
                    mark = ""
                    if r["extrapolated"]:
                        mark = (" (extrapolated)" if r.get("fit_reliable", True)
                                else " (extrapolated, unreliable: noisy timings)")
                    its = ", ".join(f"{k}={v}" for k, v in r["run_steps"].items()) or "closed form"
                    if r.get("ensemble", 1) > 1:
                        its += f", x {r['ensemble']} runs (ensemble)"
                    dft = ", ".join(f"{k}={v}" for k, v in r["default_steps"].items())
                    fit = (f"{r['seconds_fixed']:.2f} + {r['seconds_per_iteration']:.3f}"
                           if r["extrapolated"] else "")
                    lines.append(f"| {r['method']} | {r['seconds_per_slice']:.2f}{mark} | "
                                 f"{r['seconds_measured']:.2f} | {its}"
                                 f"{' (' + dft + ')' if dft and r['extrapolated'] else ''} | "
                                 f"{fit} | {_mib(r.get('peak_mem_bytes'))} |")
                lines.append("")
                if n_sl > 1:
                    lines += [f"Seconds per volume of {n_sl} slices: " + ", ".join(
                        f"{r['method']} {r['seconds_per_volume']:.1f}"
                        for r in d["solvers"] if "error" not in r) + ".", ""]
    return "\n".join(lines)


def _shipped_priors() -> list[str]:
    """Names of the shipped priors whose weights are present."""
    from medrecon import priors

    return [p["name"] for p in priors.list_priors() if p.get("available")]


def _safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", s).strip("-") or "machine"


def _csv(s: str) -> list[str]:
    return [t.strip() for t in s.split(",") if t.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (see ``--help``)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--prior", action="append", default=None,
                    help="prior name or path (repeatable); default: every shipped prior")
    ap.add_argument("--batch-sizes", default="1,4,16", help="generator batch sizes")
    ap.add_argument("--methods", default=None,
                    help="comma-separated methods; default: every method in medrecon.solvers")
    ap.add_argument("--task", default="sr", help="task of the solver slice")
    ap.add_argument("--scale", type=int, default=4, help="[sr] factor")
    ap.add_argument("--acceleration", type=float, default=None, help="[mri] acceleration")
    ap.add_argument("--steps", type=int, default=None,
                    help="short run: time N/2 and N iterations per stage, extrapolate linearly")
    ap.add_argument("--repeats", type=int, default=5, help="generator timing repeats")
    ap.add_argument("--devices", default=None,
                    help="comma-separated devices; default cpu, plus cuda when available")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--no-solvers", action="store_true", help="time only the generators")
    ap.add_argument("--slices", type=int, default=1,
                    help="slices solved (a volume: e.g. 150); timings are per slice and total")
    ap.add_argument("--solver-batch", type=int, default=None,
                    help="slices per solver call (the pipeline's --batch-size) [all]")
    ap.add_argument("--machine", default=None, help="name of the output files (default: host)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results",
                    help="output folder")
    ap.add_argument("--seed", type=int, default=0, help="seed of the latents and measurements")
    args = ap.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        ap.error(f"--steps must be >= 1, got {args.steps}")
    if args.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {args.repeats}")
    try:
        args.batch_sizes = [int(b) for b in _csv(args.batch_sizes)]
    except ValueError:
        ap.error(f"--batch-sizes must be comma-separated integers, got {args.batch_sizes!r}")
    if not args.batch_sizes or min(args.batch_sizes) < 1:
        ap.error(f"--batch-sizes must be positive integers, got {args.batch_sizes!r}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write ``<out>/<machine>.json`` and ``.md``; returns 0."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from medrecon import priors, solvers

    devices = _csv(args.devices) if args.devices else (
        ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    methods = _csv(args.methods) if args.methods else list(solvers.METHODS)
    task_options: dict[str, Any] = {}
    if args.task == "sr":
        task_options["scale"] = args.scale
    if args.task == "mri" and args.acceleration is not None:
        task_options["acceleration"] = args.acceleration
    machine = _safe_name(args.machine or platform.node())
    report: dict[str, Any] = {
        "format": "medrecon-bench-v1",
        "machine_name": machine,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "settings": {"batch_sizes": args.batch_sizes, "methods": methods, "task": args.task,
                     "slices": args.slices, "solver_batch": args.solver_batch,
                     "task_options": task_options, "steps": args.steps,
                     "repeats": args.repeats, "seed": args.seed, "devices": devices},
        "priors": [],
    }
    names = args.prior or _shipped_priors()
    if not names:
        print("[bench] no shipped prior has weights yet; pass --prior PATH", file=sys.stderr)
        return 2
    for name in names:
        prior = priors.load_prior(name)
        G = prior.generator
        entry: dict[str, Any] = {"prior": str(name), "resolution": int(prior.resolution),
                                 "channels": int(prior.channels),
                                 "parameters": sum(p.numel() for p in G.parameters()),
                                 "devices": []}
        for dev_name in devices:
            device = torch.device(dev_name)
            print(f"[bench] {name} on {device}: generator", file=sys.stderr, flush=True)
            gen_rows = bench_generator(G, device, args.batch_sizes, repeats=args.repeats,
                                       seed=args.seed)
            sol_rows: list[dict[str, Any]] = []
            if not args.no_solvers:
                print(f"[bench] {name} on {device}: solvers {', '.join(methods)}",
                      file=sys.stderr, flush=True)
                sol_rows = bench_solvers(prior, device, methods, task=args.task,
                                         task_options=task_options, steps=args.steps,
                                         seed=args.seed, slices=args.slices,
                                         solver_batch=args.solver_batch)
            entry["devices"].append({"device": str(device), "generator": gen_rows,
                                     "solvers": sol_rows})
        report["priors"].append(entry)
    args.out.mkdir(parents=True, exist_ok=True)
    js = args.out / f"{machine}.json"
    md = args.out / f"{machine}.md"
    js.write_text(json.dumps(report, indent=2, default=str) + "\n")
    md.write_text(to_markdown(report))
    print(md.read_text())
    print(f"[bench] wrote {js} and {md}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
