"""(Re)write the static files of the two shipped MONAI bundles.

Writes, for each of ``bundles/chest_xray_stylegan2`` and ``bundles/brain_mri_stylegan2``:
``configs/metadata.json``, ``configs/inference.json``, ``LICENSE``, ``docs/data_license.txt``,
and - when ``--data`` is given - ``sample/`` (one 32x32 low-resolution PNG made from an image of
the held-out fold, the SR x4 input of a 128x128 prior) with its 128x128 reference in
``sample_reference/``. ``models/`` is written by ``medrecon train export``; ``docs/README.md`` is
rendered from ``models/training.json`` and the held-out metrics. Held-out metrics from
``--metrics FILE.json`` (``{prior: {name: value}}``, as written by ``scripts/eval_priors.py``)
go into ``eval_metrics`` and the README.

Usage: python scripts/build_bundles.py [--data /path/to/shared/data] [--metrics m.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

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

#: The bundles' default job: super-resolution by this factor (inference.json's ``scale``, the
#: samples' box size, and the shapes of metadata.json's network_data_format).
SR_SCALE = 4


def network_def(bundle: Path) -> dict:
    """``network_def``: the generator, built by ``_target_`` from its saved constructor kwargs."""
    cfg = json.loads((bundle / "models" / "generator.json").read_text())
    return {"_target_": "medrecon.generators.Generator", **cfg["kwargs"]}


def inference(bundle: Path) -> dict:
    """configs/inference.json: a MONAI SupervisedEvaluator whose inferer is the solver."""
    return {
        "imports": ["$import glob", "$import os", "$import torch", "$import medrecon",
                    "$import medrecon.monai"],
        "bundle_root": ".",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "dataset_dir": "$@bundle_root + '/sample'",
        "mask_dir": None,
        "output_dir": "$@bundle_root + '/eval'",
        "prior_dir": "$@bundle_root + '/models'",
        "task": "sr",
        "method": None,  # None: the prior's default for the task (medrecon.solvers.DEFAULTS)
        "steps": None,
        "scale": SR_SCALE,
        # the shipped samples are 4 x 4 box averages of their references (sample_reference/
        # SOURCE.txt); the CLI's default kernel is bicubic, pass sr_kernel to match your data
        "sr_kernel": "box",
        "noise_sigma": 0.0,
        "seed": 0,
        # replace existing results in output_dir that medrecon wrote (bundle_datalist refuses
        # them before any work otherwise; another program's file is never replaced)
        "overwrite": False,
        "network_def": network_def(bundle),
        # medrecon.monai.bundle_device: a --device the machine lacks is one line, exit 2
        "network": "$@network_def.to(medrecon.monai.bundle_device(@device))",
        # the bundle's job as a network (degraded scans (B, 1, H, W) -> reconstructions), the
        # shape metadata.json's network_data_format describes: `verify_net_in_out --net_id
        # reconstructor` checks it. It runs the inferer below (same ids, same pipeline) with the
        # prior's own generator; network_def stays the generator that ckpt_export exports.
        "reconstructor": {"_target_": "medrecon.monai.Reconstructor", "inferer": "@inferer"},
        "image_keys": "$['image', 'mask'] if @mask_dir else ['image']",
        "dataset_data": ("$medrecon.monai.bundle_datalist(@dataset_dir, mask_dir=@mask_dir, "
                         "output_dir=@output_dir, output_postfix=@task, overwrite=@overwrite, "
                         "task=@task, inferer=@inferer)"),
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                # medrecon's reader: the CLI's geometry for every format (DICOM pixel spacing and
                # orientation, MONOCHROME1 inverted), where MONAI's default readers differ
                {"_target_": "LoadImaged", "keys": "@image_keys", "image_only": True,
                 "reader": "$medrecon.monai.MedreconReader()"},
                {"_target_": "EnsureChannelFirstd", "keys": "@image_keys"},
            ],
        },
        "dataset": {"_target_": "Dataset", "data": "@dataset_data",
                    "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1,
                       "shuffle": False, "num_workers": 0},
        "inferer": {"_target_": "medrecon.monai.ReconstructionInferer", "prior": "@prior_dir",
                    "task": "@task", "method": "@method", "steps": "@steps", "scale": "@scale",
                    "sr_kernel": "@sr_kernel", "noise_sigma": "@noise_sigma", "seed": "@seed",
                    "device": "$str(@device)"},
        "prepare_batch": ("$monai.engines.PrepareBatchExtraInput(extra_keys={'mask': 'mask'}) "
                          "if @mask_dir else monai.engines.default_prepare_batch"),
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir",
                 "output_postfix": "@task", "resample": False, "separate_folder": False,
                 "print_log": False,
                 # medrecon's NIfTI (the CLI's header), staged: complete or not there
                 "writer": "$medrecon.monai.bundle_writer(overwrite=@overwrite)"},
            ],
        },
        "handlers": [
            {"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
             "load_dict": {"model": "@network"}, "map_location": "@device"},
            {"_target_": "StatsHandler", "iteration_log": False},
        ],
        "evaluator": {
            "_target_": "SupervisedEvaluator", "device": "@device",
            "val_data_loader": "@dataloader", "network": "@network", "inferer": "@inferer",
            "prepare_batch": "@prepare_batch", "postprocessing": "@postprocessing",
            "val_handlers": "@handlers", "amp": False,
        },
        # bad input (a missing folder, a corrupt scan, an existing result): one line, exit 2
        "initialize": ["$monai.utils.set_determinism(seed=None)",
                       "$medrecon.monai.report_input_errors()"],
        "run": ["$@evaluator.run()"],
    }


#: configs/evaluate.json: inference on pairs (degraded scan, reference) scored by MONAI's
#: metrics (PSNR, SSIM with the references' 8-bit range), merged over inference.json.
EVALUATE = {
    "reference_dir": "$@bundle_root + '/sample_reference'",
    "data_range": 255.0,
    "dataset_data": ("$medrecon.monai.bundle_datalist(@dataset_dir, mask_dir=@mask_dir, "
                     "reference_dir=@reference_dir, output_dir=@output_dir, "
                     "output_postfix=@task, overwrite=@overwrite, task=@task, "
                     "report_files=('metrics.csv',), inferer=@inferer)"),
    "image_keys": "$(['image', 'mask'] if @mask_dir else ['image']) + ['label']",
    "key_metric": {
        "val_psnr": {
            "_target_": "IgniteMetricHandler",
            "metric_fn": {"_target_": "PSNRMetric", "max_val": "@data_range"},
            "output_transform": "$monai.handlers.from_engine(['pred', 'label'])",
        },
    },
    "additional_metrics": {
        "val_ssim": {
            "_target_": "IgniteMetricHandler",
            "metric_fn": {"_target_": "SSIMMetric", "spatial_dims": 2,
                          "data_range": "@data_range"},
            "output_transform": "$monai.handlers.from_engine(['pred', 'label'])",
        },
    },
    "metrics_saver": {"_target_": "MetricsSaver", "save_dir": "@output_dir",
                      "metrics": ["val_psnr", "val_ssim"], "metric_details": None,
                      "save_rank": 0},
    "handlers": [
        {"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
         "load_dict": {"model": "@network"}, "map_location": "@device"},
        {"_target_": "StatsHandler", "iteration_log": False},
        "@metrics_saver",
    ],
    "evaluator#key_val_metric": "@key_metric",
    "evaluator#additional_metrics": "@additional_metrics",
}

LOGGING_CONF = """[loggers]
keys=root

