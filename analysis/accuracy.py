"""Test accuracy of the Fig. 3 networks as xarray: run folders -> one labelled dataset.

The Fig. 3 panels plot accuracy, not receptive fields. ``collect_accuracy(run_dirs)`` reads
each finished run's config and ``history.nc`` (through :mod:`retina_raf.runs`, which owns
the run folder) and stacks them along ``run``::

    dims    run, epoch
    coords  run_id, preset, arch, rule, constrain, rank, rank_fraction, d, width, seed
            (on run; see ``retina_raf.runs.run_identity``: rule bp / raf / draf ..., the
            constrained layer(s) or ``none`` / ``all`` / ``direct:<source>``, the feedback
            rank, the number of classes d, the hidden width)
    vars    test_acc, test_loss, train_acc, train_loss (run): after the last epoch;
            best_test_acc (run): the highest over epochs (reported, never selected on);
            epochs (run): epochs trained;
            test_acc_curve, train_loss_curve (run, epoch): per epoch, NaN past a run's end
    attrs   provenance (package version, git commit, date)

``ds.groupby("rank")``, ``ds.where(ds.rule == "bp")``; :func:`accuracy_table` gives the
same as a tidy pandas table, one row per run. Written with :func:`write_accuracy`
(atomically, NetCDF-4), read with :func:`load_accuracy`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from analysis.provenance import KIND_ACCURACY
from analysis.stacking import open_runs, stack_runs
from retina_raf import runs
from retina_raf.errors import DataError, RunError
from retina_raf.io import write_netcdf

ACCURACY_COORDS = ("run_id", "preset", "arch", "rule", "constrain", "rank", "rank_fraction",
                   "d", "width", "seed")  # fmt: skip
FINAL_VARS = ("test_acc", "test_loss", "train_acc", "train_loss")
COORD_ATTRS = {
    "run_id": {"long_name": "run folder name"},
    "preset": {"long_name": "condition (preset) of the run"},
    "arch": {"long_name": "network (mlp, vgg, vit)"},
    "rule": {"long_name": "learning rule family (bp, raf, draf, ...)"},
    "constrain": {"long_name": "feedback layer(s) whose rank is constrained"},
    "rank": {
        "long_name": "feedback rank of the constrained layers (full width if none)",
        "units": "1",
    },  # fmt: skip
    "rank_fraction": {"long_name": "rank as a fraction of each layer's width", "units": "1"},
    "d": {"long_name": "number of classes of the task", "units": "1"},
    "width": {"long_name": "hidden width of the network", "units": "1"},
    "seed": {"long_name": "training seed of the run"},
    "epoch": {"long_name": "training epoch", "units": "1"},
}
VAR_ATTRS = {
    "test_acc": "fraction correct on the test set after the last epoch",
    "test_loss": "cross-entropy on the test set after the last epoch (nats)",
    "train_acc": "fraction correct on the training set during the last epoch",
    "train_loss": "cross-entropy on the training set during the last epoch (nats)",
    "best_test_acc": "highest test accuracy over the epochs (reported, not used to select)",
    "epochs": "epochs trained",
    "test_acc_curve": "fraction correct on the test set after each epoch",
    "train_loss_curve": "cross-entropy on the training set during each epoch (nats)",
}


def accuracy_coords(run: runs.Run) -> dict:
    """A run's coordinates of :data:`ACCURACY_COORDS`, in that order, from its identity; a
    retina run has no constrained layer (``none``), width 0 and rank fraction NaN."""
    identity, model = run.identity, run.config.model
    row = {"run_id": run.run_id, **{k: identity.get(k) for k in ACCURACY_COORDS[1:]}}
    row["arch"] = identity.get("arch", model.arch)
    for key in ("constrain", "width", "rank_fraction"):
        if row[key] is None:  # a retina run: none of these labels apply
            row[key] = {"constrain": "none", "width": 0, "rank_fraction": np.nan}[key]
    if row["d"] is None:
        row["d"] = int(model.num_classes)
    return row


def run_accuracy(run_dir: str | Path | runs.Run) -> dict:
    """One finished run's identity and accuracies: ``{coordinate: value, ..., "curves": {...}}``.

    The run folder (or an opened :class:`~retina_raf.runs.Run`) is read through
    :func:`retina_raf.runs.open_run` (its config and ``history.nc``).

    Raises:
        RunError: not a finished run folder (no ``DONE``, ``model.pt``, config or history),
            or a damaged one.
    """
    (run,) = open_runs([run_dir], require_finished=True)
    history = run.history
    if history is None:
        raise RunError(f"{run.path} has no {runs.HISTORY_FILE}")
    row = accuracy_coords(run)
    n = history.sizes.get("epoch", 0)
    for name in FINAL_VARS:
        row[name] = float(history[name][-1]) if n and name in history else np.nan
    row["best_test_acc"] = float(history["test_acc"].max()) if n else np.nan
    row["epochs"] = int(n)
    row["curves"] = {
        "test_acc_curve": history["test_acc"].values if n else np.zeros(0),
        "train_loss_curve": history["train_loss"].values if n else np.zeros(0),
    }
    return row


def accuracy_dataset(run: runs.Run) -> xr.Dataset:
    """The per-run reduction of :func:`collect_accuracy`: :func:`run_accuracy` as a Dataset,
    the final values as scalars and the curves over ``epoch`` (1, 2, ... epochs trained)."""
    row = run_accuracy(run)
    data_vars = {name: ((), np.float64(row[name])) for name in (*FINAL_VARS, "best_test_acc")}
    data_vars["epochs"] = ((), np.int64(row["epochs"]))
    for name, curve in row["curves"].items():
        data_vars[name] = ("epoch", np.asarray(curve, dtype=np.float64))
    ds = xr.Dataset(data_vars, coords={"epoch": np.arange(1, row["epochs"] + 1)})
    for name, long_name in VAR_ATTRS.items():
        ds[name].attrs.update({"long_name": long_name, "units": "1"})
    return ds.assign_attrs(results="test accuracy of Fig. 3 runs")


def collect_accuracy(run_dirs: Sequence[str | Path | runs.Run]) -> xr.Dataset:
    """Stack the accuracies of run folders along ``run`` (schema: module docstring); runs
    that trained fewer epochs have NaN curves past their end.

    Raises:
        DataError: no run folders; RunError: a folder that is not a finished run.
    """
    if not run_dirs:
        raise DataError("no run folders to collect")
    ds = stack_runs(run_dirs, accuracy_dataset, kind=KIND_ACCURACY, identity=accuracy_coords,
                    config=False)  # fmt: skip
    for name, attrs in COORD_ATTRS.items():
        ds[name].attrs.update(attrs)
    return ds


def write_accuracy(ds: xr.Dataset, path: str | Path) -> Path:
    """Write an accuracy dataset to NetCDF-4, atomically."""
    return write_netcdf(ds, path)


def load_accuracy(path: str | Path, require: Sequence[str] = ("test_acc",)) -> xr.Dataset:
    """Read an accuracy dataset (``--collect`` of a Fig. 3 experiment) into memory.

    Raises:
        DataError: no such file, not an accuracy dataset, or a required variable missing.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such results file: {path}")
    try:
        with xr.open_dataset(path, engine="h5netcdf") as ds:
            ds = ds.load()
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    missing = [name for name in ("rule", "rank", "seed") if name not in ds.coords]
    if missing:
        raise DataError(
            f"{path} is not an accuracy dataset (no coordinate {missing[0]!r}); make one with "
            "`retina-raf sweep FILE --collect` on a Fig. 3 experiment"
        )
    absent = [name for name in require if name not in ds]
    if absent:
        raise DataError(f"{path} lacks {absent} (it has: {', '.join(map(str, ds.data_vars))})")
    return ds


