"""Benchmark statistics: summaries and comparisons of samples of measurements.

A streaming, mergeable :class:`Welford` accumulator for count, mean, standard deviation, min and
max; linear-interpolation percentiles; the Student-t interval of the mean; the distribution-free
order-statistic interval of the median; a seeded percentile-bootstrap interval of a ratio of
medians; the Mann-Whitney U test; and :func:`detect_regression`, which flags a slowdown only
when both the bootstrap interval and the rank test agree (see docs/statistics.md).

Pure standard library on purpose: numpy and scipy are only used by the tests.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

from proctor.stats.passrates import Interval


@dataclass
class Welford:
    """Streaming count, mean, variance, min and max (Welford 1962); mergeable (Chan et al. 1979).

    Numerically stable in one pass: adding values one at a time, or merging accumulators built
    from parts in any order, gives the same mean and variance up to rounding.
    """

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    min: float = math.inf
    max: float = -math.inf

    def add(self, x: float) -> None:
        """Count one value."""
        if not math.isfinite(x):
            raise ValueError(f"a measurement must be a finite number, got {x!r}")
        self.count += 1
        delta = x - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (x - self.mean)
        self.min = min(self.min, x)
        self.max = max(self.max, x)

    def merge(self, other: Welford) -> Welford:
        """Add ``other``'s values into this accumulator and return it."""
        if other.count == 0:
            return self
        if self.count == 0:
            self.count, self.mean, self.m2 = other.count, other.mean, other.m2
            self.min, self.max = other.min, other.max
            return self
        n = self.count + other.count
        delta = other.mean - self.mean
        self.m2 += other.m2 + delta * delta * self.count * other.count / n
        self.mean += delta * other.count / n
        self.count = n
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        return self

    @property
    def variance(self) -> float | None:
        """The sample variance (divisor n - 1), or None below two values."""
        return self.m2 / (self.count - 1) if self.count > 1 else None

    @property
    def stddev(self) -> float | None:
        """The sample standard deviation, or None below two values."""
        v = self.variance
        return math.sqrt(max(v, 0.0)) if v is not None else None


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation between order statistics.

    The same definition as NumPy's default (Hyndman and Fan's type 7): position
    ``(n - 1) * q / 100`` in the sorted values.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    frac = pos - lo
    return xs[lo] + (xs[hi] - xs[lo]) * frac


def median(values: Sequence[float]) -> float:
    """The median (the 50th :func:`percentile`)."""
    return percentile(values, 50.0)


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        step = d * c
        h *= step
        if abs(step - 1.0) < 1e-15:
            break
    return h


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """``I_x(a, b)``, the CDF of the Beta(a, b) distribution at ``x``."""
    if a <= 0 or b <= 0:
        raise ValueError(f"beta parameters must be positive, got a={a}, b={b}")
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """The CDF of Student's t distribution with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    tail = 0.5 * regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def student_t_quantile(p: float, df: float) -> float:
    """The inverse of :func:`student_t_cdf` (bisection to full double precision)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"probability must be in (0, 1), got {p}")
    if p < 0.5:
        return -student_t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while student_t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if student_t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-15 * max(1.0, hi):
            break
    return (lo + hi) / 2.0


def mean_interval(values: Sequence[float], confidence_level: float) -> Interval | None:
    """The Student-t interval of the mean: ``mean ± t(1 - a/2, n - 1) · s / √n``, a = 1 - level.

    None below two values. Assumes roughly normal means, which the central limit theorem gives
    for the sample sizes benchmarks use unless the distribution is very skewed; the median's
    interval (:func:`median_interval`) assumes nothing.
    """
    _check_level(confidence_level)
    acc = Welford()
    for x in values:
        acc.add(x)
    if acc.count < 2 or acc.stddev is None:
        return None
    t = student_t_quantile(0.5 + confidence_level / 2.0, acc.count - 1)
    half = t * acc.stddev / math.sqrt(acc.count)
    return (acc.mean - half, acc.mean + half)


def binomial_half_cdf(k: int, n: int) -> float:
    """``P(B <= k)`` for ``B ~ Binomial(n, 1/2)``, exactly (integer arithmetic, then rounded)."""
    if n < 0:
        raise ValueError(f"n must not be negative, got {n}")
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return sum(math.comb(n, i) for i in range(k + 1)) / (1 << n)


