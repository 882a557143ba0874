"""Reproducible evaluation of reconstruction methods on held-out ground truths (``medrecon eval``).

One call, :func:`evaluate`, turns a folder of ground-truth images into the three artefacts users
pick a method by:

* ``results.csv``  one row per (image, method): ``image, method, psnr, ssim, lpips, seconds,
  device`` (``lpips`` is empty when the LPIPS weights are not available offline);
* ``summary.md``   mean +- standard deviation per method, plus every setting needed to reproduce
  the numbers (prior, task and its options, noise, steps, seed, device, versions);
* ``grid.png``     ground truth, measurement and each method's output for the first few images.

Protocol (what makes the numbers comparable and reproducible):

1. Each ground truth is brought to the prior's grid in generator space ``[-1, 1]`` with
   :mod:`medrecon.transforms` (the same windowing/resizing the pipeline uses).
2. One forward operator is built for the whole run, seeded with ``seed`` (so every image sees the
   same mask / sampling pattern / kernel, as in the papers' tables).
3. Each image's measurement noise and each solver run are seeded from ``(seed, image id)``
   through :func:`derive_seed` - never the global RNG - so re-running the command reproduces
   every number except the timings, and adding or removing images does not change the others.
   The image id is the file's path relative to ``--images``.
4. Metrics are computed in ``[0, 1]`` (``x01 = (x + 1) / 2``, clipped) with ``data_range = 1``.
   LPIPS uses the AlexNet variant on the same images.

Images are solved in batches of ``batch_size`` (one solver call per batch, per-image seeds kept
by solving each image with its own seed when ``batch_size == 1``; see :func:`evaluate`).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import platform
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch

from medrecon.cli_types import InputPath, OutputPath
from medrecon.errors import MedreconInputError, MedreconWarning, MissingWeightsError
from medrecon.limits import MAX_NOISE_SIGMA, MAX_SCALE
from medrecon.generators.checkpoints import sha256_file

__all__ = [
    "CSV_COLUMNS",
    "IMAGE_SUFFIXES",
    "TASKS",
    "EvalRow",
    "EvalRun",
    "derive_seed",
    "std_error_spearman",
    "discover_images",
    "eval_command",
    "evaluate",
    "evaluate_run",
    "held_out_images",
    "summary_table",
    "parse_methods",
    "render_grid",
    "summarize",
    "REPORT_FILES",
    "calibration_bins",
    "check_report_dir",
    "write_grid",
    "write_report",
    "write_results_csv",
    "write_summary_md",
]

#: Tasks understood by :func:`medrecon.physics.build_operator`.
TASKS: tuple[str, ...] = ("sr", "inpaint", "mri", "deblur", "denoise", "cs")

#: Columns of ``results.csv``, in order.
CSV_COLUMNS: tuple[str, ...] = ("image", "method", "psnr", "ssim", "lpips", "seconds", "device",
                                "std_error_spearman")

#: File name endings accepted as ground truths (case-insensitive).
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm",
                                   ".nii", ".nii.gz")

_BP_SUFFIX = "-bp"


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class EvalRow:
    """One line of ``results.csv``.

    Attributes:
        image: Image id (path relative to the images folder, POSIX separators).
        method: Method name as given on the command line (e.g. ``"csgm-bp"``).
        psnr: PSNR in dB, images in ``[0, 1]``, ``data_range=1``.
        ssim: SSIM, images in ``[0, 1]``, ``data_range=1``.
        lpips: LPIPS distance (AlexNet), or ``None`` when the weights are unavailable.
        seconds: Wall-clock seconds of the solver per image (batch time / batch size).
        device: Device the solver ran on (``"cpu"``, ``"cuda:0"``...).
        std_error_spearman: For methods that give a per-pixel std map (variational BRGM's
            posterior samples, an IAGAN ensemble's spread): the Spearman rank correlation
            between that std and the absolute error, over the image's pixels
            (:func:`std_error_spearman`); ``None`` otherwise.
    """

    image: str
    method: str
    psnr: float
    ssim: float
    lpips: float | None
    seconds: float
    device: str
    std_error_spearman: float | None = None

    def as_csv(self) -> dict[str, str]:
        """The row as ``results.csv`` strings (metrics to 6 decimals, far below any difference
        the summary reports; seconds to 4)."""
        return {
            "image": self.image,
            "method": self.method,
            "psnr": f"{self.psnr:.6f}",
            "ssim": f"{self.ssim:.6f}",
            "lpips": "" if self.lpips is None else f"{self.lpips:.6f}",
            "seconds": f"{self.seconds:.4f}",
            "device": self.device,
            "std_error_spearman": ("" if self.std_error_spearman is None
                                   else f"{self.std_error_spearman:.6f}"),
        }


@dataclasses.dataclass
class EvalRun:
    """Everything :func:`evaluate` produced, for the writers.

    Attributes:
        rows: One :class:`EvalRow` per (image, method), images in sorted order, methods in the
            order requested.
        settings: The settings that define the run (prior, task, options, noise, steps, seed,
            versions...), written verbatim into ``summary.md``.
        lpips_note: Why the LPIPS column is empty (or empty for some rows), or ``None`` when
            it is filled.
        grid: Images for ``grid.png``: ``{"ground truth": [..], "measurement": [..],
            method: [..]}``, each a list of ``[C, R, R]`` tensors in ``[0, 1]``.
        calibration: Per method with a std map, :func:`calibration_bins` over all its pixels
            (``calibration.csv``).
        std_maps: Per method with a std map, its pixels ``(std, error, exact)`` (flat, all
            images but those its calibration was fitted on, counted in ``left_out``; all None
            when that is every image; ``exact`` marks pixels the measurements fix exactly, or
            None), what ``scripts/calibrate_std.py`` fits, ``std_kind``: ``'calibrated std'``
            or ``'spread'``, and the solver's ``regime`` (:mod:`medrecon.solvers.calibration`).
    """

    rows: list[EvalRow]
    settings: dict[str, Any]
    lpips_note: str | None = None
    grid: dict[str, list[torch.Tensor]] = dataclasses.field(default_factory=dict)
    calibration: dict[str, list[dict[str, float]]] = dataclasses.field(default_factory=dict)
    std_maps: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Seeds, inputs, method names
# --------------------------------------------------------------------------------------------
def derive_seed(seed: int, *parts: str) -> int:
    """Derive a 63-bit seed from a base seed and string parts (e.g. an image id).

    The derivation is a SHA-256 hash, so it is stable across Python versions, platforms and
    processes (unlike :func:`hash`), and distinct parts give independent streams.

    Args:
        seed: Base seed of the run.
        *parts: Strings identifying the case (image id, purpose...).

    Returns:
        A non-negative integer below ``2**63`` suitable for ``torch.Generator.manual_seed``.
    """
    key = "\x1f".join(["medrecon-eval", str(int(seed)), *parts]).encode("utf-8")
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & ((1 << 63) - 1)


def _text_lines(path: Path, option: str) -> list[str]:
    """The lines of a list file; a binary file (a .tif or .npy given where a folder or a list
    was expected) gave a UnicodeDecodeError, exit 1."""
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise MedreconInputError(
            f"{option} {str(path)!r} is neither an image folder nor a text list (one path per "
            f"line; it is not text); pass a folder of images ({', '.join(IMAGE_SUFFIXES)}) or "
            "a list file.") from None


def _has_image_suffix(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in IMAGE_SUFFIXES)


def discover_images(images: str | Path | Sequence[str | Path], *, limit: int | None = None,
                    subset: Iterable[str] | None = None) -> list[tuple[str, Path]]:
    """List ground-truth files with their stable ids.

    Args:
        images: A folder (searched recursively for PNG/JPEG/DICOM/NIfTI files), a text file
            listing one image path per line (relative paths are relative to the list file;
            blank lines and ``#`` comments are ignored), or an explicit sequence of paths.
        limit: Keep ``limit`` images evenly spaced over the sorted ids (indices
            ``floor(i * n / limit)``), a deterministic subset spread over the sorted ids (over
            the classes of a sorted dataset, where each has enough images) instead of its first
            folder. ``None``: all.
        subset: Keep only these ids (relative paths, e.g. a held-out fold from
            :func:`held_out_images`); applied before ``limit``. Every id must exist.

    Returns:
        ``[(image_id, path), ...]`` sorted by id. The id is the path relative to the folder
        (or list file folder) in POSIX form, or the file name for explicit sequences.

    Raises:
        MedreconInputError: If the location does not exist, holds no images, or ``limit < 1``.
    """
    if limit is not None and int(limit) < 1:
        raise MedreconInputError(f"limit must be a positive integer, got {limit!r}; "
                                 "omit it to evaluate every image.")
    found: list[tuple[str, Path]]
    if isinstance(images, (str, Path)):
        root = Path(images).expanduser()
        if not root.exists():
            raise MedreconInputError(f"--images {str(root)!r} does not exist; expected a folder "
                                     "of PNG/JPEG/DICOM/NIfTI ground truths or a text file "
                                     "listing them.")
        if root.is_dir():  # an earlier evaluation's report (grid.png) is no ground truth
            found = [(p.relative_to(root).as_posix(), p) for p in root.rglob("*")
                     if p.is_file() and _has_image_suffix(p) and not _in_report(p, root)]
        elif _has_image_suffix(root):
            found = [(root.name, root)]
        else:
            base = root.parent
            found = []
            for line in _text_lines(root, "--images"):
                line = line.split("#", 1)[0].strip()
                if not line:
                    continue
                p = Path(line).expanduser()
                p = p if p.is_absolute() else base / p
                if not p.is_file():
                    raise MedreconInputError(f"{str(root)!r} lists {line!r}, which is not a "
                                             "file; fix the list or the path.")
                rel = p.resolve().relative_to(base.resolve()) if p.resolve().is_relative_to(
                    base.resolve()) else Path(p.name)
                found.append((rel.as_posix(), p))
    else:
        found = []
        for item in images:
            p = Path(item).expanduser()
            if not p.is_file():
                raise MedreconInputError(f"image {str(p)!r} is not a file.")
            found.append((p.name, p))
    ids = [i for i, _ in found]
    if len(set(ids)) != len(ids):
        raise MedreconInputError("two ground truths share an id (file name); pass a folder so "
                                 "ids are relative paths, or rename the files.")
    found.sort(key=lambda t: t[0])
    if subset is not None:
        wanted = list(dict.fromkeys(str(i) for i in subset))
        have = dict(found)
        missing = [i for i in wanted if i not in have]
        if missing:
            raise MedreconInputError(
                f"{len(missing)} selected image(s) are not under {str(images)!r}, e.g. "
                f"{missing[:3]}; pass as --images the data folder the fold file was made from.")
        found = sorted(((i, have[i]) for i in wanted), key=lambda t: t[0])
    if not found:
        raise MedreconInputError(f"no ground-truth images found in {images!r}; expected files "
                                 f"ending in {', '.join(IMAGE_SUFFIXES)}.")
    if limit is not None and int(limit) < len(found):
        n, k = len(found), int(limit)
        found = [found[(i * n) // k] for i in range(k)]
    return found


def held_out_images(folds: str | Path, *, fold: int | None = None) -> tuple[list[str], int]:
    """The images of one fold of a prior's cross-validation record, and the fold
    (:func:`_fold_record`, without the record's digest)."""
    ids, used, _ = _fold_record(folds, fold=fold)
    return ids, used


def _training_split(prior: Any) -> tuple[Any, Any]:
    """``(held_out_fold, folds_sha256)`` of the prior's training record (None where absent)."""
    meta = getattr(prior, "metadata", None) or {}
    record = meta.get("training") if isinstance(meta.get("training"), dict) else {}
    return record.get("held_out_fold"), record.get("folds_sha256")


def check_fold_is_held_out(prior: Any, fold: int, digest: str | None) -> None:
    """Refuse to score ``prior`` on images it was trained on: a fold other than the held-out
    one its training record names, or a fold record other than the one it was trained with
    (``folds_sha256``). Priors without a training record (an imported NVIDIA network) are not
    checked. A plain list of images (``fold`` -1) names no fold.

    Raises:
        MedreconInputError: naming the prior's held-out fold and the fix.
    """
    held, sha = _training_split(prior)
    name = getattr(prior, "name", "the prior")
    if held is not None and fold >= 0 and int(fold) != int(held):
        raise MedreconInputError(
            f"prior {name!r} was trained on every fold but {held}: fold {fold} holds its "
            f"training images, and a score there would not be held out. Evaluate fold {held} "
            "(--fold), or a prior trained without this fold.")
    if sha and digest and digest != sha:
        raise MedreconInputError(
            f"the fold record given to --folds is not the one prior {name!r} was trained with "
            f"(its folds_sha256 {sha[:12]}..., this record {digest[:12]}...): its folds may "
            "hold the prior's training images. Pass the prior's own record (its models/"
            "folds.json, or the shipped prior's name).")


def _fold_record(folds: str | Path, *, fold: int | None = None
                 ) -> tuple[list[str], int, str | None]:
    """The images of one fold of a prior's cross-validation record.

    Args:
        folds: A ``folds.json`` written by :func:`medrecon.training.folds.save_folds`, a folder
            holding one (a prior directory or a bundle's ``models/``), a shipped prior name
            (its bundle's record), or a ``.txt`` list of relative image paths (one per line,
            ``#`` comments; ``fold`` is then only recorded, ``-1`` when not given).
        fold: The fold to return. Default: the held-out fold recorded in the ``training.json``
            (exported prior) or ``run.json`` (training run) next to ``folds.json``.

    Returns:
        ``(relative image paths, fold, the record's digest)`` (digest None for a ``.txt``
        list): what :func:`check_fold_is_held_out` checks against the prior's training record.

    Raises:
        MedreconInputError: When no record is found, or ``fold`` is missing and not recorded.
    """
    from medrecon.training.folds import load_folds

    p = Path(folds).expanduser()
    if p.is_file() and p.suffix == ".txt":  # a plain list of ids, e.g. a committed fold list
        ids = [ln.split("#", 1)[0].strip() for ln in _text_lines(p, "--folds")]
        ids = [i for i in ids if i]
        if not ids:
            raise MedreconInputError(f"{str(p)!r} lists no image; expected one relative path "
                                     "per line.")
        return ids, -1 if fold is None else int(fold), None
    path = _folds_json(folds)
    fa = load_folds(path)
    if fold is None:
        # training.json (exported prior) or run.json (training run folder) record it.
        records = [path.parent / n for n in ("training.json", "run.json")]
        for record in records:
            try:
                fold = int(json.loads(record.read_text())["held_out_fold"])
                break
            except (OSError, KeyError, ValueError, TypeError):
                continue
        else:
            raise MedreconInputError(
                f"no held-out fold recorded next to {str(path)!r} (looked for "
                f"{' / '.join(r.name for r in records)} with 'held_out_fold'); pass fold=K "
                "(--fold K).")
    return fa.split(int(fold))[1], int(fold), fa.digest()


def _folds_json(folds: str | Path) -> Path:
    """The ``folds.json`` that ``folds`` names: the file itself, or the one in a prior folder
    (a path or a shipped prior's name) or its ``models/``."""
    p = Path(str(folds)).expanduser()
    if not p.exists():
        from medrecon.priors import resolve_prior_path

        try:
            p = resolve_prior_path(str(folds))
        except MedreconInputError:
            raise MedreconInputError(
                f"--folds {str(folds)!r} is neither a file nor a folder, nor a shipped prior "
                "name; expected a folds.json, a prior folder, or chest_xray / brain_mri."
            ) from None
    d = p if p.is_dir() else p.parent
    path = p if p.is_file() and p.suffix == ".json" and p.name != "prior.json" else d / "folds.json"
    if not path.is_file() and (d / "models" / "folds.json").is_file():
        path = d / "models" / "folds.json"
    if not path.is_file():
        raise MedreconInputError(f"no folds.json found for {str(folds)!r}; expected the fold "
                                 "record exported with the prior (models/folds.json).")
    return path


def training_path_matches(prior: Any, prior_source: str | Path | None,
                          files: Sequence[tuple[str, Path]]) -> tuple[list[str], int | None]:
    """The ids of ``files`` whose paths the prior's own fold record lists as training images
    (found from ``prior_source``, its folder or shipped name; each file by the longest tail
    of its path the record lists), and the prior's held-out fold. ``([], None)`` for a prior
    without a training record or fold record. The record holds paths, not pixels: another
    dataset's file of the same name matches too."""
    from medrecon.training.folds import load_folds

    held, sha = _training_split(prior)
    if held is None or prior_source is None:
        return [], None
    try:
        fa = load_folds(_folds_json(prior_source))
    except MedreconInputError:
        return [], None  # no record to look in
    if sha and fa.digest() != sha:
        return [], None
    fold_of = dict(zip(fa.files, fa.folds))
    trained = []
    for image_id, path in files:
        parts = Path(path).expanduser().resolve().parts
        for k in range(len(parts), 0, -1):
            key = "/".join(parts[-k:])
            if key in fold_of:
                if fold_of[key] != int(held):
                    trained.append(image_id)
                break
    return trained, int(held)


def check_images_held_out(prior: Any, prior_source: str | Path | None,
                          files: Sequence[tuple[str, Path]], *, listed: bool) -> str | None:
    """Ground truths whose paths the prior's fold record lists as training images
    (:func:`training_path_matches`): refused when ``listed`` (a ``--folds`` selection claims
    held-out images); otherwise (a folder scored whole, which may be another dataset with the
    same file names) said in a warning, and returned as the report's note.

    Raises:
        MedreconInputError: ``listed`` and training paths selected, named with the fold.
    """
    trained, held = training_path_matches(prior, prior_source, files)
    if not trained:
        return None
    name = getattr(prior, "name", "the prior")
    shown = ", ".join(trained[:3]) + (", ..." if len(trained) > 3 else "")
    if listed:
        raise MedreconInputError(
            f"{len(trained)} of the {len(files)} selected images ({shown}) are training images "
            f"of prior {name!r}: its fold record puts these paths outside its held-out fold "
            f"{held}, so their scores would not be held out. Select its held-out fold "
            f"(--folds {prior_source} --fold {held}).")
    note = (f"{len(trained)} of the {len(files)} images ({shown}) have the paths of training "
            f"images of prior {name!r} (outside its held-out fold {held}); if they are those "
            "images, their scores are not held out (--folds "
            f"{prior_source} selects its held-out fold)")
    warnings.warn(note + ".", MedreconWarning, stacklevel=3)
    return note


def _valid_methods() -> list[str]:
    """Every method name ``evaluate`` accepts: the solver methods, each also with ``-bp``.

    Back-projection is offered after baselines too: the generative ``-bp`` variants get exact
    data consistency, so the fair classical comparison includes e.g. ``lanczos-bp`` (Lanczos
    upsampling made consistent with the SR operator, i.e. one step of classical iterative
    back-projection)."""
    from medrecon import solvers

    return list(solvers.METHODS) + [name + _BP_SUFFIX for name in solvers.METHODS]


def parse_methods(methods: str | Iterable[str]) -> list[str]:
    """Split and validate method names.

    Args:
        methods: Comma-separated string (``"bicubic,csgm,csgm-bp"``) or an iterable of names.
            A ``-bp`` suffix asks for back-projection after the method.

    Returns:
        The names, stripped, lower-case, duplicates removed, order kept.

    Raises:
        MedreconInputError: For an empty list or an unknown name; the message lists the valid
            ones.
    """
    items = methods.split(",") if isinstance(methods, str) else list(methods)
    names: list[str] = []
    for m in items:
        m = str(m).strip().lower()
        if m and m not in names:
            names.append(m)
    valid = _valid_methods()
    if not names:
        raise MedreconInputError(f"no method given; expected a comma-separated list of: "
                                 f"{', '.join(valid)}.")
    bad = [m for m in names if m not in valid]
    if bad:
        from medrecon import solvers

        raise MedreconInputError(f"unknown method(s) {', '.join(map(repr, bad))}; valid methods "
                                 f"are: {', '.join(solvers.METHODS)} (append '-bp' to any for "
                                 "back-projection, e.g. iagan-bp, lanczos-bp).")
    return names


def _split_bp(method: str) -> tuple[str, bool]:
    """``"csgm-bp"`` -> ``("csgm", True)``; ``"csgm"`` -> ``("csgm", False)``.

    Back-projection is always explicit in an evaluation: the solver's automatic choice
    (``bp=None``) is never used, so a column named ``csgm`` is plain CSGM.
    """
    if method.endswith(_BP_SUFFIX):
        return method[: -len(_BP_SUFFIX)], True
    return method, False


def _step_options(method: str, steps: int | None) -> dict[str, Any]:
    """Solver options that cap a method's iterations at ``steps`` (none for closed forms).

    ``steps`` goes to every method with a ``steps`` option (CSGM, BRGM, IAGAN's adaptation
    stage, TV); IAGAN's stage-1 search gets the same cap through ``stage1_options``.
    """
    from medrecon import solvers

    if steps is None:
        return {}
    defaults = solvers.METHODS[method].defaults
    out: dict[str, Any] = {}
    if "steps" in defaults:
        out["steps"] = int(steps)
    if "stage1_options" in defaults:
        out["stage1_options"] = {"steps": int(steps)}
    return out


# --------------------------------------------------------------------------------------------
# Ground truths
# --------------------------------------------------------------------------------------------
def _read_pixels(path: Path, *, channels: int) -> tuple[torch.Tensor, Any, tuple[float, float]]:
    """Read a ground truth as ``[1, C, H, W]`` float64 intensities, its window and pixel spacing.

    8-bit PNG/JPEG use the fixed window ``[0, 255]`` - exactly the mapping the priors were trained
    with (``v / 127.5 - 1``). Deeper PNGs and medical files (DICOM, NIfTI; the middle axial slice
    of a volume, in radiological display orientation) get the pipeline's percentile window
    (0.5 - 99.5 %) fitted to the slice.
    """
    from medrecon.transforms import IntensityWindow

    name = path.name.lower()
    if name.endswith((".png", ".jpg", ".jpeg")):
        from PIL import Image

        with Image.open(path) as im:
            if im.mode in ("1", "L", "P", "RGB", "RGBA", "LA", "CMYK", "YCbCr"):
                if channels == 1 and im.mode not in ("1", "L", "LA"):
                    rgb = np.asarray(im.convert("RGB"))
                    if not (rgb == rgb[..., :1]).all():  # said, as the readers of every
                        warnings.warn(  # other command say it
                            f"{path.name} is a colour image; it is scored as grey (ITU-R 601 "
                            "luminance), as the grey prior sees it.", MedreconWarning,
                            stacklevel=2)
                im = im.convert("RGB" if channels == 3 else "L")
                a = np.asarray(im, dtype=np.float64)
                window = IntensityWindow(0.0, 255.0)
            else:  # 16-bit / float grayscale
                a = np.asarray(im, dtype=np.float64)
                window = None
        t = torch.from_numpy(a.copy())
        t = t.permute(2, 0, 1) if t.ndim == 3 else t[None]
        spacing = (1.0, 1.0)
    else:
        from medrecon import io as mio
        from medrecon.transforms import SliceOrientation

        img = mio.load_image(path)  # MedicalImage: float32 (X, Y, Z) + RAS affine
        vol = torch.from_numpy(np.asarray(img.array, dtype=np.float64))
        orient = SliceOrientation.from_affine(img.affine, img.shape)  # 2D kept; 3D: axial
        slices = orient.volume_to_slices(vol)
        t = slices[slices.shape[0] // 2][None]  # the middle slice, [1, H, W]
        spacing = orient.inplane_spacing(img.spacing)
        window = None
    if t.shape[0] != channels:
        if channels == 1:
            t = t.mean(0, keepdim=True)
        elif t.shape[0] == 1:
            t = t.expand(channels, -1, -1)
        else:
            raise MedreconInputError(f"ground truth {str(path)!r} has {t.shape[0]} channels; the "
                                     f"prior expects {channels}.")
    if window is None:
        window = IntensityWindow.fit(t)
    return t[None], window, spacing


def _load_ground_truth(path: Path, *, resolution: int, channels: int) -> torch.Tensor:
    """Read one ground truth and bring it to the prior's grid: ``[1, C, R, R]`` in ``[-1, 1]``.

    Uses :class:`medrecon.transforms.IntensityWindow` and :class:`medrecon.transforms.GridFit`
    (isotropic field-of-view fit, centred padding with ``-1``), the pipeline's own transforms.
    Values are clipped to ``[-1, 1]`` so the ground truth is a valid generator-space image.
    """
    return _ground_truth_on_grid(path, resolution=resolution, channels=channels)[0]


#: Side of the Gaussian window SSIM is scored with (:func:`medrecon.metrics.ssim`'s default):
#: a ground truth's content must be at least this large on the prior's grid.
SSIM_WINDOW = 11

#: ``(top, left, height, width)`` of a ground truth's content on the prior's grid.
Box = tuple[int, int, int, int]


def _crop(x: torch.Tensor, box: Box) -> torch.Tensor:
    """``x[..., top:top + height, left:left + width]``: the content, without the padding."""
    t, left, h, w = box
    return x[..., t:t + h, left:left + w]


def _ground_truth_on_grid(path: Path, *, resolution: int, channels: int
                          ) -> tuple[torch.Tensor, Box]:
    """:func:`_load_ground_truth` and where its content lies on the grid (:data:`Box`): a
    non-square image is padded to the square grid, and the padding is not scored."""
    from medrecon.transforms import GridFit

    try:
        x, window, spacing = _read_pixels(path, channels=channels)
    except MedreconInputError:
        raise
    except Exception as exc:  # unreadable / corrupt file: say which one
        raise MedreconInputError(f"could not read ground truth {str(path)!r}: {exc}; expected a "
                                 "PNG/JPEG/DICOM/NIfTI image.") from exc
    if float(x.max() - x.min()) == 0.0:  # every method exact or not: PSNR inf, SSIM 1
        raise MedreconInputError(  # the file's values: on the grid, resizing and padding vary
            f"ground truth {str(path)!r} is one constant value; it cannot be scored (PSNR "
            "is infinite for any exact result, and one such image makes a method's mean "
            "infinite). Remove it from --images.")
    g = window.apply(x).float()
    fit = GridFit.fit(tuple(g.shape[-2:]), spacing, resolution)
    box = (fit.offset[0], fit.offset[1], fit.content[0], fit.content[1])
    return fit.to_grid(g, pad_value=-1.0).clamp_(-1.0, 1.0), box


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------
def _to01(x: torch.Tensor) -> torch.Tensor:
    """Generator space ``[-1, 1]`` -> ``[0, 1]``, clipped, float32 on CPU."""
    x = x.detach().to("cpu")
    if x.is_complex():
        x = x.abs()
    return ((x.float() + 1.0) * 0.5).clamp_(0.0, 1.0)


class _Lpips:
    """LPIPS on ``[0, 1]`` images; remembers why it is unavailable instead of failing."""

    def __init__(self, enabled: bool) -> None:
        self.off: str | None = None if enabled else "LPIPS disabled (--no-lpips)."
        self.skipped: str | None = None  # why some images' LPIPS is empty (too small)
        self.n_skipped = 0

    @property
    def note(self) -> str | None:
        """Why the lpips column is empty, or partly empty; None when it is filled."""
        if self.off is not None:
            return self.off
        if self.skipped is not None:
            return f"LPIPS left empty for {self.n_skipped} row(s): {self.skipped}"
        return None

    def __call__(self, pred01: torch.Tensor, ref01: torch.Tensor) -> float | None:
        if self.off is not None:
            return None
        from medrecon import metrics

        try:
            d = metrics.lpips_distance(pred01, ref01, data_range=1.0)
        except MissingWeightsError as exc:  # offline: no row can have it
            self.off = f"LPIPS weights missing: {exc}"
            warnings.warn(self.off.rstrip(". ") + ". The lpips column is left empty.",
                          stacklevel=2)
            return None
        except MedreconInputError as exc:  # this image too small (content under 31 px)
            if self.skipped is None:
                warnings.warn(f"LPIPS not computable for some images: {exc} Their lpips is "
                              "left empty.", stacklevel=2)
            self.skipped, self.n_skipped = str(exc), self.n_skipped + 1
            return None
        return float(torch.as_tensor(d).reshape(-1)[0])


def std_error_spearman(std: torch.Tensor, error: torch.Tensor) -> float | None:
    """Spearman rank correlation between a per-pixel std map and the absolute error.

    1 means the predicted uncertainty ranks the pixels exactly as the true error does; 0 that
    it says nothing about it. ``None`` when either map is constant (no ranking).

    Args:
        std: Predicted std ``[C, H, W]`` (any units).
        error: Estimate minus truth, same shape.
    """
    from scipy.stats import spearmanr

    s = torch.as_tensor(std).detach().double().cpu().reshape(-1).numpy()
    e = torch.as_tensor(error).detach().double().cpu().abs().reshape(-1).numpy()
    if s.shape != e.shape:
        raise MedreconInputError(f"std map {tuple(std.shape)} and error {tuple(error.shape)} "
                                 "differ in shape.")
    if np.ptp(s) == 0 or np.ptp(e) == 0:
        return None
    rho = float(spearmanr(s, e).statistic)
    return rho if math.isfinite(rho) else None


#: Equal-count bins of the predicted std in ``calibration.csv``.
CALIBRATION_BINS = 10


def calibration_bins(std: torch.Tensor, error: torch.Tensor, *,
                     bins: int = CALIBRATION_BINS,
                     exact: torch.Tensor | None = None) -> list[dict[str, float]]:
    """Calibration of a per-pixel std map: pixels sorted by predicted std into ``bins``
    equal-count bins; per bin the mean predicted std, the root mean variance (``rmv``) and
    the RMS and mean absolute error. A calibrated std has RMS error equal to its RMV in every
    bin (the diagonal of the calibration figure); a useful one at least grows with it.

    Args:
        std: Predicted std, any shape (all images of a method together).
        error: Estimate minus truth, same shape and units.
        bins: Number of bins.
        exact: Pixels the measurements fix exactly (zero std and error; left out), or None.
    """
    from medrecon.solvers.calibration import binned

    return binned(std, error, bins=bins, exact=exact)


def write_calibration_csv(calibration: Mapping[str, Sequence[Mapping[str, float]]],
                          path: str | Path) -> Path:
    """Write ``calibration.csv``: one row per (method, bin) of :func:`calibration_bins`."""
    path = Path(path)
    cols = ("method", "bin", "std_low", "std_high", "mean_std", "rmv", "rmse", "mae", "pixels")
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for method, rows in calibration.items():
            for r in rows:
                w.writerow([method] + [f"{r[c]:.6g}" if isinstance(r[c], float) else r[c]
                                       for c in cols[1:]])
    return path


def _image_metrics(pred01: torch.Tensor, ref01: torch.Tensor, lp: _Lpips
                   ) -> tuple[float, float, float | None]:
    from medrecon import metrics

    psnr = float(torch.as_tensor(metrics.psnr(pred01, ref01, data_range=1.0)).reshape(-1)[0])
    ssim = float(torch.as_tensor(metrics.ssim(pred01, ref01, data_range=1.0)).reshape(-1)[0])
    return psnr, ssim, lp(pred01, ref01)


# --------------------------------------------------------------------------------------------
# Measurement display
# --------------------------------------------------------------------------------------------
def _measurement_image(y: torch.Tensor, operator: Any, *, resolution: int) -> torch.Tensor:
    """A viewable image-space picture of a measurement, ``[B, C, R, R]`` in generator space.

    Image-shaped real measurements (inpainting, deblurring, denoising) are shown as they are;
    smaller real images (super-resolution) are upsampled with nearest neighbours so the pixels
    stay visible; anything else (k-space, compressed sensing vectors) is shown through the
    operator's pseudo-inverse (zero-filled for MRI), magnitude if complex.
    """
    if not y.is_complex() and y.ndim == 4 and y.shape[-2:] == (resolution, resolution):
        return y
    if not y.is_complex() and y.ndim == 4:
        return torch.nn.functional.interpolate(y.float(), size=(resolution, resolution),
                                               mode="nearest")
    x = operator.A_dagger(y) if hasattr(operator, "A_dagger") else operator.A_adjoint(y)
    return x.real if x.is_complex() else x


# --------------------------------------------------------------------------------------------
# The evaluation
# --------------------------------------------------------------------------------------------
def _settings(*, prior_name: str, prior_source: str, prior: Any, task: str, methods: list[str],
              images: Any, n_images: int, steps: int | None, noise_sigma: float, seed: int,
              batch_size: int, device: str, task_options: Mapping[str, Any],
              method_options: Mapping[str, Any], selection: str) -> dict[str, Any]:
    import medrecon

    return {
        "prior": prior_name,
        "prior_source": prior_source,
        "resolution": int(prior.resolution),
        "channels": int(prior.channels),
        "task": task,
        "task_options": dict(task_options),
        "noise_sigma": float(noise_sigma),
        "methods": list(methods),
        "method_options": dict(method_options),
        "images": str(images),
        "selection": selection,
        "n_images": n_images,
        "steps": "solver default" if steps is None else int(steps),
        "seed": int(seed),
        "batch_size": int(batch_size),
        "device": device,
        "metric_space": "[0, 1] (generator [-1, 1] mapped by (x + 1) / 2, clipped), data_range=1",
        "medrecon": medrecon.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": _cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _selection_text(folds: Any, fold: int | None, limit: int | None) -> str:
    parts = []
    if folds is not None:
        parts.append(f"fold {fold} of the record {folds}")
    parts.append("all images" if limit is None else f"{limit} evenly spaced over sorted paths")
    return "; ".join(parts)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


#: Operator options an evaluation sets itself (from the prior, ``seed``, ``noise_sigma``).
EVAL_OWNED_OPTIONS = ("img_size", "channels", "seed", "noise_sigma")


def evaluate_run(
    *,
    prior: Any,
    task: str,
    methods: str | Sequence[str],
    images: str | Path | Sequence[str | Path],
    limit: int | None = None,
    folds: str | Path | None = None,
    fold: int | None = None,
    steps: int | None = None,
    noise_sigma: float = 0.0,
    seed: int = 0,
    out_dir: str | Path | None = None,
    device: str = "auto",
    batch_size: int = 1,
    grid_images: int = 4,
    lpips: bool = True,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    progress: Callable[[str], None] | None = None,
    overwrite: bool = False,
    **task_options: Any,
) -> EvalRun:
    """Simulate measurements of ground truths, reconstruct them with each method, score them.

    Args:
        prior: A :class:`medrecon.priors.Prior`, or a shipped prior name / bundle path passed to
            :func:`medrecon.priors.load_prior`.
        task: One of :data:`TASKS`.
        methods: Method names (see :data:`medrecon.solvers.METHODS`), a ``-bp`` suffix adds
            back-projection; a comma-separated string or a sequence.
        images: Ground truths: a folder, a text file listing paths, or a sequence of paths
            (see :func:`discover_images`).
        limit: Evaluate ``limit`` images evenly spaced over the sorted ids (default: all).
        folds: Restrict to one fold of a cross-validation record (see
            :func:`held_out_images`): a ``folds.json``, a prior folder, or a shipped prior name;
            ``images`` is then the data folder the record was made from. Default: no
            restriction.
        fold: The fold to evaluate; default the recorded held-out fold.
        steps: Iterations per solver run; ``None`` keeps each solver's documented default.
        noise_sigma: Standard deviation of the measurement noise in generator units
            (images span ``[-1, 1]``, so ``sigma = 2 * s / 255`` for ``s/255`` on a
            ``[0, 1]`` scale). Default 0 (noiseless).
        seed: Base seed. The operator (mask/pattern) uses ``seed``; each image's noise and
            solver run use :func:`derive_seed` of ``(seed, image id)``. Default 0.
        out_dir: When given, ``results.csv``, ``summary.md``, ``grid.png``,
            ``settings.json`` and (for methods with a std map) ``calibration.csv`` are written there (created if missing), all together at the end
            (see :func:`write_report`). It is checked before any work: it may not be or lie
            inside an images folder, nor name an input file; a folder with a previous report
            is refused unless ``overwrite``.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        batch_size: Images per solver call. Default 1, which makes every image's result
            independent of the others (its solver seed is its own). Larger batches are faster on
            GPUs; their solver seed derives from the ids of the whole batch, so results stay
            reproducible for the same ``batch_size`` and image list. Timings are per image
            (batch time / batch size).
        grid_images: How many images (the first ones) go into ``grid.png``. Default 4.
        lpips: Compute LPIPS (needs the AlexNet weights locally). Default True; when the weights
            are missing the column is left empty and the reason recorded once.
        method_options: Extra solver options per method name as requested (``{"csgm":
            {"restarts": 2}, "iagan-bp": {"lr_weights": 5e-4}}``), validated by
            :func:`medrecon.solvers.solve`; they override ``steps``. Default: none (each
            solver's documented per-task defaults).
        progress: Optional callable receiving one-line progress messages.
        overwrite: Replace the report files of a previous ``medrecon eval`` in ``out_dir``
            (other files there are never touched). Default False refuses.
        **task_options: Forwarded to :func:`medrecon.physics.build_operator` (``scale``,
            ``mask_type``, ``acceleration``, ``center_fraction``, ``kernel``, ``size``,
            ``ratio``...; ``None`` values are dropped so the operator's defaults apply).

    Returns:
        The :class:`EvalRun`: rows of ``results.csv`` (images in sorted id order, methods in the
        given order), settings, the LPIPS note and the grid images.

    Raises:
        MedreconInputError: For an unknown task or method, a missing images folder, bad options,
            or an unreadable ground truth.
    """
    from medrecon import physics

    method_list, extra_opts = _check_run_options(
        task=task, methods=methods, batch_size=batch_size, noise_sigma=noise_sigma, steps=steps,
        method_options=method_options)
    from medrecon.solvers._common import resolve_device

    resolve_device(device)  # an unknown device, or CUDA on a machine without it: before loading
    if fold is not None and folds is None:
        raise MedreconInputError(f"fold={fold} needs the fold record it indexes: pass --folds "
                                 "(a folds.json, a prior folder or a shipped prior name).")
    if out_dir is not None:
        check_report_dir(out_dir, images=images, overwrite=overwrite)
    say = progress or (lambda _msg: None)

    prior_source = str(prior) if isinstance(prior, (str, Path)) else "in-memory object"
    if isinstance(prior, (str, Path)):
        from medrecon.priors import load_prior

        prior = load_prior(prior)
    prior_name = str(getattr(prior, "name", None) or type(prior).__name__)
    resolution, channels = int(prior.resolution), int(prior.channels)
    subset, fold_used, digest = (None, None, None) if folds is None else _fold_record(folds,
                                                                                     fold=fold)
    if folds is not None:
        check_fold_is_held_out(prior, fold_used, digest)
    files = discover_images(images, limit=limit, subset=subset)
    training_note = check_images_held_out(
        prior, None if prior_source == "in-memory object" else prior_source, files,
        listed=folds is not None)

    options = {k: v for k, v in task_options.items() if v is not None}
    owned = sorted(set(options) & set(EVAL_OWNED_OPTIONS))
    if owned:
        raise MedreconInputError(
            f"operator option(s) {owned} are set by eval itself (the prior's size and channels, "
            "--seed, --noise-sigma); remove them from --option.")
    operator = physics.build_operator(task, img_size=(resolution, resolution), channels=channels,
                                      seed=int(seed), noise_sigma=float(noise_sigma), **options)
    operator.eval()

    ids, truths, measurements, boxes = _measure(files, operator, resolution=resolution,
                                         channels=channels, seed=seed)
    say(f"{len(ids)} images, task {task}, methods {', '.join(method_list)}")

    n_grid = max(0, min(int(grid_images), len(ids)))
    grid = _input_grid(truths[:n_grid], measurements[:n_grid], operator, resolution=resolution)

    lp = _Lpips(lpips)
    rows, spread = _score_methods(
        method_list, extra_opts, grid, n_grid, ids=ids, paths=[p for _, p in files],
        truths=truths, measurements=measurements, boxes=boxes, operator=operator, prior=prior,
        task=task, device=device, seed=seed, steps=steps, batch_size=batch_size, lp=lp, say=say)

    run = EvalRun(rows=rows,
                  settings=_settings(prior_name=prior_name, prior_source=prior_source, prior=prior, task=task,
                                     methods=method_list, images=images, n_images=len(ids),
                                     steps=steps, noise_sigma=noise_sigma, seed=seed,
                                     batch_size=batch_size, device=device, task_options=options,
                                     method_options=extra_opts,
                                     selection=_selection_text(folds, fold_used, limit)
                                     + (f"; {training_note}" if training_note else "")),
                  lpips_note=lp.note, grid=grid,
                  calibration={m: calibration_bins(p["std"], p["error"], exact=p["exact"])
                               for m, p in spread.items() if p["std"] is not None},
                  std_maps=spread)
    if out_dir is not None:
        write_report(run, out_dir, overwrite=overwrite)
    return run


def _score_methods(method_list: list[str], extra_opts: Mapping[str, Mapping[str, Any]],
                   grid: dict[str, list[torch.Tensor]], n_grid: int, *, ids: list[str],
                   **score: Any) -> tuple[list[EvalRow], dict[str, dict[str, Any]]]:
    """Every method on every image (:func:`_score_method`, with ``score``'s keywords): the
    rows in image order (methods as given) and the std maps' pixels per method; the first
    ``n_grid`` outputs of each join ``grid``."""
    from medrecon import solvers

    per_method: dict[str, list[EvalRow]] = {}
    spread: dict[str, dict[str, Any]] = {}
    # Closed-form baselines first: they are cheap, so a method unfit for the task fails fast.
    order = sorted(method_list, key=lambda m: solvers.METHODS[_split_bp(m)[0]].generative)
    for method in order:
        per_method[method], outputs, pixels = _score_method(
            method, ids=ids, options=extra_opts.get(method, {}), **score)
        if pixels is not None:
            spread[method] = pixels
        if n_grid:
            grid[method] = [_to01(o[0]) for o in outputs[:n_grid]]
    rows = [per_method[m][i] for i in range(len(ids)) for m in method_list]
    return rows, spread


def _check_run_options(*, task: str, methods: Any, batch_size: Any, noise_sigma: Any,
                       steps: Any, method_options: Any) -> tuple[list[str], dict[str, dict]]:
    """:func:`evaluate_run`'s options, checked before any work; returns the method list and
    the per-method options (keys lower-cased)."""
    from medrecon import solvers

    if task not in TASKS:
        raise MedreconInputError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}.")
    method_list = parse_methods(methods)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise MedreconInputError(f"batch_size must be a positive integer, got {batch_size!r}.")
    from medrecon.pipeline import check_noise_sigma

    check_noise_sigma(noise_sigma)
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise MedreconInputError(f"steps must be a positive integer or None, got {steps!r}.")
    for m in method_list:
        solvers.check_method_task(_split_bp(m)[0], task)
    extra_opts = {str(k).lower(): dict(v) for k, v in (method_options or {}).items()}
    unknown = sorted(set(extra_opts) - set(method_list))
    if unknown:
        raise MedreconInputError(f"method_options given for {unknown}, which are not among the "
                                 f"evaluated methods {method_list}.")
    from medrecon.solvers import _common as C

    for m, opts in extra_opts.items():  # names now, not after the methods before it have run
        spec = solvers.METHODS[_split_bp(m)[0]]
        C.check_options(opts, (set(spec.defaults) - {"device", "seed", "callback"})
                        | {"bp", "bp_eta"}, m)
        C.check_option_values(opts, m)
    return method_list, extra_opts


def _measure(files: list[tuple[str, Path]], operator: Any, *, resolution: int, channels: int,
             seed: int) -> tuple[list[str], list[torch.Tensor], list[torch.Tensor], list[Box]]:
    """Ground truths ``[1, C, R, R]``, their measurements (each image with its own noise
    stream, seeded by ``(seed, image id)``) and their content boxes (what is scored)."""
    ids: list[str] = []
    truths: list[torch.Tensor] = []
    measurements: list[torch.Tensor] = []
    boxes: list[Box] = []
    for image_id, path in files:
        x, box = _ground_truth_on_grid(path, resolution=resolution, channels=channels)
        if min(box[2:]) < SSIM_WINDOW:  # found here, not by the metric after every solve
            raise MedreconInputError(
                f"ground truth {str(path)!r} covers {box[2]} x {box[3]} pixels of the prior's "
                f"{resolution} x {resolution} grid, less than the {SSIM_WINDOW} x "
                f"{SSIM_WINDOW} window SSIM is scored with" + (
                    "; evaluate a prior of at least 16 x 16 pixels." if resolution < SSIM_WINDOW
                    else "; crop it closer to square, or leave it out of --images."))
        boxes.append(box)
        g = torch.Generator().manual_seed(derive_seed(seed, image_id, "noise"))
        with torch.no_grad():
            y = operator.measure(x, generator=g)
        ids.append(image_id)
        truths.append(x)
        measurements.append(y)
    return ids, truths, measurements, boxes


def _input_grid(truths: list[torch.Tensor], measurements: list[torch.Tensor], operator: Any, *,
                resolution: int) -> dict[str, list[torch.Tensor]]:
    """The first columns of ``grid.png``: the truths and what was measured, in [0, 1]."""
    if not truths:
        return {}
    with torch.no_grad():
        return {"ground truth": [_to01(t[0]) for t in truths],
                "measurement": [_to01(_measurement_image(y, operator, resolution=resolution)[0])
                                for y in measurements]}


def _score_method(method: str, *, ids: list[str], paths: list[Path],
                  truths: list[torch.Tensor], measurements: list[torch.Tensor], boxes: list[Box],
                  operator: Any, prior: Any, task: str, device: str, seed: int,
                  steps: int | None, batch_size: int,
                  options: Mapping[str, Any], lp: _Lpips, say: Callable[[str], None]
                  ) -> tuple[list[EvalRow], list[torch.Tensor], dict[str, Any] | None]:
    """Solve every image with ``method`` (batches of ``batch_size``) and score it on its
    content (``boxes``: a non-square ground truth's padding is not scored).

    Returns:
        The rows (image order), the images ``[1, C, R, R]``, and for a method with a std map
        its pixels (:attr:`EvalRun.std_maps`: flat ``std``, ``error``, ``exact`` and the
        ``std_kind``), else None.
    """
    from medrecon import solvers
    from medrecon.solvers.calibration import exact_after

    base, bp = _split_bp(method)
    rows: list[EvalRow] = []
    outputs: list[torch.Tensor] = []
    stds: list[torch.Tensor] = []
    errors: list[torch.Tensor] = []
    exacts: list[torch.Tensor] = []
    kinds: set[str] = set()
    regime: dict[str, Any] | None = None
    left_out = 0  # images the std's calibration was fitted on: not in its figures
    for start in range(0, len(ids), batch_size):
        batch_ids = ids[start:start + batch_size]
        y = torch.cat(measurements[start:start + batch_size], dim=0)
        run_seed = derive_seed(seed, *batch_ids, "solve")
        t0 = time.perf_counter()
        try:
            rec = solvers.solve(y, operator, prior, method=base, bp=bp, device=device,
                                seed=run_seed, **{**_step_options(base, steps), **options})
        except MedreconInputError as exc:
            raise MedreconInputError(f"method {method!r} failed on task {task!r}: {exc}") from exc
        wall = time.perf_counter() - t0
        secs = float(getattr(rec, "seconds", None) or wall) / len(batch_ids)
        dev = str(getattr(rec, "device", device))
        images_out = rec.image.detach().to("cpu")
        for k, image_id in enumerate(batch_ids):
            box = boxes[start + k]
            psnr, ssim, lpv = _image_metrics(_to01(_crop(images_out[k:k + 1], box)),
                                             _to01(_crop(truths[start + k], box)), lp)
            rho = None
            if rec.std is not None:
                err = _crop(images_out[k] - truths[start + k][0], box)
                ex = exact_after(rec.info, operator, images_out[k].shape)
                ex = (torch.zeros(err.shape, dtype=torch.bool) if ex is None
                      else _crop(ex, box))
                std = _crop(rec.std[k], box)
                rho = std_error_spearman(std[~ex], err[~ex])
                kinds.add(str(rec.info.get("std_kind", "std")))
                regime = rec.info.get("std_regime", regime)
                if _fitted_on(rec.info, image_id, paths[start + k]):
                    left_out += 1
                else:
                    stds.append(std.reshape(-1))
                    errors.append(err.reshape(-1))
                    exacts.append(ex.reshape(-1))
            rows.append(EvalRow(image_id, method, psnr, ssim, lpv, secs, dev, rho))
            outputs.append(images_out[k:k + 1])
        say(f"{method}: {min(start + batch_size, len(ids))}/{len(ids)} "
            f"({secs:.2f} s/image on {dev})")
    if not stds and not left_out:
        return rows, outputs, None
    pixels = {"std_kind": ", ".join(sorted(kinds)), "regime": regime, "left_out": left_out,
              "std": None, "error": None, "exact": None}
    if stds:
        pixels.update(std=torch.cat(stds), error=torch.cat(errors), exact=torch.cat(exacts))
    return rows, outputs, pixels


def _fitted_on(info: Mapping[str, Any], image_id: str, path: Path | None = None) -> bool:
    """Whether the std calibration a result used (``info["std_calibration"]``) was fitted on
    this image. Its ``fitted_on`` ids are relative to the folder the fit was given, and
    ``image_id`` to this run's: the same id, ids with folders of which one ends the other,
    or the image's ``path`` ending in the fit's id (its folders included: a file name alone,
    e.g. ``139.jpg``, is shared by other classes' images) count."""
    fitted = (info.get("std_calibration") or {}).get("fitted_on") or ()
    tail = Path(path).resolve().parts if path is not None else ()
    for f in fitted:
        parts = Path(f).parts
        if image_id == f or ("/" in image_id and "/" in f and (
                image_id.endswith("/" + f) or f.endswith("/" + image_id))):
            return True
        if len(parts) > 1 and tail[-len(parts):] == parts:
            return True
    return False


def evaluate(**kwargs: Any) -> list[EvalRow]:
    """Run :func:`evaluate_run` (same keyword arguments) and return only its rows.

    Convenience for scripts that need the numbers; ``out_dir`` still writes all three files.
    """
    return evaluate_run(**kwargs).rows


# --------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------
#: The files ``medrecon eval`` writes into its ``--out`` folder (nothing else there is touched).
REPORT_FILES = ("results.csv", "summary.md", "grid.png", "settings.json", "calibration.csv")


def _input_files(images: Any) -> list[Path]:
    """The files an evaluation reads: a list file and the paths it lists, or explicit paths."""
    if images is None:
        return []
    if isinstance(images, (str, Path)):
        root = Path(images).expanduser()
        if root.is_file() and not _has_image_suffix(root):
            files = [root]
            try:
                for line in root.read_text(encoding="utf-8").splitlines():
                    line = line.split("#", 1)[0].strip()
                    if line:
                        p = Path(line).expanduser()
                        files.append(p if p.is_absolute() else root.parent / p)
            except (OSError, UnicodeDecodeError):
                pass
            return files
        return [root] if root.is_file() else []
    return [Path(p).expanduser() for p in images]


def write_report_settings(settings: dict, staged: dict[str, Path], path: Path) -> Path:
    """Write a report's ``settings.json`` with ``report_files``, the name and SHA-256 of every
    file the report wrote (``staged``), so that an ``--overwrite`` later replaces exactly
    these files (:func:`check_report_dir`)."""
    settings = {**settings, "report_files": {n: sha256_file(p) for n, p in staged.items()}}
    path.write_text(json.dumps(settings, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def _not_written_by_report(folder: Path, present: list[str]) -> list[str]:
    """The report-named files in ``folder`` that its report's settings.json does not list with
    their content (``report_files``: a user's file of that name, or one changed since). A
    settings.json without the list (a report older than it) vouches for none."""
    try:
        made = json.loads((folder / "settings.json").read_text(encoding="utf-8")).get(
            "report_files")
    except (OSError, ValueError, AttributeError):
        made = None
    if not isinstance(made, dict):
        made = {}
    return [n for n in present if n != "settings.json"
            and (n not in made or not (folder / n).is_file() or sha256_file(folder / n) != made[n])]


def _in_report(path: Path, root: Path) -> bool:
    """Whether ``path`` lies in a report folder of ``medrecon eval`` (:func:`_is_report`) at or
    below ``root``."""
    folder = path.parent
    while True:
        if _is_report(folder):
            return True
        if folder == root or root not in folder.parents:
            return False
        folder = folder.parent


def _is_report(folder: Path) -> bool:
    """Whether ``folder`` holds a report written by ``medrecon eval`` (its settings.json)."""
    try:
        settings = json.loads((folder / "settings.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(settings, dict) and "medrecon" in settings and "methods" in settings


def check_report_dir(out_dir: str | Path, *, images: Any = None, overwrite: bool = False) -> Path:
    """Validate an evaluation's output folder before any work.

    Refused: a folder that is, or lies inside, the images folder (the next evaluation would
    score ``grid.png`` as a ground truth); a report file name that is one of the inputs; a file
    where the folder should be; report files of a previous evaluation without ``overwrite``;
    report-named files that ``medrecon eval`` did not write (even with ``overwrite``); a place
    that cannot be written.

    Returns:
        The folder (``~`` expanded).
    """
    from medrecon.io.outputs import OutputExistsError, check_writable_place, resolve_user_path

    out = resolve_user_path(out_dir, what="--out folder")
    if isinstance(images, (str, Path)) and Path(images).expanduser().is_dir():
        root = Path(images).expanduser()
        if out.resolve() == root.resolve() or root.resolve() in out.resolve().parents:
            raise MedreconInputError(
                f"--out {str(out)!r} is, or lies inside, the --images folder {str(root)!r}: the "
                "report would be mixed with the ground truths (and grid.png scored as one next "
                "time). Choose an --out folder outside --images.")
        if out.resolve() in root.resolve().parents:
            raise MedreconInputError(
                f"--out {str(out)!r} holds the --images folder {str(root)!r}: the report would "
                "lie over the ground truths (an evaluation of the folder above them would score "
                "grid.png as one). Choose an --out folder beside --images, not above it.")
    targets = {(out / name).resolve() for name in REPORT_FILES}
    inputs = _input_files(images)
    for f in inputs:
        if f.resolve() in targets:
            raise MedreconInputError(
                f"--out {str(out)!r} would write over the input {str(f)!r}; choose another --out.")
    for f in inputs:  # ground truths named one by one (a list file, paths): not beside them
        # (a listed file that does not exist is named as such by discover_images)
        if _has_image_suffix(f) and f.exists() and (out.resolve() == f.resolve().parent
                                     or f.resolve().parent in out.resolve().parents):
            raise MedreconInputError(
                f"--out {str(out)!r} is, or lies inside, the folder of the ground truth "
                f"{str(f)!r}: the report would be mixed with the images (and grid.png scored as "
                "one next time). Choose an --out folder outside it.")
    if out.exists() and not out.is_dir():
        raise MedreconInputError(
            f"--out {str(out)!r} exists and is a file; expected a folder. Choose another --out.")
    present = [n for n in REPORT_FILES if (out / n).exists() or (out / n).is_symlink()]
    if present:
        if not _is_report(out):
            raise MedreconInputError(
                f"--out {str(out)!r} holds {', '.join(present)} that medrecon eval did not write "
                "(no medrecon settings.json); they are never replaced. Choose another --out.")
        if not overwrite:
            raise OutputExistsError(
                f"--out {str(out)!r} already holds a report ({', '.join(present)}); pass "
                "--overwrite (overwrite=True) to replace it, or choose another --out.")
        foreign = _not_written_by_report(out, present)
        if foreign:
            raise MedreconInputError(
                f"--out {str(out)!r} holds {', '.join(foreign)}, which its report did not write "
                "(or which changed since); --overwrite replaces only the report's own files. "
                "Move them away, or choose another --out.")
        for n in present:
            if not (out / n).is_file() or (out / n).is_symlink():
                raise MedreconInputError(
                    f"{str(out / n)!r} is not a regular file; medrecon eval does not replace it. "
                    "Remove it or choose another --out.")
    check_writable_place(out / REPORT_FILES[0])
    return out


def write_report(run: EvalRun, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write the report files of ``run`` into ``out_dir``, all or none.

    The files go through :class:`medrecon.io.outputs.OutputStage`: temporary names first, moved
    into place together only when all are complete, exclusively unless ``overwrite`` (which
    replaces the report files of a previous evaluation and removes those this run does not
    produce, e.g. ``grid.png`` without grid images). Other files in the folder are never
    touched.

    Returns:
        The folder.
    """
    from medrecon.io.outputs import OutputStage

    out = check_report_dir(out_dir, overwrite=overwrite)
    with OutputStage(overwrite=overwrite) as stage:
        staged = {"results.csv": write_results_csv(run.rows, stage.file(out / "results.csv")),
                  "summary.md": write_summary_md(run, stage.file(out / "summary.md"))}
        if run.grid:
            staged["grid.png"] = write_grid(run.grid, stage.file(out / "grid.png"))
        if run.calibration:
            staged["calibration.csv"] = write_calibration_csv(
                run.calibration, stage.file(out / "calibration.csv"))
        write_report_settings(run.settings, staged, stage.file(out / "settings.json"))
    for name, made in (("grid.png", run.grid), ("calibration.csv", run.calibration)):
        if overwrite and not made and (out / name).is_file():
            (out / name).unlink()  # a previous report's file, stale now
    return out


def write_results_csv(rows: Iterable[EvalRow], path: str | Path) -> Path:
    """Write ``results.csv`` with the columns :data:`CSV_COLUMNS`.

    Args:
        rows: The rows from :func:`evaluate`.
        path: Output file.

    Returns:
        The path written.
    """
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow(row.as_csv())
    return path


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return float("nan"), float("nan")
    if np.isinf(a).any():  # an exact result's PSNR: the mean is inf, a spread has no meaning
        return float(a.mean()), float("nan")
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def summarize(rows: Iterable[EvalRow]) -> dict[str, dict[str, Any]]:
    """Mean and sample standard deviation per method.

    Args:
        rows: Rows from :func:`evaluate` (or read back from ``results.csv``).

    Returns:
        ``{method: {"n": int, "psnr": (mean, std), "ssim": (mean, std),
        "lpips": (mean, std) or None, "seconds": (mean, std), "device": str}}`` in first-seen
        method order. The standard deviation is the sample one (``ddof=1``; 0 for one image).
    """
    by: dict[str, list[EvalRow]] = {}
    for r in rows:
        by.setdefault(r.method, []).append(r)
    out: dict[str, dict[str, Any]] = {}
    for method, rs in by.items():
        lp = [r.lpips for r in rs if r.lpips is not None]
        rho = [r.std_error_spearman for r in rs if r.std_error_spearman is not None]
        out[method] = {
            "n": len(rs),
            "psnr": _mean_std([r.psnr for r in rs]),
            "ssim": _mean_std([r.ssim for r in rs]),
            "lpips": _mean_std(lp) if len(lp) == len(rs) else None,
            "std_error_spearman": _mean_std(rho) if rho else None,
            "seconds": _mean_std([r.seconds for r in rs]),
            "device": ", ".join(sorted({r.device for r in rs})),
        }
    return out


def _pm(ms: tuple[float, float] | None, digits: int) -> str:
    if ms is None:
        return "-"
    if math.isinf(ms[0]):
        return f"{ms[0]:.{digits}f}"  # "inf": an exact result, no spread to give
    return f"{ms[0]:.{digits}f} +- {ms[1]:.{digits}f}"


def summary_table(rows: Iterable[EvalRow]) -> str:
    """The per-method markdown table of ``summary.md`` (mean +- std)."""
    stats = summarize(rows)
    lines = ["| method | n | PSNR (dB) | SSIM | LPIPS | std-error Spearman | seconds / image "
             "| device |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for method, s in stats.items():
        lines.append(f"| {method} | {s['n']} | {_pm(s['psnr'], 2)} | {_pm(s['ssim'], 4)} | "
                     f"{_pm(s['lpips'], 4)} | {_pm(s.get('std_error_spearman'), 3)} | "
                     f"{_pm(s['seconds'], 2)} | {s['device']} |")
    return "\n".join(lines)


def write_summary_md(run: EvalRun, path: str | Path) -> Path:
    """Write ``summary.md``: the settings, the metric conventions, and the per-method table.

    Args:
        run: The :class:`EvalRun` from :func:`evaluate_run`.
        path: Output file.

    Returns:
        The path written.
    """
    s = run.settings
    opts = ", ".join(f"{k}={v}" for k, v in sorted(s.get("task_options", {}).items())) or "defaults"
    lines = [
        f"# medrecon eval: {s.get('task')} with prior `{s.get('prior')}`",
        "",
        "## Settings",
        "",
        f"- prior: `{s.get('prior')}` ({s.get('resolution')}x{s.get('resolution')}, "
        f"{s.get('channels')} channel(s)), from `{s.get('prior_source')}`",
        f"- task: `{s.get('task')}`, options: {opts}",
        f"- measurement noise sigma: {s.get('noise_sigma')} (generator units, images in [-1, 1])",
        f"- images: {s.get('n_images')} from `{s.get('images')}` ({s.get('selection')})",
        f"- methods: {', '.join(s.get('methods', []))}"
        + (f"; options {json.dumps(s['method_options'])}" if s.get("method_options") else ""),
        f"- solver steps: {s.get('steps')}; batch size {s.get('batch_size')}; seed {s.get('seed')}"
        " (operator seeded with the seed; noise and solver per image from (seed, image id))",
        f"- device requested: {s.get('device')}; CPU: {s.get('cpu')} "
        f"({s.get('cpu_threads')} torch threads); CUDA: {s.get('cuda') or 'none'}",
        f"- versions: medrecon {s.get('medrecon')}, torch {s.get('torch')}, "
        f"python {s.get('python')}",
        "",
        f"Metrics are computed in {s.get('metric_space')}. PSNR and SSIM: higher is better; "
        "LPIPS (AlexNet): lower is better. Values are mean +- sample standard deviation over "
        "images; seconds are solver wall-clock per image.",
        "",
    ]
    if run.lpips_note:
        partly = run.lpips_note.startswith("LPIPS left empty for")
        lines += [run.lpips_note if partly else f"LPIPS column empty: {run.lpips_note}", ""]
    lines += ["## Results", "", summary_table(run.rows), ""]
    if run.std_maps:
        lines += [_std_map_text(run.std_maps), ""]
    lines.append("")
    path = Path(path)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _std_map_text(std_maps: Mapping[str, Mapping[str, Any]]) -> str:
    """The std-map paragraph of ``summary.md``: kind and calibration error per method."""
    from medrecon.solvers.calibration import ence

    parts = []
    for m, p in std_maps.items():
        n = int(p.get("left_out") or 0)
        if p["std"] is None:
            parts.append(f"{m}: {p['std_kind']}, not scored (its calibration was fitted on all "
                         f"{n} of these images)")
            continue
        e = ence(p["std"], p["error"], exact=p["exact"], bins=CALIBRATION_BINS)
        parts.append(f"{m}: {p['std_kind']}, ENCE {e:.2f}" + (
            f" ({n} image(s) its calibration was fitted on left out)" if n else ""))
    return ("Std maps (pixels measured exactly left out; ENCE: mean over "
            f"{CALIBRATION_BINS} equal-count bins of |RMV - RMSE| / RMV, 0 when calibrated; "
            "calibration.csv): " + "; ".join(parts) + ".")


def render_grid(grid: Mapping[str, Sequence[torch.Tensor]], *, label_height: int = 14,
                pad: int = 2, min_tile: int = 1) -> np.ndarray:
    """Tile images into one ``uint8`` picture: one row per image, one column per entry.

    Args:
        grid: Ordered ``{column title: [image [C, R, R] in [0, 1], ...]}``; every column the
            same length and image size.
        label_height: Pixels above each column for its title. Default 14.
        pad: Pixels between tiles. Default 2.
        min_tile: Tiles smaller than this are enlarged by an integer factor (nearest
            neighbour, so pixels stay visible) until they reach it. Default 1 (never).

    Returns:
        ``[H, W]`` (one channel) or ``[H, W, 3]`` uint8 array with the titles drawn on top.

    Raises:
        MedreconInputError: If the grid is empty or ragged.
    """
    from PIL import Image, ImageDraw

    cols = list(grid.items())
    if not cols or not cols[0][1]:
        raise MedreconInputError("the grid is empty; evaluate at least one image.")
    n = len(cols[0][1])
    c, h, w = cols[0][1][0].shape
    if any(len(v) != n or any(t.shape != (c, h, w) for t in v) for _, v in cols):
        raise MedreconInputError("every grid column needs the same number of images of the same "
                                 f"shape [C, H, W] = {[c, h, w]}.")
    rgb = c == 3
    zoom = max(1, -(-int(min_tile) // max(h, w)))
    h, w = h * zoom, w * zoom
    tile_w = max(w, 8)
    width = len(cols) * (tile_w + pad) + pad
    height = label_height + n * (h + pad) + pad
    canvas = Image.new("RGB" if rgb else "L", (width, height), color=(255, 255, 255) if rgb else 255)
    draw = ImageDraw.Draw(canvas)
    for j, (title, images) in enumerate(cols):
        x0 = pad + j * (tile_w + pad)
        label = title if draw.textlength(title) <= tile_w else title[: max(1, tile_w // 6)]
        draw.text((x0, 1), label, fill=(0, 0, 0) if rgb else 0)
        for i, t in enumerate(images):
            t = t.detach().cpu().float().clamp(0, 1)
            if zoom > 1:
                t = t.repeat_interleave(zoom, dim=-2).repeat_interleave(zoom, dim=-1)
            a = (t.numpy() * 255.0 + 0.5).astype(np.uint8)
            tile = Image.fromarray(a.transpose(1, 2, 0) if rgb else a[0] if c == 1 else a.mean(0)
                                   .astype(np.uint8))
            canvas.paste(tile, (x0, label_height + pad + i * (h + pad)))
    return np.asarray(canvas)


def write_grid(grid: Mapping[str, Sequence[torch.Tensor]], path: str | Path) -> Path:
    """Write ``grid.png`` (see :func:`render_grid`).

    Args:
        grid: Columns of images in ``[0, 1]``; tiles under 64 px are enlarged (nearest).
        path: Output file.

    Returns:
        The path written.
    """
    from PIL import Image

    path = Path(path)
    Image.fromarray(render_grid(grid, min_tile=64)).save(path, format="PNG")
    return path


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def _json_or_str(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _methods_callback(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    try:
        return parse_methods(value)
    except MedreconInputError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from exc


@click.command(name="eval", context_settings={"show_default": True})
@click.option("--prior", "prior", required=True,
              help="Shipped prior name (e.g. chest_xray, brain_mri) or a prior bundle path.")
@click.option("--task", type=click.Choice(TASKS), required=True, help="Forward problem.")
@click.option("--methods", required=True, callback=_methods_callback,
              help="Comma-separated methods, e.g. bicubic,lanczos-bp,csgm-bp,brgm,iagan-bp "
                   "(a -bp suffix back-projects any method onto the measurements).")
@click.option("--images", required=True, type=InputPath(),
              help="Folder of ground truths (PNG/JPEG/TIFF/BMP/DICOM/NIfTI) or a text file "
                   "listing them (one path per line).")
@click.option("--out", "out_dir", required=True, type=OutputPath(file_okay=False, path_type=Path),
              help="Output folder for results.csv, summary.md, grid.png, settings.json and "
              "(methods with a std map) calibration.csv.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Evaluate N images evenly spaced over the sorted paths [default: all].")
@click.option("--folds", default=None,
              help="Only the images of one fold of this record: a folds.json, a prior folder, "
                   "a shipped prior name (its bundle's models/folds.json), or a .txt list of "
                   "paths relative to --images.")
@click.option("--fold", type=click.IntRange(min=0), default=None,
              help="Fold to evaluate with --folds [default: the recorded held-out fold].")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Iterations per solver run [default: each solver's own].")
@click.option("--noise-sigma", type=click.FloatRange(0.0, MAX_NOISE_SIGMA), default=0.0,
              help="Measurement noise std in generator units (images in [-1, 1]).")
@click.option("--seed", type=int, default=0, help="Base seed (operator, noise, solver restarts).")
@click.option("--device", default="auto", help="auto, cpu, cuda or cuda:N.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1,
              help="Images per solver call (1 keeps every image independent; a larger batch "
              "draws its solver seed from the ids of the whole batch).")
@click.option("--grid-images", type=click.IntRange(min=0), default=4,
              help="Images shown in grid.png.")
@click.option("--lpips/--no-lpips", default=True,
              help="Compute LPIPS (column left empty when weights are unavailable offline).")
@click.option("--scale", type=click.IntRange(min=2, max=MAX_SCALE), default=None,
              help="[sr] Downsampling factor [default: operator's].")
@click.option("--mask-type", default=None,
              help="[inpaint] center_box/random_boxes/free_form/random_pixels/half; [mri] "
                   "random/equispaced/gaussian2d/poisson2d [default: operator's].")
@click.option("--acceleration", type=click.FloatRange(min=1.0), default=None,
              help="[mri] Undersampling factor [default: operator's].")
@click.option("--center-fraction", type=click.FloatRange(0.0, 1.0), default=None,
              help="[mri] Fully sampled central fraction of k-space [default: operator's].")
@click.option("--kernel", default=None,
              help="[sr] bicubic/box/gaussian; [deblur] uniform/gaussian [default: operator's].")
@click.option("--size", type=click.IntRange(min=1), default=None,
              help="[deblur] Kernel size [default: operator's].")
@click.option("--ratio", type=click.FloatRange(0.0, 1.0, min_open=True), default=None,
              help="[cs] Measurements / pixels [default: operator's].")
@click.option("--method-option", "method_option_items", multiple=True,
              metavar="METHOD.KEY=VALUE",
              help="Solver option for one method (repeatable), e.g. csgm.restarts=2; VALUE "
                   "parsed as JSON if it can.")
@click.option("--overwrite", is_flag=True,
              help="Replace the report of a previous medrecon eval in --out (other files there "
                   "are never touched).")
@click.option("--option", "extra_options", multiple=True, metavar="KEY=VALUE",
              help="Any other build_operator option (repeatable); VALUE parsed as JSON if it can.")
def eval_command(prior: str, task: str, methods: list[str], images: Path, out_dir: Path,
                 limit: int | None, folds: str | None, fold: int | None, steps: int | None, noise_sigma: float, seed: int,
                 device: str, batch_size: int, grid_images: int, lpips: bool,
                 method_option_items: tuple[str, ...], extra_options: tuple[str, ...],
                 overwrite: bool, **task_options: Any) -> None:
    """Evaluate reconstruction methods on ground truths with simulated, seeded measurements.

    Writes OUT/results.csv (one row per image and method), OUT/summary.md (mean +- std per
    method and the settings) and OUT/grid.png. Re-running the command reproduces every number
    except the timings.
    """
    for item in extra_options:
        if "=" not in item:
            raise click.BadParameter(f"got {item!r}; expected KEY=VALUE, e.g. --option "
                                     "mask_type=box.", param_hint="--option")
        key, raw = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if key in task_options:  # --option scale=8 silently replaced --scale 4
            raise click.BadParameter(
                f"{key} has its own option (--{key.replace('_', '-')}); set it there, not in "
                "--option.", param_hint="--option")
        if key in EVAL_OWNED_OPTIONS:
            raise click.BadParameter(
                f"{key} is set by eval itself (the prior's size and channels, --seed, "
                "--noise-sigma); remove it from --option.", param_hint="--option")
        task_options[key] = _json_or_str(raw)
    method_options: dict[str, dict[str, Any]] = {}
    for item in method_option_items:
        key, sep, raw = item.partition("=")
        meth, dot, opt = key.strip().rpartition(".")
        if not sep or not dot or not meth or not opt:
            raise click.BadParameter(f"got {item!r}; expected METHOD.KEY=VALUE, e.g. "
                                     "csgm.restarts=2.", param_hint="--method-option")
        method_options.setdefault(meth.lower(), {})[opt.replace("-", "_")] = _json_or_str(raw)
    try:
        run = evaluate_run(prior=prior, task=task, methods=methods, images=images, limit=limit,
                           folds=folds, fold=fold, steps=steps, noise_sigma=noise_sigma,
                           seed=seed, out_dir=out_dir, device=device, batch_size=batch_size,
                           grid_images=grid_images, lpips=lpips,
                           method_options=method_options, overwrite=overwrite,
                           progress=lambda m: click.echo(m, err=True), **task_options)
    except MedreconInputError as exc:  # one line, exit 2 (it was a four-line usage message)
        from medrecon.cli import InputError

        raise InputError(str(exc).strip()) from exc
    click.echo(summary_table(run.rows))
    if run.lpips_note:
        click.echo(f"note: {run.lpips_note}", err=True)
    click.echo(f"wrote {out_dir / 'results.csv'}, {out_dir / 'summary.md'}"
               + (f", {out_dir / 'grid.png'}" if run.grid else "")
               + (f", {out_dir / 'calibration.csv'}" if run.calibration else ""), err=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(eval_command())
