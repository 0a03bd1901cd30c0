"""Pass rates, intervals, accept/reject decisions and anytime-valid early stopping.

Fixed-sample decisions follow Metamorphic Guard's rule: adopt the candidate iff the lower bound
of the interval for ``candidate pass rate - baseline pass rate`` is at least ``minDelta`` and the
candidate's pass rate is at least ``minPassRate``. The interval is Newcombe's hybrid score
interval (from two Wilson intervals) or Wald's, both for two independent proportions.

Early stopping uses confidence sequences, which are valid at every stopping time however often
the data are looked at: for the paired difference a mixture likelihood-ratio (universal
inference) confidence sequence over the trinomial of per-case differences, with a
Dirichlet(1/2, 1/2, 1/2) mixture; for the candidate's pass rate the Beta(1/2, 1/2)-mixture
(Robbins) confidence sequence. Both are computed from counts alone, so an :class:`Aggregate`
merged from batches in any order gives the same answer. See docs/statistics.md.

Pure standard library on purpose: numpy and scipy are only used by the tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Literal

from proctor.api.v1alpha1.evalrun import (
    TOP_VIOLATIONS,
    CompareSpec,
    EarlyStoppingSpec,
    ResultSummary,
    ViolationCount,
)
from proctor.stats.aggregate import MAX_VIOLATION_KEYS, OTHER_VIOLATIONS, Aggregate

__all__ = [
    "MAX_VIOLATION_KEYS",
    "OTHER_VIOLATIONS",
    "Aggregate",
    "Decision",
    "DecisionName",
    "Interval",
    "bernoulli_confidence_sequence",
    "difference_interval",
    "fixed_sample_decision",
    "newcombe_interval",
    "normal_quantile",
    "paired_difference_confidence_sequence",
    "sequential_decision",
    "should_stop_early",
    "summarize",
    "wald_interval",
    "wilson_interval",
]

DecisionName = Literal["accept", "reject", "undecided"]
Interval = tuple[float, float]

_BISECTION_STEPS = 60


# --- fixed-sample intervals -------------------------------------------------------------------


def normal_quantile(confidence_level: float) -> float:
    """The two-sided standard normal critical value: 1.96 for 0.95."""
    if not 0.0 < confidence_level < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), got {confidence_level}")
    return NormalDist().inv_cdf(0.5 + confidence_level / 2.0)


def wilson_interval(successes: int, trials: int, confidence_level: float) -> Interval:
    """Wilson's score interval for a binomial proportion."""
    _check_counts(successes, trials)
    if trials == 0:
        return (0.0, 1.0)
    z = normal_quantile(confidence_level)
    p = successes / trials
    z2n = z * z / trials
    centre = (p + z2n / 2.0) / (1.0 + z2n)
    half = z * math.sqrt(p * (1.0 - p) / trials + z2n / (4.0 * trials)) / (1.0 + z2n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def newcombe_interval(
    successes_1: int, trials_1: int, successes_2: int, trials_2: int, confidence_level: float
) -> Interval:
    """Newcombe's hybrid score interval (his method 10) for ``p1 - p2``, independent samples."""
    _check_counts(successes_1, trials_1)
    _check_counts(successes_2, trials_2)
    if trials_1 == 0 or trials_2 == 0:
        return (-1.0, 1.0)
    p1 = successes_1 / trials_1
    p2 = successes_2 / trials_2
    l1, u1 = wilson_interval(successes_1, trials_1, confidence_level)
    l2, u2 = wilson_interval(successes_2, trials_2, confidence_level)
    delta = p1 - p2
    lower = delta - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    upper = delta + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return (max(-1.0, lower), min(1.0, upper))


def wald_interval(
    successes_1: int, trials_1: int, successes_2: int, trials_2: int, confidence_level: float
) -> Interval:
    """Wald's interval for ``p1 - p2``, independent samples (degenerate at rates 0 and 1)."""
    _check_counts(successes_1, trials_1)
    _check_counts(successes_2, trials_2)
    if trials_1 == 0 or trials_2 == 0:
        return (-1.0, 1.0)
    p1 = successes_1 / trials_1
    p2 = successes_2 / trials_2
    z = normal_quantile(confidence_level)
    half = z * math.sqrt(p1 * (1.0 - p1) / trials_1 + p2 * (1.0 - p2) / trials_2)
    delta = p1 - p2
    return (max(-1.0, delta - half), min(1.0, delta + half))


def difference_interval(agg: Aggregate, compare: CompareSpec) -> Interval:
    """The fixed-sample interval of candidate minus baseline pass rate that ``compare`` names."""
    method = newcombe_interval if compare.interval == "newcombe" else wald_interval
    return method(
        agg.candidate_passed,
        agg.candidate_total,
        agg.baseline_passed,
        agg.baseline_total,
        compare.confidence_level,
    )


def _check_counts(successes: int, trials: int) -> None:
    if trials < 0 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes} of {trials}")


