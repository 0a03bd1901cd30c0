"""Gather: what one pass of an EvalRun sees, as frozen values.

:func:`gather_run` reads the cluster view (the run's pods and losses), :func:`gather_placement`
the nodes, the namespace's quota and the run's connection;
:func:`gather_progress` opens the run's queue and storage (enqueueing the cases once, which is
idempotent) and reads the queue's depth and the progress in storage. Neither decides what to
do; both update the per-run memory that only says what was already seen (the loss ledger,
the pods created but not yet in the index, when storage was last listed).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from proctor.api.conditions import Event, Problem
from proctor.api.v1alpha1.base import Placement
from proctor.api.v1alpha1.evalrun import TERMINAL_PHASES, EvalRunSpec, EvalRunStatus
from proctor.cache import open_cache_blobs, probe_writable
from proctor.cluster.api import ClusterApi
from proctor.cluster.client import KubeApiError
from proctor.cluster.losses import EXPECTATION_SECONDS, Departed, count_losses, loss_events
from proctor.cluster.reads import (
    LocalQueueInfo,
    PodState,
    PodUsage,
    local_queue_info,
    nodes_with_usage,
    quota_headroom,
)
from proctor.config import OperatorConfig
from proctor.connection import Connection, RunRef, SharedClients, build_connection
from proctor.connection import cached_connection as cached
from proctor.evalrun.runtime import RunRuntime, next_refresh_interval, refresh_due
from proctor.planning.admission import Admission, kueue_pod_labels, kueue_queue
from proctor.planning.plan import Capacity, NodeInfo, QuotaHeadroom
from proctor.policy import admit
from proctor.queue import QueueDepth, WorkQueue, enqueue_run
from proctor.storage import ProgressSnapshot, RunProgress, RunStorage, open_storage
from proctor.storage.blobs import S3Blobs

log = structlog.get_logger("proctor.operator")

ENQUEUED_ANNOTATION = "proctor.dev/enqueued"
"""Written by operators before this one on a run's first enqueue; still read, never written
(the first status write says the same, one API write fewer per run)."""


@dataclass(frozen=True)
class ClusterView:
    """Indexed facts: nodes, per-node pod usage, and this run's worker pods."""

    nodes: Sequence[NodeInfo]
    usage: Mapping[str, Sequence[PodUsage]]
    workers: Sequence[PodState]
    departed: Sequence[Departed] = ()


@dataclass(frozen=True)
class RunObservation:
    """The run as one pass sees it before touching its queue."""

    spec: EvalRunSpec
    status_body: Mapping[str, Any] | None  # the status to diff against (see current_status)
    previous: EvalRunStatus
    workers: tuple[PodState, ...]
    live: tuple[PodState, ...]  # neither terminating nor finished
    unseen: tuple[str, ...]  # created by this operator, not in the pod index yet
    nodes: tuple[NodeInfo, ...] = ()  # with this run's usage taken out
    quota: QuotaHeadroom | None = None
    connection: Connection | Problem | None = None
    new_disruptions: int = 0
    loss_events: tuple[Event, ...] = ()
    spot_fallback: bool = False
    queue_name: str = ""  # the Kueue LocalQueue that admits the workers ("" : no Kueue)
    admission_labels: Mapping[str, str] = field(default_factory=dict)  # on each new worker
    admission: Admission = field(default_factory=Admission)

    def placed(self) -> dict[str, int]:
        """The run's live workers bound to each node (what its topology spread counts)."""
        return dict(Counter(w.node for w in self.live if w.node))


def run_connection(
    spec: EvalRunSpec, ref: RunRef, config: OperatorConfig, api: ClusterApi, rt: RunRuntime
) -> Connection | Problem:
    """The run's connection, read again after CONNECTION_TTL_SECONDS or a spec change. The
    tenant policy first: a refused run has none of its Secrets read."""
    return cached(
        rt.connection,
        (ref.uid, ref.generation),
        lambda: (
            admit(spec, config)
            or build_connection(
                spec.queue, spec.storage, ref.namespace, config, api, dataset=spec.cases.dataset
            )
        ),
    )


