"""medrecon: medical image reconstruction by inverting pre-trained StyleGAN2 priors.

Layers (see docs/architecture.md):

* :mod:`medrecon.physics`    forward operators ``A`` with adjoints and pseudo-inverses.
* :mod:`medrecon.generators` pure-PyTorch StyleGAN2 and safe checkpoint import.
* :mod:`medrecon.solvers`    CSGM, BRGM, IAGAN, back-projection and classical baselines.
* :mod:`medrecon.io`         DICOM / NIfTI / PNG reading and writing with geometry.
* :mod:`medrecon.pipeline`   the one reconstruction entry point used by the CLI, bundles, Slicer.
"""

__version__ = "0.1.0"
