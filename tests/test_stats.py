"""Tests of the statistics module: IQM, (stratified) bootstrap intervals, paired differences, P(X > Y).

The statistical tests use fixed seeds, so they are deterministic; their tolerances are derived from the sample
sizes (binomial and sampling standard errors with a generous z), so they would also pass for other seeds.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy import stats as sps

from torchrl_otc.stats import (
    PairedSummary,
    bootstrap_ci,
    format_ci,
    iqm,
    paired_differences,
    paired_summary,
    probability_of_improvement,
    probability_of_improvement_ci,
    unmatched_seeds,
)

# ---------------------------------------------------------------------------------------------------------- IQM


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 33, 100, 1001])
def test_iqm_equals_scipy_trim_mean(n):
    rng = np.random.default_rng(n)
    for _ in range(5):
        x = rng.standard_t(df=2, size=n)  # heavy tails: trimming matters
        assert iqm(x) == pytest.approx(sps.trim_mean(x, 0.25), rel=1e-12, abs=1e-12)
        assert iqm(x.tolist()) == pytest.approx(sps.trim_mean(x, 0.25), rel=1e-12, abs=1e-12)


def test_iqm_hand_cases():
    assert iqm([5.0]) == 5.0
    assert iqm([1.0, 3.0]) == 2.0  # n < 4: the mean
    assert iqm([1.0, 2.0, 9.0]) == 4.0
    assert iqm([100.0, 1.0, 3.0, 2.0]) == 2.5  # drops 1 and 100
    assert iqm([0.0, 1.0, 2.0, 3.0, 1000.0]) == 2.0  # cut = 1: mean of 1, 2, 3
    assert iqm(list(range(8))) == 3.5  # drops 0, 1 and 6, 7
    assert iqm({0: 1.0, 1: 2.0, 2: 3.0, 3: 100.0}) == 2.5  # a mapping of seed to score


def test_iqm_rejects_bad_input():
    with pytest.raises(ValueError, match="empty; pass at least one value"):
        iqm([])
    with pytest.raises(ValueError, match="NaN or infinite.*drop them"):
        iqm([1.0, math.nan])
    with pytest.raises(ValueError, match="one-dimensional.*flatten"):
        iqm(np.zeros((2, 3)))


# ------------------------------------------------------------------------------------------------ bootstrap CI


def test_bootstrap_ci_coverage_of_normal_mean():
    """Over 300 datasets of n = 30 normal values, the 95 % interval covers the true mean about 95 % of the time.

    The percentile bootstrap undercovers a little at n = 30 (about 0.93-0.94), so the accepted band is
    [0.93 - d, 0.95 + d] with d = 3.5 binomial standard errors, sqrt(p (1 - p) / 300) at p = 0.94.
    """
    datasets, n, mu, sigma = 300, 30, 1.5, 2.0
    rng = np.random.default_rng(12345)
    covered = 0
    for k in range(datasets):
        x = rng.normal(mu, sigma, size=n)
        _, low, high = bootstrap_ci(x, confidence=0.95, reps=500, seed=k)
        covered += low <= mu <= high
    coverage = covered / datasets
    d = 3.5 * math.sqrt(0.94 * 0.06 / datasets)
    assert 0.93 - d <= coverage <= 0.95 + d, coverage


def test_bootstrap_ci_of_iqm_coverage():
    """The IQM of a symmetric distribution estimates its centre: the same band as the mean's, a bit wider."""
    datasets, n, mu = 200, 40, -3.0
    rng = np.random.default_rng(7)
    covered = 0
    for k in range(datasets):
        x = rng.normal(mu, 1.0, size=n)
        _, low, high = bootstrap_ci(x, "iqm", reps=500, seed=k)
        covered += low <= mu <= high
    coverage = covered / datasets
    d = 3.5 * math.sqrt(0.94 * 0.06 / datasets)
    assert 0.91 - d <= coverage <= 0.95 + d, coverage


def test_bootstrap_ci_width_shrinks_like_one_over_sqrt_n():
    """Width at n = 100 over width at n = 400 is 2 in expectation.

    A single width's relative error is about sqrt(1 / (2 n)) (the sample standard deviation) plus the Monte Carlo
    error of the percentiles (a few %), so one ratio has about 9 % relative error; averaged over 20 datasets each,
    about 2 %, and 0.15 is about 4 standard errors of the ratio.
    """
    rng = np.random.default_rng(3)
    widths = {}
    for n in (100, 400):
        w = []
        for k in range(20):
            _, low, high = bootstrap_ci(rng.normal(0.0, 1.0, size=n), reps=1000, seed=k)
            w.append(high - low)
        widths[n] = float(np.mean(w))
    assert widths[100] / widths[400] == pytest.approx(2.0, abs=0.15)
    # and each is near the normal-theory width 2 * 1.96 * sigma / sqrt(n)
    for n, w in widths.items():
        assert w == pytest.approx(2 * 1.96 / math.sqrt(n), rel=0.1)


