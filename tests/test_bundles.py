"""Tests of the shipped MONAI bundles: layout, metadata schema, weights + sha256, inference run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BUNDLES = {"chest_xray": REPO / "bundles" / "chest_xray_stylegan2",
           "brain_mri": REPO / "bundles" / "brain_mri_stylegan2"}
SCHEMA = REPO / "medrecon" / "data" / "meta_schema_20240725.json"  # shipped: works offline
MAX_WEIGHT_BYTES = 25 * 1024 * 1024

pytestmark = pytest.mark.parametrize("name", sorted(BUNDLES))


def test_bundle_layout(name):
    b = BUNDLES[name]
    for rel in ("configs/metadata.json", "configs/inference.json", "docs/README.md",
                "docs/data_license.txt", "LICENSE", "models/prior.json", "models/generator.json",
                "models/generator.safetensors", "models/w_stats.safetensors", "models/folds.json",
                "models/training.json"):
        assert (b / rel).is_file(), f"{b.name}/{rel} is missing"
    for f in (b / "models").iterdir():
        assert f.stat().st_size <= MAX_WEIGHT_BYTES, f"{f} is over 25 MB"
    samples = sorted((b / "sample").glob("*.png"))
    assert len(samples) == 1 and samples[0].stat().st_size < 20_000
    assert "CC BY 4.0" in (b / "docs" / "data_license.txt").read_text()
    readme = (b / "docs" / "README.md").read_text().lower()
    assert "not for clinical" in readme and "kimg" in readme
    kimg = json.loads((b / "models" / "training.json").read_text())["kimg"]
    if kimg < 1000:  # a briefly trained prior must say so plainly
        assert "placeholder" in readme and f"{kimg} kimg" in readme


def test_metadata_against_schema(name):
    from monai.bundle import verify_metadata

    assert SCHEMA.is_file()
    # The schema file exists, so MONAI skips the download: this runs offline.
    verify_metadata(meta_file=str(BUNDLES[name] / "configs" / "metadata.json"),
                    filepath=str(SCHEMA))


def test_metadata_matches_weights(name):
    meta = json.loads((BUNDLES[name] / "configs" / "metadata.json").read_text())
    info = json.loads((BUNDLES[name] / "models" / "prior.json").read_text())
    fmt = meta["network_data_format"]
    assert set(fmt["inputs"]) == {"image"} and set(fmt["outputs"]) == {"pred"}
    assert "degraded" in fmt["inputs"]["image"]["channel_def"]["0"]
    assert meta["generator"]["resolution"] == [info["resolution"], info["resolution"]]
    assert meta["generator"]["z_dim"] == info["z_dim"] and info["channels"] == 1
    assert info["resolution"] >= 128
    # versions are the supported minimums, not a build nobody installs
    assert meta["pytorch_version"] == "2.2.0" and meta["monai_version"] == "1.3.0"
    # network_def builds the generator the weights belong to
    from monai.bundle import ConfigParser

    cfg = ConfigParser()
    cfg.read_config(str(BUNDLES[name] / "configs" / "inference.json"))
    net = cfg.get_parsed_content("network_def")
    state = torch.load(BUNDLES[name] / "models" / "model.pt", weights_only=True)
    net.load_state_dict(state)
    assert net.img_resolution == info["resolution"]


def test_weights_load_with_matching_sha256(name):
    from medrecon.generators.checkpoints import sha256_file
    from medrecon.priors import load_prior, resolve_prior_path

    b = BUNDLES[name]
    recorded = json.loads((b / "models" / "generator.json").read_text())["sha256"]
    assert sha256_file(b / "models" / "generator.safetensors") == recorded
    prior = load_prior(b)
    assert prior.weights_sha256 == recorded
    assert resolve_prior_path(name).resolve() == (b / "models").resolve()  # found by name
    G = prior.generator
    z = torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        img = G(z, None, noise_mode="const")
    assert img.shape == (2, 1, prior.resolution, prior.resolution)
    assert torch.isfinite(img).all() and img.std() > 0
    mean, std = prior.w_stats()
    assert mean.shape == std.shape == (G.w_dim,) and (std > 0).all()
    training = json.loads((b / "models" / "training.json").read_text())
    folds = json.loads((b / "models" / "folds.json").read_text())
    assert folds["k"] == 5 and sum(folds["images_per_fold"]) == len(folds["files"])
    assert training["config"]["resolution"] == prior.resolution


def test_config_workflow_runs_inference_on_the_sample(name, tmp_path):
    from monai.bundle import ConfigWorkflow

    b = BUNDLES[name]
    wf = ConfigWorkflow(
        config_file=str(b / "configs" / "inference.json"),
        meta_file=str(b / "configs" / "metadata.json"),
        logging_file=str(b / "configs" / "logging.conf"), workflow_type="infer",
        bundle_root=str(b), output_dir=str(tmp_path / "out"), steps=2, device="cpu",
        method="csgm",  # the cheapest GAN solver: this checks the wiring, not the quality
    )
    wf.initialize()
    assert wf.check_properties() == []
    wf.run()
    wf.finalize()
    outs = sorted((tmp_path / "out").iterdir())
    assert len(outs) == 1 and outs[0].name.endswith("_sr.nii.gz")
    import nibabel as nib
    from PIL import Image

    with Image.open(next((b / "sample").glob("*.png"))) as lr:
        assert nib.load(str(outs[0])).shape[:2] == (lr.size[0] * 4, lr.size[1] * 4)


def test_verify_net_in_out_on_the_reconstructor(name):
    """The shipped metadata's network_data_format is the shape of the `reconstructor` id
    (degraded scan -> reconstruction with the bundle's default task); network_def
    stays the generator. verify_net_in_out compares channels and dtype; the spatial shapes too."""
    from monai.bundle.scripts import _get_fake_spatial_shape

    from tests._bundle import verified_reconstructor

    b = BUNDLES[name]
    net, _, image, pred = verified_reconstructor(b)
    x = torch.rand(1, image["num_channels"], *_get_fake_spatial_shape(image["spatial_shape"]))
    with torch.no_grad():
        y = net(x)
    expected = (1, pred["num_channels"], *_get_fake_spatial_shape(pred["spatial_shape"]))
    assert tuple(y.shape) == expected, f"got {tuple(y.shape)}, metadata says {expected}"
    res = json.loads((b / "models" / "prior.json").read_text())["resolution"]
    assert tuple(y.shape[2:]) == (res, res)  # n = 1: SR x4 onto the prior's own grid


def test_bundle_reads_dicom_like_the_cli_and_passes_the_device(name, tmp_path):
    """medrecon's reader in LoadImaged: a DICOM slice keeps its pixel spacing (MONAI's default
    reader gave 1 mm, axes swapped, MONOCHROME1 not inverted); the device reaches the solver."""
    import nibabel as nib
    from monai.bundle import ConfigParser, ConfigWorkflow
    from pydicom.data import get_testdata_file

    b = BUNDLES[name]
    cfg = ConfigParser()
    cfg.read_config(str(b / "configs" / "inference.json"))
    assert cfg["inferer"]["device"] == "$str(@device)"
    data = tmp_path / "data"
    data.mkdir()
    (data / "mr.dcm").write_bytes(Path(get_testdata_file("MR_small.dcm")).read_bytes())
    wf = ConfigWorkflow(
        config_file=str(b / "configs" / "inference.json"),
        meta_file=str(b / "configs" / "metadata.json"),
        logging_file=str(b / "configs" / "logging.conf"), workflow_type="infer",
        bundle_root=str(b), dataset_dir=str(data), output_dir=str(tmp_path / "out"),
        device="cpu", method="bicubic")
    wf.initialize()
    wf.run()
    wf.finalize()
    out = nib.load(str(tmp_path / "out" / "mr_sr.nii.gz"))
    np.testing.assert_allclose(out.header.get_zooms()[:2], (0.3125 / 4, 0.3125 / 4))


def test_exported_trace_keeps_its_batch_size(name, tmp_path):
    """docs/monai.md: the shipped priors' ckpt_export traces keep the batch they were traced
    at (the modulated convolutions fold the batch into their groups)."""
    from monai.bundle import ckpt_export

    b = BUNDLES[name]
    z_dim = json.loads((b / "configs" / "inference.json").read_text())["network_def"]["z_dim"]
    ts = tmp_path / "g.ts"
    ckpt_export(net_id="network_def", filepath=str(ts), ckpt_file=str(b / "models" / "model.pt"),
                meta_file=str(b / "configs" / "metadata.json"),
                config_file=str(b / "configs" / "inference.json"), use_trace=True,
                input_shape=[1, z_dim], bundle_root=str(b))
    net = torch.jit.load(str(ts))
    assert net(torch.zeros(1, z_dim)).shape[0] == 1
    with pytest.raises(RuntimeError):
        net(torch.zeros(2, z_dim))
