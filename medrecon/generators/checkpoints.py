"""Checkpoint import and export without code execution.

Three formats are read:

* **medrecon** (ours): ``<name>.safetensors`` (weights only) + ``<name>.json`` (class,
  constructor kwargs, sha256 of the weights file, medrecon version). Written by
  :func:`save_generator`; the sha256 is verified on load.
* **NVIDIA stylegan2-ada-pytorch / stylegan3-era** network pickles (``{G, D, G_ema, ...}``
  of "persistent" objects). NVIDIA's loader ``exec`` s the Python source stored in the
  pickle; we never do. A restricted unpickler maps the reconstruct function and
  ``dnnlib.util.EasyDict`` to inert stubs, allows only the torch tensor-rebuild functions,
  ``collections.OrderedDict`` and numeric numpy scalars/arrays, and refuses everything else
  with :class:`~medrecon.errors.CheckpointError` naming the class. Constructor kwargs
  (``_init_kwargs``) and parameters/buffers are then read from the stubs into our modules.
* **TensorFlow StyleGAN2(-ADA)** network pickles (``(G, D, Gs)`` of
  ``dnnlib.tflib.network.Network``; BRGM's released priors), converted variable by variable.

Every loader returns our own :class:`~medrecon.generators.Generator` /
:class:`~medrecon.generators.Discriminator` in eval mode with ``requires_grad=False``.
"""

from __future__ import annotations

import _compat_pickle
import contextvars
import hashlib
import io
import json
import math
import os
import pickle
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import medrecon
from medrecon.errors import CheckpointError, MedreconInputError, MissingWeightsError
from medrecon.generators.networks import Discriminator, Generator
from medrecon.generators.ops import ACTIVATIONS

__all__ = [
    "NETWORK_KEYS",
    "load_generator",
    "load_network_pickle",
    "read_generator_config",
    "save_generator",
    "save_state_dict",
    "sha256_file",
]

#: Which network of a training pickle to read.
NETWORK_KEYS = ("G_ema", "G", "D")
FORMAT_NAME = "medrecon.network"
FORMAT_VERSION = 1
_CLASSES: dict[str, type[nn.Module]] = {"Generator": Generator, "Discriminator": Discriminator}
_PICKLE_SUFFIXES = (".pkl", ".pickle")


# ----------------------------------------------------------------------------------------
# Our format


