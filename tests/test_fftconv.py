"""FFT convolution (docs/design.md#fft-convolution) and the other speed work: fast must be exact.

Claims: the frequency-domain convolution computes what ``F.conv2d`` computes (forward, input
gradient, weight gradient) for the geometries it accepts; RAF in the frequency domain equals
RAF computed directly, and at full rank with P = I, Q = W equals backprop; ``q.grad`` by
einsum equals the convolution form; the fused RMSprop is torch's RMSprop; Oja's cheap
form for wide layers is Oja's rule; ``conv_impl`` is validated like every setting.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from retina_raf import fftconv
from retina_raf.config import resolve_run_config
from retina_raf.errors import ConfigError
from retina_raf.feedback import RAFConv2d, RAFLinear, oja_gradient
from retina_raf.feedback.conv import _fold_feedback
from retina_raf.feedback.rules import project_channels
from retina_raf.fftconv import FFTConv2d, choose_conv_impl, fft_conv2d, fft_size
from retina_raf.models import build_model
from retina_raf.optim import FusedRMSprop

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def conv_and_gradients(conv, x, w, b, delta):
    out = conv(x, w, b)
    return (out, *torch.autograd.grad(out, (x, w, b), delta))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kernel", [3, 5, 7, 9, 11])
@pytest.mark.parametrize(
    "channels, size",
    [((1, 32), (32, 32)), ((32, 32), (32, 32)), ((6, 4), (17, 23)), ((3, 1), (8, 8))],
)
def test_fft_convolution_equals_conv2d_forward_and_both_gradients(dtype, kernel, channels, size):
    """Same output, input gradient, weight gradient and bias gradient as F.conv2d with 'same'
    zero padding: 1e-5 relative in float32, 1e-10 in float64 (kernels 3-11, square and
    rectangular images, one input channel, one output channel)."""
    torch.manual_seed(kernel)
    n, m = channels
    x = torch.randn(3, n, *size, dtype=dtype, requires_grad=True)
    w = torch.randn(m, n, kernel, kernel, dtype=dtype, requires_grad=True)
    b = torch.randn(m, dtype=dtype, requires_grad=True)
    delta = torch.randn(3, m, *size, dtype=dtype)
    expected = conv_and_gradients(lambda *a: F.conv2d(*a, padding=kernel // 2), x, w, b, delta)
    got = conv_and_gradients(fft_conv2d, x, w, b, delta)
    for name, g, e in zip(
        ("output", "input grad", "weight grad", "bias grad"), got, expected, strict=True
    ):
        assert g.dtype == dtype
        assert relative_error(g, e) <= TOLERANCE[dtype], name


def test_fft_grid_is_the_smallest_fast_size_without_wrap_around():
    """N >= H + k // 2 (the circular correlation then reads only zero padding where it wraps),
    and N has no prime factor above 5: 36 for 32 x 32 images with 9 x 9 kernels."""
    assert fft_size(32, 9) == 36
    assert fft_size(32, 3) == 36  # 33 = 3 * 11 is not fast; 34 = 2 * 17 neither; 35 = 5 * 7
    assert fft_size(28, 5) == 30
    assert fft_size(16, 9) == 20


def test_fft_convolution_rejects_what_it_does_not_compute():
    """Even kernels, strides and non-'same' padding are refused with a one-line error."""
    with pytest.raises(ValueError, match="odd"):
        fft_conv2d(torch.randn(1, 1, 8, 8), torch.randn(1, 1, 4, 4))
    with pytest.raises(ConfigError, match="stride 1"):
        FFTConv2d(1, 2, 3, stride=2, padding=1)
    with pytest.raises(ConfigError, match="same"):
        FFTConv2d(1, 2, 3, padding=0)
    with pytest.raises(ConfigError, match="stride 1"):
        RAFConv2d(2, 2, 3, stride=2, padding=1, conv_impl="fft")


def test_fft_conv2d_module_is_nn_conv2d_with_the_same_state_and_output():
    """FFTConv2d has nn.Conv2d's parameters and init (same seed, same weights) and output."""
    torch.manual_seed(0)
    reference = torch.nn.Conv2d(4, 6, 9, padding=4, dtype=torch.float64)
    torch.manual_seed(0)
    layer = FFTConv2d(4, 6, 9, padding=4, conv_impl="fft", dtype=torch.float64)
    assert layer.state_dict().keys() == reference.state_dict().keys()
    torch.testing.assert_close(layer.weight, reference.weight)
    x = torch.randn(2, 4, 12, 12, dtype=torch.float64)
    torch.testing.assert_close(layer(x), reference(x), rtol=1e-10, atol=1e-10)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), reference(x), rtol=1e-10, atol=1e-10)


