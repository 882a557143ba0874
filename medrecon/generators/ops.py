"""Pure-PyTorch numerical kernels of StyleGAN2 (no compiled plugins).

These functions reproduce, to floating-point rounding, the operators of NVIDIA's
stylegan2-ada-pytorch (``upfirdn2d``, ``bias_act``, ``conv2d_resample`` and
``modulated_conv2d``) with ordinary ``torch.nn.functional`` calls, so the same code runs on
CPU, CUDA and MPS, under ``torch.autocast``, and supports gradients of any order.

Conventions: images are ``[N, C, H, W]``; FIR filters are float32 tensors of shape
``[fh, fw]`` (2-D) or ``[taps]`` (separable) prepared by :func:`setup_filter`; padding is
``[x0, x1, y0, y1]`` (negative values crop).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "ACTIVATIONS",
    "bias_act",
    "conv2d_resample",
    "downsample2d",
    "modulated_conv2d",
    "normalize_2nd_moment",
    "setup_filter",
    "upfirdn2d",
    "upsample2d",
]

#: Activation name -> (function(x, alpha), default alpha, default gain).
ACTIVATIONS: dict[str, tuple] = {
    "linear": (lambda x, a: x, 0.0, 1.0),
    "relu": (lambda x, a: F.relu(x), 0.0, math.sqrt(2.0)),
    "lrelu": (lambda x, a: F.leaky_relu(x, a), 0.2, math.sqrt(2.0)),
    "tanh": (lambda x, a: torch.tanh(x), 0.0, 1.0),
    "sigmoid": (lambda x, a: torch.sigmoid(x), 0.0, 1.0),
    "elu": (lambda x, a: F.elu(x), 0.0, 1.0),
    "selu": (lambda x, a: F.selu(x), 0.0, 1.0),
    "softplus": (lambda x, a: F.softplus(x), 0.0, 1.0),
    "swish": (lambda x, a: torch.sigmoid(x) * x, 0.0, math.sqrt(2.0)),
}


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale ``x`` to unit second moment along ``dim`` (StyleGAN's pixel norm of z)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def bias_act(
    x: torch.Tensor,
    b: torch.Tensor | None = None,
    *,
    dim: int = 1,
    act: str = "linear",
    alpha: float | None = None,
    gain: float | None = None,
    clamp: float | None = None,
) -> torch.Tensor:
    """Add a bias, apply an activation, scale by a gain and clamp (NVIDIA ``bias_act``).

    Args:
        x: Activations of any shape.
        b: Optional 1-D bias broadcast along ``dim``.
        dim: Dimension of ``x`` that ``b`` indexes.
        act: Name in :data:`ACTIVATIONS`.
        alpha: Activation shape parameter; ``None`` = the activation's default (0.2 for lrelu).
        gain: Output scale; ``None`` = the activation's default (sqrt(2) for (l)relu).
        clamp: Clamp the output to ``[-clamp, clamp]``; ``None`` disables clamping.

    Returns:
        Tensor of the same shape as ``x``.
    """
    func, def_alpha, def_gain = ACTIVATIONS[act]
    alpha = float(def_alpha if alpha is None else alpha)
    gain = float(def_gain if gain is None else gain)
    # Three passes over the activations instead of four: for a positive gain and an
    # activation with act(g x) == g act(x) (linear, relu, lrelu) the gain goes in with the
    # bias, ``act(g x + g b)``, one ``add`` with ``alpha``. Out of place throughout: under
    # vmap (IAGAN's per-slice weights) in-place steps cost a copy each.
    if gain > 0 and gain != 1 and act in _HOMOGENEOUS:
        if b is not None:
            shape = [-1 if i == dim else 1 for i in range(x.ndim)]
            x = torch.add(b.to(x.dtype).reshape(shape) * gain, x, alpha=gain)
        else:
            x = x * gain
        gain = 1.0
    elif b is not None:
        shape = [-1 if i == dim else 1 for i in range(x.ndim)]
        x = x + b.to(x.dtype).reshape(shape)
    x = func(x, alpha)
    if gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        # hardtanh == clamp; its backward is one fused pass where clamp's autograd takes
        # three (two comparisons and a where): 3 % of an IAGAN step on the CPU. The gradient
        # differs only at exactly +-clamp (zero there, as in NVIDIA's CUDA bias_act).
        x = F.hardtanh(x, -clamp, clamp)
    return x


#: Activations with ``act(g x) == g act(x)`` for ``g > 0``.
_HOMOGENEOUS = frozenset({"linear", "relu", "lrelu"})


def setup_filter(
    f: Sequence[float] | torch.Tensor | None,
    *,
    normalize: bool = True,
    flip_filter: bool = False,
    gain: float = 1.0,
    separable: bool | None = None,
) -> torch.Tensor:
    """Prepare a FIR filter for :func:`upfirdn2d` (same rules as NVIDIA ``setup_filter``).

    A 1-D filter with fewer than 8 taps becomes its 2-D outer product, so ``[1, 3, 3, 1]``
    gives the ``[4, 4]`` buffer found in NVIDIA checkpoints (``resample_filter``).

    Args:
        f: Taps (1-D), a 2-D kernel, a scalar, or ``None`` (identity).
        normalize: Scale to unit DC gain.
        flip_filter: Flip the filter (convolution <-> correlation).
        gain: Overall signal gain.
        separable: Keep a 1-D filter separable; ``None`` = only when it has >= 8 taps.

    Returns:
        Float32 CPU tensor ``[fh, fw]`` or ``[taps]``.
    """
    if f is None:
        f = 1
    f = torch.as_tensor(f, dtype=torch.float32).clone()
    if f.ndim == 0:
        f = f[None]
    if f.ndim not in (1, 2) or f.numel() == 0:
        raise ValueError(f"FIR filter must be 1-D or 2-D and non-empty, got shape {tuple(f.shape)}")
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    return f * (gain ** (f.ndim / 2))


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    vx, vy = v
    return int(vx), int(vy)


def _padding4(p: int | Sequence[int]) -> tuple[int, int, int, int]:
    if isinstance(p, int):
        return p, p, p, p
    p = [int(v) for v in p]
    if len(p) == 2:
        return p[0], p[0], p[1], p[1]
    return p[0], p[1], p[2], p[3]


def _filter_size(f: torch.Tensor | None) -> tuple[int, int]:
    if f is None:
        return 1, 1
    return int(f.shape[-1]), int(f.shape[0])


def upfirdn2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    *,
    up: int | Sequence[int] = 1,
    down: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    flip_filter: bool = False,
    gain: float = 1.0,
) -> torch.Tensor:
    """Upsample (zero insertion), pad, FIR-filter and downsample every channel of ``x``.

    Equivalent to NVIDIA's ``upfirdn2d`` (and to ``scipy.signal.upfirdn`` per axis). Zero
    insertion followed by filtering is done as one depthwise transposed convolution with
    stride ``up``, and filtering followed by decimation as one strided depthwise convolution,
    so no multiply-by-zero or discarded output is ever computed.

    Args:
        x: ``[N, C, H, W]`` input.
        f: Filter from :func:`setup_filter` (``None`` = identity).
        up: Integer upsampling factor (int or ``(x, y)``).
        down: Integer downsampling factor (int or ``(x, y)``).
        padding: Padding of the upsampled image, ``p`` / ``(px, py)`` / ``(x0, x1, y0, y1)``.
        flip_filter: ``False`` = convolution, ``True`` = correlation.
        gain: Signal gain.

    Returns:
        ``[N, C, H', W']`` with ``H' = (H*up + y0 + y1 - fh) // down + 1``.
    """
    upx, upy = _pair(up)
    downx, downy = _pair(down)
    px0, px1, py0, py1 = _padding4(padding)
    c = x.shape[1]
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    f = f.to(device=x.device, dtype=x.dtype)
    if gain != 1:
        f = f * (gain ** (f.ndim / 2))
    if x.device.type == "cpu" and c <= _MATRIX_MAX_CHANNELS and max(x.shape[-2:]) <= _MATRIX_MAX_SIZE:
        factors = _separable_factors(tuple(f.shape), tuple(f.flatten().tolist()))
        if factors is not None:
            return _upfirdn_matmul(x, factors, up=(upx, upy), down=(downx, downy),
                                   pad=(px0, px1, py0, py1), flip_filter=flip_filter)
    if f.ndim == 1:
        # Separable: one pass along x with [1, taps], then along y with [taps, 1].
        passes = [(f[None, :], upx, downx, px0, px1, 1), (f[:, None], upy, downy, py0, py1, 0)]
        for k, u, d, p0, p1, axis in passes:
            x = _upfirdn_axes(x, k, up=(u, 1) if axis else (1, u), down=(d, 1) if axis else (1, d),
                              pad=(p0, p1, 0, 0) if axis else (0, 0, p0, p1), flip_filter=flip_filter, c=c)
        return x
    return _upfirdn_axes(x, f, up=(upx, upy), down=(downx, downy), pad=(px0, px1, py0, py1), flip_filter=flip_filter, c=c)


#: Up to this many channels (the image skip path: 1 or 3) and this many pixels a side, CPU
#: ``upfirdn2d`` with a separable filter is two small matrix products: a depthwise convolution
#: with one channel is all overhead there. Upsampling a 1-channel 64^2 image, forward and
#: backward, 2 threads: 263 -> 95 us at batch 1, 537 -> 339 us at batch 8.
_MATRIX_MAX_CHANNELS = 4
_MATRIX_MAX_SIZE = 256


@functools.lru_cache(maxsize=64)
def _separable_factors(shape: tuple[int, ...], values: tuple[float, ...]
                       ) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``(fy, fx)`` with ``f = outer(fy, fx)`` (2-D) or ``(f, f)`` (1-D), else None, for the
    filter ``f`` of this shape and these values (cached: asked on every synthesis step)."""
    if len(shape) == 1:
        return values, values
    f = torch.tensor(values, dtype=torch.float64).reshape(shape)
    total = float(f.sum())
    if total == 0.0:
        return None
    fy, fx = f.sum(1) / total, f.sum(0)
    if not torch.allclose(torch.outer(fy, fx), f, rtol=1e-6, atol=1e-7 * float(f.abs().max())):
        return None
    return tuple(fy.tolist()), tuple(fx.tolist())


