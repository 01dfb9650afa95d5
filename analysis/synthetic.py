"""Synthetic receptive fields with known labels, and the calibration of ``rf_class``.

The generators draw RFs on the model's input grid (32 x 32 by default) from the same
families the metrics fit (docs/design.md#rf-metrics), so that the classifier thresholds of
:mod:`analysis.metrics` can be chosen, and tested, on data whose true class is known:

- ``dog``   -> ``center-surround``: ON/OFF concentric difference of Gaussians of varied
  sizes and surround strengths, slightly elliptical, off-center by a few pixels;
- ``gabor`` -> ``oriented``: Gabors of all orientations, phases, frequencies and envelope
  aspect ratios;
- ``edge``  -> ``oriented``: a smooth step (tanh) across an elongated Gaussian envelope;
- ``noise`` -> ``unclassified``: white or spatially smoothed Gaussian noise.

Geometry conventions (shared with :mod:`analysis.metrics`): pixel ``(y, x)`` is row ``y``
(downwards) and column ``x``; the grid center is ``((size - 1) / 2, (size - 1) / 2)``;
an ``orientation`` is the angle of the bars/edge in degrees in [0, 180), measured
counter-clockwise from the horizontal as the image appears with ``imshow`` (row 0 on top).

Every structured RF is scaled to a peak absolute value of 1, then white Gaussian noise of
standard deviation ``noise_level`` times the clean RF's standard deviation over the grid is
added: ``noise_level`` is noise std / signal std, the variance SNR is ``1 / noise_level^2``,
and no fit can explain more than ``1 / (1 + noise_level^2)`` of the variance. (Noise scaled
to the peak instead would drown a 1-px DoG long before a grid-filling Gabor.)

``calibrate_thresholds(seed)`` re-derives the thresholds of ``rf_class`` by a grid search
on a synthetic set drawn with ``seed`` (the defaults in ``analysis.metrics`` come from
``calibrate_thresholds(seed=0)``).
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from scipy.ndimage import gaussian_filter

GRID_SIZE = 32

# Noise levels (noise std / signal std over the grid): the calibration set spans clean to
# SNR 1 (half the variance is noise); "moderate" is the range the accuracy is tested on.
CALIBRATION_NOISE = (0.0, 1.0)
MODERATE_NOISE = (0.2, 0.6)
KIND_LABEL = {
    "dog": "center-surround",
    "gabor": "oriented",
    "edge": "oriented",
    "noise": "unclassified",
}
# Generating parameters stored as coordinates on ``channel`` (NaN where a kind lacks one).
PARAMETERS = (
    "x0",
    "y0",
    "polarity",
    "sigma_center",
    "sigma_surround",
    "surround_strength",
    "ellipticity",
    "orientation",
    "frequency",
    "phase",
    "sigma_across",
    "sigma_along",
    "edge_width",
    "noise_smoothing",
    "noise_level",
)


def pixel_grid(size: int = GRID_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Row and column coordinates (float, shape (size, size)) of every pixel."""
    yy, xx = np.mgrid[0:size, 0:size]
    return yy.astype(float), xx.astype(float)


def bar_coordinates(
    yy: np.ndarray, xx: np.ndarray, y0: float, x0: float, orientation: float
) -> tuple[np.ndarray, np.ndarray]:
    """(across, along) coordinates in pixels relative to (y0, x0) for bars at ``orientation``.

    ``along`` runs along the bars (direction ``orientation`` counter-clockwise from the
    horizontal on screen, i.e. (dx, dy) = (cos, -sin) in row/column units), ``across`` is
    perpendicular to them.
    """
    angle = np.deg2rad(orientation)
    dx, dy = xx - x0, yy - y0
    along = dx * np.cos(angle) - dy * np.sin(angle)
    across = dx * np.sin(angle) + dy * np.cos(angle)
    return across, along


