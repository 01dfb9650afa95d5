"""Statistics between conditions (docs/design.md#reports): the run (seed) is the unit, a
Kruskal-Wallis test and a Jonckheere-Terpstra trend test across feedback ranks with exact
permutation p-values (checked against independent enumerations, scipy and a textbook example),
pairwise Mann-Whitney U with Holm correction shown only where the seeds allow significance, "n
too small" instead of a meaningless p-value, and the per-condition summary table."""

from __future__ import annotations

import math
import warnings
from itertools import combinations

import numpy as np
import pytest
import xarray as xr
from scipy import stats as scipy_stats

from analysis import stats
from retina_raf.errors import ConfigError

CONDITIONS = {  # preset: (rule, rank, n_bn)
    "bp": ("bp", 32, 32),
    "bp-bottleneck-2": ("bp", 2, 2),
    "raf-r2": ("raf", 2, 32),
    "raf-r4": ("raf", 4, 32),
    "raf-r32": ("raf", 32, 32),
    "raf-aligned-r2": ("raf_aligned", 2, 32),
    "raf-aligned-r4": ("raf_aligned", 4, 32),
}


def make_results(run_values: dict[str, list[float]], n_channels: int = 4, cs_channels=None):
    """A results dataset whose runs have the given per-run mean symmetry.

    ``run_values``: preset -> one value per seed. Each run's responsive units scatter
    symmetrically around its value (so the per-run mean is exactly the value); the last
    channel is unresponsive with a wild value that must not count. ``cs_channels``:
    preset -> center-surround units per run (the others are oriented).
    """
    rows = [(preset, seed, v) for preset, values in run_values.items() for seed, v in
            enumerate(values)]  # fmt: skip
    spread = np.linspace(-0.05, 0.05, n_channels - 1)
    symmetry = np.array([[*(value + spread), 100.0] for _, _, value in rows])
    responsive = np.ones((len(rows), n_channels), bool)
    responsive[:, -1] = False
    rf_class = np.full((len(rows), n_channels), "oriented", dtype=object)
    rf_class[:, -1] = "unresponsive"
    for run, (preset, _, _) in enumerate(rows):
        rf_class[run, : (cs_channels or {}).get(preset, 0)] = "center-surround"
    return xr.Dataset(
        {
            "symmetry": (("run", "channel"), symmetry),
            "responsive": (("run", "channel"), responsive),
            "present": (("run", "channel"), np.ones_like(responsive)),
            "rf_class": (("run", "channel"), rf_class.astype(str)),
            "train_loss": (("run", "epoch"), np.tile([2.0, 1.5, np.nan], (len(rows), 1))),
        },
        coords={
            "run_id": ("run", [f"{p}-s{s}" for p, s, _ in rows]),
            "preset": ("run", [p for p, _, _ in rows]),
            "rule": ("run", [CONDITIONS[p][0] for p, _, _ in rows]),
            "rank": ("run", [CONDITIONS[p][1] for p, _, _ in rows]),
            "n_bn": ("run", [CONDITIONS[p][2] for p, _, _ in rows]),
            "seed": ("run", [s for _, s, _ in rows]),
            "epoch": [1, 2, 3],
        },
    )


def test_holm_adjusts_step_down_and_keeps_order():
    """Holm: the k-th smallest p times (m - k + 1), made monotone, capped at 1."""
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.5])
    np.testing.assert_allclose(adjusted, [0.04, 0.09, 0.09, 0.5])
    assert list(stats.holm([0.6, 0.7])) == [1.0, 1.0]


def test_min_attainable_mann_whitney_p():
    """Exact two-sided Mann-Whitney: 3 vs 3 seeds can never give p < 0.1."""
    assert stats.min_attainable_p(3, 3) == pytest.approx(0.1)
    assert stats.min_attainable_p(5, 5) == pytest.approx(2 / 252)


