"""2D raster images (PNG, JPEG, TIFF via Pillow) and plain numpy arrays (``.npy``/``.npz``).

Axis convention: a raster of ``H`` rows and ``W`` columns becomes ``array`` of shape ``(W, H, 1)``
(``array[x, y] = pixel at column x, row y``), as ITK and MONAI's ``PILReader`` do. Rasters carry no
patient geometry; their affine is the ITK default (LPS identity, 1 mm pixels), i.e.
``diag(-1, -1, 1, 1)`` in RAS, so a viewer shows them upright and unflipped.

Colour (RGB/RGBA/palette) is converted to grey by ITU-R BT.601 luminance
``0.299 R + 0.587 G + 0.114 B`` (Pillow's ``convert('L')`` weights, computed in float without
rounding); alpha is dropped. 16-bit and float TIFF/PNG keep their values.

``.npy`` arrays are taken literally as ``(X, Y[, Z])`` with an identity affine.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from medrecon.errors import MedreconInputError, MedreconWarning
from medrecon.io._paths import (MEDRECON_MARK, check_finite, check_float32_range,
                                check_numpy_file)
from medrecon.io.geometry import LPS_TO_RAS
from medrecon.io.image import MedicalImage

__all__ = ["read_raster", "write_raster", "read_numpy", "write_numpy", "LUMA_WEIGHTS"]

#: TIFF tag of the writing software.
TIFF_SOFTWARE = 305

#: BT.601 luminance weights used for every RGB -> grey conversion in medrecon.io.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def rgb_to_gray(rgb: np.ndarray) -> np.ndarray:
    """Luminance of an ``(..., 3 or 4)`` array (alpha ignored), as float32."""
    w = np.asarray(LUMA_WEIGHTS, dtype=np.float32)
    return (rgb[..., :3].astype(np.float32) * w).sum(axis=-1)


def _png16_colour(path: Path) -> bool:
    """Whether ``path`` is a PNG of 16 bits per sample with colour or alpha (its IHDR), which
    Pillow reads as 8 bits (it keeps the high byte of each sample)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(26)
    except OSError:
        return False
    return (len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
            and head[24] == 16 and head[25] in (2, 4, 6))


def _read_png16_colour(path: Path) -> np.ndarray:
    """The samples ``(H, W, C)`` of a 16-bit colour PNG, read by SimpleITK (ITK's PNG reader
    keeps the 16 bits of RGB and RGBA; grey + alpha it does not read: refused)."""
    import SimpleITK as sitk

    try:
        data = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    except RuntimeError:
        data = None
    if data is None or data.ndim != 3 or data.shape[-1] not in (3, 4):
        raise MedreconInputError(
            f"{str(path)!r} is a PNG of 16-bit samples with an alpha channel, which medrecon's "
            "readers would cut to 8 bits. Save it as a 16-bit greyscale PNG (without alpha), "
            "a TIFF or NIfTI.")
    return data


