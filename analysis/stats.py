"""Statistics of a results dataset (docs/design.md#reports): tables and tests between ranks.

The unit of every comparison is the *run* (one seed of one condition), never the RF: a
run's value is the mean of a per-unit metric over its responsive units
(:func:`analysis.figures.per_run_metric`, the same numbers the panels plot). The RFs of one
network share its training history, so treating them as independent samples would be
pseudo-replication and would make any difference look significant with enough channels.

Tests (two-sided, nonparametric since a few seeds cannot show normality):

- :func:`compare_ranks`: RAF runs without feedforward bottleneck (``n_bn`` = full width),
  grouped by the rank of the feedback into the retina; :func:`compare_bottlenecks`: BP runs
  grouped by ``n_bn``;
- across all groups a Kruskal-Wallis H test (:func:`kruskal_exact`) and a Jonckheere-Terpstra
  test of a monotone trend along the ordered factor (:func:`jonckheere_terpstra`), both with
  exact permutation p-values: the share of all assignments of the pooled values to groups of
  the observed sizes whose statistic is at least as extreme as the observed one (up to
  :data:`MAX_ENUMERATION` assignments; beyond, a seeded Monte Carlo sample of them). With
  three seeds per group scipy's chi-square approximation of the Kruskal-Wallis p can be far
  off (complete separation of 3 x 3 runs: 0.027 instead of 6/1680 = 0.0036), so it is kept
  alongside, not headlined;
- every pair of groups by a Mann-Whitney U test (``scipy.stats``), the pairwise p-values
  Holm-corrected (family-wise error rate ``alpha``).

A group needs at least :data:`MIN_SEEDS` runs with a finite value and a test at least two
such groups; otherwise the comparison says "n too small" and gives no p-value (a
Kruskal-Wallis p from one seed per group would be meaningless). With few seeds even a
perfect separation cannot make a pair significant (exact Mann-Whitney, 3 vs 3 seeds:
p >= 0.1); the comparison notes it, and the findings table then leaves the pairs out.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import combinations
from typing import NamedTuple

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
    "jonckheere_terpstra",
    "kruskal_exact",
    "min_attainable_p",
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


# ------------------------------------------------------------------ exact permutation tests
MAX_ENUMERATION = 2_000_000  # assignments enumerated exactly; more: Monte Carlo
MONTE_CARLO_PERMUTATIONS = 100_000
MONTE_CARLO_SEED = 0  # fixed, so that a published p-value is reproducible
EXACT, MONTE_CARLO = "exact", "Monte Carlo"
# A permuted statistic equal to the observed one up to float rounding (sums taken in another
# order) counts as at least as extreme; relative to the statistic's size.
RELATIVE_TOLERANCE = 1e-12
_CHUNK_ELEMENTS = 1 << 22  # label-matrix elements per block, to bound temporary memory


class KruskalResult(NamedTuple):
    """Kruskal-Wallis H test with a permutation p (:func:`kruskal_exact`)."""

    h: float  # scipy.stats.kruskal's H (midranks, tie-corrected)
    p: float  # permutation p: P(H* >= H) over assignments of the values to the groups
    method: str  # EXACT (every assignment) or MONTE_CARLO (a seeded random sample of them)


class TrendResult(NamedTuple):
    """Jonckheere-Terpstra trend test with a permutation p (:func:`jonckheere_terpstra`)."""

    j: float  # sum over ordered pairs of groups i < j of #{x_i < x_j} + 0.5 #{x_i == x_j}
    z: float  # (J - E[J]) / sd[J] under no effect (tie-corrected variance); 0 if sd is 0
    direction: str  # "increasing", "decreasing" (values vs the groups' order) or "none"
    p: float  # two-sided permutation p: P(|J* - E[J]| >= |J - E[J]|)
    method: str  # EXACT or MONTE_CARLO


def n_assignments(sizes: Sequence[int]) -> int:
    """The number of distinct assignments of N = sum(sizes) values to groups of these
    sizes: the multinomial coefficient N! / (n_1! ... n_k!)."""
    count, placed = 1, 0
    for size in sizes:
        placed += size
        count *= math.comb(placed, size)
    return count


@lru_cache(maxsize=2)  # the same design recurs for every metric of a findings table
def _enumerated_labels(sizes: tuple[int, ...]) -> np.ndarray:
    """Every assignment of N positions to groups of ``sizes``: an (n_assignments(sizes), N)
    int8 array of group labels 0 .. k-1, each row with ``sizes[g]`` positions labelled g.

    Built group by group: the first group's positions are every combination of
    ``sizes[0]`` of the N, and the remaining positions take every assignment of the rest."""
    if len(sizes) == 1:
        labels = np.zeros((1, sizes[0]), dtype=np.int8)
    else:
        n_total, first = sum(sizes), sizes[0]
        rest = _enumerated_labels(sizes[1:]) + np.int8(1)  # (m, N - first), labels 1 .. k-1
        chosen = np.array(list(combinations(range(n_total), first)), dtype=np.intp)
        in_first = np.zeros((len(chosen), n_total), dtype=bool)
        in_first[np.arange(len(chosen))[:, None], chosen] = True
        others = np.nonzero(~in_first)[1].reshape(len(chosen), n_total - first)
        labels = np.zeros((len(chosen), len(rest), n_total), dtype=np.int8)
        for block, positions in zip(labels, others, strict=True):
            block[:, positions] = rest
        labels = labels.reshape(-1, n_total)
    labels.setflags(write=False)  # cached: shared by every caller
    return labels


def _permutation_p(
    extremeness,
    sizes: Sequence[int],
    method: str,
    n_permutations: int,
    seed: int,
    max_enumeration: int,
) -> tuple[float, str]:
    """The share of assignments of the pooled values to groups of ``sizes`` that are at
    least as extreme as the observed one (labels ``0 .. k-1`` in the order of the pooled
    values), and the method used.

    ``extremeness``: (m, N) int8 labels -> (m,) float, larger is more extreme. ``method``:
    "auto" (EXACT up to ``max_enumeration`` assignments, else MONTE_CARLO), EXACT or
    MONTE_CARLO. Monte Carlo draws ``n_permutations`` uniformly random assignments with
    ``numpy.random.default_rng(seed)`` and gives (1 + #{at least as extreme}) /
    (1 + n_permutations), which is never 0 and is a valid p-value."""
    if method not in ("auto", EXACT, MONTE_CARLO):
        raise ConfigError(f"method {method!r} is not 'auto', {EXACT!r} or {MONTE_CARLO!r}")
    sizes = tuple(int(n) for n in sizes)
    observed_labels = np.repeat(np.arange(len(sizes), dtype=np.int8), sizes)
    observed = float(extremeness(observed_labels[None, :])[0])
    threshold = observed - RELATIVE_TOLERANCE * max(1.0, abs(observed))
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // (len(observed_labels) ** 2))
    if method == "auto":
        method = EXACT if n_assignments(sizes) <= max_enumeration else MONTE_CARLO
    if method == EXACT:
        labels = _enumerated_labels(sizes)
        extreme = sum(
            int(np.count_nonzero(extremeness(labels[start : start + rows_per_chunk]) >= threshold))
            for start in range(0, len(labels), rows_per_chunk)
        )
        return extreme / len(labels), EXACT
    rng = np.random.default_rng(seed)
    extreme, drawn = 0, 0
    while drawn < n_permutations:
        rows = min(rows_per_chunk, n_permutations - drawn)
        draws = rng.permuted(np.tile(observed_labels, (rows, 1)), axis=1)
        extreme += int(np.count_nonzero(extremeness(draws) >= threshold))
        drawn += rows
    return (1 + extreme) / (1 + n_permutations), MONTE_CARLO


def _pooled(samples: Sequence[Sequence[float]], what: str) -> tuple[np.ndarray, list[int]]:
    arrays = [np.asarray(sample, dtype=float).ravel() for sample in samples]
    if len(arrays) < 2 or any(len(a) == 0 for a in arrays):
        raise DataError(f"{what} needs at least two non-empty samples")
    pooled = np.concatenate(arrays)
    if not np.isfinite(pooled).all():
        raise DataError(f"{what} needs finite values (drop NaN first)")
    return pooled, [len(a) for a in arrays]


def kruskal_exact(
    samples: Sequence[Sequence[float]],
    *,
    method: str = "auto",
    n_permutations: int = MONTE_CARLO_PERMUTATIONS,
    seed: int = MONTE_CARLO_SEED,
    max_enumeration: int = MAX_ENUMERATION,
) -> KruskalResult:
    """Kruskal-Wallis H test with a permutation p-value instead of the chi-square one.

    Args:
        samples: k >= 2 one-dimensional samples (group i: n_i finite values), N in all.
        method: "auto": exact when the groups admit at most ``max_enumeration`` distinct
            assignments (N! / prod n_i!; 3 x 3 values: 1,680, 4 x 3: 369,600, 5 x 3:
            168,168,000), Monte Carlo otherwise; or force EXACT / MONTE_CARLO.
        n_permutations, seed: the Monte Carlo sample.

    Returns:
        ``KruskalResult(h, p, method)``: ``h`` is the statistic ``scipy.stats.kruskal``
        computes (pooled midranks, divided by the tie correction); ``p`` the share of
        assignments with H* >= H, every assignment of the N values to groups of sizes n_i
        being equally likely under no effect. The ranks are fixed, so H* depends only on
        each group's rank sum. All values equal: H = 0, p = 1 (every assignment alike).
    """
    pooled, sizes = _pooled(samples, "the Kruskal-Wallis test")
    if np.ptp(pooled) == 0:  # scipy's H is 0/0 here; no difference at all
        return KruskalResult(0.0, 1.0, EXACT)
    n_total = len(pooled)
    ranks = scipy_stats.rankdata(pooled)
    tie_factor = scipy_stats.tiecorrect(ranks)
    group_sizes = np.asarray(sizes, dtype=float)

    def h_of(labels: np.ndarray) -> np.ndarray:
        rank_sums = np.stack([(labels == g) @ ranks for g in range(len(sizes))], axis=1)
        mean_square = (rank_sums**2 / group_sizes).sum(axis=1)
        h_untied = 12.0 / (n_total * (n_total + 1)) * mean_square - 3.0 * (n_total + 1)
        return h_untied / tie_factor

    observed = np.repeat(np.arange(len(sizes), dtype=np.int8), sizes)
    p_value, used = _permutation_p(h_of, sizes, method, n_permutations, seed, max_enumeration)
    return KruskalResult(float(h_of(observed[None, :])[0]), p_value, used)


def jonckheere_variance(sizes: Sequence[int], tie_counts: Sequence[int]) -> float:
    """Null variance of the Jonckheere-Terpstra J for groups of ``sizes`` and pooled values
    with ties of sizes ``tie_counts`` (1 for an untied value), Hollander & Wolfe's
    tie-corrected formula; without ties [N^2 (2N + 3) - sum n_i^2 (2 n_i + 3)] / 72."""
    n = np.asarray(sizes, dtype=float)
    t = np.asarray(tie_counts, dtype=float)
    big_n = n.sum()
    first = (big_n * (big_n - 1) * (2 * big_n + 5) - (n * (n - 1) * (2 * n + 5)).sum()
             - (t * (t - 1) * (2 * t + 5)).sum()) / 72.0  # fmt: skip
    second = ((n * (n - 1) * (n - 2)).sum() * (t * (t - 1) * (t - 2)).sum()
              / (36.0 * big_n * (big_n - 1) * (big_n - 2))) if big_n > 2 else 0.0  # fmt: skip
    third = (n * (n - 1)).sum() * (t * (t - 1)).sum() / (8.0 * big_n * (big_n - 1))
    return float(first + second + third)


def jonckheere_terpstra(
    samples_in_order: Sequence[Sequence[float]],
    *,
    method: str = "auto",
    n_permutations: int = MONTE_CARLO_PERMUTATIONS,
    seed: int = MONTE_CARLO_SEED,
    max_enumeration: int = MAX_ENUMERATION,
) -> TrendResult:
    """Jonckheere-Terpstra test of a monotone trend across ordered groups, two-sided, with a
    permutation p-value.

    Args:
        samples_in_order: k >= 2 one-dimensional samples in the order of the factor (e.g.
            feedback rank ascending), group i with n_i finite values.
        method, n_permutations, seed, max_enumeration: as in :func:`kruskal_exact`.

    Returns:
        ``TrendResult(j, z, direction, p, method)``: J = sum over pairs of groups i < j of
        #{x in i, y in j: x < y} + 0.5 #{x == y} (large: values increase along the order);
        its null mean is sum_{i<j} n_i n_j / 2, ties or not; ``z`` standardizes J by that
        mean and the tie-corrected null variance (:func:`jonckheere_variance`), only to
        state size and ``direction`` ("increasing", "decreasing" or "none"); ``p`` is the
        share of assignments of the pooled values to the groups with |J* - E[J]| >=
        |J - E[J]|. Two groups: J is the Mann-Whitney U of the second group over the first.
    """
    pooled, sizes = _pooled(samples_in_order, "the Jonckheere-Terpstra test")
    null_mean = (len(pooled) ** 2 - sum(n * n for n in sizes)) / 4.0
    if np.ptp(pooled) == 0:  # every pair ties: every assignment gives J = E[J]
        return TrendResult(null_mean, 0.0, "none", 1.0, EXACT)
    # score[a, b]: what the pair (value a in a lower group, value b in a higher one) adds
    score = (pooled[:, None] < pooled[None, :]) + 0.5 * (pooled[:, None] == pooled[None, :])
    np.fill_diagonal(score, 0.0)
    flat_score = score.ravel()

    def j_of(labels: np.ndarray) -> np.ndarray:
        lower = labels[:, :, None] < labels[:, None, :]
        return lower.reshape(len(labels), -1) @ flat_score

    observed = np.repeat(np.arange(len(sizes), dtype=np.int8), sizes)
    j_statistic = float(j_of(observed[None, :])[0])
    _, tie_counts = np.unique(pooled, return_counts=True)
    variance = jonckheere_variance(sizes, tie_counts)
    z = (j_statistic - null_mean) / math.sqrt(variance) if variance > 0 else 0.0
    direction = ("increasing" if j_statistic > null_mean else
                 "decreasing" if j_statistic < null_mean else "none")  # fmt: skip
    p_value, used = _permutation_p(
        lambda labels: np.abs(j_of(labels) - null_mean),
        sizes,
        method,
        n_permutations,
        seed,
        max_enumeration,
    )
    return TrendResult(j_statistic, float(z), direction, p_value, used)


def attainable_holm_p(sizes: Sequence[int]) -> float:
    """The smallest Holm-adjusted p that pairwise exact Mann-Whitney tests between groups of
    these sizes can give: the number of pairs times the smallest pair's
    :func:`min_attainable_p` (Holm's first step), capped at 1."""
    pairs = list(combinations(sizes, 2))
    return min(1.0, len(pairs) * min(min_attainable_p(a, b) for a, b in pairs))


@dataclass
class GroupComparison:
    """A metric compared between groups of runs (see :func:`compare_groups`).

    ``per_run``: the runs in the comparison with their ``value``; ``groups``: per group
    n, mean, s.d.; ``status``: "ok", "n too small" or "no data"; ``message``: the result in
    one sentence. The tests (None when not done):

    - ``kruskal_h``, ``kruskal_p``: Kruskal-Wallis H and its permutation p (the headline;
      ``kruskal_method`` says EXACT or MONTE_CARLO), ``kruskal_p_chi2``: scipy's
      chi-square approximation of the same p, which can be far off with a few seeds;
    - ``trend_j``, ``trend_z``, ``trend_direction``, ``trend_p``, ``trend_method``: the
      Jonckheere-Terpstra trend along the factor's order (:class:`TrendResult`);
    - ``pairwise``: one row per pair (columns :data:`PAIRWISE_COLUMNS`), Mann-Whitney U
      with Holm correction; ``pairs_floor``: the smallest Holm-adjusted p this design can
      reach (:func:`attainable_holm_p`); ``pairs_attainable``: whether it is below alpha.
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
    kruskal_method: str | None = None
    kruskal_p_chi2: float | None = None
    trend_j: float | None = None
    trend_z: float | None = None
    trend_direction: str | None = None
    trend_p: float | None = None
    trend_method: str | None = None
    pairwise: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=PAIRWISE_COLUMNS))
    pairs_floor: float | None = None
    pairs_attainable: bool = False
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return " ".join([self.message, *self.notes])


def _format_p(p: float, name: str = "p") -> str:
    return f"{name} < 0.001" if p < 0.001 else f"{name} = {p:.3f}"


def _permutation_name(method: str) -> str:
    """How a permutation p is named in messages."""
    return "exact permutation p" if method == EXACT else "Monte Carlo permutation p"


def compare_groups(
    per_run: pd.DataFrame, factor: str, metric: str, alpha: float = 0.05, what: str = ""
) -> GroupComparison:
    """Compare ``per_run["value"]`` between the groups of runs sharing ``per_run[factor]``.

    Args:
        per_run: one row per run with columns ``factor`` and ``value`` (NaN values skipped).
        factor: the grouping column (``rank``, ``n_bn``), whose ascending order is the order
            of the trend test.
        metric: the metric's name (for the messages).
        alpha: family-wise significance level of the tests.
        what: which runs these are, for the messages (e.g. "RAF runs, n_bn = 32").

    Across the groups with at least :data:`MIN_SEEDS` finite values: Kruskal-Wallis with an
    exact permutation p (:func:`kruskal_exact`; the chi-square p kept as
    ``kruskal_p_chi2``), the Jonckheere-Terpstra trend along ``factor``
    (:func:`jonckheere_terpstra`), then pairwise Mann-Whitney U (two-sided), Holm-corrected.
    Fewer than two such groups: status "n too small", no p-value.
    """
    alpha = check_alpha(alpha)
    factor_name = FACTOR_NAMES.get(factor, factor)
    label = f"{metric} vs {factor_name}" + (f" ({what})" if what else "")
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
    samples = {  # ascending factor: the order the trend test reads
        level: finite.loc[finite[factor] == level, "value"].to_numpy(float)
        for level in sorted(testable[factor])
    }
    notes = []
    left_out = groups[groups["n"] < MIN_SEEDS][factor].tolist()
    if left_out:
        notes.append(f"Left out of the tests (fewer than {MIN_SEEDS} seeds): {factor} {left_out}.")
    pooled = np.concatenate(list(samples.values()))
    kruskal = kruskal_exact(list(samples.values()))
    trend = jonckheere_terpstra(list(samples.values()))
    if np.ptp(pooled) == 0:  # scipy's H is 0/0 here; no difference at all
        p_chi2 = 1.0
        notes.append("All values are identical.")
    else:
        p_chi2 = float(scipy_stats.kruskal(*samples.values()).pvalue)
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
    sizes = [len(v) for v in samples.values()]
    pairs_floor = attainable_holm_p(sizes)
    if pairs_floor >= alpha:
        floor = min(min_attainable_p(a, b) for a, b in combinations(sizes, 2))
        after_holm = (f", {pairs_floor:.3g} after Holm's correction over {len(pairwise)} pairs"
                      if len(pairwise) > 1 else "")  # fmt: skip
        notes.append(
            f"With these few seeds no pair can reach significance: the smallest attainable "
            f"Mann-Whitney p is {floor:.3g}{after_holm}, >= alpha."
        )
    if MONTE_CARLO in (kruskal.method, trend.method):
        notes.append(
            f"Monte Carlo: {MONTE_CARLO_PERMUTATIONS:,} random assignments (seed "
            f"{MONTE_CARLO_SEED}) of the {n_assignments(sizes):,} there are."
        )
    verdict = "differ" if kruskal.p < alpha else "no significant difference"
    trend_text = (f"{trend.direction} with {factor_name}" if trend.direction != "none"
                  else "no direction")  # fmt: skip
    message = (
        f"{label}: Kruskal-Wallis H = {kruskal.h:.2f}, "
        f"{_format_p(kruskal.p, _permutation_name(kruskal.method))} "
        f"(chi-square approximation: {_format_p(p_chi2)}) across "
        f"{len(samples)} groups ({factor} {list(samples)}; n = {', '.join(map(str, sizes))} "
        f"seeds): {verdict} at alpha = {alpha:g}; Jonckheere-Terpstra trend J = {trend.j:g} "
        f"(z = {trend.z:.2f}, {trend_text}), "
        f"{_format_p(trend.p, _permutation_name(trend.method))}; "
        f"{int(pairwise['significant'].sum())} of {len(pairwise)} "
        f"pairs significant after Holm correction."
    )
    return GroupComparison(
        **common,
        groups=groups,
        status="ok",
        message=message,
        kruskal_h=kruskal.h,
        kruskal_p=kruskal.p,
        kruskal_method=kruskal.method,
        kruskal_p_chi2=p_chi2,
        trend_j=trend.j,
        trend_z=trend.z,
        trend_direction=trend.direction,
        trend_p=trend.p,
        trend_method=trend.method,
        pairwise=pairwise,
        pairs_floor=pairs_floor,
        pairs_attainable=pairs_floor < alpha,
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
    ``rank``; the tests of :func:`compare_groups` (Kruskal-Wallis and the Jonckheere-Terpstra
    trend along rank, both with exact permutation p-values; pairwise Mann-Whitney U with Holm
    correction).

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


def _tests_markdown(tested: list[tuple[str, str, GroupComparison]], alpha: float) -> list[str]:
    """The findings' tests table, one row per (test name, metric, comparison), and the
    sentences under it. The pairs column is there only if some row's design can make a pair
    significant after Holm's correction: with three seeds per group none can."""
    done = [result for _, _, result in tested if result.status == "ok"]
    show_pairs = any(result.pairs_attainable for result in done)
    header = ["test", "metric", "Kruskal-Wallis H, exact p",
              "trend (Jonckheere-Terpstra), exact p"]  # fmt: skip
    if show_pairs:
        header.append("significant pairs (Holm)")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, metric, result in tested:
        cells = [name, FINDINGS_LABELS.get(metric, metric)]
        if result.status != "ok":
            cells += [result.status] + ["\u2013"] * (len(header) - 3)
            lines.append("| " + " | ".join(cells) + " |")
            continue
        monte_carlo = " (Monte Carlo)"
        cells.append(f"H = {result.kruskal_h:.2f}, {_format_p(result.kruskal_p)}"
                     + (monte_carlo if result.kruskal_method != EXACT else ""))  # fmt: skip
        cells.append(f"J = {result.trend_j:g}, z = {result.trend_z:.2f} "
                     f"({result.trend_direction}), {_format_p(result.trend_p)}"
                     + (monte_carlo if result.trend_method != EXACT else ""))  # fmt: skip
        if show_pairs:
            significant = result.pairwise[result.pairwise["significant"]]
            listed = ", ".join(f"{r.group_a} vs {r.group_b} (p = {r.p_holm:.3g})"
                               for r in significant.itertuples()) or "none"  # fmt: skip
            cells.append(listed if result.pairs_attainable else f"cannot reach p < {alpha:g}")
        lines.append("| " + " | ".join(cells) + " |")
    if not done:
        return [*lines, "", f"No test ran: each needs two groups with at least {MIN_SEEDS} "
                            "seeds."]  # fmt: skip
    monte_carlo_used = any(MONTE_CARLO in (r.kruskal_method, r.trend_method) for r in done)
    sentences = [
        "Exact p: the share of all assignments of the pooled per-run values to groups of the "
        "observed sizes (equally likely if the factor has no effect) whose statistic is at "
        "least as extreme as the observed one"
        + (f"; marked Monte Carlo where there are more than {MAX_ENUMERATION:,}, from "
           f"{MONTE_CARLO_PERMUTATIONS:,} random ones" if monte_carlo_used else "")
        + ". The Kruskal-Wallis test asks whether the groups differ at all, the "
        "Jonckheere-Terpstra test (two-sided) whether the metric rises or falls monotonically "
        "with the factor; z is J standardized by its null mean and variance, and its sign "
        "gives the direction (increasing: higher values at higher rank or N_bn)."
    ]  # fmt: skip
    if show_pairs:
        sentences.append(
            "Significant pairs: two-sided Mann-Whitney U tests of every two groups, "
            f'Holm-corrected; "cannot reach p < {alpha:g}" where the seeds are too few for '
            "any pair to."
        )
    else:
        floor = min(result.pairs_floor for result in done)
        sentences.append(
            "Pairwise Mann-Whitney tests are left out: with these seeds none can reach "
            f"p < {alpha:g} after Holm's correction (the smallest adjusted p these group "
            f"sizes allow is {floor:.2g})."
        )
    return [*lines, "", " ".join(sentences)]


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
    tests between feedback ranks and between bottleneck widths (:func:`compare_groups`:
    Kruskal-Wallis H and the Jonckheere-Terpstra trend, each with its exact permutation p;
    the Holm-corrected significant pairs only where the seeds allow a pair to be
    significant), and sentences that say what the p-values are.

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
    comparisons = [
        (f"feedback rank ({rule_label(rule)}{', BP as r = 32' if rule == 'raf_aligned' else ''})",
         lambda m, rule=rule: compare_ranks(results, m, alpha, rule=rule))
        for rule in FEEDBACK_RANK_RULES if rule in set(run_table(results)["rule"])
    ]  # fmt: skip
    comparisons.append(("N_bn (BP)", lambda m: compare_bottlenecks(results, m, alpha)))
    tested = [(name, metric, compare(metric)) for name, compare in comparisons
              for metric in metrics]  # fmt: skip
    tests = [""] + _tests_markdown(tested, alpha)
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