def median_interval_ranks(n: int, confidence_level: float) -> tuple[int, int, float]:
    """1-based ranks ``(lo, hi)`` of the order-statistic interval of the median, and its coverage.

    The interval ``[x_(k), x_(n+1-k)]`` covers the population median with probability
    ``1 - 2 P(B <= k - 1)``, ``B ~ Binomial(n, 1/2)``, for any continuous distribution; ``k`` is
    the largest rank whose coverage is still at least the level. Below that (n <= 5 at 95%) the
    interval is the whole range ``[min, max]`` and its coverage, ``1 - 2^(1-n)``, is less than
    asked: the third value says how much.
    """
    _check_level(confidence_level)
    if n < 1:
        raise ValueError("the median interval needs at least one value")
    alpha_half = (1.0 - confidence_level) / 2.0
    k = 0
    # P(B <= k - 1) grows with k; find the largest k with it at most alpha/2.
    while k + 1 <= (n + 1) // 2 and binomial_half_cdf(k, n) <= alpha_half:
        k += 1
    if k == 0:
        return 1, n, max(0.0, 1.0 - 2.0 * binomial_half_cdf(0, n))
    return k, n + 1 - k, 1.0 - 2.0 * binomial_half_cdf(k - 1, n)


def median_interval(values: Sequence[float], confidence_level: float) -> Interval | None:
    """The distribution-free interval of the median (see :func:`median_interval_ranks`)."""
    if not values:
        return None
    xs = sorted(values)
    lo, hi, _ = median_interval_ranks(len(xs), confidence_level)
    return (xs[lo - 1], xs[hi - 1])


def bootstrap_ratio_of_medians(
    numerator: Sequence[float],
    denominator: Sequence[float],
    confidence_level: float,
    *,
    seed: int,
    resamples: int = 2000,
) -> Interval:
    """Percentile-bootstrap interval of ``median(numerator) / median(denominator)``.

    Each resample draws both samples again with replacement, independently; the interval is
    the ``a/2`` and ``1 - a/2`` percentiles of the resampled ratios (``a = 1 - level``).
    Seeded, so the same data always give the same interval (a rerun of the summary never
    changes a verdict).
    """
    _check_level(confidence_level)
    if not numerator or not denominator:
        raise ValueError("the ratio of medians needs values on both sides")
    if resamples < 100:
        raise ValueError(f"use at least 100 bootstrap resamples, got {resamples}")
    rng = random.Random(seed)
    n, m = len(numerator), len(denominator)
    ratios = []
    for _ in range(resamples):
        top = median(rng.choices(numerator, k=n))
        bottom = median(rng.choices(denominator, k=m))
        ratios.append(top / bottom if bottom > 0 else math.inf)
    alpha = 1.0 - confidence_level
    return (percentile(ratios, 100.0 * alpha / 2.0), percentile(ratios, 100.0 * (1 - alpha / 2)))