[handlers]
keys=consoleHandler

[formatters]
keys=fullFormatter

[logger_root]
level=INFO
handlers=consoleHandler

[handler_consoleHandler]
class=StreamHandler
level=INFO
formatter=fullFormatter
args=(sys.stdout,)

[formatter_fullFormatter]
format=%(asctime)s - %(name)s - %(levelname)s - %(message)s
"""


README = """# {title} (medrecon bundle `{name}_stylegan2`)

> **PLACEHOLDER PRIOR.** These weights were trained for only **{kimg} kimg** ({steps} steps of
> batch {batch}) on **{hardware}**, in **{minutes} minutes** of training steps; no GPU was available.
> A useful StyleGAN2 prior needs thousands of kimg on a GPU. The generator produces blurry,
> low-detail images: pure latent-space fits (CSGM) are worse than the best classical baseline, and
> what IAGAN gains comes mostly from adapting the weights to each image and back-projection
> (see below; 3 images only).
> The bundle is here so that the pipeline, CLI and MONAI tooling run end to end offline. Replace
> the weights by training on a GPU (see "Retraining").

## Intended use

Research on reconstruction with generative priors (CSGM, BRGM, IAGAN) for {what}.
**Not for clinical use**: not a medical device, not for diagnosis or treatment. A generative prior
can add plausible but false anatomy, and can remove real findings.

## What is in the bundle

