"""Image quality metrics: PSNR, SSIM, MAE, RMSE and LPIPS, all with explicit conventions.

Inputs: torch tensors or numpy arrays, ``[H, W]``, ``[C, H, W]`` or batches ``[B, C, H, W]``
(complex inputs are compared by magnitude). Return type: a batch ``[B, C, H, W]`` gives a
per-image ``float64`` tensor ``[B]`` on the input's device; a single image (2 or 3 dims) gives a
Python ``float``. The first argument is the estimate, the second the reference (all metrics here
are symmetric except for which image sets nothing).

``data_range`` is always explicit (the intensity span, e.g. ``1.0`` for ``[0, 1]``, ``2.0`` for
the generator range ``[-1, 1]``, ``255`` for 8-bit): guessing it from the data gives silently
wrong PSNR/SSIM.

This module only checks inputs and fixes return kinds. MSE, MAE, RMSE and PSNR are
``monai.metrics`` (``float64``); SSIM is scikit-image's ``structural_similarity``, because MONAI's
(``compute_ssim_and_cs``: same window and population covariance) always computes in ``float32``,
which moves SSIM by up to ~6e-6 on near-identical images.

LPIPS uses the ``lpips`` package's linear calibration layers (shipped inside the package) on a
torchvision VGG16 or AlexNet backbone whose ImageNet weights are read from a local file, never
downloaded: see :func:`lpips_distance`.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.metrics import MAEMetric, MSEMetric, PSNRMetric, RMSEMetric
from monai.metrics.regression import RegressionMetric
from skimage.metrics import structural_similarity
from torch import nn

from medrecon.errors import CheckpointError, MedreconInputError, MissingWeightsError

__all__ = [
    "LPIPS_BACKBONE_FILES",
    "LPIPSMetric",
    "lpips_distance",
    "mae",
    "mse",
    "psnr",
    "rmse",
    "ssim",
]

#: torchvision ImageNet checkpoint file name and URL of each LPIPS backbone.
LPIPS_BACKBONE_FILES: dict[str, tuple[str, str]] = {
    "vgg": ("vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth"),
    "alex": ("alexnet-owt-7be5be79.pth",
             "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"),
}


# ------------------------------------------------------------------------------------------
# Input handling
# ------------------------------------------------------------------------------------------
def _to_tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        if x.dtype.kind == "u":  # 16/32-bit unsigned (medical images): torch has few ops for
            x = x.astype(np.float64)  # uint16 / uint32, so the values go as float64
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise MedreconInputError(
            f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}.")
    x = x.as_tensor() if hasattr(x, "as_tensor") else x  # MetaTensor: values only
    if x.is_complex():
        x = x.abs()
    if x.dtype in (torch.uint16, torch.uint32, torch.uint64):
        x = x.to(torch.float64)
    if x.dtype == torch.bool or not (x.is_floating_point() or x.dtype.is_signed or
                                     x.dtype == torch.uint8):
        raise MedreconInputError(f"{name} must be numeric, got dtype {x.dtype}.")
    return x.detach().to(torch.float64)


def _prepare(x: Any, y: Any, data_range: Any = 1.0
             ) -> tuple[torch.Tensor, torch.Tensor, bool, float]:
    """Validate a pair, return 4-d float64 tensors, whether the input was batched, range."""
    xt, yt = _to_tensor(x, "x"), _to_tensor(y, "y")
    if xt.shape != yt.shape:
        raise MedreconInputError(
            f"x and y must have the same shape, got {tuple(xt.shape)} and {tuple(yt.shape)}.")
    if xt.ndim not in (2, 3, 4):
        raise MedreconInputError(
            f"images must be [H, W], [C, H, W] or [B, C, H, W], got shape {tuple(xt.shape)}.")
    if xt.numel() == 0:  # an empty batch reached MONAI's metric and its TypeError
        raise MedreconInputError(f"the images are empty (shape {tuple(xt.shape)}); expected "
                                 "at least one pixel.")
    for t, name in ((xt, "x"), (yt, "y")):
        if not bool(torch.isfinite(t).all()):
            raise MedreconInputError(f"{name} contains NaN/Inf values; expected finite images.")
    dr = _data_range(data_range)
    batched = xt.ndim == 4
    while xt.ndim < 4:
        xt, yt = xt[None], yt[None]
    return xt, yt.to(xt.device), batched, dr


def _data_range(data_range: Any) -> float:
    try:
        if isinstance(data_range, (bool, np.bool_)):  # True is not a span (it read as 1.0)
            raise TypeError
        dr = float(data_range)
    except (TypeError, ValueError):
        raise MedreconInputError(
            f"data_range must be a positive number (the intensity span, e.g. 1.0 for [0, 1], "
            f"2.0 for [-1, 1], 255 for 8-bit), got {data_range!r}.") from None
    if not math.isfinite(dr) or dr <= 0:
        raise MedreconInputError(
            f"data_range must be a finite number > 0 (e.g. 1.0 for [0, 1]), got {data_range!r}.")
    return dr


def _finish(values: torch.Tensor, batched: bool) -> torch.Tensor | float:
    return values if batched else float(values[0])


def _monai(metric: RegressionMetric, x: Any, y: Any) -> torch.Tensor | float:
    """Per-image values of a fresh, unreduced ``monai.metrics`` regression metric."""
    xt, yt, batched, _ = _prepare(x, y)
    return _finish(metric(xt, yt).reshape(-1), batched)  # [B, 1] -> [B]


# ------------------------------------------------------------------------------------------
# Pixel metrics (monai.metrics)
# ------------------------------------------------------------------------------------------
def mse(x: Any, y: Any) -> torch.Tensor | float:
    """Mean squared error per image (``monai.metrics.MSEMetric``).

    Args:
        x: Estimate.
        y: Reference of the same shape.

    Returns:
        ``[B]`` tensor for batches, float for single images.
    """
    return _monai(MSEMetric(reduction="none"), x, y)


def mae(x: Any, y: Any) -> torch.Tensor | float:
    """Mean absolute error per image (``MAEMetric``; see :func:`mse` for shapes)."""
    return _monai(MAEMetric(reduction="none"), x, y)


def rmse(x: Any, y: Any) -> torch.Tensor | float:
    """Root mean squared error per image (``RMSEMetric``; see :func:`mse` for shapes)."""
    return _monai(RMSEMetric(reduction="none"), x, y)


def psnr(x: Any, y: Any, *, data_range: float) -> torch.Tensor | float:
    """Peak signal-to-noise ratio ``10 log10(data_range^2 / MSE)`` in dB, per image.

    Computed by ``monai.metrics.PSNRMetric(max_val=data_range)``; matches
    ``skimage.metrics.peak_signal_noise_ratio``. Identical images give ``inf``.

    Args:
        x: Estimate.
        y: Reference of the same shape.
        data_range: Intensity span of the images (required).

    Returns:
        ``[B]`` tensor for batches, float for single images.
    """
    xt, yt, batched, dr = _prepare(x, y, data_range)
    return _finish(PSNRMetric(max_val=dr, reduction="none")(xt, yt).reshape(-1), batched)


# ------------------------------------------------------------------------------------------
# SSIM (scikit-image)
# ------------------------------------------------------------------------------------------
def ssim(x: Any, y: Any, *, data_range: float, gaussian_weights: bool = True,
         sigma: float = 1.5, win_size: int | None = None, k1: float = 0.01, k2: float = 0.03,
         use_sample_covariance: bool = False) -> torch.Tensor | float:
    """Structural similarity (Wang et al. 2004), mean over valid windows and channels.

    Computed by ``skimage.metrics.structural_similarity`` per image (``float64``, CPU). The
    defaults are the paper's (11 x 11 Gaussian window, sigma 1.5, population covariance), i.e.
    ``structural_similarity(..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    data_range=...)``. ``gaussian_weights=False, win_size=7,
    use_sample_covariance=True`` reproduces scikit-image's defaults. Windows are only evaluated
    where they fit inside the image (scikit-image's border crop); channels are averaged.

    Args:
        x: Estimate.
        y: Reference of the same shape.
        data_range: Intensity span of the images (required).
        gaussian_weights: Gaussian (True, default) or uniform window.
        sigma: Gaussian width. Default 1.5.
        win_size: Window side (odd). Default: ``2 * int(3.5 * sigma + 0.5) + 1`` (11) for
            Gaussian, 7 for uniform windows.
        k1: Luminance constant (>= 0). Default 0.01.
        k2: Contrast constant (>= 0). Default 0.03.
        use_sample_covariance: Normalise (co)variances by ``N - 1`` instead of ``N`` (no
            effect for a 1 x 1 window). Default False.

    Returns:
        ``[B]`` tensor for batches, float for single images.
    """
    xt, yt, batched, dr = _prepare(x, y, data_range)
    if gaussian_weights:
        from medrecon.solvers._common import is_real

        if not (is_real(sigma) and math.isfinite(sigma) and sigma > 0):  # 'x': a raw ValueError
            raise MedreconInputError(f"sigma must be a finite number > 0, got {sigma!r}.")
        win = 2 * int(3.5 * float(sigma) + 0.5) + 1  # scikit-image's truncate=3.5 radius
        if win_size is not None and win_size != win:
            raise MedreconInputError(
                f"win_size {win_size} does not match the Gaussian window of sigma {sigma} "
                f"({win}); leave win_size=None or use gaussian_weights=False.")
    else:
        win = 7 if win_size is None else int(win_size)
        if win < 1 or win % 2 == 0:
            raise MedreconInputError(f"win_size must be an odd positive int, got {win_size!r}.")
    if not (0 <= float(k1) < math.inf and 0 <= float(k2) < math.inf):
        raise MedreconInputError(f"k1 and k2 must be finite and >= 0, got {k1!r}, {k2!r}.")
    h, w = xt.shape[-2:]
    if h < win or w < win:
        raise MedreconInputError(
            f"images of size {(h, w)} are smaller than the SSIM window ({win} x {win}); use a "
            f"smaller win_size with gaussian_weights=False, or larger images.")
    kw = dict(data_range=dr, channel_axis=0, gaussian_weights=bool(gaussian_weights),
              sigma=float(sigma) if gaussian_weights else 1.5, win_size=win, K1=float(k1),
              K2=float(k2), use_sample_covariance=bool(use_sample_covariance) and win > 1)
    values = [structural_similarity(a, b, **kw)
              for a, b in zip(xt.cpu().numpy(), yt.cpu().numpy())]  # [C, H, W] each
    return _finish(torch.tensor(values, dtype=torch.float64, device=xt.device), batched)


# ------------------------------------------------------------------------------------------
# LPIPS
# ------------------------------------------------------------------------------------------
def _candidate_paths(net: str) -> list[Path]:
    fname = LPIPS_BACKBONE_FILES[net][0]
    dirs = [Path(torch.hub.get_dir()) / "checkpoints"]
    env = os.environ.get("MEDRECON_WEIGHTS_DIR")
    if env:
        dirs.insert(0, Path(env))
    return [d / fname for d in dirs]


def _resolve_weights(net: str, weights: str | os.PathLike[str] | None) -> Path:
    if weights is not None:
        p = Path(weights)
        if not p.is_file():
            raise MissingWeightsError(
                f"LPIPS backbone weights file {str(p)!r} does not exist. Expected the "
                f"torchvision ImageNet checkpoint {LPIPS_BACKBONE_FILES[net][0]} "
                f"({LPIPS_BACKBONE_FILES[net][1]}).")
        return p
    for p in _candidate_paths(net):
        if p.is_file():
            return p
    fname, url = LPIPS_BACKBONE_FILES[net]
    where = " or ".join(str(p.parent) for p in _candidate_paths(net))
    raise MissingWeightsError(
        f"LPIPS ({net}) needs the torchvision ImageNet weights {fname}, not found (medrecon does "
        f"not download). Download {url} and put {fname} in {where} (the torch hub checkpoints "
        f"directory; $MEDRECON_WEIGHTS_DIR is also searched), or pass weights=<path>.")


class LPIPSMetric(nn.Module):
    """LPIPS distance module (Zhang et al. 2018) with a locally loaded backbone.

    Build it once and move it with ``.to(device)``; :func:`lpips_distance` caches one per
    setting. The linear calibration layers (v0.1) come with the ``lpips`` package; the
    backbone's ImageNet weights are read from ``weights`` or the torch hub checkpoints directory
    (never downloaded). All parameters are frozen; the module is differentiable w.r.t. inputs.

    Args:
        net: ``'alex'`` (default; the LPIPS metric of the paper) or ``'vgg'`` (VGG16, the
            perceptual loss of BRGM).
        weights: Path to the torchvision checkpoint (``vgg16-397923af.pth`` /
            ``alexnet-owt-7be5be79.pth``). Default: search the torch hub checkpoints dir.
        allow_random_backbone: Use a randomly initialised backbone (seed 0, the global RNG is
            restored) instead of ImageNet weights. For tests only: the values are meaningless.
    """

    def __init__(self, *, net: str = "alex", weights: str | os.PathLike[str] | None = None,
                 allow_random_backbone: bool = False) -> None:
        super().__init__()
        if net not in LPIPS_BACKBONE_FILES:
            raise MedreconInputError(
                f"net must be one of {', '.join(repr(k) for k in LPIPS_BACKBONE_FILES)}, got "
                f"{net!r}.")
        path = None if allow_random_backbone and weights is None else \
            _resolve_weights(net, weights)
        import lpips

        with torch.random.fork_rng(devices=[]), warnings.catch_warnings(), \
                contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.manual_seed(0)  # inside fork_rng: the caller's global RNG state is restored
            model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
        if path is not None:
            self._load_backbone(model, path, net)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self.net = net
        self.random_backbone = path is None
        self.model = model

    @staticmethod
    def _load_backbone(model: nn.Module, path: Path, net: str) -> None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - unreadable/corrupt file
            raise CheckpointError(f"cannot read LPIPS backbone weights {str(path)!r}: {exc}"
                                  ) from None
        target = model.net.state_dict()
        mapped = {}
        for key in target:
            # lpips slices keep torchvision's feature indices: sliceK.<i>.weight <- features.<i>.
            src = "features." + key.split(".", 1)[1]
            if src not in state or state[src].shape != target[key].shape:
                raise CheckpointError(
                    f"{str(path)!r} is not a torchvision {net} ImageNet checkpoint: missing or "
                    f"mis-shaped {src!r}. Expected {LPIPS_BACKBONE_FILES[net][0]}.")
            mapped[key] = state[src]
        model.net.load_state_dict(mapped)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """LPIPS between batches ``[B, C, H, W]`` in ``[-1, 1]`` (``C`` 1 or 3), shape ``[B]``."""
        if x.shape[1] == 1:
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        dt = next(self.model.parameters()).dtype
        return self.model(x.to(dt), y.to(dt)).reshape(-1)


_LPIPS_CACHE: dict[tuple[Any, ...], LPIPSMetric] = {}


def lpips_distance(x: Any, y: Any, *, net: str = "alex",
                   weights: str | os.PathLike[str] | None = None,
                   data_range: float | tuple[float, float] | None = None,
                   allow_random_backbone: bool = False) -> torch.Tensor | float:
    """LPIPS perceptual distance per image (lower is more similar).

    Args:
        x: Estimate, ``[H, W]``, ``[C, H, W]`` or ``[B, C, H, W]`` with ``C`` 1 (repeated to RGB)
            or 3.
        y: Reference of the same shape.
        net: Backbone ``'alex'`` (default, the standard LPIPS metric) or ``'vgg'``.
        weights: Path to the backbone's torchvision ImageNet checkpoint. Default: look for
            ``alexnet-owt-7be5be79.pth`` / ``vgg16-397923af.pth`` in the torch hub checkpoints
            directory (``torch.hub.get_dir()/checkpoints``) and ``$MEDRECON_WEIGHTS_DIR``.
        data_range: Intensity range of the inputs: ``None`` (default) for ``[-1, 1]``, a number
            ``r`` for ``[0, r]``, or a pair ``(lo, hi)``. Inputs are mapped linearly to
            ``[-1, 1]`` (not clipped).
        allow_random_backbone: Use a random backbone when no weights are given (tests only).

    Returns:
        ``[B]`` tensor for batches (differentiable w.r.t. torch inputs), float for single
        images.

    Raises:
        MissingWeightsError: The backbone weights are not available locally; the message names
            the file and the directories to put it in.
    """
    if data_range is None:
        lo, hi = -1.0, 1.0
    elif isinstance(data_range, (tuple, list)):
        if len(data_range) != 2:
            raise MedreconInputError(f"data_range must be r or (lo, hi), got {data_range!r}.")
        lo, hi = float(data_range[0]), float(data_range[1])
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise MedreconInputError(f"data_range (lo, hi) needs lo < hi, got {data_range!r}.")
    else:
        lo, hi = 0.0, _data_range(data_range)
    xt = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    yt = torch.from_numpy(np.ascontiguousarray(y)) if isinstance(y, np.ndarray) else y
    if not isinstance(xt, torch.Tensor) or not isinstance(yt, torch.Tensor):
        raise MedreconInputError("x and y must be torch tensors or numpy arrays.")
    if xt.shape != yt.shape or xt.ndim not in (2, 3, 4):
        raise MedreconInputError(
            f"x and y must have the same shape [H, W], [C, H, W] or [B, C, H, W], got "
            f"{tuple(xt.shape)} and {tuple(yt.shape)}.")
    batched = xt.ndim == 4
    while xt.ndim < 4:
        xt, yt = xt[None], yt[None]
    if xt.shape[1] not in (1, 3):
        raise MedreconInputError(
            f"LPIPS needs 1 or 3 channels, got {xt.shape[1]} (shape {tuple(xt.shape)}).")
    side = 31 if net == "alex" else 16  # AlexNet's strides and pools need 31 pixels
    if min(xt.shape[-2:]) < side:
        raise MedreconInputError(
            f"LPIPS ({net}) needs images of at least {side} x {side} pixels, got "
            f"{tuple(xt.shape[-2:])}.")
    for t, name in ((xt, "x"), (yt, "y")):
        if t.is_complex() or not t.is_floating_point() and t.dtype != torch.uint8:
            raise MedreconInputError(f"{name} must be real, got dtype {t.dtype}.")
        if not bool(torch.isfinite(t).all()):
            raise MedreconInputError(f"{name} contains NaN/Inf values.")
    key = (net, None if weights is None else str(Path(weights).resolve()),
           bool(allow_random_backbone), str(xt.device))
    metric = _LPIPS_CACHE.get(key)
    if metric is None:
        metric = LPIPSMetric(net=net, weights=weights,
                             allow_random_backbone=allow_random_backbone).to(xt.device)
        _LPIPS_CACHE[key] = metric
    scale = 2.0 / (hi - lo)
    xn = (xt.float() - lo) * scale - 1.0
    yn = (yt.to(xt.device).float() - lo) * scale - 1.0
    d = metric(xn, yn)
    return d if batched else float(d[0])
