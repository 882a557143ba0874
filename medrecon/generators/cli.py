"""``medrecon priors`` click group: import NVIDIA/TF pickles once, list and show priors.

Mounted into the main CLI as ``medrecon priors ...`` (``medrecon.priors.priors_cli``)::

    medrecon priors import xray.pkl -o bundles/chest_xray_stylegan2/models --name chest_xray \
        --modality xray --dtype float16
    medrecon priors list
    medrecon priors show chest_xray
    medrecon priors untrained brain_mri -o /tmp/brain_mri_untrained   # ablation prior
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from medrecon.cli_types import InputPath, OutputPath
from medrecon.errors import MedreconInputError
from medrecon.generators.checkpoints import (FORMAT_NAME, NETWORK_KEYS, load_generator,
                                            save_generator, sha256_file)


@click.group("priors")
def priors_cli() -> None:
    """Import, list and inspect StyleGAN2 priors."""


def _check_network_target(target: Path, *, overwrite: bool, protected: list[Path]) -> None:
    """A bare network ``<stem>.safetensors`` + ``<stem>.json``: never inside a prior folder
    (its prior.json and statistics would no longer match), replaced only with ``overwrite``."""
    from medrecon.io.outputs import check_output

    folder = target.parent
    if target.stem == "generator" and ((folder / "prior.json").is_file()
                                       or (folder / "generator.json").is_file()):
        raise MedreconInputError(
            f"-o {str(target)!r} is the generator file of the prior in {str(folder)!r}; "
            "replacing it alone would leave that prior's prior.json and W statistics stale (it "
            f"would no longer load). Import into the folder instead: -o {str(folder)} --overwrite.")
    for f in (target, target.with_suffix(".json")):
        check_output(f, overwrite=overwrite, protected=protected, what="-o")
        if (f.exists() or f.is_symlink()) and not _our_network_file(f):
            raise MedreconInputError(
                f"{str(f)!r} exists and is not a medrecon network file (its format is not "
                f"{FORMAT_NAME!r}); --overwrite replaces only what medrecon wrote. Choose another "
                "-o, or move that file away yourself.")


def _our_network_file(path: Path) -> bool:
    """Whether ``path`` is one half of a network medrecon saved: the JSON config, or the
    safetensors weights whose header metadata names medrecon's format (read without loading
    the tensors)."""
    import json

    try:
        if not path.is_file() or path.is_symlink():
            return False
        if path.suffix == ".json":
            if path.stat().st_size > 2**20:
                return False
            return json.loads(path.read_text(encoding="utf-8")).get("format") == FORMAT_NAME
        with open(path, "rb") as fh:  # safetensors: 8-byte header length, then a JSON header
            n = int.from_bytes(fh.read(8), "little")
            if not 0 < n <= 2**24:
                return False
            header = json.loads(fh.read(n).decode("utf-8"))
        return (header.get("__metadata__") or {}).get("format") == FORMAT_NAME
    except (OSError, ValueError, AttributeError, UnicodeDecodeError):
        return False


@priors_cli.command("import")
@click.argument("pkl", type=InputPath(dir_okay=False))
@click.option("-o", "--output", "out", required=True, type=OutputPath(path_type=Path),
              help="Output prior directory (e.g. a bundle's models/), or a NAME.safetensors file for the bare network.")
@click.option("--network", type=click.Choice(NETWORK_KEYS), default="G_ema", show_default=True,
              help="Which network of the pickle to convert.")
@click.option("--name", default=None, help="Prior name  [default: the pickle's file name]")
@click.option("--modality", default=None, help="Metadata: imaging modality (xray, mri, ct, ...).")
@click.option("--plane", "default_plane", default=None, help="Metadata: default slicing plane (axial, coronal, sagittal).")
@click.option("--description", default=None, help="Metadata: free-text description.")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="Weight storage precision (loaded back as float32).")
@click.option("--w-samples", type=click.IntRange(min=2), default=10_000, show_default=True,
              help="Mapped z behind the W statistics.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the W-statistics z draw.")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing prior folder (one medrecon wrote: nothing else in it) or "
                   "network file.")
def import_cmd(pkl, out, network, name, modality, default_plane, description, dtype, w_samples, seed,
               overwrite):
    """Convert PKL (NVIDIA stylegan2-ada-pytorch or TF StyleGAN2) once into our safe format.

    Nothing in PKL is executed: a restricted unpickler reads only tensors and constructor
    arguments and refuses anything else. An existing output is replaced only with
    --overwrite, and a prior folder only when it holds nothing but a medrecon prior (its
    folds.json and training.json go with it: they describe the replaced network).
    """
    from medrecon.io.outputs import OutputStage, check_output, resolve_user_path
    from medrecon.priors import Prior, prior_folder_foreign, save_prior

    out = resolve_user_path(out, what="-o")
    protected = [pkl]
    bare = out.suffix == ".safetensors" or network == "D"
    if bare:
        target = out if out.suffix == ".safetensors" else out / "discriminator.safetensors"
        if out.suffix != ".safetensors" and out.exists() and not out.is_dir():
            raise MedreconInputError(f"-o {str(out)!r} exists and is a file; give a folder or a "
                                     "NAME.safetensors path.")
        _check_network_target(target, overwrite=overwrite, protected=protected)
    else:
        check_output(out, overwrite=overwrite, protected=protected, want_dir=True,
                     foreign=prior_folder_foreign, what="-o prior folder")
    net = load_generator(pkl, network=network)
    if bare:
        with OutputStage(overwrite=overwrite) as stage:
            # the pair goes to one private folder under its final names (the JSON names the
            # weights file), then both are moved into place together
            tmp = stage.file(target, keep_name=True)
            stage.file(target.with_suffix(".json"), together_with=tmp)
            save_generator(net, tmp, dtype=dtype, metadata={"source": pkl.name, "network": network})
        click.echo(f"{network} from {pkl} -> {target} (sha256 {sha256_file(target)})")
        return
    metadata = {k: v for k, v in dict(modality=modality, default_plane=default_plane, description=description,
                                      source=pkl.name).items() if v is not None}
    prior = Prior(net, name=name or pkl.stem, metadata=metadata)
    prior.compute_w_stats(num_samples=w_samples, seed=seed)
    with OutputStage(overwrite=overwrite) as stage:
        save_prior(prior, stage.folder(out, foreign=prior_folder_foreign), dtype=dtype)
    click.echo(f"{network} from {pkl} -> prior {prior.name!r} in {out} "
               f"({prior.resolution}x{prior.resolution}, {prior.channels} channel(s), num_ws {prior.num_ws}; "
               f"sha256 {sha256_file(out / 'generator.safetensors')})")


@priors_cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_cmd(as_json):
    """List the shipped priors and whether their weights are installed."""
    from medrecon.priors import list_priors

    rows = list_priors()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no prior bundles found")
        return
    for r in rows:
        shape = f"{r.get('resolution', '?')}^2 x{r.get('channels', '?')}" if r["available"] else "-"
        modality = (r.get("metadata") or {}).get("modality", "")
        state = "ready" if r["available"] else "no weights"
        click.echo(f"{r['name']:<16} {state:<11} {shape:<10} {modality:<8} {r['bundle']}")


@priors_cli.command("untrained")
@click.argument("name_or_path")
@click.option("-o", "--output", "out", required=True, type=OutputPath(path_type=Path),
              help="Output prior directory.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the weight initialisation and of the W statistics.")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing prior folder (one medrecon wrote: nothing else in it).")
def untrained_cmd(name_or_path, out, seed, overwrite):
    """Write an untrained StyleGAN2 of NAME_OR_PATH's architecture (random weights) as a prior.

    The ablation of a generative method: run `medrecon eval` (or any task) with `--prior` set to
    this folder and the same method, steps and settings; the difference to the trained prior is
    what the training adds (the rest is the architecture's own image prior).
    """
    from medrecon.io.outputs import OutputStage, check_output, resolve_user_path
    from medrecon.pipeline import prior_files
    from medrecon.priors import load_prior, prior_folder_foreign, save_prior, untrained_like

    out = resolve_user_path(out, what="-o")
    trained = load_prior(name_or_path)
    check_output(out, overwrite=overwrite, protected=prior_files(name_or_path), want_dir=True,
                 foreign=prior_folder_foreign, what="-o prior folder")
    prior = untrained_like(trained, seed=seed)
    with OutputStage(overwrite=overwrite) as stage:
        save_prior(prior, stage.folder(out, foreign=prior_folder_foreign))
    click.echo(f"untrained {prior.resolution}x{prior.resolution} StyleGAN2 of {trained.name!r} "
               f"(seed {seed}) -> prior {prior.name!r} in {out}")


@priors_cli.command("show")
@click.argument("name_or_path")
def show_cmd(name_or_path):
    """Show a prior's shapes and metadata (NAME_OR_PATH: a shipped name, a directory or a file)."""
    from medrecon.priors import load_prior, resolve_prior_path

    prior = load_prior(name_or_path)
    info = prior.info()
    info["path"] = str(resolve_prior_path(name_or_path))
    info["w_avg_norm"] = float(prior.w_avg.norm())
    info["parameters"] = sum(p.numel() for p in prior.generator.parameters())
    click.echo(json.dumps(info, indent=2))
