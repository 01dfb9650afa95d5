"""The parameterization of the probe images: ``base + perturbation``.

``base`` is ``zeros`` or a uniform ``gray`` image (:func:`base_image`); ``actmax`` keeps the
perturbation on an L2 sphere (:func:`to_sphere`) whose radius is the contrast budget
(:func:`contrast_norm`: an RMS pixel contrast of :data:`DEFAULT_RMS_CONTRAST` by default);
random starts and noise come from one generator per channel (:func:`noise_generator`). No
jitter or other transform is applied: an RF is measured at the center unit, in place.
"""

from __future__ import annotations

import math

import numpy as np
import torch

# actmax: default norm = this RMS pixel contrast times sqrt(number of input pixels).
DEFAULT_RMS_CONTRAST = 0.1


def base_image(options: dict, input_shape: tuple, device, dtype) -> torch.Tensor:
    """(1, *input_shape) base image: zeros or a uniform gray at ``gray_level``."""
    fill = 0.0 if options["base"] == "zeros" else float(options["gray_level"])
    return torch.full((1, *input_shape), fill, device=device, dtype=dtype)


def noise_generator(seed: int, *stream: int) -> torch.Generator:
    """A CPU generator for (seed, stream): each channel draws from its own stream, so a channel's
    noise does not depend on which other channels share its batch (or on the device)."""
    state = np.random.SeedSequence(seed, spawn_key=stream).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def to_sphere(vectors: torch.Tensor, radius: float) -> torch.Tensor:
    """Rescale each (B, ...) element to L2 norm ``radius`` (zero elements stay zero)."""
    norms = vectors.flatten(1).norm(dim=1).clamp_min(torch.finfo(vectors.dtype).tiny)
    return vectors * (radius / norms).view(-1, *[1] * (vectors.dim() - 1))


def contrast_norm(input_shape: tuple) -> float:
    """actmax's default L2 norm of the perturbation: an RMS pixel contrast of
    :data:`DEFAULT_RMS_CONTRAST` over the ``input_shape`` (channels, height, width)."""
    return DEFAULT_RMS_CONTRAST * math.sqrt(math.prod(input_shape))
