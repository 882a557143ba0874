"""Helpers for the shipped MONAI bundles' configs (``bundles/*/configs``)."""

from __future__ import annotations

from pathlib import Path

from medrecon.errors import MedreconInputError

__all__ = ["BUNDLE_SUFFIXES", "bundle_datalist"]

#: Files the bundles read with MONAI's ``LoadImaged`` (its default readers).
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
                    reference_dir: str | Path | None = None) -> list[dict[str, str]]:
    """``[{"image": ..., ["mask": ...], ["label": ...]}]`` for a bundle run.

    Images are the readable files of ``dataset_dir`` in sorted order. A mask (nonzero =
    missing) and a reference are found by file stem in their folders (a ``_lr`` suffix of the
    image stem is dropped when looking for its reference, as in the shipped samples).

    Raises:
        MedreconInputError: a missing folder, no images, an image without its mask or reference.
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
    return out