def _unseen_pods(rt: RunRuntime, workers: Sequence[PodState]) -> list[str]:
    """Pods this operator created that the pod index does not show yet (forgotten once seen,
    or after :data:`EXPECTATION_SECONDS`)."""
    seen = {w.name for w in workers}
    now = time.monotonic()
    for name, (_, at) in list(rt.expected.items()):
        if name in seen or now - at > EXPECTATION_SECONDS:
            del rt.expected[name]
    for name in set(rt.expected_pool) - set(rt.expected):
        del rt.expected_pool[name]
    return list(rt.expected)


def gather_run(
    *,
    body_spec: Mapping[str, Any],
    body_status: Mapping[str, Any] | None,
    ref: RunRef,
    config: OperatorConfig,
    view: ClusterView,
    rt: RunRuntime,
) -> RunObservation:
    """The run's spec, previous status and pods; for a run not finished also its losses since
    the last pass (counted in the ledger now: their Events must be posted by this pass)."""
    spec = rt.parsed(EvalRunSpec, body_spec)
    status_body = rt.current_status(body_status)
    prev = rt.parsed(EvalRunStatus, status_body or {})
    # A restarted operator takes up its predecessor's ledger (finding 12 of issue 15).
    rt.ledger.restore(
        prev.ledger,
        failures=prev.workers.failures if prev.workers else 0,
        disruptions=prev.disruptions or 0,
    )
    workers = tuple(view.workers)
    live = tuple(w for w in workers if not w.terminating and not w.finished)
    for gone in view.departed:
        rt.expected.pop(gone.pod.name, None)  # came and went between passes: replace it now
    queue = kueue_queue(spec, ref.labels)
    seen = RunObservation(
        spec,
        status_body,
        prev,
        workers,
        live,
        tuple(_unseen_pods(rt, workers)),
        queue_name=queue,
        admission_labels=kueue_pod_labels(queue, ref.labels),
    )
    if prev.phase in TERMINAL_PHASES:
        return seen
    spot = {n.name for n in view.nodes if n.is_spot}
    losses = count_losses(workers, rt.ledger, spot, view.departed)
    for note in losses.notes:
        log.info("worker lost", run=ref.name, detail=note)
    placement = spec.placement or Placement()
    after = placement.spot.fallback_to_on_demand_after if placement.spot else None
    spot_fallback = bool(prev.spot_fallback) or (
        config.spot_fallback_enabled and after is not None and rt.ledger.spot_disruptions >= after
    )
    return replace(
        seen,
        new_disruptions=losses.disruptions,
        loss_events=tuple(loss_events(losses.lost)),
        spot_fallback=spot_fallback,
    )


def gather_placement(
    seen: RunObservation,
    *,
    ref: RunRef,
    config: OperatorConfig,
    api: ClusterApi,
    view: ClusterView,
    rt: RunRuntime,
) -> RunObservation:
    """``seen`` with the nodes (this run's usage taken out), the namespace's quota headroom,
    what Kueue admitted and the run's connection."""
    nodes, quota = placement_inputs(
        view, api.quotas(ref.namespace), run_uid=ref.uid, own=[w.requests for w in seen.live]
    )
    return replace(
        seen,
        nodes=nodes,
        quota=quota,
        admission=gather_admission(seen.queue_name, ref, seen.live, api),
        connection=run_connection(seen.spec, ref, config, api, rt),
    )


def placement_inputs(
    view: ClusterView,
    quotas: Sequence[Mapping[str, Any]],
    *,
    run_uid: str,
    own: Sequence[Capacity],
) -> tuple[tuple[NodeInfo, ...], QuotaHeadroom]:
    """What planning reads of the cluster for a run (the pass's and ``proctor plan``'s): the
    nodes with what other pods request on them (the run's own workers left out: they are what
    the plan counts), and the quota headroom with the run's ``own`` workers' requests added
    back."""
    return tuple(nodes_with_usage(view.nodes, view.usage, run_uid)), quota_headroom(quotas, own)


