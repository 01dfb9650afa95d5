"""The learning rules (docs/design.md#learning-rules): RAF, KP, FA layers, their gradients.

Every test names the claim it checks. Sizes are tiny; float64 where exact identities are
checked.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from retina_raf.dense import ColumnMajorLinear
from retina_raf.errors import ConfigError
from retina_raf.feedback import (
    RULES,
    RAFConv2d,
    RAFLinear,
    alignment_angle,
    convert,
    effective_rank,
    exact_gradients,
    feedback_diagnostics,
    model_diagnostics,
    principal_angles,
)

F64 = dict(dtype=torch.float64)
CONV_GEOMETRIES = [  # (stride, padding, dilation)
    (1, 0, 1),
    (2, 1, 1),
    (1, 2, 2),
    (2, 3, 2),
    (1, "same", 1),
]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tensors here are tiny: threads only add contention on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def output_error(layer: nn.Module, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Run ``layer`` on x and backpropagate the output error ``delta`` (= dL/dz); return x.grad."""
    x = x.detach().requires_grad_()
    (layer(x) * delta).sum().backward()
    return x.grad


def copy_weights_into_feedback(layer: nn.Module) -> None:
    """Q = W^T (Linear) or Q = W (conv layout), P = I already: the feedback is backprop's."""
    with torch.no_grad():
        layer.q.copy_(layer.weight.t() if isinstance(layer, nn.Linear) else layer.weight)


# ---------------------------------------------------------------- forward / special cases


def test_forward_output_is_the_parent_layers():
    """Feedback layers change only the backward pass: same init and output as nn.* with the
    same seed (RAFLinear's parent stores W column-major: bitwise its output, nn.Linear's to
    rounding, the products summing in another order)."""
    torch.manual_seed(0)
    linear = nn.Linear(7, 5)
    torch.manual_seed(0)
    column_major_linear = ColumnMajorLinear(7, 5)
    torch.manual_seed(0)
    raf_linear = RAFLinear(7, 5, rank=2)
    x = torch.randn(4, 7)
    assert torch.equal(raf_linear.weight, linear.weight)
    assert torch.equal(raf_linear(x), column_major_linear(x))
    torch.testing.assert_close(raf_linear(x), linear(x), rtol=1e-6, atol=1e-6)
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 6, 3, stride=2, padding=1)
    torch.manual_seed(1)
    raf_conv = RAFConv2d(3, 6, 3, stride=2, padding=1, rank=2)
    images = torch.randn(2, 3, 9, 9, requires_grad=True)
    assert torch.equal(raf_conv(images), conv(images))
    with torch.no_grad():
        assert torch.equal(raf_conv(images), conv(images))


