"""Montages of receptive fields: one panel per channel, drawn with matplotlib.

Each panel has its own symmetric color scale (zero is white in the diverging map), so the
shape and polarity of every RF are visible whatever its magnitude; ON regions are red, OFF
regions blue. Units flagged unresponsive are drawn as an empty gray panel with a label
instead of being left out. Used by ``retina-raf rfs`` and by the notebooks.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from retina_raf.io import atomic_path


def plot_montage(
    rfs: xr.DataArray,
    *,
    ncols: int | None = None,
    panel_inches: float = 0.9,
    cmap: str = "RdBu_r",
    title: str | None = None,
) -> Figure:
    """Draw RFs (dims channel, y, x) as a grid of panels; returns a matplotlib Figure.

    ``ncols`` defaults to a near-square grid. Panels are titled by channel index; a channel
    whose ``responsive`` coordinate is False is shown as a gray panel marked "unresponsive".
    """
    extra = set(rfs.dims) - {"channel", "y", "x"}
    if extra or "channel" not in rfs.dims:
        raise ValueError(f"plot_montage needs dims (channel, y, x), got {rfs.dims}")
    rfs = rfs.transpose("channel", "y", "x")
    n = rfs.sizes["channel"]
    ncols = ncols or max(1, math.ceil(math.sqrt(n)))
    nrows = max(1, math.ceil(n / ncols))
    title_inches = 0.2 * (title.count("\n") + 1) + 0.1 if title else 0.0
    width = max(ncols * panel_inches, 2.6 if title else 0.0)  # room for the title
    fig = Figure(figsize=(width, nrows * panel_inches + title_inches + 0.1))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    responsive = rfs["responsive"].values if "responsive" in rfs.coords else np.ones(n, dtype=bool)
    for index, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if index >= n:
            ax.set_axis_off()
            continue
        image = rfs.isel(channel=index).values
        channel = rfs["channel"].values[index]
        ax.set_title(f"{channel}", fontsize=7, pad=2)
        if not responsive[index]:
            ax.set_facecolor("0.85")
            ax.text(
                0.5,
                0.5,
                "unresponsive",
                ha="center",
                va="center",
                fontsize=5,
                transform=ax.transAxes,
            )
            continue
        limit = float(np.nanmax(np.abs(image))) or 1.0
        ax.imshow(image, cmap=cmap, vmin=-limit, vmax=limit, interpolation="nearest")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(pad=0.3)
    return fig


def save_montage(rfs: xr.DataArray, path: str | os.PathLike, *, dpi: int = 150, **kwargs) -> Path:
    """Draw :func:`plot_montage` and write it as a PNG, atomically; returns the path."""
    fig = plot_montage(rfs, **kwargs)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return Path(path)


def montage_title(rfs: xr.DataArray) -> str:
    """A title from an RF array's layer and method, and the run identity on a second line."""
    title = f"{rfs.attrs.get('layer', '?')} ({rfs.attrs.get('method', '?')})"
    identity = [
        f"{key}={rfs[key].item()}"
        for key in ("preset", "rank", "n_bn", "seed")
        if key in rfs.coords and rfs[key].ndim == 0
    ]
    return title + ("\n" + "  ".join(identity) if identity else "")
