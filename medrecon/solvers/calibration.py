"""Calibrated std maps: from the spread of a few runs to a standard deviation of the error.

The spread of an IAGAN ensemble (or of variational BRGM's posterior samples) ranks the error
(docs/results/regimes: Spearman 0.26-0.68 on SR and MRI), but it is not its standard
deviation: where every run agrees on the same wrong value the spread is near zero and the
error is not, and where they disagree the error is several times the spread. Binned against
the spread, the mean squared error of held-out images follows

    E[err^2 | spread = s]  ~  floor + scale * (s^2)^power

(a variance floor for what every run misses, plus the spread scaled up, by more where it is
small: ``power`` came out 0.35-0.75 on SR and MRI), so the calibrated std is
``sigma = sqrt(floor + scale * (s^2)^power)``: the variance-scaling recalibration of Levi et
al. ("Evaluating and calibrating uncertainty prediction in regression tasks", 2019) with a
floor and an exponent. ``floor``, ``scale`` and ``power`` are fitted per prior, method, task
and regime on validation images (``scripts/calibrate_std.py``) and ship in the prior's metadata
(``metadata["std_calibration"]``, a list of :class:`StdCalibration` dicts). A std map is
calibrated only when one of them matches the call (method, task, operator kind, measured fraction
within :data:`FRACTION_TOLERANCE`, back-projection, noise level, ensemble size and steps); otherwise
it stays the raw spread and the result says so (``info["std_kind"]``).

Pixels an inpainting mask measures are exact after back-projection: their std stays zero.
The monotone map keeps the ranking, so ``std_error_spearman`` is unchanged by calibration.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["StdCalibration", "FRACTION_TOLERANCE", "FIT_BINS", "operator_kind", "regime_fraction",
           "exact_pixels", "exact_after", "binned", "fit_std_calibration", "ence",
           "find_calibration", "apply_calibration", "std_regime", "calibrate", "StdMaps"]

#: A calibration applies to measured fractions within this factor of the one it was fitted on.
FRACTION_TOLERANCE = 1.5
#: Equal-count bins of the spread in the fit.
FIT_BINS = 20
#: Exponents of the spread's variance the fit may choose.
POWER_RANGE = (0.1, 2.0)
_TINY = 1e-30
#: Solver options a calibration is tied to (the spread of 2 runs is not that of 4).
MATCHED_OPTIONS = ("ensemble", "steps", "num_samples")


@dataclass(frozen=True)
class StdCalibration:
    """One fitted calibration: ``sigma = sqrt(floor + scale * (spread^2)^power)`` (generator
    units).

    Attributes:
        method: solver method (``'iagan'``, ``'brgm_variational'``).
        task: solver task (``'sr'``, ``'mri'``, ``'inpainting'``, ...).
        operator: the operator's kind (:func:`operator_kind`, e.g. ``'SuperResolution:bicubic'``;
            ``''`` matches any).
        fraction: measured fraction of the regime (:func:`regime_fraction`).
        floor: variance floor (generator units squared, >= 0).
        scale: variance scale of the spread (>= 0).
        power: exponent of the spread's variance (1: a plain scale).
        bp: whether the spread was of back-projected samples.
        noise_sigma: measurement noise std of the fit (generator units).
        options: solver options of the fit (:data:`MATCHED_OPTIONS` that were set).
        images: validation images of the fit.
        regime: human-readable regime (e.g. ``'sr x4, bicubic'``).
        ence_before: expected normalised calibration error of the raw spread on the fit images.
        ence_after: the same of the calibrated std (in-sample).
        fitted_on: ids of the fit's validation images (paths relative to its data folder),
            which ``medrecon eval`` leaves out of the calibration figures it reports.
    """

    method: str
    task: str
    fraction: float
    floor: float
    scale: float
    power: float = 1.0
    operator: str = ""
    bp: bool = True
    noise_sigma: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)
    images: int = 0
    regime: str = ""
    ence_before: float | None = None
    ence_after: float | None = None
    fitted_on: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StdCalibration":
        """From :meth:`as_dict`'s output (unknown keys ignored; numbers checked).

        Raises:
            TypeError, ValueError: a required key is missing or a number is not one.
        """
        known = {f for f in cls.__dataclass_fields__}
        kw = {k: v for k, v in d.items() if k in known}
        for k in ("fraction", "floor", "scale", "power", "noise_sigma"):
            if k in kw:
                kw[k] = float(kw[k])
        if not isinstance(kw.get("options", {}), dict):
            raise TypeError("options is not a mapping")
        fitted = kw.get("fitted_on", [])
        if not isinstance(fitted, list) or not all(isinstance(f, str) for f in fitted):
            raise TypeError("fitted_on is not a list of image ids")
        return cls(**kw)

    def matches(self, *, method: str, task: str, fraction: float, bp: bool, noise_sigma: float,
                options: dict[str, Any], operator: str = "") -> bool:
        """Whether this calibration was fitted for such a call."""
        if method != self.method or task != self.task or bool(bp) != bool(self.bp):
            return False
        if self.operator and operator != self.operator:
            return False
        if not (fraction > 0 and self.fraction > 0):
            return False
        if abs(math.log(fraction / self.fraction)) > math.log(FRACTION_TOLERANCE):
            return False
        if abs(float(noise_sigma) - float(self.noise_sigma)) > 1e-3:
            return False
        return all(options.get(k) == v for k, v in self.options.items())


def operator_kind(operator: nn.Module) -> str:
    """The operator's class name, and for super-resolution its named kernel
    (``'SuperResolution:bicubic'``, ``':box'``, ``':other'``): the spread of runs behind a box
    average is not that behind a bicubic one. Inpainting and MRI add the family of their
    generated mask (``'Inpainting:center_box'``, ``'MRI:lines'`` for random or equispaced
    phase-encoding lines, ``'MRI:poisson2d'``...; a given MRI mask of whole lines is
    ``'lines'`` too, any other given mask ``':custom'``): a fit on free-form strokes or random
    lines does not hold for random boxes or a 2D sampling pattern of the same fraction."""
    from medrecon.physics.inpainting import Inpainting
    from medrecon.physics.mri import MRI
    from medrecon.physics.superres import SuperResolution, sr_kernel

    name = type(operator).__name__
    if isinstance(operator, (Inpainting, MRI)):
        family = getattr(operator, "mask_family", None)
        if family is None and isinstance(operator, MRI):  # a scanner's mask: lines or not
            m = getattr(operator, "mask", None)
            lines = isinstance(m, torch.Tensor) and m.ndim >= 2 and bool(
                (m == m[..., :1, :]).all()) and bool(m.any()) and not bool(m.all())
            family = "lines" if lines else None
        return f"{name}:{family or 'custom'}"
    if isinstance(operator, SuperResolution):
        k = operator.kernel.detach().float().cpu()
        for kn in ("bicubic", "box"):
            ref = sr_kernel(kn, operator.factor)
            if ref.shape == k.shape and torch.allclose(ref, k):
                return f"{name}:{kn}"
        return f"{name}:other"
    return name


def regime_fraction(operator: nn.Module, y: torch.Tensor) -> float:
    """The measured fraction that keys a calibration: the mask's mean for masked operators
    (inpainting: pixels; Cartesian MRI: k-space samples), else the measurements per pixel
    (:func:`medrecon.solvers.api.measured_fraction`; 1/16 for SR x4)."""
    mask = getattr(operator, "mask", None)
    if isinstance(mask, torch.Tensor) and mask.numel() > 0:
        return float(mask.float().mean())
    from medrecon.solvers.api import measured_fraction

    return measured_fraction(operator, y)


def exact_pixels(operator: nn.Module | None, shape: torch.Size) -> torch.Tensor | None:
    """Pixels an inpainting mask measures (exact after noiseless back-projection), broadcast
    to ``shape``; None for other operators."""
    from medrecon.physics.inpainting import Inpainting

    if not isinstance(operator, Inpainting):
        return None
    m = operator.mask.detach().cpu() > 0
    while m.ndim > len(shape) and m.shape[0] == 1:
        m = m[0]
    return m.expand(shape)


def exact_after(rec_info: dict[str, Any], operator: nn.Module | None,
                shape: torch.Size) -> torch.Tensor | None:
    """:func:`exact_pixels` of a result whose info says it was back-projected exactly
    (``bp_eta == 0``: noiseless, so measured pixels equal the data), else None."""
    return exact_pixels(operator, shape) if rec_info.get("bp_eta") == 0 else None


def binned(std: torch.Tensor, err: torch.Tensor, *, bins: int,
           exact: torch.Tensor | None = None) -> list[dict[str, float]]:
    """Pixels sorted by ``std`` into ``bins`` equal-count bins (``exact`` pixels left out);
    per bin ``bin``, ``std_low``, ``std_high``, ``mean_std``, the root mean variance ``rmv``,
    ``rmse``, ``mae`` and ``pixels``. What the fit, :func:`ence` and ``medrecon eval``'s
    ``calibration.csv`` are computed from.

    Raises:
        MedreconInputError: ``std`` and ``err`` differ in shape, hold NaN / Inf, ``bins`` is
            not a positive integer, or ``exact`` has another shape.
    """
    from medrecon.errors import MedreconInputError

    s = torch.as_tensor(std).detach().double().cpu().reshape(-1)
    e = torch.as_tensor(err).detach().double().cpu().reshape(-1)
    if s.shape != e.shape:
        raise MedreconInputError(f"std map {tuple(std.shape)} and error {tuple(err.shape)} "
                                 "differ in shape.")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise MedreconInputError(f"bins={bins!r}; expected an integer >= 1.")
    if not (torch.isfinite(s).all() and torch.isfinite(e).all()):  # the fit dropped them,
        raise MedreconInputError("the std map or the error holds NaN/Inf values; calibrate "
                                 "finite maps.")  # ence returned NaN for the same data
    if exact is not None:
        keep = ~torch.as_tensor(exact).reshape(-1).bool().cpu()
        if keep.shape != s.shape:
            raise MedreconInputError(f"exact mask {tuple(torch.as_tensor(exact).shape)} differs "
                                     f"in shape from the std map {tuple(std.shape)}.")
        s, e = s[keep], e[keep]
    out = []
    for k, idx in enumerate(torch.tensor_split(torch.argsort(s, stable=True), bins)):
        if idx.numel() == 0:
            continue
        sb, eb = s[idx], e[idx]
        out.append({"bin": k, "std_low": float(sb[0]), "std_high": float(sb[-1]),
                    "mean_std": float(sb.mean()), "rmv": float(sb.pow(2).mean().sqrt()),
                    "rmse": float(eb.pow(2).mean().sqrt()), "mae": float(eb.abs().mean()),
                    "pixels": int(idx.numel())})
    return out


def _var_mse(std: torch.Tensor, err: torch.Tensor, exact: torch.Tensor | None,
             bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean variance and mean squared error per bin of :func:`binned`."""
    b = binned(std, err, bins=bins, exact=exact)
    return (torch.tensor([r["rmv"] ** 2 for r in b], dtype=torch.float64),
            torch.tensor([r["rmse"] ** 2 for r in b], dtype=torch.float64))


