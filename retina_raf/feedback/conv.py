"""RAFConv2d: nn.Conv2d whose input gradient is carried by r error channels (DESIGN.md 4.2).

Input h (b, n, H, W), weight W (m, n, kh, kw), error delta (b, m, H', W'):

    P delta              1x1 projection m -> r at every pixel, (b, r, H', W')
    gradient sent to h   conv2d_input(h.shape, Q, P delta)  with Q (r, n, kh, kw) and W's
                         stride / padding / dilation: the input-gradient convolution runs
                         with r instead of m channels, so its cost falls with the rank
    W.grad, bias.grad    exact, as nn.Conv2d
    q.grad               conv2d_weight(h, Q.shape, P delta)   (= sum_m P_rm W.grad_m)
    p.grad               Oja with C the channel covariance of delta over batch and pixels

Full rank, P = I and Q = W give back exactly backprop's input gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from retina_raf.errors import ConfigError
from retina_raf.feedback.base import FeedbackMixin
from retina_raf.feedback.rules import (
    autocast_inputs,
    check_rank,
    no_autocast,
    oja_gradient,
    project_channels,
    rule_options,
)

_convolution_backward = torch.ops.aten.convolution_backward


def explicit_padding(
    padding, kernel_size: tuple[int, int], dilation: tuple[int, int], what: str
) -> tuple[int, int]:
    """nn.Conv2d's padding (ints, "valid" or "same") as two ints; "same" must be symmetric."""
    if padding == "valid":
        return (0, 0)
    if padding == "same":
        totals = [d * (k - 1) for k, d in zip(kernel_size, dilation, strict=True)]
        if any(total % 2 for total in totals):
            raise ConfigError(f"{what}: padding='same' needs odd (dilated) kernel sizes")
        return tuple(total // 2 for total in totals)
    return tuple(padding)


class RAFConv2dFunction(torch.autograd.Function):
    """Forward: ``F.conv2d``. Backward: exact W/bias gradients, input gradient through Q P."""

    @staticmethod
    def forward(ctx, x, weight, bias, q, p, layer):
        x, weight, bias = autocast_inputs(x, weight, bias)
        ctx.layer = layer
        ctx.weight_shape = weight.shape
        ctx.save_for_backward(x)  # W is not needed: the input gradient goes through Q
        return F.conv2d(x, weight, bias, layer.stride, layer.explicit_padding, layer.dilation)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        layer = ctx.layer
        need_x, need_w, need_b, need_q, need_p, _ = ctx.needs_input_grad
        need_q = need_q and layer.train_q
        need_p = need_p and layer.p_rule == "oja"
        geometry = (layer.stride, layer.explicit_padding, layer.dilation, False, (0, 0), 1)
        grad_x = grad_w = grad_b = grad_q = grad_p = None
        with no_autocast(grad_output.device.type):
            delta = grad_output
            if need_w or need_b:
                # Only the kernel's shape is read when the input gradient is not asked for.
                shape_only = delta.new_empty(1).expand(ctx.weight_shape)
                bias_sizes = [delta.shape[1]] if need_b else None
                _, grad_w, grad_b = _convolution_backward(
                    delta, x, shape_only, bias_sizes, *geometry, (False, need_w, need_b)
                )
            if need_x or need_q or need_p:
                p = layer.p.to(delta.dtype)
                p_delta = delta if layer.p_rule == "identity" else project_channels(p, delta)
                if need_x or need_q:
                    q = layer.q.to(delta.dtype)
                    grad_x, grad_q, _ = _convolution_backward(
                        p_delta, x, q, None, *geometry, (need_x, need_q, False)
                    )
                if need_p:
                    grad_p = oja_gradient(layer.p, p_delta, delta)
            layer._observe_error(delta)
        return grad_x, grad_w, grad_b, grad_q, grad_p, None


class RAFConv2d(FeedbackMixin, nn.Conv2d):
    """nn.Conv2d (groups = 1, zero padding) with restricted adaptive feedback.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, bias: as nn.Conv2d
            (same init, same forward output).
        rank: number of error channels r in 1..out_channels; None or "full" = out_channels.
        train_q, p_rule, track_error_covariance, pca_interval, covariance_momentum: as
            :class:`~retina_raf.feedback.RAFLinear`.

    Parameters: ``weight`` (m, n, kh, kw), ``bias`` (m,), ``q`` (r, n, kh, kw), ``p`` (r, m).
    Q has W's layout: at full rank with P = I, Q = W is backprop.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        bias: bool = True,
        rank: int | str | None = None,
        train_q: bool = True,
        p_rule: str = "oja",
        *,
        track_error_covariance: bool = False,
        pca_interval: int = 100,
        covariance_momentum: float = 0.99,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            bias=bias,
            device=device,
            dtype=dtype,
        )
        what = f"RAFConv2d({in_channels}, {out_channels}, {self.kernel_size})"
        self.explicit_padding = explicit_padding(
            self.padding, self.kernel_size, self.dilation, what
        )
        rank = check_rank(rank, out_channels, what)
        kh, kw = self.kernel_size
        self._setup_feedback(
            error_channels=out_channels,
            rank=rank,
            q_shape=(rank, in_channels, kh, kw),
            # Q maps r error channels back to n: its backward fan-in is r * kh * kw.
            q_fan_in=rank * kh * kw,
            train_q=train_q,
            p_rule=p_rule,
            track_error_covariance=track_error_covariance,
            pca_interval=pca_interval,
            covariance_momentum=covariance_momentum,
            what=what,
            device=device,
            dtype=dtype,
        )

    @classmethod
    def from_rule(
        cls, rule: str, in_channels: int, out_channels: int, kernel_size, rank=None, **kwargs
    ) -> RAFConv2d:
        """Build the layer of a named rule ("raf", "raf_pca", "kp", "fa", "lowrank_fa")."""
        what = f"RAFConv2d({in_channels}, {out_channels})"
        options = rule_options(rule, check_rank(rank, out_channels, what), out_channels, what)
        return cls(in_channels, out_channels, kernel_size, rank=rank, **options, **kwargs)

    def reset_parameters(self) -> None:
        super().reset_parameters()  # W and bias exactly as nn.Conv2d draws them
        if hasattr(self, "q"):
            self.reset_feedback_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return F.conv2d(
                x, self.weight, self.bias, self.stride, self.explicit_padding, self.dilation
            )
        return RAFConv2dFunction.apply(x, self.weight, self.bias, self.q, self.p, self)

    def feedback_matrix(self) -> torch.Tensor:
        """B as a kernel in W's layout: ``einsum('rm,rnyx->mnyx', P, Q)``, (m, n, kh, kw)."""
        return torch.einsum("rm,rnyx->mnyx", self.p, self.q)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._feedback_repr()}"
