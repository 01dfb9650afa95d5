"""Dense layers with the weight stored column-major: nn.Linear in the products a CPU runs fastest.

What is computed is exactly nn.Linear's. Input h (N x n), weight W (m x n), error
delta = dL/dz (N x m):

    forward           z     = h W^T + b
    input gradient    dL/dh = delta W      formed as (W^T delta^T)^T
    weight gradient   dL/dW = delta^T h    formed as (h^T delta)^T
    bias gradient     sum over N of delta

Why the layout. fc_1 of the retina model (32,768 -> 1,024: 33.5 M weights, 134 MB) costs about
a third of a backprop training step on a CPU, and MKL's speed on its three products depends on
which operand lies transposed in memory. With W stored column-major (``W^T`` contiguous, shape
and values unchanged):

- the forward reads W^T as it lies;
- the input gradient is one product with W^T on the left (M = n = 32,768 rows), the form MKL
  runs fastest at batch 64;
- the weight gradient h^T delta (n x m, contiguous) *is* W.grad in W's own layout, so autograd
  takes it as it is. A gradient in another layout than its parameter is copied into the
  parameter's layout by autograd (134 MB for fc_1) or slows the optimizer.

``python benchmarks/dense_layout.py`` times the two layouts interleaved in one process
(docs/performance.md#parts): column-major is the faster on a CPU. On CUDA both layouts are
cuBLAS calls with a transpose flag.

:func:`column_major` lays a weight out this way; :func:`input_gradient` and
:func:`weight_gradient` are the two backward products, shared with
:class:`~retina_raf.feedback.RAFLinear` (its Q, n x r, is already W^T's layout).
:class:`ColumnMajorLinear` is nn.Linear (same parameters, init, state_dict values and output)
computing through them; :class:`~retina_raf.optim.FusedRMSprop` updates such parameters in
their memory order.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from retina_raf.precision import autocast_inputs, no_autocast


def column_major(weight: torch.Tensor) -> torch.Tensor:
    """The same (m, n) matrix stored column-major: ``result.t()`` is contiguous."""
    return weight.t().contiguous().t()


def is_column_major(weight: torch.Tensor) -> bool:
    return weight.dim() == 2 and weight.t().is_contiguous()


def input_gradient(delta: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``delta @ basis.t()`` (N, n) from delta (N, k) and basis (n, k), formed as
    ``(basis delta^T)^T``: for basis = W^T (backprop) or Q (RAF, k = r)."""
    return torch.mm(basis, delta.t()).t().contiguous()


def weight_gradient(rows: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``delta^T rows`` (m, n), column-major, from rows (N, n) and delta (N, m)."""
    return torch.mm(rows.t(), delta).t()


class ColumnMajorLinearFunction(torch.autograd.Function):
    """``F.linear(x, weight, bias)`` for a column-major weight, with the products above."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        x, weight, bias = autocast_inputs(x, weight, bias)
        rows = x.reshape(-1, x.shape[-1])
        out = rows.mm(weight.t()) if bias is None else torch.addmm(bias, rows, weight.t())
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return out.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        grad_x = grad_w = grad_b = None
        with no_autocast(grad_output.device.type):
            delta = grad_output.reshape(-1, grad_output.shape[-1])
            if need_x:
                grad_x = input_gradient(delta, weight.t()).view(x.shape)
            if need_w:
                grad_w = weight_gradient(x.reshape(-1, x.shape[-1]), delta)
            if need_b and ctx.has_bias:
                grad_b = delta.sum(0)
        return grad_x, grad_w, grad_b


class ColumnMajorLinear(nn.Linear):
    """nn.Linear with its weight stored column-major (``weight.t()`` contiguous).

    Same arguments, parameters, init (the same random draws) and output as nn.Linear; its
    ``state_dict`` loads into nn.Linear and back (``load_state_dict`` copies values into the
    layout of the parameter it fills).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 device=None, dtype=None) -> None:  # fmt: skip
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.weight = nn.Parameter(column_major(self.weight.detach()))

    def reset_parameters(self) -> None:
        """nn.Linear's draws, value for value: a random fill follows memory order, so W is
        drawn row-major and copied into its column-major storage."""
        if self.weight.is_contiguous():  # in nn.Linear's __init__, before the layout changes
            super().reset_parameters()
            return
        storage = self.weight.data
        with torch.no_grad():
            self.weight.data = torch.empty_like(storage, memory_format=torch.contiguous_format)
            super().reset_parameters()
            storage.copy_(self.weight.data)
            self.weight.data = storage

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ColumnMajorLinearFunction.apply(x, self.weight, self.bias)
