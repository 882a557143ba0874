"""Path handling shared by the readers: suffixes, sniffing, input checks, size bounds.

Writing (exclusive, atomic, all-or-nothing) lives in :mod:`medrecon.io.outputs`.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Any
from pathlib import Path

import numpy as np

from medrecon.errors import MedreconInputError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
NUMPY_SUFFIXES = (".npy", ".npz")
ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
READ_SUFFIXES = NIFTI_SUFFIXES + DICOM_SUFFIXES + RASTER_SUFFIXES + NUMPY_SUFFIXES + ITK_SUFFIXES
WRITE_SUFFIXES = NIFTI_SUFFIXES + (".dcm", ".png", ".tif", ".tiff", ".npy")

_DICOM_MAGIC_OFFSET = 128

#: What medrecon writes into every image file it makes (NIfTI ``descrip``, DICOM
#: ``Manufacturer``, PNG ``Software`` text, TIFF ``Software`` tag), so that ``--overwrite``
#: can tell its own results from a user's file (:func:`written_by_medrecon`).
MEDRECON_MARK = "medrecon"


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


def in_dicom_series_folder(path: Path, *, look: int = 64) -> bool:
    """Whether ``path`` is a DICOM file whose folder holds another DICOM file (of the first
    ``look`` other entries: a series folder shows one soon)."""
    dicom_suffixes = ("", ".dcm", ".dicom", ".ima")
    try:
        if sniff(path) != "dicom" or path.parent.resolve() == path.parent.parent.resolve():
            return False
        seen = 0
        for other in path.parent.iterdir():
            if other.name == path.name or other.name.startswith("."):
                continue
            seen += 1
            if seen > look:
                return False
            if other.suffix.lower() in dicom_suffixes and other.is_file() \
                    and sniff(other) == "dicom":
                return True
    except OSError:
        return False
    return False


def describe_head(path: Path, n: int = 40) -> str:
    """A short printable preview of a file's first bytes for error messages."""
    with open(path, "rb") as fh:
        head = fh.read(n)
    return repr(head)


