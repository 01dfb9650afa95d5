"""The paper's panels from a results dataset (docs/design.md#reports; paper Fig. 4).

The plotting functions read the results dataset of ``analysis.results`` (docs/results.md):
dims ``run, channel, y, x, epoch`` (``layer`` for alignment), coordinates ``preset,
rank, n_bn, seed, rule`` on ``run``, per-unit metrics on ``(run, channel)`` and per-epoch
history on ``(run, epoch)``.

A metric against a condition (feedback rank, bottleneck N_bn) is drawn by seaborn from the
tidy per-run table of :mod:`analysis.per_run`: every seed is a point (its mean over the
run's responsive units, a swarm so that seeds never hide each other), and the black tick
and bar beside the points are the mean and standard deviation over seeds
(``sns.pointplot``, ``errorbar="sd"``), cut at 0 and 1 for a fraction, which cannot pass them.
Each panel says n, the number of seeds, and what its bars are. Conditions
are in the order of :func:`analysis.per_run.condition_order`, the order of the tables too.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Collection, Sequence
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import xarray as xr
from matplotlib.ticker import MaxNLocator

from analysis.figures.montage import paper_montage_runs, plot_run_rfs
from analysis.figures.style import (
    METRIC_LABELS,
    PANEL_FORMATS,
    UNIT_INTERVAL_METRICS,
    condition_color,
    export_panel,
    new_figure,
    paper_style,
)
from analysis.per_run import (
    FEEDBACK_RANK_RULES,
    FULL_WIDTH,
    condition_order,
    has_bottleneck_runs,
    per_run_metric,
    require,
    rule_label,
    run_coord,
    run_table,
)
from retina_raf.errors import ConfigError, DataError

MEAN_OFFSET = 0.32  # the mean and s.d. stand this far (category units) right of the points
RANK_AXIS_LABEL = "Feedback rank into retina"
NBN_AXIS_LABEL = "Retina output channels (N$_{bn}$)"
# Order of the rules along the rank axis: RAF ranks, other feedback rules, dRAF, then the BP
# reference at the right.
RANK_AXIS_RULES = {"raf": 0, "raf_pca": 1, "raf_aligned": 2, "draf": 3, "bp": 4}


class PanelSkipped(UserWarning):
    """A paper panel was not drawn because the results lack its data."""


def per_run_label(metric: str) -> str:
    """The y-label of a per-run value: what it is, and that it is over responsive units."""
    if metric == "fraction_center_surround":
        return "Fraction center-surround\n(of responsive units)"
    return f"{METRIC_LABELS.get(metric, metric)}\n(mean of responsive units)"


# ------------------------------------------------------------------------- tidy tables
def axis_table(
    results: xr.Dataset,
    metric: str,
    axis: str,
    full_width: int = FULL_WIDTH,
    compare_draf: bool = True,
) -> tuple[pd.DataFrame, list[str]]:
    """The tidy per-run table of one panel and the order of its x categories.

    ``axis="rank"``: runs without feedforward bottleneck (``n_bn == full_width``) grouped
    by rule and feedback rank, the BP reference last and labelled ``BP`` (it has no feedback
    rank). ``axis="n_bn"``: BP runs by N_bn, then (``compare_draf``) dRAF runs by N_bn.
    Columns: the run identity, ``value`` (the per-run metric; runs without a finite value
    are left out), ``group`` (category key), ``tick`` (its label), ``family`` (the rule's
    header above the axes, empty for the BP reference of the rank axis).
    """
    table = run_table(results, [metric]).rename(columns={metric: "value"})
    table = table[np.isfinite(table["value"].astype(float))].copy()
    if axis == "rank":
        table = table[table["n_bn"] == full_width].copy()
        table["position"] = table["rule"].map(lambda r: RANK_AXIS_RULES.get(r, 1))
        table["level"] = table["rank"]
        table["tick"] = [
            "BP" if rule == "bp" else str(rank)
            for rule, rank in zip(table["rule"], table["rank"], strict=True)
        ]
        table["family"] = ["" if r == "bp" else rule_label(r) for r in table["rule"]]
    elif axis == "n_bn":
        rules = ["bp", "draf"] if compare_draf else ["bp"]
        table = table[table["rule"].isin(rules)].copy()
        table["position"] = table["rule"].map(rules.index)
        table["level"] = table["n_bn"]
        table["tick"] = table["n_bn"].astype(str)
        table["family"] = table["rule"].map(rule_label)
    else:
        raise ConfigError(f"axis {axis!r} is not 'rank' or 'n_bn'")
    table["group"] = [
        f"{rule}:{level}" for rule, level in zip(table["rule"], table["level"], strict=True)
    ]
    ordered = table.sort_values(["position", "rule", "level", "seed"], kind="stable")
    return ordered.reset_index(drop=True), list(dict.fromkeys(ordered["group"]))


def _sd_within(low: float, high: float):
    """seaborn's ``errorbar`` for mean +- s.d. cut at the bounds of the metric."""

    def interval(values) -> tuple[float, float]:
        values = np.asarray(values, dtype=float)
        mean = values.mean()
        sd = values.std(ddof=1) if len(values) > 1 else 0.0
        return max(low, mean - sd), min(high, mean + sd)

    return interval


