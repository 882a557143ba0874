"""StyleGAN2 networks in pure PyTorch and safe checkpoint import/export.

Public API:

* :class:`Generator`, :class:`Discriminator` (NVIDIA stylegan2-ada-pytorch names, shapes and
  numerics; see :mod:`medrecon.generators.networks`).
* :func:`load_generator`, :func:`save_generator`, :func:`load_network_pickle`
  (see :mod:`medrecon.generators.checkpoints`).
"""

from medrecon.generators.checkpoints import (
    load_generator,
    load_network_pickle,
    read_generator_config,
    save_generator,
)
from medrecon.generators.networks import (
    Discriminator,
    Generator,
    MappingNetwork,
    SynthesisNetwork,
    num_ws_for_resolution,
)

__all__ = [
    "Discriminator",
    "Generator",
    "MappingNetwork",
    "SynthesisNetwork",
    "load_generator",
    "load_network_pickle",
    "num_ws_for_resolution",
    "read_generator_config",
    "save_generator",
]
