"""medrecon's readers as a MONAI :class:`~monai.data.ImageReader`.

``LoadImage(reader=MedreconReader())`` (or ``LoadImaged(keys, reader=MedreconReader())``)
reads through :func:`medrecon.io.load_image`, which adds what MONAI's default readers do not:
DICOM series folders with series selection (``series_uid``) and slice sorting, MONOCHROME1
inversion, enhanced multi-frame DICOM, 4D volume selection, header size bounds before any
allocation, and the exit-2 messages for bad files. The array is channel-less ``(X, Y[, Z])``
with a RAS ``affine`` (add ``EnsureChannelFirst``), like MONAI's NIfTI reader.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import ImageReader
from monai.utils import MetaKeys, SpaceKeys

__all__ = ["MedreconReader"]


class MedreconReader(ImageReader):
    """Read any file or DICOM folder :func:`medrecon.io.load_image` reads.

    Args:
        series_uid: For a folder holding several DICOM series, the one to read.
        volume: For 4D input, the 0-based volume to read.
    """

    def __init__(self, series_uid: str | None = None, volume: int | None = None) -> None:
        super().__init__()
        self.series_uid, self.volume = series_uid, volume

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
        arrays, meta = [], {}
        for i, im in enumerate(imgs):
            arr = np.asarray(im.array, dtype=np.float32)
            arr = arr[:, :, 0] if im.is_2d else arr
            if i == 0:
                aff = np.asarray(im.affine, dtype=np.float64)
                if im.is_2d:  # a 2D image: its 2D affine (rows/columns of the first two axes)
                    a2 = np.eye(3)
                    a2[:2, :2], a2[:2, 2] = aff[:2, :2], aff[:2, 3]
                    aff = a2
                meta = {k: v for k, v in im.meta.items()
                        if k not in ("dicom_headers", "dicom_frames")}
                meta[MetaKeys.AFFINE] = aff
                meta[MetaKeys.ORIGINAL_AFFINE] = aff.copy()
                meta[MetaKeys.SPATIAL_SHAPE] = np.asarray(arr.shape)
                meta[MetaKeys.SPACE] = SpaceKeys.RAS
                meta["filename_or_obj"] = str((im.meta.get("source_paths") or [""])[0])
            arrays.append(arr)
        data = arrays[0] if len(arrays) == 1 else np.stack(arrays, axis=0)
        meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = float("nan") if len(arrays) == 1 else 0
        return data, meta
