"""Column-major dense layers (retina_raf.dense) and FusedRMSprop on column-major parameters.

Claims: ColumnMajorLinear is nn.Linear (init, forward, all three gradients, state_dict) with
W stored column-major; its W.grad comes in W's own layout, so autograd keeps it as it is and
the fused optimizer step takes it; RAFLinear computes the same gradients in these forms; the
optimizer on a column-major parameter is torch's RMSprop, and resumes bit for bit from a
row-major square_avg (a checkpoint of a row-major fc_1).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from retina_raf.dense import (
    ColumnMajorLinear,
    column_major,
    input_gradient,
    is_column_major,
    weight_gradient,
)
from retina_raf.feedback import RAFLinear
from retina_raf.optim import FusedRMSprop, memory_order, same_layout


def _pair(bias: bool = True, dtype=torch.float64) -> tuple[nn.Linear, ColumnMajorLinear]:
    torch.manual_seed(3)
    linear = nn.Linear(37, 11, bias=bias, dtype=dtype)
    torch.manual_seed(3)
    return linear, ColumnMajorLinear(37, 11, bias=bias, dtype=dtype)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("leading", [(5,), (2, 3)])
def test_column_major_linear_is_nn_linear_with_w_transposed_in_memory(bias, leading):
    """Same seed, same weights (now with W^T contiguous); output and the input, weight and bias
    gradients equal nn.Linear's to 1e-12 in float64, for any leading dimensions."""
    linear, layer = _pair(bias)
    assert torch.equal(layer.weight, linear.weight)
    assert is_column_major(layer.weight) and not layer.weight.is_contiguous()
    x = torch.randn(*leading, 37, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    out, expected = layer(x), linear(x_ref)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    upstream = torch.randn_like(out)
    out.backward(upstream)
    expected.backward(upstream)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.weight.grad, linear.weight.grad, rtol=1e-12, atol=1e-12)
    if bias:
        torch.testing.assert_close(layer.bias.grad, linear.bias.grad, rtol=1e-12, atol=1e-12)


def test_weight_gradient_comes_in_the_weights_layout():
    """W.grad is (h^T delta)^T: column-major like W, so autograd stores it without a copy of
    its own (the same storage the product wrote) and the fused optimizer can take it."""
    _, layer = _pair(dtype=torch.float32)
    seen = {}

    def note_where(grad):
        seen["data_ptr"] = grad.data_ptr()

    layer.weight.register_hook(note_where)
    layer(torch.randn(8, 37)).sum().backward()
    assert same_layout(layer.weight.grad, layer.weight)
    assert layer.weight.grad.data_ptr() == seen["data_ptr"]
    assert memory_order(layer.weight) == (1, 0)


def test_backward_products_are_the_plain_ones():
    torch.manual_seed(0)
    delta, rows = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 9, dtype=torch.float64)
    basis = torch.randn(9, 4, dtype=torch.float64)
    grad = input_gradient(delta, basis)
    torch.testing.assert_close(grad, delta @ basis.t(), rtol=1e-13, atol=1e-13)
    assert grad.is_contiguous()
    weight_grad = weight_gradient(rows, delta)
    torch.testing.assert_close(weight_grad, delta.t() @ rows, rtol=1e-13, atol=1e-13)
    assert is_column_major(weight_grad)


def test_state_dicts_move_between_nn_linear_and_column_major_linear():
    """load_state_dict copies values into the layout of the parameter it fills."""
    linear, layer = _pair()
    with torch.no_grad():
        linear.weight.mul_(2.0)
    layer.load_state_dict(linear.state_dict())
    assert torch.equal(layer.weight, linear.weight) and is_column_major(layer.weight)
    fresh = nn.Linear(37, 11, dtype=torch.float64)
    fresh.load_state_dict(layer.state_dict())
    assert torch.equal(fresh.weight, layer.weight) and fresh.weight.is_contiguous()


def test_raf_linear_gradients_in_column_major_forms():
    """RAFLinear (W column-major): W.grad = delta^T h in W's layout, input gradient
    (delta P^T) Q^T, Q.grad = h^T (delta P^T), to 1e-12 in float64."""
    torch.manual_seed(2)
    layer = RAFLinear(13, 7, rank=3).double()
    assert is_column_major(layer.weight)
    x = torch.randn(5, 13, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    delta = torch.randn_like(out)
    out.backward(delta)
    p_delta = delta @ layer.p.detach().t()
    torch.testing.assert_close(layer.weight.grad, delta.t() @ x.detach(), rtol=1e-12, atol=1e-12)
    assert same_layout(layer.weight.grad, layer.weight)
    torch.testing.assert_close(x.grad, p_delta @ layer.q.detach().t(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.q.grad, x.detach().t() @ p_delta, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("weight_decay", [0.0, 1e-3])
def test_fused_rmsprop_on_a_column_major_parameter_is_torch_rmsprop(weight_decay):
    """The fused step runs on the memory-order view (it is taken, not the fallback): parameter
    and square_avg equal torch's RMSprop's to 1e-12 in float64 and stay column-major."""
    torch.manual_seed(4)
    ours = nn.Parameter(column_major(torch.randn(40, 70, dtype=torch.float64)))
    theirs = nn.Parameter(ours.detach().clone())
    kw = dict(lr=1e-3, alpha=0.9, eps=1e-7, weight_decay=weight_decay)
    fused, reference = FusedRMSprop([ours], **kw), torch.optim.RMSprop([theirs], **kw)
    for _ in range(5):
        grad = column_major(torch.randn(40, 70, dtype=torch.float64))
        ours.grad, theirs.grad = grad.clone(memory_format=torch.preserve_format), grad.clone()
        assert fused._fusable(fused.param_groups[0])
        fused.step()
        reference.step()
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-15)
    square_avg = fused.state[ours]["square_avg"]
    torch.testing.assert_close(square_avg, reference.state[theirs]["square_avg"], rtol=1e-12,
                               atol=0)  # fmt: skip
    assert is_column_major(ours) and is_column_major(square_avg)


def test_fused_rmsprop_resumes_bit_for_bit_from_a_row_major_square_avg():
    """A checkpoint whose square_avg is row-major (a row-major fc_1's) resumes a
    column-major parameter exactly as if the state had been column-major all along."""
    torch.manual_seed(5)
    param = nn.Parameter(column_major(torch.randn(30, 20)))
    kw = dict(lr=1e-3, alpha=0.9, eps=1e-7, weight_decay=1e-5)
    optimizer = FusedRMSprop([param], **kw)
    grads = [column_major(torch.randn(30, 20)) for _ in range(6)]

    def run(p, opt, steps):
        for grad in steps:
            p.grad = grad.clone(memory_format=torch.preserve_format)
            opt.step()

    run(param, optimizer, grads[:3])
    restored = nn.Parameter(param.detach().clone(memory_format=torch.preserve_format))
    checkpoint = copy.deepcopy(optimizer.state_dict())
    checkpoint["state"][0]["square_avg"] = checkpoint["state"][0]["square_avg"].contiguous()
    resumed = FusedRMSprop([restored], **kw)
    resumed.load_state_dict(checkpoint)
    run(param, optimizer, grads[3:])
    run(restored, resumed, grads[3:])
    assert torch.equal(param, restored)
    assert is_column_major(resumed.state[restored]["square_avg"])