def _strip_panel(ax, table: pd.DataFrame, order: list[str], metric: str = "") -> None:
    """Seeds as a swarm colored by condition, mean and s.d. over seeds beside each swarm (the
    bar cut at [0, 1] for a fraction), rule headers above the axes, n (seeds) and what the
    bars are in the title, or n under each tick. With one seed in every condition there is
    no spread: the points stand alone and the title says so."""
    fraction = metric.startswith("fraction")
    errorbar = _sd_within(0.0, 1.0) if fraction else "sd"
    counts = table.groupby("group", sort=False)["seed"].count().reindex(order)
    single = bool((counts == 1).all())
    bars = ("each point one run: no spread to show" if single
            else "bars: mean \u00b1 s.d." + (", cut at [0, 1]" if fraction else ""))  # fmt: skip
    palette = {preset: condition_color(preset) for preset in table["preset"].unique()}
    sns.swarmplot(data=table, x="group", y="value", hue="preset", order=order, palette=palette,
                  size=3.6, edgecolor="white", linewidth=0.3, legend=False, clip_on=False,
                  zorder=3, ax=ax, warn_thresh=1.0)  # fmt: skip
    before = set(ax.lines) | set(ax.collections)
    if not single:
        with warnings.catch_warnings():  # a condition with one seed: seaborn draws its mean
            warnings.simplefilter("ignore", category=RuntimeWarning)
            sns.pointplot(data=table, x="group", y="value", order=order, errorbar=errorbar,
                          color="0.15", markers="_", markersize=7, markeredgewidth=1.4,
                          linestyle="none", err_kws={"linewidth": 0.9}, ax=ax)  # fmt: skip
    shift = matplotlib.transforms.Affine2D().translate(MEAN_OFFSET, 0) + ax.transData
    for artist in (set(ax.lines) | set(ax.collections)) - before:
        artist.set_transform(shift)
        # a mean at the axis' edge stays whole; an s.d. bar stops at the axes (a fraction's
        # mean - s.d. below 0 would cross the tick labels)
        is_bar = isinstance(artist, matplotlib.lines.Line2D) and artist.get_marker() in (
            None, "None", "", " ")  # fmt: skip
        artist.set_clip_on(is_bar)
    ticks = table.drop_duplicates("group").set_index("group")["tick"].reindex(order)
    headers = _family_headers(table, order)
    two_lines = any("\n" in text for _, _, text in headers)
    if counts.nunique() == 1:
        n = int(counts.iloc[0])
        ax.set_title(f"n = {n} seed{'s' if n != 1 else ''} per condition\n{bars}", fontsize=6.5,
                     color="0.3", pad=19.5 if two_lines else 12.5)  # fmt: skip
        labels = list(ticks)
    else:
        # "(n)" under each tick: "n=1" labels run into each other on a crowded axis
        ax.set_title(f"(n) = seeds per condition\n{bars}", fontsize=6.5, color="0.3",
                     pad=19.5 if two_lines else 12.5)  # fmt: skip
        labels = [f"{tick}\n({n})" for tick, n in zip(ticks, counts, strict=True)]
    ax.set_xticks(range(len(order)), labels)
    ax.set_xlim(-0.5, len(order) - 0.5 + MEAN_OFFSET - 0.1)
    ax.set_xlabel("")
    header = matplotlib.transforms.blended_transform_factory(ax.transData, ax.transAxes)
    for start, end, text in headers:
        if text:
            ax.text((start + end - 1) / 2 + MEAN_OFFSET / 3, 1.01, text, transform=header,
                    ha="center", va="bottom", color="0.3", linespacing=1.0)  # fmt: skip
        if end < len(order):
            ax.axvline(end - 0.5 + MEAN_OFFSET / 2, color="0.7", lw=0.5, ls=(0, (1, 1.5)),
                       zorder=0)  # fmt: skip


