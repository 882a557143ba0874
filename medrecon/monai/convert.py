"""MetaTensor, MedicalImage and plain arrays: one image in, the same kind out.

MONAI loads a scan as a channel-first :class:`monai.data.MetaTensor` ``(C, X, Y[, Z])`` whose
``affine`` maps voxels to RAS millimetres (``LoadImage(image_only=True,
ensure_channel_first=True)``). medrecon's pipeline works on :class:`medrecon.io.MedicalImage`
``(X, Y, Z)``. :func:`to_medical_image` converts any of MetaTensor, MedicalImage or an array
with an affine, checking it before any work, and returns the function that turns a result
back into the input's kind, with the affine and ``pixdim`` of the result (``spatial_shape`` and
``original_affine`` stay the source file's grid, as after MONAI's ``Spacingd``) and the
operation recorded in ``applied_operations`` (MONAI's trace of what was done to the data).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np
import torch

from medrecon.errors import MedreconInputError

__all__ = ["to_medical_image", "record_operation", "regridded_operations", "meta_tracking"]


@contextmanager
def meta_tracking() -> Iterator[bool]:
    """Track MetaTensor metadata inside the block (medrecon needs the affine) whatever
    ``monai.data.set_track_meta`` says outside it; yields whether tracking was on before, so
    that the caller returns plain tensors when it was off, as MONAI's transforms do."""
    from monai.data import get_track_meta, set_track_meta

    before = get_track_meta()
    set_track_meta(True)
    try:
        yield before
    finally:
        set_track_meta(before)


def _is_metatensor(x: Any) -> bool:
    try:
        from monai.data import MetaTensor
    except ImportError:  # pragma: no cover - MONAI is a dependency
        return False
    return isinstance(x, MetaTensor)


def to_medical_image(image: Any, *, affine: Any = None) -> tuple[Any, Callable[[Any, dict], Any]]:
    """Convert ``image`` for the pipeline; return it and the function that converts a result
    back to the input's kind.

    Args:
        image: A :class:`medrecon.io.MedicalImage`; a channel-first MetaTensor ``(1, X, Y)`` or
            ``(1, X, Y, Z)`` (one channel: the priors are grey-scale); or a numpy array / tensor
            ``(X, Y)`` or ``(X, Y, Z)`` (then ``affine`` gives its geometry, default identity).
        affine: 4x4 voxel-to-RAS affine of an array input. Not allowed with the other kinds
            (they carry their own).

    Returns:
        ``(MedicalImage, back)`` where ``back(result_image, info)`` returns the result as the
        input's kind.

    Raises:
        MedreconInputError: a MetaTensor with several channels or no channel axis, an affine
            given twice, a wrong-sized affine.
    """
    from medrecon.io import MedicalImage

    if isinstance(image, MedicalImage):
        if affine is not None:
            raise MedreconInputError("affine= is only for arrays; a MedicalImage carries its own.")
        return image, lambda out, info: out
    if _is_metatensor(image):
        if affine is not None:
            raise MedreconInputError("affine= is only for arrays; a MetaTensor carries its own.")
        spatial = image.meta.get("spatial_shape")
        if spatial is not None and tuple(int(v) for v in np.ravel(spatial)) == tuple(image.shape):
            raise MedreconInputError(
                f"the MetaTensor {tuple(image.shape)} has no channel axis (its shape is its "
                "spatial shape); make it channel-first with monai.transforms.EnsureChannelFirst() "
                "or LoadImage(image_only=True, ensure_channel_first=True).")
        if image.ndim not in (3, 4):
            raise MedreconInputError(
                f"the MetaTensor has shape {tuple(image.shape)}; expected channel-first (1, X, Y) "
                "or (1, X, Y, Z), e.g. from LoadImage(image_only=True, ensure_channel_first=True).")
        if image.shape[0] != 1:
            raise MedreconInputError(
                f"the MetaTensor has {image.shape[0]} channels (shape {tuple(image.shape)}); the "
                "priors are grey-scale. Select one channel or convert colour to grey first "
                "(e.g. monai.transforms.Lambda(lambda x: x.mean(0, keepdim=True))).")
        arr = image.as_tensor().detach().cpu()[0].numpy()
        aff = np.asarray(image.affine.detach().cpu() if isinstance(image.affine, torch.Tensor)
                         else image.affine, dtype=np.float64)
        if aff.shape == (3, 3):  # a 2D affine of a 2D image: embed in 3D
            full = np.eye(4)
            full[:2, :2], full[:2, 3] = aff[:2, :2], aff[:2, 2]
            aff = full
        two_d = arr.ndim == 2
        fmt = image.meta.get("format")  # a file's format, as MedreconReader reports it: a DICOM
        # series is cut along its acquired slices like medrecon.io's image of the same file
        med = MedicalImage(arr if not two_d else arr[:, :, None], aff,
                           {"format": fmt if isinstance(fmt, str) else "metatensor"})
        source = image

        def back(out: Any, info: dict) -> Any:
            return _to_metatensor(out, source, info, two_d=two_d)

        return med, back
    if isinstance(image, (np.ndarray, torch.Tensor)):
        arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        aff = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
        if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
            raise MedreconInputError(f"affine must be a finite 4x4 matrix; got shape {aff.shape}.")
        if arr.ndim not in (2, 3):
            raise MedreconInputError(
                f"the array has shape {arr.shape}; expected (X, Y) or (X, Y, Z). For MONAI "
                "channel-first data pass the MetaTensor itself.")
        two_d = arr.ndim == 2
        med = MedicalImage(arr[:, :, None] if two_d else arr, aff, {"format": "array"})
        as_tensor = isinstance(image, torch.Tensor)

        def back_array(out: Any, info: dict) -> Any:
            a = np.asarray(out.array)
            a = a[:, :, 0] if two_d else a
            return torch.from_numpy(np.ascontiguousarray(a)) if as_tensor else a

        return med, back_array
    raise MedreconInputError(
        f"expected a MetaTensor, a medrecon.io.MedicalImage or an array with an affine; got "
        f"{type(image).__name__}. Load files with monai.transforms.LoadImage or "
        "medrecon.io.load_image.")


