"""Fit the std-map calibration of a prior for one task and regime on validation images.

The spread of the default method's runs (IAGAN's ensemble after back-projection; variational
BRGM's posterior samples) is fitted as ``E[err^2 | s] ~ floor + scale * (s^2)^power``
(:mod:`medrecon.solvers.calibration`) on the ``--n`` validation images of the held-out fold
(the same selection as ``scripts/tune_defaults.py``: disjoint from the images of the reports).
Writes ``OUT/calibration.md``, ``OUT/fit.json`` and ``OUT/validation.txt`` (all or none; an
existing one only with ``--overwrite``, and only if this script wrote it); with
``--write-prior`` the entry goes into ``metadata["std_calibration"]`` of that ``prior.json``
(replacing the entry of the same method, task, regime, noise level and options).

Example::

    python scripts/calibrate_std.py --prior chest_xray --task sr --task-option scale=4 \\
        --data DATA --held-out docs/results/chest_xray_fold0_held_out.txt --regime "sr x4, bicubic" \\
        --out docs/results/calibration/chest_xray_sr4 \\
        --write-prior bundles/chest_xray_stylegan2/models/prior.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tune_defaults import _value, validation_split  # noqa: E402  (scripts/tune_defaults.py)


def _same_regime(a: dict, b: dict) -> bool:
    keys = ("method", "task", "operator", "bp", "options")
    return (all(a.get(k) == b.get(k) for k in keys)
            and abs(float(a["noise_sigma"]) - float(b["noise_sigma"])) <= 1e-3
            and abs(math.log(float(a["fraction"]) / float(b["fraction"]))) < 1e-3)


def write_prior_entry(path: Path, entry: dict) -> None:
    """Put ``entry`` into ``metadata["std_calibration"]`` of the ``prior.json`` at ``path``
    (replacing one of the same regime), through a temporary file and an atomic rename, under
    a lock on its folder (fits of one prior run side by side)."""
    import fcntl
    import os

    fd = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        info = json.loads(path.read_text())
        meta = info.setdefault("metadata", {})
        kept = [e for e in meta.get("std_calibration", []) if not _same_regime(e, entry)]
        kept.append(entry)
        meta["std_calibration"] = sorted(
            kept, key=lambda e: (e["method"], e["task"], e.get("operator", ""), -e["fraction"]))
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        tmp.replace(path)
    finally:
        os.close(fd)


def report(root: Path) -> str:
    """``root/README.md``: one row per ``root/*/fit.json``."""
    lines = ["# Std-map calibrations of the shipped priors", "",
             "Fitted by `scripts/calibrate_std.sh DATA` (one `scripts/calibrate_std.py` call per "
             "regime; the command and machine are in each folder's `calibration.md`) on 6 "
             "validation images per regime, disjoint from the images of the reports. The std "
             "map is `sqrt(floor + scale * (spread^2)^power)` in generator units ([-1, 1]); ENCE is the "
             "expected normalised calibration error over 20 equal-count bins on the same images "
             "(0: calibrated; a raw ENCE of 1e10 comes from bins where every run agrees to float "
             "rounding, spread ~1e-9, and the error is not zero). The entries ship in "
             "`bundles/<prior>_stylegan2/models/prior.json` (`metadata.std_calibration`).", "",
             "| folder | method | regime | measured fraction | error floor | scale | power | "
             "ENCE raw | ENCE calibrated |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for f in sorted(root.glob("*/fit.json")):
        e = json.loads(f.read_text())
        lines.append(f"| {f.parent.name} | {e['method']} | {e['regime']} | {e['fraction']:.4f} | "
                     f"{math.sqrt(e['floor']):.4f} | {e['scale']:.3g} | {e.get('power', 1.0):.2f} | "
                     f"{e['ence_before']:.3g} | {e['ence_after']:.2f} |")
    text = "\n".join(lines) + "\n"
    readme = root / "README.md"
    if readme.exists() and not readme.read_text(errors="replace").startswith(lines[0]):
        raise SystemExit(f"error: {readme} exists and this script did not write it (its first "
                         f"line is not {lines[0]!r}); move it away or choose another folder.")
    readme.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 2 and args[0] == "--report":
        print(report(Path(args[1])))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="calibrate_std.py --report DIR: DIR/README.md of the fits")
    ap.add_argument("--prior", required=True)
    ap.add_argument("--task", required=True, help="medrecon eval task (sr, mri, inpaint, ...)")
    ap.add_argument("--data", required=True, type=Path, help="folder the held-out list is relative to")
    ap.add_argument("--held-out", required=True, type=Path, help="text list of held-out image paths")
    ap.add_argument("--method", default="iagan-bp", help="method with a std map [iagan-bp]")
    ap.add_argument("--task-option", action="append", default=[], help="KEY=VALUE (repeatable)")
    ap.add_argument("--regime", required=True, help="readable regime name, e.g. 'sr x4, bicubic'")
    ap.add_argument("--noise-sigma", type=float, default=0.0)
    ap.add_argument("--n", type=int, default=6, help="validation images [6]")
    ap.add_argument("--test-limit", type=int, default=8, help="images the report uses [8]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--write-prior", type=Path, default=None, help="prior.json to add the entry to")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace this script's own files in --out (never other files)")
    a = ap.parse_args(argv)
    from medrecon.errors import MedreconInputError

    try:
        return _calibrate(a, argv)
    except MedreconInputError as exc:  # one line and exit 2, as the CLI: no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2


