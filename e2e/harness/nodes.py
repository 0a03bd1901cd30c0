"""kwok nodes with real capacity, labels and taints, and spot preemption.

The nodes are API objects that kwok keeps Ready (heartbeats, leases); the
real scheduler places pods on them by their allocatable resources, labels
and taints.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
GPU = "nvidia.com/gpu"

# The capacity-type labels that Karpenter, EKS managed node groups and GKE
# put on nodes; Proctor's placement reads them to tell spot from on-demand.
SPOT_LABELS = {
    "karpenter.sh/capacity-type": "spot",
    "eks.amazonaws.com/capacityType": "SPOT",
    "cloud.google.com/gke-spot": "true",
}
ON_DEMAND_LABELS = {
    "karpenter.sh/capacity-type": "on-demand",
    "eks.amazonaws.com/capacityType": "ON_DEMAND",
}

# What a spot reclaim looks like to the cluster: Karpenter's disruption taint,
# then the kubelet's graceful node shutdown marking each pod.
PREEMPT_TAINT = {"key": "karpenter.sh/disrupted", "effect": "NoSchedule"}
DISRUPTION_REASON = "TerminationByKubelet"
DISRUPTION_MESSAGE = "Pod was terminated in response to imminent node shutdown."


class NodeError(RuntimeError):
    """A node did not reach the expected state in time."""


def create_node(
    api: client.CoreV1Api,
    name: str,
    *,
    cpu: str = "8",
    memory: str = "32Gi",
    pods: int = 110,
    gpus: int = 0,
    labels: Mapping[str, str] | None = None,
    taints: Iterable[Mapping[str, str]] = (),
    spot: bool = False,
    zone: str = "us-east-1a",
    instance_type: str = "m5.2xlarge",
    wait: bool = True,
    timeout: float = 30.0,
) -> Any:
    """Create a kwok node and (by default) wait until it is Ready and schedulable.

    `taints` are dicts with key, effect and optionally value, as in the API.
    """
    resources = {"cpu": cpu, "memory": memory, "pods": str(pods), "ephemeral-storage": "100Gi"}
    if gpus:
        resources[GPU] = str(gpus)
    all_labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
        "topology.kubernetes.io/zone": zone,
        "topology.kubernetes.io/region": zone.rstrip("abcdefghijklmnopqrstuvwxyz"),
        "node.kubernetes.io/instance-type": instance_type,
        **(SPOT_LABELS if spot else ON_DEMAND_LABELS),
        **(labels or {}),
    }
    body = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": all_labels,
            "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {"taints": [dict(t) for t in taints]},
        # The kubelet reports capacity in status at registration; kwok keeps it.
        "status": {"capacity": resources, "allocatable": resources},
    }
    node = api.create_node(body)
    if wait:
        node = wait_node_ready(api, name, timeout)
    return node


def wait_node_ready(api: client.CoreV1Api, name: str, timeout: float = 30.0) -> Any:
    """Wait for Ready=True and for the node lifecycle controller's not-ready taint to go."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        node = api.read_node(name)
        ready = any(
            c.type == "Ready" and c.status == "True" for c in (node.status.conditions or [])
        )
        lifecycle_taints = [
            t
            for t in node.spec.taints or []
            if t.key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")
        ]
        if ready and not lifecycle_taints:
            return node
        time.sleep(0.2)
    raise NodeError(f"node {name} not Ready within {timeout:.0f}s")


def pods_on_node(api: client.CoreV1Api, name: str) -> list[Any]:
    return list(api.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={name}").items)


def _raw(response: Any) -> dict[str, Any]:
    # Raw JSON keeps the API's field names (camelCase), ready to patch back.
    return dict(json.loads(response.data))


def _merge_patch(call: Any, *args: Any) -> bool:
    """Apply a merge patch; False on a resourceVersion conflict (caller retries)."""
    try:
        call(*args, _content_type="application/merge-patch+json")
    except ApiException as err:
        if err.status == 409:
            return False
        raise
    return True


def _add_taint(api: client.CoreV1Api, name: str, taint: Mapping[str, str]) -> None:
    for _ in range(10):
        node = _raw(api.read_node(name, _preload_content=False))
        taints = list(node["spec"].get("taints") or [])
        if any(t["key"] == taint["key"] for t in taints):
            return
        taints.append(dict(taint))
        rv = node["metadata"]["resourceVersion"]
        body = {"metadata": {"resourceVersion": rv}, "spec": {"taints": taints}}
        if _merge_patch(api.patch_node, name, body):
            return
    raise NodeError(f"could not taint node {name}: too many conflicts")


def mark_disruption_target(api: client.CoreV1Api, pod: Any) -> None:
    """Add the DisruptionTarget condition, as the kubelet does before a graceful shutdown."""
    name, ns = pod.metadata.name, pod.metadata.namespace
    for _ in range(10):
        try:
            live = _raw(api.read_namespaced_pod_status(name, ns, _preload_content=False))
        except ApiException as err:
            if err.status == 404:
                return
            raise
        status = live.get("status") or {}
        conditions = [c for c in status.get("conditions") or [] if c["type"] != "DisruptionTarget"]
        conditions.append(
            {
                "type": "DisruptionTarget",
                "status": "True",
                "reason": DISRUPTION_REASON,
                "message": DISRUPTION_MESSAGE,
                "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        )
        rv = live["metadata"]["resourceVersion"]
        body = {"metadata": {"resourceVersion": rv}, "status": {"conditions": conditions}}
        try:
            if _merge_patch(api.patch_namespaced_pod_status, name, ns, body):
                return
        except ApiException as err:
            if err.status == 404:
                return
            raise
    raise NodeError(f"could not mark pod {ns}/{name}: too many conflicts")


def preempt_node(
    api: client.CoreV1Api,
    name: str,
    grace_period_seconds: int | None = None,
    *,
    taint: Mapping[str, str] = PREEMPT_TAINT,
    delete_node: bool = True,
    timeout: float = 120.0,
) -> list[Any]:
    """Reclaim a node the way a spot interruption looks to the cluster.

    Taints the node so nothing new lands there, marks each of its pods with
    the DisruptionTarget condition, deletes them with their grace period (or
    `grace_period_seconds`), waits until they are gone, then deletes the
    node. Returns the pods that were on it.
    """
    _add_taint(api, name, taint)
    victims = [p for p in pods_on_node(api, name) if p.metadata.deletion_timestamp is None]
    for pod in victims:
        mark_disruption_target(api, pod)
    for pod in victims:
        try:
            api.delete_namespaced_pod(
                pod.metadata.name,
                pod.metadata.namespace,
                grace_period_seconds=grace_period_seconds,
            )
        except ApiException as err:
            if err.status != 404:
                raise
    deadline = time.monotonic() + timeout
    uids = {p.metadata.uid for p in victims}
    while time.monotonic() < deadline:
        if not uids & {p.metadata.uid for p in pods_on_node(api, name)}:
            break
        time.sleep(0.2)
    else:
        raise NodeError(f"pods on node {name} not gone within {timeout:.0f}s")
    if delete_node:
        try:
            api.delete_node(name)
        except ApiException as err:
            if err.status != 404:
                raise
    return victims


def delete_node(api: client.CoreV1Api, name: str) -> None:
    try:
        api.delete_node(name)
    except ApiException as err:
        if err.status != 404:
            raise
