"""Helpers for the shipped MONAI bundles' configs (``bundles/*/configs``).

* :func:`bundle_datalist`: the run's items, with every input read and every output checked
  before any work.
* :func:`bundle_writer`: ``SaveImaged``'s writer: medrecon's NIfTI, staged (a complete file or
  none) and never over a file medrecon did not write.
* :func:`report_input_errors`: bad input ends ``python -m monai.bundle run`` with one line and
  exit code 2, as the CLI does, instead of MONAI's traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from medrecon.errors import MedreconInputError, find_in_chain
from medrecon.monai.writer import MedreconNiftiWriter

__all__ = ["BUNDLE_SUFFIXES", "FLAG_WORDS", "METRIC_NAMES", "bundle_datalist", "bundle_device",
           "bundle_flag", "bundle_writer", "report_input_errors"]

#: Files the bundles read (MONAI's ``LoadImaged`` with :class:`medrecon.monai.MedreconReader`).
BUNDLE_SUFFIXES = (".nii", ".nii.gz", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm",
                   ".mha", ".mhd", ".nrrd")


def _stem(p: Path) -> str:
    name = p.name
    for suf in sorted(BUNDLE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return p.stem


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".")
                  and p.name.lower().endswith(BUNDLE_SUFFIXES))


def _series_uid(path: Path) -> str:
    from medrecon.io.dicom_read import read_dicom_header

    ds = read_dicom_header(path)
    return str(ds.get("SeriesInstanceUID", "")) if ds is not None else ""


def _images(folder: Path) -> list[Path]:
    """The inputs of ``folder``, as the CLI reads a folder: each image file; each subfolder
    holding DICOM files is one series (one volume, named after the subfolder); loose ``.dcm``
    files are one image each, unless they are the slices of one series, which is then read
    as a volume named after ``folder``.

    Raises:
        MedreconInputError: loose slices of several series, or loose slices beside series
            subfolders (which result would be whose is ambiguous).
    """
    from medrecon.io.dicom_read import list_series

    files = _files(folder)
    dicom = [p for p in files if p.name.lower().endswith(".dcm")]
    series_dirs = [d for d in sorted(folder.iterdir())
                   if d.is_dir() and not d.name.startswith(".") and list_series(d)]
    groups: dict[str, list[Path]] = {}
    for f in dicom:
        groups.setdefault(_series_uid(f) or f.name, []).append(f)
    stacks = [g for g in groups.values() if len(g) > 1]
    if not stacks:
        return sorted([*files, *series_dirs], key=lambda q: q.name)
    if len(groups) > 1 or series_dirs:
        raise MedreconInputError(
            f"{str(folder)!r} holds the slices of a DICOM series ({stacks[0][0].name} ...) as "
            "loose files beside other DICOM images or series folders; put each series in a "
            "subfolder of its own (one result per subfolder).")
    return sorted([*(f for f in files if f not in dicom), folder], key=lambda q: q.name)


def bundle_datalist(dataset_dir: str | Path, *, mask_dir: str | Path | None = None,
                    reference_dir: str | Path | None = None,
                    output_dir: str | Path | None = None, output_postfix: str = "",
                    output_ext: str = ".nii.gz", overwrite: bool = False,
                    report_files: tuple[str, ...] = (),
                    task: str | None = None, inferer: Any = None) -> list[dict[str, str]]:
    """``[{"image": ..., ["mask": ...], ["label": ...]}]`` for a bundle run.

    Images are the inputs of ``dataset_dir`` in sorted order (:func:`_images`: image files,
    and DICOM series as volumes, as the CLI reads them). A mask (nonzero = missing, on the
    image's grid) and a reference are found by stem in their folders (a ``_lr`` suffix of the
    image stem is dropped when looking for its reference, as in the shipped samples). With
    ``task``, a mask folder is required for ``inpaint`` and refused for the other tasks.

    With ``output_dir``, the files ``SaveImaged`` will write there
    (``<stem>_<output_postfix><output_ext>``) are checked before any work: ``output_dir`` may
    not be an input folder (the results would be read as inputs next time), two images may
    not share one output (``a.png`` and ``a.nii.gz``: the second result would replace the
    first), and one that exists is refused unless ``overwrite``, and even then unless
    medrecon wrote it (:func:`medrecon.io.api.written_by_medrecon`; the bundles'
    :func:`bundle_writer` marks its files). ``report_files`` (``metrics.csv`` of
    ``MetricsSaver``) are checked the same way; a report is taken as this bundle's own when
    each of its lines is one of :data:`METRIC_NAMES` and a number (MONAI's ``metrics.csv``
    form).

    Every listed file is read once first (:func:`medrecon.io.load_image`'s checks; a mask
    against its image's grid; with references, the images must be 2D, what evaluate.json's
    metrics score) and, with ``inferer`` (the bundle's
    :class:`~medrecon.monai.ReconstructionInferer`), checked against its settings without
    solving (:meth:`~medrecon.monai.ReconstructionInferer.check`: too small a scan, too large
    a result...), so a bad one stops the run before any item is reconstructed.

    Raises:
        MedreconInputError: a missing folder, no images, an image without its mask or
            reference, a mask the task does not take or lacks, two images with one output,
            an output folder that is an input folder, an existing output without
            ``overwrite``, a file medrecon cannot read (named, with the reason).
    """
    overwrite = bundle_flag(overwrite)
    src = Path(dataset_dir)
    if not src.is_dir():
        raise MedreconInputError(f"dataset_dir {str(src)!r} is not a folder; pass "
                                 "--dataset_dir with the scans to reconstruct.")
    _check_task_mask(task, mask_dir)
    images = _images(src)
    if not images:
        raise MedreconInputError(f"no images in {str(src)!r}; expected files ending in "
                                 f"{', '.join(BUNDLE_SUFFIXES)} or DICOM series folders.")
    out = [{"image": str(p)} for p in images]
    for key, folder, strip in (("mask", mask_dir, False), ("label", reference_dir, True)):
        if folder is not None:
            _pair(out, images, key, Path(folder), strip=strip)
    if output_dir is not None:
        _check_output_dir(Path(output_dir), [src, mask_dir, reference_dir])
        _check_outputs(images, Path(output_dir), f"_{output_postfix}" if output_postfix else "",
                       output_ext, overwrite=overwrite)
        for name in report_files:
            check_result(Path(output_dir) / name, overwrite=overwrite, ours=_our_report)
    _check_readable(out, two_d=reference_dir is not None, inferer=inferer)
    return out


def _check_task_mask(task: str | None, mask_dir: Any) -> None:
    if task is None:
        return
    if task == "inpaint" and mask_dir is None:
        raise MedreconInputError(
            "task inpaint needs a mask per image (nonzero = missing); pass --mask_dir with "
            "files of the images' names.")
    if task != "inpaint" and mask_dir is not None:
        raise MedreconInputError(
            f"a mask is only used by task inpaint; got --mask_dir with task {task!r}. Drop "
            "--mask_dir or pass --task inpaint.")


def _pair(items: list[dict[str, str]], images: list[Path], key: str, folder: Path, *,
          strip: bool) -> None:
    """Give each item its ``key`` file of ``folder``, found by the image's stem."""
    table = {_stem(p): p for p in _images(folder)} if folder.is_dir() else {}
    for item, img in zip(items, images):
        stem = _stem(img)
        stem = stem[:-3] if strip and stem.endswith("_lr") else stem
        if stem not in table:
            raise MedreconInputError(
                f"no {key} for {img.name} in {str(folder)!r} (looked for {stem}.*); give "
                f"each image a {key} file of the same name.")
        item[key] = str(table[stem])