def read_raster(path: Path) -> MedicalImage:
    """Read a PNG/JPEG/TIFF file (first page only for multi-page TIFF). A PNG of 16-bit colour
    samples is read by SimpleITK (Pillow keeps 8 of their bits)."""
    wide = _png16_colour(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                n_frames = getattr(im, "n_frames", 1)
                mode = im.mode
                if mode == "P" or mode == "PA":
                    im = im.convert("RGBA")
                elif mode == "1":  # black and white: 0 / 255 as it shows (np.array gives 0 / 1)
                    im = im.convert("L")
                elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                    im = im.convert("RGB")
                data = _read_png16_colour(path) if wide else np.array(im)
    except MedreconInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise MedreconInputError(
            f"{str(path)!r} claims more pixels than medrecon opens as an image ({exc}); it is "
            "corrupt or hostile, or far larger than a scan. Check the file.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise MedreconInputError(
            f"cannot read {str(path)!r} as a {path.suffix.lower() or 'raster'} image: {exc}. "
            "Expected a valid PNG/JPEG/TIFF file; re-export it, or give the right suffix."
        ) from None
    notes: list[str] = []
    if n_frames > 1:
        notes.append(f"{path.name} has {n_frames} pages; only the first is read.")
    photometric = "MONOCHROME2"
    if data.ndim == 3:
        colour, alpha = data[..., : min(3, data.shape[-1])], None
        if data.shape[-1] in (2, 4):  # LA / RGBA
            alpha = data[..., -1]
            colour = data[..., :1] if data.shape[-1] == 2 else data[..., :3]
        if alpha is not None and np.any(alpha != alpha.max()):
            notes.append(f"{path.name}: its alpha (transparency) channel was dropped; "
                         "transparent pixels keep their stored grey values.")
        if colour.shape[-1] == 3 and not (np.array_equal(colour[..., 0], colour[..., 1])
                                          and np.array_equal(colour[..., 0], colour[..., 2])):
            notes.append(f"{path.name} is a colour image; it was converted to grey "
                         "(BT.601 luminance 0.299 R + 0.587 G + 0.114 B).")
            photometric = "RGB"
        data = rgb_to_gray(colour) if colour.shape[-1] == 3 else colour[..., 0]
    for note in notes:
        warnings.warn(note, MedreconWarning, stacklevel=3)
    check_float32_range(data, what=f"{str(path)!r}")
    data = data.astype(np.float32)
    check_finite(data, what=f"{str(path)!r}")
    bit_depth = 16 if wide else 8 if mode in ("1", "L", "P", "PA", "LA", "La", "RGB", "RGBA",
                                              "CMYK", "YCbCr") else (
        16 if mode.startswith("I;16") else None)
    meta = {
        "format": "tiff" if path.suffix.lower() in (".tif", ".tiff") else path.suffix.lower()[1:],
        "bit_depth": bit_depth,
        "path": str(path),
        "source_paths": [str(path)],
        "modality": None,
        "photometric": photometric,
        "pil_mode": mode,
    }
    return MedicalImage(data.T, LPS_TO_RAS.copy(), meta)


def _to_integer_range(array2d: np.ndarray, path: Path, bit_depth: int | None) -> np.ndarray:
    """Map float pixels to uint8 / uint16 for PNG without silently wrapping values."""
    if bit_depth in (8, 16):  # derived from an 8/16-bit raster: same depth, clipped
        top, dtype = (255, np.uint8) if bit_depth == 8 else (65535, np.uint16)
        return np.clip(np.rint(array2d), 0, top).astype(dtype)
    lo, hi = float(array2d.min()), float(array2d.max())
    if lo >= -0.5 and hi <= 255.5:
        return np.clip(np.rint(array2d), 0, 255).astype(np.uint8)
    if lo >= -0.5 and hi <= 65535.5:
        return np.clip(np.rint(array2d), 0, 65535).astype(np.uint16)
    warnings.warn(
        f"{path.name}: intensities span [{lo:.4g}, {hi:.4g}], outside PNG's 16-bit range; they are "
        "rescaled linearly to [0, 65535]. Write .tif or .nii.gz to keep the values.",
        stacklevel=4,
    )
    scale = 65535.0 / (hi - lo) if hi > lo else 0.0
    return np.rint((array2d - lo) * scale).astype(np.uint16)


def write_raster(image: MedicalImage, tmp: Path, *, suffix: str, out: Path) -> None:
    """Write a 2D image as PNG (8/16-bit integers) or TIFF (float32, lossless).

    PNG: an image derived from an 8- or 16-bit raster (``meta['bit_depth']``) is rounded and
    clipped to that depth; otherwise values already within ``[0, 255]`` are rounded to 8 bits,
    within ``[0, 65535]`` to 16 bits, and anything else is rescaled to 16 bits with a warning. TIFF stores float32 as is.
    The voxel order is written as rows = ``Y``, columns = ``X`` (the inverse of the reader);
    geometry is not stored. One slice stored along another axis is written as that slice
    (:meth:`~medrecon.io.MedicalImage.slice_last`).
    """
    image = image.slice_last()
    if not image.is_2d:
        raise MedreconInputError(
            f"cannot write a 3D image of shape {image.shape} to {suffix} ({out}); {suffix} holds "
            "one 2D slice. Write .nii.gz or a DICOM folder instead, or select a slice first."
        )
    plane = image.array[:, :, 0].T  # (H, W)
    if suffix == ".png":
        bits = image.meta.get("bit_depth") if image.meta.get("format") in ("png", "jpg", "jpeg", "tiff") else None
        info = PngInfo()
        info.add_text("Software", MEDRECON_MARK)  # the mark an --overwrite looks for
        Image.fromarray(_to_integer_range(plane, out, bits)).save(tmp, format="PNG", pnginfo=info)
    else:
        Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32)).save(
            tmp, format="TIFF", tiffinfo={TIFF_SOFTWARE: MEDRECON_MARK}
        )


def read_numpy(path: Path) -> MedicalImage:
    """Read a ``.npy`` (or single-array ``.npz``) file as ``(X, Y[, Z])`` with identity affine."""
    check_numpy_file(path)
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                keys = list(npz.keys())
                if len(keys) != 1:
                    raise MedreconInputError(
                        f"{str(path)!r} holds {len(keys)} arrays {keys}; expected exactly one. "
                        "Save the image alone with numpy.save(path, array)."
                    )
                data = npz[keys[0]]
        else:
            data = np.load(path, allow_pickle=False)
    except MedreconInputError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        raise MedreconInputError(
            f"cannot read {str(path)!r} as a numpy array: {exc}. Expected a file written by "
            "numpy.save (object arrays / pickles are refused)."
        ) from None
    if not isinstance(data, np.ndarray) or data.dtype.kind not in "biuf":
        raise MedreconInputError(
            f"{str(path)!r} holds dtype {getattr(data, 'dtype', type(data).__name__)}; expected "
            "a real numeric array (bool/int/float)."
        )
    if data.ndim not in (2, 3):
        raise MedreconInputError(
            f"{str(path)!r} has shape {data.shape}; expected a 2D (X, Y) or 3D (X, Y, Z) array. "
            "Select one image (e.g. array[..., 0]) and save it again."
        )
    check_float32_range(data, what=f"{str(path)!r}")
    data = data.astype(np.float32)
    check_finite(data, what=f"{str(path)!r}")
    meta = {"format": "npy", "path": str(path), "source_paths": [str(path)], "modality": None,
            "photometric": None}
    return MedicalImage(data, np.eye(4), meta)


def write_numpy(image: MedicalImage, tmp: Path) -> None:
    """Write the float32 array (2D images as ``(X, Y)``) with :func:`numpy.save`."""
    arr = image.array[:, :, 0] if image.is_2d else image.array
    with open(tmp, "wb") as fh:
        np.save(fh, arr, allow_pickle=False)