def accuracy_table(ds: xr.Dataset, metric: str = "test_acc"):
    """One row per run: the run coordinates and ``metric`` (a pandas DataFrame)."""
    import pandas as pd

    # from the values, not to_dataframe(): a file opened by analysis.results indexes the
    # run coordinates, and an index cannot be reset to columns
    columns = [name for name in ACCURACY_COORDS if name in ds.coords]
    data = {name: ds[name].values for name in columns}
    return pd.DataFrame({**data, metric: ds[metric].values})


def summary_by_rank(ds: xr.Dataset, metric: str = "test_acc", by: Sequence[str] = ("d",)):
    """Mean, s.d. and number of seeds of ``metric`` per (rule, constrain, rank, *by)."""
    table = accuracy_table(ds, metric)
    keys = [k for k in (*by, "rule", "constrain", "rank") if k in table]
    grouped = table.groupby(keys, dropna=False)[metric]
    return grouped.agg(["mean", "std", "count"]).rename(columns={"count": "n_seeds"})


# What counts as "reaching BP": within one percentage point of its mean accuracy.
TOLERANCE = 0.01


def gap_to_bp(
    ds: xr.Dataset,
    metric: str = "test_acc",
    by: Sequence[str] = ("d",),
    tolerance: float = TOLERANCE,
):
    """The paper's claim, per group: is accuracy at rank r = d (the smallest rank >= d run)
    as high as backprop's?

    One row per (*by, rule, constrain) with ``rank`` (the rank used), the mean and s.d. over
    seeds of ``metric`` there (``<metric>``, ``<metric>_sd``) and backprop's (``bp``,
    ``bp_sd``), their ``difference`` (RAF - BP, fractions), Welch's two-sided t-test p-value
    (``p_welch``; NaN with fewer than two seeds on either side), the numbers of seeds, and
    ``rank_reaching_bp``: the smallest rank from which on every rank run has a mean within
    ``tolerance`` (fraction) of backprop's, or -1 when even the largest does not (0 when the
    group has no backprop runs).
    """
    import pandas as pd
    from scipy import stats as scipy_stats

    table = accuracy_table(ds, metric)
    by = [k for k in by if k in table]
    rows = []
    for key, group in table.groupby(by, dropna=False) if by else [((), table)]:
        key = key if isinstance(key, tuple) else (key,)
        bp = group[group["rule"] == "bp"][metric].to_numpy(float)
        for (rule, constrain), cell in group[group["rule"] != "bp"].groupby(["rule", "constrain"]):
            d = int(cell["d"].iloc[0])
            at_least_d = cell[cell["rank"] >= d]
            if at_least_d.empty:
                continue
            rank = int(at_least_d["rank"].min())
            values = at_least_d[at_least_d["rank"] == rank][metric].to_numpy(float)
            p_welch = np.nan
            if len(values) >= 2 and len(bp) >= 2 and np.std(values) + np.std(bp) > 0:
                p_welch = float(scipy_stats.ttest_ind(values, bp, equal_var=False).pvalue)
            rows.append({**dict(zip(by, key, strict=True)), "rule": rule, "constrain": constrain,
                         "rank": rank, metric: values.mean(), f"{metric}_sd": _sd(values),
                         "bp": bp.mean() if len(bp) else np.nan, "bp_sd": _sd(bp),
                         "difference": values.mean() - bp.mean() if len(bp) else np.nan,
                         "p_welch": p_welch, "n_seeds": len(values), "n_seeds_bp": len(bp),
                         "rank_reaching_bp": _rank_reaching(cell, metric, bp, tolerance),
                         })  # fmt: skip
    return pd.DataFrame(rows)


