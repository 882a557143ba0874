"""The ``medrecon`` command line.

Reconstruct a scan with a pre-trained StyleGAN2 prior in one line::

    medrecon sr scan.nii.gz                       # x4 super-resolution -> scan_sr_iagan-bp.nii.gz
    medrecon inpaint cxr.dcm --mask holes.png     # fill missing pixels
    medrecon mri knee.h5 --prior brain_mri        # undersampled single-coil k-space
    medrecon mri brain.nii.gz --simulate --acceleration 8
    medrecon demo                                 # SR x4 on the shipped chest X-ray sample
    medrecon priors list

Exit codes: 0 success; 2 bad input or usage (one ``Error: ...`` line, no traceback); 1 internal
error (traceback with ``medrecon --debug ...``). Every reconstruction goes through
:func:`medrecon.pipeline.reconstruct_file`, like the MONAI bundles and the Slicer module.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

import click

from medrecon import __version__
from medrecon.cli_types import SEED, CoherenceWidth, InputPath, OutputPath
from medrecon.errors import MedreconInputError, find_in_chain
from medrecon.limits import (MAX_ENSEMBLE, MAX_KEY_EVERY, MAX_NOISE_SIGMA, MAX_SAMPLES, MAX_SCALE,
                             MAX_STEPS)

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE = 0, 1, 2

#: Default prior per task (the shipped bundles).
DEFAULT_PRIOR = {"sr": "chest_xray", "inpaint": "chest_xray", "deblur": "chest_xray",
                 "denoise": "chest_xray", "cs": "chest_xray", "mri": "brain_mri"}

_TASK_HELP = {
    "sr": (
        "Super-resolve a low-resolution scan by --scale.\n\nINPUT is the low-resolution scan "
        "itself (NIfTI, DICOM file or series folder, PNG, ...). The output covers the same field "
        "of view with the in-plane spacing divided by --scale. With --simulate, INPUT is a "
        "high-resolution scan that is first downsampled (to evaluate against it)."
    ),
    "inpaint": (
        "Fill in missing pixels.\n\nINPUT is the scan; --mask is an image/volume of the same "
        "size whose nonzero pixels are missing. With --simulate and no --mask, a random mask is "
        "drawn from --seed."
    ),
    "mri": (
        "Reconstruct undersampled single-coil MRI.\n\nINPUT is complex k-space (.npy [slices,] H, "
        "W, or fastMRI single-coil .h5 with 'kspace' and optional 'mask'); unsampled entries are "
        "zero. With --simulate, INPUT is an image that is retrospectively undersampled with "
        "--acceleration, --center-fraction and --mask-type."
    ),
    "deblur": "Deblur a scan.\n\nINPUT is the blurred scan (or, with --simulate, a sharp scan to blur first).",
    "denoise": (
        "Denoise a scan.\n\nINPUT is the noisy scan; give its noise level with --noise-sigma "
        "(generator units: the intensity window maps to [-1, 1])."
    ),
    "cs": (
        "Compressed sensing with random Gaussian measurements (always simulated from INPUT; "
        "a research benchmark, not a scanner acquisition)."
    ),
}


# ---------------------------------------------------------------------------------------------
# Error handling and lazily mounted sub-groups
# ---------------------------------------------------------------------------------------------
class InputError(click.ClickException):
    """A :class:`MedreconInputError` shown as ``Error: ...`` with exit code 2."""

    exit_code = EXIT_USAGE


def _debug_enabled(ctx: click.Context | None) -> bool:
    root = ctx.find_root() if ctx is not None else None
    obj = root.obj if root is not None and isinstance(root.obj, dict) else {}
    return bool(obj.get("debug")) or os.environ.get("MEDRECON_DEBUG", "") not in ("", "0")


def _json_mode(ctx: click.Context | None) -> bool:
    return ctx is not None and ctx.meta.get("medrecon.log_format") == "json"


def _json_error(ctx: click.Context | None, message: str, code: int) -> None:
    if _json_mode(ctx):
        click.echo(json.dumps({"event": "error", "message": message, "exit_code": code}), err=True)


def _show_warning(ctx: click.Context, message: Warning | str, category: type[Warning],
                  filename: str, lineno: int, file: Any = None, line: str | None = None) -> None:
    """Warnings as one line each (``Warning: ...``, or a JSON ``warning`` event), without the
    source file and line that Python prints: they are messages for the user, not for us."""
    text = " ".join(str(message).split())
    if _json_mode(ctx):
        click.echo(json.dumps({"event": "warning", "message": text}), err=True)
    else:
        click.echo(f"Warning: {text}", err=True)


class MedreconGroup(click.Group):
    """Click group mapping errors to exit codes and mounting ``priors``/``train`` lazily."""

    _LAZY = {
        "priors": ("medrecon.priors", ("priors_cli", "priors", "cli")),
        "train": ("medrecon.training.cli", ("train", "cli")),
        "eval": ("medrecon.evaluation", ("eval_command",)),
        "eval-scans": ("medrecon.realscan", ("eval_scans_command",)),
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = set(super().list_commands(ctx))
        names.update(n for n in self._LAZY if self._lazy(n) is not None)
        return sorted(names)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self._LAZY:
            cmd = self._lazy(cmd_name)
            if cmd is not None:
                return cmd
        return super().get_command(ctx, cmd_name)

    def _lazy(self, name: str) -> click.Command | None:
        import importlib

        module, attrs = self._LAZY[name]
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            # Only a missing optional layer hides its command; a broken import inside it surfaces.
            if exc.name != module:
                raise
            return None
        for a in attrs:
            obj = getattr(mod, a, None)
            if isinstance(obj, click.Command):
                return obj
        return None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with warnings.catch_warnings():
                warnings.showwarning = functools.partial(_show_warning, ctx)
                return super().invoke(ctx)
        except MedreconInputError as exc:
            # The whole message: some errors list choices on the following lines (the series
            # of a DICOM folder, the valid options of a task).
            message = str(exc).strip() or type(exc).__name__
            err = InputError(message)
            if _json_mode(ctx):
                _json_error(ctx, message, EXIT_USAGE)
                err.reported = True  # type: ignore[attr-defined]
            raise err from exc
        except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - the one place unexpected errors are reported
            # SIGTERM inside an import: Python wraps it in a RuntimeError (it was exit 1)
            cause = find_in_chain(exc, Terminated)
            if cause is not None:
                raise cause from None
            msg = f"internal error: {type(exc).__name__}: {exc}"
            _json_error(ctx, msg, EXIT_INTERNAL)
            if _debug_enabled(ctx):
                click.echo(traceback.format_exc(), err=True, nl=False)
            if not _json_mode(ctx):
                click.echo(f"Error: {msg}", err=True)
                if not _debug_enabled(ctx):
                    click.echo("Run `medrecon --debug ...` for the traceback, and please report it.",
                               err=True)
            ctx.exit(EXIT_INTERNAL)


@click.group(cls=MedreconGroup, context_settings={"help_option_names": ["-h", "--help"],
                                                 "max_content_width": 100})
@click.version_option(__version__, prog_name="medrecon")
@click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """medrecon: reconstruct medical images by inverting pre-trained StyleGAN2 priors.

    Methods: IAGAN (image-adaptive GAN), BRGM (Bayesian reconstruction through generative
    models), CSGM, plus classical baselines (bicubic, zero_filled, tv, biharmonic, wiener).
    Inputs and outputs keep their geometry: NIfTI, DICOM (file or series folder), PNG, ...

    Start with `medrecon demo`, then e.g. `medrecon sr scan.nii.gz -o scan_x4.nii.gz`.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


