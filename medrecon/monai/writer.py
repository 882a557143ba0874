"""medrecon's derived-DICOM writer as a MONAI :class:`~monai.data.ImageWriter`.

``SaveImage(output_ext=".dcm", writer=MedreconDicomWriter)`` (or any ``SaveImage`` with
``output_ext=".dcm"`` once :mod:`medrecon.monai` is imported: the writer is registered for the
extension) writes through :func:`medrecon.io.save_image`: a 2D image becomes one DICOM file, a
volume a series folder (``<name>/IM00001.dcm`` ...), with geometry from the MetaTensor's
affine, medrecon's file-safety rules (atomic, exclusive, never over an input; an existing
output is refused unless the writer gets ``overwrite=True``) and the derived-series tags
(``DERIVED\\SECONDARY``, new UIDs). Pass reference headers with ``reference=`` (a DICOM file,
folder or a ``MedicalImage`` read from DICOM) to keep the patient and study.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import ImageWriter

__all__ = ["MedreconDicomWriter"]


class MedreconDicomWriter(ImageWriter):
    """Write a channel-first image as a derived DICOM file (2D) or series folder (3D).

    Args (as writer attributes, e.g. ``SaveImage(writer=MedreconDicomWriter,
    output_ext=".dcm")`` then ``writer_obj = MedreconDicomWriter(overwrite=True)``):
        overwrite: Replace a previous medrecon output at the target. Default False.
        reference: DICOM headers to derive from (path, MedicalImage or pydicom Dataset).
        method: Recorded in the series description.
    """

    output_dtype = np.float32

    def __init__(self, overwrite: bool = False, reference: Any = None, method: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(overwrite=overwrite, reference=reference, method=method, **kwargs)
        self.affine: np.ndarray | None = None

    def set_data_array(self, data_array: Any, channel_dim: int | None = 0,
                       squeeze_end_dims: bool = True, **kwargs: Any) -> None:
        arr = data_array.detach().cpu().numpy() if isinstance(data_array, torch.Tensor) \
            else np.asarray(data_array)
        if channel_dim is not None:
            if arr.shape[channel_dim] != 1:
                raise ValueError(f"MedreconDicomWriter writes one channel; got shape {arr.shape}.")
            arr = np.take(arr, 0, axis=channel_dim)
        self.data_obj = np.asarray(arr, dtype=np.float32)

    def set_metadata(self, meta_dict: dict | None = None, resample: bool = False,
                     **options: Any) -> None:
        aff = None if meta_dict is None else meta_dict.get("affine")
        aff = np.eye(4) if aff is None else np.asarray(
            aff.detach().cpu() if isinstance(aff, torch.Tensor) else aff, dtype=np.float64)
        if aff.shape == (3, 3):  # a 2D affine
            full = np.eye(4)
            full[:2, :2], full[:2, 3] = aff[:2, :2], aff[:2, 2]
            aff = full
        self.affine = aff

    def write(self, filename: Any, verbose: bool = False, **kwargs: Any) -> Path:
        from medrecon.io import MedicalImage, save_image

        arr = self.data_obj
        if arr is None:
            raise ValueError("set_data_array first.")
        arr = arr[:, :, None] if arr.ndim == 2 else arr
        image = MedicalImage(arr, self.affine if self.affine is not None else np.eye(4))
        path = Path(str(filename))
        if not image.is_2d:  # a series folder named after the file
            path = path.with_name(path.name[: -len(path.suffix)] if path.suffix else path.name)
            target = f"{path}/"
        else:
            target = str(path.with_suffix(".dcm"))
        return save_image(image, target, overwrite=bool(self.overwrite),
                          reference=self.reference, method=self.method)
