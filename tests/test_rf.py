"""RF extraction (docs/design.md#rf-extraction) against ground truth computed by hand.

A first conv layer holding planted kernels has, for its center unit, an RF equal to the
kernel placed around the center of the input grid (PyTorch convolutions are
cross-correlations, so without a flip). Every method must recover it.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

from analysis.figures import plot_rf_montage, save_rf_montage
from analysis.rf import METHOD_OPTIONS, METHODS, actmax_starts, extract_rfs
from retina_raf.errors import ConfigError
from retina_raf.io import write_netcdf

SIZE = 16  # input grid (1, SIZE, SIZE)
KERNEL = 7
SHAPE = (1, SIZE, SIZE)
FAST = {  # method options small enough for unit tests
    "gradient": {},
    "actmax": {"n_starts": 4, "n_steps": 30},
    "sta": {"n_samples": 16384, "batch_size": 4096},
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These networks are tiny: one thread avoids OpenMP spin-waiting on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def planted_kernels() -> dict[str, np.ndarray]:
    """Unit-norm DoG (ON center), Gabor and noise kernels on a KERNEL x KERNEL grid."""
    half = KERNEL // 2
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(float)
    r2 = xx**2 + yy**2
    kernels = {
        "dog": np.exp(-r2 / (2 * 0.8**2)) - 0.5 * np.exp(-r2 / (2 * 2.0**2)),
        "gabor": np.exp(-r2 / (2 * 1.8**2)) * np.cos(2 * np.pi * (xx + 0.5 * yy) / 4.0),
        "noise": np.random.default_rng(7).normal(size=(KERNEL, KERNEL)),
    }
    return {name: k / np.linalg.norm(k) for name, k in kernels.items()}


def on_input_grid(kernel: np.ndarray) -> np.ndarray:
    """The RF of the center unit of a 'same'-padded conv: the kernel around (SIZE//2, SIZE//2)."""
    grid = np.zeros((SIZE, SIZE))
    top = SIZE // 2 - KERNEL // 2
    grid[top : top + KERNEL, top : top + KERNEL] = kernel
    return grid


def planted_conv() -> nn.Conv2d:
    """Channels 0-2: planted kernels with a small positive bias (active at a zero input);
    channel 3: zero kernel and negative bias, a unit that cannot respond to anything."""
    conv = nn.Conv2d(1, 4, KERNEL, padding=KERNEL // 2)
    with torch.no_grad():
        conv.weight.zero_()
        for index, kernel in enumerate(planted_kernels().values()):
            conv.weight[index, 0] = torch.tensor(kernel)
        conv.bias.copy_(torch.tensor([0.1, 0.1, 0.1, -1.0]))
    return conv


class TinyNet(nn.Module):
    """A model with the project's access API (layer_names, activation) and a flat layer."""

    layer_names = ["retina_1", "retina_2", "fc_1"]

    def __init__(self, first: nn.Conv2d | None = None, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.retina_1 = first or nn.Conv2d(1, 4, KERNEL, padding=KERNEL // 2)
        self.retina_2 = nn.Conv2d(self.retina_1.out_channels, 3, 5, padding=2)
        self.fc_1 = nn.Linear(3 * SIZE * SIZE, 5)
        self.dropout = nn.Dropout(0.5)

    def activation(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        x = torch.relu(self.retina_1(x))
        if layer == "retina_1":
            return x
        x = torch.relu(self.retina_2(x))
        if layer == "retina_2":
            return x
        return torch.relu(self.fc_1(self.dropout(x.flatten(1))))

    def forward(self, x):
        return self.activation(x, "fc_1")


def correlation(a, b) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


# ----------------------------------------------------------------------------- ground truth
@pytest.mark.parametrize("access", ["hook", "layer_api"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_recovers_planted_kernels(method, access):
    """Claim: gradient, actmax and sta each recover a planted DoG, Gabor and noise kernel
    (correlation > 0.95, right sign) for units that respond, through either model access."""
    if access == "hook":
        model, layer = nn.Sequential(planted_conv(), nn.ReLU()), "1"
    else:
        model, layer = TinyNet(planted_conv()), "retina_1"
    rfs = extract_rfs(model, layer, method, input_shape=SHAPE, progress=False, **FAST[method])
    assert rfs.dims == ("channel", "y", "x") and rfs.name == "rf"
    assert rfs.sizes == {"channel": 4, "y": SIZE, "x": SIZE}
    for index, (name, kernel) in enumerate(planted_kernels().items()):
        assert bool(rfs.responsive[index]), name
        truth = on_input_grid(kernel)
        assert correlation(rfs[index], truth) > 0.95, name
        assert float((rfs[index].values * truth).sum()) > 0, f"{name}: sign flipped"
    dog_center = rfs[0].sel(y=SIZE // 2, x=SIZE // 2)
    assert float(dog_center) > 0, "ON-center DoG must come back ON-center"


@pytest.mark.parametrize("method", METHODS)
def test_unit_that_cannot_respond_is_flagged_not_dropped(method):
    """Claim: a unit whose response and gradient are zero everywhere (zero kernel, negative
    bias) is kept, flagged responsive=False, with an all-zero RF, by every method."""
    model = nn.Sequential(planted_conv(), nn.ReLU())
    rfs = extract_rfs(model, "1", method, input_shape=SHAPE, progress=False, **FAST[method])
    assert list(rfs.channel.values) == [0, 1, 2, 3]
    assert list(rfs.responsive.values) == [True, True, True, False]
    assert np.all(rfs[3].values == 0) and np.all(np.isfinite(rfs.values))


def test_gradient_base_decides_responsiveness_of_silent_relu():
    """Claim: the gradient RF is taken at the chosen base image: a ReLU unit silent at zeros
    (negative bias) is unresponsive there but recovered at a gray base."""
    conv = nn.Conv2d(1, 1, KERNEL, padding=KERNEL // 2)
    kernel = np.abs(planted_kernels()["dog"])
    with torch.no_grad():
        conv.weight[0, 0] = torch.tensor(kernel)
        conv.bias.fill_(-0.5 * kernel.sum() / 2)  # active at gray 0.5, silent at zero
    model = nn.Sequential(conv, nn.ReLU())
    at_zeros = extract_rfs(model, "1", "gradient", input_shape=SHAPE, base="zeros")
    at_gray = extract_rfs(model, "1", "gradient", input_shape=SHAPE, base="gray")
    assert not bool(at_zeros.responsive[0]) and bool(at_gray.responsive[0])
    assert correlation(at_gray[0], on_input_grid(kernel)) > 0.999
    assert at_gray.attrs["base"] == "gray" and at_gray.attrs["gray_level"] == 0.5


def test_gradient_rf_has_unit_rms():
    """Claim: the gradient method divides the input gradient by its RMS."""
    rfs = extract_rfs(TinyNet(), "retina_2", "gradient", input_shape=SHAPE)
    rms = np.sqrt((rfs.where(rfs.responsive, drop=True) ** 2).mean(("y", "x")))
    np.testing.assert_allclose(rms.values, 1.0, rtol=1e-5)


def test_flat_layer_unit_is_the_channel():
    """Claim: for a flat (fc) layer, the unit of channel c is output index c; its gradient RF
    is weight row c reshaped to the input grid."""
    linear = nn.Linear(SIZE * SIZE, 6)
    with torch.no_grad():
        linear.bias.fill_(5.0)  # every unit active at zero
    model = nn.Sequential(nn.Flatten(), linear, nn.ReLU())
    rfs = extract_rfs(model, "2", "gradient", input_shape=SHAPE)
    assert rfs.sizes["channel"] == 6
    for c in range(6):
        assert correlation(rfs[c], linear.weight[c].detach().reshape(SIZE, SIZE)) > 0.9999
    assert "channel index" in rfs.attrs["unit"]


def test_sta_equals_noise_averaged_gradient_scale():
    """Claim (Stein's lemma): for a linear unit, cov(response, z) / noise_std equals its
    input gradient, so the sta of a linear unit matches the unnormalized kernel."""
    conv = nn.Conv2d(1, 1, KERNEL, padding=KERNEL // 2)
    kernel = planted_kernels()["gabor"]
    with torch.no_grad():
        conv.weight[0, 0] = torch.tensor(kernel)
    model = nn.Sequential(conv, nn.Identity())
    rfs = extract_rfs(model, "1", "sta", input_shape=SHAPE, n_samples=32768, noise_std=0.5)
    truth = on_input_grid(kernel)
    np.testing.assert_allclose(rfs[0].values, truth, atol=6 * float(rfs.spread.max()))
    assert correlation(rfs[0], truth) > 0.99


# ----------------------------------------------------------------------------- batching
@pytest.mark.parametrize("layer", ["retina_1", "retina_2", "fc_1"])
@pytest.mark.parametrize("method", METHODS)
def test_batched_extraction_equals_one_channel_at_a_time(method, layer):
    """Claim: extracting all channels in one batched pass gives the same RFs, spreads,
    activations and flags as extracting each channel alone."""
    model = TinyNet(seed=3)
    options = {**FAST[method], **({"n_samples": 2048} if method == "sta" else {})}
    batched = extract_rfs(model, layer, method, input_shape=SHAPE, seed=1, **options)
    alone = xr.concat(
        [
            extract_rfs(model, layer, method, input_shape=SHAPE, seed=1, channels=[c], **options)
            for c in batched.channel.values
        ],
        dim="channel",
    )
    scale = float(np.abs(batched).max())
    np.testing.assert_allclose(alone.values, batched.values, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(
        alone.spread.values, batched.spread.values, rtol=1e-4, atol=1e-5 * scale
    )
    np.testing.assert_allclose(alone.activation.values, batched.activation.values, rtol=1e-4)
    assert np.array_equal(alone.responsive.values, batched.responsive.values)


def test_batch_size_chunks_do_not_change_actmax():
    """Claim: chunking channels (batch_size) is only a memory knob; results are unchanged."""
    model = TinyNet(seed=4)
    whole = extract_rfs(model, "retina_1", "actmax", input_shape=SHAPE, **FAST["actmax"])
    chunked = extract_rfs(
        model, "retina_1", "actmax", input_shape=SHAPE, batch_size=4, **FAST["actmax"]
    )
    np.testing.assert_allclose(chunked.values, whole.values, rtol=1e-4, atol=1e-6)


SMALL_RETINA = dict(retina_channels=4, vvs_channels=4, vvs_layers=1, fc_units=8, kernel_size=5)


@pytest.mark.parametrize(
    ("preset", "twin"), [("raf-r2", "bp"), ("draf-bottleneck-4", "bp-bottleneck-4")]
)
@pytest.mark.parametrize("method", ["gradient", "actmax"])
def test_feedback_models_are_probed_with_their_true_gradient(preset, twin, method):
    """Claim: an RF is a property of the network's function: a RAF or dRAF model (whose
    training backward pass sends Q P delta, or a direct error, instead of W^T delta) has
    the same RFs as a backprop model with the same weights, and probing it changes nothing."""
    from retina_raf.models import build_model

    feedback_model = build_model(preset, seed=0, **SMALL_RETINA)
    plain = build_model(twin, seed=1, **SMALL_RETINA)
    missing, _ = plain.load_state_dict(feedback_model.state_dict(), strict=False)
    assert not missing
    before = copy.deepcopy(feedback_model.state_dict())
    options = {"channels": range(4), "input_shape": (1, 32, 32), "n_steps": 10}
    if method == "gradient":
        del options["n_steps"]
    got = extract_rfs(feedback_model, "retina_2", method, **options)
    want = extract_rfs(plain, "retina_2", method, **options)
    np.testing.assert_allclose(got.values, want.values, rtol=1e-4, atol=1e-5)
    assert np.array_equal(got.responsive, want.responsive) and got.responsive.any()
    after = feedback_model.state_dict()
    for key, value in before.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(after[key], value), f"{key} changed while probing"
        else:
            assert repr(after[key]) == repr(value), f"{key} changed while probing"
    assert "forward" not in vars(feedback_model.retina_2.conv)  # patch removed


# ----------------------------------------------------------------------------- the window
@pytest.mark.parametrize("method", METHODS)
def test_the_layer_computed_on_the_center_units_support_gives_the_same_rfs(method, monkeypatch):
    """Claim: a center unit of stride-1 'same'-padded convolutions sees only its support, so
    computing the layer on that window (9 x 9 of 32 x 32 pixels for retina_2 with 5 x 5
    kernels) changes no RF, spread, activation or flag of any method."""
    from analysis.rf.objectives import CenterUnits
    from retina_raf.models import build_model

    model = build_model("raf-r2", seed=0, **SMALL_RETINA)
    used = []
    restrict = CenterUnits.restrict_to

    def recorded(self, support):
        used.append(restrict(self, support))
        return used[-1]

    monkeypatch.setattr(CenterUnits, "restrict_to", recorded)
    options = {"input_shape": (1, 32, 32), "seed": 2, **FAST[method]}
    if method == "sta":
        options["n_samples"] = 2048
    windowed = extract_rfs(model, "retina_2", method, **options)
    assert used == [True]
    monkeypatch.setattr(CenterUnits, "restrict_to", lambda self, support: False)
    whole = extract_rfs(model, "retina_2", method, **options)
    scale = float(np.abs(whole).max())
    assert windowed.attrs["support"] == [12, 21, 12, 21] and scale > 0
    np.testing.assert_allclose(windowed.values, whole.values, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(windowed.spread.values, whole.spread.values, rtol=1e-4,
                               atol=1e-5 * scale)  # fmt: skip
    np.testing.assert_allclose(windowed.activation.values, whole.activation.values, rtol=1e-4,
                               atol=1e-6)  # fmt: skip
    assert np.array_equal(windowed.responsive.values, whole.responsive.values)


def test_a_window_the_center_units_do_not_see_alone_is_refused():
    """restrict_to checks before it crops: the true support of TinyNet's retina_2 (two
    'same' convolutions: k1 + k2 - 1 pixels) is taken, a smaller window or a layer that mixes
    every position (a global mean) keeps the whole image, and so does a flat layer."""
    from analysis.rf.objectives import CenterUnits

    class GlobalMean(TinyNet):
        def activation(self, x, layer):
            out = super().activation(x, layer)
            return out + x.mean() if layer == "retina_2" else out

    def units(model, layer="retina_2"):
        return CenterUnits(model, layer, SHAPE, torch.device("cpu"), torch.float32)

    net, center = TinyNet(seed=5), SIZE // 2
    half = net.retina_1.kernel_size[0] // 2 + net.retina_2.kernel_size[0] // 2
    support = [center - half, center + half + 1] * 2
    true = units(net)
    assert true.restrict_to(support) and true.window == tuple(support)
    small = units(net)
    assert not small.restrict_to([center - half + 1, center + half] * 2)
    assert small.window is None
    assert not units(GlobalMean(seed=5)).restrict_to(support)
    assert not units(TinyNet(seed=5), "fc_1").restrict_to(support)
    assert not units(TinyNet(seed=5)).restrict_to([0, SIZE, 0, SIZE])  # the whole image


# ----------------------------------------------------------------------------- actmax
@pytest.mark.parametrize("norm", [None, 0.5, 4.0])
def test_actmax_respects_its_norm(norm):
    """Claim: every start ends on the sphere ||delta||_2 = norm (default 0.1 * sqrt(pixels))."""
    starts = actmax_starts(
        TinyNet(seed=5), "retina_2", input_shape=SHAPE, n_starts=3, n_steps=15, norm=norm
    )
    expected = 0.1 * math.sqrt(SIZE * SIZE) if norm is None else norm
    norms = np.sqrt((starts.image**2).sum(("y", "x")))
    np.testing.assert_allclose(norms.values, expected, rtol=1e-5)
    assert starts.attrs["norm"] == pytest.approx(expected)
    rfs = extract_rfs(
        TinyNet(seed=5), "retina_2", "actmax", input_shape=SHAPE, norm=norm, n_steps=15
    )
    assert rfs.attrs["norm"] == pytest.approx(expected)
    assert np.all(np.sqrt((rfs**2).sum(("y", "x"))) <= expected * (1 + 1e-5))


@pytest.mark.parametrize("start", ["noise", "zeros"])
def test_actmax_more_steps_never_lower_the_activation(start):
    """Claim: the activation reached by every start is non-decreasing in the number of steps."""
    model = TinyNet(seed=6)
    reached = [
        actmax_starts(
            model, "retina_2", input_shape=SHAPE, n_starts=3, n_steps=n, start=start
        ).activation.values
        for n in (0, 1, 5, 20, 40)
    ]
    for fewer, more in zip(reached[:-1], reached[1:], strict=True):
        assert np.all(more >= fewer)
    assert np.any(reached[-1] > reached[0]), "the ascent should improve some start"


def test_actmax_zero_start_reaches_relu_unit_silent_at_its_kink():
    """Claim: a 'zeros' start escapes the ReLU kink of a bias-free unit at a zero input."""
    conv = planted_conv()
    with torch.no_grad():
        conv.bias[:3] = 0.0  # exactly at the kink at zero input
    model = nn.Sequential(conv, nn.ReLU())
    rfs = extract_rfs(model, "1", "actmax", input_shape=SHAPE, start="zeros", n_steps=30)
    for index, kernel in enumerate(planted_kernels().values()):
        assert bool(rfs.responsive[index])
        assert correlation(rfs[index], on_input_grid(kernel)) > 0.95


def test_actmax_records_spread_and_activation():
    """Claim: actmax returns the mean over starts with their spread (a (channel, y, x)
    coordinate), the activation reached per channel and how many starts responded."""
    rfs = extract_rfs(TinyNet(seed=8), "retina_2", "actmax", input_shape=SHAPE, n_steps=10)
    assert rfs.spread.dims == ("channel", "y", "x")
    assert rfs.activation.dims == ("channel",) and rfs.n_active_starts.dims == ("channel",)
    assert np.all(rfs.spread.values >= 0)
    assert np.all(rfs.n_active_starts.values <= METHOD_OPTIONS["actmax"]["n_starts"])


# ----------------------------------------------------------------------------- hygiene
@pytest.mark.parametrize("method", METHODS)
def test_deterministic_for_a_given_seed(method):
    """Claim: the same seed gives identical RFs; random methods change with the seed."""
    model = TinyNet(seed=9)
    options = {**FAST[method], **({"n_samples": 2048} if method == "sta" else {})}
    run = [
        extract_rfs(model, "retina_2", method, input_shape=SHAPE, seed=s, **options)
        for s in (0, 0, 1)
    ]
    assert np.array_equal(run[0].values, run[1].values)
    if method != "gradient":
        assert not np.array_equal(run[0].values, run[2].values)


def test_model_state_is_restored_and_no_parameter_gradients():
    """Claim: extraction runs in eval mode (dropout off) without touching parameter grads,
    and leaves the model's mode and requires_grad flags as they were."""
    model = TinyNet(seed=10).train()
    first = extract_rfs(model, "fc_1", "gradient", input_shape=SHAPE)
    second = extract_rfs(model, "fc_1", "gradient", input_shape=SHAPE)
    assert np.array_equal(first.values, second.values)  # dropout was off
    assert model.training
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


@pytest.mark.parametrize("method", METHODS)
def test_attributes_record_method_and_every_option(method):
    """Claim: attributes record the method, the layer, the seed and every resolved option."""
    rfs = extract_rfs(TinyNet(), "retina_1", method, input_shape=SHAPE, seed=3, **FAST[method])
    assert rfs.attrs["method"] == method and rfs.attrs["layer"] == "retina_1"
    assert rfs.attrs["rf_seed"] == 3
    assert set(METHOD_OPTIONS[method]) <= set(rfs.attrs)
    for name, value in FAST[method].items():
        assert rfs.attrs[name] == value


def test_netcdf_round_trip(tmp_path):
    """Claim: the RF array survives NetCDF (variable 'rf', dims, responsive flags, attrs)."""
    model = nn.Sequential(planted_conv(), nn.ReLU())
    rfs = extract_rfs(model, "1", "actmax", input_shape=SHAPE, n_steps=5)
    path = write_netcdf(rfs, tmp_path / "rfs.nc")
    with xr.open_dataarray(path, engine="h5netcdf") as back:
        assert back.name == "rf" and back.dims == ("channel", "y", "x")
        assert back.responsive.dtype == bool
        assert list(back.responsive.values) == [True, True, True, False]
        np.testing.assert_array_equal(back.values, rfs.values)
        np.testing.assert_array_equal(back.spread.values, rfs.spread.values)
        assert back.attrs["method"] == "actmax" and back.attrs["batch_size"] == "none"


def test_montage_draws_every_channel_including_unresponsive(tmp_path):
    """Claim: the montage has one tile per channel labelled by its index, unresponsive units
    included (a gray tile), and saves as a PNG."""
    model = nn.Sequential(planted_conv(), nn.ReLU())
    rfs = extract_rfs(model, "1", "gradient", input_shape=SHAPE)
    fig = plot_rf_montage(rfs, ncols=2)
    assert [t.get_text() for t in fig.axes[0].texts] == ["0", "1", "2", "3", "5 px"]
    gray = [patch for patch in fig.axes[0].patches if patch.get_fill()]
    assert len(gray) == 1  # channel 3 never responds
    path = save_rf_montage(rfs, tmp_path / "rfs.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- bad input
def test_unknown_layer_lists_valid_names():
    """Claim: an unknown layer is a ConfigError whose message lists the valid layer names."""
    with pytest.raises(ConfigError, match="retina_1, retina_2, fc_1"):
        extract_rfs(TinyNet(), "retina_9", "gradient", input_shape=SHAPE)
    with pytest.raises(ConfigError, match="valid layers: 0, 1"):
        extract_rfs(nn.Sequential(planted_conv(), nn.ReLU()), "relu", input_shape=SHAPE)


@pytest.mark.parametrize(
    ("method", "options", "message"),
    [
        ("sparse", {}, "unknown RF method"),
        ("gradient", {"n_starts": 3}, "do not apply to method 'gradient'"),
        ("actmax", {"norm": -1.0}, "norm"),
        ("actmax", {"n_starts": 0}, "n_starts"),
        ("actmax", {"start": "ones"}, "start"),
        ("sta", {"n_samples": 1}, "n_samples"),
        ("gradient", {"base": "white"}, "base"),
    ],
)
def test_bad_method_or_option_is_a_config_error(method, options, message):
    """Claim: an unknown method, an option of another method or a bad value is a clear error."""
    with pytest.raises(ConfigError, match=message):
        extract_rfs(TinyNet(), "retina_1", method, input_shape=SHAPE, **options)


def test_bad_channels_are_a_config_error():
    """Claim: channel indices outside the layer are rejected with the layer's channel count."""
    with pytest.raises(ConfigError, match="4 channels"):
        extract_rfs(TinyNet(), "retina_1", "gradient", input_shape=SHAPE, channels=[4])


# ----------------------------------------------------------------------------- devices
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", METHODS)
def test_cuda_matches_cpu(method):
    """Claim: extraction runs on CUDA and agrees with the CPU for the same seed."""
    cpu = extract_rfs(TinyNet(seed=11), "retina_2", method, input_shape=SHAPE, **FAST[method])
    gpu = extract_rfs(
        TinyNet(seed=11), "retina_2", method, input_shape=SHAPE, device="cuda", **FAST[method]
    )
    assert correlation(cpu.values, gpu.values) > 0.999
    assert np.array_equal(cpu.responsive.values, gpu.responsive.values)
    again = extract_rfs(
        TinyNet(seed=11), "retina_2", method, input_shape=SHAPE, device="cuda", **FAST[method]
    )
    assert np.array_equal(gpu.values, again.values)


# ----------------------------------------------------------------------------- CLI
TINY_RUN_KERNEL = 3  # kernel size of the tiny run (the planted kernels keep KERNEL)
TINY_RUN = [
    "model.retina.retina_channels=4",
    "model.retina.n_bn=4",
    "model.retina.vvs_channels=4",
    "model.retina.vvs_layers=1",
    "model.retina.fc_units=8",
    f"model.retina.kernel_size={TINY_RUN_KERNEL}",
    "data.train_limit=64",
    "data.test_limit=32",
    "train.progress=false",
    "train.diagnostics=false",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> str:
    """A finished one-epoch run folder of a tiny bp network (4 retina channels, N_bn = 4)."""
    from retina_raf_cli import main

    out = tmp_path_factory.mktemp("runs")
    sets = [arg for kv in TINY_RUN for arg in ("--set", kv)]
    args = ["train", "--preset", "bp", "--seed", "3", "--epochs", "1", "--device", "cpu"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--out", str(out), "--name", "tiny", *sets])
    assert exit_info.value.code == 0
    return str(out / "tiny")


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_cli_writes_netcdf_with_run_identity(tiny_run, tmp_path, run_cli, method):
    """Claim: `retina-raf rfs RUN_DIR` writes a NetCDF that reopens as 'rf' (channel, y, x)
    with the run's identity (preset, rank, N_bn, seed) as coordinates, and a PNG montage."""
    options = {"actmax": ["--n-starts", "2", "--steps", "5"], "sta": ["--n-samples", "512"]}
    target = tmp_path / "rfs.nc"
    code, out, err = run_cli(
        "rfs", tiny_run, "--layer", "retina_2", "--method", method, "--out", target,
        *options.get(method, []),
    )  # fmt: skip
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rfs.nc", "rfs.png"]  # no temp files
    with xr.open_dataarray(target, engine="h5netcdf") as rfs:
        assert rfs.name == "rf" and rfs.dims == ("channel", "y", "x")
        assert rfs.sizes == {"channel": 4, "y": 32, "x": 32}
        assert rfs["preset"].item() == "bp" and rfs["seed"].item() == 3
        assert rfs["n_bn"].item() == 4 and rfs["rank"].item() == 4
        assert rfs.responsive.dtype == bool and rfs.spread.dims == rfs.dims
        assert rfs.attrs["method"] == method and rfs.attrs["layer"] == "retina_2"
        # the center unit of the second k x k convolution sees 2 (k - 1) + 1 pixels
        y0, y1, x0, x1 = rfs.attrs["support"]
        assert y1 - y0 == x1 - x0 == 2 * (TINY_RUN_KERNEL - 1) + 1
        assert (y0 + y1 - 1) / 2 == 16  # centered
    assert (tmp_path / "rfs.png").read_bytes()[:4] == b"\x89PNG"
    assert "responsive" in out


@pytest.mark.slow
def test_cli_default_output_sits_in_the_run_folder(tiny_run, run_cli):
    """Claim: without --out the RFs go to RUN_DIR/rfs_<layer>_<method>.nc (+ .png)."""
    code, _, err = run_cli("rfs", tiny_run, "--layer", "retina_1", "--method", "gradient")
    assert code == 0, err
    path = Path(tiny_run) / "rfs_retina_1_gradient.nc"
    with xr.open_dataarray(path, engine="h5netcdf") as rfs:
        assert rfs.sizes["channel"] == 4
    assert path.with_suffix(".png").is_file()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--layer", "retina_9"], "valid layers: retina_1, retina_2, vvs_1, fc_1, fc_2"),
        (["--method", "sparse"], "--method"),
        (["--method", "gradient", "--n-starts", "3"], "do not apply to method 'gradient'"),
        (["--channels", "0,9"], "out of range"),
        (["--channels", "a,b"], "--channels"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(tiny_run, tmp_path, run_cli, args, message):
    """Claim: bad input exits with status 2, one line on stderr, and writes no file."""
    code, _, err = run_cli("rfs", tiny_run, "--out", tmp_path / "rfs.nc", *args)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_cli_rfs_out_must_be_netcdf(tiny_run, tmp_path, run_cli):
    """`rfs --out x.txt` is refused before any work (it would write NetCDF under .txt)."""
    code, _, err = run_cli("rfs", tiny_run, "--out", tmp_path / "x.txt", "--method", "gradient")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "must end in .nc" in err
    assert list(tmp_path.iterdir()) == []


def test_cli_run_folder_without_model_exits_2(tmp_path, run_cli):
    """Claim: a run folder without model.pt (or no folder at all) is a one-line error, exit 2."""
    run_dir = tmp_path / "unfinished"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("preset: bp\n")
    for folder, message in [(run_dir, "has no model.pt"), (tmp_path / "absent", "run folder")]:
        code, _, err = run_cli("rfs", folder, "--out", tmp_path / "rfs.nc")
        assert code == 2
        assert len(err.strip().splitlines()) == 1 and message in err
    assert not (tmp_path / "rfs.nc").exists()


def test_actmax_best_start_is_not_blurred_by_starts_that_found_other_maxima():
    """A unit with two maxima (response |<w, x>|, maximal at +w and at -w): starts climb to
    either, so their mean blurs toward zero, while combine="best" returns one clean maximum."""

    class TwoMaxima(nn.Module):
        def __init__(self, kernel):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, kernel.shape[-1], padding=kernel.shape[-1] // 2,
                                  bias=False)  # fmt: skip
            with torch.no_grad():
                self.conv.weight.copy_(torch.stack([kernel, -kernel]).unsqueeze(1))
            self.out = nn.Identity()

        def forward(self, x):
            return self.out(torch.relu(self.conv(x)).sum(1, keepdim=True))

    torch.manual_seed(0)
    kernel = torch.randn(7, 7)
    model = TwoMaxima(kernel)
    options = dict(n_starts=8, n_steps=40, progress=False, input_shape=(1, 15, 15))
    best = extract_rfs(model, "out", "actmax", combine="best", **options)
    mean = extract_rfs(model, "out", "actmax", combine="mean", **options)
    target = torch.zeros(15, 15)
    target[4:11, 4:11] = kernel

    def similarity(rf) -> float:
        rf = torch.as_tensor(rf.values[0])
        return abs(float((rf * target).sum() / (rf.norm() * target.norm())))

    def amplitude(rf) -> float:
        return float(np.linalg.norm(rf.values[0]))

    assert similarity(best) > 0.95  # one maximum, at full contrast (the sphere's norm)
    assert amplitude(best) == pytest.approx(best.attrs["norm"], rel=1e-4)
    assert amplitude(mean) < 0.8 * amplitude(best)  # +w and -w starts cancel in the mean


def test_methods_agree_unit_by_unit_on_a_unit_that_is_linear_where_probed():
    """Gradient, actmax and STA RFs of a unit that is linear over the probed inputs (a ReLU
    kept active by a large bias) are all its kernel: method_agreement reports correlations
    near +1 for every pair and flags every unit responsive."""
    from analysis.rf import method_agreement

    torch.manual_seed(0)
    conv = nn.Conv2d(1, 3, 7, padding=3)
    with torch.no_grad():
        conv.bias.fill_(50.0)
    model = nn.Sequential(conv, nn.ReLU())
    agreement = method_agreement(
        model, "1", input_shape=(1, 15, 15),
        options={"actmax": {"n_starts": 2, "n_steps": 20}, "sta": {"n_samples": 4096}},
    )  # fmt: skip
    for pair in ("gradient_vs_actmax", "gradient_vs_sta", "actmax_vs_sta"):
        assert (agreement[pair] > 0.95).all(), pair
    assert agreement["responsive_actmax"].all()


def test_budget_check_tells_silent_units_from_units_not_found():
    """responsive_by_budget: a unit whose bias keeps it below zero for any input of the probed
    size is unresponsive at every actmax budget and to STA's white noise; a unit active at the
    base image is responsive at every budget. Budgets are labelled starts x steps."""
    from analysis.rf import responsive_by_budget

    torch.manual_seed(0)
    conv = nn.Conv2d(1, 2, 5, padding=2)
    with torch.no_grad():
        conv.bias.copy_(torch.tensor([0.5, -1e4]))
    model = nn.Sequential(conv, nn.ReLU())
    check = responsive_by_budget(model, "1", budgets=((2, 5), (4, 10)), input_shape=(1, 11, 11),
                                 sta_options={"n_samples": 1024})  # fmt: skip
    assert list(check["budget"].values) == ["2x5", "4x10"]
    assert check["responsive"].dims == ("budget", "channel")
    assert check["responsive"].sel(channel=0).all() and bool(check["responsive_sta"][0])
    assert not check["responsive"].sel(channel=1).any() and not bool(check["responsive_sta"][1])