def fit_std_calibration(std: torch.Tensor, err: torch.Tensor, *, exact: torch.Tensor | None = None,
                        bins: int = FIT_BINS) -> tuple[float, float, float]:
    """``(floor, scale, power)`` of ``E[err^2 | s] ~ floor + scale * (s^2)^power``.

    Least squares of the log ratio of model and mean squared error over ``bins`` equal-count
    bins of the spread ``s`` (every bin counts alike, small errors as much as large), with
    ``floor, scale >= 0`` and ``power`` in :data:`POWER_RANGE`, started from the best
    ``power = 1`` fit.

    Args:
        std: the raw spread, any shape (all validation pixels together).
        err: estimate minus truth, same shape and units.
        exact: pixels the measurements fix exactly (left out), or None.
        bins: number of bins.
    """
    import numpy as np
    from scipy.optimize import least_squares, nnls

    var, mse = (t.numpy() for t in _var_mse(std, err, exact, bins))
    keep = mse > 0  # bins of exact zeros say nothing about the scale
    var, mse = np.maximum(var[keep], _TINY), mse[keep]
    if var.size == 0:
        return 0.0, 0.0, 1.0
    w = 1.0 / mse
    (floor0, scale0), _ = nnls(np.stack([w, var * w], axis=1), np.ones_like(w))

    def residual(t: np.ndarray) -> np.ndarray:
        return np.log(np.exp(t[0]) + np.exp(t[1]) * var ** t[2]) - np.log(mse)

    lo, hi = POWER_RANGE
    t0 = [np.log(max(floor0, _TINY)), np.log(max(scale0, _TINY)), 1.0]
    fit = least_squares(residual, t0, bounds=([np.log(_TINY), np.log(_TINY), lo],
                                              [np.log(1e6), np.log(1e6), hi]))
    floor, scale, power = float(np.exp(fit.x[0])), float(np.exp(fit.x[1])), float(fit.x[2])
    return (0.0 if floor <= 10 * _TINY else floor), (0.0 if scale <= 10 * _TINY else scale), power


