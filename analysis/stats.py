"""Statistics of a results dataset (DESIGN.md sections 11-12): tables and tests between ranks.

The unit of every comparison is the *run* (one seed of one condition), never the RF: a
run's value is the mean of a per-unit metric over its responsive units
(:func:`analysis.figures.per_run_metric`, the same numbers the panels plot). The RFs of one
network share its training history, so treating them as independent samples would be
pseudo-replication and would make any difference look significant with enough channels.

Tests (``scipy.stats``, two-sided, nonparametric since a few seeds cannot show normality):

- :func:`compare_ranks`: RAF runs without feedforward bottleneck (``n_bn`` = full width),
  grouped by the rank of the feedback into the retina; :func:`compare_bottlenecks`: BP runs
  grouped by ``n_bn``;
- across all groups a Kruskal-Wallis H test, then every pair of groups by a Mann-Whitney U
  test, the pairwise p-values Holm-corrected (family-wise error rate ``alpha``).

A group needs at least :data:`MIN_SEEDS` runs with a finite value and a test at least two
such groups; otherwise the comparison says "n too small" and gives no p-value (a
Kruskal-Wallis p from one seed per group would be meaningless). With few seeds even a
perfect separation cannot reach significance (exact Mann-Whitney, 3 vs 3 seeds: p >= 0.1);
the comparison notes it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
import pandas as pd
import xarray as xr
from scipy import stats as scipy_stats

from analysis.per_run import (
    FEEDBACK_RANK_RULES,
    FULL_WIDTH,
    RUN_COLUMNS,
    condition_order,
    has_bottleneck_runs,
    in_condition_order,
    per_run_metric,
    responsive_units,
    rule_label,
    run_table,
)
from retina_raf.errors import ConfigError, DataError

__all__ = [
    "RUN_COLUMNS",
    "check_alpha",
    "class_counts",
    "compare_bottlenecks",
    "compare_groups",
    "compare_ranks",
    "final_values",
    "findings_markdown",
    "method_agreement_table",
    "has_bottleneck_runs",
    "holm",
    "run_table",
    "silent_runs",
    "summary_table",
]
MIN_SEEDS = 2  # runs with a finite value a group needs to enter a test
PAIRWISE_COLUMNS = ["group_a", "group_b", "n_a", "n_b", "U", "p", "p_holm", "significant"]
FACTOR_NAMES = {"rank": "feedback rank", "n_bn": "N_bn"}


def check_alpha(alpha) -> float:
    """The significance level as a float in (0, 0.5]; ConfigError otherwise."""
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise ConfigError(f"alpha {alpha!r} is not a number") from None
    if not 0.0 < value <= 0.5:
        raise ConfigError(f"alpha {alpha!r} must be in (0, 0.5] (usually 0.05)")
    return value


# ---------------------------------------------------------------------------------- tables
def silent_runs(results: xr.Dataset) -> list[str]:
    """``run_id`` of the runs without any responsive unit: they have no per-run value, so
    the panels and tests leave them out (say so rather than drop them silently)."""
    table = run_table(results)
    return [str(r) for r in table.loc[table["n_units"] == 0, "run_id"]]


def summary_table(
    results: xr.Dataset, metrics: Sequence[str] = ("symmetry", "osi", "fraction_center_surround")
) -> pd.DataFrame:
    """Per condition (preset): rule, rank, n_bn, the number of seeds, and the mean and
    standard deviation over seeds (ddof 1; NaN with one seed) of each per-run metric.

    The rows are in the order of the panels (:func:`analysis.per_run.condition_order`)."""
    table = in_condition_order(run_table(results, metrics))
    rows = []
    for preset, runs in table.groupby("preset", sort=False):
        row = {
            "condition": preset,
            "rule": runs["rule"].iloc[0],
            "rank": int(runs["rank"].iloc[0]),
            "n_bn": int(runs["n_bn"].iloc[0]),
            "n_seeds": len(runs),
        }
        for metric in metrics:
            values = runs[metric].dropna()
            row[f"{metric}_mean"] = values.mean() if len(values) else np.nan
            row[f"{metric}_sd"] = values.std(ddof=1) if len(values) > 1 else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def class_counts(results: xr.Dataset) -> pd.DataFrame:
    """Per run: how many of its units fall in each ``rf_class`` (padding excluded)."""
    from analysis.metrics import CLASSES

    if "rf_class" not in results:
        raise DataError("the results dataset has no rf_class to count")
    table = run_table(results).drop(columns="n_units")
    classes = results["rf_class"].astype(str)
    present = (
        results["present"].astype(bool) if "present" in results else classes != ""
    )  # "" marks the padding of bottleneck runs
    for name in CLASSES:
        table[name] = ((classes == name) & present).sum("channel").values.astype(int)
    return in_condition_order(table).reset_index(drop=True)


def final_values(results: xr.Dataset, variables: Sequence[str]) -> pd.DataFrame:
    """Per condition: mean and s.d. over seeds of each ``(run, epoch)`` history variable at
    each run's last finite epoch."""
    missing = [v for v in variables if v not in results]
    if missing:
        raise DataError(f"the results dataset has no history variable(s) {missing}")
    table = run_table(results)
    for name in variables:
        table[name] = _last_epoch(results, name)
    table = in_condition_order(table)
    rows = []
    for preset, runs in table.groupby("preset", sort=False):
        row = {"condition": preset, "n_seeds": len(runs)}
        for name in variables:
            values = runs[name].dropna()
            row[f"{name}_mean"] = values.mean() if len(values) else np.nan
            row[f"{name}_sd"] = values.std(ddof=1) if len(values) > 1 else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def styled(table: pd.DataFrame, precision: int = 3):
    """A table for display in a notebook: floats to ``precision`` decimals, p-values to 3
    significant digits, U statistics as they are, NaN as a dash, no index."""
    formats = {}
    for column in table.columns:
        if column == "p" or str(column).startswith("p_"):
            formats[column] = "{:.3g}"
        elif column == "U":
            formats[column] = "{:g}"
        elif pd.api.types.is_float_dtype(table[column]):
            formats[column] = f"{{:.{precision}f}}"
    # one call: a second Styler.format would reset the columns it does not name
    return table.style.format(formats, na_rep="\u2013").hide(axis="index")


