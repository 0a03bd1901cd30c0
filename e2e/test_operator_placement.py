"""EvalRun placement end to end: exclusive workers never share a node (checked from every pod
binding the API server reports over the whole run), and a zone spread with maxSkew 1 over
three zones of kwok nodes places workers evenly, as the plan says."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes import client, watch

from e2e.harness.poll import wait_until
from e2e.test_operator import Env, _dump
from proctor.validation import validate_document

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

__all__ = ["env"]
from e2e.test_operator import env  # noqa: E402  (the fixture)

ZONE = "topology.kubernetes.io/zone"
DAEMON_LABEL = "pod-template-generation"


@dataclass(frozen=True)
class Binding:
    """One pod event as the API server ordered it."""

    type: str
    uid: str
    name: str
    namespace: str
    node: str
    labels: dict[str, str]
    gone: bool  # deleted, or finished (the scheduler no longer counts it)


@contextmanager
def pod_events(env: Env) -> Iterator[list[Binding]]:
    """Every pod event of every namespace while the block runs, in the API server's order.
    Fails the test if the watch broke off before the block ended (events could be missing)."""
    events: list[Binding] = []
    broke: list[BaseException] = []
    stream = watch.Watch()
    stopping = threading.Event()

    def follow() -> None:
        try:
            for event in stream.stream(env.cluster.core.list_pod_for_all_namespaces):
                events.append(_binding(event))
        except Exception as exc:  # reported to the test below
            if not stopping.is_set():
                broke.append(exc)

    thread = threading.Thread(target=follow, name="pod-watch", daemon=True)
    thread.start()
    try:
        yield events
    finally:
        stopping.set()
        stream.stop()  # the thread ends at the next event or when the connection closes
    assert not broke, f"the pod watch broke off: {broke}"


def _binding(event: dict[str, Any]) -> Binding:
    pod = event["object"]
    return Binding(
        type=event["type"],
        uid=pod.metadata.uid,
        name=pod.metadata.name,
        namespace=pod.metadata.namespace,
        node=pod.spec.node_name or "",
        labels=dict(pod.metadata.labels or {}),
        gone=event["type"] == "DELETED" or pod.status.phase in {"Succeeded", "Failed"},
    )


def shared_nodes(events: Sequence[Binding], run: str, nodes: set[str]) -> list[str]:
    """Replay the bindings: each moment a worker of ``run`` held a node of ``nodes`` together
    with another pod that is not a DaemonSet's (that pod, and the worker)."""
    on: dict[str, dict[str, Binding]] = {n: {} for n in nodes}
    found: list[str] = []
    for event in events:
        for pods in on.values():
            pods.pop(event.uid, None)
        if event.node in on and not event.gone:
            on[event.node][event.uid] = event
        for node, pods in on.items():
            workers = [p for p in pods.values() if p.labels.get("proctor.dev/run") == run]
            others = [
                p
                for p in pods.values()
                if p.uid != (workers[0].uid if workers else "") and DAEMON_LABEL not in p.labels
            ]
            if workers and others:
                found.append(f"{node}: {workers[0].name} with {[p.name for p in others]}")
    return found


def _daemonset(env: Env) -> None:
    """A real DaemonSet on this test's nodes: its pods are node agents, which exclusive
    workers share a node with."""
    client.AppsV1Api(env.cluster.api_client).create_namespaced_daemon_set(
        env.namespace,
        {
            "metadata": {"name": "agent"},
            "spec": {
                "selector": {"matchLabels": {"app": "agent"}},
                "template": {
                    "metadata": {"labels": {"app": "agent"}},
                    "spec": {
                        "nodeSelector": {"e2e.proctor.dev/pool": env.pool},
                        "containers": [{"name": "agent", "image": "agent:1"}],
                    },
                },
            },
        },
    )


def _pod_on(env: Env, name: str, node: str) -> None:
    env.cluster.core.create_namespaced_pod(
        env.namespace,
        {
            "metadata": {"name": name, "labels": {"app": name}},
            "spec": {
                "nodeSelector": {"kubernetes.io/hostname": node},
                "containers": [{"name": "c", "image": "app:1"}],
            },
        },
    )


def _node_of(env: Env, pod: str) -> str:
    node: str = env.cluster.core.read_namespaced_pod(pod, env.namespace).spec.node_name or ""
    return node


