"""proctor.stats.timing against values computed independently with scipy and numpy."""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import pytest
from scipy import special, stats

from proctor.stats.timing import (
    Welford,
    binomial_half_cdf,
    bootstrap_ratio_of_medians,
    detect_regression,
    mann_whitney_greater,
    mean_interval,
    median_interval,
    median_interval_ranks,
    percentile,
    regularized_incomplete_beta,
    student_t_cdf,
    student_t_quantile,
)

SAMPLES = {
    "five": [0.212, 0.205, 0.231, 0.198, 0.244],
    "skewed": [1.0, 1.01, 1.02, 1.05, 1.1, 1.2, 1.5, 2.5, 9.0],
    "ties": [3.0, 3.0, 3.0, 4.0, 4.0, 5.0, 7.0, 7.0],
    "lognormal-40": list(np.random.default_rng(3).lognormal(0.0, 0.4, 40)),
    "normal-1000": list(np.random.default_rng(4).normal(10.0, 2.0, 1000)),
}


@pytest.mark.parametrize("name", list(SAMPLES))
def test_welford_matches_numpy_added_and_merged(name: str) -> None:
    xs = SAMPLES[name]
    acc = Welford()
    for x in xs:
        acc.add(x)
    assert acc.count == len(xs)
    assert acc.mean == pytest.approx(np.mean(xs), rel=1e-12)
    assert acc.stddev == pytest.approx(np.std(xs, ddof=1), rel=1e-9)
    assert (acc.min, acc.max) == (min(xs), max(xs))
    halves = [Welford(), Welford(), Welford()]
    for i, x in enumerate(xs):
        halves[i % 3].add(x)
    merged = Welford().merge(halves[2]).merge(halves[0]).merge(halves[1])
    assert merged.mean == pytest.approx(acc.mean, rel=1e-12)
    assert merged.variance == pytest.approx(np.var(xs, ddof=1), rel=1e-9)


def test_welford_is_stable_far_from_zero_and_rejects_nan() -> None:
    xs = [1e9 + x for x in (4.0, 7.0, 13.0, 16.0)]
    acc = Welford()
    for x in xs:
        acc.add(x)
    assert acc.variance == pytest.approx(30.0, rel=1e-9)
    assert Welford().stddev is None
    with pytest.raises(ValueError, match="finite"):
        acc.add(math.nan)


@pytest.mark.parametrize("name", list(SAMPLES))
@pytest.mark.parametrize("q", [0, 5, 25, 50, 75, 95, 99, 100])
def test_percentile_matches_numpy_linear(name: str, q: float) -> None:
    assert percentile(SAMPLES[name], q) == pytest.approx(np.percentile(SAMPLES[name], q), rel=1e-12)


@pytest.mark.parametrize(
    ("a", "b", "x"), [(0.5, 0.5, 0.3), (2, 3, 0.7), (40, 0.5, 0.99), (7.5, 12, 0.2)]
)
def test_incomplete_beta_matches_scipy(a: float, b: float, x: float) -> None:
    assert regularized_incomplete_beta(a, b, x) == pytest.approx(
        special.betainc(a, b, x), rel=1e-10
    )


@pytest.mark.parametrize("df", [1, 2, 3, 4, 9, 29, 100, 999])
@pytest.mark.parametrize("p", [0.9, 0.95, 0.975, 0.995, 0.025])
def test_student_t_matches_scipy(df: int, p: float) -> None:
    assert student_t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9)
    assert student_t_cdf(1.7, df) == pytest.approx(stats.t.cdf(1.7, df), rel=1e-10)


@pytest.mark.parametrize("name", list(SAMPLES))
@pytest.mark.parametrize("level", [0.9, 0.95, 0.99])
def test_mean_interval_matches_scipy(name: str, level: float) -> None:
    xs = SAMPLES[name]
    expected = stats.t.interval(level, len(xs) - 1, loc=np.mean(xs), scale=stats.sem(xs))
    assert mean_interval(xs, level) == pytest.approx(expected, rel=1e-9)
    assert mean_interval([1.0], level) is None


