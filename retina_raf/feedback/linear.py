"""RAFLinear: nn.Linear whose input gradient goes through a rank-r feedback ``B = Q P``.

Input h (N x n, any leading dims), weight W (m x n), error delta = dL/dz (N x m):

    gradient sent to h   (delta P^T) Q^T          Q: n x r,  P: r x m
    W.grad, bias.grad    delta^T h, sum_N delta   (exact, as nn.Linear)
    q.grad               h^T (delta P^T)           (Kolen-Pollack; = W.grad^T P^T, whichever
                                                   is cheaper: N n r vs m n r)
    p.grad               -(P C (I - P^T P))       (Oja, C the trace-normalized delta^T delta)
    tie_q                Q := W^T P^T before every backward (KP's fixed point): B = W^T P^T P

The signs are for a descent optimizer: ``q -= lr * q.grad`` is paper eq. (7),
``dQ = eta h (P e)^T`` with e = -delta, and ``p -= lr * p.grad`` is eq. (8) on the error.

W is stored column-major and the products formed as in :mod:`retina_raf.dense` (W.grad as
``(h^T delta)^T``, the input gradient as ``(Q (delta P^T)^T)^T``): the same numbers as above,
in the forms a CPU runs fastest for fc_1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from retina_raf.dense import ColumnMajorLinear, input_gradient, weight_gradient
from retina_raf.feedback.base import FeedbackMixin
from retina_raf.feedback.rules import (
    check_rank,
    oja_gradient,
    rule_options,
)
from retina_raf.precision import autocast_inputs, no_autocast


class RAFLinearFunction(torch.autograd.Function):
    """Forward: ``F.linear``. Backward: exact W/bias gradients, input gradient through Q P."""

    @staticmethod
    def forward(ctx, x, weight, bias, q, p, layer):
        x, weight, bias = autocast_inputs(x, weight, bias)
        ctx.layer = layer
        ctx.save_for_backward(x)  # W is not needed: the input gradient goes through Q
        return F.linear(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        layer = ctx.layer
        need_x, need_w, need_b, need_q, need_p, _ = ctx.needs_input_grad
        need_q = need_q and layer.train_q
        need_p = need_p and layer.p_rule == "oja"
        grad_x = grad_w = grad_b = grad_q = grad_p = None
        with no_autocast(grad_output.device.type):
            delta = grad_output.reshape(-1, grad_output.shape[-1])
            rows = x.reshape(-1, x.shape[-1])
            if need_w:
                grad_w = weight_gradient(rows, delta)
            if need_b:
                grad_b = delta.sum(0)
            if need_x or need_q or need_p:
                p = layer.p.to(delta.dtype)
                p_delta = delta if layer.p_rule == "identity" else delta.mm(p.t())
                if need_x:
                    grad_x = input_gradient(p_delta, layer.q.to(delta.dtype)).view(x.shape)
                if need_q:
                    # h^T (delta P^T) costs N n r, (P W.grad)^T costs m n r: the cheaper one
                    if grad_w is not None and rows.shape[0] > delta.shape[1]:
                        grad_q = grad_w.t().mm(p.t())
                    else:
                        grad_q = rows.t().mm(p_delta)
                if need_p:
                    grad_p = oja_gradient(layer.p, p_delta, delta)
            layer._observe_error(delta)
        return grad_x, grad_w, grad_b, grad_q, grad_p, None


class RAFLinear(FeedbackMixin, ColumnMajorLinear):
    """nn.Linear with restricted adaptive feedback (docs/design.md#learning-rules-linear).

    Args:
        in_features, out_features, bias: as nn.Linear (same init; the same output to rounding,
            W being stored column-major).
        rank: feedback rank r in 1..out_features; None or "full" = out_features.
        train_q: train Q by the Kolen-Pollack rule (False: Q stays random, as in FA).
        p_rule: "oja" | "pca" | "fixed" | "identity" (see ``retina_raf.feedback.rules``).
        tie_q: Q is set to W^T P^T before every backward instead of being learned (needs
            train_q=False): the feedback at RAF's fixed point, B = W^T P^T P.
        track_error_covariance: keep an EMA of the error covariance for diagnostics
            (always on for "pca"; costs one m x m Gram matrix per backward pass).
        pca_interval: "pca" recomputes P every this many backward passes.
        covariance_momentum: EMA factor of the error covariance.

    Parameters: ``weight`` (m, n, column-major), ``bias`` (m,), ``q`` (n, r), ``p`` (r, m).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        rank: int | str | None = None,
        train_q: bool = True,
        p_rule: str = "oja",
        *,
        tie_q: bool = False,
        track_error_covariance: bool = False,
        pca_interval: int = 100,
        covariance_momentum: float = 0.99,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        what = f"RAFLinear({in_features}, {out_features})"
        rank = check_rank(rank, out_features, what)
        self._setup_feedback(
            error_channels=out_features,
            rank=rank,
            q_shape=(in_features, rank),
            q_fan_in=rank,
            train_q=train_q,
            p_rule=p_rule,
            tie_q=tie_q,
            track_error_covariance=track_error_covariance,
            pca_interval=pca_interval,
            covariance_momentum=covariance_momentum,
            what=what,
            device=device,
            dtype=dtype,
        )

    @classmethod
    def from_rule(
        cls, rule: str, in_features: int, out_features: int, rank=None, **kwargs
    ) -> RAFLinear:
        """Build the layer of a named rule (``rules.RULES``: "raf", "raf_pca", ...)."""
        what = f"RAFLinear({in_features}, {out_features})"
        options = rule_options(rule, check_rank(rank, out_features, what), out_features, what)
        return cls(in_features, out_features, rank=rank, **options, **kwargs)

    def reset_parameters(self) -> None:
        super().reset_parameters()  # W and bias exactly as nn.Linear draws them
        if hasattr(self, "q"):
            self.reset_feedback_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return F.linear(x, self.weight, self.bias)
        if self.tie_q:
            self._tie_q()
        return RAFLinearFunction.apply(x, self.weight, self.bias, self.q, self.p, self)

    def transported_weight(self) -> torch.Tensor:
        """W^T P^T (n, r): what Q converges to under Kolen-Pollack with weight decay."""
        return self.weight.t() @ self.p.t()

    def feedback_matrix(self) -> torch.Tensor:
        """B = Q P (n, m): what the backward pass uses in place of W^T."""
        return self.q @ self.p

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._feedback_repr()}"
