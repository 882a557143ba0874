"""Checkpoint import/export: our format, NVIDIA persistent pickles, TF StyleGAN2 pickles.

The foreign-format fixtures are built here from tiny random networks with the same pickle
structure as the real files (persistent-object metadata dicts; TF Network states with
(name, ndarray) variables); no third-party pickle is stored in the repository.
"""

from __future__ import annotations

import contextlib
import copyreg
import json
import pickle
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from medrecon.errors import CheckpointError, MedreconInputError, MissingWeightsError
from medrecon.generators import Discriminator, Generator
from medrecon.generators.checkpoints import load_generator, load_network_pickle, save_generator
from medrecon.generators.cli import priors_cli
from tests._tiny import tiny_discriminator, tiny_generator


# ----------------------------------------------------------------------------------------
# Fixture builders (same structure as the real files)


@contextlib.contextmanager
def _fake_modules(**attrs_by_module):
    """Temporarily register modules so pickle can name our fake classes/functions."""
    saved = {}
    for modname, attrs in attrs_by_module.items():
        parts = modname.split(".")
        for i in range(1, len(parts)):
            parent = ".".join(parts[:i])
            if parent not in sys.modules and parent not in saved:
                saved[parent] = None
                sys.modules[parent] = types.ModuleType(parent)
        saved[modname] = sys.modules.get(modname)
        mod = types.ModuleType(modname)
        for k, v in attrs.items():
            v.__module__ = modname
            v.__qualname__ = k
            setattr(mod, k, v)
        sys.modules[modname] = mod
    try:
        yield
    finally:
        for modname, old in saved.items():
            if old is None:
                sys.modules.pop(modname, None)
            else:
                sys.modules[modname] = old


def _reconstruct_persistent_obj(meta):  # pickled by name only; never called in tests
    raise AssertionError("must not be called")


class EasyDict(dict):
    pass


class _Persistent:
    """Pickles like an NVIDIA persistent object: reduce -> (_reconstruct_persistent_obj, (meta,))."""

    def __init__(self, meta):
        self.meta = meta

    def __reduce__(self):
        return (_reconstruct_persistent_obj, (self.meta,))


SENTINEL_SRC = "import pathlib\npathlib.Path({path!r}).write_text('pwned')\nclass Generator: pass\n"


def _persistent_tree(module, class_name, init_kwargs, module_src):
    state = {}
    for k, v in module.__dict__.items():
        if k == "_modules":
            continue
        if isinstance(v, (bool, int, str, type(None))):
            state[k] = v
        elif isinstance(v, float):
            state[k] = np.float64(v)  # NVIDIA stores gains as numpy float64
        elif isinstance(v, (OrderedDict, dict)) and k.startswith("_"):
            state[k] = OrderedDict((n, t) for n, t in v.items())
        elif isinstance(v, set):
            state[k] = set(v)
    state["_modules"] = OrderedDict(
        (n, _persistent_tree(child, type(child).__name__, {}, module_src)) for n, child in module._modules.items()
    )
    state["_init_args"] = ()
    state["_init_kwargs"] = EasyDict(init_kwargs)
    return _Persistent(dict(type="class", version=4, module_src=module_src, class_name=class_name, state=state))


def _easy(d):
    return EasyDict({k: _easy(v) if isinstance(v, dict) else v for k, v in d.items()})


def write_nvidia_pickle(path, *, G, D, G_ema, sentinel=None, flatten_synthesis=False, protocol=4):
    src = SENTINEL_SRC.format(path=str(sentinel or path.with_suffix(".pwned")))
    g_kwargs = G.init_kwargs
    if flatten_synthesis:  # stylegan3-era networks_stylegan2 signature
        g_kwargs.update(g_kwargs.pop("synthesis_kwargs"))
    data = dict(
        G=_persistent_tree(G, "Generator", _easy(g_kwargs), src),
        D=_persistent_tree(D, "Discriminator", _easy(D.init_kwargs), src),
        G_ema=_persistent_tree(G_ema, "Generator", _easy(g_kwargs), src),
        augment_pipe=None,
        training_set_kwargs=EasyDict(resolution=G.img_resolution, use_labels=False),
    )
    with _fake_modules(**{"torch_utils.persistence": {"_reconstruct_persistent_obj": _reconstruct_persistent_obj},
                          "dnnlib.util": {"EasyDict": EasyDict}}):
        with open(path, "wb") as f:
            pickle.dump(data, f, protocol=protocol)