def _family_headers(table: pd.DataFrame, order: list[str]) -> list[tuple[int, int, str]]:
    """(first, past-the-end category, header text) per run of categories of one rule family.

    A label with a qualifier ("RAF (aligned)") over two categories or fewer breaks before the
    parenthesis, so that neighbouring headers do not run into each other."""
    families = table.drop_duplicates("group").set_index("group")["family"].reindex(order)
    headers, start = [], 0
    for position in range(1, len(order) + 1):
        if position < len(order) and families.iloc[position] == families.iloc[start]:
            continue
        text = str(families.iloc[start])
        if position - start <= 2 and " (" in text:
            text = text.replace(" (", "\n(", 1)
        headers.append((start, position, text))
        start = position
    return headers


def _metric_axis(ax, metric: str, values: np.ndarray, label: bool = True) -> None:
    if label:
        ax.set_ylabel(per_run_label(metric))
    else:
        ax.set_ylabel("")
    finite = values[np.isfinite(values)]
    if metric in UNIT_INTERVAL_METRICS:
        lower = min(0.0, float(finite.min())) if finite.size else 0.0
        upper = 1.0
    elif finite.size:
        lower, upper = float(finite.min()), float(finite.max())
        if upper == lower:
            lower, upper = lower - 0.5, upper + 0.5
    else:
        return
    # margins below and above, so that points (and their mean bars) at the bounds, 0 and 1
    # being common for fractions, are not cut by the frame or hidden by the x-axis line;
    # the y-axis line still spans only the data range
    margin = 0.07 * (upper - lower)
    ax.set_ylim(lower - margin, upper + margin)
    ax.spines["left"].set_bounds(lower, upper)


def _axes_or_new(ax, **figure_kw):
    if ax is not None:
        return ax.figure, ax
    return new_figure(**figure_kw)


# ------------------------------------------------------------------------------ panels
def plot_metric_vs_rank(results: xr.Dataset, metric: str, ax=None, full_width: int = FULL_WIDTH):
    """A per-unit metric vs the rank of the feedback into the retina (paper Fig. 4c).

    Uses the runs without feedforward bottleneck (``n_bn == full_width``); each seed is one
    point (its mean over responsive units), the black tick and bar are the mean and s.d.
    over seeds; the BP runs stand at the right as the reference, labelled BP. Returns the
    figure.
    """
    table, order = axis_table(results, metric, "rank", full_width)
    with paper_style():
        fig, ax = _axes_or_new(ax, width=55.0, height_mm=52.0)
        if table.empty:
            plt.close(fig)
            raise DataError(
                f"no run with n_bn == {full_width} and a finite {metric!r} to plot against rank"
            )
        _strip_panel(ax, table, order, metric)
        ax.set_xlabel(RANK_AXIS_LABEL)
        _metric_axis(ax, metric, table["value"].to_numpy(float))
    return fig


def plot_metric_vs_nbn(results: xr.Dataset, metric: str, ax=None, compare_draf: bool = True):
    """A per-unit metric vs the feedforward bottleneck N_bn, for the BP runs (Fig. 4b).

    Each seed is one point, tick and bar are mean and s.d. over seeds. With ``compare_draf``
    the dRAF runs (bottleneck, full-rank direct feedback; Fig. 4d) follow at the right,
    under the header ``dRAF``. Returns the figure.
    """
    table, order = axis_table(results, metric, "n_bn", compare_draf=compare_draf)
    with paper_style():
        fig, ax = _axes_or_new(ax, width=55.0, height_mm=52.0)
        if table.empty:
            plt.close(fig)
            raise DataError(f"no BP run with a finite {metric!r} to plot against N_bn")
        _strip_panel(ax, table, order, metric)
        ax.set_xlabel(NBN_AXIS_LABEL)
        _metric_axis(ax, metric, table["value"].to_numpy(float))
    return fig


