"""The retina/VVS model (docs/design.md#model): presets, layer access, and what error reaches
the retina."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from retina_raf.dense import ColumnMajorLinear
from retina_raf.errors import ConfigError
from retina_raf.feedback import RAFConv2d
from retina_raf.fftconv import FFTConv2d
from retina_raf.models import build_model

TINY = dict(retina_channels=6, vvs_channels=6, vvs_layers=2, fc_units=16, kernel_size=5,
            image_size=12, dropout=0.0)  # fmt: skip
PRESETS = ["bp", "bp-bottleneck-1", "bp-bottleneck-2", "bp-bottleneck-4", "raf-r2", "raf-r4",
           "raf-r32", "draf-bottleneck-4"]  # fmt: skip


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_builds_full_size(preset):
    """Every preset builds at the paper's size; a forward pass gives (batch, 10) logits and the
    retina output has N_bn channels."""
    model = build_model(preset, seed=0).eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert model(x).shape == (2, 10)
        retina = model.activation(x, "retina_2")
    n_bn = {"bp-bottleneck-1": 1, "bp-bottleneck-2": 2}.get(preset, 4 if "4" in preset else 32)
    if preset.startswith("raf"):
        n_bn = 32
    assert retina.shape == (2, n_bn, 32, 32)
    assert (retina >= 0).all()  # post-nonlinearity
    assert model.layer_names == ["retina_1", "retina_2", "vvs_1", "vvs_2", "vvs_3", "fc_1", "fc_2"]


def test_layers_reachable_by_name_and_rules_from_preset():
    """raf-r4: vvs_1's feedback has rank 4; other layers RAF full rank (others=raf) or
    plain backprop layers (others=bp); retina_1 is always plain."""
    model = build_model("raf-r4", **TINY)
    assert isinstance(model.vvs_1.conv, RAFConv2d) and model.vvs_1.conv.feedback_rank == 4
    assert model.vvs_2.conv.feedback_rank == TINY["vvs_channels"]
    assert type(model.retina_1.conv) is FFTConv2d  # plain: nn.Conv2d by FFT or direct
    assert type(model.fc_2.linear) is ColumnMajorLinear  # the readout: exact error (config.py)
    bp_others = build_model("raf-r4", others="bp", **TINY)
    assert isinstance(bp_others.vvs_1.conv, RAFConv2d)
    assert (
        type(bp_others.vvs_2.conv) is FFTConv2d and type(bp_others.fc_1.linear) is ColumnMajorLinear
    )


def test_raf_pca_preset_sets_vvs1_p_by_pca_and_is_its_own_rule():
    """raf-pca-r2: the retina's feedback (vvs_1) has rank 2 with P by the PCA rule, every other
    layer as raf-r2; its runs are labelled rule raf_pca, apart from Oja's raf-r2."""
    from retina_raf.config import resolve_run_config
    from retina_raf.presets import preset_with_rank
    from retina_raf.runs import run_identity

    model = build_model("raf-pca-r2", **TINY)
    assert model.vvs_1.conv.feedback_rank == 2 and model.vvs_1.conv.p_rule == "pca"
    assert model.vvs_2.conv.p_rule == build_model("raf-r2", **TINY).vvs_2.conv.p_rule
    identity = run_identity(resolve_run_config("raf-pca-r2", 0, {}))
    assert identity["rule"] == "raf_pca" and identity["rank"] == 2
    assert run_identity(resolve_run_config("raf-r2", 0, {}))["rule"] == "raf"
    assert preset_with_rank("raf-pca-r2", 4) == "raf-pca-r4"


def test_raf_aligned_preset_ties_vvs1_q_to_its_weight_and_is_its_own_rule():
    """raf-aligned-r2: vvs_1's feedback has rank 2, P by PCA and Q = W^T P^T (rule
    raf_aligned); its runs are labelled raf_aligned, apart from raf-pca-r2."""
    from retina_raf.config import resolve_run_config
    from retina_raf.presets import preset_with_rank
    from retina_raf.runs import run_identity

    conv = build_model("raf-aligned-r2", **TINY).vvs_1.conv
    assert (conv.feedback_rank, conv.p_rule, conv.tie_q, conv.train_q) == (2, "pca", True, False)
    torch.testing.assert_close(conv.q, torch.einsum("rm,mnyx->rnyx", conv.p, conv.weight))
    identity = run_identity(resolve_run_config("raf-aligned-r2", 0, {}))
    assert identity["rule"] == "raf_aligned" and identity["rank"] == 2
    assert preset_with_rank("raf-aligned-r2", 4) == "raf-aligned-r4"


@pytest.mark.parametrize(
    "preset, overrides, message",
    [
        ("raf-r99", {}, "out of range"),
        ("bp-bottleneck-0", {}, ">= 1"),
        ("nonsense", {}, "unknown preset"),
        ("bp", {"n_bn": 0}, "n_bn"),
        ("bp", {"layer_rank": {"vvs_9": 2}}, "selects no layer"),
    ],
)
def test_invalid_configurations_are_rejected(preset, overrides, message):
    """Ranks larger than the layer, bottleneck widths < 1, unknown presets or layers."""
    with pytest.raises(ConfigError, match=message):
        build_model(preset, **overrides)


def _retina_grad(model, x, loss_fn):
    """The gradient at retina_2's output under the model's rules, and vvs_1's error."""
    model.zero_grad()
    captured = {}
    retina = model.activation(x, "retina_2").detach().requires_grad_(True)
    h = retina
    for name in model.layer_names[2:]:
        h = model.layers[name](h)
        if name == "vvs_1":
            vvs1_out = h
    vvs1_out.register_hook(lambda g: captured.setdefault("delta_after_relu", g))
    loss_fn(h).backward()
    return retina.grad, captured


