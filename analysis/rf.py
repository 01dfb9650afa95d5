"""Receptive fields of a layer's units on the input grid (docs/design.md#rf-extraction).

For each channel of a layer, the RF of its **center unit** (spatial center ``(H//2, W//2)``
of the layer's output map; for flat layers the unit whose index is the channel) as an
``xarray.DataArray`` named ``"rf"`` with dims ``(channel, y, x)`` on the input grid.

The code is split the way feature-visualization libraries split it:

- *objective*: :class:`CenterUnits`, the post-nonlinearity response of the center unit of
  channel ``rows[i]`` to batch element ``i``. One backward pass of the summed objective gives
  every element's input gradient at once, which is how all channels are probed in one
  batched pass (elements never interact in eval mode).
- *parameterization*: the input is ``base + perturbation``; ``base`` is ``zeros`` or a uniform
  ``gray`` image; ``actmax`` keeps the perturbation on an L2 sphere.
- *methods* (the render loops):

  ``gradient``  Lindsey et al.'s RF: the input gradient at the base image, divided by its RMS.
  ``actmax``    activation maximization (Erhan et al. 2009): projected gradient ascent of the
                perturbation on the sphere ``||delta||_2 = norm`` from ``n_starts`` seeds; the
                RF is the perturbation of the start that reached the highest response
                (``combine="best"``; starts that found different maxima are not blurred
                together) or the mean over the starts that responded (``"mean"``); the
                ``spread`` coordinate is their standard deviation.
  ``sta``       white-noise spike-triggered average over ``n_samples`` Gaussian images
                ``base + noise_std * z``: ``cov(response, z) / noise_std``, which by Stein's
                lemma equals the input gradient averaged over the noise (so it is on the same
                scale as an unnormalized gradient and still defined where a ReLU is silent at
                the base image).

A unit is ``responsive`` when its response varied with the input somewhere the method probed
(a nonzero input gradient, or for ``sta`` a non-constant response). Units that never
respond (zero response and zero gradient everywhere, e.g. a dead ReLU) come back with
``responsive=False`` and an all-zero RF; they are never dropped.

Model access: a model with ``layer_names`` and ``activation(x, layer)`` (the project's
:class:`retina_raf.models.RetinaNet`) is used through them. Any other ``nn.Module`` is probed
with a forward hook on ``dict(model.named_modules())[layer]``; that module's output must be
the post-nonlinearity activation (hook the ReLU, not the conv). The hook stops the forward
pass once the layer has been computed. While probing, the model is in eval mode, its
parameters take no gradients, and feedback layers (RAF, dRAF) backpropagate the exact
gradient (:func:`retina_raf.feedback.exact_gradients`): an RF belongs to the function, not to
the learning rule.

A run folder (``retina_raf.train``) may be passed instead of a model; its identity (preset,
rank, n_bn, seed, rule) becomes scalar coordinates.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import nn
from tqdm.auto import tqdm

from retina_raf.errors import ConfigError, RunError
from retina_raf.feedback import exact_gradients

METHODS = ("gradient", "actmax", "sta")

# Every option of every method with its default. ``batch_size`` is the number of images per
# forward pass: for ``gradient``/``actmax`` None means all channels (times starts) at once.
METHOD_OPTIONS: dict[str, dict] = {
    "gradient": {"base": "zeros", "gray_level": 0.5, "batch_size": None},
    "actmax": {
        "base": "zeros",
        "gray_level": 0.5,
        "n_starts": 8,
        "start": "noise",
        "combine": "best",
        "n_steps": 100,
        "step_size": 0.1,
        "norm": None,
        "batch_size": None,
    },
    "sta": {
        "base": "zeros",
        "gray_level": 0.5,
        "n_samples": 16384,
        "noise_std": 1.0,
        "batch_size": 1024,
    },
}

# actmax: default norm = this RMS pixel contrast times sqrt(number of input pixels).
DEFAULT_RMS_CONTRAST = 0.1
# actmax "zeros" start: size of the probe around the base, relative to the norm.
ZERO_START_EPSILON = 1e-3
# tqdm only appears when an extraction runs longer than this (seconds).
PROGRESS_DELAY_S = 1.0


# ----------------------------------------------------------------------------- objective
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

    def _select(self, out: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        batch = torch.arange(len(rows), device=out.device)
        if self.center is None:
            return out[batch, rows]
        return out[batch, rows, self.center[0], self.center[1]]

    def response(self, images: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """(B,) center-unit responses, element i driving channel rows[i]."""
        return self._select(self.activation(images), rows)

    def responses_all(self, images: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
        """(B, len(channels)) center-unit responses of every listed channel to every image."""
        out = self.activation(images)
        if self.center is None:
            return out[:, channels]
        return out[:, channels, self.center[0], self.center[1]]

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


# ----------------------------------------------------------------------------- parameterization
def base_image(options: dict, input_shape: tuple, device, dtype) -> torch.Tensor:
    """(1, *input_shape) base image: zeros or a uniform gray at ``gray_level``."""
    fill = 0.0 if options["base"] == "zeros" else float(options["gray_level"])
    return torch.full((1, *input_shape), fill, device=device, dtype=dtype)


def _generator(seed: int, *stream: int) -> torch.Generator:
    """A CPU generator for (seed, stream): each channel draws from its own stream, so a channel's
    noise does not depend on which other channels share its batch (or on the device)."""
    state = np.random.SeedSequence(seed, spawn_key=stream).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _sphere(vectors: torch.Tensor, radius: float) -> torch.Tensor:
    """Rescale each (B, ...) element to L2 norm ``radius`` (zero elements stay zero)."""
    norms = vectors.flatten(1).norm(dim=1).clamp_min(torch.finfo(vectors.dtype).tiny)
    return vectors * (radius / norms).view(-1, *[1] * (vectors.dim() - 1))


def _chunks(items: list[int], size: int | None) -> list[list[int]]:
    size = len(items) if size is None else max(1, size)
    return [items[i : i + size] for i in range(0, len(items), size)]


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.flatten(1) * b.flatten(1)).sum(dim=1)


# ----------------------------------------------------------------------------- methods
def _gradient(units: CenterUnits, channels: list[int], base: torch.Tensor, options, progress):
    responses, gradients = [], []
    for chunk in _chunks(channels, options["batch_size"]):
        rows = torch.tensor(chunk, device=base.device)
        response, gradient = units.response_and_gradient(base.expand(len(chunk), -1, -1, -1), rows)
        responses.append(response)
        gradients.append(gradient)
    response, gradient = torch.cat(responses), torch.cat(gradients)
    responsive = gradient.flatten(1).abs().amax(dim=1) > 0
    rms = gradient.flatten(1).pow(2).mean(dim=1).sqrt()
    scale = torch.where(responsive, 1.0 / rms.clamp_min(torch.finfo(rms.dtype).tiny), 0.0)
    rf = gradient * scale.view(-1, 1, 1, 1)
    return {
        "rf": rf,
        "spread": torch.zeros_like(rf),  # exact, nothing sampled
        "activation": response,
        "responsive": responsive,
    }


def _actmax_starts(units, channels, base, options, seed, progress):
    """Projected gradient ascent of ``delta`` on ``||delta|| = norm`` from ``n_starts`` seeds.

    Each element takes a step of ``step_size * norm`` along the normalized tangent gradient,
    retracts to the sphere, and keeps the step only if the response did not fall; otherwise
    it halves its own step size. The iterate is therefore always the best point found so far,
    and more steps never lower the activation reached.

    Returns images (C, S, *input_shape), activation (C, S), responded (C, S).
    """
    n_starts, norm = options["n_starts"], options["norm"]
    chunk_size = None if options["batch_size"] is None else options["batch_size"] // n_starts
    chunks = _chunks(channels, chunk_size)
    bar = tqdm(
        total=len(chunks) * options["n_steps"],
        desc="actmax",
        unit="step",
        disable=None if progress else True,  # None: no bar when stderr is not a terminal
        delay=PROGRESS_DELAY_S,
    )
    images, activations, responded = [], [], []
    for chunk in chunks:
        rows = torch.tensor(chunk, device=base.device).repeat_interleave(n_starts)
        noise = torch.cat(
            [
                torch.randn(n_starts, *units.input_shape, generator=_generator(seed, c))
                for c in chunk
            ]
        ).to(device=base.device, dtype=base.dtype)
        if options["start"] == "noise":
            delta = _sphere(noise, norm)
        else:
            # A ReLU unit at an all-zero input may be exactly at its kink (zero gradient), so a
            # "zeros" start probes a tiny random neighbourhood of the base image and steps to
            # the sphere along the gradient found there (along the probe if that is zero too).
            probe = _sphere(noise, ZERO_START_EPSILON * norm)
            _, gradient = units.response_and_gradient(base + probe, rows)
            flat = gradient.flatten(1).abs().amax(dim=1) == 0
            delta = _sphere(torch.where(flat.view(-1, 1, 1, 1), probe, gradient), norm)
        response, gradient = units.response_and_gradient(base + delta, rows)
        moved = gradient.flatten(1).abs().amax(dim=1) > 0
        step = torch.full_like(response, options["step_size"] * norm)
        for _ in range(options["n_steps"]):
            radial = _dot(gradient, delta) / norm**2
            tangent = gradient - radial.view(-1, 1, 1, 1) * delta
            candidate = _sphere(delta + _sphere(tangent, 1.0) * step.view(-1, 1, 1, 1), norm)
            new_response, new_gradient = units.response_and_gradient(base + candidate, rows)
            accept = new_response >= response
            keep = accept.view(-1, 1, 1, 1)
            delta = torch.where(keep, candidate, delta)
            gradient = torch.where(keep, new_gradient, gradient)
            response = torch.where(accept, new_response, response)
            step = torch.where(accept, step, step / 2)
            moved |= new_gradient.flatten(1).abs().amax(dim=1) > 0
            bar.update()
        shape = (len(chunk), n_starts)
        images.append(delta.reshape(*shape, *units.input_shape))
        activations.append(response.reshape(shape))
        responded.append(moved.reshape(shape))
    bar.close()
    return torch.cat(images), torch.cat(activations), torch.cat(responded)


def _actmax(units, channels, base, options, seed, progress):
    images, activation, responded = _actmax_starts(units, channels, base, options, seed, progress)
    weight = responded.to(images.dtype)
    n_active = weight.sum(dim=1)
    denominator = n_active.clamp_min(1).view(-1, 1, 1, 1, 1)
    w = weight.view(*weight.shape, 1, 1, 1)
    mean = (w * images).sum(dim=1, keepdim=True) / denominator
    spread = ((w * (images - mean) ** 2).sum(dim=1, keepdim=True) / denominator).sqrt()
    responsive = n_active > 0
    if options["combine"] == "best":
        # Starts can climb to different maxima (e.g. a grating at two phases): their mean
        # would blur them together, so the RF is the image of the highest response reached.
        score = torch.where(responded, activation, torch.full_like(activation, -torch.inf))
        best = score.argmax(dim=1)
        rf = images[torch.arange(len(best), device=best.device), best]
        rf = torch.where(responsive.view(-1, *[1] * (rf.dim() - 1)), rf, 0.0)  # silent: zeros
        return {
            "rf": rf,
            "spread": spread.squeeze(1),
            "activation": torch.where(responsive, activation.amax(dim=1), activation.mean(1)),
            "responsive": responsive,
            "n_active_starts": n_active.to(torch.int64),
        }
    mean_activation = torch.where(
        responsive, (weight * activation).sum(dim=1) / n_active.clamp_min(1), activation.mean(1)
    )
    return {
        "rf": mean.squeeze(1),
        "spread": spread.squeeze(1),
        "activation": mean_activation,
        "responsive": responsive,
        "n_active_starts": n_active.to(torch.int64),
    }


def _sta(units, channels, base, options, seed, progress):
    """Every channel's center unit sees the same noise images, so one pass serves them all."""
    n_samples, noise_std = options["n_samples"], options["noise_std"]
    rows = torch.tensor(channels, device=base.device)
    n_pixels = math.prod(units.input_shape)
    generator = _generator(seed)
    acc = torch.float64
    sum_r = torch.zeros(len(channels), dtype=acc, device=base.device)
    sum_z = torch.zeros(n_pixels, dtype=acc, device=base.device)
    sum_rz = torch.zeros(len(channels), n_pixels, dtype=acc, device=base.device)
    sum_rz2 = torch.zeros_like(sum_rz)
    r_min = torch.full_like(sum_r, math.inf)
    r_max = torch.full_like(sum_r, -math.inf)
    batch_size = options["batch_size"] or n_samples  # None: every sample in one pass
    batch_sizes = [min(batch_size, n_samples - i) for i in range(0, n_samples, batch_size)]
    for size in tqdm(
        batch_sizes,
        desc="sta",
        unit="batch",
        disable=None if progress else True,
        delay=PROGRESS_DELAY_S,
    ):
        z = torch.randn(size, *units.input_shape, generator=generator)
        z = z.to(device=base.device, dtype=base.dtype)
        with torch.no_grad():
            r = units.responses_all(base + noise_std * z, rows).to(acc)
        z = z.flatten(1).to(acc)
        sum_r += r.sum(dim=0)
        sum_z += z.sum(dim=0)
        sum_rz += r.T @ z
        sum_rz2 += (r**2).T @ (z**2)
        r_min = torch.minimum(r_min, r.amin(dim=0))
        r_max = torch.maximum(r_max, r.amax(dim=0))
    mean_r, mean_z, mean_rz = sum_r / n_samples, sum_z / n_samples, sum_rz / n_samples
    covariance = mean_rz - mean_r[:, None] * mean_z[None, :]
    standard_error = ((sum_rz2 / n_samples - mean_rz**2).clamp_min(0) / n_samples).sqrt()
    responsive = r_max > r_min
    rf = torch.where(responsive[:, None], covariance / noise_std, 0.0)
    shape = (len(channels), *units.input_shape)
    return {
        "rf": rf.reshape(shape).to(base.dtype),
        "spread": (standard_error / noise_std).reshape(shape).to(base.dtype),
        "activation": mean_r.to(base.dtype),
        "responsive": responsive,
    }


