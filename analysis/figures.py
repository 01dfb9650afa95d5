"""Figure panels for papers (DESIGN.md section 12).

One style for every panel of the project: :func:`paper_style` (7-8 pt sans-serif text kept
editable in PDF/SVG, thin spines), one palette with a fixed color per condition
(:func:`condition_color`), journal widths (:func:`new_figure`: 85 mm single column, 180 mm
double), and :func:`export_panel`, which writes a panel as PDF, SVG and PNG atomically.

The plotting functions read the results dataset of ``analysis.results`` (DESIGN.md section 11):
dims ``run, channel, y, x, epoch`` (``layer`` for alignment), coordinates ``preset, rank,
n_bn, seed, rule`` on ``run``, per-unit metrics on ``(run, channel)`` and per-epoch history
on ``(run, epoch)``. Each seed is summarized by the mean over its *responsive* units with a
finite value; the plots show every seed as a point plus the mean and standard deviation over
seeds.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import xarray as xr
from cycler import cycler
from matplotlib.ticker import MaxNLocator

from retina_raf import __version__
from retina_raf.errors import ConfigError, DataError
from retina_raf.io import atomic_path

MM_PER_INCH = 25.4
JOURNAL_WIDTHS_MM = {"single": 85.0, "double": 180.0}
PANEL_FORMATS = ("pdf", "svg", "png")
FULL_WIDTH = 32  # retina channels without bottleneck = full feedback rank (DESIGN.md section 5)


class PanelSkipped(UserWarning):
    """A paper panel was not drawn because the results lack its data."""


# ---------------------------------------------------------------------------------- palette
# seaborn's colorblind palette, shared by the whole project; every condition keeps its color
# in every panel and notebook so that readers can match them across figures.
PALETTE = sns.color_palette("colorblind", 10).as_hex()
CONDITION_COLORS = {
    "bp": PALETTE[7],  # gray: the backprop reference
    "bp-bottleneck-4": PALETTE[1],  # orange, vermillion, tan: feedforward bottlenecks
    "bp-bottleneck-2": PALETTE[3],
    "bp-bottleneck-1": PALETTE[5],
    "raf-r32": PALETTE[2],  # green, light blue, blue: feedback ranks (low rank = dark)
    "raf-r4": PALETTE[9],
    "raf-r2": PALETTE[0],
    "draf-bottleneck-4": PALETTE[4],  # purple: bottleneck with direct full-rank feedback
}
CONDITION_ORDER = list(CONDITION_COLORS)
CLASS_COLORS = {  # away from the red/blue of the RF colormap
    "center-surround": PALETTE[2],
    "oriented": PALETTE[4],
    "unclassified": PALETTE[7],
    "unresponsive": "#bbbbbb",
}
CLASS_ABBREVIATIONS = {
    "center-surround": "CS",
    "oriented": "OR",
    "unclassified": "U",
    "unresponsive": "\u2013",
}
# Other condition names draw from a larger palette by a stable hash of the name, so that a
# new preset also keeps one color across processes and panels.
_EXTRA_COLORS = sns.husl_palette(24, l=0.55, s=0.8).as_hex()

METRIC_LABELS = {
    "osi": "Orientation selectivity (OSI)",
    "symmetry": "Radial symmetry",
    "orientedness": "Orientedness",
    "dog_r2": "DoG fit R\u00b2",
    "gabor_r2": "Gabor fit R\u00b2",
    "polarity": "Polarity (ON = +1)",
    "surround_strength": "Surround strength",
    "rf_size": "RF size (px)",
    "fraction_center_surround": "Fraction center-surround",
    "train_loss": "Train loss",
    "test_loss": "Test loss",
    "train_acc": "Train accuracy",
    "test_acc": "Test accuracy",
}
UNIT_INTERVAL_METRICS = {"osi", "symmetry", "fraction_center_surround", "train_acc", "test_acc"}


def condition_color(preset: str) -> str:
    """The fixed color (hex string) of a condition/preset name, the same in every panel."""
    if preset in CONDITION_COLORS:
        return CONDITION_COLORS[preset]
    digest = hashlib.md5(str(preset).encode()).digest()
    return _EXTRA_COLORS[digest[0] % len(_EXTRA_COLORS)]


def class_color(rf_class: str) -> str:
    """The fixed color of an RF class (``center-surround``, ``oriented``, ...)."""
    return CLASS_COLORS.get(rf_class, "#000000")


# ------------------------------------------------------------------------------------ style
PAPER_RC = {
    # editable text: TrueType (Type 42) in PDF/PS, real <text> elements in SVG
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "svg.fonttype": "none",
    "svg.hashsalt": "retina-raf",  # stable element ids -> SVGs diff cleanly between runs
    "font.family": "sans-serif",
    "font.sans-serif": ["Arial", "Helvetica", "Liberation Sans", "DejaVu Sans"],
    "mathtext.default": "regular",  # sub/superscripts in the text font, not Computer Modern
    "mathtext.fontset": "custom",
    "mathtext.rm": "sans",
    "mathtext.it": "sans:italic",
    "mathtext.bf": "sans:bold",
    "mathtext.cal": "sans:italic",  # the default 'cursive' is not installed on most machines
    "font.size": 7,
    "axes.titlesize": 8,
    "axes.labelsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.title_fontsize": 7,
    "figure.titlesize": 8,
    "axes.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlepad": 3.0,
    "axes.labelpad": 2.0,
    "axes.prop_cycle": cycler(color=PALETTE),
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "xtick.minor.width": 0.4,
    "ytick.minor.width": 0.4,
    "xtick.major.size": 2.5,
    "ytick.major.size": 2.5,
    "xtick.minor.size": 1.5,
    "ytick.minor.size": 1.5,
    "xtick.major.pad": 2.0,
    "ytick.major.pad": 2.0,
    "lines.linewidth": 1.0,
    "lines.markersize": 3.0,
    "patch.linewidth": 0.6,
    "errorbar.capsize": 0.0,
    "legend.frameon": False,
    "legend.handlelength": 1.5,
    "legend.borderaxespad": 0.3,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
    "figure.dpi": 150,
    "savefig.dpi": 300,
    "image.interpolation": "nearest",
}


@contextlib.contextmanager
def paper_style() -> Iterator[None]:
    """Context manager: matplotlib rcParams of the paper style inside the ``with`` block.

    Artists take most of their style (fonts, line widths) when created, so create the figure
    inside the block; :func:`export_panel` applies it again when saving (font embedding).
    """
    with matplotlib.rc_context(PAPER_RC):
        yield


def use_paper_style() -> None:
    """Apply the paper style globally (e.g. at the top of a notebook)."""
    matplotlib.rcParams.update(PAPER_RC)


def width_mm(width: str | float) -> float:
    """Journal width in mm: ``"single"`` (85), ``"double"`` (180) or a number of mm."""
    if isinstance(width, str):
        if width not in JOURNAL_WIDTHS_MM:
            raise ConfigError(f"figure width {width!r} is not 'single', 'double' or a number of mm")
        return JOURNAL_WIDTHS_MM[width]
    if not np.isfinite(width) or not 10.0 <= float(width) <= 500.0:
        raise ConfigError(f"figure width {width} mm is outside 10-500 mm")
    return float(width)


def new_figure(
    width: str | float = "single",
    height_mm: float | None = None,
    nrows: int = 1,
    ncols: int = 1,
    **subplots_kw,
):
    """A paper-style figure at a journal width with a grid of axes.

    Args:
        width: ``"single"`` (85 mm), ``"double"`` (180 mm) or a width in mm.
        height_mm: figure height in mm; default 55 mm per row of axes.
        nrows, ncols, subplots_kw: passed to ``Figure.subplots`` (``squeeze`` defaults True).

    Returns:
        ``(fig, axes)``; the layout is matplotlib's constrained layout, so the figure keeps
        its exact size when exported (the PNG is ``width_mm / 25.4 * dpi`` pixels wide).
    """
    fig_width = width_mm(width)
    fig_height = float(height_mm) if height_mm is not None else min(55.0 * nrows, 230.0)
    if not np.isfinite(fig_height) or fig_height <= 0:
        raise ConfigError(f"figure height {height_mm} mm must be positive")
    with paper_style():
        fig = plt.figure(
            figsize=(fig_width / MM_PER_INCH, fig_height / MM_PER_INCH), layout="constrained"
        )
        fig.get_layout_engine().set(w_pad=1.5 / MM_PER_INCH, h_pad=1.5 / MM_PER_INCH)
        axes = fig.subplots(nrows, ncols, **subplots_kw)
    return fig, axes


_PANEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def export_panel(
    fig,
    name: str,
    out_dir: str | Path = "reports/figures",
    dpi: int = 300,
    formats: Sequence[str] = PANEL_FORMATS,
) -> dict[str, Path]:
    """Write one panel as ``<out_dir>/<name>.pdf``, ``.svg`` and ``.png``, each atomically.

    PDF and SVG are vector files with editable text (TrueType fonts, ``<text>`` elements);
    the PNG is rendered at ``dpi`` (dots per inch). The figure keeps its size (no tight
    bounding box), so panels line up at their journal width. Returns ``{format: path}``.
    """
    if not isinstance(name, str) or not _PANEL_NAME.match(name):
        raise ConfigError(
            f"panel name {name!r} must be a file name (letters, digits, '_', '-', '.', '+')"
        )
    unknown = [fmt for fmt in formats if fmt not in PANEL_FORMATS]
    if unknown:
        raise ConfigError(f"unknown panel format(s) {unknown}; choose from {PANEL_FORMATS}")
    if int(dpi) < 50:
        raise ConfigError(f"dpi {dpi} is too low for a figure panel (at least 50)")
    # fixed metadata (no creation date) so that re-exporting an unchanged panel gives the
    # same vector file
    metadata = {
        "pdf": {"Creator": f"retina-raf {__version__}", "CreationDate": None},
        "svg": {"Creator": f"retina-raf {__version__}", "Date": None},
        "png": {"Software": f"retina-raf {__version__}"},
    }
    paths = {}
    with paper_style():
        for fmt in formats:
            path = Path(out_dir) / f"{name}.{fmt}"
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=fmt, dpi=dpi, metadata=metadata[fmt])
            paths[fmt] = path
    return paths


# ------------------------------------------------------------------------ results helpers
def _require(results: xr.Dataset, names: Sequence[str], what: str) -> None:
    missing = [n for n in names if n not in results.variables]
    if missing:
        raise DataError(f"{what} needs {missing}, which the results dataset lacks")


def responsive_units(results: xr.Dataset) -> xr.DataArray:
    """Mask (run, channel): units that exist (``present``), are ``responsive`` and not
    classified ``unresponsive``."""
    if "run" not in results.dims or "channel" not in results.dims:
        raise DataError("the results dataset has no (run, channel) dimensions")
    mask = xr.DataArray(
        np.ones((results.sizes["run"], results.sizes["channel"]), bool), dims=("run", "channel")
    )
    if "present" in results:  # False on the padding of bottleneck runs
        mask = mask & results["present"].astype(bool)
    if "responsive" in results:
        mask = mask & results["responsive"].astype(bool)
    if "rf_class" in results:
        mask = mask & (results["rf_class"] != "unresponsive")
    return mask


def per_run_metric(results: xr.Dataset, metric: str) -> xr.DataArray:
    """One value per run: the mean of a per-unit metric over responsive units (dims: run).

    ``metric`` is a (run, channel) variable (``osi``, ``symmetry``, ...) or
    ``"fraction_center_surround"``: the fraction of responsive units whose ``rf_class`` is
    ``center-surround``. NaN units are skipped; a run without any valid unit gives NaN.
    """
    if metric == "fraction_center_surround":
        _require(results, ["rf_class"], "the fraction of center-surround RFs")
        mask = responsive_units(results)
        n_units = mask.sum("channel")
        n_center_surround = ((results["rf_class"] == "center-surround") & mask).sum("channel")
        value = (n_center_surround / n_units.where(n_units > 0)).astype(float)
        return value.rename(metric)
    if metric not in results.data_vars:
        per_unit = [n for n, v in results.data_vars.items() if set(v.dims) == {"run", "channel"}]
        raise DataError(
            f"no metric {metric!r} in the results dataset; per-unit variables: {per_unit}"
        )
    values = results[metric]
    if set(values.dims) != {"run", "channel"} or not np.issubdtype(values.dtype, np.number):
        raise DataError(f"{metric!r} is not a numeric per-unit (run, channel) variable")
    values = values.where(responsive_units(results))
    with warnings.catch_warnings():  # a run without valid units: NaN, on purpose
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return values.mean("channel", skipna=True).rename(metric)


def _run_coord(results: xr.Dataset, name: str) -> np.ndarray:
    if name not in results.coords and name not in results.variables:
        raise DataError(f"the results dataset has no {name!r} coordinate on 'run'")
    return np.asarray(results[name].values)


def _preset_sort_key(preset: str) -> tuple:
    return (CONDITION_ORDER.index(preset), "") if preset in CONDITION_ORDER else (99, preset)


def _rule_label(rule: str) -> str:
    return {"bp": "BP", "raf": "RAF", "draf": "dRAF"}.get(rule, str(rule))


def _rank_groups(results: xr.Dataset, full_width: int) -> list[dict]:
    """Groups of runs for a feedback-rank axis: runs without feedforward bottleneck.

    One group per (rule, rank): RAF ranks first (ascending), then other rules (dRAF), then
    the BP reference (full-rank error).
    """
    rank, n_bn, rule = (_run_coord(results, c) for c in ("rank", "n_bn", "rule"))
    keep = n_bn == full_width
    rule_order = {"raf": 0, "draf": 1, "bp": 3}
    keys = sorted(
        {(str(r), int(k)) for r, k, m in zip(rule, rank, keep, strict=True) if m},
        key=lambda rk: (rule_order.get(rk[0], 2), rk[0], rk[1]),
    )
    return [
        {
            "label": str(rank_value),
            "family": _rule_label(rule_name),
            "runs": np.flatnonzero(keep & (rule == rule_name) & (rank == rank_value)),
        }
        for rule_name, rank_value in keys
    ]


def _nbn_groups(results: xr.Dataset, compare_draf: bool) -> list[dict]:
    """Groups of runs for a bottleneck axis: BP runs by N_bn, then dRAF runs by N_bn."""
    n_bn, rule = _run_coord(results, "n_bn"), _run_coord(results, "rule")
    rules = ["bp", "draf"] if compare_draf else ["bp"]
    return [
        {
            "label": str(width),
            "family": _rule_label(rule_name),
            "runs": np.flatnonzero((rule == rule_name) & (n_bn == width)),
        }
        for rule_name in rules
        for width in sorted({int(w) for w in n_bn[rule == rule_name]})
    ]


def _strip_plot(ax, groups: list[dict], values: np.ndarray, presets: np.ndarray) -> int:
    """Every run a point (colored by its preset), mean and s.d. over runs per group.

    Groups of one learning rule share a header above the axes (``RAF``, ``BP``, ``dRAF``)
    and a dotted line separates rules. Returns the number of groups drawn (groups whose
    runs are all NaN are left out).
    """
    drawn = []
    for group in groups:
        runs = group["runs"][np.isfinite(values[group["runs"]])]
        if len(runs):
            drawn.append({**group, "runs": runs})
    for position, group in enumerate(drawn):
        runs = group["runs"]
        group_values = values[runs]
        # deterministic, evenly spread offsets instead of random jitter: reproducible panels
        offsets = np.linspace(-0.14, 0.14, len(runs)) if len(runs) > 1 else np.zeros(1)
        ax.scatter(
            position + offsets,
            group_values,
            s=12,
            c=[condition_color(p) for p in presets[runs]],
            edgecolors="white",
            linewidths=0.3,
            zorder=3,
            clip_on=False,
        )
        mean = group_values.mean()
        spread = group_values.std(ddof=1) if len(runs) > 1 else 0.0
        ax.errorbar(position + 0.3, mean, yerr=spread, fmt="none", ecolor="0.15", lw=0.8)
        ax.plot(
            [position + 0.22, position + 0.38],
            [mean, mean],
            color="0.15",
            lw=1.2,
            solid_capstyle="butt",
        )
    ax.set_xticks(range(len(drawn)), [group["label"] for group in drawn])
    ax.set_xlim(-0.5, len(drawn) - 0.3)
    header = matplotlib.transforms.blended_transform_factory(ax.transData, ax.transAxes)
    start = 0
    for position in range(1, len(drawn) + 1):
        if position < len(drawn) and drawn[position]["family"] == drawn[start]["family"]:
            continue
        ax.text(
            (start + position - 1) / 2 + 0.08,
            1.01,
            drawn[start]["family"],
            transform=header,
            ha="center",
            va="bottom",
            color="0.3",
        )
        if position < len(drawn):
            ax.axvline(position - 0.4, color="0.7", lw=0.5, ls=(0, (1, 1.5)), zorder=0)
        start = position
    return len(drawn)


def _metric_axis(ax, metric: str, values: np.ndarray) -> None:
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    if metric in UNIT_INTERVAL_METRICS:
        finite = values[np.isfinite(values)]
        lower = min(0.0, float(finite.min())) if finite.size else 0.0
        # headroom above 1 so that points and means at exactly 1 (a fraction of 1 is
        # common) are not cut by the frame nor touch the rule headers; the axis line
        # still ends at 1
        ax.set_ylim(lower, 1.0 + 0.06 * (1.0 - lower))
        ax.spines["left"].set_bounds(lower, 1.0)


def _axes_or_new(ax, **figure_kw):
    if ax is not None:
        return ax.figure, ax
    return new_figure(**figure_kw)


# ------------------------------------------------------------------------------- panels
def plot_metric_vs_rank(results: xr.Dataset, metric: str, ax=None, full_width: int = FULL_WIDTH):
    """A per-unit metric vs the rank of the feedback into the retina (paper Fig. 4c).

    Uses the runs without feedforward bottleneck (``n_bn == full_width``); each seed is one
    point (its mean over responsive units), the black bar and line are the mean and s.d. over
    seeds; the BP runs stand at the right as the reference. Returns the figure.
    """
    values = per_run_metric(results, metric).values
    presets = _run_coord(results, "preset")
    groups = _rank_groups(results, full_width)
    with paper_style():
        fig, ax = _axes_or_new(ax, width=55.0, height_mm=50.0)
        if _strip_plot(ax, groups, values, presets) == 0:
            plt.close(fig)
            raise DataError(
                f"no run with n_bn == {full_width} and a finite {metric!r} to plot against rank"
            )
        ax.set_xlabel("Feedback rank into retina")
        _metric_axis(ax, metric, values)
    return fig


def plot_metric_vs_nbn(results: xr.Dataset, metric: str, ax=None, compare_draf: bool = True):
    """A per-unit metric vs the feedforward bottleneck N_bn, for the BP runs (Fig. 4b).

    Each seed is one point, bar and line are mean and s.d. over seeds. With
    ``compare_draf`` the dRAF runs (bottleneck, full-rank direct feedback; Fig. 4d) follow
    at the right, labelled ``dRAF``. Returns the figure.
    """
    values = per_run_metric(results, metric).values
    presets = _run_coord(results, "preset")
    groups = _nbn_groups(results, compare_draf)
    with paper_style():
        fig, ax = _axes_or_new(ax, width=55.0, height_mm=50.0)
        if _strip_plot(ax, groups, values, presets) == 0:
            plt.close(fig)
            raise DataError(f"no BP run with a finite {metric!r} to plot against N_bn")
        ax.set_xlabel("Retina output channels (N$_{bn}$)")
        _metric_axis(ax, metric, values)
    return fig


def plot_fraction_center_surround(results: xr.Dataset, full_width: int = FULL_WIDTH):
    """Fraction of responsive retina units with center-surround RFs, two panels side by side:
    vs feedback rank (no feedforward bottleneck) and vs feedforward bottleneck (BP, dRAF).

    A panel without runs is left out. Returns the figure (single column).
    """
    metric = "fraction_center_surround"
    values = per_run_metric(results, metric).values
    presets = _run_coord(results, "preset")
    panels = [
        (_rank_groups(results, full_width), "Feedback rank into retina"),
        (_nbn_groups(results, compare_draf=True), "Retina output channels (N$_{bn}$)"),
    ]
    panels = [
        (groups, label)
        for groups, label in panels
        if any(np.isfinite(values[g["runs"]]).any() for g in groups)
    ]
    if not panels:
        raise DataError("no run with classified responsive units (rf_class) to plot")
    n_groups = [sum(np.isfinite(values[g["runs"]]).any() for g in groups) for groups, _ in panels]
    with paper_style():
        fig, axes = new_figure(
            "single",
            height_mm=50.0,
            ncols=len(panels),
            sharey=True,
            gridspec_kw={"width_ratios": n_groups},
        )
        for ax, (groups, label) in zip(np.atleast_1d(axes), panels, strict=True):
            _strip_plot(ax, groups, values, presets)
            ax.set_xlabel(label)
        first = np.atleast_1d(axes)[0]
        _metric_axis(first, metric, values)
    return fig


def _condition_runs(results: xr.Dataset, variable: xr.DataArray) -> list[tuple[str, np.ndarray]]:
    """(preset, run indices) in the project's condition order, for runs with finite data."""
    presets = _run_coord(results, "preset")
    finite = np.isfinite(variable.values).reshape(len(presets), -1).any(axis=1)
    conditions = sorted({str(p) for p in presets[finite]}, key=_preset_sort_key)
    return [(c, np.flatnonzero((presets == c) & finite)) for c in conditions]


