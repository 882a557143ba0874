"""The bundle's job as one ``nn.Module``: degraded scans in, reconstructions out.

A bundle's ``network_def`` is the StyleGAN2 generator (``z -> image``): that is what
``ckpt_export`` exports and what the solvers invert. Its ``network_data_format`` in
``metadata.json``, however, describes the bundle's job (degraded scan ``image`` ->
reconstruction ``pred``). :class:`Reconstructor` is a network of that shape, so that
``python -m monai.bundle verify_net_in_out --net_id reconstructor`` can check the metadata
against what the bundle does. It is a thin layer: every scan goes through the bundle's
:class:`~medrecon.monai.ReconstructionInferer`, i.e. :func:`medrecon.pipeline.reconstruct`,
with the inferer's prior, task, method and options.
"""

from __future__ import annotations

import torch
from monai.data import MetaTensor, get_track_meta
from torch import nn

from medrecon.errors import MedreconInputError
from medrecon.monai.inferer import ReconstructionInferer

__all__ = ["Reconstructor"]


class Reconstructor(nn.Module):
    """Reconstruct a batch of channel-first scans ``(B, 1, H, W)`` (or ``(B, 1, X, Y, Z)``).

    Args:
        inferer: The :class:`~medrecon.monai.ReconstructionInferer` whose prior, task, method
            and options (``steps``, ``scale``, ``sr_kernel``, ``noise_sigma``, ``seed``, ...)
            are used; a bundle passes ``"@inferer"``, so the ids that override the inferer
            override this network too.
        network: The generator to invert. Default ``None``: the inferer's prior's own generator
            (loaded from the prior's folder, sha256-checked), registered as the submodule
            ``generator`` so that ``.to(device)`` moves it. Pass a generator whose weights come
            from elsewhere (e.g. ``"@network"`` after a ``CheckpointLoader``) to invert that one.

    ``forward(image, mask=None)`` returns the reconstructions as one batch (for ``sr``, ``scale``
    times the input's pixels along each in-plane axis), a MetaTensor with the updated geometry
    when ``image`` is one, else a plain tensor, on ``image``'s device. ``mask`` (inpainting,
    nonzero = missing) is shaped like ``image``. The solvers optimise, so gradients are enabled
    inside ``forward`` even under ``torch.no_grad()`` (as ``verify_net_in_out`` and evaluators
    call networks); the result carries no graph.
    """

    def __init__(self, inferer: ReconstructionInferer, network: nn.Module | None = None) -> None:
        super().__init__()
        if not isinstance(inferer, ReconstructionInferer):
            raise MedreconInputError(
                f"Reconstructor needs a medrecon.monai.ReconstructionInferer; got "
                f"{type(inferer).__name__}.")
        self.inferer = inferer
        self.generator = network if network is not None else inferer.prior.generator

    def forward(self, image: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if not isinstance(image, torch.Tensor) or image.ndim not in (4, 5) or image.shape[1] != 1:
            got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise MedreconInputError(
                f"Reconstructor expects a batch of one-channel scans (B, 1, H, W) or "
                f"(B, 1, X, Y, Z); got {got}.")
        if mask is not None and tuple(mask.shape) != tuple(image.shape):
            raise MedreconInputError(
                f"the mask must be shaped like the image {tuple(image.shape)}; got "
                f"{tuple(mask.shape)}.")
        with torch.enable_grad():  # the solvers optimise; callers often infer under no_grad
            out = self.inferer(image, self.generator, mask=mask).detach()
        keep = isinstance(image, MetaTensor) and get_track_meta()
        return out.as_tensor() if isinstance(out, MetaTensor) and not keep else out