def _check_output_dir(out: Path, inputs: list[Any]) -> None:
    """The results never go into an input folder: the next run would read them as inputs."""
    target = out.expanduser().resolve()
    for folder in inputs:
        if folder is not None and Path(folder).expanduser().resolve() == target:
            raise MedreconInputError(
                f"output_dir {str(out)!r} is the input folder {str(folder)!r}; the results "
                "would be read as inputs by the next run. Pass another --output_dir.")


def _check_readable(items: list[dict[str, str]], *, two_d: bool = False,
                    inferer: Any = None) -> None:
    """Read every file of the run once before any solve, so that a corrupt file, NaN voxels,
    a 4D volume or a mask off its image's grid stop the run with its own message before the
    earlier items are reconstructed and written (they were found item by item, mid-run)."""
    from medrecon.io import load_image

    from medrecon.pipeline import load_mask

    for item in items:
        read = {}
        for key, path in item.items():
            try:
                read[key] = img = load_image(path)
            except MedreconInputError as exc:
                raise MedreconInputError(f"{key} {Path(path).name}: {exc}") from None
            if two_d and key == "image" and not img.is_2d:
                raise MedreconInputError(
                    f"image {Path(path).name} is a volume {'x'.join(map(str, img.shape))}; "
                    "evaluate.json scores 2D images. Score volumes with `medrecon eval-scans`.")
        if "mask" in read:
            m, i = read["mask"].shape, read["image"].shape
            if m != i:
                raise MedreconInputError(
                    f"mask {Path(item['mask']).name} is {'x'.join(map(str, m))} but image "
                    f"{Path(item['image']).name} is {'x'.join(map(str, i))}; a mask must be on "
                    "its image's grid.")
            try:  # and, when both files carry geometry, in the same place (the CLI's rule)
                read["mask"] = load_mask(read["mask"], read["image"])
            except MedreconInputError as exc:
                raise MedreconInputError(f"mask {Path(item['mask']).name}: {exc}") from None
        if inferer is not None:
            try:
                shape = inferer.check(read["image"], read.get("mask"))
            except MedreconInputError as exc:
                raise MedreconInputError(f"image {Path(item['image']).name}: {exc}") from None
            if "label" in read and tuple(read["label"].shape) != tuple(shape):
                raise MedreconInputError(
                    f"reference {Path(item['label']).name} is "
                    f"{'x'.join(map(str, read['label'].shape))} but the result for "
                    f"{Path(item['image']).name} will be {'x'.join(map(str, shape))}, so the "
                    "metrics could not compare them; give references on the result's grid "
                    "(for SR: the scan's size times --scale) or change --scale / --task.")


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
    if seen:  # a folder that cannot take a file fails here, not after the first solve
        from medrecon.io.outputs import check_writable_place

        check_writable_place(next(iter(seen)))


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


