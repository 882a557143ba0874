"""Tests of the pure-PyTorch StyleGAN2 (medrecon.generators.networks / ops)."""

from __future__ import annotations

import math

import pytest
import torch

from medrecon.errors import MedreconInputError
from medrecon.generators import Discriminator, Generator, SynthesisNetwork, num_ws_for_resolution
from medrecon.generators import ops
from tests._tiny import tiny_discriminator, tiny_generator


def _z(G: Generator, n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn([n, G.z_dim], generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("resolution", [16, 32, 64, 128, 256, 512, 1024])
def test_num_ws_per_resolution(resolution):
    syn = SynthesisNetwork(w_dim=8, img_resolution=resolution, img_channels=1, channel_base=4096, channel_max=4)
    assert syn.num_ws == num_ws_for_resolution(resolution) == 2 * int(math.log2(resolution)) - 2
    assert {16: 6, 128: 12, 256: 14, 1024: 18}.get(resolution, syn.num_ws) == syn.num_ws


@pytest.mark.parametrize("architecture", ["skip", "resnet", "orig"])
@pytest.mark.parametrize("channels", [1, 3])
def test_output_shape_and_names(architecture, channels):
    G = tiny_generator(resolution=16, channels=channels, synthesis_kwargs=dict(architecture=architecture))
    img = G(_z(G, 3))
    assert img.shape == (3, channels, 16, 16) and img.dtype == torch.float32
    assert torch.isfinite(img).all()
    sd = G.state_dict()
    # NVIDIA stylegan2-ada-pytorch names and shapes.
    assert sd["mapping.w_avg"].shape == (G.w_dim,)
    assert sd["mapping.fc0.weight"].shape == (G.w_dim, G.z_dim)
    assert sd["synthesis.b4.const"].ndim == 3
    assert sd["synthesis.b8.conv0.resample_filter"].shape == (4, 4)
    assert sd["synthesis.b16.conv1.noise_const"].shape == (16, 16)
    assert sd["synthesis.b16.torgb.affine.bias"].shape == (sd["synthesis.b16.torgb.weight"].shape[1],)
    assert ("synthesis.b8.torgb.weight" in sd) == (architecture == "skip")
    assert ("synthesis.b8.skip.weight" in sd) == (architecture == "resnet")
    expected = torch.tensor([1.0, 3.0, 3.0, 1.0])
    assert torch.allclose(sd["synthesis.b8.resample_filter"], torch.outer(expected, expected) / 64)


def test_const_noise_is_deterministic_and_random_noise_is_seeded():
    G = tiny_generator()
    z = _z(G)
    a = G(z, noise_mode="const")
    assert torch.equal(a, G(z, noise_mode="const"))
    r1 = G(z, noise_mode="random", noise_generator=torch.Generator().manual_seed(5))
    r2 = G(z, noise_mode="random", noise_generator=torch.Generator().manual_seed(5))
    r3 = G(z, noise_mode="random", noise_generator=torch.Generator().manual_seed(6))
    assert torch.equal(r1, r2) and not torch.allclose(r1, r3)
    assert not torch.allclose(a, G(z, noise_mode="none"))


def test_global_rng_untouched():
    state = torch.random.get_rng_state()
    G = tiny_generator(seed=3)
    G(_z(G), noise_mode="random", noise_generator=torch.Generator().manual_seed(0))
    tiny_discriminator()(torch.zeros(4, 1, 16, 16))
    assert torch.equal(state, torch.random.get_rng_state())


def test_seed_controls_initialisation():
    a = Generator(img_resolution=8, img_channels=1, z_dim=4, w_dim=4, seed=1, synthesis_kwargs=dict(channel_base=64, channel_max=8))
    b = Generator(img_resolution=8, img_channels=1, z_dim=4, w_dim=4, seed=1, synthesis_kwargs=dict(channel_base=64, channel_max=8))
    c = Generator(img_resolution=8, img_channels=1, z_dim=4, w_dim=4, seed=2, synthesis_kwargs=dict(channel_base=64, channel_max=8))
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])
    assert not torch.equal(a.mapping.fc0.weight, c.mapping.fc0.weight)


def test_fused_and_unfused_modconv_agree():
    G = tiny_generator(resolution=32, synthesis_kwargs=dict(architecture="resnet", conv_clamp=1.0))
    ws = G.mapping(_z(G, 3))
    assert torch.allclose(G.synthesis(ws, fused_modconv=True), G.synthesis(ws, fused_modconv=False), atol=1e-5)