class Network:
    """Pickles like dnnlib.tflib.network.Network (state via __getstate__)."""

    def __init__(self, state):
        self._state = state

    def __getstate__(self):
        return self._state


def _tf_conv(w, flip=False):
    a = w.detach().numpy().transpose(2, 3, 1, 0)  # [out, in, kh, kw] -> [kh, kw, in, out]
    return np.ascontiguousarray(a[::-1, ::-1] if flip else a)


def tf_generator_state(G: Generator, name="G"):
    sd = {k: v.detach() for k, v in G.state_dict().items()}
    m = G.mapping
    mapping_vars = []
    for i in range(m.num_layers):
        mapping_vars += [(f"Dense{i}/weight", sd[f"mapping.fc{i}.weight"].numpy().T.copy()),
                         (f"Dense{i}/bias", sd[f"mapping.fc{i}.bias"].numpy())]
    syn_vars = []
    for res in G.synthesis.block_resolutions:
        b = f"synthesis.b{res}"
        r = f"{res}x{res}"
        layers = [("conv1", "Conv" if res == 4 else "Conv1", False)] if res == 4 else [("conv0", "Conv0_up", True), ("conv1", "Conv1", False)]
        if res == 4:
            syn_vars.append((f"{r}/Const/const", sd[f"{b}.const"].numpy()[None]))
        for ours, tfname, flip in layers:
            syn_vars += [
                (f"{r}/{tfname}/weight", _tf_conv(sd[f"{b}.{ours}.weight"], flip)),
                (f"{r}/{tfname}/bias", sd[f"{b}.{ours}.bias"].numpy()),
                (f"{r}/{tfname}/noise_strength", sd[f"{b}.{ours}.noise_strength"].numpy()),
                (f"{r}/{tfname}/mod_weight", sd[f"{b}.{ours}.affine.weight"].numpy().T.copy()),
                (f"{r}/{tfname}/mod_bias", sd[f"{b}.{ours}.affine.bias"].numpy() - 1),
            ]
        if f"{b}.torgb.weight" in sd:
            syn_vars += [
                (f"{r}/ToRGB/weight", _tf_conv(sd[f"{b}.torgb.weight"])),
                (f"{r}/ToRGB/bias", sd[f"{b}.torgb.bias"].numpy()),
                (f"{r}/ToRGB/mod_weight", sd[f"{b}.torgb.affine.weight"].numpy().T.copy()),
                (f"{r}/ToRGB/mod_bias", sd[f"{b}.torgb.affine.bias"].numpy() - 1),
            ]
        if f"{b}.skip.weight" in sd:
            syn_vars.append((f"{r}/Skip/weight", _tf_conv(sd[f"{b}.skip.weight"], flip=True)))
    log2 = int(np.log2(G.img_resolution))
    for i in range(2 * log2 - 3):
        res = 2 ** ((i + 5) // 2)
        layer = "conv1" if res == 4 or i % 2 == 0 else "conv0"
        syn_vars.append((f"noise{i}", sd[f"synthesis.b{res}.{layer}.noise_const"].numpy()[None, None]))
    sk = G.init_kwargs["synthesis_kwargs"]
    static = dict(latent_size=G.z_dim, dlatent_size=G.w_dim, label_size=G.c_dim, resolution=G.img_resolution,
                  num_channels=G.img_channels, mapping_layers=m.num_layers, fmap_base=sk["channel_base"] // 2,
                  fmap_max=sk["channel_max"], architecture=sk.get("architecture", "skip"), truncation_psi=0.5)
    comp = lambda n, v: Network(dict(version=4, name=n, static_kwargs={}, components={}, variables=v,  # noqa: E731
                                     build_module_src="raise SystemExit('never run')", build_func_name="f"))
    return Network(dict(version=4, name=name, static_kwargs=static,
                        components=EasyDict(mapping=comp("G_mapping", mapping_vars), synthesis=comp("G_synthesis", syn_vars)),
                        build_module_src="raise SystemExit('never run')", build_func_name="G_main",
                        variables=[("dlatent_avg", sd["mapping.w_avg"].numpy()), ("lod", np.float32(0))]))


def tf_discriminator_state(D: Discriminator):
    sd = {k: v.detach() for k, v in D.state_dict().items()}
    v = []
    for res in D.block_resolutions:
        r, b = f"{res}x{res}", f"b{res}"
        if f"{b}.fromrgb.weight" in sd:
            v += [(f"{r}/FromRGB/weight", _tf_conv(sd[f"{b}.fromrgb.weight"])), (f"{r}/FromRGB/bias", sd[f"{b}.fromrgb.bias"].numpy())]
        v += [(f"{r}/Conv0/weight", _tf_conv(sd[f"{b}.conv0.weight"])), (f"{r}/Conv0/bias", sd[f"{b}.conv0.bias"].numpy()),
              (f"{r}/Conv1_down/weight", _tf_conv(sd[f"{b}.conv1.weight"])), (f"{r}/Conv1_down/bias", sd[f"{b}.conv1.bias"].numpy())]
        if f"{b}.skip.weight" in sd:
            v.append((f"{r}/Skip/weight", _tf_conv(sd[f"{b}.skip.weight"])))
    v += [("4x4/Conv/weight", _tf_conv(sd["b4.conv.weight"])), ("4x4/Conv/bias", sd["b4.conv.bias"].numpy()),
          ("4x4/Dense0/weight", sd["b4.fc.weight"].numpy().T.copy()), ("4x4/Dense0/bias", sd["b4.fc.bias"].numpy()),
          ("Output/weight", sd["b4.out.weight"].numpy().T.copy()), ("Output/bias", sd["b4.out.bias"].numpy())]
    k = D.init_kwargs
    static = dict(num_channels=D.img_channels, resolution=D.img_resolution, label_size=0, architecture=k["architecture"],
                  fmap_base=k["channel_base"] // 2, fmap_max=k["channel_max"], mbstd_group_size=4)
    return Network(dict(version=4, name="D", static_kwargs=static, components={}, variables=v,
                        build_module_src="", build_func_name="D_main"))


def write_tf_pickle(path, *, G, D, Gs, extra_static=None):
    gs_state = tf_generator_state(Gs, "Gs")
    if extra_static:
        gs_state._state["static_kwargs"].update(extra_static)
    with _fake_modules(**{"dnnlib.tflib.network": {"Network": Network}, "dnnlib.util": {"EasyDict": EasyDict}}):
        with open(path, "wb") as f:
            pickle.dump((tf_generator_state(G), tf_discriminator_state(D), gs_state), f, protocol=3)


def _same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k].float(), sb[k].float()), k


