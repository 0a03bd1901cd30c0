"""The pass loop's ``do_pass`` in the controller: a failing pass is reported once as a Warning
Event, again only when its error changes; a deleted run gets no pass."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from proctor.api.conditions import Event
from proctor.cluster.losses import Departures
from proctor.config import OperatorConfig
from proctor.connection import SharedClients
from proctor.controller.evalrun import _scheduled_pass
from proctor.controller.metrics import OperatorMetrics
from proctor.controller.pass_timing import PassSchedule
from proctor.evalrun.runtime import RunRuntime


class EventsOnly:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def post_event(self, involved: Any, event: Event) -> None:
        self.events.append(event)


def _memo(body: dict[str, Any]) -> Any:
    schedule = PassSchedule(3.0)
    schedule.observe(body, 0.0)
    return SimpleNamespace(
        runs={body["metadata"]["uid"]: RunRuntime()},
        passes=SimpleNamespace(schedule=schedule),
        indexes={"nodes": {}, "usage": {}, "workers": {}},
        api=EventsOnly(),
        metrics=OperatorMetrics(),
        departures=Departures(),
        config=OperatorConfig(),
        clients=SharedClients(),
    )


def _body(count: Any) -> dict[str, Any]:
    return {
        "apiVersion": "proctor.dev/v1alpha1",
        "kind": "EvalRun",
        "metadata": {"name": "r", "namespace": "ns", "uid": "u1", "generation": 1},
        "spec": {"task": {"entrypoint": "m:f"}, "cases": {"count": count}},
    }


def test_a_failing_pass_posts_one_warning_until_its_error_changes() -> None:
    body = _body("not a number")
    memo = _memo(body)
    for _ in range(3):
        with pytest.raises(Exception, match="cases"):
            _scheduled_pass(memo, body, "timer")
    assert [(e.type, e.reason) for e in memo.api.events] == [("Warning", "ReconcileError")]
    assert "cases" in memo.api.events[0].message
    other = _body(-5)
    with pytest.raises(Exception, match="cases"):
        _scheduled_pass(memo, other, "timer")
    assert len(memo.api.events) == 2


def test_a_run_no_longer_scheduled_gets_no_pass() -> None:
    body = _body("not a number")
    memo = _memo(body)
    memo.passes.schedule.forget("u1")
    assert _scheduled_pass(memo, body, "timer") is True  # nothing to do, nothing raised
    assert memo.api.events == []
