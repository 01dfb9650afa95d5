"""Speed of the RF metrics: one model (32 RFs) and a 5-seed x 6-condition sweep (960 RFs).

Run: .venv/bin/python benchmarks/metrics_speed.py [--sweep-rfs 960] [--repeats 3]

Prints the wall time of the closed-form metrics and of the full ``rf_metrics`` (closed form
+ DoG and Gabor fits + classification), best of ``--repeats``, on synthetic RFs (a mix of
DoGs, Gabors, edges and noise at varied noise levels), with the fits on 1 thread and on all
cores, and the hardware it ran on. Targets: 32 RFs' closed-form metrics well under
a second; 960 RFs' full metrics under a minute on the CPU.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import scipy
from common import cpu_name

from analysis import metrics
from analysis.metrics import fits
from analysis.synthetic import synthetic_rfs


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep-rfs", type=int, default=960)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    def draw(n: int, seed: int):
        counts = dict(dog=n * 3 // 8, gabor=n * 3 // 8, edge=n // 8)
        counts["noise"] = n - sum(counts.values())
        return synthetic_rfs(counts=counts, seed=seed)

    model_rfs = draw(32, seed=1)
    sweep_rfs = draw(args.sweep_rfs, seed=2)
    cores = os.cpu_count() or 1
    try:
        load = " ".join(f"{value:.1f}" for value in os.getloadavg())
    except OSError:
        load = "n/a"
    print(f"CPU: {cpu_name()} ({cores} logical cores), load average {load}")
    print(f"python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}")
    print("fits: batched Levenberg-Marquardt in float32, threads over chunks of 64 RFs\n")

    rows = []
    rows.append(
        (
            "32 RFs",
            "closed form",
            "all",
            best_time(lambda: metrics.closed_form_metrics(model_rfs), args.repeats),
            32,
        )
    )
    for workers in (1, cores):
        fits.FIT_WORKERS = workers
        rows.append(
            (
                "32 RFs",
                "rf_metrics",
                str(workers),
                best_time(lambda: metrics.rf_metrics(model_rfs), args.repeats),
                32,
            )
        )
    n = sweep_rfs.sizes["channel"]
    rows.append(
        (
            f"{n} RFs",
            "closed form",
            "all",
            best_time(lambda: metrics.closed_form_metrics(sweep_rfs), args.repeats),
            n,
        )
    )
    sweep_times = {}
    for workers in (1, cores):
        fits.FIT_WORKERS = workers
        sweep_times[workers] = best_time(lambda: metrics.rf_metrics(sweep_rfs), 1)
        rows.append((f"{n} RFs", "rf_metrics", str(workers), sweep_times[workers], n))
    fits.FIT_WORKERS = None

    print(f"{'input':>9} {'metrics':>12} {'threads':>8} {'seconds':>9} {'ms/RF':>8}")
    for name, what, threads, seconds, count in rows:
        print(f"{name:>9} {what:>12} {threads:>8} {seconds:9.3f} {1e3 * seconds / count:8.2f}")
    if cores > 1:
        print(
            f"\nspeed-up of the fits from {cores} threads ({n} RFs): "
            f"{sweep_times[1] / sweep_times[cores]:.2f}x"
        )


if __name__ == "__main__":
    main()