def test_full_rank_identity_feedback_with_copied_weights_is_backprop_linear():
    """rank = m, P = I, Q = W^T, no feedback learning: RAFLinear's input gradient is BP's
    (also for inputs with extra leading dims)."""
    torch.manual_seed(0)
    layer = RAFLinear(7, 5, p_rule="identity", train_q=False, **F64)
    copy_weights_into_feedback(layer)
    x, delta = torch.randn(4, 3, 7, **F64), torch.randn(4, 3, 5, **F64)
    expected = output_error(lambda h: F.linear(h, layer.weight, layer.bias), x, delta)
    torch.testing.assert_close(output_error(layer, x, delta), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("stride, padding, dilation", CONV_GEOMETRIES)
def test_full_rank_identity_feedback_with_copied_weights_is_backprop_conv(
    stride, padding, dilation
):
    """rank = m, P = I, Q = W: RAFConv2d's input gradient is BP's for any stride, padding and
    dilation."""
    torch.manual_seed(0)
    layer = RAFConv2d(3, 6, 3, stride, padding, dilation, p_rule="identity", **F64)
    copy_weights_into_feedback(layer)
    x = torch.randn(2, 3, 11, 10, **F64)
    reference = nn.Conv2d(3, 6, 3, stride, padding, dilation, **F64)
    reference.load_state_dict({"weight": layer.weight, "bias": layer.bias})
    delta = torch.randn_like(reference(x))
    expected = output_error(reference, x, delta)
    torch.testing.assert_close(output_error(layer, x, delta), expected, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- the rank limits the error


def test_linear_input_gradient_of_a_batch_has_rank_at_most_r():
    """Rank r feedback: the b x n matrix of input gradients spans at most r dimensions."""
    torch.manual_seed(0)
    layer = RAFLinear(20, 16, rank=3, **F64)
    grad = output_error(layer, torch.randn(32, 20, **F64), torch.randn(32, 16, **F64))
    assert torch.linalg.matrix_rank(grad) == 3


def test_conv_1x1_input_gradient_per_pixel_spans_at_most_r_channel_dimensions():
    """1x1 RAFConv2d of rank r: the channel vectors of the input gradient at all pixels of all
    images span at most r dimensions."""
    torch.manual_seed(0)
    layer = RAFConv2d(12, 16, 1, rank=3, **F64)
    x = torch.randn(4, 12, 6, 6, **F64)
    grad = output_error(layer, x, torch.randn(4, 16, 6, 6, **F64))
    pixels = grad.permute(0, 2, 3, 1).reshape(-1, 12)
    assert torch.linalg.matrix_rank(pixels) == 3


def test_conv_kxk_input_gradient_is_q_applied_to_the_r_channel_error_map():
    """k x k RAFConv2d: the input gradient depends on delta only through P delta; two errors
    with the same projection give the same input gradient, a different projection does not."""
    torch.manual_seed(0)
    layer = RAFConv2d(4, 8, 3, padding=1, rank=3, **F64)
    x = torch.randn(2, 4, 7, 7, **F64)
    delta = torch.randn(2, 8, 7, 7, **F64)
    p = layer.p.detach()
    null_projector = torch.eye(8, **F64) - p.t() @ torch.linalg.solve(p @ p.t(), p)
    invisible = torch.einsum("mk,bkyx->bmyx", null_projector, torch.randn_like(delta))
    assert torch.einsum("rm,bmyx->bryx", p, invisible).abs().max() < 1e-10
    grad = output_error(layer, x, delta)
    torch.testing.assert_close(output_error(layer, x, delta + invisible), grad)
    visible = torch.einsum("rm,bryx->bmyx", p, torch.randn(2, 3, 7, 7, **F64))
    assert (output_error(layer, x, delta + visible) - grad).abs().max() > 1e-3
    expected = F.conv_transpose2d(torch.einsum("rm,bmyx->bryx", p, delta), layer.q, padding=1)
    torch.testing.assert_close(grad, expected)


# ---------------------------------------------------------------- exact local gradients

RULE_RANKS = [(rule, rank) for rule in RULES for rank in (None, 2) if rule not in ("kp",)] + [
    ("kp", None)
]


@pytest.mark.parametrize("rule, rank", RULE_RANKS)
def test_weight_and_bias_gradients_are_the_exact_local_ones_for_every_rule(rule, rank):
    """W.grad and bias.grad equal nn.Linear's / nn.Conv2d's autograd gradients whatever the rule."""
    torch.manual_seed(0)
    layers = [
        (RAFLinear.from_rule(rule, 6, 5, rank=rank, **F64), torch.randn(3, 2, 6, **F64)),
        (
            RAFConv2d.from_rule(rule, 3, 5, 3, rank=rank, stride=2, padding=1, **F64),
            torch.randn(2, 3, 8, 8, **F64),
        ),
    ]
    for layer, x in layers:
        reference = copy.deepcopy(layer)
        out = layer(x)
        delta = torch.randn_like(out)
        (out * delta).sum().backward()
        if isinstance(layer, nn.Linear):
            ref_out = F.linear(x, reference.weight, reference.bias)
        else:
            ref_out = F.conv2d(x, reference.weight, reference.bias, stride=2, padding=1)
        (ref_out * delta).sum().backward()
        torch.testing.assert_close(layer.weight.grad, reference.weight.grad)
        torch.testing.assert_close(layer.bias.grad, reference.bias.grad)


def oja_formula(p: torch.Tensor, delta_rows: torch.Tensor) -> torch.Tensor:
    """-(P C (I - P^T P)) with C = m delta^T delta / ||delta||^2 (rows = batch and pixels)."""
    m = delta_rows.shape[1]
    covariance = m * delta_rows.t() @ delta_rows / delta_rows.square().sum()
    return -(p @ covariance @ (torch.eye(m, **F64) - p.t() @ p))


def test_linear_q_and_p_gradients_follow_kolen_pollack_and_oja_formulas():
    """RAFLinear: q.grad = h^T (delta P^T) = W.grad^T P^T (KP, descent form of paper eq. 7) and
    p.grad = -(P C (I - P^T P)) (Oja, descent form of eq. 8)."""
    torch.manual_seed(0)
    layer = RAFLinear(6, 5, rank=3, **F64)
    x, delta = torch.randn(4, 6, **F64), torch.randn(4, 5, **F64)
    (layer(x) * delta).sum().backward()
    p = layer.p.detach()
    torch.testing.assert_close(layer.q.grad, x.t() @ (delta @ p.t()))
    torch.testing.assert_close(layer.q.grad, layer.weight.grad.t() @ p.t())
    torch.testing.assert_close(layer.p.grad, oja_formula(p, delta))


def test_conv_q_and_p_gradients_follow_kolen_pollack_and_oja_over_batch_and_pixels():
    """RAFConv2d: q.grad = sum_m P_rm W.grad_m, and Oja's C is the channel covariance of the
    error over batch and pixels (paper appendix C)."""
    torch.manual_seed(0)
    layer = RAFConv2d(3, 5, 3, stride=2, padding=1, dilation=1, rank=2, **F64)
    x = torch.randn(2, 3, 9, 9, **F64)
    out = layer(x)
    delta = torch.randn_like(out)
    (out * delta).sum().backward()
    p = layer.p.detach()
    torch.testing.assert_close(layer.q.grad, torch.einsum("rm,mnyx->rnyx", p, layer.weight.grad))
    rows = delta.permute(0, 2, 3, 1).reshape(-1, 5)
    torch.testing.assert_close(layer.p.grad, oja_formula(p, rows))


def test_autograd_gradcheck_of_the_input_gradient_with_full_rank_copied_feedback():
    """With Q = W^T and P = I the custom backward passes torch's numerical gradcheck."""
    torch.manual_seed(0)
    layer = RAFConv2d(2, 3, 3, stride=2, padding=1, p_rule="identity", train_q=False, **F64)
    copy_weights_into_feedback(layer)
    x = torch.randn(1, 2, 5, 5, **F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda h: layer(h), (x,))


def test_channels_last_tensors_get_the_same_gradients():
    """The memory format is an implementation detail: channels-last inputs and weights give
    the same input, W, Q and P gradients as NCHW ones."""
    torch.manual_seed(0)
    layer = RAFConv2d(3, 6, 3, padding=1, rank=2, **F64)
    other = copy.deepcopy(layer).to(memory_format=torch.channels_last)
    x, delta = torch.randn(2, 3, 5, 5, **F64), torch.randn(2, 6, 5, 5, **F64)
    grad = output_error(layer, x, delta)
    channels_last = dict(memory_format=torch.channels_last)
    grad_cl = output_error(other, x.to(**channels_last), delta.to(**channels_last))
    torch.testing.assert_close(grad_cl, grad)
    for name in ("weight", "q", "p"):
        torch.testing.assert_close(getattr(other, name).grad, getattr(layer, name).grad)


def test_gradients_accumulate_when_a_layer_is_used_twice():
    """Using a layer twice (or not zeroing grads) sums W, bias, Q, P and input gradients."""
    torch.manual_seed(0)
    layer = RAFLinear(4, 6, rank=2, **F64)
    x1, x2 = torch.randn(3, 4, **F64), torch.randn(5, 4, **F64)
    d1, d2 = torch.randn(3, 6, **F64), torch.randn(5, 6, **F64)
    grads = []
    for inputs in ([(x1, d1)], [(x2, d2)]):
        layer.zero_grad()
        for x, d in inputs:
            (layer(x) * d).sum().backward()
        grads.append([prm.grad.clone() for prm in (layer.weight, layer.bias, layer.q, layer.p)])
    layer.zero_grad()
    (layer(x1) * d1).sum().add((layer(x2) * d2).sum()).backward()
    for parameter, first, second in zip(
        (layer.weight, layer.bias, layer.q, layer.p), *grads, strict=True
    ):
        torch.testing.assert_close(parameter.grad, first + second)


def test_input_gradient_is_skipped_when_the_input_needs_none():
    """The first layer of a network (input without grad) still trains W and Q."""
    layer = RAFConv2d(1, 4, 3, rank=2)
    layer(torch.randn(2, 1, 6, 6)).sum().backward()
    assert layer.weight.grad is not None and layer.q.grad is not None


# ---------------------------------------------------------------- rules and optimizers


def test_rule_switches_decide_which_feedback_parameters_learn_with_torch_optimizers():
    """SGD, Adam and RMSprop (with weight decay) train W, Q (KP) and P (Oja); FA keeps Q, a fixed
    P stays fixed even after model.requires_grad_(True)."""
    for optimizer_class in (torch.optim.SGD, torch.optim.Adam, torch.optim.RMSprop):
        torch.manual_seed(0)
        raf, fa = RAFLinear(5, 6, rank=3), RAFLinear.from_rule("fa", 6, 6, rank=3)
        fixed = RAFLinear(6, 6, rank=3, p_rule="fixed")
        model = nn.Sequential(raf, nn.Tanh(), fa, nn.Tanh(), fixed)
        model.requires_grad_(True)
        before = copy.deepcopy(model.state_dict())
        optimizer = optimizer_class(model.parameters(), lr=1e-2, weight_decay=1e-3)
        model(torch.randn(8, 5)).square().mean().backward()
        optimizer.step()
        changed = {
            k: not torch.equal(v, before[k])
            for k, v in model.state_dict().items()
            if torch.is_tensor(v)
        }
        assert changed["0.weight"] and changed["0.q"] and changed["0.p"]
        assert changed["2.weight"] and not changed["2.q"] and not changed["2.p"]
        assert changed["4.q"] and not changed["4.p"]


def test_named_rules_map_to_switches_and_reject_impossible_ranks():
    """kp is full rank only; fa below full rank has a random fixed P; rank 1..m else ConfigError."""
    assert RAFLinear.from_rule("fa", 3, 4, rank=2).p_rule == "fixed"
    assert RAFLinear.from_rule("fa", 3, 4).p_rule == "identity"
    assert RAFConv2d.from_rule("lowrank_fa", 3, 4, 3, rank=1).rule == "lowrank_fa"
    for bad in (
        lambda: RAFLinear.from_rule("kp", 3, 4, rank=2),
        lambda: RAFLinear(3, 4, rank=0),
        lambda: RAFLinear(3, 4, rank=5),
        lambda: RAFConv2d(3, 4, 3, rank=9),
        lambda: RAFLinear(3, 4, rank=2, p_rule="identity"),
        lambda: RAFLinear(3, 4, p_rule="hebb"),
        lambda: RAFLinear.from_rule("sgd", 3, 4),
        lambda: RAFConv2d(3, 4, 2, padding="same"),
    ):
        with pytest.raises(ConfigError):
            bad()


def stream_with_known_covariance(m: int, seed: int = 0):
    """A random covariance with a clear top-3 eigenspace and a sampler of errors from it."""
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(m, m, generator=g, **F64))
    eigenvalues = torch.tensor([8.0, 6.0, 4.0] + [1.0] * (m - 3), **F64)
    covariance = basis @ torch.diag(eigenvalues) @ basis.t()
    root = basis @ torch.diag(eigenvalues.sqrt())

    def sample(*leading):
        return torch.einsum("mk,...k->...m", root, torch.randn(*leading, m, generator=g, **F64))

    return covariance, sample


@pytest.mark.parametrize("p_rule", ["oja", "pca"])
def test_p_converges_to_the_top_r_eigenspace_of_the_error_covariance_linear(p_rule):
    """Oja's rule (paper eq. 8/11) and the PCA rule, driven through the layer's backward with
    SGD on p: P's row space converges to the top-r eigenspace of the error covariance
    (largest principal angle < 0.1 rad)."""
    torch.manual_seed(0)
    covariance, sample = stream_with_known_covariance(12)
    layer = RAFLinear(4, 12, rank=3, p_rule=p_rule, pca_interval=10, **F64)
    optimizer = torch.optim.SGD([layer.p], lr=0.05)
    x = torch.randn(64, 4, **F64)
    assert principal_angles(layer.p, covariance).max() > 0.5
    for step in range(250):
        optimizer.zero_grad()
        lr = 0.05 if step < 150 else 0.01
        optimizer.param_groups[0]["lr"] = lr
        (layer(x) * sample(64)).sum().backward()
        optimizer.step()
    assert principal_angles(layer.p, covariance).max() < 0.1


def test_oja_on_a_conv_layer_uses_the_error_covariance_over_pixels():
    """RAFConv2d's P converges to the top-r eigenspace of the per-pixel channel covariance."""
    torch.manual_seed(0)
    covariance, sample = stream_with_known_covariance(10, seed=1)
    layer = RAFConv2d(2, 10, 1, rank=3, **F64)
    optimizer = torch.optim.SGD([layer.p], lr=0.05)
    x = torch.randn(4, 2, 4, 4, **F64)
    for step in range(200):
        optimizer.param_groups[0]["lr"] = 0.05 if step < 120 else 0.01
        optimizer.zero_grad()
        (layer(x) * sample(4, 4, 4).permute(0, 3, 1, 2)).sum().backward()
        optimizer.step()
    assert principal_angles(layer.p, covariance).max() < 0.1


def test_oja_under_the_recipes_rmsprop_leaves_the_saddle_of_the_first_and_third_directions():
    """RMSprop divides each element of P's step by its own sqrt(v), which keeps Oja's fixed
    points but could change their stability: started next to the saddle where P spans the
    first and third eigenvectors (principal angle near 90 degrees), P still reaches the top-2
    eigenspace under the recipe's optimizer (FusedRMSprop with weight decay)."""
    from retina_raf.optim import FusedRMSprop

    torch.manual_seed(0)
    covariance, sample = stream_with_known_covariance(10, seed=1)
    eigenvectors = torch.linalg.eigh(covariance).eigenvectors.flip(1)
    layer = RAFConv2d(2, 10, 1, rank=2, **F64)
    with torch.no_grad():
        layer.p.copy_(eigenvectors[:, [0, 2]].t() + 0.01 * torch.randn(2, 10, **F64))
    assert principal_angles(layer.p, covariance).max() > 1.5
    optimizer = FusedRMSprop([layer.p], lr=1e-3, alpha=0.9, eps=1e-8, weight_decay=1e-5)
    x = torch.randn(4, 2, 4, 4, **F64)
    for _ in range(2000):
        optimizer.zero_grad()
        (layer(x) * sample(4, 4, 4).permute(0, 3, 1, 2)).sum().backward()
        optimizer.step()
    assert principal_angles(layer.p, covariance).max() < 0.1


def test_kolen_pollack_with_weight_decay_aligns_feedback_with_forward_weights():
    """KP (P = I, Q trained with W.grad^T) plus weight decay on W and Q: B = Q P -> W^T, angle
    below 10 degrees on a small regression task (starts near 90)."""
    torch.manual_seed(0)
    teacher = torch.randn(5, 10) / math.sqrt(10)
    layer = RAFLinear.from_rule("kp", 10, 20)
    model = nn.Sequential(layer, nn.Tanh(), nn.Linear(20, 5))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.1)
    assert alignment_angle(layer) > 60
    for _ in range(300):
        x = torch.randn(32, 10)
        loss = (model(x) - x @ teacher.t()).square().sum(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert alignment_angle(layer) < 10
    assert loss.item() < 0.2


def test_low_rank_kolen_pollack_update_drives_q_to_w_transpose_p_transpose():
    """With P fixed at rank r < m, Q's update plus weight decay on W and Q drives Q to W^T P^T,
    i.e. B = Q P -> W^T P^T P (docs/design.md#learning-rules-linear), here for a conv layer."""
    torch.manual_seed(0)
    teacher = nn.Conv2d(3, 8, 3, padding=1)
    layer = RAFConv2d(3, 8, 3, padding=1, rank=2, p_rule="fixed")
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1, weight_decay=0.3)
    for _ in range(200):
        x = torch.randn(4, 3, 6, 6)
        with torch.no_grad():
            target = teacher(x)
        optimizer.zero_grad()
        (layer(x) - target).square().sum(1).mean().backward()
        optimizer.step()
    q_target = torch.einsum("rm,mnyx->rnyx", layer.p, layer.weight)  # W^T P^T in Q's layout
    cosine = F.cosine_similarity(layer.q.detach().flatten(), q_target.detach().flatten(), dim=0)
    assert math.degrees(math.acos(cosine.item())) < 5