def check_input_file(path: str | os.PathLike, *, what: str = "input") -> Path:
    """Check ``path`` is an existing regular file or folder medrecon may read; return it.

    Refused with a clear message: a missing path (with similar names nearby), a broken
    symbolic link, a symbolic link loop, a device / pipe / socket (``/dev/zero`` would be read
    forever), an empty file and an unreadable one.
    """
    p = Path(path).expanduser()
    try:
        st = os.stat(p)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise MedreconInputError(
                f"{what} {str(p)!r} is (or goes through) a symbolic link loop; fix the link "
                f"(ls -l {str(p)!r}) or pass the file it should point to."
            ) from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise MedreconInputError(
                f"{what} {str(p)!r} cannot be read: permission denied. Fix its permissions or "
                "copy it somewhere you can read."
            ) from None
        if exc.errno == errno.ENOTDIR:
            raise MedreconInputError(
                f"{what} {str(p)!r} does not exist: a part of the path is a file, not a folder."
            ) from None
        if p.is_symlink():
            raise MedreconInputError(
                f"{what} {str(p)!r} is a symbolic link to {os.readlink(p)!r}, which does not "
                "exist. Fix the link or pass the real file."
            ) from None
        parent = p.parent if str(p.parent) else Path(".")
        hint = ""
        if parent.is_dir():
            try:
                near = sorted(c.name for c in parent.iterdir()
                              if c.name.lower().startswith(p.name[:3].lower()))[:5]
            except OSError:
                near = []
            if near:
                hint = f" Similar names in {parent}: {near}."
        else:
            hint = f" The folder {parent} does not exist either."
        raise MedreconInputError(
            f"{what} {str(p)!r} does not exist.{hint} Check the path (and the current directory "
            f"{os.getcwd()!r})."
        ) from None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        kind = ("a character device" if stat.S_ISCHR(st.st_mode) else "a block device"
                if stat.S_ISBLK(st.st_mode) else "a named pipe (FIFO)" if stat.S_ISFIFO(st.st_mode)
                else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        link = f" (through the symbolic link to {os.path.realpath(p)!r})" if p.is_symlink() else ""
        raise MedreconInputError(
            f"{what} {str(p)!r} is {kind}{link}, not a regular file; medrecon reads only image "
            "files and folders. Pass the image file itself."
        )
    if stat.S_ISREG(st.st_mode):
        if st.st_size == 0:
            raise MedreconInputError(
                f"{what} {str(p)!r} is an empty file (0 bytes). The copy "
                "or download probably failed: fetch it again."
            )
        if not os.access(p, os.R_OK):
            raise MedreconInputError(
                f"{what} {str(p)!r} cannot be read: permission denied. Fix its permissions or copy "
                "it somewhere you can read."
            )
    return p


def is_regular_file(path: Path) -> bool:
    """Whether ``path`` (links followed) is a regular file; False for devices, pipes, loops."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


#: Most voxels medrecon allocates for one input array (``MEDRECON_MAX_VOXELS`` overrides):
#: 2**30 float32 voxels are 4 GiB, e.g. a 1024^3 volume; far beyond what a 128-pixel prior uses.
DEFAULT_MAX_VOXELS = 2**30
#: Deflate cannot expand data by more than ~1032:1; a gzip file claiming more is lying.
GZIP_MAX_RATIO = 1100


def max_voxels() -> int:
    """The voxel bound of :func:`check_claimed_size` (``$MEDRECON_MAX_VOXELS`` or the default)."""
    raw = os.environ.get("MEDRECON_MAX_VOXELS", "")
    try:
        return int(raw) if raw.strip() else DEFAULT_MAX_VOXELS
    except ValueError:
        return DEFAULT_MAX_VOXELS


def check_claimed_size(
    path: Path,
    *,
    shape: tuple[int, ...],
    itemsize: int,
    data_offset: int = 0,
    compressed: bool = False,
    voxels: int | None = None,
    bound_by_file: bool = True,
) -> None:
    """Refuse a header whose claimed array cannot be in the file, before anything is allocated.

    Args:
        path: The file (its size on disk is the evidence).
        shape: The array shape the header claims.
        itemsize: Bytes per stored element.
        data_offset: Bytes before the array in the (uncompressed) stream.
        compressed: The file is gzip/deflate: the claim is bounded by the maximal deflate ratio.
        voxels: Voxels medrecon will actually allocate (e.g. one volume of a 4D file); default
            the whole claimed array. Bounded by :func:`max_voxels`.
        bound_by_file: Compare the claim with the file size (False for codecs such as JPEG-LS
            or RLE that may legitimately compress beyond the deflate bound).

    Raises:
        MedreconInputError: The claim exceeds the file's content or the voxel bound.
    """
    dims = [int(s) for s in shape]
    if any(d < 0 for d in dims):
        raise MedreconInputError(
            f"{str(path)!r}: its header claims a negative size {tuple(dims)}; the file is corrupt. "
            "Re-export it.")
    claimed = itemsize
    for d in dims:
        claimed *= d
    size = path.stat().st_size
    available = size * GZIP_MAX_RATIO if compressed else size - data_offset
    if bound_by_file and claimed > available:
        raise MedreconInputError(
            f"{str(path)!r}: its header claims {'x'.join(map(str, dims))} voxels "
            f"({_human(claimed)}), but the file holds only {_human(size)}"
            f"{' compressed' if compressed else ''}; it is truncated or its header is corrupt. "
            "Re-export or copy the file again.")
    n = voxels
    if n is None:
        n = 1
        for d in dims:
            n *= d
    limit = max_voxels()
    if n > limit:
        raise MedreconInputError(
            f"{str(path)!r} holds {n:,} voxels ({'x'.join(map(str, dims))}), more than medrecon "
            f"reads at once ({limit:,}, {_human(4 * limit)} as float32). Crop or downsample it "
            "first, or raise the bound with MEDRECON_MAX_VOXELS if you have the memory.")


def check_numpy_file(path: Path) -> None:
    """Bound a ``.npy`` / ``.npz`` file's claimed arrays by its size before numpy allocates them.

    ``.npy``: the header's shape and dtype against the bytes after the header. ``.npz``: every
    member's declared uncompressed size (and its own ``.npy`` header when stored) against the
    voxel bound and the maximal deflate ratio.

    Raises:
        MedreconInputError: A claim the file cannot back, or more voxels than allowed.
    """
    import zipfile

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                limit = max(info.compress_size, 1) * GZIP_MAX_RATIO
                if info.file_size > limit or info.file_size > 8 * max_voxels():
                    raise MedreconInputError(
                        f"{str(path)!r}: member {info.filename!r} claims {_human(info.file_size)} "
                        f"uncompressed from {_human(info.compress_size)}; the archive is corrupt or "
                        "hostile. Re-export the array with numpy.save.")
                if not info.filename.endswith(".npy"):
                    continue
                what = f"{str(path)!r} (member {info.filename!r})"
                with zf.open(info) as fh:  # its own header, against the member's size
                    shape, dtype, offset = _npy_header(fh, what)
                check_claimed_size(path, shape=shape, itemsize=dtype.itemsize,
                                   bound_by_file=False)
                if int(np.prod(shape, dtype=np.float64)) * dtype.itemsize > info.file_size - offset:
                    raise MedreconInputError(
                        f"{what}: its header claims a {'x'.join(map(str, shape))} {dtype} array, "
                        f"more than the member's {_human(info.file_size)}; the archive is corrupt "
                        "or hostile. Re-export the array with numpy.savez.")
        return
    with open(path, "rb") as fh:
        shape, dtype, offset = _npy_header(fh, repr(str(path)))
    check_claimed_size(path, shape=shape, itemsize=dtype.itemsize, data_offset=offset)


def _npy_header(fh: Any, what: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, data offset)`` of the ``.npy`` header at the start of ``fh``.

    Raises:
        MedreconInputError: Not a ``.npy`` header, or a dtype of Python objects.
    """
    try:
        version = np.lib.format.read_magic(fh)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        shape, _fortran, dtype = read(fh, max_header_size=100_000)
        offset = fh.tell()
    except (ValueError, OSError, EOFError) as exc:
        raise MedreconInputError(
            f"cannot read {what} as a numpy array: {exc}. Expected a file written by "
            "numpy.save.") from None
    if dtype.hasobject:
        raise MedreconInputError(
            f"{what} holds Python objects (dtype {dtype}); medrecon never unpickles data. "
            "Save a numeric array with numpy.save.")
    return tuple(int(v) for v in shape), dtype, offset


def _human(nbytes: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if nbytes < 1024 or unit == "PiB":
            return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} EiB"


def check_float32_range(array: np.ndarray, *, what: str) -> None:
    """Raise when wider floats hold finite values beyond float32's range, which medrecon
    computes in (cast, they became +/-Inf and were reported as "non-finite voxels")."""
    a = np.asarray(array)
    if a.dtype.kind != "f" or a.dtype.itemsize <= 4 or not a.size:
        return
    # max and min: no |a| copy of a large float64 array
    top = max(abs(float(np.nanmax(a))), abs(float(np.nanmin(a)))) if np.isfinite(a).any() else 0.0
    if np.isfinite(top) and top > float(np.finfo(np.float32).max):
        raise MedreconInputError(
            f"{what} holds values up to {top:.3g}, beyond float32's range (3.4e38) that "
            "medrecon computes in; rescale the intensities first.")


#: The fix :func:`check_finite` names by default.
FINITE_FIX = ("Replace them (e.g. numpy.nan_to_num(x, nan=0.0)) or mask them out before "
              "reconstruction.")


def check_finite(array: Any, *, what: str, fix: str = FINITE_FIX) -> None:
    """Raise when ``array`` (numpy or torch) holds NaN or infinite values, saying how many
    and where, and ``fix``."""
    if hasattr(array, "detach"):  # a torch tensor (a MetaTensor: its plain values)
        array = array.detach().cpu().numpy()
    finite = np.isfinite(array)
    if finite.all():
        return
    bad = int(array.size - np.count_nonzero(finite))
    first = tuple(int(i) for i in np.argwhere(~finite)[0])
    n_nan = int(np.count_nonzero(np.isnan(array)))
    raise MedreconInputError(
        f"{what} has {bad} non-finite voxel(s) ({n_nan} NaN, {bad - n_nan} +/-Inf) out of "
        f"{array.size}, the first at index {first}; expected finite intensities. {fix}")
