"""Priors: a StyleGAN2 generator + metadata + W statistics, and the registry of shipped ones.

A :class:`Prior` is what the solvers invert. It carries

* ``generator``: a :class:`medrecon.generators.Generator` (eval mode, frozen),
* ``name``, ``resolution``, ``channels`` and a ``metadata`` dict (``modality``,
  ``default_plane``, ``description``, ...),
* ``w_avg`` (the generator's tracked mean of w) and BRGM's W statistics ``w_mean`` /
  ``w_std``: per-dimension mean and standard deviation of ``w = mapping(z)`` over 10,000
  ``z ~ N(0, I)`` drawn from an explicit seed. They are computed on first use and cached in
  ``w_stats.safetensors`` next to the weights when that folder is writable (else kept in
  memory); the cache records the weights' sha256, the sample count and the seed, and is
  ignored when any of them differs.

On disk a prior is a directory written by :func:`save_prior`::

    generator.safetensors  generator.json  w_stats.safetensors  prior.json

Shipped priors are MONAI bundles ``bundles/<name>_stylegan2/`` with that directory as
``models/`` (names ``chest_xray``, ``brain_mri``). :func:`load_prior` resolves a name through
the installed package data ``medrecon.bundles`` first, then the source tree's ``bundles/``;
it also accepts a prior directory, a bundle directory, our ``.safetensors``/``.json`` pair,
or an NVIDIA / TensorFlow ``.pkl``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

import medrecon
from medrecon.errors import CheckpointError, MedreconInputError, MissingWeightsError
from medrecon.generators.checkpoints import (
    load_generator,
    read_generator_config,
    save_generator,
    save_state_dict,
    sha256_file,
)

__all__ = [
    "DEFAULT_W_SAMPLES",
    "Prior",
    "bundle_search_paths",
    "list_priors",
    "load_prior",
    "priors_cli",
    "resolve_prior_path",
    "save_prior",
]

#: Number of mapped z behind the W statistics (as in BRGM).
DEFAULT_W_SAMPLES = 10_000
PRIOR_FORMAT = "medrecon.prior"
BUNDLE_SUFFIX = "_stylegan2"
_STATS_FILE = "w_stats.safetensors"


class Prior:
    """A StyleGAN2 generator with its name, metadata and W statistics.

    Args:
        generator: The generator (our :class:`~medrecon.generators.Generator` or any module with
            the NVIDIA API ``mapping``/``synthesis``/``z_dim``/``w_dim``/``num_ws``/
            ``img_resolution``/``img_channels``). It is put in eval mode and frozen.
        name: Short name (``'chest_xray'``).
        metadata: Free-form JSON-serialisable information; conventional keys: ``modality``
            (``'xray'``, ``'mri'``), ``default_plane`` (``'coronal'``), ``description``,
            ``intensity_window``.
        w_mean: Precomputed per-dimension mean of w ``[w_dim]`` (optional).
        w_std: Precomputed per-dimension std of w ``[w_dim]`` (optional).
        stats_path: The prior's own W statistics file, read when its metadata matches
            (``None``: none). Statistics computed here are cached in the user's cache folder
            (:func:`stats_cache_dir`), never in the prior's folder.
        weights_sha256: sha256 of the weights file, recorded in the statistics cache.
        w_stats_seed: Seed of the z draw for the lazily computed statistics.
        w_stats_samples: Number of z for the lazily computed statistics.
    """

    def __init__(
        self,
        generator: nn.Module,
        *,
        name: str = "prior",
        metadata: dict[str, Any] | None = None,
        w_mean: torch.Tensor | None = None,
        w_std: torch.Tensor | None = None,
        stats_path: str | os.PathLike | None = None,
        weights_sha256: str | None = None,
        w_stats_seed: int = 0,
        w_stats_samples: int = DEFAULT_W_SAMPLES,
    ) -> None:
        missing = [a for a in ("mapping", "synthesis", "z_dim", "w_dim", "num_ws", "img_resolution", "img_channels")
                   if not hasattr(generator, a)]
        if missing or not isinstance(generator, nn.Module):
            raise MedreconInputError(
                f"Prior needs a StyleGAN2 generator module; got {type(generator).__name__} missing {missing}."
            )
        self.generator = generator.eval().requires_grad_(False)
        self.name = str(name)
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.stats_path = Path(stats_path) if stats_path is not None else None
        self.weights_sha256 = weights_sha256
        self.w_stats_seed = int(w_stats_seed)
        self.w_stats_samples = int(w_stats_samples)
        self._w_mean = None if w_mean is None else self._check_stat(w_mean, "w_mean")
        self._w_std = None if w_std is None else self._check_stat(w_std, "w_std")

    # -- shape information ---------------------------------------------------------------
    @property
    def resolution(self) -> int:
        """Image side length of the generator."""
        return int(self.generator.img_resolution)

    @property
    def channels(self) -> int:
        """Image channels of the generator."""
        return int(self.generator.img_channels)

    @property
    def z_dim(self) -> int:
        return int(self.generator.z_dim)

    @property
    def w_dim(self) -> int:
        return int(self.generator.w_dim)

    @property
    def num_ws(self) -> int:
        return int(self.generator.num_ws)

    @property
    def device(self) -> torch.device:
        """Device of the generator's parameters (derived, never stored)."""
        return next(self.generator.parameters()).device

    @property
    def w_avg(self) -> torch.Tensor:
        """The generator's tracked mean of w ``[w_dim]`` (BRGM's starting point)."""
        return self.generator.mapping.w_avg

    # -- W statistics --------------------------------------------------------------------
    @property
    def w_mean(self) -> torch.Tensor:
        """Per-dimension mean of w over mapped z ``[w_dim]`` (computed on first use)."""
        return self.w_stats()[0]

    @property
    def w_std(self) -> torch.Tensor:
        """Per-dimension standard deviation of w over mapped z ``[w_dim]``."""
        return self.w_stats()[1]

    def w_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(w_mean, w_std)``, loaded from the cache file or computed (then cached)."""
        if self._w_mean is None or self._w_std is None:
            if not self._read_stats_cache():
                self.compute_w_stats(num_samples=self.w_stats_samples, seed=self.w_stats_seed)
                self._write_stats_cache()
        dev = self.device
        return self._w_mean.to(dev), self._w_std.to(dev)

    @torch.no_grad()
    def compute_w_stats(
        self, *, num_samples: int = DEFAULT_W_SAMPLES, seed: int = 0, batch_size: int = 1000
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Compute the mean and std of ``w = mapping(z)`` over ``num_samples`` seeded z.

        z is drawn on the CPU from ``torch.Generator().manual_seed(seed)`` (reproducible on any
        device); class-conditional generators get uniformly drawn one-hot labels from the same
        generator. The global RNG is not touched.

        Args:
            num_samples: Number of z (>= 2).
            seed: Seed of the z draw.
            batch_size: z per mapping call.

        Returns:
            ``(w_mean, w_std)``, float32 ``[w_dim]`` on the generator's device.
        """
        if num_samples < 2:
            raise MedreconInputError(f"num_samples={num_samples}: need at least 2 samples for a standard deviation.")
        G = self.generator
        gen = torch.Generator().manual_seed(int(seed))
        dev = self.device
        total = torch.zeros(G.w_dim, dtype=torch.float64)
        total_sq = torch.zeros(G.w_dim, dtype=torch.float64)
        done = 0
        while done < num_samples:
            n = min(batch_size, num_samples - done)
            z = torch.randn([n, G.z_dim], generator=gen)
            c = None
            if getattr(G, "c_dim", 0):
                idx = torch.randint(G.c_dim, [n], generator=gen)
                c = torch.nn.functional.one_hot(idx, G.c_dim).float().to(dev)
            w = G.mapping(z.to(dev), c)
            w = (w[:, 0] if w.ndim == 3 else w).double().cpu()
            total += w.sum(0)
            total_sq += w.square().sum(0)
            done += n
        mean = total / num_samples
        var = (total_sq - num_samples * mean.square()) / (num_samples - 1)
        self._w_mean = mean.float()
        self._w_std = var.clamp_min(0).sqrt().float()
        self.w_stats_seed, self.w_stats_samples = int(seed), int(num_samples)
        return self._w_mean.to(dev), self._w_std.to(dev)

    def _check_stat(self, t: torch.Tensor, name: str) -> torch.Tensor:
        t = torch.as_tensor(t).detach().float().reshape(-1).cpu()
        if t.numel() != self.w_dim:
            raise MedreconInputError(f"{name} has {t.numel()} values, expected w_dim={self.w_dim}.")
        return t

    def _read_stats_cache(self) -> bool:
        return any(self._read_stats_file(p) for p in (self.stats_path, self._user_stats_path())
                   if p is not None)

    def _user_stats_path(self) -> Path | None:
        """Where statistics computed for this prior are cached: the user's cache folder
        (:func:`stats_cache_dir`), keyed by the weights' sha256 and the draw, never the
        prior's own folder (a user's prior files are only read)."""
        if not self.weights_sha256:
            return None
        return stats_cache_dir() / (f"{self.weights_sha256}-{self.w_stats_samples}-"
                                    f"{self.w_stats_seed}.safetensors")

    def _read_stats_file(self, path: Path) -> bool:
        if not path.is_file():
            return False
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                mean, std = f.get_tensor("w_mean"), f.get_tensor("w_std")
        except Exception:  # noqa: BLE001 - a broken cache is recomputed, never fatal
            return False
        if (
            meta.get("weights_sha256") != (self.weights_sha256 or "")
            or meta.get("num_samples") != str(self.w_stats_samples)
            or meta.get("seed") != str(self.w_stats_seed)
            or mean.numel() != self.w_dim
            or std.numel() != self.w_dim
            or not (torch.isfinite(mean).all() and torch.isfinite(std).all())
            or bool((std <= 0).any())
        ):
            return False  # recomputed (NaN statistics were used, silently, by every solve)
        self._w_mean, self._w_std = mean.float(), std.float()
        return True

    def _write_stats_cache(self) -> None:
        path = self._user_stats_path()
        if path is None:
            return
        try:
            _write_stats(self, path)
        except OSError:
            pass  # no writable cache: keep the statistics in memory

    # -- misc ----------------------------------------------------------------------------
    def to(self, device: str | torch.device) -> Prior:
        """Move the generator to ``device`` (in place) and return ``self``."""
        self.generator.to(device)
        return self

    def check_compatible(self, *, channels: int | None = None, resolution: int | None = None) -> None:
        """Raise :class:`MedreconInputError` if the prior cannot serve a task of this shape.

        Args:
            channels: Image channels the task needs (e.g. 1 for a grey-scale volume).
            resolution: Side length the images will be brought to (``None`` = not checked).
        """
        if channels is not None and int(channels) != self.channels:
            raise MedreconInputError(
                f"Prior {self.name!r} makes {self.channels}-channel images but the task has {channels} channel(s). "
                f"Use a {channels}-channel prior (see `medrecon priors list`) or convert the images "
                f"({'to grey-scale' if self.channels == 1 else 'by repeating the channel'})."
            )
        if resolution is not None and int(resolution) != self.resolution:
            raise MedreconInputError(
                f"Prior {self.name!r} makes {self.resolution}x{self.resolution} images but the task asks for "
                f"{resolution}x{resolution}. Resample the images to {self.resolution}^2 "
                "(medrecon.transforms.GridFit) or choose a prior of that resolution."
            )

    def info(self) -> dict[str, Any]:
        """JSON-serialisable summary (name, shapes, metadata)."""
        return {
            "name": self.name,
            "resolution": self.resolution,
            "channels": self.channels,
            "z_dim": self.z_dim,
            "w_dim": self.w_dim,
            "num_ws": self.num_ws,
            "c_dim": int(getattr(self.generator, "c_dim", 0)),
            "metadata": dict(self.metadata),
        }

    def __repr__(self) -> str:
        return (
            f"Prior(name={self.name!r}, resolution={self.resolution}, channels={self.channels}, "
            f"num_ws={self.num_ws}, modality={self.metadata.get('modality')!r})"
        )


