"""The pure decisions of a BenchmarkSuite pass, as tables: which run, pods lost, which cells get
a pod, history, and the status with its conditions and Events."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from proctor.api.conditions import Problem
from proctor.api.v1alpha1.benchmarksuite import (
    BenchmarkSuiteSpec,
    BenchmarkSuiteStatus,
    SuiteRunSummary,
)
from proctor.bench.summary import summarize_suite
from proctor.cluster.losses import LossLedger, count_losses
from proctor.cluster.reads import PodState
from proctor.config import OperatorConfig
from proctor.planning.plan import Capacity, NodeInfo
from proctor.suite.decide import (
    RunDecision,
    admission_problem,
    baseline_run_id,
    cell_needs_pod,
    choose_cells,
    decide_run,
    run_id_for,
    trim_history,
)
from proctor.suite.gather import bench_pod, occupied_node
from proctor.suite.status import SuiteObservation, next_suite_status

T0 = datetime(2026, 3, 1, 2, 30, tzinfo=UTC)
UID = "abcdef0123456789"
CREATED = T0 - timedelta(hours=2)
SUITE: dict[str, Any] = {
    "image": "bench:1",
    "benchmarks": [{"name": "b", "command": ["true"], "repetitions": 3}],
    "variants": [{"name": "v1"}, {"name": "v2"}],
}


def spec_of(**changes: Any) -> BenchmarkSuiteSpec:
    data = copy.deepcopy(SUITE)
    data.update(changes)
    return BenchmarkSuiteSpec.model_validate(data)


def status_of(**fields: Any) -> BenchmarkSuiteStatus:
    return BenchmarkSuiteStatus.model_validate(fields)


def ts(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


DAILY = {"cron": "0 3 * * *", "historyLimit": 2}

# (name, spec changes, previous status, now, expected decision)
RUNS = [
    ("first run at once", {}, {}, T0, RunDecision(run_id_for(CREATED, UID), True)),
    ("same run after", {}, {"runId": "r1", "phase": "Running"}, T0, RunDecision("r1", False)),
    ("finished stays", {}, {"runId": "r1", "phase": "Succeeded"}, T0, RunDecision("r1", False)),
    (
        "scheduled: nothing before the first fire",
        {"schedule": DAILY},
        {},
        T0,
        RunDecision(None, False, next_schedule=T0.replace(hour=3, minute=0)),
    ),
    (
        "scheduled: the fire starts a run",
        {"schedule": DAILY},
        {},
        T0.replace(hour=3, minute=0, second=5),
        RunDecision(
            run_id_for(T0.replace(hour=3, minute=0), UID),
            True,
            scheduled_at=T0.replace(hour=3, minute=0),
            next_schedule=T0.replace(hour=3, minute=0) + timedelta(days=1),
        ),
    ),
    (
        "scheduled: a running run is never overtaken",
        {"schedule": DAILY},
        {"runId": "r1", "phase": "Running", "lastScheduleTime": ts(T0 - timedelta(days=1))},
        T0 + timedelta(hours=1),
        RunDecision("r1", False, next_schedule=T0.replace(hour=3, minute=0) + timedelta(days=1)),
    ),
    (
        "scheduled: missed fires collapse into the latest",
        {"schedule": DAILY},
        {"runId": "r1", "phase": "Succeeded", "lastScheduleTime": ts(T0 - timedelta(days=5))},
        T0 + timedelta(hours=1),
        RunDecision(
            run_id_for(T0.replace(hour=3, minute=0), UID),
            True,
            scheduled_at=T0.replace(hour=3, minute=0),
            next_schedule=T0.replace(hour=3, minute=0) + timedelta(days=1),
        ),
    ),
    (
        "scheduled: suspended starts nothing",
        {"schedule": DAILY, "suspend": True},
        {"runId": "r1", "phase": "Succeeded", "lastScheduleTime": ts(T0 - timedelta(days=5))},
        T0 + timedelta(hours=1),
        RunDecision("r1", False, next_schedule=T0.replace(hour=3, minute=0) + timedelta(days=1)),
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "changes", "prev", "now", "expected"), RUNS, ids=[r[0] for r in RUNS]
)
def test_decide_run(
    name: str, changes: dict[str, Any], prev: dict[str, Any], now: datetime, expected: RunDecision
) -> None:
    got = decide_run(spec_of(**changes), status_of(**prev), created=CREATED, uid=UID, now=now)
    assert got == expected


def test_run_ids_sort_by_time_and_name_the_suite() -> None:
    first = run_id_for(T0, UID)
    assert first == "20260301-023000-abcdef01"
    assert run_id_for(T0 + timedelta(days=1), UID) > first


def obs(uid: str, *, node: str = "n1", lost: str = "", why: str = "") -> PodState:
    return PodState(
        uid, uid, "suite", "ns", T0, node, "Running", True, False, bool(lost), lost, why
    )


# (name, passes of pods seen, uids deleted by the operator, expected (failures, disruptions))
LOSSES = [
    ("healthy", [[obs("a"), obs("b")]], set(), (0, 0)),
    ("preempted", [[obs("a", lost="disruption", why="TerminationByKubelet")]], set(), (0, 1)),
    ("crashed", [[obs("a", lost="failure", why="exit code 1")]], set(), (1, 0)),
    ("counted once", [[obs("a", lost="failure")], [obs("a", lost="failure")]], set(), (1, 0)),
    ("vanished with its node", [[obs("a")], []], set(), (0, 1)),
    ("deleted by the operator", [[obs("a")], []], {"a"}, (0, 0)),
    ("disrupted then vanished", [[obs("a", lost="disruption")], []], set(), (0, 1)),
]


@pytest.mark.parametrize(
    ("name", "passes", "deleted", "expected"), LOSSES, ids=[x[0] for x in LOSSES]
)
def test_count_losses(
    name: str, passes: list[list[PodState]], deleted: set[str], expected: tuple[int, int]
) -> None:
    ledger = LossLedger(deleted=set(deleted))
    failures = disruptions = 0
    for pods in passes:
        losses = count_losses(pods, ledger)
        failures += losses.failures
        disruptions += losses.disruptions
    assert (failures, disruptions) == expected


# (name, candidates (cell, fit), live, pending, maxParallel, expected cells)
CHOICES = [
    ("all fit", [("a", 4), ("b", 4)], 0, 0, 10, ["a", "b"]),
    ("max parallel", [("a", 4), ("b", 4), ("c", 4)], 1, 0, 2, ["a"]),
    ("at the limit", [("a", 4)], 2, 0, 2, []),
    ("one free node", [("a", 1), ("b", 1)], 0, 0, 10, ["a"]),
    ("pending pods take room", [("a", 2), ("b", 2)], 1, 1, 10, ["a"]),
    ("a smaller cell still fits", [("big", 0), ("small", 2)], 0, 0, 10, ["small"]),
    ("nothing fits", [("a", 0)], 0, 0, 10, []),
]


@pytest.mark.parametrize("case", CHOICES, ids=[c[0] for c in CHOICES])
def test_choose_cells(case: tuple[str, list[tuple[str, int]], int, int, int, list[str]]) -> None:
    _, cands, live, pending, limit, expected = case
    assert choose_cells(cands, live=live, pending=pending, max_parallel=limit) == expected


@pytest.mark.parametrize(
    ("recorded", "queued", "has_pod", "expected"),
    [
        (0, 5, False, True),
        (5, 0, False, False),
        (3, 2, True, False),
        (4, 0, False, False),
        (4, 1, False, True),
    ],
)
def test_cell_needs_pod(recorded: int, queued: int, has_pod: bool, expected: bool) -> None:
    assert (
        cell_needs_pod(recorded=recorded, repetitions=5, queued=queued, has_pod=has_pod) is expected
    )


def entry(run_id: str, phase: str = "Succeeded") -> SuiteRunSummary:
    return SuiteRunSummary.model_validate({"runId": run_id, "phase": phase})


def test_trim_history_keeps_the_newest_and_names_the_dropped() -> None:
    kept, dropped = trim_history([entry("r1"), entry("r2")], entry("r3"), 2)
    assert [h.run_id for h in kept] == ["r2", "r3"]
    assert dropped == ["r1"]
    kept, dropped = trim_history([entry("r1"), entry("r2", "Failed")], entry("r2"), 5)
    assert [(h.run_id, h.phase) for h in kept] == [("r1", "Succeeded"), ("r2", "Succeeded")]
    assert dropped == []


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (None, None),
        ({"phase": "Running", "runId": "r2"}, None),
        ({"phase": "Succeeded", "runId": "r2"}, "r2"),
        (
            {
                "phase": "Running",
                "runId": "r3",
                "history": [
                    {"runId": "r1", "phase": "Succeeded"},
                    {"runId": "r2", "phase": "Failed"},
                ],
            },
            "r1",
        ),
    ],
)
def test_baseline_run_id(status: dict[str, Any] | None, expected: str | None) -> None:
    assert baseline_run_id(status) == expected


def pod_body(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {
            "name": "s-b-v1-x",
            "namespace": "ns",
            "uid": "u1",
            "labels": {"proctor.dev/run": "s", "proctor.dev/suite-run": "r1"},
            "annotations": {"proctor.dev/cell": "b.v1"},
            "creationTimestamp": "2026-03-01T02:30:00Z",
        },
        "spec": {"nodeName": "n1", "containers": [{"name": "benchmark"}]},
        "status": {"phase": "Running"},
    }
    for key, value in over.items():
        body[key] = {**body[key], **value}
    return body


def test_bench_pod_and_occupied_node() -> None:
    pod = bench_pod(pod_body())
    assert (pod.cell, pod.run_id, pod.obs.run, pod.live) == ("b.v1", "r1", "s", True)
    assert occupied_node(pod_body()) == "n1"
    assert occupied_node(pod_body(spec={"nodeName": None})) is None
    assert occupied_node(pod_body(status={"phase": "Succeeded"})) is None
    gone = bench_pod(pod_body(metadata={"deletionTimestamp": "2026-03-01T02:31:00Z"}))
    assert not gone.live
    assert gone.deleting_since == datetime(2026, 3, 1, 2, 31, tzinfo=UTC)


def records(cell_times: dict[str, list[float]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for cell_id, times in cell_times.items():
        bench, variant = cell_id.split(".")
        out[cell_id] = [
            {"benchmark": bench, "variant": variant, "repetition": i, "wall_seconds": t,
             "ok": True, "exit_code": 0, "timed_out": False}
            for i, t in enumerate(times)
        ]  # fmt: skip
    return out


def observe(prev: dict[str, Any], run: RunDecision, **fields: Any) -> SuiteObservation:
    spec = fields.pop("spec", None) or spec_of()
    return SuiteObservation(
        spec=spec, generation=2, now=T0, previous=status_of(**prev), run=run, **fields
    )


RUN = RunDecision("r1", False)


def test_a_new_run_is_pending_until_its_pods_are_ready() -> None:
    update = next_suite_status(
        observe({}, RunDecision("r1", True), summary=summarize_suite(spec_of(), {}))
    )
    s = update.status
    assert (s.phase, s.run_id, s.progress_percent, s.observed_generation) == (
        "Pending",
        "r1",
        0.0,
        2,
    )
    assert [c.total for c in s.cells or ()] == [3, 3]
    assert [e.reason for e in update.events] == ["RunStarted", "WaitingForPods"]
    ready = next_suite_status(observe(s.model_dump(by_alias=True), RUN, ready_pods=1))
    assert ready.status.phase == "Running"
    assert ready.status.start_time == ts(T0)


def test_progress_disruptions_and_failures_are_kept_apart() -> None:
    partial = summarize_suite(spec_of(), records({"b.v1": [1.0, 1.1]}))
    prev = {"phase": "Running", "runId": "r1", "disruptions": 2, "failures": 1}
    # The totals come from the pass's loss ledger (restored from the status after a restart).
    s = next_suite_status(observe(prev, RUN, summary=partial, disruptions=3, failures=2)).status
    assert (s.disruptions, s.failures, s.progress_percent) == (3, 2, 33.3)
    degraded = next(c for c in s.conditions or () if c.type == "Degraded")
    assert (degraded.status, degraded.reason) == ("True", "WorkerFailures")


def test_failure_budget_fails_the_run_but_disruptions_never_do() -> None:
    prev = {"phase": "Running", "runId": "r1", "failures": 5}
    failed = next_suite_status(observe(prev, RUN, failures=6)).status
    assert failed.phase == "Failed"
    assert (
        next(c for c in failed.conditions or () if c.type == "Failed").reason
        == "FailureBudgetExhausted"
    )
    survived = next_suite_status(observe({**prev, "failures": 0}, RUN, disruptions=50)).status
    assert survived.phase == "Running"
    assert survived.disruptions == 50


def test_finish_with_a_regression_sets_status_event_and_history() -> None:
    spec = spec_of(baseline={"suiteRun": "base", "threshold": 0.1})
    now_ = records({"b.v1": [1.0, 1.01, 0.99], "b.v2": [1.3, 1.31, 1.29]})
    base = records({"b.v1": [1.0, 1.01, 0.99], "b.v2": [1.0, 1.01, 0.99]})
    summary = summarize_suite(spec, now_, base)
    prev = {"phase": "Running", "runId": "r1", "startTime": "2026-03-01T02:00:00Z"}
    update = next_suite_status(
        observe(prev, RUN, spec=spec, summary=summary, finished=True, report_uri="s3://b/r.html",
                results_uri="s3://b/r/", baseline_uri="s3://b/base/")
    )  # fmt: skip
    s = update.status
    assert s.phase == "Succeeded"
    assert s.completion_time == ts(T0)
    assert [(r.benchmark, r.variant) for r in s.regressions or ()] == [("b", "v2")]
    assert s.regression_count == 1
    assert s.report_uri == "s3://b/r.html"
    assert s.baseline_uri == "s3://b/base/"
    regressed = next(c for c in s.conditions or () if c.type == "Regressed")
    assert regressed.status == "True"
    assert "b.v2" in regressed.message
    warn = [e for e in update.events if e.reason == "RegressionFound"]
    assert len(warn) == 1
    assert warn[0].type == "Warning"
    assert "b.v2" in warn[0].message
    assert [
        (h.run_id, h.phase, h.completed, h.total, h.regression_count) for h in s.history or ()
    ] == [("r1", "Succeeded", 6, 6, 1)]


def test_finish_without_a_regression_says_so() -> None:
    spec = spec_of(baseline={"suiteRun": "base"})
    same = records({"b.v1": [1.0, 1.01, 0.99], "b.v2": [1.0, 1.01, 0.99]})
    update = next_suite_status(
        observe({"phase": "Running", "runId": "r1"}, RUN, spec=spec,
                summary=summarize_suite(spec, same, same), finished=True, baseline_uri="s3://b/base/")
    )  # fmt: skip
    assert update.status.regression_count == 0
    assert update.status.regressions == []
    assert not any(e.reason == "RegressionFound" for e in update.events)
    regressed = next(c for c in update.status.conditions or () if c.type == "Regressed")
    assert regressed.status == "False"


def test_a_finished_run_stays_and_a_new_scheduled_run_resets_it() -> None:
    done = {
        "phase": "Succeeded", "runId": "r1", "disruptions": 4, "reportUri": "s3://b/r1.html",
        "conditions": [{"type": "Succeeded", "status": "True", "reason": "Completed",
                        "message": "done", "lastTransitionTime": "2026-03-01T00:00:00Z"}],
        "history": [{"runId": "r1", "phase": "Succeeded"}],
    }  # fmt: skip
    kept = next_suite_status(observe(done, RUN, disruptions=4)).status
    assert (kept.phase, kept.disruptions, kept.report_uri) == ("Succeeded", 4, "s3://b/r1.html")
    fresh = next_suite_status(
        observe(done, RunDecision("r2", True, scheduled_at=T0), spec=spec_of(schedule=DAILY))
    )
    s = fresh.status
    assert (s.phase, s.run_id, s.disruptions, s.report_uri) == ("Pending", "r2", 0, None)
    assert s.last_schedule_time == ts(T0)
    assert [h.run_id for h in s.history or ()] == ["r1"]


def test_history_is_bounded_and_dropped_runs_are_named() -> None:
    spec = spec_of(schedule=DAILY)
    history = [{"runId": "r1", "phase": "Succeeded"}, {"runId": "r2", "phase": "Succeeded"}]
    prev = {"phase": "Running", "runId": "r3", "history": history}
    even = summarize_suite(spec, records({"b.v1": [1.0] * 3, "b.v2": [1.0] * 3}))
    update = next_suite_status(
        observe(prev, RunDecision("r3", False), spec=spec, summary=even, finished=True)
    )
    assert [h.run_id for h in update.status.history or ()] == ["r2", "r3"]
    assert update.dropped_runs == ["r1"]


def test_problem_is_pending_with_a_warning_once() -> None:
    problem = Problem(
        "BaselineNotReady", "baseline BenchmarkSuite 'base' has no successful run yet"
    )
    first = next_suite_status(observe({"phase": "Pending", "runId": "r1"}, RUN, problem=problem))
    assert first.status.phase == "Pending"
    assert [(e.type, e.reason) for e in first.events] == [("Warning", "BaselineNotReady")]
    again = next_suite_status(
        observe(first.status.model_dump(by_alias=True, exclude_none=True), RUN, problem=problem)
    )
    assert again.events == []


def test_without_a_baseline_nothing_is_compared() -> None:
    even = summarize_suite(spec_of(), records({"b.v1": [1.0] * 3, "b.v2": [2.0] * 3}))
    s = next_suite_status(
        observe({"phase": "Running", "runId": "r1"}, RUN, summary=even, finished=True)
    ).status
    assert (s.regressions, s.regression_count) == (None, None)
    regressed = next(c for c in s.conditions or () if c.type == "Regressed")
    assert (regressed.status, regressed.reason) == ("False", "NotCompared")


def test_waiting_for_the_schedule_and_suspended() -> None:
    waiting = next_suite_status(observe({}, RunDecision(None, False, next_schedule=T0))).status
    assert (waiting.phase, waiting.next_schedule_time, waiting.progress_percent) == (
        "Pending", ts(T0), None
    )  # fmt: skip
    suspended = next_suite_status(
        observe({"phase": "Running", "runId": "r1"}, RUN, spec=spec_of(suspend=True))
    )
    assert suspended.status.phase == "Suspended"


def test_the_previous_status_is_not_modified() -> None:
    prev = status_of(
        phase="Running", runId="r1", disruptions=1, history=[{"runId": "r0", "phase": "Succeeded"}]
    )
    before = prev.model_dump()
    even = summarize_suite(spec_of(), records({"b.v1": [1.0] * 3, "b.v2": [1.0] * 3}))
    next_suite_status(
        SuiteObservation(
            spec=spec_of(),
            generation=1,
            now=T0,
            previous=prev,
            run=RUN,
            summary=even,
            finished=True,
            disruptions=2,
        )
    )
    assert prev.model_dump() == before


def node(name: str, cpu: int, memory_gi: int, **labels: str) -> NodeInfo:
    return NodeInfo(name, Capacity(cpu * 1000, memory_gi << 30, 0, 110), labels=labels)


@pytest.mark.parametrize(
    ("bench", "placement", "nodes", "expected"),
    [
        ({"profile": "small"}, None, [node("n1", 4, 8)], None),
        ({"profile": "xlarge"}, None, [node("n1", 4, 8)], "ProfileTooLarge"),
        ({"resources": {"cpu": "2", "memory": "1Gi"}}, None, [node("n1", 2, 8)], "ProfileTooLarge"),
        ({}, {"nodeSelector": {"pool": "bench"}}, [node("n1", 4, 8)], "NoEligibleNodes"),
        ({}, {"nodeSelector": {"pool": "bench"}}, [node("n1", 4, 8, pool="bench")], None),
        ({}, None, [], "NoEligibleNodes"),
    ],
)
def test_admission_names_the_cell_no_node_can_hold(
    bench: dict[str, Any],
    placement: dict[str, Any] | None,
    nodes: list[NodeInfo],
    expected: str | None,
) -> None:
    benchmarks = [{"name": "b", "command": ["true"], **bench}]
    spec = spec_of(benchmarks=benchmarks, **({"placement": placement} if placement else {}))
    problem = admission_problem(spec, nodes, OperatorConfig())
    assert (problem.reason if problem else None) == expected
    if problem:
        assert problem.message.startswith("cell b.v1: ")