def test_bootstrap_ci_contains_point_and_is_ordered():
    x = np.random.default_rng(0).exponential(size=25)
    for statistic in ("mean", "iqm", np.median):
        point, low, high = bootstrap_ci(x, statistic, reps=1000)
        assert low <= point <= high
        assert low < high
    point, _, _ = bootstrap_ci(x, np.median)
    assert point == np.median(x)


def test_bootstrap_ci_degenerate_cases():
    assert bootstrap_ci([3.25]) == (3.25, 3.25, 3.25)
    assert bootstrap_ci([0.1] * 30, "iqm") == (0.1, 0.1, 0.1)
    assert bootstrap_ci({7: -2.0}, strata=["t"]) == (-2.0, -2.0, -2.0)
    assert all(math.isfinite(v) for v in bootstrap_ci([1.0, 1.0], np.std))


def test_bootstrap_ci_nominal_confidence_orders_intervals():
    x = np.random.default_rng(1).normal(size=50)
    _, lo90, hi90 = bootstrap_ci(x, confidence=0.9)
    _, lo99, hi99 = bootstrap_ci(x, confidence=0.99)
    assert lo99 < lo90 < hi90 < hi99


def test_stratified_bootstrap_keeps_each_stratum_count():
    """Two strata, 10 zeros and 30 ones: every stratified resample has mean exactly 0.75."""
    values = [0.0] * 10 + [1.0] * 30
    strata = ["a"] * 10 + ["b"] * 30
    assert bootstrap_ci(values, strata=strata) == (0.75, 0.75, 0.75)
    assert bootstrap_ci(values, "iqm", strata=strata) == (1.0, 1.0, 1.0)
    # the strata need not be contiguous, and any hashable labels do
    order = np.random.default_rng(0).permutation(40)
    shuffled = [values[i] for i in order]
    labels = [(0, "x") if values[i] == 0 else (1, "y") for i in order]
    assert bootstrap_ci(shuffled, strata=labels) == (0.75, 0.75, 0.75)
    # the unstratified bootstrap does not keep the counts
    point, low, high = bootstrap_ci(values)
    assert point == 0.75
    assert low < 0.75 < high


def test_stratified_bootstrap_resamples_within_strata():
    """Each stratum's values are only drawn into that stratum: a statistic counting them never changes."""
    rng = np.random.default_rng(4)
    small = rng.uniform(0, 1, size=7)
    large = rng.uniform(100, 101, size=13)
    values = np.concatenate([large[:5], small, large[5:]])
    strata = ["large"] * 5 + ["small"] * 7 + ["large"] * 8

    def count_small(s):
        return float(np.sum(s < 50))

    assert bootstrap_ci(values, count_small, strata=strata, reps=300) == (7.0, 7.0, 7.0)
    _, low, high = bootstrap_ci(values, count_small, reps=300)
    assert low < 7.0 < high
    # within a stratum the values vary, so the mean's interval is not degenerate
    point, low, high = bootstrap_ci(values, strata=strata)
    assert low < point < high


def test_bootstrap_ci_is_deterministic_for_a_seed():
    x = np.random.default_rng(2).normal(size=20)
    strata = [i % 3 for i in range(20)]
    assert bootstrap_ci(x, seed=5) == bootstrap_ci(x, seed=5)
    assert bootstrap_ci(x, "iqm", seed=5, strata=strata) == bootstrap_ci(
        list(x), "iqm", seed=5, strata=strata
    )
    assert bootstrap_ci(x, seed=5) != bootstrap_ci(x, seed=6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"values": []}, "empty; pass at least one value"),
        ({"values": [1.0, math.inf]}, "NaN or infinite"),
        ({"confidence": 95}, r"confidence must be in \(0, 1\), e.g. 0.95"),
        ({"confidence": 0.0}, r"confidence must be in \(0, 1\)"),
        ({"confidence": 1.0}, r"confidence must be in \(0, 1\)"),
        ({"reps": 0}, "reps must be a positive integer"),
        ({"reps": 2.5}, "reps must be a positive integer"),
        ({"strata": ["a", "b"]}, "strata has 2 labels for 3 values; pass one label per value"),
        ({"statistic": "median"}, "statistic must be 'mean', 'iqm' or a callable"),
    ],
)
def test_bootstrap_ci_rejects_bad_input(kwargs, message):
    args = {"values": [1.0, 2.0, 3.0], **kwargs}
    with pytest.raises(ValueError, match=message):
        bootstrap_ci(args.pop("values"), **args)