@pytest.mark.parametrize("kind", ["linear", "conv-direct", "conv-fft"])
def test_raf_aligned_sends_backprops_error_projected_onto_the_errors_top_subspace(kind):
    """raf_aligned is RAF at its fixed point: P spans the error's top-r principal subspace
    (PCA rule) and Q = W^T P^T, so the input receives W^T P^T P delta (docs/design.md), for the W
    of the same forward pass, in the direct and the FFT convolution alike."""
    torch.manual_seed(0)
    if kind == "linear":
        layer = RAFLinear.from_rule("raf_aligned", 6, 5, rank=2, **F64)
        x = torch.randn(7, 6, **F64, requires_grad=True)
    else:
        impl = kind.split("-")[1]
        layer = RAFConv2d.from_rule(
            "raf_aligned", 4, 5, 9, rank=2, padding=4, conv_impl=impl, **F64
        )
        x = torch.randn(3, 4, 12, 12, **F64, requires_grad=True)
    assert layer.rule == "raf_aligned" and layer.tie_q and not layer.q.requires_grad
    with torch.no_grad():
        layer.weight.add_(0.5)  # W moved since init: Q must follow it, not keep the init's W
    delta = torch.randn_like(layer(x))
    p_before = layer.p.detach().clone()
    out = layer(x)
    out.backward(delta)
    # the PCA rule sets P on this first backward, after the projection that used P_before
    reference = nn.Linear(6, 5, **F64) if kind == "linear" else nn.Conv2d(4, 5, 9, padding=4, **F64)
    with torch.no_grad():
        reference.weight.copy_(layer.weight)
        reference.bias.copy_(layer.bias)
    x_ref = x.detach().clone().requires_grad_(True)
    if kind == "linear":
        projected = delta @ p_before.t() @ p_before
    else:
        projected = torch.einsum("rm,rk,bkyx->bmyx", p_before, p_before, delta)
    reference(x_ref).backward(projected)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-10, atol=1e-10)
    assert layer.q.grad is None  # Q is not learned
    # after the backward, P is the error's top-2 subspace: the next step projects onto it
    assert principal_angles(layer.p, layer.error_covariance).max() < 1e-6