# ----------------------------------------------------------------------------- entry points
def resolve_options(method: str, options: dict, input_shape: tuple | None = None) -> dict:
    """Fill defaults, check names and values; returns every option of ``method``.

    The actmax ``norm`` default depends on the input size; it is resolved when
    ``input_shape`` is given.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown RF method {method!r}; valid methods: {', '.join(METHODS)}")
    defaults = METHOD_OPTIONS[method]
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ConfigError(
            f"option(s) {', '.join(unknown)} do not apply to method {method!r} "
            f"(its options: {', '.join(defaults)})"
        )
    resolved = {**defaults, **options}

    def check(name, ok, allowed):
        if name in resolved and not ok(resolved[name]):
            raise ConfigError(f"{method} option {name}={resolved[name]!r}: must be {allowed}")

    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    def is_real(v):
        return isinstance(v, (int, float, np.number)) and not isinstance(v, bool)

    check("base", lambda v: v in ("zeros", "gray"), "'zeros' or 'gray'")
    check("gray_level", lambda v: is_real(v) and math.isfinite(v), "a finite number")
    check("start", lambda v: v in ("noise", "zeros"), "'noise' or 'zeros'")
    check("combine", lambda v: v in ("best", "mean"), "'best' or 'mean'")
    check("n_starts", lambda v: is_int(v) and v >= 1, "an integer >= 1")
    check("n_steps", lambda v: is_int(v) and v >= 0, "an integer >= 0")
    check("step_size", lambda v: is_real(v) and 0 < v < math.inf, "a positive number")
    check("norm", lambda v: v is None or (is_real(v) and 0 < v < math.inf), "a positive number")
    check("n_samples", lambda v: is_int(v) and v >= 2, "an integer >= 2")
    check("noise_std", lambda v: is_real(v) and 0 < v < math.inf, "a positive number")
    check("batch_size", lambda v: v is None or (is_int(v) and v >= 1), "an integer >= 1")
    if method == "actmax" and resolved["norm"] is None and input_shape is not None:
        resolved["norm"] = DEFAULT_RMS_CONTRAST * math.sqrt(math.prod(input_shape))
    return resolved


def _load(model, device):
    """A model, or a run folder -> (model, run config dict or None, run_dir or None)."""
    if isinstance(model, nn.Module):
        if device is not None:
            model.to(device)
        return model, None, None
    if not isinstance(model, (str, Path)):
        raise ConfigError(f"expected an nn.Module or a run folder, got {type(model).__name__}")
    run_dir = Path(model)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir} is not a run folder (no such directory)")
    from retina_raf.runs import load_model

    loaded, config = load_model(run_dir, device=device or "cpu")
    return loaded, config, run_dir


def _device_of(model: nn.Module | None, device):
    """The requested device (checked), else the model's."""
    if device is not None:
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device 'cuda' requested but CUDA is not available")
        return device
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _prepare(model, layer, method, channels, input_shape, device, options):
    """Check the method and options, load the model; resolve device, dtype and input shape."""
    resolve_options(method, options)  # fail before loading anything
    if device is not None:
        device = _device_of(None, device)
    model, config, run_dir = _load(model, device)
    if input_shape is None:
        # a run folder knows its image size; a bare model gets the paper's 1 x 32 x 32
        model_config = (config or {}).get("model", {})
        size = model_config.get("image_size", 32)
        input_shape = (model_config.get("in_channels", 1), size, size)
    input_shape = tuple(int(n) for n in input_shape)
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise ConfigError(f"input_shape must be (channels, height, width), got {input_shape}")
    resolved = resolve_options(method, options, input_shape)
    device = _device_of(model, device)
    parameter = next(model.parameters(), None)
    dtype = parameter.dtype if parameter is not None else torch.float32
    return model, config, run_dir, resolved, input_shape, device, dtype