def record_operation(info: dict, orig_size: tuple[int, ...], orig_affine: np.ndarray, *,
                     name: str = "Reconstruct") -> dict:
    """The ``applied_operations`` entry of a reconstruction, or of another operation ``name``
    that changes the grid without an inverse (MONAI's trace format: ``Invertd`` across it
    stops with MONAI's transform-mismatch error instead of undoing earlier steps on the wrong
    grid)."""
    from monai.utils import TraceKeys

    extra = {k: info[k] for k in ("task", "method", "scale", "plane", "prior", "seed")
             if k in info}
    extra["affine"] = np.asarray(orig_affine).tolist()
    return {TraceKeys.CLASS_NAME: name, TraceKeys.ID: 0,
            TraceKeys.ORIG_SIZE: tuple(int(s) for s in orig_size),
            TraceKeys.EXTRA_INFO: extra, TraceKeys.DO_TRANSFORM: True}


#: Classes whose ``applied_operations`` entries stay in the trace of an image put on a new grid
#: (:func:`regridded_operations`): medrecon's own records and the intensity window, which do
#: not depend on the grid.
GRID_FREE_OPERATIONS = ("IntensityWindowd", "Reconstruct", "SimulateDegradation")


def regridded_operations(ops: Any, record: dict) -> list:
    """The trace of an image put on a new grid by ``record`` (:func:`record_operation`): the
    entries of grid-free operations (:data:`GRID_FREE_OPERATIONS`), then ``record``. The
    others (``Spacingd``, ``Orientationd``, ``SpatialPadd``...) were applied on the old grid;
    their inverse would undo them on the wrong one (MONAI >= 1.5 looks past entries that are
    not its own), so they leave the trace and ``record`` names them (``extra_info``
    ``"earlier"``): ``Invertd`` over them stops with MONAI's transform-mismatch error."""
    from monai.utils import TraceKeys

    kept, earlier = [], []
    for op in ops:
        (kept if op.get(TraceKeys.CLASS_NAME) in GRID_FREE_OPERATIONS else earlier).append(op)
    if earlier:
        record = {**record, TraceKeys.EXTRA_INFO: {
            **record[TraceKeys.EXTRA_INFO],
            "earlier": [str(op.get(TraceKeys.CLASS_NAME)) for op in earlier]}}
    return [*kept, record]


def regridded_meta(meta: dict, affine: Any) -> dict:
    """A copy of ``meta`` for the same image on a new grid: its ``affine`` and, where present,
    the voxel sizes of its NIfTI-style ``pixdim`` (``pixdim[1:]``; one shorter than the grid's
    dimensions is rewritten as ``[1, *spacing, 1, ...]``, 8 long). ``spatial_shape`` and
    ``original_affine`` stay the source file's grid, as after MONAI's ``Spacingd``:
    ``SaveImage(resample=True)`` writes onto that grid."""
    from monai.utils import MetaKeys

    aff = np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine,
                     dtype=np.float64)
    out = dict(meta)
    out[MetaKeys.AFFINE] = torch.as_tensor(aff, dtype=torch.float64)
    nd = aff.shape[0] - 1
    spacing = np.linalg.norm(aff[:nd, :nd], axis=0)
    if "pixdim" in out:
        pix = np.array(out["pixdim"], dtype=np.float64, copy=True).ravel()
        if pix.size < 1 + nd:
            pix = np.ones(max(8, 1 + nd))
        pix[1:1 + nd] = spacing
        out["pixdim"] = pix
    return out


def _to_metatensor(out: Any, source: Any, info: dict, *, two_d: bool) -> Any:
    from monai.data import MetaTensor

    arr = np.asarray(out.array, dtype=np.float32)
    arr = arr[:, :, 0] if two_d else arr
    aff = np.asarray(out.affine, dtype=np.float64)
    src_aff = np.asarray(source.affine.detach().cpu() if isinstance(source.affine, torch.Tensor)
                         else source.affine)
    if two_d and src_aff.shape == (3, 3):
        a2 = np.eye(3)
        a2[:2, :2], a2[:2, 2] = aff[:2, :2], aff[:2, 3]
        aff = a2
    meta = regridded_meta(source.meta, aff)
    record = record_operation(info, tuple(source.shape[1:]), src_aff)
    same_grid = tuple(arr.shape) == tuple(source.shape[1:]) and np.allclose(aff, src_aff)
    ops = ([*source.applied_operations, record] if same_grid
           else regridded_operations(source.applied_operations, record))
    return MetaTensor(torch.from_numpy(np.ascontiguousarray(arr))[None], meta=meta,
                      applied_operations=ops)