# ---------------------------------------------------------------------------------------------
# Progress reporting
# ---------------------------------------------------------------------------------------------
class _Reporter:
    """Text progress bar (tqdm on stderr) or JSON lines on stderr for the Slicer module."""

    def __init__(self, *, log_format: str, quiet: bool) -> None:
        import time

        self.json = log_format == "json"
        self.quiet = quiet
        self.bar = None
        self.t0 = time.monotonic()

    def __call__(self, event: dict) -> None:
        if self.json:
            out = {"event": event.get("event", "progress"), "fraction": event.get("fraction"),
                   "message": event.get("message", ""), **self._timing(event.get("fraction"))}
            click.echo(json.dumps(out), err=True)
            return
        if self.quiet:
            return
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=1000, unit="", file=sys.stderr, dynamic_ncols=True,
                            bar_format="{percentage:3.0f}%|{bar}| {elapsed}<{remaining} {desc}",
                            leave=False)
        frac = float(event.get("fraction") or 0.0)
        self.bar.n = int(round(1000 * frac))
        self.bar.set_description_str(str(event.get("message", "")), refresh=False)
        self.bar.refresh()

    def _timing(self, fraction: Any) -> dict:
        """``elapsed_s`` and ``eta_s`` (the time left at the pace so far; null before 2 %), what
        the text bar shows as elapsed<remaining, for the Slicer module and other readers."""
        import time

        elapsed = time.monotonic() - self.t0
        f = float(fraction) if isinstance(fraction, (int, float)) else 0.0
        eta = round(elapsed * (1.0 - f) / f, 1) if 0.02 <= f < 1.0 else (0.0 if f >= 1.0 else None)
        return {"elapsed_s": round(elapsed, 1), "eta_s": eta}

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def done(self, info: dict, output: str, std: str | None) -> None:
        from medrecon.pipeline import std_kind  # loaded by the run that ends here

        self.close()
        eff = info.get("effective_factor")
        if self.json:
            click.echo(json.dumps({"event": "done", "output": output, "std": std,
                                   "std_kind": std_kind(info) if std else None,
                                   "seconds": round(float(info.get("seconds", 0.0)), 3),
                                   "method": info.get("method"), "device": info.get("device"),
                                   "plane": info.get("plane"),
                                   "effective_factor": [round(float(e), 4) for e in eff]
                                   if eff else None}), err=True)
        if not self.quiet:
            extra = ""
            if std:
                extra = (f", std {std} (calibrated for this regime)"
                         if std_kind(info) == "calibrated std" else
                         f", std {std} (the samples' raw spread: no calibration for this regime)")
            prior = ""
            if eff and _uses_prior(str(info.get("method"))):
                sr = info.get("task") == "sr"
                # what the prior supplies of the output: at most the requested factor (its
                # grid may be finer than a small output's) and at most 1 for the other tasks
                top = float(info.get("scale") or 1) if sr else 1.0
                prior = (f", prior {'magnification' if sr else 'resolution'} "
                         f"x{min(min(eff), top):.2f}")
            click.echo(f"medrecon {info.get('task')}: method {info.get('method')}, device "
                       f"{info.get('device')}, {info.get('slices')} {info.get('plane', '')} "
                       f"slice(s){prior}, {float(info.get('seconds', 0.0)):.1f} s -> "
                       f"{output}{extra}")


