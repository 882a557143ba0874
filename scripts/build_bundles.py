"""(Re)write the static files of the two shipped MONAI bundles.

Writes, for each of ``bundles/chest_xray_stylegan2`` and ``bundles/brain_mri_stylegan2``:
``configs/metadata.json``, ``configs/inference.json``, ``LICENSE``, ``docs/data_license.txt``,
and - when ``--data`` is given - ``sample/`` (one 32x32 low-resolution PNG made from an image of
the held-out fold, the SR x4 input of a 128x128 prior) with its 128x128 reference in
``sample_reference/``. ``models/`` is written by ``medrecon train export``; ``docs/README.md``
is written by hand. Held-out metrics from ``--metrics FILE.json`` (``{prior: {name: value}}``)
go into ``eval_metrics``.

Usage: python scripts/build_bundles.py [--data /path/to/shared/data] [--metrics m.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import monai
import numpy as np
import torch

import medrecon

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_URL = ("https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/"
              "0.8.1/meta_schema_20240725.json")

BUNDLES = {
    "chest_xray": {
        "folder": "chest_xray_kermany",
        "modality": "xray",
        "task": "Super-resolution, inpainting and other inverse problems on paediatric frontal "
                "chest X-rays by inverting a StyleGAN2 prior",
        "data_source": "Kermany D, Zhang K, Goldbaum M. Labeled Optical Coherence Tomography (OCT) "
                       "and Chest X-Ray Images for Classification. Mendeley Data, v2, "
                       "doi:10.17632/rscbjbr9sj.2 (training split; CC BY 4.0)",
        "data_type": "png/jpeg/dicom/nifti (2-D grayscale)",
        "image_classes": "one channel: frontal (AP) chest radiograph, intensities windowed to "
                         "[-1, 1]",
        "attribution": (
            "Kermany, Daniel; Zhang, Kang; Goldbaum, Michael (2018), \"Labeled Optical Coherence "
            "Tomography (OCT) and Chest X-Ray Images for Classification\", Mendeley Data, v2, "
            "doi:10.17632/rscbjbr9sj.2. Images: Guangzhou Women and Children's Medical Center. "
            "License: Creative Commons Attribution 4.0 International (CC BY 4.0), "
            "https://creativecommons.org/licenses/by/4.0/."),
    },
    "brain_mri": {
        "folder": "brain_mri_cheng",
        "modality": "mri",
        "task": "Super-resolution, accelerated MRI and other inverse problems on T1-weighted "
                "contrast-enhanced brain MRI slices by inverting a StyleGAN2 prior",
        "data_source": "Cheng J. et al., Enhanced Performance of Brain Tumor Classification via "
                       "Tumor Region Augmentation and Partition, PLoS ONE 10(10) 2015; figshare "
                       "dataset 1512427 (CC BY 4.0)",
        "data_type": "png/jpeg/dicom/nifti (2-D slices or volumes)",
        "image_classes": "one channel: T1-weighted contrast-enhanced brain MRI slice (axial, "
                         "coronal or sagittal), intensities windowed to [-1, 1]",
        "attribution": (
            "Cheng, Jun; Huang, Wei; Cao, Shuangliang; Yang, Ru; Yang, Wei; Yun, Zhaoqiang; "
            "Wang, Zhijian; Feng, Qianjin (2015), \"Enhanced Performance of Brain Tumor "
            "Classification via Tumor Region Augmentation and Partition\", PLoS ONE 10(10): "
            "e0140381, doi:10.1371/journal.pone.0140381. Dataset: figshare, "
            "doi:10.6084/m9.figshare.1512427. Images: Nanfang Hospital, Guangzhou, and Tianjin "
            "Medical University General Hospital. License: Creative Commons Attribution 4.0 "
            "International (CC BY 4.0), https://creativecommons.org/licenses/by/4.0/."),
    },
}

LICENSE = """medrecon bundle {name}_stylegan2

Code and configuration files (configs/, docs/ except data_license.txt): Apache License,
Version 2.0 - the licence of medrecon. You may not use these files except in compliance with
the License. You may obtain a copy of the License at https://www.apache.org/licenses/LICENSE-2.0
Unless required by applicable law or agreed to in writing, software distributed under the
License is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.

Model weights and W statistics (models/) and the sample images (sample/, sample_reference/):
Creative Commons Attribution 4.0 International (CC BY 4.0),
https://creativecommons.org/licenses/by/4.0/ - they are derived from a CC BY 4.0 dataset; see
docs/data_license.txt for the attribution that must accompany them.