@functools.lru_cache(maxsize=64)
def _axis_matrix(n: int, taps: tuple[float, ...], up: int, down: int, p0: int, p1: int,
                 flip_filter: bool, dtype: torch.dtype) -> torch.Tensor:
    """``M [n, n']``: upfirdn of a length-``n`` signal along one axis is ``signal @ M``, built by
    applying :func:`_upfirdn_axes` to the ``n`` unit signals (so the two paths agree exactly).
    Built outside any autocast region, in ``dtype``: the cache outlives the caller's context."""
    with torch.autocast("cpu", enabled=False), torch.no_grad():
        eye = torch.eye(n, dtype=dtype)[:, None, None, :]  # n one-row images
        k = torch.tensor(taps, dtype=dtype)[None, :]
        m = _upfirdn_axes(eye, k, up=(up, 1), down=(down, 1), pad=(p0, p1, 0, 0),
                          flip_filter=flip_filter, c=1)
    return m[:, 0, 0, :].to(dtype).contiguous()


def _upfirdn_matmul(x, factors, *, up, down, pad, flip_filter):
    """upfirdn2d with a separable filter as ``My^T @ x @ Mx`` (few channels, CPU)."""
    (fy, fx), (upx, upy), (downx, downy) = factors, up, down
    px0, px1, py0, py1 = pad
    mx = _axis_matrix(x.shape[-1], fx, upx, downx, px0, px1, flip_filter, x.dtype)
    my = _axis_matrix(x.shape[-2], fy, upy, downy, py0, py1, flip_filter, x.dtype)
    return torch.matmul(torch.matmul(my.t(), x), mx)


