"""RF shape metrics and the center-surround / oriented classification (DESIGN.md section 9).

``rf_metrics(rfs)`` takes RFs with dims (..., channel, y, x) and returns an
``xarray.Dataset`` with one value per RF (the leading dims and ``channel``) of:

closed form (``closed_form_metrics``)
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
fits (bounded Levenberg-Marquardt, batched over RFs and starts, analytic Jacobians)
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

Classification rule (``classify``), evaluated in this order:

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

import functools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import xarray as xr
from scipy.ndimage import gaussian_filter

from retina_raf.errors import DataError

CLASSES = ("center-surround", "oriented", "unclassified", "unresponsive")
DEFAULT_THRESHOLDS = {
    "fit_r2_min": 0.4,
    "symmetry_min": 0.35,
    "osi_max": 0.4,
    "orientedness_min": 0.35,
}
RF_DIMS = ("channel", "y", "x")
FIT_WORKERS: int | None = None  # threads for the fits; None: one per CPU core
CHUNK_RFS = 1024  # RFs per batch of the closed-form metrics

# ----------------------------------------------------------------------------- public API


def rf_metrics(
    rfs: xr.DataArray, thresholds: dict[str, float] | None = None, progress: bool = False
) -> xr.Dataset:
    """Shape metrics, model fits and ``rf_class`` of every RF in ``rfs``.

    ``rfs``: DataArray with dims (..., channel, y, x), any leading dims (e.g. ``run``) are
    kept; an optional boolean coordinate ``responsive`` marks silent units. Returns a Dataset
    with dims (..., channel) holding the variables listed in the module docstring, the
    input's coordinates (except y, x) and attributes, plus attributes documenting the
    classification rule and thresholds.
    """
    thresholds = dict(DEFAULT_THRESHOLDS if thresholds is None else thresholds)
    rfs = _check_rfs(rfs)
    z, valid, mean, std = _standardize(rfs.values.reshape(-1, rfs.sizes["y"], rfs.sizes["x"]))
    closed = _closed_form(z, valid)
    fitted = _fits(z, valid, closed, progress=progress)
    # Back from the unit-variance RF to the RF's own units.
    for name in ("dog_amplitude", "gabor_amplitude"):
        fitted[name] = fitted[name] * std
    for name in ("dog_offset", "gabor_offset"):
        fitted[name] = fitted[name] * std + mean
    ds = _to_dataset({**closed, **fitted, **_derived(fitted, valid)}, rfs)
    ds["rf_class"] = classify(ds, thresholds)
    ds["polarity"] = ds["polarity"].where(ds["rf_class"] != "unresponsive", 0).astype(np.int8)
    ds.attrs.update(_threshold_attrs(thresholds))
    return ds


def closed_form_metrics(rfs: xr.DataArray) -> xr.Dataset:
    """Only the closed-form metrics (center, osi, orientation, orientedness, symmetry).

    Same input and output layout as :func:`rf_metrics`, without the fits and ``rf_class``.
    """
    rfs = _check_rfs(rfs)
    z, valid, _, _ = _standardize(rfs.values.reshape(-1, rfs.sizes["y"], rfs.sizes["x"]))
    return _to_dataset(_closed_form(z, valid), rfs)


def classify(metrics: xr.Dataset, thresholds: dict[str, float] | None = None) -> xr.DataArray:
    """``rf_class`` (strings of :data:`CLASSES`) from a metrics Dataset by the documented rule."""
    t = DEFAULT_THRESHOLDS if thresholds is None else thresholds
    missing = set(DEFAULT_THRESHOLDS) - set(t)
    if missing:
        raise ValueError(f"thresholds lack {sorted(missing)}")
    codes = classify_codes(
        {name: metrics[name].values for name in _CLASS_INPUTS},
        responsive=_responsive_mask(metrics),
        thresholds=t,
    )
    labels = np.array(CLASSES, dtype="<U15")[codes]
    return xr.DataArray(
        labels,
        dims=metrics["symmetry"].dims,
        coords=metrics["symmetry"].coords,
        attrs=dict(long_name="RF class", rule=CLASS_RULE),
    )


_CLASS_INPUTS = ("dog_r2", "gabor_r2", "dog_bic", "gabor_bic", "symmetry", "osi", "orientedness")
CLASS_RULE = (
    "unresponsive if flagged, constant or non-finite; else center-surround if "
    "dog_r2 >= fit_r2_min and symmetry >= symmetry_min and osi <= osi_max; else oriented if "
    "gabor_r2 >= fit_r2_min and orientedness >= orientedness_min and gabor_bic < dog_bic; "
    "else unclassified"
)


def classify_codes(
    features: dict[str, np.ndarray], responsive: np.ndarray, thresholds: dict[str, float]
) -> np.ndarray:
    """Class indices into :data:`CLASSES` from feature arrays (numpy core of :func:`classify`)."""
    f = features
    with np.errstate(invalid="ignore"):
        center_surround = (
            (f["dog_r2"] >= thresholds["fit_r2_min"])
            & (f["symmetry"] >= thresholds["symmetry_min"])
            & (f["osi"] <= thresholds["osi_max"])
        )
        oriented = (
            (f["gabor_r2"] >= thresholds["fit_r2_min"])
            & (f["orientedness"] >= thresholds["orientedness_min"])
            & (f["gabor_bic"] < f["dog_bic"])
        )
    codes = np.full(np.shape(f["symmetry"]), 2, dtype=np.int64)
    codes[oriented] = 1
    codes[center_surround] = 0
    unresponsive = ~responsive | ~np.isfinite(f["symmetry"])
    codes[unresponsive] = 3
    return codes


def _responsive_mask(metrics: xr.Dataset) -> np.ndarray:
    shape = metrics["symmetry"].shape
    if "responsive" in metrics.coords:
        flag = metrics["responsive"].broadcast_like(metrics["symmetry"])
        return flag.transpose(*metrics["symmetry"].dims).values.astype(bool)
    return np.ones(shape, dtype=bool)


def _threshold_attrs(thresholds: dict[str, float]) -> dict:
    attrs = {f"rf_class_{name}": float(value) for name, value in thresholds.items()}
    attrs["rf_class_rule"] = CLASS_RULE
    attrs["rf_class_thresholds_source"] = (
        "analysis.synthetic.calibrate_thresholds(seed=0) on labelled synthetic RFs"
    )
    attrs["orientation_convention"] = (
        "degrees in [0, 180) of the RF's bars/edges, counter-clockwise from horizontal "
        "as displayed with row 0 on top"
    )
    return attrs


def load_rfs(path) -> xr.DataArray:
    """The DataArray "rf" of a NetCDF file (loaded into memory), or a one-line DataError.

    An RF holding NaN or inf is refused unless it is flagged ``responsive=False``: in a
    metrics run it would silently count as unresponsive while its flag says otherwise.
    """
    from pathlib import Path

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


def summarize(metrics: xr.Dataset, default_condition: str = "all") -> list[str]:
    """One line per condition: fraction center-surround/oriented, mean symmetry and OSI.

    A condition is the ``preset`` (a coordinate along ``run`` or a scalar coordinate, else
    an attribute) when there is one, else the whole dataset (``default_condition``).
    Fractions and means are over the responsive RFs.
    """
    preset = metrics.coords.get("preset")
    if preset is not None and preset.ndim == 1:
        groups = [(str(name), group) for name, group in metrics.groupby("preset")]
    else:
        name = preset.item() if preset is not None else metrics.attrs.get("preset")
        groups = [(str(name) if name is not None else default_condition, metrics)]
    lines = []
    for name, group in groups:
        classes = group["rf_class"].values.ravel()
        responsive = classes != "unresponsive"
        n_responsive = int(responsive.sum())
        if n_responsive == 0:
            lines.append(f"{name}: 0/{classes.size} responsive RFs")
            continue
        fraction = {c: np.mean(classes[responsive] == c) for c in CLASSES[:2]}
        symmetry = np.nanmean(group["symmetry"].values.ravel()[responsive])
        osi = np.nanmean(group["osi"].values.ravel()[responsive])
        lines.append(
            f"{name}: {n_responsive}/{classes.size} responsive RFs, "
            f"center-surround {fraction['center-surround']:.2f}, "
            f"oriented {fraction['oriented']:.2f}, mean symmetry {symmetry:.3f}, "
            f"mean OSI {osi:.3f}"
        )
    return lines


# ----------------------------------------------------------------------------- input


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


def _standardize(rf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Zero-mean unit-variance RFs (n, H, W), the mask of usable (finite, non-constant) ones,
    and each RF's mean and standard deviation (n,)."""
    finite = np.isfinite(rf).all(axis=(1, 2))
    safe = np.where(finite[:, None, None], rf, 0.0)
    peak = np.abs(safe).max(axis=(1, 2))
    centered = safe - safe.mean(axis=(1, 2), keepdims=True)
    std = centered.std(axis=(1, 2))
    # A constant RF leaves only rounding error (~1e-16 of its value) after mean removal.
    valid = finite & (peak > 0) & (std > 1e-10 * peak)
    z = np.where(valid[:, None, None], centered / np.where(valid, std, 1.0)[:, None, None], 0.0)
    return z, valid, safe.mean(axis=(1, 2)), std


