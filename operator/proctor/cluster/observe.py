"""What the operator sees in the cluster, and the only code that writes to the Kubernetes API.

Parsing of pod and node bodies into planning/scaling facts is pure (``node_info``,
``worker_obs``, ``pod_usage``, ``quota_headroom``); :class:`ClusterApi` wraps the few calls the
operator makes (read Secrets and ResourceQuotas, create and delete pods, patch status, delete a
run) so that every side effect lives here.
"""

from __future__ import annotations

import base64
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from proctor.api.conditions import Event
from proctor.api.quantity import cpu_millis, to_bytes
from proctor.cluster.client import KubeApi, KubeApiError, core_path, custom_path
from proctor.planning.plan import GPU_RESOURCE, Capacity, NodeInfo, QuotaHeadroom, Taint
from proctor.pods import LABEL_POOL, LABEL_RUN
from proctor.redact import redact_text, redact_value, remember_secret_data

log = structlog.get_logger("proctor.operator")

GROUP = "proctor.dev"
VERSION = "v1alpha1"
PLURAL = "evalruns"

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
    if not value:
        return datetime.now(UTC)
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


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
    )


@dataclass(frozen=True)
class PodUsage:
    """Requests of one non-terminated pod bound to a node."""

    uid: str
    run_uid: str
    requests: Capacity


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
    return str(node), PodUsage(
        str(_get(body, "metadata", "uid")), labels.get("proctor.dev/run-uid", ""), usage
    )


def nodes_with_usage(
    nodes: Iterable[NodeInfo], usage: Mapping[str, Iterable[PodUsage]], run_uid: str
) -> list[NodeInfo]:
    """Nodes with ``requested`` = requests of their pods, this run's workers excluded."""
    out = []
    for node in nodes:
        cpu = mem = gpus = pods = 0
        for u in usage.get(node.name, ()):
            if u.run_uid == run_uid:
                continue
            cpu += u.requests.cpu_millis
            mem += u.requests.memory
            gpus += u.requests.gpus
            pods += u.requests.pods
        out.append(
            NodeInfo(
                node.name,
                node.allocatable,
                Capacity(cpu, mem, gpus, pods),
                node.labels,
                node.taints,
                node.ready,
                node.unschedulable,
            )
        )
    return out