def _upfirdn_axes(x, f, *, up, down, pad, flip_filter, c):
    """upfirdn2d for one 2-D kernel ``f`` ``[fh, fw]`` (already gain-scaled, x.dtype)."""
    upx, upy = up
    downx, downy = down
    px0, px1, py0, py1 = pad
    fh, fw = int(f.shape[0]), int(f.shape[1])
    n = x.shape[0]
    if n > 1 and x.device.type == "cpu":
        # every channel of every image is filtered alike: one depthwise convolution over the
        # N * C channels of one image. oneDNN's depthwise backward over a batch is several
        # times slower: profiled in a volume solve (2 threads), 15.4 ms a call for 8 images
        # of 16 channels at 131^2 against 2.6 ms for one image of 128 channels. (Not on
        # CUDA, where it would also undo the channels-last layout of the fp16 layers.)
        y = _upfirdn_axes(x.reshape(1, n * c, *x.shape[2:]), f, up=up, down=down, pad=pad,
                          flip_filter=flip_filter, c=n * c)
        return y.reshape(n, c, *y.shape[2:])
    if upx > 1 or upy > 1:
        # Zero insertion + full convolution with f == transposed conv (a true convolution)
        # with stride `up`; no multiply-by-zero is computed. Output index t of the padded
        # correlation maps to index t + f - 1 - p0 of the full convolution.
        k = f if flip_filter is False else f.flip([0, 1])
        x = F.conv_transpose2d(x, k[None, None].expand(c, 1, fh, fw), stride=(upy, upx), groups=c)
        x = F.pad(x, [px0 - (fw - 1), px1 - fw + upx, py0 - (fh - 1), py1 - fh + upy])
        if downx > 1 or downy > 1:
            x = x[:, :, ::downy, ::downx]
        return x
    k = f.flip([0, 1]) if not flip_filter else f  # conv2d correlates; default is convolution.
    x = F.pad(x, [px0, px1, py0, py1])  # negative values crop
    return F.conv2d(x, k[None, None].expand(c, 1, fh, fw), stride=(downy, downx), groups=c)


