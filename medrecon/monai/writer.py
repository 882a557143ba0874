"""medrecon's writers as MONAI :class:`~monai.data.ImageWriter` s, for ``SaveImage``.

Each is a MONAI writer (``SaveImage(writer=...)`` drives it: channel handling, metadata,
file name) whose bytes are those of :mod:`medrecon.io`'s format rules, so a file written
through ``SaveImage`` equals the one :func:`medrecon.io.save_image` writes:

* :class:`MedreconNiftiWriter` (a :class:`~monai.data.NibabelWriter`): float32 NIfTI-1 whose
  sform/qform codes are kept from a NIfTI source (MONAI's writer always writes 1), qform code 0
  for a sheared affine (gantry tilt) so readers take the exact sform, units mm, ``descrip`` and
  the display window in ``cal_min`` / ``cal_max``; without ``resample`` the affine is written
  as it is, 2D included (MONAI's resampling round trip is skipped).
* :class:`MedreconRasterWriter` (a :class:`~monai.data.PILWriter`): PNG with the bit depth of a
  PNG / JPEG / TIFF source, values rounded and clipped, never wrapped (MONAI's writer clips to
  [0, 1] and scales, or casts), 16 bits with a warning past 65535; TIFF as float32.
* :class:`MedreconNumpyWriter`: the float32 array with :func:`numpy.save` (MONAI has no
  ``.npy`` writer).
* :class:`MedreconDicomWriter`: a derived DICOM file (2D) or series folder (3D), registered for
  ``.dcm`` when :mod:`medrecon.monai` is imported.

``SaveImage`` writes wherever its file name says and replaces what is there; medrecon's
file-safety rules (:mod:`medrecon.io.outputs`: validated before the work, staged, exclusive,
never over an input) come from writing into an :class:`~medrecon.io.outputs.OutputStage`'s
temporary path with :func:`save_staged`, as :func:`medrecon.pipeline.reconstruct_file` does;
:class:`MedreconDicomWriter` used alone applies them itself (through
:func:`medrecon.io.save_image`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import ImageWriter, NibabelWriter, PILWriter

__all__ = [
    "MedreconDicomWriter",
    "MedreconNiftiWriter",
    "MedreconNumpyWriter",
    "MedreconRasterWriter",
    "as_metatensor",
    "save_staged",
    "writer_for",
]

#: The metadata medrecon's format writers use (see :class:`medrecon.io.MedicalImage`).
WRITER_META = ("format", "bit_depth", "window_center", "window_width", "nifti_sform_code",
               "nifti_qform_code", "nifti_qform_from_sform", "full_shape")


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _plain(v: Any) -> Any:
    """A metadata value as a Python scalar (collated metadata holds 0-d tensors / arrays)."""
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return v.item()
    if isinstance(v, (np.ndarray, np.generic)) and v.size == 1:
        return v.reshape(()).item()
    return v


def _writer_meta(meta: Any) -> dict:
    meta = dict(meta or {})
    return {k: _plain(meta[k]) for k in WRITER_META if k in meta and meta[k] is not None}


def affine_4x4(meta: Any) -> np.ndarray:
    """The 4x4 voxel-to-RAS affine of ``meta['affine']`` (a 2D 3x3 one embedded; identity when
    there is none)."""
    aff = None if not meta else dict(meta).get("affine")
    if aff is None:
        return np.eye(4)
    aff = np.asarray(_numpy(aff), dtype=np.float64)
    if aff.shape == (3, 3):  # a 2D affine: rows/columns of the first two axes
        full = np.eye(4)
        full[:2, :2], full[:2, 3] = aff[:2, :2], aff[:2, 2]
        aff = full
    return aff


def _one_channel(data_array: Any, channel_dim: int | None, what: str) -> np.ndarray:
    """The channel-less float32 array of a one-channel image."""
    arr = _numpy(data_array)
    if channel_dim is not None:
        if arr.shape[channel_dim] != 1:
            raise ValueError(f"{what} writes one channel; got shape {arr.shape} "
                             f"(channel_dim={channel_dim}).")
        arr = np.take(arr, 0, axis=channel_dim)
    return np.asarray(arr, dtype=np.float32)


class MedreconNiftiWriter(NibabelWriter):
    """NIfTI-1 through nibabel with medrecon's header (see :func:`medrecon.io.nifti.set_nifti_header`).

    Args (writer attributes; through ``SaveImage`` set them with
    ``saver.set_options(init_kwargs={...})``):
        output_dtype: Voxel type. Default float32.
        description: The header's ``descrip``. Default ``"medrecon"``.
    """

    def __init__(self, output_dtype: Any = np.float32, description: str = "medrecon",
                 **kwargs: Any) -> None:
        super().__init__(output_dtype=output_dtype, description=description, **kwargs)
        self.meta: dict = {}

    def set_metadata(self, meta_dict: Any = None, resample: bool = True, **options: Any) -> None:
        self.meta = _writer_meta(meta_dict)
        if resample:
            super().set_metadata(meta_dict, resample=True, **options)
            return
        if self.output_dtype is None and self.data_obj is not None:
            self.output_dtype = _numpy(self.data_obj).dtype
        self.data_obj = _numpy(self.data_obj)
        self.affine = affine_4x4(meta_dict)

    def write(self, filename: Any, verbose: bool = False, **obj_kwargs: Any) -> None:
        import nibabel as nib
        from monai.data.utils import to_affine_nd

        from medrecon.io.nifti import from_3d_nifti, set_nifti_header

        ImageWriter.write(self, filename, verbose=verbose)
        affine = np.eye(4) if self.affine is None else to_affine_nd(3, _numpy(self.affine))
        if from_3d_nifti(self.meta) and np.ndim(self.data_obj) == 2:  # stays X x Y x 1
            self.data_obj = _numpy(self.data_obj)[:, :, None]
        self.data_obj = self.create_backend_obj(self.data_obj, affine=affine,
                                                dtype=self.output_dtype, **obj_kwargs)
        set_nifti_header(self.data_obj, np.asarray(affine, dtype=np.float64), self.meta,
                         description=str(self.description))
        nib.save(self.data_obj, str(filename))


class MedreconRasterWriter(PILWriter):
    """PNG (8/16-bit) and TIFF (float32) with medrecon's rules (see
    :func:`medrecon.io.raster.write_raster`); ``output_dtype`` and ``scale`` are not used.

    Args (writer attributes):
        target: The user's path, named in messages when the file itself is a temporary one.
    """

    def __init__(self, output_dtype: Any = None, channel_dim: int | None = 0,
                 scale: int | None = None, target: Any = None, **kwargs: Any) -> None:
        super().__init__(output_dtype=output_dtype, channel_dim=channel_dim, scale=scale,
                         target=target, **kwargs)
        self.meta: dict = {}

    def set_data_array(self, data_array: Any, channel_dim: int | None = 0,
                       squeeze_end_dims: bool = True, contiguous: bool = False,
                       **kwargs: Any) -> None:
        from medrecon.errors import MedreconInputError

        arr = _one_channel(data_array, channel_dim, "MedreconRasterWriter")
        if arr.ndim == 3:  # one slice along X or Y (X x 1 x Z): that slice
            from medrecon.io.image import thin_axis

            arr = np.moveaxis(arr, thin_axis(arr.shape), -1)
        if arr.ndim > 2 and any(s != 1 for s in arr.shape[2:]):
            raise MedreconInputError(
                f"cannot write an image of shape {arr.shape} to {self.target or 'a raster'}: "
                "PNG / TIFF hold one 2D image. Write .nii.gz or a DICOM folder instead.")
        self.data_obj = arr.reshape(arr.shape[:2])

    def set_metadata(self, meta_dict: Any = None, resample: bool = False, **options: Any) -> None:
        self.meta = _writer_meta(meta_dict)
        super().set_metadata(meta_dict, resample=resample, **options)

    def write(self, filename: Any, verbose: bool = False, **kwargs: Any) -> None:
        from medrecon.io import MedicalImage, raster
        from medrecon.io._paths import full_suffix

        ImageWriter.write(self, filename, verbose=verbose)
        path = Path(str(filename))
        image = MedicalImage(np.asarray(self.data_obj, dtype=np.float32), meta=dict(self.meta))
        raster.write_raster(image, path, suffix=full_suffix(path),
                            out=Path(str(self.target)) if self.target else path)


class MedreconNumpyWriter(ImageWriter):
    """The float32 array as ``.npy`` (``(X, Y)`` for a 2D image, ``(X, Y, Z)`` for a volume)."""

    output_dtype = np.float32

    def set_data_array(self, data_array: Any, channel_dim: int | None = 0,
                       squeeze_end_dims: bool = True, **kwargs: Any) -> None:
        arr = _one_channel(data_array, channel_dim, "MedreconNumpyWriter")
        self.data_obj = arr[:, :, 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr

    def set_metadata(self, meta_dict: Any = None, **options: Any) -> None:
        pass

    def write(self, filename: Any, verbose: bool = False, **kwargs: Any) -> None:
        from medrecon.io import MedicalImage, raster

        super().write(filename, verbose=verbose)
        raster.write_numpy(MedicalImage(self.data_obj), Path(str(filename)))


class MedreconDicomWriter(ImageWriter):
    """Write a channel-first image as a derived DICOM file (2D) or series folder (3D).

    Alone (``SaveImage(output_ext=".dcm")``) it writes through :func:`medrecon.io.save_image`,
    with medrecon's file-safety rules: a 2D image becomes ``<name>.dcm``, a volume the series
    folder ``<name>/IM00001.dcm`` ...; an existing output is refused unless ``overwrite``.
    With ``staged=True`` the file name is a temporary the caller has prepared and will commit
    (:func:`save_staged`): an existing folder receives the series, any other name one file.

    Args (writer attributes, e.g. ``saver.set_options(init_kwargs={"overwrite": True})``):
        overwrite: Replace a previous medrecon output at the target. Default False.
        reference: DICOM headers to derive from, keeping the patient and study (a path, a
            ``MedicalImage`` read from DICOM, a pydicom Dataset or a list of them, e.g.
            :attr:`MedreconReader.dicom_headers`). Default: a Secondary Capture series.
        method: Recorded in the series description.
        series_description: Appended to ``"medrecon <method>: "`` (used as it is when it names
            medrecon already).
        staged: Write to the given name directly (see above). Default False.
    """

    output_dtype = np.float32

    def __init__(self, overwrite: bool = False, reference: Any = None, method: str | None = None,
                 series_description: str | None = None, staged: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(overwrite=overwrite, reference=reference, method=method,
                         series_description=series_description, staged=staged, **kwargs)
        self.affine: np.ndarray | None = None
        self.meta: dict = {}

    def set_data_array(self, data_array: Any, channel_dim: int | None = 0,
                       squeeze_end_dims: bool = True, **kwargs: Any) -> None:
        self.data_obj = _one_channel(data_array, channel_dim, "MedreconDicomWriter")

    def set_metadata(self, meta_dict: Any = None, resample: bool = False,
                     **options: Any) -> None:
        self.affine = affine_4x4(meta_dict)
        self.meta = {k: v for k, v in _writer_meta(meta_dict).items()
                     if k in ("window_center", "window_width")}

    def write(self, filename: Any, verbose: bool = False, **kwargs: Any) -> Path:
        from medrecon.errors import MedreconInputError
        from medrecon.io import MedicalImage, save_image
        from medrecon.io.api import _references
        from medrecon.io.dicom_write import write_dicom

        arr = self.data_obj
        if arr is None:
            raise ValueError("set_data_array first.")
        arr = arr[:, :, None] if arr.ndim == 2 else arr
        image = MedicalImage(arr, self.affine if self.affine is not None else np.eye(4),
                             dict(self.meta))
        path = Path(str(filename))
        if self.staged:
            as_dir = path.is_dir()
            if not as_dir and not image.one_slice:
                raise MedreconInputError(
                    f"cannot write a 3D result of shape {image.shape} to one DICOM file; give a "
                    "folder for a DICOM series.")
            write_dicom(image, path, single_file=not as_dir,
                        references=_references(self.reference, image),
                        series_description=self.series_description, method=self.method)
            return path
        if not image.one_slice:  # a series folder named after the file
            path = path.with_name(path.name[: -len(path.suffix)] if path.suffix else path.name)
            target = f"{path}/"
        else:
            target = str(path.with_suffix(".dcm"))
        return save_image(image, target, overwrite=bool(self.overwrite),
                          reference=self.reference, method=self.method,
                          series_description=self.series_description)


def writer_for(suffix: str, *, as_dir: bool = False) -> type[ImageWriter]:
    """medrecon's writer for an output suffix (``as_dir``: a DICOM series folder)."""
    from medrecon.errors import MedreconInputError
    from medrecon.io._paths import NIFTI_SUFFIXES

    suffix = suffix.lower()
    if as_dir or suffix == ".dcm":
        return MedreconDicomWriter
    if suffix in NIFTI_SUFFIXES:
        return MedreconNiftiWriter
    if suffix in (".png", ".tif", ".tiff"):
        return MedreconRasterWriter
    if suffix == ".npy":
        return MedreconNumpyWriter
    raise MedreconInputError(f"medrecon writes no {suffix or '(no suffix)'!r} files.")


