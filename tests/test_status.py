"""EvalRun status transitions, table-driven."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from proctor.api.conditions import Problem, get_condition
from proctor.api.v1alpha1.evalrun import CaseCounts, EvalRunSpec, EvalRunStatus, WorkerCounts
from proctor.evalrun.status import (
    PLAN_DRIFT_SECONDS,
    STATUS_DRIFT_SECONDS,
    Observation,
    decide_phase,
    drift_hold,
    next_status,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SPEC: dict[str, Any] = {
    "image": "i",
    "task": {"entrypoint": "m:t"},
    "cases": {"count": 100},
    "workers": {"failureBudget": 2},
    "activeDeadlineSeconds": 600,
}


def obs(**changes: Any) -> Observation:
    spec_changes = changes.pop("spec", {})
    spec = EvalRunSpec.model_validate({**copy.deepcopy(SPEC), **spec_changes})
    base = Observation(
        spec=spec,
        generation=1,
        now=T0,
        previous=EvalRunStatus(),
        counts=CaseCounts(total=100),
        workers=WorkerCounts(desired=2, ready=0),
    )
    return replace(base, **changes)


RUNNING = EvalRunStatus(phase="Running", start_time="2026-01-01T00:00:00Z")
PHASES = {
    "fresh run waits for workers": (obs(), "Pending", "WaitingForWorkers"),
    "workers ready": (obs(workers=WorkerCounts(desired=2, ready=2)), "Running", "Running"),
    "finished": (
        obs(finished=True, counts=CaseCounts(total=100, completed=100)),
        "Succeeded",
        "Completed",
    ),
    "early stop": (obs(finished=True, early_stopped=True), "Succeeded", "EarlyStopped"),
    "suspended": (obs(spec={"suspend": True}), "Suspended", "Suspended"),
    "problem": (
        obs(problem=Problem("SecretNotFound", "secret x missing")),
        "Pending",
        "SecretNotFound",
    ),
    "budget": (obs(workers=WorkerCounts(failures=3)), "Failed", "FailureBudgetExhausted"),
    "budget not yet": (obs(workers=WorkerCounts(failures=2, ready=1)), "Running", "Running"),
    "deadline": (
        obs(previous=RUNNING, now=T0 + timedelta(seconds=601)),
        "Failed",
        "DeadlineExceeded",
    ),
    "terminal is sticky": (
        obs(previous=EvalRunStatus(phase="Succeeded"), workers=WorkerCounts(failures=9)),
        "Succeeded",
        "",
    ),
    "running stays running with no ready workers": (obs(previous=RUNNING), "Running", "Running"),
    "cancel asked, workers draining": (
        obs(spec={"cancel": True}, previous=RUNNING),
        "Running",
        "Cancelling",
    ),
    "cancel asked before any worker ran": (obs(spec={"cancel": True}), "Pending", "Cancelling"),
    "cancelled once drained": (
        obs(spec={"cancel": True}, previous=RUNNING, finished=True, cancelled=True),
        "Cancelled",
        "Cancelled",
    ),
    "cancel wins over suspend": (
        obs(spec={"cancel": True, "suspend": True}, finished=True, cancelled=True),
        "Cancelled",
        "Cancelled",
    ),
    "cancel after the last case: succeeded": (
        obs(spec={"cancel": True}, finished=True, counts=CaseCounts(total=100, completed=100)),
        "Succeeded",
        "Completed",
    ),
    "cancelled is sticky": (
        obs(spec={"cancel": True}, previous=EvalRunStatus(phase="Cancelled")),
        "Cancelled",
        "",
    ),
    "the failure budget still fails a cancelling run": (
        obs(spec={"cancel": True}, workers=WorkerCounts(failures=3)),
        "Failed",
        "FailureBudgetExhausted",
    ),
}


@pytest.mark.parametrize(("o", "phase", "reason"), PHASES.values(), ids=PHASES.keys())
def test_phase(o: Observation, phase: str, reason: str) -> None:
    decision = decide_phase(o)
    assert (decision.phase, decision.reason) == (phase, reason)


@pytest.mark.parametrize(
    ("previous_phase", "problem", "expect"),
    [
        pytest.param(None, None, [], id="a new run waiting for workers: no Event"),
        pytest.param(None, Problem("SecretNotFound", "x"), ["SecretNotFound"], id="new, blocked"),
        pytest.param("Suspended", None, ["WaitingForWorkers"], id="resumed: back to Pending"),
    ],
)
def test_events_on_entering_pending(
    previous_phase: str | None, problem: Problem | None, expect: list[str]
) -> None:
    o = obs(previous=EvalRunStatus(phase=previous_phase), problem=problem)
    assert [e.reason for e in next_status(o).events] == expect


def test_conditions_events_and_no_mutation() -> None:
    first = obs(
        workers=WorkerCounts(desired=2, ready=2), counts=CaseCounts(total=100, completed=10)
    )
    before = first.previous.model_copy(deep=True)
    update = next_status(first)
    assert first.previous == before
    status = update.status
    assert status.phase == "Running"
    assert status.progress_percent == 10.0
    assert status.start_time == "2026-01-01T00:00:00Z"
    ready = get_condition(status.conditions, "Ready")
    assert ready is not None
    assert ready.status == "True"
    assert ready.observed_generation == 1
    assert [e.reason for e in update.events] == ["Running"]

    later = replace(
        first,
        previous=status,
        now=T0 + timedelta(seconds=30),
        counts=CaseCounts(total=100, completed=40),
        rate=2.0,
    )
    second = next_status(later)
    assert second.events == []  # nothing a user must know about
    assert second.status.eta_seconds == 30
    assert second.status.eta == "30s"
    ready2 = get_condition(second.status.conditions, "Ready")
    assert ready2 is not None
    assert ready2.last_transition_time == ready.last_transition_time
    assert second.status.last_progress_time == "2026-01-01T00:00:30Z"


def test_stalled_after_no_progress() -> None:
    running = next_status(
        obs(workers=WorkerCounts(ready=1), counts=CaseCounts(total=100, completed=5))
    ).status
    quiet = obs(
        previous=running,
        now=T0 + timedelta(seconds=301),
        workers=WorkerCounts(ready=1),
        counts=CaseCounts(total=100, completed=5),
    )
    update = next_status(quiet)
    stalled = get_condition(update.status.conditions, "Stalled")
    assert stalled is not None
    assert stalled.status == "True"
    assert "Stalled" in [e.reason for e in update.events]
    again = next_status(replace(quiet, previous=update.status, now=T0 + timedelta(seconds=400)))
    assert "Stalled" not in [e.reason for e in again.events]


def test_problem_is_a_warning_event_and_degraded() -> None:
    update = next_status(obs(problem=Problem("ProfileTooLarge", "no node holds xlarge")))
    assert update.events[0].type == "Warning"
    assert update.events[0].reason == "ProfileTooLarge"
    degraded = get_condition(update.status.conditions, "Degraded")
    assert degraded is not None
    assert (degraded.status, degraded.reason) == ("True", "ProfileTooLarge")
    same = next_status(
        obs(previous=update.status, problem=Problem("ProfileTooLarge", "no node holds xlarge"))
    )
    assert same.events == []


def test_finished_sets_completion_and_zero_eta() -> None:
    update = next_status(
        obs(previous=RUNNING, finished=True, counts=CaseCounts(total=100, completed=100))
    )
    assert update.status.phase == "Succeeded"
    assert update.status.completion_time == "2026-01-01T00:00:00Z"
    assert update.status.eta_seconds == 0
    assert update.status.eta == "0s"
    assert update.events[0].reason == "Completed"


_PLAN = {
    "replicas": 1,
    "fit": 40,
    "boundBy": "max",
    "message": "bound by workers.max (1); 40 fit",
    "pools": [{"name": "a", "replicas": 1, "fit": 40}],
}
_OLD = {"phase": "Running", "plan": _PLAN, "casesPerSecond": 3.5, "etaSeconds": 10}

DRIFT_CASES = [
    # (name, patch, drift only)
    ("nothing", {}, False),
    ("rate and eta", {"casesPerSecond": 4.0, "etaSeconds": 9}, True),
    ("fit and message", {"plan": {**_PLAN, "fit": 39, "message": "... 39 fit"}}, True),
    (
        "a pool's fit",
        {"plan": {**_PLAN, "fit": 39, "pools": [{"name": "a", "replicas": 1, "fit": 39}]}},
        True,
    ),
    ("replicas", {"plan": {**_PLAN, "replicas": 2}}, False),
    ("binding limit", {"plan": {**_PLAN, "boundBy": "cpu"}}, False),
    (
        "a pool's replicas",
        {"plan": {**_PLAN, "pools": [{"name": "a", "replicas": 2, "fit": 40}]}},
        False,
    ),
    ("phase with a rate", {"phase": "Succeeded", "casesPerSecond": 0.0}, False),
    ("counts", {"counts": {"total": 10, "completed": 5}}, False),
]


def drift_only(old: Mapping[str, Any] | None, patch: Mapping[str, Any]) -> bool:
    """Whether ``patch`` changes only estimates and the plan's cluster-wide figures: a
    status write the operator may hold back."""
    return drift_hold(old, patch) > 0


@pytest.mark.parametrize(
    ("patch", "expected"), [c[1:] for c in DRIFT_CASES], ids=[c[0] for c in DRIFT_CASES]
)
def test_drift_only(patch: dict[str, Any], expected: bool) -> None:
    old = copy.deepcopy(_OLD)
    assert drift_only(old, patch) is expected
    assert old == _OLD  # not mutated


@pytest.mark.parametrize(
    ("patch", "hold"),
    [
        pytest.param({}, 0.0, id="nothing"),
        pytest.param({"etaSeconds": 9}, STATUS_DRIFT_SECONDS, id="estimates"),
        pytest.param({"plan": {**_PLAN, "fit": 39}}, PLAN_DRIFT_SECONDS, id="fit alone"),
        pytest.param(
            {"plan": {**_PLAN, "eligibleNodes": 99}}, PLAN_DRIFT_SECONDS, id="eligible nodes"
        ),
        pytest.param(
            {"plan": {**_PLAN, "fit": 39}, "etaSeconds": 9},
            STATUS_DRIFT_SECONDS,
            id="fit with estimates: the estimates' hold",
        ),
        pytest.param({"plan": {**_PLAN, "replicas": 2}, "etaSeconds": 9}, 0.0, id="replicas"),
    ],
)
def test_drift_hold(patch: dict[str, Any], hold: float) -> None:
    assert drift_hold(copy.deepcopy(_OLD), patch) == hold


def test_drift_needs_a_previous_plan() -> None:
    assert drift_only(None, {"plan": _PLAN}) is False


# Finding 13: Degraded names what happened; a finished run has no ready or wanted workers.
DEGRADED = [
    ("nothing wrong", {}, ("False", "AsExpected", "")),
    (
        "worker failures",
        {"workers": WorkerCounts(desired=2, ready=2, failures=1)},
        ("True", "WorkerFailures", "1 worker failures (crash, OOM or image error; "),
    ),
    (
        "disruptions",
        {"workers": WorkerCounts(desired=2, ready=2), "disruptions": 3},
        ("True", "WorkersDisrupted", "3 workers disrupted (preempted, evicted or node lost; "),
    ),
    (
        "dead letters first, then the rest",
        {
            "counts": CaseCounts(total=100, dead_lettered=10),
            "workers": WorkerCounts(failures=1),
            "disruptions": 1,
        },
        ("True", "DeadLetters", "10 cases dead-lettered; 1 worker failures"),
    ),
]


@pytest.mark.parametrize(("name", "changes", "expected"), DEGRADED, ids=[c[0] for c in DEGRADED])
def test_finding13_degraded_reason_says_what_happened(
    name: str, changes: dict[str, Any], expected: tuple[str, str, str]
) -> None:
    degraded = get_condition(next_status(obs(**changes)).status.conditions, "Degraded")
    assert degraded is not None
    assert (degraded.status, degraded.reason) == expected[:2]
    assert degraded.message.startswith(expected[2])


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"finished": True}, id="succeeded"),
        pytest.param({"workers": WorkerCounts(desired=2, ready=2, failures=3)}, id="failed"),
    ],
)
def test_finding13_finished_run_has_no_ready_workers(changes: dict[str, Any]) -> None:
    o = obs(previous=RUNNING, **{"workers": WorkerCounts(desired=2, ready=2), **changes})
    status = next_status(o).status
    assert status.phase in {"Succeeded", "Failed"}
    assert status.workers is not None
    assert (status.workers.desired, status.workers.ready) == (0, 0)
    assert status.workers.failures == o.workers.failures


def test_finding13_retried_is_not_in_the_schema_and_old_statuses_still_read() -> None:
    assert "retried" not in CaseCounts.model_fields
    old = EvalRunStatus.model_validate({"counts": {"total": 5, "retried": 0}})
    assert old.counts == CaseCounts(total=5)


# Also (b): activeDeadlineSeconds counts like a Kubernetes Job's: from admission, Pending time
# included, suspended time excluded.
def walk(steps: list[tuple[float, bool, WorkerCounts]]) -> list[str]:
    """Phases of a run passed at (seconds after T0, suspend, workers) with an injected clock."""
    status = EvalRunStatus()
    phases: list[str] = []
    for at, suspend, workers in steps:
        o = obs(
            spec={"suspend": suspend, "activeDeadlineSeconds": 100},
            previous=status,
            now=T0 + timedelta(seconds=at),
            workers=workers,
        )
        status = next_status(o).status
        phases.append(status.phase or "")
    return phases


NONE_READY = WorkerCounts(desired=2)
READY = WorkerCounts(desired=2, ready=2)
DEADLINES = [
    (
        "stuck pending fails",
        [(0, False, NONE_READY), (50, False, NONE_READY), (101, False, NONE_READY)],
        "Failed",
    ),
    (
        "running within the deadline",
        [(0, False, NONE_READY), (60, False, READY), (99, False, READY)],
        "Running",
    ),
    (
        "pending time counts",
        [(0, False, NONE_READY), (90, False, READY), (101, False, READY)],
        "Failed",
    ),
    (
        "suspended time does not count",
        [
            (0, False, READY),
            (50, True, NONE_READY),
            (60, True, NONE_READY),
            (1000, True, NONE_READY),
            (1040, False, READY),
            (1090, False, READY),
        ],
        "Running",
    ),
    (
        "the clock runs again after resuming",
        [
            (0, False, READY),
            (50, True, NONE_READY),
            (60, True, NONE_READY),
            (1040, False, READY),
            (1100, False, READY),
        ],
        "Failed",
    ),
    (
        "suspended from the start",
        [
            (0, True, NONE_READY),
            (5000, True, NONE_READY),
            (5001, False, READY),
            (5090, False, READY),
        ],
        "Running",
    ),
]


@pytest.mark.parametrize(("name", "steps", "phase"), DEADLINES, ids=[c[0] for c in DEADLINES])
def test_also_active_deadline_counts_from_admission_excluding_suspension(
    name: str, steps: list[tuple[float, bool, WorkerCounts]], phase: str
) -> None:
    assert walk(steps)[-1] == phase


def test_also_active_deadline_clock_is_recorded() -> None:
    first = next_status(obs(now=T0 + timedelta(seconds=7))).status
    assert first.active_since == "2026-01-01T00:00:07Z"
    assert first.start_time is None  # still Pending: startTime is when work started


def test_cancelled_conditions_and_event() -> None:
    """Cancelled is final: its condition is True, Succeeded and Failed False, nothing Ready or
    Progressing; one Normal Event; completion time set and ETA 0."""
    update = next_status(
        obs(
            spec={"cancel": True},
            previous=RUNNING,
            finished=True,
            cancelled=True,
            counts=CaseCounts(total=100, completed=40),
        )
    )
    status = update.status
    assert status.phase == "Cancelled"
    states = {c.type: (c.status, c.reason) for c in status.conditions or []}
    assert states["Cancelled"] == ("True", "Cancelled")
    assert states["Succeeded"] == ("False", "Cancelled")
    assert states["Failed"][0] == states["Ready"][0] == states["Progressing"][0] == "False"
    cancelled = get_condition(status.conditions, "Cancelled")
    assert cancelled is not None
    assert "40 of 100 cases evaluated" in cancelled.message
    assert [(e.type, e.reason) for e in update.events] == [("Normal", "Cancelled")]
    assert status.completion_time == "2026-01-01T00:00:00Z"
    assert status.eta_seconds == 0


def test_a_run_never_cancelled_has_no_cancelled_condition() -> None:
    status = next_status(obs(workers=WorkerCounts(desired=2, ready=2))).status
    assert get_condition(status.conditions, "Cancelled") is None
    draining = next_status(obs(spec={"cancel": True}, previous=RUNNING)).status
    cond = get_condition(draining.conditions, "Cancelled")
    assert cond is not None
    assert (cond.status, cond.reason) == ("False", "Cancelling")


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        (CaseCounts(total=100, completed=100), "all 100 cases evaluated"),
        (
            CaseCounts(total=100, completed=97, dead_lettered=3),
            "97 of 100 cases recorded; 3 dead-lettered: not evaluated",
        ),
        (
            CaseCounts(total=100, completed=100, errored=2),
            "100 of 100 cases recorded; 2 of them errored",
        ),
    ],
)
def test_finding_completed_message_says_all_evaluated_with_dead_letters(
    counts: CaseCounts, expected: str
) -> None:
    """A finished run with dead-lettered or errored cases never says all were evaluated."""
    decision = decide_phase(obs(previous=RUNNING, finished=True, counts=counts))
    assert (decision.phase, decision.reason) == ("Succeeded", "Completed")
    assert decision.message.startswith(expected)
    if expected != "all 100 cases evaluated":
        assert "all" not in decision.message