def upsample2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    *,
    up: int = 2,
    padding: int | Sequence[int] = 0,
    flip_filter: bool = False,
    gain: float = 1.0,
) -> torch.Tensor:
    """Upsample by ``up`` with FIR filter ``f``; output is exactly ``up`` times larger."""
    upx, upy = _pair(up)
    px0, px1, py0, py1 = _padding4(padding)
    fw, fh = _filter_size(f)
    p = [
        px0 + (fw + upx - 1) // 2,
        px1 + (fw - upx) // 2,
        py0 + (fh + upy - 1) // 2,
        py1 + (fh - upy) // 2,
    ]
    return upfirdn2d(x, f, up=up, padding=p, flip_filter=flip_filter, gain=gain * upx * upy)


def downsample2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    *,
    down: int = 2,
    padding: int | Sequence[int] = 0,
    flip_filter: bool = False,
    gain: float = 1.0,
) -> torch.Tensor:
    """Downsample by ``down`` with FIR filter ``f``; output is exactly ``down`` times smaller."""
    downx, downy = _pair(down)
    px0, px1, py0, py1 = _padding4(padding)
    fw, fh = _filter_size(f)
    p = [
        px0 + (fw - downx + 1) // 2,
        px1 + (fw - downx) // 2,
        py0 + (fh - downy + 1) // 2,
        py1 + (fh - downy) // 2,
    ]
    return upfirdn2d(x, f, down=down, padding=p, flip_filter=flip_filter, gain=gain)


def _conv(
    x: torch.Tensor,
    w: torch.Tensor,
    *,
    stride: int = 1,
    padding: Sequence[int] = (0, 0),
    groups: int = 1,
    transpose: bool = False,
    flip_weight: bool = True,
) -> torch.Tensor:
    if not flip_weight:
        w = w.flip([2, 3])
    if transpose:
        return F.conv_transpose2d(x, w, stride=stride, padding=tuple(padding), groups=groups)
    return F.conv2d(x, w, stride=stride, padding=tuple(padding), groups=groups)


