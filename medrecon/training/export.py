"""Export a training checkpoint's EMA generator as a prior (``medrecon.priors`` format).

The exported directory (usually a bundle's ``models/``) is written by
:func:`medrecon.priors.save_prior` - ``generator.safetensors`` + ``generator.json`` (with sha256),
``w_stats.safetensors`` (BRGM's W mean/std over seeded z) and ``prior.json`` - and gets the
training record beside it:

* ``folds.json``  the patient-wise fold assignment the prior was trained with (which images are
  held out: evaluate only on those);
* ``training.json`` what was trained: data, held-out fold, network size, kimg, hardware, time.

The generator is rebuilt with ``num_fp16_res=0``: training may run the top blocks in fp16 on a
GPU, but solvers back-propagate through G hundreds of times and are safer in fp32; the weights
are the same either way.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from medrecon.errors import CheckpointError, MedreconInputError
from medrecon.training.loop import TrainConfig, checkpoint_split, read_checkpoint

__all__ = ["export_checkpoint", "generator_from_checkpoint", "PRIOR_INFO"]

#: Metadata of the two shipped priors, keyed by bundle/prior name.
PRIOR_INFO: dict[str, dict[str, Any]] = {
    "chest_xray": {
        "modality": "xray",
        "description": "StyleGAN2 prior of paediatric frontal chest X-rays (Kermany et al., CC BY 4.0)",
    },
    "brain_mri": {
        "modality": "mri",
        "description": "StyleGAN2 prior of T1-weighted contrast-enhanced brain MRI slices with "
                       "tumours (Cheng et al., CC BY 4.0); planes mixed",
    },
}


def generator_from_checkpoint(checkpoint: str | Path, *, ema: bool = True) -> torch.nn.Module:
    """Rebuild the (EMA) generator of a training checkpoint on the CPU, in fp32 blocks."""
    from medrecon.generators import Generator

    from medrecon.generators.checkpoints import _build, _held_values, _load_state

    state = read_checkpoint(checkpoint)
    source = str(checkpoint)
    try:
        kwargs = json.loads(state["G_kwargs"])
        kwargs.setdefault("synthesis_kwargs", {})["num_fp16_res"] = 0
        weights = state["G_ema" if ema else "G"]
        # sizes checked on the meta device against what the file holds, before allocation
        G = _build(Generator.__name__, kwargs, source=source,
                   holds=_held_values(weights.values()))
        _load_state(G, dict(weights), source=source)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, MedreconInputError):
            raise
        raise CheckpointError(
            f"{source} is not a complete medrecon training checkpoint ({type(exc).__name__}: "
            f"{str(exc)[:120]}); use another checkpoint of the run.") from None
    return G.eval().requires_grad_(False)


def export_checkpoint(
    checkpoint: str | Path,
    models_dir: str | Path,
    *,
    name: str | None = None,
    metadata: dict[str, Any] | None = None,
    w_samples: int = 10_000,
    fp16: bool = True,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write a checkpoint's EMA generator as a prior into ``models_dir``.

    The folder is written whole (prior, statistics, ``folds.json``, ``training.json``) under a
    temporary name and moved into place at the end. An existing prior there is replaced only
    with ``overwrite``, and a folder holding anything but a medrecon prior never.

    Args:
        checkpoint: ``checkpoint-latest.pt`` of a run (its folder's ``folds.json`` and
            ``run.json`` are copied/merged when present).
        models_dir: output directory, e.g. ``bundles/chest_xray_stylegan2/models``.
        name: prior name (default: the bundle folder's name without ``_stylegan2``, or the
            folder's name).
        metadata: extra prior metadata (merged over :data:`PRIOR_INFO` for known names).
        w_samples: number of seeded z behind the W statistics (default 10,000 as in BRGM).
        fp16: store weights as float16 (half the size; loaded back as float32). Default True.
        seed: seed of the z draw for the W statistics (default 0).
        overwrite: replace an existing prior in ``models_dir`` (default False refuses).

    Returns:
        ``models_dir``.
    """
    from medrecon.io.outputs import OutputStage, check_output
    from medrecon.priors import Prior, prior_folder_foreign, save_prior

    checkpoint = Path(checkpoint)
    models_dir = check_output(models_dir, overwrite=overwrite, protected=[checkpoint],
                              want_dir=True, foreign=prior_folder_foreign,
                              what="prior folder")
    if name is None:
        parent = models_dir.parent.name if models_dir.name == "models" else models_dir.name
        name = parent[: -len("_stylegan2")] if parent.endswith("_stylegan2") else parent
    if w_samples < 2:
        raise MedreconInputError(f"w_samples must be >= 2, got {w_samples}.")
    state = read_checkpoint(checkpoint)
    G = generator_from_checkpoint(checkpoint)
    try:
        config = TrainConfig.from_dict(json.loads(state["config"]))
        counters = {"kimg": round(int(state["images_seen"]) / 1000, 3),
                    "steps": int(state["step"]),
                    "train_seconds": round(float(state["train_seconds"]), 1),
                    "world_size": int(state.get("world_size", 1))}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(
            f"{str(checkpoint)!r} is not a complete medrecon training checkpoint "
            f"({type(exc).__name__}: {str(exc)[:120]}); use another checkpoint of the run."
        ) from None
    run_dir = checkpoint.parent
    try:
        run = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() \
            else {}
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise MedreconInputError(
            f"{str(run_dir / 'run.json')!r} beside the checkpoint is not a readable run record "
            f"({exc}); restore it from the run, or move the checkpoint to a folder without it."
        ) from None
    split = checkpoint_split(state)
    if split and any(k in run and run[k] != v for k, v in split.items()):
        raise MedreconInputError(
            f"{str(checkpoint)!r} was trained holding out {split}, but the run.json beside it "
            f"records fold {run.get('held_out_fold')!r} (folds_sha256 "
            f"{str(run.get('folds_sha256'))[:12]}...): the checkpoint belongs to another run. "
            "Export it from its own run folder.")
    if split:
        run = {**run, **split}  # the checkpoint's own record wins
    training = {
        **counters,
        "config": config.to_dict(),
        **{k: run[k] for k in ("scheme", "folds", "held_out_fold", "folds_sha256", "train_images",
                               "held_out_images", "hardware", "torch") if k in run},
    }
    meta = {**PRIOR_INFO.get(name, {}), **(metadata or {}), "training": training}
    if fp16:  # the statistics of the weights as stored, so a slim (fp16) copy exports alike
        with torch.no_grad():
            for t in [*G.parameters(), *G.buffers()]:
                if t.is_floating_point():
                    t.copy_(t.half().float())
    prior = Prior(G, name=name, metadata=meta)
    prior.compute_w_stats(num_samples=w_samples, seed=seed)
    with OutputStage(overwrite=overwrite) as stage:
        tmp = stage.folder(models_dir, foreign=prior_folder_foreign)
        save_prior(prior, tmp, dtype="float16" if fp16 else "float32")
        if (run_dir / "folds.json").is_file():
            shutil.copyfile(run_dir / "folds.json", tmp / "folds.json")
        (tmp / "training.json").write_text(json.dumps(training, indent=1) + "\n")
    return models_dir
