"""Patient-wise cross-validation folds and the in-memory image dataset used for training.

Two datasets ship priors, and each needs its own notion of "patient" so that no patient lands on
both sides of a split:

* Chest X-ray (Kermany et al.): the patient id is in the file name -
  ``person447_virus_921_1.jpeg`` -> ``person447``, ``IM-0629-0001-0002.jpeg`` -> ``IM-0629``,
  ``NORMAL2-IM-0012-0001.jpeg`` -> ``NORMAL2-IM-0012``. Patients are assigned to folds by a
  seeded permutation, then greedily balanced by image count.
* Brain MRI (Cheng et al.): file names are the source's running index; consecutive indices of the
  same class come from one patient. The sorted indices are cut into ``k`` contiguous blocks and
  each cut is moved to the nearest class change, so a run of same-class indices (one patient, or
  several) is never split.

The assignment is deterministic (a function of the file list, ``k`` and ``seed``) and is written to
JSON next to every prior trained on it (:func:`save_folds`), so held-out evaluation can be redone.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medrecon.errors import MedreconInputError

__all__ = [
    "IMAGE_SUFFIXES",
    "FoldAssignment",
    "ImageFolderDataset",
    "brain_folds",
    "list_images",
    "load_folds",
    "make_folds",
    "save_folds",
    "xray_folds",
    "xray_patient_id",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

_XRAY_PATTERNS = (
    re.compile(r"^(person\d+)_"),
    re.compile(r"^(NORMAL2-IM-\d+)-"),
    re.compile(r"^(IM-\d+)-"),
)


def xray_patient_id(name: str) -> str:
    """Return the patient id encoded in a Kermany chest X-ray file name.

    Args:
        name: file name or path, e.g. ``"person447_virus_921_1.jpeg"``.

    Returns:
        ``"person447"``, ``"IM-0629"`` or ``"NORMAL2-IM-0012"``.

    Raises:
        MedreconInputError: when the name matches none of the three known patterns.
    """
    stem = Path(name).name
    for pattern in _XRAY_PATTERNS:
        match = pattern.match(stem)
        if match:
            return match.group(1)
    raise MedreconInputError(
        f"cannot read a patient id from X-ray file name {stem!r}; expected 'personNNN_...', "
        "'IM-XXXX-...' or 'NORMAL2-IM-XXXX-...'. Rename the file, or use scheme='brain' / "
        "scheme='image' for other datasets."
    )


@dataclass(frozen=True)
class FoldAssignment:
    """Which fold each image belongs to.

    Attributes:
        files: relative paths (POSIX style), sorted.
        folds: fold index of each file, same order as ``files``.
        groups: patient / block id of each file (what was kept together).
        k: number of folds.
        scheme: ``"xray"``, ``"brain"`` or ``"image"``.
        seed: seed of the patient permutation (unused by ``"brain"``).
    """

    files: tuple[str, ...]
    folds: tuple[int, ...]
    groups: tuple[str, ...]
    k: int
    scheme: str
    seed: int = 0
    meta: dict = field(default_factory=dict)

    def files_in(self, folds: Sequence[int] | int) -> list[str]:
        """Files whose fold is in ``folds`` (an int or a sequence of ints)."""
        wanted = {folds} if isinstance(folds, int) else set(folds)
        return [f for f, k in zip(self.files, self.folds) if k in wanted]

    def split(self, held_out: int) -> tuple[list[str], list[str]]:
        """Return ``(train_files, held_out_files)`` for one held-out fold."""
        if not 0 <= held_out < self.k:
            raise MedreconInputError(
                f"held-out fold {held_out} is out of range; expected 0 <= fold < {self.k}."
            )
        train = [f for f, k in zip(self.files, self.folds) if k != held_out]
        return train, self.files_in(held_out)

    def digest(self) -> str:
        """sha256 of the assignment (files and folds, in file-name order), to tie a prior to its
        split; independent of the order in which the assignment lists its files."""
        h = hashlib.sha256()
        for f, k in sorted(zip(self.files, self.folds)):
            h.update(f"{f}\t{k}\n".encode())
        return h.hexdigest()

    def to_json(self) -> dict:
        """A JSON-serialisable dict (the format of :func:`save_folds`)."""
        counts = np.bincount(np.asarray(self.folds, dtype=np.int64), minlength=self.k)
        return {
            "format": "medrecon-folds-v1",
            "scheme": self.scheme,
            "k": self.k,
            "seed": self.seed,
            "sha256": self.digest(),
            "images_per_fold": counts.tolist(),
            "groups_per_fold": [
                len({g for g, k in zip(self.groups, self.folds) if k == i}) for i in range(self.k)
            ],
            "meta": self.meta,
            "files": {f: {"fold": k, "group": g} for f, k, g in zip(self.files, self.folds, self.groups)},
        }


def list_images(root: str | Path) -> list[str]:
    """Relative POSIX paths of every image file under ``root`` (recursive, sorted).

    Raises:
        MedreconInputError: when ``root`` is not a directory or holds no images.
    """
    root = Path(root)
    if not root.is_dir():
        raise MedreconInputError(
            f"training data directory {str(root)!r} does not exist or is not a directory; "
            "pass the folder that holds the images (sub-folders are searched)."
        )
    files = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not files:
        raise MedreconInputError(
            f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {str(root)!r}; expected a "
            "folder of 2-D grayscale images."
        )
    return files


def _check_k(k: int, n_groups: int) -> None:
    if not isinstance(k, int) or k < 2:
        raise MedreconInputError(f"number of folds must be an int >= 2, got {k!r}.")
    if n_groups < k:
        raise MedreconInputError(
            f"cannot make {k} folds from {n_groups} patients/blocks; use fewer folds or more data."
        )


def _balanced_group_folds(groups: list[str], k: int, seed: int) -> dict[str, int]:
    """Seeded permutation of groups, then greedy assignment to the least-filled fold."""
    sizes: dict[str, int] = {}
    for g in groups:
        sizes[g] = sizes.get(g, 0) + 1
    names = sorted(sizes)
    order = np.random.default_rng(seed).permutation(len(names))
    # Largest groups first (stable under the permutation) so the greedy fill balances well.
    shuffled = [names[i] for i in order]
    shuffled.sort(key=lambda g: -sizes[g])
    fill = [0] * k
    out: dict[str, int] = {}
    for g in shuffled:
        target = min(range(k), key=lambda i: (fill[i], i))
        out[g] = target
        fill[target] += sizes[g]
    return out


def xray_folds(files: Sequence[str], k: int = 5, *, seed: int = 0) -> FoldAssignment:
    """Patient-wise folds for the Kermany chest X-ray naming scheme.

    Args:
        files: relative image paths (any order); their base names carry the patient id.
        k: number of folds.
        seed: seed of the patient permutation (default 0).
    """
    files = sorted(files)
    groups = [xray_patient_id(f) for f in files]
    _check_k(k, len(set(groups)))
    fold_of = _balanced_group_folds(groups, k, seed)
    return FoldAssignment(
        files=tuple(files), folds=tuple(fold_of[g] for g in groups), groups=tuple(groups),
        k=k, scheme="xray", seed=seed,
    )


def _brain_index(name: str) -> int:
    stem = Path(name).stem
    if not stem.isdigit():
        raise MedreconInputError(
            f"brain MRI file name {Path(name).name!r} is not a running index; expected e.g. "
            "'715.jpg'. Use scheme='image' for other naming."
        )
    return int(stem)


def brain_folds(files: Sequence[str], k: int = 5) -> FoldAssignment:
    """Folds of contiguous running-index blocks for the Cheng brain MRI dataset.

    Files are sorted by index and cut into ``k`` blocks of about equal size; a cut is moved to a
    nearby position where the class (parent folder) changes when one lies within 10% of a fold,
    because consecutive indices of one class come from one patient. Otherwise the cut stays, and
    at most the one patient whose slices straddle it is split.

    Args:
        files: relative paths ``<class>/<index>.<ext>``.
        k: number of folds.
    """
    items = sorted(((_brain_index(f), Path(f).parent.as_posix(), f) for f in files))
    n = len(items)
    # Runs: maximal stretches of consecutive sorted entries with the same class.
    run_id, runs = [], 0
    for i, (_, cls, _) in enumerate(items):
        if i > 0 and cls != items[i - 1][1]:
            runs += 1
        run_id.append(runs)
    _check_k(k, n)
    change_points = [i for i in range(1, n) if run_id[i] != run_id[i - 1]]
    cuts: list[int] = []
    for j in range(1, k):
        ideal = round(j * n / k)
        lo = cuts[-1] if cuts else 0
        candidates = [c for c in change_points if c > lo]
        if not candidates:
            cut = max(lo + 1, ideal)
        else:
            cut = min(candidates, key=lambda c: (abs(c - ideal), c))
            # Only snap to a class change close by (10% of a fold): the source's class runs are
            # long, so a far snap would unbalance the folds; a cut inside a run then splits at
            # most the one patient whose slices straddle it.
            if abs(cut - ideal) > max(1, n // (10 * k)):
                cut = max(lo + 1, ideal)
        # every fold keeps at least one image (a snap near the end left the last one empty)
        cuts.append(min(max(cut, lo + 1), n - (k - j)))
    folds = np.searchsorted(np.asarray(cuts), np.arange(n), side="right")
    out_files = tuple(f for _, _, f in items)
    groups = tuple(f"block{int(v)}" for v in folds)
    return FoldAssignment(
        files=out_files, folds=tuple(int(v) for v in folds), groups=groups, k=k, scheme="brain",
        meta={"index_ranges": [
            [items[a][0], items[b - 1][0]] for a, b in zip([0, *cuts], [*cuts, n])
        ]},
    )


def make_folds(
    root: str | Path, *, scheme: str = "auto", k: int = 5, seed: int = 0
) -> FoldAssignment:
    """Build the fold assignment of every image under ``root``.

    Args:
        root: dataset folder.
        scheme: ``"xray"`` (patient id in the name), ``"brain"`` (contiguous index blocks),
            ``"image"`` (each image its own group; only for data without patient structure),
            or ``"auto"`` (default): ``"xray"`` if every name parses, else ``"brain"`` if every
            name is a number, else an error.
        k: number of folds (default 5).
        seed: seed of the patient permutation (default 0).
    """
    files = list_images(root)
    if scheme == "auto":
        names = [Path(f).name for f in files]
        if all(any(p.match(n) for p in _XRAY_PATTERNS) for n in names):
            scheme = "xray"
        elif all(Path(n).stem.isdigit() for n in names):
            scheme = "brain"
        else:
            raise MedreconInputError(
                f"cannot tell the fold scheme of {str(root)!r} from its file names (e.g. "
                f"{names[0]!r}); pass scheme='xray', 'brain' or 'image' explicitly (CLI: --scheme)."
            )
    if scheme == "xray":
        return xray_folds(files, k, seed=seed)
    if scheme == "brain":
        return brain_folds(files, k)
    if scheme == "image":
        _check_k(k, len(files))
        fold_of = _balanced_group_folds(files, k, seed)
        return FoldAssignment(
            files=tuple(files), folds=tuple(fold_of[f] for f in files), groups=tuple(files),
            k=k, scheme="image", seed=seed,
        )
    raise MedreconInputError(
        f"unknown fold scheme {scheme!r}; expected 'auto', 'xray', 'brain' or 'image'."
    )


def save_folds(folds: FoldAssignment, path: str | Path) -> Path:
    """Write the assignment as JSON (see :meth:`FoldAssignment.to_json`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(folds.to_json(), indent=1, sort_keys=True) + "\n")
    return path


