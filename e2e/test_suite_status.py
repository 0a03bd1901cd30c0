"""A BenchmarkSuite's status survives an operator restart (issue 15, findings 12 and 13): a spot
node reclaimed while no operator runs is counted once by the next one, with an Event naming the
pod and its node, ``Degraded`` says so, and the finished run shows no ready pods."""

from __future__ import annotations

import time
from typing import Any

import pytest

from e2e.harness import nodes
from e2e.harness.poll import wait_until
from e2e.test_suite import Suites, benchmark

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

__all__ = ["suites"]
from e2e.test_suite import suites  # noqa: E402  (the fixture)

NAME = "chaos"


def _bound(suites: Suites) -> dict[str, str]:
    """The suite's live benchmark pods that are bound: pod name -> node."""
    pods = suites.cluster.core.list_namespaced_pod(
        suites.namespace, label_selector="app.kubernetes.io/component=benchmark"
    ).items
    return {
        p.metadata.name: p.spec.node_name
        for p in pods
        if p.spec.node_name
        and p.metadata.deletion_timestamp is None
        and p.status.phase not in ("Succeeded", "Failed")
    }


def _recorded(suites: Suites, spot: set[str]) -> dict[str, str] | None:
    """Both pods bound to spot nodes and recorded live on them in status.ledger, or None."""
    bound = _bound(suites)
    ledger = suites.status(NAME).get("ledger") or {}
    pods = {p["name"]: p for p in ledger.get("pods") or []}
    ok = len(bound) == 2 and set(bound.values()) <= spot
    ok = ok and all(
        n in pods and pods[n]["node"] == node and pods[n]["spot"] and pods[n]["state"] == "live"
        for n, node in bound.items()
    )
    return bound if ok else None


def _disrupted(suites: Suites) -> list[Any]:
    return [e for e in suites.events(NAME) if e.reason == "WorkerDisrupted"]


def test_finding12_suite_spot_reclaim_while_the_operator_is_down_is_counted_once(
    suites: Suites,
) -> None:
    spot = {suites.node(spot=True) for _ in range(2)}  # one pod per node: isolation exclusive
    doc = suites.doc(
        NAME,
        [benchmark("alpha", 1.0, warmup=0, repetitions=10)],
        [{"name": "a"}, {"name": "b"}],
    )
    doc["spec"]["placement"]["spot"] = {"allowed": True}
    with suites.operator() as first:
        suites.create(doc)
        try:
            before = wait_until(lambda: _recorded(suites, spot), 120, "both pods in the ledger")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{first.output()[-6000:]}") from exc
        first.kill()  # SIGKILL: the operator's memory is gone
    # While no operator runs: one spot node is reclaimed (its pod, with DisruptionTarget, is
    # deleted from the API), and on-demand room for the replacement appears.
    lost_pod, lost_node = sorted(before.items())[0]
    nodes.preempt_node(suites.cluster.core, lost_node)  # stays in suites.nodes: names unique
    suites.node()
    with suites.operator() as second:
        try:
            events = wait_until(
                lambda: _disrupted(suites) or None,
                60,
                "a WorkerDisrupted Event after the restart",
            )
            status = suites.wait_phase(second, NAME, "Succeeded", timeout=300)
            time.sleep(3)  # three more passes: nothing is counted again
            later = suites.status(NAME)
            again = _disrupted(suites)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{second.output()[-6000:]}") from exc
    assert (status["disruptions"], status["failures"]) == (1, 0), status
    assert (later["disruptions"], later["failures"]) == (1, 0), later
    assert later["ledger"]["spotDisruptions"] == 1, later
    assert later["readyPods"] == 0, later
    assert [h["disruptions"] for h in later["history"]] == [1], later
    assert len(events) == len(again) == 1, [e.message for e in again]
    assert events[0].type == "Warning"
    assert lost_pod in events[0].message
    assert f"on {lost_node} (spot)" in events[0].message, events[0].message
    degraded = next(c for c in later["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "WorkersDisrupted"), degraded
    # Every repetition recorded once, the lost pod's included.
    records = suites.records(NAME, later["runId"])
    assert len(records) == 2, sorted(records)
    for cell, recs in records.items():
        assert sorted(int(r["repetition"]) for r in recs) == list(range(10)), cell