@pytest.mark.parametrize(("k", "n"), [(0, 1), (0, 5), (2, 9), (14, 40), (480, 1000), (9, 9)])
def test_binomial_half_cdf_matches_scipy(k: int, n: int) -> None:
    assert binomial_half_cdf(k, n) == pytest.approx(stats.binom.cdf(k, n, 0.5), rel=1e-12)


@pytest.mark.parametrize("n", [6, 9, 10, 20, 40, 101, 1000])
@pytest.mark.parametrize("level", [0.9, 0.95, 0.99])
def test_median_interval_matches_scipy_quantile_test(n: int, level: float) -> None:
    xs = list(np.random.default_rng(n).normal(0.0, 1.0, n))
    lo, hi = median_interval(xs, level) or (math.nan, math.nan)
    ci = stats.quantile_test(xs, q=float(np.median(xs)), p=0.5).confidence_interval(level)
    k, _, coverage = median_interval_ranks(n, level)
    assert coverage == pytest.approx(1 - 2 * stats.binom.cdf(k - 1, n, 0.5))
    if math.isnan(ci.low):
        # Too few values for the level: SciPy gives up, Proctor gives the whole range and
        # says that its coverage falls short.
        assert (lo, hi) == (min(xs), max(xs))
        assert coverage < level
    else:
        assert (lo, hi) == pytest.approx((ci.low, ci.high))
        assert coverage >= level


def test_median_interval_of_few_values_is_the_range_and_says_its_coverage() -> None:
    assert median_interval(SAMPLES["five"], 0.95) == (0.198, 0.244)
    assert median_interval_ranks(5, 0.95) == pytest.approx((1, 5, 1 - 2 / 32))
    assert median_interval([], 0.95) is None


