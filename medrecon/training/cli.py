"""``medrecon train ...``: the click group the main CLI mounts.

Commands:
    run     train (or resume) a StyleGAN2 prior on K-1 patient-wise folds of an image folder.
    folds   write the patient-wise fold assignment of a dataset to JSON.
    export  turn a training checkpoint's EMA generator into a prior in a bundle's ``models/``.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from medrecon.cli_types import OutputPath
from medrecon.errors import MedreconInputError

__all__ = ["train"]


def _fail(exc: MedreconInputError):
    """Bad input as the other commands report it: one ``Error: ...`` line, exit 2 (a
    ``UsageError`` added the usage text, as if the command line were wrong)."""
    from medrecon.cli import InputError

    raise InputError(str(exc)) from exc


@click.group("train")
def train() -> None:
    """Train StyleGAN2 priors, make cross-validation folds, export priors into bundles."""


@train.command("run")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Image folder (X-ray 'personNNN_...' names or brain running indices).")
@click.option("--out", "out_dir", required=True, type=OutputPath(file_okay=False),
              help="Run folder; re-running with the same folder resumes.")
@click.option("--resolution", default=128, show_default=True, type=click.IntRange(8, 1024))
@click.option("--kimg", default=100.0, show_default=True, type=click.FloatRange(min=0.001),
              help="Total thousands of real images to show.")
@click.option("--fold", default=0, show_default=True, type=click.IntRange(min=0),
              help="Held-out fold.")
@click.option("--folds", default=5, show_default=True, type=click.IntRange(min=2))
@click.option("--scheme", default="auto", show_default=True,
              type=click.Choice(["auto", "xray", "brain", "image"]))
@click.option("--max-minutes", default=None, type=click.FloatRange(min=0),
              help="Wall-clock cap of this call (checkpoint written on exit).")
@click.option("--snapshot-minutes", default=5.0, show_default=True, type=click.FloatRange(min=0))
@click.option("--batch", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--z-dim", default=256, show_default=True, type=click.IntRange(min=1))
@click.option("--w-dim", default=256, show_default=True, type=click.IntRange(min=1))
@click.option("--mapping-layers", default=2, show_default=True, type=click.IntRange(min=1, max=32),
              help="Depth of the mapping network (StyleGAN2 uses 2 to 8).")
@click.option("--channel-base", default=4096, show_default=True, type=click.IntRange(min=1))
@click.option("--channel-max", default=256, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=0.0025, show_default=True,
              type=click.FloatRange(min=0, max=1, min_open=True),
              help="Adam learning rate of G and D.")
@click.option("--gamma", default=None, type=click.FloatRange(min=0),
              help="R1 weight [default: 0.0002 * R^2 / batch].")
@click.option("--augment", default="brightness,contrast,translation,cutout", show_default=True,
              help="DiffAugment policy, or 'none'.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--device", default="auto", show_default=True)
@click.option("--threads", default=None, type=click.IntRange(min=1),
              help="CPU threads for this process.")
def run_cmd(data_dir, out_dir, resolution, kimg, fold, folds, scheme, max_minutes,
            snapshot_minutes, batch, z_dim, w_dim, mapping_layers, channel_base, channel_max, lr,
            gamma, augment, seed, device, threads):
    """Train (or resume) a prior. Multi-GPU: torchrun --nproc_per_node N -m medrecon train run.

    Re-running with the same --out resumes. Ctrl-C or kill (SIGINT/SIGTERM) stops after the
    current step and writes the checkpoint; a second signal stops at once.
    """
    from medrecon.training.loop import TrainConfig
    from medrecon.training.runner import train_run

    try:
        cfg = TrainConfig(resolution=resolution, z_dim=z_dim, w_dim=w_dim,
                          mapping_layers=mapping_layers, channel_base=channel_base,
                          channel_max=channel_max, batch_size=batch, g_lr=lr, d_lr=lr,
                          r1_gamma=gamma, augment=augment, seed=seed)

        def show(stats):
            click.echo(f"kimg {stats['kimg']:8.2f}  step {stats['step']:6d}  "
                       f"G {stats['loss_g']:.3f}  D {stats['loss_d']:.3f}  "
                       f"{stats['sec_per_step']:.2f} s/step", err=True)

        summary = train_run(data_dir, out_dir, config=cfg, fold=fold, folds=folds, scheme=scheme,
                            kimg=kimg, max_minutes=max_minutes,
                            snapshot_minutes=snapshot_minutes, device=device, threads=threads,
                            progress=show)
    except MedreconInputError as exc:
        _fail(exc)
    click.echo(json.dumps(summary, indent=1))


@train.command("folds")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out_file", required=True, type=OutputPath(dir_okay=False))
@click.option("--folds", default=5, show_default=True, type=click.IntRange(min=2))
@click.option("--scheme", default="auto", show_default=True,
              type=click.Choice(["auto", "xray", "brain", "image"]))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--overwrite", is_flag=True,
              help="Replace an existing folds file (one medrecon wrote: a fold record).")
def folds_cmd(data_dir, out_file, folds, scheme, seed, overwrite):
    """Write the patient-wise K-fold assignment of DATA to a JSON file."""
    from medrecon.io.outputs import OutputStage
    from medrecon.training.folds import check_folds_output, make_folds, save_folds

    try:
        check_folds_output(out_file, data_dir=data_dir, overwrite=overwrite)
        fa = make_folds(data_dir, scheme=scheme, k=folds, seed=seed)
        with OutputStage(overwrite=overwrite) as stage:
            save_folds(fa, stage.file(out_file))
    except MedreconInputError as exc:
        _fail(exc)
    info = fa.to_json()
    click.echo(f"{fa.scheme}: {len(fa.files)} images, per fold {info['images_per_fold']}, "
               f"groups per fold {info['groups_per_fold']} -> {out_file}")


@train.command("export")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option("--bundle", "bundle_dir", required=True, type=OutputPath(file_okay=False),
              help="Bundle folder; the prior is written into its models/.")
@click.option("--name", default=None, help="Prior name [default: the bundle folder's name].")
@click.option("--w-samples", default=10000, show_default=True, type=click.IntRange(min=2),
              help="z samples for the W statistics (mean / std of w).")
@click.option("--fp16/--fp32", default=True, show_default=True, help="Storage precision.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--overwrite", is_flag=True,
              help="Replace the bundle's existing prior (its models/ must hold nothing else).")
def export_cmd(checkpoint, bundle_dir, name, w_samples, fp16, seed, overwrite):
    """Export CHECKPOINT's EMA generator (+ W statistics, folds) into a bundle."""
    from medrecon.training.export import export_checkpoint

    try:
        path = export_checkpoint(checkpoint, Path(bundle_dir) / "models", name=name,
                                 w_samples=w_samples, fp16=fp16, seed=seed, overwrite=overwrite)
    except MedreconInputError as exc:
        _fail(exc)
    click.echo(f"prior written to {path}")