def test_truncation():
    G = tiny_generator()
    z = _z(G, 4)
    ws = G.mapping(z, truncation_psi=0.0)
    assert torch.allclose(ws, G.mapping.w_avg.expand_as(ws))
    full = G.mapping(z)
    half = G.mapping(z, truncation_psi=0.5, truncation_cutoff=2)
    assert torch.allclose(half[:, :2], G.mapping.w_avg.lerp(full[:, :2], 0.5))
    assert torch.equal(half[:, 2:], full[:, 2:])


def test_w_avg_tracks_in_training_mode_only():
    G = tiny_generator()
    before = G.mapping.w_avg.clone()
    G.mapping(_z(G))
    assert torch.equal(before, G.mapping.w_avg)
    G.mapping.train()
    G.mapping(_z(G))
    assert not torch.equal(before, G.mapping.w_avg)


def test_every_w_drives_the_image_and_torgb_shares_w():
    G = tiny_generator(resolution=16)
    ws = G.mapping(_z(G, 1)).detach().requires_grad_(True)
    img = G.synthesis(ws)
    (grad,) = torch.autograd.grad(img.square().sum(), ws)
    assert torch.isfinite(grad).all()
    assert (grad.abs().sum(-1) > 0).all(), "every one of the num_ws vectors must influence the image"
    # Block b4 reads ws[0] (conv1) and ws[1] (torgb); b8 reads ws[1] (conv0), ws[2], ws[3] (torgb).
    seen = {}
    hooks = [
        G.synthesis.b4.torgb.affine.register_forward_hook(lambda m, i, o: seen.__setitem__("b4.torgb", i[0])),
        G.synthesis.b8.conv0.affine.register_forward_hook(lambda m, i, o: seen.__setitem__("b8.conv0", i[0])),
    ]
    G.synthesis(ws)
    for h in hooks:
        h.remove()
    assert torch.equal(seen["b4.torgb"], ws[:, 1]) and torch.equal(seen["b8.conv0"], ws[:, 1])


def test_gradients_wrt_w_and_weights_are_finite():
    G = tiny_generator(resolution=16).train()
    ws = G.mapping(_z(G, 2), skip_w_avg_update=True).detach().requires_grad_(True)
    loss = G.synthesis(ws).square().mean()
    loss.backward()
    assert torch.isfinite(ws.grad).all() and ws.grad.abs().sum() > 0
    for name, p in G.synthesis.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_discriminator_shapes_and_gradients():
    for arch in ("resnet", "skip", "orig"):
        D = tiny_discriminator(resolution=16, channels=1, architecture=arch)
        img = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(0), requires_grad=True)
        logits = D(img)
        assert logits.shape == (4, 1)
        (g,) = torch.autograd.grad(logits.sum(), img)
        assert torch.isfinite(g).all() and g.abs().sum() > 0
    Dc = tiny_discriminator(resolution=16, channels=3, c_dim=5)
    c = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 3]), 5).float()
    assert Dc(torch.zeros(4, 3, 16, 16), c).shape == (4, 1)


def test_conditional_generator():
    G = tiny_generator(c_dim=3)
    c = torch.nn.functional.one_hot(torch.tensor([0, 2]), 3).float()
    assert G(_z(G), c).shape == (2, 1, 16, 16)
    with pytest.raises(MedreconInputError, match="class-conditional"):
        G(_z(G), None)


def test_bad_inputs_raise_clear_errors():
    G = tiny_generator()
    with pytest.raises(MedreconInputError, match=r"ws has shape \[2, 5, 32\], expected \[\*, 6, 32\]"):
        G.synthesis(torch.zeros(2, 5, 32))
    with pytest.raises(MedreconInputError, match="z has shape"):
        G(torch.zeros(2, 7))
    with pytest.raises(MedreconInputError, match="noise_generator"):
        G(_z(G), noise_mode="random")
    with pytest.raises(MedreconInputError, match="noise_mode"):
        G(_z(G), noise_mode="fixed")
    with pytest.raises(MedreconInputError, match="power of two"):
        Generator(img_resolution=48, img_channels=1)
    with pytest.raises(MedreconInputError, match="channel_base"):
        Generator(img_resolution=64, img_channels=1, synthesis_kwargs=dict(channel_base=32))
    with pytest.raises(MedreconInputError, match="img has shape"):
        tiny_discriminator()(torch.zeros(4, 3, 16, 16))


def test_state_dict_round_trip_and_device_move():
    G = tiny_generator(seed=1)
    H = Generator(**G.init_kwargs)
    H.load_state_dict(G.state_dict())
    z = _z(G)
    assert torch.equal(G(z), H.eval()(z))
    H.to(torch.float64)  # .to() works on every parameter and buffer: no stored device/dtype.
    assert H(z.double()).dtype == torch.float32  # synthesis casts ws to fp32 like NVIDIA's


