"""The one result type every solver returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Reconstruction:
    """Result of a reconstruction.

    Attributes:
        image: reconstructed images ``[B, C, H, W]``, float32 on CPU, generator space ([-1, 1]
            for generative methods; the operator's image space for baselines).
        latents: W+ latents ``[B, num_ws, w_dim]`` (float32, CPU) of the returned images for
            generative methods (for ``space='z'`` the mapped z); ``None`` for baselines.
        loss_history: objective per optimisation step, averaged over the batch (and restarts or
            samples); stages are concatenated (see ``info['stages']``). Empty for closed forms.
        seconds: wall-clock time of the call.
        device: the device the computation ran on (e.g. ``'cpu'``, ``'cuda:0'``).
        method: the method name (``'csgm'``, ``'brgm'``, ``'iagan'``, ``'bicubic'``, ...), with
            ``'+bp'`` appended when back-projection was applied.
        samples: posterior samples ``[N, B, C, H, W]`` (variational BRGM) or ``None``.
        std: per-pixel posterior standard deviation ``[B, C, H, W]`` or ``None``.
        info: settings actually used (hyperparameters, seed, stage boundaries, fall-backs).
        state: the solver's final state when asked for (IAGAN ``return_state=True``: an
            :class:`medrecon.solvers.iagan.AdaptedState` to warm-start another call), else
            ``None``.
    """

    image: torch.Tensor
    latents: torch.Tensor | None = None
    loss_history: list[float] = field(default_factory=list)
    seconds: float = 0.0
    device: str = "cpu"
    method: str = ""
    samples: torch.Tensor | None = None
    std: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)
    state: Any = None

    def __post_init__(self) -> None:
        self.image = _to_cpu(self.image)
        self.latents = _to_cpu(self.latents)
        self.samples = _to_cpu(self.samples)
        self.std = _to_cpu(self.std)

    @property
    def batch_size(self) -> int:
        """Number of reconstructed slices."""
        return int(self.image.shape[0])


def _to_cpu(t: torch.Tensor | None) -> torch.Tensor | None:
    if t is None:
        return None
    t = t.detach()
    if not t.is_complex():
        t = t.float()
    return t.cpu().contiguous()
