"""Input checks and small tensor helpers shared by the operators (private).

Every public entry point validates with these helpers so that bad input raises
:class:`medrecon.errors.MedreconInputError` with a message saying what was got, what was
expected and how to fix it, instead of a deep torch traceback.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from medrecon.errors import MedreconInputError


def as_size2(value: Any, name: str) -> tuple[int, int]:
    """Normalise an image size given as ``int`` or ``(H, W)`` to a pair of positive ints."""
    if isinstance(value, torch.Size):
        value = tuple(value)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (int(value), int(value))
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
        or min(int(v) for v in value) < 1
    ):
        raise MedreconInputError(
            f"{name} must be a positive int or a pair (H, W) of positive ints, got {value!r}. "
            f"Pass e.g. {name}=128 or {name}=(128, 96)."
        )
    return int(value[0]), int(value[1])


def as_positive_int(value: Any, name: str, *, minimum: int = 1) -> int:
    """Check that ``value`` is an integer (``4`` or ``4.0``) not below ``minimum``."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not ok and isinstance(value, (float, np.floating)) and float(value).is_integer():
        ok = True
    if not ok or int(value) < minimum:
        raise MedreconInputError(
            f"{name} must be an integer >= {minimum}, got {value!r}. "
            f"Non-integer or smaller values are not supported."
        )
    return int(value)


def as_float(value: Any, name: str, *, minimum: float | None = None, strict: bool = False,
             maximum: float | None = None) -> float:
    """Check that ``value`` is a finite real number within the given bounds."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise MedreconInputError(f"{name} must be a real number, got {value!r}.") from None
    bad = not math.isfinite(out)
    if minimum is not None:
        bad = bad or (out <= minimum if strict else out < minimum)
    if maximum is not None:
        bad = bad or out > maximum
    if bad:
        lo = "" if minimum is None else (f"> {minimum}" if strict else f">= {minimum}")
        hi = "" if maximum is None else f"<= {maximum}"
        rng = " and ".join(s for s in (lo, hi) if s)
        raise MedreconInputError(f"{name} must be a finite number{' ' + rng if rng else ''}, "
                                 f"got {value!r}.")
    return out


def check_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    """Check that ``value`` is one of ``choices`` (strings)."""
    if not isinstance(value, str) or value not in choices:
        raise MedreconInputError(
            f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}."
        )
    return value


def check_image(x: Any, name: str = "x", *, allow_complex: bool = True,
                finite: bool = True) -> torch.Tensor:
    """Check a ``[B, C, H, W]`` floating (or complex) tensor, without NaN/Inf if ``finite``."""
    if not isinstance(x, torch.Tensor):
        raise MedreconInputError(
            f"{name} must be a torch.Tensor of shape [B, C, H, W], got {type(x).__name__}. "
            f"Convert with torch.as_tensor(...) and add batch/channel axes."
        )
    if x.ndim != 4:
        raise MedreconInputError(
            f"{name} must have shape [B, C, H, W] (4 dims), got shape {tuple(x.shape)}. "
            f"Add missing axes with x[None] / x[None, None]."
        )
    if not (x.is_floating_point() or (allow_complex and x.is_complex())):
        kinds = "floating or complex" if allow_complex else "floating"
        raise MedreconInputError(
            f"{name} must have a {kinds} dtype, got {x.dtype}. Convert with x.float()."
        )
    if finite:
        check_finite(x, name)
    return x


def check_finite(x: torch.Tensor, name: str) -> None:
    """Raise when ``x`` holds NaN or Inf values (a single device sync)."""
    if not bool(torch.isfinite(x).all()):
        n_bad = int((~torch.isfinite(x)).sum())
        raise MedreconInputError(
            f"{name} contains {n_bad} NaN/Inf values (shape {tuple(x.shape)}); expected finite "
            f"values. Check the data loading and intensity scaling upstream."
        )


def check_spatial(x: torch.Tensor, name: str, expected: tuple[int, int], hint: str = "") -> None:
    """Check the last two dims of ``x`` against ``expected``."""
    if tuple(x.shape[-2:]) != tuple(expected):
        raise MedreconInputError(
            f"{name} has spatial size {tuple(x.shape[-2:])}, expected {tuple(expected)}. {hint}"
            .rstrip()
        )


def real_dtype(x: torch.Tensor) -> torch.dtype:
    """The real dtype matching ``x`` (``float32`` for ``complex64``)."""
    return x.real.dtype if x.is_complex() else x.dtype


def complex_dtype(dtype: torch.dtype) -> torch.dtype:
    """The complex dtype matching a real or complex ``dtype``."""
    if dtype.is_complex:
        return dtype
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def apply_real_linear(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Apply a real linear map to real and imaginary parts of a complex tensor separately."""
    if x.is_complex():
        return torch.complex(fn(x.real), fn(x.imag))
    return fn(x)


def as_mask_tensor(mask: Any, name: str = "mask") -> torch.Tensor:
    """Convert a tensor/array mask to a float32 0/1 tensor, checking that it is binary."""
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(np.ascontiguousarray(mask))
    if not isinstance(mask, torch.Tensor):
        raise MedreconInputError(
            f"{name} must be a torch.Tensor, a numpy array or a file path, got "
            f"{type(mask).__name__}."
        )
    if mask.is_complex():
        raise MedreconInputError(f"{name} must be real (0/1 or bool), got dtype {mask.dtype}.")
    m = mask.detach().to(torch.float32)
    check_finite(m, name)
    if m.numel() == 0:
        raise MedreconInputError(f"{name} is empty (shape {tuple(mask.shape)}).")
    if not bool(((m == 0) | (m == 1)).all()):
        vals = torch.unique(m)[:6].tolist()
        raise MedreconInputError(
            f"{name} must be binary (0/1 or bool; 1 = observed), got values like {vals}. "
            f"Threshold it first, e.g. (mask > 0.5)."
        )
    return m


def mask_to_4d(m: torch.Tensor, name: str = "mask") -> torch.Tensor:
    """Reshape a ``[H, W]``, ``[C, H, W]`` or ``[B, C, H, W]`` mask to 4 dims."""
    if m.ndim == 2:
        return m[None, None]
    if m.ndim == 3:
        return m[None]
    if m.ndim == 4:
        return m
    raise MedreconInputError(
        f"{name} must have shape [H, W], [C, H, W] or [B, C, H, W], got {tuple(m.shape)}."
    )


def check_broadcast(mask_shape: Sequence[int], x: torch.Tensor, name: str, what: str) -> None:
    """Check that a 4-d mask broadcasts against the batch ``x`` (no silent expansion)."""
    ok = len(mask_shape) == 4 and tuple(mask_shape[-2:]) == tuple(x.shape[-2:]) and all(
        m in (1, s) for m, s in zip(mask_shape[:2], x.shape[:2])
    )
    if not ok:
        raise MedreconInputError(
            f"{what} of shape {tuple(x.shape)} does not match the {name} of shape "
            f"{tuple(mask_shape)}: expected [B, C, H, W] with (H, W) = {tuple(mask_shape[-2:])} "
            f"and B, C equal to the mask's or the mask's equal to 1. Build the operator with a "
            f"mask of the image size."
        )
