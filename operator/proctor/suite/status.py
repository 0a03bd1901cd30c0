"""The status a suite pass writes, its conditions and Events, from what the pass saw (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from proctor.api.conditions import (
    ConditionSetter,
    Event,
    Problem,
    get_condition,
    rfc3339,
)
from proctor.api.v1alpha1.base import Condition, LossLedgerStatus
from proctor.api.v1alpha1.benchmarksuite import (
    BenchmarkSuiteSpec,
    BenchmarkSuiteStatus,
    Phase,
    Regression,
    SuiteRunSummary,
)
from proctor.bench.summary import SuiteSummary
from proctor.cluster.losses import loss_degradations
from proctor.suite.decide import TERMINAL, RunDecision, trim_history


@dataclass(frozen=True)
class SuiteObservation:
    """Everything one pass saw and did, for the status."""

    spec: BenchmarkSuiteSpec
    generation: int
    now: datetime
    previous: BenchmarkSuiteStatus
    run: RunDecision
    summary: SuiteSummary | None = None
    ready_pods: int = 0
    finished: bool = False
    problem: Problem | None = None
    # The run's totals so far, from the loss ledger (which a restarted operator restores).
    disruptions: int = 0
    failures: int = 0
    ledger: LossLedgerStatus | None = None
    report_uri: str | None = None
    results_uri: str | None = None
    baseline_uri: str | None = None


@dataclass
class SuiteStatusUpdate:
    status: BenchmarkSuiteStatus
    events: list[Event] = field(default_factory=list)
    dropped_runs: list[str] = field(default_factory=list)


def _decide_phase(obs: SuiteObservation, failures: int) -> tuple[Phase, str, str]:
    prev = obs.previous
    spec = obs.spec
    if spec.cancel and _ends_by_cancel(obs):
        return "Cancelled", "Cancelled", _cancelled_message(obs)
    if obs.run.run_id is None:
        if spec.suspend:
            return "Suspended", "Suspended", "spec.suspend is true; no run starts"
        return "Pending", "WaitingForSchedule", "the first run starts at the schedule's next fire"
    if not obs.run.start and prev.phase in TERMINAL:
        cond = get_condition(prev.conditions, prev.phase or "")
        return prev.phase or "Failed", cond.reason if cond else "", cond.message if cond else ""
    if failures > spec.failure_budget:
        return (
            "Failed",
            "FailureBudgetExhausted",
            f"{failures} benchmark pod failures exceed the budget of {spec.failure_budget} "
            "(spec.failureBudget); see the pods' last state for the cause",
        )
    summary = obs.summary
    if obs.finished and summary is not None:
        return (
            "Succeeded",
            "Completed",
            f"{summary.completed} repetitions of {len(summary.cells)} cells recorded "
            f"({summary.failed} failed"
            + (f"; {summary.reused} cells reused from the cache" if summary.reused else "")
            + f"), {len(summary.regressions)} regressions",
        )
    if spec.suspend:
        return "Suspended", "Suspended", "spec.suspend is true; benchmark pods removed"
    if obs.problem is not None:
        return "Pending", obs.problem.reason, obs.problem.message
    completed = summary.completed if summary else 0
    if obs.ready_pods > 0 or completed > 0 or (prev.phase == "Running" and not obs.run.start):
        return "Running", "Running", f"{obs.ready_pods} benchmark pods ready"
    return "Pending", "WaitingForPods", "benchmark pods are being scheduled"


def _ends_by_cancel(obs: SuiteObservation) -> bool:
    """spec.cancel ends a run still going, and a schedule (no run fires any more); a run that
    had finished before keeps its phase when the suite has no schedule."""
    prev = obs.previous
    if prev.phase == "Cancelled":
        return True
    return prev.phase not in TERMINAL or obs.spec.schedule is not None


def _cancelled_message(obs: SuiteObservation) -> str:
    if obs.previous.phase == "Cancelled":
        cond = get_condition(obs.previous.conditions, "Cancelled")
        return cond.message if cond else "spec.cancel is true"
    if obs.previous.phase in TERMINAL:
        return "spec.cancel is true: the schedule starts no more runs"
    if obs.run.run_id is None:
        return "spec.cancel is true: no run was started"
    summary = obs.summary
    done = f"{summary.completed} of {summary.total}" if summary else "no"
    return (
        f"spec.cancel is true: benchmark pods removed and no cell started; {done} repetitions "
        "recorded are kept"
    )


def _events(
    obs: SuiteObservation,
    phase: str,
    reason: str,
    message: str,
    regressions: Sequence[Regression] | None,
) -> list[Event]:
    prev = obs.previous
    events: list[Event] = []
    if obs.run.start and obs.run.run_id:
        events.append(Event("Normal", "RunStarted", f"suite run {obs.run.run_id} started"))
    if phase != prev.phase or obs.run.start:
        warning = phase == "Failed" or (phase == "Pending" and obs.problem is not None)
        events.append(Event("Warning" if warning else "Normal", reason, message))
    elif obs.problem is not None:
        before = get_condition(prev.conditions, "Degraded")
        if before is None or before.reason != obs.problem.reason:
            events.append(Event("Warning", obs.problem.reason, obs.problem.message))
    if obs.finished and regressions:
        found = ", ".join(
            f"{r.benchmark}.{r.variant} ({r.ratio:.3f}x, interval "
            f"{r.ratio_ci[0]:.3f}-{r.ratio_ci[1]:.3f})"
            for r in regressions
        )
        events.append(Event("Warning", "RegressionFound", f"slower than the baseline: {found}"))
    return events


def _regressions(seen: SuiteObservation, base: BenchmarkSuiteStatus) -> list[Regression] | None:
    """Regressions exist only against a baseline; without one the run was not compared."""
    if seen.summary is not None and seen.finished:
        return list(seen.summary.regressions) if seen.baseline_uri else None
    return base.regressions


def _degraded(seen: SuiteObservation) -> tuple[bool, str, str]:
    degraded = [(seen.problem.reason, seen.problem.message)] if seen.problem else []
    degraded += loss_degradations(
        seen.failures,
        seen.disruptions,
        budget=f"spec.failureBudget is {seen.spec.failure_budget}",
        pods="benchmark pod",
    )
    reason = degraded[0][0] if degraded else "AsExpected"
    return bool(degraded), reason, "; ".join(message for _, message in degraded)


def _conditions(
    seen: SuiteObservation,
    verdict: tuple[Phase, str, str],
    regressions: Sequence[Regression] | None,
) -> list[Condition]:
    phase, reason, message = verdict
    regressed = bool(regressions)
    compared = "NoRegression" if regressions is not None else "NotCompared"
    found = ", ".join(f"{r.benchmark}.{r.variant} x{r.ratio:.3f}" for r in regressions or ())
    failed = phase == "Failed"
    # (type, true?, reason, message), in the order they are set
    wanted: list[tuple[str, bool, str, str]] = [
        ("Ready", phase in {"Running", "Succeeded"}, reason, message),
        ("Progressing", phase in {"Running", "Pending"} and seen.problem is None, reason, ""),
        ("Degraded", *_degraded(seen)),
        ("Succeeded", phase == "Succeeded", reason if phase == "Succeeded" else "NotFinished", ""),
        ("Failed", failed, reason if failed else "NotFailed", message if failed else ""),
        (
            "Suspended",
            phase == "Suspended",
            "Suspended" if phase == "Suspended" else "NotSuspended",
            "",
        ),
        (
            "Cancelled",
            phase == "Cancelled",
            "Cancelled" if phase == "Cancelled" else "NotCancelled",
            message if phase == "Cancelled" else "",
        ),
        ("Regressed", regressed, "RegressionFound" if regressed else compared, found),
    ]
    conditions = ConditionSetter(seen.previous.conditions, now=seen.now, generation=seen.generation)
    for type_, on, why, text in wanted:
        conditions.put(type_, on, why, text)
    return conditions.conditions


def _times(seen: SuiteObservation, phase: Phase) -> tuple[str | None, str | None]:
    """The run's start and completion times: set once, reset by a new run."""
    fresh, prev, now_s = seen.run.start, seen.previous, rfc3339(seen.now)
    started = None if fresh else prev.start_time
    if seen.run.run_id and not started and phase in {"Running", *TERMINAL}:
        started = now_s
    completion = None if fresh else prev.completion_time
    if phase in TERMINAL and not completion:
        completion = now_s
    return started, completion


