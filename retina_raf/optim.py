"""RMSprop whose update runs block by block, so that each block stays in the CPU's cache.

torch's RMSprop update is a chain of elementwise passes over every parameter (weight decay,
squared-gradient average, square root, epsilon, the step). On a CPU each pass streams the
whole tensor through memory: for the retina model's fc_1 (33.5 M weights, 134 MB; its RAF Q
doubles that) the optimizer step cost about as much as all the dense layers' matrix products.
:class:`BlockedRMSprop` applies the same passes, in the same order, to consecutive blocks of
``block_size`` elements: a block's temporaries stay in the L2 cache and memory is read and
written about once per step instead of about ten times (measured once, by hand: 26 ms
against torch's 169 ms for one 33.5 M-element tensor, 2 threads; the effect on a whole step
is in ``benchmarks/train_throughput.py``).

Per element the arithmetic is torch's single-tensor RMSprop's (``torch.optim.rmsprop``):

    g  = grad + weight_decay * param
    v  = alpha * v + (1 - alpha) * g^2
    param -= lr * g / (sqrt(v) + eps)                      (momentum = 0)
    buf = momentum * buf + g / (sqrt(v) + eps); param -= lr * buf   (momentum > 0)

so results equal torch's to the last bit or within an ulp where its vectorized and scalar
loops round differently, and the state (``step``, ``square_avg``, ``momentum_buffer``) and
``state_dict`` are torch's: checkpoints move freely between the two. Anything this does not
cover (centered, maximize, differentiable, capturable, complex, non-CPU or non-contiguous
parameters) goes through torch's own implementation.
"""

from __future__ import annotations

import torch

BLOCK_SIZE = 1 << 16  # elements: 256 KB per float32 tensor, several tensors fit in L2


class BlockedRMSprop(torch.optim.RMSprop):
    """``torch.optim.RMSprop`` with a cache-blocked CPU update (same arguments, same state).

    Args:
        params, lr, alpha, eps, weight_decay, momentum, ...: as ``torch.optim.RMSprop``.
        block_size: elements per block of the CPU update.
    """

    def __init__(self, params, *args, block_size: int = BLOCK_SIZE, **kwargs) -> None:
        super().__init__(params, *args, **kwargs)
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.block_size = int(block_size)

    def _blockable(self, group: dict) -> bool:
        if group["centered"] or group["maximize"] or group["differentiable"]:
            return False
        if group["capturable"] or group["foreach"] or group.get("fused"):
            return False
        return all(
            p.grad is None
            or (
                p.device.type == "cpu"
                and not p.is_complex()
                and not p.grad.is_sparse
                and p.is_contiguous()
                and p.grad.is_contiguous()
            )
            for p in group["params"]
        )

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter with a gradient; returns ``closure()`` if given."""
        if not all(self._blockable(group) for group in self.param_groups):
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, square_avgs, buffers, steps = [], [], [], [], []
            self._init_group(group, params, grads, square_avgs, buffers, [], steps)
            momentum = group["momentum"]
            for i, param in enumerate(params):
                steps[i] += 1
                buffer = buffers[i].view(-1) if momentum > 0 else None
                self._update(
                    param.view(-1), grads[i].view(-1), square_avgs[i].view(-1), buffer, group
                )
        return loss

    def _update(self, param, grad, square_avg, buffer, group) -> None:
        lr, alpha, eps = group["lr"], group["alpha"], group["eps"]
        lr = float(lr) if isinstance(lr, torch.Tensor) else lr
        weight_decay, momentum = group["weight_decay"], group["momentum"]
        for start in range(0, param.numel(), self.block_size):
            block = slice(start, start + self.block_size)
            p, g, v = param[block], grad[block], square_avg[block]
            if weight_decay != 0:
                g = g.add(p, alpha=weight_decay)
            v.mul_(alpha).addcmul_(g, g, value=1 - alpha)
            avg = v.sqrt().add_(eps)
            if momentum > 0:
                b = buffer[block]
                b.mul_(momentum).addcdiv_(g, avg)
                p.add_(b, alpha=-lr)
            else:
                p.addcdiv_(g, avg, value=-lr)
