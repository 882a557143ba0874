"""medrecon's readers as a MONAI :class:`~monai.data.ImageReader`.

``LoadImage(reader=MedreconReader())`` (or ``LoadImaged(keys, reader=MedreconReader())``)
reads through :func:`medrecon.io.load_image`, which adds what MONAI's default readers do not:
DICOM series folders with series selection (``series_uid``) and slice sorting, MONOCHROME1
inversion, enhanced multi-frame DICOM, 4D volume selection, header size bounds before any
allocation, and the exit-2 messages for bad files; MetaImage and NRRD come through SimpleITK
with the same checks. The array is channel-less with a RAS ``affine`` (add
``EnsureChannelFirst``), like MONAI's NIfTI reader: ``(X, Y)`` with a 3x3 affine for a 2D image
whose geometry is all in-plane (a PNG, a radiograph), ``(X, Y, Z)`` with a 4x4 affine
otherwise - including a single slice placed in 3D (a CT or MR slice with its position and
thickness), which keeps its 4x4 affine as ``(X, Y, 1)`` instead of losing its position.

A ``LoadImage`` given a reader also tries MONAI's own readers when that reader fails, which
would turn medrecon's refusal of a bad file into a ``RuntimeError`` (or let another reader
read what medrecon refuses). Pass the reader at call time too, ``LoadImage(...)(path,
reader=reader)``, for medrecon's errors unchanged (as :func:`medrecon.pipeline.reconstruct_file`
does).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import ImageReader
from monai.utils import MetaKeys, SpaceKeys

__all__ = ["MedreconReader", "load_scan"]

#: Metadata of a :class:`~medrecon.io.MedicalImage` that is not a plain value and cannot travel
#: in a MetaTensor (``LoadImage`` accepts only numbers, strings, arrays and containers of them).
NOT_IN_META = ("dicom_headers", "dicom_frames")


def _flat_2d(affine: np.ndarray) -> np.ndarray | None:
    """The 3x3 affine of a one-slice image whose 4x4 ``affine`` is all in-plane, else None."""
    a2 = np.eye(3)
    a2[:2, :2], a2[:2, 2] = affine[:2, :2], affine[:2, 3]
    embedded = np.eye(4)
    embedded[:2, :2], embedded[:2, 3] = a2[:2, :2], a2[:2, 2]
    return a2 if np.array_equal(embedded, affine) else None


class MedreconReader(ImageReader):
    """Read any file or DICOM folder :func:`medrecon.io.load_image` reads.

    Args:
        series_uid: For a folder holding several DICOM series, the one to read.
        volume: For 4D input, the 0-based volume to read.

    Attributes:
        dicom_headers: The pixel-less DICOM headers (one :class:`pydicom.Dataset` per slice, in
            array order) of the last image turned into an array, empty for other formats. They
            are not put in the MetaTensor (``LoadImage`` refuses such values there); give them to
            :class:`~medrecon.monai.MedreconDicomWriter` (``reference=``) to derive a series
            that keeps the patient and study.
    """

    def __init__(self, series_uid: str | None = None, volume: int | None = None) -> None:
        super().__init__()
        self.series_uid, self.volume = series_uid, volume
        self.dicom_headers: list = []

    def verify_suffix(self, filename: Sequence[str] | str) -> bool:
        from medrecon.io._paths import READ_SUFFIXES, full_suffix

        names = [filename] if isinstance(filename, (str, Path)) else list(filename)
        return all(Path(n).is_dir() or full_suffix(Path(n)) in READ_SUFFIXES for n in names)

    def read(self, data: Sequence[str] | str, **kwargs: Any) -> Any:
        from medrecon.io import load_image

        names = [data] if isinstance(data, (str, Path)) else list(data)
        imgs = [load_image(n, series_uid=self.series_uid, volume=self.volume) for n in names]
        return imgs[0] if len(imgs) == 1 else imgs

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        imgs = img if isinstance(img, list) else [img]
        first = imgs[0]
        aff = np.asarray(first.affine, dtype=np.float64)
        flat = _flat_2d(aff) if first.is_2d else None
        if flat is not None:  # a 2D image: (X, Y) with its 2D affine
            aff = flat
        arrays = []
        for im in imgs:
            arr = np.asarray(im.array, dtype=np.float32)
            arrays.append(arr[:, :, 0] if flat is not None else arr)
        # None values (e.g. no modality) are left out: a DataLoader cannot collate them
        meta = {k: v for k, v in first.meta.items() if k not in NOT_IN_META and v is not None}
        meta[MetaKeys.AFFINE] = aff
        meta[MetaKeys.ORIGINAL_AFFINE] = aff.copy()
        meta[MetaKeys.SPATIAL_SHAPE] = np.asarray(arrays[0].shape)
        meta[MetaKeys.SPACE] = SpaceKeys.RAS
        meta["filename_or_obj"] = str((first.meta.get("source_paths") or [""])[0])
        self.dicom_headers = list(first.meta.get("dicom_headers") or [])
        data = arrays[0] if len(arrays) == 1 else np.stack(arrays, axis=0)
        meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = float("nan") if len(arrays) == 1 else 0
        return data, meta


class _DropRecords:
    """A logging filter that drops every record (for the duration of a ``with``)."""

    def filter(self, record: Any) -> bool:
        return False


def load_scan(path: str | Path, *, series_uid: str | None = None,
              volume: int | None = None) -> tuple[Any, list]:
    """Read a scan with ``LoadImage(reader=MedreconReader(...), image_only=True,
    ensure_channel_first=True)``, the reader also passed at call time (see the module notes).

    Building a ``LoadImage`` instantiates MONAI's default readers; in MONAI 1.6 one of them
    (``NvImgCodecPydicomReader``) warns and logs, on every machine without nvImageCodec, that
    it could not register as pydicom's decoder. Both are silenced here: they are about readers
    this call does not use, and would show up in the CLI's one-line-per-event output.

    Args:
        path: A file or DICOM folder.
        series_uid, volume: As :class:`MedreconReader`.

    Returns:
        ``(image, dicom_headers)``: the channel-first MetaTensor ``(1, X, Y[, Z])`` and
        :attr:`MedreconReader.dicom_headers`.

    Raises:
        MedreconInputError: Everything :func:`medrecon.io.load_image` refuses, unchanged.
    """
    import logging
    import warnings

    from monai.transforms import LoadImage

    reader = MedreconReader(series_uid=series_uid, volume=volume)
    plugin_log = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    drop = _DropRecords()
    plugin_log.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader",
                                    category=UserWarning)
            loader = LoadImage(reader=reader, image_only=True, ensure_channel_first=True)
    finally:
        plugin_log.removeFilter(drop)
    image = loader(str(path), reader=reader)
    return image, reader.dicom_headers