def _channel_list(units: CenterUnits, channels: Sequence[int] | None) -> list[int]:
    if channels is None:
        return list(range(units.n_channels))
    channels = [int(c) for c in channels]
    bad = [c for c in channels if not 0 <= c < units.n_channels]
    if bad or not channels:
        raise ConfigError(
            f"channels {bad or channels} out of range: the layer has {units.n_channels} channels"
        )
    return channels


def _netcdf_attr(value):
    """Attributes must survive a NetCDF round trip: no None, no bools, no nested containers."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (tuple, list)):
        return [int(v) for v in value]
    return value


def extract_rfs(
    model: nn.Module | str | Path,
    layer: str,
    method: str = "actmax",
    *,
    channels: Sequence[int] | None = None,
    input_shape: tuple[int, int, int] | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    **options,
) -> xr.DataArray:
    """RFs of the center unit of every channel of ``layer``, all channels in one batched pass.

    Args:
        model: an ``nn.Module`` or a finished training run folder (loaded with
            ``retina_raf.runs.load_model``; its identity becomes scalar coordinates).
        layer: a name in ``model.layer_names``, or of a submodule whose output is the
            post-nonlinearity activation.
        method: ``"gradient"``, ``"actmax"`` or ``"sta"`` (see the module docstring).
        channels: channel indices to extract (default: all).
        input_shape: (input channels, height, width) of one input image; default: the run's
            ``model.in_channels`` and ``model.image_size`` for a run folder, else (1, 32, 32).
        seed: seed of every random draw (actmax starts, sta noise); results are deterministic
            for a given seed and independent of how channels are batched.
        device: where to run (default: the model's device); a module is moved there.
        progress: show a tqdm bar when the extraction takes longer than a second.
        **options: method options, defaults in ``METHOD_OPTIONS``:
            gradient: base="zeros" | "gray", gray_level=0.5, batch_size=None;
            actmax: base, gray_level, n_starts=8, start="noise" | "zeros" ("zeros" starts
                along the gradient at a tiny random probe of the base: a ReLU unit exactly at
                its kink has no gradient at the base itself), n_steps=100, step_size=0.1
                (fraction of the norm per step, halved per start whenever a step would lower
                the response), norm=None (= 0.1 * sqrt(input pixels): RMS contrast 0.1),
                combine="best" (the start that reached the highest response) | "mean" (the
                mean over the starts that responded), batch_size=None;
            sta: base, gray_level, n_samples=16384, noise_std=1.0, batch_size=1024.

    Returns:
        DataArray ``"rf"`` with dims (channel, y, x) (plus ``input_channel`` after ``channel``
        when the input has several channels); y, x are input pixel indices. Coordinates:
        ``responsive`` (channel, bool), ``activation`` (channel: response at the base image /
        mean best response of the responding starts / mean response to the noise),
        ``spread`` (same dims as the RF: 0 for gradient, std across starts for actmax,
        standard error for sta), and for actmax ``n_active_starts`` (channel). Units: gradient
        RFs are RMS-normalized (dimensionless); actmax RFs are input perturbations (input
        units, each start of L2 norm ``norm``); sta RFs are response per input unit.
        Attributes record the layer, method, every resolved option, the seed, the unit.
    """
    model, config, run_dir, resolved, input_shape, device, dtype = _prepare(
        model, layer, method, channels, input_shape, device, options
    )
    with probing(model):
        units = CenterUnits(model, layer, input_shape, device, dtype)
        channel_list = _channel_list(units, channels)
        base = base_image(resolved, input_shape, device, dtype)
        run_method = {"gradient": _gradient, "actmax": _actmax, "sta": _sta}[method]
        if method == "gradient":
            result = run_method(units, channel_list, base, resolved, progress)
        else:
            result = run_method(units, channel_list, base, resolved, seed, progress)
    support = center_unit_support(model, layer, units)
    return _to_dataarray(
        result, units, channel_list, layer, method, resolved, seed, config, run_dir, support
    )


def center_unit_support(model: nn.Module, layer: str, units: CenterUnits) -> list[int] | None:
    """The input pixels the center unit of ``layer`` can see, as ``[y0, y1, x0, x1]``
    (half-open rows y0..y1-1, columns x0..x1-1), or None when unknown.

    Known for the project's :class:`~retina_raf.models.RetinaNet`, whose convolutions all
    have the same odd kernel k, stride 1 and same padding: the d-th convolution sees a
    square of d (k - 1) + 1 pixels (17 x 17 for ``retina_2`` with 9 x 9 kernels). Dense
    layers see the whole image (None). Montages crop the RFs to this box.
    """
    cfg = getattr(model, "cfg", None)
    names = list(getattr(model, "layer_names", []))
    kernel = getattr(cfg, "kernel_size", None)
    if units.center is None or kernel is None or layer not in names or layer.startswith("fc"):
        return None
    half = (names.index(layer) + 1) * (int(kernel) // 2)
    (cy, cx), (height, width) = units.center, units.input_shape[1:]
    return [max(cy - half, 0), min(cy + half + 1, height), max(cx - half, 0),
            min(cx + half + 1, width)]  # fmt: skip


def rf_correlation(first: xr.DataArray, second: xr.DataArray) -> xr.DataArray:
    """Pearson correlation over pixels (``y``, ``x``) of two RF maps of the same units, e.g.
    (channel, y, x) -> (channel); NaN where either is flat (an unresponsive unit)."""
    x, y = (rf.reset_coords(drop=True) for rf in (first, second))
    x, y = x - x.mean(("y", "x")), y - y.mean(("y", "x"))
    norm = np.sqrt((x**2).sum(("y", "x")) * (y**2).sum(("y", "x")))
    return (x * y).sum(("y", "x")) / norm.where(norm > 0)


def method_agreement(
    model: nn.Module,
    layer: str,
    methods: Sequence[str] = ("gradient", "actmax", "sta"),
    options: dict[str, dict] | None = None,
    **common,
) -> xr.Dataset:
    """How well the RF methods agree, unit by unit: Pearson correlations between their RFs.

    Args:
        model, layer: as :func:`extract_rfs`.
        methods: at least two methods.
        options: per-method options, e.g. ``{"actmax": {"n_starts": 4}}``.
        **common: options of every method (``base``, ``gray_level``, ``seed``, ...).

    Returns:
        Dataset with, per pair ``a_vs_b``, the correlation (channel) of the two RFs over
        pixels (NaN where either is flat), and ``responsive_<method>`` flags. The sign of a
        correlation matters: actmax and the gradient should agree in polarity.
    """
    if len(methods) < 2:
        raise ConfigError("method_agreement needs at least two methods")
    options = options or {}
    rfs = {m: extract_rfs(model, layer, m, progress=False, **common, **options.get(m, {}))
           for m in methods}  # fmt: skip
    out = xr.Dataset()
    for i, a in enumerate(methods):
        out[f"responsive_{a}"] = rfs[a]["responsive"].reset_coords(drop=True)
        for b in methods[i + 1 :]:
            out[f"{a}_vs_{b}"] = rf_correlation(*(rfs[m] for m in (a, b))).assign_attrs(
                long_name=f"Pearson correlation of the {a} and {b} RFs", units="1"
            )
    out.attrs.update({"layer": layer, "methods": list(methods)})
    return out


def responsive_by_budget(
    model: nn.Module | str | Path,
    layer: str,
    budgets: Sequence[tuple[int, int]] = ((8, 100), (32, 400)),
    sta_options: dict | None = None,
    **common,
) -> xr.Dataset:
    """Whether actmax's "unresponsive" units are silent or only not found: the responsive
    flags of :func:`extract_rfs` (actmax) at several optimisation budgets, and of STA.

    Args:
        model, layer: as :func:`extract_rfs`.
        budgets: (n_starts, n_steps) pairs, e.g. the default and 4x more starts and steps.
        sta_options: STA's own options (``n_samples``, ``noise_std``, ``batch_size``).
        **common: options of both methods (``base``, ``gray_level``, ``seed``, ...).

    Returns:
        Dataset with ``responsive`` and ``activation`` over (budget, channel), budget labelled
        ``"<starts>x<steps>"``, and ``responsive_sta`` (channel). A unit that only a larger
        budget finds was an artifact of the budget; one that only STA finds responds to strong
        white noise but not near the base image.
    """
    runs = [extract_rfs(model, layer, "actmax", progress=False, n_starts=starts, n_steps=steps,
                        **common) for starts, steps in budgets]  # fmt: skip
    labels = [f"{starts}x{steps}" for starts, steps in budgets]
    out = xr.Dataset(
        {
            "responsive": xr.concat(
                [r["responsive"].reset_coords(drop=True) for r in runs],
                dim=xr.DataArray(labels, dims="budget"),
            ),  # fmt: skip
            "activation": xr.concat(
                [r["activation"].reset_coords(drop=True) for r in runs],
                dim=xr.DataArray(labels, dims="budget"),
            ),  # fmt: skip
        }
    )
    sta = extract_rfs(model, layer, "sta", progress=False, **common, **(sta_options or {}))
    out["responsive_sta"] = sta["responsive"].reset_coords(drop=True)
    out.attrs.update({"layer": layer, "method": "actmax"})
    return out


def actmax_starts(
    model: nn.Module | str | Path,
    layer: str,
    *,
    channels: Sequence[int] | None = None,
    input_shape: tuple[int, int, int] | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    **options,
) -> xr.Dataset:
    """Every start of ``actmax`` before averaging (same arguments and options as extract_rfs).

    Returns a Dataset with ``image`` (channel, start, y, x): the maximizing perturbation of each
    start (L2 norm ``norm``), ``activation`` (channel, start): the response reached, and
    ``responded`` (channel, start): whether the unit's gradient was ever nonzero on that start.
    """
    model, _, _, resolved, input_shape, device, dtype = _prepare(
        model, layer, "actmax", channels, input_shape, device, options
    )
    with probing(model):
        units = CenterUnits(model, layer, input_shape, device, dtype)
        channel_list = _channel_list(units, channels)
        base = base_image(resolved, input_shape, device, dtype)
        images, activation, responded = _actmax_starts(
            units, channel_list, base, resolved, seed, progress
        )
    dims = ("channel", "start", "input_channel", "y", "x")
    dataset = xr.Dataset(
        {
            "image": (dims, images.cpu().numpy()),
            "activation": (("channel", "start"), activation.cpu().numpy()),
            "responded": (("channel", "start"), responded.cpu().numpy()),
        },
        coords={
            "channel": channel_list,
            "y": np.arange(input_shape[1]),
            "x": np.arange(input_shape[2]),
        },
        attrs={
            "layer": layer,
            "rf_seed": seed,
            **{k: _netcdf_attr(v) for k, v in resolved.items()},
        },
    )
    return dataset.squeeze("input_channel", drop=True) if input_shape[0] == 1 else dataset


def _to_dataarray(
    result, units, channels, layer, method, options, seed, config, run_dir, support=None
):
    import retina_raf

    dims = ("channel", "input_channel", "y", "x")
    rf = result["rf"].detach().cpu().numpy()
    coords = {
        "channel": np.asarray(channels),
        "y": np.arange(rf.shape[2]),
        "x": np.arange(rf.shape[3]),
        "responsive": ("channel", result["responsive"].cpu().numpy()),
        "activation": ("channel", result["activation"].detach().cpu().numpy()),
        "spread": (dims, result["spread"].detach().cpu().numpy()),
    }
    if "n_active_starts" in result:
        coords["n_active_starts"] = ("channel", result["n_active_starts"].cpu().numpy())
    if config is not None:
        from retina_raf.runs import run_identity

        coords.update(run_identity(config))  # scalar coords preset, rank, n_bn, seed, rule
    attrs = {
        "long_name": f"receptive field ({method})",
        "layer": layer,
        "method": method,
        "rf_seed": seed,
        "input_shape": list(units.input_shape),
        "layer_shape": list(units.layer_shape),
        "unit": "channel index (flat layer)"
        if units.center is None
        else f"center unit y={units.center[0]} x={units.center[1]} of the layer's map",
        "units": "1",  # UDUNITS: pixel intensities and their gradients are dimensionless
        "comment": {
            "gradient": "input gradient divided by its RMS",
            "actmax": "input perturbation, in the units of the input pixels",
            "sta": "response per input unit (noise-averaged gradient)",
        }[method],
        "package_version": retina_raf.__version__,
        "torch_version": str(torch.__version__),
    }
    attrs.update({key: _netcdf_attr(value) for key, value in options.items()})
    if support is not None:
        attrs["support"] = [int(v) for v in support]
    if run_dir is not None:
        attrs["run_dir"] = str(run_dir.resolve())
        # with standardized inputs the "zeros" base is the training mean gray
        attrs["input_standardized"] = int(bool(config.get("data", {}).get("standardize", False)))
    da = xr.DataArray(rf, dims=dims, coords=coords, name="rf", attrs=attrs)
    return da.squeeze("input_channel", drop=True) if rf.shape[1] == 1 else da
