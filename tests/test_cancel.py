"""Cancel as pure decisions: what a pass does for ``spec.cancel`` (``decide_cancel``), when a
cancelled run's workers have drained, and the summary a cancelled run gets."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from proctor.api.v1alpha1.evalrun import EvalRunSpec, EvalRunStatus
from proctor.cluster.reads import PodState
from proctor.evalrun.decide import (
    CANCEL_REASON,
    CancelStep,
    decide_cancel,
    drained,
    proctor_summary,
)
from proctor.evalrun.gather import RunObservation
from proctor.stats.passrates import Aggregate
from proctor.storage import ProgressSnapshot

EARLY = "early stop: the decision is settled"


def spec(**extra: Any) -> EvalRunSpec:
    return EvalRunSpec.model_validate(
        {
            "image": "i",
            "task": {"entrypoint": "m:t"},
            "cases": {"count": 100},
            "compare": {"baseline": {"ref": "m:base"}, "candidate": {"ref": "m:cand"}},
            **extra,
        }
    )


# (name, cancel, queue stopped for, every case evaluated, drained, expected step)
CANCEL_CASES: list[tuple[str, bool, str | None, bool, bool, CancelStep]] = [
    ("no cancel: nothing", False, None, False, True, CancelStep()),
    ("no cancel, early stopped: nothing", False, EARLY, False, True, CancelStep()),
    ("cancel arrives: stop the queue, wait", True, None, False, False, CancelStep(True, False)),
    ("queue stopped, workers draining: wait", True, CANCEL_REASON, False, False, CancelStep()),
    (
        "workers drained: Cancelled",
        True,
        CANCEL_REASON,
        False,
        True,
        CancelStep(False, True, True),
    ),
    (
        "nothing ever ran: stop and finish at once",
        True,
        None,
        False,
        True,
        CancelStep(True, True, True),
    ),
    (
        "every case evaluated: finished, not cancelled",
        True,
        None,
        True,
        False,
        CancelStep(True, True, False),
    ),
    (
        "after an early stop settled it: drains, then succeeds",
        True,
        EARLY,
        False,
        True,
        CancelStep(False, True, False),
    ),
]


@pytest.mark.parametrize(
    ("cancel", "stopped", "evaluated", "gone", "expected"),
    [c[1:] for c in CANCEL_CASES],
    ids=[c[0] for c in CANCEL_CASES],
)
def test_decide_cancel(
    cancel: bool, stopped: str | None, evaluated: bool, gone: bool, expected: CancelStep
) -> None:
    step = decide_cancel(
        spec(cancel=cancel), stopped=stopped, all_evaluated=evaluated, drained=gone
    )
    assert step == expected


def pod(name: str, *, terminating: bool = False, finished: bool = False) -> PodState:
    return PodState(
        name=name,
        uid=f"uid-{name}",
        run="run",
        namespace="ns",
        created=datetime(2026, 1, 1, tzinfo=UTC),
        node="n1",
        phase="Succeeded" if finished else "Running",
        ready=not finished,
        terminating=terminating,
        finished=finished,
    )


@pytest.mark.parametrize(
    ("workers", "unseen", "expected"),
    [
        pytest.param((), (), True, id="no pod"),
        pytest.param((pod("a", finished=True),), (), True, id="only exited pods"),
        pytest.param((pod("a", terminating=True),), (), False, id="a pod still terminating"),
        pytest.param((pod("a"),), (), False, id="a live pod"),
        pytest.param((), ("created-not-seen",), False, id="a pod created but not seen yet"),
    ],
)
def test_drained(workers: tuple[PodState, ...], unseen: tuple[str, ...], expected: bool) -> None:
    seen = RunObservation(spec(), None, EvalRunStatus(), workers, workers, unseen)
    assert drained(seen) is expected


def paired(index: int, cand: bool) -> dict[str, Any]:
    def side(ok: bool) -> dict[str, Any]:
        return {"passed": ok, "errored": False, "violations": [] if ok else ["p"]}

    return {
        "index": index,
        "status": "passed" if cand else "failed",
        "durationMs": 1.0,
        "error": None,
        "baseline": side(False),
        "candidate": side(cand),
    }


def test_a_cancelled_run_is_undecided_where_an_early_stop_would_decide() -> None:
    """60 of 100 cases where the candidate wins every one: an early stop decides (accept),
    the same cases after a cancel do not (the 40 not run keep it undecided)."""
    agg = Aggregate()
    for i in range(60):
        agg.add(paired(i, True))
    snap = ProgressSnapshot(100, 60, 60, 0, 0, 0, None, None)
    run = spec(earlyStopping={"enabled": True, "minCases": 10, "checkEvery": 10})
    early = proctor_summary(run, agg, snap, stopped=EARLY, results_uri="s3://b/r", resolved=agg)
    assert early.decision == "accept"
    cancelled = proctor_summary(
        run, agg, snap, stopped=CANCEL_REASON, results_uri="s3://b/r", resolved=agg
    )
    assert cancelled.decision == "undecided"
    assert cancelled.early_stopped is False
    assert cancelled.not_evaluated == 40
    assert "cancelled" in (cancelled.reason or "")
    assert cancelled.results_uri == "s3://b/r"
    assert cancelled.candidate_pass_rate == 1.0
