"""RF shape metrics and the center-surround / oriented classification (docs/design.md#rf-metrics).

The package has three parts: :mod:`~analysis.metrics.closed_form` (centers, OSI,
orientedness, symmetry), :mod:`~analysis.metrics.fits` (DoG and Gabor fits) and
:mod:`~analysis.metrics.classification` (``rf_class``). This module is the entry point.

``rf_metrics(rfs)`` takes RFs with dims (..., channel, y, x) and returns an
``xarray.Dataset`` with one value per RF (the leading dims and ``channel``) of the variables
below. It goes through ``xr.apply_ufunc``: RFs backed by dask (``open_mfdataset``) give lazy
metrics, computed chunk by chunk when asked for. Units are UDUNITS strings (pixel
quantities are dimensionless counts of input pixels, "1").

closed form (``closed_form_metrics``; :mod:`analysis.metrics.closed_form`)
    ``center_y``, ``center_x``  RF center: centroid of the smoothed RF's energy, refined
                                with a Gaussian window (pixels, row/column);
    ``osi``                     spectral orientation selectivity
                                ``|sum_k I(k) exp(2i phi_k)| / sum_k I(k)``, I the power
                                spectrum of the mean-removed RF (tapered by a radial cosine
                                window about the RF center, zero-padded to 64 x 64, DC and
                                |k| > 0.5 cycles/px excluded); 0 isotropic, ~1 a grating;
    ``orientation``             preferred orientation from that spectrum (degrees);
    ``spectral_frequency``      power-weighted mean spatial frequency (cycles/px);
    ``orientedness``            Lindsey et al.'s bar-bank measure: covariance of the RF with
                                bars of 16 orientations, widths 1-8 px and all positions
                                (phases); ``R(o)`` the best |covariance| at orientation o,
                                ``(R(pref) - R(orth)) / (R(pref) + R(orth))`` in [0, 1];
    ``bar_orientation``         the preferred bar orientation (degrees, 11.25 deg steps);
    ``symmetry``                radial symmetry ``1 - ||RF - radial(RF)||^2 / ||RF - mean||^2``
                                about the RF center, ``radial(RF)`` the least-squares radial
                                profile (piecewise linear in r, 1 px knots), in [0, 1];
fits (:mod:`analysis.metrics.fits`; bounded least squares, several starts per RF)
    ``dog_r2``, ``dog_bic``     difference of Gaussians
                                ``a (exp(-r^2/2 sc^2) - w exp(-r^2/2 ss^2)) + b``, 7 params,
                                ``ss >= 1.1 sc``, ``0 <= w <= 1``; ``dog_*`` its parameters;
    ``gabor_r2``, ``gabor_bic`` Gabor ``a exp(-u^2/2 s_u^2 - v^2/2 s_v^2) cos(2 pi f u + p) + b``
                                (u across, v along the bars), 9 params; ``gabor_*`` its params;
                                BIC = n ln(RSS / n) + k ln(n), n = pixels, on the RF scaled
                                to unit variance (only differences of BIC matter);
derived
    ``polarity``                +1 ON center, -1 OFF center (sign of the DoG center), 0 if
                                unresponsive;
    ``surround_strength``       surround / center volume of the DoG fit ``w ss^2 / sc^2``
                                (0: no surround, 1: balanced);
    ``rf_size``                 pixels: the DoG center sigma if the DoG has the lower BIC,
                                else the Gabor envelope's geometric-mean sigma;
    ``rf_class``                see below.

Conventions: pixel (y, x) is row y (downwards), column x; orientations are those of the
RF's bars/edges in degrees in [0, 180), counter-clockwise from the horizontal as the RF is
shown by ``imshow`` (row 0 on top): 0 = horizontal bars, 90 = vertical bars, 45 = bars
from lower left to upper right. Every metric is invariant to the RF's amplitude (each RF is
scaled to zero mean and unit variance first); flipping the sign of an RF flips only
``polarity`` (and the signs of the fitted amplitudes/offsets, the Gabor phase by pi).

Classification rule (``classify``; :mod:`analysis.metrics.classification`), evaluated
in this order:

1. ``unresponsive``: flagged ``responsive=False`` on input, or the RF is constant (zero
   included) or contains a non-finite value (its metrics are NaN);
2. ``center-surround``: ``dog_r2 >= fit_r2_min`` and ``symmetry >= symmetry_min`` and
   ``osi <= osi_max``;
3. ``oriented``: ``gabor_r2 >= fit_r2_min`` and ``orientedness >= orientedness_min`` and
   ``gabor_bic < dog_bic``;
4. ``unclassified``: everything else (noise, or structure neither model captures).

Thresholds (``DEFAULT_THRESHOLDS``): fit_r2_min = 0.4, symmetry_min = 0.35, osi_max = 0.4,
orientedness_min = 0.35, chosen by ``analysis.synthetic.calibrate_thresholds(seed=0)``: an
exhaustive grid search (steps of 0.05) for the best class-balanced accuracy on 320
synthetic RFs (DoGs, Gabors, edges, noise; noise std 0-1 x the signal's std), taking the
middle of the plateau of best combinations (calibration accuracy 100%). The synthetic
classes are far apart (DoGs: osi <= 0.16, symmetry >= 0.5; Gabors and edges: osi >= 0.62;
noise: R^2 <= 0.32), so the plateau is wide and the thresholds sit mid-gap; symmetry_min is
not binding there (0.2-0.5 all score 100%). Held out (seeds 1-3): 100% at noise 0.2-0.6
and at 0-1; at noise 1-1.5 (SNR < 1) RFs increasingly fall below fit_r2_min and become
``unclassified``, but center-surround and oriented are never confused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from analysis.metrics.classification import (
    CLASS_RULE,
    CLASSES,
    DEFAULT_THRESHOLDS,
    classify,
    classify_codes,
    decode_rf_class,
    encode_rf_class,
    summarize,
    threshold_attrs,
)
from analysis.metrics.closed_form import (
    CLOSED_FORM_NAMES,
    bar_orientedness,
    closed_form_arrays,
    radial_symmetry,
    rf_centers,
    spectral_orientation,
    standardize,
)
from analysis.metrics.fits import (
    DERIVED_NAMES,
    DOG_BOUNDS,
    DOG_PARAMS,
    FIT_NAMES,
    GABOR_BOUNDS,
    GABOR_PARAMS,
    derived_metrics,
    dog_model,
    fit_bounds,
    fit_rfs,
    gabor_model,
    levenberg_marquardt,
)
from retina_raf.errors import DataError

__all__ = [
    "CLASSES",
    "CLASS_RULE",
    "DEFAULT_THRESHOLDS",
    "DOG_BOUNDS",
    "DOG_PARAMS",
    "GABOR_BOUNDS",
    "GABOR_PARAMS",
    "METRIC_NAMES",
    "bar_orientedness",
    "classify",
    "classify_codes",
    "closed_form_metrics",
    "decode_rf_class",
    "dog_model",
    "encode_rf_class",
    "fit_bounds",
    "gabor_model",
    "levenberg_marquardt",
    "load_rfs",
    "radial_symmetry",
    "rf_centers",
    "rf_metrics",
    "spectral_orientation",
    "summarize",
]

RF_DIMS = ("channel", "y", "x")
METRIC_NAMES = CLOSED_FORM_NAMES + FIT_NAMES + DERIVED_NAMES
INTEGER_METRICS = {"polarity": np.int8}


def rf_metrics(
    rfs: xr.DataArray, thresholds: dict[str, float] | None = None, progress: bool = False
) -> xr.Dataset:
    """Shape metrics, model fits and ``rf_class`` of every RF in ``rfs``.

    ``rfs``: DataArray with dims (..., channel, y, x), any leading dims (e.g. ``run``) are
    kept; an optional boolean coordinate ``responsive`` marks silent units. Returns a Dataset
    with dims (..., channel) holding the variables listed in the module docstring, the
    input's coordinates (except those on y, x) and attributes, plus attributes documenting
    the classification rule and thresholds. Dask-backed RFs give lazy metrics (``progress``
    is then ignored).
    """
    thresholds = dict(DEFAULT_THRESHOLDS if thresholds is None else thresholds)
    ds = _apply(rfs, METRIC_NAMES, _all_metrics, progress=progress)
    ds["rf_class"] = classify(ds, thresholds)
    unresponsive = ds["rf_class"] == "unresponsive"
    ds["polarity"] = ds["polarity"].where(~unresponsive, 0).astype(np.int8)
    ds["polarity"].attrs = dict(VARIABLE_ATTRS["polarity"])
    ds.attrs.update(threshold_attrs(thresholds))
    return ds


def closed_form_metrics(rfs: xr.DataArray) -> xr.Dataset:
    """Only the closed-form metrics (center, osi, orientation, orientedness, symmetry).

    Same input and output layout as :func:`rf_metrics`, without the fits and ``rf_class``.
    """
    return _apply(rfs, CLOSED_FORM_NAMES, _closed_form_metrics)


def _closed_form_metrics(rf: np.ndarray) -> dict[str, np.ndarray]:
    z, valid, _, _ = standardize(rf)
    return closed_form_arrays(z, valid)


def _all_metrics(rf: np.ndarray, progress: bool = False) -> dict[str, np.ndarray]:
    """Every metric of RFs (n, H, W) as {name: (n,) array} (numpy core of rf_metrics)."""
    z, valid, mean, std = standardize(rf)
    closed = closed_form_arrays(z, valid)
    fitted = fit_rfs(z, valid, closed, progress=progress)
    # Back from the unit-variance RF to the RF's own units.
    for name in ("dog_amplitude", "gabor_amplitude"):
        fitted[name] = fitted[name] * std
    for name in ("dog_offset", "gabor_offset"):
        fitted[name] = fitted[name] * std + mean
    return {**closed, **fitted, **derived_metrics(fitted, valid)}


def _apply(rfs, names, core, **kwargs) -> xr.Dataset:
    """Run ``core`` (RFs (n, H, W) -> {name: (n,)}) over ``rfs`` (..., channel, y, x) through
    ``xr.apply_ufunc``, so that dask-backed RFs stay lazy; one variable per name."""
    rfs = _check_rfs(rfs)
    clashing = [name for name in rfs.coords if name in names]
    # an input coordinate that shares a metric's name is kept as input_<name>
    rfs = rfs.rename({name: f"input_{name}" for name in clashing})
    coords_on_grid = [n for n, c in rfs.coords.items() if {"y", "x"} & set(c.dims)]
    rfs = rfs.drop_vars(coords_on_grid)
    if rfs.chunks is not None:
        rfs = rfs.chunk({"y": -1, "x": -1})  # a chunk must hold whole RFs
        kwargs = {**kwargs, "progress": False} if "progress" in kwargs else kwargs

    def per_block(rf: np.ndarray) -> tuple[np.ndarray, ...]:
        leading, (height, width) = rf.shape[:-2], rf.shape[-2:]
        values = core(rf.reshape(-1, height, width), **kwargs)
        return tuple(np.asarray(values[name], dtype=float).reshape(leading) for name in names)

    # the RFs' own provenance, not what describes the RF values (units, long_name, comment)
    rf_attrs = {k: v for k, v in rfs.attrs.items() if k not in ("units", "long_name", "comment")}
    outputs = xr.apply_ufunc(
        per_block,
        rfs,
        input_core_dims=[["y", "x"]],
        output_core_dims=[[] for _ in names],
        dask="parallelized",
        output_dtypes=[float] * len(names),
        keep_attrs=False,
    )
    ds = xr.Dataset(
        {
            name: out.assign_attrs(VARIABLE_ATTRS.get(name, {}))
            for name, out in zip(names, outputs, strict=True)
        },
        attrs=rf_attrs,
    )
    for name, dtype in INTEGER_METRICS.items():
        if name in ds:
            ds[name] = ds[name].astype(dtype).assign_attrs(VARIABLE_ATTRS.get(name, {}))
    return ds


def load_rfs(path) -> xr.DataArray:
    """The DataArray "rf" of a NetCDF file (loaded into memory), or a one-line DataError.

    An RF holding NaN or inf is refused unless it is flagged ``responsive=False``: in a
    metrics run it would silently count as unresponsive while its flag says otherwise.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(
            f"{path} is a folder, not an RFs NetCDF file (for a run folder: retina-raf rfs {path})"
        )
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with xr.open_dataset(path, engine="h5netcdf") as ds:
            if "rf" not in ds.variables:
                names = [str(name) for name in ds.data_vars]
                found = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "") or "none"
                raise DataError(f'{path} has no variable "rf" (data variables: {found})')
            rf = ds["rf"].load()
            # A results file may hold the responsive flags as a data variable.
            flag = ds.get("responsive")
            if (
                "responsive" not in rf.coords
                and flag is not None
                and set(flag.dims) <= set(rf.dims)
            ):
                rf = rf.assign_coords(responsive=flag.load())
    except DataError:
        raise
    except Exception as exc:  # h5py/h5netcdf raise many types for a file that is not NetCDF
        raise DataError(f"{path} is not a readable NetCDF file ({type(exc).__name__})") from exc
    _check_finite_where_responsive(rf, path)
    return rf