def test_raf_aligned_at_full_rank_is_backprop():
    """At full rank P is orthogonal, so B = W^T P^T P = W^T: raf_aligned is backprop."""
    torch.manual_seed(1)
    layer = RAFConv2d.from_rule("raf_aligned", 3, 4, 5, padding=2, **F64)
    reference = nn.Conv2d(3, 4, 5, padding=2, **F64)
    reference.load_state_dict({"weight": layer.weight, "bias": layer.bias})
    x = torch.randn(2, 3, 8, 8, **F64)
    for _ in range(2):  # the second step uses the P the PCA rule set on the first
        x_raf, x_bp = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        delta = torch.randn(2, 4, 8, 8, **F64)
        layer(x_raf).backward(delta)
        reference(x_bp).backward(delta)
        torch.testing.assert_close(x_raf.grad, x_bp.grad, rtol=1e-10, atol=1e-10)


def test_tie_q_rejects_a_trained_q_and_a_direct_pathway():
    """tie_q sets Q to W^T P^T: training Q as well, or a direct pathway (no W), is an error."""
    from retina_raf.feedback import DirectFeedback

    with pytest.raises(ConfigError, match="cannot also train Q"):
        RAFLinear(3, 4, rank=2, tie_q=True, train_q=True)
    with pytest.raises(ConfigError, match="no forward weight"):
        DirectFeedback.from_rule("raf_aligned", (4,), (3,), rank=2)


