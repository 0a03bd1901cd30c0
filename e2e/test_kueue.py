"""EvalRuns admitted by Kueue, end to end: the real control plane, Kueue built from its Go
module (e2e/build-kueue) with its webhooks served on loopback, kwok nodes, worker pods run
by the pod runner, Redis and moto.

A ClusterQueue holds quota for two workers. A run that asks for four through its LocalQueue
runs two, keeps two waiting (gated, never created again) and says so in ``status.plan``; a
higher-priority workload preempts one worker, which the run counts as a disruption and
replaces, losing and repeating no case; at the end Kueue holds no quota for it. A run
without ``queueName`` on the same cluster is left to the scheduler, as before."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from e2e.conftest import Cluster
from e2e.harness import kueue as kueue_harness
from e2e.harness.poll import wait_until
from e2e.test_operator import Env, _dump, _local_summary, assert_each_case_once

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

__all__ = ["env"]
from e2e.test_operator import env  # noqa: E402  (the fixture)

GROUP, VERSION = kueue_harness.GROUP, kueue_harness.VERSION
SAMPLE = Path(__file__).resolve().parent.parent / "manifests" / "samples" / "kueue" / "queues.yaml"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
GATE = "kueue.x-k8s.io/admission"


@pytest.fixture(scope="module")
def kueue(cluster: Cluster) -> Iterator[kueue_harness.Kueue]:
    """Kueue running against the session's cluster for this module's tests."""
    kueue_harness.build()
    with kueue_harness.running_kueue(cluster.state, cluster.api_client) as running:
        yield running


class Queues:
    """The objects of manifests/samples/kueue/queues.yaml under the test's own names: a
    ResourceFlavor, a ClusterQueue with quota for ``workers`` small workers (1 CPU, 1Gi
    each) that preempts lower priorities, the LocalQueue ``team`` in the test's namespace,
    and a WorkloadPriorityClass."""

    def __init__(self, env: Env, workers: int) -> None:
        self.custom = client.CustomObjectsApi(env.cluster.api_client)
        suffix = uuid.uuid4().hex[:6]
        self.flavor, self.cluster_queue = f"flavor-{suffix}", f"cq-{suffix}"
        self.priority = f"high-{suffix}"
        self._cluster_scoped: list[tuple[str, str]] = []
        docs = {d["kind"]: d for d in yaml.safe_load_all(SAMPLE.read_text()) if d}
        flavor, cq = docs["ResourceFlavor"], docs["ClusterQueue"]
        flavor["metadata"]["name"] = self.flavor
        cq["metadata"]["name"] = self.cluster_queue
        cq["spec"]["namespaceSelector"]["matchLabels"] = {
            "kubernetes.io/metadata.name": env.namespace
        }
        group = cq["spec"]["resourceGroups"][0]["flavors"][0]
        group["name"] = self.flavor
        group["resources"] = [
            {"name": "cpu", "nominalQuota": str(workers)},
            {"name": "memory", "nominalQuota": f"{workers}Gi"},
        ]
        docs["WorkloadPriorityClass"]["metadata"]["name"] = self.priority
        for kind, plural in [("ResourceFlavor", "resourceflavors"),
                             ("ClusterQueue", "clusterqueues"),
                             ("WorkloadPriorityClass", "workloadpriorityclasses")]:  # fmt: skip
            self.custom.create_cluster_custom_object(GROUP, VERSION, plural, docs[kind])
            self._cluster_scoped.append((plural, docs[kind]["metadata"]["name"]))
        local = docs["LocalQueue"]
        local["metadata"] = {"name": "team"}
        local["spec"]["clusterQueue"] = self.cluster_queue
        self.custom.create_namespaced_custom_object(
            GROUP, VERSION, env.namespace, "localqueues", local
        )

    def usage(self) -> dict[str, Any]:
        got: dict[str, Any] = self.custom.get_cluster_custom_object(
            GROUP, VERSION, "clusterqueues", self.cluster_queue
        )
        return dict(got.get("status") or {})

    def free(self) -> dict[str, Any] | None:
        """The ClusterQueue's status once it reserves nothing for anyone."""
        status = self.usage()
        used = [r.get("total", "0") for f in status.get("flavorsReservation") or []
                for r in f.get("resources") or []]  # fmt: skip
        idle = not status.get("reservingWorkloads") and not status.get("admittedWorkloads")
        return status if idle and all(u in {"0", 0} for u in used) else None

    def delete(self) -> None:
        for plural, name in reversed(self._cluster_scoped):
            try:
                self.custom.delete_cluster_custom_object(GROUP, VERSION, plural, name)
            except ApiException as exc:
                if exc.status != 404:
                    raise