def _check_finite_where_responsive(rf: xr.DataArray, path) -> None:
    pixels = [d for d in RF_DIMS[1:] if d in rf.dims]
    if not pixels or not np.issubdtype(rf.dtype, np.number):
        return  # the metrics' own input checks say what is wrong
    bad = ~np.isfinite(rf).all(pixels)
    if "responsive" in rf.coords:
        bad = bad & rf["responsive"].astype(bool)
    n_bad = int(bad.sum())
    if n_bad:
        raise DataError(
            f"{path}: {n_bad} RF(s) not flagged unresponsive hold NaN or inf values "
            "(re-extract them, or set their `responsive` flag to False)"
        )


def _check_rfs(rfs) -> xr.DataArray:
    if not isinstance(rfs, xr.DataArray):
        raise DataError(f"RFs must be an xarray.DataArray, got {type(rfs).__name__}")
    missing = [d for d in RF_DIMS if d not in rfs.dims]
    if missing:
        raise DataError(f"RFs need dims (..., channel, y, x); missing {missing} in {rfs.dims}")
    if rfs.sizes["y"] < 8 or rfs.sizes["x"] < 8:
        raise DataError(f"RF grid {rfs.sizes['y']} x {rfs.sizes['x']} is too small (need >= 8)")
    if not np.issubdtype(rfs.dtype, np.number) or np.issubdtype(rfs.dtype, np.complexfloating):
        raise DataError(f"RFs must be real numbers, got dtype {rfs.dtype}")
    leading = [d for d in rfs.dims if d not in RF_DIMS]
    return rfs.transpose(*leading, *RF_DIMS).astype(float)