# ---------------------------------------------------------------- training works


def cluster_task(seed: int):
    """10 classes, each two Gaussian clusters in 16 dims: 2000 train, 1000 test samples."""
    g = torch.Generator().manual_seed(seed)
    centers = 2.0 * torch.randn(20, 16, generator=g)
    labels = torch.randint(0, 10, (3000,), generator=g)
    x = centers[2 * labels + torch.randint(0, 2, (3000,), generator=g)]
    x = x + torch.randn(3000, 16, generator=g)
    return x[:2000], labels[:2000], x[2000:], labels[2000:]


def template_task(seed: int):
    """10 classes of 8x8 templates, shifted by up to a pixel, in noise."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(10, 1, 8, 8, generator=g)
    labels = torch.randint(0, 10, (3000,), generator=g)
    shifts = torch.randint(-1, 2, (3000, 2), generator=g).tolist()
    x = torch.stack(
        [torch.roll(templates[c], tuple(s), (1, 2)) for c, s in zip(labels, shifts, strict=True)]
    )
    x = x + 0.8 * torch.randn(3000, 1, 8, 8, generator=g)
    return x[:2000], labels[:2000], x[2000:], labels[2000:]


def test_accuracy(model: nn.Module, data, steps: int, seed: int, lr: float) -> float:
    """Adam on batches of 64 (the same batches for every model with the same seed)."""
    x_train, y_train, x_test, y_test = data
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        batch = torch.randint(0, len(x_train), (64,), generator=g)
        loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return (model(x_test).argmax(1) == y_test).float().mean().item()


test_accuracy.__test__ = False  # a helper, not a test


@pytest.mark.slow
@pytest.mark.parametrize("network, tolerance", [("mlp", 0.03), ("cnn", 0.05)])
def test_raf_rank_10_trains_to_near_backprop_accuracy(network, tolerance):
    """A small MLP (tolerance 3 points) and a small CNN (5 points) trained with RAF at r = 10 on
    a 10-class task reach backprop's test accuracy (mean of 2 seeds; same init and batches).
    The CNN's margin is wider because its training is short: a random Q first has to align
    (Kolen-Pollack at full rank lags as much there)."""
    bp_accuracy, raf_accuracy = [], []
    for seed in range(2):
        torch.manual_seed(seed)
        if network == "mlp":
            data, steps, lr = cluster_task(seed), 150, 3e-3
            bp = nn.Sequential(
                nn.Linear(16, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU(), nn.Linear(48, 10)
            )
        else:
            data, steps, lr = template_task(seed), 120, 5e-3
            bp = nn.Sequential(
                nn.Conv2d(1, 12, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(12, 12, 3, padding=1, stride=2),
                nn.ReLU(),
                nn.Flatten(),
                nn.Linear(192, 10),
            )
        raf = convert(copy.deepcopy(bp), "raf", rank=10)
        assert all(layer.feedback_rank == 10 for layer in feedback_layers(raf))
        bp_accuracy.append(test_accuracy(bp, data, steps, seed, lr))
        raf_accuracy.append(test_accuracy(raf, data, steps, seed, lr))
    bp_mean, raf_mean = sum(bp_accuracy) / 2, sum(raf_accuracy) / 2
    assert bp_mean > 0.7  # far above chance (0.1): the task is learned
    assert raf_mean > bp_mean - tolerance, (bp_accuracy, raf_accuracy)


def feedback_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (RAFLinear, RAFConv2d))]


# ---------------------------------------------------------------- precision, state, convert


def test_autocast_bf16_forward_matches_nn_and_backward_gives_float32_gradients():
    """Under CPU autocast (bf16) the output is nn.*'s autocast output and W, Q, P get float32
    gradients close to the float32 ones."""
    torch.manual_seed(0)
    for layer, x in (
        (RAFLinear(16, 12, rank=4), torch.randn(8, 16)),
        (RAFConv2d(4, 8, 3, padding=1, rank=3), torch.randn(2, 4, 8, 8)),
    ):
        plain = nn.Linear(16, 12) if isinstance(layer, nn.Linear) else nn.Conv2d(4, 8, 3, padding=1)
        plain.load_state_dict({"weight": layer.weight, "bias": layer.bias})
        full = copy.deepcopy(layer)
        x_full = x.clone().requires_grad_()
        out_full = full(x_full)
        weights = torch.linspace(-1, 1, out_full.numel()).view_as(out_full)
        (out_full * weights).sum().backward()
        x = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(x)
            assert out.dtype == torch.bfloat16
            assert torch.equal(out, plain(x))
        (out.float() * weights).sum().backward()
        for name in ("weight", "q", "p"):
            grad, reference = getattr(layer, name).grad, getattr(full, name).grad
            assert grad.dtype == torch.float32
            assert (grad - reference).norm() < 0.05 * reference.norm()
        assert (x.grad - x_full.grad).norm() < 0.05 * x_full.grad.norm()


def test_state_dict_round_trip_restores_weights_feedback_and_pca_state():
    """state_dict / load_state_dict restore W, Q, P, the error covariance and the PCA step
    counter, so that a resumed layer continues identically."""
    torch.manual_seed(0)
    layer = RAFConv2d(3, 6, 3, rank=2, p_rule="pca", pca_interval=3)
    for _ in range(4):
        layer(torch.randn(2, 3, 6, 6)).square().sum().backward()
    clone = RAFConv2d(3, 6, 3, rank=2, p_rule="pca", pca_interval=3)
    clone.load_state_dict(layer.state_dict())
    for key, value in layer.state_dict().items():
        if key != "_extra_state":
            assert torch.equal(value, clone.state_dict()[key]), key
    batch = torch.randn(2, 3, 6, 6)
    for module in (layer, clone):
        for _ in range(2):
            module(batch).square().sum().backward()
    assert torch.equal(layer.p, clone.p)
    assert torch.equal(layer.error_covariance, clone.error_covariance)


def test_convert_swaps_layers_copies_weights_and_keeps_the_output():
    """convert() replaces Linear/Conv2d by feedback layers in place, weights copied: same output
    (to rounding: RAFLinear stores W column-major, so its product sums in another order);
    include/exclude by name or glob, per-layer ranks; bad ranks leave the model untouched."""
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("conv", nn.Conv2d(1, 8, 3, padding=1))
    model.add_module("relu", nn.ReLU())
    model.add_module("flat", nn.Flatten())
    model.add_module("fc_1", nn.Linear(8 * 5 * 5, 16))
    model.add_module("fc_2", nn.Linear(16, 4))
    x = torch.randn(3, 1, 5, 5)
    expected = model(x)
    with pytest.raises(ConfigError):
        convert(model, "raf", rank={"fc_*": 5})  # fc_2 has only 4 outputs
    with pytest.raises(ConfigError):
        convert(model, "raf", include="vvs_*")
    assert type(model.fc_1) is nn.Linear  # nothing was converted
    returned = convert(model, "raf", rank={"conv": 2, "fc_1": 5}, exclude="fc_2")
    assert returned is model
    assert isinstance(model.conv, RAFConv2d) and model.conv.feedback_rank == 2
    assert isinstance(model.fc_1, RAFLinear) and model.fc_1.feedback_rank == 5
    assert type(model.fc_2) is nn.Linear
    torch.testing.assert_close(model(x), expected, rtol=1e-6, atol=1e-6)
    convert(model, "kp", include=["fc_2"])
    assert model.fc_2.rule == "kp"
    convert(model, "bp")
    assert [type(m) for m in (model.conv, model.fc_1, model.fc_2)] == [
        nn.Conv2d,
        nn.Linear,
        nn.Linear,
    ]
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)


def test_convert_selects_layers_inside_named_modules_and_keeps_shared_layers_shared():
    """include / rank keys name a module and the layers inside it ("retina_2" selects
    "retina_2.conv"); a layer used at two places is replaced by one feedback layer."""

    class Block(nn.Module):
        def __init__(self, channels_in: int) -> None:
            super().__init__()
            self.conv = nn.Conv2d(channels_in, 8, 3, padding=1)

    model = nn.Module()
    model.retina_1, model.retina_2 = Block(1), Block(8)
    model.head = nn.Linear(8, 3)
    model.head_again = model.head
    convert(model, "raf", rank={"retina_2": 2}, include=["retina_2", "head"])
    assert type(model.retina_1.conv) is nn.Conv2d
    assert isinstance(model.retina_2.conv, RAFConv2d) and model.retina_2.conv.feedback_rank == 2
    assert isinstance(model.head, RAFLinear) and model.head_again is model.head


# ---------------------------------------------------------------- exact gradients
def input_gradient(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """d(sum of squared outputs)/dx through ``model``'s own backward pass."""
    x = x.detach().requires_grad_()
    model(x).square().sum().backward()
    return x.grad