def plot_fraction_center_surround(results: xr.Dataset, full_width: int = FULL_WIDTH):
    """Fraction of responsive retina units with center-surround RFs: against feedback rank
    (no feedforward bottleneck) and, when the results have bottleneck runs, against the
    feedforward bottleneck (BP, dRAF) in a second panel sharing the y-axis.

    Returns the figure (single column).
    """
    metric = "fraction_center_surround"
    require(results, ["rf_class"], "the fraction of center-surround RFs")
    axes_spec = [(*axis_table(results, metric, "rank", full_width), RANK_AXIS_LABEL)]
    if has_bottleneck_runs(results, full_width):
        axes_spec.append((*axis_table(results, metric, "n_bn"), NBN_AXIS_LABEL))
    axes_spec = [spec for spec in axes_spec if not spec[0].empty]
    if not axes_spec:
        raise DataError("no run with classified responsive units (rf_class) to plot")
    values = per_run_metric(results, metric).values
    with paper_style():
        fig, axes = new_figure(
            "single",
            height_mm=55.0,
            ncols=len(axes_spec),
            sharey=True,
            squeeze=False,
            gridspec_kw={"width_ratios": [len(order) + 0.6 for _, order, _ in axes_spec]},
        )
        for index, (ax, (table, order, label)) in enumerate(zip(axes[0], axes_spec, strict=True)):
            _strip_panel(ax, table, order, metric)
            # two lines: the labels of two side-by-side panels must fit a single column
            ax.set_xlabel(label.replace(" into", "\ninto").replace(" channels", "\nchannels"))
            _metric_axis(ax, metric, values, label=index == 0)
            if index > 0 and ax.get_title() == axes[0][0].get_title():
                ax.set_title("")  # said once, over the first panel
    return fig


# ---------------------------------------------------------------------- over training
def _condition_runs(results: xr.Dataset, variable: xr.DataArray) -> list[tuple[str, np.ndarray]]:
    """(preset, run indices) in the panels' condition order, for runs with finite data."""
    presets = run_coord(results, "preset")
    finite = np.isfinite(variable.values).reshape(len(presets), -1).any(axis=1)
    conditions = [c for c in condition_order(results) if c in set(presets[finite])]
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
    require(results, list(variables), "the learning curves")
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
    """Angle between each layer's feedback matrix B and its transposed forward weights W^T
    (degrees) over training: 0 is backprop's direction, 90 unrelated (chance for random
    matrices).

    One axis per layer with any finite angle (BP runs have none), in network order
    (retina, vvs, fc), titled with the layer whose error B carries; per condition the mean
    over seeds and the range over seeds. Returns the figure (double column).
    """
    require(results, ["alignment_deg"], "the alignment panel")
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
            # vvs_1's feedback is the error sent into the retina
            ax.set_title(f"{layer} (into retina)" if layer == "vvs_1" else layer)
            ax.axhline(90, color="0.6", lw=0.5, ls=(0, (2, 2)), zorder=0)
            ax.set_ylim(0, 93)  # headroom: angles near 90 (chance) stay visible
            ax.set_yticks([0, 30, 60, 90])
            _epoch_axis(ax, epochs)
        for ax in axes.flat[len(layers) :]:
            ax.set_visible(False)
        for ax in axes[-1]:
            ax.set_xlabel("Epoch")
        for ax in axes[:, 0]:  # what is aligned with what, in two lines that fit a row
            ax.set_ylabel("Angle, feedback B\nvs. forward W$^{T}$ (\u00b0)")
        # beside the axes, at the end of the dashed line: a run near 90° would hide it inside
        axes.flat[0].text(1.01, 90, "chance", transform=axes.flat[0].get_yaxis_transform(),
                          ha="left", va="center", fontsize=6, color="0.5")  # fmt: skip
        handles = {}  # label -> handle, each condition once
        for ax in axes.flat[: len(layers)]:
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                handles.setdefault(label, handle)
        fig.legend(
            list(handles.values()), list(handles), loc="outside right upper", title="Condition"
        )
    return fig


