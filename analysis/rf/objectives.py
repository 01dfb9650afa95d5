"""The objective of RF extraction: the post-nonlinearity response of the center unit of
each channel of one layer, and how the model is probed for it.

:class:`CenterUnits` gives ``response(images, rows)[i]``, the response of the center unit of
channel ``rows[i]`` to batch element ``i``; one backward pass of the summed objective gives
every element's input gradient at once, which is how all channels are probed in one batched
pass (elements never interact in eval mode). :func:`probing` puts a model in the state
probing needs, and :func:`center_unit_support` says which input pixels a center unit sees;
:meth:`CenterUnits.restrict_to` then computes the layer on that window alone (same
responses, a fraction of the cost).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from retina_raf.errors import ConfigError
from retina_raf.feedback import exact_gradients


def layer_activation_fn(model: nn.Module, layer: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return ``f(x) -> activation`` of ``layer`` (post-nonlinearity) for input batches ``x``.

    Uses ``model.activation``/``model.layer_names`` when the model has them, otherwise a
    forward hook on the named submodule. Raises ConfigError listing the valid names.
    """
    if hasattr(model, "activation") and hasattr(model, "layer_names"):
        names = list(model.layer_names)
        if layer not in names:
            raise ConfigError(f"unknown layer {layer!r}; valid layers: {', '.join(names)}")
        return lambda x: model.activation(x, layer)

    modules = dict(model.named_modules())
    modules.pop("", None)
    if layer not in modules:
        raise ConfigError(f"unknown layer {layer!r}; valid layers: {', '.join(modules)}")
    module = modules[layer]

    class _LayerReached(Exception):
        pass

    def activation(x: torch.Tensor) -> torch.Tensor:
        captured = {}

        def hook(_module, _inputs, output):
            captured["output"] = output
            raise _LayerReached  # nothing after the layer is needed

        handle = module.register_forward_hook(hook)
        try:
            model(x)
        except _LayerReached:
            pass
        finally:
            handle.remove()
        if not isinstance(captured.get("output"), torch.Tensor):
            raise ConfigError(f"layer {layer!r} did not produce a tensor in the forward pass")
        return captured["output"]

    return activation