def dog(
    size: int = GRID_SIZE,
    y0: float | None = None,
    x0: float | None = None,
    sigma_center: float = 2.0,
    sigma_surround: float = 5.0,
    surround_strength: float = 0.8,
    polarity: int = 1,
    ellipticity: float = 1.0,
    ellipse_angle: float = 0.0,
) -> np.ndarray:
    """Difference of Gaussians, shape (size, size).

    ``polarity * (exp(-r^2 / 2 sigma_c^2) - w exp(-r^2 / 2 sigma_s^2))`` with the surround
    weight ``w`` chosen so that ``surround_strength`` is the surround/center volume ratio
    (0: no surround, 1: balanced). ``ellipticity`` >= 1 stretches both Gaussians by
    ``sqrt(ellipticity)`` along ``ellipse_angle`` (degrees) and shrinks them across it.
    """
    center = (size - 1) / 2
    y0 = center if y0 is None else y0
    x0 = center if x0 is None else x0
    yy, xx = pixel_grid(size)
    across, along = bar_coordinates(yy, xx, y0, x0, ellipse_angle)
    r2 = (along / np.sqrt(ellipticity)) ** 2 + (across * np.sqrt(ellipticity)) ** 2
    weight = surround_strength * sigma_center**2 / sigma_surround**2
    profile = np.exp(-r2 / (2 * sigma_center**2)) - weight * np.exp(-r2 / (2 * sigma_surround**2))
    return polarity * profile


def gabor(
    size: int = GRID_SIZE,
    y0: float | None = None,
    x0: float | None = None,
    orientation: float = 0.0,
    frequency: float = 0.125,
    phase: float = 0.0,
    sigma_across: float = 3.0,
    sigma_along: float = 5.0,
    amplitude: float = 1.0,
) -> np.ndarray:
    """Gabor ``amplitude * envelope * cos(2 pi frequency * across + phase)``, shape (size, size).

    ``orientation`` (degrees) is that of the bars, ``frequency`` in cycles per pixel across
    them, ``sigma_across``/``sigma_along`` the envelope's standard deviations in pixels.
    """
    center = (size - 1) / 2
    y0 = center if y0 is None else y0
    x0 = center if x0 is None else x0
    yy, xx = pixel_grid(size)
    across, along = bar_coordinates(yy, xx, y0, x0, orientation)
    envelope = np.exp(-(across**2) / (2 * sigma_across**2) - along**2 / (2 * sigma_along**2))
    return amplitude * envelope * np.cos(2 * np.pi * frequency * across + phase)


def edge(
    size: int = GRID_SIZE,
    y0: float | None = None,
    x0: float | None = None,
    orientation: float = 0.0,
    edge_width: float = 1.0,
    sigma_across: float = 3.0,
    sigma_along: float = 6.0,
    polarity: int = 1,
) -> np.ndarray:
    """An oriented edge: ``polarity * tanh(across / edge_width) * envelope``, shape (size, size)."""
    center = (size - 1) / 2
    y0 = center if y0 is None else y0
    x0 = center if x0 is None else x0
    yy, xx = pixel_grid(size)
    across, along = bar_coordinates(yy, xx, y0, x0, orientation)
    envelope = np.exp(-(across**2) / (2 * sigma_across**2) - along**2 / (2 * sigma_along**2))
    return polarity * np.tanh(across / edge_width) * envelope


def _draw(kind: str, rng: np.random.Generator, size: int) -> tuple[np.ndarray, dict]:
    """One clean RF of ``kind`` with random parameters (ranges documented in synthetic_rfs)."""
    center = (size - 1) / 2
    y0, x0 = center + rng.uniform(-3, 3, size=2)
    if kind == "dog":
        sigma_center = rng.uniform(1.0, 3.0)
        params = dict(
            y0=y0,
            x0=x0,
            sigma_center=sigma_center,
            sigma_surround=sigma_center * rng.uniform(1.6, 3.5),
            surround_strength=rng.uniform(0.3, 1.0),
            polarity=rng.choice([-1, 1]),
            ellipticity=rng.uniform(1.0, 1.2),
        )
        return dog(size, ellipse_angle=rng.uniform(0, 180), **params), params
    if kind == "gabor":
        frequency = np.exp(rng.uniform(np.log(0.06), np.log(0.22)))
        sigma_across = rng.uniform(0.35, 0.7) / frequency
        params = dict(
            y0=y0,
            x0=x0,
            orientation=rng.uniform(0, 180),
            frequency=frequency,
            phase=rng.uniform(-np.pi, np.pi),
            sigma_across=sigma_across,
            sigma_along=sigma_across * rng.uniform(1.0, 2.5),
        )
        return gabor(size, **params), params
    if kind == "edge":
        sigma_across = rng.uniform(2.0, 5.0)
        params = dict(
            y0=y0,
            x0=x0,
            orientation=rng.uniform(0, 180),
            edge_width=rng.uniform(0.5, 2.0),
            sigma_across=sigma_across,
            sigma_along=sigma_across * rng.uniform(1.5, 3.0),
            polarity=rng.choice([-1, 1]),
        )
        return edge(size, **params), params
    if kind == "noise":
        smoothing = rng.choice([0.0, rng.uniform(0.5, 1.5)])
        field = rng.standard_normal((size, size))
        if smoothing > 0:
            field = gaussian_filter(field, smoothing)
        return field, dict(noise_smoothing=smoothing)
    raise ValueError(f"unknown synthetic RF kind {kind!r}; expected one of {list(KIND_LABEL)}")