#: The files this script writes into ``--out``, each with the first line that marks it ours.
OUR_FILES = {"validation.txt": "# validation images:", "fit.json": "{",
             "calibration.md": "# Std-map calibration:"}


def check_out(out: Path, *, overwrite: bool) -> None:
    """Refuse ``out``'s files of :data:`OUR_FILES` that exist, unless ``overwrite`` and this
    script wrote them (their first line); checked before any work."""
    from medrecon.errors import MedreconInputError

    for name, mark in OUR_FILES.items():
        f = out / name
        if not (f.exists() or f.is_symlink()):
            continue
        if not overwrite:
            raise MedreconInputError(f"{str(f)!r} exists; pass --overwrite to replace this "
                                     "script's files, or choose another --out.")
        try:
            head = f.read_text(errors="replace")
        except OSError:
            head = ""
        ours = head.startswith(mark) and (name != "fit.json" or '"ence_after"' in head)
        if f.is_symlink() or not f.is_file() or not ours:
            raise MedreconInputError(f"{str(f)!r} was not written by this script; it is never "
                                     "replaced. Move it away, or choose another --out.")


def _calibrate(a: argparse.Namespace, argv: list[str] | None) -> int:
    import tempfile

    import torch

    from medrecon.evaluation import evaluate_run
    from medrecon.io.outputs import OutputStage
    from medrecon.priors import load_prior
    from medrecon.solvers.calibration import (StdCalibration, apply_calibration, ence,
                                              fit_std_calibration)

    check_out(a.out, overwrite=a.overwrite)
    torch.set_num_threads(a.threads)
    held = [ln.split("#", 1)[0].strip() for ln in a.held_out.read_text().splitlines()]
    test, val = validation_split([h for h in held if h], test_limit=a.test_limit, n=a.n)
    val_text = (f"# validation images: {len(val)} of {a.held_out.name}, disjoint from "
                f"the {len(test)} test images\n" + "".join(f"{v}\n" for v in val))
    opts = {}
    for t in a.task_option:
        k, _, v = t.partition("=")
        opts[k.strip()] = _value(v.strip())

    prior = load_prior(a.prior, device="cpu")
    prior.metadata.pop("std_calibration", None)  # fit the raw spread
    with tempfile.TemporaryDirectory() as tmp:  # the list evaluate_run reads; --out stays as
        val_list = Path(tmp) / "validation.txt"  # it was until everything is computed
        val_list.write_text(val_text)
        run = evaluate_run(prior=prior, task=a.task, methods=[a.method],
                           images=a.data.resolve(), folds=str(val_list), fold=0,
                           noise_sigma=a.noise_sigma, seed=a.seed, device="cpu", lpips=False,
                           grid_images=0, **opts)
    px = run.std_maps.get(a.method)
    if px is None or px.get("regime") is None:
        raise SystemExit(f"{a.method} gave no std map for this task; nothing to calibrate.")
    regime = px["regime"]
    floor, scale, power = fit_std_calibration(px["std"], px["error"], exact=px["exact"])
    before = ence(px["std"], px["error"], exact=px["exact"])
    tmp = StdCalibration(method=regime["method"], task=str(regime["task"]),
                         fraction=float(regime["fraction"]), floor=floor, scale=scale, power=power)
    after = ence(apply_calibration(px["std"], tmp), px["error"], exact=px["exact"])
    bp = a.method.endswith("-bp")
    entry = StdCalibration(method=regime["method"], task=str(regime["task"]),
                           fraction=round(float(regime["fraction"]), 6), floor=floor, scale=scale,
                           power=power,
                           operator=str(regime.get("operator", "")), bp=bp, noise_sigma=float(regime["noise_sigma"]),
                           options=dict(regime["options"]), images=len(val), regime=a.regime,
                           ence_before=round(before, 4), ence_after=round(after, 4),
                           fitted_on=sorted(val)).as_dict()

    cmd = shlex.join(sys.argv[1:] if argv is None else argv).replace(str(a.data), "DATA")
    lines = [f"# Std-map calibration: {a.method} on {a.prior}, {a.regime}", "",
             f"`python scripts/calibrate_std.py {cmd}`", "",
             f"{len(val)} validation images (`validation.txt`, disjoint from the report images), "
             f"seed {a.seed}, noise sigma {a.noise_sigma}, {a.threads} torch thread(s), torch "
             f"{torch.__version__}, {platform.machine()}. Pixels the measurements fix exactly are "
             "left out.", "",
             f"Fit of E[err^2 | s] = floor + scale * (s^2)^power (generator units, [-1, 1]): "
             f"floor {floor:.3g} (an error floor of {math.sqrt(floor):.3g}), scale {scale:.3g}, "
             f"power {power:.3f}.", "",
             f"ENCE on these images: raw spread {before:.3f}, calibrated {after:.3f} (in-sample).",
             ""]
    with OutputStage(overwrite=a.overwrite) as stage:  # all three files, or none
        for name, text in (("validation.txt", val_text),
                           ("fit.json", json.dumps(entry, indent=2) + "\n"),
                           ("calibration.md", "\n".join(lines))):
            stage.file(a.out / name).write_text(text)
    if a.write_prior is not None:
        write_prior_entry(a.write_prior, entry)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