def _scipy_ratio_interval(x: list[float], y: list[float], level: float) -> tuple[float, float]:
    res = stats.bootstrap(
        (x, y),
        lambda a, b, axis: np.median(a, axis=axis) / np.median(b, axis=axis),
        n_resamples=20000,
        confidence_level=level,
        method="percentile",
        paired=False,
        vectorized=True,
        random_state=np.random.default_rng(0),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


@pytest.mark.parametrize(
    ("slowdown", "n"), [(1.0, 20), (1.3, 20), (1.1, 60)], ids=["same", "30pct", "10pct"]
)
def test_bootstrap_ratio_agrees_with_scipy_and_is_seeded(slowdown: float, n: int) -> None:
    rng = np.random.default_rng(int(slowdown * 100) + n)
    base = list(rng.lognormal(0.0, 0.05, n))
    now = list(slowdown * rng.lognormal(0.0, 0.05, n))
    ours = bootstrap_ratio_of_medians(now, base, 0.95, seed=1, resamples=5000)
    theirs = _scipy_ratio_interval(now, base, 0.95)
    # Monte Carlo on both sides: the ends agree to a small fraction of the interval's width.
    width = theirs[1] - theirs[0]
    assert ours[0] == pytest.approx(theirs[0], abs=0.1 * width)
    assert ours[1] == pytest.approx(theirs[1], abs=0.1 * width)
    assert ours == bootstrap_ratio_of_medians(now, base, 0.95, seed=1, resamples=5000)


@pytest.mark.parametrize(
    ("x", "y"),
    [
        ([1.1, 2.3, 3.2, 4.5, 5.1, 6.6], [0.5, 1.0, 2.0, 2.9]),
        ([0.31, 0.29, 0.33, 0.30, 0.32], [0.21, 0.22, 0.20, 0.23, 0.19]),
        ([1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]),
        (
            list(np.random.default_rng(5).normal(0, 1, 30)),
            list(np.random.default_rng(6).normal(0.4, 1, 25)),
        ),
    ],
)
def test_mann_whitney_exact_and_asymptotic_match_scipy(x: list[float], y: list[float]) -> None:
    methods: tuple[Literal["exact"], Literal["asymptotic"]] = ("exact", "asymptotic")
    for method in methods:
        u, p = mann_whitney_greater(x, y, method)
        ref = stats.mannwhitneyu(x, y, alternative="greater", method=method)
        assert u == pytest.approx(ref.statistic)
        assert p == pytest.approx(ref.pvalue, rel=1e-9)


def test_mann_whitney_with_ties_matches_scipy_asymptotic() -> None:
    x, y = SAMPLES["ties"], [2.0, 3.0, 3.0, 4.0, 5.0, 5.0]
    u, p = mann_whitney_greater(x, y)
    ref = stats.mannwhitneyu(x, y, alternative="greater", method="asymptotic")
    assert u == pytest.approx(ref.statistic)
    assert p == pytest.approx(ref.pvalue, rel=1e-9)
    with pytest.raises(ValueError, match="ties"):
        mann_whitney_greater(x, y, "exact")


def test_regression_flags_a_planted_slowdown_and_says_why() -> None:
    rng = np.random.default_rng(11)
    base = list(rng.normal(0.200, 0.004, 5))
    now = list(1.3 * rng.normal(0.200, 0.004, 5))
    verdict = detect_regression(now, base, 0.10, 0.95, seed=3)
    assert verdict.regression
    assert verdict.ratio_interval[0] > 1.10
    assert verdict.p_value < 0.05
    assert "lies above 1.100" in verdict.reason


@pytest.mark.parametrize(
    ("factor", "threshold", "flagged"),
    [(1.05, 0.10, False), (1.3, 0.5, False), (0.7, 0.10, False), (1.5, 0.10, True)],
    ids=["below-threshold", "threshold-above-slowdown", "faster", "slower"],
)
def test_regression_respects_the_threshold(factor: float, threshold: float, flagged: bool) -> None:
    rng = np.random.default_rng(12)
    base = list(rng.normal(1.0, 0.01, 10))
    now = list(factor * rng.normal(1.0, 0.01, 10))
    assert detect_regression(now, base, threshold, 0.95, seed=1).regression is flagged


def test_regression_does_not_flag_noise() -> None:
    """Unchanged code, noisy machine: of 200 reruns (heavy-tailed noise, 5 repetitions each),
    none may be flagged at a 10% threshold; one outlier alone never flags."""
    rng = np.random.default_rng(13)
    flags = 0
    for trial in range(200):
        base = list(0.2 * rng.lognormal(0.0, 0.08, 5))
        now = list(0.2 * rng.lognormal(0.0, 0.08, 5))
        flags += detect_regression(now, base, 0.10, 0.95, seed=trial, resamples=500).regression
    assert flags == 0
    outlier = detect_regression([0.2, 0.2, 0.2, 0.2, 2.0], [0.2] * 4 + [0.21], 0.1, 0.95, seed=1)
    assert not outlier.regression


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: percentile([], 50), "no values"),
        (lambda: percentile([1.0], 101), "in \\[0, 100\\]"),
        (lambda: student_t_quantile(1.0, 3), "in \\(0, 1\\)"),
        (lambda: mean_interval([1.0, 2.0], 1.0), "confidence level"),
        (lambda: bootstrap_ratio_of_medians([1.0], [], 0.95, seed=0), "both sides"),
        (
            lambda: bootstrap_ratio_of_medians([1.0], [1.0], 0.95, seed=0, resamples=10),
            "at least 100",
        ),
        (lambda: mann_whitney_greater([], [1.0]), "both sides"),
        (lambda: detect_regression([1.0], [1.0], 0.0, 0.95, seed=0), "threshold"),
        (lambda: regularized_incomplete_beta(0.0, 1.0, 0.5), "positive"),
    ],
)
def test_bad_benchmark_statistics_arguments_are_rejected(call: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