For research use only. Not a medical device; not for clinical diagnosis or treatment.
"""

INFERENCE = {
    "imports": ["$import medrecon.pipeline"],
    "bundle_root": ".",
    "prior": "$@bundle_root + '/models'",
    "task": "sr",
    "method": "iagan",
    "steps": 300,
    "scale": 4,
    "seed": 0,
    "device": "auto",
    "overwrite": True,
    "dataset_dir": "$@bundle_root + '/sample'",
    "output_dir": "$@bundle_root + '/eval'",
    "run": ("$medrecon.pipeline.reconstruct_directory(@dataset_dir, @output_dir, task=@task, "
            "prior=@prior, method=@method, steps=@steps, scale=@scale, seed=@seed, "
            "device=@device, overwrite=@overwrite)"),
}


def _models_info(bundle: Path) -> dict:
    p = bundle / "models" / "prior.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def metadata(name: str, spec: dict, bundle: Path, metrics: dict) -> dict:
    info = _models_info(bundle)
    z_dim, res = int(info.get("z_dim", 256)), int(info.get("resolution", 128))
    kimg = info.get("metadata", {}).get("training", {}).get("kimg")
    return {
        "schema": SCHEMA_URL,
        "version": "0.1.0",
        "changelog": {"0.1.0": "placeholder prior trained on CPU"
                      + (f" for {kimg} kimg" if kimg is not None else "")
                      + "; fold 0 of 5 held out"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {"medrecon": medrecon.__version__,
                                      "safetensors": "0.4", "pillow": "9.0"},
        "task": spec["task"],
        "description": (
            f"A {res}x{res} grayscale StyleGAN2 generator (prior '{name}') with its W statistics, "
            "used by medrecon's CSGM, BRGM and IAGAN solvers. The inference config reconstructs "
            "every image of dataset_dir through medrecon.pipeline.reconstruct_directory. "
            "PLACEHOLDER WEIGHTS: trained briefly on a shared CPU; see docs/README.md."),
        "authors": "medrecon developers",
        "copyright": "Copyright (c) medrecon developers; weights CC BY 4.0 (derived from "
                     "CC BY 4.0 data), code Apache-2.0",
        "data_source": spec["data_source"],
        "data_type": spec["data_type"],
        "image_classes": spec["image_classes"],
        "eval_metrics": metrics,
        "intended_use": "Research on generative-prior image reconstruction only. Not for "
                        "clinical use: outputs can contain plausible but false structure.",
        "references": [
            "Bora A, Jalal A, Price E, Dimakis AG. Compressed Sensing using Generative Models. "
            "ICML 2017.",
            "Abu Hussein S, Tirer T, Giryes R. Image-Adaptive GAN based Reconstruction. AAAI 2020, "
            "arXiv:1906.05284.",
            "Marinescu RV, Moyer D, Golland P. Bayesian Image Reconstruction using Deep "
            "Generative Models. arXiv:2012.04567.",
            "Karras T et al. Analyzing and Improving the Image Quality of StyleGAN. CVPR 2020.",
            "Zhao S et al. Differentiable Augmentation for Data-Efficient GAN Training. "
            "NeurIPS 2020.",
        ],
        "network_data_format": {
            "inputs": {
                "z": {
                    "type": "tensor", "format": "latent", "num_channels": z_dim,
                    "spatial_shape": [], "dtype": "float32", "value_range": [],
                    "is_patch_data": False,
                }
            },
            "outputs": {
                "image": {
                    "type": "image", "format": "magnitude", "modality": spec["modality"],
                    "num_channels": 1, "spatial_shape": [res, res], "dtype": "float32",
                    "value_range": [-1, 1], "is_patch_data": False,
                    "channel_def": {"0": "image"},
                }
            },
        },
    }


def make_sample(name: str, spec: dict, bundle: Path, data: Path, resolution: int = 128,
                scale: int = 4) -> None:
    """Write sample/<id>_lr.png (R/s square) and sample_reference/<id>.png (R square)."""
    from PIL import Image

    from medrecon.training.folds import make_folds

    held_out = make_folds(data / spec["folder"], k=5).split(0)[1]
    rel = held_out[len(held_out) // 2]  # a deterministic image of the held-out fold
    with Image.open(data / spec["folder"] / rel) as im:
        ref = im.convert("L").resize((resolution, resolution), Image.Resampling.LANCZOS)
    arr = torch.from_numpy(np.asarray(ref, dtype=np.float32))[None, None]
    low = torch.nn.functional.avg_pool2d(arr, scale)[0, 0].round().clamp(0, 255)
    stem = f"{name}_{Path(rel).stem}"
    for sub in ("sample", "sample_reference"):
        for old in (bundle / sub).glob("*.png") if (bundle / sub).is_dir() else []:
            old.unlink()
    (bundle / "sample").mkdir(parents=True, exist_ok=True)
    (bundle / "sample_reference").mkdir(parents=True, exist_ok=True)
    Image.fromarray(low.numpy().astype(np.uint8), mode="L").save(bundle / "sample" / f"{stem}_lr.png")
    ref.save(bundle / "sample_reference" / f"{stem}.png")
    (bundle / "sample_reference" / "SOURCE.txt").write_text(
        f"{spec['folder']}/{rel} (held-out fold 0 of 5), resized to {resolution}x{resolution} "
        f"(Lanczos); sample/{stem}_lr.png is its {scale}x{scale} box average.\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--metrics", type=Path, default=None)
    args = ap.parse_args()
    metrics = json.loads(args.metrics.read_text()) if args.metrics else {}
    for name, spec in BUNDLES.items():
        bundle = ROOT / "bundles" / f"{name}_stylegan2"
        (bundle / "configs").mkdir(parents=True, exist_ok=True)
        (bundle / "docs").mkdir(parents=True, exist_ok=True)
        meta_path = bundle / "configs" / "metadata.json"
        old = json.loads(meta_path.read_text()).get("eval_metrics", {}) if meta_path.is_file() else {}
        meta = metadata(name, spec, bundle, metrics.get(name, old))
        meta_path.write_text(json.dumps(meta, indent=4) + "\n")
        (bundle / "configs" / "inference.json").write_text(json.dumps(INFERENCE, indent=4) + "\n")
        (bundle / "LICENSE").write_text(LICENSE.format(name=name))
        (bundle / "docs" / "data_license.txt").write_text(
            f"Third-party data used to train the weights in models/:\n\n{spec['attribution']}\n\n"
            "The weights are a derivative work of that dataset and are distributed under the same "
            "licence (CC BY 4.0); keep this attribution with them.\n")
        if args.data is not None:
            make_sample(name, spec, bundle, args.data)
        print(f"wrote {bundle}")


if __name__ == "__main__":
    main()
