"""Reconstruction solvers: CSGM, BRGM (MAP and variational), IAGAN, back-projection, baselines.

One call shape for all: ``solve(y, operator, prior, method=..., **options) -> Reconstruction``,
or call a method directly (``csgm(y, operator, prior, steps=...)``). Layers:

* iteration cores (pure loops): :func:`optimise_latent`, :func:`variational_core`,
  :func:`adapt_weights`, :func:`tv_pdhg`;
* per-method functions that validate, pick the device, copy/freeze the generator and package a
  :class:`Reconstruction`;
* :func:`solve` with the :data:`METHODS` registry, per-task :data:`DEFAULTS` and automatic
  back-projection.
"""

from medrecon.solvers.api import (
    DEFAULT_METHOD,
    DEFAULTS,
    METHODS,
    OFF_GRID_DEFAULTS,
    SPARSE_SR_DEFAULTS,
    SPARSE_SR_FRACTION,
    MethodSpec,
    check_method_task,
    infer_task,
    measured_fraction,
    method_options,
    methods_for_task,
    solve,
    will_back_project,
)
from medrecon.solvers.backprojection import AUTO_BP_MAX_SIGMA, auto_eta, back_project
from medrecon.solvers.baselines import (
    adjoint,
    bicubic,
    biharmonic,
    lanczos,
    pseudo_inverse,
    tv,
    tv_pdhg,
    wiener,
    zero_filled,
)
from medrecon.solvers.brgm import brgm, brgm_variational, variational_core
from medrecon.solvers.csgm import csgm, optimise_latent
from medrecon.solvers.iagan import STAGE1_DEFAULTS, adapt_one, adapt_weights, iagan
from medrecon.solvers.latent import LatentSpace
from medrecon.solvers.losses import PerceptualDistance, colinearity, resolve_perceptual
from medrecon.solvers._common import latent_statistics, resolve_device
from medrecon.solvers.result import Reconstruction

__all__ = [
    "AUTO_BP_MAX_SIGMA",
    "DEFAULTS",
    "DEFAULT_METHOD",
    "LatentSpace",
    "METHODS",
    "OFF_GRID_DEFAULTS",
    "SPARSE_SR_DEFAULTS",
    "SPARSE_SR_FRACTION",
    "measured_fraction",
    "STAGE1_DEFAULTS",
    "MethodSpec",
    "check_method_task",
    "methods_for_task",
    "PerceptualDistance",
    "Reconstruction",
    "adapt_one",
    "adapt_weights",
    "adjoint",
    "auto_eta",
    "back_project",
    "bicubic",
    "biharmonic",
    "brgm",
    "brgm_variational",
    "colinearity",
    "csgm",
    "iagan",
    "infer_task",
    "lanczos",
    "latent_statistics",
    "method_options",
    "optimise_latent",
    "pseudo_inverse",
    "resolve_device",
    "resolve_perceptual",
    "solve",
    "will_back_project",
    "tv",
    "tv_pdhg",
    "variational_core",
    "wiener",
    "zero_filled",
]
