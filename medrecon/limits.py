"""Bounds of options shared by every surface (CLI, Python, bundles, Slicer), in a module
without heavy imports so the CLI can use them in its option types."""

#: The largest SR factor: a larger one only allocates an output of ``scale**2`` times the
#: input (x100000 of a 37 x 53 image asked for 50 GB).
MAX_SCALE = 32
#: The largest measurement noise std, in generator units: the whole intensity window (images
#: in [-1, 1]); more is no image (1e30 overflowed the solvers into NaN after the work).
MAX_NOISE_SIGMA = 2.0