# --- confidence sequences ---------------------------------------------------------------------


def _xlogy(count: float, p: float) -> float:
    if count == 0:
        return 0.0
    if p <= 0.0:
        return -math.inf
    return count * math.log(p)


def bernoulli_confidence_sequence(successes: int, trials: int, alpha: float) -> Interval:
    """The Beta(1/2, 1/2)-mixture confidence sequence for a Bernoulli mean.

    With probability at least ``1 - alpha`` it contains the true rate at every ``trials`` at
    once, so it may be looked at after every case and the run stopped whenever it is narrow
    enough.
    """
    _check_counts(successes, trials)
    _check_alpha(alpha)
    if trials == 0:
        return (0.0, 1.0)
    failures = trials - successes
    log_mixture = (
        math.lgamma(successes + 0.5)
        + math.lgamma(failures + 0.5)
        - math.lgamma(trials + 1.0)
        - 2.0 * math.lgamma(0.5)
    )
    threshold = log_mixture + math.log(alpha)

    def profile(p: float) -> float:
        return _xlogy(successes, p) + _xlogy(failures, 1.0 - p)

    return _level_set(profile, successes / trials, 0.0, 1.0, threshold)


def _trinomial_profile(minus: int, zero: int, plus: int, delta: float) -> float:
    """Max log-likelihood of counts of (-1, 0, +1) differences with ``P(+1) - P(-1) = delta``.

    The log-likelihood is concave in ``q = P(-1)`` on the feasible segment, so the maximum is
    the stationary point (a root of a quadratic) when it lies inside, else an end of it.
    """
    n = minus + zero + plus

    def loglik(q: float) -> float:
        return _xlogy(minus, q) + _xlogy(zero, 1.0 - 2.0 * q - delta) + _xlogy(plus, q + delta)

    lo = max(0.0, -delta)
    hi = (1.0 - delta) / 2.0
    candidates = [lo, hi]
    b = minus * (1.0 - 3.0 * delta) - 2.0 * zero * delta + plus * (1.0 - delta)
    c = minus * delta * (1.0 - delta)
    disc = b * b + 8.0 * n * c
    if disc >= 0.0:
        root = math.sqrt(disc)
        candidates.extend(q for q in ((b + root) / (4 * n), (b - root) / (4 * n)) if lo < q < hi)
    return max(loglik(q) for q in candidates)


def paired_difference_confidence_sequence(
    candidate_only: int, baseline_only: int, total: int, alpha: float
) -> Interval:
    """A confidence sequence for ``P(candidate passes) - P(baseline passes)`` on paired cases.

    Each case gives ``d = [candidate passed] - [baseline passed]`` in {-1, 0, +1}. The e-process
    is the Dirichlet(1/2, 1/2, 1/2) mixture likelihood over the maximum likelihood under each
    hypothesised difference (universal inference, Wasserman, Ramdas and Balakrishnan 2020); by
    Ville's inequality the set of differences it has not rejected at level ``alpha`` covers the
    truth at all sample sizes simultaneously with probability at least ``1 - alpha``.
    """
    if min(candidate_only, baseline_only) < 0 or candidate_only + baseline_only > total:
        raise ValueError(
            "need non-negative discordant counts whose sum is at most the total, got "
            f"{candidate_only} + {baseline_only} of {total}"
        )
    _check_alpha(alpha)
    if total == 0:
        return (-1.0, 1.0)
    plus, minus = candidate_only, baseline_only
    zero = total - plus - minus
    log_mixture = (
        math.lgamma(1.5)
        - math.lgamma(total + 1.5)
        + sum(math.lgamma(k + 0.5) - math.lgamma(0.5) for k in (minus, zero, plus))
    )
    threshold = log_mixture + math.log(alpha)
    return _level_set(
        lambda d: _trinomial_profile(minus, zero, plus, d),
        (plus - minus) / total,
        -1.0,
        1.0,
        threshold,
    )