VARIABLE_ATTRS = {
    "center_y": dict(units="1", long_name="RF center row (energy centroid), pixels"),
    "center_x": dict(units="1", long_name="RF center column (energy centroid), pixels"),
    "osi": dict(units="1", long_name="spectral orientation selectivity index"),
    "orientation": dict(units="degree", long_name="preferred bar orientation (spectral)"),
    "spectral_frequency": dict(units="1", long_name="mean spatial frequency, cycles per pixel"),
    "orientedness": dict(units="1", long_name="bar-bank orientedness (pref-orth)/(pref+orth)"),
    "bar_orientation": dict(units="degree", long_name="preferred orientation of the bar bank"),
    "symmetry": dict(units="1", long_name="radial symmetry about the RF center"),
    "dog_r2": dict(units="1", long_name="R^2 of the difference-of-Gaussians fit"),
    "dog_bic": dict(units="1", long_name="BIC of the DoG fit (unit-variance RF)"),
    "dog_y0": dict(units="1", long_name="DoG center row, pixels"),
    "dog_x0": dict(units="1", long_name="DoG center column, pixels"),
    "dog_amplitude": dict(units="1", long_name="DoG center amplitude (signed), in the RF's units"),
    "dog_sigma_center": dict(units="1", long_name="DoG center sigma, pixels"),
    "dog_sigma_surround": dict(units="1", long_name="DoG surround sigma, pixels"),
    "dog_surround_weight": dict(units="1", long_name="DoG surround/center peak ratio"),
    "dog_offset": dict(units="1", long_name="DoG baseline, in the RF's units"),
    "gabor_r2": dict(units="1", long_name="R^2 of the Gabor fit"),
    "gabor_bic": dict(units="1", long_name="BIC of the Gabor fit (unit-variance RF)"),
    "gabor_y0": dict(units="1", long_name="Gabor center row, pixels"),
    "gabor_x0": dict(units="1", long_name="Gabor center column, pixels"),
    "gabor_amplitude": dict(units="1", long_name="Gabor amplitude (>= 0), in the RF's units"),
    "gabor_orientation": dict(units="degree", long_name="Gabor bar orientation"),
    "gabor_sigma_across": dict(units="1", long_name="Gabor envelope sigma across bars, pixels"),
    "gabor_sigma_along": dict(units="1", long_name="Gabor envelope sigma along bars, pixels"),
    "gabor_frequency": dict(units="1", long_name="Gabor carrier frequency, cycles per pixel"),
    "gabor_phase": dict(units="radian", long_name="Gabor carrier phase in (-pi, pi]"),
    "gabor_offset": dict(units="1", long_name="Gabor baseline, in the RF's units"),
    "polarity": dict(units="1", long_name="center polarity: +1 ON, -1 OFF, 0 unresponsive"),
    "surround_strength": dict(units="1", long_name="DoG surround/center volume ratio"),
    "rf_size": dict(
        units="1", long_name="DoG center sigma, or Gabor envelope sigma if BIC prefers it, pixels"
    ),
}