def test_clear_difference_between_ranks_gives_small_p():
    """Low-rank runs with far higher symmetry than full-rank ones: small Kruskal-Wallis p and
    every pair significant after Holm correction (5 seeds per rank)."""
    results = make_results(
        {
            "raf-r2": [0.80, 0.82, 0.85, 0.81, 0.83],
            "raf-r4": [0.55, 0.52, 0.57, 0.50, 0.54],
            "raf-r32": [0.20, 0.22, 0.25, 0.21, 0.19],
            "bp": [0.9] * 5,  # the reference, not one of the ranks
        }
    )
    comparison = stats.compare_ranks(results, "symmetry")
    assert comparison.status == "ok"
    assert comparison.kruskal_p < 0.01 and comparison.kruskal_method == stats.EXACT
    assert comparison.trend_direction == "decreasing" and comparison.trend_p < 0.01
    assert list(comparison.groups["rank"]) == [2, 4, 32]
    assert list(comparison.groups["n"]) == [5, 5, 5]
    np.testing.assert_allclose(comparison.groups["mean"], [0.822, 0.536, 0.214])
    assert comparison.pairwise["significant"].all()
    np.testing.assert_allclose(comparison.pairwise["p"], 2 / 252)  # exact, complete split
    assert "Kruskal-Wallis" in comparison.message and "significant" in comparison.message
    assert "exact permutation p" in comparison.message and comparison.pairs_attainable


def test_identical_groups_give_large_p():
    """The same per-run values under every rank: p = 1, no pair significant."""
    values = [0.3, 0.5, 0.4, 0.6]
    results = make_results({"raf-r2": values, "raf-r32": values})
    comparison = stats.compare_ranks(results, "symmetry")
    assert comparison.kruskal_p == pytest.approx(1.0)
    assert not comparison.pairwise["significant"].any()
    assert "no significant difference" in comparison.message