def test_upfirdn_matches_direct_definition():
    # Upsample x2 with [1,3,3,1] == zero insertion then a full 2-D convolution (numpy-free check).
    x = torch.randn(1, 2, 5, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    f = ops.setup_filter([1, 3, 3, 1]).double()
    up = torch.zeros(1, 2, 10, 12, dtype=torch.float64)
    up[:, :, ::2, ::2] = x
    full = torch.nn.functional.conv2d(
        torch.nn.functional.pad(up, [3, 3, 3, 3]), (4 * f).flip([0, 1])[None, None].repeat(2, 1, 1, 1), groups=2
    )
    out = ops.upsample2d(x, f)
    assert out.shape == (1, 2, 10, 12)
    # upsample2d pads (fw + up - 1) // 2 = 2 on the left: output t is full-convolution index t + 1.
    assert torch.allclose(out, full[:, :, 1:11, 1:13])
    down = ops.downsample2d(out, f)
    assert down.shape == x.shape


@pytest.mark.parametrize("f", [[1, 3, 3, 1], [1, 2, 1], [[1, 2, 0], [0, 1, 3]], [1, 2, 3, 4, 3, 2, 1, 0.5]])
@pytest.mark.parametrize("kw", [dict(up=2, padding=[2, 1, 2, 1]), dict(down=2, padding=1),
                                dict(up=(2, 1), down=(1, 2), padding=[1, -1, 0, 2]),
                                dict(padding=[-1, 0, 2, 1], flip_filter=True, gain=3.0)])
def test_upfirdn_few_channel_matmul_path_equals_convolution(f, kw):
    # 1-3 channels take the matrix-product path on the CPU (separable filters; the 2-D
    # [[1,2,0],[0,1,3]] is not separable and keeps the convolution); 8 channels take the
    # convolution: channel by channel they must agree.
    g = torch.Generator().manual_seed(3)
    filt = ops.setup_filter(f, separable=len(f) >= 8 if isinstance(f[0], (int, float)) else None)
    x = torch.randn(2, 3, 12, 11, generator=g, dtype=torch.float64)
    few = ops.upfirdn2d(x, filt.double(), **kw)
    many = ops.upfirdn2d(x.repeat(1, 3, 1, 1)[:, :8], filt.double(), **kw)
    assert few.shape[1] == 3 and torch.allclose(few, many[:, :3], rtol=1e-12, atol=1e-12)
    assert torch.allclose(ops.upfirdn2d(x[:, :1], filt.double(), **kw), many[:, :1], atol=1e-12)


def test_upfirdn_matrices_built_under_autocast_serve_outside_it():
    # the few-channel path caches its matrices; one first built inside a CPU bf16 autocast
    # region (the CPU bf16 synthesis) must still be float32 for a float32 call outside it
    ops._axis_matrix.cache_clear()
    f = ops.setup_filter([1, 3, 3, 1])
    x = torch.randn(2, 1, 16, 12, generator=torch.Generator().manual_seed(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = ops.upsample2d(x, f)
    outside = ops.upsample2d(x, f)
    assert outside.dtype == torch.float32
    assert torch.allclose(outside, ops.upsample2d(x.repeat(1, 8, 1, 1), f)[:, :1], atol=1e-6)
    assert torch.allclose(inside.float(), outside, atol=0.05 * outside.abs().max())


@pytest.mark.parametrize("act", ["linear", "lrelu", "relu", "tanh"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("gain", [None, 1.0, 0.5, -2.0])
@pytest.mark.parametrize("clamp", [None, 0.3])
def test_bias_act_equals_the_definition(act, bias, gain, clamp):
    # bias_act folds a positive gain into the bias add where the activation allows it:
    # values, first and second derivatives equal the plain composition, and the caller's
    # tensors are kept.
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True) if bias else None
    func, a, default_gain = ops.ACTIVATIONS[act]
    x0, gain_ = x.detach().clone(), default_gain if gain is None else gain

    def reference(x, b=None):
        y = func(x + b.reshape(1, -1, 1, 1) if b is not None else x, a) * gain_
        return y.clamp(-clamp, clamp) if clamp is not None else y

    inputs = (x, b) if bias else (x,)
    out = ops.bias_act(*inputs, act=act, gain=gain, clamp=clamp)
    assert torch.allclose(out, reference(*inputs), atol=1e-12)
    assert torch.equal(x.detach(), x0)
    torch.autograd.gradcheck(lambda *t: ops.bias_act(*t, act=act, gain=gain, clamp=clamp), inputs)
    torch.autograd.gradgradcheck(lambda *t: ops.bias_act(*t, act=act, gain=gain, clamp=clamp), inputs)


@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize("fused", [True, False])
def test_one_by_one_modulated_conv_equals_grouped_convolution(demodulate, fused):
    # ToRGB's 1 x 1 modulated convolution runs as a batched matrix product: same values and
    # gradients as the per-sample convolution of its definition.
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 6, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 6, 1, 1, generator=g, dtype=torch.float64, requires_grad=True)
    styles = torch.randn(3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    out = ops.modulated_conv2d(x, weight, styles, demodulate=demodulate, fused_modconv=fused)
    wn = weight[None] * styles[:, None, :, None, None]  # [N, O, I, 1, 1]
    if demodulate:
        wn = wn * (wn.square().sum(dim=[2, 3, 4], keepdim=True) + 1e-8).rsqrt()
    ref = torch.cat([torch.nn.functional.conv2d(x[n:n + 1], wn[n]) for n in range(3)])
    assert torch.allclose(out, ref, atol=1e-12)
    probe = torch.randn(out.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((out * probe).sum(), (x, weight, styles))
    refs = torch.autograd.grad((ref * probe).sum(), (x, weight, styles))
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(grads, refs))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_and_channels_last_on_gpu(dtype):
    G = tiny_generator(resolution=32).cuda()
    z = _z(G, 4).cuda()
    ref = G(z)
    G_cl = tiny_generator(resolution=32).cuda().to(memory_format=torch.channels_last)
    assert torch.allclose(G_cl(z), ref, atol=1e-4)
    with torch.autocast("cuda", dtype=dtype):
        out = G(z)
        ws = G.mapping(z).detach().requires_grad_(True)
        loss = G.synthesis(ws).float().square().mean()
    loss.backward()
    assert out.dtype == torch.float32 and torch.isfinite(ws.grad).all()
    assert (out.float() - ref).abs().mean() < 0.05 * ref.abs().mean() + 1e-3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_blocks_on_gpu():
    G = tiny_generator(resolution=32, synthesis_kwargs=dict(num_fp16_res=2, conv_clamp=256, fp16_channels_last=True)).cuda()
    z = _z(G, 2).cuda()
    out = G(z)
    ref = G(z, force_fp32=True)
    assert out.dtype == torch.float32 and torch.allclose(out, ref, atol=0.05)


# Reference values produced once by NVIDIA stylegan2-ada-pytorch (training/networks.py, commit
# d72cc7d, pure-PyTorch CPU fallback ops) after loading the state_dict of
# tiny_generator(resolution=16, seed=7, architecture=..., conv_clamp=256), for
# z = randn(2, 32, generator=manual_seed(11)), truncation_psi=0.7, noise_mode='const';
# pixels out[:, 0, ::5, ::5] and the sum of the output.
_NVIDIA_REFERENCE = {
    "skip": ([-0.17556, -0.61311, 0.77689, 0.31087, -0.03631, 1.88743, 0.30131, 0.30078, -0.30531, 0.9716,
              0.6101, 0.13445, -0.17778, -0.14275, 0.08077, -0.15794, -0.02691, -0.2805, 0.55455, 0.05148,
              -0.2195, 1.26599, -0.29516, -0.04781, -0.02808, 1.67197, 0.95334, 0.02661, -0.07951, 0.22579,
              0.17052, 0.01565], 231.5846),
    "resnet": ([0.3077, -0.26321, -0.27804, -0.018, 0.5871, -0.27298, -0.41435, -0.27485, 0.0296, -0.4582,
                -0.3139, 0.3366, 0.19437, -0.70835, -0.42133, -0.08842, 0.25708, 0.10185, -0.26147, 0.03333,
                0.28972, -0.21758, -0.84383, -0.35406, -0.13452, -0.59205, -0.2078, 0.10457, -0.08213, -0.80742,
                -0.26736, -0.07447], -106.5994),
}


@pytest.mark.parametrize("architecture", ["skip", "resnet"])
def test_matches_nvidia_reference_output(architecture):
    G = tiny_generator(resolution=16, seed=7, synthesis_kwargs=dict(architecture=architecture, conv_clamp=256))
    z = torch.randn(2, 32, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        out = G(z, truncation_psi=0.7, noise_mode="const")
    pixels, total = _NVIDIA_REFERENCE[architecture]
    assert torch.allclose(out[:, 0, ::5, ::5].flatten(), torch.tensor(pixels), atol=2e-4)
    assert abs(out.sum().item() - total) < 5e-3
