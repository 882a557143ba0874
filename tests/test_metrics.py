"""Metrics against scikit-image / numpy references; LPIPS weight handling (random backbone)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from medrecon import metrics
from medrecon.errors import CheckpointError, MedreconInputError, MissingWeightsError


@pytest.fixture
def pair(np_rng):
    ref = np_rng.random((2, 3, 23, 19))
    est = np.clip(ref + 0.1 * np_rng.standard_normal(ref.shape), 0, 1)
    return est, ref


def test_psnr_matches_skimage(pair):
    est, ref = pair
    out = metrics.psnr(torch.from_numpy(est), torch.from_numpy(ref), data_range=1.0)
    assert out.shape == (2,)
    for i in range(2):
        assert out[i].item() == pytest.approx(
            peak_signal_noise_ratio(ref[i], est[i], data_range=1.0), abs=1e-10)
    single = metrics.psnr(est[0] * 255, ref[0] * 255, data_range=255)
    assert isinstance(single, float) and single == pytest.approx(out[0].item(), abs=1e-9)
    assert metrics.psnr(ref[0, 0], ref[0, 0], data_range=1.0) == float("inf")


@pytest.mark.parametrize("kw,sk_kw", [
    ({}, {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False}),
    ({"gaussian_weights": False, "win_size": 7, "use_sample_covariance": True}, {}),
    ({"gaussian_weights": False, "win_size": 5}, {"win_size": 5, "use_sample_covariance": False}),
])
def test_ssim_matches_skimage(pair, kw, sk_kw):
    est, ref = pair
    out = metrics.ssim(est, ref, data_range=1.0, **kw)
    for i in range(2):
        expected = structural_similarity(ref[i], est[i], data_range=1.0, channel_axis=0, **sk_kw)
        assert out[i].item() == pytest.approx(expected, abs=1e-8)
    gray = metrics.ssim(est[0, 0], ref[0, 0], data_range=1.0, **kw)
    assert gray == pytest.approx(structural_similarity(ref[0, 0], est[0, 0], data_range=1.0,
                                                       **sk_kw), abs=1e-8)
    assert metrics.ssim(ref[0], ref[0], data_range=1.0, **kw) == pytest.approx(1.0)


def _ssim_reference(x: torch.Tensor, y: torch.Tensor, dr: float, sigma: float = 1.5
                    ) -> torch.Tensor:
    """medrecon's previous torch SSIM (Gaussian window, population covariance, border crop)."""
    r = int(3.5 * sigma + 0.5)
    g = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float64) / sigma) ** 2)
    g = g / g.sum()
    b, c, h, w = x.shape

    def filt(t):
        t = torch.nn.functional.conv2d(t.reshape(b * c, 1, h, w), g.view(1, 1, -1, 1))
        return torch.nn.functional.conv2d(t, g.view(1, 1, 1, -1))

    ux, uy = filt(x), filt(y)
    vx, vy, vxy = filt(x * x) - ux * ux, filt(y * y) - uy * uy, filt(x * y) - ux * uy
    c1, c2 = (0.01 * dr) ** 2, (0.03 * dr) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.reshape(b, -1).mean(dim=1)


@pytest.mark.parametrize("shape,dr", [((3, 2, 23, 19), 1.0), ((2, 1, 11, 11), 255.0),
                                      ((1, 3, 12, 31), 2.0), ((4, 1, 40, 40), 4000.0)])
def test_ssim_equals_previous_torch_formula(shape, dr, rng):
    ref = torch.rand(shape, dtype=torch.float64, generator=rng) * dr
    est = ref + 0.02 * dr * torch.randn(shape, dtype=torch.float64, generator=rng)
    expected = _ssim_reference(est, ref, dr)
    torch.testing.assert_close(metrics.ssim(est, ref, data_range=dr), expected, rtol=0,
                               atol=1e-10)
    assert metrics.ssim(est[0], ref[0], data_range=dr) == pytest.approx(expected[0].item(),
                                                                        abs=1e-10)
    if shape[1] == 1:
        assert metrics.ssim(est[0, 0], ref[0, 0], data_range=dr) == pytest.approx(
            expected[0].item(), abs=1e-10)
    assert metrics.ssim(est, ref, data_range=dr, sigma=0.8).shape == (shape[0],)


