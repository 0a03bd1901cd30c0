"""What the operator reads from the bodies the cluster shows it (pure): nodes and the pods
bound to them as planning and scaling see them (``node_info``, ``pod_usage``,
``nodes_with_usage``), a worker pod classified (``pod_state``), and the room ResourceQuotas
leave (``quota_headroom``). The calls that fetch bodies are in :mod:`proctor.cluster.api`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from proctor.api.names import (
    ANNOTATION_HOURLY_PRICE,
    DAEMON_POD_LABEL,
    KUEUE_ADMISSION_GATE,
    KUEUE_MANAGED_LABEL,
    KUEUE_QUEUE_LABEL,
    KUEUE_TERMINATION_CONDITION,
    LABEL_RUN_UID,
    SYSTEM_NAMESPACE,
)
from proctor.api.quantity import cpu_millis, to_bytes
from proctor.api.times import parse_time
from proctor.planning.plan import GPU_RESOURCE, Capacity, NodeInfo, QuotaHeadroom, Taint
from proctor.pods import LABEL_POOL, LABEL_RUN

# Waiting reasons that mean the container will never start without a change to the spec.
IMAGE_ERRORS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)


def _get(obj: Mapping[str, Any] | None, *path: str) -> Any:
    cur: Any = obj
    for key in path:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(key)
    return cur


def _parse_time(value: str | None) -> datetime:
    return parse_time(value) or datetime.now(UTC)


def _capacity(resources: Mapping[str, Any] | None, pods: int = 0) -> Capacity:
    res = resources or {}
    return Capacity(
        cpu_millis=cpu_millis(str(res["cpu"])) if res.get("cpu") else 0,
        memory=to_bytes(str(res["memory"])) if res.get("memory") else 0,
        gpus=int(str(res.get(GPU_RESOURCE, 0))),
        pods=pods,
    )


def node_info(body: Mapping[str, Any]) -> NodeInfo:
    """A node as planning sees it (``requested`` is filled in later from the pod index)."""
    alloc = _get(body, "status", "allocatable") or {}
    conditions = _get(body, "status", "conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    taints = tuple(
        Taint(key=t.get("key", ""), effect=t.get("effect", ""), value=t.get("value") or "")
        for t in _get(body, "spec", "taints") or []
    )
    return NodeInfo(
        name=str(_get(body, "metadata", "name")),
        allocatable=_capacity(alloc, pods=int(str(alloc.get("pods", 110)))),
        labels=dict(_get(body, "metadata", "labels") or {}),
        taints=taints,
        ready=ready,
        unschedulable=bool(_get(body, "spec", "unschedulable")),
        hourly_price=hourly_price_of(_get(body, "metadata", "annotations") or {}),
    )


def hourly_price_of(annotations: Mapping[str, Any]) -> float | None:
    """A node's own hourly price (annotation ``proctor.dev/hourly-price``); None when it has
    none or it is not a non-negative decimal (then the price table applies)."""
    raw = annotations.get(ANNOTATION_HOURLY_PRICE)
    try:
        price = float(str(raw).strip()) if raw is not None else None
    except ValueError:
        return None
    return price if price is not None and 0 <= price < float("inf") else None


@dataclass(frozen=True)
class PodUsage:
    """Requests of one non-terminated pod bound to a node; ``agent``: a node agent (a
    DaemonSet's pod, or any pod in kube-system), which an exclusive worker does not mind."""

    uid: str
    run_uid: str
    requests: Capacity
    agent: bool = False


def is_node_agent(namespace: str, labels: Mapping[str, str]) -> bool:
    """What an exclusive worker's anti-affinity (:func:`proctor.pods.exclusive_affinity`)
    lets share its node: DaemonSet pods (by the label their controller sets) and kube-system."""
    return DAEMON_POD_LABEL in labels or namespace == SYSTEM_NAMESPACE


def pod_usage(body: Mapping[str, Any]) -> tuple[str, PodUsage] | None:
    """(node name, usage) for a pod that holds resources on a node; None otherwise."""
    node = _get(body, "spec", "nodeName")
    if not node or _get(body, "status", "phase") in {"Succeeded", "Failed"}:
        return None
    total = Capacity()
    for container in _get(body, "spec", "containers") or []:
        req = _capacity(_get(container, "resources", "requests"))
        total = Capacity(
            total.cpu_millis + req.cpu_millis, total.memory + req.memory, total.gpus + req.gpus
        )
    labels = _get(body, "metadata", "labels") or {}
    usage = Capacity(total.cpu_millis, total.memory, total.gpus, 1)
    agent = is_node_agent(str(_get(body, "metadata", "namespace") or ""), labels)
    return str(node), PodUsage(
        str(_get(body, "metadata", "uid")), labels.get(LABEL_RUN_UID, ""), usage, agent
    )


def usage_by_node(pods: Iterable[Mapping[str, Any]]) -> dict[str, list[PodUsage]]:
    """The pods that hold resources, by node: what the operator's usage index holds, from a
    list of pod bodies."""
    out: dict[str, list[PodUsage]] = {}
    for body in pods:
        found = pod_usage(body)
        if found is not None:
            out.setdefault(found[0], []).append(found[1])
    return out


def nodes_with_usage(
    nodes: Iterable[NodeInfo], usage: Mapping[str, Iterable[PodUsage]], run_uid: str
) -> list[NodeInfo]:
    """Nodes with ``requested`` = requests of their pods and ``neighbours`` = those pods that
    are not node agents, this run's workers excluded."""
    out = []
    for node in nodes:
        cpu = mem = gpus = pods = neighbours = 0
        for u in usage.get(node.name, ()):
            if u.run_uid == run_uid:
                continue
            cpu += u.requests.cpu_millis
            mem += u.requests.memory
            gpus += u.requests.gpus
            pods += u.requests.pods
            neighbours += 0 if u.agent else 1
        out.append(replace(node, requested=Capacity(cpu, mem, gpus, pods), neighbours=neighbours))
    return out


@dataclass(frozen=True)
class PodState:
    """A worker pod of a run (or a benchmark pod of a suite) as last seen, classified.

    ``lost`` is "disruption" (preempted, evicted, node gone: replaced, not charged) or
    "failure" (crash, OOM, image error: charged to the failure budget) once the pod is gone for
    good; empty while it lives or after it exited cleanly.
    """

    name: str
    uid: str
    run: str
    namespace: str
    created: datetime
    node: str
    phase: str
    ready: bool
    terminating: bool
    finished: bool
    lost: str = ""
    why: str = ""
    requests: Capacity = field(default_factory=Capacity)
    pool: str = ""  # the node pool it was created for (label proctor.dev/pool)
    gated: bool = False  # Kueue has not admitted it yet (its admission gate is on)
    queue: str = ""  # the Kueue LocalQueue it was handed to (label kueue.x-k8s.io/queue-name)
    kueue_managed: bool = False  # Kueue's webhook took charge of it (label kueue.x-k8s.io/managed)


def pod_state(body: Mapping[str, Any]) -> PodState:
    """Classify a worker pod (pure)."""
    status = body.get("status") or {}
    meta = body.get("metadata") or {}
    phase = status.get("phase") or "Pending"
    conditions = status.get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    disrupted = _condition(conditions, "DisruptionTarget")
    evicted = _condition(conditions, KUEUE_TERMINATION_CONDITION)
    lost, why = "", ""
    if disrupted is not None:
        lost, why = "disruption", disrupted.get("reason") or "DisruptionTarget"
    elif evicted is not None:
        # Kueue evicted the pod's workload (preempted, or its queue was drained): a
        # disruption like a spot reclaim. A pod the operator deleted itself is never counted.
        reason = evicted.get("reason") or KUEUE_TERMINATION_CONDITION
        lost, why = "disruption", f"Kueue {reason}: {evicted.get('message') or ''}"[:300]
    elif status.get("reason") in {"Evicted", "Preempting", "NodeLost", "Terminated", "Shutdown"}:
        lost, why = "disruption", str(status["reason"])
    else:
        for cs in status.get("containerStatuses") or []:
            waiting = _get(cs, "state", "waiting") or {}
            term = _get(cs, "state", "terminated") or {}
            if waiting.get("reason") in IMAGE_ERRORS:
                lost, why = "failure", f"{waiting['reason']}: {waiting.get('message', '')}"
            elif term and term.get("reason") == "OOMKilled":
                lost, why = "failure", "OOMKilled"
            elif term and int(term.get("exitCode") or 0) != 0:
                lost, why = "failure", f"exit code {term.get('exitCode')} ({term.get('reason')})"
        if not lost and phase == "Failed":
            lost, why = "failure", str(status.get("reason") or status.get("message") or "Failed")
    usage = pod_usage({**body, "status": {"phase": "Running"}})
    return PodState(
        name=str(meta.get("name")),
        uid=str(meta.get("uid")),
        run=str((meta.get("labels") or {}).get(LABEL_RUN, "")),
        namespace=str(meta.get("namespace")),
        created=_parse_time(meta.get("creationTimestamp")),
        node=str(_get(body, "spec", "nodeName") or ""),
        phase=phase,
        ready=ready and phase == "Running",
        terminating=bool(meta.get("deletionTimestamp")),
        finished=phase in {"Succeeded", "Failed"} or lost == "failure",
        lost=lost,
        why=why,
        requests=usage[1].requests if usage else Capacity(),
        pool=str((meta.get("labels") or {}).get(LABEL_POOL, "")),
        queue=str((meta.get("labels") or {}).get(KUEUE_QUEUE_LABEL, "")),
        kueue_managed=(meta.get("labels") or {}).get(KUEUE_MANAGED_LABEL) == "true",
        gated=any(
            g.get("name") == KUEUE_ADMISSION_GATE
            for g in _get(body, "spec", "schedulingGates") or []
        ),
    )


def _condition(conditions: Iterable[Mapping[str, Any]], type_: str) -> Mapping[str, Any] | None:
    return next(
        (c for c in conditions if c.get("type") == type_ and c.get("status") == "True"), None
    )


_QUOTA_KEYS = {
    "cpu": ("requests.cpu", "cpu"),
    "memory": ("requests.memory", "memory"),
    "gpus": (f"requests.{GPU_RESOURCE}",),
    "pods": ("pods",),
}


def quota_headroom(quotas: Iterable[Mapping[str, Any]], own: Iterable[Capacity]) -> QuotaHeadroom:
    """What every ResourceQuota of the namespace still allows, the run's own workers added
    back (they are part of what the plan counts)."""
    mine = list(own)
    own_total = {
        "cpu": sum(c.cpu_millis for c in mine),
        "memory": sum(c.memory for c in mine),
        "gpus": sum(c.gpus for c in mine),
        "pods": len(mine),
    }
    parse: dict[str, Callable[[str], int]] = {
        "cpu": cpu_millis,
        "memory": to_bytes,
        "gpus": int,
        "pods": int,
    }
    room: dict[str, int | None] = dict.fromkeys(_QUOTA_KEYS)
    for quota in quotas:
        hard = _get(quota, "status", "hard") or _get(quota, "spec", "hard") or {}
        used = _get(quota, "status", "used") or {}
        for what, keys in _QUOTA_KEYS.items():
            for key in keys:
                if key not in hard:
                    continue
                free = parse[what](str(hard[key])) - parse[what](str(used.get(key, "0")))
                free += own_total[what]
                current = room[what]
                room[what] = free if current is None else min(current, free)
    return QuotaHeadroom(room["cpu"], room["memory"], room["gpus"], room["pods"])


@dataclass(frozen=True)
class LocalQueueInfo:
    """A Kueue LocalQueue as the plan reports it: its ClusterQueue, and why it admits
    nothing (``""`` when it may admit)."""

    cluster_queue: str = ""
    blocked: str = ""


def local_queue_info(name: str, body: Mapping[str, Any] | None) -> LocalQueueInfo:
    """Read a LocalQueue body (None: it does not exist), pure."""
    if body is None:
        return LocalQueueInfo(
            blocked=f"LocalQueue {name} does not exist in the run's namespace; create it "
            "(docs/install.md) or correct spec.queueName"
        )
    cluster_queue = str(_get(body, "spec", "clusterQueue") or "")
    stop = str(_get(body, "spec", "stopPolicy") or "None")
    if stop != "None":
        return LocalQueueInfo(cluster_queue, f"LocalQueue {name} is stopped ({stop})")
    for cond in _get(body, "status", "conditions") or []:
        if cond.get("type") == "Active" and cond.get("status") != "True":
            why = cond.get("message") or cond.get("reason") or "not active"
            return LocalQueueInfo(cluster_queue, f"LocalQueue {name} is inactive: {why}")
    return LocalQueueInfo(cluster_queue)
