"""Status that survives an operator restart (issue 15, findings 12 and 13): a spot node reclaimed
while no operator runs is counted once by the next one, with an Event, and the count toward
``placement.spot.fallbackToOnDemandAfter`` carries over the restart."""

from __future__ import annotations

import time
from typing import Any

import pytest

from e2e.harness import nodes
from e2e.harness.poll import wait_until
from e2e.test_operator import Env, _dump

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

__all__ = ["env"]
from e2e.test_operator import env  # noqa: E402  (the fixture)

RUN = "chaos"


def _bound(env: Env) -> dict[str, str]:
    """The run's live worker pods that are bound: pod name -> node."""
    return {p.metadata.name: p.spec.node_name for p in env.workers(RUN) if p.spec.node_name}


def _two_bound(env: Env, off: str = "") -> dict[str, str] | None:
    """Both workers bound (none on node ``off``), or None."""
    bound = _bound(env)
    return bound if len(bound) == 2 and off not in bound.values() else None


def _recorded(env: Env, bound: dict[str, str]) -> bool:
    """Whether the run's status ledger records each of ``bound`` as live on its spot node."""
    ledger = env.status(RUN).get("ledger") or {}
    pods = {p["name"]: p for p in ledger.get("pods") or []}
    return all(
        n in pods and pods[n]["node"] == node and pods[n]["spot"] and pods[n]["state"] == "live"
        for n, node in bound.items()
    )


def _disrupted_events(env: Env) -> list[Any]:
    return [e for e in env.events(RUN) if e.reason == "WorkerDisrupted"]


def _first_reclaim(env: Env) -> dict[str, str]:
    """Both workers on spot nodes; one node reclaimed and counted; the replacement bound and
    recorded in the status. Returns the workers then (pod -> node)."""
    first = wait_until(lambda: _two_bound(env), 60, "two workers")
    victim = sorted(first.values())[0]
    nodes.preempt_node(env.cluster.core, victim)  # stays in env.nodes: names stay unique
    wait_until(lambda: env.status(RUN).get("disruptions") == 1, 40, "the first disruption")
    after = wait_until(lambda: _two_bound(env, off=victim), 60, "a replacement on the spare")
    wait_until(lambda: _recorded(env, after), 30, "the workers recorded in status.ledger")
    return after


def test_finding12_spot_reclaim_while_the_operator_is_down_is_counted_once(env: Env) -> None:
    # Three small spot nodes hold one worker each (1 CPU of 2, less 20 % reserved): two for
    # the run's workers, one spare for the first replacement.
    for _ in range(3):
        env.node(cpu="2", memory="8Gi", spot=True)
    doc = env.evalrun(RUN, profile="small", workers={"max": 2, "failureBudget": 0})
    doc["spec"]["placement"]["spot"] = {"allowed": True, "fallbackToOnDemandAfter": 2}
    with env.operator(run_workers=False) as first:
        env.create(doc)
        try:
            before = _first_reclaim(env)
        except TimeoutError as exc:
            raise AssertionError(str(exc) + _dump(first)) from exc
        status = env.status(RUN)
        assert not status.get("spotFallback"), status
        assert status["ledger"]["spotDisruptions"] == 1, status
        first.kill()  # SIGKILL: the operator's memory is gone
    # While no operator runs: a second spot node is reclaimed (its pod, with DisruptionTarget,
    # is deleted from the API), and on-demand room appears.
    lost_pod, lost_node = sorted(before.items())[0]
    nodes.preempt_node(env.cluster.core, lost_node)
    on_demand = env.node(cpu="8", memory="16Gi")
    with env.operator(run_workers=False) as second:
        try:
            status = wait_until(
                lambda: ((s := env.status(RUN)).get("spotFallback") and s) or None,
                60,
                "status.spotFallback after the restart",
            )
            replacement = wait_until(
                lambda: [n for p, n in _bound(env).items() if p not in before] or None,
                60,
                "a replacement on the on-demand node",
            )
            events = wait_until(
                lambda: e if len(e := _disrupted_events(env)) >= 2 else None,
                30,
                "a WorkerDisrupted Event per lost worker",
            )
            time.sleep(5)  # five more passes: nothing is counted again
            later = env.status(RUN)
            again = _disrupted_events(env)
        except TimeoutError as exc:
            raise AssertionError(str(exc) + _dump(second)) from exc
    assert status["disruptions"] == 2, status
    assert later["disruptions"] == 2, later
    assert later["ledger"]["spotDisruptions"] == 2, later
    assert later["workers"]["failures"] == 0, later
    assert replacement == [on_demand]
    assert len(events) == 2, [e.message for e in events]
    assert len(again) == 2, [e.message for e in again]
    (downtime,) = [e for e in events if lost_pod in e.message]
    assert downtime.type == "Warning"
    assert f"on {lost_node} (spot)" in downtime.message, downtime.message
    degraded = next(c for c in later["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "WorkersDisrupted"), degraded
    assert [e for e in env.events(RUN) if e.reason == "SpotFallback"]