def _to_dataset(values: dict[str, np.ndarray], rfs: xr.DataArray) -> xr.Dataset:
    dims = rfs.dims[:-2]
    shape = tuple(rfs.sizes[d] for d in dims)
    # Input coordinates are kept; one that shares a metric's name is kept as input_<name>.
    coords = {
        (f"input_{name}" if name in values else name): coord
        for name, coord in rfs.coords.items()
        if set(coord.dims) <= set(dims)
    }
    data = {
        name: (dims, np.asarray(v).reshape(shape), dict(_VARIABLE_ATTRS.get(name, {})))
        for name, v in values.items()
    }
    return xr.Dataset(data, coords=coords, attrs=dict(rfs.attrs))


_VARIABLE_ATTRS = {
    "center_y": dict(units="pixels", long_name="RF center row (energy centroid)"),
    "center_x": dict(units="pixels", long_name="RF center column (energy centroid)"),
    "osi": dict(units="1", long_name="spectral orientation selectivity index"),
    "orientation": dict(units="degrees", long_name="preferred bar orientation (spectral)"),
    "spectral_frequency": dict(units="cycles/pixel", long_name="mean spatial frequency"),
    "orientedness": dict(units="1", long_name="bar-bank orientedness (pref-orth)/(pref+orth)"),
    "bar_orientation": dict(units="degrees", long_name="preferred orientation of the bar bank"),
    "symmetry": dict(units="1", long_name="radial symmetry about the RF center"),
    "dog_r2": dict(units="1", long_name="R^2 of the difference-of-Gaussians fit"),
    "dog_bic": dict(units="1", long_name="BIC of the DoG fit (unit-variance RF)"),
    "dog_y0": dict(units="pixels", long_name="DoG center row"),
    "dog_x0": dict(units="pixels", long_name="DoG center column"),
    "dog_amplitude": dict(units="RF units", long_name="DoG center amplitude (signed)"),
    "dog_sigma_center": dict(units="pixels", long_name="DoG center sigma"),
    "dog_sigma_surround": dict(units="pixels", long_name="DoG surround sigma"),
    "dog_surround_weight": dict(units="1", long_name="DoG surround/center peak ratio"),
    "dog_offset": dict(units="RF units", long_name="DoG baseline"),
    "gabor_r2": dict(units="1", long_name="R^2 of the Gabor fit"),
    "gabor_bic": dict(units="1", long_name="BIC of the Gabor fit (unit-variance RF)"),
    "gabor_y0": dict(units="pixels", long_name="Gabor center row"),
    "gabor_x0": dict(units="pixels", long_name="Gabor center column"),
    "gabor_amplitude": dict(units="RF units", long_name="Gabor amplitude (>= 0)"),
    "gabor_orientation": dict(units="degrees", long_name="Gabor bar orientation"),
    "gabor_sigma_across": dict(units="pixels", long_name="Gabor envelope sigma across bars"),
    "gabor_sigma_along": dict(units="pixels", long_name="Gabor envelope sigma along bars"),
    "gabor_frequency": dict(units="cycles/pixel", long_name="Gabor carrier frequency"),
    "gabor_phase": dict(units="radians", long_name="Gabor carrier phase in (-pi, pi]"),
    "gabor_offset": dict(units="RF units", long_name="Gabor baseline"),
    "polarity": dict(units="1", long_name="center polarity: +1 ON, -1 OFF, 0 unresponsive"),
    "surround_strength": dict(units="1", long_name="DoG surround/center volume ratio"),
    "rf_size": dict(
        units="pixels", long_name="DoG center sigma, or Gabor envelope sigma if BIC prefers it"
    ),
}