def plot_error_subspace_history(history: pd.DataFrame):
    """Where Oja's P was, epoch by epoch: for each run whose P has fewer rows than the
    eigenvectors recorded (at full rank every overlap is 1), the overlap of each of the
    error covariance's leading eigenvectors with P's rows (top; 1: P spans it, 0: P misses
    it) and its eigenvalue as a share of the trace (bottom), over the epochs of an
    error-subspace history (:func:`analysis.alignment.update_error_subspace_history`).

    One column per run; returns the figure. Raises DataError when no run qualifies.
    """
    k = history.groupby("run")["eigenvector"].max()
    ranks = history.groupby("run")["rank"].first()
    runs = [run for run in k.index if ranks[run] < k[run]]
    if not runs:
        raise DataError("no run in the history has fewer P rows than eigenvectors recorded")
    n_eigen = int(k[runs].max())
    colors = sns.color_palette("viridis", n_eigen)
    with paper_style():
        width = "single" if len(runs) == 1 else "double"
        fig, axes = new_figure(width, height_mm=85.0, nrows=2, ncols=len(runs), squeeze=False,
                               sharex="col")  # fmt: skip
        for column, run in enumerate(runs):
            rows = history[history["run"] == run]
            top, bottom = axes[0, column], axes[1, column]
            for index in range(1, n_eigen + 1):
                line = rows[rows["eigenvector"] == index].sort_values("epoch")
                label = f"{index}" + (" (leading)" if index == 1 else "")
                style = {"color": colors[index - 1], "marker": "o", "markersize": 2.0}
                top.plot(line["epoch"], line["overlap"], label=label, **style)
                bottom.plot(line["epoch"], line["eigenvalue_share"], **style)
            top.set_title(f"{run}\n(P of rank {int(ranks[run])})")
            top.set_ylim(-0.03, 1.03)
            bottom.set_ylim(bottom=0)
            bottom.set_xlabel("Epoch")
            bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes[0, 0].set_ylabel("Overlap with P's rows")
        axes[1, 0].set_ylabel("Eigenvalue\n(share of trace)")
        handles, labels = axes[0, 0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside right upper", title="Error\neigenvector")
    return fig


# --------------------------------------------------------------------------- all panels
def plot_subspace_angle(results: xr.Dataset, layer: str = "vvs_1"):
    """Whether Oja's rule found the error's top subspace: the largest principal angle
    (degrees) between the rows of ``layer``'s P and the top-r eigenvectors of the moving
    average of its error covariance, over training, for the runs whose P has rank below the
    layer's width (RAF at low rank; at full rank the angle is 0 by construction).

    Per condition the mean over seeds and the range (band); 0 = P spans the top-r error
    subspace, 90 = some direction of P is orthogonal to it. Single column; returns the figure.
    """
    require(results, ["principal_angle_max_rad"], "the subspace-angle panel")
    angle = np.degrees(results["principal_angle_max_rad"].sel(layer=layer))
    angle = angle.transpose("run", "epoch")
    low_rank = np.asarray(results["rank"].values) < np.asarray(results["n_bn"].values)
    raf = np.isin(run_coord(results, "rule"), FEEDBACK_RANK_RULES)
    angle = angle.where(xr.DataArray(low_rank & raf, dims="run"))
    if not np.isfinite(angle.values).any():
        raise DataError(f"no low-rank RAF run with a principal angle at {layer}")
    epochs = np.asarray(results["epoch"].values)
    with paper_style():
        conditions = _condition_runs(results, angle)
        legend_rows = math.ceil(len(conditions) / 2)
        fig, ax = new_figure("single", height_mm=55.0 + 4.0 * legend_rows)
        _mean_and_band(ax, epochs, conditions, angle.values)
        ax.set_ylim(0, 93)
        ax.set_yticks([0, 30, 60, 90])
        ax.axhline(90, color="0.6", lw=0.5, ls=(0, (2, 2)), zorder=0)
        _epoch_axis(ax, epochs)
        ax.set_xlabel("Epoch")
        ax.set_title(layer + (" (into retina)" if layer == "vvs_1" else ""))
        ax.set_ylabel("Largest principal angle,\nP vs top-r error subspace (\u00b0)")
        # below the axes: Oja's angles stay high, the PCA-set ones low, no corner is free
        handles, labels = ax.get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=2, title="Condition")
    return fig