def gather_admission(
    queue: str, ref: RunRef, live: Sequence[PodState], api: ClusterApi
) -> Admission:
    """What Kueue made of the run's live workers (gated: waiting), and its LocalQueue's
    ClusterQueue. The LocalQueue only feeds the report: one the operator may not read is
    logged, and the counts from the pods stand. A run that names no queue may still have
    its pods handed to one by Kueue (a LocalQueue named ``default`` in the namespace): the
    queue on its pods is then the one reported."""
    queue = queue or next((w.queue for w in live if w.queue), "")
    if not queue:
        return Admission()
    try:
        info = local_queue_info(queue, api.local_queue(ref.namespace, queue))
    except KubeApiError as exc:
        if exc.status != 403:
            raise
        log.warning(
            "LocalQueue not readable: grant get on localqueues.kueue.x-k8s.io",
            run=ref.name,
            queue=queue,
        )
        info = LocalQueueInfo()
    waiting = sum(1 for w in live if w.gated)
    outside = sum(1 for w in live if w.queue and not w.kueue_managed)
    return Admission(queue, info.cluster_queue, len(live) - waiting, waiting, info.blocked, outside)


@dataclass(frozen=True)
class ProgressObservation:
    """The run's queue and stored progress as one pass sees them."""

    queue: WorkQueue
    storage: RunStorage
    progress: RunProgress
    depth: QueueDepth
    snapshot: ProgressSnapshot


def _open_storage(
    spec: EvalRunSpec, ref: RunRef, conn: Connection, clients: SharedClients
) -> RunStorage:
    compression = spec.storage.compression if spec.storage else None
    algorithm = compression.algorithm if compression else "zstd"
    level = compression.level if compression else 3
    if conn.storage_uri.startswith("s3://"):
        bucket, _, prefix = conn.storage_uri.removeprefix("s3://").partition("/")
        s3 = clients.s3(conn.storage_endpoint, conn.storage_region, conn.storage_credentials)
        blobs = S3Blobs(bucket, prefix, client=s3, retry_deadline=30.0)
        return RunStorage(blobs, ref.uid, compression=algorithm, level=level)
    return open_storage(
        conn.storage_uri,
        ref.uid,
        compression=algorithm,
        level=level,
        endpoint=conn.storage_endpoint,
        region=conn.storage_region,
    )


def probe_cache(
    spec: EvalRunSpec, ref: RunRef, conn: Connection, rt: RunRuntime, clients: SharedClients
) -> str:
    """Why the run's workers cannot write its cache ("" when they can, or it writes none),
    found once per operator process with the storage's endpoint and credentials."""
    cache = spec.cache
    if not cache.writes:
        return ""
    if rt.cache_problem is None:
        uri = cache.location(conn.storage_uri, ref.namespace)
        if uri.startswith("s3://"):
            bucket, _, prefix = uri.removeprefix("s3://").partition("/")
            s3 = clients.s3(conn.storage_endpoint, conn.storage_region, conn.storage_credentials)
            blobs: Any = S3Blobs(bucket, prefix, client=s3, retry_deadline=10.0)
        else:
            blobs = open_cache_blobs(uri)
        rt.cache_problem = probe_writable(blobs, ref.uid)
        if rt.cache_problem:
            log.warning("cache is read-only for this run", reason=rt.cache_problem)
    return rt.cache_problem


def run_storage(
    spec: EvalRunSpec, ref: RunRef, conn: Connection, rt: RunRuntime, clients: SharedClients
) -> RunStorage:
    """The run's storage, opened once per operator process on the shared clients."""
    if rt.storage is None:
        rt.storage = _open_storage(spec, ref, conn, clients)
    return rt.storage


