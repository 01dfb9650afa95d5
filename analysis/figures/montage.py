"""RF montages: the one function that draws a grid of receptive fields (docs/design.md#reports).

:func:`plot_rf_montage` is used by ``retina-raf rfs`` (:func:`save_rf_montage`), by the
paper panels (``retina-raf figures``) and by the ``rf_atlas`` notebook
(:func:`plot_run_rfs`). Each RF is scaled to its own max |RF| on a diverging map symmetric
about 0 (red ON, blue OFF; colorbar -1, 0, +1) and cropped to the part of the input its
unit can see (the ``support`` attribute that ``analysis.rf`` records: 17 x 17 pixels for
``retina_2`` with 9 x 9 kernels), so that the RF is not a small blob in a wide empty frame.
Every tile carries its channel index and, when known, its class; a bar gives the pixel
scale. The tiles are assembled into one image by ``skimage.util.montage`` (one image and a
few text labels draw several times faster than one axes per RF).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from matplotlib.patches import Rectangle
from skimage.util import montage as skimage_montage

from analysis.figures.style import (
    CLASS_ABBREVIATIONS,
    MM_PER_INCH,
    class_color,
    new_figure,
    paper_style,
    width_mm,
)
from analysis.per_run import condition_sort_key, require, run_coord
from retina_raf.errors import ConfigError, DataError
from retina_raf.io import atomic_path

UNRESPONSIVE_GRAY = "#d9d9d9"


def crop_box(rfs: xr.DataArray, support: Sequence[int] | None = None) -> tuple[slice, slice]:
    """Row and column slices of the RF grid to show: ``support`` ([y0, y1, x0, x1],
    half-open), else the ``support`` attribute of ``rfs``, else the whole grid."""
    box = support if support is not None else rfs.attrs.get("support")
    height, width = rfs.shape[-2:]
    if box is None:
        return slice(0, height), slice(0, width)
    y0, y1, x0, x1 = (int(v) for v in np.asarray(box).ravel())
    if not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width):
        raise DataError(f"RF support {list(box)} does not fit the {height} x {width} grid")
    return slice(y0, y1), slice(x0, x1)


def montage_tiles(
    rfs: xr.DataArray, support: Sequence[int] | None = None, shared_scale: bool = False
) -> np.ndarray:
    """The tiles of a montage: RFs (unit, y, x) cropped to their support and scaled to
    [-1, 1] (each by its own max |RF|, or all by one with ``shared_scale``); an RF without
    any nonzero finite value (an unresponsive unit) is all NaN. Returns (unit, h, w)."""
    rows, cols = crop_box(rfs, support)
    images = np.asarray(rfs.values, dtype=float)[:, rows, cols]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        amplitude = np.nanmax(np.abs(images), axis=(1, 2))
    usable = np.isfinite(amplitude) & (amplitude > 0)
    scale = np.where(usable, amplitude, np.nan)
    if shared_scale and usable.any():
        scale = np.where(usable, np.nanmax(amplitude[usable]), np.nan)
    return images / scale[:, None, None]


def plot_rf_montage(
    rfs: xr.DataArray,
    classes: Sequence[str] | xr.DataArray | None = None,
    ncols: int | None = None,
    width: str | float = "single",
    title: str | None = None,
    shared_scale: bool = False,
    support: Sequence[int] | None = None,
    scale_bar_px: int = 5,
):
    """A grid of receptive fields on a diverging colormap symmetric about 0 (red ON, blue OFF).

    Args:
        rfs: DataArray ``(unit, y, x)``; the first dim enumerates RFs (usually ``channel``,
            whose values label the tiles). A boolean ``responsive`` coordinate marks silent
            units.
        classes: one ``rf_class`` per RF; each tile then shows its class (CS
            center-surround, OR oriented, U unclassified, - unresponsive) in its color.
        ncols: RFs per row (default: up to 8).
        width: journal width (``"single"``, ``"double"``, mm).
        title: figure title, e.g. the condition and seed.
        shared_scale: one color scale for all RFs; by default each RF is scaled to its own
            max |RF|, since the shape, not the gain, is what the montage compares.
        support: crop box ``[y0, y1, x0, x1]``; default: ``rfs.attrs["support"]`` (written
            by ``analysis.rf``), else the whole grid.
        scale_bar_px: length of the pixel scale bar (input pixels).

    Unresponsive units (all-NaN or all-zero RFs, or ``responsive`` False) are light gray
    tiles. Returns the figure.
    """
    if not isinstance(rfs, xr.DataArray) or rfs.ndim != 3:
        raise DataError("plot_rf_montage needs a 3-d DataArray (unit, y, x) of RFs")
    n_rfs = rfs.sizes[rfs.dims[0]]
    if n_rfs == 0:
        raise DataError("plot_rf_montage got no RFs")
    if classes is not None:
        classes = [str(c) for c in np.asarray(classes).ravel()]
        if len(classes) != n_rfs:
            raise DataError(f"{len(classes)} classes for {n_rfs} RFs")
    if isinstance(scale_bar_px, bool) or not isinstance(scale_bar_px, int) or scale_bar_px < 1:
        raise ConfigError(f"scale_bar_px must be a positive integer, not {scale_bar_px!r}")
    tiles = montage_tiles(rfs, support, shared_scale)
    silent = ~np.isfinite(tiles).any(axis=(1, 2))
    if "responsive" in rfs.coords:
        silent |= ~rfs["responsive"].values.astype(bool)
    if classes is not None:
        silent |= np.array(classes) == "unresponsive"
    tiles[silent] = np.nan
    labels = [str(v) for v in rfs[rfs.dims[0]].values]

    ncols = int(ncols) if ncols else min(n_rfs, 8)
    nrows = int(np.ceil(n_rfs / ncols))
    tile_h, tile_w = tiles.shape[1:]
    # the gap above each tile holds its labels: about a third of a tile
    pad = max(2, int(np.ceil(0.3 * max(tile_h, tile_w))))
    image = skimage_montage(
        tiles, fill=np.nan, grid_shape=(nrows, ncols), padding_width=pad, rescale_intensity=False
    )
    colorbar_mm, title_mm = 14.0, (5.0 if title else 0.0)
    footer_mm = 4.5 if classes is not None else 3.0
    # tiles keep the size they have in a full row of 8, so that a run with few RFs (a
    # bottleneck) does not blow one RF up to the journal width
    cell_mm = (width_mm(width) - colorbar_mm) / max(ncols, 8)
    image_width_mm = cell_mm * ncols * image.shape[1] / (image.shape[1] - pad)
    # a narrow montage (one RF) must still hold its title: about 0.6 em per character
    with paper_style():
        title_pt = matplotlib.font_manager.FontProperties(
            size=matplotlib.rcParams["figure.titlesize"]
        ).get_size_in_points()
    longest = max((len(line) for line in (title or "").splitlines()), default=0)
    title_width_mm = 0.6 * title_pt * 25.4 / 72 * longest + 4.0
    fig_width = max(image_width_mm + colorbar_mm, title_width_mm if title else 30.0, 30.0)
    legend_lines = []
    if classes is not None:  # one line if it fits the figure (6 pt: ~1.3 mm a character)
        items = [f"{CLASS_ABBREVIATIONS[c]} {c}" for c in CLASS_ABBREVIATIONS if c in set(classes)]
        one_line = "   ".join(items)
        fits = 1.3 * len(one_line) + 4.0 <= fig_width
        legend_lines = [one_line] if fits else ["   ".join(items[i:i + 2])
                                                 for i in range(0, len(items), 2)]  # fmt: skip
        footer_mm += 2.6 * (len(legend_lines) - 1)
    image_mm = image_width_mm * image.shape[0] / image.shape[1]
    height = image_mm + title_mm + footer_mm + 2.0
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="white")
    with paper_style():
        fig, ax = new_figure(fig_width, height_mm=height)
        fig.get_layout_engine().set(w_pad=0.5 / MM_PER_INCH, h_pad=0.5 / MM_PER_INCH)
        shown = ax.imshow(image, cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
        ax.set_axis_off()
        px_mm = image_width_mm / image.shape[1]  # mm per image pixel
        label_size = float(np.clip(2.2 * pad * px_mm, 4.5, 6.5))  # points, fits the gap
        for index in range(n_rfs):
            row, col = divmod(index, ncols)
            top = pad + row * (tile_h + pad) - 0.5
            left = pad + col * (tile_w + pad) - 0.5
            frame = Rectangle(
                (left, top), tile_w, tile_h, fill=bool(silent[index]),
                facecolor=UNRESPONSIVE_GRAY, edgecolor="0.6", linewidth=0.3,
            )  # fmt: skip
            ax.add_patch(frame)
            ax.text(left, top - 0.4, labels[index], ha="left", va="bottom",
                    fontsize=label_size, color="0.2")  # fmt: skip
            if classes is not None:
                rf_class = classes[index]
                ax.text(left + tile_w, top - 0.4, CLASS_ABBREVIATIONS.get(rf_class, rf_class),
                        ha="right", va="bottom", fontsize=label_size, fontweight="bold",
                        color=class_color(rf_class))  # fmt: skip
        # pixel scale bar in the bottom margin, under the first tile
        bar_y = image.shape[0] - pad / 2 - 0.5
        ax.plot([pad - 0.5, pad - 0.5 + scale_bar_px], [bar_y, bar_y], color="0.1",
                lw=1.2, solid_capstyle="butt", clip_on=False)  # fmt: skip
        ax.text(pad - 0.5 + scale_bar_px + 1, bar_y, f"{scale_bar_px} px", ha="left",
                va="center", fontsize=label_size, color="0.1")  # fmt: skip
        colorbar = fig.colorbar(
            shown,
            ax=ax,
            shrink=0.8 if nrows == 1 else 0.6,
            aspect=15,
            pad=0.02,
            ticks=[-1, 0, 1],
            panchor=False,  # a narrow montage (one RF) stays centred under its title
        )
        colorbar.ax.set_yticklabels(["\u22121", "0", "+1"])
        colorbar.outline.set_linewidth(0.4)
        colorbar.ax.tick_params(width=0.4, length=1.5, labelsize=6)
        colorbar.set_label("RF / max |RF|" if not shared_scale else "RF / max |RF| (all)",
                           fontsize=6)  # fmt: skip
        if title:
            fig.suptitle(title)
        if legend_lines:
            fig.supxlabel("\n".join(legend_lines), fontsize=6, color="0.25")
    return fig


def montage_title(rfs: xr.DataArray) -> str:
    """A title from an RF array's layer and method, and the run identity on a second line."""
    title = f"{rfs.attrs.get('layer', '?')} ({rfs.attrs.get('method', '?')})"
    identity = [
        f"{key}={rfs[key].item()}"
        for key in ("preset", "rank", "n_bn", "seed")
        if key in rfs.coords and rfs[key].ndim == 0
    ]
    return title + ("\n" + "  ".join(identity) if identity else "")


