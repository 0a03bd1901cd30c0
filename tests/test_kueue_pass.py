"""Whole EvalRun passes with Kueue admitting the workers (``spec.queueName``): the in-memory
cluster of tests/test_evalrun_pass.py with a Kueue in it that gates every pod carrying a
queue label and admits as many as its quota holds, as Kueue's pod integration does."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from proctor.api.names import KUEUE_ADMISSION_GATE, KUEUE_MANAGED_LABEL, KUEUE_QUEUE_LABEL
from proctor.config import OperatorConfig
from tests.test_evalrun_pass import NODE, FakeCluster, World, spec


@dataclass
class FakeKueue(FakeCluster):
    """Pods with a queue label start gated; :meth:`admit` lifts gates while quota lasts."""

    quota: int = 2
    manages: bool = True  # False: the pod integration is off for the namespace
    default_queue: str = ""  # a LocalQueue named so exists: unlabelled pods go to it
    local_queues: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {"team": {"spec": {"clusterQueue": "cq"}}}
    )

    def local_queue(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.local_queues.get(name)

    def create_pod(self, manifest: Any) -> tuple[str, str]:
        if self.default_queue and KUEUE_QUEUE_LABEL not in manifest["metadata"]["labels"]:
            labels = {**manifest["metadata"]["labels"], KUEUE_QUEUE_LABEL: self.default_queue}
            manifest = {**manifest, "metadata": {**manifest["metadata"], "labels": labels}}
        name, uid = super().create_pod(manifest)
        if self.manages and KUEUE_QUEUE_LABEL in manifest["metadata"]["labels"]:
            pod = self.pods[name]
            labels = {**pod["metadata"]["labels"], KUEUE_MANAGED_LABEL: "true"}
            pod["metadata"] = {**pod["metadata"], "labels": labels}
            spec = {k: v for k, v in pod["spec"].items() if k != "nodeName"}
            pod["spec"] = {**spec, "schedulingGates": [{"name": KUEUE_ADMISSION_GATE}]}
            pod["status"] = {"phase": "Pending"}
        return name, uid

    def admitted(self) -> list[str]:
        return [n for n, p in self.pods.items() if "schedulingGates" not in p["spec"]]

    def gated(self) -> list[str]:
        return [n for n, p in self.pods.items() if "schedulingGates" in p["spec"]]

    def admit(self) -> None:
        """Kueue's scheduler: admit gated pods, oldest first, while the quota holds."""
        for name in self.gated()[: max(0, self.quota - len(self.admitted()))]:
            pod = self.pods[name]
            spec = {k: v for k, v in pod["spec"].items() if k != "schedulingGates"}
            pod["spec"] = {**spec, "nodeName": NODE.name}
            pod["status"] = {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True"}],
            }

    def preempt_admitted(self) -> str:
        """Kueue evicts an admitted worker's workload: the condition, then the deletion."""
        name = self.admitted()[0]
        pod = self.pods[name]
        pod["metadata"] = {**pod["metadata"], "deletionTimestamp": "2026-01-01T00:01:00Z"}
        pod["status"] = {
            **pod["status"],
            "conditions": [
                {
                    "type": "TerminationTarget",
                    "status": "True",
                    "reason": "WorkloadEvicted",
                    "message": "Preempted to accommodate a workload due to prioritization",
                }
            ],
        }
        return name


@pytest.fixture
def config(tmp_path: Path) -> OperatorConfig:
    return OperatorConfig.model_validate(
        {
            "defaultQueueUrl": f"sqlite:///{tmp_path}/queue.db",
            "defaultStorageUri": str(tmp_path / "results"),
        }
    )


def kueue_world(config: OperatorConfig, **extra: Any) -> tuple[World, FakeKueue]:
    cluster = FakeKueue()
    return World(cluster, spec(count=40, queueName="team", **extra), config), cluster


def plan_of(cluster: FakeCluster) -> dict[str, Any]:
    plan: dict[str, Any] = (cluster.status or {})["plan"]
    return plan


def test_the_plan_is_a_request_kueue_binds_without_churn(config: OperatorConfig) -> None:
    world, cluster = kueue_world(config)
    world.reconcile()
    assert len(cluster.created) == 4  # the request: 4 entries, one worker each
    assert all(KUEUE_QUEUE_LABEL in p["metadata"]["labels"] for p in cluster.pods.values())
    cluster.admit()
    for _ in range(4):  # passes while Kueue holds two back: nothing created or deleted
        result = world.reconcile()
        cluster.admit()
    # The two held back are queued, not missing: the ProctorWorkersNotReady alert subtracts them.
    assert (result.desired, result.ready, result.queued) == (4, 2, 2)
    assert (len(cluster.created), cluster.deleted) == (4, [])
    assert (len(cluster.admitted()), len(cluster.gated())) == (2, 2)
    plan = plan_of(cluster)
    assert (plan["boundBy"], plan["replicas"], plan["requested"]) == ("kueue", 2, 4)
    assert plan["clusterQueue"] == "cq"
    assert "2 wait for quota in ClusterQueue cq" in plan["message"]
    status = cluster.status or {}
    assert status["workers"]["desired"] == 4
    assert status["workers"]["ready"] == 2
    assert status["phase"] == "Running"