def open_run(
    spec: EvalRunSpec,
    ref: RunRef,
    conn: Connection,
    rt: RunRuntime,
    clients: SharedClients,
    *,
    fresh: bool = False,
) -> tuple[WorkQueue, RunStorage, RunProgress]:
    """The run's queue, storage and progress, opened once per operator process on the shared
    clients. A ``fresh`` run (never enqueued) has no checkpoint to resume from. The run's total
    is known (``rt.total``, see :mod:`proctor.evalrun.dataset`)."""
    storage = run_storage(spec, ref, conn, rt, clients)
    total = spec.cases.total() if rt.total is None else rt.total
    if rt.queue is None:
        lease = spec.lease_seconds()
        rt.queue = clients.queues.open(
            conn.queue_url, ref.uid, lease_seconds=lease, credentials=conn.queue_credentials
        )
        rt.queue_owned = not clients.queues.shared(rt.queue)
    if rt.progress is None:
        # Resume from the run checkpoint: refresh then reads only objects written since.
        dataset = rt.manifest.fingerprint if rt.manifest is not None else None
        rt.progress = (
            RunProgress(storage, total, dataset)
            if fresh
            else RunProgress.resume(storage, total, dataset)
        )
        # What is in storage already needs no checkpoint (a fresh run: nothing at all).
        start = rt.progress.snapshot()
        rt.checkpointed = (start.completed, start.dead_lettered, rt.progress.looks)
    return rt.queue, storage, rt.progress


def _refresh_progress(
    progress: RunProgress, depth: QueueDepth, rt: RunRuntime, *, fresh: bool
) -> None:
    """List the run's new result objects when the queue moved or a while passed."""
    signature = (depth.waiting, depth.in_flight, depth.cases, depth.stopped)
    moved = signature != rt.depth_seen
    if fresh:
        rt.depth_seen, rt.refreshed_at = signature, time.monotonic()
        rt.untouched = signature
    elif refresh_due(
        signature=signature,
        untouched=rt.untouched,
        moved=moved,
        waited=time.monotonic() - rt.refreshed_at,
        every=rt.refresh_every,
    ):
        # Results are written before their entry is acked, so a refresh after the queue
        # changed sees them.
        found = progress.refresh() > 0
        rt.refresh_every = next_refresh_interval(rt.refresh_every, moved or found)
        rt.depth_seen, rt.refreshed_at = signature, time.monotonic()
    if signature != rt.untouched:
        rt.untouched = None  # a worker has been at the queue: listings may find results


def gather_progress(
    seen: RunObservation, ref: RunRef, conn: Connection, rt: RunRuntime, clients: SharedClients
) -> ProgressObservation:
    """The queue's depth and the stored progress; the cases are enqueued on the first pass."""
    # A run no pass has written a status for (nor an operator before 0.1 annotated) has had
    # no worker, so there is neither a checkpoint nor a result in storage, and the reads that
    # rebuild a lost queue from storage are skipped. Should an operator die after creating the
    # first pods but before writing that status, its successor takes the run for fresh too:
    # enqueueing is idempotent on the queue, results are created once, and the first refresh
    # lists whatever the pods wrote, so nothing is lost or repeated (only a queue lost in the
    # same instant would be refilled from the start).
    fresh = (
        not rt.enqueued
        and seen.previous.phase is None
        and ENQUEUED_ANNOTATION not in ref.annotations
    )
    queue, storage, progress = open_run(seen.spec, ref, conn, rt, clients, fresh=fresh)
    if not rt.enqueued:
        dataset = rt.manifest.fingerprint if rt.manifest is not None else None
        added = enqueue_run(queue, None if fresh else storage, seen.spec, rt.total, dataset)
        rt.enqueued = True
        log.info("enqueued", run=ref.name, entries=added)
    depth = queue.depth()
    _refresh_progress(progress, depth, rt, fresh=fresh)
    return ProgressObservation(queue, storage, progress, depth, progress.snapshot())
