"""Least-squares fits of RFs (docs/design.md#rf-metrics): a difference of Gaussians (DoG,
center-surround) and a Gabor (oriented), with bounds and several starts per RF.

:func:`fit_rfs` fits standardized RFs (n, H, W) and returns their R^2, BIC and named
parameters; :func:`derived_metrics` turns the fits into ``polarity``, ``surround_strength``
and ``rf_size``. The solver is a bounded Levenberg-Marquardt batched over RFs and starts
(:func:`levenberg_marquardt`), with analytic Jacobians that the models compute in float32.
``benchmarks/fit_solvers.py`` compares it with ``scipy.optimize.least_squares`` on the same
RFs; the choice of solver follows that measurement (docs/departures.md#analysis).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy.ndimage import gaussian_filter

from analysis.metrics.closed_form import scatter

FIT_WORKERS: int | None = None  # threads for the fits; None: one per CPU core
# The variables of fit_rfs and derived_metrics, in the order of the results' variables.
FIT_NAMES = (
    "dog_r2",
    "dog_bic",
    "gabor_r2",
    "gabor_bic",
    "dog_y0",
    "dog_x0",
    "dog_amplitude",
    "dog_sigma_center",
    "dog_sigma_surround",
    "dog_surround_weight",
    "dog_offset",
    "gabor_y0",
    "gabor_x0",
    "gabor_amplitude",
    "gabor_orientation",
    "gabor_sigma_across",
    "gabor_sigma_along",
    "gabor_frequency",
    "gabor_phase",
    "gabor_offset",
)
DERIVED_NAMES = ("polarity", "surround_strength", "rf_size")

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


def fit_rfs(z: np.ndarray, valid: np.ndarray, closed: dict, progress: bool = False) -> dict:
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

            # disable=None: no bar when stderr is not a terminal (logs, pipes)
            bar = tqdm(total=2 * len(idx), desc="fitting DoG + Gabor", unit="RF", disable=None)
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
        return scatter(values, valid)

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


def derived_metrics(fitted: dict, valid: np.ndarray) -> dict:
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