def test_metrics_of_meta_tensors_are_plain_tensors(pair):
    from monai.data import MetaTensor

    est, ref = (MetaTensor(torch.from_numpy(a)) for a in pair)
    for out in (metrics.psnr(est, ref, data_range=1.0), metrics.ssim(est, ref, data_range=1.0),
                metrics.mse(est, ref), metrics.mae(est, ref), metrics.rmse(est, ref)):
        assert type(out) is torch.Tensor and out.dtype == torch.float64 and out.shape == (2,)


def test_mae_rmse_mse(pair):
    est, ref = pair
    assert metrics.mae(est, ref).numpy() == pytest.approx(np.abs(est - ref).mean(axis=(1, 2, 3)))
    assert metrics.mse(est, ref).numpy() == pytest.approx(((est - ref) ** 2).mean(axis=(1, 2, 3)))
    assert metrics.rmse(est[0], ref[0]) == pytest.approx(np.sqrt(((est[0] - ref[0]) ** 2).mean()))
    z = torch.complex(torch.ones(4, 4), torch.ones(4, 4))  # complex: compared by magnitude
    assert metrics.mae(z, torch.full((4, 4), 2.0).sqrt()) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("call,match", [
    (lambda a, b: metrics.psnr(a, b, data_range=0), "data_range"),
    (lambda a, b: metrics.psnr(a, b, data_range="auto"), "data_range"),
    (lambda a, b: metrics.psnr(a, b, data_range=True), "data_range must be a positive number"),
    (lambda a, b: metrics.ssim(a, b, data_range=np.bool_(True)), "data_range must be"),
    (lambda a, b: metrics.ssim(a, b[..., :-1], data_range=1.0), "same shape"),
    (lambda a, b: metrics.ssim(a[..., :5, :5], b[..., :5, :5], data_range=1.0), "smaller"),
    (lambda a, b: metrics.ssim(a, b, data_range=1.0, gaussian_weights=False, win_size=4), "odd"),
    (lambda a, b: metrics.ssim(a, b, data_range=1.0, k1=-0.01), "k1 and k2"),
    (lambda a, b: metrics.ssim(a, b, data_range=1.0, sigma=0), "sigma"),
    (lambda a, b: metrics.ssim(a, b, data_range=1.0, win_size=7), "does not match"),
    (lambda a, b: metrics.mae(a * np.nan, b), "NaN"),
    (lambda a, b: metrics.rmse(a[None], b[None]), r"\[B, C, H, W\]"),
    (lambda a, b: metrics.mae([1, 2], b), "numpy"),
])
def test_bad_metric_input(pair, call, match):
    est, ref = pair
    with pytest.raises(MedreconInputError, match=match):
        call(est, ref)


def test_data_range_is_keyword_only_and_required(pair):
    with pytest.raises(TypeError):
        metrics.psnr(*pair)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        metrics.ssim(pair[0], pair[1], 1.0)  # type: ignore[misc]


# ------------------------------------------------------------------------------------------
# LPIPS
# ------------------------------------------------------------------------------------------
@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv("MEDRECON_WEIGHTS_DIR", raising=False)
    return tmp_path / "hub" / "checkpoints"


def test_lpips_missing_weights_names_file_and_directory(empty_hub):
    with pytest.raises(MissingWeightsError) as info:
        metrics.lpips_distance(torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 32), net="vgg")
    msg = str(info.value)
    assert "vgg16-397923af.pth" in msg and str(empty_hub) in msg
    assert isinstance(info.value, MedreconInputError)