# ----------------------------------------------------------------------------- closed form


def _closed_form(z: np.ndarray, valid: np.ndarray) -> dict[str, np.ndarray]:
    """Closed-form metrics of the valid RFs among z (n, H, W); NaN for the others."""
    if not valid.any():
        return {name: np.full(valid.shape, np.nan) for name in CLOSED_FORM_NAMES}
    if len(z) > CHUNK_RFS:  # bound the memory of the padded spectra
        parts = [
            _closed_form(z[i : i + CHUNK_RFS], valid[i : i + CHUNK_RFS])
            for i in range(0, len(z), CHUNK_RFS)
        ]
        return {name: np.concatenate([p[name] for p in parts]) for name in CLOSED_FORM_NAMES}
    zv = z[valid]
    center_y, center_x = rf_centers(zv)
    osi, orientation, frequency = spectral_orientation(zv, center_y, center_x)
    orientedness, bar_orientation = bar_orientedness(zv)
    symmetry = radial_symmetry(zv, center_y, center_x)
    out = dict(
        center_y=center_y,
        center_x=center_x,
        osi=osi,
        orientation=orientation,
        spectral_frequency=frequency,
        orientedness=orientedness,
        bar_orientation=bar_orientation,
        symmetry=symmetry,
    )
    return {name: _scatter(value, valid) for name, value in out.items()}


CLOSED_FORM_NAMES = (
    "center_y",
    "center_x",
    "osi",
    "orientation",
    "spectral_frequency",
    "orientedness",
    "bar_orientation",
    "symmetry",
)