# ----------------------------------------------------------------------------------- tests
def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1), input order."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.empty_like(p)
    running = 0.0
    for step, index in enumerate(np.argsort(p, kind="stable")):
        running = max(running, (len(p) - step) * p[index])
        adjusted[index] = min(1.0, running)
    return adjusted


def min_attainable_p(n_a: int, n_b: int) -> float:
    """The smallest two-sided p of an exact Mann-Whitney U test with n_a and n_b samples
    (complete separation, no ties): 2 / C(n_a + n_b, n_a)."""
    return min(1.0, 2.0 / math.comb(n_a + n_b, n_a))


@dataclass
class GroupComparison:
    """A metric compared between groups of runs (see :func:`compare_groups`).

    ``per_run``: the runs in the comparison with their ``value``; ``groups``: per group
    n, mean, s.d.; ``kruskal_h``/``kruskal_p``: the omnibus test (None when not done);
    ``pairwise``: one row per pair (columns :data:`PAIRWISE_COLUMNS`); ``status``: "ok",
    "n too small" or "no data"; ``message``: the result in one sentence.
    """

    metric: str
    factor: str
    alpha: float
    per_run: pd.DataFrame
    groups: pd.DataFrame
    status: str
    message: str
    kruskal_h: float | None = None
    kruskal_p: float | None = None
    pairwise: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=PAIRWISE_COLUMNS))
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return " ".join([self.message, *self.notes])