def _sd(values: np.ndarray) -> float:
    """Sample s.d. (ddof 1) over seeds; NaN for fewer than two."""
    return float(np.std(values, ddof=1)) if len(values) >= 2 else np.nan


def _rank_reaching(cell, metric: str, bp: np.ndarray, tolerance: float) -> int:
    """The smallest rank from which on the mean ``metric`` stays within ``tolerance`` of
    backprop's mean (-1: not even the largest rank; 0: no backprop runs to compare with)."""
    if not len(bp):
        return 0
    means = cell.groupby("rank")[metric].mean().sort_index()
    reaching = (means >= bp.mean() - tolerance).to_numpy()
    if not reaching[-1]:
        return -1
    first_of_last_run = len(reaching) - np.argmin(reaching[::-1]) if not reaching.all() else 0
    return int(means.index[first_of_last_run])


def findings_markdown(
    ds: xr.Dataset, metric: str = "test_acc", tolerance: float = TOLERANCE
) -> str:
    """The findings of an accuracy dataset as Markdown (what the README quotes): per task
    dimension d and per rule and constrained layer, accuracy at r = d against backprop's
    (:func:`gap_to_bp`: mean ± s.d. over seeds in percent, the difference in percentage points,
    Welch's p) and the smallest rank from which on RAF is within ``tolerance`` of BP."""
    # backprop at the same width: Fig. 3b's narrow BP network is not RAF's reference
    by = [name for name in ("d", "width") if name in ds.coords]
    gaps = gap_to_bp(ds, metric, by=by, tolerance=tolerance)
    if gaps.empty:
        raise DataError("no RAF runs at a rank >= d with backprop to compare: nothing to report")
    gaps = gaps.sort_values([*by, "rule", "constrain"], key=_constrain_order)
    show_width = "width" in by and gaps["width"].nunique() > 1
    points = f"{100 * tolerance:g} pp"
    lines = [
        f"| d |{' width |' if show_width else ''} rule | feedback at rank r | r "
        f"| accuracy at r (%) | BP (%) | RAF - BP (pp) | Welch p | rank from which every higher "
        f"rank is within {points} of BP |",
        "|---|" + "---|" * (8 + show_width),
    ]
    for row in gaps.itertuples(index=False):
        row = row._asdict()
        width = f" {row['width']} |" if show_width else ""
        reach = {-1: "none run", 0: "–"}.get(row["rank_reaching_bp"], str(row["rank_reaching_bp"]))
        if row["constrain"] == "none":  # every feedback matrix at full rank
            reach = "–"
        p = "–" if np.isnan(row["p_welch"]) else f"{row['p_welch']:.2g}"
        lines.append(
            f"| {row['d']} |{width} {row['rule']} | {_feedback_label(row['constrain'])} "
            f"| {row['rank']} "
            f"| {_mean_sd(row[metric], row[metric + '_sd'], row['n_seeds'])} "
            f"| {_mean_sd(row['bp'], row['bp_sd'], row['n_seeds_bp'])} "
            f"| {100 * row['difference']:+.1f} | {p} | {reach} |"
        )
    return "\n".join(lines)