def test_when_kueue_admits_every_worker_the_plan_only_names_the_cluster_queue(
    config: OperatorConfig,
) -> None:
    world, cluster = kueue_world(config)
    cluster.quota = 10
    world.reconcile()
    cluster.admit()
    world.reconcile()
    plan = plan_of(cluster)
    assert (plan["boundBy"], plan["replicas"], plan.get("requested")) == ("max", 4, None)
    assert plan["clusterQueue"] == "cq"


@pytest.mark.parametrize("lease_out", [False, True], ids=["drained", "a-lease-out"])
def test_scale_down_removes_waiting_workers_first(config: OperatorConfig, lease_out: bool) -> None:
    world, cluster = kueue_world(config)
    world.reconcile()
    cluster.admit()
    world.reconcile()
    gated = set(cluster.gated())
    world.work(2)  # 2 entries left: the request drops to 2
    if lease_out:  # an admitted worker holds one: a gated one still holds none
        assert world.rt.queue is not None
        assert world.rt.queue.claim(1, cluster.admitted()[0])
    world.reconcile()
    assert set(cluster.deleted) == gated  # the gated ones, not the admitted workers
    assert (len(cluster.admitted()), cluster.gated()) == (2, [])


def test_a_kueue_preemption_is_a_disruption_and_the_worker_is_asked_for_again(
    config: OperatorConfig,
) -> None:
    world, cluster = kueue_world(config)
    world.reconcile()
    cluster.admit()
    world.reconcile()
    victim = cluster.preempt_admitted()
    world.reconcile()
    status = cluster.status or {}
    assert status["disruptions"] == 1
    assert status["workers"]["failures"] == 0
    assert [e.reason for e in world.events].count("WorkerDisrupted") == 1
    assert any("Kueue WorkloadEvicted" in e.message for e in world.events)
    del cluster.pods[victim]  # the worker handed its range back and exited
    world.reconcile()
    assert len(cluster.created) == 5  # one replacement, gated: it waits for the quota
    assert (len(cluster.admitted()), len(cluster.gated())) == (1, 3)
    assert (cluster.status or {})["disruptions"] == 1


def test_suspend_gives_every_worker_back_to_kueue_and_resume_asks_again(
    config: OperatorConfig,
) -> None:
    world, cluster = kueue_world(config)
    world.reconcile()
    cluster.admit()
    world.reconcile()
    world.suspend(True)
    world.reconcile()
    assert cluster.pods == {}  # admitted and gated alike: their workloads end, quota is free
    plan = plan_of(cluster)
    assert (plan["boundBy"], plan["replicas"], plan["clusterQueue"]) == ("suspended", 0, "cq")
    world.suspend(False)
    world.reconcile()
    assert len(cluster.gated()) == 4


def test_a_missing_local_queue_binds_the_plan_and_says_so(config: OperatorConfig) -> None:
    world, cluster = kueue_world(config)
    cluster.local_queues = {}
    world.reconcile()
    world.reconcile()
    plan = plan_of(cluster)
    assert (plan["boundBy"], plan["replicas"], plan["requested"]) == ("kueue", 0, 4)
    assert "LocalQueue team does not exist" in plan["message"]
    assert len(cluster.created) == 4  # asked once, not again and again


def test_a_run_without_a_queue_is_left_to_the_scheduler(config: OperatorConfig) -> None:
    cluster = FakeKueue()
    world = World(cluster, spec(count=40), config)
    world.reconcile()
    assert cluster.gated() == []
    assert not any(KUEUE_QUEUE_LABEL in p["metadata"]["labels"] for p in cluster.pods.values())
    assert "clusterQueue" not in plan_of(cluster)


def test_workers_kueue_does_not_manage_run_and_the_plan_says_why(config: OperatorConfig) -> None:
    world, cluster = kueue_world(config)
    cluster.manages = False
    world.reconcile()
    world.reconcile()
    plan = plan_of(cluster)
    assert (plan["boundBy"], plan["replicas"]) == ("max", 4)
    assert "4 workers run outside Kueue: enable its pod integration" in plan["message"]


def test_a_run_kueue_defaults_into_a_queue_reports_that_queue(config: OperatorConfig) -> None:
    cluster = FakeKueue(default_queue="default")
    cluster.local_queues = {"default": {"spec": {"clusterQueue": "shared"}}}
    world = World(cluster, spec(count=40), config)
    world.reconcile()
    cluster.admit()
    world.reconcile()
    plan = plan_of(cluster)
    assert (plan["boundBy"], plan["replicas"], plan["requested"]) == ("kueue", 2, 4)
    assert plan["clusterQueue"] == "shared"
