"""Helpers for the shipped MONAI bundles' configs (``bundles/*/configs``).

* :func:`bundle_datalist`: the run's items, with every input read and every output checked
  before any work.
* :func:`bundle_writer`: ``SaveImaged``'s writer: medrecon's NIfTI, staged (a complete file or
  none) and never over a file medrecon did not write.
* :func:`report_input_errors`: bad input ends ``python -m monai.bundle run`` with one line and
  exit code 2, as the CLI does, instead of MONAI's traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from medrecon.errors import MedreconInputError
from medrecon.monai.writer import MedreconNiftiWriter

__all__ = ["BUNDLE_SUFFIXES", "METRIC_NAMES", "bundle_datalist", "bundle_writer",
           "report_input_errors"]

#: Files the bundles read (MONAI's ``LoadImaged`` with :class:`medrecon.monai.MedreconReader`).
BUNDLE_SUFFIXES = (".nii", ".nii.gz", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm",
                   ".mha", ".mhd", ".nrrd")


def _stem(p: Path) -> str:
    name = p.name
    for suf in sorted(BUNDLE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return p.stem


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".")
                  and p.name.lower().endswith(BUNDLE_SUFFIXES))


def bundle_datalist(dataset_dir: str | Path, *, mask_dir: str | Path | None = None,
                    reference_dir: str | Path | None = None,
                    output_dir: str | Path | None = None, output_postfix: str = "",
                    output_ext: str = ".nii.gz", overwrite: bool = False,
                    report_files: tuple[str, ...] = ()) -> list[dict[str, str]]:
    """``[{"image": ..., ["mask": ...], ["label": ...]}]`` for a bundle run.

    Images are the readable files of ``dataset_dir`` in sorted order. A mask (nonzero =
    missing) and a reference are found by file stem in their folders (a ``_lr`` suffix of the
    image stem is dropped when looking for its reference, as in the shipped samples).

    With ``output_dir``, the files ``SaveImaged`` will write there
    (``<stem>_<output_postfix><output_ext>``) are checked before any work: two images may not
    share one (``a.png`` and ``a.nii.gz``: the second result would replace the first), and one
    that exists is refused unless ``overwrite``, and even then unless medrecon wrote it
    (:func:`medrecon.io.api.written_by_medrecon`; the bundles' :func:`bundle_writer` marks its
    files). ``report_files`` (``metrics.csv`` of ``MetricsSaver``) are checked the same way; a
    report is taken as this bundle's own when each of its lines is one of
    :data:`METRIC_NAMES` and a number (MONAI's ``metrics.csv`` form).

    Every listed file is read once first (:func:`medrecon.io.load_image`'s checks), so a bad
    one stops the run before any item is reconstructed.

    Raises:
        MedreconInputError: a missing folder, no images, an image without its mask or
            reference, two images with one output, an existing output without ``overwrite``,
            a file medrecon cannot read (named, with the reason).
    """
    src = Path(dataset_dir)
    if not src.is_dir():
        raise MedreconInputError(f"dataset_dir {str(src)!r} is not a folder; pass "
                                 "--dataset_dir with the scans to reconstruct.")
    images = _images(src)
    if not images:
        raise MedreconInputError(f"no images in {str(src)!r}; expected files ending in "
                                 f"{', '.join(BUNDLE_SUFFIXES)}.")
    out = [{"image": str(p)} for p in images]
    for key, folder, strip in (("mask", mask_dir, False), ("label", reference_dir, True)):
        if folder is None:
            continue
        table = {_stem(p): p for p in _images(Path(folder))} if Path(folder).is_dir() else {}
        for item, img in zip(out, images):
            stem = _stem(img)
            stem = stem[:-3] if strip and stem.endswith("_lr") else stem
            if stem not in table:
                raise MedreconInputError(
                    f"no {key} for {img.name} in {str(folder)!r} (looked for {stem}.*); give "
                    f"each image a {key} file of the same name.")
            item[key] = str(table[stem])
    if output_dir is not None:
        _check_outputs(images, Path(output_dir), f"_{output_postfix}" if output_postfix else "",
                       output_ext, overwrite=overwrite)
        for name in report_files:
            check_result(Path(output_dir) / name, overwrite=overwrite, ours=_our_report)
    _check_readable(out)
    return out


def _check_readable(items: list[dict[str, str]]) -> None:
    """Read every file of the run once before any solve, so that a corrupt file, NaN voxels or
    a 4D volume stop the run with its own message before the earlier items are reconstructed
    and written (they were found item by item, mid-run)."""
    from medrecon.io import load_image

    for item in items:
        for key, path in item.items():
            try:
                load_image(path)
            except MedreconInputError as exc:
                raise MedreconInputError(f"{key} {Path(path).name}: {exc}") from None


def _check_outputs(images: list[Path], folder: Path, postfix: str, ext: str, *,
                   overwrite: bool) -> None:
    """The outputs of ``images`` in ``folder``: one per image, none there unless ``overwrite``."""
    seen: dict[Path, Path] = {}
    for img in images:
        out = folder / f"{_stem(img)}{postfix}{ext}"
        if out in seen:
            raise MedreconInputError(
                f"{seen[out].name} and {img.name} would both be written to {str(out)!r}; rename "
                "one, or reconstruct them from separate folders.")
        seen[out] = img
        check_result(out, overwrite=overwrite)


def check_result(out: Path, *, overwrite: bool, ours: Any = None) -> None:
    """Refuse ``out`` if it exists, unless ``overwrite`` and medrecon wrote it (``ours(out)``;
    default :func:`~medrecon.io.api.written_by_medrecon`)."""
    from medrecon.io.api import written_by_medrecon

    if not (out.exists() or out.is_symlink()):
        return
    if out.is_symlink() or not out.is_file():
        raise MedreconInputError(
            f"{str(out)!r} exists and is not a regular file; medrecon does not write there. "
            "Move it, or choose another --output_dir.")
    if not overwrite:
        raise MedreconInputError(
            f"{str(out)!r} exists; pass --overwrite true to replace it, or another "
            "--output_dir.")
    if not (ours or written_by_medrecon)(out):
        raise MedreconInputError(
            f"{str(out)!r} exists and was not written by medrecon; it is never replaced, even "
            "with --overwrite true. Move it, or choose another --output_dir.")


#: The metrics the bundles' evaluate.json saves (``MetricsSaver``'s ``metrics.csv``).
METRIC_NAMES = ("val_psnr", "val_ssim")


def _our_report(path: Path) -> bool:
    """Whether ``path`` is a ``metrics.csv`` of this bundle (``<metric>,<number>`` lines)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        for line in lines:
            name, value = line.replace("\t", ",").split(",")
            float(value)
            if name not in METRIC_NAMES:
                return False
        return bool(lines)
    except (OSError, UnicodeDecodeError, ValueError):
        return False


#: medrecon errors a bundle writer raised (``SaveImage`` re-raises them as a bare
#: ``RuntimeError`` naming no cause); read by :func:`report_input_errors`.
_WRITER_ERRORS: list[MedreconInputError] = []


class BundleNiftiWriter(MedreconNiftiWriter):
    """:class:`~medrecon.monai.writer.MedreconNiftiWriter` writing as the CLI does: into a
    temporary file beside the target, moved into place complete
    (:class:`~medrecon.io.outputs.OutputStage`), so Ctrl-C or a full disk never leaves a
    partial result; the target is checked again at writing time (:func:`check_result`: a file
    that appeared during the solve is not replaced). Its ``descrip`` carries medrecon's mark,
    so a later run's ``--overwrite true`` may replace it. Made by :func:`bundle_writer`."""

    overwrite: bool = False

    def write(self, filename: Any, verbose: bool = False, **obj_kwargs: Any) -> None:
        from medrecon.io.outputs import OutputStage

        target = Path(filename)
        try:
            check_result(target, overwrite=self.overwrite)
            with OutputStage(overwrite=self.overwrite) as stage:
                super().write(stage.file(target), verbose=verbose, **obj_kwargs)
        except MedreconInputError as exc:
            _WRITER_ERRORS.append(exc)
            raise


def bundle_writer(*, overwrite: bool = False) -> type[BundleNiftiWriter]:
    """The writer class for the bundles' ``SaveImaged(writer=...)``: :class:`BundleNiftiWriter`
    with the run's ``overwrite``."""
    return type("BundleNiftiWriter", (BundleNiftiWriter,), {"overwrite": bool(overwrite)})


def _input_error(exc: BaseException | None) -> MedreconInputError | None:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, MedreconInputError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def report_input_errors() -> None:
    """Make a medrecon input error end this process with one line and exit code 2.

    MONAI's bundle runner wraps an error raised while a config item is built (a missing
    ``dataset_dir``, a corrupt scan, an existing output) in ``RuntimeError`` s and prints the
    whole traceback with exit code 1. Called from a bundle config's ``initialize``, this
    installs a :data:`sys.excepthook` that finds a :class:`~medrecon.errors.MedreconInputError`
    in the uncaught exception's chain (or one a :class:`BundleNiftiWriter` raised) and prints
    ``medrecon: error: <message>``, exit code 2; any other exception goes to the previous hook.
    """
    previous = sys.excepthook
    if getattr(previous, "medrecon_bundle_hook", False):
        return

    def hook(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
        found = _input_error(exc)
        if found is None and _WRITER_ERRORS and isinstance(exc, RuntimeError):
            found = _WRITER_ERRORS[-1]
        if found is None:
            previous(kind, exc, tb)
            return
        print(f"medrecon: error: {found}", file=sys.stderr)
        raise SystemExit(2)

    hook.medrecon_bundle_hook = True  # type: ignore[attr-defined]
    sys.excepthook = hook