def sha256_file(path: str | os.PathLike, *, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(weights, json)`` paths for ``path`` given with or without a suffix."""
    p = Path(path)
    if p.suffix in (".safetensors", ".json", ".pt", ".pth"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def save_generator(
    net: nn.Module,
    path: str | os.PathLike,
    *,
    dtype: str = "float32",
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write a network in our format: ``<path>.safetensors`` + ``<path>.json``.

    Args:
        net: A :class:`Generator` or :class:`Discriminator` (anything with ``init_kwargs``
            whose class is one of ours).
        path: Output path, with or without the ``.safetensors`` / ``.json`` suffix.
        dtype: Storage dtype of floating tensors, ``'float32'`` (exact) or ``'float16'``
            (half the size, for shipping; loaded back as float32).
        metadata: Extra JSON-serialisable information stored in the JSON file.

    Returns:
        The path of the weights file.

    Raises:
        MedreconInputError: Unknown network class or dtype.
    """
    from safetensors.torch import save_file

    cls = type(net).__name__
    if cls not in _CLASSES or not hasattr(net, "init_kwargs"):
        raise MedreconInputError(f"save_generator got a {cls}; expected a medrecon Generator or Discriminator.")
    if dtype not in ("float32", "float16"):
        raise MedreconInputError(f"dtype={dtype!r}: expected 'float32' or 'float16'.")
    weights_path, json_path = _paths(path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    store = getattr(torch, dtype)
    tensors = {
        k: (v.detach().to("cpu", store) if v.is_floating_point() else v.detach().cpu()).contiguous()
        for k, v in net.state_dict().items()
    }
    save_file(tensors, str(weights_path), metadata={"format": FORMAT_NAME, "class": cls})
    config = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "class": cls,
        "kwargs": _jsonable(net.init_kwargs),
        "weights": weights_path.name,
        "sha256": sha256_file(weights_path),
        "dtype": dtype,
        "num_tensors": len(tensors),
        "medrecon_version": medrecon.__version__,
        "metadata": _jsonable(metadata or {}),
    }
    json_path.write_text(json.dumps(config, indent=2, sort_keys=False) + "\n")
    return weights_path


def save_state_dict(net: nn.Module, path: str | os.PathLike, *, dtype: str = "float32") -> Path:
    """Write ``net``'s plain state dict with ``torch.save`` (MONAI bundles' ``models/model.pt``).

    Only tensors (float ones stored as ``dtype``), so ``torch.load(path, weights_only=True)``
    reads it and ``load_state_dict`` casts to the network's precision.
    """
    if dtype not in ("float32", "float16"):
        raise MedreconInputError(f"dtype={dtype!r}: expected 'float32' or 'float16'.")
    store = getattr(torch, dtype)
    state = {k: (v.detach().to("cpu", store) if v.is_floating_point() else v.detach().cpu())
             for k, v in net.state_dict().items()}
    torch.save(state, Path(path))
    return Path(path)


def read_generator_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate the JSON half of our format (no weights are loaded)."""
    _, json_path = _paths(path)
    if not json_path.is_file():
        raise MissingWeightsError(
            f"No network config {json_path} next to {path}. Our format is <name>.safetensors + <name>.json; "
            "convert a .pkl once with `medrecon priors import FILE.pkl -o OUT`."
        )
    try:
        config = json.loads(json_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{json_path} is not valid JSON ({e}); re-export the network with save_generator.") from e
    if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{json_path} is not a medrecon network config (format={config.get('format')!r}).")
    if config.get("class") not in _CLASSES:
        raise CheckpointError(f"{json_path}: unknown network class {config.get('class')!r}; expected one of {list(_CLASSES)}.")
    return config


def _load_ours(path: Path, *, verify: bool) -> nn.Module:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config = read_generator_config(path)
    _, json_path = _paths(path)
    name = config.get("weights", _paths(path)[0].name)
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        raise CheckpointError(f"{json_path}: its weights entry {name!r} is not a file name "
                              "beside it (a path elsewhere is never read); repair the file or "
                              "export the prior again.")
    weights_path = json_path.with_name(name)
    if not weights_path.is_file():
        raise MissingWeightsError(f"Weights file {weights_path} named in {json_path} does not exist.")
    if verify:
        digest = sha256_file(weights_path)
        if digest != config.get("sha256"):
            raise CheckpointError(
                f"sha256 mismatch for {weights_path}: file has {digest}, {json_path.name} expects "
                f"{config.get('sha256')}. The file is corrupt or was modified; re-download or re-export it."
            )
    try:
        if weights_path.suffix == ".safetensors":
            state = load_file(str(weights_path))
        else:
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except (SafetensorError, RuntimeError, pickle.UnpicklingError, OSError) as e:
        raise CheckpointError(f"Cannot read weights {weights_path}: {e}") from e
    net = _build(config["class"], config["kwargs"], source=str(json_path),
                 holds=_held_values(state.values()))
    _load_state(net, {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, source=str(weights_path))
    return net


#: Constructor arguments that are numbers or None (a text there built a network that failed
#: only when run).
_NUMERIC_KWARGS = ("conv_clamp", "lr_multiplier", "w_avg_beta", "mbstd_group_size",
                   "mbstd_num_channels", "channel_base", "channel_max", "num_fp16_res")


def _check_kwarg_values(kwargs: Any, *, source: str, depth: int = 0) -> None:
    """Constructor arguments are finite numbers where they are numbers, numbers (or None)
    where a network multiplies by them, and nested at most a few levels: NaN learning-rate
    multipliers made NaN networks, a conv_clamp of 'x' failed only in eval."""
    if depth > 4:
        raise CheckpointError(f"{source}: its constructor arguments nest too deep; the file is "
                              "corrupt or hostile.")
    items = (kwargs.items() if isinstance(kwargs, dict)
             else enumerate(kwargs) if isinstance(kwargs, (list, tuple)) else [])
    for k, v in items:
        if isinstance(v, (dict, list, tuple)):
            if k == "activation":
                raise CheckpointError(f"{source}: its argument activation={v!r} is not a name; "
                                      "the file is corrupt or foreign.")
            _check_kwarg_values(v, source=source, depth=depth + 1)
        elif isinstance(v, float) and not math.isfinite(v):
            raise CheckpointError(f"{source}: its argument {k}={v!r} is not finite; the file is "
                                  "corrupt.")
        elif k in _NUMERIC_KWARGS and v is not None and (
                isinstance(v, bool) or not isinstance(v, (int, float))):
            raise CheckpointError(f"{source}: its argument {k}={v!r} is not a number; the file "
                                  "is corrupt or foreign.")
        elif k == "activation" and (not isinstance(v, str) or v not in ACTIVATIONS):
            raise CheckpointError(f"{source}: its argument activation={v!r} is none of "
                                  f"{', '.join(sorted(ACTIVATIONS))}; the file is corrupt or "
                                  "foreign.")


def _held_values(tensors: Any) -> int:
    """How many values the tensors' storages really hold: each storage once, whatever views
    of it claim (a stride-0 ``expand`` of one stored float counted as millions by ``numel``)."""
    held: dict[tuple[int, int], int] = {}
    for t in tensors:
        st = t.untyped_storage()
        held[(st.data_ptr(), st.nbytes())] = st.nbytes() // max(1, t.element_size())
    return sum(held.values())


def _build(cls_name: str, kwargs: dict[str, Any], *, source: str,
           holds: int | None = None) -> nn.Module:
    """The network a file describes, built on the ``meta`` device first: sizes that make no
    network (a negative ``z_dim``), or a network of more values than the file's tensors hold
    (``holds``; a 400-byte pickle claimed 40 G of them), are refused before any allocation."""
    _check_kwarg_values(kwargs, source=source)
    try:
        with torch.device("meta"):
            probe = _CLASSES[cls_name](**kwargs)
    except TypeError as e:
        raise CheckpointError(f"{source}: constructor arguments {sorted(kwargs)} do not fit {cls_name} ({e}).") from e
    except (RuntimeError, ValueError, ZeroDivisionError, OverflowError, KeyError,
            AttributeError, RecursionError) as e:
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise CheckpointError(f"{source}: its {cls_name} arguments make no network ({first}); "
                              "the file is corrupt or foreign.") from e
    n = sum(t.numel() for t in probe.parameters())  # buffers (filters) may not be stored
    if holds is not None and n > holds:
        raise CheckpointError(
            f"{source}: its {cls_name} would hold {n} values but the file's tensors hold only "
            f"{holds}; the file is corrupt or foreign.")
    return _CLASSES[cls_name](**kwargs)


def _load_state(net: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not match the {type(net).__name__} it describes: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}."
        )
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{source}: tensor {k} has shape {list(state[k].shape)}, expected {list(v.shape)}.")
    check_finite_state(state, source=source)
    net.load_state_dict(state, strict=True)


def check_finite_state(state: dict[str, torch.Tensor], *, source: str) -> None:
    """Refuse weights holding NaN or infinite values (a diverged run, a damaged file): they
    were accepted and gave NaN images or a meaningless PSNR later."""
    bad = [k for k, t in state.items()
           if isinstance(t, torch.Tensor) and t.is_floating_point()
           and not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointError(
            f"{source}: its weights hold NaN or infinite values ({', '.join(bad[:3])}"
            f"{', ...' if len(bad) > 3 else ''}); the training diverged or the file is corrupt. "
            "Use an earlier checkpoint or export.")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise MedreconInputError(f"Value {obj!r} of type {type(obj).__name__} cannot be stored in a network config.")


# ----------------------------------------------------------------------------------------
# Restricted unpickling


class _EasyDict(dict):
    """Inert stand-in for ``dnnlib.util.EasyDict`` (a dict with attribute access)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class _PersistentObject:
    """What an NVIDIA persistent object unpickles to: its class name and state, nothing run."""

    def __init__(self, meta: dict[str, Any]) -> None:
        if not isinstance(meta, dict):
            raise CheckpointError(f"Malformed persistent object: metadata is a {type(meta).__name__}, not a dict.")
        self.type = meta.get("type")
        self.version = meta.get("version")
        self.class_name = meta.get("class_name")
        self.state = meta.get("state")
        # The stored module source is kept only as text (to tell StyleGAN2 from StyleGAN3); it
        # is never compiled or executed.
        src = meta.get("module_src")
        self.module_src = src if isinstance(src, str) else ""
        if self.type != "class" or not isinstance(self.class_name, str) or not isinstance(self.state, dict):
            raise CheckpointError(
                f"Malformed persistent object (type={self.type!r}, class_name={self.class_name!r}); "
                "this is not a stylegan2-ada-pytorch network pickle."
            )

    def __repr__(self) -> str:
        return f"<persistent {self.class_name}>"


def _reconstruct_persistent_obj(meta: dict[str, Any]) -> _PersistentObject:
    return _PersistentObject(meta)


class _TFNetwork:
    """Inert stand-in for ``dnnlib.tflib.network.Network``; keeps the pickled state dict."""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise CheckpointError(f"Malformed TensorFlow network: state is a {type(state).__name__}, not a dict.")
        self.state = state

    def __repr__(self) -> str:
        return f"<tf Network {getattr(self, 'state', {}).get('name')!r}>"


_STORAGE_ITEMSIZE = {
    "DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2,
    "LongStorage": 8, "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1,
    "BoolStorage": 1, "UntypedStorage": 1,
}


def _legacy_storage_bytes(b: bytes) -> int:
    """Bytes of storage a legacy ``torch.save`` payload claims, read without allocating them.

    The payload is three small pickles (magic number, protocol, system info), then the object
    pickle whose persistent ids ``('storage', type, key, location, numel, ...)`` name each
    storage's size; torch allocates that size before reading the data.
    """
    total = 0

    class _Peek(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if module == "torch" and name in _STORAGE_ITEMSIZE:
                return name
            if module == "torch" and name in ("float32", "float16", "float64", "bfloat16", "int64",
                                              "int32", "int16", "int8", "uint8", "bool"):
                return name
            if (module, name) == ("collections", "OrderedDict"):
                return OrderedDict
            raise CheckpointError(f"refusing {module}.{name} inside a tensor storage payload.")

        def persistent_load(self, pid: Any) -> Any:
            nonlocal total
            if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage":
                total += int(pid[4]) * _STORAGE_ITEMSIZE.get(str(pid[1]), 8)
            return None

    f = io.BytesIO(b)
    for _ in range(4):  # magic number, protocol version, sys info, the object
        _Peek(f).load()
    return total


def _load_storage_from_bytes(b: bytes) -> Any:
    # torch storages pickle as a legacy torch.save payload; read it with the weights-only loader,
    # after checking that the storage it claims is in the payload (torch allocates first).
    try:
        claimed = _legacy_storage_bytes(b)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError) as exc:
        raise CheckpointError(f"a tensor storage payload is malformed ({type(exc).__name__}).") from None
    if claimed > len(b):
        raise CheckpointError(
            f"a tensor storage claims {claimed:,} bytes but its payload holds {len(b):,}; the "
            "pickle is corrupt or hostile.")
    return torch.load(io.BytesIO(b), map_location="cpu", weights_only=True)


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    # Protocol 0-2 pickles spell bytes objects as _codecs.encode(str, 'latin1').
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise CheckpointError(f"Refusing _codecs.encode with encoding {encoding!r}.")
    return text.encode("latin1")


def _numpy_scalar(dtype: np.dtype, data: bytes | None = None) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biufc":
        raise CheckpointError(f"Refusing numpy scalar of dtype {dtype!r} (only numeric scalars are allowed).")
    return np.frombuffer(data, dtype=dtype)[0].copy()


class _PickledNdarray:
    """``numpy.ndarray`` as a pickle names it: the subtype numpy's ``_reconstruct`` rebuilds
    (within the allocation budget). Called directly it would allocate any size before the
    budget sees it (a 736 KB pickle asked for 4.9 GB): refused."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        raise CheckpointError("Refusing a direct numpy.ndarray(...) call in the pickle (numpy "
                              "pickles rebuild arrays with _reconstruct); it is hostile.")


def _numpy_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not np.ndarray and subtype is not _PickledNdarray:
        raise CheckpointError(f"Refusing numpy array subclass {subtype!r}.")
    try:
        dt = np.dtype(dtype)
        n = 1
        for d in (shape if isinstance(shape, (tuple, list)) else (shape,)):
            n *= int(d)
    except (TypeError, ValueError):
        raise CheckpointError(f"Refusing numpy array of shape {shape!r} / dtype {dtype!r}.") from None
    # numpy pickles rebuild empty arrays and fill them from bytes in the file (__setstate__
    # checks the sizes), so a legitimate file never asks for more than it holds
    budget = _ALLOC_BUDGET.get()
    if n * dt.itemsize > budget[0]:
        raise CheckpointError(
            f"the pickle asks for a numpy array of {n * dt.itemsize:,} bytes (shape {shape!r}), "
            f"more than the file could hold ({budget[1]:,} bytes); it is corrupt or hostile.")
    budget[0] -= n * dt.itemsize
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _numpy_dtype(obj: Any, align: bool = False, copy: bool = False) -> np.dtype:
    dt = np.dtype(obj, align, copy)
    if dt.kind not in "biufcV" or dt.hasobject:
        raise CheckpointError(f"Refusing numpy dtype {dt!r} (only numeric dtypes are allowed).")
    return dt


def _object_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    if cls not in (_EasyDict, _TFNetwork, OrderedDict, dict) or base not in (object, dict):
        raise CheckpointError(f"Refusing to reconstruct {cls!r}.")
    obj = base.__new__(cls) if base is object else dict.__new__(cls)
    if base is dict and state is not None:
        dict.__init__(obj, state)
    return obj


_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("dnnlib", "EasyDict"): _EasyDict,
    ("dnnlib.tflib.network", "Network"): _TFNetwork,
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "object"): object,
    ("builtins", "dict"): dict,
    ("copyreg", "_reconstructor"): _object_reconstructor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("torch", "Size"): torch.Size,
    ("_codecs", "encode"): _latin1_encode,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy", "ndarray"): _PickledNdarray,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
}
if hasattr(torch._utils, "_rebuild_parameter_with_state"):
    _ALLOWED[("torch._utils", "_rebuild_parameter_with_state")] = torch._utils._rebuild_parameter_with_state


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only :data:`_ALLOWED` globals and refuses everything else."""

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 era names (__builtin__, copy_reg) appear in protocol 0-2 pickles.
        if module in _compat_pickle.IMPORT_MAPPING or (module, name) in _compat_pickle.NAME_MAPPING:
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"Refusing to load {module}.{name}: the pickle references a class or function that a "
                "StyleGAN2 network pickle does not need, and medrecon never runs code from checkpoint files. "
                "If this is a genuine network, convert it with NVIDIA's tools to a plain state_dict first."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise CheckpointError(
            f"Refusing persistent id {type(pid).__name__} in a network pickle (this looks like a torch.save "
            "checkpoint; load those with torch.load(weights_only=True))."
        )


_ALLOC_BUDGET: contextvars.ContextVar[list[int]] = contextvars.ContextVar("_ALLOC_BUDGET",
                                                                        default=[0, 0])


def _restricted_load(path: Path) -> Any:
    try:
        data = path.read_bytes()  # bounded by the file; no reader pre-allocates a claimed length
    except OSError as e:
        raise MissingWeightsError(f"Cannot read {path}: {e}") from None
    if data[:4] == b"PK\x03\x04":
        raise CheckpointError(
            f"{path} is a torch.save zip checkpoint (a state dict or a training checkpoint), not "
            "an NVIDIA network pickle; medrecon never unpickles those. For a medrecon training "
            "checkpoint use `medrecon train export`; for a plain state dict of our Generator, "
            "load it with torch.load(weights_only=True) and save it with "
            "medrecon.generators.save_generator.")
    token = _ALLOC_BUDGET.set([len(data) + (1 << 20), len(data)])
    try:
        return _RestrictedUnpickler(io.BytesIO(data)).load()
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except MemoryError:
        raise CheckpointError(
            f"{path} asks for more memory than this machine has while unpickling; it is corrupt "
            "or hostile.") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and "allocate" in str(e).lower():
            raise CheckpointError(
                f"{path} asks for more memory than this machine has while unpickling; it is "
                "corrupt or hostile.") from None
        raise CheckpointError(
            f"{path} is not a readable network pickle ({type(e).__name__}: {e}). It may be truncated "
            "(re-download it) or not a StyleGAN2 pickle."
        ) from None
    finally:
        _ALLOC_BUDGET.reset(token)


# ----------------------------------------------------------------------------------------
# NVIDIA (PyTorch) pickles


def _collect_state(obj: _PersistentObject, prefix: str, out: dict[str, torch.Tensor]) -> None:
    state = obj.state
    non_persistent = state.get("_non_persistent_buffers_set") or set()
    for key in ("_parameters", "_buffers"):
        for name, t in (state.get(key) or {}).items():
            if t is None or (key == "_buffers" and name in non_persistent):
                continue
            if not isinstance(t, torch.Tensor):
                raise CheckpointError(f"{prefix}{name} is a {type(t).__name__}, expected a tensor.")
            out[prefix + name] = t.detach()
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, _PersistentObject):
            raise CheckpointError(f"Sub-module {prefix}{name} is a {type(child).__name__}, not a persistent network object.")
        _collect_state(child, f"{prefix}{name}.", out)


