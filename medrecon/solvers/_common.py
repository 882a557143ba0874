"""Shared plumbing for the solvers: device choice, input checks, frozen generator copies,
latent statistics, measurement losses and progress reporting.

Nothing here iterates; the iteration cores live in the per-method modules.
"""

from __future__ import annotations

import contextlib
import copy
import math
import numbers
import warnings
from dataclasses import dataclass
from operator import index as _as_index
from typing import Any, Callable, Mapping

import torch
from torch import nn

from medrecon.errors import MedreconInputError
from medrecon.limits import MAX_STEPS

ProgressCallback = Callable[[dict], None]

#: Number of mapped samples used for the per-dimension Gaussian over W (BRGM paper: 10,000).
W_STAT_SAMPLES = 10_000


# ----------------------------------------------------------------------------------------------
# Devices and precision


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Turns ``'auto'`` / ``None`` / a string into a :class:`torch.device`.

    Args:
        device: ``'auto'`` (CUDA when available, else CPU), ``'cpu'``, ``'cuda'``, ``'cuda:1'``
            or a device object.

    Returns:
        The device to compute on.

    Raises:
        MedreconInputError: unknown name, or CUDA requested but unavailable.
    """
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise MedreconInputError(
            f"device={device!r} is not a device; expected 'auto', 'cpu', 'cuda' or 'cuda:N'."
        ) from exc
    if dev.type not in ("cpu", "cuda", "mps", "xpu"):  # 'meta' holds no data to solve with
        raise MedreconInputError(
            f"device={device!r} cannot run a reconstruction; expected 'auto', 'cpu', 'cuda' "
            "or 'cuda:N'.")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MedreconInputError(
            f"device={device!r} was requested but CUDA is not available on this machine; "
            "use device='auto' or device='cpu'."
        )
    return dev


#: CPU flags of native bf16 arithmetic (x86 AVX512-BF16 / AMX; Arm's BF16 extension).
_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


def cpu_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (``/proc/cpuinfo`` flags; False elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("flags", "features")):
                    return bool(_BF16_FLAGS & set(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return False


def cpu_bf16() -> bool:
    """Whether the synthesis runs under bf16 autocast on the CPU: only when asked for
    (``MEDRECON_CPU_BF16=1``) and the CPU has native bf16 (:func:`cpu_native_bf16`).

    Off by default: on a 2-core AMD EPYC with AVX512-BF16 the default SR solve was no faster
    in bf16 (37.9 against 38.1 s per image, quality equal: 31.45 / 0.873 against 31.39 /
    0.873 on 8 validation chest X-rays; docs/results/tuning/chest_xray_sr4_cpu_bf16), and
    fp32 keeps results independent of the batch size to float rounding.
    """
    import os

    if os.environ.get("MEDRECON_CPU_BF16", "").strip().lower() not in ("1", "true", "yes", "on"):
        return False
    return cpu_native_bf16()


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast of the synthesis: on CUDA, and on the CPU when :func:`cpu_bf16` says so.
    The losses, the operators and the optimiser stay in fp32 (callers cast the image with
    ``.float()`` before the data term)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if enabled and device.type == "cpu" and cpu_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------------------------
# Inputs


def check_measurements(y: Any, *, name: str = "y") -> torch.Tensor:
    """Validates a measurement tensor: a finite torch tensor with a batch dimension."""
    if not isinstance(y, torch.Tensor):
        raise MedreconInputError(
            f"{name} must be a torch.Tensor of measurements with a leading batch dimension; got "
            f"{type(y).__name__}. Convert with torch.as_tensor(...) and add a batch axis."
        )
    if y.ndim < 2:
        raise MedreconInputError(
            f"{name} has shape {tuple(y.shape)}; expected a batch of measurements [B, ...] "
            "(e.g. [B, C, h, w]). Add a batch axis with y[None]."
        )
    if y.shape[0] == 0:
        raise MedreconInputError(f"{name} has an empty batch (shape {tuple(y.shape)}).")
    if not (y.is_floating_point() or y.is_complex()):
        raise MedreconInputError(
            f"{name} has dtype {y.dtype}; expected float32 or complex64. Use y.float()."
        )
    if not bool(torch.isfinite(torch.view_as_real(y) if y.is_complex() else y).all()):
        raise MedreconInputError(
            f"{name} contains NaN or Inf values; clean the measurements (e.g. torch.nan_to_num)."
        )
    return y


def check_operator(operator: Any) -> nn.Module:
    """Checks that ``operator`` looks like a :class:`medrecon.physics.LinearPhysics`."""
    missing = [m for m in ("A", "A_adjoint") if not callable(getattr(operator, m, None))]
    if missing:
        raise MedreconInputError(
            f"operator of type {type(operator).__name__} lacks {missing}; expected a "
            "medrecon.physics.LinearPhysics (build one with medrecon.physics.build_operator)."
        )
    return operator


def on_device(operator: nn.Module, device: torch.device) -> nn.Module:
    """``operator`` on ``device`` without changing the caller's: ``nn.Module.to`` moves a
    module in place, so a solve on CUDA left the user's CPU operator on the GPU (and a later
    ``operator.A(x_cpu)`` failed). The operator itself when it is there already."""
    tensors = [*operator.parameters(), *operator.buffers()]
    if all(t.device == device for t in tensors):
        return operator
    return copy.deepcopy(operator).to(device)


def check_options(options: Mapping[str, Any], allowed: set[str], method: str) -> None:
    """Rejects unknown keyword options with the list of valid ones."""
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise MedreconInputError(
            f"unknown option(s) {unknown} for method {method!r}; valid options: "
            f"{sorted(allowed)}."
        )


#: Options whose values are counts (a positive integer) and rates / tolerances / weights
#: (a finite number >= 0), checked before a run by
#: :func:`check_option_values`; the solvers check every option again when they run.
COUNT_OPTIONS = ("steps", "restarts", "ensemble", "num_samples", "samples_per_step", "max_iter")


def check_option_values(options: Mapping[str, Any], method: str) -> None:
    """The values of the common numeric options of ``method``, before any work (an evaluation
    found ``csgm.steps=0`` only when csgm started, after the methods before it had run on
    every image)."""
    for name, v in options.items():
        if name in COUNT_OPTIONS:
            ok, want = (isinstance(v, numbers.Integral) and not isinstance(v, bool)
                        and 1 <= v <= MAX_STEPS), f"an integer from 1 to {MAX_STEPS}"
        elif name.startswith("lr") or name == "tol" or name.endswith("_weight"):
            ok, want = is_real(v) and math.isfinite(v) and v >= 0, "a finite number >= 0"
        else:
            continue
        if not ok:
            raise MedreconInputError(f"{method}: {name}={v!r}; expected {want}.")


#: Seeds are below ``2**63`` (what ``torch.Generator.manual_seed`` and the derived per-slice
#: and per-member seeds take).
SEED_LIMIT = 2**63


def is_real(value: Any) -> bool:
    """Whether ``value`` is a real number: Python or numpy ints and floats (``numpy.float32``
    included), not booleans."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_positive(name: str, value: Any, *, integer: bool = False, allow_zero: bool = False):
    """Validates a numeric hyperparameter."""
    ok_type = isinstance(value, numbers.Integral) if integer else is_real(value)
    if isinstance(value, bool) or not ok_type or not math.isfinite(value):
        kind = "an integer" if integer else "a finite number"
        raise MedreconInputError(f"{name}={value!r}; expected {kind}.")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise MedreconInputError(f"{name}={value!r}; expected a value {bound}.")
    return int(value) if integer else value


