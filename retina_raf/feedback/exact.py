"""Backprop's exact gradients through a model's feedback layers, for a while.

A feedback layer's forward pass is its parent's; only its backward pass differs. Code that
needs the gradient of the function the network computes (an input gradient, a receptive
field) rather than the learning rule's runs it inside :func:`exact_gradients`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from retina_raf.feedback.base import FeedbackMixin


@contextlib.contextmanager
def exact_gradients(model: nn.Module) -> Iterator[None]:
    """Make ``model``'s feedback layers (RAF, dRAF) backpropagate the true gradient.

    An RF is a property of the function the network computes, so the input gradient must be
    the exact one. RAF layers send ``Q P delta`` instead of ``W^T delta`` to their input and
    update error statistics in their backward pass, and a dRAF target discards the gradient
    from above; here RAF layers run their plain nn.Conv2d/nn.Linear forward and dRAF
    injections are identities (their forward values are unchanged), restored on exit (also
    when the block raises). Forward passes inside the block compute what they compute
    outside it.

    Example:
        >>> with exact_gradients(model):
        ...     (grad,) = torch.autograd.grad(model(x).sum(), x)  # backprop's input gradient
    """
    patched = []
    for module in model.modules():
        if not isinstance(module, FeedbackMixin):
            continue
        if isinstance(module, nn.Conv2d):
            module.forward = nn.Conv2d.forward.__get__(module)
            patched.append((module, "forward"))
        elif isinstance(module, nn.Linear):
            module.forward = nn.Linear.forward.__get__(module)
            patched.append((module, "forward"))
        elif hasattr(module, "inject"):
            module.inject = _identity
            patched.append((module, "inject"))
    try:
        yield
    finally:
        for module, name in patched:
            delattr(module, name)  # the class's method shows through again


def _identity(tensor: torch.Tensor) -> torch.Tensor:
    return tensor