def _uses_prior(method: str) -> bool:
    """Whether a result's method (``info["method"]``, e.g. ``'iagan+bp'``) ran the prior."""
    from medrecon.solvers import METHODS

    spec = METHODS.get(method.split("+")[0])
    return bool(spec is not None and spec.generative)


# ---------------------------------------------------------------------------------------------
# Reconstruction sub-commands
# ---------------------------------------------------------------------------------------------
def _common_options(task: str) -> Callable[[Callable], Callable]:
    opts: list[Callable] = [
        click.argument("input_path", metavar="INPUT", type=InputPath()),
        click.option("-o", "--output", "output", type=OutputPath(dir_okay=True, path_type=Path),
                      default=None, help="Output file (format from the suffix: .nii.gz, .nii, "
                      ".dcm or a folder for DICOM, .png). [default: <INPUT stem>_"
                      f"{task}_<method><suffix> beside INPUT; one DICOM file of a series "
                      "folder: <folder>_<stem>_... beside the folder]"),
        click.option("--prior", default=DEFAULT_PRIOR[task], show_default=True,
                     help="Prior bundle name (chest_xray, brain_mri; see `medrecon priors list`) "
                     "or a prior directory."),
        click.option("--method", default=None,
                     help="iagan, brgm, csgm, or a baseline (bicubic, zero_filled, tv, biharmonic, "
                     "wiener). [default: the prior's choice for this task, else iagan]"),
        click.option("--bp/--no-bp", "bp", default=None,
                     help="Back-project onto the measurements (exact data consistency; best at low "
                     "noise). [default: the method's default]"),
        click.option("--steps", type=click.IntRange(min=1, max=MAX_STEPS), default=None,
                     help="Optimisation steps (IAGAN: per stage). [default: the method's "
                     "default for the task]"),
        click.option("--plane", type=click.Choice(["axial", "coronal", "sagittal"]), default=None,
                     help="Slicing plane for 3D volumes. [default: the acquired plane (thin slices "
                     "of a scan), else the prior's plane; 2D images keep their layout]"),
        click.option("--noise-sigma", type=click.FloatRange(0.0, MAX_NOISE_SIGMA), default=0.0,
                     show_default=True,
                     help="Measurement noise std in generator units (the intensity window is "
                     "mapped to [-1, 1], so 0.02 is 1% of the window)."),
        click.option("--samples", type=click.IntRange(min=0, max=MAX_SAMPLES), default=0, show_default=True,
                     help="Posterior samples (BRGM variational); > 0 also writes a "
                     "<output>_std map."),
        click.option("--ensemble", type=click.IntRange(min=1, max=MAX_ENSEMBLE), default=None,
                     help="IAGAN: independent runs per slice whose images are averaged (an "
                     "estimate of the posterior mean; costs that many runs; 1 = one run, "
                     "fastest). [default: per task, see docs/solvers.md; an sr volume of "
                     "thin slices: 1 per slice, made coherent, see --coherence]"),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
                     show_default=True, help="Where to compute (auto = CUDA when available)."),
        click.option("--batch-size", type=click.IntRange(min=1), default=None,
                     help="Slices solved together (lower it if memory runs out: IAGAN holds "
                     "one synthesis-network copy per slice and ensemble run; the SR volume "
                     "default solves whole slabs of 8). Every size from 2 gives the same values "
                     "on the CPU; 1 solves each slice alone, with other rounding, which the "
                     "optimisation turns into another result of equal quality. [default: 16 on "
                     "CUDA; on the CPU 8 for one IAGAN run per slice, else 4]"),
        click.option("--seed", type=SEED, default=0, show_default=True,
                     help="Random seed (restarts, simulated masks and noise); same seed, same "
                     "result."),
        click.option("--overwrite", is_flag=True, help="Replace an existing output (never the input)."),
        click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary line."),
        click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
                     show_default=True, help="json: progress/done/error events as JSON lines on "
                     "stderr (used by the 3D Slicer module)."),
        click.option("--series", "--series-uid", "series_uid", default=None, metavar="UID",
                     help="SeriesInstanceUID to read from a folder holding several DICOM series "
                     "(without it, such a folder is refused with the list of its series)."),
        click.option("--volume", type=click.IntRange(min=0), default=None,
                     help="Index of the volume to read from a 4D file."),
    ]
    if task != "cs":
        opts.append(click.option("--simulate", is_flag=True,
                                 help="INPUT is a clean scan: simulate the measurements from it "
                                 "(retrospective degradation, seeded by --seed)."))
    if task == "sr":
        opts.append(click.option("--scale", type=click.IntRange(min=2, max=MAX_SCALE), default=4,
                                 show_default=True, help="Super-resolution factor: the output "
                                 "grid has --scale times the input's pixels per axis."))
        opts.append(click.option("--sr-kernel", type=click.Choice(["bicubic", "box", "gaussian"]),
                                 default="bicubic", show_default=True,
                                 help="Blur of the low-resolution acquisition model (box = pixel "
                                 "averaging / binning)."))
    if task in ("sr", "inpaint", "deblur", "denoise"):
        opts += [
            click.option("--key-every", type=click.IntRange(min=1, max=MAX_KEY_EVERY), default=None,
                         help="Volumes, IAGAN: cut the slices into segments of this many along "
                         "the slice axis; each segment's middle slice is solved in full, the "
                         "others start from their solved neighbour (fewer steps; 3 is the "
                         "useful length). 1 = every slice from scratch. [default: "
                         "medrecon.volume.DEFAULT_KEY_EVERY = 1]"),
            click.option("--warm-steps", type=click.IntRange(min=1, max=MAX_STEPS), default=None,
                         help="Steps of a slice started from its neighbour. [default: a "
                         "fraction of the method's steps, medrecon.volume.warm_steps_for]"),
            click.option("--coherence", type=CoherenceWidth(), default="auto", show_default=True,
                         help="Volumes, generative methods: width in mm across slices over "
                         "which the detail the measurements do not determine is averaged, "
                         "neighbours weighted by how alike their measurements are (the "
                         "measured part of each slice is kept). auto = 4 output in-plane "
                         "pixels for sr, off for the other tasks; 0 = off."),
        ]
    if task == "inpaint":
        opts.append(click.option("--mask", type=InputPath(dir_okay=False),
                                 default=None, help="Image/volume on INPUT's grid; nonzero = "
                                 "missing pixel."))
    if task == "mri":
        opts += [
            click.option("--acceleration", type=click.IntRange(min=1, max=64), default=4,
                         show_default=True, help="Undersampling factor (with --simulate)."),
            click.option("--center-fraction", type=click.FloatRange(0.0, 1.0, min_open=True),
                         default=0.08, show_default=True,
                         help="Fraction of fully sampled central k-space lines (with --simulate)."),
            click.option("--mask-type",
                         type=click.Choice(["random", "equispaced", "gaussian2d", "poisson2d"]),
                         default="random", show_default=True,
                         help="Sampling pattern of the phase-encoding lines (with --simulate)."),
        ]

    def deco(f: Callable) -> Callable:
        for o in reversed(opts):
            f = o(f)
        return f

    return deco


