"""Shared bundle-test helper: MONAI's verify_net_in_out on a bundle's `reconstructor`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: The cheapest GAN solver: its gradients are still needed under verify's no_grad.
FAST = {"method": "csgm", "steps": 2}


def verified_reconstructor(bundle: Path) -> tuple[Any, Any, dict, dict]:
    """Run ``verify_net_in_out --net_id reconstructor`` on ``bundle`` (fast overrides) and
    return ``(reconstructor, parser, inputs.image, outputs.pred)`` of its metadata."""
    from monai.bundle import ConfigParser, verify_net_in_out

    cfg = str(bundle / "configs" / "inference.json")
    meta = str(bundle / "configs" / "metadata.json")
    overrides = {"bundle_root": str(bundle), **FAST}
    verify_net_in_out(net_id="reconstructor", meta_file=meta, config_file=cfg, device="cpu",
                      **overrides)
    parser = ConfigParser()
    parser.read_config(cfg)
    parser.read_meta(meta)
    for k, v in overrides.items():
        parser[k] = v
    fmt = parser["_meta_"]["network_data_format"]
    net = parser.get_parsed_content("reconstructor").eval()
    return net, parser, fmt["inputs"]["image"], fmt["outputs"]["pred"]
