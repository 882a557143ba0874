"""StyleGAN2 generator and discriminator in pure PyTorch.

Numerically equivalent to NVIDIA's stylegan2-ada-pytorch ``training/networks.py`` (config
``paper256``/``stylegan2``/``cifar`` etc.): same module tree, parameter and buffer names and
shapes, so ``state_dict`` s are interchangeable; weights are stored unscaled and scaled at
run time (equalised learning rate); FIR ``[1, 3, 3, 1]`` resampling; modulation and
demodulation; per-layer noise (``noise_mode`` ``'const'`` / ``'random'`` / ``'none'``);
``w_avg`` tracking and truncation; ``conv_clamp``; and the W+ layout in which the ToRGB of
block ``R`` shares its ``w`` with the first convolution of block ``2R``.

Differences from the reference, all deliberate:

* Every constructor argument after the structural ones is keyword-only.
* Initialisation randomness comes only from an explicit ``torch.Generator`` (``seed`` on the
  top-level networks), and ``noise_mode='random'`` needs an explicit ``noise_generator``: the
  global RNG is never touched.
* The default ``noise_mode`` is ``'const'`` (deterministic, what inversion needs).
* fp16 blocks (``num_fp16_res``) run in fp16 on CUDA only; on CPU they run in fp32.
* Shapes are checked at the public entry points and raise
  :class:`~medrecon.errors.MedreconInputError` instead of ``AssertionError``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from medrecon.errors import MedreconInputError
from medrecon.generators import ops

__all__ = [
    "Conv2dLayer",
    "Discriminator",
    "DiscriminatorBlock",
    "DiscriminatorEpilogue",
    "FullyConnectedLayer",
    "Generator",
    "MappingNetwork",
    "MinibatchStdLayer",
    "SynthesisBlock",
    "SynthesisLayer",
    "SynthesisNetwork",
    "ToRGBLayer",
    "num_ws_for_resolution",
]

NOISE_MODES = ("const", "random", "none")
ARCHITECTURES = ("orig", "skip", "resnet")
_DEFAULT_FILTER = (1, 3, 3, 1)


def num_ws_for_resolution(img_resolution: int) -> int:
    """Number of W+ vectors of a StyleGAN2 generator: ``2 * log2(R) - 2`` (12 at 128^2)."""
    return 2 * int(math.log2(img_resolution)) - 2


def _gen(generator: torch.Generator | None) -> torch.Generator:
    return generator if generator is not None else torch.Generator().manual_seed(0)


def _randn(shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    return torch.randn(list(shape), generator=generator)


def _check_tensor(t: Any, expected: Sequence[int | None], name: str, hint: str = "") -> None:
    """Raise MedreconInputError unless ``t`` is a tensor of the ``expected`` shape (None = any)."""
    if not isinstance(t, torch.Tensor):
        raise MedreconInputError(f"{name} must be a torch.Tensor of shape {_fmt(expected)}, got {type(t).__name__}. {hint}".strip())
    ok = t.ndim == len(expected) and all(e is None or int(s) == e for s, e in zip(t.shape, expected))
    if not ok:
        raise MedreconInputError(f"{name} has shape {list(t.shape)}, expected {_fmt(expected)}. {hint}".strip())


def _fmt(expected: Sequence[int | None]) -> str:
    return "[" + ", ".join("*" if e is None else str(e) for e in expected) + "]"


def _check_noise_mode(noise_mode: str, noise_generator: torch.Generator | None) -> None:
    if noise_mode not in NOISE_MODES:
        raise MedreconInputError(f"noise_mode={noise_mode!r} is not one of {NOISE_MODES}.")
    if noise_mode == "random" and noise_generator is None:
        raise MedreconInputError(
            "noise_mode='random' needs an explicit noise_generator (a torch.Generator on the "
            "network's device); medrecon never draws from the global RNG. Pass "
            "noise_generator=torch.Generator(device).manual_seed(seed), or use noise_mode='const'."
        )


# ----------------------------------------------------------------------------------------
# Layers


class FullyConnectedLayer(nn.Module):
    """Dense layer with equalised learning rate: ``act(x @ (W * g).T + b * lr_mul)``.

    Args:
        in_features: Input width.
        out_features: Output width.
        bias: Learn an additive bias.
        activation: Name in :data:`medrecon.generators.ops.ACTIVATIONS`.
        lr_multiplier: Learning-rate multiplier; the runtime weight gain is
            ``lr_multiplier / sqrt(in_features)`` and the bias gain ``lr_multiplier``.
        bias_init: Initial bias value (1 for the style affines).
        generator: RNG for the initial weights (default: a fresh one seeded with 0).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool = True,
        activation: str = "linear",
        lr_multiplier: float = 1.0,
        bias_init: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.activation = activation
        self.weight = nn.Parameter(_randn([out_features, in_features], _gen(generator)) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = float(lr_multiplier / math.sqrt(in_features))
        self.bias_gain = float(lr_multiplier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if x.ndim == 2 and 1 < n < MIN_GEMM_ROWS and not _vmapped(x):
            # a few rows: padded, so that each row's product is the same as in a big batch
            x = torch.cat([x, x.new_zeros(MIN_GEMM_ROWS - n, x.shape[1])])
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            out = torch.addmm(b.unsqueeze(0), x, w.t())
        else:
            out = ops.bias_act(x.matmul(w.t()), b, act=self.activation)
        return out[:n]


#: Dense layers pad a batch of 2 or more rows but fewer than this with zero rows. The CPU's
#: BLAS multiplies fewer than 4 rows with another kernel, which sums in another order: a
#: latent in a batch of 2-3 came out different in the last bits from the same latent in a
#: batch of 4 or more, and a reconstruction's optimisation amplifies last bits into visibly
#: different results, so a slice's result depended on ``batch_size``. A single row is not
#: padded: a lone sample's small convolutions (4-8 px) use other kernels anyway, and the pad
#: would cost it 3 % of a W+ step. Convolutions of 2 or more samples and batched matrix
#: products (the per-slice weights under ``vmap``) were the same at every batch size.
MIN_GEMM_ROWS = 8


def _vmapped(x: torch.Tensor) -> bool:
    """Whether ``x`` is a batched tensor inside ``torch.func.vmap`` (its products are batched
    matrix products already; padding there would only cost time)."""
    try:
        return bool(torch._C._functorch.is_batchedtensor(x))
    except AttributeError:  # a torch without this query: pad (correct, a little slower)
        return False

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


class Conv2dLayer(nn.Module):
    """Convolution with equalised learning rate, optional FIR up/downsampling and clamping.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Square kernel size.
        bias: Learn an additive bias.
        activation: Activation name.
        up: Upsampling factor.
        down: Downsampling factor.
        resample_filter: FIR taps for resampling.
        conv_clamp: Clamp outputs to ``+-conv_clamp`` (``None`` = off).
        channels_last: Store the weight in channels-last memory format.
        trainable: Register weight/bias as parameters (else as buffers, Freeze-D).
        generator: RNG for the initial weights.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        bias: bool = True,
        activation: str = "linear",
        up: int = 1,
        down: int = 1,
        resample_filter: Sequence[float] = _DEFAULT_FILTER,
        conv_clamp: float | None = None,
        channels_last: bool = False,
        trainable: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.activation = activation
        self.up = up
        self.down = down
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", ops.setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.act_gain = ops.ACTIVATIONS[activation][2]
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        weight = _randn([out_channels, in_channels, kernel_size, kernel_size], _gen(generator)).to(memory_format=fmt)
        b = torch.zeros([out_channels]) if bias else None
        if trainable:
            self.weight = nn.Parameter(weight)
            self.bias = nn.Parameter(b) if b is not None else None
        else:
            self.register_buffer("weight", weight)
            if b is not None:
                self.register_buffer("bias", b)
            else:
                self.bias = None

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        w = self.weight * self.weight_gain
        b = self.bias.to(x.dtype) if self.bias is not None else None
        x = ops.conv2d_resample(
            x, w.to(x.dtype), self.resample_filter, up=self.up, down=self.down, padding=self.padding, flip_weight=self.up == 1
        )
        act_gain = self.act_gain * gain
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return ops.bias_act(x, b, act=self.activation, gain=act_gain, clamp=act_clamp)


class MappingNetwork(nn.Module):
    """StyleGAN2 mapping network ``z (+ c) -> w``, broadcast to ``num_ws`` copies.

    Args:
        z_dim: Latent dimension (0 = no latent, used by the conditional discriminator).
        c_dim: Label dimension (0 = unconditional).
        w_dim: W dimension.
        num_ws: Number of broadcast copies, ``None`` = return ``[N, w_dim]``.
        num_layers: Number of dense layers.
        embed_features: Label embedding width (``None`` = ``w_dim``).
        layer_features: Hidden width (``None`` = ``w_dim``).
        activation: Activation name.
        lr_multiplier: Learning-rate multiplier of the dense layers (0.01 in StyleGAN2).
        w_avg_beta: Decay of the running mean of w tracked in training mode, ``None`` = off.
        generator: RNG for the initial weights.
    """

    def __init__(
        self,
        *,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        num_ws: int | None,
        num_layers: int = 8,
        embed_features: int | None = None,
        layer_features: int | None = None,
        activation: str = "lrelu",
        lr_multiplier: float = 0.01,
        w_avg_beta: float | None = 0.995,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        gen = _gen(generator)
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta
        if embed_features is None:
            embed_features = w_dim
        if c_dim == 0:
            embed_features = 0
        if layer_features is None:
            layer_features = w_dim
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features, generator=gen)
        for idx in range(num_layers):
            layer = FullyConnectedLayer(
                features[idx], features[idx + 1], activation=activation, lr_multiplier=lr_multiplier, generator=gen
            )
            setattr(self, f"fc{idx}", layer)
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(
        self,
        z: torch.Tensor | None,
        c: torch.Tensor | None = None,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        skip_w_avg_update: bool = False,
    ) -> torch.Tensor:
        """Map latents to W.

        Args:
            z: ``[N, z_dim]`` latents (ignored when ``z_dim == 0``).
            c: ``[N, c_dim]`` labels; required when ``c_dim > 0``.
            truncation_psi: Interpolation towards ``w_avg`` (1 = none).
            truncation_cutoff: Truncate only the first ``cutoff`` ws (``None`` = all).
            skip_w_avg_update: Do not update ``w_avg`` even in training mode.

        Returns:
            ``[N, num_ws, w_dim]`` (or ``[N, w_dim]`` when ``num_ws`` is None).
        """
        x = None
        if self.z_dim > 0:
            _check_tensor(z, [None, self.z_dim], "z", "Draw z as torch.randn([batch, G.z_dim], generator=...).")
            x = ops.normalize_2nd_moment(z.to(torch.float32))
        if self.c_dim > 0:
            n = z.shape[0] if z is not None else None
            _check_tensor(c, [n, self.c_dim], "c", "This network is class-conditional: pass one-hot labels [batch, c_dim].")
            y = ops.normalize_2nd_moment(self.embed(c.to(torch.float32)))
            x = torch.cat([x, y], dim=1) if x is not None else y
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        if self.w_avg_beta is not None and self.training and not skip_w_avg_update and hasattr(self, "w_avg"):
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            if not hasattr(self, "w_avg"):
                raise MedreconInputError("truncation_psi != 1 needs w_avg, which this mapping network does not track.")
            if self.num_ws is None or truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                head = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
                x = torch.cat([head, x[:, truncation_cutoff:]], dim=1)
        return x


class SynthesisLayer(nn.Module):
    """Modulated 3x3 convolution + noise + bias + lrelu (one StyleGAN2 synthesis layer).

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        w_dim: W dimension.
        resolution: Output resolution of this layer.
        kernel_size: Kernel size.
        up: Upsampling factor (2 for the first conv of a block).
        use_noise: Add per-pixel noise scaled by the learned ``noise_strength``.
        activation: Activation name.
        resample_filter: FIR taps.
        conv_clamp: Output clamp (``None`` = off).
        channels_last: Store the weight channels-last.
        generator: RNG for the initial weights and ``noise_const``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        w_dim: int,
        resolution: int,
        kernel_size: int = 3,
        up: int = 1,
        use_noise: bool = True,
        activation: str = "lrelu",
        resample_filter: Sequence[float] = _DEFAULT_FILTER,
        conv_clamp: float | None = None,
        channels_last: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        gen = _gen(generator)
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.activation = activation
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", ops.setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.act_gain = ops.ACTIVATIONS[activation][2]
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1, generator=gen)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = nn.Parameter(_randn([out_channels, in_channels, kernel_size, kernel_size], gen).to(memory_format=fmt))
        if use_noise:
            self.register_buffer("noise_const", _randn([resolution, resolution], gen))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))

    def forward(
        self,
        x: torch.Tensor,
        w: torch.Tensor,
        noise_mode: str = "const",
        fused_modconv: bool = True,
        gain: float = 1.0,
        noise_generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        styles = self.affine(w)
        noise = None
        if self.use_noise and noise_mode == "random":
            noise = torch.randn(
                [x.shape[0], 1, self.resolution, self.resolution], device=x.device, generator=noise_generator
            ) * self.noise_strength
        elif self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        x = ops.modulated_conv2d(
            x,
            self.weight,
            styles,
            noise=noise,
            up=self.up,
            padding=self.padding,
            resample_filter=self.resample_filter,
            flip_weight=self.up == 1,
            fused_modconv=fused_modconv,
        )
        act_gain = self.act_gain * gain
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return ops.bias_act(x, self.bias, act=self.activation, gain=act_gain, clamp=act_clamp)


class ToRGBLayer(nn.Module):
    """Modulated 1x1 convolution to image channels, without demodulation.

    Args:
        in_channels: Feature channels.
        out_channels: Image channels.
        w_dim: W dimension.
        kernel_size: Kernel size (1).
        conv_clamp: Output clamp.
        channels_last: Store the weight channels-last.
        generator: RNG for the initial weights.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        w_dim: int,
        kernel_size: int = 1,
        conv_clamp: float | None = None,
        channels_last: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        gen = _gen(generator)
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1, generator=gen)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = nn.Parameter(_randn([out_channels, in_channels, kernel_size, kernel_size], gen).to(memory_format=fmt))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size**2)

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused_modconv: bool = True) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = ops.modulated_conv2d(x, self.weight, styles, demodulate=False, fused_modconv=fused_modconv)
        return ops.bias_act(x, self.bias, clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of the synthesis network: [up-conv,] conv, [ToRGB], skip/resnet wiring.

    Args:
        in_channels: Input channels, 0 for the first (4x4, learned-constant) block.
        out_channels: Output channels.
        w_dim: W dimension.
        resolution: Block resolution.
        img_channels: Image channels.
        is_last: Last block (always has a ToRGB).
        architecture: ``'orig'``, ``'skip'`` (StyleGAN2 default) or ``'resnet'``.
        resample_filter: FIR taps.
        conv_clamp: Output clamp of the convolutions.
        use_fp16: Run this block in fp16 on CUDA.
        fp16_channels_last: Use channels-last with fp16.
        generator: RNG for the initial weights.
        **layer_kwargs: Passed to :class:`SynthesisLayer` (``use_noise``, ``activation``,
            ``kernel_size``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        w_dim: int,
        resolution: int,
        img_channels: int,
        is_last: bool,
        architecture: str = "skip",
        resample_filter: Sequence[float] = _DEFAULT_FILTER,
        conv_clamp: float | None = None,
        use_fp16: bool = False,
        fp16_channels_last: bool = False,
        generator: torch.Generator | None = None,
        **layer_kwargs: Any,
    ) -> None:
        if architecture not in ARCHITECTURES:
            raise MedreconInputError(f"architecture={architecture!r} is not one of {ARCHITECTURES}.")
        super().__init__()
        gen = _gen(generator)
        self.in_channels = in_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.is_last = is_last
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.channels_last = use_fp16 and fp16_channels_last
        self.register_buffer("resample_filter", ops.setup_filter(resample_filter))
        self.num_conv = 0
        self.num_torgb = 0
        if in_channels == 0:
            self.const = nn.Parameter(_randn([out_channels, resolution, resolution], gen))
        else:
            self.conv0 = SynthesisLayer(
                in_channels, out_channels, w_dim=w_dim, resolution=resolution, up=2, resample_filter=resample_filter,
                conv_clamp=conv_clamp, channels_last=self.channels_last, generator=gen, **layer_kwargs,
            )
            self.num_conv += 1
        self.conv1 = SynthesisLayer(
            out_channels, out_channels, w_dim=w_dim, resolution=resolution, conv_clamp=conv_clamp,
            channels_last=self.channels_last, generator=gen, **layer_kwargs,
        )
        self.num_conv += 1
        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(
                out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp, channels_last=self.channels_last, generator=gen
            )
            self.num_torgb += 1
        if in_channels != 0 and architecture == "resnet":
            self.skip = Conv2dLayer(
                in_channels, out_channels, kernel_size=1, bias=False, up=2, resample_filter=resample_filter,
                channels_last=self.channels_last, generator=gen,
            )

    def forward(
        self,
        x: torch.Tensor | None,
        img: torch.Tensor | None,
        ws: torch.Tensor,
        force_fp32: bool = False,
        fused_modconv: bool | None = None,
        noise_mode: str = "const",
        noise_generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        w_iter = iter(ws.unbind(dim=1))
        fp16 = self.use_fp16 and not force_fp32 and ws.device.type == "cuda"
        dtype = torch.float16 if fp16 else torch.float32
        fmt = torch.channels_last if self.channels_last and fp16 else torch.contiguous_format
        by_size = fused_modconv is None
        if fused_modconv is None:
            fused_modconv = (not self.training) and (dtype == torch.float32 or int(ws.shape[0]) == 1)
        lk = dict(noise_mode=noise_mode, noise_generator=noise_generator)

        def fused(layer: SynthesisLayer, inp: torch.Tensor) -> bool:
            # NVIDIA's rule, and (automatic choice only) not where the per-sample modulated
            # weight [O, I, k, k] outnumbers the layer's input activations [I, H, W] (the
            # 128-channel layers at 4-16 px): there scaling the activations is the cheaper
            # pass. Equal to rounding; with the hardtanh clamp it took the CPU W+ step at
            # batch 8 from 13.2 to 10.0 ms per image (bench/results/nvidia_*)
            return fused_modconv and (not by_size or layer.weight.numel() <= inp[0].numel())

        if self.in_channels == 0:
            x = self.const.to(dtype=dtype, memory_format=fmt)
            x = x.unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
        else:
            x = x.to(dtype=dtype, memory_format=fmt)
        if self.in_channels == 0:
            x = self.conv1(x, next(w_iter), fused_modconv=fused(self.conv1, x), **lk)
        elif self.architecture == "resnet":
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv0(x, next(w_iter), fused_modconv=fused(self.conv0, x), **lk)
            x = self.conv1(x, next(w_iter), gain=math.sqrt(0.5),
                           fused_modconv=fused(self.conv1, x), **lk)
            x = y.add_(x)
        else:
            x = self.conv0(x, next(w_iter), fused_modconv=fused(self.conv0, x), **lk)
            x = self.conv1(x, next(w_iter), fused_modconv=fused(self.conv1, x), **lk)
        if img is not None:
            img = ops.upsample2d(img, self.resample_filter)
        if self.is_last or self.architecture == "skip":
            y = self.torgb(x, next(w_iter), fused_modconv=fused_modconv)
            y = y.to(dtype=torch.float32, memory_format=torch.contiguous_format)
            img = img.add_(y) if img is not None else y
        return x, img


class SynthesisNetwork(nn.Module):
    """StyleGAN2 synthesis network ``ws [N, num_ws, w_dim] -> img [N, C, R, R]``.

    Args:
        w_dim: W dimension.
        img_resolution: Output resolution, a power of two >= 4 (16 ... 1024 in practice).
        img_channels: Image channels (1 for grey-scale medical images, 3 for RGB).
        channel_base: Channels at resolution ``r`` are ``min(channel_base // r, channel_max)``.
        channel_max: Maximum channels of any layer.
        num_fp16_res: Run the N highest resolutions in fp16 on CUDA.
        generator: RNG for the initial weights.
        **block_kwargs: Passed to :class:`SynthesisBlock` (``architecture``, ``conv_clamp``,
            ``resample_filter``, ``use_noise``, ``activation``, ``fp16_channels_last``).
    """

    def __init__(
        self,
        *,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        channel_base: int = 32768,
        channel_max: int = 512,
        num_fp16_res: int = 0,
        generator: torch.Generator | None = None,
        **block_kwargs: Any,
    ) -> None:
        if not (isinstance(img_resolution, int) and img_resolution >= 4 and img_resolution & (img_resolution - 1) == 0):
            raise MedreconInputError(
                f"img_resolution={img_resolution!r} is not supported: expected a power of two >= 4 "
                "(StyleGAN2 priors are 16, 32, ..., 1024). Resize or pad the images to one."
            )
        if not (isinstance(img_channels, int) and img_channels >= 1):
            raise MedreconInputError(f"img_channels={img_channels!r}: expected a positive int (1 = grey, 3 = RGB).")
        super().__init__()
        gen = _gen(generator)
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = int(math.log2(img_resolution))
        self.img_channels = img_channels
        self.block_resolutions = [2**i for i in range(2, self.img_resolution_log2 + 1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        if min(channels.values()) < 1:
            raise MedreconInputError(
                f"channel_base={channel_base} gives 0 channels at {img_resolution}^2 (channels = "
                f"min(channel_base // res, channel_max)); use channel_base >= {img_resolution}."
            )
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)
        self.num_ws = 0
        for res in self.block_resolutions:
            in_ch = channels[res // 2] if res > 4 else 0
            is_last = res == img_resolution
            block = SynthesisBlock(
                in_ch, channels[res], w_dim=w_dim, resolution=res, img_channels=img_channels, is_last=is_last,
                use_fp16=res >= fp16_resolution, generator=gen, **block_kwargs,
            )
            self.num_ws += block.num_conv
            if is_last:
                self.num_ws += block.num_torgb
            setattr(self, f"b{res}", block)

    def forward(
        self,
        ws: torch.Tensor,
        noise_mode: str = "const",
        force_fp32: bool = False,
        fused_modconv: bool | None = None,
        noise_generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Synthesise images.

        Args:
            ws: ``[N, num_ws, w_dim]`` W+ latents.
            noise_mode: ``'const'`` (stored ``noise_const``), ``'random'`` (fresh noise from
                ``noise_generator``) or ``'none'``.
            force_fp32: Disable fp16 blocks.
            fused_modconv: Grouped-conv modulation; ``None`` = NVIDIA's rule (fused in eval
                mode for fp32 or batch 1), except in layers whose modulated weights outnumber
                their input activations (activations scaled instead; equal to rounding).
            noise_generator: RNG for ``noise_mode='random'`` (on the network's device).

        Returns:
            ``[N, img_channels, R, R]`` float32 images, roughly in [-1, 1].
        """
        _check_tensor(
            ws, [None, self.num_ws, self.w_dim], "ws",
            f"A {self.img_resolution}^2 StyleGAN2 takes {self.num_ws} w vectors of size {self.w_dim} (W+).",
        )
        _check_noise_mode(noise_mode, noise_generator)
        ws = ws.to(torch.float32)
        x = img = None
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            cur = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
            w_idx += block.num_conv
            x, img = block(
                x, img, cur, force_fp32=force_fp32, fused_modconv=fused_modconv, noise_mode=noise_mode,
                noise_generator=noise_generator,
            )
        return img


class Generator(nn.Module):
    """StyleGAN2 generator ``G(z, c) = synthesis(mapping(z, c))`` (NVIDIA API and names).

    Attributes ``z_dim, c_dim, w_dim, num_ws, img_resolution, img_channels`` follow
    stylegan2-ada-pytorch; ``init_kwargs`` holds the JSON-serialisable constructor arguments
    (used by :func:`medrecon.generators.save_generator`).

    Args:
        img_resolution: Output resolution (power of two, 16 ... 1024).
        img_channels: Output channels (1 or 3).
        z_dim: Latent dimension.
        c_dim: Label dimension (0 = unconditional).
        w_dim: W dimension.
        mapping_kwargs: :class:`MappingNetwork` options (``num_layers=8``,
            ``lr_multiplier=0.01``, ``w_avg_beta=0.995``, ...).
        synthesis_kwargs: :class:`SynthesisNetwork` options (``channel_base=32768``,
            ``channel_max=512``, ``architecture='skip'``, ``conv_clamp=None``,
            ``num_fp16_res=0``, ``use_noise=True``, ...).
        seed: Seed of the weight initialisation (a private ``torch.Generator``).
    """

    def __init__(
        self,
        *,
        img_resolution: int,
        img_channels: int,
        z_dim: int = 512,
        c_dim: int = 0,
        w_dim: int = 512,
        mapping_kwargs: dict[str, Any] | None = None,
        synthesis_kwargs: dict[str, Any] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        mapping_kwargs = dict(mapping_kwargs or {})
        synthesis_kwargs = dict(synthesis_kwargs or {})
        for key in ("resample_filter",):
            if key in synthesis_kwargs and synthesis_kwargs[key] is not None:
                # numpy, not torch: the same under torch.device("meta") (a file's network is
                # sized there before it is built)
                synthesis_kwargs[key] = [float(v) for v in np.asarray(synthesis_kwargs[key],
                                                                      dtype=np.float64).ravel()]
        gen = torch.Generator().manual_seed(int(seed))
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.synthesis = SynthesisNetwork(
            w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels, generator=gen, **synthesis_kwargs
        )
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws, generator=gen, **mapping_kwargs)
        self._init_kwargs = dict(
            z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
            mapping_kwargs=mapping_kwargs, synthesis_kwargs=synthesis_kwargs,
        )

    @property
    def init_kwargs(self) -> dict[str, Any]:
        """Constructor keyword arguments (a deep copy), enough to rebuild the architecture."""
        return copy.deepcopy(self._init_kwargs)

    def forward(
        self,
        z: torch.Tensor,
        c: torch.Tensor | None = None,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        **synthesis_kwargs: Any,
    ) -> torch.Tensor:
        """``synthesis(mapping(z, c, truncation_psi, truncation_cutoff), **synthesis_kwargs)``."""
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, **synthesis_kwargs)

    def extra_repr(self) -> str:
        return (
            f"img_resolution={self.img_resolution}, img_channels={self.img_channels}, z_dim={self.z_dim}, "
            f"c_dim={self.c_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}"
        )


# ----------------------------------------------------------------------------------------
# Discriminator


class DiscriminatorBlock(nn.Module):
    """One resolution of the StyleGAN2 discriminator (``orig``/``skip``/``resnet``).

    Args:
        in_channels: Input feature channels, 0 for the first block (reads the image).
        tmp_channels: Intermediate channels.
        out_channels: Output channels.
        resolution: Block input resolution.
        img_channels: Image channels.
        first_layer_idx: Index of the block's first layer (for Freeze-D).
        architecture: ``'orig'``, ``'skip'`` or ``'resnet'`` (default).
        activation: Activation name.
        resample_filter: FIR taps.
        conv_clamp: Output clamp.
        use_fp16: Run in fp16 on CUDA.
        fp16_channels_last: Channels-last with fp16.
        freeze_layers: Freeze-D: number of leading layers registered as buffers.
        generator: RNG for the initial weights.
    """

    def __init__(
        self,
        in_channels: int,
        tmp_channels: int,
        out_channels: int,
        *,
        resolution: int,
        img_channels: int,
        first_layer_idx: int,
        architecture: str = "resnet",
        activation: str = "lrelu",
        resample_filter: Sequence[float] = _DEFAULT_FILTER,
        conv_clamp: float | None = None,
        use_fp16: bool = False,
        fp16_channels_last: bool = False,
        freeze_layers: int = 0,
        generator: torch.Generator | None = None,
    ) -> None:
        if architecture not in ARCHITECTURES:
            raise MedreconInputError(f"architecture={architecture!r} is not one of {ARCHITECTURES}.")
        super().__init__()
        gen = _gen(generator)
        self.in_channels = in_channels
        self.resolution = resolution
        self.img_channels = img_channels
        self.first_layer_idx = first_layer_idx
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.channels_last = use_fp16 and fp16_channels_last
        self.register_buffer("resample_filter", ops.setup_filter(resample_filter))
        self.num_layers = 0

        def trainable() -> bool:
            idx = self.first_layer_idx + self.num_layers
            self.num_layers += 1
            return idx >= freeze_layers

        common = dict(activation=activation, conv_clamp=conv_clamp, channels_last=self.channels_last, generator=gen)
        if in_channels == 0 or architecture == "skip":
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, kernel_size=1, trainable=trainable(), **common)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, kernel_size=3, trainable=trainable(), **common)
        self.conv1 = Conv2dLayer(
            tmp_channels, out_channels, kernel_size=3, down=2, resample_filter=resample_filter, trainable=trainable(), **common
        )
        if architecture == "resnet":
            self.skip = Conv2dLayer(
                tmp_channels, out_channels, kernel_size=1, bias=False, down=2, resample_filter=resample_filter,
                trainable=trainable(), channels_last=self.channels_last, generator=gen,
            )

    def forward(
        self, x: torch.Tensor | None, img: torch.Tensor | None, force_fp32: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        dev = (x if x is not None else img).device
        fp16 = self.use_fp16 and not force_fp32 and dev.type == "cuda"
        dtype = torch.float16 if fp16 else torch.float32
        fmt = torch.channels_last if self.channels_last and fp16 else torch.contiguous_format
        if x is not None:
            x = x.to(dtype=dtype, memory_format=fmt)
        if self.in_channels == 0 or self.architecture == "skip":
            img = img.to(dtype=dtype, memory_format=fmt)
            y = self.fromrgb(img)
            x = x + y if x is not None else y
            img = ops.downsample2d(img, self.resample_filter) if self.architecture == "skip" else None
        if self.architecture == "resnet":
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv0(x)
            x = self.conv1(x, gain=math.sqrt(0.5))
            x = y.add_(x)
        else:
            x = self.conv0(x)
            x = self.conv1(x)
        return x, img


class MinibatchStdLayer(nn.Module):
    """Append the across-group standard deviation of features as extra channels.

    Args:
        group_size: Group size (``None`` = whole minibatch); must divide the batch size.
        num_channels: Number of appended channels.
    """

    def __init__(self, group_size: int | None, num_channels: int = 1) -> None:
        super().__init__()
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = min(self.group_size, n) if self.group_size is not None else n
        if n % g != 0:
            raise MedreconInputError(
                f"Discriminator batch size {n} is not a multiple of the minibatch-std group size {g}; "
                "use a batch size that is a multiple of mbstd_group_size."
            )
        f = self.num_channels
        y = x.reshape(g, -1, f, c // f, h, w)  # [G, n, F, c, H, W]
        y = y - y.mean(dim=0)
        y = (y.square().mean(dim=0) + 1e-8).sqrt()  # [n, F, c, H, W]
        y = y.mean(dim=[2, 3, 4]).reshape(-1, f, 1, 1)  # [n, F, 1, 1]
        y = y.repeat(g, 1, h, w)  # [N, F, H, W]
        return torch.cat([x, y], dim=1)


class DiscriminatorEpilogue(nn.Module):
    """Final 4x4 block: [fromrgb,] minibatch-std, conv, fc, out (+ projection conditioning).

    Args:
        in_channels: Feature channels.
        cmap_dim: Dimension of the mapped label (0 = unconditional).
        resolution: Resolution (4).
        img_channels: Image channels.
        architecture: ``'orig'``, ``'skip'`` or ``'resnet'``.
        mbstd_group_size: Minibatch-std group size (``None`` = batch).
        mbstd_num_channels: Minibatch-std channels (0 = off).
        activation: Activation name.
        conv_clamp: Output clamp.
        generator: RNG for the initial weights.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        cmap_dim: int,
        resolution: int,
        img_channels: int,
        architecture: str = "resnet",
        mbstd_group_size: int | None = 4,
        mbstd_num_channels: int = 1,
        activation: str = "lrelu",
        conv_clamp: float | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        gen = _gen(generator)
        self.in_channels = in_channels
        self.cmap_dim = cmap_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.architecture = architecture
        if architecture == "skip":
            self.fromrgb = Conv2dLayer(img_channels, in_channels, kernel_size=1, activation=activation, generator=gen)
        self.mbstd = (
            MinibatchStdLayer(group_size=mbstd_group_size, num_channels=mbstd_num_channels) if mbstd_num_channels > 0 else None
        )
        self.conv = Conv2dLayer(
            in_channels + mbstd_num_channels, in_channels, kernel_size=3, activation=activation, conv_clamp=conv_clamp,
            generator=gen,
        )
        self.fc = FullyConnectedLayer(in_channels * resolution**2, in_channels, activation=activation, generator=gen)
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim, generator=gen)

    def forward(self, x: torch.Tensor, img: torch.Tensor | None, cmap: torch.Tensor | None) -> torch.Tensor:
        x = x.to(dtype=torch.float32, memory_format=torch.contiguous_format)
        if self.architecture == "skip":
            x = x + self.fromrgb(img.to(dtype=torch.float32, memory_format=torch.contiguous_format))
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        x = self.fc(x.flatten(1))
        x = self.out(x)
        if self.cmap_dim > 0:
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / math.sqrt(self.cmap_dim))
        return x


class Discriminator(nn.Module):
    """StyleGAN2 discriminator ``D(img, c) -> logits [N, 1]`` (NVIDIA names and numerics).

    Args:
        img_resolution: Input resolution (power of two >= 8).
        img_channels: Input channels.
        c_dim: Label dimension (0 = unconditional).
        architecture: ``'orig'``, ``'skip'`` or ``'resnet'`` (default).
        channel_base: Channels at resolution ``r`` are ``min(channel_base // r, channel_max)``.
        channel_max: Maximum channels.
        num_fp16_res: Run the N highest resolutions in fp16 on CUDA.
        conv_clamp: Output clamp of the convolutions.
        cmap_dim: Mapped-label dimension (``None`` = channels at 4x4).
        block_kwargs: :class:`DiscriminatorBlock` options (``freeze_layers``, ...).
        mapping_kwargs: :class:`MappingNetwork` options for the label mapping.
        epilogue_kwargs: :class:`DiscriminatorEpilogue` options (``mbstd_group_size``, ...).
        seed: Seed of the weight initialisation.
    """

    def __init__(
        self,
        *,
        img_resolution: int,
        img_channels: int,
        c_dim: int = 0,
        architecture: str = "resnet",
        channel_base: int = 32768,
        channel_max: int = 512,
        num_fp16_res: int = 0,
        conv_clamp: float | None = None,
        cmap_dim: int | None = None,
        block_kwargs: dict[str, Any] | None = None,
        mapping_kwargs: dict[str, Any] | None = None,
        epilogue_kwargs: dict[str, Any] | None = None,
        seed: int = 0,
    ) -> None:
        if not (isinstance(img_resolution, int) and img_resolution >= 8 and img_resolution & (img_resolution - 1) == 0):
            raise MedreconInputError(f"img_resolution={img_resolution!r}: expected a power of two >= 8.")
        super().__init__()
        block_kwargs = dict(block_kwargs or {})
        mapping_kwargs = dict(mapping_kwargs or {})
        epilogue_kwargs = dict(epilogue_kwargs or {})
        gen = torch.Generator().manual_seed(int(seed))
        self.c_dim = c_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = int(math.log2(img_resolution))
        self.img_channels = img_channels
        self.block_resolutions = [2**i for i in range(self.img_resolution_log2, 2, -1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions + [4]}
        if min(channels.values()) < 1:
            raise MedreconInputError(
                f"channel_base={channel_base} gives 0 channels at {img_resolution}^2; use channel_base >= {img_resolution}."
            )
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)
        if cmap_dim is None:
            cmap_dim = channels[4]
        if c_dim == 0:
            cmap_dim = 0
        common = dict(img_channels=img_channels, architecture=architecture, conv_clamp=conv_clamp)
        cur_layer_idx = 0
        for res in self.block_resolutions:
            block = DiscriminatorBlock(
                channels[res] if res < img_resolution else 0, channels[res], channels[res // 2], resolution=res,
                first_layer_idx=cur_layer_idx, use_fp16=res >= fp16_resolution, generator=gen, **block_kwargs, **common,
            )
            setattr(self, f"b{res}", block)
            cur_layer_idx += block.num_layers
        if c_dim > 0:
            self.mapping = MappingNetwork(
                z_dim=0, c_dim=c_dim, w_dim=cmap_dim, num_ws=None, w_avg_beta=None, generator=gen, **mapping_kwargs
            )
        self.b4 = DiscriminatorEpilogue(channels[4], cmap_dim=cmap_dim, resolution=4, generator=gen, **epilogue_kwargs, **common)
        self._init_kwargs = dict(
            c_dim=c_dim, img_resolution=img_resolution, img_channels=img_channels, architecture=architecture,
            channel_base=channel_base, channel_max=channel_max, num_fp16_res=num_fp16_res, conv_clamp=conv_clamp,
            cmap_dim=None if c_dim == 0 else cmap_dim, block_kwargs=block_kwargs, mapping_kwargs=mapping_kwargs,
            epilogue_kwargs=epilogue_kwargs,
        )

    @property
    def init_kwargs(self) -> dict[str, Any]:
        """Constructor keyword arguments (a deep copy)."""
        return copy.deepcopy(self._init_kwargs)

    def forward(self, img: torch.Tensor, c: torch.Tensor | None = None, force_fp32: bool = False) -> torch.Tensor:
        """Score images ``[N, img_channels, R, R]`` (labels ``c [N, c_dim]`` if conditional)."""
        r = self.img_resolution
        _check_tensor(img, [None, self.img_channels, r, r], "img", f"This discriminator reads {self.img_channels}x{r}x{r} images.")
        x = None
        for res in self.block_resolutions:
            x, img = getattr(self, f"b{res}")(x, img, force_fp32=force_fp32)
        cmap = None
        if self.c_dim > 0:
            cmap = self.mapping(None, c)
        return self.b4(x, img, cmap)