def _level_set(
    profile: Callable[[float], float], mle: float, lo: float, hi: float, threshold: float
) -> Interval:
    """The interval where a concave profile log-likelihood exceeds ``threshold``.

    The maximum-likelihood estimate is always inside, since a mixture likelihood never exceeds
    the maximum likelihood and ``threshold`` is below the mixture's.
    """

    def edge(outside: float) -> float:
        if profile(outside) > threshold:
            return outside
        inside = mle
        for _ in range(_BISECTION_STEPS):
            mid = (inside + outside) / 2.0
            if profile(mid) > threshold:
                inside = mid
            else:
                outside = mid
        return outside

    return (edge(lo), edge(hi))


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


# --- decisions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """An accept/reject decision with the interval it rests on."""

    decision: DecisionName
    reason: str
    delta_lower: float | None = None
    delta_upper: float | None = None


def fixed_sample_decision(agg: Aggregate, compare: CompareSpec) -> Decision:
    """Metamorphic Guard's rule on all the data: accept iff lower >= minDelta and rate >= min."""
    if agg.candidate_total == 0 or agg.baseline_total == 0:
        return Decision("reject", "no comparison cases were evaluated")
    lower, upper = difference_interval(agg, compare)
    rate = agg.candidate_passed / agg.candidate_total
    level = f"{compare.confidence_level:.4g} {compare.interval}"
    if lower < compare.min_delta:
        reason = (
            f"lower bound of the {level} interval of the pass-rate difference, {lower:.4f}, "
            f"is below minDelta {compare.min_delta:.4f}"
        )
        return Decision("reject", reason, lower, upper)
    if rate < compare.min_pass_rate:
        reason = f"candidate pass rate {rate:.4f} is below minPassRate {compare.min_pass_rate:.4f}"
        return Decision("reject", reason, lower, upper)
    reason = (
        f"lower bound of the {level} interval, {lower:.4f}, is at least minDelta "
        f"{compare.min_delta:.4f} and candidate pass rate {rate:.4f} is at least minPassRate "
        f"{compare.min_pass_rate:.4f}"
    )
    return Decision("accept", reason, lower, upper)


def sequential_decision(agg: Aggregate, compare: CompareSpec) -> Decision:
    """The decision the confidence sequences have settled so far, or ``undecided``.

    Valid however often it is called: with ``alpha = 1 - confidenceLevel``, the chance that it
    ever says accept when the true difference is below ``minDelta`` (or the true candidate rate
    below ``minPassRate``) is at most ``alpha``, and likewise for a wrong reject. ``alpha`` is
    split evenly between the two sequences when ``minPassRate`` is positive.
    """
    if agg.candidate_total == 0 or agg.baseline_total == 0:
        return Decision("undecided", "no comparison cases yet")
    alpha = 1.0 - compare.confidence_level
    check_rate = compare.min_pass_rate > 0.0
    alpha_delta = alpha / 2.0 if check_rate else alpha
    lower, upper = paired_difference_confidence_sequence(
        agg.candidate_only_passed,
        agg.baseline_only_passed,
        min(agg.candidate_total, agg.baseline_total),
        alpha_delta,
    )
    rate_lower, rate_upper = (
        bernoulli_confidence_sequence(agg.candidate_passed, agg.candidate_total, alpha / 2.0)
        if check_rate
        else (1.0, 1.0)
    )
    level = f"{compare.confidence_level:.4g} confidence sequence"
    if upper < compare.min_delta:
        reason = (
            f"upper bound of the {level} of the pass-rate difference, {upper:.4f}, is below "
            f"minDelta {compare.min_delta:.4f}"
        )
        return Decision("reject", reason, lower, upper)
    if rate_upper < compare.min_pass_rate:
        reason = (
            f"upper bound of the {level} of the candidate pass rate, {rate_upper:.4f}, is below "
            f"minPassRate {compare.min_pass_rate:.4f}"
        )
        return Decision("reject", reason, lower, upper)
    if lower >= compare.min_delta and rate_lower >= compare.min_pass_rate:
        reason = f"lower bound of the {level}, {lower:.4f}, is at least minDelta " + (
            f"{compare.min_delta:.4f} and the candidate pass rate's, {rate_lower:.4f}, is at "
            f"least minPassRate {compare.min_pass_rate:.4f}"
            if check_rate
            else f"{compare.min_delta:.4f}"
        )
        return Decision("accept", reason, lower, upper)
    return Decision(
        "undecided",
        f"the {level} of the pass-rate difference, [{lower:.4f}, {upper:.4f}], still contains "
        f"minDelta {compare.min_delta:.4f}",
        lower,
        upper,
    )


