"""Pure pieces of the reconcile pass: when a run lists its result objects, and which status a
pass plans from when its body predates the operator's own last write."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from proctor.api.v1alpha1.evalrun import EvalRunStatus
from proctor.cluster.reads import PodState
from proctor.evalrun.decide import pool_counts, terminal_tidy
from proctor.evalrun.runtime import (
    PROGRESS_REFRESH_MAX_SECONDS,
    PROGRESS_REFRESH_SECONDS,
    SUPERSEDED_KEPT,
    RunRuntime,
    next_refresh_interval,
    refresh_due,
    status_digest,
)

# (name, current interval, the listing found something or the queue moved, expected next)
REFRESH = [
    ("found: back to the base", 80.0, True, PROGRESS_REFRESH_SECONDS),
    ("nothing: doubles", PROGRESS_REFRESH_SECONDS, False, 2 * PROGRESS_REFRESH_SECONDS),
    ("nothing again: doubles again", 20.0, False, 40.0),
    ("capped", 100.0, False, PROGRESS_REFRESH_MAX_SECONDS),
    ("at the cap", PROGRESS_REFRESH_MAX_SECONDS, False, PROGRESS_REFRESH_MAX_SECONDS),
    ("below the base counts as the base", 1.0, False, 2 * PROGRESS_REFRESH_SECONDS),
]


@pytest.mark.parametrize(
    ("name", "current", "found", "expected"), REFRESH, ids=[r[0] for r in REFRESH]
)
def test_idle_runs_list_storage_less_and_less_often(
    name: str, current: float, found: bool, expected: float
) -> None:
    assert next_refresh_interval(current, found) == expected


def test_the_backoff_reaches_the_cap_in_a_few_idle_listings() -> None:
    interval, steps = PROGRESS_REFRESH_SECONDS, 0
    while interval < PROGRESS_REFRESH_MAX_SECONDS:
        interval = next_refresh_interval(interval, False)
        steps += 1
    assert steps == 4  # 10 -> 20 -> 40 -> 80 -> 120 s


AS_ENQUEUED = (5, 0, 500, None)  # waiting, in flight, cases, stopped
# (name, signature, untouched, moved, seconds since the last listing, expected)
DUE = [
    ("untouched since enqueue: never, however long", AS_ENQUEUED, AS_ENQUEUED, False, 1e6, False),
    ("untouched and the same as last pass", AS_ENQUEUED, AS_ENQUEUED, False, 0.0, False),
    ("a worker took an entry", (4, 1, 500, None), AS_ENQUEUED, True, 0.0, True),
    ("touched before, still now: waits", (4, 1, 500, None), None, False, 5.0, False),
    ("touched before, waited long enough", (4, 1, 500, None), None, False, 10.0, True),
    ("resumed run (nothing untouched), queue moved", (3, 0, 300, None), None, True, 0.0, True),
    ("back to the enqueued depth after moving", AS_ENQUEUED, None, False, 10.0, True),
]


@pytest.mark.parametrize("case", DUE, ids=[d[0] for d in DUE])
def test_results_are_listed_only_once_a_worker_can_have_written_some(
    case: tuple[str, tuple[object, ...], tuple[object, ...] | None, bool, float, bool],
) -> None:
    _, signature, untouched, moved, waited, expected = case
    got = refresh_due(
        signature=signature, untouched=untouched, moved=moved, waited=waited, every=10.0
    )
    assert got is expected


PENDING: dict[str, Any] = {"phase": "Pending", "plan": {"replicas": 1}}
RUNNING: dict[str, Any] = {"phase": "Running", "plan": {"replicas": 1}, "workers": {"ready": 1}}


def test_a_body_that_predates_the_last_write_is_read_as_that_write() -> None:
    rt = RunRuntime()
    assert rt.current_status(None) is None  # nothing written yet: the body as it is
    rt.wrote(None, PENDING)
    assert rt.current_status(None) == PENDING  # the body does not show the write yet
    assert rt.current_status({}) == PENDING  # an empty status is the same as none


def test_two_writes_ahead_of_the_body() -> None:
    rt = RunRuntime()
    rt.wrote(None, PENDING)
    rt.wrote(PENDING, RUNNING)
    assert rt.current_status(None) == RUNNING
    assert rt.current_status(PENDING) == RUNNING


def test_the_body_catching_up_ends_the_override() -> None:
    rt = RunRuntime()
    rt.wrote(None, PENDING)
    assert rt.current_status(dict(PENDING)) == PENDING
    assert rt.written is None
    assert rt.superseded == []
    # Later bodies are taken as they are, even one equal to an old status.
    assert rt.current_status(None) is None


def test_a_status_nobody_here_wrote_wins() -> None:
    rt = RunRuntime()
    rt.wrote(None, PENDING)
    theirs = {"phase": "Failed"}
    assert rt.current_status(theirs) == theirs
    assert rt.written is None


def test_only_the_latest_replaced_statuses_are_remembered() -> None:
    rt = RunRuntime()
    before: dict[str, Any] | None = None
    for i in range(SUPERSEDED_KEPT + 3):
        now = {"phase": "Running", "counts": {"completed": i}}
        rt.wrote(before, now)
        before = now
    assert len(rt.superseded) == SUPERSEDED_KEPT
    assert rt.current_status(None) is None  # the first write's base has been forgotten


def test_status_digests_ignore_key_order() -> None:
    a = {"phase": "Running", "plan": {"replicas": 2, "limit": "cpu"}}
    b = {"plan": {"limit": "cpu", "replicas": 2}, "phase": "Running"}
    assert status_digest(a) == status_digest(b)
    assert status_digest(a) != status_digest({**a, "phase": "Pending"})
    assert status_digest(None) == status_digest({})


@pytest.mark.parametrize(
    ("workers", "patch"),
    [
        pytest.param({"desired": 2, "ready": 2, "failures": 1}, True, id="left standing"),
        pytest.param({"desired": 0, "ready": 0, "failures": 1}, False, id="already zero"),
        pytest.param(None, False, id="no workers"),
    ],
)
def test_finding13_a_finished_run_left_with_ready_workers_is_tidied(
    workers: dict[str, int] | None, patch: bool
) -> None:
    prev = EvalRunStatus.model_validate({"phase": "Succeeded", "workers": workers})
    expected = {"workers": {"desired": 0, "ready": 0, "failures": 1}} if patch else {}
    assert terminal_tidy(prev) == expected


def test_also_new_workers_count_the_pools_of_workers_not_seen_yet() -> None:
    rt = RunRuntime()
    rt.expected_pool = {"w-new": "spot"}
    live = [
        PodState("w-1", "1", "r", "ns", datetime(2026, 1, 1, tzinfo=UTC), "n", "Running",
                  True, False, False, pool="on-demand"),
    ]  # fmt: skip
    assert pool_counts(live, ["w-new", "w-unknown"], rt.expected_pool) == {
        "on-demand": 1,
        "spot": 1,
        "": 1,
    }
