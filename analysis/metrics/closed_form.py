"""Closed-form RF shape metrics (docs/design.md#rf-metrics): no fitting, one batched numpy pass.

Every function takes standardized RFs ``z`` (n, H, W) (zero mean, unit variance: see
:func:`standardize`) and returns per-RF arrays (n,): the RF center (energy centroid), the
spectral orientation selectivity (OSI) and preferred orientation, Lindsey et al.'s bar-bank
orientedness and the radial symmetry. The definitions are in the docstring of
:mod:`analysis.metrics`; pixel (y, x) is row y (downwards), column x, and orientations are
degrees in [0, 180) counter-clockwise from the horizontal as ``imshow`` shows the RF.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy.ndimage import gaussian_filter

CHUNK_RFS = 1024  # RFs per batch: bounds the memory of the zero-padded spectra


def standardize(rf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
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


def closed_form_arrays(z: np.ndarray, valid: np.ndarray) -> dict[str, np.ndarray]:
    """Closed-form metrics of the valid RFs among z (n, H, W); NaN for the others."""
    if not valid.any():
        return {name: np.full(valid.shape, np.nan) for name in CLOSED_FORM_NAMES}
    if len(z) > CHUNK_RFS:  # bound the memory of the padded spectra
        parts = [
            closed_form_arrays(z[i : i + CHUNK_RFS], valid[i : i + CHUNK_RFS])
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
    return {name: scatter(value, valid) for name, value in out.items()}


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


def scatter(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
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