def slice_seed(seed: int, index: int) -> int:
    """Seed of slice ``index`` of a scan solved with ``seed``: ``seed`` itself for slice 0 (a
    lone image keeps its seed), else a 63-bit value drawn from
    ``numpy.random.SeedSequence([seed, index, 0x51CE])`` (apart from every
    :func:`medrecon.solvers.iagan.member_seed`, so no slice repeats another's member)."""
    if index == 0:
        return int(seed)
    import numpy as np

    ss = np.random.SeedSequence([int(seed) % 2**63, int(index), 0x51CE])
    return int(ss.generate_state(2, np.uint64)[0] % 2**63)


def check_seed(seed: Any, n: int) -> int | list[int]:
    """``seed`` as an int >= 0, or as a list of ``n`` of them (one per slice).

    Raises:
        MedreconInputError: anything else, naming the value and what is expected.
    """
    def one(s: Any) -> int:
        try:
            value = None if isinstance(s, bool) else _as_index(s)
        except TypeError:
            value = None
        if value is None or not 0 <= value < SEED_LIMIT:
            raise MedreconInputError(
                f"seed={s!r}; expected an integer from 0 to 2**63 - 1 (or one per slice).")
        return value

    if isinstance(seed, (list, tuple)):
        if len(seed) != n:
            raise MedreconInputError(
                f"{len(seed)} seeds for {n} slice(s); give one integer, or one per slice.")
        return [one(s) for s in seed]
    return one(seed)


