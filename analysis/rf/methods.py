"""The RF methods, i.e. the render loops, and their options.

``gradient``  Lindsey et al.'s RF: the input gradient at the base image, divided by its RMS.
``actmax``    activation maximization (Erhan et al. 2009): projected gradient ascent of the
              perturbation on the sphere ``||delta||_2 = norm`` from ``n_starts`` seeds
              (:func:`actmax_ascent`); the RF is the perturbation of the start that reached
              the highest response (``combine="best"``) or the mean over the starts that
              responded (``"mean"``).
``sta``       white-noise spike-triggered average over ``n_samples`` Gaussian images.

Each method takes the objective (:class:`~analysis.rf.objectives.CenterUnits`), the channels,
the base image and its resolved options (:func:`resolve_options`), and returns torch tensors
``rf``, ``spread``, ``activation`` and ``responsive`` (and for actmax ``n_active_starts``),
which :func:`analysis.rf.extract.extract_rfs` turns into a DataArray.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from tqdm.auto import tqdm

from analysis.rf.objectives import CenterUnits
from analysis.rf.parameterizations import contrast_norm, noise_generator, to_sphere
from retina_raf.errors import ConfigError

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

# actmax "zeros" start: size of the probe around the base, relative to the norm.
ZERO_START_EPSILON = 1e-3
# tqdm only appears when an extraction runs longer than this (seconds).
PROGRESS_DELAY_S = 1.0


def _chunks(items: list[int], size: int | None) -> list[list[int]]:
    size = len(items) if size is None else max(1, size)
    return [items[i : i + size] for i in range(0, len(items), size)]


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.flatten(1) * b.flatten(1)).sum(dim=1)


# ----------------------------------------------------------------------------- methods
def gradient_method(units: CenterUnits, channels: list[int], base: torch.Tensor, options, progress):
    """The input gradient of each center unit at the base image, divided by its RMS."""
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


def actmax_ascent(units, channels, base, options, seed, progress):
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
                torch.randn(n_starts, *units.input_shape, generator=noise_generator(seed, c))
                for c in chunk
            ]
        ).to(device=base.device, dtype=base.dtype)
        if options["start"] == "noise":
            delta = to_sphere(noise, norm)
        else:
            # A ReLU unit at an all-zero input may be exactly at its kink (zero gradient), so a
            # "zeros" start probes a tiny random neighbourhood of the base image and steps to
            # the sphere along the gradient found there (along the probe if that is zero too).
            probe = to_sphere(noise, ZERO_START_EPSILON * norm)
            _, gradient = units.response_and_gradient(base + probe, rows)
            flat = gradient.flatten(1).abs().amax(dim=1) == 0
            delta = to_sphere(torch.where(flat.view(-1, 1, 1, 1), probe, gradient), norm)
        response, gradient = units.response_and_gradient(base + delta, rows)
        moved = gradient.flatten(1).abs().amax(dim=1) > 0
        step = torch.full_like(response, options["step_size"] * norm)
        for _ in range(options["n_steps"]):
            radial = _dot(gradient, delta) / norm**2
            tangent = gradient - radial.view(-1, 1, 1, 1) * delta
            candidate = to_sphere(delta + to_sphere(tangent, 1.0) * step.view(-1, 1, 1, 1), norm)
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


def actmax_method(units, channels, base, options, seed, progress):
    """The RF of each channel from its actmax starts: the best start's image or their mean."""
    images, activation, responded = actmax_ascent(units, channels, base, options, seed, progress)
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


def sta_method(units, channels, base, options, seed, progress):
    """Every channel's center unit sees the same noise images, so one pass serves them all."""
    n_samples, noise_std = options["n_samples"], options["noise_std"]
    rows = torch.tensor(channels, device=base.device)
    n_pixels = math.prod(units.input_shape)
    generator = noise_generator(seed)
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


# ----------------------------------------------------------------------------- options
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
        resolved["norm"] = contrast_norm(input_shape)
    return resolved