def test_raf_r2_error_into_retina_is_a_two_channel_map():
    """raf-r2: the gradient at retina_2's output is Q applied to the 2-channel map P delta,
    where delta is the error at vvs_1's pre-activation; two losses whose errors at vvs_1
    agree after P give the same retina gradient."""
    torch.manual_seed(0)
    model = build_model("raf-r2", **TINY).eval()
    conv = model.vvs_1.conv
    x = torch.rand(3, 1, 12, 12)
    retina = model.activation(x, "retina_2").detach().requires_grad_(True)
    z = conv(retina)  # vvs_1 pre-activation
    delta = torch.randn_like(z)
    (z * delta).sum().backward()
    p_delta = torch.einsum("rm,bmyx->bryx", conv.p.detach(), delta)
    assert p_delta.shape[1] == 2
    pad = conv.padding
    expected = torch.nn.grad.conv2d_input(retina.shape, conv.q.detach(), p_delta, padding=pad)
    torch.testing.assert_close(retina.grad, expected, rtol=1e-5, atol=1e-6)
    # a second error that differs only in P's null space gives the same retina gradient
    p = conv.p.detach()
    null = torch.randn_like(delta)
    null = null - torch.einsum(
        "rm,bryx->bmyx", torch.linalg.pinv(p).t(), torch.einsum("rm,bmyx->bryx", p, null)
    )
    retina2 = retina.detach().requires_grad_(True)
    (conv(retina2) * (delta + null)).sum().backward()
    torch.testing.assert_close(retina2.grad, retina.grad, rtol=1e-4, atol=1e-5)
    # and an error with a different projection gives a different one
    retina3 = retina.detach().requires_grad_(True)
    (conv(retina3) * torch.randn_like(delta)).sum().backward()
    assert not torch.allclose(retina3.grad, retina.grad, atol=1e-3)


def test_bp_retina_gradient_is_exact():
    """bp: the retina gradient equals autograd's exact gradient of the same network."""
    torch.manual_seed(0)
    model = build_model("bp", **TINY).eval()
    x, y = torch.rand(4, 1, 12, 12), torch.tensor([0, 1, 2, 3])
    retina = model.activation(x, "retina_2").detach().requires_grad_(True)
    h = retina
    for name in model.layer_names[2:]:
        h = model.layers[name](h)
    (grad,) = torch.autograd.grad(F.cross_entropy(h, y), retina)
    # exact reference: functional forward with the same weights
    ref_in = retina.detach().requires_grad_(True)
    h = ref_in
    for name in model.layer_names[2:-2]:
        conv = model.layers[name].conv
        h = F.relu(F.conv2d(h, conv.weight, conv.bias, padding=conv.padding))
    h = F.relu(F.linear(h.flatten(1), model.fc_1.linear.weight, model.fc_1.linear.bias))
    h = F.linear(h, model.fc_2.linear.weight, model.fc_2.linear.bias)
    (ref,) = torch.autograd.grad(F.cross_entropy(h, y), ref_in)
    torch.testing.assert_close(grad, ref)


@pytest.mark.parametrize("conv_impl", ["direct", "fft"])
def test_draf_retina_receives_direct_error_from_source(conv_impl):
    """draf-bottleneck-4: the retina output receives B(delta_s) from the last VVS layer (its
    pre-activation error), not the gradient arriving from vvs_1; model.conv_impl reaches the
    direct pathway too."""
    torch.manual_seed(0)
    model = build_model("draf-bottleneck-4", conv_impl=conv_impl, **TINY).eval()
    fb = model.direct
    assert fb.conv_impl == conv_impl
    assert model.direct_source == "vvs_2" and model.direct_target == "retina_2"
    x, y = torch.rand(2, 1, 12, 12), torch.tensor([1, 2])
    captured = {}

    def record(key):
        def hook(module, inputs, out):
            out.register_hook(lambda g: captured.setdefault(key, g))

        return hook

    handles = [model.vvs_2.conv.register_forward_hook(record("delta_s")),
               model.retina_2.register_forward_hook(record("retina"))]  # fmt: skip
    F.cross_entropy(model(x), y).backward()
    for handle in handles:
        handle.remove()
    delta_s = captured["delta_s"]
    p_delta = torch.einsum("rm,bmyx->bryx", fb.p.detach(), delta_s)
    pad = fb.kernel_size // 2
    expected = torch.nn.grad.conv2d_input((2, 4, 12, 12), fb.q.detach(), p_delta, padding=pad)
    torch.testing.assert_close(captured["retina"], expected, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_raf_presets_stay_stable_with_the_paper_recipe():
    """RAF presets train with the paper's RMSprop recipe without the loss exploding (with RAF
    in the readout too, the loss reached 1e3-1e5 within 60 steps on this network)."""
    from retina_raf.config import parse_overrides, resolve_run_config
    from retina_raf.data import load_cifar10
    from retina_raf.models import model_from_config
    from retina_raf.train import make_optimizer

    ds = load_cifar10()
    x = torch.from_numpy(ds.x_train[:512]).float().div(255).unsqueeze(1)
    x, y = (x - x.mean()) / x.std(), torch.from_numpy(ds.y_train[:512])
    sets = ["model.retina.vvs_layers=1", "model.retina.fc_units=128"]
    for preset in ("raf-r2", "raf-r32"):
        cfg = resolve_run_config(preset, 0, parse_overrides(sets))
        torch.manual_seed(0)
        model = model_from_config(cfg.model).train()
        optimizer = make_optimizer(model, cfg)
        losses = []
        for step in range(40):
            i = torch.arange(step * 32, step * 32 + 32) % 512
            loss = F.cross_entropy(model(x[i]), y[i])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        assert max(losses[-10:]) < 3.0, (preset, losses)