def test_exclusive_workers_never_share_a_node(env: Env) -> None:
    busy, free_1, free_2 = (env.node(cpu="16", memory="32Gi") for _ in range(3))
    _daemonset(env)
    wait_until(
        lambda: len([p for p in env.cluster.core.list_namespaced_pod(env.namespace).items
                     if p.metadata.labels.get("app") == "agent" and p.spec.node_name]) == 3,
        30, "a DaemonSet pod on each node",
    )  # fmt: skip
    _pod_on(env, "neighbour", busy)
    wait_until(lambda: _node_of(env, "neighbour") == busy, 30, "the neighbour bound")
    doc = env.evalrun("solo", count=2000, workers={"max": 4})
    doc["spec"]["placement"]["isolation"] = "exclusive"
    with env.operator() as op, pod_events(env) as events:
        env.create(doc)
        try:
            running = wait_until(
                lambda: [w for w in env.workers("solo") if w.spec.node_name] or None,
                60,
                "a worker bound",
            )
            # A pod sent to a worker's node waits there until the run is done.
            held = running[0].spec.node_name
            _pod_on(env, "intruder", held)
            plan = wait_until(lambda: env.status("solo").get("plan"), 30, "a plan")
            env.wait_phase("solo", "Succeeded", timeout=180)
            intruder_node = wait_until(
                lambda: _node_of(env, "intruder") or None, 60, "the intruder bound once free"
            )
        except TimeoutError as exc:
            raise AssertionError(str(exc) + _dump(op)) from exc
    assert (plan["fit"], plan["boundBy"]) == (2, "nodes"), plan
    assert "exclusive: 1 of them hold other pods" in plan["message"]
    assert intruder_node == held
    mine = [e for e in events if e.labels.get("proctor.dev/run") == "solo"]
    used = {e.node for e in mine if e.node}
    assert used == {free_1, free_2}, used  # one worker on each free node, none on the busy one
    ours = {busy, free_1, free_2}
    assert shared_nodes(events, "solo", ours) == []
    # The replay can fail: had the workers never left, the intruder would have shared a node.
    stayed = [e for e in events if not (e.gone and e.labels.get("proctor.dev/run") == "solo")]
    assert any("intruder" in s for s in shared_nodes(stayed, "solo", ours))


def _plan_of(env: Env, run: str, replicas: int) -> dict[str, Any] | None:
    plan: dict[str, Any] | None = env.status(run).get("plan")
    return plan if plan and plan["replicas"] == replicas else None


def _bound_workers(env: Env, run: str, count: int) -> list[Any] | None:
    workers = env.workers(run)
    return workers if len(workers) == count and all(p.spec.node_name for p in workers) else None


def test_zone_spread_places_workers_evenly(env: Env) -> None:
    # Zone a has room for 24 small workers, b for 12, c for 2: with maxSkew 1, c holds a and
    # b to 3 each, so 8 of the 9 allowed workers run, 3/3/2.
    for zone, cpu in (("a", "16"), ("a", "16"), ("b", "16"), ("c", "3")):
        env.node(cpu=cpu, memory="32Gi", zone=f"e2e-1{zone}")
    doc = env.evalrun(
        "even", count=20000, workers={"max": 9, "targetBacklogPerWorker": 1}, profile="small"
    )
    doc["spec"]["placement"]["topologySpread"] = [{"topologyKey": ZONE, "maxSkew": 1}]
    with env.operator(run_workers=False) as op:
        env.create(doc)
        try:
            plan = wait_until(lambda: _plan_of(env, "even", 8), 30, "the spread-bound plan")
            bound = wait_until(lambda: _bound_workers(env, "even", 8), 60, "8 bound workers")
        except TimeoutError as exc:
            raise AssertionError(str(exc) + _dump(op)) from exc
    assert plan["boundBy"] == "spread", plan
    assert f"spread allows 8: {ZONE} maxSkew 1" in plan["message"], plan
    zone_of = {n.metadata.name: n.metadata.labels[ZONE] for n in env.cluster.core.list_node().items}
    per_zone = Counter(zone_of[p.spec.node_name] for p in bound)
    assert per_zone == {"e2e-1a": 3, "e2e-1b": 3, "e2e-1c": 2}, per_zone
    constraint = bound[0].spec.topology_spread_constraints[0]
    assert constraint.label_selector.match_labels == {
        "proctor.dev/run": "even",
        "app.kubernetes.io/component": "worker",
    }


BAD_PLACEMENTS = {
    "not a label key": {"topologySpread": [{"topologyKey": "zone/"}]},
    "minDomains with ScheduleAnyway": {
        "topologySpread": [
            {"topologyKey": ZONE, "whenUnsatisfiable": "ScheduleAnyway", "minDomains": 2}
        ]
    },
    "duplicate constraint": {
        "topologySpread": [{"topologyKey": ZONE}, {"topologyKey": ZONE, "maxSkew": 2}]
    },
    "a selector of the run's own": {
        "topologySpread": [{"topologyKey": ZONE, "labelSelector": {"matchLabels": {"a": "b"}}}]
    },
    "bad isolation": {"isolation": "alone"},
}


@pytest.mark.parametrize("placement", BAD_PLACEMENTS.values(), ids=BAD_PLACEMENTS.keys())
def test_the_api_server_refuses_bad_placement_as_proctor_validate_does(
    env: Env, placement: dict[str, Any]
) -> None:
    doc = env.evalrun("bad")
    doc["spec"]["placement"].update(placement)
    expected = validate_document(doc).errors
    assert expected, "proctor validate accepted it"
    with pytest.raises(client.ApiException) as refused:
        env.create(doc)
    assert refused.value.status in {400, 422}
    body = json.loads(refused.value.body)["message"]
    # The apiserver words unknown fields and CEL rules its own way around the same text.
    message = expected[0].message.removeprefix("unknown field ").split(', got "')[0]
    assert message in body, (message, body)