def _gated(pod: Any) -> bool:
    return any(g.name == GATE for g in pod.spec.scheduling_gates or [])


def _bound_by_kueue(env: Env, name: str, queues: Queues) -> dict[str, Any] | None:
    status = env.status(name)
    plan = status.get("plan") or {}
    pods = env.workers(name)
    admitted = [p for p in pods if not _gated(p)]
    if (plan.get("boundBy"), plan.get("replicas"), plan.get("requested")) != ("kueue", 2, 4):
        return None
    if plan.get("clusterQueue") != queues.cluster_queue or len(admitted) != 2 or len(pods) != 4:
        return None
    return status


def _intruder(env: Env, queues: Queues) -> dict[str, Any]:
    """A plain pod of higher priority in the same LocalQueue, run for a few seconds by the
    pod runner: Kueue has to preempt one of the run's workers to admit it."""
    return {
        "metadata": {
            "name": "intruder",
            "labels": {QUEUE_LABEL: "team", "kueue.x-k8s.io/priority-class": queues.priority,
                       "e2e.proctor.dev/run": "local"},
        },
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": {"e2e.proctor.dev/pool": env.pool},
            "containers": [{"name": "main", "image": "busybox", "command": ["sleep", "6"],
                            "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}],
        },
    }  # fmt: skip


def test_kueue_admits_two_preempts_one_and_the_run_loses_nothing(
    env: Env, kueue: kueue_harness.Kueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    env.node(cpu="8", memory="16Gi")
    queues = Queues(env, workers=2)
    doc = env.evalrun("admitted", count=20000, queueName="team")
    doc["spec"]["workers"] = {"max": 4}
    try:
        with env.operator() as op:
            created = env.create(doc)
            try:
                status = wait_until(
                    lambda: _bound_by_kueue(env, "admitted", queues), 60, "plan bound by kueue"
                )
                # The waiting workers are asked for once: no new pod, none deleted, for a while.
                asked = {p.metadata.uid for p in env.workers("admitted")}
                time.sleep(4)
                assert {p.metadata.uid for p in env.workers("admitted")} == asked
                wait_until(
                    lambda: (env.status("admitted").get("counts") or {}).get("completed", 0),
                    90, "first results", interval=0.3,
                )  # fmt: skip
                env.cluster.core.create_namespaced_pod(env.namespace, _intruder(env, queues))
                wait_until(
                    lambda: env.status("admitted").get("disruptions", 0) >= 1, 60,
                    "the preemption counted as a disruption",
                )  # fmt: skip
                status = env.wait_phase("admitted", "Succeeded", timeout=240)
            except (TimeoutError, AssertionError) as exc:
                raise AssertionError(f"{exc}{_dump(op)}\n--- kueue ---\n"
                                     f"{kueue.output()[-4000:]}") from exc  # fmt: skip
            free = wait_until(queues.free, 60, "the ClusterQueue's quota free again")
        assert status["counts"]["completed"] == 20000
        assert status["workers"]["failures"] == 0
        assert status["disruptions"] >= 1
        disrupted = [e for e in env.events("admitted") if e.reason == "WorkerDisrupted"]
        assert any("Kueue WorkloadEvicted" in e.message for e in disrupted), disrupted
        assert free.get("pendingWorkloads", 0) == 0
        assert_each_case_once(env.run_storage(created["metadata"]["uid"], monkeypatch), 20000)
        local = _local_summary(doc, env.workdir)
        assert status["result"]["decision"] == local["decision"]
        assert status["result"]["candidatePassRate"] == pytest.approx(local["candidatePassRate"])
    finally:
        queues.delete()


def test_a_run_without_queue_name_is_not_kueues(env: Env, kueue: kueue_harness.Kueue) -> None:
    env.node(cpu="4", memory="8Gi")
    queues = Queues(env, workers=1)  # a LocalQueue in the namespace, which the run ignores
    try:
        with env.operator() as op:
            env.create(env.evalrun("plain"))
            try:
                pods = wait_until(lambda: env.workers("plain"), 30, "a worker pod")
                status = env.wait_phase("plain", "Succeeded", timeout=180)
            except TimeoutError as exc:
                raise AssertionError(str(exc) + _dump(op)) from exc
        assert not any(QUEUE_LABEL in (p.metadata.labels or {}) for p in pods)
        assert not any(_gated(p) for p in pods)
        assert status["counts"]["completed"] == 2000
        assert "clusterQueue" not in status["plan"]
        assert queues.usage().get("admittedWorkloads", 0) == 0
    finally:
        queues.delete()