def test_lpips_random_backbone_values(global_rng_untouched):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 32, 32, generator=g)
    y = (x + 0.2 * torch.rand(2, 1, 32, 32, generator=g)).clamp(0, 1)
    d = metrics.lpips_distance(x, y, data_range=1.0, allow_random_backbone=True)
    assert d.shape == (2,) and bool((d > 0).all())
    same = metrics.lpips_distance(x, x, data_range=1.0, allow_random_backbone=True)
    assert torch.allclose(same, torch.zeros(2), atol=1e-7)
    # data_range maps linearly to [-1, 1]: [0, 255] inputs give the same value.
    d255 = metrics.lpips_distance(x * 255, y * 255, data_range=255.0, allow_random_backbone=True)
    torch.testing.assert_close(d, d255, rtol=1e-4, atol=1e-6)
    one = metrics.lpips_distance(x[0].numpy() * 2 - 1, y[0].numpy() * 2 - 1,
                                 allow_random_backbone=True)
    assert one == pytest.approx(d[0].item(), rel=1e-4)
    with pytest.raises(MedreconInputError, match="1 or 3 channels"):
        metrics.lpips_distance(torch.zeros(1, 2, 32, 32), torch.zeros(1, 2, 32, 32),
                               allow_random_backbone=True)


def test_lpips_is_differentiable():
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1), requires_grad=True)
    d = metrics.lpips_distance(x, torch.zeros(1, 3, 32, 32), data_range=1.0,
                               allow_random_backbone=True)
    d.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_lpips_loads_local_backbone_weights(tmp_path, empty_hub):
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        features = torchvision.models.alexnet(weights=None).features
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    empty_hub.mkdir(parents=True)
    torch.save(state, empty_hub / "alexnet-owt-7be5be79.pth")
    metric = metrics.LPIPSMetric(net="alex")
    assert not metric.random_backbone
    torch.testing.assert_close(metric.model.net.slice1[0].weight, state["features.0.weight"])
    explicit = metrics.LPIPSMetric(net="alex", weights=empty_hub / "alexnet-owt-7be5be79.pth")
    torch.testing.assert_close(explicit.model.net.slice5._modules["10"].weight, state["features.10.weight"])
    torch.save({"features.0.weight": torch.zeros(3)}, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError, match="not a torchvision alex"):
        metrics.LPIPSMetric(net="alex", weights=tmp_path / "wrong.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="cannot read"):
        metrics.LPIPSMetric(net="alex", weights=tmp_path / "junk.pth")
    with pytest.raises(MissingWeightsError, match="does not exist"):
        metrics.LPIPSMetric(net="alex", weights=tmp_path / "absent.pth")
    with pytest.raises(MedreconInputError, match="net must be one of"):
        metrics.LPIPSMetric(net="squeeze")


def test_lpips_alex_needs_31_pixels():
    """AlexNet's strides and pools fail below 31 pixels with a raw RuntimeError; the check said
    16 for every network."""
    import torch

    from medrecon import metrics as M
    from medrecon.errors import MedreconInputError

    with pytest.raises(MedreconInputError, match="alex.*at least 31 x 31"):
        M.lpips_distance(torch.rand(1, 1, 24, 24), torch.rand(1, 1, 24, 24),
                         allow_random_backbone=True)
    assert M.lpips_distance(torch.rand(1, 1, 31, 31), torch.rand(1, 1, 31, 31),
                            allow_random_backbone=True).shape == (1,)


def test_metric_arguments_that_gave_raw_errors():
    import numpy as np

    from medrecon import metrics as M
    from medrecon.errors import MedreconInputError

    with pytest.raises(MedreconInputError, match="empty"):
        M.psnr(np.zeros((0, 1, 8, 8)), np.zeros((0, 1, 8, 8)), data_range=1)
    with pytest.raises(MedreconInputError, match="sigma"):
        M.ssim(np.zeros((16, 16)), np.zeros((16, 16)), data_range=1, sigma="x")
