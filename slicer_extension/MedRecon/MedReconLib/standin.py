"""A stand-in for the ``medrecon`` CLI, for the module's self-test. NOT a reconstruction.

It accepts the CLI's arguments and speaks its JSON protocol, but only moves voxels: ``sr``
repeats each voxel ``scale`` times in-plane (I and J) and writes the affine of the finer grid
over the same field of view; ``inpaint`` writes 1000 on the masked voxels; other tasks write
``2 * x + 1``. With ``--samples`` it writes a constant std map beside the output. This lets the
self-test check the plumbing (geometry, voxel order, progress, cancel) inside Slicer without
medrecon or a prior installed. It needs only NumPy and SimpleITK, both bundled with Slicer.

Run: ``PythonSlicer standin.py sr input.nii -o output.nii --scale 2 --log-format json``.
Environment: ``MEDRECON_STANDIN_SLEEP`` (seconds per progress step, default 0),
``MEDRECON_STANDIN_STEPS`` (progress steps, default 3).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import List, Optional


def _emit(**event) -> None:
    sys.stderr.write(json.dumps(event) + "\n")
    sys.stderr.flush()


def _std_name(output: str) -> str:
    for suffix in (".nii.gz", ".nii", ".nrrd"):
        if output.endswith(suffix):
            return output[: -len(suffix)] + "_std" + suffix
    root, ext = os.path.splitext(output)
    return root + "_std" + ext


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point; returns the exit status."""
    import numpy as np
    import SimpleITK as sitk

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=("sr", "inpaint", "mri", "deblur", "denoise"))
    parser.add_argument("input")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--samples", type=int, default=0)
    parser.add_argument("--mask")
    for option in ("--prior", "--method", "--steps", "--ensemble", "--device", "--seed",
                   "--acceleration", "--center-fraction", "--noise-sigma", "--log-format"):
        parser.add_argument(option)
    parser.add_argument("--simulate", action="store_true")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)

    steps = int(os.environ.get("MEDRECON_STANDIN_STEPS", "3"))
    sleep = float(os.environ.get("MEDRECON_STANDIN_SLEEP", "0"))
    started = time.monotonic()
    for i in range(steps):
        _emit(event="progress", fraction=(i + 1) / steps, message=f"stand-in step {i + 1}/{steps}")
        time.sleep(sleep)

    image = sitk.ReadImage(args.input, sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(image)  # (K, J, I)
    spacing = np.array(image.GetSpacing())
    origin = np.array(image.GetOrigin())
    direction = np.array(image.GetDirection()).reshape(3, 3)
    if args.task == "sr":
        s = args.scale
        array = np.repeat(np.repeat(array, s, axis=2), s, axis=1)
        # The first fine voxel centre lies (1/s - 1)/2 coarse voxels before the coarse one.
        shift = np.array([(1.0 / s - 1.0) / 2.0 * spacing[0], (1.0 / s - 1.0) / 2.0 * spacing[1], 0.0])
        origin = origin + direction @ shift
        spacing = spacing / np.array([s, s, 1.0])
    elif args.task == "inpaint":
        mask = sitk.GetArrayFromImage(sitk.ReadImage(args.mask)) != 0
        array = np.where(mask, np.float32(1000.0), array)
    else:
        array = 2.0 * array + 1.0
    result = sitk.GetImageFromArray(array.astype(np.float32))
    result.SetSpacing(tuple(float(v) for v in spacing))
    result.SetOrigin(tuple(float(v) for v in origin))
    result.SetDirection(tuple(float(v) for v in direction.reshape(-1)))
    sitk.WriteImage(result, args.output)
    std = None
    if args.samples > 0:
        std = _std_name(args.output)
        std_image = sitk.GetImageFromArray(np.full(array.shape, 0.25, np.float32))
        std_image.CopyInformation(result)
        sitk.WriteImage(std_image, std)
    _emit(event="done", output=args.output, std=std, seconds=time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