def seed_generators(seed: Any, n: int, device: torch.device
                    ) -> torch.Generator | list[torch.Generator]:
    """The private RNG of a solver call on ``n`` slices: one ``torch.Generator`` shared by the
    batch for an int ``seed`` (every slice gets the same random draws), or one per slice for a
    sequence of ``n`` seeds (each slice its own draws, so neighbouring slices of a scan start
    apart, while a slice's draws depend only on its own seed, never on its batch).

    Raises:
        MedreconInputError: ``seed`` neither an int >= 0 nor ``n`` of them (:func:`check_seed`).
    """
    seed = check_seed(seed, n)
    if isinstance(seed, list):
        return [torch.Generator(device=device).manual_seed(s) for s in seed]
    return torch.Generator(device=device).manual_seed(seed)


def noise_sigma(operator: Any) -> float:
    """The Gaussian/Rician noise level of the operator's noise model (0.0 when none)."""
    model = getattr(operator, "noise_model", None)
    if model is None:
        return 0.0
    sigma = getattr(model, "sigma", 0.0)
    if isinstance(sigma, torch.Tensor):
        sigma = float(sigma.detach().float().mean().cpu())
    return float(sigma)


# ----------------------------------------------------------------------------------------------
# Generators and priors


@dataclass
class PriorParts:
    """What the solvers need from a prior: a generator and optional W statistics."""

    generator: nn.Module
    w_mean: torch.Tensor | None
    w_std: torch.Tensor | None
    source: Any


def unpack_prior(prior: Any) -> PriorParts:
    """Accepts a :class:`medrecon.priors.Prior` or a bare StyleGAN2 generator."""
    if prior is None:
        raise MedreconInputError(
            "prior is None; generative methods need a medrecon.priors.Prior or a StyleGAN2 "
            "generator (load one with medrecon.priors.load_prior or "
            "medrecon.generators.load_generator). Baselines ('bicubic', 'tv', ...) need none."
        )
    G = getattr(prior, "generator", None)
    if G is None:
        G = getattr(prior, "G", None)
    if G is None:
        G = prior
    needed = ("mapping", "synthesis", "num_ws", "z_dim", "w_dim")
    missing = [a for a in needed if not hasattr(G, a)]
    if missing or not isinstance(G, nn.Module):
        raise MedreconInputError(
            f"prior of type {type(prior).__name__} is not a Prior nor a StyleGAN2 generator "
            f"(missing {missing}); expected an object with .generator or the NVIDIA API "
            "G.mapping / G.synthesis / G.num_ws / G.z_dim / G.w_dim."
        )
    w_mean = _first_attr(prior, ("w_mean", "w_mu"))
    w_std = _first_attr(prior, ("w_std", "w_sigma"))
    return PriorParts(G, w_mean, w_std, prior)


def _first_attr(obj: Any, names: tuple[str, ...]) -> torch.Tensor | None:
    for n in names:
        v = getattr(obj, n, None)
        if callable(v) and not isinstance(v, torch.Tensor):
            continue
        if isinstance(v, torch.Tensor):
            return v.detach().float()
    return None


#: What the generative solvers do with StyleGAN2's per-layer noise inputs (``noise_mode``).
NOISE_MODES = ("const", "none")


def check_noise_mode(noise_mode: str) -> str:
    """Validates a solver ``noise_mode`` (``'const'`` or ``'none'``)."""
    if noise_mode not in NOISE_MODES:
        raise MedreconInputError(
            f"noise_mode={noise_mode!r}; expected one of {list(NOISE_MODES)} ('const': the "
            "generator's stored noise maps, 'none': noise inputs off).")
    return noise_mode