def raf_gradients(layer: RAFConv2d, x: torch.Tensor, delta: torch.Tensor) -> dict:
    x = x.clone().requires_grad_(True)
    out = layer(x)
    (out * delta).sum().backward()
    grads = {"out": out.detach(), "x": x.grad}
    grads.update({name: p.grad for name, p in layer.named_parameters() if p.grad is not None})
    return grads


@pytest.mark.parametrize(
    "rule, rank",
    [("raf", 1), ("raf", 3), ("raf", 5), ("raf", 8), ("lowrank_fa", 1), ("lowrank_fa", 6)]
    + [("fa", 3), ("fa", 8), ("kp", 8)],
)
def test_raf_in_the_frequency_domain_equals_raf_computed_directly(rule, rank):
    """conv_impl='fft' gives RAFConv2d the same output and the same x, W, b, Q, P gradients as
    the direct implementation, for every rule and rank (rank 1 Q paths included; from rank 4 of
    this 5 -> 8 layer the FFT backward folds P into Q's kernel, from rank 5 Oja's P C is formed
    from the error's Gram matrix)."""
    assert _fold_feedback(rank, 8, 5) == (rank >= 4)
    torch.manual_seed(rank)
    direct = RAFConv2d.from_rule(rule, 5, 8, 9, rank=rank, padding=4, conv_impl="direct",
                                 dtype=torch.float64)  # fmt: skip
    fft = copy.deepcopy(direct)
    fft.conv_impl = "fft"
    x, delta = torch.randn(3, 5, 16, 16, dtype=torch.float64), torch.randn(3, 8, 16, 16).double()
    expected, got = raf_gradients(direct, x, delta), raf_gradients(fft, x, delta)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-10, atol=1e-10, msg=name)


