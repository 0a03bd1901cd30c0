"""EvalRun status as a pure function of what was observed.

A chain of named decisions (terminal, budget, deadline, finished, suspended, problem, started)
picks the phase; conditions follow from it with :func:`proctor.api.conditions.set_condition`, and
events are emitted only for transitions a user must know about.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from proctor.api.conditions import ConditionSetter, Event, Problem, get_condition, rfc3339
from proctor.api.quantity import format_duration
from proctor.api.times import parse_time
from proctor.api.v1alpha1.base import Condition, LossLedgerStatus
from proctor.api.v1alpha1.cost import CostStatus
from proctor.api.v1alpha1.evalrun import (
    TERMINAL_PHASES,
    CacheStatus,
    CaseCounts,
    CheckpointStatus,
    EvalRunSpec,
    EvalRunStatus,
    Phase,
    ResultSummary,
    WorkerCounts,
)
from proctor.cluster.losses import loss_degradations
from proctor.planning.plan import PlanResult

TERMINAL = TERMINAL_PHASES


@dataclass(frozen=True)
class Observation:
    """Everything the operator saw in one pass."""

    spec: EvalRunSpec
    generation: int
    now: datetime
    previous: EvalRunStatus
    counts: CaseCounts
    workers: WorkerCounts
    finished: bool = False
    cancelled: bool = False  # finished by spec.cancel before every case was evaluated
    early_stopped: bool = False
    problem: Problem | None = None
    fatal: Problem | None = None
    plan: PlanResult | None = None
    result: ResultSummary | None = None
    disruptions: int = 0
    spot_fallback: bool = False
    ledger: LossLedgerStatus | None = None
    checkpoint: CheckpointStatus | None = None
    rate: float | None = None
    stalled_after_seconds: float = 300.0
    cost: CostStatus | None = None  # accrued up to now (None: keep the previous one)
    cache: CacheStatus | None = None  # hits and misses so far (None: keep the previous one)
    cache_problem: str = ""  # why the workers cannot write the cache: CacheReadOnly


@dataclass(frozen=True)
class PhaseDecision:
    phase: Phase
    reason: str
    message: str


@dataclass
class StatusUpdate:
    status: EvalRunStatus
    events: list[Event] = field(default_factory=list)


def deadline_clock(prev: EvalRunStatus, suspend: bool, now: datetime) -> tuple[datetime, float]:
    """(``activeSince`` to record, seconds counted toward ``activeDeadlineSeconds``), as a
    Kubernetes Job counts (pure): from the run's first pass (its admission; Pending time
    counts), the clock stopped while it is suspended. ``activeSince`` moves on by the length
    of a suspension when the run resumes, read from the ``Suspended`` condition's
    ``lastTransitionTime``, so a pass repeated after a failed status write moves it once.
    A run an older operator started, with no ``activeSince``, counts from its ``startTime``."""
    since = parse_time(prev.active_since) or parse_time(prev.start_time) or now
    cond = get_condition(prev.conditions, "Suspended")
    paused = parse_time(cond.last_transition_time) if cond and cond.status == "True" else None
    if paused is not None and not suspend:
        since += max(now - paused, timedelta(0))  # resumed: the suspension does not count
        paused = None
    until = paused if paused is not None else now
    return since, max(0.0, (until - since).total_seconds())


def decide_phase(obs: Observation) -> PhaseDecision:
    prev = obs.previous
    if prev.phase in TERMINAL:
        cond = get_condition(prev.conditions, prev.phase or "")
        return PhaseDecision(
            prev.phase or "Failed", cond.reason if cond else "", cond.message if cond else ""
        )
    if obs.fatal is not None:
        return PhaseDecision("Failed", obs.fatal.reason, obs.fatal.message)
    budget = obs.spec.workers.failure_budget if obs.spec.workers else 5
    if obs.workers.failures > budget:
        return PhaseDecision(
            "Failed",
            "FailureBudgetExhausted",
            f"{obs.workers.failures} worker failures exceed the budget of {budget} "
            "(workers.failureBudget); see the worker pods' last state for the cause",
        )
    deadline = obs.spec.active_deadline_seconds
    if deadline and deadline_clock(prev, obs.spec.suspend, obs.now)[1] > deadline:
        return PhaseDecision(
            "Failed",
            "DeadlineExceeded",
            f"the run did not finish within activeDeadlineSeconds={deadline} "
            "(counted from its admission, time suspended excluded)",
        )
    if obs.finished and obs.cancelled:
        return PhaseDecision("Cancelled", "Cancelled", _cancelled_message(obs.counts))
    if obs.finished:
        if obs.early_stopped:
            return PhaseDecision(
                "Succeeded", "EarlyStopped", "the decision settled before every case ran"
            )
        return PhaseDecision("Succeeded", "Completed", _completed_message(obs.counts))
    if obs.spec.cancel:
        return PhaseDecision(
            "Running" if prev.phase == "Running" else "Pending",
            "Cancelling",
            "spec.cancel is true: the queue is stopped and the workers are draining",
        )
    if obs.spec.suspend:
        return PhaseDecision("Suspended", "Suspended", "spec.suspend is true; workers removed")
    if obs.problem is not None:
        return PhaseDecision("Pending", obs.problem.reason, obs.problem.message)
    if obs.workers.ready > 0 or obs.counts.completed > 0 or prev.phase == "Running":
        return PhaseDecision("Running", "Running", f"{obs.workers.ready} workers ready")
    return PhaseDecision("Pending", "WaitingForWorkers", "workers are being scheduled")


def _completed_message(counts: CaseCounts) -> str:
    """What a finished run recorded: never "all evaluated" while some cases errored or were
    dead-lettered (an errored case is recorded, its error counted against its side; a
    dead-lettered one has no record and is not evaluated)."""
    missing = max(0, counts.total - counts.completed - counts.dead_lettered)
    if not (counts.errored or counts.dead_lettered or missing):
        return f"all {counts.total} cases evaluated"
    parts = [f"{counts.completed} of {counts.total} cases recorded"]
    if counts.errored:
        parts.append(f"{counts.errored} of them errored (see the records' errors)")
    unrecorded = [f"{counts.dead_lettered} dead-lettered"] if counts.dead_lettered else []
    unrecorded += [f"{missing} without a result"] if missing else []
    if unrecorded:
        parts.append(" and ".join(unrecorded) + ": not evaluated, see status.result")
    return "; ".join(parts)


def _cancelled_message(counts: CaseCounts) -> str:
    return (
        f"spec.cancel: {counts.completed} of {counts.total} cases evaluated, their results "
        "kept; the rest were not run"
    )


def _stalled(obs: Observation, phase: str, last_progress: str | None) -> bool:
    if phase != "Running":
        return False
    since = parse_time(last_progress) or parse_time(obs.previous.start_time)
    return since is not None and (obs.now - since).total_seconds() > obs.stalled_after_seconds


def degradations(obs: Observation) -> list[tuple[str, str]]:
    """(reason, message) for each thing that went wrong, the most pressing first (pure): the
    Degraded condition takes the first reason and every message."""
    found: list[tuple[str, str]] = []
    if obs.problem is not None:
        found.append((obs.problem.reason, obs.problem.message))
    if obs.counts.dead_lettered:
        found.append(("DeadLetters", f"{obs.counts.dead_lettered} cases dead-lettered"))
    budget = obs.spec.workers.failure_budget if obs.spec.workers else 5
    found += loss_degradations(
        obs.workers.failures, obs.disruptions, budget=f"workers.failureBudget is {budget}"
    )
    return found


def _conditions(obs: Observation, decision: PhaseDecision, stalled: bool) -> list[Condition]:
    """The run's conditions, all following from the phase just decided."""
    conditions = ConditionSetter(obs.previous.conditions, now=obs.now, generation=obs.generation)
    put = conditions.put
    phase = decision.phase
    running = phase == "Running"
    put(
        "Ready",
        (running and obs.workers.ready > 0) or phase == "Succeeded",
        decision.reason,
        decision.message,
    )
    put(
        "Progressing",
        phase in {"Running", "Pending"} and obs.problem is None and not obs.spec.cancel,
        decision.reason,
    )
    degraded = degradations(obs)
    put(
        "Degraded",
        bool(degraded),
        degraded[0][0] if degraded else "AsExpected",
        "; ".join(message for _, message in degraded),
    )
    put(
        "Succeeded",
        phase == "Succeeded",
        decision.reason if phase in {"Succeeded", "Cancelled"} else "NotFinished",
    )
    put(
        "Failed",
        phase == "Failed",
        decision.reason if phase == "Failed" else "NotFailed",
        decision.message if phase == "Failed" else "",
    )
    put("Suspended", phase == "Suspended", "Suspended" if phase == "Suspended" else "NotSuspended")
    if obs.spec.cancel or phase == "Cancelled":
        put(
            "Cancelled",
            phase == "Cancelled",
            decision.reason if phase == "Cancelled" else "Cancelling",
            decision.message,
        )
    if obs.spec.cache.writes:
        put(
            "CacheReadOnly",
            bool(obs.cache_problem),
            "CacheNotWritable" if obs.cache_problem else "CacheWritable",
            obs.cache_problem,
        )
    put(
        "Stalled",
        stalled,
        "NoProgress" if stalled else "Progressing",
        f"no case completed for more than {obs.stalled_after_seconds:.0f}s" if stalled else "",
    )
    return conditions.conditions