def _reporting(writer: type[ImageWriter], errors: list) -> type[ImageWriter]:
    """``writer`` recording what it raises: ``SaveImage`` turns a writer's exception into a
    ``RuntimeError`` carrying only its text, and medrecon's errors (exit 2, the user's path)
    and ``OSError`` s (no space, permissions) must reach the caller as they are."""

    def wrap(name: str) -> Any:
        def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return getattr(super(cls, self), name)(*args, **kwargs)
            except Exception as exc:
                errors.append(exc)
                raise
        return method

    cls = type(writer.__name__, (writer,),
               {n: wrap(n) for n in ("__init__", "set_data_array", "set_metadata", "write")})
    return cls


def as_metatensor(image: Any) -> Any:
    """A channel-first MetaTensor of a :class:`~medrecon.io.MedicalImage` (e.g. the result of
    :func:`medrecon.pipeline.reconstruct_kspace`); a MetaTensor as it is."""
    from monai.data import MetaTensor

    from medrecon.io import MedicalImage

    if not isinstance(image, MedicalImage):
        return image
    meta = {k: v for k, v in image.meta.items() if k in WRITER_META}
    meta["affine"] = torch.as_tensor(image.affine, dtype=torch.float64)
    meta["spatial_shape"] = np.asarray(image.shape)
    return MetaTensor(torch.from_numpy(np.ascontiguousarray(image.array))[None], meta=meta)