def _midranks(values: Sequence[float]) -> tuple[list[float], list[int]]:
    """Ranks (1-based, ties get their average rank) and the sizes of tie groups."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    ties = []
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        rank = (i + j) / 2.0 + 1.0
        for k in range(i, j + 1):
            ranks[order[k]] = rank
        ties.append(j - i + 1)
        i = j + 1
    return ranks, ties


def _u_distribution(m: int, n: int) -> list[int]:
    """Counts of arrangements with U = 0..m*n (coefficients of the Gaussian binomial)."""
    size = m * n + 1
    coef = [0] * size
    coef[0] = 1
    for i in range(1, m + 1):
        # multiply by (1 - q^(n+i)) ...
        step = n + i
        for k in range(size - 1, step - 1, -1):
            coef[k] -= coef[k - step]
        # ... and divide by (1 - q^i): a running sum with stride i.
        for k in range(i, size):
            coef[k] += coef[k - i]
    return coef


MannWhitneyMethod = Literal["auto", "exact", "asymptotic"]
EXACT_U_MAX_CELLS = 2500
"""``auto`` uses the exact distribution when ``n1 * n2`` is at most this and nothing is tied."""


def mann_whitney_greater(
    x: Sequence[float], y: Sequence[float], method: MannWhitneyMethod = "auto"
) -> tuple[float, float]:
    """One-sided Mann-Whitney U test that ``x`` tends to be larger than ``y``: ``(U_x, p)``.

    ``U_x`` counts pairs with ``x_i > y_j`` (ties count one half). ``exact``: the permutation
    distribution of U (no ties allowed). ``asymptotic``: the normal approximation with the tie
    correction of the variance and a continuity correction of 1/2, as SciPy computes it.
    """
    n1, n2 = len(x), len(y)
    if n1 == 0 or n2 == 0:
        raise ValueError("the Mann-Whitney test needs values on both sides")
    ranks, ties = _midranks([*x, *y])
    u = sum(ranks[:n1]) - n1 * (n1 + 1) / 2.0
    tied = any(t > 1 for t in ties)
    if method == "auto":
        method = "exact" if not tied and n1 * n2 <= EXACT_U_MAX_CELLS else "asymptotic"
    if method == "exact":
        if tied:
            raise ValueError("the exact Mann-Whitney distribution needs values without ties")
        counts = _u_distribution(min(n1, n2), max(n1, n2))  # symmetric in the sizes
        total = sum(counts)
        at_least = sum(counts[math.ceil(u) :])
        return u, at_least / total
    n = n1 + n2
    mu = n1 * n2 / 2.0
    tie_term = sum(t**3 - t for t in ties) / (n * (n - 1)) if n > 1 else 0.0
    var = n1 * n2 / 12.0 * ((n + 1) - tie_term)
    if var <= 0:
        return u, 1.0
    z = (u - mu - 0.5) / math.sqrt(var)
    return u, 1.0 - NormalDist().cdf(z)


@dataclass(frozen=True)
class RegressionTest:
    """The verdict of :func:`detect_regression` and what it rests on."""

    regression: bool
    ratio: float
    ratio_interval: Interval
    p_value: float
    reason: str


def detect_regression(
    now: Sequence[float],
    baseline: Sequence[float],
    threshold: float,
    confidence_level: float,
    *,
    seed: int,
    resamples: int = 2000,
) -> RegressionTest:
    """Whether ``now`` is slower than ``baseline`` by more than ``threshold``, beyond noise.

    A cell is flagged only when both hold:

    1. the seeded percentile-bootstrap interval (at ``confidence_level``) of
       ``median(now) / median(baseline)`` lies wholly above ``1 + threshold``: the slowdown is
       larger than the threshold, not merely non-zero;
    2. the one-sided Mann-Whitney U test that ``now`` is stochastically larger rejects at
       ``alpha = 1 - confidence_level``: the shift is in the ranks, not one outlier.

    With unchanged code both tests fail at their own rates; requiring both keeps the rate of
    false flags below the smaller one (each at most ``alpha``, the bootstrap's further lowered
    by the threshold margin).
    """
    _check_level(confidence_level)
    if threshold <= 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    if not now or not baseline:
        raise ValueError("regression detection needs measurements now and in the baseline")
    base_median = median(baseline)
    ratio = median(now) / base_median if base_median > 0 else math.inf
    interval = bootstrap_ratio_of_medians(
        now, baseline, confidence_level, seed=seed, resamples=resamples
    )
    _, p = mann_whitney_greater(now, baseline)
    alpha = 1.0 - confidence_level
    bound = 1.0 + threshold
    lo, hi = interval
    if lo > bound and p < alpha:
        reason = (
            f"median ratio {ratio:.3f}, {confidence_level:.4g} interval [{lo:.3f}, {hi:.3f}] "
            f"lies above {bound:.3f} and Mann-Whitney p = {p:.4g} < {alpha:.4g}"
        )
        return RegressionTest(True, ratio, interval, p, reason)
    why = []
    if lo <= bound:
        why.append(f"interval [{lo:.3f}, {hi:.3f}] reaches down to {bound:.3f} or below")
    if p >= alpha:
        why.append(f"Mann-Whitney p = {p:.4g} is not below {alpha:.4g}")
    reason = f"median ratio {ratio:.3f}: not a regression (" + "; ".join(why) + ")"
    return RegressionTest(False, ratio, interval, p, reason)


def _check_level(confidence_level: float) -> None:
    if not 0.0 < confidence_level < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), got {confidence_level}")