| path | content |
|---|---|
| `models/generator.safetensors`, `models/generator.json` | StyleGAN2 generator (EMA weights, fp16 storage, sha256 in the JSON) |
| `models/w_stats.safetensors` | mean / std of w over 10,000 seeded z (BRGM's latent prior) |
| `models/prior.json` | prior metadata (modality, training record, the std-map calibrations `std_calibration` fitted by `scripts/calibrate_std.sh`) |
| `models/folds.json` | the patient-wise 5-fold assignment of every training image |
| `models/training.json` | kimg, steps, time, hardware, hyperparameters |
| `models/model.pt` | the generator's plain state dict, loaded into `network_def` by the bundle's `CheckpointLoader` |
| `configs/inference.json` | a MONAI `SupervisedEvaluator` over `dataset_dir` whose inferer is medrecon's solver (`medrecon.monai.ReconstructionInferer`, the same pipeline as the CLI) |
| `configs/evaluate.json` | merged over `inference.json`: PSNR / SSIM against `sample_reference/` with MONAI's metrics |
| `configs/logging.conf` | MONAI bundle logging |
| `sample/` | one 32x32 image of the held-out fold (SR x4 input); `sample_reference/` its 128x128 original |

## Network

Grayscale StyleGAN2 (config-e style: mapping {mapping} layers, skip generator, residual
discriminator), {res}x{res}, z/w dim {zdim}, `channel_base={cb}`, `channel_max={cm}`
({gparams:.2f} M generator parameters). The size was chosen for the solvers' cost: every
reconstruction step is a generator forward+backward pass (measurements in `docs/priors.md` of
the medrecon repository).

## Training data and folds

{data}
Split: 5 folds by patient ({scheme}); fold {fold} ({held} images) is held out, folds
{train_folds} ({train} images) were trained on. The assignment is in `models/folds.json`
(sha256 `{sha}`). Evaluate only on the held-out fold.

Training: non-saturating logistic loss, lazy R1 (gamma {gamma:.3g}, every 16 steps), EMA
generator, DiffAugment (brightness, contrast, translation, cutout), Adam (lr 0.0025, betas
0/0.99), images resized to {res}x{res} (Lanczos).

## Metrics measured on the held-out fold

{metrics}

## How to run

```bash
pip install medrecon            # the bundle ships inside the package
cd <this bundle folder>         # or pass --bundle_root
python -m monai.bundle run --config_file configs/inference.json --logging_file configs/logging.conf \\
    --dataset_dir ./sample --output_dir ./eval --task sr --method iagan --steps 300
python -m monai.bundle run --config_file "['configs/inference.json','configs/evaluate.json']" \\
    --overwrite true            # scores the results into ./eval, replacing the run above
python -m monai.bundle verify_net_in_out --net_id reconstructor --meta_file configs/metadata.json \\
    --config_file configs/inference.json --steps 2
```

`network_def` is the generator (`z -> image`, what `ckpt_export` exports); `reconstructor` is
the bundle's job as a network (degraded scans `(B, 1, H, W)` -> reconstructions, through the
same inferer and overrides), the one `network_data_format` in `configs/metadata.json` describes
(SR x4: `{low}*n` pixels per side in, `{res}*n` out).

