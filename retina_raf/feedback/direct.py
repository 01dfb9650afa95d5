"""Direct restricted adaptive feedback (dRAF, docs/design.md#direct-feedback).

Layer l's activation a_l receives ``g_l = B_l(delta_s)`` in place of the gradient coming
from layer l+1, where delta_s = dL/dz_s is the error at a later *source* z_s:

    fb = DirectFeedback(target_shape=(32, 32, 32), source_shape=(10,), rank=10)
    ...forward...
    a = fb.inject(a)          # identity; in backward: discard dL/da, send B(delta_s) instead
    ...
    logits = fb.tap(logits)   # identity; in backward: record delta_s = dL/dlogits

- flat source (m_s,): P (r, m_s), Q (prod(target_shape), r) dense;
  ``g = (delta_s P^T) Q^T``, ``q.grad = a^T (delta_s P^T)``;
- spatial source (C_s, H, W) on a_l's grid: P a 1x1 projection C_s -> r, Q (r, C_l, k, k) a
  kernel with "same" padding; ``g = conv2d_input(a.shape, Q, P delta_s)``,
  ``q.grad = conv2d_weight(a, Q.shape, P delta_s)``, both by FFT where ``conv_impl`` says so
  (:mod:`retina_raf.fftconv`: ``g`` from the spectra of P delta_s and Q, ``q.grad`` from those
  of P delta_s and a);
- p.grad: Oja on delta_s, as in RAFLinear / RAFConv2d.

Autograd runs backward in reverse topological order, so the tap at s has recorded delta_s
before the injection at a_l needs it whenever a_l's gradient path goes through s. Every
injection binds itself to the next forward call of its source's :class:`ErrorTap`; several
DirectFeedback modules share a source by sharing one ErrorTap (``source=``).
"""

from __future__ import annotations

import math
import weakref

import torch
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
from retina_raf.precision import no_autocast

_convolution_backward = torch.ops.aten.convolution_backward


class FeedbackWiringError(RuntimeError):
    """A direct-feedback injection found no error from its source (tap missing or off-path)."""


class _ErrorSlot:
    """Where one tap call leaves delta_s for one injection (freed once used)."""

    __slots__ = ("delta", "__weakref__")

    def __init__(self) -> None:
        self.delta = None


class _TapFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, slots):
        ctx.slots = slots
        return z.view_as(z)

    @staticmethod
    def backward(ctx, grad_output):
        for slot in ctx.slots:
            slot.delta = grad_output
        return grad_output, None


class ErrorTap(nn.Module):
    """Identity placed at a source z_s; in backward it hands dL/dz_s to the injections
    made (in the same forward pass) by the DirectFeedback modules that use it as source."""

    def __init__(self) -> None:
        super().__init__()
        # Weak references: an injection whose graph is gone (a forward pass stopped before
        # the source, e.g. to read an activation) must not keep its slot alive here.
        self._pending: list[weakref.ref] = []

    def _bind(self, slot: _ErrorSlot) -> None:
        if len(self._pending) >= 64:
            self._pending = [ref for ref in self._pending if ref() is not None]
        self._pending.append(weakref.ref(slot))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        refs, self._pending = self._pending, []
        slots = [slot for slot in (ref() for ref in refs) if slot is not None]
        if not slots or not torch.is_grad_enabled():
            return z
        return _TapFunction.apply(z, slots)


