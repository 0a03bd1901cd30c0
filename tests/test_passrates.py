"""proctor.stats.passrates against values computed independently with scipy and numpy."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from scipy import optimize, special, stats

from proctor.api.v1alpha1.evalrun import CompareSpec, EarlyStoppingSpec
from proctor.stats.passrates import (
    MAX_VIOLATION_KEYS,
    OTHER_VIOLATIONS,
    Aggregate,
    bernoulli_confidence_sequence,
    fixed_sample_decision,
    newcombe_interval,
    normal_quantile,
    paired_difference_confidence_sequence,
    sequential_decision,
    should_stop_early,
    summarize,
    wald_interval,
    wilson_interval,
)


def compare(**kw: Any) -> CompareSpec:
    return CompareSpec.model_validate(
        {"baseline": {"ref": "m:base"}, "candidate": {"ref": "m:cand"}, **kw}
    )


def paired(base: bool, cand: bool, index: int = 0) -> dict[str, Any]:
    def side(ok: bool) -> dict[str, Any]:
        return {"passed": ok, "errored": False, "violations": [] if ok else ["p"]}

    return {
        "index": index,
        "status": "passed" if cand else "failed",
        "durationMs": 1.0,
        "error": None,
        "baseline": side(base),
        "candidate": side(cand),
    }


def aggregate(n11: int, n10: int, n01: int, n00: int) -> Aggregate:
    """Counts of (baseline passed, candidate passed) pairs."""
    agg = Aggregate()
    for (b, c), n in {(1, 1): n11, (1, 0): n10, (0, 1): n01, (0, 0): n00}.items():
        for _ in range(n):
            agg.add(paired(bool(b), bool(c)))
    return agg


# --- fixed-sample intervals -------------------------------------------------------------------


@pytest.mark.parametrize("level", [0.9, 0.95, 0.99])
def test_normal_quantile_matches_scipy(level: float) -> None:
    assert normal_quantile(level) == pytest.approx(stats.norm.ppf(0.5 + level / 2), rel=1e-9)


@pytest.mark.parametrize(
    ("k", "n", "level"),
    [
        (0, 10, 0.95),
        (1, 10, 0.95),
        (5, 10, 0.9),
        (10, 10, 0.99),
        (81, 263, 0.95),
        (999, 1000, 0.95),
    ],
)
def test_wilson_matches_scipy(k: int, n: int, level: float) -> None:
    expected = stats.binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    lo, hi = wilson_interval(k, n, level)
    assert lo == pytest.approx(expected.low, abs=1e-12)
    assert hi == pytest.approx(expected.high, abs=1e-12)


def newcombe_reference(k1: int, n1: int, k2: int, n2: int, level: float) -> tuple[float, float]:
    ci1 = stats.binomtest(k1, n1).proportion_ci(confidence_level=level, method="wilson")
    ci2 = stats.binomtest(k2, n2).proportion_ci(confidence_level=level, method="wilson")
    p1, p2 = k1 / n1, k2 / n2
    lower = p1 - p2 - np.hypot(p1 - ci1.low, ci2.high - p2)
    upper = p1 - p2 + np.hypot(ci1.high - p1, p2 - ci2.low)
    return float(lower), float(upper)


@pytest.mark.parametrize(
    ("k1", "n1", "k2", "n2", "published"),
    [
        # Newcombe (1998), Statistics in Medicine 17:873-890, table II, method 10.
        (56, 70, 48, 80, (0.0524, 0.3339)),
        (9, 10, 3, 10, (0.1705, 0.8090)),
        (10, 10, 0, 10, (0.6075, 1.0)),
        (0, 10, 0, 10, (-0.2775, 0.2775)),
        (700, 1000, 650, 1000, None),
    ],
)
def test_newcombe_matches_published_and_scipy(
    k1: int, n1: int, k2: int, n2: int, published: tuple[float, float] | None
) -> None:
    lo, hi = newcombe_interval(k1, n1, k2, n2, 0.95)
    ref = newcombe_reference(k1, n1, k2, n2, 0.95)
    assert (lo, hi) == pytest.approx(ref, abs=1e-12)
    if published is not None:
        assert (round(lo, 4), round(hi, 4)) == pytest.approx(published, abs=1e-4)


@pytest.mark.parametrize(
    ("k1", "n1", "k2", "n2", "level"),
    [(56, 70, 48, 80, 0.95), (700, 1000, 650, 1000, 0.99), (5, 20, 15, 30, 0.9)],
)
def test_wald_matches_numpy(k1: int, n1: int, k2: int, n2: int, level: float) -> None:
    p1, p2 = k1 / n1, k2 / n2
    half = stats.norm.ppf(0.5 + level / 2) * np.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    assert wald_interval(k1, n1, k2, n2, level) == pytest.approx(
        (p1 - p2 - half, p1 - p2 + half), abs=1e-12
    )


@pytest.mark.parametrize(
    "call",
    [
        lambda: wilson_interval(11, 10, 0.95),
        lambda: wilson_interval(-1, 10, 0.95),
        lambda: wilson_interval(1, 10, 1.0),
        lambda: bernoulli_confidence_sequence(1, 10, 0.0),
        lambda: paired_difference_confidence_sequence(6, 6, 10, 0.05),
    ],
)
def test_bad_arguments_are_rejected(call: Any) -> None:
    with pytest.raises(ValueError, match=r"must|need"):
        call()


# --- confidence sequences ---------------------------------------------------------------------


def bernoulli_cs_reference(k: int, n: int, alpha: float) -> tuple[float, float]:
    log_mix = special.betaln(k + 0.5, n - k + 0.5) - special.betaln(0.5, 0.5)

    def excess(p: float) -> float:
        return float(special.xlogy(k, p) + special.xlog1py(n - k, -p) - log_mix - np.log(alpha))

    mle = k / n
    lo = 0.0 if excess(0.0) > 0 else optimize.brentq(excess, 0.0, mle, xtol=1e-13)
    hi = 1.0 if excess(1.0) > 0 else optimize.brentq(excess, mle, 1.0, xtol=1e-13)
    return lo, hi


@pytest.mark.parametrize(
    ("k", "n", "alpha"), [(0, 5, 0.05), (3, 10, 0.05), (80, 100, 0.1), (950, 1000, 0.01)]
)
def test_bernoulli_cs_matches_scipy_and_contains_wilson(k: int, n: int, alpha: float) -> None:
    lo, hi = bernoulli_confidence_sequence(k, n, alpha)
    assert (lo, hi) == pytest.approx(bernoulli_cs_reference(k, n, alpha), abs=1e-9)
    wl, wh = wilson_interval(k, n, 1 - alpha)
    assert lo <= wl
    assert hi >= wh


def paired_cs_reference(plus: int, minus: int, n: int, alpha: float) -> tuple[float, float]:
    zero = n - plus - minus
    counts = np.array([minus, zero, plus], dtype=float)
    log_mix = (
        special.gammaln(1.5)
        - special.gammaln(n + 1.5)
        + np.sum(special.gammaln(counts + 0.5) - special.gammaln(0.5))
    )

    def profile(delta: float) -> float:
        lo, hi = max(0.0, -delta), (1.0 - delta) / 2.0

        def neg(q: float) -> float:
            probs = np.array([q, 1.0 - 2.0 * q - delta, q + delta])
            return -float(np.sum(special.xlogy(counts, np.clip(probs, 0.0, 1.0))))

        if hi - lo < 1e-15:
            return -neg(lo)
        res = optimize.minimize_scalar(
            neg, bounds=(lo, hi), method="bounded", options={"xatol": 1e-14}
        )
        return -min(float(res.fun), neg(lo), neg(hi))

    def excess(delta: float) -> float:
        return profile(delta) - float(log_mix) - math.log(alpha)

    mle = (plus - minus) / n
    lo = -1.0 if excess(-1.0) > 0 else optimize.brentq(excess, -1.0, mle, xtol=1e-12)
    hi = 1.0 if excess(1.0) > 0 else optimize.brentq(excess, mle, 1.0, xtol=1e-12)
    return lo, hi


@pytest.mark.parametrize(
    ("plus", "minus", "n", "alpha"),
    [
        (0, 0, 10, 0.05),
        (10, 0, 10, 0.05),
        (12, 3, 100, 0.05),
        (120, 60, 10_000, 0.05),
        (40, 90, 2_000, 0.1),
    ],
)
def test_paired_cs_matches_scipy(plus: int, minus: int, n: int, alpha: float) -> None:
    got = paired_difference_confidence_sequence(plus, minus, n, alpha)
    assert got == pytest.approx(paired_cs_reference(plus, minus, n, alpha), abs=1e-6)
    assert got[0] <= (plus - minus) / n <= got[1]


def test_paired_cs_narrows_with_more_data() -> None:
    widths = [
        np.diff(paired_difference_confidence_sequence(n // 20, n // 40, n, 0.05))[0]
        for n in (400, 4_000, 40_000)
    ]
    assert widths[0] > widths[1] > widths[2]


# --- aggregate --------------------------------------------------------------------------------


def test_aggregate_counts_single_task_records() -> None:
    agg = Aggregate()
    for status, violations in [
        ("passed", []),
        ("failed", ["a", "b"]),
        ("failed", ["a"]),
        ("errored", []),
    ]:
        agg.add({"index": 0, "status": status, "violations": violations, "error": None})
    assert (agg.total, agg.passed, agg.failed, agg.errored) == (4, 1, 2, 1)
    assert agg.violations == {"a": 2, "b": 1}
    assert agg.pass_rate == 0.25
    assert agg.baseline_pass_rate is None


def test_aggregate_counts_pairs_and_errored_sides_as_not_passed() -> None:
    agg = aggregate(n11=5, n10=2, n01=3, n00=1)
    errored = paired(True, True)
    errored["candidate"] = {"passed": True, "errored": True, "violations": []}
    errored["status"] = "errored"
    agg.add(errored)
    assert (agg.baseline_total, agg.baseline_passed) == (12, 8)
    assert (agg.candidate_total, agg.candidate_passed) == (12, 8)
    assert (agg.candidate_only_passed, agg.baseline_only_passed) == (3, 3)
    assert agg.errored == 1
    assert agg.violations == {"baseline/p": 4, "candidate/p": 3}


def test_merge_equals_adding_everything_and_leaves_other_unchanged() -> None:
    records = [paired(i % 3 == 0, i % 2 == 0, i) for i in range(30)]
    whole = Aggregate()
    for r in records:
        whole.add(r)
    left, right = Aggregate(), Aggregate()
    for r in records[:11]:
        left.add(r)
    for r in records[11:]:
        right.add(r)
    right_before = right.to_json()
    assert left.merge(right) == whole
    assert left == whole
    assert right.to_json() == right_before


def test_json_round_trip_and_old_checkpoints() -> None:
    agg = aggregate(4, 1, 2, 3)
    data = agg.to_json()
    assert data["candidateOnlyPassed"] == 2
    assert Aggregate.from_json(data) == agg
    old = {k: v for k, v in data.items() if k not in ("candidateOnlyPassed", "baselineOnlyPassed")}
    restored = Aggregate.from_json(old)
    assert restored.candidate_only_passed == 0
    assert restored.total == agg.total


@pytest.mark.parametrize("bad", [{"total": -1}, {"passed": "3"}, {"violations": [1]}])
def test_from_json_rejects_garbage(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="aggregate"):
        Aggregate.from_json(bad)


def test_violation_names_are_capped() -> None:
    agg = Aggregate()
    for i in range(MAX_VIOLATION_KEYS + 10):
        agg.add({"status": "failed", "violations": [f"v{i}"]})
    assert len(agg.violations) == MAX_VIOLATION_KEYS + 1
    assert agg.violations[OTHER_VIOLATIONS] == 10


# --- decisions --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("counts", "spec", "decision", "reason"),
    [
        ((800, 20, 120, 60), {}, "accept", "is at least minDelta"),
        ((800, 20, 120, 60), {"minDelta": 0.2}, "reject", "below minDelta"),
        ((800, 20, 120, 60), {"minPassRate": 0.95}, "reject", "below minPassRate"),
        ((900, 50, 50, 0), {}, "reject", "below minDelta"),
        ((900, 50, 50, 0), {"minDelta": -0.03}, "accept", "is at least minDelta"),
        ((900, 50, 50, 0), {"minDelta": -0.03, "interval": "wald"}, "accept", "wald"),
        ((0, 0, 0, 0), {}, "reject", "no comparison cases"),
    ],
)
def test_fixed_sample_decision(
    counts: tuple[int, int, int, int], spec: dict[str, Any], decision: str, reason: str
) -> None:
    got = fixed_sample_decision(aggregate(*counts), compare(**spec))
    assert got.decision == decision
    assert reason in got.reason


def test_fixed_decision_uses_the_named_interval() -> None:
    agg = aggregate(800, 20, 120, 60)
    spec = compare(interval="wald", confidenceLevel=0.9)
    got = fixed_sample_decision(agg, spec)
    assert (got.delta_lower, got.delta_upper) == wald_interval(920, 1000, 820, 1000, 0.9)


@pytest.mark.parametrize(
    ("counts", "spec", "decision"),
    [
        ((800, 20, 120, 60), {}, "accept"),
        ((900, 50, 50, 0), {}, "undecided"),
        ((800, 150, 10, 40), {}, "reject"),
        ((800, 20, 120, 60), {"minPassRate": 0.99}, "reject"),
        ((800, 20, 120, 60), {"minPassRate": 0.85}, "accept"),
        ((0, 0, 0, 0), {"minDelta": -1.0}, "undecided"),
    ],
)
def test_sequential_decision(
    counts: tuple[int, int, int, int], spec: dict[str, Any], decision: str
) -> None:
    assert sequential_decision(aggregate(*counts), compare(**spec)).decision == decision


def test_summarize_single_task() -> None:
    agg = Aggregate()
    agg.add({"status": "passed", "violations": []})
    agg.add({"status": "failed", "violations": ["x"]})
    summary = summarize(agg, None, complete=True)
    assert summary.pass_rate == 0.5
    assert summary.decision is None


def test_summarize_compare_complete_incomplete_and_early() -> None:
    agg = aggregate(900, 50, 50, 0)
    spec = compare(minDelta=-0.03)
    done = summarize(agg, spec, complete=True)
    assert done.decision == "accept"
    assert done.baseline_pass_rate == pytest.approx(0.95)
    assert done.candidate_pass_rate == pytest.approx(0.95)
    assert done.delta == pytest.approx(0.0)
    assert (done.delta_lower, done.delta_upper) == newcombe_interval(950, 1000, 950, 1000, 0.95)
    running = summarize(agg, spec, complete=False)
    assert running.decision == "undecided"
    settled = summarize(aggregate(800, 20, 120, 60), compare(), complete=True, early_stopped=True)
    assert settled.decision == "accept"
    assert settled.early_stopped is True
    assert "confidence sequence" in (settled.reason or "")


@pytest.mark.parametrize(
    ("early", "counts", "expected"),
    [
        ({"enabled": False}, (800, 20, 120, 60), False),
        ({"enabled": True, "minCases": 5000}, (800, 20, 120, 60), False),
        ({"enabled": True, "minCases": 100}, (800, 20, 120, 60), True),
        ({"enabled": True, "minCases": 100}, (900, 50, 50, 0), False),
    ],
)
def test_should_stop_early(
    early: dict[str, Any], counts: tuple[int, int, int, int], expected: bool
) -> None:
    spec = EarlyStoppingSpec.model_validate(early)
    assert should_stop_early(aggregate(*counts), compare(), spec, looks_so_far=3) is expected


def test_should_stop_early_rejects_negative_looks() -> None:
    with pytest.raises(ValueError, match="looks_so_far"):
        should_stop_early(Aggregate(), compare(), EarlyStoppingSpec(), looks_so_far=-1)


# --- validity under repeated looks: a seeded simulation ---------------------------------------


def simulate_early_accepts(runs: int, looks: int, every: int, seed: int) -> tuple[float, float]:
    """Share of null runs (true difference = minDelta = 0) accepted at some look: by the
    confidence sequence, and by naively re-checking the fixed Newcombe interval."""
    rng = np.random.default_rng(seed)
    # Cells (1,1), (1,0), (0,1), (0,0) for p_baseline = p_candidate = 0.9, independent.
    probs = [0.81, 0.09, 0.09, 0.01]
    spec = compare()
    sequential = naive = 0
    for _ in range(runs):
        cells = np.cumsum(rng.multinomial(every, probs, size=looks), axis=0)
        seq_hit = naive_hit = False
        for n11, n10, n01, n00 in cells:
            agg = Aggregate(
                total=int(n11 + n10 + n01 + n00),
                baseline_total=int(n11 + n10 + n01 + n00),
                candidate_total=int(n11 + n10 + n01 + n00),
                baseline_passed=int(n11 + n10),
                candidate_passed=int(n11 + n01),
                candidate_only_passed=int(n01),
                baseline_only_passed=int(n10),
            )
            naive_hit = naive_hit or fixed_sample_decision(agg, spec).decision == "accept"
            seq_hit = seq_hit or sequential_decision(agg, spec).decision == "accept"
        sequential += seq_hit
        naive += naive_hit
    return sequential / runs, naive / runs


def test_sequential_rule_keeps_type_one_error_under_repeated_looks() -> None:
    sequential, naive = simulate_early_accepts(runs=200, looks=25, every=200, seed=20240611)
    # The naive rule's one-sided error is 2.5% per look; 25 looks inflate it well past alpha,
    # which shows the simulation can see the failure the confidence sequence must avoid.
    assert naive > 0.05
    assert sequential <= 0.05


def test_sequential_rule_stops_early_when_the_candidate_is_better() -> None:
    rng = np.random.default_rng(7)
    probs = [0.72, 0.03, 0.18, 0.07]  # baseline 0.75, candidate 0.90
    early = EarlyStoppingSpec.model_validate({"enabled": True, "minCases": 200, "checkEvery": 200})
    cells = np.cumsum(rng.multinomial(200, probs, size=50), axis=0)
    stopped_at = None
    for look, (n11, n10, n01, n00) in enumerate(cells, start=1):
        total = int(n11 + n10 + n01 + n00)
        agg = Aggregate(
            total=total,
            baseline_total=total,
            candidate_total=total,
            baseline_passed=int(n11 + n10),
            candidate_passed=int(n11 + n01),
            candidate_only_passed=int(n01),
            baseline_only_passed=int(n10),
        )
        if should_stop_early(agg, compare(), early, look):
            stopped_at = total
            decided = summarize(agg, compare(), complete=False, early_stopped=True)
            assert decided.decision == "accept"
            break
    assert stopped_at is not None
    assert stopped_at < 10_000


@pytest.mark.parametrize(
    ("complete", "early", "dead", "decision", "missing"),
    [
        (True, False, 0, "accept", 0),
        (False, False, 0, "undecided", 4000),  # workers died: partial data never decides
        (False, True, 0, "accept", 4000),  # the sequential test stopped the run
        (False, True, 3, "undecided", 4000),  # ... but a dead-lettered case is unattributed
    ],
)
def test_finding3_summarize_decides_only_complete_or_early_stopped_runs(
    complete: bool, early: bool, dead: int, decision: str, missing: int
) -> None:
    agg = aggregate(800, 20, 120, 60)
    total = agg.total + missing
    summary = summarize(
        agg, compare(), complete=complete, early_stopped=early, total=total, dead_lettered=dead
    )
    assert summary.decision == decision
    assert summary.not_evaluated == missing
    if decision == "undecided":
        assert (
            summary.reason == f"{missing} of {total} cases were not evaluated: they have no record"
        )


def test_finding3_summarize_single_task_says_what_was_not_evaluated() -> None:
    agg = Aggregate()
    agg.add({"status": "passed"})
    summary = summarize(agg, None, complete=False, total=10, why="the run was interrupted")
    assert summary.decision is None
    assert summary.not_evaluated == 9
    assert summary.reason == "9 of 10 cases were not evaluated: the run was interrupted"