def _format_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def compare_groups(
    per_run: pd.DataFrame, factor: str, metric: str, alpha: float = 0.05, what: str = ""
) -> GroupComparison:
    """Compare ``per_run["value"]`` between the groups of runs sharing ``per_run[factor]``.

    Args:
        per_run: one row per run with columns ``factor`` and ``value`` (NaN values skipped).
        factor: the grouping column (``rank``, ``n_bn``).
        metric: the metric's name (for the messages).
        alpha: family-wise significance level of the tests.
        what: which runs these are, for the messages (e.g. "RAF runs, n_bn = 32").

    Kruskal-Wallis across the groups with at least :data:`MIN_SEEDS` finite values, then
    pairwise Mann-Whitney U (two-sided), Holm-corrected. Fewer than two such groups:
    status "n too small", no p-value.
    """
    alpha = check_alpha(alpha)
    label = f"{metric} vs {FACTOR_NAMES.get(factor, factor)}" + (f" ({what})" if what else "")
    finite = per_run[np.isfinite(per_run["value"].astype(float))]
    groups = (
        finite.groupby(factor)["value"]
        .agg(n="count", mean="mean", sd=lambda v: v.std(ddof=1) if len(v) > 1 else np.nan)
        .reset_index()
    )
    common = {"metric": metric, "factor": factor, "alpha": alpha, "per_run": per_run}
    if groups.empty:
        message = f"{label}: no data (no run with a finite value); no test."
        return GroupComparison(**common, groups=groups, status="no data", message=message)
    testable = groups[groups["n"] >= MIN_SEEDS]
    if len(testable) < 2:
        counts = ", ".join(
            f"{factor} {level}: {n} seed{'s' if n != 1 else ''}"
            for level, n in zip(groups[factor], groups["n"], strict=True)
        )
        message = (
            f"{label}: n too small for a test (needs at least 2 groups with >= {MIN_SEEDS} "
            f"seeds each; have {counts}); no p-value."
        )
        return GroupComparison(**common, groups=groups, status="n too small", message=message)
    samples = {
        level: finite.loc[finite[factor] == level, "value"].to_numpy(float)
        for level in testable[factor]
    }
    notes = []
    left_out = groups[groups["n"] < MIN_SEEDS][factor].tolist()
    if left_out:
        notes.append(f"Left out of the tests (fewer than {MIN_SEEDS} seeds): {factor} {left_out}.")
    pooled = np.concatenate(list(samples.values()))
    if np.ptp(pooled) == 0:  # scipy's H is 0/0 here; no difference at all
        h_statistic, p_value = 0.0, 1.0
        notes.append("All values are identical.")
    else:
        h_statistic, p_value = (float(v) for v in scipy_stats.kruskal(*samples.values()))
    rows = []
    for level_a, level_b in combinations(samples, 2):
        a, b = samples[level_a], samples[level_b]
        with warnings.catch_warnings():  # identical samples: scipy warns, p is 1
            warnings.simplefilter("ignore", category=RuntimeWarning)
            u_statistic, p_pair = scipy_stats.mannwhitneyu(a, b, alternative="two-sided")
        rows.append([level_a, level_b, len(a), len(b), float(u_statistic), float(p_pair)])
    pairwise = pd.DataFrame(rows, columns=PAIRWISE_COLUMNS[:6])
    pairwise["p_holm"] = holm(pairwise["p"])
    pairwise["significant"] = pairwise["p_holm"] < alpha
    floors = [min_attainable_p(len(a), len(b)) for a, b in combinations(samples.values(), 2)]
    if min(floors) >= alpha:
        notes.append(
            f"With these few seeds no pair can reach significance: the smallest attainable "
            f"Mann-Whitney p is {min(floors):.3g} >= alpha."
        )
    sizes = ", ".join(str(len(v)) for v in samples.values())
    verdict = "differ" if p_value < alpha else "no significant difference"
    message = (
        f"{label}: Kruskal-Wallis H = {h_statistic:.2f}, {_format_p(p_value)} across "
        f"{len(samples)} groups ({factor} {list(samples)}; n = {sizes} seeds): {verdict} at "
        f"alpha = {alpha:g}; {int(pairwise['significant'].sum())} of {len(pairwise)} pairs "
        f"significant after Holm correction."
    )
    return GroupComparison(
        **common,
        groups=groups,
        status="ok",
        message=message,
        kruskal_h=h_statistic,
        kruskal_p=p_value,
        pairwise=pairwise,
        notes=notes,
    )


def _per_run(results: xr.Dataset, metric: str, keep: np.ndarray) -> pd.DataFrame:
    table = run_table(results)
    table["value"] = per_run_metric(results, metric).values
    return table[keep].reset_index(drop=True)