def _spatial_feedback_by_fft(
    a: torch.Tensor, q: torch.Tensor, p_delta: torch.Tensor, need_a: bool, need_q: bool
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``conv2d_input(a.shape, Q, P delta)`` and ``conv2d_weight(a, Q.shape, P delta)`` ("same"
    padding, stride 1) in the frequency domain: a (b, C_l, H, W), Q (r, C_l, k, k), P delta
    (b, r, H, W). Q plays the forward kernel of a C_l -> r convolution whose error is P delta."""
    size, kernel = tuple(a.shape[-2:]), tuple(q.shape[-2:])
    grid = fftconv.fft_grid(size, kernel)
    error_hat = fftconv.map_spectrum(p_delta, grid)  # (F, b, r)
    grad_a = grad_q = None
    if need_a:
        q_hat = fftconv.kernel_spectrum(q, grid)  # (F, C_l, r)
        grad_a = fftconv.spectrum_to_maps(fftconv.mix_adjoint(error_hat, q_hat), grid, size)
        grad_a = grad_a.to(a.dtype)
    if need_q:
        spectrum = fftconv.correlate(error_hat, fftconv.map_spectrum(a, grid))  # (F, r, C_l)
        grad_q = fftconv.spectrum_to_kernel(spectrum, grid, kernel).to(q.dtype)
    return grad_a, grad_q


class _InjectFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, q, p, feedback, slot):
        ctx.feedback, ctx.slot = feedback, slot
        ctx.save_for_backward(a)
        return a.view_as(a)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_from_above):  # discarded: a_l learns from delta_s only
        (a,) = ctx.saved_tensors
        feedback, slot = ctx.feedback, ctx.slot
        delta, slot.delta = slot.delta, None
        if delta is None:
            raise FeedbackWiringError(
                f"DirectFeedback{feedback.target_shape}<-{feedback.source_shape}: no error was "
                "recorded at its source. Call `z = feedback.tap(z)` on the source in the same "
                "forward pass, after `feedback.inject(a)`, on a path from `a` to the loss."
            )
        need_a, _, _, _, _ = ctx.needs_input_grad
        need_q = ctx.needs_input_grad[1] and feedback.train_q
        need_p = ctx.needs_input_grad[2] and feedback.p_rule == "oja"
        grad_a = grad_q = grad_p = None
        with no_autocast(a.device.type):
            delta = feedback._check_source_error(delta, a).to(a.dtype)
            p = feedback.p.to(a.dtype)
            p_delta = delta if feedback.p_rule == "identity" else project_channels(p, delta)
            q = feedback.q.to(a.dtype)
            if feedback.spatial and (need_a or need_q):
                impl = fftconv.choose_conv_impl(
                    feedback.conv_impl, q.shape, a.shape[-2:], a.device, a.dtype
                )
                if impl == "fft":
                    grad_a, grad_q = _spatial_feedback_by_fft(a, q, p_delta, need_a, need_q)
                else:
                    pad = feedback.kernel_size // 2
                    geometry = ((1, 1), (pad, pad), (1, 1), False, (0, 0), 1)
                    grad_a, grad_q, _ = _convolution_backward(
                        p_delta, a, q, None, *geometry, (need_a, need_q, False)
                    )
            elif not feedback.spatial:
                if need_a:
                    grad_a = p_delta.mm(q.t()).view(a.shape)
                if need_q:
                    grad_q = a.reshape(a.shape[0], -1).t().mm(p_delta)
            if need_p:
                grad_p = oja_gradient(feedback.p, p_delta, delta)
            feedback._observe_error(delta)
        return grad_a, grad_q, grad_p, None, None


class DirectFeedback(FeedbackMixin, nn.Module):
    """The direct feedback pathway B_l from a source error delta_s to an activation a_l.

    Args:
        target_shape: shape of a_l without the batch dim, (C_l, H, W) or (n_l,).
        source_shape: shape of z_s without the batch dim: (m_s,) (flat source, e.g. logits)
            or (C_s, H, W) (spatial source on a_l's H x W grid).
        rank: r in 1..m_s (m_s = C_s for a spatial source); None or "full" = m_s.
        kernel_size: odd size k of Q's kernel for a spatial source ("same" padding).
        conv_impl: "auto" | "direct" | "fft": how a spatial pathway's backward convolutions
            run (:func:`~retina_raf.fftconv.choose_conv_impl`, Q as a C_l -> r kernel).
        train_q, p_rule, track_error_covariance, pca_interval, covariance_momentum: as
            :class:`~retina_raf.feedback.RAFLinear`.
        source: an :class:`ErrorTap` to share with other DirectFeedback modules; a new one
            by default. ``tap(z)`` calls it.

    Parameters: ``q`` (prod(target_shape), r) or (r, C_l, k, k); ``p`` (r, m_s).
    """

    def __init__(
        self,
        target_shape: tuple[int, ...],
        source_shape: tuple[int, ...],
        rank: int | str | None = None,
        kernel_size: int = 1,
        train_q: bool = True,
        p_rule: str = "oja",
        source: ErrorTap | None = None,
        *,
        conv_impl: str = "auto",
        tie_q: bool = False,
        track_error_covariance: bool = False,
        pca_interval: int = 100,
        covariance_momentum: float = 0.99,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.target_shape = tuple(int(s) for s in target_shape)
        self.source_shape = tuple(int(s) for s in source_shape)
        what = f"DirectFeedback(target_shape={self.target_shape}, source={self.source_shape})"
        if len(self.source_shape) not in (1, 3):
            raise ConfigError(f"{what}: source_shape must be (m_s,) or (C_s, H, W)")
        if tie_q:
            raise ConfigError(
                f"{what}: tie_q (rule raf_aligned) sets Q to W^T P^T, but a direct pathway has "
                "no forward weight W of its own to transport"
            )
        self.spatial = len(self.source_shape) == 3
        if self.spatial:
            if len(self.target_shape) != 3 or self.target_shape[1:] != self.source_shape[1:]:
                raise ConfigError(
                    f"{what}: a spatial source needs a (C, H, W) target on the same H x W grid"
                )
            if not (isinstance(kernel_size, int) and kernel_size >= 1 and kernel_size % 2):
                raise ConfigError(f"{what}: kernel_size must be an odd int, got {kernel_size!r}")
        self.kernel_size = kernel_size
        self.conv_impl = fftconv.check_conv_impl(conv_impl)
        source_channels = self.source_shape[0]
        rank = check_rank(rank, source_channels, what)
        if self.spatial:
            q_shape = (rank, self.target_shape[0], kernel_size, kernel_size)
            q_fan_in = rank * kernel_size * kernel_size
        else:
            q_shape, q_fan_in = (math.prod(self.target_shape), rank), rank
        self._setup_feedback(
            error_channels=source_channels,
            rank=rank,
            q_shape=q_shape,
            q_fan_in=q_fan_in,
            train_q=train_q,
            p_rule=p_rule,
            track_error_covariance=track_error_covariance,
            pca_interval=pca_interval,
            covariance_momentum=covariance_momentum,
            what=what,
            device=device,
            dtype=dtype,
        )
        self.source = source if source is not None else ErrorTap()

    @classmethod
    def from_rule(cls, rule: str, target_shape, source_shape, rank=None, **kwargs):
        """Build the pathway of a named rule (``rules.RULES``; not "raf_aligned")."""
        full = int(source_shape[0])
        what = f"DirectFeedback(target_shape={tuple(target_shape)})"
        options = rule_options(rule, check_rank(rank, full, what), full, what)
        return cls(target_shape, source_shape, rank=rank, **options, **kwargs)

    def inject(self, a: torch.Tensor) -> torch.Tensor:
        """Identity on a_l (b, *target_shape); its backward returns B(delta_s) instead."""
        if not torch.is_grad_enabled():
            return a
        if tuple(a.shape[1:]) != self.target_shape:
            raise FeedbackWiringError(
                f"DirectFeedback expects targets of shape (b, {self.target_shape}), "
                f"got {tuple(a.shape)}"
            )
        slot = _ErrorSlot()
        self.source._bind(slot)
        return _InjectFunction.apply(a, self.q, self.p, self, slot)

    forward = inject

    def tap(self, z: torch.Tensor) -> torch.Tensor:
        """Identity on the source z_s (b, *source_shape); records delta_s in backward."""
        return self.source(z)

    def _check_source_error(self, delta: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """delta_s as (b, m_s) for a flat source, (b, C_s, H, W) for a spatial one."""
        if not self.spatial:
            delta = delta.reshape(delta.shape[0], -1)
        if delta.shape[0] != a.shape[0] or tuple(delta.shape[1:]) != self.source_shape:
            raise FeedbackWiringError(
                f"DirectFeedback expects a source of shape (b={a.shape[0]}, "
                f"{self.source_shape}); its tap saw {tuple(delta.shape)}"
            )
        return delta

    def feedback_matrix(self) -> torch.Tensor:
        """B = Q P: (prod(target_shape), m_s) dense, or (C_s, C_l, k, k) as a kernel."""
        if self.spatial:
            return torch.einsum("rm,rnyx->mnyx", self.p, self.q)
        return self.q @ self.p

    def extra_repr(self) -> str:
        shapes = f"target_shape={self.target_shape}, source_shape={self.source_shape}"
        kernel = f", kernel_size={self.kernel_size}" if self.spatial else ""
        return f"{shapes}{kernel}, {self._feedback_repr()}"