Override `task` (`sr`, `inpaint`, `mri` and `cs` simulated, `deblur`, `denoise`), `method`
(`iagan`, `brgm`, `csgm`, or a baseline; default the prior's choice), `steps`, `scale`,
`sr_kernel` (`box` for the shipped samples; match your data), `mask_dir` (inpainting masks of
the same file names, nonzero = missing), `noise_sigma`, `seed`, `device`, `dataset_dir`,
`output_dir`, `overwrite` (an existing result is refused before any work without
`--overwrite true`, and a file medrecon did not write even with it; results are written
complete or not at all). Bad input ends the run with one `medrecon: error:` line and exit
code 2.
The same prior from the command line: `medrecon sr INPUT --prior {name} -o OUT`.

## Retraining

```bash
medrecon train run --data DATA/{folder} --out runs/{name} --resolution 128 --fold 0 --folds 5 \\
    --kimg 5000 --batch 32 --channel-base {cb} --channel-max {cm}      # resumable
medrecon train export runs/{name}/checkpoint-latest.pt --bundle bundles/{name}_stylegan2 --overwrite
```
Multi-GPU: `torchrun --nproc_per_node N -m medrecon train run ...`.

## Licence

Weights: CC BY 4.0 (derived from CC BY 4.0 data; attribution in `docs/data_license.txt`).
Code and configs: Apache-2.0. See `LICENSE`.
"""

DATA_TEXT = {
    "chest_xray": "Kermany et al. paediatric frontal chest X-rays (Guangzhou Women and Children's "
                  "Medical Center), training split of the source, 5,216 images (NORMAL and "
                  "PNEUMONIA), 224x224 JPEG converted to one channel. Burned-in markers, leads "
                  "and tubes are part of the learnt distribution.",
    "brain_mri": "Cheng et al. T1-weighted contrast-enhanced brain MRI slices with glioma, "
                 "meningioma or pituitary tumours, 2,750 images (512x512, axial/coronal/sagittal "
                 "mixed). Every training slice contains a tumour.",
}


def _metrics_table(m: dict) -> str:
    if not m:
        return "Not measured yet."
    rows = ["| experiment | method | PSNR (dB) | SSIM | s / image |", "|---|---|---|---|---|"]
    names = {"repr": "representation error (fit to the clean image)", "sr4": "SR x4 (bicubic "
             "kernel, noiseless)", "mri4": "4x accelerated MRI (random Cartesian, 8% centre)"}
    for key, label in names.items():
        methods = sorted({k[len(f"heldout_{key}_"):].rsplit("_", 1)[0] for k in m
                          if k.startswith(f"heldout_{key}_") and k.endswith("_psnr")})
        for meth in methods:
            g = lambda q: m.get(f"heldout_{key}_{meth}_{q}")  # noqa: E731
            rows.append(f"| {label} | {meth} | {g('psnr'):.2f} | {g('ssim'):.3f} | "
                        f"{g('seconds'):.1f} |")
    n = m.get("heldout_repr_images", "?")
    rows.append("")
    rows.append(f"{n} held-out images per experiment (evenly spaced over the sorted fold), "
                f"`steps={m.get('heldout_steps')}` passed to every solver, CPU, one thread, metrics in [0, 1] with "
                "data_range 1. Produced by `scripts/eval_priors.py`.")
    return "\n".join(rows)


def readme(name: str, spec: dict, bundle: Path, metrics: dict) -> str:
    info = _models_info(bundle)
    tr = info.get("metadata", {}).get("training", {})
    cfg = tr.get("config", {})
    fold = tr.get("held_out_fold", 0)
    k = tr.get("folds", 5)
    from safetensors.torch import load_file

    weights = load_file(str(bundle / "models" / "generator.safetensors"))
    gparams = sum(t.numel() for key, t in weights.items() if "noise_const" not in key) / 1e6
    return README.format(
        title={"chest_xray": "Chest X-ray StyleGAN2 prior",
               "brain_mri": "Brain MRI StyleGAN2 prior"}[name],
        name=name, kimg=tr.get("kimg"), steps=tr.get("steps"), batch=cfg.get("batch_size"),
        hardware=tr.get("hardware", "CPU"), minutes=round(tr.get("train_seconds", 0) / 60),
        what={"chest_xray": "paediatric frontal chest X-rays",
              "brain_mri": "contrast-enhanced T1 brain MRI slices"}[name],
        mapping=cfg.get("mapping_layers"), res=cfg.get("resolution"), zdim=cfg.get("z_dim"),
        cb=cfg.get("channel_base"), cm=cfg.get("channel_max"), gparams=gparams,
        data=DATA_TEXT[name],
        scheme={"xray": "patient id from the file name", "brain": "contiguous blocks of the "
                "source's running index"}.get(tr.get("scheme"), tr.get("scheme")),
        fold=fold, held=tr.get("held_out_images"), train=tr.get("train_images"),
        train_folds=", ".join(str(i) for i in range(k) if i != fold), sha=tr.get("folds_sha256"),
        gamma=(cfg.get("r1_gamma") or 0.0002 * cfg.get("resolution", 128) ** 2
               / cfg.get("batch_size", 32)),
        metrics=_metrics_table(metrics), folder=spec["folder"],
        low=cfg.get("resolution", 128) // SR_SCALE,
    )


def write_model_pt(bundle: Path) -> None:
    """models/model.pt: the generator's plain state dict (float16 like the safetensors file;
    ``torch.load(..., weights_only=True)`` reads it, ``load_state_dict`` casts to float32)."""
    from medrecon.generators import load_generator
    from medrecon.generators.checkpoints import save_state_dict

    save_state_dict(load_generator(bundle / "models" / "generator.json"),
                    bundle / "models" / "model.pt", dtype="float16")


def _models_info(bundle: Path) -> dict:
    p = bundle / "models" / "prior.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def metadata(name: str, spec: dict, bundle: Path, metrics: dict) -> dict:
    info = _models_info(bundle)
    z_dim, res = int(info.get("z_dim", 256)), int(info.get("resolution", 128))
    # network_data_format describes the default job, SR x SR_SCALE: an input of (res/scale * n)
    # pixels per side gives (res * n); n = 1 is the sample's size and the prior's grid.
    low = res // SR_SCALE
    kimg = info.get("metadata", {}).get("training", {}).get("kimg")
    return {
        "schema": SCHEMA_URL,
        "version": "0.1.0",
        "changelog": {"0.1.0": "placeholder prior trained on CPU"
                      + (f" for {kimg} kimg" if kimg is not None else "")
                      + "; fold 0 of 5 held out"},
        # the oldest versions medrecon supports (pyproject.toml), not this machine's build
        "monai_version": "1.3.0",
        "pytorch_version": "2.2.0",
        "numpy_version": "1.24.0",
        "required_packages_version": {"medrecon": medrecon.__version__,
                                      "pytorch-ignite": "0.4.11", "safetensors": "0.4",
                                      "pillow": "9.0", "nibabel": "5.0"},
        "task": spec["task"],
        "description": (
            f"A {res}x{res} grayscale StyleGAN2 generator (prior '{name}') with its W statistics, "
            "used by medrecon's CSGM, BRGM and IAGAN solvers. configs/inference.json runs a MONAI "
            "SupervisedEvaluator over dataset_dir whose inferer is medrecon's solver "
            "(medrecon.monai.ReconstructionInferer, the CLI's pipeline) with network_def as "
            "the prior's generator; its id 'reconstructor' is that job as a network (degraded "
            "scan -> reconstruction, the network_data_format below); configs/evaluate.json "
            "scores paired references. "
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
                "image": {
                    "type": "image", "format": "magnitude", "modality": spec["modality"],
                    "num_channels": 1, "spatial_shape": [f"{low}*n", f"{low}*n"],
                    "dtype": "float32", "value_range": [], "is_patch_data": False,
                    "channel_def": {"0": "degraded scan (low-resolution, masked, blurred or "
                                         "noisy). The shapes are the default task's (sr, scale "
                                         f"{SR_SCALE}): {low}*n per side -> {res}*n; n = 1 "
                                         f"matches the prior's {res} grid, other sizes work"},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image", "format": "magnitude", "modality": spec["modality"],
                    "num_channels": 1, "spatial_shape": [f"{res}*n", f"{res}*n"],
                    "dtype": "float32", "value_range": [], "is_patch_data": False,
                    "channel_def": {"0": "reconstruction on the scan's grid (SR: scale times "
                                         "finer), in the input's intensity units"},
                }
            },
        },
        "generator": {
            "z_dim": z_dim, "resolution": [res, res], "value_range": [-1, 1],
            "note": "network_def maps a latent z [1, z_dim] to a [1, 1, R, R] image; the "
                    "solver inverts it, it is not applied to the scan directly. The network of "
                    "network_data_format is inference.json's 'reconstructor' "
                    "(verify_net_in_out --net_id reconstructor)",
        },
    }


def make_sample(name: str, spec: dict, bundle: Path, data: Path, resolution: int = 128,
                scale: int = SR_SCALE) -> None:
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
        (bundle / "configs" / "inference.json").write_text(
            json.dumps(inference(bundle), indent=4) + "\n")
        (bundle / "configs" / "evaluate.json").write_text(json.dumps(EVALUATE, indent=4) + "\n")
        (bundle / "configs" / "logging.conf").write_text(LOGGING_CONF)
        if (bundle / "models" / "generator.json").is_file():
            write_model_pt(bundle)
        (bundle / "LICENSE").write_text(LICENSE.format(name=name))
        (bundle / "docs" / "data_license.txt").write_text(
            f"Third-party data used to train the weights in models/:\n\n{spec['attribution']}\n\n"
            "The weights are a derivative work of that dataset and are distributed under the same "
            "licence (CC BY 4.0); keep this attribution with them.\n")
        if args.data is not None:
            make_sample(name, spec, bundle, args.data)
        if (bundle / "models" / "prior.json").is_file():
            (bundle / "docs" / "README.md").write_text(readme(name, spec, bundle,
                                                              metrics.get(name, old)))
        print(f"wrote {bundle}")


if __name__ == "__main__":
    main()
