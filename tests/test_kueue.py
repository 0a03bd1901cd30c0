"""Kueue admission's pure parts: which queue a run uses, the labels its workers carry, the
plan as Kueue binds it, and how gated and Kueue-evicted pods and LocalQueues are read."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from proctor.api.names import KUEUE_ADMISSION_GATE, KUEUE_PRIORITY_LABEL, KUEUE_QUEUE_LABEL
from proctor.api.v1alpha1.evalrun import EvalRunSpec
from proctor.cluster.reads import LocalQueueInfo, local_queue_info, pod_state
from proctor.config import OperatorConfig
from proctor.planning.admission import Admission, bind_admission, kueue_pod_labels, kueue_queue
from proctor.planning.plan import PlanResult, WorkerSize
from proctor.pods import worker_pod


def run_spec(**extra: Any) -> EvalRunSpec:
    return EvalRunSpec.model_validate(
        {
            "image": "registry.example/eval:1",
            "task": {"entrypoint": "proctor.examples.topk:TopKTask"},
            "cases": {"count": 40},
            **extra,
        }
    )


@pytest.mark.parametrize(
    ("extra", "labels", "queue"),
    [
        ({"queueName": "team-a"}, {}, "team-a"),
        ({}, {KUEUE_QUEUE_LABEL: "team-b"}, "team-b"),
        ({"queueName": "team-a"}, {KUEUE_QUEUE_LABEL: "team-b"}, "team-a"),
        ({}, {"app": "x"}, ""),
    ],
    ids=["spec", "label", "spec-wins", "none"],
)
def test_the_queue_a_run_uses(extra: dict[str, Any], labels: dict[str, str], queue: str) -> None:
    assert kueue_queue(run_spec(**extra), labels) == queue


def test_queue_name_is_a_label_value() -> None:
    with pytest.raises(ValueError, match="queueName"):
        run_spec(queueName="Team_A")
    with pytest.raises(ValueError, match="queueName"):
        run_spec(queueName="a" * 64)


@pytest.mark.parametrize(
    ("queue", "run_labels", "expected"),
    [
        ("", {KUEUE_PRIORITY_LABEL: "high"}, {}),
        ("team-a", {}, {KUEUE_QUEUE_LABEL: "team-a"}),
        (
            "team-a",
            {KUEUE_PRIORITY_LABEL: "high", "other": "x"},
            {KUEUE_QUEUE_LABEL: "team-a", KUEUE_PRIORITY_LABEL: "high"},
        ),
    ],
    ids=["no-queue", "queue", "queue-and-priority"],
)
def test_pod_labels_for_kueue(
    queue: str, run_labels: dict[str, str], expected: dict[str, str]
) -> None:
    assert kueue_pod_labels(queue, run_labels) == expected


def test_a_worker_pod_carries_the_queue_and_leaves_the_gate_to_kueue() -> None:
    pod = worker_pod(
        run_name="run",
        run_uid="uid",
        namespace="ns",
        spec=run_spec(queueName="team-a"),
        size=WorkerSize("small", 1000, 2**30),
        config=OperatorConfig(),
        env=[],
        admission_labels={KUEUE_QUEUE_LABEL: "team-a"},
    )
    assert pod["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "team-a"
    assert pod["metadata"]["labels"]["proctor.dev/run"] == "run"
    # Kueue's webhook gates the pod; a gate of our own would hold it forever where Kueue
    # does not manage the namespace.
    assert "schedulingGates" not in pod["spec"]


PLAN = PlanResult(
    replicas=4,
    fit=10,
    bound_by="backlog",
    size=WorkerSize("small", 1000, 2**30),
    eligible_nodes=("n1",),
    pools=(),
    message="4 workers: bound by backlog",
    feasible=True,
)


@pytest.mark.parametrize(
    ("plan", "admission", "bound", "replicas", "requested", "cluster_queue", "says"),
    [
        (PLAN, Admission(), "backlog", 4, None, "", "bound by backlog"),
        (PLAN, Admission("q", "cq", admitted=4), "backlog", 4, None, "cq", "bound by backlog"),
        (
            PLAN,
            Admission("q", "cq", admitted=2, waiting=2),
            "kueue",
            2,
            4,
            "cq",
            "2 of 4 workers admitted by Kueue (LocalQueue q): bound by kueue; 2 wait for quota "
            "in ClusterQueue cq",
        ),
        (
            PLAN,
            Admission("q", "", admitted=0, waiting=0, blocked="LocalQueue q does not exist"),
            "kueue",
            0,
            4,
            "",
            "LocalQueue q does not exist",
        ),
        # Scale-down under way: more admitted than the plan asks for now.
        (
            PLAN,
            Admission("q", "cq", admitted=6, waiting=1),
            "kueue",
            4,
            4,
            "cq",
            "4 of 4 workers",
        ),
        (
            PLAN,
            Admission("q", "cq", admitted=4, outside=4),
            "backlog",
            4,
            None,
            "cq",
            "4 workers run outside Kueue: enable its pod integration for this namespace",
        ),
        (
            replace(PLAN, replicas=0, bound_by="suspended"),
            Admission("q", "cq", waiting=2),
            "suspended",
            0,
            None,
            "cq",
            "",
        ),
        (
            replace(PLAN, replicas=0, bound_by="done"),
            Admission("q", "cq", blocked="stopped"),
            "done",
            0,
            None,
            "cq",
            "",
        ),
        # Red-team finding (merge review): a cancelled run whose gated workers drain was
        # reported as bound by Kueue ("0 of 0 workers admitted").
        (
            replace(PLAN, replicas=0, bound_by="cancelled"),
            Admission("q", "cq", waiting=2),
            "cancelled",
            0,
            None,
            "cq",
            "",
        ),
    ],
    ids=[
        "no-kueue",
        "all-admitted",
        "quota-binds",
        "queue-missing",
        "scaling-down",
        "not-managed",
        "suspended",
        "done",
        "cancelled",
    ],
)
def test_kueue_binds_the_plan(  # noqa: PLR0917 - one table row
    plan: PlanResult,
    admission: Admission,
    bound: str,
    replicas: int,
    requested: int | None,
    cluster_queue: str,
    says: str,
) -> None:
    bound_plan = bind_admission(plan, admission)
    assert (bound_plan.bound_by, bound_plan.replicas, bound_plan.requested) == (
        bound,
        replicas,
        requested,
    )
    assert bound_plan.cluster_queue == cluster_queue
    assert says in bound_plan.message
    # The scaler keeps the request: gated workers are neither created again nor deleted.
    assert bound_plan.target == plan.replicas
    status = bound_plan.to_status()
    assert (status.bound_by, status.cluster_queue) == (bound, cluster_queue or None)


def _pod(**extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {
            "name": "run-worker-1",
            "uid": "u1",
            "namespace": "ns",
            "labels": {"proctor.dev/run": "run", KUEUE_QUEUE_LABEL: "q"},
        },
        "spec": {"containers": [{"name": "worker"}]},
        "status": {"phase": "Pending"},
    }
    for key, value in extra.items():
        body[key] = {**body[key], **value}
    return body


def test_a_gated_pod_is_waiting_for_kueue() -> None:
    gated = pod_state(_pod(spec={"schedulingGates": [{"name": KUEUE_ADMISSION_GATE}]}))
    assert (gated.gated, gated.lost, gated.finished, gated.node) == (True, "", False, "")
    assert (gated.queue, gated.kueue_managed) == ("q", False)
    managed = _pod(metadata={"labels": {KUEUE_QUEUE_LABEL: "q", "kueue.x-k8s.io/managed": "true"}})
    assert pod_state(managed).kueue_managed
    other_gate = pod_state(_pod(spec={"schedulingGates": [{"name": "example.com/other"}]}))
    assert not other_gate.gated
    admitted = pod_state(_pod(spec={"nodeName": "n1"}, status={"phase": "Running"}))
    assert not admitted.gated


def test_a_pod_kueue_evicted_is_a_disruption() -> None:
    evicted = pod_state(
        _pod(
            metadata={"deletionTimestamp": "2026-01-01T00:00:00Z"},
            spec={"nodeName": "n1"},
            status={
                "phase": "Running",
                "conditions": [
                    {
                        "type": "TerminationTarget",
                        "status": "True",
                        "reason": "WorkloadEvicted",
                        "message": "Preempted to accommodate a workload (UID: x) due to "
                        "prioritization in the ClusterQueue",
                    }
                ],
            },
        )
    )
    assert evicted.lost == "disruption"
    assert evicted.why.startswith("Kueue WorkloadEvicted: Preempted to accommodate")
    assert evicted.terminating
    assert not evicted.finished


@pytest.mark.parametrize(
    ("body", "info"),
    [
        (
            None,
            LocalQueueInfo(
                "",
                "LocalQueue q does not exist in the run's namespace; create it "
                "(docs/install.md) or correct spec.queueName",
            ),
        ),
        (
            {"spec": {"clusterQueue": "cq"}, "status": {"conditions": [
                {"type": "Active", "status": "True", "reason": "Ready"}]}},
            LocalQueueInfo("cq", ""),
        ),
        ({"spec": {"clusterQueue": "cq"}}, LocalQueueInfo("cq", "")),
        (
            {"spec": {"clusterQueue": "cq", "stopPolicy": "HoldAndDrain"}},
            LocalQueueInfo("cq", "LocalQueue q is stopped (HoldAndDrain)"),
        ),
        (
            {"spec": {"clusterQueue": "cq", "stopPolicy": "None"}}, LocalQueueInfo("cq", "")
        ),
        (
            {"spec": {"clusterQueue": "gone"}, "status": {"conditions": [
                {"type": "Active", "status": "False", "reason": "ClusterQueueDoesNotExist",
                 "message": "Can't submit new workloads to clusterQueue"}]}},
            LocalQueueInfo(
                "gone", "LocalQueue q is inactive: Can't submit new workloads to clusterQueue"
            ),
        ),
    ],
    ids=["missing", "active", "no-status-yet", "stopped", "stop-policy-none", "inactive"],
)  # fmt: skip
def test_local_queue_read(body: dict[str, Any] | None, info: LocalQueueInfo) -> None:
    assert local_queue_info("q", body) == info
