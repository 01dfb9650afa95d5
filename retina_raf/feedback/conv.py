"""RAFConv2d: nn.Conv2d whose input gradient is carried by r error channels.

The maths: docs/design.md#learning-rules-conv2d and docs/design.md#fft-convolution.

Input h (b, n, H, W), weight W (m, n, kh, kw), error delta (b, m, H', W'):

    P delta              1x1 projection m -> r at every pixel, (b, r, H', W')
    gradient sent to h   conv2d_input(h.shape, Q, P delta)  with Q (r, n, kh, kw) and W's
                         stride / padding / dilation: the input-gradient convolution runs
                         with r instead of m channels, so its cost falls with the rank
    W.grad, bias.grad    exact, as nn.Conv2d
    q.grad               conv2d_weight(h, Q.shape, P delta) = sum_m P_rm W.grad_m: both are
                         linear in delta, so once W.grad exists Q's costs an einsum
    p.grad               Oja with C the channel covariance of delta over batch and pixels
    tie_q                Q := sum_m P_rm W_m (W^T P^T in W's layout) before every backward

Full rank, P = I and Q = W give back exactly backprop's input gradient.

``conv_impl="fft"`` (or "auto" where :func:`~retina_raf.fftconv.choose_conv_impl` picks it)
computes the same quantities in the frequency domain (:mod:`retina_raf.fftconv`): the forward
from the spectra of h and W, W.grad from those of delta and h, and the input gradient from
``P delta^`` (the 1x1 projection commutes with the FFT) and Q's spectrum, or, where that is
cheaper (r > m n / (m + n), e.g. full rank), from delta^ and the spectrum of the kernel
B = sum_r P_rm Q_r: the same linear map, grouped the other way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from retina_raf import fftconv
from retina_raf.errors import ConfigError
from retina_raf.feedback.base import FeedbackMixin
from retina_raf.feedback.rules import (
    check_rank,
    oja_gradient,
    project_channels,
    rule_options,
)
from retina_raf.precision import autocast_inputs, no_autocast

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


def _q_grad_from_w_grad(p: torch.Tensor, grad_w: torch.Tensor) -> torch.Tensor:
    """KP's ``q.grad = conv2d_weight(h, Q.shape, P delta)`` as ``sum_m P_rm W.grad_m``."""
    return torch.einsum("rm,mnyx->rnyx", p, grad_w)