def _constrain_order(column):
    """Sort key: the constrained layers in network order, ``all`` after them, ``none`` last."""
    if column.name != "constrain":
        return column
    return column.map(lambda c: (2, c) if c == "none" else (1, c) if c == "all" else (0, c))


def _feedback_label(constrain: str) -> str:
    return {"none": "none (all full rank)", "all": "every layer"}.get(constrain, constrain)


def _mean_sd(mean: float, sd: float, n: int) -> str:
    if not n or np.isnan(mean):
        return "–"
    spread = "" if np.isnan(sd) else f" ± {100 * sd:.1f}"
    return f"{100 * mean:.1f}{spread} (n = {n})"


RULE_NAMES = {"raf": "RAF", "draf": "dRAF", "bp": "BP"}


def plot_accuracy_vs_rank(
    ds: xr.Dataset,
    metric: str = "test_acc",
    ax=None,
    title: str | None = None,
):
    """Accuracy against feedback rank: one line per (rule, constrained layer) with every
    seed shown as a dot and the mean over seeds as the line; backprop (``rule == "bp"``) and
    RAF with every feedback matrix at full rank (``constrain == "none"``) as horizontal lines
    (mean) with a band (range over seeds), so that the full width does not stretch the rank
    axis; a dotted line at r = d when the runs share one task. Log-scaled rank axis, a tick
    at every rank run (a label left out where it would touch its neighbour, never d's).

    Args:
        ds: an accuracy dataset (one task: select ``d`` before plotting several).
        metric: ``test_acc`` or ``best_test_acc`` (fractions; shown in percent).
        ax: axes to draw on (default: a new single-column figure).
        title: the axes' title.

    Returns:
        the figure.
    """
    from analysis.figures.style import PALETTE, new_figure

    if ax is None:
        fig, ax = new_figure("single")
    else:
        fig = ax.figure
    table = accuracy_table(ds, metric)
    table[metric] = 100 * table[metric]
    references = [("BP", table[table["rule"] == "bp"], PALETTE[7], "--")]
    others = table[table["rule"] != "bp"]
    full_rank = others["constrain"] == "none"
    for rule, group in others[full_rank].groupby("rule"):
        references.append((f"{RULE_NAMES.get(rule, rule)}, full rank", group, PALETTE[4], "-."))
    others = others[~full_rank]
    colors = [color for i, color in enumerate(PALETTE) if i not in (4, 7)]  # the references'
    groups = list(others.groupby(["rule", "constrain"], sort=True))
    for i, ((rule, constrain), group) in enumerate(groups):
        color = colors[i % len(colors)]
        where = "every layer" if constrain == "all" else constrain
        label = f"{RULE_NAMES.get(rule, rule)}, {where} at rank $r$"
        mean = group.groupby("rank")[metric].mean()
        ax.scatter(group["rank"], group[metric], s=6, color=color, alpha=0.5, linewidths=0)
        ax.plot(mean.index, mean.values, "o-", color=color, ms=3, lw=1, label=label)
    for label, reference, color, style in references:
        if len(reference):
            low, high = reference[metric].min(), reference[metric].max()
            ax.axhspan(low, high, color=color, alpha=0.15, lw=0, zorder=0)
            ax.axhline(reference[metric].mean(), color=color, lw=1, ls=style,
                       label=f"{label} (n={len(reference)})")  # fmt: skip
    one_task = table["d"].nunique() == 1
    if len(others) and (others["rank"] > 0).all():
        _rank_axis(ax, others["rank"], keep=int(table["d"].iloc[0]) if one_task else None)
    if one_task and len(others):  # the paper's threshold r = d
        ax.axvline(int(table["d"].iloc[0]), color="0.5", lw=0.8, ls=":", label="$r = d$")
    ax.set_xlabel("feedback rank $r$")
    ax.set_ylabel("test accuracy (%)" if metric == "test_acc" else f"{metric} (%)")
    if title:
        ax.set_title(title)
    if groups or any(len(reference) for _, reference, _, _ in references):
        ax.legend(frameon=False, fontsize="small")
    return fig