def save_rf_montage(
    rfs: xr.DataArray, path: str | os.PathLike, *, dpi: int = 300, **montage_kw
) -> Path:
    """Draw :func:`plot_rf_montage` and write it as a PNG, atomically; returns the path.

    The default title is :func:`montage_title`; ``montage_kw`` go to plot_rf_montage.
    """
    montage_kw.setdefault("title", montage_title(rfs))
    fig = plot_rf_montage(rfs, **montage_kw)
    try:
        with paper_style(), atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return Path(path)


def save_readout_montages(readout: xr.Dataset, folder: str | os.PathLike) -> list[Path]:
    """One montage per run of a feedback readout dataset
    (:func:`analysis.feedback_readout.readout_dataset`): the RFs of the readout's units with
    their classes, cropped to what they see, as ``<folder>/readout_<run id>.png``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    layer = readout.attrs.get("readout_of", "?")
    written = []
    for run in range(readout.sizes["run"]):
        one = readout.isel(run=run)
        present = one["present"].values.astype(bool)
        rfs = (
            one["rf"]
            .isel(channel=present)
            .assign_coords(responsive=("channel", one["responsive"].values[present].astype(bool)))
        )
        title = (f"{one['preset'].item()} seed {int(one['seed'])}, epoch "
                 f"{int(one['readout_epoch'])}\nreadout of {layer}'s feedback")  # fmt: skip
        support = readout.attrs.get("rf_support")
        path = folder / f"readout_{slug(one['run_id'].item())}.png"
        written.append(save_rf_montage(rfs, path, classes=one["rf_class"].values[present],
                                       title=title, support=support))  # fmt: skip
    return written


# ---------------------------------------------------------------------- results datasets
def _check_max_rfs(max_rfs) -> None:
    if max_rfs is not None and (
        isinstance(max_rfs, bool) or not isinstance(max_rfs, int) or max_rfs < 1
    ):
        raise ConfigError(f"max_rfs must be a positive integer or None, not {max_rfs!r}")


def slug(text: str) -> str:
    """A panel-name-safe version of ``text``."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", str(text)).strip("_") or "unnamed"


