"""Shared pytest fixtures: devices, odd image sizes, explicit RNGs, global-RNG guard."""

from __future__ import annotations

import numpy as np
import pytest
import torch

# Tests use tiny tensors: intra-op threads only add scheduling overhead (measured ~18x slower
# solver tests with 2 threads on a busy 2-core machine). Benchmarks set their own thread count.
torch.set_num_threads(1)

_DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True, scope="session")
def _stats_cache(tmp_path_factory: pytest.TempPathFactory):
    """Computed W statistics go to a test folder, not the user's ~/.cache/medrecon."""
    import os

    old = os.environ.get("MEDRECON_CACHE_DIR")
    os.environ["MEDRECON_CACHE_DIR"] = str(tmp_path_factory.mktemp("medrecon-cache"))
    yield
    if old is None:
        os.environ.pop("MEDRECON_CACHE_DIR", None)
    else:
        os.environ["MEDRECON_CACHE_DIR"] = old


@pytest.fixture(params=_DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    """Every available device: ``cpu``, plus ``cuda`` when present."""
    return torch.device(request.param)


@pytest.fixture(params=[(15, 21), (16, 12)], ids=lambda s: f"{s[0]}x{s[1]}")
def odd_size(request: pytest.FixtureRequest) -> tuple[int, int]:
    """Small non-square image sizes, one odd, one even (H, W)."""
    return request.param


@pytest.fixture
def rng() -> torch.Generator:
    """A seeded CPU torch generator (never the global RNG)."""
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def np_rng() -> np.random.Generator:
    """A seeded numpy generator."""
    return np.random.default_rng(1234)


@pytest.fixture
def global_rng_untouched():
    """Fail the test if it advanced the global torch or numpy RNG."""
    torch_state = torch.random.get_rng_state().clone()
    np_state = np.random.get_state()[1].copy()
    yield
    assert torch.equal(torch.random.get_rng_state(), torch_state), "global torch RNG was used"
    assert np.array_equal(np.random.get_state()[1], np_state), "global numpy RNG was used"