def plot_gap_vs_rank(
    ds: xr.Dataset,
    metric: str = "test_acc",
    constrain: str = "all",
    tolerance: float = TOLERANCE,
    ax=None,
):
    """The paper's Fig. 3c in one panel: RAF's accuracy minus backprop's (percentage points)
    against the feedback rank, one line per task dimension d (mean over seeds; dots: each
    seed against BP's mean), the smallest rank >= d ringed (the findings table's r = d); the
    band is ``tolerance`` around BP.
    If the rank needed follows the task, each line reaches the band near its own d.

    Args:
        ds: an accuracy dataset with backprop and RAF runs at several d.
        metric: ``test_acc`` or ``best_test_acc``.
        constrain: which RAF runs (``all``: every feedback matrix at rank r).
        tolerance: half-width of the band around 0 (fraction; drawn in percentage points).
        ax: axes to draw on (default: a new single-column figure).

    Returns:
        the figure.

    Raises:
        DataError: no task has both backprop runs and RAF runs with ``constrain``.
    """
    from analysis.figures.style import new_figure

    table = accuracy_table(ds, metric)
    raf = table[(table["rule"] == "raf") & (table["constrain"] == constrain)]
    bp_means = table[table["rule"] == "bp"].groupby("d")[metric].mean()
    tasks = sorted(set(raf["d"]) & set(bp_means.index))
    if not tasks:
        raise DataError(f"no task has both BP runs and RAF runs with constrain={constrain!r}")
    if ax is None:
        fig, ax = new_figure("single")
    else:
        fig = ax.figure
    import seaborn as sns

    colors = sns.color_palette("viridis", len(tasks))
    ax.axhspan(-100 * tolerance, 100 * tolerance, color="0.9", lw=0, zorder=0)
    ax.axhline(0, color="0.5", lw=0.8, ls="--")
    for color, d in zip(colors, tasks, strict=True):
        runs = raf[raf["d"] == d]
        gap = 100 * (runs[metric] - bp_means[d])
        mean = gap.groupby(runs["rank"]).mean()
        ax.scatter(runs["rank"], gap, s=6, color=color, alpha=0.5, linewidths=0)
        ax.plot(mean.index, mean.values, "o-", color=color, ms=3, lw=1, label=f"d = {d}")
        at_least_d = mean[mean.index >= d]
        if len(at_least_d):  # the comparison of the findings table: the smallest rank >= d
            ax.plot(at_least_d.index[:1], at_least_d.values[:1], "o", ms=8, mfc="none",
                    mec=color, mew=1.2)  # fmt: skip
    _rank_axis(ax, raf["rank"])
    ax.set_xlabel("feedback rank $r$ (every layer)" if constrain == "all" else "feedback rank $r$")
    ax.set_ylabel("RAF $-$ BP test accuracy (pp)")
    ax.legend(frameon=False, fontsize="small", title="ringed: smallest $r \\geq d$",
              title_fontsize="small")  # fmt: skip
    return fig


def _rank_axis(ax, ranks, keep: int | None = None) -> None:
    """A log2 rank axis with a tick at every rank run, touching labels thinned (keeping d's)."""
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullFormatter

    ranks = sorted(set(int(rank) for rank in ranks))
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(ranks))
    ax.xaxis.set_major_formatter(FixedFormatter(_tick_labels(ranks, keep)))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _tick_labels(ranks: list[int], keep: int | None, min_octaves: float = 0.45) -> list[str]:
    """Labels for ticks at ``ranks`` on a log2 axis: a label closer than ``min_octaves`` to
    the last one shown is left out (8 and 10 would touch), except ``keep`` (d), which
    replaces its neighbour instead."""
    labels = [str(rank) for rank in ranks]
    shown = None
    for i, rank in enumerate(ranks):
        if shown is not None and np.log2(rank / ranks[shown]) < min_octaves:
            if rank == keep:
                labels[shown] = ""
                shown = i
            else:
                labels[i] = ""
            continue
        shown = i
    return labels