def conv2d_resample(
    x: torch.Tensor,
    w: torch.Tensor,
    f: torch.Tensor | None = None,
    *,
    up: int = 1,
    down: int = 1,
    padding: int | Sequence[int] = 0,
    groups: int = 1,
    flip_weight: bool = True,
    flip_filter: bool = False,
) -> torch.Tensor:
    """2-D convolution with optional FIR up/downsampling (NVIDIA ``conv2d_resample``).

    The padding is applied once, relative to the upsampled image. Upsampling uses a strided
    transposed convolution followed by the FIR filter; downsampling filters first and then
    runs a strided convolution, exactly as the reference does, so outputs match it to
    rounding.

    Args:
        x: ``[N, Cin, H, W]``.
        w: ``[Cout, Cin // groups, kh, kw]``.
        f: Resampling filter (:func:`setup_filter`), ignored when ``up == down == 1``.
        up: Integer upsampling factor.
        down: Integer downsampling factor.
        padding: Padding ``p`` / ``(px, py)`` / ``(x0, x1, y0, y1)``.
        groups: Convolution groups.
        flip_weight: ``True`` = correlation (``F.conv2d``), ``False`` = true convolution.
        flip_filter: ``True`` = correlate with ``f``.

    Returns:
        ``[N, Cout, H', W']``.
    """
    cout, cin_g, kh, kw = (int(s) for s in w.shape)
    fw, fh = _filter_size(f)
    px0, px1, py0, py1 = _padding4(padding)
    if up > 1:
        px0 += (fw + up - 1) // 2
        px1 += (fw - up) // 2
        py0 += (fh + up - 1) // 2
        py1 += (fh - up) // 2
    if down > 1:
        px0 += (fw - down + 1) // 2
        px1 += (fw - down) // 2
        py0 += (fh - down + 1) // 2
        py1 += (fh - down) // 2
    pad4 = [px0, px1, py0, py1]

    if kw == 1 and kh == 1 and down > 1 and up == 1:
        x = upfirdn2d(x, f, down=down, padding=pad4, flip_filter=flip_filter)
        return _conv(x, w, groups=groups, flip_weight=flip_weight)
    if kw == 1 and kh == 1 and up > 1 and down == 1:
        x = _conv(x, w, groups=groups, flip_weight=flip_weight)
        return upfirdn2d(x, f, up=up, padding=pad4, gain=up**2, flip_filter=flip_filter)
    if down > 1 and up == 1:
        x = upfirdn2d(x, f, padding=pad4, flip_filter=flip_filter)
        return _conv(x, w, stride=down, groups=groups, flip_weight=flip_weight)
    if up > 1:
        # Transposed conv needs [Cin, Cout/groups, kh, kw] per group.
        if groups == 1:
            w = w.transpose(0, 1)
        else:
            w = w.reshape(groups, cout // groups, cin_g, kh, kw).transpose(1, 2)
            w = w.reshape(groups * cin_g, cout // groups, kh, kw)
        px0 -= kw - 1
        px1 -= kw - up
        py0 -= kh - 1
        py1 -= kh - up
        pxt = max(min(-px0, -px1), 0)
        pyt = max(min(-py0, -py1), 0)
        x = _conv(x, w, stride=up, padding=[pyt, pxt], groups=groups, transpose=True, flip_weight=not flip_weight)
        x = upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up**2, flip_filter=flip_filter)
        if down > 1:
            x = upfirdn2d(x, f, down=down, flip_filter=flip_filter)
        return x
    if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return _conv(x, w, padding=[py0, px0], groups=groups, flip_weight=flip_weight)
    x = upfirdn2d(x, None, padding=pad4)
    return _conv(x, w, groups=groups, flip_weight=flip_weight)


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    *,
    noise: torch.Tensor | None = None,
    up: int = 1,
    down: int = 1,
    padding: int = 0,
    resample_filter: torch.Tensor | None = None,
    demodulate: bool = True,
    flip_weight: bool = True,
    fused_modconv: bool = True,
) -> torch.Tensor:
    """StyleGAN2 modulated convolution with optional demodulation.

    The per-sample weight is ``w[n,o,i,:,:] = weight[o,i] * styles[n,i]``, demodulated by
    ``rsqrt(sum_{i,k} w^2 + 1e-8)``. ``fused_modconv=True`` runs one grouped convolution
    with groups = batch (NVIDIA's inference path); ``False`` scales the activations before
    and after a shared-weight convolution (same result to rounding; faster for large batches
    on CPU and the path NVIDIA uses during training).

    Args:
        x: ``[N, Cin, H, W]``.
        weight: ``[Cout, Cin, kh, kw]`` (already scaled).
        styles: ``[N, Cin]`` modulation coefficients.
        noise: Optional additive noise broadcastable to the output.
        up: Upsampling factor.
        down: Downsampling factor.
        padding: Padding relative to the upsampled image.
        resample_filter: FIR filter for resampling.
        demodulate: Apply weight demodulation.
        flip_weight: ``True`` = correlation.
        fused_modconv: Use the grouped-convolution path.

    Returns:
        ``[N, Cout, H', W']``.
    """
    batch = x.shape[0]
    cout, cin, kh, kw = weight.shape
    if x.dtype == torch.float16 and demodulate:
        # Pre-normalise to avoid fp16 overflow (cancels out under demodulation).
        weight = weight * (1 / math.sqrt(cin * kh * kw) / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)

    dcoefs = None
    if demodulate:
        # sum_{i,k} (weight[o,i,k] styles[n,i])^2 = sum_i styles[n,i]^2 sum_k weight[o,i,k]^2:
        # an [N, O, I] sum instead of squaring and summing the [N, O, I, k, k] modulated weights
        # (NVIDIA's order; equal to rounding, k*k times less work and memory; a broadcast sum,
        # not a matmul, so that autocast keeps it in the input precision)
        wsq = weight.square().sum(dim=[2, 3])  # [O, I]
        dcoefs = ((styles.square().unsqueeze(1) * wsq).sum(dim=2) + 1e-8).rsqrt()  # [N, O]

    if kh == kw == 1 and up == down == 1 and padding == 0:
        # a 1 x 1 modulated convolution (ToRGB) is a batched matrix product: oneDNN's
        # convolution with 1-3 output channels is slow. ToRGB of 16 channels at 128^2, forward
        # and backward, 2 threads: 1910 -> 87 us at batch 1, 6059 -> 455 us at batch 8.
        coefs = styles.reshape(batch, 1, -1)  # [N, 1 or O, I]
        if demodulate:
            coefs = coefs * dcoefs.reshape(batch, -1, 1)
        w = (weight[:, :, 0, 0].unsqueeze(0) * coefs).to(x.dtype)  # [N, O, I]
        x = torch.bmm(w, x.reshape(batch, cin, -1)).reshape(batch, cout, *x.shape[2:])
        if noise is not None:
            x = x + noise.to(x.dtype)
        return x

    if not fused_modconv:
        x = x * styles.to(x.dtype).reshape(batch, -1, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), resample_filter, up=up, down=down, padding=padding, flip_weight=flip_weight)
        if demodulate:
            x = x * dcoefs.to(x.dtype).reshape(batch, -1, 1, 1)
        if noise is not None:
            x = x + noise.to(x.dtype)
        return x

    coefs = styles.reshape(batch, 1, -1)  # [N, 1 or O, I]: the factor of weight[o, i] per sample
    if demodulate:
        coefs = coefs * dcoefs.reshape(batch, -1, 1)
    w = weight.unsqueeze(0) * coefs.reshape(*coefs.shape, 1, 1)  # one pass over [N, O, I, k, k]
    x = x.reshape(1, -1, *x.shape[2:])  # [1, N*I, H, W]
    w = w.reshape(-1, cin, kh, kw)  # [N*O, I, k, k]
    x = conv2d_resample(x, w.to(x.dtype), resample_filter, up=up, down=down, padding=padding, groups=batch, flip_weight=flip_weight)
    x = x.reshape(batch, -1, *x.shape[2:])
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x