def stats_cache_dir() -> Path:
    """The folder of computed W statistics: ``$MEDRECON_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/medrecon`` (``~/.cache/medrecon``), then ``w_stats``."""
    root = os.environ.get("MEDRECON_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "medrecon")
    return Path(root) / "w_stats"


def _write_stats(prior: Prior, path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file(
        {"w_mean": prior._w_mean.contiguous(), "w_std": prior._w_std.contiguous()},
        str(tmp),
        metadata={
            "weights_sha256": prior.weights_sha256 or "",
            "num_samples": str(prior.w_stats_samples),
            "seed": str(prior.w_stats_seed),
        },
    )
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------
# Saving and loading


def save_prior(prior: Prior, directory: str | os.PathLike, *, dtype: str = "float32") -> Path:
    """Write ``prior`` into ``directory`` (``generator.safetensors``/``.json``,
    ``w_stats.safetensors``, ``prior.json``, and ``model.pt``: the generator's plain state
    dict that a MONAI bundle's ``network_def`` loads), computing W statistics if needed.

    Args:
        prior: The prior.
        directory: Output directory (created). For a bundle, its ``models/``.
        dtype: Weight storage, ``'float32'`` or ``'float16'`` (loaded back as float32).

    Returns:
        The directory.
    """
    if not isinstance(prior, Prior):
        raise MedreconInputError(f"save_prior needs a Prior, got {type(prior).__name__}.")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    mean, std = prior.w_stats()
    weights = save_generator(prior.generator, d / "generator", dtype=dtype, metadata={"prior": prior.name})
    save_state_dict(prior.generator, d / "model.pt", dtype=dtype)  # MONAI bundles' network weights
    prior.weights_sha256 = sha256_file(weights)
    prior.stats_path = d / _STATS_FILE
    _write_stats(prior, prior.stats_path)
    info = prior.info()
    info.update(
        format=PRIOR_FORMAT,
        format_version=1,
        generator="generator.json",
        w_stats={"file": _STATS_FILE, "num_samples": prior.w_stats_samples, "seed": prior.w_stats_seed},
        medrecon_version=medrecon.__version__,
    )
    (d / "prior.json").write_text(json.dumps(info, indent=2) + "\n")
    return d


#: The files a prior folder written by medrecon holds (``save_prior``, training export).
PRIOR_FILES = frozenset({"generator.safetensors", "generator.json", "w_stats.safetensors",
                         "model.pt",
                         "prior.json", "folds.json", "training.json", "discriminator.safetensors",
                         "discriminator.json"})


def prior_folder_foreign(folder: Path) -> list[str]:
    """Entries of an existing output folder that are not part of a medrecon prior.

    Everything counts as foreign unless the folder holds a ``prior.json`` of ours; then the
    files of :data:`PRIOR_FILES` are medrecon's and may be replaced with ``overwrite``.
    """
    entries = sorted(e.name for e in folder.iterdir())
    if not entries:
        return []
    try:
        info = json.loads((folder / "prior.json").read_text())
        ours = isinstance(info, dict) and info.get("format") is not None
    except (OSError, ValueError):
        ours = False
    if not ours:
        return entries
    return [e for e in entries if e not in PRIOR_FILES or not (folder / e).is_file()]


def bundle_search_paths() -> list[Path]:
    """Folders searched for shipped bundles: package data ``medrecon.bundles``, then ``<repo>/bundles``."""
    paths: list[Path] = []
    try:
        import importlib.resources as resources

        root = resources.files("medrecon.bundles")
        if root.is_dir():
            paths.append(Path(str(root)))
    except (ModuleNotFoundError, TypeError, NotADirectoryError):
        pass
    repo = Path(medrecon.__file__).resolve().parent.parent / "bundles"
    if repo.is_dir() and all(repo.resolve() != p.resolve() for p in paths):
        paths.append(repo)
    return paths


def _bundles() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for root in bundle_search_paths():
        for d in sorted(root.iterdir()):
            if d.is_dir() and d.name.endswith(BUNDLE_SUFFIX):
                found.setdefault(d.name[: -len(BUNDLE_SUFFIX)], d)
    return found


def _weights_in(directory: Path) -> Path | None:
    """The loadable thing inside a prior/bundle directory, or None."""
    for d in (directory, directory / "models"):
        if (d / "prior.json").is_file() or (d / "generator.json").is_file():
            return d
    models = directory / "models"
    if models.is_dir():
        for pattern in ("*.json", "*.pkl"):
            for f in sorted(models.glob(pattern)):
                if f.suffix == ".pkl" or f.with_suffix(".safetensors").is_file():
                    return f
    return None


def resolve_prior_path(name_or_path: str | os.PathLike) -> Path:
    """Turn a prior name or path into the directory or file :func:`load_prior` reads.

    Raises:
        MedreconInputError: Unknown name (the message lists the available ones).
        MissingWeightsError: The bundle exists but holds no weights yet.
    """
    p = Path(name_or_path).expanduser()
    if p.exists():
        if p.is_dir():
            target = _weights_in(p)
            if target is None:
                raise MissingWeightsError(
                    f"{p} holds no prior: expected prior.json/generator.json (in it or its models/) or a .pkl in models/."
                )
            return target
        return p
    name = str(name_or_path)
    if p.is_symlink():  # a link to nothing, or a loop: not a prior name
        raise MedreconInputError(
            f"prior {name!r} is a symbolic link to {os.readlink(p)!r}, which does not resolve "
            "(missing, or a loop of links); fix the link or pass the prior's folder.")
    key = name[: -len(BUNDLE_SUFFIX)] if name.endswith(BUNDLE_SUFFIX) else name
    bundles = _bundles()
    if key not in bundles:
        if os.sep in name or name.endswith((".pkl", ".safetensors", ".json")):
            raise MissingWeightsError(f"Prior file {name} does not exist.")
        raise MedreconInputError(
            f"Unknown prior {name!r}. Available: {sorted(bundles) or 'none installed'}; or pass a path to a prior "
            "directory, a bundle, a .safetensors/.json pair, or a StyleGAN2 .pkl."
        )
    target = _weights_in(bundles[key])
    if target is None:
        raise MissingWeightsError(
            f"Prior {key!r} (bundle {bundles[key]}) has no weights in models/. Train and export one "
            "(`medrecon train export`), or convert a released pickle once with "
            f"`medrecon priors import FILE.pkl -o {bundles[key] / 'models'}`."
        )
    return target


def load_prior(name_or_path: str | os.PathLike | Prior, *, device: str | torch.device = "cpu") -> Prior:
    """Load a prior by shipped name (``'chest_xray'``, ``'brain_mri'``) or by path.

    Args:
        name_or_path: A name, a prior directory, a bundle directory, our
            ``.safetensors``/``.json``, or a ``.pkl``. A :class:`Prior` is moved to ``device``
            and returned as is.
        device: Device of the generator.

    Returns:
        The :class:`Prior` (generator frozen, eval mode).
    """
    if isinstance(name_or_path, Prior):
        return name_or_path.to(device)
    target = resolve_prior_path(name_or_path)
    if target.is_dir():
        return _load_prior_dir(target, device=device)
    G = load_generator(target, device=device)
    metadata: dict[str, Any] = {}
    weights = target
    if target.suffix.lower() not in (".pkl", ".pickle"):
        config = read_generator_config(target)
        metadata = dict(config.get("metadata") or {})
        weights = target.with_name(config.get("weights", target.with_suffix(".safetensors").name))
    stem = target.name.split(".")[0]
    return Prior(
        G, name=str(metadata.pop("prior", stem)), metadata=metadata,
        stats_path=target.with_name(f"{stem}.{_STATS_FILE}"), weights_sha256=sha256_file(weights),
    )


def _load_prior_dir(d: Path, *, device: str | torch.device) -> Prior:
    info: dict[str, Any] = {}
    if (d / "prior.json").is_file():
        try:
            info = json.loads((d / "prior.json").read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{d / 'prior.json'} is not valid JSON ({e}).") from e
    gen_json = d / info.get("generator", "generator.json")
    G = load_generator(gen_json, device=device)
    config = read_generator_config(gen_json)
    stats = info.get("w_stats") or {}
    prior = Prior(
        G,
        name=info.get("name") or (d.parent.name[: -len(BUNDLE_SUFFIX)] if d.name == "models" else d.name),
        metadata=info.get("metadata") or {},
        stats_path=d / stats.get("file", _STATS_FILE),
        weights_sha256=config.get("sha256"),
        w_stats_seed=int(stats.get("seed", 0)),
        w_stats_samples=int(stats.get("num_samples", DEFAULT_W_SAMPLES)),
    )
    for key, expected in (("resolution", prior.resolution), ("channels", prior.channels)):
        if key in info and int(info[key]) != expected:
            raise CheckpointError(f"{d / 'prior.json'} says {key}={info[key]} but the generator has {expected}.")
    return prior


def list_priors() -> list[dict[str, Any]]:
    """The shipped priors found by name, with whether their weights are present.

    Returns:
        One dict per bundle: ``name``, ``bundle`` (path), ``available`` (weights present) and,
        when a ``prior.json`` exists, ``resolution``, ``channels`` and ``metadata``.
    """
    out = []
    for name, bundle in sorted(_bundles().items()):
        entry: dict[str, Any] = {"name": name, "bundle": str(bundle), "available": False}
        target = _weights_in(bundle)
        if target is not None:
            entry["available"] = True
            pj = target / "prior.json" if target.is_dir() else None
            if pj is not None and pj.is_file():
                try:
                    info = json.loads(pj.read_text())
                    entry.update({k: info[k] for k in ("resolution", "channels", "metadata") if k in info})
                except json.JSONDecodeError:
                    pass
        out.append(entry)
    return out


def untrained_like(prior: Prior, *, seed: int = 0, w_samples: int = DEFAULT_W_SAMPLES) -> Prior:
    """A StyleGAN2 of ``prior``'s architecture with freshly initialised weights (seeded): the
    deep-image-prior ablation of a solver, same steps and settings, with nothing learnt.

    Args:
        prior: The trained prior whose architecture (``generator.init_kwargs``) to copy.
        seed: Seed of the weight initialisation and of the W statistics.
        w_samples: Mapped z behind the W statistics.

    Returns:
        A Prior named ``<name>_untrained`` with ``metadata["untrained_like"] = prior.name``.
    """
    from medrecon.generators import Generator

    kwargs = getattr(prior.generator, "init_kwargs", None)
    if not isinstance(kwargs, dict):
        raise MedreconInputError(
            f"prior {prior.name!r} has a {type(prior.generator).__name__} generator without "
            "init_kwargs; an untrained copy needs medrecon's Generator (import it with "
            "`medrecon priors import`).")
    G = Generator(**kwargs, seed=int(seed))
    meta = {k: v for k, v in prior.metadata.items() if k in ("modality", "default_plane",
                                                              "default_methods", "default_method")}
    meta.update(untrained_like=prior.name, description=f"untrained StyleGAN2 of {prior.name}'s "
                "architecture (random weights, seed {}): a deep-image-prior ablation".format(seed))
    out = Prior(G, name=f"{prior.name}_untrained", metadata=meta, w_stats_seed=int(seed),
                w_stats_samples=int(w_samples))
    out.compute_w_stats(num_samples=int(w_samples), seed=int(seed))
    with torch.no_grad():  # training tracks w_avg; a fresh network starts at 0: use the mean
        G.mapping.w_avg.copy_(out.w_mean.to(G.mapping.w_avg))
    return out


from medrecon.generators.cli import priors_cli  # noqa: E402  (click group `medrecon priors`)