def _run(ctx: click.Context, task: str, *, input_path: Path, output: Path | None,
         log_format: str, quiet: bool, **kw: Any) -> None:
    from medrecon.pipeline import reconstruct_file

    ctx.meta["medrecon.log_format"] = log_format
    reporter = _Reporter(log_format=log_format, quiet=quiet)
    mask = kw.pop("mask", None)
    try:
        result = reconstruct_file(input_path, output, task=task, callback=reporter, mask=mask, **kw)
    finally:
        reporter.close()
    reporter.done(result.info, str(result.output_path),
                  str(result.std_path) if result.std_path else None)


def _make_task_command(task: str) -> click.Command:
    @cli.command(task, help=_TASK_HELP[task], short_help=_TASK_HELP[task].split("\n")[0])
    @_common_options(task)
    @click.pass_context
    def cmd(ctx: click.Context, **kw: Any) -> None:
        _run(ctx, task, **kw)

    return cmd


for _task in ("sr", "inpaint", "mri", "deblur", "denoise", "cs"):
    _make_task_command(_task)


# ---------------------------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------------------------
def _find_demo_sample(prior: str) -> tuple[Path, Path | None] | None:
    """The default bundle's low-resolution sample and its high-resolution reference, if any.

    Bundles ship ``sample/<name>_lr.<ext>`` (the 4 x 4 box average of the reference) and
    ``sample_reference/<name>.<ext>``; looked up in the package data, then the repository.
    """
    try:
        from medrecon.priors import bundle_search_paths

        roots = list(bundle_search_paths())
    except ImportError:  # pragma: no cover - priors always ships it
        roots = []
    roots += [Path(__file__).resolve().parent / "bundles",
              Path(__file__).resolve().parent.parent / "bundles"]
    names = {"chest_xray": "chest_xray_stylegan2", "brain_mri": "brain_mri_stylegan2"}
    for root in roots:
        d = Path(root) / names.get(prior, prior) / "sample"
        if not d.is_dir():
            continue
        files = sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith(".")
                       and not p.name.endswith((".json", ".md", ".txt")))
        if files:
            lr = files[0]
            stem, suffix = (lr.name[: -len(".nii.gz")], ".nii.gz") if lr.name.endswith(".nii.gz") \
                else (lr.stem, lr.suffix)
            ref = d.parent / "sample_reference" / (stem.removesuffix("_lr") + suffix)
            return lr, (ref if ref.is_file() else None)
    return None