def _is_stylegan3(obj: _PersistentObject) -> bool:
    syn = (obj.state.get("_modules") or {}).get("synthesis")
    if isinstance(syn, _PersistentObject):
        return "layer_names" in syn.state or "input" in (syn.state.get("_modules") or {})
    return False


_G_ARGS = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels")
_D_ARGS = ("c_dim", "img_resolution", "img_channels")


def _nvidia_kwargs(obj: _PersistentObject) -> dict[str, Any]:
    args = list(obj.state.get("_init_args") or ())
    kwargs = _plain(dict(obj.state.get("_init_kwargs") or {}))
    names = _G_ARGS if obj.class_name == "Generator" else _D_ARGS
    for name, value in zip(names, args):
        kwargs[name] = value
    if obj.class_name == "Generator":
        syn = dict(kwargs.pop("synthesis_kwargs", {}) or {})
        for key in [k for k in kwargs if k not in _G_ARGS + ("mapping_kwargs",)]:
            syn[key] = kwargs.pop(key)  # stylegan3-era networks_stylegan2 flattens synthesis kwargs
        kwargs["synthesis_kwargs"] = syn
    return kwargs


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _convert_nvidia(obj: Any, *, source: str, key: str) -> nn.Module:
    if not isinstance(obj, _PersistentObject):
        raise CheckpointError(f"{source}: entry {key!r} is a {type(obj).__name__}, not a network.")
    if obj.class_name not in _CLASSES:
        raise CheckpointError(f"{source}: entry {key!r} is a {obj.class_name}; expected a Generator or Discriminator.")
    expected = "Discriminator" if key == "D" else "Generator"
    if obj.class_name != expected:  # a D under G_ema imported as a 'generator'
        raise CheckpointError(
            f"{source}: entry {key!r} is a {obj.class_name}, not a {expected}; the pickle's "
            f"networks are mislabelled. Choose the entry that holds the {expected} (--network).")
    if obj.class_name == "Generator" and _is_stylegan3(obj):
        raise CheckpointError(
            f"{source}: {key} is a StyleGAN3 (alias-free) generator; medrecon implements StyleGAN2 only. "
            "Use a StyleGAN2 / StyleGAN2-ADA network."
        )
    state: dict[str, torch.Tensor] = {}
    _collect_state(obj, "", state)
    net = _build(obj.class_name, _nvidia_kwargs(obj), source=f"{source}[{key}]",
                 holds=_held_values(state.values()))
    _load_state(net, {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, source=f"{source}[{key}]")
    return net


# ----------------------------------------------------------------------------------------
# TensorFlow pickles


def _tf_params(net: _TFNetwork) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}

    def recurse(prefix: str, n: Any) -> None:
        if not isinstance(n, _TFNetwork):
            raise CheckpointError(f"TensorFlow component {prefix!r} is a {type(n).__name__}, not a Network.")
        for item in n.state.get("variables") or []:
            name, value = item
            arr = np.asarray(value)
            if arr.dtype.kind not in "biuf":
                raise CheckpointError(f"TensorFlow variable {prefix}{name} has dtype {arr.dtype}; expected numeric.")
            out[prefix + str(name)] = arr
        for name, comp in (n.state.get("components") or {}).items():
            recurse(f"{prefix}{name}/", comp)

    recurse("", net)
    return out