def _history(
    seen: SuiteObservation, phase: Phase, entry: SuiteRunSummary
) -> tuple[list[SuiteRunSummary], list[str]]:
    """History with the run added when it has just finished; and the run ids dropped."""
    prev = seen.previous
    history = list(prev.history or [])
    newly_terminal = phase in TERMINAL and (seen.run.start or prev.phase not in TERMINAL)
    if not (newly_terminal and seen.run.run_id):
        return history, []
    limit = seen.spec.schedule.history_limit if seen.spec.schedule else 1
    return trim_history(history, entry, limit)


def next_suite_status(seen: SuiteObservation) -> SuiteStatusUpdate:
    """The status to write, the Events to post and the runs to forget; pure."""
    prev, fresh = seen.previous, seen.run.start
    base = BenchmarkSuiteStatus() if fresh else prev
    phase, reason, message = _decide_phase(seen, seen.failures)
    regressions = _regressions(seen, base)
    cells_status = seen.summary.cells if seen.summary else base.cells
    total = sum(c.total for c in cells_status or ())
    completed = sum(c.completed for c in cells_status or ())
    percent = round(100.0 * completed / total, 1) if total else (0.0 if seen.run.run_id else None)
    started, completion = _times(seen, phase)
    report_uri = seen.report_uri or base.report_uri
    results_uri = seen.results_uri or base.results_uri
    regression_count = len(regressions) if regressions is not None else None
    entry = SuiteRunSummary(
        run_id=seen.run.run_id or "",
        phase=phase,
        start_time=started,
        completion_time=completion,
        completed=completed,
        total=total,
        regression_count=regression_count,
        disruptions=seen.disruptions,
        failures=seen.failures,
        report_uri=report_uri,
        results_uri=results_uri,
    )
    history, dropped = _history(seen, phase, entry)
    last_schedule = prev.last_schedule_time
    if fresh and seen.run.scheduled_at is not None:
        last_schedule = rfc3339(seen.run.scheduled_at)
    next_schedule = seen.run.next_schedule
    status = BenchmarkSuiteStatus(
        phase=phase,
        observed_generation=seen.generation,
        conditions=_conditions(seen, (phase, reason, message), regressions),
        progress_percent=percent,
        cells=cells_status,
        regressions=regressions,
        regression_count=regression_count,
        disruptions=seen.disruptions,
        failures=seen.failures,
        # A finished run's pods are being removed: none is ready.
        ready_pods=0 if phase in TERMINAL else seen.ready_pods,
        ledger=seen.ledger or base.ledger,
        run_id=seen.run.run_id,
        report_uri=report_uri,
        results_uri=results_uri,
        baseline_uri=seen.baseline_uri or base.baseline_uri,
        last_schedule_time=last_schedule,
        next_schedule_time=rfc3339(next_schedule) if next_schedule else None,
        history=history or None,
        start_time=started,
        completion_time=completion,
    )
    events = _events(seen, phase, reason, message, regressions)
    return SuiteStatusUpdate(status, events, dropped)