def runs_in_condition_order(results: xr.Dataset) -> list[int]:
    """Positions of the runs along ``run``, by condition (the panels' order), then seed."""
    keys = [
        (condition_sort_key(rule, rank, n_bn, preset), int(seed))
        for preset, rule, rank, n_bn, seed in zip(
            *(run_coord(results, c) for c in ("preset", "rule", "rank", "n_bn", "seed")),
            strict=True,
        )
    ]
    return sorted(range(len(keys)), key=keys.__getitem__)


def rf_atlas_panels(
    results: xr.Dataset, presets: Sequence[str] | str | None = None, max_rfs: int | None = None
) -> list[tuple[int, str]]:
    """The runs of an RF atlas, in condition order then seed: ``[(run position, panel
    name)]``, the name ``rf_montage_<preset>_seed<seed>``.

    Args:
        presets: conditions to include (one name or a list); None: all.
        max_rfs: checked here (positive integer or None) so that a bad value fails early.

    Raises:
        ConfigError: a preset the results do not hold, or a bad ``max_rfs``.
    """
    _check_max_rfs(max_rfs)
    require(results, ["rf"], "an RF atlas")
    available = run_coord(results, "preset").astype(str)
    seeds = run_coord(results, "seed")
    wanted = [presets] if isinstance(presets, str) else presets
    order = runs_in_condition_order(results)
    if wanted is not None:
        unknown = sorted({str(p) for p in wanted} - set(available))
        if unknown:
            held = list(dict.fromkeys(available[i] for i in order))
            raise ConfigError(
                f"preset(s) {unknown} not in the results; they hold: {', '.join(held)}"
            )
    runs = [i for i in order if wanted is None or available[i] in wanted]
    return [(i, f"rf_montage_{slug(available[i])}_seed{int(seeds[i])}") for i in runs]