def frozen_copy(G: nn.Module, device: torch.device, *, noise_mode: str = "const") -> nn.Module:
    """A deep copy of ``G`` on ``device`` in eval mode with every parameter frozen.

    With ``noise_mode='none'`` the copy's stored noise maps (``noise_const`` buffers) are set to
    zero, so every synthesis with ``noise_mode='const'`` runs without noise inputs (their mean).
    The caller's generator is never modified (not even moved).
    """
    check_noise_mode(noise_mode)
    Gc = copy.deepcopy(G).eval().requires_grad_(False)
    if noise_mode == "none":
        with torch.no_grad():
            for m in Gc.modules():
                buf = getattr(m, "noise_const", None)
                if isinstance(buf, torch.Tensor):
                    buf.zero_()
    return Gc.to(device)


def generator_resolution(G: nn.Module) -> tuple[int, int, int]:
    """(channels, height, width) of the generator's images."""
    R = int(getattr(G, "img_resolution", 0))
    C = int(getattr(G, "img_channels", 0))
    if R <= 0 or C <= 0:
        with torch.no_grad():
            dev = next(G.parameters()).device
            ws = G.mapping.w_avg.detach().to(dev)[None, None].repeat(1, G.num_ws, 1)
            img = G.synthesis(ws, noise_mode="const")
        C, R = int(img.shape[1]), int(img.shape[-1])
        return C, int(img.shape[-2]), R
    return C, R, R


def w_average(G: nn.Module) -> torch.Tensor:
    """The mapping network's tracked mean ``w_avg`` ``[w_dim]``."""
    w_avg = getattr(G.mapping, "w_avg", None)
    if not isinstance(w_avg, torch.Tensor):
        raise MedreconInputError(
            "generator.mapping has no w_avg buffer; expected a StyleGAN2 mapping network "
            "that tracks the mean w (NVIDIA API)."
        )
    return w_avg.detach().float()