def compare_ranks(
    results: xr.Dataset,
    metric: str,
    alpha: float = 0.05,
    full_width: int = FULL_WIDTH,
    rule: str = "raf",
) -> GroupComparison:
    """``metric`` (per-run mean) between feedback ranks: runs of ``rule`` (RAF; ``raf_pca``:
    P by PCA; ``raf_aligned``: P by PCA and Q = W^T P^T) with ``n_bn == full_width`` grouped by
    ``rank``; Kruskal-Wallis, then pairwise Mann-Whitney U with Holm correction.

    The BP runs (the reference in the panels) are not part of the test, except for
    ``raf_aligned``: at full rank its feedback W^T P^T P is W^T (P orthogonal), so BP is that
    family's rank ``full_width`` and joins it.
    """
    rules, n_bn = np.asarray(results["rule"].values), np.asarray(results["n_bn"].values)
    family = (rule, "bp") if rule == "raf_aligned" else (rule,)
    keep = np.isin(rules, family) & (n_bn == full_width)
    what = f"{' and '.join(rule_label(r) for r in family)} runs, n_bn = {full_width}"
    return compare_groups(_per_run(results, metric, keep), "rank", metric, alpha, what)


def compare_bottlenecks(results: xr.Dataset, metric: str, alpha: float = 0.05) -> GroupComparison:
    """``metric`` (per-run mean) between feedforward bottlenecks: BP runs grouped by
    ``n_bn``; the same tests as :func:`compare_ranks`."""
    keep = np.asarray(results["rule"].values) == "bp"
    return compare_groups(_per_run(results, metric, keep), "n_bn", metric, alpha, "BP runs")


# -------------------------------------------------------------------------------- findings
FINDINGS_METRICS = ("symmetry", "osi", "fraction_center_surround")
FINDINGS_LABELS = {"symmetry": "symmetry", "osi": "OSI",
                   "fraction_center_surround": "center-surround"}  # fmt: skip
ALIGNMENT_LAYER = "vvs_1"  # the layer whose feedback reaches the retina (its P)


def _mean_sd(values: pd.Series, digits: int = 2) -> str:
    values = values.dropna()
    if values.empty:
        return "\u2013"
    if len(values) == 1:
        return f"{values.iloc[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} \u00b1 {values.std(ddof=1):.{digits}f}"


def _last_epoch(results: xr.Dataset, name: str, **where) -> np.ndarray:
    """Per run, a (run, epoch[, ...]) history variable at the run's last finite epoch."""
    values = results[name].sel(where) if where else results[name]
    values = values.transpose("run", "epoch").values.astype(float)
    return np.array([row[np.isfinite(row)][-1] if np.isfinite(row).any() else np.nan
                     for row in values])  # fmt: skip