def save_staged(image: Any, filename: str | Path, *, writer: type[ImageWriter] | None = None,
                suffix: str | None = None, **attributes: Any) -> None:
    """Write ``image`` to exactly ``filename`` through :class:`monai.transforms.SaveImage`.

    ``filename`` is an :class:`~medrecon.io.outputs.OutputStage` temporary (a file, or a
    folder for a DICOM series) that the caller validated before the work and commits after;
    ``SaveImage`` gets it as ``filename=`` (its suffix as ``output_ext``), so neither its folder
    layout nor its name formatter is involved.

    Args:
        image: A channel-first MetaTensor (the pipeline's result) or a MedicalImage.
        filename: The temporary path.
        writer: The writer class; default :func:`writer_for` the suffix.
        suffix: The output format's suffix (``""`` for a series folder); default that of
            ``filename`` (``.nii.gz`` kept whole).
        **attributes: Writer attributes (``description``, ``reference``, ``method``,
            ``series_description``, ``target``, ...).

    Raises:
        MedreconInputError: non-finite voxels; anything the writer raises, unwrapped (an
            ``OSError`` as it is, for the stage to name the user's path).
    """
    from monai.transforms import SaveImage

    from medrecon.io._paths import check_finite, full_suffix

    path = Path(filename)
    if suffix is None:
        suffix = "" if path.is_dir() else full_suffix(path)
    if writer is None:
        writer = writer_for(suffix, as_dir=path.is_dir())
    image = as_metatensor(image)
    check_finite(_numpy(image), what="the image to save")
    errors: list[BaseException] = []
    saver = SaveImage(output_ext=suffix, output_dtype=np.float32, resample=False,
                      separate_folder=False, print_log=False, writer=_reporting(writer, errors))
    init = dict(attributes)
    if writer is MedreconDicomWriter:
        init.setdefault("staged", True)
    if writer in (MedreconDicomWriter, MedreconRasterWriter):
        init["output_dtype"] = None  # SaveImage's uint8 default for .png/.dcm is not used
    saver.set_options(init_kwargs=init)
    name = str(path)
    base = name[: len(name) - len(suffix)] if suffix and name.lower().endswith(suffix) else name
    try:
        saver(image, filename=base)
    except RuntimeError:
        if errors:
            raise errors[-1] from None
        raise