def _delta(agg: Aggregate) -> float | None:
    """The candidate's pass rate minus the baseline's; None until both have a case."""
    if not (agg.candidate_total and agg.baseline_total):
        return None
    return agg.candidate_passed / agg.candidate_total - agg.baseline_passed / agg.baseline_total


def summarize(
    agg: Aggregate,
    compare: CompareSpec | None,
    *,
    complete: bool,
    early_stopped: bool = False,
    total: int | None = None,
    dead_lettered: int = 0,
    why: str | None = None,
    resolved: Aggregate | None = None,
) -> ResultSummary:
    """The result summary for a run's status.

    Decided only when no case is unattributable (:class:`Aggregate`) and every case is recorded
    (``complete``: the fixed-sample rule) or the sequential test stopped early with no
    dead-lettered case (the confidence sequences, and the rates, of ``resolved``, the cases
    ``[0, n)`` all recorded; default ``agg``). Otherwise ``undecided`` (a single task's run has
    no decision) and the reason says how many of ``total`` cases were not evaluated and ``why``
    (default: they have no record). A case not evaluated can never turn into ``accept``.
    """
    missing = max(0, total - agg.total) if total is not None else None
    decides = (complete or (early_stopped and dead_lettered == 0)) and agg.unattributable == 0
    reason = None
    if not decides:
        reason = _not_evaluated_reason(agg, missing, total, why)
        missing = None if missing is None else missing + agg.unattributable
    early = early_stopped if early_stopped else None
    digest = _digest(agg)
    if compare is None:
        return ResultSummary(
            pass_rate=agg.pass_rate,
            early_stopped=early,
            reason=reason,
            not_evaluated=missing,
            **digest,
        )
    # An early stop's rates, like its decision, are those of the resolved prefix.
    basis = resolved if early_stopped and resolved is not None else agg
    if decides:
        decision = (
            sequential_decision(basis, compare)
            if early_stopped
            else fixed_sample_decision(agg, compare)
        )
    else:
        running = sequential_decision(agg, compare)
        decision = Decision("undecided", reason or "", running.delta_lower, running.delta_upper)
    return ResultSummary(
        pass_rate=basis.pass_rate,
        baseline_pass_rate=basis.baseline_pass_rate,
        candidate_pass_rate=basis.candidate_pass_rate,
        delta=_delta(basis),
        delta_lower=decision.delta_lower,
        delta_upper=decision.delta_upper,
        decision=decision.decision,
        reason=decision.reason,
        early_stopped=early_stopped,
        not_evaluated=missing,
        **digest,
    )


def _digest(agg: Aggregate) -> dict[str, Any]:
    """What failed, for people: the top violations with counts and the first failing cases."""
    top = [ViolationCount(name=n, count=c) for n, c in agg.top_violations(TOP_VIOLATIONS)]
    return {"top_violations": top or None, "first_failing": list(agg.first_failing) or None}


def _not_evaluated_reason(
    agg: Aggregate, missing: int | None, total: int | None, why: str | None
) -> str:
    """Why the run is undecided: cases without a record, and cases no side can be blamed for."""
    of = f" of {total}" if total is not None else ""
    parts = []
    if missing is None or missing > 0:
        count = f"{missing}{of}" if missing is not None else "some"
        parts.append(f"{count} cases were not evaluated: {why or 'they have no record'}")
    if agg.unattributable:
        parts.append(
            f"{agg.unattributable}{of} cases cannot be attributed to either implementation: "
            "both sides errored, the task's generate() failed, or the case's dataset row cannot "
            "be read (the task, the input or the harness is at fault; see the records' errors)"
        )
    return "; ".join(parts)


def should_stop_early(
    agg: Aggregate, compare: CompareSpec, early: EarlyStoppingSpec, looks_so_far: int
) -> bool:
    """Whether the decision is settled and the run may stop now.

    The confidence sequences are valid at every look, so ``looks_so_far`` does not change the
    boundary (it is accepted for engines that count looks; it must not be negative). The engine
    looks every ``early.check_every`` cases; nothing stops before ``early.min_cases``. ``agg``
    must count the resolved prefix (cases ``[0, n)``, every one recorded:
    :attr:`proctor.storage.RunProgress.resolved`): the confidence sequences hold at every ``n``
    of the case sequence, not on whichever cases happened to finish first. A case no side can
    be blamed for keeps the run going (it ends undecided, with every case recorded).
    """
    if looks_so_far < 0:
        raise ValueError(f"looks_so_far must not be negative, got {looks_so_far}")
    if not early.enabled or agg.total < early.min_cases or agg.unattributable:
        return False
    return sequential_decision(agg, compare).decision != "undecided"