class _KwargReader:
    def __init__(self, static_kwargs: dict[str, Any], source: str) -> None:
        self.kw = dict(static_kwargs or {})
        self.known: set[str] = set()
        self.source = source

    def __call__(self, name: str, default: Any = None, none: Any = None) -> Any:
        self.known.add(name)
        val = self.kw.get(name, default)
        return _plain(val) if val is not None else none

    def check(self) -> None:
        unknown = sorted(set(self.kw) - self.known)
        if unknown:
            raise CheckpointError(
                f"{self.source}: unknown TensorFlow network option(s) {unknown}; this is not a StyleGAN2 config-e/f "
                "or StyleGAN2-ADA network that medrecon can convert."
            )


def _tf_version_ok(net: _TFNetwork, source: str) -> None:
    if int(net.state.get("version", 0)) < 4:
        raise CheckpointError(f"{source}: TensorFlow pickle version {net.state.get('version')} is too old (need >= 4).")


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _convert_tf_generator(net: _TFNetwork, *, source: str) -> Generator:
    _tf_version_ok(net, source)
    kw = _KwargReader(net.state.get("static_kwargs"), source)
    kwargs = dict(
        z_dim=kw("latent_size", 512),
        c_dim=kw("label_size", 0),
        w_dim=kw("dlatent_size", 512),
        img_resolution=kw("resolution", 1024),
        img_channels=kw("num_channels", 3),
        mapping_kwargs=dict(
            num_layers=kw("mapping_layers", 8),
            embed_features=kw("label_fmaps", None),
            layer_features=kw("mapping_fmaps", None),
            activation=kw("mapping_nonlinearity", "lrelu"),
            lr_multiplier=kw("mapping_lrmul", 0.01),
            w_avg_beta=kw("w_avg_beta", 0.995, none=1),
        ),
        synthesis_kwargs=dict(
            channel_base=kw("fmap_base", 16384) * 2,
            channel_max=kw("fmap_max", 512),
            num_fp16_res=kw("num_fp16_res", 0),
            conv_clamp=kw("conv_clamp", None),
            architecture=kw("architecture", "skip"),
            resample_filter=kw("resample_kernel", [1, 3, 3, 1]),
            use_noise=kw("use_noise", True),
            activation=kw("nonlinearity", "lrelu"),
        ),
    )
    for ignored in ("truncation_psi", "truncation_cutoff", "style_mixing_prob", "structure"):
        kw(ignored)
    kw.check()
    tf = _tf_params(net)
    res = kwargs["img_resolution"]
    for name in list(tf):
        m = re.fullmatch(r"ToRGB_lod(\d+)/(.*)", name)
        if m:  # StyleGAN2 'orig' architecture names its ToRGB layers by level of detail.
            r = res // 2 ** int(m.group(1))
            tf[f"{r}x{r}/ToRGB/{m.group(2)}"] = tf[name]
            kwargs["synthesis_kwargs"]["architecture"] = "orig"
    G = _build("Generator", kwargs, source=source, holds=sum(np.size(v) for v in tf.values()))

    def get(name: str) -> np.ndarray:
        if name not in tf:
            raise CheckpointError(f"{source}: TensorFlow variable {name!r} is missing; the pickle is incomplete or foreign.")
        return tf[name]

    def conv(name: str, flip: bool = False) -> torch.Tensor:
        w = get(name)  # [kh, kw, in, out]
        if flip:
            w = w[::-1, ::-1]
        return _t(w.transpose(3, 2, 0, 1))

    def log2(r: str) -> int:
        return int(np.log2(int(r)))

    rules: list[tuple[str, Any]] = [
        (r"mapping\.w_avg", lambda: _t(get("dlatent_avg"))),
        (r"mapping\.embed\.weight", lambda: _t(get("mapping/LabelEmbed/weight").T)),
        (r"mapping\.embed\.bias", lambda: _t(get("mapping/LabelEmbed/bias"))),
        (r"mapping\.fc(\d+)\.weight", lambda i: _t(get(f"mapping/Dense{i}/weight").T)),
        (r"mapping\.fc(\d+)\.bias", lambda i: _t(get(f"mapping/Dense{i}/bias"))),
        (r"synthesis\.b4\.const", lambda: _t(get("synthesis/4x4/Const/const")[0])),
        (r"synthesis\.b4\.conv1\.weight", lambda: conv("synthesis/4x4/Conv/weight")),
        (r"synthesis\.b4\.conv1\.bias", lambda: _t(get("synthesis/4x4/Conv/bias"))),
        (r"synthesis\.b4\.conv1\.noise_const", lambda: _t(get("synthesis/noise0")[0, 0])),
        (r"synthesis\.b4\.conv1\.noise_strength", lambda: _t(get("synthesis/4x4/Conv/noise_strength"))),
        (r"synthesis\.b4\.conv1\.affine\.weight", lambda: _t(get("synthesis/4x4/Conv/mod_weight").T)),
        (r"synthesis\.b4\.conv1\.affine\.bias", lambda: _t(get("synthesis/4x4/Conv/mod_bias") + 1)),
        (r"synthesis\.b(\d+)\.conv0\.weight", lambda r: conv(f"synthesis/{r}x{r}/Conv0_up/weight", flip=True)),
        (r"synthesis\.b(\d+)\.conv0\.bias", lambda r: _t(get(f"synthesis/{r}x{r}/Conv0_up/bias"))),
        (r"synthesis\.b(\d+)\.conv0\.noise_const", lambda r: _t(get(f"synthesis/noise{log2(r) * 2 - 5}")[0, 0])),
        (r"synthesis\.b(\d+)\.conv0\.noise_strength", lambda r: _t(get(f"synthesis/{r}x{r}/Conv0_up/noise_strength"))),
        (r"synthesis\.b(\d+)\.conv0\.affine\.weight", lambda r: _t(get(f"synthesis/{r}x{r}/Conv0_up/mod_weight").T)),
        (r"synthesis\.b(\d+)\.conv0\.affine\.bias", lambda r: _t(get(f"synthesis/{r}x{r}/Conv0_up/mod_bias") + 1)),
        (r"synthesis\.b(\d+)\.conv1\.weight", lambda r: conv(f"synthesis/{r}x{r}/Conv1/weight")),
        (r"synthesis\.b(\d+)\.conv1\.bias", lambda r: _t(get(f"synthesis/{r}x{r}/Conv1/bias"))),
        (r"synthesis\.b(\d+)\.conv1\.noise_const", lambda r: _t(get(f"synthesis/noise{log2(r) * 2 - 4}")[0, 0])),
        (r"synthesis\.b(\d+)\.conv1\.noise_strength", lambda r: _t(get(f"synthesis/{r}x{r}/Conv1/noise_strength"))),
        (r"synthesis\.b(\d+)\.conv1\.affine\.weight", lambda r: _t(get(f"synthesis/{r}x{r}/Conv1/mod_weight").T)),
        (r"synthesis\.b(\d+)\.conv1\.affine\.bias", lambda r: _t(get(f"synthesis/{r}x{r}/Conv1/mod_bias") + 1)),
        (r"synthesis\.b(\d+)\.torgb\.weight", lambda r: conv(f"synthesis/{r}x{r}/ToRGB/weight")),
        (r"synthesis\.b(\d+)\.torgb\.bias", lambda r: _t(get(f"synthesis/{r}x{r}/ToRGB/bias"))),
        (r"synthesis\.b(\d+)\.torgb\.affine\.weight", lambda r: _t(get(f"synthesis/{r}x{r}/ToRGB/mod_weight").T)),
        (r"synthesis\.b(\d+)\.torgb\.affine\.bias", lambda r: _t(get(f"synthesis/{r}x{r}/ToRGB/mod_bias") + 1)),
        (r"synthesis\.b(\d+)\.skip\.weight", lambda r: conv(f"synthesis/{r}x{r}/Skip/weight", flip=True)),
        (r".*\.resample_filter", None),
    ]
    _populate(G, rules, source)
    return G


