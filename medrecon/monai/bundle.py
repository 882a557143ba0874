"""Helpers for the shipped MONAI bundles' configs (``bundles/*/configs``)."""

from __future__ import annotations

from pathlib import Path

from medrecon.errors import MedreconInputError

__all__ = ["BUNDLE_SUFFIXES", "bundle_datalist"]

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
                    output_ext: str = ".nii.gz", overwrite: bool = False) -> list[dict[str, str]]:
    """``[{"image": ..., ["mask": ...], ["label": ...]}]`` for a bundle run.

    Images are the readable files of ``dataset_dir`` in sorted order. A mask (nonzero =
    missing) and a reference are found by file stem in their folders (a ``_lr`` suffix of the
    image stem is dropped when looking for its reference, as in the shipped samples).

    With ``output_dir``, the files ``SaveImaged`` will write there
    (``<stem>_<output_postfix><output_ext>``) are checked before any work: two images may not
    share one (``a.png`` and ``a.nii.gz``: the second result would replace the first), and one
    that exists is refused unless ``overwrite`` (``SaveImaged`` replaces files silently).

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
        if (out.exists() or out.is_symlink()) and not overwrite:
            raise MedreconInputError(
                f"{str(out)!r} exists; pass --overwrite true to replace it, or another "
                "--output_dir.")
