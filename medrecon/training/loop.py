"""StyleGAN2 training: non-saturating loss, lazy R1, EMA generator, DiffAugment, AMP, DDP.

One :class:`Trainer` owns G, D, the EMA copy of G, both Adam optimisers and the step counter.
Every step draws all of its randomness (latents, real-image indices, augmentation, the synthesis
noise inputs) from ``torch.Generator`` objects seeded by ``(seed, step, rank)``, so

* the caller's global RNG is never touched, and
* a run resumed from a checkpoint takes exactly the step it would have taken without stopping.

Multi-process data parallelism: launch with ``torchrun --nproc_per_node N``; each rank draws its
own share of the batch and gradients are averaged with one ``all_reduce`` per optimiser step
(explicit averaging, as the NVIDIA reference does, because R1 needs a double backward that
``DistributedDataParallel`` does not support). Parameters are broadcast from rank 0 at start.

Checkpoints (``checkpoint-latest.pt``) hold only tensors and plain Python values, so they load
with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import os
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from medrecon.errors import CheckpointError, MedreconInputError
from medrecon.limits import free_memory
from medrecon.training.augment import DEFAULT_POLICY, diff_augment, parse_policy

__all__ = [
    "TrainConfig",
    "Trainer",
    "build_networks",
    "d_logistic_loss",
    "g_nonsaturating_loss",
    "r1_penalty",
    "save_image_grid",
]

CHECKPOINT_NAME = "checkpoint-latest.pt"


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one training run (all keyword, all with defaults).

    Attributes:
        resolution: image side R (power of two). Default 128.
        z_dim: latent size. Default 256 (512 in NVIDIA's configs; smaller is cheaper for solvers).
        w_dim: intermediate latent size. Default 256.
        mapping_layers: depth of the mapping network. Default 2 (NVIDIA's ``auto``/``paper256``).
        channel_base: feature maps at resolution r are ``min(channel_base // r, channel_max)``.
            Default 4096.
        channel_max: cap on feature maps. Default 256.
        batch_size: total batch over all ranks. Default 32.
        g_lr: generator Adam learning rate. Default 0.0025.
        d_lr: discriminator Adam learning rate. Default 0.0025.
        betas: Adam betas. Default (0, 0.99).
        r1_gamma: R1 weight. Default ``None`` = NVIDIA's heuristic ``0.0002 * R**2 / batch``.
        r1_interval: lazy regularisation interval (R1 every N D-steps). Default 16.
        ema_kimg: half-life of the EMA generator in thousands of images. Default ``None`` =
            ``batch_size * 10 / 32``.
        ema_rampup: EMA ramp-up ratio (half-life <= kimg seen * ratio). Default 0.05.
        augment: DiffAugment policy for D's inputs. Default
            ``"brightness,contrast,translation,cutout"``; ``"none"`` disables it.
        amp: mixed precision as in NVIDIA's StyleGAN2-ADA: the 4 highest resolutions of G and D
            run in fp16 on CUDA (``num_fp16_res=4``; the networks ignore it on CPU), weights and
            optimiser state stay fp32, ``conv_clamp`` bounds activations and non-finite
            gradients are zeroed. Default True.
        seed: seed of every random draw. Default 0.
        conv_clamp: clamp on conv outputs (keeps mixed precision stable). Default 256.
    """

    resolution: int = 128
    z_dim: int = 256
    w_dim: int = 256
    mapping_layers: int = 2
    channel_base: int = 4096
    channel_max: int = 256
    batch_size: int = 32
    g_lr: float = 0.0025
    d_lr: float = 0.0025
    betas: tuple[float, float] = (0.0, 0.99)
    r1_gamma: float | None = None
    r1_interval: int = 16
    ema_kimg: float | None = None
    ema_rampup: float | None = 0.05
    augment: str = DEFAULT_POLICY
    amp: bool = True
    seed: int = 0
    conv_clamp: float | None = 256

    def __post_init__(self) -> None:
        r = self.resolution
        if not isinstance(r, int) or r < 8 or r & (r - 1):
            raise MedreconInputError(f"resolution must be a power of two >= 8, got {r!r}.")
        for name in ("z_dim", "w_dim", "mapping_layers", "channel_base", "channel_max",
                     "batch_size", "r1_interval"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise MedreconInputError(f"{name} must be a positive int, got {v!r}.")
        if self.mapping_layers > 32:  # 1e6 layers hung in the memory check, 1e4 took 19 GB
            raise MedreconInputError(f"mapping_layers (--mapping-layers) must be at most 32 "
                                     f"(StyleGAN2 uses 2 to 8), got {self.mapping_layers}.")
        for name in ("g_lr", "d_lr"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and 0 < v <= 1):
                raise MedreconInputError(f"{name} (--lr) must be a number in (0, 1], got {v!r} "
                                         "(larger steps diverge at once).")
        if self.r1_gamma is not None and not (math.isfinite(self.r1_gamma) and self.r1_gamma >= 0):
            raise MedreconInputError(f"r1_gamma (--gamma) must be a finite number >= 0, got "
                                     f"{self.r1_gamma!r}.")
        parse_policy(self.augment)

    @property
    def gamma(self) -> float:
        """The R1 weight in use."""
        if self.r1_gamma is not None:
            return float(self.r1_gamma)
        return 0.0002 * self.resolution**2 / self.batch_size

    @property
    def ema_half_life_kimg(self) -> float:
        """The EMA half-life in use (kimg)."""
        return self.ema_kimg if self.ema_kimg is not None else self.batch_size * 10 / 32

    def generator_kwargs(self) -> dict:
        """Constructor kwargs of :class:`medrecon.generators.Generator` for this config."""
        return dict(
            z_dim=self.z_dim, c_dim=0, w_dim=self.w_dim, img_resolution=self.resolution,
            img_channels=1, mapping_kwargs=dict(num_layers=self.mapping_layers),
            synthesis_kwargs=dict(channel_base=self.channel_base, channel_max=self.channel_max,
                                  conv_clamp=self.conv_clamp,
                                  num_fp16_res=4 if self.amp else 0),
            seed=self.seed,
        )

    def discriminator_kwargs(self) -> dict:
        """Constructor kwargs of :class:`medrecon.generators.Discriminator` for this config."""
        return dict(c_dim=0, img_resolution=self.resolution, img_channels=1,
                    channel_base=self.channel_base, channel_max=self.channel_max,
                    conv_clamp=self.conv_clamp, num_fp16_res=4 if self.amp else 0,
                    seed=self.seed + 1)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise MedreconInputError(f"unknown training options {unknown}; expected some of "
                                     f"{sorted(known)}.")
        return cls(**d)


def build_networks(config: TrainConfig):
    """Construct ``(G, D)`` for ``config``; initial weights are seeded by ``config.seed``."""
    from medrecon.generators import Discriminator, Generator

    return Generator(**config.generator_kwargs()), Discriminator(**config.discriminator_kwargs())


def training_bytes(config: TrainConfig) -> int:
    """Bytes the networks' training state takes, before any activation: G, its EMA copy and D
    in float32, with their gradients and Adam's two moments (5 copies of G's parameters, 4
    of D's). Counted on the ``meta`` device, so nothing is allocated."""
    with torch.device("meta"):
        G, D = build_networks(config)
    g = sum(p.numel() for p in G.parameters())
    d = sum(p.numel() for p in D.parameters())
    return 4 * (5 * g + 4 * d)


def check_training_memory(config: TrainConfig, device: torch.device) -> None:
    """Refuse a network whose training state alone does not fit in ``device``'s free memory
    (a huge ``--z-dim`` or ``--channel-max`` was killed by the kernel mid-allocation), before
    anything is allocated or written."""
    need, free = training_bytes(config), free_memory(device)
    if free is not None and need > free:
        gib = 2.0**30
        raise MedreconInputError(
            f"these networks need {need / gib:.1f} GiB for their weights, gradients and Adam "
            f"state alone, more than the {free / gib:.1f} GiB free on {device}; lower --z-dim, "
            f"--w-dim, --mapping-layers or --channel-max (now {config.z_dim}, {config.w_dim}, "
            f"{config.mapping_layers}, {config.channel_max}).")


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------

def g_nonsaturating_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss ``mean(softplus(-D(G(z))))``."""
    return F.softplus(-fake_logits).mean()


def d_logistic_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Logistic discriminator loss ``mean(softplus(D(fake))) + mean(softplus(-D(real)))``."""
    return F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()


def r1_penalty(real_logits: torch.Tensor, real_images: torch.Tensor) -> torch.Tensor:
    """Per-image squared gradient norm of D at real images, ``||grad_x D(x)||^2`` ``[B]``.

    ``real_images`` must have ``requires_grad=True`` and have produced ``real_logits``.
    """
    (grad,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True)
    return grad.square().sum(dim=(1, 2, 3))


# ---------------------------------------------------------------------------------------------
# Sample grids
# ---------------------------------------------------------------------------------------------

def save_image_grid(images: torch.Tensor, path: str | Path, *, cols: int | None = None) -> Path:
    """Write images ``[N, 1, R, R]`` in [-1, 1] as one grayscale PNG grid."""
    from PIL import Image

    n, c, h, w = images.shape
    cols = cols or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    grid = torch.zeros(rows * h, cols * w, dtype=torch.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[r * h:(r + 1) * h, q * w:(q + 1) * w] = x[i, 0]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid.numpy(), mode="L").save(path)
    return path


def read_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict:
    """Read a training checkpoint (``checkpoint-latest.pt``) safely (``weights_only=True``).

    Raises:
        CheckpointError: unreadable file, or not a checkpoint written by :class:`Trainer`.
    """
    try:
        with warnings.catch_warnings():  # torch's note on a foreign pickle's protocol
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files
        # one line: torch's text runs to ten, with advice (weights_only=False) not to follow
        first = ("a pickle of objects that a checkpoint does not hold"
                 if "Weights only load failed" in str(exc)
                 else (str(exc).strip().splitlines() or [""])[0][:160])
        hint = (" An NVIDIA StyleGAN2 pickle is imported with `medrecon priors import FILE -o "
                "DIR`." if str(path).lower().endswith(".pkl") else "")
        raise CheckpointError(
            f"cannot read training checkpoint {str(path)!r} ({type(exc).__name__}: {first}); "
            f"expected checkpoint-latest.pt written by `medrecon train run`.{hint}"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != "medrecon-train-v1":
        raise CheckpointError(f"{str(path)!r} is not a medrecon training checkpoint.")
    return state


def is_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a training checkpoint medrecon wrote (``read_checkpoint`` reads it)."""
    try:
        read_checkpoint(path)
    except MedreconInputError:
        return False
    return True


def slim_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Write a portable copy of a training checkpoint: no optimiser state, networks in float16.

    A slim checkpoint is about a fifth of the full one (the 128x128 shipped size: 8 MB instead
    of 37 MB), so it travels where the full one cannot (a GPU machine's 16 MB-per-file return
    limit). It exports like the full one, and ``medrecon train run`` resumes from it with fresh
    Adam moments (a warning says so). Integer buffers keep their dtype.

    Returns:
        ``dst``.
    """
    state = read_checkpoint(src)
    slim = {k: v for k, v in state.items() if k not in ("opt_G", "opt_D")}
    for net in ("G", "D", "G_ema"):
        slim[net] = {k: (v.half() if v.is_floating_point() else v) for k, v in state[net].items()}
    dst = Path(dst)
    _save_atomically(slim, dst)
    return dst


def _save_atomically(obj: Any, path: Path) -> None:
    """``torch.save`` to a new temporary file beside ``path`` (a unique name: never a file of
    the user's), then moved over ``path``; on any failure the temporary is removed."""
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        from medrecon.io.outputs import default_modes

        os.chmod(tmp, default_modes()[0])  # the user's default, as every output (not 0600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class _StopRequest:
    """SIGINT/SIGTERM set :attr:`requested` instead of killing the loop (main thread only);
    a second signal restores the previous handler and delivers the signal to it."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:  # asked twice: behave as without us
            self.uninstall()
            signal.raise_signal(signum)
            return
        self.requested = True
        warnings.warn(f"signal {signal.Signals(signum).name}: stopping after this step and "
                      "writing the checkpoint (send it again to stop at once).", stacklevel=2)

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


# ---------------------------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------------------------

def _step_seed(seed: int, step: int, rank: int, stream: int) -> int:
    h = hashlib.sha256(f"{seed}/{step}/{rank}/{stream}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class TrainingDiverged(MedreconInputError, FloatingPointError):
    """A loss became NaN or infinite: the options (learning rate, R1 weight) let the run
    diverge; a user's setting to change, exit 2 on the command line."""


def checkpoint_split(state: dict) -> dict | None:
    """The held-out fold and fold-record digest a training checkpoint recorded, or None
    (checkpoints written before they were recorded)."""
    try:
        split = json.loads(state["split"]) if "split" in state else None
    except (TypeError, ValueError):
        return None
    return split if isinstance(split, dict) else None


class Trainer:
    """Owns the networks, optimisers and counters of one StyleGAN2 run.

    Args:
        dataset: object with ``__len__`` and ``batch(indices) -> [N, 1, R, R]`` in [-1, 1]
            (e.g. :class:`medrecon.training.folds.ImageFolderDataset`).
        config: hyperparameters.
        device: where to train (default CPU). Not stored in any module.
        G, D: optional pre-built networks (default: :func:`build_networks`).
        split: ``{"held_out_fold": k, "folds_sha256": digest}`` of the images held out,
            written into every checkpoint; a checkpoint of another split is refused on resume
            (its networks saw this run's held-out images). Default None: not recorded.

    Attributes:
        step: optimiser steps taken (one G step + one D step each).
        images_seen: real images consumed, over all ranks.
    """

    def __init__(self, dataset, config: TrainConfig, *, device: str | torch.device = "cpu",
                 G: torch.nn.Module | None = None, D: torch.nn.Module | None = None,
                 split: dict | None = None) -> None:
        self.config = config
        self.split = dict(split) if split else None
        self.device = torch.device(device)
        self.dataset = dataset
        self.rank, self.world_size = _dist_info()
        if config.batch_size % self.world_size:
            raise MedreconInputError(
                f"batch_size {config.batch_size} is not divisible by the {self.world_size} "
                "processes; choose a multiple of the world size."
            )
        self.batch_per_rank = config.batch_size // self.world_size
        if G is None or D is None:
            G, D = build_networks(config)
        self.G = G.to(self.device).train().requires_grad_(False)
        self.D = D.to(self.device).train().requires_grad_(False)
        self.G_ema = copy.deepcopy(self.G).eval()
        self._broadcast_params()
        ratio = config.r1_interval / (config.r1_interval + 1)  # lazy-regularisation correction
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=config.g_lr, betas=config.betas,
                                      eps=1e-8)
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=config.d_lr * ratio,
                                      betas=(config.betas[0] ** ratio, config.betas[1] ** ratio),
                                      eps=1e-8)
        self.step = 0
        self.images_seen = 0
        self.train_seconds = 0.0
        self.history: list[dict] = []
        self._policy = parse_policy(config.augment)

    # -- helpers ------------------------------------------------------------------------------
    def _broadcast_params(self) -> None:
        if self.world_size == 1:
            return
        for module in (self.G, self.D, self.G_ema):
            for t in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(t.data, src=0)

    def _allreduce_grads(self, module: torch.nn.Module) -> None:
        params = [p for p in module.parameters() if p.grad is not None]
        if not params:
            return
        flat = torch.cat([p.grad.flatten() for p in params])
        if self.world_size > 1:
            dist.all_reduce(flat)
            flat /= self.world_size
        torch.nan_to_num_(flat, nan=0, posinf=1e5, neginf=-1e5)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n

    def _augment(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return diff_augment(x, policy=self._policy, generator=gen) if self._policy else x

    def _run_G(self, z: torch.Tensor, noise: torch.Generator) -> torch.Tensor:
        c = torch.zeros(z.shape[0], 0, device=z.device)
        ws = self.G.mapping(z, c)
        return self.G.synthesis(ws, noise_mode="random", noise_generator=noise)

    def _run_D(self, img: torch.Tensor) -> torch.Tensor:
        c = torch.zeros(img.shape[0], 0, device=img.device)
        return self.D(img, c)

    # -- one step -----------------------------------------------------------------------------
    def train_step(self) -> dict:
        """One G step, one D step (+ lazy R1), EMA update. Returns scalar stats."""
        cfg, step = self.config, self.step
        gen = torch.Generator().manual_seed(_step_seed(cfg.seed, step, self.rank, 0))
        noise = torch.Generator(self.device).manual_seed(_step_seed(cfg.seed, step, self.rank, 1))
        b = self.batch_per_rank
        stats: dict = {"step": step}

        # --- G: non-saturating loss ----------------------------------------------------------
        self.G.requires_grad_(True)
        z = torch.randn(b, self.G.z_dim, generator=gen).to(self.device)
        fake = self._run_G(z, noise)
        loss_g = g_nonsaturating_loss(self._run_D(self._augment(fake, gen)).float())
        self.opt_G.zero_grad(set_to_none=True)
        loss_g.backward()
        self.G.requires_grad_(False)
        self._allreduce_grads(self.G)
        self.opt_G.step()
        stats["loss_g"] = float(loss_g.detach())

        # --- D: logistic loss ----------------------------------------------------------------
        self.D.requires_grad_(True)
        idx = torch.randint(len(self.dataset), (b,), generator=gen)
        real = self.dataset.batch(idx).to(self.device)
        z = torch.randn(b, self.G.z_dim, generator=gen).to(self.device)
        with torch.no_grad():
            fake = self._run_G(z, noise)
        fake_logits = self._run_D(self._augment(fake, gen)).float()
        real_logits = self._run_D(self._augment(real, gen)).float()
        loss_d = d_logistic_loss(real_logits, fake_logits)
        self.opt_D.zero_grad(set_to_none=True)
        loss_d.backward()
        stats["loss_d"] = float(loss_d.detach())
        stats["d_real"] = float(real_logits.detach().mean())
        stats["d_fake"] = float(fake_logits.detach().mean())

        # --- lazy R1 on (augmented) reals ----------------------------------------------------
        if step % cfg.r1_interval == 0 and cfg.gamma > 0:
            real_aug = self._augment(real, gen).detach().requires_grad_(True)
            logits = self._run_D(real_aug).float()
            r1 = r1_penalty(logits, real_aug)
            loss_r1 = r1.mean() * (cfg.gamma / 2) * cfg.r1_interval
            # "+ 0 * logits" keeps every D parameter in the graph (as NVIDIA does).
            (loss_r1 + logits.mean() * 0).backward()
            stats["r1"] = float(r1.detach().mean())
        self.D.requires_grad_(False)
        self._allreduce_grads(self.D)
        self.opt_D.step()

        # --- EMA of G ------------------------------------------------------------------------
        self.images_seen += cfg.batch_size
        half_life = cfg.ema_half_life_kimg * 1000
        if cfg.ema_rampup is not None:
            half_life = min(half_life, self.images_seen * cfg.ema_rampup)
        beta = 0.5 ** (cfg.batch_size / max(half_life, 1e-8))
        with torch.no_grad():
            for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
                p_ema.copy_(p.detach().lerp(p_ema, beta))
            for b_ema, b_ in zip(self.G_ema.buffers(), self.G.buffers()):
                b_ema.copy_(b_)
        self.step += 1
        for k in ("loss_g", "loss_d"):
            if not math.isfinite(stats[k]):
                raise TrainingDiverged(f"{k} became {stats[k]} at step {step}: the training "
                                       "diverged. Lower the learning rate (--lr) or raise the "
                                       "R1 weight (--gamma), and start a new output folder or "
                                       "resume from an earlier checkpoint.")
        return stats

    # -- samples --------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int = 16, *, seed: int = 0, ema: bool = True) -> torch.Tensor:
        """``n`` images from fixed latents ``z ~ N(0, I)`` seeded by ``seed`` (const noise)."""
        G = self.G_ema if ema else self.G
        z = torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(seed))
        z = z.to(self.device)
        ws = G.mapping(z, torch.zeros(n, 0, device=self.device))
        return G.synthesis(ws, noise_mode="const").float().cpu()

    # -- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to resume: networks, EMA, optimisers, counters, config."""
        return {
            "format": "medrecon-train-v1",
            "config": json.dumps(self.config.to_dict()),
            "G_kwargs": json.dumps(self.config.generator_kwargs()),
            "D_kwargs": json.dumps(self.config.discriminator_kwargs()),
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "G_ema": self.G_ema.state_dict(),
            "opt_G": self.opt_G.state_dict(),
            "opt_D": self.opt_D.state_dict(),
            "step": self.step,
            "images_seen": self.images_seen,
            "train_seconds": self.train_seconds,
            "world_size": self.world_size,
            "history": json.dumps(self.history[-2000:]),
            **({"split": json.dumps(self.split)} if self.split else {}),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict` (the config and the split must match; weights must
        be finite).

        Raises:
            CheckpointError: another config or split, NaN weights, a damaged checkpoint.
        """
        try:
            self._load_state_dict(state)
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
            if isinstance(exc, MedreconInputError):
                raise
            raise CheckpointError(
                f"the checkpoint is not a complete medrecon training checkpoint "
                f"({type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:120]}); resume "
                "from another checkpoint of the run, or start a new output folder.") from None

    def _load_state_dict(self, state: dict) -> None:
        from medrecon.generators.checkpoints import check_finite_state

        saved = TrainConfig.from_dict(json.loads(state["config"]))
        if saved != self.config:
            raise CheckpointError(
                f"checkpoint was trained with {saved} but this run asks for {self.config}; "
                "resume with the same options or start a new output folder."
            )
        split = checkpoint_split(state)
        if self.split and split and split != self.split:
            raise CheckpointError(
                f"checkpoint was trained holding out {split} but this run holds out "
                f"{self.split}: its networks saw this run's held-out images. Resume only a "
                "checkpoint of this run, or start a new output folder.")
        for net in ("G", "D", "G_ema"):  # a diverged run: resuming trained on with NaN
            check_finite_state(state[net], source=f"the checkpoint's {net}")
        self.G.load_state_dict(state["G"])  # fp16 tensors of a slim checkpoint are cast back
        self.D.load_state_dict(state["D"])
        self.G_ema.load_state_dict(state["G_ema"])
        if "opt_G" in state and "opt_D" in state:
            self.opt_G.load_state_dict(state["opt_G"])
            self.opt_D.load_state_dict(state["opt_D"])
        else:  # a slim checkpoint: Adam restarts with fresh moments
            warnings.warn("resuming from a slim checkpoint (no optimiser state): Adam's moments "
                          "restart from zero.", stacklevel=2)
        self.step = int(state["step"])
        self.images_seen = int(state["images_seen"])
        self.train_seconds = float(state["train_seconds"])
        self.history = json.loads(state.get("history", "[]"))

    def save_checkpoint(self, path: str | Path) -> Path:
        """Atomically write :meth:`state_dict` to ``path`` (rank 0 only; no-op elsewhere)."""
        path = Path(path)
        if self.rank != 0:
            return path
        _save_atomically(self.state_dict(), path)
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        """Resume from a file written by :meth:`save_checkpoint`."""
        self.load_state_dict(read_checkpoint(path, map_location=self.device))

    # -- the loop -------------------------------------------------------------------------------
    def fit(self, out_dir: str | Path, *, kimg: float, max_minutes: float | None = None,
            snapshot_minutes: float = 5.0, log_every: int = 10, progress=None,
            resume: bool = True) -> dict:
        """Train until ``kimg`` thousand real images are seen or ``max_minutes`` pass.

        Resumes from ``out_dir/checkpoint-latest.pt`` when present. Writes the checkpoint and a
        sample grid (``samples-<kimg>.png``) every ``snapshot_minutes`` and at the end, and
        appends JSON lines to ``log.jsonl``. SIGINT/SIGTERM (Ctrl-C, ``kill``) stop it
        gracefully: the step in progress finishes, the checkpoint is written, and the call
        returns (all ranks agree on the stop every ``log_every`` steps); a second signal
        interrupts at once.

        Args:
            out_dir: run folder.
            kimg: stop after this many thousand images (counted over all ranks).
            max_minutes: wall-clock cap of this call (the checkpoint is always written).
            snapshot_minutes: checkpoint/sample period.
            log_every: steps between log lines.
            progress: optional callable(stats) for progress display.
            resume: load ``out_dir``'s checkpoint when there is one; False when the caller
                loaded it already (:func:`medrecon.training.runner.train_run` reads it before
                it writes the run folder's records).

        Returns:
            Summary dict (steps, kimg, seconds, last stats).
        """
        out = Path(out_dir)
        ckpt = out / CHECKPOINT_NAME
        if resume and ckpt.exists():
            self.load_checkpoint(ckpt)
        if self.rank == 0:
            out.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        last_snap = start
        stats: dict = {}
        log = (out / "log.jsonl").open("a") if self.rank == 0 else None
        stop = _StopRequest()
        try:
            stop.install()
            while self.images_seen < kimg * 1000:
                t0 = time.monotonic()
                stats = self.train_step()
                self.train_seconds += time.monotonic() - t0
                stats["kimg"] = self.images_seen / 1000
                stats["sec_per_step"] = time.monotonic() - t0
                if self.step % log_every == 0:
                    self.history.append(stats)
                    if log is not None:
                        log.write(json.dumps(stats) + "\n")
                        log.flush()
                    if progress is not None:
                        progress(stats)
                if self.step % log_every == 0 and self._agree(stop.requested):
                    break  # a signal asked to stop: the final snapshot below saves this step
                now = time.monotonic()
                if max_minutes is not None and (now - start) > max_minutes * 60:
                    break  # the final snapshot below saves this step
                if now - last_snap > snapshot_minutes * 60:
                    self.snapshot(out)
                    last_snap = now
        finally:
            stop.uninstall()
            if log is not None:
                log.close()
        self.snapshot(out)
        return {"step": self.step, "kimg": self.images_seen / 1000,
                "train_seconds": self.train_seconds, "last": stats}

    def _agree(self, flag: bool) -> bool:
        """``flag`` on any rank (one all-reduce under DDP, so every rank stops together)."""
        if self.world_size <= 1:
            return bool(flag)
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def snapshot(self, out_dir: str | Path) -> None:
        """Write the checkpoint and a 4x4 sample grid of the EMA generator (rank 0)."""
        if self.rank != 0:
            return
        out = Path(out_dir)
        self.save_checkpoint(out / CHECKPOINT_NAME)
        save_image_grid(self.sample(16, seed=self.config.seed),
                        out / f"samples-{self.images_seen // 1000:06d}kimg.png", cols=4)