def ence(std: torch.Tensor, err: torch.Tensor, *, exact: torch.Tensor | None = None,
         bins: int = FIT_BINS) -> float:
    """Expected normalised calibration error (Levi et al. 2019): over equal-count bins of the
    predicted std, the mean of ``|RMV - RMSE| / RMV`` (root mean variance against root mean
    squared error). 0 for a calibrated std; the raw spread of IAGAN's runs scored 1.5-42 on
    the reports (docs/results/regimes), calibrated stds 0.05-0.44."""
    var, mse = _var_mse(std, err, exact, bins)
    rmv, rmse = var.sqrt(), mse.sqrt()
    return float(((rmv - rmse).abs() / rmv.clamp_min(1e-12)).mean())


def find_calibration(prior: Any, *, method: str, task: str | None, fraction: float, bp: bool,
                     noise_sigma: float, options: dict[str, Any],
                     operator: str = "") -> StdCalibration | None:
    """The calibration in ``prior.metadata["std_calibration"]`` that matches the call, the
    nearest in measured fraction if several do; None if none does.

    Args:
        operator: :func:`operator_kind` of the call's operator (``''``: unknown).
    """
    entries = (getattr(prior, "metadata", None) or {}).get("std_calibration") or []
    found = []
    for d in entries if isinstance(entries, list) else []:
        try:
            c = StdCalibration.from_dict(d)
            ok = c.matches(method=method, task=str(task), fraction=fraction, bp=bp,
                           noise_sigma=noise_sigma, options=options, operator=operator)
        except (TypeError, ValueError, AttributeError, ZeroDivisionError):
            # an entry of another version, or damaged: never applied, and said so
            warnings.warn(f"prior {getattr(prior, 'name', '?')!r}: ignoring a malformed "
                          f"std_calibration entry ({str(d)[:80]}); the std map stays a raw "
                          "spread unless another entry fits. Refit it with "
                          "scripts/calibrate_std.py.", stacklevel=2)
            continue
        if ok and c.floor >= 0 and c.scale >= 0 and math.isfinite(c.floor + c.scale + c.power):
            found.append((abs(math.log(fraction / c.fraction)), c))
    return min(found, key=lambda t: t[0])[1] if found else None