def map_z(G: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Runs the mapping network without labels: ``z [N, z_dim] -> ws [N, num_ws, w_dim]``."""
    c = None
    c_dim = int(getattr(G, "c_dim", 0) or 0)
    if c_dim > 0:
        c = torch.zeros(z.shape[0], c_dim, device=z.device, dtype=z.dtype)
    return G.mapping(z, c)


_W_STATS_CACHE: "dict[int, tuple[object, torch.Tensor, torch.Tensor]]" = {}


def latent_statistics(
    G: nn.Module, *, num_samples: int = W_STAT_SAMPLES, seed: int = 0, chunk: int = 2000
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std of ``w = mapping(z)`` over ``num_samples`` seeded z draws.

    This is BRGM's Gaussian latent prior (10,000 samples in the paper). Results are cached per
    generator object (weakly: the cache holds a weak reference and is keyed by identity).

    Args:
        G: a StyleGAN2 generator (NVIDIA API).
        num_samples: number of z draws.
        seed: seed of the z draws (a private ``torch.Generator``; the global RNG is untouched).
        chunk: mapping batch size.

    Returns:
        ``(mu, sigma)``, each ``[w_dim]`` float32 on CPU.
    """
    import weakref

    key = id(G)
    hit = _W_STATS_CACHE.get(key)
    if hit is not None and hit[0]() is G:
        return hit[1], hit[2]
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    dev = next(G.parameters()).device
    total = torch.zeros(G.w_dim, dtype=torch.float64)
    total_sq = torch.zeros(G.w_dim, dtype=torch.float64)
    done = 0
    with torch.no_grad():
        while done < num_samples:
            n = min(chunk, num_samples - done)
            z = torch.randn(n, G.z_dim, generator=gen).to(dev)
            w = map_z(G, z)[:, 0].double().cpu()
            total += w.sum(0)
            total_sq += (w * w).sum(0)
            done += n
    mu = total / num_samples
    var = (total_sq / num_samples - mu * mu).clamp_min(1e-12)
    mu, sigma = mu.float(), var.sqrt().float()
    try:
        _W_STATS_CACHE[key] = (weakref.ref(G), mu, sigma)
    except TypeError:  # pragma: no cover - modules are weak-referenceable
        pass
    return mu, sigma


def prior_w_stats(parts: PriorParts, G_work: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """W statistics from the prior when it carries them, else computed (and cached) from G."""
    if parts.w_mean is not None and parts.w_std is not None:
        return parts.w_mean.reshape(-1)[-G_work.w_dim :], parts.w_std.reshape(-1)[-G_work.w_dim :]
    stats = getattr(parts.source, "w_stats", None)
    if callable(stats):
        mu, sigma = stats()
        return mu.detach().float(), sigma.detach().float()
    # compute on the caller's G (cache survives across calls), not on our per-call copy
    return latent_statistics(parts.generator)


def synthesize(G: nn.Module, ws: torch.Tensor) -> torch.Tensor:
    """``G.synthesis`` with fixed (``'const'``) noise inputs, returned as float32."""
    return G.synthesis(ws, noise_mode="const").float()


# ----------------------------------------------------------------------------------------------
# Measurement losses


def sq_residual(ax: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared residual ``mean |A x - y|^2`` (complex aware). ``[B]``."""
    r = ax - y
    r2 = (r.real**2 + r.imag**2) if r.is_complex() else r * r
    return r2.reshape(r2.shape[0], -1).mean(1)


def measurement_count(y: torch.Tensor) -> int:
    """Real degrees of freedom per sample (complex entries count twice)."""
    n = y[0].numel()
    return 2 * n if y.is_complex() else n


def check_shapes(y: torch.Tensor, operator: nn.Module, img_shape: tuple[int, int, int]) -> None:
    """Checks that ``operator.A`` maps ``[B, *img_shape]`` images to the shape of ``y``."""
    B = y.shape[0]
    probe = torch.zeros(1, *img_shape, device=y.device)
    try:
        with torch.no_grad():
            ay = operator.A(probe)
    except Exception as exc:  # noqa: BLE001 - turned into an input error with context
        raise MedreconInputError(
            f"the operator cannot be applied to generator images of shape "
            f"[B, {img_shape[0]}, {img_shape[1]}, {img_shape[2]}] ({type(exc).__name__}: {exc}); "
            "build the operator for the generator's resolution (img_size=(R, R))."
        ) from exc
    if tuple(ay.shape[1:]) != tuple(y.shape[1:]):
        raise MedreconInputError(
            f"y has shape {tuple(y.shape)} but the operator maps generator images "
            f"{(B, *img_shape)} to {(B, *ay.shape[1:])}; pass measurements from this operator "
            "at the prior's resolution."
        )
    if ay.is_complex() != y.is_complex():
        raise MedreconInputError(
            f"y is {'complex' if y.is_complex() else 'real'} ({y.dtype}) but the operator "
            f"produces {ay.dtype}; pass y = operator.A(x) (+ noise) without converting it."
        )


# ----------------------------------------------------------------------------------------------
# Progress


class Progress:
    """Throttled progress reporting: calls ``callback`` at most every ``every`` steps.

    Args:
        callback: user callable receiving a dict ``{stage, step, total_steps, loss, ...}``.
        stage: name of the current stage (e.g. ``'csgm'``, ``'iagan'``).
        total_steps: number of steps of this stage.
        every: report period in steps.
    """

    def __init__(self, callback: ProgressCallback | None, *, stage: str, total_steps: int,
                 every: int = 10, **extra: Any) -> None:
        self.callback = callback
        self.stage = stage
        self.total_steps = int(total_steps)
        self.every = max(1, int(every))
        self.extra = extra

    def due(self, step: int) -> bool:
        """True when ``step`` (0-based) should be reported."""
        return self.callback is not None and (
            (step + 1) % self.every == 0 or step + 1 == self.total_steps
        )

    def __call__(self, step: int, loss: torch.Tensor | float, **more: Any) -> None:
        if self.callback is None:
            return
        value = float(loss.detach().float().mean()) if isinstance(loss, torch.Tensor) else loss
        self.callback({"stage": self.stage, "step": step + 1, "total_steps": self.total_steps,
                       "loss": value, **self.extra, **more})


def warn_once(message: str) -> None:
    """Emits a :class:`UserWarning` attributed to the caller of the solver."""
    warnings.warn(message, UserWarning, stacklevel=4)