def next_status(obs: Observation) -> StatusUpdate:
    """The status to write and the events to post; the previous status is not modified."""
    prev = obs.previous
    decision = decide_phase(obs)
    now_s = rfc3339(obs.now)
    gen = obs.generation
    counts = obs.counts
    prev_completed = prev.counts.completed if prev.counts else 0
    last_progress = (
        now_s if counts.completed > prev_completed else (prev.last_progress_time or None)
    )
    start_time = prev.start_time or (now_s if decision.phase == "Running" else None)
    active_since, _ = deadline_clock(prev, obs.spec.suspend, obs.now)
    completion = prev.completion_time or (now_s if decision.phase in TERMINAL else None)

    stalled = _stalled(obs, decision.phase, last_progress)
    conditions = _conditions(obs, decision, stalled)
    phase = decision.phase

    remaining = max(0, counts.total - counts.completed - counts.dead_lettered)
    percent = round(100.0 * counts.completed / counts.total, 1) if counts.total else 0.0
    eta = None
    if obs.rate and obs.rate > 0 and phase == "Running":
        eta = int(remaining / obs.rate)
    elif phase in TERMINAL:
        eta = 0
    status = EvalRunStatus(
        phase=phase,
        observed_generation=gen,
        conditions=conditions,
        counts=counts,
        progress_percent=percent,
        cases_per_second=round(obs.rate, 2) if obs.rate is not None else None,
        eta_seconds=eta,
        eta=None if eta is None else format_duration(eta),
        # A finished run's pods are being removed: none is ready, none is wanted.
        workers=obs.workers.model_copy(update={"desired": 0, "ready": 0})
        if phase in TERMINAL
        else obs.workers,
        plan=obs.plan.to_status() if obs.plan else prev.plan,
        disruptions=obs.disruptions,
        spot_fallback=obs.spot_fallback or None,
        ledger=obs.ledger or prev.ledger,
        last_checkpoint=obs.checkpoint or prev.last_checkpoint,
        result=obs.result or prev.result,
        cost=obs.cost or prev.cost,
        cache=obs.cache or prev.cache,
        last_progress_time=last_progress,
        start_time=start_time,
        active_since=rfc3339(active_since),
        completion_time=completion,
    )
    return StatusUpdate(status, _events(obs, decision, stalled))


