"""Test accuracy of the Fig. 3 networks as xarray: run folders -> one labelled dataset.

The Fig. 3 panels plot accuracy, not receptive fields. ``collect_accuracy(run_dirs)`` reads
each finished run's config and ``history.nc`` (through :mod:`retina_raf.runs`, which owns
the run folder) and stacks them along ``run``::

    dims    run, epoch
    coords  run_id, preset, arch, rule, constrain, rank, rank_fraction, d, width, seed
            (on run; see ``retina_raf.nets.run_identity``: rule bp / raf / draf ..., the
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


def run_accuracy(run_dir: str | Path) -> dict:
    """One finished run's identity and accuracies: ``{coordinate: value, ..., "curves": {...}}``.

    The run folder is read through :mod:`retina_raf.runs` (its config and ``history.nc``).

    Raises:
        RunError: not a finished run folder (no ``DONE``, ``model.pt``, config or history),
            or a damaged one.
    """
    run_dir = Path(run_dir)
    cfg = runs.check_finished(run_dir)
    identity = runs.run_identity(cfg)
    history = runs.load_history(run_dir)
    if history is None:
        raise RunError(f"{run_dir} has no {runs.HISTORY_FILE}")
    row = {"run_id": run_dir.name, **{k: identity.get(k) for k in ACCURACY_COORDS[1:]}}
    row["arch"] = identity.get("arch", cfg.model.arch)
    for key in ("constrain", "width", "rank_fraction"):
        if row[key] is None:  # a retina run: none of these labels apply
            row[key] = {"constrain": "none", "width": 0, "rank_fraction": np.nan}[key]
    if row["d"] is None:
        row["d"] = int(cfg.model.num_classes)
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


def collect_accuracy(run_dirs: Sequence[str | Path]) -> xr.Dataset:
    """Stack the accuracies of run folders along ``run`` (schema: module docstring).

    Raises:
        DataError: no run folders; RunError: a folder that is not a run.
    """
    from analysis.results import provenance

    rows = [run_accuracy(run_dir) for run_dir in run_dirs]
    if not rows:
        raise DataError("no run folders to collect")
    n_epochs = max(row["epochs"] for row in rows)
    data_vars = {}
    for name in (*FINAL_VARS, "best_test_acc", "epochs"):
        dtype = np.int64 if name == "epochs" else np.float64
        data_vars[name] = ("run", np.asarray([row[name] for row in rows], dtype=dtype))
    for name in ("test_acc_curve", "train_loss_curve"):
        curves = np.full((len(rows), n_epochs), np.nan)
        for i, row in enumerate(rows):
            curve = row["curves"][name]
            curves[i, : len(curve)] = curve
        data_vars[name] = (("run", "epoch"), curves)
    coords = {key: ("run", [row[key] for row in rows]) for key in ACCURACY_COORDS}
    coords["epoch"] = ("epoch", np.arange(1, n_epochs + 1))
    ds = xr.Dataset(data_vars, coords=coords)
    for name, attrs in COORD_ATTRS.items():
        ds[name].attrs.update(attrs)
    for name, long_name in VAR_ATTRS.items():
        ds[name].attrs.update({"long_name": long_name, "units": "1"})
    ds.attrs.update(provenance(results="test accuracy of Fig. 3 runs"))
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
    columns = [name for name in ACCURACY_COORDS if name in ds.coords]
    table = ds[metric].reset_coords(columns).to_dataframe()[columns + [metric]]
    return table.reset_index(drop=True)


def summary_by_rank(ds: xr.Dataset, metric: str = "test_acc", by: Sequence[str] = ("d",)):
    """Mean, s.d. and number of seeds of ``metric`` per (rule, constrain, rank, *by)."""
    table = accuracy_table(ds, metric)
    keys = [k for k in (*by, "rule", "constrain", "rank") if k in table]
    grouped = table.groupby(keys, dropna=False)[metric]
    return grouped.agg(["mean", "std", "count"]).rename(columns={"count": "n_seeds"})


def gap_to_bp(ds: xr.Dataset, metric: str = "test_acc", by: Sequence[str] = ("d",)):
    """The paper's claim, per group: is accuracy at rank r = d (the smallest rank >= d run)
    as high as backprop's? One row per (*by, rule, constrain) with the rank used, the mean
    ``metric`` there and BP's (over seeds), their difference and the numbers of seeds."""
    import pandas as pd

    table = accuracy_table(ds, metric)
    by = [k for k in by if k in table]
    rows = []
    for key, group in table.groupby(by, dropna=False) if by else [((), table)]:
        key = key if isinstance(key, tuple) else (key,)
        bp = group[group["rule"] == "bp"][metric]
        for (rule, constrain), cell in group[group["rule"] != "bp"].groupby(["rule", "constrain"]):
            d = int(cell["d"].iloc[0])
            at_least_d = cell[cell["rank"] >= d]
            if at_least_d.empty:
                continue
            rank = int(at_least_d["rank"].min())
            values = at_least_d[at_least_d["rank"] == rank][metric]
            rows.append({**dict(zip(by, key, strict=True)), "rule": rule, "constrain": constrain,
                         "rank": rank, metric: values.mean(), "bp": bp.mean(),
                         "difference": values.mean() - bp.mean(), "n_seeds": len(values),
                         "n_seeds_bp": len(bp)})  # fmt: skip
    return pd.DataFrame(rows)