#: What `medrecon demo` shows by default: the SR regime where the shipped prior gained most
#: over the best classical baseline in docs/results/regimes (brain MRI, x8: IAGAN-BP 23.76 dB /
#: 0.657 against Lanczos + BP 21.98 / 0.538 on 8 held-out images; chest X-ray x8 +0.30 dB).
DEMO_PRIOR, DEMO_SCALE = "brain_mri", 8


@cli.command("demo")
@click.option("-o", "--output-dir", type=OutputPath(file_okay=False, path_type=Path),
              default=Path("medrecon_demo"), show_default=True, help="Folder for the outputs.")
@click.option("--prior", default=DEMO_PRIOR, show_default=True, help="Prior bundle.")
@click.option("--input", "input_path", type=InputPath(dir_okay=False), default=None,
              help="A high-resolution image to downsample (bicubic) and recover instead of the "
              "bundle's sample reference (simulated low resolution; the image is the reference).")
@click.option("--volume", type=click.IntRange(min=0), default=None,
              help="Index of the volume to read from a 4D --input.")
@click.option("--method", default=None, help="Reconstruction method. [default: the prior's]")
@click.option("--scale", type=click.IntRange(min=2, max=MAX_SCALE), default=DEMO_SCALE, show_default=True)
@click.option("--steps", type=click.IntRange(min=1, max=MAX_STEPS), default=None,
              help="Optimisation steps (IAGAN: per stage). [default: the method's default]")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace existing demo outputs.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.pass_context
