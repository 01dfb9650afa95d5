"""Direct restricted adaptive feedback (dRAF, docs/design.md#direct-feedback): taps, gradients."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from retina_raf.errors import ConfigError
from retina_raf.feedback import DirectFeedback, ErrorTap, FeedbackWiringError, RAFLinear

F64 = dict(dtype=torch.float64)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tensors here are tiny: threads only add contention on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class DirectNet(nn.Module):
    """x -> fc_1 -> relu -> [inject] -> fc_2 -> relu -> fc_3 -> [tap] logits."""

    def __init__(self, rank: int | None = 3, **feedback_kwargs) -> None:
        super().__init__()
        self.fc_1, self.fc_2, self.fc_3 = nn.Linear(5, 6), nn.Linear(6, 7), nn.Linear(7, 4)
        self.feedback = DirectFeedback((6,), (4,), rank=rank, **feedback_kwargs)
        self.hidden = None

    def forward(self, x: torch.Tensor, inject: bool = True, tap: bool = True) -> torch.Tensor:
        self.hidden = torch.relu(self.fc_1(x))
        if self.hidden.requires_grad:
            self.hidden.retain_grad()
        hidden = self.feedback.inject(self.hidden) if inject else self.hidden
        z = self.fc_3(torch.relu(self.fc_2(hidden)))
        return self.feedback.tap(z) if tap else z


def test_flat_source_the_target_gets_exactly_b_of_the_source_error():
    """The injected layer receives (delta_s P^T) Q^T, not the gradient from above; the layers
    between target and source keep their own exact gradients; Q.grad = a^T (delta_s P^T) and
    P.grad is Oja on delta_s."""
    torch.manual_seed(0)
    net = DirectNet().double()
    reference = copy.deepcopy(net)
    x, delta_s = torch.randn(8, 5, **F64), torch.randn(8, 4, **F64)
    (net(x) * delta_s).sum().backward()
    (reference(x, inject=False, tap=False) * delta_s).sum().backward()  # plain backprop
    q, p = net.feedback.q.detach(), net.feedback.p.detach()
    expected = (delta_s @ p.t()) @ q.t()
    torch.testing.assert_close(net.hidden.grad, expected)
    assert (net.hidden.grad - reference.hidden.grad).abs().max() > 1e-3  # not backprop's
    torch.testing.assert_close(net.fc_2.weight.grad, reference.fc_2.weight.grad)
    torch.testing.assert_close(net.fc_3.weight.grad, reference.fc_3.weight.grad)
    relu_mask = (net.hidden > 0).double()
    torch.testing.assert_close(net.fc_1.weight.grad, (expected * relu_mask).t() @ x)
    torch.testing.assert_close(net.feedback.q.grad, net.hidden.detach().t() @ (delta_s @ p.t()))
    covariance = 4 * delta_s.t() @ delta_s / delta_s.square().sum()
    oja = -(p @ covariance @ (torch.eye(4, **F64) - p.t() @ p))
    torch.testing.assert_close(net.feedback.p.grad, oja)


def test_missing_tap_raises_a_clear_wiring_error():
    """If the source's tap is not called (removed, or off the path to the loss), the injection's
    backward raises FeedbackWiringError (a RuntimeError) that says what to do."""
    net = DirectNet()
    with pytest.raises(FeedbackWiringError, match=r"feedback\.tap"):
        net(torch.randn(3, 5), tap=False).sum().backward()
    assert issubclass(FeedbackWiringError, RuntimeError)


def test_eval_forward_without_grad_needs_no_tap_and_leaves_nothing_pending():
    """Under no_grad, inject and tap are identities and bind nothing to the next pass."""
    net = DirectNet()
    with torch.no_grad():
        net(torch.randn(3, 5), tap=False)
    assert net.feedback.source._pending == []
    net(torch.randn(3, 5)).sum().backward()
    assert net.feedback.q.grad is not None


@pytest.mark.parametrize("conv_impl", ["direct", "fft"])
@pytest.mark.parametrize("kernel, rank", [(3, 2), (7, 1), (7, 5)])
def test_spatial_source_on_the_same_grid_uses_a_conv_kernel_q_and_1x1_p(conv_impl, kernel, rank):
    """Spatial source: the target gets conv2d_input(a.shape, Q, P delta_s) with "same" padding,
    Q.grad = conv2d_weight(a, Q.shape, P delta_s), computed directly or by FFT."""
    torch.manual_seed(kernel + rank)
    feedback = DirectFeedback((3, 8, 8), (5, 8, 8), rank=rank, kernel_size=kernel,
                              conv_impl=conv_impl, **F64)  # fmt: skip
    conv_1 = nn.Conv2d(2, 3, 3, padding=1, **F64)
    conv_2 = nn.Conv2d(3, 5, 3, padding=1, **F64)
    x = torch.randn(2, 2, 8, 8, **F64)
    hidden = conv_1(x)
    hidden.retain_grad()
    z = feedback.tap(conv_2(feedback.inject(hidden)))
    delta_s = torch.randn_like(z)
    (z * delta_s).sum().backward()
    projected = torch.einsum("rm,bmyx->bryx", feedback.p.detach(), delta_s)
    q = feedback.q.detach()
    pad = kernel // 2
    expected_grad = F.conv_transpose2d(projected, q, padding=pad)
    torch.testing.assert_close(hidden.grad, expected_grad, rtol=1e-10, atol=1e-10)
    expected_q_grad = torch.nn.grad.conv2d_weight(hidden.detach(), q.shape, projected, padding=pad)
    torch.testing.assert_close(feedback.q.grad, expected_q_grad, rtol=1e-10, atol=1e-10)


def test_forward_passes_stopped_before_the_source_leave_no_pending_injections():
    """Reading an activation in grad mode (forward stopped before the tap) many times keeps
    nothing alive at the source: dead injections are dropped."""
    net = DirectNet()
    for _ in range(200):
        net.feedback.inject(torch.relu(net.fc_1(torch.randn(2, 5))))
    assert len(net.feedback.source._pending) <= 64
    assert all(ref() is None for ref in net.feedback.source._pending)
    net(torch.randn(3, 5)).sum().backward()  # the next full pass works as usual
    assert net.feedback.q.grad is not None


def test_several_direct_feedbacks_share_one_source():
    """Two targets fed from one ErrorTap each receive their own B_l(delta_s)."""
    torch.manual_seed(0)
    source = ErrorTap()
    to_first = DirectFeedback((6,), (4,), rank=2, source=source, **F64)
    to_second = DirectFeedback((7,), (4,), rank=3, source=source, **F64)
    fc_1, fc_2, fc_3 = (nn.Linear(*s, **F64) for s in ((5, 6), (6, 7), (7, 4)))
    h1 = torch.tanh(fc_1(torch.randn(8, 5, **F64)))
    h1.retain_grad()
    h2 = torch.tanh(fc_2(to_first.inject(h1)))
    h2.retain_grad()
    z = source(fc_3(to_second.inject(h2)))
    delta_s = torch.randn_like(z)
    (z * delta_s).sum().backward()
    for hidden, feedback in ((h1, to_first), (h2, to_second)):
        q, p = feedback.q.detach(), feedback.p.detach()
        torch.testing.assert_close(hidden.grad, (delta_s @ p.t()) @ q.t())


def test_direct_feedback_configuration_errors():
    """Shapes that cannot work are rejected with ConfigError when the module is built."""
    for bad in (
        lambda: DirectFeedback((3, 8, 8), (5, 4, 4)),  # different grid
        lambda: DirectFeedback((3, 8, 8), (5, 8, 8), kernel_size=2),  # no "same" padding
        lambda: DirectFeedback((6,), (4,), rank=5),
        lambda: DirectFeedback((6,), (4, 2)),
        lambda: DirectFeedback((6,), (4,), rank=2, p_rule="identity"),
    ):
        with pytest.raises(ConfigError):
            bad()


@pytest.mark.slow
def test_direct_feedback_from_the_logits_trains_an_mlp_near_backprop():
    """dRAF from the logits (rank 10 = number of classes) to both hidden layers, with the last
    layer RAF: an MLP reaches backprop's test accuracy within 3 points on a 10-class task."""
    g = torch.Generator().manual_seed(0)
    centers = 2.0 * torch.randn(20, 16, generator=g)
    labels = torch.randint(0, 10, (3000,), generator=g)
    x = centers[2 * labels + torch.randint(0, 2, (3000,), generator=g)]
    x = x + torch.randn(3000, 16, generator=g)

    class Net(nn.Module):
        def __init__(self, direct: bool) -> None:
            super().__init__()
            self.fc_1, self.fc_2 = nn.Linear(16, 48), nn.Linear(48, 48)
            self.fc_3 = RAFLinear(48, 10) if direct else nn.Linear(48, 10)
            source = ErrorTap()
            self.direct = nn.ModuleList(
                [DirectFeedback((48,), (10,), source=source) for _ in range(2)] if direct else []
            )

        def forward(self, inputs):
            h = torch.relu(self.fc_1(inputs))
            h = self.direct[0].inject(h) if self.direct else h
            h = torch.relu(self.fc_2(h))
            h = self.direct[1].inject(h) if self.direct else h
            logits = self.fc_3(h)
            return self.direct[0].tap(logits) if self.direct else logits

    accuracies = []
    for direct in (False, True):
        torch.manual_seed(0)
        model = Net(direct)
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        batches = torch.Generator().manual_seed(0)
        for _ in range(150):
            batch = torch.randint(0, 2000, (64,), generator=batches)
            loss = F.cross_entropy(model(x[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            accuracies.append((model(x[2000:]).argmax(1) == labels[2000:]).float().mean().item())
    bp_accuracy, draf_accuracy = accuracies
    assert bp_accuracy > 0.9
    assert draf_accuracy > bp_accuracy - 0.03, accuracies