def paper_montage_runs(results: xr.Dataset) -> dict[int, str]:
    """The RF montages among the paper panels: ``{run position: panel name}``, the lowest
    seed of each condition, named ``rf_montage_<preset>``; empty without ``rf``.

    The ``rf_atlas`` report shows these runs' montages and leaves their files to
    ``retina-raf figures``, so that each montage is written once.
    """
    if "rf" not in results:
        return {}
    presets = run_coord(results, "preset")
    montages = {}
    for run in runs_in_condition_order(results):  # by condition, then seed
        name = f"rf_montage_{slug(presets[run])}"
        if name not in montages.values():
            montages[run] = name
    return montages


def run_support(results: xr.Dataset, run: int) -> list[int] | None:
    """The crop box of a run's RFs: the ``rf_support`` attribute that ``analysis.results``
    copies from ``analysis.rf`` (and derives for files written before it, when opening them),
    else None (the whole grid). One box serves every run of a file."""
    if "rf_support" in results.attrs:
        return [int(v) for v in np.asarray(results.attrs["rf_support"]).ravel()]
    return None


def plot_run_rfs(results: xr.Dataset, run: int, max_rfs: int | None = None, **montage_kw):
    """The RF montage of one run of a results dataset, each RF labelled with its class.

    Args:
        results: results dataset (``rf``; ``rf_class`` and ``present`` where available).
        run: position of the run along ``run``.
        max_rfs: show at most this many RFs (the first channels); None: all.
        montage_kw: passed to :func:`plot_rf_montage` (default title: "preset, seed s",
            with ", epoch e" for RFs taken from a trajectory; default crop:
            :func:`run_support`).

    The padding channels of a bottleneck run are left out. Returns the figure.
    """
    require(results, ["rf"], "an RF montage")
    _check_max_rfs(max_rfs)
    selected = results.isel(run=run)
    preset, seed = str(selected["preset"].values), int(selected["seed"].values)
    rfs = selected["rf"].transpose("channel", "y", "x")
    # a bottleneck run has fewer real channels; the rest is NaN padding
    if "present" in selected:
        real = selected["present"].values.astype(bool)
    else:
        real = np.isfinite(rfs.values).any(axis=(1, 2))
    if not real.any():
        raise DataError(f"run {run} ({preset}) has no finite RF")
    channels = np.flatnonzero(real)[:max_rfs]
    classes = selected["rf_class"].values[channels] if "rf_class" in results else None
    title = f"{preset}, seed {seed}"
    if "rf_epoch" in selected.coords:  # RFs of a run still training: say when
        title += f", epoch {int(selected['rf_epoch'])}"
    montage_kw.setdefault("title", title)
    montage_kw.setdefault("support", run_support(results, run))
    rfs = rfs.isel(channel=channels).reset_coords(drop=True)
    return plot_rf_montage(rfs, classes=classes, **montage_kw)