def demo(ctx: click.Context, output_dir: Path, prior: str, input_path: Path | None,
         volume: int | None, method: str | None, scale: int, steps: int | None, device: str, seed: int, overwrite: bool, quiet: bool,
         log_format: str) -> None:
    """Super-resolve (x8) a held-out brain MRI and compare with the best classical baseline.

    Box-averages the bundle's held-out reference image by --scale (the default case is where
    the shipped prior helped most in docs/results/regimes), reconstructs it with the prior and
    with Lanczos + back-projection (the best classical baseline there), and writes
    <output-dir>/sr.<ext>, lanczos_bp.<ext>, sr_std.<ext> (IAGAN: the ensemble's per-pixel
    spread, calibrated to a std of the error by the prior's fit for this regime) and
    side_by_side.png (low-res | Lanczos + BP | medrecon | std | reference), then prints
    PSNR/SSIM of both against the reference.
    """
    from medrecon.io import check_image_output, load_image

    ctx.meta["medrecon.log_format"] = log_format
    from medrecon.priors import resolve_prior_path

    resolve_prior_path(str(prior))  # an unknown prior is named as such, before the sample search
    if input_path is not None:
        ref_path, kernel = input_path, "bicubic"
    else:
        found = _find_demo_sample(prior)
        if found is None or found[1] is None:
            raise MedreconInputError(
                f"no sample image found for prior {prior!r} (expected bundles/<bundle>/"
                "sample_reference/); pass --input IMAGE with a high-resolution image to run the "
                "demo on.")
        ref_path, kernel = found[1], "box"  # the bundles' samples are box averages
    if volume is not None and input_path is None:
        raise MedreconInputError("--volume picks a volume of a 4D --input; the bundle's sample "
                                 "is one image. Pass --input IMAGE with it, or drop --volume.")
    reference = load_image(ref_path, volume=volume)
    side = sorted(reference.shape)[-2]  # the smaller in-plane side (a volume's slice axis aside)
    if side < 2 * scale:  # the low-resolution image would be under 2 x 2 pixels
        raise MedreconInputError(
            f"{Path(str(ref_path)).name} is {'x'.join(map(str, reference.shape))} pixels: too "
            f"small for SR x{scale} (at least {2 * scale} pixels per side); use a larger --input "
            "image or a smaller --scale.")
    from medrecon.io._paths import WRITE_SUFFIXES

    suffix = ".nii.gz" if ref_path.name.endswith(".nii.gz") else (ref_path.suffix or ".nii.gz")
    if suffix.lower() in (".jpg", ".jpeg"):
        suffix = ".png"  # medrecon writes no JPEG (lossy)
    elif suffix.lower() == ".dcm" or suffix.lower() not in WRITE_SUFFIXES:
        suffix = ".nii.gz"  # a DICOM, or a format medrecon reads but does not write
    outs = {k: output_dir / f"{k}{suffix}" for k in ("sr", "lanczos_bp", "sr_std")}
    png = output_dir / "side_by_side.png"
    protected = [Path(ref_path)]
    from medrecon.io.outputs import check_output

    for p in outs.values():  # every output checked before the reconstruction
        check_image_output(p, is_2d=reference.one_slice, overwrite=overwrite, inputs=protected)
    check_output(png, overwrite=overwrite, protected=protected)
    reporter = _Reporter(log_format=log_format, quiet=quiet)
    common = dict(task="sr", prior=prior, scale=scale, device=device, seed=seed, simulate=True,
                  sr_kernel=kernel)
    try:
        res = _reconstruct_demo(reference, method=method, steps=steps, callback=reporter, **common)
        base = _reconstruct_demo(reference, method="lanczos", bp=True, **common)
    finally:
        reporter.close()
    _demo_outputs(res, base, reference, outs, png, scale=scale, kernel=kernel,
                  overwrite=overwrite, protected=protected)
    _demo_report(res, base, reference, ref_path, outs, png, prior=prior, scale=scale,
                 kernel=kernel, log_format=log_format)


def _reconstruct_demo(image: Any, **kw: Any) -> Any:
    """The demo's reconstruction: :func:`medrecon.pipeline.reconstruct` with the ensemble
    spread as the std map (for the default method, or another that runs an ensemble)."""
    from medrecon import pipeline as P

    from medrecon.solvers import METHODS

    method = kw.get("method")  # an unknown name is named by reconstruct's own check
    spread = method is None or (method in METHODS and P._accepts(method, "ensemble"))
    return P.reconstruct(image, spread=spread, **kw)


def _demo_outputs(res: Any, base: Any, reference: Any, outs: dict, png: Path, *, scale: int,
                  kernel: str, overwrite: bool, protected: list) -> None:
    """Write the demo's images and its side-by-side figure, all or none."""
    import numpy as np

    from medrecon.io import save_image
    from medrecon.io.outputs import OutputStage
    from medrecon.pipeline import std_kind

    gt = np.asarray(reference.array, dtype=np.float64)
    panels = [_lowres_view(gt, scale, kernel), np.asarray(base.image.array), np.asarray(res.image.array)]
    titles = ["low-res", "Lanczos + BP", str(res.info["method"])]
    own = set()
    if res.std is not None:
        panels.append(np.asarray(res.std.array))
        titles.append("std" if std_kind(res.info) == "calibrated std" else "spread (ensemble)")
        own.add(len(panels) - 1)
    panels.append(gt)
    titles.append("reference")
    with OutputStage(overwrite=overwrite) as stage:  # all outputs, or none
        items = [("sr", res.image), ("lanczos_bp", base.image)]
        if res.std is not None:
            items.append(("sr_std", res.std))
        for key, img in items:
            save_image(img, outs[key], overwrite=overwrite, reference=reference,
                       method=str(res.info["method"] if key != "lanczos_bp" else base.info["method"]),
                       inputs=protected, stage=stage)
        _side_by_side(stage.file(png), panels, titles, own_window=own)
    stale = outs.get("sr_std")
    if res.std is None and overwrite and stale is not None and Path(stale).is_file():
        from medrecon.io.api import written_by_medrecon

        if written_by_medrecon(Path(stale)):  # a previous demo's std map, wrong for this run
            Path(stale).unlink()


