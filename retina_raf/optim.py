"""RMSprop in one fused pass per tensor: torch's Adam kernel at beta1 = 0.

torch's RMSprop update is a chain of elementwise passes over every parameter (weight decay,
squared-gradient average, square root, epsilon, the step). On a CPU each pass streams the
whole tensor through memory: for the retina model's fc_1 (33.5 M weights, 134 MB; its RAF Q
doubles that) that is a visible part of a training step. torch has a fused (one pass, one
kernel) implementation of Adam on the CPU and the GPU, but none of RMSprop. With its first
moment switched off, Adam *is* RMSprop:

    Adam (torch's fused kernel)                     RMSprop (torch.optim.rmsprop)
    g  = grad + weight_decay * param                g  = grad + weight_decay * param
    m  = beta1 * m + (1 - beta1) * g  = g           (beta1 = 0)
    v  = beta2 * v + (1 - beta2) * g^2              v  = alpha * v + (1 - alpha) * g^2
    param -= lr / c1 * m / (sqrt(v) / sqrt(c2) + eps)   param -= lr * g / (sqrt(v) + eps)

with bias corrections c1 = 1 - beta1^t and c2 = 1 - beta2^t. :class:`FusedRMSprop` calls the
kernel with beta1 = 0, beta2 = alpha and a step count t = 2^60 of its own (not the state's
``step``), at which beta^t underflows to 0 and both corrections are exactly 1. The first
moment m needs a buffer that the kernel overwrites with g: without weight decay that is the
gradient itself (overwritten by its own value), with weight decay a scratch buffer, so that
``param.grad`` is never changed. The arithmetic is RMSprop's; only the rounding of the
kernel's vectorised loop (fused multiply-adds) differs from torch's separate passes, by about
an ulp per step (float64: 1e-14 relative after 20 steps, tests).

``python benchmarks/rmsprop_step.py`` times it against torch's RMSprop on fc_1's 33.5 M
weights (docs/performance.md#parts): several times faster on a CPU. State (``step``,
``square_avg``) and ``state_dict`` are torch's RMSprop's: checkpoints move freely between the
two. What Adam's form does not cover (momentum, centered, maximize, differentiable,
capturable, complex, sparse, overlapping or gaps in memory, a gradient in another layout than
its parameter, devices other than CPU and CUDA) goes through torch's own implementation.

The update is elementwise, so it runs on each tensor in its memory order: a parameter stored
column-major (:mod:`retina_raf.dense`) is passed as its contiguous transpose, with its gradient
and state seen the same way. A ``square_avg`` in another layout than its parameter (a
checkpoint of a row-major fc_1) is first copied into the parameter's layout: the same values.
"""

from __future__ import annotations

import torch

# Adam's step count for the fused kernel: a power of two (exact in float32) at which any
# beta < 1 - 1e-15 gives beta^t == 0.0 in double precision, so both bias corrections are 1.
_NO_BIAS_CORRECTION_STEP = 2.0**60


def memory_order(t: torch.Tensor) -> tuple[int, ...] | None:
    """The permutation of t's dimensions that makes it contiguous (identity for a contiguous
    tensor, (1, 0) for a column-major matrix), or None when there is none (overlaps, gaps)."""
    order = tuple(sorted(range(t.dim()), key=lambda d: -t.stride(d)))
    if t.permute(order).is_contiguous():
        return order
    return None


def same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors of one shape lie alike in memory (strides of size-1 dims aside)."""
    return all(
        size == 1 or sa == sb for size, sa, sb in zip(a.shape, a.stride(), b.stride(), strict=True)
    )


class FusedRMSprop(torch.optim.RMSprop):
    """``torch.optim.RMSprop`` with a one-pass update (same arguments, same state)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._first_moment: dict[torch.Tensor, torch.Tensor] = {}  # scratch, not state
        self._adam_steps: dict[torch.device, torch.Tensor] = {}

    @staticmethod
    def _fusable(group: dict) -> bool:
        if group["momentum"] != 0 or group["centered"] or group["maximize"]:
            return False
        if group["differentiable"] or group["capturable"] or group["foreach"]:
            return False
        if 1.0 - group["alpha"] ** _NO_BIAS_CORRECTION_STEP != 1.0:
            return False
        return all(
            p.grad is None
            or (
                p.device.type in ("cpu", "cuda")
                and not p.is_complex()
                and not p.grad.is_sparse
                and memory_order(p) is not None
                and same_layout(p.grad, p)
            )
            for p in group["params"]
        )

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter with a gradient; returns ``closure()`` if given."""
        if not all(self._fusable(group) for group in self.param_groups):
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, square_avgs, steps = [], [], [], []
            self._init_group(group, params, grads, square_avgs, [], [], steps)
            for param, grad, square_avg, step in zip(
                params, grads, square_avgs, steps, strict=True
            ):
                step += 1  # in place: the state's step tensor
                if not same_layout(square_avg, param):
                    square_avg = torch.empty_like(param).copy_(square_avg)
                    self.state[param]["square_avg"] = square_avg
                self._fused_update(param, grad, square_avg, group)
        return loss

    def _fused_update(self, param, grad, square_avg, group) -> None:
        weight_decay = group["weight_decay"]
        if weight_decay == 0:
            first_moment = grad  # the kernel writes m = g: the gradient's own value
        else:
            first_moment = self._first_moment.get(param)
            if first_moment is None:
                first_moment = self._first_moment[param] = torch.zeros_like(param)
        step = self._adam_steps.get(param.device)
        if step is None:
            step = self._adam_steps[param.device] = torch.tensor(
                _NO_BIAS_CORRECTION_STEP, dtype=torch.float32, device=param.device
            )
        lr = group["lr"]
        order = memory_order(param)
        param, grad, first_moment, square_avg = (
            t.permute(order) for t in (param, grad, first_moment, square_avg)
        )
        torch._fused_adam_(
            [param], [grad], [first_moment], [square_avg], [], [step],
            lr=float(lr) if isinstance(lr, torch.Tensor) else lr, beta1=0.0,
            beta2=group["alpha"], weight_decay=weight_decay, eps=group["eps"],
            amsgrad=False, maximize=False,
        )  # fmt: skip
