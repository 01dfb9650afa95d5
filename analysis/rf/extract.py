"""The entry points of RF extraction: :func:`extract_rfs` (one RF per channel of a layer, as
a DataArray) and :func:`actmax_starts` (every start of actmax), from a model or a run folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import nn

from analysis.rf.methods import (
    actmax_ascent,
    actmax_method,
    gradient_method,
    resolve_options,
    sta_method,
)
from analysis.rf.objectives import CenterUnits, center_unit_support, probing
from analysis.rf.parameterizations import base_image
from retina_raf.errors import ConfigError, RunError


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
        units.restrict_to(center_unit_support(model, layer, units))
        channel_list = _channel_list(units, channels)
        base = base_image(resolved, input_shape, device, dtype)
        if method == "gradient":
            result = gradient_method(units, channel_list, base, resolved, progress)
        else:
            run_method = {"actmax": actmax_method, "sta": sta_method}[method]
            result = run_method(units, channel_list, base, resolved, seed, progress)
    support = center_unit_support(model, layer, units)
    return _to_dataarray(
        result, units, channel_list, layer, method, resolved, seed, config, run_dir, support
    )


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
        units.restrict_to(center_unit_support(model, layer, units))
        channel_list = _channel_list(units, channels)
        base = base_image(resolved, input_shape, device, dtype)
        images, activation, responded = actmax_ascent(
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