#: ``(target, error)`` of the medrecon errors a bundle writer raised (``SaveImage`` re-raises
#: them as a bare ``RuntimeError`` naming the file but not the cause); read by
#: :func:`report_input_errors`.
_WRITER_ERRORS: list[tuple[str, MedreconInputError]] = []


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
            _WRITER_ERRORS.append((str(filename), exc))
            raise


#: Words the bundles' yes/no overrides take (``python -m monai.bundle run --overwrite true``
#: passes the word as a string, which Python would take as true whatever it says).
FLAG_WORDS = {"true": True, "yes": True, "on": True, "1": True,
              "false": False, "no": False, "off": False, "0": False}


def bundle_flag(value: Any, name: str = "overwrite") -> bool:
    """A yes/no override as a bool: ``True`` / ``False``, 1 / 0 or a word of
    :data:`FLAG_WORDS` (any case).

    Raises:
        MedreconInputError: any other value (named, with the two to use).
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in FLAG_WORDS:
        return FLAG_WORDS[value.strip().lower()]
    raise MedreconInputError(f"--{name} {value!r} is neither true nor false; pass --{name} "
                             f"true or --{name} false.")


def bundle_device(device: Any) -> Any:
    """The bundle's ``device`` override checked (:func:`medrecon.solvers._common.resolve_device`:
    ``cuda`` on a machine without one is an input error, not a traceback from ``.to``)."""
    from medrecon.solvers._common import resolve_device

    return resolve_device(str(device))


def bundle_writer(*, overwrite: bool = False) -> type[BundleNiftiWriter]:
    """The writer class for the bundles' ``SaveImaged(writer=...)``: :class:`BundleNiftiWriter`
    with the run's ``overwrite``."""
    return type("BundleNiftiWriter", (BundleNiftiWriter,), {"overwrite": bundle_flag(overwrite)})