def _convert_tf_discriminator(net: _TFNetwork, *, source: str) -> Discriminator:
    _tf_version_ok(net, source)
    kw = _KwargReader(net.state.get("static_kwargs"), source)
    kwargs = dict(
        c_dim=kw("label_size", 0),
        img_resolution=kw("resolution", 1024),
        img_channels=kw("num_channels", 3),
        architecture=kw("architecture", "resnet"),
        channel_base=kw("fmap_base", 16384) * 2,
        channel_max=kw("fmap_max", 512),
        num_fp16_res=kw("num_fp16_res", 0),
        conv_clamp=kw("conv_clamp", None),
        cmap_dim=kw("mapping_fmaps", None),
        block_kwargs=dict(
            activation=kw("nonlinearity", "lrelu"),
            resample_filter=kw("resample_kernel", [1, 3, 3, 1]),
            freeze_layers=kw("freeze_layers", 0),
        ),
        mapping_kwargs=dict(
            num_layers=kw("mapping_layers", 0),
            embed_features=kw("mapping_fmaps", None),
            layer_features=kw("mapping_fmaps", None),
            activation=kw("nonlinearity", "lrelu"),
            lr_multiplier=kw("mapping_lrmul", 0.1),
        ),
        epilogue_kwargs=dict(
            mbstd_group_size=kw("mbstd_group_size", None),
            mbstd_num_channels=kw("mbstd_num_features", 1),
            activation=kw("nonlinearity", "lrelu"),
        ),
    )
    kw("structure")
    kw.check()
    tf = _tf_params(net)
    res = kwargs["img_resolution"]
    for name in list(tf):
        m = re.fullmatch(r"FromRGB_lod(\d+)/(.*)", name)
        if m:
            r = res // 2 ** int(m.group(1))
            tf[f"{r}x{r}/FromRGB/{m.group(2)}"] = tf[name]
            kwargs["architecture"] = "orig"
    D = _build("Discriminator", kwargs, source=source, holds=sum(np.size(v) for v in tf.values()))

    def get(name: str) -> np.ndarray:
        if name not in tf:
            raise CheckpointError(f"{source}: TensorFlow variable {name!r} is missing; the pickle is incomplete or foreign.")
        return tf[name]

    rules: list[tuple[str, Any]] = [
        (r"b(\d+)\.fromrgb\.weight", lambda r: _t(get(f"{r}x{r}/FromRGB/weight").transpose(3, 2, 0, 1))),
        (r"b(\d+)\.fromrgb\.bias", lambda r: _t(get(f"{r}x{r}/FromRGB/bias"))),
        (r"b(\d+)\.conv(\d+)\.weight", lambda r, i: _t(get(f"{r}x{r}/Conv{i}{['', '_down'][int(i)]}/weight").transpose(3, 2, 0, 1))),
        (r"b(\d+)\.conv(\d+)\.bias", lambda r, i: _t(get(f"{r}x{r}/Conv{i}{['', '_down'][int(i)]}/bias"))),
        (r"b(\d+)\.skip\.weight", lambda r: _t(get(f"{r}x{r}/Skip/weight").transpose(3, 2, 0, 1))),
        (r"mapping\.embed\.weight", lambda: _t(get("LabelEmbed/weight").T)),
        (r"mapping\.embed\.bias", lambda: _t(get("LabelEmbed/bias"))),
        (r"mapping\.fc(\d+)\.weight", lambda i: _t(get(f"Mapping{i}/weight").T)),
        (r"mapping\.fc(\d+)\.bias", lambda i: _t(get(f"Mapping{i}/bias"))),
        (r"b4\.conv\.weight", lambda: _t(get("4x4/Conv/weight").transpose(3, 2, 0, 1))),
        (r"b4\.conv\.bias", lambda: _t(get("4x4/Conv/bias"))),
        (r"b4\.fc\.weight", lambda: _t(get("4x4/Dense0/weight").T)),
        (r"b4\.fc\.bias", lambda: _t(get("4x4/Dense0/bias"))),
        (r"b4\.out\.weight", lambda: _t(get("Output/weight").T)),
        (r"b4\.out\.bias", lambda: _t(get("Output/bias"))),
        (r".*\.resample_filter", None),
    ]
    _populate(D, rules, source)
    return D