def findings_markdown(
    results: xr.Dataset, metrics: Sequence[str] = FINDINGS_METRICS, alpha: float = 0.05
) -> str:
    """The findings of a results dataset as Markdown (what the README quotes): per condition,
    the mean ± s.d. over seeds of the test accuracy, the responsive units and each metric,
    with, where the file has them, the largest principal angle (degrees) between the retina's
    feedback projection P (``vvs_1``) and the error's top subspace at the last epoch (low-rank
    RAF only: at full rank it is 0 by construction) and the share of the top-r error variance
    P captures in the trained model (``final_error_variance_captured``), and the median
    per-unit correlation of the first RF method's maps with each other method's; then the
    tests between feedback ranks and between bottleneck widths (Kruskal-Wallis p, significant
    Holm-corrected pairs).

    ``results``: a single-method view (:func:`analysis.results.select_method`), except that
    the ``<a>_vs_<b>`` correlations of a two-method file may be passed along in it."""
    table = run_table(results, metrics)
    if "test_acc" in results:
        table["test_acc"] = _last_epoch(results, "test_acc")
    angle = "principal_angle_max_rad"
    has_angle = angle in results and ALIGNMENT_LAYER in results["layer"].values
    captured = "final_error_variance_captured"
    has_captured = has_angle and captured in results
    if has_angle:
        table["angle"] = np.degrees(_last_epoch(results, angle, layer=ALIGNMENT_LAYER))
    if has_captured:
        table["captured"] = results[captured].sel(layer=ALIGNMENT_LAYER).values
    pairs = [str(v) for v in results.data_vars if "_vs_" in str(v)]
    # the first method (the one the metrics come from) against each of the others
    pairs = [p for p in pairs if p.split("_vs_")[0] == pairs[0].split("_vs_")[0]]
    for pair in pairs:
        table[pair] = results[pair].where(responsive_units(results)).median("channel").values
    header = ["condition", "seeds", "test acc."]
    header += ["responsive units"] + [FINDINGS_LABELS.get(m, m) for m in metrics]
    if has_angle:
        header.append(f"P angle ({ALIGNMENT_LAYER}, \u00b0)")
        if has_captured:
            header.append("P's share of top-r variance")
    header += [f"{p.replace('_vs_', ' vs ')} r" for p in pairs]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for preset, runs in in_condition_order(table).groupby("preset", sort=False):
        cells = [preset, str(len(runs)), _mean_sd(runs.get("test_acc", pd.Series()), 3)]
        units = runs["n_units"]
        units_text = str(int(units.iloc[0])) if len(units) == 1 else _mean_sd(units, 1)
        cells.append(f"{units_text} of {int(runs['n_bn'].iloc[0])}")
        cells += [_mean_sd(runs[m]) for m in metrics]
        if has_angle:
            feedback_rank = runs["rule"].isin(FEEDBACK_RANK_RULES)
            low_rank = (feedback_rank & (runs["rank"] < runs["n_bn"])).any()
            cells.append(_mean_sd(runs["angle"], 0) if low_rank else "\u2013")  # full rank: 0
            if has_captured:
                cells.append(_mean_sd(runs["captured"]) if low_rank else "\u2013")  # full: 1
        cells += [_mean_sd(runs[p]) for p in pairs]
        lines.append("| " + " | ".join(cells) + " |")
    tests = [
        "",
        "| test | metric | Kruskal-Wallis | significant pairs (Holm) |",
        "|---|---|---|---|",
    ]
    comparisons = [
        (f"feedback rank ({rule_label(rule)}{', BP as r = 32' if rule == 'raf_aligned' else ''})",
         lambda m, rule=rule: compare_ranks(results, m, alpha, rule=rule))
        for rule in FEEDBACK_RANK_RULES if rule in set(run_table(results)["rule"])
    ]  # fmt: skip
    comparisons.append(("N_bn (BP)", lambda m: compare_bottlenecks(results, m, alpha)))
    for name, compare in comparisons:
        for metric in metrics:
            result = compare(metric)
            if result.status != "ok":
                tests.append(f"| {name} | {FINDINGS_LABELS.get(metric, metric)} | "
                             f"{result.status} | \u2013 |")  # fmt: skip
                continue
            significant = result.pairwise[result.pairwise["significant"]]
            listed = ", ".join(f"{r.group_a} vs {r.group_b} (p = {r.p_holm:.3g})"
                               for r in significant.itertuples()) or "none"  # fmt: skip
            omnibus = f"H = {result.kruskal_h:.2f}, {_format_p(result.kruskal_p)}"
            tests.append(f"| {name} | {FINDINGS_LABELS.get(metric, metric)} | {omnibus} | "
                         f"{listed} |")  # fmt: skip
    return "\n".join(lines + tests)


def method_agreement_table(results: xr.Dataset, pairs: Sequence[str]) -> pd.DataFrame:
    """Per condition and pair of RF methods (``<a>_vs_<b>`` variables, run x channel): the
    number of responsive units and the median and 10th percentile of the per-unit correlation
    of the two maps over them (seeds pooled), in the panels' condition order."""
    missing = [p for p in pairs if p not in results]
    if missing:
        raise DataError(f"the results dataset has no method correlation(s) {missing}")
    mask = responsive_units(results).values
    presets = np.asarray(results["preset"].values).astype(str)
    rows = []
    for preset in condition_order(results):
        in_condition = presets == preset
        for pair in pairs:
            values = results[pair].transpose("run", "channel").values[in_condition]
            values = values[mask[in_condition] & np.isfinite(values)]
            found = len(values) > 0
            rows.append({"condition": preset, "methods": pair.replace("_vs_", " vs "),
                         "units": len(values),
                         "median_r": np.median(values) if found else np.nan,
                         "p10_r": np.percentile(values, 10) if found else np.nan})  # fmt: skip
    return pd.DataFrame(rows)
