"""MONAI transforms of medrecon: the reconstruction and its steps, array and dictionary forms.

They follow MONAI's conventions: an array transform and its ``d`` dictionary twin with
``keys`` and ``allow_missing_keys``; MetaTensors in, MetaTensors out, with the affine and
``applied_operations`` kept up to date; :class:`monai.transforms.InvertibleTransform` where
an exact inverse exists (:class:`IntensityWindowd`), so :class:`monai.transforms.Invertd`
works for those steps, and a recorded, non-invertible operation for the reconstruction itself
(``Invertd`` over it stops with MONAI's "transform mismatch" error instead of silently
relabelling a result).

::

    from monai.transforms import Compose, LoadImaged, EnsureChannelFirstd, SaveImaged
    from medrecon.monai import Reconstructd

    pipeline = Compose([
        LoadImaged(keys="image", image_only=True),
        EnsureChannelFirstd(keys="image"),
        Reconstructd(keys="image", prior="chest_xray", task="sr", scale=4),
        SaveImaged(keys="image", output_dir="out", output_postfix="sr", resample=False),
    ])
    pipeline({"image": "scan.nii.gz"})
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor, get_track_meta
from monai.transforms import InvertibleTransform, MapTransform, Randomizable, Transform
from monai.utils import TransformBackends

from medrecon.errors import MedreconInputError
from medrecon.monai.convert import (meta_tracking, record_operation, regridded_meta,
                                    regridded_operations)

__all__ = [
    "IntensityWindowd",
    "Reconstruct",
    "Reconstructd",
    "SimulateDegradation",
    "SimulateDegradationd",
]


def _load_prior(prior: Any) -> Any:
    from medrecon.priors import Prior, load_prior

    return prior if isinstance(prior, Prior) else load_prior(prior)


#: The transforms' backends (MONAI's ``backend`` attribute): torch, numpy arrays converted.
BACKENDS = [TransformBackends.TORCH, TransformBackends.NUMPY]


def _out(x: Any) -> Any:
    """A result as MONAI returns it: a MetaTensor, or a plain tensor under
    ``monai.data.set_track_meta(False)``."""
    return x.as_tensor() if isinstance(x, MetaTensor) and not get_track_meta() else x


def _as_metatensor(img: Any) -> MetaTensor:
    if isinstance(img, MetaTensor) and img.is_batch:
        raise MedreconInputError(
            f"expected one channel-first image; got a batch {tuple(img.shape)}. Decollate it "
            "first (monai.data.decollate_batch), or use medrecon.monai.ReconstructionInferer "
            "in an evaluator.")
    if isinstance(img, MetaTensor):
        return img
    if isinstance(img, (np.ndarray, torch.Tensor)):
        return MetaTensor(torch.as_tensor(np.asarray(img) if isinstance(img, np.ndarray) else img))
    raise MedreconInputError(f"expected a MetaTensor or an array; got {type(img).__name__}.")


# ------------------------------------------------------------------------------ reconstruction
class Reconstruct(Transform):
    """Reconstruct a channel-first MetaTensor ``(1, X, Y[, Z])`` with a StyleGAN2 prior.

    Runs :func:`medrecon.pipeline.reconstruct` (the one pipeline of the CLI, the bundles and
    the Slicer module): the result is a MetaTensor on the output grid (for SR ``scale`` times
    finer in-plane) with its affine and ``pixdim`` updated (``spatial_shape`` stays the source
    file's, as after ``Spacingd``) and the reconstruction recorded in ``applied_operations``.

    Args:
        prior: Prior name (``"chest_xray"``, ``"brain_mri"``), prior folder or a loaded Prior;
            loaded once.
        task: ``"sr"``, ``"inpaint"``, ``"mri"`` (with ``simulate``), ``"deblur"``,
            ``"denoise"`` or ``"cs"``.
        method: Method name; default the prior's choice for the task.
        return_std: Also return the posterior std map (needs ``samples > 0``, or
            ``spread=True`` for an IAGAN ensemble).
        **options: Any other keyword of :func:`medrecon.pipeline.reconstruct` (``scale``,
            ``sr_kernel``, ``steps``, ``bp``, ``plane``, ``samples``, ``ensemble``,
            ``noise_sigma``, ``device``, ``seed``, ``simulate``...).
    """

    backend = BACKENDS

    def __init__(self, prior: Any, task: str, method: str | None = None, *,
                 return_std: bool = False, **options: Any) -> None:
        from medrecon.pipeline import _check_task

        self.task = _check_task(task)
        self.method = method
        self.options = dict(options)
        self.return_std = bool(return_std)
        if self.return_std and not (int(self.options.get("samples", 0) or 0)
                                    or self.options.get("spread")):
            raise MedreconInputError("return_std needs samples > 0 (posterior samples of "
                                     "variational BRGM) or spread=True (the spread of an "
                                     "IAGAN ensemble).")
        self._prior_arg = prior
        self._prior: Any = None

    @property
    def prior(self) -> Any:
        """The loaded prior (loaded on first use)."""
        if self._prior is None:
            self._prior = _load_prior(self._prior_arg)
        return self._prior

    def __call__(self, img: Any, mask: Any = None) -> Any:
        """Reconstruct ``img``; with ``return_std`` return ``(image, std)``.

        Args:
            img: Channel-first MetaTensor ``(1, X, Y[, Z])`` (or an array of that shape).
            mask: Inpainting mask on ``img``'s grid, nonzero = missing (channel-first or not).
        """
        from medrecon.pipeline import reconstruct

        with meta_tracking():  # the affine is needed, even under set_track_meta(False)
            img = _as_metatensor(img)
            if mask is not None:
                m = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask)
                if m.ndim == img.ndim:
                    m = m[0]
                mask = m if img.ndim == 4 else m[..., None] if m.ndim == 2 else m
            res = reconstruct(img, task=self.task, prior=self.prior, method=self.method,
                              mask=mask, **self.options)
        return (_out(res.image), _out(res.std)) if self.return_std else _out(res.image)


class Reconstructd(MapTransform, InvertibleTransform):
    """Dictionary form of :class:`Reconstruct`.

    A reconstruction has no inverse: :meth:`inverse` (reached when an ``Invertd`` is given a
    ``Compose`` that holds this transform) stops with an error naming the fix, instead of
    letting the steps around it be undone on a grid they were not applied to.

    Args:
        keys: Keys of the images to reconstruct.
        prior, task, method, **options: as :class:`Reconstruct`.
        output_keys: Where to put each result (default: replace the input under its key).
        std_keys: Where to put the posterior std map (needs ``samples > 0``, or ``spread=True``);
            default none.
        mask_key: Key of the inpainting mask (nonzero = missing) for ``task="inpaint"``.
        allow_missing_keys: Skip keys that are absent.
    """

    backend = BACKENDS

    def __init__(self, keys: KeysCollection, prior: Any, task: str, method: str | None = None,
                 *, output_keys: KeysCollection | None = None,
                 std_keys: KeysCollection | None = None, mask_key: str | None = None,
                 allow_missing_keys: bool = False, **options: Any) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_keys = list(self.keys) if output_keys is None else (
            [output_keys] if isinstance(output_keys, str) else list(output_keys))
        self.std_keys = None if std_keys is None else (
            [std_keys] if isinstance(std_keys, str) else list(std_keys))
        for name, ks in (("output_keys", self.output_keys), ("std_keys", self.std_keys)):
            if ks is not None and len(ks) != len(self.keys):
                raise MedreconInputError(f"{name} needs one entry per key ({len(self.keys)}); "
                                         f"got {ks}.")
        self.mask_key = mask_key
        self.recon = Reconstruct(prior, task, method, return_std=self.std_keys is not None,
                                 **options)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        mask = d.get(self.mask_key) if self.mask_key is not None else None
        if self.mask_key is not None and mask is None and self.recon.task == "inpaint":
            raise MedreconInputError(f"the data has no mask under {self.mask_key!r}.")
        for key in self.key_iterator(d):
            idx = list(self.keys).index(key)
            out = self.recon(d[key], mask=mask)
            if self.std_keys is not None:
                d[self.output_keys[idx]], d[self.std_keys[idx]] = out
            else:
                d[self.output_keys[idx]] = out
        return d

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        raise MedreconInputError(
            "a reconstruction cannot be inverted. To map a result back to intensities, give "
            "Invertd the intensity window alone, the last step before Reconstructd (e.g. "
            "Invertd(keys='image', transform=window) with window an IntensityWindowd and the "
            "result under the input's key; or window.inverse({'image': result})); inverting "
            "spatial steps (Spacingd, Orientationd) would undo them on the wrong grid.")


# ------------------------------------------------------------------------------ intensities
class IntensityWindowd(MapTransform, InvertibleTransform):
    """Map intensities to generator space by percentiles, exactly invertible.

    The ``lower`` / ``upper`` percentiles of each image go to ``-1`` / ``+1`` without clipping
    (:class:`medrecon.transforms.IntensityWindow`), and the window is recorded in
    ``applied_operations`` so :class:`monai.transforms.Invertd` maps a result back to
    intensities.

    Args:
        keys: Keys to transform.
        lower, upper: Percentiles (0-100). Default 0.5 and 99.5.
        allow_missing_keys: Skip absent keys.
    """

    backend = BACKENDS

    def __init__(self, keys: KeysCollection, lower: float = 0.5, upper: float = 99.5,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.lower, self.upper = float(lower), float(upper)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from medrecon.transforms import IntensityWindow

        d = dict(data)
        for key in self.key_iterator(d):
            img = _as_metatensor(d[key])
            x = img.as_tensor()
            windows = [IntensityWindow.fit(c, lower=self.lower, upper=self.upper) for c in x]
            out = _like(img, torch.stack([w.apply(c.float()) for w, c in zip(windows, x)]),
                        channels=True)
            self.push_transform(out, extra_info={"low": [w.low for w in windows],
                                                 "high": [w.high for w in windows],
                                                 "dtype": str(x.dtype).replace("torch.", "")})
            d[key] = _out(out)
        return d

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from medrecon.transforms import IntensityWindow

        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            op = self._pop_own(img, key)
            info = op["extra_info"]
            x = img.as_tensor().float()
            lows, highs = info["low"], info["high"]
            if len(lows) != x.shape[0]:
                raise MedreconInputError(
                    f"{key!r} has {x.shape[0]} channel(s) but its window was fitted on "
                    f"{len(lows)}; invert a result with the input's channels.")
            back = torch.stack([IntensityWindow(lo, hi).invert(c)
                                for lo, hi, c in zip(lows, highs, x)])
            dtype = getattr(torch, info.get("dtype", "float32"))
            if not dtype.is_floating_point:  # an integer scan comes back as its own type
                back = back.round().clamp(torch.iinfo(dtype).min, torch.iinfo(dtype).max)
            out = _like(img, back.to(dtype), channels=True, keep_dtype=True)
            out.applied_operations = list(img.applied_operations)
            d[key] = out
        return d


    def _pop_own(self, img: MetaTensor, key: Hashable) -> dict:
        """This window's entry of ``img``'s trace, removed: the newest one of this transform
        (a reconstruction may follow it; found on every MONAI version, not only those that
        look past other entries). Refused when the image's grid changed since the window but
        the trace records no change of grid after it: ``Invertd`` gave the image the trace and
        metadata of another key (``orig_keys``), whose geometry it would then carry."""
        from monai.utils import TraceKeys

        ops = list(img.applied_operations)
        for i in range(len(ops) - 1, -1, -1):
            if self._transforms_match(ops[i]):
                break
        else:
            return self.pop_transform(img)  # MONAI's own error: no entry of this window
        size = tuple(int(v) for v in ops[i].get(TraceKeys.ORIG_SIZE, ()))
        # a later entry (a reconstruction, SpatialPadd, Spacingd...) explains a changed shape;
        # none does when Invertd handed over the trace of the key the window was applied to
        if size and size != tuple(img.shape[1:]) and not ops[i + 1:]:
            raise MedreconInputError(
                f"{key!r} is {tuple(img.shape[1:])} but its trace is that of a "
                f"{size} image with no change of grid since the window: Invertd gave it the "
                "trace and geometry of another key (orig_keys), the input's. Keep the result "
                "under the input's key (Reconstructd without output_keys) and use "
                "Invertd(keys='image', transform=window), or call "
                "window.inverse({'image': result}) on the result itself.")
        op = ops.pop(i)
        img.applied_operations = ops
        return op


# ------------------------------------------------------------------------------ degradation
def _check_finite_image(x: torch.Tensor) -> None:
    """Refuse NaN/Inf voxels before a degradation (as the other transforms do: they came back
    as NaN measurements without a word)."""
    from medrecon.io._paths import check_finite

    check_finite(x, what="the image to degrade",
                 fix="Replace them (e.g. numpy.nan_to_num(x, nan=0.0)) before degrading it.")


class SimulateDegradation(Randomizable, Transform):
    """Degrade a clean channel-first MetaTensor at its native resolution (seeded).

    * ``sr``: blur by the SR ``kernel`` and decimate by ``scale`` in the plane across
      ``slice_axis`` (spatial axis, default the last; 2D images: their plane); the affine
      keeps the field of view, and the change of grid is recorded in ``applied_operations``
      (without an inverse: ``Invertd`` across it stops instead of undoing earlier steps on
      the wrong grid).
    * ``inpaint``: zero the pixels of a seeded mask (``mask_type``) and return it (nonzero =
      missing).
    * ``deblur`` / ``denoise``: blur and/or add Gaussian noise of ``noise_sigma`` (in the
      image's intensity units).

    Randomness (noise, inpainting masks) is MONAI's: with ``seed=None`` (the default) each
    call draws its seed from the transform's random state, so the items of a dataset differ
    and ``set_random_state`` / ``monai.utils.set_determinism`` (through ``Compose``) make a run
    repeat; an integer ``seed`` gives every call the same degradation.

    Returns the degraded image, and for ``inpaint`` also the mask.
    """

    backend = BACKENDS

    def __init__(self, task: str, *, scale: int = 4, kernel: str = "box",
                 slice_axis: int | None = None, mask_type: str = "center_box",
                 noise_sigma: float = 0.0, seed: int | None = None) -> None:
        from medrecon.pipeline import _check_int
        from medrecon.solvers._common import SEED_LIMIT

        if task not in ("sr", "inpaint", "deblur", "denoise"):
            raise MedreconInputError(f"SimulateDegradation task {task!r}; expected sr, inpaint, "
                                     "deblur or denoise (k-space: SimulateDegradationd with "
                                     "task='mri').")
        self.task, self.scale, self.kernel = task, int(scale), kernel
        self.slice_axis, self.mask_type = slice_axis, mask_type
        self.noise_sigma = float(noise_sigma)
        # the pipeline's seed rule (an integer from 0 to 2**63 - 1); None: drawn per call
        self.seed = None if seed is None else _check_int("seed", seed, minimum=0,
                                                         limit=SEED_LIMIT)
        self._seed = 0 if seed is None else self.seed

    def randomize(self, data: Any = None) -> None:
        """The seed of this call: ``seed``, else one drawn from the random state."""
        self._seed = self.seed if self.seed is not None else int(self.R.randint(2**31))

    def _noise(self, x: torch.Tensor) -> torch.Tensor:
        if not self.noise_sigma:
            return x
        g = torch.Generator().manual_seed(self._seed)
        return x + self.noise_sigma * torch.randn(x.shape, generator=g, dtype=x.dtype)

    def __call__(self, img: Any) -> Any:
        self.randomize()
        return self.apply(img)

    def apply(self, img: Any) -> Any:
        """Degrade ``img`` with the current draw (:meth:`randomize` is not called: the keys of
        one :class:`SimulateDegradationd` call share it)."""
        img = _as_metatensor(img)
        if img.shape[0] != 1 or img.ndim not in (3, 4):
            raise MedreconInputError(f"expected a channel-first image (1, X, Y[, Z]); got "
                                     f"{tuple(img.shape)}.")
        _check_finite_image(img.as_tensor())
        out = self._degrade(img)
        return tuple(_out(o) for o in out) if isinstance(out, tuple) else _out(out)

    def _degrade(self, img: MetaTensor) -> Any:
        from medrecon.io import MedicalImage
        from medrecon.physics import build_operator

        vol = img.as_tensor()[0].float()
        two_d = vol.ndim == 2
        if two_d:
            vol = vol[..., None]
        axis = 2 if (two_d or self.slice_axis is None) else int(self.slice_axis)
        if self.task == "sr":
            from medrecon.realscan import simulate_lowres

            aff = np.asarray(img.affine, dtype=np.float64)
            if aff.shape == (3, 3):
                full = np.eye(4)
                full[:2, :2], full[:2, 3] = aff[:2, :2], aff[:2, 2]
                aff = full
            lr = simulate_lowres(MedicalImage(vol.numpy(), aff), scale=self.scale,
                                 kernel=self.kernel, slice_axis=axis)
            arr = torch.from_numpy(lr.array)
            arr = self._noise(arr[..., 0] if two_d else arr)
            out_aff = torch.as_tensor(lr.affine)
            if img.affine.shape == (3, 3):
                a2 = torch.eye(3, dtype=torch.float64)
                a2[:2, :2], a2[:2, 2] = out_aff[:2, :2], out_aff[:2, 3]
                out_aff = a2
            op = record_operation({"task": "sr", "scale": self.scale, "seed": self._seed},
                                  tuple(img.shape[1:]), np.asarray(img.affine),
                                  name="SimulateDegradation")
            return MetaTensor(arr[None], meta=regridded_meta(img.meta, out_aff),
                              applied_operations=regridded_operations(img.applied_operations, op))
        s = torch.movedim(vol, axis, 0)[:, None]  # [N, 1, a, b]
        size = (s.shape[-2], s.shape[-1])
        if self.task == "inpaint":
            op = build_operator("inpaint", img_size=size, seed=self._seed, mask_type=self.mask_type)
            observed = op.mask.reshape(-1, *size)[0] > 0.5
            y = s * observed
            missing = (~observed).expand_as(s[:, 0]).float()
            missing = torch.movedim(missing, 0, axis)
            y = torch.movedim(y[:, 0], 0, axis)
            if two_d:
                y, missing = y[..., 0], missing[..., 0]
            return _like(img, y), _like(img, missing)
        if self.task == "deblur":
            op = build_operator("deblur", img_size=size, seed=self._seed)
            with torch.no_grad():
                s = op.A(s.double()).float()
        y = self._noise(torch.movedim(s[:, 0], 0, axis))
        if two_d:
            y = y[..., 0]
        return _like(img, y)


class SimulateDegradationd(Randomizable, MapTransform):
    """Dictionary form of :class:`SimulateDegradation`, plus simulated k-space.

    For ``task="mri"`` the keys follow :mod:`monai.apps.reconstruction`
    (``RandomKspaceMaskd`` / ``EquispacedKspaceMaskd``): ``<key>_masked`` holds the
    undersampled centred k-space (complex, channel-first), ``<key>_masked_ifft`` the
    zero-filled image and ``mask_key`` the sampling mask; the mask comes from medrecon's seeded
    generators (``mask_type`` random / equispaced / gaussian2d / poisson2d). For
    ``task="inpaint"`` the mask (nonzero = missing) goes to ``mask_key``. Randomness as
    :class:`SimulateDegradation` (``seed=None``: drawn per call from the random state).

    Args:
        keys: Keys of clean images.
        task: ``"sr"``, ``"inpaint"``, ``"deblur"``, ``"denoise"`` or ``"mri"``.
        mask_key: Output key of the inpainting or sampling mask. Default ``"mask"``.
        acceleration, center_fraction: MRI undersampling. Defaults 4 and 0.08.
        allow_missing_keys: Skip absent keys.
        **kwargs: as :class:`SimulateDegradation` (``mask_type`` also names the MRI pattern).
    """

    backend = BACKENDS

    def __init__(self, keys: KeysCollection, task: str, *, mask_key: str = "mask",
                 acceleration: float = 4.0, center_fraction: float = 0.08,
                 allow_missing_keys: bool = False, **kwargs: Any) -> None:
        super().__init__(keys, allow_missing_keys)
        self.task, self.mask_key = task, mask_key
        self.acceleration, self.center_fraction = float(acceleration), float(center_fraction)
        self.kwargs = dict(kwargs)
        # for k-space the image transform only draws the seeds (its noise-free "denoise")
        self.sim = (SimulateDegradation(task, **kwargs) if task != "mri" else
                    SimulateDegradation("denoise", seed=kwargs.get("seed")))

    def set_random_state(self, seed: int | None = None,
                         state: np.random.RandomState | None = None) -> "SimulateDegradationd":
        super().set_random_state(seed, state)
        self.sim.set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        self.sim.randomize()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()  # one draw per call, shared by the keys (as MONAI's Rand*d transforms)
        for key in self.key_iterator(d):
            if self.task == "mri":
                self._kspace(d, key, self.sim._seed)
            elif self.task == "inpaint":
                d[key], d[self.mask_key] = self.sim.apply(d[key])
            else:
                d[key] = self.sim.apply(d[key])
        return d

    def _kspace(self, d: dict, key: Hashable, seed: int) -> None:
        from monai.networks.blocks.fft_utils_t import fftn_centered_t, ifftn_centered_t

        from medrecon.physics import build_operator

        img = _as_metatensor(d[key])
        x = img.as_tensor()[0].float()
        if x.ndim != 2:
            raise MedreconInputError("simulated k-space needs a 2D image (1, X, Y); slice volumes "
                                     "first.")
        _check_finite_image(x)
        op = build_operator("mri", img_size=tuple(x.shape), seed=seed,
                            mask_type=self.kwargs.get("mask_type", "random"),
                            acceleration=self.acceleration, center_fraction=self.center_fraction)
        m = (op.mask.reshape(-1, *x.shape)[0] > 0).float()
        # MONAI's reconstruction layout: complex as a trailing axis of 2 (real, imaginary)
        k = fftn_centered_t(torch.stack([x, torch.zeros_like(x)], -1), spatial_dims=2,
                            is_complex=True) * m[..., None]
        zf = ifftn_centered_t(k, spatial_dims=2, is_complex=True)
        d[f"{key}_masked"] = _out(MetaTensor(k[None], meta={**img.meta, "affine": img.affine}))
        d[f"{key}_masked_ifft"] = _out(_like(img, zf.pow(2).sum(-1).sqrt()))  # magnitude
        d[self.mask_key] = _out(_like(img, m))


def _like(img: MetaTensor, arr: torch.Tensor, *, channels: bool = False,
          keep_dtype: bool = False) -> MetaTensor:
    """A channel-first MetaTensor of ``arr`` (without a channel axis, or with its own when
    ``channels``; float32 unless ``keep_dtype``) with ``img``'s geometry."""
    meta = {**img.meta, "affine": img.affine}
    arr = arr if channels else arr[None]
    return MetaTensor(arr if keep_dtype else arr.float(), meta=meta,
                      applied_operations=list(img.applied_operations))