def _populate(net: nn.Module, rules: list[tuple[str, Any]], source: str) -> None:
    state = net.state_dict()
    new: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        for pattern, fn in rules:
            m = re.fullmatch(pattern, name)
            if m:
                if fn is not None:
                    value = fn(*m.groups()).reshape(-1) if tensor.ndim == 0 else fn(*m.groups())
                    if value.numel() != tensor.numel() or (tensor.ndim and tuple(value.shape) != tuple(tensor.shape)):
                        raise CheckpointError(
                            f"{source}: converted {name} has shape {list(value.shape)}, expected {list(tensor.shape)}."
                        )
                    new[name] = value.reshape(tensor.shape)
                break
        else:
            raise CheckpointError(f"{source}: no TensorFlow variable maps to {name}.")
    net.load_state_dict(new, strict=False)


# ----------------------------------------------------------------------------------------
# Entry points


def load_network_pickle(path: str | os.PathLike, *, network: str = "G_ema") -> nn.Module:
    """Load one network from an NVIDIA (PyTorch or TensorFlow) StyleGAN2 pickle, safely.

    Args:
        path: ``.pkl`` file.
        network: ``'G_ema'`` (default, the generator to use for inference), ``'G'`` or ``'D'``.

    Returns:
        Our :class:`Generator` / :class:`Discriminator`, eval mode, ``requires_grad=False``.

    Raises:
        CheckpointError: Truncated, foreign or refused content, or an unsupported network.
        MissingWeightsError: The file does not exist.
    """
    if network not in NETWORK_KEYS:
        raise MedreconInputError(f"network={network!r}: expected one of {NETWORK_KEYS}.")
    p = Path(path)
    if not p.is_file():
        raise MissingWeightsError(f"Network pickle {p} does not exist.")
    data = _restricted_load(p)
    if isinstance(data, tuple) and len(data) == 3 and all(isinstance(n, _TFNetwork) for n in data):
        tf_G, tf_D, tf_Gs = data
        if network == "D":
            net: nn.Module = _convert_tf_discriminator(tf_D, source=str(p))
        else:
            net = _convert_tf_generator(tf_Gs if network == "G_ema" else tf_G, source=str(p))
    elif isinstance(data, dict) and any(k in data for k in NETWORK_KEYS):
        if network not in data:
            raise CheckpointError(f"{p} has no {network!r} entry (it holds {sorted(map(str, data))}).")
        net = _convert_nvidia(data[network], source=str(p), key=network)
    else:
        raise CheckpointError(
            f"{p} unpickled to a {type(data).__name__}, not a StyleGAN2 network pickle "
            "(expected a dict with G/D/G_ema or a TensorFlow (G, D, Gs) tuple)."
        )
    return net.eval().requires_grad_(False)