def _demo_report(res: Any, base: Any, reference: Any, ref_path: Path, outs: dict, png: Path, *,
                 prior: str, scale: int, kernel: str, log_format: str) -> None:
    """Print (or emit as JSON) the demo's scores against the reference."""
    import numpy as np

    gt = np.asarray(reference.array, dtype=np.float64)
    rng = float(gt.max() - gt.min()) or 1.0
    name = str(res.info["method"])
    scores = {n: _psnr_ssim(np.asarray(r.image.array, dtype=np.float64), gt, rng)
              for n, r in (("lanczos+bp", base), (name, res))}
    if log_format == "json":
        click.echo(json.dumps({"event": "done", "output": str(outs["sr"]),
                               "std": str(outs["sr_std"]) if res.std is not None else None,
                               "seconds": round(res.info["seconds"], 3),
                               "metrics": {k: {"psnr": _json_number(v[0]), "ssim": v[1]}
                                           for k, v in scores.items()}}),
                   err=True)
    click.echo(f"demo: SR x{scale} of {Path(str(ref_path)).name} ({_KERNEL_TEXT[kernel]}) "
               f"with prior {prior}")
    rounded = (" (the results as computed: the saved PNGs are rounded to whole grey levels)"
               if Path(str(outs["sr"])).suffix.lower() == ".png" else "")
    click.echo(f"  vs reference {Path(str(ref_path)).name}{rounded}:")
    for n, (p, s_) in scores.items():
        ssim_text = f"SSIM {s_:.4f}" if s_ is not None else "SSIM n/a (image under 11 x 11)"
        click.echo(f"  {n:<16s} PSNR {p:6.2f} dB   {ssim_text}")
    extra = f", {outs['sr_std'].name}" if res.std is not None else ""
    click.echo(f"medrecon sr: method {name}, device {res.info['device']}, "
               f"{res.info['seconds']:.1f} s -> {outs['sr']} (+ {outs['lanczos_bp'].name}{extra}, "
               f"{png.name})")


def _json_number(v: float | None) -> float | None:
    """``v`` for strict JSON: a PSNR of an exact result is infinite, which JSON cannot hold
    (``null`` there)."""
    import math

    return v if v is None or math.isfinite(v) else None


def _psnr_ssim(x: Any, ref: Any, data_range: float) -> tuple[float, float | None]:
    """PSNR (dB) and SSIM against ``ref`` with an explicit data range (per 2D slice, averaged).

    SSIM is ``None`` for slices smaller than its 11 x 11 window.
    """
    import numpy as np
    import torch

    from medrecon.metrics import psnr, ssim

    def to_t(a: Any) -> Any:
        a2 = np.moveaxis(np.asarray(a, dtype=np.float32), -1, 0)[:, None]  # slices along Z
        return torch.from_numpy(np.ascontiguousarray(a2))

    p = torch.as_tensor(psnr(to_t(x), to_t(ref), data_range=data_range), dtype=torch.float64)
    if min(ref.shape[:2]) < 11:
        return float(p.mean()), None
    s = torch.as_tensor(ssim(to_t(x), to_t(ref), data_range=data_range), dtype=torch.float64)
    return float(p.mean()), float(s.mean())


#: How the demo names its simulated acquisition, by SR kernel.
_KERNEL_TEXT = {"box": "box average", "bicubic": "bicubic downsampling"}


def _lowres_view(gt: Any, scale: int, kernel: str) -> Any:
    """The ground truth measured with the demo's SR operator (``kernel``), pixel-replicated
    back to its size: what the solver saw."""
    import numpy as np
    import torch

    from medrecon.physics import SuperResolution

    X, Y = gt.shape[0] // scale * scale, gt.shape[1] // scale * scale
    slices = torch.from_numpy(np.ascontiguousarray(np.moveaxis(gt[:X, :Y], -1, 0)[:, None]))
    with torch.no_grad():
        lr = SuperResolution(scale, img_size=(X, Y), kernel=kernel).A(slices.double())
    lr = np.moveaxis(lr[:, 0].numpy(), 0, -1)
    up = np.repeat(np.repeat(lr, scale, 0), scale, 1)
    out = np.zeros_like(gt)
    out[:X, :Y] = up
    return out


