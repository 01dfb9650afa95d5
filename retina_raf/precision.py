"""Mixed precision for custom autograd Functions: what autocast does for nn.Linear / nn.Conv2d.

A custom Function is not an autocast op: it must cast its inputs itself, so that what it saves
for backward has the dtype its forward computed in, and its backward must run with autocast
off, in the dtypes it was given (the feedback layers compute their Gram matrices in float32
themselves).
"""

from __future__ import annotations

import contextlib

import torch


def autocast_inputs(*tensors: torch.Tensor | None) -> tuple:
    """Cast floating tensors to the autocast dtype when autocast is on for their device.

    Custom Functions must do autocast's work themselves so that what they save for backward has
    the dtype the forward computed in (bf16 under CPU autocast), as nn.Linear/nn.Conv2d would.
    """
    device_type = tensors[0].device.type
    if not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(t.to(dtype) if t is not None and t.is_floating_point() else t for t in tensors)


def no_autocast(device_type: str):
    """Context that switches autocast off (backward computes in the dtypes it was given)."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()
