"""How far the RF methods can be trusted: their agreement unit by unit
(:func:`method_agreement`, :func:`rf_correlation`) and whether actmax's unresponsive units
are silent or only not found within its budget (:func:`responsive_by_budget`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr
from torch import nn

from analysis.rf.extract import extract_rfs
from retina_raf.errors import ConfigError


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
