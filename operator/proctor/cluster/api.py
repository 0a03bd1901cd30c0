"""The only code that talks to the Kubernetes API for the operator: :class:`ClusterApi` wraps
the few calls it makes, reads (Secrets, ResourceQuotas, Kueue LocalQueues) and writes (create
and delete pods, patch status, delete a run, post Events), so that every side effect lives
here. What the bodies mean is read in :mod:`proctor.cluster.reads`; what is written is shaped
in :mod:`proctor.cluster.writes`.
"""

from __future__ import annotations

import base64
import queue
import threading
import time
from collections.abc import Mapping
from typing import Any

import structlog

from proctor.api.conditions import Event
from proctor.api.names import GROUP, KUEUE_GROUP, KUEUE_VERSION, VERSION
from proctor.api.v1alpha1 import EVALRUN_PLURAL
from proctor.cluster.client import KubeApi, KubeApiError, core_path, custom_path
from proctor.cluster.writes import event_object
from proctor.redact import redact_value, remember_secret_data

log = structlog.get_logger("proctor.operator")


NOT_TERMINATED = "status.phase!=Succeeded,status.phase!=Failed"
"""Field selector of pods that may still hold resources on their node."""

QUOTA_MAX_AGE_SECONDS = 1.0
"""ResourceQuotas are listed at most this often per namespace; every run of the namespace shares
the list. A plan made from a list this old may ask for a pod the quota no longer allows: the API
server refuses it (:class:`QuotaExceeded`) and the next pass plans again."""

LOCAL_QUEUE_MAX_AGE_SECONDS = 5.0
"""A Kueue LocalQueue is read at most this often per namespace and name; the runs of a
namespace that share it share the read. Only the plan's report depends on it."""

SECRET_MAX_AGE_SECONDS = 30.0
"""A Secret that was found is read again after this long; one that was missing is looked for on
every read. Runs of a namespace usually share their queue and storage Secrets."""


class QuotaExceeded(Exception):  # noqa: N818 - a refusal, not a failure of the operator
    """The API server refused a pod because a ResourceQuota is used up."""


class ClusterApi:
    """The operator's writes and the reads that are not served by an index."""

    plural = EVALRUN_PLURAL

    def __init__(self, kube: KubeApi) -> None:
        self.kube = kube
        self._lock = threading.Lock()
        self._quotas: dict[str, tuple[float, list[dict[str, Any]]]] = {}
        self._listing: dict[str, threading.Lock] = {}
        self._secrets: dict[tuple[str, str], tuple[float, dict[str, str]]] = {}
        self._local_queues: dict[tuple[str, str], tuple[float, dict[str, Any] | None]] = {}
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

    def nodes(self) -> list[dict[str, Any]]:
        """Every node (what the operator's node index holds; ``proctor plan`` lists it)."""
        return self.kube.list("/api/v1/nodes")

    def bound_pods(self) -> list[dict[str, Any]]:
        """Every pod of the cluster that may hold resources on a node (what the operator's
        usage index holds; ``proctor plan`` lists it)."""
        return self.kube.list("/api/v1/pods", query={"fieldSelector": NOT_TERMINATED})

    def config_map(self, namespace: str, name: str) -> dict[str, str] | None:
        """A ConfigMap's data; None when it does not exist."""
        found = self.kube.get(core_path(namespace, "configmaps", name))
        return None if found is None else dict(found.get("data") or {})

    def get_run(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A run's body; None when it does not exist."""
        return self.kube.get(custom_path(GROUP, VERSION, namespace, self.plural, name))

    def patch_spec(self, namespace: str, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        """Merge-patch a run's spec; the run as it is now."""
        path = custom_path(GROUP, VERSION, namespace, self.plural, name)
        return self.kube.merge_patch(path, {"spec": dict(spec)})

    def local_queue(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A Kueue LocalQueue (None when it, or Kueue's API, does not exist). Raises
        :class:`KubeApiError` when it cannot be read (403: the operator's RBAC lacks it)."""
        with self._lock:
            cached = self._local_queues.get((namespace, name))
        if cached is not None and time.monotonic() - cached[0] < LOCAL_QUEUE_MAX_AGE_SECONDS:
            return cached[1]
        path = custom_path(KUEUE_GROUP, KUEUE_VERSION, namespace, "localqueues", name)
        body = self.kube.get(path)
        with self._lock:
            self._local_queues[(namespace, name)] = (time.monotonic(), body)
        return body

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