def _scatter(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Values of the valid RFs back into an (n,) float array, NaN elsewhere."""
    full = np.full(valid.shape, np.nan)
    full[valid] = values
    return full


def rf_centers(
    z: np.ndarray, smoothing: float = 1.0, window: float = 6.0, iterations: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """RF centers (row, column) in pixels of RFs ``z`` (n, H, W).

    Centroid of the energy of the smoothed RF above its median (the noise floor), then
    re-centered ``iterations`` times under a Gaussian window of ``window`` px so that
    background noise far from the RF does not pull the center towards the grid center.
    """
    n, height, width = z.shape
    energy = gaussian_filter(z, (0, smoothing, smoothing)) ** 2
    energy = np.clip(energy - np.median(energy, axis=(1, 2), keepdims=True), 0, None)
    yy, xx = np.mgrid[0:height, 0:width].astype(float)
    cy = np.full(n, (height - 1) / 2)
    cx = np.full(n, (width - 1) / 2)
    weights = energy
    for step in range(iterations + 1):
        if step > 0:
            dist2 = (yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2
            weights = energy * np.exp(-dist2 / (2 * window**2))
        total = weights.sum(axis=(1, 2))
        ok = total > 0
        safe = np.where(ok, total, 1.0)
        cy = np.where(ok, (weights * yy).sum(axis=(1, 2)) / safe, cy)
        cx = np.where(ok, (weights * xx).sum(axis=(1, 2)) / safe, cx)
    return cy, cx


def spectral_orientation(
    z: np.ndarray, center_y: np.ndarray, center_x: np.ndarray, pad: int = 64
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(osi, orientation in degrees, mean spatial frequency in cycles/px) of RFs (n, H, W).

    The RF is tapered by a radial cosine window (radius half the grid) about its center so
    that the grid's edges do not leak power onto the frequency axes, its weighted mean is
    removed, and the power spectrum (zero-padded to ``pad``) is averaged over the disk
    0 < |k| <= 0.5 cycles/px with weight exp(2i phi_k), phi_k the wave vector's angle.
    The bars are perpendicular to the wave vector: orientation = angle / 2 + 90.
    """
    n, height, width = z.shape
    yy, xx = np.mgrid[0:height, 0:width].astype(float)
    radius = np.hypot(yy - center_y[:, None, None], xx - center_x[:, None, None])
    taper_radius = min(height, width) / 2
    window = np.where(radius < taper_radius, np.cos(np.pi * radius / (2 * taper_radius)) ** 2, 0)
    mean = (z * window).sum(axis=(1, 2)) / window.sum(axis=(1, 2))
    tapered = (z - mean[:, None, None]) * window
    size = max(pad, height, width)
    power = np.abs(np.fft.fft2(tapered, s=(size, size))) ** 2
    ky = np.fft.fftfreq(size)[:, None]
    kx = np.fft.fftfreq(size)[None, :]
    k = np.hypot(ky, kx)
    # Screen convention: "up" is -row, so the wave vector's angle is atan2(-ky, kx).
    rotor = np.exp(2j * np.arctan2(-ky, kx)) * ((k > 0) & (k <= 0.5))
    mask = ((k > 0) & (k <= 0.5)).astype(float)
    total = (power * mask).sum(axis=(1, 2))
    total = np.where(total > 0, total, np.nan)
    resultant = (power * rotor).sum(axis=(1, 2)) / total
    osi = np.abs(resultant)
    orientation = (np.rad2deg(np.angle(resultant)) / 2 + 90) % 180
    frequency = (power * mask * k).sum(axis=(1, 2)) / total
    return osi, orientation, frequency


@functools.lru_cache(maxsize=8)
def _bar_projection(height: int, width: int, n_orientations: int) -> tuple[np.ndarray, int]:
    """Matrix (n_orientations * n_bins, H * W) projecting an RF onto the across-bar axis.

    Row (o, b) sums the pixels whose across coordinate for orientation o falls in the
    1-px bin b (linear interpolation between bins), a discrete Radon transform.
    """
    yy, xx = np.mgrid[0:height, 0:width].astype(float)
    dy, dx = (yy - (height - 1) / 2).ravel(), (xx - (width - 1) / 2).ravel()
    half = int(np.ceil(np.hypot(height, width) / 2)) + 1
    n_bins = 2 * half + 1
    projection = np.zeros((n_orientations, n_bins, height * width))
    pixels = np.arange(height * width)
    for o, angle in enumerate(np.arange(n_orientations) * np.pi / n_orientations):
        across = dx * np.sin(angle) + dy * np.cos(angle) + half
        lower = np.floor(across).astype(int)
        frac = across - lower
        np.add.at(projection[o], (lower, pixels), 1 - frac)
        np.add.at(projection[o], (lower + 1, pixels), frac)
    return projection.reshape(n_orientations * n_bins, height * width), n_bins


BAR_WIDTHS = (1, 2, 3, 4, 6, 8)
N_BAR_ORIENTATIONS = 16


def bar_orientedness(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(orientedness, preferred bar orientation in degrees) of mean-removed RFs (n, H, W).

    For each of 16 orientations, the best |covariance| of the RF with a bar of width
    1-8 px at any position across the grid (bars are full length, so the position plays
    the role of the phase). orientedness = (R(pref) - R(orth)) / (R(pref) + R(orth)).
    """
    n, height, width = z.shape
    projection, n_bins = _bar_projection(height, width, N_BAR_ORIENTATIONS)
    profiles = (z.reshape(n, -1) @ projection.T).reshape(n, N_BAR_ORIENTATIONS, n_bins)
    cumulative = np.concatenate([np.zeros((n, N_BAR_ORIENTATIONS, 1)), profiles], axis=2)
    cumulative = np.cumsum(cumulative, axis=2)
    best = np.zeros((n, N_BAR_ORIENTATIONS))
    for bar_width in BAR_WIDTHS:
        sums = cumulative[:, :, bar_width:] - cumulative[:, :, :-bar_width]
        best = np.maximum(best, np.abs(sums).max(axis=2))
    preferred = best.argmax(axis=1)
    rows = np.arange(n)
    r_pref = best[rows, preferred]
    r_orth = best[rows, (preferred + N_BAR_ORIENTATIONS // 2) % N_BAR_ORIENTATIONS]
    denominator = r_pref + r_orth
    orientedness = np.where(
        denominator > 0, (r_pref - r_orth) / np.where(denominator > 0, denominator, 1), 0
    )
    return orientedness, preferred * 180.0 / N_BAR_ORIENTATIONS


def radial_symmetry(z: np.ndarray, center_y: np.ndarray, center_x: np.ndarray) -> np.ndarray:
    """Radial symmetry in [0, 1] of RFs (n, H, W) about their centers (pixels).

    ``1 - ||RF - radial(RF)||^2 / ||RF - mean(RF)||^2``, where ``radial(RF)`` is the
    least-squares fit of a radial profile, piecewise linear in the distance r from the
    center with knots every pixel (the discrete counterpart of the angular mean).
    """
    n, height, width = z.shape
    yy, xx = np.mgrid[0:height, 0:width].astype(float)
    r = np.hypot(yy - center_y[:, None, None], xx - center_x[:, None, None]).reshape(n, -1)
    values = z.reshape(n, -1)
    knot = np.floor(r).astype(int)
    frac = r - knot
    n_knots = int(knot.max()) + 2
    offset = (np.arange(n) * n_knots)[:, None]
    lo, hi = (knot + offset).ravel(), (knot + 1 + offset).ravel()
    w_lo, w_hi = (1 - frac).ravel(), frac.ravel()
    size = n * n_knots
    # Normal equations of the hat basis: tridiagonal Gram matrix and projections.
    diagonal = np.bincount(lo, w_lo**2, size) + np.bincount(hi, w_hi**2, size)
    off_diagonal = np.bincount(lo, w_lo * w_hi, size)
    rhs = np.bincount(lo, w_lo * values.ravel(), size) + np.bincount(
        hi, w_hi * values.ravel(), size
    )
    gram = np.zeros((n, n_knots, n_knots))
    idx = np.arange(n_knots)
    gram[:, idx, idx] = diagonal.reshape(n, n_knots) + 1e-9
    gram[:, idx[:-1], idx[1:]] = off_diagonal.reshape(n, n_knots)[:, :-1]
    gram[:, idx[1:], idx[:-1]] = off_diagonal.reshape(n, n_knots)[:, :-1]
    profile = np.linalg.solve(gram, rhs.reshape(n, n_knots)[..., None])[..., 0].ravel()
    radial = (w_lo * profile[lo] + w_hi * profile[hi]).reshape(n, -1)
    residual = ((values - radial) ** 2).sum(axis=1)
    total = ((values - values.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
    return np.clip(1 - residual / np.where(total > 0, total, np.nan), 0, 1)


# ----------------------------------------------------------------------------- fit models
# Each model maps parameters p (n, k) on the pixel grid (row and column axes, (H,) and
# (W,)) to the model images f (n, H*W) and the transposed Jacobian J (n, k, H*W), so that
# all RFs and starts are fitted at once. They compute in p's dtype: the fits pass float32,
# whose exp/sin/cos are several times faster than float64's and precise enough for R^2.

DOG_PARAMS = (
    "y0",
    "x0",
    "amplitude",
    "sigma_center",
    "surround_ratio",
    "surround_weight",
    "offset",
)
GABOR_PARAMS = (
    "y0",
    "x0",
    "amplitude",
    "orientation",
    "sigma_across",
    "sigma_along",
    "frequency",
    "phase",
    "offset",
)


def dog_model(p: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DoG ``a (gc - w gs) + b`` and its Jacobian; params as in :data:`DOG_PARAMS`.

    ``surround_ratio`` = sigma_surround / sigma_center keeps the surround wider than the
    center under simple box bounds. The Gaussians are separable in rows and columns, so
    only H + W exponentials are evaluated per Gaussian.
    """
    n = len(p)
    y0, x0, a, sc, ratio, w, b = (p[:, i, None, None] for i in range(7))
    dy, dx = rows[:, None] - y0, cols[None, :] - x0  # (n, H, 1), (n, 1, W)
    ss = ratio * sc
    gc = np.exp(-(dy**2) / (2 * sc**2)) * np.exp(-(dx**2) / (2 * sc**2))
    gs = np.exp(-(dy**2) / (2 * ss**2)) * np.exp(-(dx**2) / (2 * ss**2))
    r2 = dy**2 + dx**2
    shape = gc - w * gs
    radial = a * (gc / sc**2 - w * gs / ss**2)
    jac = np.empty((n, 7) + r2.shape[1:], dtype=p.dtype)
    jac[:, 0] = radial * dy
    jac[:, 1] = radial * dx
    jac[:, 2] = shape
    jac[:, 3] = a * r2 * (gc / sc**3 - w * gs / (ss**2 * sc))
    jac[:, 4] = -a * w * gs * r2 * sc / ss**3
    jac[:, 5] = -a * gs
    jac[:, 6] = 1.0
    return (a * shape + b).reshape(n, -1), jac.reshape(n, 7, -1)


def gabor_model(p: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gabor ``a E cos(2 pi f u + phase) + b`` and its Jacobian; params :data:`GABOR_PARAMS`.

    ``orientation`` in radians (bars' direction, screen convention), u/v the across/along
    coordinates of :func:`analysis.synthetic.bar_coordinates`. The carrier
    ``exp(i (2 pi f u + phase))`` factorizes into a row and a column phasor.
    """
    n = len(p)
    y0, x0, a, angle, su, sv, freq, phase, b = (p[:, i, None, None] for i in range(9))
    dy, dx = rows[:, None] - y0, cols[None, :] - x0  # (n, H, 1), (n, 1, W)
    sin, cos = np.sin(angle), np.cos(angle)
    across = dx * sin + dy * cos
    along = dx * cos - dy * sin
    envelope = np.exp(-(across**2) / (2 * su**2) - along**2 / (2 * sv**2))
    k = 2 * np.pi * freq
    carrier = np.exp(1j * (k * sin * dx)) * np.exp(1j * (k * cos * dy + phase))
    ec, es = envelope * carrier.real, envelope * carrier.imag
    d_across = a * (-across / su**2 * ec - k * es)
    d_along = -a * along / sv**2 * ec
    jac = np.empty((n, 9) + across.shape[1:], dtype=p.dtype)
    jac[:, 0] = -d_across * cos + d_along * sin
    jac[:, 1] = -d_across * sin - d_along * cos
    jac[:, 2] = ec
    jac[:, 3] = d_across * along - d_along * across
    jac[:, 4] = a * ec * across**2 / su**3
    jac[:, 5] = a * ec * along**2 / sv**3
    jac[:, 6] = -2 * np.pi * a * es * across
    jac[:, 7] = -a * es
    jac[:, 8] = 1.0
    return (a * ec + b).reshape(n, -1), jac.reshape(n, 9, -1)


def levenberg_marquardt(
    model,
    data: np.ndarray,
    p0: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    max_iterations: int = 100,
    rtol: float = 1e-6,
) -> tuple[np.ndarray, np.ndarray]:
    """Fit many independent least-squares problems at once (batched Levenberg-Marquardt).

    ``model(p) -> (f, J)`` with p (n, k), f (n, m) and the transposed Jacobian J (n, k, m);
    ``data`` (n, m); bounds (k,) enforced by projecting every step onto the box. Each
    problem has its own Marquardt damping (scaled by diag(J^T J)) and stops when an
    accepted step lowers its cost by less than ``rtol`` relative, or its damping blows up.
    Returns (params (n, k) float64, residual sum of squares (n,)).
    """
    p = np.clip(np.asarray(p0, dtype=float), lower, upper)
    f, jac = model(p)
    residual = f - data
    cost = np.einsum("nm,nm->n", residual, residual, dtype=float)
    damping = np.full(len(p), 1e-2)
    active = np.isfinite(cost)
    eye = np.eye(p.shape[1])
    for _ in range(max_iterations):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        j = jac[idx]
        jtj = np.matmul(j, j.transpose(0, 2, 1)).astype(float)
        gradient = np.matmul(j, residual[idx][..., None])[..., 0].astype(float)
        diag = np.diagonal(jtj, axis1=1, axis2=2)
        scale = np.maximum(diag, 1e-9 * diag.max(axis=1, keepdims=True) + 1e-20)
        system = jtj + (damping[idx, None] * scale)[:, :, None] * eye
        step = -np.linalg.solve(system, gradient[..., None])[..., 0]
        trial = np.clip(p[idx] + step, lower, upper)
        f_trial, jac_trial = model(trial)
        residual_trial = f_trial - data[idx]
        cost_trial = np.einsum("nm,nm->n", residual_trial, residual_trial, dtype=float)
        better = np.isfinite(cost_trial) & (cost_trial < cost[idx])
        accepted = idx[better]
        gain = (cost[accepted] - cost_trial[better]) / np.maximum(cost[accepted], 1e-300)
        p[accepted] = trial[better]
        jac[accepted] = jac_trial[better]
        residual[accepted] = residual_trial[better]
        cost[accepted] = cost_trial[better]
        damping[accepted] = np.maximum(damping[accepted] * 0.2, 1e-9)
        rejected = idx[~better]
        damping[rejected] *= 5.0
        active[accepted[gain < rtol]] = False
        active[rejected[damping[rejected] > 1e6]] = False
    return p, cost


def _fit_multistart(
    model, data, starts, lower, upper, chunk=64, explore=6, refine=40, progress=None, workers=None
):
    """Best fit per problem over several starts.

    ``starts`` (n, n_starts, k): every start runs ``explore`` iterations, then only the best
    start of each problem continues for up to ``refine`` iterations. Problems go in chunks
    of ``chunk`` (small enough for the Jacobians to stay in the CPU cache), spread over
    ``workers`` threads (default :data:`FIT_WORKERS`, else one per CPU core; numpy releases
    the GIL in its loops).
    The result does not depend on the number of threads.
    """
    n, n_starts, k = starts.shape
    best_p = np.empty((n, k))
    best_cost = np.empty(n)

    def fit_chunk(begin):
        sl = slice(begin, min(begin + chunk, n))
        count = sl.stop - sl.start
        repeated = np.repeat(data[sl], n_starts, axis=0)
        p, cost = levenberg_marquardt(
            model, repeated, starts[sl].reshape(-1, k), lower, upper, explore
        )
        cost = np.where(np.isfinite(cost), cost, np.inf).reshape(count, n_starts)
        pick = cost.argmin(axis=1)
        p = p.reshape(count, n_starts, k)[np.arange(count), pick]
        best_p[sl], best_cost[sl] = levenberg_marquardt(model, data[sl], p, lower, upper, refine)
        if progress is not None:
            progress.update(count)

    workers = workers or FIT_WORKERS or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(fit_chunk, range(0, n, chunk)))
    return best_p, best_cost


def _linear_amplitudes(basis: np.ndarray, data: np.ndarray) -> np.ndarray:
    """Least-squares coefficients (n, q) of basis images (n, q, m) for data (n, m)."""
    basis = basis.astype(float)
    gram = np.matmul(basis, basis.transpose(0, 2, 1)) + 1e-9 * np.eye(basis.shape[1])
    return np.linalg.solve(gram, np.matmul(basis, data[..., None].astype(float)))[..., 0]


def _dog_starts(data, rows, cols, cy, cx, sigmas=(1.0, 2.0, 3.5), ratio=2.5):
    """Starts (n, len(sigmas), 7) at the RF center with center sigmas ``sigmas``; amplitude,
    surround weight and offset by linear least squares given the two Gaussians."""
    n = len(data)
    starts = []
    for sigma in sigmas:
        p = np.stack(
            [cy, cx, np.ones(n), np.full(n, sigma), np.full(n, ratio), np.zeros(n), np.zeros(n)],
            axis=1,
        )
        _, jac = dog_model(p.astype(rows.dtype), rows, cols)
        # With a = 1 and w = 0: d/da = center Gaussian, d/dw = -surround Gaussian.
        coef = _linear_amplitudes(jac[:, [2, 5, 6]], data)
        a = np.where(np.abs(coef[:, 0]) > 1e-6, coef[:, 0], 1e-3)
        w = np.clip(coef[:, 1] / a, 0.0, 0.95)
        starts.append(
            np.stack([cy, cx, a, np.full(n, sigma), np.full(n, ratio), w, coef[:, 2]], axis=1)
        )
    return np.stack(starts, axis=1)


def _gabor_starts(data, rows, cols, cy, cx, guesses):
    """Starts (n, len(guesses), 9) from (angle, frequency, sigma_across, sigma_along)
    guesses (each (n,)); amplitude, phase and offset by linear least squares given them."""
    n = len(data)
    starts = []
    for angle, freq, su, sv in guesses:
        p = np.stack([cy, cx, np.ones(n), angle, su, sv, freq, np.zeros(n), np.zeros(n)], axis=1)
        _, jac = gabor_model(p.astype(rows.dtype), rows, cols)
        # With a = 1 and phase = 0: d/da = E cos(c), d/dphase = -E sin(c).
        coef = _linear_amplitudes(jac[:, [2, 7, 8]], data)
        # A E cos(c) - B E sin(c) = a E cos(c + phase) with A = a cos(phase), B = a sin(phase).
        amplitude = np.hypot(coef[:, 0], coef[:, 1])
        phase = np.arctan2(coef[:, 1], coef[:, 0])
        starts.append(np.stack([cy, cx, amplitude, angle, su, sv, freq, phase, coef[:, 2]], axis=1))
    return np.stack(starts, axis=1)


def _envelope_sigmas(z, cy, cx, angle):
    """Envelope sigmas (across, along) in px from second moments of the smoothed energy."""
    n, height, width = z.shape
    energy = gaussian_filter(z, (0, 1, 1)) ** 2
    energy = np.clip(energy - np.median(energy, axis=(1, 2), keepdims=True), 0, None)
    yy, xx = np.mgrid[0:height, 0:width].astype(float)
    dy, dx = yy - cy[:, None, None], xx - cx[:, None, None]
    sin, cos = np.sin(angle)[:, None, None], np.cos(angle)[:, None, None]
    across, along = dx * sin + dy * cos, dx * cos - dy * sin
    total = np.maximum(energy.sum(axis=(1, 2)), 1e-12)
    # The energy of a Gaussian envelope with sigma s has sigma s / sqrt(2).
    su = np.sqrt(2 * (energy * across**2).sum(axis=(1, 2)) / total)
    sv = np.sqrt(2 * (energy * along**2).sum(axis=(1, 2)) / total)
    return np.clip(su, 1.0, 10.0), np.clip(sv, 1.0, 15.0)


# Box bounds of the fits; unlisted parameters are free, except the centers (see fit_bounds).
DOG_BOUNDS = {"sigma_center": (0.5, 16.0), "surround_ratio": (1.1, 10.0),
              "surround_weight": (0.0, 1.0)}  # fmt: skip
GABOR_BOUNDS = {"amplitude": (0.0, np.inf), "sigma_across": (0.5, 20.0),
                "sigma_along": (0.5, 30.0), "frequency": (0.0, 0.5)}  # fmt: skip


def fit_bounds(names, bounds: dict, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) arrays for parameters ``names``: centers anywhere on the grid (half a
    pixel beyond its edge pixels), ``bounds`` where listed, unbounded otherwise."""
    box = {"y0": (-0.5, height - 0.5), "x0": (-0.5, width - 0.5), **bounds}
    lower, upper = zip(*(box.get(name, (-np.inf, np.inf)) for name in names), strict=True)
    return np.array(lower, dtype=float), np.array(upper, dtype=float)


def _fits(z: np.ndarray, valid: np.ndarray, closed: dict, progress: bool = False) -> dict:
    """DoG and Gabor fits of the valid RFs (standardized, (n, H, W)); NaN for the others."""
    n, height, width = z.shape
    m = height * width
    rows = np.arange(height, dtype=np.float32)
    cols = np.arange(width, dtype=np.float32)
    idx = np.flatnonzero(valid)
    data = z[idx].reshape(len(idx), m).astype(np.float32)
    cy, cx = closed["center_y"][idx], closed["center_x"][idx]

    def dog(p):
        return dog_model(p.astype(np.float32), rows, cols)

    def gabor(p):
        return gabor_model(p.astype(np.float32), rows, cols)

    dog_lower, dog_upper = fit_bounds(DOG_PARAMS, DOG_BOUNDS, height, width)
    gabor_lower, gabor_upper = fit_bounds(GABOR_PARAMS, GABOR_BOUNDS, height, width)
    if idx.size == 0:
        dog_p, dog_rss = np.empty((0, len(DOG_PARAMS))), np.empty(0)
        gabor_p, gabor_rss = np.empty((0, len(GABOR_PARAMS))), np.empty(0)
    else:
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=2 * len(idx), desc="fitting DoG + Gabor", unit="RF")
        dog_starts = _dog_starts(data, rows, cols, cy, cx)
        dog_p, dog_rss = _fit_multistart(dog, data, dog_starts, dog_lower, dog_upper, progress=bar)
        angle_spectral = np.deg2rad(closed["orientation"][idx])
        angle_bars = np.deg2rad(closed["bar_orientation"][idx])
        freq = np.clip(closed["spectral_frequency"][idx], 0.02, 0.4)
        su, sv = _envelope_sigmas(z[idx], cy, cx, angle_spectral)
        guesses = [
            (angle_spectral, freq, su, sv),
            (angle_bars, freq, su, sv),
            (angle_spectral, freq / 2, su, sv),  # edges: one transition, lower frequency
            (angle_spectral, freq, np.maximum(0.6 * su, 1.0), sv),
        ]
        gabor_starts = _gabor_starts(data, rows, cols, cy, cx, guesses)
        gabor_p, gabor_rss = _fit_multistart(
            gabor, data, gabor_starts, gabor_lower, gabor_upper, progress=bar
        )
        if bar is not None:
            bar.close()

    def full(values):
        return _scatter(values, valid)

    # z has unit variance, so the total sum of squares is m.
    dog_rss, gabor_rss = np.maximum(dog_rss, 1e-12 * m), np.maximum(gabor_rss, 1e-12 * m)
    out = dict(
        dog_r2=full(1 - dog_rss / m),
        dog_bic=full(m * np.log(dog_rss / m) + len(DOG_PARAMS) * np.log(m)),
        gabor_r2=full(1 - gabor_rss / m),
        gabor_bic=full(m * np.log(gabor_rss / m) + len(GABOR_PARAMS) * np.log(m)),
    )
    out.update(_fit_parameters(dog_p, gabor_p, full))
    return out


def _derived(fitted: dict, valid: np.ndarray) -> dict:
    """polarity, surround_strength and rf_size from the fits (see the module docstring)."""
    polarity = np.where(valid, np.sign(np.nan_to_num(fitted["dog_amplitude"])), 0)
    ratio = fitted["dog_sigma_surround"] / fitted["dog_sigma_center"]
    dog_preferred = fitted["dog_bic"] <= fitted["gabor_bic"]
    gabor_size = np.sqrt(fitted["gabor_sigma_across"] * fitted["gabor_sigma_along"])
    return dict(
        polarity=polarity.astype(np.int8),
        surround_strength=fitted["dog_surround_weight"] * ratio**2,
        rf_size=np.where(dog_preferred, fitted["dog_sigma_center"], gabor_size),
    )


def _fit_parameters(dog_p, gabor_p, full) -> dict:
    """Named fit parameters in pixels/degrees/radians, on the standardized RF scale."""
    # Canonical Gabor: orientation in [0, pi); u -> -u (orientation + pi) negates the phase.
    angle = np.mod(gabor_p[:, 3], 2 * np.pi)
    flip = angle >= np.pi
    angle = np.where(flip, angle - np.pi, angle)
    phase = np.where(flip, -gabor_p[:, 7], gabor_p[:, 7])
    phase = np.angle(np.exp(1j * phase))
    return dict(
        dog_y0=full(dog_p[:, 0]),
        dog_x0=full(dog_p[:, 1]),
        dog_amplitude=full(dog_p[:, 2]),
        dog_sigma_center=full(dog_p[:, 3]),
        dog_sigma_surround=full(dog_p[:, 3] * dog_p[:, 4]),
        dog_surround_weight=full(dog_p[:, 5]),
        dog_offset=full(dog_p[:, 6]),
        gabor_y0=full(gabor_p[:, 0]),
        gabor_x0=full(gabor_p[:, 1]),
        gabor_amplitude=full(gabor_p[:, 2]),
        gabor_orientation=full(np.rad2deg(angle) % 180),
        gabor_sigma_across=full(gabor_p[:, 4]),
        gabor_sigma_along=full(gabor_p[:, 5]),
        gabor_frequency=full(gabor_p[:, 6]),
        gabor_phase=full(phase),
        gabor_offset=full(gabor_p[:, 8]),
    )