def _z(G, n=2, seed=0):
    return torch.randn([n, G.z_dim], generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def nets():
    G = tiny_generator(resolution=16, seed=1)
    G_ema = tiny_generator(resolution=16, seed=2)
    D = tiny_discriminator(resolution=16, seed=3)
    return G, D, G_ema


# ----------------------------------------------------------------------------------------
# Our format


def test_our_format_round_trip_and_files(tmp_path):
    G = tiny_generator(resolution=32, channels=3, synthesis_kwargs=dict(architecture="resnet", conv_clamp=256))
    w = save_generator(G, tmp_path / "net")
    assert w == tmp_path / "net.safetensors" and (tmp_path / "net.json").is_file()
    cfg = json.loads((tmp_path / "net.json").read_text())
    assert cfg["class"] == "Generator" and len(cfg["sha256"]) == 64 and cfg["kwargs"]["img_channels"] == 3
    for p in (tmp_path / "net", tmp_path / "net.json", w):
        H = load_generator(p)
        _same(G, H)
        assert not any(q.requires_grad for q in H.parameters()) and not H.training
        assert torch.equal(G(_z(G)), H(_z(G)))
    D = tiny_discriminator()
    _same(D, load_generator(save_generator(D, tmp_path / "d")))


def test_float16_storage_loads_as_float32(tmp_path):
    G = tiny_generator()
    w16 = save_generator(G, tmp_path / "g16", dtype="float16")
    w32 = save_generator(G, tmp_path / "g32")
    assert w16.stat().st_size < 0.6 * w32.stat().st_size
    H = load_generator(w16)
    assert H.mapping.fc0.weight.dtype == torch.float32
    assert (G(_z(G)) - H(_z(G))).abs().max() < 0.05
    with pytest.raises(MedreconInputError, match="dtype"):
        save_generator(G, tmp_path / "bad", dtype="int8")


def test_sha256_mismatch_is_reported(tmp_path):
    w = save_generator(tiny_generator(), tmp_path / "g")
    data = bytearray(w.read_bytes())
    data[-3] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_generator(w)
    load_generator(w, verify=False)  # the user may opt out explicitly


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(MissingWeightsError):
        load_generator(tmp_path / "nothing.safetensors")
    with pytest.raises(MissingWeightsError):
        load_generator(tmp_path / "nothing.pkl")
    (tmp_path / "x.json").write_text("{not json")
    (tmp_path / "x.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_generator(tmp_path / "x.json")
    (tmp_path / "y.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(CheckpointError, match="not a medrecon network"):
        load_generator(tmp_path / "y.json")


# ----------------------------------------------------------------------------------------
# NVIDIA pickles


@pytest.mark.parametrize("flatten", [False, True])
def test_nvidia_pickle_round_trip(tmp_path, nets, flatten):
    G, D, G_ema = nets
    pkl = tmp_path / "network-snapshot-000100.pkl"
    sentinel = tmp_path / "pwned.txt"
    write_nvidia_pickle(pkl, G=G, D=D, G_ema=G_ema, sentinel=sentinel, flatten_synthesis=flatten)
    loaded = {k: load_network_pickle(pkl, network=k) for k in ("G_ema", "G", "D")}
    _same(loaded["G_ema"], G_ema)
    _same(loaded["G"], G)
    _same(loaded["D"], D)
    assert isinstance(loaded["D"], Discriminator) and loaded["G"].init_kwargs == G.init_kwargs
    assert not sentinel.exists(), "module_src from the pickle must never be executed"
    # .pkl import == our format, output for output.
    ours = load_generator(save_generator(load_generator(pkl), tmp_path / "conv"))
    z = _z(G)
    assert torch.equal(ours(z), load_generator(pkl)(z)) and torch.equal(ours(z), G_ema(z))


@pytest.mark.parametrize("z_dim, says", [(200000, "would hold"), (-5, "make no network")])
def test_a_pickle_claiming_an_impossible_network_is_refused_before_allocation(tmp_path, nets,
                                                                             z_dim, says):
    """A 400-byte pickle claiming z_dim=200000 asked for 160 GB (exit 1); z_dim=-5 gave a
    'negative dimension' error (exit 1). The network is sized on the meta device first."""
    import copy

    G, D, G_ema = nets
    fake = copy.deepcopy(G)
    fake._init_kwargs = {**G.init_kwargs, "z_dim": z_dim}  # claims another network
    pkl = tmp_path / "fake.pkl"
    write_nvidia_pickle(pkl, G=fake, D=D, G_ema=fake)
    with pytest.raises(CheckpointError, match=says):
        load_network_pickle(pkl, network="G_ema")


def test_nvidia_pickle_protocol2(tmp_path, nets):
    G, D, G_ema = nets
    pkl = tmp_path / "p2.pkl"
    write_nvidia_pickle(pkl, G=G, D=D, G_ema=G_ema, protocol=2)
    _same(load_generator(pkl), G_ema)


def test_stylegan3_generator_is_refused(tmp_path, nets):
    G, D, G_ema = nets
    pkl = tmp_path / "sg3.pkl"
    write_nvidia_pickle(pkl, G=G, D=D, G_ema=G_ema)
    data = pickle.loads(pkl.read_bytes().replace(b"block_resolutions", b"layer_names\x00\x00\x00\x00\x00\x00")) if False else None
    # Build a stylegan3-like tree: synthesis carries 'layer_names' and an 'input' module.
    tree = _persistent_tree(G, "Generator", _easy(G.init_kwargs), "")
    syn = tree.meta["state"]["_modules"]["synthesis"]
    syn.meta["state"]["layer_names"] = ["L0_36_512"]
    with _fake_modules(**{"torch_utils.persistence": {"_reconstruct_persistent_obj": _reconstruct_persistent_obj},
                          "dnnlib.util": {"EasyDict": EasyDict}}):
        pkl.write_bytes(pickle.dumps(dict(G_ema=tree, G=tree, D=None)))
    assert data is None
    with pytest.raises(CheckpointError, match="StyleGAN3"):
        load_generator(pkl)


def test_truncated_pickle(tmp_path, nets):
    G, D, G_ema = nets
    pkl = tmp_path / "full.pkl"
    write_nvidia_pickle(pkl, G=G, D=D, G_ema=G_ema)
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(pkl.read_bytes()[: pkl.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_generator(cut)


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.path}",))


def test_unknown_classes_are_refused_and_never_run(tmp_path):
    sentinel = tmp_path / "ran"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"G_ema": _Evil(sentinel)}))
    with pytest.raises(CheckpointError, match=r"Refusing to load (posix|os|nt)\.system"):
        load_generator(evil)
    assert not sentinel.exists()
    evil.write_bytes(pickle.dumps({"G_ema": copyreg.__newobj__}))
    with pytest.raises(CheckpointError, match="Refusing to load copyreg.__newobj__"):
        load_generator(evil)
    evil.write_bytes(pickle.dumps(np.array([object()], dtype=object)))
    with pytest.raises(CheckpointError, match="Refusing"):
        load_generator(evil)


def test_foreign_pickles(tmp_path):
    p = tmp_path / "foreign.pkl"
    p.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(CheckpointError, match="not a StyleGAN2 network pickle"):
        load_generator(p)
    p.write_bytes(b"this is not a pickle at all")
    with pytest.raises(CheckpointError):
        load_generator(p)
    torch.save({"a": torch.zeros(2)}, p)  # a torch.save zip checkpoint is not a network pickle
    with pytest.raises(CheckpointError):
        load_generator(p)
    with pytest.raises(MedreconInputError, match="network="):
        load_network_pickle(p, network="Gs")


# ----------------------------------------------------------------------------------------
# TF pickles


@pytest.mark.parametrize("architecture", ["skip", "resnet"])
def test_tf_pickle_conversion(tmp_path, architecture):
    kw = dict(resolution=16, synthesis_kwargs=dict(architecture=architecture, channel_base=512))
    G, Gs = tiny_generator(seed=4, **kw), tiny_generator(seed=5, **kw)
    D = tiny_discriminator(seed=6)
    pkl = tmp_path / "brains.pkl"
    write_tf_pickle(pkl, G=G, D=D, Gs=Gs)
    conv = load_generator(pkl)
    _same(conv, Gs)
    assert conv.init_kwargs["synthesis_kwargs"]["channel_base"] == 512  # = 2 x fmap_base
    _same(load_generator(pkl, network="G"), G)
    D2 = load_generator(pkl, network="D")
    x = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(D2(x), D.eval()(x))
    z = _z(Gs)
    assert torch.equal(load_generator(save_generator(conv, tmp_path / "ours"))(z), Gs(z))


def test_tf_pickle_unknown_option(tmp_path):
    G = tiny_generator()
    pkl = tmp_path / "odd.pkl"
    write_tf_pickle(pkl, G=G, D=tiny_discriminator(), Gs=G, extra_static={"mystery_option": 3})
    with pytest.raises(CheckpointError, match="mystery_option"):
        load_generator(pkl)


# ----------------------------------------------------------------------------------------
# CLI


def test_cli_import_list_show(tmp_path, nets):
    G, D, G_ema = nets
    pkl = tmp_path / "xray.pkl"
    write_nvidia_pickle(pkl, G=G, D=D, G_ema=G_ema)
    runner = CliRunner()
    out = tmp_path / "prior"
    res = runner.invoke(priors_cli, ["import", str(pkl), "-o", str(out), "--modality", "xray", "--w-samples", "200"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["generator.json", "generator.safetensors", "model.pt", "prior.json", "w_stats.safetensors"]
    res = runner.invoke(priors_cli, ["show", str(out)])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["name"] == "xray" and info["num_ws"] == 6 and info["metadata"]["modality"] == "xray"
    res = runner.invoke(priors_cli, ["import", str(pkl), "-o", str(tmp_path / "d.safetensors"), "--network", "D"])
    assert res.exit_code == 0, res.output
    _same(load_generator(tmp_path / "d.safetensors"), D)
    assert runner.invoke(priors_cli, ["list"]).exit_code == 0


def test_hostile_pickles_cannot_claim_storage_they_do_not_hold(tmp_path):
    """A stride-0 view (one stored float expanded to millions) passed the size check by its
    numel (a 530 KB pickle made a 1.1 GB prior, 5 GB of memory); a direct numpy.ndarray(...)
    call in a TF pickle allocated any size before the budget saw it."""
    import copy
    import pickle

    import numpy as np

    from medrecon.errors import CheckpointError
    from medrecon.generators.checkpoints import load_generator

    G = tiny_generator(resolution=16, seed=1)
    D = tiny_discriminator(resolution=16, seed=3)
    B = copy.deepcopy(G)
    B._init_kwargs = {**G.init_kwargs, "z_dim": 2**22}
    B.mapping.fc0.weight = torch.nn.Parameter(torch.zeros(1).expand(32, 2**22),
                                              requires_grad=False)
    write_nvidia_pickle(tmp_path / "big.pkl", G=B, D=D, G_ema=B)
    with pytest.raises(CheckpointError, match="tensors hold only"):
        load_generator(tmp_path / "big.pkl")

    class Big:
        def __reduce__(self):
            return (np.ndarray, ((2**29,), "f4"))

    gs = tf_generator_state(G, "Gs")
    gs._state["variables"].append(("pad", Big()))
    with _fake_modules(**{"dnnlib.tflib.network": {"Network": Network},
                          "dnnlib.util": {"EasyDict": EasyDict}}):
        with open(tmp_path / "tf.pkl", "wb") as fh:
            pickle.dump((tf_generator_state(G), tf_discriminator_state(D), gs), fh, protocol=3)
    with pytest.raises(CheckpointError, match="direct numpy.ndarray"):
        load_generator(tmp_path / "tf.pkl")


def test_nan_weights_and_bad_network_arguments_are_refused(tmp_path):
    """NaN weights and a NaN lr_multiplier imported with exit 0 (NaN images later); a text
    conv_clamp imported and failed in eval; an unknown activation was an internal KeyError."""
    import copy

    from medrecon.errors import CheckpointError
    from medrecon.generators.checkpoints import load_generator

    G = tiny_generator(resolution=16, seed=1)
    D = tiny_discriminator(resolution=16, seed=3)
    bad = copy.deepcopy(G)
    with torch.no_grad():
        bad.mapping.fc0.weight[0, 0] = float("nan")
    write_nvidia_pickle(tmp_path / "nan.pkl", G=bad, D=D, G_ema=bad)
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        load_generator(tmp_path / "nan.pkl")
    for change, says in (({"mapping_kwargs": {"lr_multiplier": float("nan")}}, "not finite"),
                         ({"synthesis_kwargs": {"conv_clamp": "x"}}, "not a number"),
                         ({"mapping_kwargs": {"activation": "nope"}}, "activation='nope'")):
        other = copy.deepcopy(G)
        kw = copy.deepcopy(G.init_kwargs)
        for key, sub in change.items():
            kw[key] = {**kw.get(key, {}), **sub}
        other._init_kwargs = kw
        write_nvidia_pickle(tmp_path / "k.pkl", G=other, D=D, G_ema=other)
        with pytest.raises(CheckpointError, match=says):
            load_generator(tmp_path / "k.pkl")
    # a generator.json naming weights outside its folder (ValueError, exit 1)
    from medrecon.generators.checkpoints import save_generator

    save_generator(G, tmp_path / "g.safetensors")
    cfg = json.loads((tmp_path / "g.json").read_text())
    (tmp_path / "g.json").write_text(json.dumps({**cfg, "weights": "../x.safetensors"}))
    with pytest.raises(CheckpointError, match="not a file name beside it"):
        load_generator(tmp_path / "g.json")


def test_a_mislabelled_network_entry_is_refused(tmp_path):
    """A pickle whose G_ema entry held a Discriminator imported with exit 0."""
    from medrecon.errors import CheckpointError
    from medrecon.generators.checkpoints import load_generator

    import pickle

    G = tiny_generator(resolution=16, seed=1)
    D = tiny_discriminator(resolution=16, seed=3)
    src = SENTINEL_SRC.format(path=str(tmp_path / "x.pwned"))
    d_tree = _persistent_tree(D, "Discriminator", _easy(D.init_kwargs), src)
    data = dict(G=_persistent_tree(G, "Generator", _easy(G.init_kwargs), src), D=d_tree,
                G_ema=d_tree, augment_pipe=None)
    with _fake_modules(**{"torch_utils.persistence": {
            "_reconstruct_persistent_obj": _reconstruct_persistent_obj},
            "dnnlib.util": {"EasyDict": EasyDict}}):
        with open(tmp_path / "swap.pkl", "wb") as f:
            pickle.dump(data, f, protocol=4)
    with pytest.raises(CheckpointError, match="'G_ema' is a Discriminator, not a Generator"):
        load_generator(tmp_path / "swap.pkl")
    assert load_generator(tmp_path / "swap.pkl", network="G") is not None