def _mean_and_band(ax, x, runs_by_condition, series: np.ndarray) -> None:
    """Per condition: mean over seeds (line) and the min-max range over seeds (band)."""
    for preset, runs in runs_by_condition:
        curves = series[runs]
        color = condition_color(preset)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=RuntimeWarning)
            mean = np.nanmean(curves, axis=0)
            low, high = np.nanmin(curves, axis=0), np.nanmax(curves, axis=0)
        if len(runs) > 1:
            ax.fill_between(x, low, high, color=color, alpha=0.2, lw=0)
        marker = "o" if len(x) == 1 else None  # a single epoch is a point, not a line
        ax.plot(x, mean, color=color, lw=1.0, marker=marker, label=f"{preset} (n={len(runs)})")


def _epoch_axis(ax, epochs: np.ndarray) -> None:
    """Whole epochs as ticks; a single epoch centered instead of a zero-width axis."""
    low, high = float(epochs.min()), float(epochs.max())
    ax.set_xlim((low - 0.5, high + 0.5) if low == high else (low, high))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_learning_curves(
    results: xr.Dataset, variables: Sequence[str] = ("train_loss", "test_acc")
):
    """Learning curves per condition: the mean over seeds and the range over seeds (band).

    One axis per history variable ``(run, epoch)``; double column, legend at the right. A
    loss axis spanning more than two decades (a diverging run) is logarithmic.
    Returns the figure.
    """
    _require(results, list(variables), "the learning curves")
    epochs = np.asarray(results["epoch"].values)
    with paper_style():
        fig, axes = new_figure("double", height_mm=50.0, ncols=len(variables))
        for ax, name in zip(np.atleast_1d(axes), variables, strict=True):
            history = results[name].transpose("run", "epoch")
            conditions = _condition_runs(results, history)
            if not conditions:
                plt.close(fig)
                raise DataError(f"{name!r} has no finite value in any run")
            values = history.values.astype(float)
            _mean_and_band(ax, epochs, conditions, values)
            ax.set_xlabel("Epoch")
            ax.set_ylabel(METRIC_LABELS.get(name, name))
            _epoch_axis(ax, epochs)
            positive = values[np.isfinite(values) & (values > 0)]
            if name.endswith("loss") and positive.size and positive.max() > 100 * positive.min():
                ax.set_yscale("log")  # a diverging run would flatten every other curve
        handles, labels = np.atleast_1d(axes)[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside right upper", title="Condition")
    return fig


def _network_order(layer: str) -> tuple:
    """Sort key of layer names in forward order: retina_k, vvs_k, fc_k, then others."""
    match = re.fullmatch(r"(retina|vvs|fc)_(\d+)", layer)
    if not match:
        return (3, 0, layer)
    return (("retina", "vvs", "fc").index(match.group(1)), int(match.group(2)), layer)


def plot_alignment(results: xr.Dataset, max_columns: int = 4):
    """Alignment angle between feedback and forward weights (degrees) over training.

    One axis per layer with any finite angle (BP runs have none), in network order
    (retina, vvs, fc); per condition the mean
    over seeds and the range over seeds. 90 degrees is chance for random matrices.
    Returns the figure (double column).
    """
    _require(results, ["alignment_deg"], "the alignment panel")
    alignment = results["alignment_deg"].transpose("run", "epoch", "layer")
    layers = sorted(
        (
            str(layer)
            for layer in alignment["layer"].values
            if np.isfinite(alignment.sel(layer=layer).values).any()
        ),
        key=_network_order,
    )
    if not layers:
        raise DataError("alignment_deg has no finite value (only BP runs?)")
    epochs = np.asarray(results["epoch"].values)
    ncols = min(len(layers), max_columns)
    nrows = int(np.ceil(len(layers) / ncols))
    with paper_style():
        fig, axes = new_figure(
            "double",
            height_mm=40.0 * nrows + 5.0,
            nrows=nrows,
            ncols=ncols,
            sharex=True,
            sharey=True,
            squeeze=False,
        )
        for ax, layer in zip(axes.flat, layers, strict=False):
            angle = alignment.sel(layer=layer)
            _mean_and_band(ax, epochs, _condition_runs(results, angle), angle.values)
            ax.set_title(layer)
            ax.set_ylim(0, 93)  # headroom: angles near 90 (chance) stay visible
            ax.set_yticks([0, 30, 60, 90])
            _epoch_axis(ax, epochs)
        for ax in axes.flat[len(layers) :]:
            ax.set_visible(False)
        for ax in axes[-1]:
            ax.set_xlabel("Epoch")
        for ax in axes[:, 0]:
            ax.set_ylabel("Alignment angle (\u00b0)")
        handles = {}  # label -> handle, each condition once
        for ax in axes.flat[: len(layers)]:
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                handles.setdefault(label, handle)
        fig.legend(
            list(handles.values()), list(handles), loc="outside right upper", title="Condition"
        )
    return fig


def plot_rf_montage(
    rfs: xr.DataArray,
    classes: Sequence[str] | xr.DataArray | None = None,
    ncols: int | None = None,
    width: str | float = "single",
    title: str | None = None,
    shared_scale: bool = False,
):
    """A grid of receptive fields, diverging colormap symmetric about 0 (red = ON, blue = OFF).

    Args:
        rfs: DataArray ``(unit, y, x)``; the first dim enumerates RFs (usually ``channel``).
        classes: one ``rf_class`` per RF; each RF is then labelled (CS center-surround, OR
            oriented, U unclassified, - unresponsive) in its class color.
        ncols: RFs per row (default: up to 8).
        width: journal width (``"single"``, ``"double"``, mm).
        title: figure title, e.g. the condition and seed.
        shared_scale: one color scale for all RFs; by default each RF is scaled to its own
            max |RF|, since the shape, not the gain, is what the montage compares.

    All-NaN or all-zero RFs (unresponsive units) are drawn as empty gray squares.
    Returns the figure.
    """
    if not isinstance(rfs, xr.DataArray) or rfs.ndim != 3:
        raise DataError("plot_rf_montage needs a 3-d DataArray (unit, y, x) of RFs")
    n_rfs = rfs.sizes[rfs.dims[0]]
    if n_rfs == 0:
        raise DataError("plot_rf_montage got no RFs")
    images = rfs.values.astype(float)
    if classes is not None:
        classes = [str(c) for c in np.asarray(classes).ravel()]
        if len(classes) != n_rfs:
            raise DataError(f"{len(classes)} classes for {n_rfs} RFs")
    ncols = int(ncols) if ncols else min(n_rfs, 8)
    nrows = int(np.ceil(n_rfs / ncols))
    fig_width = width_mm(width)
    colorbar_mm = 16.0  # colorbar, its labels and paddings
    cell_mm = (fig_width - colorbar_mm) / ncols
    label_mm = 2.6 if classes is not None else 0.8
    footer_mm = 4.0 if classes is not None else 0.0
    title_mm = 5.0 if title else 0.0
    height = nrows * (cell_mm + label_mm) + footer_mm + title_mm + 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        amplitude = np.nanmax(np.abs(images), axis=(1, 2))
    shared = np.nanmax(amplitude) if np.isfinite(amplitude).any() else np.nan
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="#e6e6e6")
    with paper_style():
        fig, axes = new_figure(fig_width, height_mm=height, nrows=nrows, ncols=ncols, squeeze=False)
        fig.get_layout_engine().set(
            w_pad=0.3 / MM_PER_INCH, h_pad=0.3 / MM_PER_INCH, wspace=0.02, hspace=0.02
        )
        image = None
        for index, ax in enumerate(axes.flat):
            ax.set_xticks([])
            ax.set_yticks([])
            if index >= n_rfs:
                ax.set_visible(False)
                continue
            scale = shared if shared_scale else amplitude[index]
            rf = (
                images[index] / scale
                if np.isfinite(scale) and scale > 0
                else np.nan * images[index]
            )
            image = ax.imshow(rf, cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
            for spine in ax.spines.values():
                spine.set_visible(True)
                spine.set_linewidth(0.3)
                spine.set_color("0.6")
            if classes is not None:
                rf_class = classes[index]
                ax.set_title(
                    CLASS_ABBREVIATIONS.get(rf_class, rf_class),
                    color=class_color(rf_class),
                    fontsize=6.5,
                    pad=1.5,
                    fontweight="bold",
                )
        colorbar = fig.colorbar(
            image,
            ax=axes,
            shrink=0.8 if nrows == 1 else 0.6,
            aspect=15,
            pad=0.02,
            ticks=[-1, 0, 1],
        )
        colorbar.ax.set_yticklabels(["\u2212max", "0", "+max"])
        colorbar.outline.set_linewidth(0.4)
        colorbar.ax.tick_params(width=0.4, length=1.5, labelsize=6)
        colorbar.set_label("RF (a.u.)" if shared_scale else "RF / max |RF|", fontsize=6)
        if title:
            fig.suptitle(title)
        if classes is not None:
            present = [c for c in CLASS_ABBREVIATIONS if c in set(classes)]
            legend = "   ".join(f"{CLASS_ABBREVIATIONS[c]} {c}" for c in present)
            fig.supxlabel(legend, fontsize=6, color="0.25")
    return fig


def _check_max_rfs(max_rfs) -> None:
    if max_rfs is not None and (
        isinstance(max_rfs, bool) or not isinstance(max_rfs, int) or max_rfs < 1
    ):
        raise ConfigError(f"max_rfs must be a positive integer or None, not {max_rfs!r}")


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
    _require(results, ["rf"], "an RF atlas")
    available = _run_coord(results, "preset").astype(str)
    seeds = _run_coord(results, "seed")
    wanted = [presets] if isinstance(presets, str) else presets
    if wanted is not None:
        unknown = sorted({str(p) for p in wanted} - set(available))
        if unknown:
            raise ConfigError(
                f"preset(s) {unknown} not in the results; they hold: "
                f"{', '.join(sorted(set(available), key=_preset_sort_key))}"
            )
    runs = [i for i, p in enumerate(available) if wanted is None or p in wanted]
    runs.sort(key=lambda i: (_preset_sort_key(available[i]), int(seeds[i])))
    return [(i, f"rf_montage_{_slug(available[i])}_seed{int(seeds[i])}") for i in runs]


def plot_run_rfs(results: xr.Dataset, run: int, max_rfs: int | None = None, **montage_kw):
    """The RF montage of one run of a results dataset, each RF labelled with its class.

    Args:
        results: results dataset (``rf``; ``rf_class`` and ``present`` where available).
        run: position of the run along ``run``.
        max_rfs: show at most this many RFs (the first channels); None: all.
        montage_kw: passed to :func:`plot_rf_montage` (default title: "preset, seed s").

    The padding channels of a bottleneck run are left out. Returns the figure.
    """
    _require(results, ["rf"], "an RF montage")
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
    montage_kw.setdefault("title", f"{preset}, seed {seed}")
    return plot_rf_montage(rfs.isel(channel=channels), classes=classes, **montage_kw)


# --------------------------------------------------------------------------- all panels
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", str(text)).strip("_") or "unnamed"


def _paper_panels(results: xr.Dataset):
    """(panel name, function drawing it) for every paper panel the dataset can provide."""
    panels = []
    if "rf" in results:
        presets, seeds = _run_coord(results, "preset"), _run_coord(results, "seed")
        for preset in sorted({str(p) for p in presets}, key=_preset_sort_key):
            runs = np.flatnonzero(presets == preset)
            run = int(runs[np.argmin(seeds[runs])])  # the lowest seed: a stable choice

            panels.append((f"rf_montage_{_slug(preset)}", lambda r=run: plot_run_rfs(results, r)))
    for metric in ("symmetry", "osi", "orientedness"):
        if metric in results:
            panels.append((f"{metric}_vs_rank", lambda m=metric: plot_metric_vs_rank(results, m)))
            panels.append((f"{metric}_vs_nbn", lambda m=metric: plot_metric_vs_nbn(results, m)))
    if "rf_class" in results:
        panels.append(("fraction_center_surround", lambda: plot_fraction_center_surround(results)))
    if {"train_loss", "test_acc"} <= set(results.variables):
        panels.append(("learning_curves", lambda: plot_learning_curves(results)))
    if "alignment_deg" in results:
        panels.append(("alignment", lambda: plot_alignment(results)))
    return panels


def export_paper_panels(
    results_path: str | Path | xr.Dataset,
    out_dir: str | Path = "reports/figures",
    dpi: int = 300,
    formats: Sequence[str] = PANEL_FORMATS,
) -> list[Path]:
    """Export every paper panel the results provide (PDF, SVG, PNG each) into ``out_dir``.

    Panels: ``rf_montage_<preset>`` (lowest seed of each condition), ``<metric>_vs_rank``
    and ``<metric>_vs_nbn`` for symmetry, OSI and orientedness, ``fraction_center_surround``,
    ``learning_curves`` and ``alignment``. A panel whose data the file lacks (e.g. no BP
    runs) is skipped with a :class:`PanelSkipped` warning. Returns the written files.
    """
    unknown = [fmt for fmt in formats if fmt not in PANEL_FORMATS]
    if unknown:  # checked before drawing anything
        raise ConfigError(f"unknown panel format(s) {unknown}; choose from {PANEL_FORMATS}")
    if isinstance(results_path, xr.Dataset):
        results = results_path
    else:
        from analysis.results import open_results

        with open_results(results_path) as opened:
            results = opened.load()
    written = []
    for name, draw in _paper_panels(results):
        try:
            fig = draw()
        except DataError as exc:
            warnings.warn(f"panel {name} skipped: {exc}", PanelSkipped, stacklevel=2)
            continue
        try:
            paths = export_panel(fig, name, out_dir=out_dir, dpi=dpi, formats=formats)
            written += list(paths.values())
        finally:
            plt.close(fig)
    if not written:
        raise DataError("the results dataset has nothing to plot (no rf, metrics or history)")
    return written