class CenterUnits:
    """The objective: the center unit of each channel of one layer.

    ``response(images, rows)[i]`` is the activation of the center unit of channel ``rows[i]``
    for ``images[i]``; ``images`` has shape (B, *input_shape), ``rows`` (B,) int64.
    """

    def __init__(self, model: nn.Module, layer: str, input_shape: tuple, device, dtype):
        self.activation = layer_activation_fn(model, layer)
        self.input_shape = tuple(input_shape)
        with torch.no_grad():
            out = self.activation(torch.zeros(1, *input_shape, device=device, dtype=dtype))
        if out.dim() == 4:
            height, width = out.shape[2:]
            self.center = (height // 2, width // 2)
        elif out.dim() == 2:
            self.center = None
        else:
            raise ConfigError(
                f"layer {layer!r} has output shape {tuple(out.shape)}; "
                "expected (B, C, H, W) or (B, C)"
            )
        self.layer_shape = tuple(out.shape[1:])
        self.n_channels = out.shape[1]
        self.device, self.dtype = device, dtype
        self.window = None  # (y0, y1, x0, x1) of the input the layer is computed on; None: all
        self.window_center = self.center

    def restrict_to(self, support: list[int] | None) -> bool:
        """Compute the layer on the input window its center units see, not the whole image.

        A center unit of a stack of stride-1 'same'-padded convolutions depends only on the
        pixels of its support (:func:`center_unit_support`): on that window it gives the
        response it gives on the whole image, and its input gradient outside the window is
        zero either way, so the objective and its gradient (still over the whole input) are
        unchanged while each forward and backward pass shrinks with the area (17 x 17 of
        32 x 32 pixels for ``retina_2``). Used only after a check on random images that the
        window's center responses equal the whole image's; otherwise (a layer that mixes
        positions or changes the size, a shape the model refuses) the units stay as they were.

        Args:
            support: ``[y0, y1, x0, x1]`` (half-open), or None.

        Returns:
            Whether the layer is now computed on the window.
        """
        if support is None or self.center is None:
            return False
        y0, y1, x0, x1 = (int(v) for v in support)
        if (y1 - y0, x1 - x0) == tuple(self.input_shape[1:]):
            return False  # the window is the whole image: nothing to gain
        cy, cx = self.center
        generator = torch.Generator().manual_seed(0)
        images = torch.randn(4, *self.input_shape, generator=generator)
        images = images.to(device=self.device, dtype=self.dtype)
        try:
            with torch.no_grad():
                whole = self.activation(images)[:, :, cy, cx]
                part = self.activation(images[..., y0:y1, x0:x1])[:, :, cy - y0, cx - x0]
        except (RuntimeError, ValueError, IndexError, ConfigError):
            return False
        scale = float(whole.abs().max().clamp_min(1.0))
        if part.shape != whole.shape or not torch.allclose(part, whole, rtol=1e-4,
                                                           atol=1e-5 * scale):  # fmt: skip
            return False
        self.window, self.window_center = (y0, y1, x0, x1), (cy - y0, cx - x0)
        return True

    def _layer(self, images: torch.Tensor) -> torch.Tensor:
        if self.window is None:
            return self.activation(images)
        y0, y1, x0, x1 = self.window
        return self.activation(images[..., y0:y1, x0:x1])

    def _select(self, out: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        batch = torch.arange(len(rows), device=out.device)
        if self.center is None:
            return out[batch, rows]
        return out[batch, rows, self.window_center[0], self.window_center[1]]

    def response(self, images: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """(B,) center-unit responses, element i driving channel rows[i]."""
        return self._select(self._layer(images), rows)

    def responses_all(self, images: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
        """(B, len(channels)) center-unit responses of every listed channel to every image."""
        out = self._layer(images)
        if self.center is None:
            return out[:, channels]
        return out[:, channels, self.window_center[0], self.window_center[1]]

    def response_and_gradient(self, images: torch.Tensor, rows: torch.Tensor):
        """(B,) responses and (B, *input_shape) their input gradients, in one backward pass."""
        images = images.detach().requires_grad_(True)
        with torch.enable_grad():
            response = self.response(images, rows)
            if not response.requires_grad:  # the layer does not depend on the input at all
                return response.detach(), torch.zeros_like(images)
            (gradient,) = torch.autograd.grad(response.sum(), images, allow_unused=True)
        if gradient is None:
            gradient = torch.zeros_like(images)
        return response.detach(), gradient


@contextlib.contextmanager
def probing(model: nn.Module) -> Iterator[None]:
    """Eval mode (dropout off), no parameter gradients, exact gradients through feedback
    layers, deterministic cuDNN; everything restored after."""
    was_training = model.training
    requires_grad = [p.requires_grad for p in model.parameters()]
    cudnn = torch.backends.cudnn
    cudnn_state = (cudnn.deterministic, cudnn.benchmark)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        with exact_gradients(model):
            yield
    finally:
        cudnn.deterministic, cudnn.benchmark = cudnn_state
        for p, flag in zip(model.parameters(), requires_grad, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)


def center_unit_support(model: nn.Module, layer: str, units: CenterUnits) -> list[int] | None:
    """The input pixels the center unit of ``layer`` can see, as ``[y0, y1, x0, x1]``
    (half-open rows y0..y1-1, columns x0..x1-1), or None when unknown.

    Known for the project's :class:`~retina_raf.models.RetinaNet`, whose convolutions all
    have the same odd kernel k, stride 1 and same padding: the d-th convolution sees a
    square of d (k - 1) + 1 pixels (17 x 17 for ``retina_2`` with 9 x 9 kernels). Dense
    layers see the whole image (None). Montages crop the RFs to this box, and the objective
    computes the layer on it (:meth:`CenterUnits.restrict_to`).
    """
    cfg = getattr(model, "cfg", None)
    names = list(getattr(model, "layer_names", []))
    kernel = getattr(getattr(cfg, "retina", None), "kernel_size", None)
    if units.center is None or kernel is None or layer not in names or layer.startswith("fc"):
        return None
    half = (names.index(layer) + 1) * (int(kernel) // 2)
    (cy, cx), (height, width) = units.center, units.input_shape[1:]
    return [max(cy - half, 0), min(cy + half + 1, height), max(cx - half, 0),
            min(cx + half + 1, width)]  # fmt: skip