@train.command("slim")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", "output", required=True, type=OutputPath(dir_okay=False),
              help="Where to write the slim checkpoint (must differ from CHECKPOINT).")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing slim checkpoint (a medrecon checkpoint only, never "
                   "another file).")
def slim_cmd(checkpoint, output, overwrite):
    """Write a portable CHECKPOINT: float16 networks, no optimiser state (about 1/5 the size).

    It exports like the full checkpoint, and `train run` resumes from it (copy it to
    RUN/checkpoint-latest.pt) with fresh Adam moments.
    """
    from medrecon.io.outputs import check_output
    from medrecon.training.loop import is_checkpoint, slim_checkpoint

    src, dst = Path(checkpoint), Path(output)
    try:  # never the input, an existing file only with --overwrite, a writable place
        check_output(dst, overwrite=overwrite, protected=[src], what="slim checkpoint")
        if dst.is_file() and not is_checkpoint(dst):
            raise MedreconInputError(
                f"{str(dst)!r} exists and is not a medrecon checkpoint; --overwrite replaces "
                "only medrecon's own files, never a file of yours. Choose another -o.")
        slim_checkpoint(src, dst)
    except MedreconInputError as exc:
        _fail(exc)
    click.echo(f"slim checkpoint written to {dst} ({dst.stat().st_size / 2**20:.1f} MiB, "
               f"from {src.stat().st_size / 2**20:.1f} MiB)")


@train.command("pack")
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False),
              help="Training image folder (as given to `train run --data`).")
@click.option("--out", "out_dir", required=True, type=OutputPath(file_okay=False),
              help="Pack folder (outside --data and not holding it).")
@click.option("--resolution", default=128, show_default=True, type=click.IntRange(8, 1024))
@click.option("--overwrite", is_flag=True,
              help="Replace an existing training pack (refused if it holds files the pack did "
                   "not write).")
def pack_cmd(data_dir, out_dir, resolution, overwrite):
    """Copy a training folder at training resolution (lossless PNG, original names).

    Training on the pack sees the same pixels and the same folds as training on the original,
    at a fraction of its size (e.g. to carry the data to a GPU machine).
    """
    from medrecon.training.folds import pack_dataset

    try:
        record = pack_dataset(data_dir, out_dir, resolution=resolution, overwrite=overwrite)
    except MedreconInputError as exc:
        _fail(exc)
    size = sum(p.stat().st_size for p in Path(out_dir).rglob("*") if p.is_file())
    click.echo(f"{record['images']} images at {resolution}x{resolution} -> {out_dir} "
               f"({size / 2**20:.1f} MiB)")
