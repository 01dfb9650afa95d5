"""DoG and Gabor fits: the batched Levenberg-Marquardt of ``analysis.metrics.fits`` against
``scipy.optimize.least_squares`` on the same RFs, starts, bounds and models.

Run: PYTHONPATH=. .venv/bin/python benchmarks/fit_solvers.py [--n-rfs 960] [--workers 1]

Both solvers get the same problems: the synthetic RFs of ``benchmarks/metrics_speed.py``
(3/8 DoGs, 3/8 Gabors, 1/8 edges, the rest noise, labelled), the same starts (3 DoG and 4
Gabor starts per RF), bounds and analytic Jacobians. scipy runs its trust-region reflective
method ("trf", the one with bounds) from every start to convergence (ftol 1e-6, the LM's
stopping tolerance) and keeps the best start, as the LM keeps its best start. The whole
``rf_metrics`` pipeline runs once per solver, so quality is compared where it matters:

- time of the fits (wall, best of ``--repeats`` for the LM, one run for scipy);
- fit quality: R^2 of each RF under each solver (median and worst difference, the share of
  RFs where scipy's fit is better by more than 0.01);
- classification: agreement of rf_class between the solvers and the balanced accuracy of
  each against the synthetic labels.

The library keeps the solver that is faster at equal quality (docs/departures.md#analysis;
measurements in docs/performance.md#analysis).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import scipy
from common import cpu_name
from scipy.optimize import least_squares

from analysis import metrics
from analysis.metrics import fits
from analysis.synthetic import balanced_accuracy, synthetic_rfs


def scipy_multistart(model, data, starts, lower, upper, workers=None, **_):
    """``fits._fit_multistart`` with scipy.optimize.least_squares: every start of every
    problem to convergence, the best start per problem. Returns (params (n, k), RSS (n,))."""
    n, n_starts, k = starts.shape
    best_p, best_cost = np.empty((n, k)), np.full(n, np.inf)
    # least_squares needs a start strictly inside the bounds
    span = np.where(np.isfinite(upper - lower), upper - lower, 1.0)
    inner_lower = np.where(np.isfinite(lower), lower + 1e-6 * span, lower)
    inner_upper = np.where(np.isfinite(upper), upper - 1e-6 * span, upper)
    for i in range(n):
        target = data[i].astype(float)

        def residual(p, target=target):
            f, _ = model(p[None])
            return f[0].astype(float) - target

        def jacobian(p):
            _, jac = model(p[None])
            return jac[0].T.astype(float)

        for s in range(n_starts):
            x0 = np.clip(starts[i, s], inner_lower, inner_upper)
            fit = least_squares(residual, x0, jac=jacobian, bounds=(lower, upper),
                                method="trf", ftol=1e-6, xtol=1e-8, max_nfev=200)  # fmt: skip
            cost = 2.0 * fit.cost  # scipy's cost is half the sum of squares
            if cost < best_cost[i]:
                best_p[i], best_cost[i] = fit.x, cost
    return best_p, best_cost


def run(rfs, solver: str):
    """rf_metrics of ``rfs`` with the fits by ``solver``; returns (metrics, fit seconds)."""
    original = fits._fit_multistart
    elapsed = []

    def timed(*args, **kwargs):
        start = time.perf_counter()
        result = (scipy_multistart if solver == "scipy" else original)(*args, **kwargs)
        elapsed.append(time.perf_counter() - start)
        return result

    fits._fit_multistart = timed
    try:
        result = metrics.rf_metrics(rfs)
    finally:
        fits._fit_multistart = original
    return result, sum(elapsed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-rfs", type=int, default=960)
    parser.add_argument("--workers", type=int, default=1, help="LM threads (scipy: 1)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    n = args.n_rfs
    counts = dict(dog=n * 3 // 8, gabor=n * 3 // 8, edge=n // 8)
    counts["noise"] = n - sum(counts.values())
    rfs = synthetic_rfs(counts=counts, seed=2)
    truth = rfs["label"].values
    print(f"CPU: {cpu_name()} ({os.cpu_count()} logical cores), load {os.getloadavg()[0]:.1f}")
    print(f"python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}")
    print(f"{n} synthetic RFs {counts}; DoG 3 starts, Gabor 4 starts per RF\n")

    fits.FIT_WORKERS = args.workers
    lm_times = []
    for _ in range(args.repeats):
        lm, seconds = run(rfs, "lm")
        lm_times.append(seconds)
    sp, sp_seconds = run(rfs, "scipy")
    fits.FIT_WORKERS = None

    print(f"{'solver':<34} {'fit s':>8} {'ms/RF':>7} {'bal. acc.':>9}")
    for name, seconds, result in [
        (f"batched LM (float32, {args.workers} thread(s))", min(lm_times), lm),
        ("scipy least_squares trf (1 thread)", sp_seconds, sp),
    ]:
        accuracy = balanced_accuracy(truth, result["rf_class"].values)
        print(f"{name:<34} {seconds:8.2f} {1e3 * seconds / n:7.2f} {accuracy:9.3f}")
    print(f"\nscipy / LM time: {sp_seconds / min(lm_times):.1f}x")
    for model in ("dog", "gabor"):
        a, b = lm[f"{model}_r2"].values, sp[f"{model}_r2"].values
        ok = np.isfinite(a) & np.isfinite(b)
        diff = b[ok] - a[ok]
        print(f"{model} R^2: LM median {np.median(a[ok]):.4f}, scipy {np.median(b[ok]):.4f}; "
              f"scipy - LM: median {np.median(diff):+.4f}, min {diff.min():+.4f}, "
              f"max {diff.max():+.4f}; scipy better by > 0.01 on {np.mean(diff > 0.01):.1%}, "
              f"worse by > 0.01 on {np.mean(diff < -0.01):.1%}")  # fmt: skip
    agree = np.mean(lm["rf_class"].values == sp["rf_class"].values)
    print(f"rf_class agreement between the solvers: {agree:.1%}")


if __name__ == "__main__":
    main()
