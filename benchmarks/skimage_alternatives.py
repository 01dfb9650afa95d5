"""Where scikit-image replaces hand-written image code, and at what speed.

Run: PYTHONPATH=. .venv/bin/python benchmarks/skimage_alternatives.py [--n-rfs 960]

Three candidates, each timed against the project's code on the same inputs (best of
``--repeats``), with the agreement of the results:

- RF montage (32 RFs of 32 x 32 px, drawn and saved as a 300-dpi PNG and a PDF): the
  project's ``plot_rf_montage``, one image assembled by ``skimage.util.montage``, against
  the hand-made grid of one matplotlib axes per RF that it replaced;
- the bar bank (a discrete Radon transform) of ``orientedness``: the project's precomputed
  projection matrix (one matrix product for all RFs) against ``skimage.transform.radon``
  per RF;
- RF centers (energy centroids): the project's batched numpy moments against
  ``skimage.measure.centroid`` per RF.
"""

from __future__ import annotations

import argparse
import io
import os
import time

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import skimage  # noqa: E402
from common import cpu_name  # noqa: E402
from scipy.ndimage import gaussian_filter  # noqa: E402
from skimage.measure import centroid  # noqa: E402
from skimage.transform import radon  # noqa: E402

from analysis.figures import plot_rf_montage  # noqa: E402
from analysis.metrics import closed_form  # noqa: E402
from analysis.synthetic import synthetic_rfs  # noqa: E402


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def axes_grid_montage(rfs) -> plt.Figure:
    """The replaced design: one matplotlib axes per RF (as the montage was before)."""
    images = rfs.values
    fig, axes = plt.subplots(4, 8, figsize=(85 / 25.4, 50 / 25.4), layout="constrained")
    for ax, image in zip(axes.flat, images, strict=False):
        limit = np.abs(image).max() or 1.0
        ax.imshow(image / limit, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_title(str(len(ax.figure.axes)), fontsize=6, pad=1)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(axes[0, 0].images[0], ax=axes, ticks=[-1, 0, 1])
    return fig


def save(fig) -> None:
    fig.savefig(io.BytesIO(), format="png", dpi=300)
    fig.savefig(io.BytesIO(), format="pdf")
    plt.close(fig)


def radon_orientedness(z: np.ndarray, n_orientations: int = 16) -> np.ndarray:
    """orientedness from skimage's Radon transform (same bar widths and rule as the project)."""
    theta = np.arange(n_orientations) * 180.0 / n_orientations
    out = np.empty(len(z))
    for i, rf in enumerate(z):
        profiles = radon(rf, theta=theta, circle=False, preserve_range=True).T  # (o, bins)
        cumulative = np.cumsum(np.pad(profiles, ((0, 0), (1, 0))), axis=1)
        best = np.zeros(n_orientations)
        for width in closed_form.BAR_WIDTHS:
            sums = cumulative[:, width:] - cumulative[:, :-width]
            best = np.maximum(best, np.abs(sums).max(axis=1))
        pref = best.argmax()
        r_pref, r_orth = best[pref], best[(pref + n_orientations // 2) % n_orientations]
        out[i] = (r_pref - r_orth) / (r_pref + r_orth) if r_pref + r_orth > 0 else 0.0
    return out


def skimage_centers(z: np.ndarray) -> np.ndarray:
    """Energy centroids per RF with skimage.measure.centroid (no re-centering window)."""
    energy = gaussian_filter(z, (0, 1, 1)) ** 2
    energy = np.clip(energy - np.median(energy, axis=(1, 2), keepdims=True), 0, None)
    return np.array([centroid(e) for e in energy])


def numpy_centroids(z: np.ndarray) -> np.ndarray:
    """The project's batched moments, first pass only (rf_centers with iterations=0)."""
    return np.stack(closed_form.rf_centers(z, iterations=0), axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-rfs", type=int, default=960)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    n = args.n_rfs
    counts = dict(dog=n * 3 // 8, gabor=n * 3 // 8, edge=n // 8)
    counts["noise"] = n - sum(counts.values())
    rfs = synthetic_rfs(counts=counts, seed=2)
    z, valid, _, _ = closed_form.standardize(rfs.values)
    z = z[valid]
    print(f"CPU: {cpu_name()} ({os.cpu_count()} logical cores), load {os.getloadavg()[0]:.1f}")
    print(f"scikit-image {skimage.__version__}, matplotlib {matplotlib.__version__}\n")

    montage_rfs = rfs.isel(channel=slice(0, 32))
    new = best_time(lambda: save(plot_rf_montage(montage_rfs)), args.repeats)
    old = best_time(lambda: save(axes_grid_montage(montage_rfs)), args.repeats)
    print(f"montage of 32 RFs, draw + PNG 300 dpi + PDF: skimage.util.montage {new:.3f} s, "
          f"one axes per RF {old:.3f} s ({old / new:.1f}x)")  # fmt: skip

    ours = best_time(lambda: closed_form.bar_orientedness(z), args.repeats)
    theirs = best_time(lambda: radon_orientedness(z), 1)
    ours_values = closed_form.bar_orientedness(z)[0]
    correlation = np.corrcoef(ours_values, radon_orientedness(z))[0, 1]
    print(f"bar bank / Radon of {len(z)} RFs: projection matrix {ours:.3f} s, "
          f"skimage.transform.radon {theirs:.3f} s ({theirs / ours:.0f}x slower); "
          f"orientedness correlation {correlation:.3f}")  # fmt: skip

    ours = best_time(lambda: numpy_centroids(z), args.repeats)
    theirs = best_time(lambda: skimage_centers(z), args.repeats)
    gap = np.abs(numpy_centroids(z) - skimage_centers(z)).max()
    print(f"energy centroids of {len(z)} RFs: batched numpy {ours:.4f} s, "
          f"skimage.measure.centroid {theirs:.4f} s ({theirs / ours:.1f}x); "
          f"largest difference {gap:.2e} px")  # fmt: skip


if __name__ == "__main__":
    main()