def _events(obs: Observation, decision: PhaseDecision, stalled: bool) -> list[Event]:
    prev = obs.previous
    events: list[Event] = []
    quiet = prev.phase is None and decision.phase == "Pending" and obs.problem is None
    if decision.phase != prev.phase and not quiet:
        # A new run waiting for its first workers is no news (its phase and plan say it);
        # with a thousand runs at once that Event was an API write per run.
        warning = decision.phase == "Failed" or (
            decision.phase == "Pending" and obs.problem is not None
        )
        events.append(Event("Warning" if warning else "Normal", decision.reason, decision.message))
    elif obs.problem is not None:
        before = get_condition(prev.conditions, "Degraded")
        if before is None or before.reason != obs.problem.reason:
            events.append(Event("Warning", obs.problem.reason, obs.problem.message))
    was_stalled = get_condition(prev.conditions, "Stalled")
    if stalled and not (was_stalled and was_stalled.status == "True"):
        events.append(
            Event("Warning", "Stalled", f"no progress for {obs.stalled_after_seconds:.0f}s")
        )
    if obs.spot_fallback and not prev.spot_fallback:
        events.append(
            Event("Warning", "SpotFallback", "too many spot disruptions; using on-demand nodes")
        )
    return events


DRIFT_FIELDS = frozenset({"casesPerSecond", "etaSeconds", "eta", "cost"})
"""Status fields that are estimates or running totals: a change in them alone is written at
most every ``STATUS_DRIFT_SECONDS`` (see :func:`drift_hold`). The cost is accrued from the
status last written, so a write held back loses nothing."""

DRIFT_PLAN_FIELDS = frozenset({"fit", "message", "eligibleNodes"})
"""Plan fields that follow the rest of the cluster: every pod any run starts changes how many
more workers fit. With many runs, writing each such change would be a status write per run per
pass, so alone they are written at most every ``PLAN_DRIFT_SECONDS``."""

STATUS_DRIFT_SECONDS = 15.0
PLAN_DRIFT_SECONDS = 60.0
"""With a thousand runs starting at once, each run's fit moved on nearly every pass; written
every 15 s that was a status write per run every 15 s for as long as pods kept starting."""


def _pool_replicas(plan: Mapping[str, Any]) -> list[tuple[Any, Any]]:
    return [(p.get("name"), p.get("replicas")) for p in plan.get("pools") or []]


def drift_hold(old: Mapping[str, Any] | None, patch: Mapping[str, Any]) -> float:
    """How long after the run's last status write a merge ``patch`` may wait (pure): 0 when
    it changes anything a user or a tool acts on (phase, conditions, counts, workers,
    replicas, the binding limit, pools' replicas); ``STATUS_DRIFT_SECONDS`` when it changes
    estimates; ``PLAN_DRIFT_SECONDS`` when it changes only the plan's cluster-wide figures
    (how many workers fit, its message, eligible nodes, pools' fit)."""
    if not patch:
        return 0.0
    before = old or {}
    hold = PLAN_DRIFT_SECONDS
    for key, value in patch.items():
        if key in DRIFT_FIELDS:
            hold = STATUS_DRIFT_SECONDS
            continue
        prev = before.get("plan")
        if key == "plan" and isinstance(value, Mapping) and isinstance(prev, Mapping):
            changed = {k for k in set(prev) | set(value) if prev.get(k) != value.get(k)}
            if changed <= DRIFT_PLAN_FIELDS:
                continue
            if changed <= DRIFT_PLAN_FIELDS | {"pools"} and _pool_replicas(prev) == _pool_replicas(
                value
            ):
                continue
        return 0.0
    return hold