def plot_accuracy_vs_rank(
    ds: xr.Dataset,
    metric: str = "test_acc",
    ax=None,
    title: str | None = None,
):
    """Accuracy against feedback rank: one line per (rule, constrained layer) with every
    seed shown as a dot and the mean over seeds as the line; backprop (``rule == "bp"``) a
    horizontal line (mean) with a band (range over seeds); a dotted line at r = d when the
    runs share one task. Log-scaled rank axis.

    Args:
        ds: an accuracy dataset (one task: select ``d`` before plotting several).
        metric: ``test_acc`` or ``best_test_acc`` (fractions; shown in percent).
        ax: axes to draw on (default: a new single-column figure).

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
    bp = table[table["rule"] == "bp"]
    others = table[table["rule"] != "bp"]
    colors = [color for i, color in enumerate(PALETTE) if i != 7]  # gray is backprop's
    groups = list(others.groupby(["rule", "constrain"], sort=True))
    for i, ((rule, constrain), group) in enumerate(groups):
        color = colors[i % len(colors)]
        label = rule if constrain in ("none", "all") else f"{rule} {constrain}"
        label = f"{rule} (all layers)" if constrain == "all" else label
        mean = group.groupby("rank")[metric].mean()
        ax.scatter(group["rank"], group[metric], s=6, color=color, alpha=0.5, linewidths=0)
        ax.plot(mean.index, mean.values, "o-", color=color, ms=3, lw=1, label=label)
    if len(bp):
        low, high, mean = bp[metric].min(), bp[metric].max(), bp[metric].mean()
        ax.axhspan(low, high, color="0.85", lw=0, zorder=0)
        ax.axhline(mean, color=PALETTE[7], lw=1, ls="--", label=f"BP (n={len(bp)})")
    if len(others) and (others["rank"] > 0).all():
        from matplotlib.ticker import NullFormatter, ScalarFormatter

        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(set(others["rank"].tolist())))  # the ranks that were run
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    if table["d"].nunique() == 1 and len(others):  # the paper's threshold r = d
        ax.axvline(int(table["d"].iloc[0]), color="0.5", lw=0.8, ls=":", label="$r = d$")
    ax.set_xlabel("feedback rank $r$")
    ax.set_ylabel("test accuracy (%)" if metric == "test_acc" else f"{metric} (%)")
    if title:
        ax.set_title(title)
    if groups or len(bp):
        ax.legend(frameon=False, fontsize="small")
    return fig
