"""The solver as a MONAI :class:`~monai.inferers.Inferer`, for ``SupervisedEvaluator``.

A bundle's evaluator calls ``inferer(inputs, network)`` on each batch. Here ``network`` is the
bundle's ``network_def`` (the StyleGAN2 generator, its weights loaded from
``models/model.pt`` by a ``CheckpointLoader``) and ``inputs`` the degraded scans; every scan
of the batch is reconstructed through :func:`medrecon.pipeline.reconstruct` with that
generator and the prior's W statistics.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor, decollate_batch
from monai.inferers import Inferer

from medrecon.errors import MedreconInputError

__all__ = ["ReconstructionInferer"]


class ReconstructionInferer(Inferer):
    """Reconstruct each item of a batch of channel-first scans.

    Args:
        prior: Prior name or folder: its metadata and W statistics (and its generator when the
            evaluator passes no network).
        task: The reconstruction task (``"sr"``, ``"inpaint"``, ``"deblur"``, ``"denoise"``...).
        method: Method name; default the prior's choice.
        **options: Keywords of :func:`medrecon.pipeline.reconstruct` (``scale``, ``sr_kernel``,
            ``steps``, ``seed``, ``device``, ...).

    Inpainting masks (nonzero = missing) come as the keyword ``mask`` (a bundle's
    ``prepare_batch`` is ``PrepareBatchExtraInput(extra_keys={"mask": "mask"})``).
    The items of a batch must give results of one shape (use ``batch_size=1`` for scans of
    different sizes, as the shipped bundles do).
    """

    def __init__(self, prior: Any, task: str, method: str | None = None, **options: Any) -> None:
        super().__init__()
        from medrecon.pipeline import _check_task

        self.task = _check_task(task)
        self.method = method
        self.options = {k: v for k, v in options.items() if v is not None}
        self._prior_arg = prior
        self._prior: Any = None
        self._check()

    def _check(self) -> None:
        """Every option checked now, as the CLI checks them before any work: a bad method,
        steps or kernel found per batch stopped a bundle run mid-way, inside the engine's
        traceback."""
        from medrecon.steps import ReconstructionSettings

        known = set(inspect.signature(ReconstructionSettings.check).parameters) - {
            "task", "prior", "method", "has_mask"}
        unknown = sorted(set(self.options) - known)
        if unknown:
            raise MedreconInputError(
                f"unknown reconstruction option(s) {', '.join(unknown)}; expected some of "
                f"{', '.join(sorted(known))}.")
        settings = ReconstructionSettings.check(task=self.task, prior=self._prior_arg,
                                                method=self.method, **self.options)
        self._prior = settings.prior

    @property
    def prior(self) -> Any:
        """The :class:`~medrecon.priors.Prior` of ``prior`` (loaded on first use)."""
        from medrecon.priors import Prior, load_prior

        if self._prior is None:
            self._prior = (self._prior_arg if isinstance(self._prior_arg, Prior)
                           else load_prior(self._prior_arg))
        return self._prior

    def _prior_for(self, network: Any) -> Any:
        from medrecon.priors import Prior

        base = self.prior
        if network is None or network is base.generator:
            return base
        if not all(hasattr(network, a) for a in ("mapping", "synthesis", "img_resolution")):
            raise MedreconInputError(
                f"the evaluator's network is a {type(network).__name__}, not a StyleGAN2 "
                "generator; set network_def to medrecon.generators.Generator.")
        net = network.module if hasattr(network, "module") else network
        mean, std = base.w_stats()
        return Prior(net.eval(), name=base.name, metadata=base.metadata, w_mean=mean, w_std=std)

    def check(self, image: Any, mask: Any = None) -> tuple[int, int, int]:
        """Check, without solving, that this inferer would reconstruct ``image`` (a
        :class:`medrecon.io.MedicalImage` or MetaTensor; ``mask`` on its grid, nonzero =
        missing): :func:`medrecon.pipeline.check_reconstruction` with its settings.

        Returns:
            The shape ``(X, Y, Z)`` of the result.

        Raises:
            MedreconInputError: what the reconstruction would raise before its solve.
        """
        from medrecon.pipeline import check_reconstruction

        return check_reconstruction(image, task=self.task, prior=self.prior,
                                    method=self.method, mask=mask, **self.options)

    def __call__(self, inputs: torch.Tensor, network: Any = None, *args: Any, **kwargs: Any) -> Any:
        from medrecon.pipeline import reconstruct

        from monai.data.utils import collate_meta_tensor

        from medrecon.monai.convert import meta_tracking

        prior = self._prior_for(network)
        mask = kwargs.pop("mask", args[0] if args else None)
        with meta_tracking() as tracked:  # the affine is needed, even under set_track_meta(False)
            items = decollate_batch(inputs, detach=True)
            masks = (decollate_batch(mask, detach=True) if mask is not None
                     else [None] * len(items))
            outs = []
            for item, m in zip(items, masks):
                if not isinstance(item, MetaTensor):
                    item = MetaTensor(item)
                if m is not None:  # channel-first like the image: (1, X, Y[, Z])
                    m = np.asarray(m.detach().cpu())[0]
                    m = m[..., None] if m.ndim == 2 else m
                with torch.enable_grad():  # evaluators infer under no_grad; the solvers optimise
                    res = reconstruct(item.cpu(), task=self.task, prior=prior,
                                      method=self.method, mask=m, **self.options)
                outs.append(res.image)
            shapes = {tuple(o.shape) for o in outs}
            if len(shapes) > 1:
                raise MedreconInputError(f"the batch gave results of shapes {sorted(shapes)}; "
                                         "use batch_size=1 for scans of different sizes.")
            out = collate_meta_tensor(outs).to(inputs.device)
        return out if tracked else out.as_tensor()