def paper_panels(results: xr.Dataset, full_width: int = FULL_WIDTH):
    """(panel name, function drawing it) for every paper panel the dataset can provide.

    ``*_vs_nbn`` panels only when the results hold bottleneck runs (BP or dRAF with
    ``n_bn < full_width``): without them the axis would repeat the BP reference alone.
    """
    panels = [
        (name, lambda r=run: plot_run_rfs(results, r))
        for run, name in paper_montage_runs(results).items()
    ]
    bottlenecks = has_bottleneck_runs(results, full_width)
    for metric in ("symmetry", "osi", "orientedness"):
        if metric in results:
            panels.append((f"{metric}_vs_rank", lambda m=metric: plot_metric_vs_rank(results, m)))
            if bottlenecks:
                panels.append((f"{metric}_vs_nbn", lambda m=metric: plot_metric_vs_nbn(results, m)))
    if "rf_class" in results:
        panels.append(("fraction_center_surround", lambda: plot_fraction_center_surround(results)))
    if {"train_loss", "test_acc"} <= set(results.variables):
        panels.append(("learning_curves", lambda: plot_learning_curves(results)))
    if "alignment_deg" in results:
        panels.append(("alignment", lambda: plot_alignment(results)))
    if "principal_angle_max_rad" in results:
        panels.append(("subspace_angle", lambda: plot_subspace_angle(results)))
    return panels


def paper_panel_names(results: xr.Dataset, full_width: int = FULL_WIDTH) -> set[str]:
    """The names of the panels :func:`export_paper_panels` (``retina-raf figures``) writes
    for ``results``.

    Each panel file has one writer: a report notebook that draws one of these panels (with
    the same function) shows it and leaves its file to that command, which writes them all
    into ``<experiment>/figures/``; the notebook exports only the panels no command writes.
    """
    return {name for name, _ in paper_panels(results, full_width)}


def export_report_panel(
    fig, name: str, figures_dir: str | Path, paper_names: Collection[str] = (), **export_kw
) -> dict[str, Path]:
    """Export a report notebook's panel (:func:`export_panel`) unless it is one of
    ``paper_names`` (:func:`paper_panel_names`), which ``retina-raf figures`` writes: the
    notebook shows those and exports the rest, so each panel file has one writer.

    Returns ``{format: path}`` of the written files, empty for a paper panel.
    """
    if name in paper_names:
        return {}
    return export_panel(fig, name, out_dir=figures_dir, **export_kw)


def export_paper_panels(
    results_path: str | Path | xr.Dataset,
    out_dir: str | Path = "reports/figures",
    dpi: int = 300,
    formats: Sequence[str] = PANEL_FORMATS,
    method: str | None = None,
    epoch: int | None = None,
) -> list[Path]:
    """Export every paper panel the results provide (PDF, SVG, PNG each) into ``out_dir``.

    Panels: ``rf_montage_<preset>`` (lowest seed of each condition), ``<metric>_vs_rank``
    for symmetry, OSI and orientedness and, with bottleneck runs, ``<metric>_vs_nbn``,
    ``fraction_center_surround``, ``learning_curves`` and ``alignment``. A panel whose data
    the file lacks (e.g. no BP runs) is skipped with a :class:`PanelSkipped` warning.
    ``method``: the RF method of a file that holds several (None: its first). A
    trajectories file is drawn at ``epoch`` (each run at its last where it has not reached
    it; None: each run's last; :func:`analysis.results.rf_results_view`).
    Returns the written files.
    """
    unknown = [fmt for fmt in formats if fmt not in PANEL_FORMATS]
    if unknown:  # checked before drawing anything
        raise ConfigError(f"unknown panel format(s) {unknown}; choose from {PANEL_FORMATS}")
    from analysis.results import open_results, rf_results_view

    if isinstance(results_path, xr.Dataset):
        results = rf_results_view(results_path, method, epoch)
    else:
        with open_results(results_path) as opened:
            results = rf_results_view(opened.load(), method, epoch)
    written = []
    for name, draw in paper_panels(results):
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
