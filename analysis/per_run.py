"""One value per run: the tidy table that the panels, the tables and the tests all read.

The unit of every comparison is the *run* (one seed of one condition), never the RF: a run's
value of a per-unit metric is its mean over the run's responsive units
(:func:`per_run_metric`). :func:`run_table` puts these values in a tidy ``pandas`` table,
one row per run with its identity (preset, rule, rank, n_bn, seed), which is what seaborn
plots and ``analysis.stats`` tests. :func:`condition_order` is the one order of conditions
of every panel and table (feedback ranks ascending, then the feedforward bottlenecks by
N_bn with ``bp`` as their full-width end, then dRAF), so that a table reads like the plots.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from retina_raf.errors import DataError

FULL_WIDTH = 32  # retina channels without bottleneck = full feedback rank (docs/design.md#model)
RUN_COLUMNS = ["run_id", "preset", "rule", "rank", "n_bn", "seed"]
RULE_LABELS = {
    "bp": "BP",
    "raf": "RAF",
    "raf_pca": "RAF (PCA)",
    "raf_aligned": "RAF (aligned)",
    "draf": "dRAF",
}
# The rules whose runs vary the rank of the feedback into the retina (one family each).
FEEDBACK_RANK_RULES = ("raf", "raf_pca", "raf_aligned")
# Learning rules in the order of the panels: RAF ranks first, other feedback rules, then BP
# (feedforward bottlenecks) and dRAF (bottlenecks trained by direct feedback).
RULE_ORDER = {"raf": 0, "raf_pca": 1, "raf_aligned": 2, "bp": 3, "draf": 4}


def rule_label(rule: str) -> str:
    """How a learning rule is written in panels: ``BP``, ``RAF``, ``dRAF`` (others as is)."""
    return RULE_LABELS.get(str(rule), str(rule))


def require(results: xr.Dataset, names: Sequence[str], what: str) -> None:
    """DataError naming ``what`` when the results lack any variable of ``names``."""
    missing = [n for n in names if n not in results.variables]
    if missing:
        raise DataError(f"{what} needs {missing}, which the results dataset lacks")


def run_coord(results: xr.Dataset, name: str) -> np.ndarray:
    """The values of a coordinate on ``run`` (preset, rank, n_bn, seed, rule) as an array."""
    if name not in results.coords and name not in results.variables:
        raise DataError(f"the results dataset has no {name!r} coordinate on 'run'")
    return np.asarray(results[name].values)


def condition_sort_key(rule: str, rank: int, n_bn: int, preset: str = "") -> tuple:
    """Sort key of a condition in the panels' order (module docstring)."""
    position = RULE_ORDER.get(str(rule), 1)
    # RAF and other feedback rules vary the rank; BP and dRAF vary the bottleneck N_bn
    level = int(n_bn) if position >= 2 else int(rank)
    return (position, str(rule), level, str(preset))


def condition_order(results: xr.Dataset) -> list[str]:
    """The presets of ``results`` in the order of the panels and tables."""
    table = pd.DataFrame({c: run_coord(results, c) for c in ("preset", "rule", "rank", "n_bn")})
    first = table.drop_duplicates("preset")
    keys = {
        row.preset: condition_sort_key(row.rule, row.rank, row.n_bn, row.preset)
        for row in first.itertuples()
    }
    return sorted(keys, key=keys.get)


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
        require(results, ["rf_class"], "the fraction of center-surround RFs")
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


def run_table(results: xr.Dataset, metrics: Sequence[str] = ()) -> pd.DataFrame:
    """One row per run (tidy): its identity (run_id, preset, rule, rank, n_bn, seed), the
    number of responsive units ``n_units`` and each metric's per-run mean, in the order of
    the runs in ``results``; ``rf_epoch`` after the identity where the RFs come from a
    trajectory (:func:`analysis.results.results_at_epoch`)."""
    missing = [c for c in RUN_COLUMNS if c not in results.coords and c not in results]
    if missing:
        raise DataError(f"the results dataset lacks the run coordinate(s) {missing}")
    columns = RUN_COLUMNS + (["rf_epoch"] if "rf_epoch" in results.coords else [])
    table = pd.DataFrame({c: np.asarray(results[c].values) for c in columns})
    table["n_units"] = responsive_units(results).sum("channel").values.astype(int)
    for metric in metrics:
        table[metric] = per_run_metric(results, metric).values
    return table


def in_condition_order(table: pd.DataFrame) -> pd.DataFrame:
    """Rows of a per-run table sorted by condition (:func:`condition_sort_key`), then seed."""
    keys = [
        (condition_sort_key(r.rule, r.rank, r.n_bn, r.preset), int(r.seed))
        for r in table.itertuples()
    ]
    return table.iloc[sorted(range(len(table)), key=keys.__getitem__)]


def has_bottleneck_runs(results: xr.Dataset, full_width: int = FULL_WIDTH) -> bool:
    """Whether any BP or dRAF run has a feedforward bottleneck (``n_bn < full_width``): the
    condition of every panel and test against N_bn."""
    rule, n_bn = run_coord(results, "rule"), run_coord(results, "n_bn")
    return bool((np.isin(rule, ["bp", "draf"]) & (n_bn < full_width)).any())