def load_generator(
    path: str | os.PathLike,
    *,
    network: str = "G_ema",
    device: str | torch.device = "cpu",
    verify: bool = True,
) -> nn.Module:
    """Load a network from our format or from an NVIDIA / TensorFlow pickle (auto-detected).

    Args:
        path: ``<name>.safetensors`` / ``<name>.json`` / ``<name>`` (ours, with a ``.pt``
            weights file also accepted when the JSON names it), a directory holding
            ``generator.json`` (a saved prior), or a ``.pkl``.
        network: For pickles: ``'G_ema'`` (default), ``'G'`` or ``'D'``.
        device: Where to put the network.
        verify: Check the sha256 recorded in our JSON (ours only).

    Returns:
        The network, eval mode, ``requires_grad=False``, on ``device``.

    Raises:
        MissingWeightsError: No such file.
        CheckpointError: Corrupt, foreign, tampered or refused file.
    """
    p = Path(path)
    if p.is_dir():
        if (p / "generator.json").is_file():
            p = p / "generator.json"
        else:
            raise MissingWeightsError(f"Directory {p} holds no generator.json (expected a saved prior or our format).")
    if p.suffix.lower() in _PICKLE_SUFFIXES:
        net = load_network_pickle(p, network=network)
    else:
        weights, json_path = _paths(p)
        if not json_path.is_file() and not weights.is_file():
            raise MissingWeightsError(
                f"No network at {path}: expected {weights.name} + {json_path.name}, a prior directory, or a .pkl."
            )
        net = _load_ours(p, verify=verify)
    return net.eval().requires_grad_(False).to(device)