def test_full_rank_raf_with_identity_p_and_copied_q_is_backprop_with_fft():
    """rank = m, P = I, Q = W: RAF's input gradient is backprop's with conv_impl='fft' too."""
    torch.manual_seed(0)
    layer = RAFConv2d(4, 6, 7, padding=3, p_rule="identity", conv_impl="fft", dtype=torch.float64)
    with torch.no_grad():
        layer.q.copy_(layer.weight)
    x = torch.randn(2, 4, 13, 13, dtype=torch.float64, requires_grad=True)
    delta = torch.randn(2, 6, 13, 13, dtype=torch.float64)
    (layer(x) * delta).sum().backward()
    expected = torch.nn.grad.conv2d_input(x.shape, layer.weight.detach(), delta, padding=3)
    torch.testing.assert_close(x.grad, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("conv_impl", ["direct", "fft"])
def test_q_grad_by_einsum_equals_the_weight_gradient_convolution_of_p_delta(conv_impl):
    """KP's q.grad = conv2d_weight(h, Q.shape, P delta) (docs/design.md#learning-rules-conv2d), as
    sum_m P_rm W.grad_m, in both implementations."""
    torch.manual_seed(0)
    layer = RAFConv2d(3, 6, 5, padding=2, rank=2, conv_impl=conv_impl, dtype=torch.float64)
    x = torch.randn(2, 3, 10, 10, dtype=torch.float64)
    delta = torch.randn(2, 6, 10, 10, dtype=torch.float64)
    (layer(x) * delta).sum().backward()
    p_delta = project_channels(layer.p.detach(), delta)
    expected = torch.nn.grad.conv2d_weight(x, layer.q.shape, p_delta, padding=2)
    torch.testing.assert_close(layer.q.grad, expected, rtol=1e-10, atol=1e-10)


def test_linear_q_grad_takes_either_form_with_the_same_value():
    """RAFLinear's q.grad is h^T (delta P^T) = W.grad^T P^T, whichever is cheaper: few rows
    (N < m) and many rows (N > m) give the Kolen-Pollack value."""
    torch.manual_seed(0)
    for rows in (3, 40):
        layer = RAFLinear(7, 5, rank=2, dtype=torch.float64)
        x, delta = torch.randn(rows, 7, dtype=torch.float64), torch.randn(rows, 5).double()
        (layer(x) * delta).sum().backward()
        expected = x.t() @ (delta @ layer.p.detach().t())
        torch.testing.assert_close(layer.q.grad, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rows", [4, 200])
def test_oja_gradient_for_few_rows_equals_the_covariance_form(rows):
    """For wide P (r large against the N error rows) Oja's gradient is PD^T (PD P - delta),
    algebraically -(P C (I - P^T P)) with C = delta^T delta: both branches give it."""
    torch.manual_seed(rows)
    p = torch.randn(16, 24, dtype=torch.float64)
    delta = torch.randn(rows, 24, dtype=torch.float64)
    c = 24 * delta.t() @ delta / delta.pow(2).sum()
    expected = -(p @ c @ (torch.eye(24, dtype=torch.float64) - p.t() @ p))
    got = oja_gradient(p, delta @ p.t(), delta)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("rank", [1, 3, 4, 5, 8])
@pytest.mark.parametrize("shape", [(300, 8), (3, 8, 6, 6), (5, 8)])
def test_oja_gradient_without_p_delta_equals_it_with_p_delta(rank, shape):
    """Without P delta, Oja's gradient projects the error itself or (rank over m / 2) forms
    P C from the error's Gram matrix: either way -(P C (I - P^T P)), the same as given P delta."""
    torch.manual_seed(rank)
    p = torch.randn(rank, 8, dtype=torch.float64)
    delta = torch.randn(shape, dtype=torch.float64)
    expected = oja_gradient(p, project_channels(p, delta), delta)
    torch.testing.assert_close(oja_gradient(p, None, delta), expected, rtol=1e-10, atol=1e-10)


def _rmsprop_pair(momentum, weight_decay, dtype):
    """Our RMSprop and torch's over the same parameters (matrices, a vector, a conv kernel),
    after four steps on the same gradients."""
    torch.manual_seed(0)
    shapes = [(300, 70), (7,), (5, 3, 9, 9), (4099,)]
    ours = [torch.nn.Parameter(torch.randn(s, dtype=dtype)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    kw = dict(lr=1e-3, alpha=0.9, eps=1e-7, weight_decay=weight_decay, momentum=momentum)
    optimizers = FusedRMSprop(ours, **kw), torch.optim.RMSprop(theirs, **kw)
    for _ in range(4):
        for a, b in zip(ours, theirs, strict=True):
            grad = torch.randn_like(a) * torch.logspace(-6, 0, a.numel(), dtype=dtype).view_as(a)
            a.grad, b.grad = grad.clone(), grad.clone()
        for optimizer in optimizers:
            optimizer.step()
    return ours, theirs, optimizers


@pytest.mark.parametrize("weight_decay", [0.0, 1e-5])
def test_fused_rmsprop_is_torch_rmsprop_to_rounding(weight_decay):
    """Adam's fused kernel at beta1 = 0 and no bias correction is RMSprop: parameters and
    square_avg equal torch's RMSprop's to 1e-12 in float64 (rounding of fused multiply-adds
    only); the gradient is left as it was; the state_dict has torch's layout and loads both
    ways."""
    ours, theirs, (fused, reference) = _rmsprop_pair(0.0, weight_decay, torch.float64)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
        assert torch.equal(a.grad, b.grad)
    state, ref_state = fused.state_dict(), reference.state_dict()
    for key in ref_state["state"]:
        assert state["state"][key].keys() == ref_state["state"][key].keys()
        for name, value in ref_state["state"][key].items():
            torch.testing.assert_close(state["state"][key][name], value, rtol=1e-12, atol=0)
    reference.load_state_dict(fused.state_dict())  # checkpoints move between the two
    fused.load_state_dict(ref_state)
    ours32, theirs32, _ = _rmsprop_pair(0.0, weight_decay, torch.float32)
    for a, b in zip(ours32, theirs32, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_rmsprop_with_momentum_is_torch_rmsprop_bit_for_bit():
    """Momentum is not Adam's form: it goes through torch's own RMSprop, whose parameters and
    state it gives exactly."""
    ours, theirs, (fallback, reference) = _rmsprop_pair(0.9, 1e-3, torch.float32)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
    for key, ref_state in reference.state_dict()["state"].items():
        for name, value in ref_state.items():
            assert torch.equal(fallback.state_dict()["state"][key][name], value)


def test_fused_rmsprop_resumes_bit_for_bit_from_its_state_dict():
    """A copy made mid-run from saved parameters and optimizer state continues exactly as the
    original (weight decay, so the scratch first moment is used)."""
    torch.manual_seed(1)
    original = [torch.nn.Parameter(torch.randn(64, 33)), torch.nn.Parameter(torch.randn(9))]
    kw = dict(lr=1e-3, alpha=0.9, eps=1e-7, weight_decay=1e-5)
    optimizer = FusedRMSprop(original, **kw)
    grads = [[torch.randn_like(p) for p in original] for _ in range(6)]

    def run(params, opt, steps):
        for step_grads in steps:
            for p, g in zip(params, step_grads, strict=True):
                p.grad = g.clone()
            opt.step()

    run(original, optimizer, grads[:3])
    restored = [torch.nn.Parameter(p.detach().clone()) for p in original]
    resumed = FusedRMSprop(restored, **kw)
    copy_state = copy.deepcopy(optimizer.state_dict())  # as a checkpoint file holds it
    resumed.load_state_dict(copy_state)
    assert copy_state["state"][0]["step"].item() == 3
    run(original, optimizer, grads[3:])
    run(restored, resumed, grads[3:])
    for a, b in zip(original, restored, strict=True):
        assert torch.equal(a, b)


def test_conv_impl_is_a_validated_setting_and_auto_picks_per_layer(run_cli):
    """model.conv_impl accepts auto | direct | fft (a bad value is one line, exit 2); auto
    computes by FFT on the CPU where it pays (9x9 from 32 channels) and directly for
    retina_1 and small kernels."""
    with pytest.raises(ConfigError, match="conv_impl"):
        resolve_run_config("bp", overrides={"model": {"conv_impl": "winograd"}})
    status, _, err = run_cli("train", "--preset", "bp", "--set", "model.conv_impl=winograd",
                             "--config-only")  # fmt: skip
    assert status == 2 and len(err.strip().splitlines()) == 1 and "conv_impl" in err
    assert choose_conv_impl("auto", (32, 32, 9, 9), (32, 32), "cpu") == "fft"
    assert choose_conv_impl("auto", (32, 1, 9, 9), (32, 32), "cpu") == "direct"
    assert choose_conv_impl("auto", (32, 32, 3, 3), (32, 32), "cpu") == "direct"
    assert choose_conv_impl("auto", (32, 32, 5, 5), (32, 32), "cpu") == "direct"  # measured
    assert choose_conv_impl("auto", (1, 32, 9, 9), (32, 32), "cpu") == "fft"  # N_bn = 1
    assert choose_conv_impl("auto", (32, 32, 9, 9), (32, 32), "cuda") == "direct"
    assert choose_conv_impl("direct", (32, 32, 9, 9), (32, 32), "cpu") == "direct"
    # CPU FFTs have no bf16: under bf16 autocast, or for bf16 tensors, auto convolves directly
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert choose_conv_impl("auto", (32, 32, 9, 9), (32, 32), "cpu") == "direct"
        assert choose_conv_impl("fft", (32, 32, 9, 9), (32, 32), "cpu") == "fft"
    bf16 = torch.bfloat16
    assert choose_conv_impl("auto", (32, 32, 9, 9), (32, 32), "cpu", bf16) == "direct"
    assert choose_conv_impl("auto", (32, 32, 9, 9), (32, 32), "cpu", torch.float32) == "fft"


def test_whole_network_trains_the_same_with_fft_and_direct_convolution():
    """Three RMSprop steps of raf-r2 from the same init: losses and weights agree to float
    noise between conv_impl fft and direct (float64)."""
    nets, losses = {}, {}
    small = dict(vvs_layers=1, fc_units=16, retina_channels=8, vvs_channels=8)
    x, y = torch.rand(8, 1, 32, 32, dtype=torch.float64), torch.randint(0, 10, (8,))
    for impl in ("direct", "fft"):
        net = build_model("raf-r2", seed=0, conv_impl=impl, **small).double().train()
        net.layers["fc_1"].dropout = torch.nn.Identity()
        optimizer = FusedRMSprop(net.parameters(), lr=1e-3)
        losses[impl] = []
        for _ in range(3):
            loss = F.cross_entropy(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses[impl].append(loss.item())
        nets[impl] = net
    assert losses["fft"] == pytest.approx(losses["direct"], rel=1e-10)
    direct = nets["direct"].state_dict().values()
    for (name, a), b in zip(nets["fft"].state_dict().items(), direct, strict=True):
        if torch.is_tensor(a) and a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10, msg=name)


@pytest.fixture
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def _conv_and_gradients(x, w):
    x, w = x.clone().requires_grad_(), w.clone().requires_grad_()
    out = fft_conv2d(x, w)
    out.square().sum().backward()
    return out.detach(), x.grad, w.grad


def test_batch_split_over_threads_changes_nothing_but_rounding(two_threads, monkeypatch):
    """With several torch threads the transforms run one batch chunk per thread, each
    single-threaded: output and both gradients equal the one-call results to rounding (MKL
    may order a transform's sums differently for another batch size or thread count: 1e-12
    relative in float64), the caller keeps its thread count, and under no_grad the workers
    track no graph either."""
    torch.manual_seed(0)
    x = torch.randn(7, 5, 12, 12, dtype=torch.float64)
    w = torch.randn(6, 5, 7, 7, dtype=torch.float64)
    monkeypatch.setattr(fftconv, "BATCH_PARALLEL", False)
    one_call = _conv_and_gradients(x, w)
    monkeypatch.setattr(fftconv, "BATCH_PARALLEL", True)
    split = _conv_and_gradients(x, w)
    assert fftconv._transform_pool is not None and fftconv._transform_pool[1] == 2
    assert torch.get_num_threads() == 2
    for a, b in zip(split, one_call, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12 * b.abs().max().item())
    with torch.no_grad():
        assert not fft_conv2d(x.requires_grad_(), w).requires_grad


def test_a_forked_process_makes_its_own_thread_pool(two_threads, monkeypatch):
    """The pool is keyed on the process id: a forked child (another pid) inherits the pool
    object but not its threads, so it starts its own instead of waiting on threads it lacks.
    (A real fork is not tested: torch's OpenMP hangs in a child forked after the parent ran
    multithreaded ops, with or without the pool.)"""
    x, w = torch.randn(4, 3, 10, 10), torch.randn(2, 3, 7, 7)
    expected = fft_conv2d(x, w)
    parent_pool = fftconv._transform_pool
    monkeypatch.setattr(fftconv.os, "getpid", lambda: parent_pool[0] + 1)
    torch.testing.assert_close(fft_conv2d(x, w), expected, rtol=1e-6, atol=1e-5)
    child_pool = fftconv._transform_pool
    assert child_pool[0] == parent_pool[0] + 1 and child_pool[2] is not parent_pool[2]
    monkeypatch.undo()
    child_pool[2].shutdown()
    fftconv._transform_pool = parent_pool
