"""Writing results without ever endangering a user's file.

The rules every medrecon writer follows (the CLI, :func:`medrecon.io.save_image`, ``medrecon
eval``, ``medrecon priors import``, ``medrecon demo``):

* **Inputs are never written.** An output that is an input, lies inside an input folder, or is
  a folder holding an input is refused, with or without ``overwrite``.
* **Every check runs before the long computation.** :func:`check_output` validates the target
  (inputs, existing output, foreign files in a folder, a writable place) so a bad ``-o`` fails
  in a second, not after the solve.
* **No output without a complete result.** :class:`OutputStage` writes every output of one job
  under a temporary name beside its target and moves them all into place at the end, or
  removes them all (and any folder it created) when anything fails.
* **Creation is exclusive.** Without ``overwrite`` a new output is linked into place with
  ``os.link`` (a folder with ``rename``, which fails on a non-empty folder), so of two runs
  racing for one new output exactly one wins and the other gets a clear error.
* **``overwrite`` replaces only what medrecon wrote.** A folder output (DICOM series, eval
  report, prior) that holds anything medrecon would not have written there is refused.
* **Results look like the user's own files**: mode ``0o666 & ~umask`` (``0o777`` for folders),
  not the ``0600`` of temporary files.
* **User and environment problems are input errors** (:class:`MedreconInputError`, CLI exit 2)
  that name the user's path and the fix, never a temporary name: no space left, permission
  denied, read-only or special file systems, symlink loops, a file where a folder is needed.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from medrecon.errors import MedreconInputError

__all__ = [
    "OutputExistsError",
    "OutputStage",
    "check_output",
    "check_writable_place",
    "default_modes",
    "os_error_message",
    "overlaps_input",
    "resolve_user_path",
]

#: Lists the entries of an existing output folder that medrecon did NOT write there.
ForeignEntries = Callable[[Path], list[str]]

_UMASK_LOCK = threading.Lock()


class OutputExistsError(MedreconInputError):
    """The output exists (or appeared while medrecon was running) and may not be replaced."""


def _umask() -> int:
    try:  # Linux >= 4.7: read it without changing it (thread-safe)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def default_modes() -> tuple[int, int]:
    """``(file mode, folder mode)`` a new file/folder of the user gets under the current umask."""
    mask = _umask()
    return 0o666 & ~mask, 0o777 & ~mask


def resolve_user_path(path: str | os.PathLike, *, what: str = "output") -> Path:
    """``path`` with ``~`` expanded; a symbolic-link loop anywhere on it is a clear error."""
    p = Path(os.fspath(path)).expanduser()
    try:
        p.resolve(strict=False)
    except (RuntimeError, OSError) as exc:  # 3.11-3.12: RuntimeError; 3.13+: OSError(ELOOP)
        if isinstance(exc, OSError) and exc.errno != errno.ELOOP:
            raise MedreconInputError(os_error_message(exc, p, action=f"use the {what} path")) from None
        raise MedreconInputError(
            f"{what} {str(p)!r} is (or goes through) a symbolic link loop; remove or fix the link "
            f"(ls -l {str(p)!r}) or choose another path."
        ) from None
    return p


def os_error_message(exc: OSError, path: Path, *, action: str = "write") -> str:
    """A one-line message for an OS error on the user's ``path``: the problem and the fix.

    Never shows a temporary file name: only ``path`` and the folder it is in.
    """
    where = path.parent if str(path.parent) else Path(".")
    inner: BaseException | None = exc
    for _ in range(8):  # a writer's own OSError around the system's (pydicom on a full disk)
        if inner is None or (isinstance(inner, OSError) and inner.errno is not None):
            break
        inner = inner.__cause__ or inner.__context__
    exc = inner if isinstance(inner, OSError) and inner.errno is not None else exc
    code = exc.errno
    reason = exc.strerror or type(exc).__name__
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return (f"cannot {action} {str(path)!r}: no space left on the device holding "
                f"{str(where)!r} (or the disk quota is used up). Free some space or choose another "
                "output folder; nothing was written.")
    if code in (errno.EACCES, errno.EPERM):
        return (f"cannot {action} {str(path)!r}: permission denied in {str(where)!r}. Choose an "
                "output folder you can write to (or fix its permissions).")
    if code == errno.EROFS:
        return (f"cannot {action} {str(path)!r}: {str(where)!r} is on a read-only file system. "
                "Choose an output folder on a writable disk.")
    if code == errno.ELOOP:
        return (f"cannot {action} {str(path)!r}: the path goes through a symbolic link loop. "
                "Fix the link or choose another path.")
    if code == errno.ENOTDIR:
        return (f"cannot {action} {str(path)!r}: a part of the path is a file, not a folder. "
                "Choose a path whose folders are folders.")
    if code == errno.EISDIR:
        return (f"cannot {action} {str(path)!r}: it is a folder. Give a file name, or remove the "
                "folder.")
    if code == errno.ENAMETOOLONG:
        return f"cannot {action} {str(path)!r}: the name is too long. Choose a shorter path."
    if code in (errno.ENOENT, errno.EINVAL, errno.EXDEV, errno.ENOTSUP, getattr(errno, "EOPNOTSUPP", -1)):
        return (f"cannot {action} {str(path)!r}: {str(where)!r} does not accept new files "
                f"({reason}; e.g. a special file system such as /proc). Choose an ordinary folder.")
    return f"cannot {action} {str(path)!r}: {reason}. Choose another output path."


def overlaps_input(out: Path, src: Path) -> bool:
    """Whether writing ``out`` could touch ``src``: the same entry, ``out`` inside ``src``, or
    ``out`` a folder holding ``src`` (symbolic links resolved)."""
    try:
        o, s = out.resolve(), src.resolve()
    except (RuntimeError, OSError):
        o, s = Path(os.path.abspath(out)), Path(os.path.abspath(src))
    if o == s or s in o.parents or o in s.parents:
        return True
    try:
        return out.exists() and src.exists() and os.path.samefile(out, src)  # hard links
    except OSError:
        return False


def check_writable_place(out: Path) -> None:
    """Refuse early when ``out`` cannot be created: its nearest existing folder must accept a
    new file (probed with a hidden temporary file, removed at once)."""
    anc = out.parent if str(out.parent) else Path(".")
    while not anc.exists():
        if anc.is_symlink():
            raise MedreconInputError(
                f"cannot write {str(out)!r}: {str(anc)!r} is a broken symbolic link. Fix it or "
                "choose another output path.")
        if anc.parent == anc:
            break
        anc = anc.parent
    if anc.exists() and not anc.is_dir():
        raise MedreconInputError(
            f"cannot write {str(out)!r}: {str(anc)!r} is a file, not a folder. Choose another "
            "output path.")
    try:
        fd, probe = tempfile.mkstemp(prefix=".medrecon-probe-", dir=anc)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise MedreconInputError(os_error_message(exc, out)) from None


def check_output(
    out: str | os.PathLike,
    *,
    overwrite: bool,
    protected: Iterable[str | os.PathLike] = (),
    want_dir: bool = False,
    foreign: ForeignEntries | None = None,
    what: str = "output",
) -> Path:
    """Validate an output path before any long computation.

    Args:
        out: The output file or folder.
        overwrite: Whether an existing output of medrecon's may be replaced.
        protected: Inputs (files or folders) the output must neither be, be inside, nor contain.
        want_dir: The output is a folder (DICOM series, report, prior).
        foreign: For folder outputs, lists the entries of an existing folder that medrecon did
            not write; any entry refuses the folder, with or without ``overwrite``. Default: any
            entry is foreign.
        what: Noun used in messages.

    Returns:
        The output path (``~`` expanded).

    Raises:
        MedreconInputError: The output is an input, exists without ``overwrite``, is a folder
            of someone else's files, is the wrong kind, or cannot be created there.
    """
    p = resolve_user_path(out, what=what)
    for src in protected:
        s = Path(os.fspath(src)).expanduser()
        if overlaps_input(p, s):
            raise MedreconInputError(
                f"refusing to write {what} {str(p)!r}: it is, lies inside, or contains the input "
                f"{str(s)!r}, which medrecon never writes over (not even with --overwrite). "
                "Choose an output path outside the inputs.")
    if p.exists() or p.is_symlink():
        if p.is_symlink() and not p.exists():
            raise MedreconInputError(
                f"{what} {str(p)!r} is a broken symbolic link; remove it or choose another path.")
        if not (p.is_dir() or p.is_file()):
            raise MedreconInputError(
                f"{what} {str(p)!r} exists and is not a regular file or folder (a device, pipe "
                "or socket); medrecon does not write there. Choose another path.")
        if p.is_dir() != want_dir:
            kind, other = ("a folder", "a file") if p.is_dir() else ("a file", "a folder")
            raise MedreconInputError(
                f"{what} {str(p)!r} exists and is {kind}, but medrecon writes {other} there. "
                "Choose another path.")
        if want_dir:
            alien = _foreign(p, foreign)
            if alien:
                shown = ", ".join(repr(a) for a in alien[:3]) + (" ..." if len(alien) > 3 else "")
                raise MedreconInputError(
                    f"{what} {str(p)!r} holds files medrecon did not write ({shown}); "
                    "medrecon never replaces or mixes with other files, even with --overwrite. "
                    "Choose a new or empty folder.")
            if not overwrite and any(p.iterdir()):
                raise OutputExistsError(
                    f"{what} {str(p)!r} already exists (a previous medrecon result); pass "
                    "--overwrite (overwrite=True) to replace it, or choose another path.")
        elif not overwrite:
            raise OutputExistsError(
                f"{what} {str(p)!r} already exists; pass --overwrite (overwrite=True) to replace "
                "it, or choose another path.")
        elif not p.is_file():
            raise MedreconInputError(
                f"{what} {str(p)!r} exists and is not a regular file (a device, pipe or socket); "
                "medrecon does not write there. Choose another path.")
    check_writable_place(p / "x" if (want_dir and p.is_dir()) else p)
    return p


def _foreign(folder: Path, foreign: ForeignEntries | None) -> list[str]:
    if foreign is None:
        return sorted(e.name for e in folder.iterdir())
    return foreign(folder)


# ----------------------------------------------------------------------------------------
# Staged, exclusive, all-or-nothing writing
# ----------------------------------------------------------------------------------------
@dataclass
class _Item:
    target: Path
    tmp: Path
    is_dir: bool
    foreign: ForeignEntries | None = None
    existed: bool = False
    committed: bool = False
    holder: bool = False  # tmp lives in a private temporary folder of its own


@dataclass
class OutputStage:
    """Write a job's outputs under temporary names, then move them all in place, or none.

    Use as a context manager::

        with OutputStage(overwrite=False) as stage:
            write_png(stage.file(out))          # a temporary path beside ``out``
            write_series(stage.folder(out_dir)) # a temporary folder beside ``out_dir``
        # committed here; on an exception every temporary and created folder is removed

    Commit without ``overwrite`` is exclusive: ``os.link`` for files (a plain exclusive create
    where the file system has no hard links) and ``rename`` for folders, so an output that
    appeared meanwhile is never replaced (:class:`OutputExistsError`, and the outputs this stage
    already placed are taken back). With ``overwrite`` files are replaced atomically
    (``os.replace``) and a folder is swapped in, after which only the files medrecon wrote in
    the old folder are deleted. Files get the user's default mode (umask), not ``0600``.
    ``OSError`` raised inside the block or while committing becomes a
    :class:`MedreconInputError` naming the target (no space, permission, read-only...).
    """

    overwrite: bool = False
    _items: list[_Item] = field(default_factory=list)
    _created: list[Path] = field(default_factory=list)

    # -- staging -------------------------------------------------------------------------
    def _parent(self, target: Path) -> Path:
        parent = target.parent if str(target.parent) else Path(".")
        missing = []
        anc = parent
        while not anc.exists():
            missing.append(anc)
            anc = anc.parent
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:
                continue
            except OSError as exc:
                raise MedreconInputError(os_error_message(exc, target)) from None
            self._created.append(d)
        return parent

    def file(self, target: str | os.PathLike, *, keep_name: bool = False,
             together_with: Path | None = None) -> Path:
        """A new temporary file beside ``target`` (same suffix) to write the result into.

        Args:
            target: The output file.
            keep_name: Return ``<private temporary folder>/<target name>`` instead, for writers
                that record the file's own name (a weights file named in its JSON twin).
            together_with: A ``keep_name`` path returned before: put this file in the same
                private folder (writers that write a pair of files side by side).
        """
        target = Path(target)
        parent = self._parent(target)
        from medrecon.io._paths import full_suffix

        try:
            if together_with is not None:
                keep_name = True
                tmp = str(Path(together_with).parent / target.name)
            elif keep_name:
                holder = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".part", dir=parent))
                tmp = str(holder / target.name)
            else:
                fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.",
                                           suffix=f".part{full_suffix(target)}", dir=parent)
                os.close(fd)
        except OSError as exc:
            raise MedreconInputError(os_error_message(exc, target)) from None
        self._items.append(_Item(target, Path(tmp), False, existed=target.exists(),
                                 holder=keep_name))
        return Path(tmp)

    def folder(self, target: str | os.PathLike, *, foreign: ForeignEntries | None = None) -> Path:
        """A new temporary folder beside ``target`` to write the result into.

        Args:
            target: The output folder.
            foreign: Lists the entries of an existing ``target`` medrecon did not write (see
                :func:`check_output`); checked again at commit time, and used to delete only
                medrecon's own files from a replaced folder.
        """
        target = Path(target)
        parent = self._parent(target)
        try:
            tmp = tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".part", dir=parent)
        except OSError as exc:
            raise MedreconInputError(os_error_message(exc, target)) from None
        self._items.append(_Item(target, Path(tmp), True, foreign, existed=target.exists()))
        return Path(tmp)

    # -- context manager -----------------------------------------------------------------
    def __enter__(self) -> OutputStage:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
                self.commit()
            except BaseException:
                self.discard()
                raise
            return False
        target = self._items[-1].target if self._items else None
        self.discard()
        if isinstance(exc, OSError) and target is not None:
            raise MedreconInputError(os_error_message(exc, target)) from None
        return False

    # -- commit / discard ----------------------------------------------------------------
    def commit(self) -> None:
        """Move every staged output into place (see the class docstring)."""
        file_mode, dir_mode = default_modes()
        for item in self._items:
            try:
                if item.is_dir:
                    _chmod_tree(item.tmp, file_mode, dir_mode)
                    self._commit_dir(item)
                else:
                    os.chmod(item.tmp, file_mode)
                    self._commit_file(item)
            except OSError as exc:
                raise MedreconInputError(os_error_message(exc, item.target)) from None
            item.committed = True
        for item in self._items:
            if item.holder:
                shutil.rmtree(item.tmp.parent, ignore_errors=True)

    def _exists_error(self, target: Path) -> OutputExistsError:
        return OutputExistsError(
            f"output {str(target)!r} was created by another program while medrecon was running; "
            "it was left as it is and this run's result was discarded. Choose another path (or "
            "pass --overwrite).")

    def _commit_file(self, item: _Item) -> None:
        if self.overwrite:
            os.replace(item.tmp, item.target)
            return
        try:
            os.link(item.tmp, item.target)
        except FileExistsError:
            raise self._exists_error(item.target) from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK,
                                 getattr(errno, "EOPNOTSUPP", -1)):
                raise
            try:  # no hard links here: reserve the name exclusively, then replace it
                os.close(os.open(item.target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            except FileExistsError:
                raise self._exists_error(item.target) from None
            os.replace(item.tmp, item.target)
            return
        os.unlink(item.tmp)

    def _commit_dir(self, item: _Item) -> None:
        target = item.target
        if not (self.overwrite and target.is_dir() and any(target.iterdir())):
            try:  # rename onto a non-empty folder fails: exclusive
                os.rename(item.tmp, target)
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                    raise self._exists_error(target) from None
                raise
            return
        alien = _foreign(target, item.foreign)
        if alien:
            raise MedreconInputError(
                f"output folder {str(target)!r} now holds files medrecon did not write "
                f"({', '.join(map(repr, alien[:3]))}); it was left as it is. Choose a new folder.")
        backup = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        backup.rmdir()
        os.rename(target, backup)
        try:
            os.rename(item.tmp, target)
        except OSError:
            os.rename(backup, target)
            raise
        # delete only what medrecon wrote; anything that appeared meanwhile is put back
        late = _foreign(backup, item.foreign)
        for entry in backup.iterdir():
            if entry.name in late:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        for name in late:
            dest = target / name
            if not dest.exists():
                os.rename(backup / name, dest)
        try:
            backup.rmdir()
        except OSError:
            pass

    def discard(self) -> None:
        """Remove every temporary, the outputs this stage created, and the folders it made."""
        for item in self._items:
            if item.committed and not item.existed:
                try:
                    if item.is_dir:
                        shutil.rmtree(item.target, ignore_errors=True)
                    else:
                        item.target.unlink(missing_ok=True)
                except OSError:
                    pass
            if item.holder:
                shutil.rmtree(item.tmp.parent, ignore_errors=True)
            elif item.tmp.exists() or item.tmp.is_symlink():
                if item.is_dir:
                    shutil.rmtree(item.tmp, ignore_errors=True)
                else:
                    try:
                        item.tmp.unlink()
                    except OSError:
                        pass
        for d in reversed(self._created):
            try:
                d.rmdir()
            except OSError:
                pass
        self._items.clear()
        self._created.clear()


def _chmod_tree(folder: Path, file_mode: int, dir_mode: int) -> None:
    os.chmod(folder, dir_mode)
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            os.chmod(Path(root) / d, dir_mode)
        for f in files:
            os.chmod(Path(root) / f, file_mode)