def apply_calibration(std: torch.Tensor, calibration: StdCalibration, *,
                      exact: torch.Tensor | None = None) -> torch.Tensor:
    """``sqrt(floor + scale * (std^2)^power)``, zero on ``exact`` pixels."""
    v = std.float().pow(2)
    out = (calibration.floor + calibration.scale * v.pow(calibration.power)).sqrt()
    if exact is not None:
        out = out.masked_fill(exact.to(out.device), 0.0)
    return out


def std_regime(*, method: str, task: str | None, operator: nn.Module, y: torch.Tensor,
               noise_sigma: float, options: dict[str, Any]) -> dict[str, Any]:
    """What a calibration is matched on, as recorded by :func:`medrecon.solvers.solve` in
    ``info["std_regime"]`` (the caller that back-projects decides ``bp``)."""
    return {"method": method, "task": task, "operator": operator_kind(operator),
            "fraction": regime_fraction(operator, y),
            "noise_sigma": float(noise_sigma or 0.0),
            "options": {k: options[k] for k in MATCHED_OPTIONS if k in options}}


def calibrate(std: torch.Tensor, prior: Any, regime: dict[str, Any] | None, *, bp: bool,
              exact: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """The std map calibrated by the prior's matching :class:`StdCalibration`, if any.

    Returns:
        ``(std, info)``: ``info["std_kind"]`` is ``'calibrated std'`` (with
        ``info["std_calibration"]``, the entry used) or ``'spread'`` (no entry matched:
        the raw spread of the runs, a relative map).
    """
    c = None if regime is None else find_calibration(prior, bp=bp, **regime)
    if c is None:
        return std, {"std_kind": "spread"}
    return apply_calibration(std, c, exact=exact), {"std_kind": "calibrated std",
                                                    "std_calibration": c.as_dict()}


class StdMaps:
    """The std maps of a volume solved in several calls, calibrated all or none: a map whose
    slices mix calibrated stds and raw spreads (e.g. warm-started slices run fewer steps than
    any fit) would not be one quantity, so then every slice keeps its raw spread."""

    def __init__(self, n: int) -> None:
        self.raw: list[torch.Tensor | None] = [None] * n
        self.cal: list[torch.Tensor | None] = [None] * n
        self.how: dict[str, Any] | None = None

    def put(self, indices: list[int], raw: torch.Tensor, prior: Any,
            regime: dict[str, Any] | None, *, bp: bool, exact: torch.Tensor | None = None) -> None:
        """Slices ``indices`` got the spread ``raw [len(indices), ...]`` in a call of ``regime``
        (None: no calibration applies, e.g. off the prior's grid)."""
        cal, how = calibrate(raw, prior, regime, bp=bp, exact=exact)
        ok = how["std_kind"] == "calibrated std"
        if ok and self.how is None:
            self.how = how
        for j, i in enumerate(indices):
            self.raw[i] = raw[j]
            self.cal[i] = cal[j] if ok else None

    def result(self) -> tuple[torch.Tensor | None, dict[str, Any]]:
        """``(std [n, ...] or None, info)`` with ``info["std_kind"]`` as in :func:`calibrate`."""
        if not self.raw or any(t is None for t in self.raw):
            return None, {}
        if self.how is not None and all(t is not None for t in self.cal):
            return torch.stack(self.cal), self.how  # type: ignore[arg-type]
        info: dict[str, Any] = {"std_kind": "spread"}
        if self.how is not None:
            info["std_note"] = ("not calibrated: some slices were solved outside the fitted "
                                "regime (e.g. warm-started with fewer steps)")
        return torch.stack(self.raw), info  # type: ignore[arg-type]