def synthetic_rfs(
    counts: dict[str, int] | None = None,
    noise_level: tuple[float, float] = CALIBRATION_NOISE,
    seed: int = 0,
    size: int = GRID_SIZE,
) -> xr.DataArray:
    """Draw labelled synthetic RFs, shape (channel, y, x).

    ``counts`` maps a kind (``dog``, ``gabor``, ``edge``, ``noise``) to how many RFs to draw
    (default 120, 100, 40, 60). Each structured RF is scaled to peak |value| 1, then white
    noise is added with std = level x the clean RF's std, level drawn uniformly from
    ``noise_level``; ``noise`` RFs are scaled to peak 1 and get no extra noise.

    Parameter ranges: DoG sigma_center 1-3 px, sigma_surround 1.6-3.5 x sigma_center,
    surround_strength (volume ratio) 0.3-1, ellipticity 1-1.2 at any angle, ON or OFF;
    Gabor frequency 0.06-0.22 cycles/px (log-uniform), sigma_across 0.35-0.7 periods,
    sigma_along 1-2.5 x sigma_across, any phase; edge width 0.5-2 px, sigma_across 2-5 px,
    sigma_along 1.5-3 x sigma_across; noise white or smoothed (sigma 0.5-1.5 px); centers
    within 3 px of the grid center; orientations uniform in [0, 180).

    Returns a DataArray with coordinates on ``channel``: ``label`` (true ``rf_class``),
    ``kind`` and the generating parameters of :data:`PARAMETERS` as ``true_<name>`` (NaN
    where not applicable).
    """
    counts = dict(dog=120, gabor=100, edge=40, noise=60) if counts is None else counts
    rng = np.random.default_rng(seed)
    kinds = [kind for kind, count in counts.items() for _ in range(count)]
    images = np.empty((len(kinds), size, size))
    table = {name: np.full(len(kinds), np.nan) for name in PARAMETERS}
    for i, kind in enumerate(kinds):
        clean, params = _draw(kind, rng, size)
        clean = clean / np.abs(clean).max()
        level = rng.uniform(*noise_level) if kind != "noise" else 0.0
        images[i] = clean + level * clean.std() * rng.standard_normal((size, size))
        params["noise_level"] = level
        for name, value in params.items():
            table[name][i] = value
    coords = {f"true_{name}": ("channel", values) for name, values in table.items()}
    coords["kind"] = ("channel", np.array(kinds, dtype=str))
    coords["label"] = ("channel", np.array([KIND_LABEL[k] for k in kinds], dtype=str))
    coords["channel"] = np.arange(len(kinds))
    return xr.DataArray(
        images,
        dims=("channel", "y", "x"),
        coords=coords,
        name="rf",
        attrs=dict(source="analysis.synthetic.synthetic_rfs", seed=seed),
    )


# Candidate thresholds searched by calibrate_thresholds (grid search over all combinations).
THRESHOLD_GRID = {
    "fit_r2_min": np.round(np.arange(0.10, 0.61, 0.05), 2),
    "symmetry_min": np.round(np.arange(0.20, 0.81, 0.05), 2),
    "osi_max": np.round(np.arange(0.15, 0.61, 0.05), 2),
    "orientedness_min": np.round(np.arange(0.10, 0.71, 0.05), 2),
}