def test_constant_values_give_p_one_without_warning():
    """All runs equal: scipy's H would be 0/0; the comparison says p = 1 and warns nothing."""
    results = make_results({"raf-r2": [0.5, 0.5], "raf-r32": [0.5, 0.5]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        comparison = stats.compare_ranks(results, "symmetry")
    assert comparison.kruskal_p == 1.0 and comparison.pairwise["p"].iloc[0] == 1.0
    assert "identical" in str(comparison)


def test_the_unit_is_the_run_not_the_rf():
    """Pseudo-replication guard: ten times more RFs per run change neither n nor p."""
    run_values = {"raf-r2": [0.8, 0.7, 0.75], "raf-r32": [0.3, 0.4, 0.35]}
    few = stats.compare_ranks(make_results(run_values, n_channels=4), "symmetry")
    many = stats.compare_ranks(make_results(run_values, n_channels=40), "symmetry")
    assert len(few.per_run) == len(many.per_run) == 6
    assert few.kruskal_p == pytest.approx(many.kruskal_p)
    # 3 vs 3 seeds, perfectly separated, still p = 0.1: said so
    assert many.pairwise["p"].iloc[0] == pytest.approx(0.1)
    assert "cannot reach significance" in str(many) or "no pair can reach" in str(many)


def test_one_seed_per_condition_says_n_too_small():
    """The demo (one seed each): no test, a clear "n too small", no NaN p-value, no warning."""
    results = make_results({"bp": [0.5], "raf-r2": [0.8], "raf-r32": [0.3]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        comparison = stats.compare_ranks(results, "symmetry")
    assert comparison.status == "n too small"
    assert comparison.kruskal_p is None and comparison.pairwise.empty
    assert "n too small" in comparison.message and "rank 2: 1 seed" in comparison.message


def test_a_group_with_one_seed_is_left_out_of_the_test():
    """Groups with enough seeds are compared; a single-seed group is named as left out."""
    results = make_results({"raf-r2": [0.8, 0.82], "raf-r4": [0.5], "raf-r32": [0.3, 0.31]})
    comparison = stats.compare_ranks(results, "symmetry")
    assert comparison.status == "ok"
    assert set(comparison.pairwise[["group_a", "group_b"]].iloc[0]) == {2, 32}
    assert "Left out" in str(comparison) and "[4]" in str(comparison)


def test_runs_without_responsive_units_are_skipped():
    """A run whose units are all unresponsive has no value and does not enter the test."""
    results = make_results({"raf-r2": [0.8, 0.82, 0.81], "raf-r32": [0.3, 0.31]})
    results["responsive"][0] = False
    comparison = stats.compare_ranks(results, "symmetry")
    assert list(comparison.groups["n"]) == [2, 2]
    assert np.isnan(comparison.per_run["value"].iloc[0])


def test_bottleneck_comparison_uses_bp_runs_by_n_bn():
    """Against N_bn only the feedforward (BP) conditions count, grouped by n_bn."""
    results = make_results(
        {"bp": [0.2, 0.25, 0.22], "bp-bottleneck-2": [0.8, 0.85, 0.9], "raf-r2": [0.5, 0.5]}
    )
    comparison = stats.compare_bottlenecks(results, "symmetry")
    assert set(comparison.per_run["preset"]) == {"bp", "bp-bottleneck-2"}
    assert list(comparison.groups["n_bn"]) == [2, 32]
    assert stats.has_bottleneck_runs(results)
    assert not stats.has_bottleneck_runs(make_results({"bp": [0.2], "raf-r2": [0.5]}))


def test_summary_table_per_condition():
    """One row per condition in the panels' order (ranks ascending, BP after RAF): rule,
    rank, n_bn, n seeds, mean and s.d. over seeds of the per-run means, fraction
    center-surround among responsive units."""
    results = make_results(
        {"bp": [0.2, 0.4], "raf-r2": [0.8], "raf-r32": [0.3, 0.5, 0.4]},
        cs_channels={"bp": 1, "raf-r2": 3, "raf-r32": 0},
    )
    table = stats.summary_table(results, ["symmetry", "fraction_center_surround"])
    assert list(table["condition"]) == ["raf-r2", "raf-r32", "bp"]
    bp = table.set_index("condition").loc["bp"]
    assert bp["n_seeds"] == 2 and bp["rank"] == 32 and bp["n_bn"] == 32
    assert bp["symmetry_mean"] == pytest.approx(0.3)
    assert bp["symmetry_sd"] == pytest.approx(np.std([0.2, 0.4], ddof=1))
    assert bp["fraction_center_surround_mean"] == pytest.approx(1 / 3)
    single = table.set_index("condition").loc["raf-r2"]
    assert single["fraction_center_surround_mean"] == 1.0 and np.isnan(single["symmetry_sd"])


def test_class_counts_and_final_values():
    """Class counts per run cover all real units; final values take the last finite epoch."""
    results = make_results({"bp": [0.2, 0.4], "raf-r2": [0.8]}, cs_channels={"bp": 2})
    counts = stats.class_counts(results)
    assert list(counts["preset"]) == ["raf-r2", "bp", "bp"]  # the panels' order, then seed
    assert list(counts.loc[1, ["center-surround", "oriented", "unresponsive"]]) == [2, 1, 1]
    final = stats.final_values(results, ["train_loss"])
    assert list(final["train_loss_mean"]) == [1.5, 1.5]


@pytest.mark.parametrize("alpha", [0, 0.9, "often", None])
def test_bad_alpha_is_a_config_error(alpha):
    with pytest.raises(ConfigError, match="alpha"):
        stats.check_alpha(alpha)


def test_styled_table_formats_p_values_and_keeps_text():
    """Display tables: p-values to 3 significant digits, NaN as a dash, text untouched."""
    results = make_results({"raf-r2": [0.8, 0.82, 0.85], "raf-r32": [0.2, 0.22, 0.25]})
    html = stats.styled(stats.compare_ranks(results, "symmetry").pairwise).to_html()
    assert ">0.1<" in html and ">9<" in html  # p of 3 vs 3 separated seeds, U = 9
    html = stats.styled(stats.summary_table(results, ["symmetry"])).to_html()
    assert "raf-r32" in html and ">0.223<" in html and "0.22333" not in html
    single = stats.summary_table(make_results({"bp": [0.5]}), ["symmetry"])
    assert "\u2013" in stats.styled(single).to_html()


def test_runs_without_responsive_units_are_named():
    """A run whose units are all silent is reported, not dropped without a word."""
    results = make_results({"bp": [0.2, 0.3], "raf-r2": [0.8]})
    results["responsive"][1] = False
    assert stats.silent_runs(results) == ["bp-s1"]


def test_findings_table_states_mean_sd_over_seeds_and_the_tests():
    """The README's findings table: one row per condition in the panels' order, each metric as
    mean ± s.d. over seeds of the per-run means, the responsive units, and one line per test
    with the exact Kruskal-Wallis and Jonckheere-Terpstra p that compare_ranks computes; with
    3 vs 3 seeds no pair can be significant, so there is no pairs column and a sentence says
    why."""
    values = {"bp": [0.1, 0.2, 0.3], "raf-r2": [0.7, 0.8, 0.9], "raf-r32": [0.1, 0.15, 0.2]}
    results = make_results(values, cs_channels={"raf-r2": 3})
    results["test_acc"] = (("run", "epoch"), np.tile([0.3, 0.5, np.nan], (9, 1)))
    table = stats.findings_markdown(results, metrics=["symmetry", "fraction_center_surround"])
    lines = table.splitlines()
    assert lines[0].startswith("| condition | seeds | test acc. | responsive units | symmetry |")
    rows = [line for line in lines[2:] if line.startswith("| raf") or line.startswith("| bp")]
    assert [row.split(" | ")[0] for row in rows[:3]] == ["| raf-r2", "| raf-r32", "| bp"]
    assert rows[0] == "| raf-r2 | 3 | 0.500 ± 0.000 | 3.0 ± 0.0 of 32 | 0.80 ± 0.10 | 1.00 ± 0.00 |"
    assert "| bp | 3 | 0.500 ± 0.000 | 3.0 ± 0.0 of 32 | 0.20 ± 0.10 | 0.00 ± 0.00 |" in lines
    comparison = stats.compare_ranks(results, "symmetry")
    assert comparison.kruskal_p == pytest.approx(2 / 20)  # 3 vs 3 completely separated
    assert comparison.trend_p == pytest.approx(2 / 20)
    assert (
        "| test | metric | Kruskal-Wallis H, exact p | trend (Jonckheere-Terpstra), exact p |"
        in (lines)
    )
    assert (
        "| feedback rank (RAF) | symmetry | H = 3.86, p = 0.100 | J = 0, z = -1.96 (decreasing), "
        "p = 0.100 |"
    ) in lines
    assert "| N_bn (BP) | symmetry | n too small | – |" in lines  # one bottleneck width only
    assert "significant pairs (Holm)" not in table
    assert "Pairwise Mann-Whitney tests are left out" in lines[-1]
    assert "Exact p: the share of all assignments" in lines[-1]


def test_aligned_rank_family_takes_bp_as_its_full_rank_and_other_families_do_not():
    """raf_aligned at full rank is backprop (B = W^T P^T P = W^T), so its rank test groups the
    BP runs as rank 32; the RAF (Oja) test leaves BP out."""
    values = {"bp": [0.1, 0.2], "raf-r2": [0.5, 0.6], "raf-aligned-r2": [0.8, 0.9]}
    results = make_results(values)
    aligned = stats.compare_ranks(results, "symmetry", rule="raf_aligned")
    assert list(aligned.groups["rank"]) == [2, 32] and list(aligned.groups["n"]) == [2, 2]
    assert "RAF (aligned) and BP runs" in aligned.message
    assert list(stats.compare_ranks(results, "symmetry").groups["rank"]) == [2]
    table = stats.findings_markdown(results, metrics=["symmetry"])
    assert "| feedback rank (RAF (aligned), BP as r = 32) | symmetry |" in table


def test_findings_table_shows_the_first_methods_agreement_with_each_other_method():
    """With RFs by actmax, gradient and STA, the table shows actmax vs gradient and actmax vs
    STA (the metrics are actmax's), not gradient vs STA."""
    results = make_results({"bp": [0.1, 0.2]})
    for pair, r in [("actmax_vs_gradient", 0.9), ("actmax_vs_sta", 0.7), ("gradient_vs_sta", 0.5)]:
        results[pair] = (("run", "channel"), np.full((2, 4), r))
    header = stats.findings_markdown(results, metrics=["symmetry"]).splitlines()[0]
    assert header.endswith("| actmax vs gradient r | actmax vs sta r |")
    assert "| bp | 2 | – | 3.0 ± 0.0 of 32 | 0.15 ± 0.07 | 0.90 ± 0.00 | 0.70 ± 0.00 |" in (
        stats.findings_markdown(results, metrics=["symmetry"])
    )


def test_method_agreement_table_pools_seeds_over_responsive_units_only():
    """Per condition, the median and 10th percentile of a method correlation over the
    responsive units of all its seeds; unresponsive units (wild values) do not count."""
    results = make_results({"bp": [0.1, 0.2], "raf-r2": [0.7, 0.8]})
    values = np.tile([0.9, 0.8, 0.7, -5.0], (4, 1))  # the last channel is unresponsive
    results["actmax_vs_gradient"] = (("run", "channel"), values)
    table = stats.method_agreement_table(results, ["actmax_vs_gradient"])
    assert list(table["condition"]) == ["raf-r2", "bp"]
    assert list(table["units"]) == [6, 6] and list(table["median_r"]) == [0.8, 0.8]
    assert table["p10_r"].iloc[0] == pytest.approx(0.7)
    assert table["methods"].iloc[0] == "actmax vs gradient"


# ------------------------------------------------------------------- exact permutation tests
def brute_force_p(samples, statistic, extremeness):
    """A plain enumeration, independent of analysis.stats: every assignment of the pooled
    values to groups of the samples' sizes (nested combinations of positions), and the share
    with extremeness(statistic) at least that of the observed grouping."""
    pooled = [v for sample in samples for v in sample]
    sizes = [len(sample) for sample in samples]

    def assignments(positions, sizes_left):
        if len(sizes_left) == 1:
            yield [list(positions)]
            return
        for chosen in combinations(positions, sizes_left[0]):
            rest = [p for p in positions if p not in chosen]
            for tail in assignments(rest, sizes_left[1:]):
                yield [list(chosen), *tail]

    observed = extremeness(statistic(samples))
    count = total = 0
    for groups in assignments(range(len(pooled)), sizes):
        total += 1
        value = extremeness(statistic([[pooled[p] for p in group] for group in groups]))
        count += value >= observed - 1e-9
    return count / total, total


def plain_j(samples):
    """Jonckheere-Terpstra J written out: pairs of groups i < j, #{x < y} + 0.5 #{x == y}."""
    return sum((x < y) + 0.5 * (x == y) for i, j in combinations(range(len(samples)), 2)
               for x in samples[i] for y in samples[j])  # fmt: skip


def test_kruskal_exact_on_complete_separation_of_three_groups_of_three():
    """H = 7.20 for three completely separated groups of 3: the chi-square p is 0.027, the
    exact one 6/1680 = 0.0036 (only the 3! orderings of the three blocks are as extreme)."""
    samples = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    result = stats.kruskal_exact(samples)
    assert result.h == pytest.approx(7.2)
    assert result.p == pytest.approx(6 / 1680) and result.method == stats.EXACT
    assert scipy_stats.kruskal(*samples).pvalue == pytest.approx(0.0273, abs=1e-4)
    assert stats.n_assignments([3, 3, 3]) == 1680
    assert stats.n_assignments([3, 3, 3, 3]) == 369_600
    assert stats.n_assignments([3, 3, 3, 3, 3]) == 168_168_000


@pytest.mark.parametrize(
    "samples",
    [
        [[0.10, 0.20, 0.20], [0.20, 0.35, 0.40], [0.00, 0.40, 0.90]],  # ties across groups
        [[0.0, 0.0], [0.0, 0.1, 0.1], [0.3, 0.1, 0.0, 0.2]],  # unequal sizes, heavy ties
        [[1.0, 2.0, 3.0, 4.0], [2.5, 5.0, 6.0, 7.0]],  # two groups
    ],
)
def test_kruskal_exact_agrees_with_scipy_statistic_and_scipy_permutation_test(samples):
    """H is scipy.stats.kruskal's (midranks, tie correction), and the exact p is what
    scipy.stats.permutation_test finds enumerating every independent assignment, and what a
    plain itertools enumeration finds."""
    result = stats.kruskal_exact(samples)
    assert result.h == pytest.approx(scipy_stats.kruskal(*samples).statistic, rel=1e-12)
    reference = scipy_stats.permutation_test(
        samples,
        lambda *groups: scipy_stats.kruskal(*groups).statistic,
        permutation_type="independent",
        n_resamples=np.inf,  # every distinct assignment
        alternative="greater",
        vectorized=False,
    )
    assert result.method == stats.EXACT
    assert result.p == pytest.approx(reference.pvalue, rel=1e-12)
    brute, total = brute_force_p(samples, lambda g: scipy_stats.kruskal(*g).statistic, float)
    assert total == stats.n_assignments([len(s) for s in samples])
    assert result.p == pytest.approx(brute, rel=1e-12)


def test_every_assignment_is_enumerated_once():
    """The exact enumeration: N! / prod(n_i!) rows, all distinct, each with the groups' sizes
    (the observed grouping among them)."""
    sizes = (2, 1, 3)
    labels = stats._enumerated_labels(sizes)
    assert labels.shape == (stats.n_assignments(sizes), 6) == (60, 6)
    assert len({row.tobytes() for row in labels}) == 60
    assert all(list(np.bincount(row, minlength=3)) == list(sizes) for row in labels)
    assert (labels == [0, 0, 1, 2, 2, 2]).all(axis=1).any()


def test_jonckheere_terpstra_matches_a_plain_enumeration_with_ties():
    """J as defined (pairs of groups in order, ties count a half) and its two-sided exact p:
    the share of assignments with |J* - E[J]| >= |J - E[J]|, E[J] = sum n_i n_j / 2."""
    samples = [[1.0, 2.0, 2.0], [2.0, 3.0], [1.0, 4.0, 5.0]]
    result = stats.jonckheere_terpstra(samples)
    assert result.j == plain_j(samples) == 15.5  # 5 + 6.5 + 4
    mean = (3 * 2 + 3 * 3 + 2 * 3) / 2
    brute, total = brute_force_p(samples, plain_j, lambda j: abs(j - mean))
    assert total == 560 and result.method == stats.EXACT
    assert result.p == pytest.approx(brute, rel=1e-12)
    assert result.direction == "increasing" and result.z > 0


def test_jonckheere_terpstra_perfect_order_is_the_most_extreme():
    """Three groups of 3 in perfectly decreasing order: J = 0, and only the perfectly
    increasing and decreasing orders are as extreme: p = 2/1680."""
    result = stats.jonckheere_terpstra([[9, 8, 7], [6, 5, 4], [3, 2, 1]])
    assert result.j == 0 and result.direction == "decreasing" and result.z == pytest.approx(-3)
    assert result.p == pytest.approx(2 / 1680)


def test_jonckheere_terpstra_of_two_groups_is_the_exact_mann_whitney_test():
    """With two groups J is the Mann-Whitney U of the second group over the first, and the
    two-sided exact p is scipy's exact Mann-Whitney p (no ties)."""
    low, high = [0.3, 1.2, 0.8, 2.2], [1.0, 2.5, 1.9, 3.1, 2.8]
    result = stats.jonckheere_terpstra([low, high])
    reference = scipy_stats.mannwhitneyu(high, low, alternative="two-sided", method="exact")
    assert result.j == reference.statistic
    assert result.p == pytest.approx(reference.pvalue, rel=1e-12)


def test_jonckheere_terpstra_on_the_textbook_example():
    """Hollander & Wolfe (1999), Example 6.2 (Hundal's knowledge-of-performance data, with
    ties): J = 79, null mean 54, tie-corrected variance 150.29, J* = 2.04. 17,153,136
    assignments, so the p is Monte Carlo: close to the normal approximation's two-sided
    p = 0.041."""
    samples = [[40, 35, 38, 43, 44, 41], [38, 40, 47, 44, 40, 42], [48, 40, 45, 43, 46, 44]]
    result = stats.jonckheere_terpstra(samples)
    assert result.j == 79 and result.direction == "increasing"
    _, tie_counts = np.unique(np.concatenate(samples), return_counts=True)
    assert stats.jonckheere_variance([6, 6, 6], tie_counts) == pytest.approx(150.29, abs=0.01)
    assert result.z == pytest.approx(2.04, abs=0.005)
    assert result.method == stats.MONTE_CARLO
    assert result.p == pytest.approx(2 * scipy_stats.norm.sf(result.z), abs=0.01)


def test_jonckheere_z_is_kendalls_tau_z_between_values_and_group_order():
    """For a larger sample with ties, the standardized J equals (in size) the z of Kendall's
    tau-b between the values and the group index, whose asymptotic variance scipy corrects for
    ties in both: J - E[J] is half of Kendall's S and the variances are the same formula."""
    rng = np.random.default_rng(1)
    samples = [np.round(rng.normal(0.1 * g, 1.0, 12), 1) for g in range(4)]
    result = stats.jonckheere_terpstra(samples, n_permutations=2_000)
    values = np.concatenate(samples)
    order = np.repeat(np.arange(4), 12)
    assert len(np.unique(values)) < len(values)  # there are ties
    tau = scipy_stats.kendalltau(values, order, method="asymptotic")
    assert abs(result.z) == pytest.approx(scipy_stats.norm.isf(tau.pvalue / 2), rel=1e-6)
    assert np.sign(result.z) == np.sign(tau.statistic)


def test_monte_carlo_branch_is_seeded_and_close_to_the_exact_p():
    """Forced Monte Carlo on a design small enough to enumerate: the same seed gives the same
    p, (1 + #{as extreme}) / (1 + n) is never 0, and it is within sampling error of the exact
    p; "auto" switches to Monte Carlo above max_enumeration."""
    samples = [[0.1, 0.3, 0.2], [0.35, 0.5, 0.3], [0.6, 0.45, 0.9]]
    exact = stats.kruskal_exact(samples)
    forced = stats.kruskal_exact(samples, method=stats.MONTE_CARLO)
    assert forced.method == stats.MONTE_CARLO and exact.method == stats.EXACT
    assert forced.h == exact.h
    assert forced.p == stats.kruskal_exact(samples, method=stats.MONTE_CARLO).p
    assert forced.p == pytest.approx(exact.p, abs=4 * math.sqrt(exact.p / 100_000) + 1e-5)
    separated = stats.kruskal_exact([[1, 2, 3], [4, 5, 6], [7, 8, 9]], method=stats.MONTE_CARLO)
    assert separated.p == pytest.approx(6 / 1680, abs=0.0008) and separated.p > 0
    trend_exact = stats.jonckheere_terpstra(samples)
    trend_mc = stats.jonckheere_terpstra(samples, max_enumeration=100, n_permutations=50_000)
    assert trend_mc.method == stats.MONTE_CARLO
    assert trend_mc.p == pytest.approx(trend_exact.p, abs=4 * math.sqrt(trend_exact.p / 50_000))
    with pytest.raises(ConfigError, match="method"):
        stats.kruskal_exact(samples, method="chi-square")


def test_identical_values_give_p_one_in_both_tests():
    """No variation at all: H = 0, J at its null mean, both p = 1, no warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kruskal = stats.kruskal_exact([[0.5, 0.5], [0.5, 0.5, 0.5]])
        trend = stats.jonckheere_terpstra([[0.5, 0.5], [0.5, 0.5, 0.5]])
    assert (kruskal.h, kruskal.p) == (0.0, 1.0)
    assert (trend.j, trend.p, trend.direction) == (3.0, 1.0, "none")


def test_comparison_keeps_the_chi_square_p_beside_the_exact_one():
    """compare_ranks headlines the exact p and keeps scipy's chi-square p: for three ranks of
    three completely separated seeds 6/1680 against 0.027."""
    results = make_results({"raf-r2": [0.8, 0.85, 0.9], "raf-r4": [0.5, 0.55, 0.6],
                            "raf-r32": [0.1, 0.15, 0.2]})  # fmt: skip
    comparison = stats.compare_ranks(results, "symmetry")
    assert comparison.kruskal_p == pytest.approx(6 / 1680)
    assert comparison.kruskal_p_chi2 == pytest.approx(0.0273, abs=1e-4)
    assert comparison.trend_j == 0 and comparison.trend_direction == "decreasing"
    assert comparison.trend_p == pytest.approx(2 / 1680)
    assert "exact permutation p = 0.004 (chi-square" in comparison.message
    assert "chi-square approximation: p = 0.027" in comparison.message
    assert not comparison.pairs_attainable and comparison.pairs_floor == pytest.approx(0.3)
    assert "0.3 after Holm's correction over 3 pairs" in str(comparison)


def test_attainable_holm_p_is_the_number_of_pairs_times_the_best_pair():
    """3 vs 3: 0.1; three groups of 3: 3 x 0.1; three groups of 5: 3 x 2/252 < 0.05."""
    assert stats.attainable_holm_p([3, 3]) == pytest.approx(0.1)
    assert stats.attainable_holm_p([3, 3, 3]) == pytest.approx(0.3)
    assert stats.attainable_holm_p([5, 5, 5]) == pytest.approx(6 / 252)


def test_findings_show_the_holm_pairs_only_where_the_seeds_allow_significance():
    """Five seeds per rank can make a pair significant after Holm: the pairs column is there
    (every pair of the clear rank difference listed); the 3 vs 3 bottleneck comparison in the
    same table cannot, and its cell says so instead of "none"."""
    results = make_results(
        {
            "raf-r2": [0.80, 0.82, 0.85, 0.81, 0.83],
            "raf-r4": [0.55, 0.52, 0.57, 0.50, 0.54],
            "raf-r32": [0.20, 0.22, 0.25, 0.21, 0.19],
            "bp": [0.2, 0.25, 0.22],
            "bp-bottleneck-2": [0.8, 0.85, 0.9],
        }
    )
    lines = stats.findings_markdown(results, metrics=["symmetry"]).splitlines()
    header = [line for line in lines if line.startswith("| test |")][0]
    assert header.endswith("| significant pairs (Holm) |")
    rank_row = [line for line in lines if line.startswith("| feedback rank (RAF) |")][0]
    assert rank_row.endswith("2 vs 4 (p = 0.0238), 2 vs 32 (p = 0.0238), 4 vs 32 (p = 0.0238) |")
    bottleneck_row = [line for line in lines if line.startswith("| N_bn (BP) |")][0]
    assert bottleneck_row.endswith("| cannot reach p < 0.05 |")
    assert "Significant pairs: two-sided Mann-Whitney U tests" in lines[-1]
