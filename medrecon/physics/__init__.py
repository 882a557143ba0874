"""Forward operators ``y = A x + e`` of the reconstruction tasks.

Every operator is a :class:`torch.nn.Module` whose masks/kernels/matrices are buffers (no stored
device) acting on image batches ``[B, C, H, W]``. Linear operators provide ``A``,
``A_adjoint``, ``A_dagger`` (exact closed forms where they exist, conjugate gradients otherwise)
and ``A_dagger_reg``; ``measure`` adds seeded noise. :func:`build_operator` builds the operator
of a named task.
"""

from medrecon.physics import masks
from medrecon.physics.base import (
    ComposedLinearPhysics,
    ComposedPhysics,
    Identity,
    LinearPhysics,
    Physics,
    compose,
)
from medrecon.physics.blur import Blur
from medrecon.physics.cg import CGInfo, conjugate_gradient
from medrecon.physics.cs import CompressedSensing
from medrecon.physics.factory import TASK_OPTIONS, TASKS, build_operator
from medrecon.physics.fft import fft2c, ifft2c
from medrecon.physics.inpainting import Inpainting
from medrecon.physics.kernels import (
    PADDINGS,
    bicubic_kernel,
    box_kernel,
    gaussian_kernel,
    uniform_kernel,
)
from medrecon.physics.mri import MRI, MultiCoilMRI, SubsampledFourier
from medrecon.physics.noise import GaussianNoise, NoiseModel, RicianNoise
from medrecon.physics.resample import GridResample, resample_matrix
from medrecon.physics.superres import SR_KERNELS, SuperResolution, sr_kernel

__all__ = [
    "MRI",
    "PADDINGS",
    "SR_KERNELS",
    "TASKS",
    "TASK_OPTIONS",
    "Blur",
    "CGInfo",
    "ComposedLinearPhysics",
    "ComposedPhysics",
    "CompressedSensing",
    "GaussianNoise",
    "GridResample",
    "Identity",
    "Inpainting",
    "LinearPhysics",
    "MultiCoilMRI",
    "NoiseModel",
    "Physics",
    "RicianNoise",
    "SubsampledFourier",
    "SuperResolution",
    "bicubic_kernel",
    "box_kernel",
    "build_operator",
    "compose",
    "conjugate_gradient",
    "fft2c",
    "gaussian_kernel",
    "ifft2c",
    "masks",
    "resample_matrix",
    "sr_kernel",
    "uniform_kernel",
]