def calibrate_thresholds(
    seed: int = 0,
    counts: dict[str, int] | None = None,
    noise_level: tuple[float, float] = CALIBRATION_NOISE,
) -> tuple[dict[str, float], float]:
    """Choose the ``rf_class`` thresholds that best classify synthetic RFs drawn with ``seed``.

    Exhaustive search over :data:`THRESHOLD_GRID` for the class-balanced accuracy of the
    rule of :func:`analysis.metrics.classify` on :func:`synthetic_rfs` (``seed``,
    ``counts``, ``noise_level``). Usually many combinations tie at the best accuracy; the
    one chosen lies deepest inside that set: it maximizes the sum over thresholds of the
    number of grid steps to the nearest worse combination (or the grid's edge) along that
    threshold, taking the nearer of the two directions -- the middle of the plateau.

    Returns (thresholds, balanced accuracy on the calibration set).
    """
    from analysis.metrics import rf_metrics

    rfs = synthetic_rfs(counts=counts, noise_level=noise_level, seed=seed)
    metrics = rf_metrics(rfs)
    scores = threshold_scores(metrics, rfs["label"].values)
    best = scores == scores.max()
    margin = sum(_axis_margin(best, axis) for axis in range(best.ndim))
    index = np.unravel_index(np.argmax(np.where(best, margin, -1)), scores.shape)
    chosen = {
        name: float(axis[i]) for (name, axis), i in zip(THRESHOLD_GRID.items(), index, strict=True)
    }
    return chosen, float(scores[index])


def _axis_margin(mask: np.ndarray, axis: int) -> np.ndarray:
    """Grid steps from each cell of ``mask`` to the nearest False cell (or the grid's edge)
    along ``axis``, the smaller of the two directions; 0 on False cells."""
    mask = np.moveaxis(mask, axis, 0)
    up = np.zeros(mask.shape, dtype=int)
    down = np.zeros(mask.shape, dtype=int)
    for i in range(len(mask)):
        up[i] = (up[i - 1] + 1) * mask[i] if i > 0 else mask[i]
        j = len(mask) - 1 - i
        down[j] = (down[j + 1] + 1) * mask[j] if i > 0 else mask[j]
    return np.moveaxis(np.minimum(up, down), 0, axis)


def threshold_scores(metrics: xr.Dataset, truth: np.ndarray) -> np.ndarray:
    """Balanced accuracy of the ``rf_class`` rule for every combination of THRESHOLD_GRID.

    Returns an array indexed (fit_r2_min, symmetry_min, osi_max, orientedness_min). The
    rule is evaluated for all combinations at once by broadcasting (same rule as
    :func:`analysis.metrics.classify_codes`, all RFs responsive).
    """
    grid = THRESHOLD_GRID
    f = {name: metrics[name].values for name in metrics.data_vars}
    with np.errstate(invalid="ignore"):
        # Axes: (fit_r2_min, symmetry_min, osi_max, orientedness_min, rf)
        dog_fit = (f["dog_r2"] >= grid["fit_r2_min"][:, None])[:, None, None, None]
        symmetric = (f["symmetry"] >= grid["symmetry_min"][:, None])[None, :, None, None]
        isotropic = (f["osi"] <= grid["osi_max"][:, None])[None, None, :, None]
        center_surround = dog_fit & symmetric & isotropic
        gabor_fit = (f["gabor_r2"] >= grid["fit_r2_min"][:, None])[:, None, None, None]
        oriented_bars = (f["orientedness"] >= grid["orientedness_min"][:, None])[None, None, None]
        oriented = gabor_fit & oriented_bars & (f["gabor_bic"] < f["dog_bic"]) & ~center_surround
    unclassified = ~center_surround & ~oriented
    predicted = {
        "center-surround": center_surround,
        "oriented": oriented,
        "unclassified": unclassified,
    }
    shape = unclassified.shape[:-1]
    recalls = [
        np.broadcast_to(predicted[label][..., truth == label].mean(axis=-1), shape)
        for label in np.unique(truth)
    ]
    return np.mean(recalls, axis=0)


def balanced_accuracy(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Mean over true classes of the fraction predicted correctly."""
    classes = np.unique(truth)
    return float(np.mean([np.mean(predicted[truth == c] == c) for c in classes]))


def confusion_table(truth: np.ndarray, predicted: np.ndarray) -> str:
    """Confusion table as text: rows true class, columns predicted class, counts."""
    classes = ["center-surround", "oriented", "unclassified", "unresponsive"]
    width = max(len(c) for c in classes) + 2
    lines = ["true \\ predicted".ljust(width) + "".join(c.rjust(width) for c in classes)]
    for true_class in classes:
        row = predicted[truth == true_class]
        if row.size == 0:
            continue
        counts = [int(np.sum(row == c)) for c in classes]
        lines.append(true_class.ljust(width) + "".join(str(n).rjust(width) for n in counts))
    return "\n".join(lines)