def _writer_error(exc: BaseException) -> MedreconInputError | None:
    """The writer error behind ``SaveImage``'s ``RuntimeError`` (it names the file)."""
    if not isinstance(exc, RuntimeError):
        return None
    text = str(exc)
    for target, err in reversed(_WRITER_ERRORS):
        if "cannot find a suitable writer for " + target in text:
            return err
    return None


def report_input_errors() -> None:
    """Make a medrecon input error end ``python -m monai.bundle`` with one line and exit 2.

    MONAI's bundle runner wraps an error raised while a config item is built (a missing
    ``dataset_dir``, a corrupt scan, an existing output) in ``RuntimeError`` s and prints the
    whole traceback with exit code 1. Called from a bundle config's ``initialize``, this
    installs a :data:`sys.excepthook` that finds a :class:`~medrecon.errors.MedreconInputError`
    in the uncaught exception's chain (or the one a :class:`BundleNiftiWriter` raised for the
    file ``SaveImage`` names) and prints ``medrecon: error: <message>``, exit code 2; any
    other exception goes to the previous hook. Ctrl-C and SIGTERM end the run with one line
    and exit codes 130 and 143, as the CLI's, the result being written discarded (results
    already written are complete and stay). The tracebacks that ignite and MONAI's
    ``StatsHandler`` log for these stops (:class:`_QuietStops`) are left out; any other
    error's are kept. Only in the bundle runner's own process: a ``ConfigWorkflow`` run from
    the user's Python leaves the user's hooks alone.
    """
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if getattr(spec, "name", None) not in ("monai.bundle.__main__", "monai.bundle"):
        return
    previous = sys.excepthook
    if getattr(previous, "medrecon_bundle_hook", False):
        return

    def hook(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
        if isinstance(exc, KeyboardInterrupt):
            print(f"medrecon: interrupted; {_NOT_WRITTEN}", file=sys.stderr)
            raise SystemExit(130)
        found = _input_error(exc)
        if found is None:
            previous(kind, exc, tb)
            return
        print(f"medrecon: error: {found}", file=sys.stderr)
        raise SystemExit(2)

    hook.medrecon_bundle_hook = True  # type: ignore[attr-defined]
    sys.excepthook = hook
    quiet = _QuietStops()
    for handler in logging.getLogger().handlers:  # where ignite's engine records end
        handler.addFilter(quiet)
    logging.getLogger(_STATS_LOGGER).addFilter(quiet)  # logs on its own, to its own handler
    _exit_on_sigterm()


#: The logger of MONAI's ``StatsHandler`` in the bundles' configs (its default name).
_STATS_LOGGER = "monai.handlers.StatsHandler"
#: The end of the line printed for a bundle run stopped by Ctrl-C or SIGTERM.
_NOT_WRITTEN = "the result in progress was not written."


def _input_error(exc: BaseException) -> MedreconInputError | None:
    return find_in_chain(exc, MedreconInputError) or _writer_error(exc)


class _QuietStops(logging.Filter):
    """Drops the error records logged while a stop (Ctrl-C, SIGTERM) or a medrecon input
    error is unwinding through the engine: ignite's "Engine run is terminating due to
    exception" and ``StatsHandler``'s traceback. :func:`report_input_errors`' hook prints the
    one line instead. Records of any other error pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        exc = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
        if exc is None:
            return True
        return not (isinstance(exc, (KeyboardInterrupt, SystemExit))
                    or _input_error(exc) is not None)


def _exit_on_sigterm() -> None:
    """SIGTERM as ``SystemExit(143)`` where the process is, so that a result being written is
    discarded on the way out (its default action killed the process mid-write and left the
    staged ``.part`` file), as the CLI does."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum: int, frame: Any) -> None:
        print(f"medrecon: terminated (SIGTERM); {_NOT_WRITTEN}", file=sys.stderr)
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, stop)
