"""MONAI's bundle tools on a copy of a shipped bundle outside the repo, with a tiny prior the
test makes: run (with overrides), evaluate.json, inpainting with masks, ckpt_export,
verify_metadata, verify_net_in_out of the `reconstructor` id, ConfigWorkflow properties."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "medrecon" / "data" / "meta_schema_20240725.json"
R = 16


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    from medrecon.priors import save_prior
    from tests._tiny import tiny_prior

    b = tmp_path_factory.mktemp("bundles") / "toy_stylegan2"
    shutil.copytree(REPO / "bundles" / "chest_xray_stylegan2", b,
                    ignore=shutil.ignore_patterns("eval", "models"))
    save_prior(tiny_prior(resolution=R, seed=0), b / "models")
    cfg = json.loads((b / "configs" / "inference.json").read_text())
    kwargs = json.loads((b / "models" / "generator.json").read_text())["kwargs"]
    cfg["network_def"] = {"_target_": "medrecon.generators.Generator", **kwargs}
    (b / "configs" / "inference.json").write_text(json.dumps(cfg, indent=1))
    for d in ("sample", "sample_reference"):
        for f in (b / d).glob("*.png"):
            f.unlink()
    g = np.random.default_rng(0)
    ref = (g.random((R, R)) * 255).astype(np.uint8)
    Image.fromarray(ref).save(b / "sample_reference" / "case_a.png")
    Image.fromarray(ref.reshape(R // 4, 4, R // 4, 4).mean((1, 3)).astype(np.uint8)).save(
        b / "sample" / "case_a_lr.png")
    return b


def test_run_with_overrides(bundle, tmp_path):
    from monai.bundle import run

    out = tmp_path / "out"
    run(config_file=str(bundle / "configs" / "inference.json"), bundle_root=str(bundle),
        output_dir=str(out), method="bicubic", logging_file=str(bundle / "configs" / "logging.conf"))
    files = sorted(out.iterdir())
    assert [f.name for f in files] == ["case_a_lr_sr.nii.gz"]
    assert nib.load(str(files[0])).shape[:2] == (R, R)


def test_evaluate_json_scores_with_monai_metrics(bundle, tmp_path):
    from monai.bundle import run

    out = tmp_path / "eval"
    run(config_file=[str(bundle / "configs" / "inference.json"),
                     str(bundle / "configs" / "evaluate.json")],
        bundle_root=str(bundle), output_dir=str(out), method="lanczos", bp=None,
        logging_file=str(bundle / "configs" / "logging.conf"))
    metrics = dict(line.split(",") for line in (out / "metrics.csv").read_text().splitlines())
    psnr, ssim = float(metrics["val_psnr"]), float(metrics["val_ssim"])
    assert 5 < psnr < 60 and 0 < ssim <= 1


def test_inpainting_through_the_bundle(bundle, tmp_path):
    from monai.bundle import run

    data, masks, out = tmp_path / "data", tmp_path / "masks", tmp_path / "out"
    data.mkdir()
    masks.mkdir()
    img = (np.random.default_rng(1).random((R, R)) * 255).astype(np.uint8)
    Image.fromarray(img).save(data / "scan.png")
    m = np.zeros((R, R), np.uint8)
    m[4:9, 5:10] = 255
    Image.fromarray(m).save(masks / "scan.png")
    run(config_file=str(bundle / "configs" / "inference.json"), bundle_root=str(bundle),
        dataset_dir=str(data), mask_dir=str(masks), output_dir=str(out), task="inpaint",
        method="biharmonic", logging_file=str(bundle / "configs" / "logging.conf"))
    res = nib.load(str(out / "scan_inpaint.nii.gz")).get_fdata()[..., 0] if \
        nib.load(str(out / "scan_inpaint.nii.gz")).ndim == 3 else \
        nib.load(str(out / "scan_inpaint.nii.gz")).get_fdata()
    obs = img.T.astype(float)  # MONAI's PNG reader: (W, H)
    known = m.T == 0
    np.testing.assert_allclose(res[known], obs[known], atol=1e-3)


def test_ckpt_export_and_verify_metadata(bundle, tmp_path):
    from monai.bundle import ckpt_export, verify_metadata

    ts = tmp_path / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(ts), ckpt_file=str(bundle / "models" / "model.pt"),
                meta_file=str(bundle / "configs" / "metadata.json"),
                config_file=str(bundle / "configs" / "inference.json"), use_trace=True,
                input_shape=[1, 32])
    net = torch.jit.load(str(ts))
    assert net(torch.zeros(1, 32)).shape == (1, 1, R, R)
    verify_metadata(meta_file=str(bundle / "configs" / "metadata.json"), filepath=str(SCHEMA))


def test_check_properties_finds_nothing_missing(bundle):
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(config_file=str(bundle / "configs" / "inference.json"),
                        meta_file=str(bundle / "configs" / "metadata.json"), logging_file=False,
                        workflow_type="infer", bundle_root=str(bundle))
    wf.initialize()
    assert wf.check_properties() == []


# the shipped metadata's shapes are for a 128 prior: the 16 px test prior is resampled (warned)
@pytest.mark.filterwarnings("ignore::medrecon.errors.MedreconWarning")
def test_verify_net_in_out_on_the_reconstructor(bundle):
    """network_data_format describes `reconstructor` (degraded scans -> reconstructions):
    MONAI's verify_net_in_out (channels, dtype; under no_grad) passes on it, and so do the
    spatial shapes, which verify_net_in_out does not compare."""
    from monai.bundle.scripts import _get_fake_spatial_shape

    from tests._bundle import verified_reconstructor

    net, parser, image, pred = verified_reconstructor(bundle)
    assert isinstance(net, torch.nn.Module)
    assert parser.get_parsed_content("network_def").img_resolution == R  # still the generator
    for n, batch in ((1, 2), (2, 1)):
        shape_in = _get_fake_spatial_shape(image["spatial_shape"], n=n)
        x = torch.rand(batch, image["num_channels"], *shape_in)
        with torch.no_grad():
            y = net(x)
        expected = (batch, pred["num_channels"],
                    *_get_fake_spatial_shape(pred["spatial_shape"], n=n))
        assert tuple(y.shape) == expected, f"n={n}: got {tuple(y.shape)}, metadata says {expected}"
        assert y.dtype == torch.float32 and torch.isfinite(y).all() and not y.requires_grad
    with pytest.raises(Exception, match=r"\(B, 1, H, W\)"):
        net(torch.rand(1, 3, 8, 8))

