"""Path handling shared by the readers and writers: suffixes, sniffing, safe atomic writes."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from medrecon.errors import MedreconInputError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
NUMPY_SUFFIXES = (".npy", ".npz")
READ_SUFFIXES = NIFTI_SUFFIXES + DICOM_SUFFIXES + RASTER_SUFFIXES + NUMPY_SUFFIXES
WRITE_SUFFIXES = NIFTI_SUFFIXES + (".dcm", ".png", ".tif", ".tiff", ".npy")

_DICOM_MAGIC_OFFSET = 128


def full_suffix(path: Path) -> str:
    """Lower-case suffix, keeping the double ``.nii.gz``."""
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return path.suffix.lower()


def sniff(path: Path) -> str | None:
    """Guess a file's format from its first bytes: ``'dicom'``, ``'nifti'``, ``'gzip'``,
    ``'png'``, ``'jpeg'``, ``'tiff'``, ``'npy'``, ``'text'`` or ``None``."""
    with open(path, "rb") as fh:
        head = fh.read(_DICOM_MAGIC_OFFSET + 4)
    if len(head) >= _DICOM_MAGIC_OFFSET + 4 and head[_DICOM_MAGIC_OFFSET:] == b"DICM":
        return "dicom"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if len(head) >= 4 and int.from_bytes(head[:4], "little") in (348, 540):
        return "nifti"
    if len(head) >= 4 and int.from_bytes(head[:4], "big") in (348, 540):
        return "nifti"
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head[:64]):
        return "text"
    return None


def describe_head(path: Path, n: int = 40) -> str:
    """A short printable preview of a file's first bytes for error messages."""
    with open(path, "rb") as fh:
        head = fh.read(n)
    return repr(head)


def check_input_file(path: str | os.PathLike) -> Path:
    """Resolve ``path`` and check it exists and is non-empty; raise a clear error otherwise."""
    p = Path(path).expanduser()
    if not p.exists():
        parent = p.parent if str(p.parent) else Path(".")
        hint = ""
        if parent.is_dir():
            near = sorted(
                c.name for c in parent.iterdir() if c.name.lower().startswith(p.name[:3].lower())
            )[:5]
            if near:
                hint = f" Similar names in {parent}: {near}."
        else:
            hint = f" The folder {parent} does not exist either."
        raise MedreconInputError(
            f"input {str(p)!r} does not exist.{hint} Check the path (and the current directory "
            f"{os.getcwd()!r})."
        )
    if p.is_file() and p.stat().st_size == 0:
        raise MedreconInputError(
            f"input {str(p)!r} is an empty file (0 bytes); expected an image file. The copy or "
            "download probably failed: fetch it again."
        )
    return p


def check_finite(array: np.ndarray, *, what: str) -> None:
    """Raise when ``array`` holds NaN or infinite values, saying how many and where."""
    finite = np.isfinite(array)
    if finite.all():
        return
    bad = int(array.size - np.count_nonzero(finite))
    first = tuple(int(i) for i in np.argwhere(~finite)[0])
    n_nan = int(np.count_nonzero(np.isnan(array)))
    raise MedreconInputError(
        f"{what} has {bad} non-finite voxel(s) ({n_nan} NaN, {bad - n_nan} +/-Inf) out of "
        f"{array.size}, the first at index {first}; expected finite intensities. Replace them "
        "(e.g. numpy.nan_to_num(x, nan=0.0)) or mask them out before reconstruction."
    )


def same_path(a: Path, b: Path) -> bool:
    """True when ``a`` and ``b`` name the same filesystem entry (or would, once created)."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.normcase(os.path.abspath(a)) == os.path.normcase(os.path.abspath(b))


def is_within(child: Path, folder: Path) -> bool:
    """True when ``child`` lies inside ``folder`` (after resolving symlinks)."""
    try:
        child.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def check_output_path(
    out: Path, *, overwrite: bool, protected: Iterable[str | os.PathLike], want_dir: bool
) -> None:
    """Refuse to write onto an input or onto an existing path without ``overwrite``."""
    for src in protected:
        s = Path(src)
        if same_path(out, s) or (out.is_dir() and is_within(s, out)):
            raise MedreconInputError(
                f"refusing to write {str(out)!r}: it is (or contains) the input {str(s)!r}, which "
                "medrecon never overwrites, even with overwrite=True. Choose another output path."
            )
    if out.exists() and not overwrite:
        raise MedreconInputError(
            f"output {str(out)!r} already exists; refusing to replace it. Choose a new path or pass "
            "overwrite=True (CLI: --overwrite)."
        )
    if out.exists() and out.is_dir() != want_dir:
        kind = "a folder" if out.is_dir() else "a file"
        raise MedreconInputError(
            f"output {str(out)!r} exists and is {kind}; cannot replace it with "
            f"{'a file' if out.is_dir() else 'a folder'}. Remove it or choose another path."
        )


@contextlib.contextmanager
def atomic_file(out: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``out`` (same suffix); move it onto ``out`` on success.

    The move is :func:`os.replace`, atomic on POSIX and Windows within one filesystem, so a
    reader never sees a half-written file and a failure leaves any previous file intact.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{out.name}.", suffix=f".part{full_suffix(out)}", dir=out.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, out)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """Yield a temporary folder next to ``out``; swap it in place of ``out`` on success.

    An existing ``out`` folder is first renamed aside and removed only after the new folder is
    in place, so a failure at any point leaves either the old or the new complete folder.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent))
    backup: Path | None = None
    try:
        yield tmp
        if out.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            backup.rmdir()
            os.replace(out, backup)
        try:
            os.replace(tmp, out)
        except OSError:
            if backup is not None:
                os.replace(backup, out)
                backup = None
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if backup is not None and backup.exists():
            shutil.rmtree(backup, ignore_errors=True)
