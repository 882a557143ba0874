"""Bounds of options shared by every surface (CLI, Python, bundles, Slicer), in a module
without heavy imports so the CLI can use them in its option types, and the free memory they
are checked against."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

#: The largest SR factor: a larger one only allocates an output of ``scale**2`` times the
#: input (x100000 of a 37 x 53 image asked for 50 GB).
MAX_SCALE = 32
#: The largest measurement noise std, in generator units: the whole intensity window (images
#: in [-1, 1]); more is no image (1e30 overflowed the solvers into NaN after the work).
MAX_NOISE_SIGMA = 2.0
#: The most optimisation steps, ensemble members, posterior samples and warm-start segment
#: length a call may ask for: far beyond any useful setting (the defaults are 50-600 steps, 4
#: members, 16 samples), below what makes a buffer's size overflow (--steps 1e23 ended in an
#: internal error after the first solves, --ensemble 1e20 ran without end).
MAX_STEPS = 100_000
MAX_ENSEMBLE = 64
MAX_SAMPLES = 1024
MAX_KEY_EVERY = 1000
#: Float32 copies of a result the pipeline holds at its peak (the slices, their stack, the
#: intensities restored, the volume reassembled, the array written): what a result is checked
#: against the free memory with. Measured as peak RSS over the result's size on a 64 x 64 x
#: 200 volume at x4 (256 x 256 x 200 result, tiny prior, one thread): bicubic 7.3, CSGM without
#: the coherence step 8.7 (5 was assumed before, and a volume that passed the check could run
#: out of memory after its solves).
RESULT_COPIES = 9
#: The same for a generative volume whose slices the coherence step makes coherent (its
#: measured and unmeasured parts and weights): the IAGAN volume default peaked at 11.8.
COHERENT_RESULT_COPIES = 13
#: The most frames one DICOM file may claim: its frames are listed (position, orientation,
#: spacing, rescale) before any pixel is read, about a kilobyte each (a 700-byte file claiming
#: two million 1x1 frames took 2 GB and a minute). Cine and enhanced multi-frame files hold a
#: few thousand.
MAX_DICOM_FRAMES = 65536


def free_memory(device: Any) -> int | None:
    """Bytes free on ``device`` (a ``torch.device``; CUDA: the driver's count; CPU: Linux's
    MemAvailable, else the physical memory); ``None`` where it cannot be told."""
    try:
        if device.type == "cuda":
            import torch

            return int(torch.cuda.mem_get_info(device)[0])
        if device.type == "cpu":
            with contextlib.suppress(OSError, ValueError):
                for line in Path("/proc/meminfo").read_text().splitlines():
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
            return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, RuntimeError, ValueError):
        return None
    return None