def _feedback_kernel(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """B = Q P as one kernel in W's layout, ``sum_r P_rm Q_r``: (r, m), (r, n, k, k) ->
    (m, n, k, k)."""
    return torch.einsum("rm,rnyx->mnyx", p, q)


def _fold_feedback(rank: int, out_channels: int, in_channels: int) -> bool:
    """Whether the FFT backward sends delta through B = Q P as one kernel instead of first
    projecting it onto r channels: per frequency and image the projection and Q's mixing cost
    r (m + n) complex products, B's mixing m n (B itself is an einsum on the kernels), so
    B wins above r = m n / (m + n), e.g. at full rank of a 32 -> 32 layer (r > 16)."""
    return rank * (out_channels + in_channels) > out_channels * in_channels


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
            p = layer.p.to(delta.dtype)
            if need_w or need_b or need_q:
                # Only the kernel's shape is read when the input gradient is not asked for.
                shape_only = delta.new_empty(1).expand(ctx.weight_shape)
                bias_sizes = [delta.shape[1]] if need_b else None
                _, grad_w, grad_b = _convolution_backward(
                    delta, x, shape_only, bias_sizes, *geometry, (False, need_w or need_q, need_b)
                )
            if need_q:
                identity = layer.p_rule == "identity"  # KP at full rank: q.grad is W.grad (a copy)
                grad_q = grad_w.clone() if identity else _q_grad_from_w_grad(p, grad_w)
                grad_w = grad_w if need_w else None
            if need_x or need_p:
                p_delta = delta if layer.p_rule == "identity" else project_channels(p, delta)
                if need_x:
                    q = layer.q.to(delta.dtype)
                    grad_x, _, _ = _convolution_backward(
                        p_delta, x, q, None, *geometry, (True, False, False)
                    )
                if need_p:
                    grad_p = oja_gradient(layer.p, p_delta, delta)
            layer._observe_error(delta)
        return grad_x, grad_w, grad_b, grad_q, grad_p, None


class RAFConv2dFFTFunction(torch.autograd.Function):
    """RAFConv2dFunction computed in the frequency domain (``conv_impl="fft"``)."""

    @staticmethod
    def forward(ctx, x, weight, bias, q, p, layer):
        x, weight, bias = autocast_inputs(x, weight, bias)
        size, kernel = tuple(x.shape[-2:]), tuple(weight.shape[-2:])
        grid = fftconv.fft_grid(size, kernel)
        x_hat = fftconv.map_spectrum(x, grid)
        out = fftconv.spectrum_to_maps(
            fftconv.mix(x_hat, fftconv.kernel_spectrum(weight, grid)), grid, size
        )
        if bias is not None:
            out = out + bias.to(out.dtype).view(1, -1, 1, 1)
        ctx.layer, ctx.grid, ctx.size, ctx.kernel = layer, grid, size, kernel
        ctx.dtypes = (x.dtype, weight.dtype)
        ctx.save_for_backward(x_hat)  # h's spectrum serves W.grad; Q replaces W in backward
        return out.to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        (x_hat,) = ctx.saved_tensors
        layer, grid = ctx.layer, ctx.grid
        need_x, need_w, need_b, need_q, need_p, _ = ctx.needs_input_grad
        need_q = need_q and layer.train_q
        need_p = need_p and layer.p_rule == "oja"
        grad_x = grad_w = grad_b = grad_q = grad_p = None
        with no_autocast(grad_output.device.type):
            delta = grad_output
            p = layer.p.to(fftconv.compute_dtype(delta))
            if need_b:
                grad_b = delta.sum((0, 2, 3)).to(ctx.dtypes[1])
            if need_w or need_q or need_x:
                delta_hat = fftconv.map_spectrum(delta, grid)
            if need_w or need_q:
                spectrum = fftconv.correlate(delta_hat, x_hat)
                full_grad_w = fftconv.spectrum_to_kernel(spectrum, grid, ctx.kernel)
                if need_w:
                    grad_w = full_grad_w.to(ctx.dtypes[1])
                if need_q:
                    identity = layer.p_rule == "identity"
                    grad_q = full_grad_w.clone() if identity else (
                        _q_grad_from_w_grad(p, full_grad_w))  # fmt: skip
                    grad_q = grad_q.to(layer.q.dtype)
            if need_x:
                q = layer.q.to(p.dtype)
                if layer.p_rule == "identity":
                    error_hat, kernel_hat = delta_hat, fftconv.kernel_spectrum(q, grid)
                elif _fold_feedback(*p.shape, q.shape[1]):
                    error_hat = delta_hat
                    kernel_hat = fftconv.kernel_spectrum(_feedback_kernel(p, q), grid)
                else:
                    error_hat = delta_hat @ p.t().to(delta_hat.dtype)
                    kernel_hat = fftconv.kernel_spectrum(q, grid)
                grad_x = fftconv.mix_adjoint(error_hat, kernel_hat)
                grad_x = fftconv.spectrum_to_maps(grad_x, grid, ctx.size).to(ctx.dtypes[0])
            if need_p:
                grad_p = oja_gradient(layer.p, None, delta)  # it chooses whether to project
            layer._observe_error(delta)
        return grad_x, grad_w, grad_b, grad_q, grad_p, None


class RAFConv2d(FeedbackMixin, nn.Conv2d):
    """nn.Conv2d (groups = 1, zero padding) with restricted adaptive feedback.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, bias: as nn.Conv2d
            (same init, same forward output).
        rank: number of error channels r in 1..out_channels; None or "full" = out_channels.
        train_q, p_rule, tie_q, track_error_covariance, pca_interval, covariance_momentum: as
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
        tie_q: bool = False,
        track_error_covariance: bool = False,
        pca_interval: int = 100,
        covariance_momentum: float = 0.99,
        conv_impl: str = "auto",
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
        self.conv_impl = fftconv.check_conv_impl(conv_impl)
        try:
            fftconv.check_fft_geometry(self, what)
            self._fft_geometry = True
        except ConfigError:
            if conv_impl == "fft":
                raise
            self._fft_geometry = False
        kh, kw = self.kernel_size
        self._setup_feedback(
            error_channels=out_channels,
            rank=rank,
            q_shape=(rank, in_channels, kh, kw),
            # Q maps r error channels back to n: its backward fan-in is r * kh * kw.
            q_fan_in=rank * kh * kw,
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
        cls, rule: str, in_channels: int, out_channels: int, kernel_size, rank=None, **kwargs
    ) -> RAFConv2d:
        """Build the layer of a named rule (``rules.RULES``: "raf", "raf_pca", ...)."""
        what = f"RAFConv2d({in_channels}, {out_channels})"
        options = rule_options(rule, check_rank(rank, out_channels, what), out_channels, what)
        return cls(in_channels, out_channels, kernel_size, rank=rank, **options, **kwargs)

    def reset_parameters(self) -> None:
        super().reset_parameters()  # W and bias exactly as nn.Conv2d draws them
        if hasattr(self, "q"):
            self.reset_feedback_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        impl = "direct"
        if self._fft_geometry:
            impl = fftconv.choose_conv_impl(
                self.conv_impl, self.weight.shape, x.shape[-2:], x.device, x.dtype
            )
        if not torch.is_grad_enabled():  # no backward: the plain convolution of either impl
            if impl == "fft":
                return fftconv.FFTConv2dFunction.apply(x, self.weight, self.bias)
            return F.conv2d(
                x, self.weight, self.bias, self.stride, self.explicit_padding, self.dilation
            )
        if self.tie_q:
            self._tie_q()
        function = RAFConv2dFFTFunction if impl == "fft" else RAFConv2dFunction
        return function.apply(x, self.weight, self.bias, self.q, self.p, self)

    def transported_weight(self) -> torch.Tensor:
        """W^T P^T in Q's layout: ``einsum('rm,mnyx->rnyx', P, W)``, (r, n, kh, kw)."""
        return _q_grad_from_w_grad(self.p, self.weight)

    def feedback_matrix(self) -> torch.Tensor:
        """B as a kernel in W's layout: ``einsum('rm,rnyx->mnyx', P, Q)``, (m, n, kh, kw)."""
        return _feedback_kernel(self.p, self.q)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._feedback_repr()}, conv_impl={self.conv_impl}"