# ------------------------------------------------------------------------------------ probability of improvement


def test_probability_of_improvement_extremes():
    assert probability_of_improvement([5.0, 6.0, 7.0], [1.0, 2.0]) == 1.0
    assert probability_of_improvement([1.0, 2.0], [5.0, 6.0, 7.0]) == 0.0
    assert probability_of_improvement([1.0, 2.0, 3.0], [3.0, 1.0, 2.0]) == 0.5
    assert probability_of_improvement([4.0, 4.0], [4.0]) == 0.5
    assert probability_of_improvement({0: 2.0, 1: 3.0}, {0: 1.0, 5: 2.0, 6: 4.0}) == pytest.approx(
        3.5 / 6
    )


@pytest.mark.parametrize(("n", "m"), [(1, 1), (3, 5), (10, 10), (37, 12)])
def test_probability_of_improvement_equals_mann_whitney(n, m):
    rng = np.random.default_rng(10 * n + m)
    for rounding in (None, 0):  # continuous values, then many ties
        x = rng.normal(0.3, 1.0, size=n) * 3
        y = rng.normal(0.0, 1.0, size=m) * 3
        if rounding is not None:
            x, y = np.round(x, rounding), np.round(y, rounding)
        expected = sps.mannwhitneyu(x, y).statistic / (n * m)
        assert probability_of_improvement(x, y) == pytest.approx(expected, abs=1e-12)
        assert probability_of_improvement(x, y) + probability_of_improvement(y, x) == pytest.approx(
            1
        )


def test_probability_of_improvement_ci():
    rng = np.random.default_rng(8)
    x, y = rng.normal(1.0, 1.0, size=20), rng.normal(0.0, 1.0, size=20)
    point, low, high = probability_of_improvement_ci(x, y, reps=1000)
    assert point == probability_of_improvement(x, y)
    assert 0.0 <= low < point < high <= 1.0
    # the true P(X > Y) of N(1, 1) against N(0, 1) is Phi(1 / sqrt(2))
    assert low < sps.norm.cdf(1 / math.sqrt(2)) < high
    assert probability_of_improvement_ci(x, y, reps=200, seed=3) == probability_of_improvement_ci(
        x, y, reps=200, seed=3
    )
    assert probability_of_improvement_ci([3.0, 4.0], [1.0, 2.0]) == (1.0, 1.0, 1.0)
    assert probability_of_improvement_ci([1.0], [3.0, 4.0]) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="y is empty"):
        probability_of_improvement_ci([1.0], [])
    with pytest.raises(ValueError, match="reps must be"):
        probability_of_improvement_ci([1.0], [2.0], reps=0)


# ------------------------------------------------------------------------------------------- paired differences


def test_paired_differences_and_unmatched_seeds():
    a = {0: 10.0, 1: 12.0, 2: 9.0, 3: 11.0, 4: 3.0}
    b = {3: 7.0, 2: 10.0, 1: 12.0, 0: 8.0, 9: 1.0, 10: 2.0}
    assert paired_differences(a, b) == {0: 2.0, 1: 0.0, 2: -1.0, 3: 4.0}
    assert unmatched_seeds(a, b) == ([4], [9, 10])
    assert unmatched_seeds(b, a) == ([9, 10], [4])
    assert unmatched_seeds(a, a) == ([], [])
    assert paired_differences({"s0": 1.0}, {"s1": 1.0}) == {}


def test_paired_summary_hand_example():
    a = {0: 10.0, 1: 12.0, 2: 9.0, 3: 11.0, 4: 3.0}
    b = {0: 8.0, 1: 12.0, 2: 10.0, 3: 7.0}
    s = paired_summary(paired_differences(a, b), scores=(a, b), reps=1000)
    assert isinstance(s, PairedSummary)
    assert (s.n, s.wins, s.ties, s.losses) == (4, 2, 1, 1)
    assert s.mean == 1.25
    assert s.sem == pytest.approx(math.sqrt(14.75 / 3) / 2)  # deviations 0.75, -1.25, -2.25, 2.75
    assert s.ci_low <= s.mean <= s.ci_high
    assert s.ci_low >= -1.0 and s.ci_high <= 4.0  # within the range of the differences
    assert s.confidence == 0.95
    # P(X > Y) over the 5 x 4 score pairs: 10 -> 2.5, 12 -> 3.5, 9 -> 2, 11 -> 3, 3 -> 0
    assert s.poi == pytest.approx(11 / 20)
    assert s.poi_low <= s.poi <= s.poi_high
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.mean = 0.0  # type: ignore[misc]