def check_folds_output(path: str | Path, *, data_dir: str | Path, overwrite: bool) -> Path:
    """Where ``medrecon train folds`` may write, checked before any work: never in or over the
    data (the record would become a training file, or replace an image), an existing file only
    with ``overwrite`` and only if it is a fold record (:func:`load_folds` reads it).

    Raises:
        MedreconInputError: naming the path and the fix.
    """
    from medrecon.io.outputs import check_output

    out = check_output(path, overwrite=overwrite, protected=[data_dir], what="folds file")
    if out.is_file():
        try:
            load_folds(out)
        except MedreconInputError:
            raise MedreconInputError(
                f"{str(out)!r} exists and is not a fold record medrecon wrote; --overwrite "
                "replaces only those. Choose another --out, or move that file away yourself."
            ) from None
    return out


def load_folds(path: str | Path) -> FoldAssignment:
    """Read a JSON written by :func:`save_folds` and check its sha256."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        files = sorted(data["files"])
        fa = FoldAssignment(
            files=tuple(files),
            folds=tuple(int(data["files"][f]["fold"]) for f in files),
            groups=tuple(str(data["files"][f]["group"]) for f in files),
            k=int(data["k"]), scheme=str(data["scheme"]), seed=int(data.get("seed", 0)),
            meta=dict(data.get("meta", {})),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MedreconInputError(
            f"cannot read fold file {str(path)!r} ({exc}); expected JSON written by save_folds."
        ) from exc
    if fa.digest() != data.get("sha256"):
        raise MedreconInputError(
            f"fold file {str(path)!r} was edited: its sha256 does not match its content; "
            "regenerate it with `medrecon train folds`."
        )
    return fa


#: Pillow modes of 8 bits per sample: what the priors train on (grey, palette, colour).
EIGHT_BIT_MODES = ("1", "L", "P", "LA", "PA", "La", "RGB", "RGBA", "RGBX", "RGBa", "CMYK",
                   "YCbCr", "LAB", "HSV")


def read_training_image(path: str | Path, resolution: int) -> np.ndarray:
    """One training image as the prior sees it: 8-bit grayscale, Lanczos-resized to
    ``resolution`` x ``resolution`` (left as is when already that size).

    Raises:
        MedreconInputError: unreadable file.
    """
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.mode not in EIGHT_BIT_MODES:  # 16-bit and float: convert("L") clips them
                    raise MedreconInputError(
                        f"training image {str(path)!r} has {im.mode} pixels (16-bit or float); "
                        "the priors train on 8-bit images, and converting it here would clip "
                        "its values. Window it and save it as an 8-bit PNG first.")
                im = im.convert("L")
                if im.size != (resolution, resolution):
                    im = im.resize((resolution, resolution), Image.Resampling.LANCZOS)
                return np.asarray(im, dtype=np.uint8).copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise MedreconInputError(
            f"training image {str(path)!r} claims more pixels than medrecon opens ({exc}); it "
            "is corrupt or hostile, or far larger than a scan.") from None
    except OSError as exc:
        raise MedreconInputError(
            f"cannot read training image {str(path)!r} ({exc}); expected a readable PNG/JPEG."
        ) from exc


def pack_dataset(data_dir: str | Path, out_dir: str | Path, *, resolution: int = 128,
                 overwrite: bool = False) -> dict:
    """Copy a training folder at training resolution, to move it where the original is too big.

    Every image is stored as :func:`read_training_image` returns it (8-bit grayscale, Lanczos-
    resized to ``resolution``), losslessly as PNG, under its **original relative name** (a
    ``.jpeg`` name may hold PNG bytes: readers go by content). The names are kept so that
    the fold assignment, its sha256 and the held-out lists are those of the original folder;
    training on the pack sees exactly the pixels training on the original would. A
    ``pack.json`` records the source, resolution and count.

    Returns:
        The ``pack.json`` record.

    Raises:
        MedreconInputError: missing/empty ``data_dir``; ``out_dir`` equal to or inside it, or a
            non-empty folder that is not a pack (nothing there is overwritten); a resolution
            that is not a power of two (training could not use the pack).
    """
    from PIL import Image

    if not isinstance(resolution, int) or resolution < 4 or resolution & (resolution - 1):
        raise MedreconInputError(f"resolution must be a power of two >= 4 (as for training), "
                                 f"got {resolution!r}.")
    src, dst = Path(data_dir), Path(out_dir)
    files = list_images(src)
    s_res, d_res = src.resolve(), dst.resolve()
    if d_res == s_res or s_res in d_res.parents or d_res in s_res.parents:
        raise MedreconInputError(f"pack folder {str(dst)!r} must be outside {str(src)!r} and not "
                                 "hold it, so that the originals are never touched.")
    if dst.is_dir() and any(dst.iterdir()):
        if not _is_pack(dst):
            raise MedreconInputError(f"{str(dst)!r} is a non-empty folder that is not a training "
                                     "pack; choose an empty or new --out folder.")
        alien = _pack_foreign(dst)
        if alien:
            raise MedreconInputError(
                f"{str(dst)!r} is a training pack that also holds files it did not write "
                f"({', '.join(map(repr, alien[:3]))}); medrecon never removes them, even with "
                "--overwrite. Move them out, or choose another --out.")
        if not overwrite:
            raise MedreconInputError(f"{str(dst)!r} already holds a training pack; pass "
                                     "--overwrite to replace it, or choose another --out.")
    from medrecon.io.outputs import OutputStage

    # written into a temporary folder and moved into place complete: a failure or Ctrl-C
    # leaves no half pack (and an existing pack as it was)
    with OutputStage(overwrite=overwrite) as stage:
        tmp = stage.folder(dst, foreign=_pack_foreign)
        for rel in files:
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(read_training_image(src / rel, resolution), mode="L").save(
                target, format="PNG", optimize=True)
        record = {"format": PACK_FORMAT, "source": str(src.resolve()),
                  "resolution": resolution, "images": len(files),
                  "content": "8-bit grayscale PNG bytes under the original relative names",
                  "files": sorted(Path(rel).as_posix() for rel in files)}
        (tmp / "pack.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


#: ``format`` of a training pack's ``pack.json``.
PACK_FORMAT = "medrecon-training-pack-v1"


def _pack_foreign(folder: Path) -> list[str]:
    """The top-level entries of ``folder`` holding anything its pack did not write: a file
    not listed in its ``pack.json`` (a pack from before the list: anything but a PNG), or every
    entry of a folder that is no pack. ``--overwrite`` replaced the whole folder, a user's
    notes and data inside it included."""
    if not _is_pack(folder):
        return sorted(e.name for e in folder.iterdir())
    listed = set(json.loads((folder / "pack.json").read_text()).get("files") or [])
    alien = set()
    for p in folder.rglob("*"):
        if p.is_dir() and not p.is_symlink():
            continue
        rel = p.relative_to(folder).as_posix()
        ours = rel == "pack.json" or (rel in listed if listed else
                                      p.suffix.lower() == ".png" and not p.is_symlink())
        if not ours:
            alien.add(rel.split("/")[0])
    return sorted(alien)


def _is_pack(folder: Path) -> bool:
    """Whether ``folder`` is a training pack medrecon wrote (its ``pack.json``)."""
    try:
        return json.loads((folder / "pack.json").read_text()).get("format") == PACK_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


class ImageFolderDataset(torch.utils.data.Dataset):
    """Grayscale images resized to ``resolution``, cached in memory as one uint8 tensor.

    Items are float tensors ``[1, R, R]`` in [-1, 1] (generator space).

    Args:
        root: dataset folder.
        files: relative paths under ``root`` to load (e.g. a fold split).
        resolution: side length R of the square output (images are resized, not cropped:
            both shipped datasets are already square or near square).
    """

    def __init__(self, root: str | Path, files: Sequence[str], *, resolution: int = 128) -> None:
        if not isinstance(resolution, int) or resolution < 4 or resolution & (resolution - 1):
            raise MedreconInputError(
                f"resolution must be a power of two >= 4, got {resolution!r}."
            )
        if len(files) == 0:
            raise MedreconInputError("no files given to ImageFolderDataset; expected at least one.")
        self.root = Path(root)
        self.files = list(files)
        self.resolution = resolution
        data = torch.empty(len(self.files), 1, resolution, resolution, dtype=torch.uint8)
        for i, rel in enumerate(self.files):
            data[i, 0] = torch.from_numpy(read_training_image(self.root / rel, resolution))
        self.data = data

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.data[index].float() / 127.5 - 1.0

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        """Float batch ``[N, 1, R, R]`` in [-1, 1] for integer ``indices`` (fast path)."""
        return self.data[indices].float() / 127.5 - 1.0