@dataclass(frozen=True)
class WorkerObs:
    """One worker pod of a run, classified.

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


def worker_obs(body: Mapping[str, Any]) -> WorkerObs:
    """Classify a worker pod (pure)."""
    status = body.get("status") or {}
    meta = body.get("metadata") or {}
    phase = status.get("phase") or "Pending"
    conditions = status.get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    disrupted = next(
        (
            c
            for c in conditions
            if c.get("type") == "DisruptionTarget" and c.get("status") == "True"
        ),
        None,
    )
    lost, why = "", ""
    if disrupted is not None:
        lost, why = "disruption", disrupted.get("reason") or "DisruptionTarget"
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
    return WorkerObs(
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


QUOTA_MAX_AGE_SECONDS = 1.0
"""ResourceQuotas are listed at most this often per namespace; every run of the namespace shares
the list. A plan made from a list this old may ask for a pod the quota no longer allows: the API
server refuses it (:class:`QuotaExceeded`) and the next pass plans again."""

SECRET_MAX_AGE_SECONDS = 30.0
"""A Secret that was found is read again after this long; one that was missing is looked for on
every read. Runs of a namespace usually share their queue and storage Secrets."""


class QuotaExceeded(Exception):  # noqa: N818 - a refusal, not a failure of the operator
    """The API server refused a pod because a ResourceQuota is used up."""


class ClusterApi:
    """The operator's writes and the reads that are not served by an index."""

    plural = PLURAL

    def __init__(self, kube: KubeApi) -> None:
        self.kube = kube
        self._lock = threading.Lock()
        self._quotas: dict[str, tuple[float, list[dict[str, Any]]]] = {}
        self._listing: dict[str, threading.Lock] = {}
        self._secrets: dict[tuple[str, str], tuple[float, dict[str, str]]] = {}
        self._events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._poster: threading.Thread | None = None

    def close(self) -> None:
        self.flush_events()
        self._events.put(None)
        self.kube.close()

    def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        """The Secret's data, decoded; None when it does not exist."""
        with self._lock:
            cached = self._secrets.get((namespace, name))
        if cached is not None and time.monotonic() - cached[0] < SECRET_MAX_AGE_SECONDS:
            return dict(cached[1])
        at = time.monotonic()
        secret = self.kube.get(core_path(namespace, "secrets", name))
        if secret is None:
            with self._lock:
                self._secrets.pop((namespace, name), None)
            return None
        data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
        remember_secret_data(data)  # so no error, log, Event or status can quote it
        with self._lock:
            self._secrets[(namespace, name)] = (at, data)
        return dict(data)

    def quotas(self, namespace: str) -> list[dict[str, Any]]:
        with self._lock:
            cached = self._quotas.get(namespace)
            listing = self._listing.setdefault(namespace, threading.Lock())
        if cached is not None and time.monotonic() - cached[0] < QUOTA_MAX_AGE_SECONDS:
            return cached[1]
        # One list at a time per namespace. A pass that finds the list stale while another
        # is reading it plans from the stale one rather than wait; only the first list of a
        # namespace is waited for.
        if cached is not None and not listing.acquire(blocking=False):
            return cached[1]
        if cached is None:
            listing.acquire()
        try:
            with self._lock:
                cached = self._quotas.get(namespace)
            if cached is not None and time.monotonic() - cached[0] < QUOTA_MAX_AGE_SECONDS:
                return cached[1]
            out = self.kube.list(core_path(namespace, "resourcequotas"))
            with self._lock:
                self._quotas[namespace] = (time.monotonic(), out)
            return out
        finally:
            listing.release()

    def create_pod(self, manifest: Mapping[str, Any]) -> tuple[str, str]:
        """Create a pod; returns its name and uid. Raises :class:`QuotaExceeded` when a
        ResourceQuota refuses it."""
        namespace = manifest["metadata"]["namespace"]
        try:
            created = self.kube.create(core_path(namespace, "pods"), manifest)
        except KubeApiError as exc:
            if exc.status == 403 and "exceeded quota" in exc.body:
                with self._lock:
                    self._quotas.pop(namespace, None)
                raise QuotaExceeded(exc.message) from exc
            raise
        return str(created["metadata"]["name"]), str(created["metadata"]["uid"])

    def delete_pod(self, namespace: str, name: str) -> None:
        self.kube.delete(core_path(namespace, "pods", name))

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        path = custom_path(GROUP, VERSION, namespace, self.plural, name) + "/status"
        self.kube.merge_patch(path, {"status": redact_value(dict(status))})

    def delete_run(self, namespace: str, name: str) -> None:
        self.kube.delete(custom_path(GROUP, VERSION, namespace, self.plural, name))

    def post_event(self, involved: Mapping[str, Any], event: Event) -> None:
        """Post a core/v1 Event about ``involved`` (a body with apiVersion, kind and
        metadata) from a thread of its own, in order: a pass does not wait for it. An Event
        that cannot be posted is logged, never fails the caller."""
        self._events.put(event_object(involved, event))
        with self._lock:
            if self._poster is None:
                self._poster = threading.Thread(
                    target=self._post_events, name="proctor-events", daemon=True
                )
                self._poster.start()

    def _post_events(self) -> None:
        while True:
            obj = self._events.get()
            if obj is None:
                return
            try:
                self.kube.create(core_path(str(obj["metadata"]["namespace"]), "events"), obj)
            except Exception as exc:
                log.warning(
                    "event not posted",
                    object=obj["involvedObject"]["name"],
                    reason=obj["reason"],
                    error=str(exc),
                )
            finally:
                self._events.task_done()

    def flush_events(self, timeout: float = 5.0) -> None:
        """Wait up to ``timeout`` seconds for the Events queued so far to be posted."""
        deadline = time.monotonic() + timeout
        while self._events.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)


EVENT_COMPONENT = "proctor-operator"
EVENT_MESSAGE_MAX = 1024


def event_object(
    involved: Mapping[str, Any], event: Event, now: datetime | None = None
) -> dict[str, Any]:
    """A core/v1 Event about ``involved`` (pure)."""
    meta = involved.get("metadata") or {}
    at = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "generateName": f"{meta.get('name')}.",
            "namespace": meta.get("namespace"),
        },
        "involvedObject": {
            "apiVersion": involved.get("apiVersion"),
            "kind": involved.get("kind"),
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
        },
        "type": event.type,
        "reason": event.reason,
        "message": redact_text(event.message)[:EVENT_MESSAGE_MAX],
        "source": {"component": EVENT_COMPONENT},
        "reportingComponent": EVENT_COMPONENT,
        "reportingInstance": EVENT_COMPONENT,
        "firstTimestamp": at,
        "lastTimestamp": at,
        "count": 1,
    }


def _with_removals(before: Any, after: Any) -> Any:
    """``after``, with null for each key of ``before`` it lacks, at every depth: a merge
    patch merges objects, so a key dropped from a nested object must be nulled to go."""
    if not isinstance(before, Mapping) or not isinstance(after, Mapping):
        return after
    out = {k: _with_removals(before.get(k), v) for k, v in after.items()}
    out.update({k: None for k in before if k not in after})
    return out


def status_patch(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """A merge patch that turns ``old`` into ``new`` (removed keys become null, nested ones
    too); empty when nothing changed, so an unchanged status is never written."""
    before = dict(old or {})
    patch: dict[str, Any] = {}
    for key, value in new.items():
        if before.get(key) != value:
            patch[key] = _with_removals(before.get(key), value)
    for key in before:
        if key not in new and key != "kopf":
            patch[key] = None
    return patch