def _side_by_side(path: Path, images: list, titles: list[str], *,
                  own_window: set[int] | frozenset[int] = frozenset()) -> None:
    """Write the middle slice of each volume side by side as an 8-bit PNG with titles.

    All panels share the display window of the last one (the reference, when present), except
    those in ``own_window`` (e.g. a std map), shown from 0 to their own 99.5th percentile.
    """
    import numpy as np
    from PIL import Image, ImageDraw

    panels = [np.asarray(v, dtype=np.float64)[:, :, np.asarray(v).shape[2] // 2].T for v in images]
    lo, hi = np.percentile(panels[-1], [0.5, 99.5])
    hi = hi if hi > lo else lo + 1.0
    h = max(p.shape[0] for p in panels)
    top = 14
    cols = []
    for i, p in enumerate(panels):
        q = np.zeros((h + top, p.shape[1]))
        a, b = (0.0, max(float(np.percentile(p, 99.5)), 1e-12)) if i in own_window else (lo, hi)
        q[top : top + p.shape[0]] = np.clip((p - a) / (b - a), 0, 1)
        cols += [q, np.ones((h + top, 2))]
    grid = Image.fromarray((np.concatenate(cols[:-1], axis=1) * 255).round().astype(np.uint8))
    draw = ImageDraw.Draw(grid)
    x = 0
    for p, t in zip(panels, titles):
        draw.text((x + 2, 1), t, fill=255)
        x += p.shape[1] + 2
    grid.save(path, format="PNG")


# ---------------------------------------------------------------------------------------------
# Fallback `priors` group (used only when medrecon.priors does not ship its own)
# ---------------------------------------------------------------------------------------------
@click.group("priors")
def _priors_fallback() -> None:
    """List and inspect the available priors."""


@_priors_fallback.command("list")
def _priors_list() -> None:
    """List the priors medrecon can load by name."""
    from medrecon.priors import list_priors

    for p in list_priors():
        click.echo(str(p))


@_priors_fallback.command("show")
@click.argument("name")
def _priors_show(name: str) -> None:
    """Show a prior's metadata."""
    from medrecon.priors import load_prior

    p = load_prior(name, device="cpu")
    meta = dict(getattr(p, "metadata", {}) or {})
    meta.setdefault("resolution", getattr(p, "resolution", None))
    meta.setdefault("channels", getattr(p, "channels", None))
    click.echo(json.dumps(meta, indent=2, default=str))


if MedreconGroup._lazy(cli, "priors") is None:  # type: ignore[arg-type]
    cli.add_command(_priors_fallback, "priors")


#: Exit code of a run stopped by Ctrl-C (SIGINT), the shell convention 128 + 2.
EXIT_INTERRUPTED = 130
#: Exit code of a run stopped by SIGTERM (``kill``, ``timeout``, batch schedulers): 128 + 15.
EXIT_TERMINATED = 143


class Terminated(BaseException):
    """SIGTERM, raised where the process is, so that staged outputs are discarded on the way
    out as for Ctrl-C (the default action killed the process and left a partial
    ``.part`` file beside the output). A ``BaseException``: no ``except Exception`` stops it."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def _wants_json(argv: list[str]) -> bool:
    for i, a in enumerate(argv):
        if a == "--log-format=json" or (a == "--log-format" and argv[i + 1:i + 2] == ["json"]):
            return True
    return False


def main(argv: list[str] | None = None) -> int:
    """Console entry point (``medrecon``); returns the exit code.

    0 success, 2 bad input or usage, 1 internal error, 130 interrupted (Ctrl-C), 143
    terminated (SIGTERM; staged outputs are discarded as for Ctrl-C). With
    ``--log-format json`` every error is one JSON line on stderr and nothing else is printed.
    """
    import signal
    import threading

    args = list(sys.argv[1:] if argv is None else argv)
    as_json = _wants_json(args)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _main(args, as_json)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main(args: list[str], as_json: bool) -> int:
    try:
        rv = cli.main(args=args, prog_name="medrecon", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        if getattr(exc, "reported", False):
            return int(exc.exit_code)
        if as_json:
            msg = exc.format_message() if hasattr(exc, "format_message") else str(exc)
            click.echo(json.dumps({"event": "error", "message": msg, "exit_code": exc.exit_code}),
                       err=True)
        else:
            exc.show()
        return int(exc.exit_code)
    except (click.Abort, KeyboardInterrupt):
        return _stopped("interrupted", "Interrupted", EXIT_INTERRUPTED, as_json)
    except Terminated:
        return _stopped("terminated", "Terminated (SIGTERM)", EXIT_TERMINATED, as_json)
    return int(rv) if isinstance(rv, int) else EXIT_OK


def _stopped(event: str, text: str, code: int, as_json: bool) -> int:
    """Report a run stopped by a signal (its staged outputs discarded) and return ``code``."""
    if as_json:
        click.echo(json.dumps({"event": "error", "message": event, "exit_code": code}), err=True)
    else:
        click.echo(f"{text}; no output was written.", err=True)
    return code