def patched_layers(model: nn.Module) -> list[str]:
    """Modules whose forward or inject is an instance attribute (exact_gradients' patch)."""
    return [name for name, module in model.named_modules()
            if "forward" in vars(module) or "inject" in vars(module)]  # fmt: skip


def test_exact_gradients_gives_a_raf_model_the_plain_networks_input_gradient():
    """Inside exact_gradients a RAF model (conv and dense layers at rank 1) sends backprop's
    exact input gradient, the plain network's with the same weights; outside it the low-rank
    feedback sends another; the layers are restored on exit, also when the block raises."""
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(6 * 5 * 5, 8), nn.ReLU(), nn.Linear(8, 4)).double()  # fmt: skip
    model = convert(copy.deepcopy(plain), "raf", rank=1)
    x = torch.randn(3, 2, 5, 5, **F64)
    exact = input_gradient(plain, x)
    with exact_gradients(model):
        torch.testing.assert_close(input_gradient(model, x), exact)
    assert patched_layers(model) == []
    assert not torch.allclose(input_gradient(model, x), exact)
    with pytest.raises(RuntimeError, match="in the block"):
        with exact_gradients(model):
            assert patched_layers(model) == ["0", "3", "5"]
            raise RuntimeError("in the block")
    assert patched_layers(model) == []
    assert not torch.allclose(input_gradient(model, x), exact)


