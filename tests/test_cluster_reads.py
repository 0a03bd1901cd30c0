"""What the operator reads from cluster bodies (pure): pod classification, pod usage, nodes
and quota headroom."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from proctor.cluster.reads import (
    PodUsage,
    node_info,
    nodes_with_usage,
    pod_state,
    pod_usage,
    quota_headroom,
)
from proctor.planning.plan import GPU_RESOURCE, Capacity, NodeInfo, QuotaHeadroom, Taint

GiB = 1 << 30


def pod(
    *,
    phase: str = "Running",
    conditions: list[dict[str, Any]] | None = None,
    reason: str | None = None,
    message: str | None = None,
    containers: list[dict[str, Any]] | None = None,
    node: str | None = "n1",
    deleting: bool = False,
    requests: dict[str, str] | None = None,
) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "conditions": conditions or []}
    if reason:
        status["reason"] = reason
    if message:
        status["message"] = message
    if containers is not None:
        status["containerStatuses"] = containers
    meta: dict[str, Any] = {
        "name": "w-1",
        "uid": "u-1",
        "namespace": "ns",
        "creationTimestamp": "2026-01-01T00:00:00Z",
        "labels": {"proctor.dev/run": "r", "proctor.dev/run-uid": "run-uid"},
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:01:00Z"
    spec: dict[str, Any] = {
        "containers": [{"name": "worker", "resources": {"requests": requests or {"cpu": "500m"}}}]
    }
    if node:
        spec["nodeName"] = node
    return {"metadata": meta, "spec": spec, "status": status}


def waiting(reason: str, message: str = "") -> dict[str, Any]:
    return {"state": {"waiting": {"reason": reason, "message": message}}}


def terminated(code: int, reason: str = "Error") -> dict[str, Any]:
    return {"state": {"terminated": {"exitCode": code, "reason": reason}}}


READY = [{"type": "Ready", "status": "True"}]
DISRUPTION = {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}


@dataclass
class Classify:
    body: dict[str, Any]
    lost: str
    why: str  # substring
    finished: bool
    ready: bool = False


CLASSIFY = {
    "running and ready": Classify(pod(conditions=READY), "", "", False, ready=True),
    "pending, no node": Classify(pod(phase="Pending", node=None), "", "", False),
    "ready condition but not running": Classify(
        pod(phase="Pending", conditions=READY), "", "", False
    ),
    "exited cleanly": Classify(
        pod(phase="Succeeded", containers=[terminated(0, "Completed")]), "", "", True
    ),
    "DisruptionTarget condition": Classify(
        pod(conditions=[*READY, DISRUPTION]), "disruption", "PreemptionByScheduler", False, True
    ),
    "DisruptionTarget without reason": Classify(
        pod(conditions=[{"type": "DisruptionTarget", "status": "True"}]),
        "disruption",
        "DisruptionTarget",
        False,
    ),
    "DisruptionTarget False is ignored": Classify(
        pod(conditions=[{"type": "DisruptionTarget", "status": "False"}]), "", "", False
    ),
    "DisruptionTarget wins over a non-zero exit": Classify(
        pod(phase="Failed", conditions=[DISRUPTION], containers=[terminated(137)]),
        "disruption",
        "PreemptionByScheduler",
        True,
    ),
    "Evicted": Classify(pod(phase="Failed", reason="Evicted"), "disruption", "Evicted", True),
    "NodeLost": Classify(pod(reason="NodeLost"), "disruption", "NodeLost", False),
    "Shutdown": Classify(pod(phase="Failed", reason="Shutdown"), "disruption", "Shutdown", True),
    "OOMKilled": Classify(
        pod(phase="Failed", containers=[terminated(137, "OOMKilled")]), "failure", "OOMKilled", True
    ),
    "OOMKilled while still Running (restart)": Classify(
        pod(containers=[terminated(137, "OOMKilled")]), "failure", "OOMKilled", True
    ),
    "non-zero exit": Classify(
        pod(phase="Failed", containers=[terminated(3)]), "failure", "exit code 3 (Error)", True
    ),
    "zero exit is not a failure": Classify(
        pod(containers=[terminated(0, "Completed")]), "", "", False
    ),
    "ErrImagePull": Classify(
        pod(phase="Pending", containers=[waiting("ErrImagePull", "not found")]),
        "failure",
        "ErrImagePull: not found",
        True,
    ),
    "ImagePullBackOff": Classify(
        pod(phase="Pending", containers=[waiting("ImagePullBackOff")]),
        "failure",
        "ImagePullBackOff",
        True,
    ),
    "InvalidImageName": Classify(
        pod(phase="Pending", containers=[waiting("InvalidImageName")]),
        "failure",
        "InvalidImageName",
        True,
    ),
    "CreateContainerConfigError": Classify(
        pod(phase="Pending", containers=[waiting("CreateContainerConfigError", "no secret")]),
        "failure",
        "CreateContainerConfigError",
        True,
    ),
    "ContainerCreating is not an error": Classify(
        pod(phase="Pending", containers=[waiting("ContainerCreating")]), "", "", False
    ),
    "Failed with no container status": Classify(
        pod(phase="Failed", message="DeadlineExceeded"), "failure", "DeadlineExceeded", True
    ),
    "Failed with nothing said": Classify(pod(phase="Failed"), "failure", "Failed", True),
}


@pytest.mark.parametrize("case", CLASSIFY.values(), ids=list(CLASSIFY))
def test_pod_state_classifies(case: Classify) -> None:
    state = pod_state(case.body)
    assert state.lost == case.lost
    assert case.why in state.why
    if not case.lost:
        assert state.why == ""
    assert state.finished is case.finished
    assert state.ready is case.ready


def test_pod_state_fields() -> None:
    state = pod_state(pod(deleting=True, requests={"cpu": "2", "memory": "1Gi"}))
    assert (state.name, state.uid, state.run, state.namespace, state.node) == (
        "w-1",
        "u-1",
        "r",
        "ns",
        "n1",
    )
    assert state.created == datetime(2026, 1, 1, tzinfo=UTC)
    assert state.terminating
    # Requests are reported even for a finished pod (quota headroom adds them back).
    assert state.requests == Capacity(2000, GiB, 0, 1)
    done = pod_state(pod(phase="Succeeded", node=None))
    assert done.node == ""
    assert done.requests == Capacity()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            pod(requests={"cpu": "1500m", "memory": "512Mi"}),
            ("n1", Capacity(1500, 512 << 20, 0, 1)),
        ),
        (pod(requests={GPU_RESOURCE: "2"}), ("n1", Capacity(0, 0, 2, 1))),
        (pod(phase="Pending", requests={"cpu": "1"}), ("n1", Capacity(1000, 0, 0, 1))),
        (pod(node=None), None),
        (pod(phase="Succeeded"), None),
        (pod(phase="Failed"), None),
    ],
    ids=["cpu+memory", "gpu", "pending but bound", "unbound", "succeeded", "failed"],
)
def test_pod_usage(body: dict[str, Any], expected: tuple[str, Capacity] | None) -> None:
    got = pod_usage(body)
    if expected is None:
        assert got is None
        return
    assert got is not None
    node, usage = got
    assert (node, usage.requests) == expected
    assert usage.run_uid == "run-uid"
    assert usage.uid == "u-1"


def test_pod_usage_sums_containers() -> None:
    body = pod()
    body["spec"]["containers"].append({"name": "side", "resources": {"requests": {"cpu": "250m"}}})
    got = pod_usage(body)
    assert got is not None
    assert got[1].requests == Capacity(750, 0, 0, 1)


@pytest.mark.parametrize(
    ("namespace", "labels", "agent"),
    [
        ("ns", {}, False),
        ("ns", {"pod-template-generation": "3", "controller-revision-hash": "abc"}, True),
        ("ns", {"controller-revision-hash": "abc"}, False),  # a StatefulSet's pod
        ("kube-system", {}, True),
    ],
    ids=["workload", "daemonset pod", "statefulset pod", "kube-system"],
)
def test_pod_usage_tells_node_agents(namespace: str, labels: dict[str, str], agent: bool) -> None:
    body = pod()
    body["metadata"]["namespace"] = namespace
    body["metadata"]["labels"] = labels
    got = pod_usage(body)
    assert got is not None
    assert got[1].agent is agent


def node(
    *,
    alloc: dict[str, str] | None = None,
    ready: str | None = "True",
    taints: list[dict[str, str]] | None = None,
    unschedulable: bool = False,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    conditions = [{"type": "Ready", "status": ready}] if ready is not None else []
    spec: dict[str, Any] = {}
    if taints is not None:
        spec["taints"] = taints
    if unschedulable:
        spec["unschedulable"] = True
    return {
        "metadata": {"name": "n1", "labels": labels or {}},
        "spec": spec,
        "status": {"allocatable": alloc if alloc is not None else {}, "conditions": conditions},
    }


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            node(alloc={"cpu": "4", "memory": "8Gi", "pods": "20"}),
            NodeInfo("n1", Capacity(4000, 8 * GiB, 0, 20)),
        ),
        (
            node(alloc={"cpu": "3500m", GPU_RESOURCE: "8"}),
            NodeInfo("n1", Capacity(3500, 0, 8, 110)),
        ),
        (node(alloc={}, ready="False"), NodeInfo("n1", Capacity(0, 0, 0, 110), ready=False)),
        (node(ready=None), NodeInfo("n1", Capacity(pods=110), ready=False)),
        (node(ready="Unknown"), NodeInfo("n1", Capacity(pods=110), ready=False)),
        (node(unschedulable=True), NodeInfo("n1", Capacity(pods=110), unschedulable=True)),
        (
            node(
                taints=[
                    {"key": "gpu", "effect": "NoSchedule", "value": "yes"},
                    {"key": "spot", "effect": "NoExecute"},
                ]
            ),
            NodeInfo(
                "n1",
                Capacity(pods=110),
                taints=(Taint("gpu", "NoSchedule", "yes"), Taint("spot", "NoExecute", "")),
            ),
        ),
        (
            node(labels={"karpenter.sh/capacity-type": "spot"}),
            NodeInfo("n1", Capacity(pods=110), labels={"karpenter.sh/capacity-type": "spot"}),
        ),
    ],
    ids=[
        "cpu memory pods",
        "gpus, default pods",
        "not ready",
        "no conditions",
        "unknown",
        "cordoned",
        "taints",
        "spot label",
    ],
)
def test_node_info(body: dict[str, Any], expected: NodeInfo) -> None:
    assert node_info(body) == expected


def test_node_info_spot() -> None:
    assert node_info(node(labels={"karpenter.sh/capacity-type": "spot"})).is_spot
    assert not node_info(node()).is_spot


def test_nodes_with_usage_excludes_own_workers() -> None:
    nodes = [NodeInfo("a", Capacity(4000, 8 * GiB, 0, 110)), NodeInfo("b", Capacity(1000))]
    usage = {
        "a": [
            PodUsage("p1", "other", Capacity(500, GiB, 0, 1)),
            PodUsage("p2", "mine", Capacity(1000, GiB, 0, 1)),
            PodUsage("p3", "", Capacity(250, 0, 1, 1)),
            PodUsage("p4", "", Capacity(100, 0, 0, 1), agent=True),
        ]
    }
    out = nodes_with_usage(nodes, usage, "mine")
    assert out[0].requested == Capacity(850, GiB, 1, 3)
    assert out[0].neighbours == 2  # p1 and p3: not this run's, not node agents
    assert out[0].allocatable == nodes[0].allocatable
    assert out[1].requested == Capacity()
    assert out[1].neighbours == 0


def quota(
    hard: dict[str, str], used: dict[str, str] | None = None, *, spec_only: bool = False
) -> dict[str, Any]:
    if spec_only:
        return {"spec": {"hard": hard}}
    return {"spec": {"hard": hard}, "status": {"hard": hard, "used": used or {}}}


@dataclass
class Quota:
    quotas: list[dict[str, Any]]
    own: list[Capacity]
    expected: QuotaHeadroom


QUOTA = {
    "no quota": Quota([], [], QuotaHeadroom()),
    "requests.cpu and memory": Quota(
        [
            quota(
                {"requests.cpu": "4", "requests.memory": "8Gi"},
                {"requests.cpu": "1500m", "requests.memory": "2Gi"},
            )
        ],
        [],
        QuotaHeadroom(cpu_millis=2500, memory=6 * GiB),
    ),
    "plain cpu key": Quota(
        [quota({"cpu": "2"}, {"cpu": "500m"})], [], QuotaHeadroom(cpu_millis=1500)
    ),
    "own workers added back": Quota(
        [quota({"requests.cpu": "4", "pods": "10"}, {"requests.cpu": "3", "pods": "8"})],
        [Capacity(1000, 0, 0, 1), Capacity(1000, 0, 0, 1)],
        QuotaHeadroom(cpu_millis=3000, pods=4),
    ),
    "gpus": Quota(
        [quota({f"requests.{GPU_RESOURCE}": "4"}, {f"requests.{GPU_RESOURCE}": "1"})],
        [Capacity(0, 0, 1, 1)],
        QuotaHeadroom(gpus=4),
    ),
    "tightest of several quotas": Quota(
        [quota({"pods": "10"}, {"pods": "2"}), quota({"pods": "5"}, {"pods": "1"})],
        [],
        QuotaHeadroom(pods=4),
    ),
    "no status yet: spec.hard, nothing used": Quota(
        [quota({"pods": "3"}, spec_only=True)], [], QuotaHeadroom(pods=3)
    ),
    "exhausted goes negative": Quota(
        [quota({"pods": "2"}, {"pods": "3"})], [], QuotaHeadroom(pods=-1)
    ),
}


@pytest.mark.parametrize("case", QUOTA.values(), ids=list(QUOTA))
def test_quota_headroom(case: Quota) -> None:
    assert quota_headroom(case.quotas, case.own) == case.expected


def test_also_pod_state_reads_its_pool() -> None:
    body = {"metadata": {"name": "w", "uid": "u", "labels": {"proctor.dev/pool": "spot"}}}
    assert pod_state(body).pool == "spot"
