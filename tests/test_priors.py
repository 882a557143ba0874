"""Tests of medrecon.priors: Prior, W statistics, save/load, name lookup, compatibility."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest
import torch

import medrecon.priors as priors_mod
from medrecon.errors import MedreconInputError, MissingWeightsError
from medrecon.generators import save_generator
from medrecon.priors import Prior, list_priors, load_prior, save_prior
from tests._tiny import tiny_generator, tiny_prior


def test_prior_shapes_and_metadata():
    p = tiny_prior(resolution=32, channels=1)
    assert (p.resolution, p.channels, p.num_ws, p.w_dim) == (32, 1, 8, 32)
    assert p.metadata["modality"] == "test"
    assert torch.equal(p.w_avg, p.generator.mapping.w_avg)
    assert not p.generator.training and not any(q.requires_grad for q in p.generator.parameters())
    assert p.info()["num_ws"] == 8 and "tiny" in repr(p)


def test_w_stats_match_direct_computation_and_are_seeded():
    G = tiny_generator()
    p = Prior(G)
    mean, std = p.compute_w_stats(num_samples=500, seed=3, batch_size=128)
    z = torch.randn([500, G.z_dim], generator=torch.Generator().manual_seed(3))
    w = G.mapping(z)[:, 0]
    assert torch.allclose(mean, w.mean(0), atol=1e-5) and torch.allclose(std, w.std(0), atol=1e-5)
    again, _ = Prior(G).compute_w_stats(num_samples=500, seed=3)
    other, _ = Prior(G).compute_w_stats(num_samples=500, seed=4)
    assert torch.equal(mean, again) and not torch.equal(mean, other)
    assert torch.equal(p.w_mean, mean) and torch.equal(p.w_std, std)


def test_w_stats_do_not_touch_global_rng():
    state = torch.random.get_rng_state()
    tiny_prior().w_stats()
    assert torch.equal(state, torch.random.get_rng_state())


def test_lazy_w_stats_are_cached_in_the_users_cache_not_the_prior(tmp_path, monkeypatch):
    """Computed statistics go to the user's cache (keyed by the weights and the draw), never
    into the prior's folder: a user's prior files are only read (they were written into)."""
    from medrecon.priors import stats_cache_dir

    monkeypatch.setenv("MEDRECON_CACHE_DIR", str(tmp_path / "cache"))
    prior_dir = tmp_path / "prior"
    prior_dir.mkdir()
    p = Prior(tiny_generator(), stats_path=prior_dir / "w_stats.safetensors", weights_sha256="abc", w_stats_samples=300)
    mean, std = p.w_stats()
    assert list(prior_dir.iterdir()) == []
    assert (stats_cache_dir() / "abc-300-0.safetensors").is_file()
    q = Prior(tiny_generator(), stats_path=prior_dir / "w_stats.safetensors", weights_sha256="abc", w_stats_samples=300)
    assert q._read_stats_cache() and torch.equal(q.w_mean, mean)
    stale = Prior(tiny_generator(), stats_path=prior_dir / "w_stats.safetensors", weights_sha256="xyz", w_stats_samples=300)
    assert not stale._read_stats_cache()
    other = Prior(tiny_generator(), weights_sha256="abc", w_stats_samples=300, w_stats_seed=1)
    other.w_stats()  # another draw: its own cache file, the first one kept
    assert (stats_cache_dir() / "abc-300-1.safetensors").is_file()
    assert (stats_cache_dir() / "abc-300-0.safetensors").is_file()
    # statistics of NaN (or a zero std) with the right metadata are recomputed, not used
    from safetensors.torch import load_file, save_file

    cached = stats_cache_dir() / "abc-300-0.safetensors"
    from safetensors import safe_open

    with safe_open(str(cached), framework="pt") as f:
        meta = f.metadata()
    bad = {k: torch.full_like(v, float("nan")) for k, v in load_file(str(cached)).items()}
    save_file(bad, str(cached), metadata=meta)
    r = Prior(tiny_generator(), weights_sha256="abc", w_stats_samples=300)
    assert not r._read_stats_cache()
    assert torch.isfinite(r.w_mean).all() and torch.equal(r.w_mean, mean)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a non-root POSIX user for read-only dirs")
def test_w_stats_in_memory_when_not_writable(tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    monkeypatch.setenv("MEDRECON_CACHE_DIR", str(ro))
    try:
        p = Prior(tiny_generator(), stats_path=ro / "w_stats.safetensors", weights_sha256="abc",
                  w_stats_samples=100)
        p.w_stats()
        assert not list(ro.iterdir()) and p._w_mean is not None
    finally:
        ro.chmod(stat.S_IRWXU)


def test_save_and_load_prior(tmp_path):
    p = tiny_prior(resolution=16, channels=3, name="rgb")
    p.metadata.update(default_plane="coronal")
    d = save_prior(p, tmp_path / "rgb", dtype="float16")
    assert sorted(f.name for f in d.iterdir()) == ["generator.json", "generator.safetensors", "model.pt", "prior.json", "w_stats.safetensors"]
    info = json.loads((d / "prior.json").read_text())
    assert info["name"] == "rgb" and info["resolution"] == 16 and info["channels"] == 3
    q = load_prior(d)
    assert q.name == "rgb" and q.metadata["default_plane"] == "coronal" and q.channels == 3
    assert torch.equal(q.w_mean, p.w_mean) and torch.equal(q.w_std, p.w_std)  # read from the cache, not recomputed
    z = torch.randn(2, p.z_dim, generator=torch.Generator().manual_seed(0))
    assert (q.generator(z) - p.generator(z)).abs().max() < 0.05
    assert load_prior(q) is q


def test_load_prior_from_files(tmp_path):
    G = tiny_generator()
    save_generator(G, tmp_path / "net", metadata={"prior": "netprior"})
    p = load_prior(tmp_path / "net.safetensors")
    assert p.name == "netprior" and p.resolution == 16
    before = sorted(x.name for x in tmp_path.iterdir())
    p.w_stats()
    assert sorted(x.name for x in tmp_path.iterdir()) == before  # the user's folder: read only
    with pytest.raises(MissingWeightsError):
        load_prior(tmp_path / "missing.safetensors")


def test_bundle_lookup_by_name(tmp_path, monkeypatch):
    root = tmp_path / "bundles"
    save_prior(tiny_prior(name="chest_xray"), root / "chest_xray_stylegan2" / "models")
    (root / "brain_mri_stylegan2" / "configs").mkdir(parents=True)
    monkeypatch.setattr(priors_mod, "bundle_search_paths", lambda: [root])
    rows = {r["name"]: r for r in list_priors()}
    assert rows["chest_xray"]["available"] and rows["chest_xray"]["resolution"] == 16
    assert not rows["brain_mri"]["available"]
    assert load_prior("chest_xray").name == "chest_xray"
    assert load_prior("chest_xray_stylegan2").resolution == 16
    assert load_prior(root / "chest_xray_stylegan2").name == "chest_xray"  # bundle dir
    with pytest.raises(MissingWeightsError, match="priors import"):
        load_prior("brain_mri")
    with pytest.raises(MedreconInputError, match=r"Unknown prior 'knee'.*brain_mri.*chest_xray"):
        load_prior("knee")


def test_check_compatible():
    p = tiny_prior(channels=1)
    p.check_compatible(channels=1, resolution=16)
    with pytest.raises(MedreconInputError, match="1-channel images but the task has 3"):
        p.check_compatible(channels=3)
    with pytest.raises(MedreconInputError, match="16x16 images but the task asks for 64x64"):
        p.check_compatible(resolution=64)


def test_bad_prior_inputs(tmp_path):
    with pytest.raises(MedreconInputError, match="StyleGAN2 generator"):
        Prior(torch.nn.Linear(2, 2))
    with pytest.raises(MedreconInputError, match="w_dim"):
        Prior(tiny_generator(), w_mean=torch.zeros(3), w_std=torch.ones(3))
    with pytest.raises(MedreconInputError, match="at least 2"):
        Prior(tiny_generator()).compute_w_stats(num_samples=1)
    d = save_prior(tiny_prior(), tmp_path / "p")
    info = json.loads((d / "prior.json").read_text())
    info["channels"] = 3
    (d / "prior.json").write_text(json.dumps(info))
    with pytest.raises(MedreconInputError, match="channels=3"):
        load_prior(d)
    shutil.rmtree(d)
    d.mkdir()
    with pytest.raises(MissingWeightsError):
        load_prior(d)


def test_untrained_like_keeps_the_architecture_not_the_weights(tmp_path):
    from click.testing import CliRunner

    from medrecon.cli import cli
    from medrecon.priors import load_prior, save_prior, untrained_like
    from tests._tiny import tiny_prior

    trained = tiny_prior(resolution=16, seed=3)
    un = untrained_like(trained, seed=1, w_samples=64)
    assert un.generator.init_kwargs == trained.generator.init_kwargs
    assert un.metadata["untrained_like"] == trained.name and un.name.endswith("_untrained")
    a = dict(trained.generator.named_parameters())
    assert any(not torch.equal(p, a[n]) for n, p in un.generator.named_parameters())
    assert torch.allclose(un.w_avg, un.w_mean)  # a usable starting point, not zeros
    again = untrained_like(trained, seed=1, w_samples=64)  # seeded
    assert all(torch.equal(p, q) for p, q in zip(un.generator.parameters(), again.generator.parameters()))
    src = save_prior(trained, tmp_path / "trained")
    out = tmp_path / "un"
    r = CliRunner().invoke(cli, ["priors", "untrained", str(src), "-o", str(out)])
    assert r.exit_code == 0, r.output
    loaded = load_prior(out)
    assert loaded.metadata["untrained_like"] == trained.name
    r = CliRunner().invoke(cli, ["priors", "untrained", str(src), "-o", str(out)])
    assert r.exit_code == 2 and "--overwrite" in r.output
    r = CliRunner().invoke(cli, ["priors", "untrained", str(src), "-o", str(src)])
    assert r.exit_code == 2


def test_a_broken_link_as_prior_says_so(tmp_path):
    """A symbolic link loop given as --prior read as an unknown prior name."""
    import os

    from medrecon.errors import MedreconInputError
    from medrecon.priors import resolve_prior_path

    os.symlink(tmp_path / "b", tmp_path / "a")
    os.symlink(tmp_path / "a", tmp_path / "b")
    with pytest.raises(MedreconInputError, match="symbolic link .* does not resolve"):
        resolve_prior_path(tmp_path / "a")