def test_exact_gradients_makes_direct_feedback_injections_identities():
    """dRAF (an MLP whose hidden layers get the readout's error directly): inside
    exact_gradients the injections pass the gradient from above through, and the input
    gradient is the plain MLP's; outside it is not."""
    from retina_raf.nets import build_net

    model = build_net("mlp", "raf", seed=0, in_channels=1, image_size=8, hidden_units=8,
                      hidden_layers=2, num_classes=4, direct_target="all").double()  # fmt: skip
    plain = convert(copy.deepcopy(model), "bp")
    plain.direct, plain.direct_source, plain.error_tap = None, None, None
    x = torch.randn(5, 1, 8, 8, **F64)
    exact = input_gradient(plain, x)
    with exact_gradients(model):
        torch.testing.assert_close(input_gradient(model, x), exact)
    assert patched_layers(model) == []
    assert not torch.allclose(input_gradient(model, x), exact)


# ---------------------------------------------------------------- diagnostics


def test_diagnostics_alignment_principal_angles_and_effective_rank():
    """Alignment is 0 degrees for Q = W^T, P = I; principal angles are 0 when P spans the top
    eigenvectors; the effective rank (participation ratio) is m for isotropic error, 1 for a
    one-dimensional error."""
    torch.manual_seed(0)
    layer = RAFConv2d(3, 4, 3, p_rule="identity")
    copy_weights_into_feedback(layer)
    assert alignment_angle(layer) < 1e-4
    linear = RAFLinear(3, 4, p_rule="identity")
    copy_weights_into_feedback(linear)
    assert alignment_angle(linear) < 1e-4
    covariance, _ = stream_with_known_covariance(6)
    eigenvectors = torch.linalg.eigh(covariance).eigenvectors
    top = eigenvectors[:, -3:].t()
    assert principal_angles(top, covariance).max() < 1e-6
    assert principal_angles(eigenvectors[:, :3].t(), covariance).min() > 1.5
    assert effective_rank(torch.eye(6)) == pytest.approx(6)
    direction = torch.randn(6, 1)
    assert effective_rank(direction @ direction.t()) == pytest.approx(1)
    model = nn.Sequential(RAFLinear(5, 6, rank=2, track_error_covariance=True), RAFLinear(6, 3))
    model(torch.randn(16, 5)).sum().backward()
    report = feedback_diagnostics(model)
    assert set(report) == {"0", "1"}
    assert 0 <= report["0"]["alignment_deg"] <= 180
    assert 0 <= report["0"]["principal_angle_max_rad"] <= math.pi / 2
    assert 1 <= report["0"]["error_effective_rank"] <= 6
    assert math.isnan(report["1"]["error_effective_rank"])  # not tracked
    assert 0 <= report["0"]["error_variance_captured"] <= 1