def test_paired_summary_ties_with_tolerance_and_sequences():
    diffs = [0.05, -0.02, 0.5, -0.4, 0.0]
    s = paired_summary(diffs)
    assert (s.wins, s.ties, s.losses) == (2, 1, 2)
    s = paired_summary(diffs, tol=0.1)
    assert (s.wins, s.ties, s.losses) == (1, 3, 1)
    assert s.mean == pytest.approx(0.026)
    assert math.isnan(s.poi) and math.isnan(s.poi_low) and math.isnan(s.poi_high)


def test_paired_summary_one_seed_and_bad_input():
    s = paired_summary({0: 2.0})
    assert (s.n, s.mean, s.ci_low, s.ci_high, s.wins) == (1, 2.0, 2.0, 2.0, 1)
    assert math.isnan(s.sem)  # no spread from one seed
    with pytest.raises(ValueError, match="diffs is empty"):
        paired_summary(paired_differences({0: 1.0}, {1: 1.0}))
    with pytest.raises(ValueError, match="tol must be >= 0"):
        paired_summary([1.0, 2.0], tol=-1.0)
    with pytest.raises(ValueError, match="confidence must be in"):
        paired_summary([1.0, 2.0], confidence=1.5)


def test_paired_summary_is_deterministic():
    diffs = dict(enumerate(np.random.default_rng(5).normal(0.5, 1.0, size=10)))
    assert paired_summary(diffs, seed=1) == paired_summary(diffs, seed=1)
    assert paired_summary(diffs, seed=1).ci_low != paired_summary(diffs, seed=2).ci_low


# ---------------------------------------------------------------------------------------------------- format


def test_format_ci():
    assert format_ci(0.7249, 0.55, 0.891) == "+0.72 [+0.55, +0.89]"
    assert format_ci(-1.0, -2.5, 0.5, digits=1) == "-1.0 [-2.5, +0.5]"
    assert format_ci(12.3456, digits=3) == "+12.346"
    assert format_ci(12.3456, 10.0, 14.0, signed=False) == "12.35 [10.00, 14.00]"
    assert format_ci(-0.001, -0.004, 0.0) == "+0.00 [+0.00, +0.00]"  # no "-0.00"
    assert format_ci(math.nan, None, None) == "n/a"
    assert format_ci(1.0, 0.5, None) == "+1.00 [+0.50, n/a]"


def test_paired_summary_cell():
    s = paired_summary({0: 1.0, 1: 2.0, 2: -0.5}, reps=500)
    assert s.cell() == f"{format_ci(s.mean, s.ci_low, s.ci_high)} (2/3)"
    assert s.cell(digits=1).startswith("+0.8 [")


# ------------------------------------------------------------------------------------------- against rliable


def test_matches_rliable():
    """IQM, stratified-bootstrap point estimates and P(X > Y) agree with rliable; the intervals nearly so."""
    pytest.importorskip("rliable")
    from rliable import library as rly
    from rliable import metrics

    rng = np.random.default_rng(11)
    runs, tasks = 10, 4
    x = rng.normal(1.0, 1.0, size=(runs, tasks)) + np.arange(
        tasks
    )  # rliable's (runs, tasks) layout
    y = rng.normal(0.5, 1.0, size=(runs, tasks)) + np.arange(tasks)
    labels = np.tile(np.arange(tasks), runs)  # the task of each value of x.ravel()

    assert iqm(x.ravel()) == pytest.approx(metrics.aggregate_iqm(x), abs=1e-12)
    reps = 4000
    points, intervals = rly.get_interval_estimates(
        {"x": x}, lambda s: np.array([metrics.aggregate_iqm(s)]), reps=reps
    )
    point, low, high = bootstrap_ci(x.ravel(), "iqm", strata=labels, reps=reps)
    assert point == pytest.approx(points["x"][0], abs=1e-12)
    # different random draws: the ends agree within Monte Carlo error, taken as 10 % of the width
    width = high - low
    assert low == pytest.approx(intervals["x"][0, 0], abs=0.1 * width)
    assert high == pytest.approx(intervals["x"][1, 0], abs=0.1 * width)

    for task in range(tasks):
        assert probability_of_improvement(x[:, task], y[:, task]) == pytest.approx(
            metrics.probability_of_improvement(x[:, [task]], y[:, [task]]), abs=1e-12
        )