def test_model_diagnostics_name_layers_as_the_model_does():
    """model_diagnostics (what a run's history records per epoch) holds the diagnostics of
    every feedback layer, as floats, under the model's own layer names (``vvs_1``, not
    ``layers.vvs_1.conv``); training records it from here."""
    import retina_raf.train
    from retina_raf.models import build_model

    model = build_model("raf-r2", seed=0, vvs_layers=1, fc_units=16, retina_channels=4,
                        vvs_channels=4, n_bn=4)  # fmt: skip
    model(torch.rand(2, 1, 32, 32)).sum().backward()
    report = model_diagnostics(model)
    assert list(feedback_diagnostics(model)) == [
        "layers.retina_2.conv",
        "layers.vvs_1.conv",
        "layers.fc_1.linear",
    ]
    assert list(report) == ["retina_2", "vvs_1", "fc_1"]
    assert report["vvs_1"]["rank"] == 2.0
    assert all(type(value) is float for values in report.values() for value in values.values())
    assert retina_raf.train.model_diagnostics is model_diagnostics


def test_variance_captured_is_robust_where_the_largest_principal_angle_is_not():
    """Eigenvalues 5, 3.001, 3 (nearly tied), 1, 1, 1: a P spanning the 1st and 3rd
    eigenvectors is 90 degrees from the top-2 subspace by its largest principal angle, yet
    captures (5 + 3) / (5 + 3.001) of the top-2 variance; the top-2 eigenvectors capture all
    of it, the bottom two 2 / 8.001."""
    from retina_raf.feedback.diagnostics import variance_captured

    basis, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(0),
                                           **F64))  # fmt: skip
    eigenvalues = torch.tensor([5.0, 3.001, 3.0, 1.0, 1.0, 1.0], **F64)
    covariance = basis @ torch.diag(eigenvalues) @ basis.t()
    near = basis[:, [0, 2]].t()
    assert principal_angles(near, covariance).max() == pytest.approx(math.pi / 2, abs=1e-6)
    assert variance_captured(near, covariance) == pytest.approx(8.0 / 8.001)
    assert variance_captured(basis[:, :2].t() * 3.0, covariance) == pytest.approx(1.0)
    assert variance_captured(basis[:, 4:].t(), covariance) == pytest.approx(2.0 / 8.001)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_layers_run_on_cuda_with_the_same_gradients_as_on_cpu():
    """Device-agnostic: on CUDA the input, W, Q and P gradients match the CPU ones."""
    torch.manual_seed(0)
    layer = RAFConv2d(3, 8, 3, padding=1, rank=3, **F64)
    x, delta = torch.randn(2, 3, 6, 6, **F64), torch.randn(2, 8, 6, 6, **F64)
    cuda_layer = copy.deepcopy(layer).cuda()
    grad_cpu = output_error(layer, x, delta)
    grad_cuda = output_error(cuda_layer, x.cuda(), delta.cuda())
    torch.testing.assert_close(grad_cuda.cpu(), grad_cpu)
    for name in ("weight", "q", "p"):
        torch.testing.assert_close(getattr(cuda_layer, name).grad.cpu(), getattr(layer, name).grad)


def test_silent_layer_zero_error_keeps_feedback_finite():
    """A layer whose error is exactly zero (all units downstream silent) leaves P, its Oja
    gradient and the tracked error covariance finite (no 0 * m / tiny = NaN)."""
    layer = RAFConv2d(3, 4, 3, padding=1, rank=2, track_error_covariance=True)
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    (layer(x) * 0.0).sum().backward()
    assert torch.isfinite(layer.p.grad).all() and torch.isfinite(layer.error_covariance).all()
    assert torch.isfinite(x.grad).all()


def test_feedback_layers_do_not_split_a_torch_compile_graph():
    """A RAF network (error covariance tracked, as by default) traces into one torch.compile
    graph: nothing the backward passes do is a side effect that dynamo has to break on."""
    import torch._dynamo as dynamo

    from retina_raf.models import build_model

    model = build_model("raf-r2", seed=0, vvs_layers=1, fc_units=16, retina_channels=4,
                        vvs_channels=4, n_bn=4)  # fmt: skip
    assert model.vvs_1.conv.track_error_covariance
    explanation = dynamo.explain(lambda x: model(x).sum())(torch.rand(2, 1, 32, 32))
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
