"""One reconcile pass of an EvalRun: observe, decide with the pure functions, act at the edges.

Order: admit (Secrets, feasibility) -> enqueue once -> progress and early stopping -> plan ->
classify pods (disruption vs failure) -> scale -> status and Events. Every step is safe to
repeat; what must survive a pass (the incremental progress, the scaler's stabilization clock,
pods already counted) lives in :class:`RunRuntime`, kept in kopf's ``memo``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

import structlog
from pydantic import BaseModel

from proctor.api.conditions import is_true, rfc3339
from proctor.api.quantity import parse_duration
from proctor.api.v1alpha1.base import Placement
from proctor.api.v1alpha1.evalrun import (
    CaseCounts,
    CheckpointStatus,
    EvalRunSpec,
    EvalRunStatus,
    ResultSummary,
    WorkerCounts,
)
from proctor.cluster.losses import Departed, LossLedger, count_losses, ledger_status, loss_events
from proctor.cluster.observe import (
    ClusterApi,
    PodUsage,
    QuotaExceeded,
    WorkerObs,
    nodes_with_usage,
    quota_headroom,
    status_patch,
)
from proctor.config import OperatorConfig
from proctor.evalrun.status import (
    Event,
    Observation,
    Problem,
    drift_hold,
    next_status,
)
from proctor.planning.plan import Demand, NodeInfo, compute_plan, pool_for_new_pod
from proctor.planning.scaling import ScaleState, WorkerPod, busy_workers, decide
from proctor.pods import merge_env, worker_pod
from proctor.policy import admit
from proctor.queue import QueueConnections, WorkQueue, enqueue_run
from proctor.stats.passrates import should_stop_early, summarize
from proctor.storage import RunProgress, RunStorage
from proctor.storage.blobs import S3Blobs

log = structlog.get_logger("proctor.operator")

ModelT = TypeVar("ModelT", bound=BaseModel)

ENQUEUED_ANNOTATION = "proctor.dev/enqueued"
"""Written by operators before this one on a run's first enqueue; still read, never written
(the first status write says the same, one API write fewer per run)."""
AWS_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")

CONNECTION_TTL_SECONDS = 30.0
"""How long a run's Secrets, once read, are trusted before they are read again (a spec change
reads them at once). A missing Secret is looked for on every pass."""

PROGRESS_REFRESH_SECONDS = 10.0
"""Result objects are listed when the queue changed (an ack, a handback, a dead letter) and at
least this often otherwise, so an idle run costs no storage requests on most passes."""

PROGRESS_REFRESH_MAX_SECONDS = 120.0
"""Each listing that finds nothing new while the queue stood still doubles the wait before the
next unprompted one, up to this: a thousand runs whose workers wait for nodes must not list
storage a hundred times a second."""


def next_refresh_interval(current: float, found: bool) -> float:
    """Seconds until the next unprompted listing of result objects (pure)."""
    if found:
        return PROGRESS_REFRESH_SECONDS
    return min(PROGRESS_REFRESH_MAX_SECONDS, max(current, PROGRESS_REFRESH_SECONDS) * 2)


SUPERSEDED_KEPT = 4
"""How many of the statuses a run's latest writes replaced are remembered (as digests)."""


def status_digest(status: Mapping[str, Any] | None) -> str:
    """A digest of a status body that does not depend on key order (pure)."""
    text = json.dumps(dict(status or {}), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def refresh_due(
    *,
    signature: tuple[object, ...],
    untouched: tuple[object, ...] | None,
    moved: bool,
    waited: float,
    every: float,
) -> bool:
    """Whether a pass lists the run's result objects (pure). Never while the queue's depth is
    still what it was when the run was first enqueued (``untouched``): no worker has taken a
    case, so no result can be in storage, and a thousand runs waiting for nodes list nothing.
    Otherwise when the queue moved, or after ``every`` seconds without a listing."""
    if untouched is not None and signature == untouched:
        return False
    return moved or waited >= every


EXPECTATION_SECONDS = 30.0
"""A pod this operator created counts as a worker until the pod index shows it, or this long."""


class SharedClients:
    """Queue and S3 clients shared by every run (kept in ``memo``, closed on cleanup).

    A boto3 client costs 10-20 MB and tens of milliseconds to create; with hundreds of runs
    one per run was most of the operator's memory and of a new run's first pass.
    """

    def __init__(self) -> None:
        self.queues = QueueConnections()
        self._lock = threading.Lock()
        self._s3: dict[tuple[str, ...], Any] = {}

    def s3(self, endpoint: str | None, region: str | None, creds: Mapping[str, str]) -> Any:
        """One S3 client per endpoint, region and credentials."""
        key = (endpoint or "", region or "", *(creds.get(k, "") for k in AWS_KEYS))
        with self._lock:
            if key not in self._s3:
                import boto3
                from botocore.config import Config

                self._s3[key] = boto3.client(
                    "s3",
                    endpoint_url=endpoint,
                    region_name=region,
                    aws_access_key_id=creds.get("AWS_ACCESS_KEY_ID"),
                    aws_secret_access_key=creds.get("AWS_SECRET_ACCESS_KEY"),
                    aws_session_token=creds.get("AWS_SESSION_TOKEN"),
                    config=Config(retries={"max_attempts": 5, "mode": "standard"}),
                )
            return self._s3[key]

    def close(self) -> None:
        self.queues.close()
        with self._lock:
            clients = list(self._s3.values())
            self._s3.clear()
        for client in clients:
            client.close()


@dataclass
class Connection:
    """Where a run's queue and storage are, and the worker env that reaches them."""

    queue_url: str
    storage_uri: str
    storage_endpoint: str | None
    storage_region: str | None
    storage_credentials: dict[str, str]
    env: list[dict[str, Any]]
    queue_credentials: dict[str, str] = field(default_factory=dict)  # SQS keys of the Secret


@dataclass
class RunRuntime:
    """Per-run state kept between passes (in memo); rebuilt from storage after a restart."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    pass_generation: int = 0  # the spec generation the latest pass started with
    queue: WorkQueue | None = None
    queue_owned: bool = True
    storage: RunStorage | None = None
    progress: RunProgress | None = None
    enqueued: bool = False
    scale: ScaleState = field(default_factory=ScaleState)
    ledger: LossLedger = field(default_factory=LossLedger)
    # Pods created but not yet in the pod index: name -> (uid, monotonic time of creation).
    expected: dict[str, tuple[str, float]] = field(default_factory=dict)
    expected_pool: dict[str, str] = field(default_factory=dict)  # their node pools
    last_checkpoint: float = field(default_factory=time.monotonic)
    checkpointed: tuple[int, int, int] | None = None
    refreshed_at: float = 0.0
    refresh_every: float = PROGRESS_REFRESH_SECONDS
    depth_seen: tuple[object, ...] | None = None
    conn: Connection | None = None
    conn_read: tuple[float, int] = (0.0, 0)
    status_written: float = 0.0
    deleting: bool = False  # the run's TTL passed and its deletion was requested
    finalized: bool = False  # the run's finalizer ran: no pass may follow
    last_error: str | None = None  # the error of the latest failed pass, posted once
    stopped: str | None = None
    untouched: tuple[object, ...] | None = None  # the queue's depth as enqueued, until it moves
    # The status this operator last wrote, until a body shows it, and digests of the statuses
    # those writes replaced (see :meth:`current_status`).
    written: dict[str, Any] | None = None
    superseded: list[str] = field(default_factory=list)
    # Validated spec and status with the data they came from (see :meth:`parsed`).
    models: dict[type, tuple[dict[str, Any], Any]] = field(default_factory=dict)

    def current_status(self, observed: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
        """The run's status as the next pass should see it: what this operator last wrote
        when ``observed`` (the body the pass was handed) predates that write. Only the operator
        writes status, but the body of a pass that follows a write closely may not show it yet;
        planning from it again would write the same status and emit the same Events twice.
        A status nobody here wrote (another writer, a restarted operator) is taken as it is."""
        if self.written is None:
            return observed
        seen = dict(observed or {})
        if seen == self.written:
            self.written, self.superseded = None, []  # the body has caught up
            return observed
        if status_digest(seen) in self.superseded:
            return self.written
        self.written, self.superseded = None, []
        return observed

    def wrote(self, before: Mapping[str, Any] | None, status: dict[str, Any]) -> None:
        """Record a status write that replaced ``before``."""
        self.superseded = [*self.superseded[-(SUPERSEDED_KEPT - 1) :], status_digest(before)]
        self.written = status

    def parsed(self, model: type[ModelT], data: Mapping[str, Any]) -> ModelT:
        """``model.model_validate(data)``, kept for the next pass: most passes see the same
        spec and status as the last, and validating them was a tenth of a pass's CPU."""
        cached = self.models.get(model)
        if cached is not None and cached[0] == data:
            return cast(ModelT, cached[1])
        value = model.model_validate(dict(data))
        self.models[model] = (copy.deepcopy(dict(data)), value)
        return value

    def close(self) -> None:
        if self.queue is not None:
            if self.queue_owned:
                self.queue.close()
            self.queue = None


@dataclass(frozen=True)
class RunRef:
    namespace: str
    name: str
    uid: str
    generation: int
    annotations: Mapping[str, str]


@dataclass(frozen=True)
class ClusterView:
    """Indexed facts: nodes, per-node pod usage, and this run's worker pods."""

    nodes: Sequence[NodeInfo]
    usage: Mapping[str, Sequence[PodUsage]]
    workers: Sequence[WorkerObs]
    departed: Sequence[Departed] = ()


@dataclass
class PassResult:
    """What a pass did, for metrics and tests."""

    phase: str
    planned: int
    ready: int
    backlog: int
    new_disruptions: int
    created: int
    deleted: int
    desired: int = 0
    completed: int = 0
    total: int = 0
    cases_per_second: float = 0.0
    stalled: bool = False
    expired: bool = False  # ttlSecondsAfterFinished has passed: the caller deletes the run


EventSink = Callable[[Event], None]


def _queue_connection(
    spec: EvalRunSpec, ref: RunRef, config: OperatorConfig, api: ClusterApi
) -> tuple[str, list[dict[str, Any]], dict[str, str]] | Problem:
    """The run's queue URL, the worker env that reaches it and the keys that sign for it."""
    queue_url = config.default_queue_url or ""
    if spec.queue is None or spec.queue.secret_ref is None:
        if not queue_url:
            return Problem(
                "NoQueue",
                "the run names no queue (spec.queue) and the operator has no defaultQueueUrl; "
                "set spec.queue with a secretRef",
            )
        return queue_url, [{"name": "PROCTOR_QUEUE_URL", "value": queue_url}], {}
    secret_name = spec.queue.secret_ref.name
    data = api.read_secret(ref.namespace, secret_name)
    if data is None:
        return Problem(
            "SecretNotFound",
            f"spec.queue.secretRef names Secret {secret_name!r}, which does not exist in "
            f"namespace {ref.namespace}; create it with key 'url' (redis://...)",
        )
    if spec.queue.type == "redis":
        if "url" not in data:
            return Problem(
                "SecretKeyMissing",
                f"Secret {secret_name!r} has no key 'url'; add the redis:// URL under 'url'",
            )
        return data["url"], [_secret_env("PROCTOR_QUEUE_URL", secret_name, "url")], {}
    query = f"?region={data.get('region', '')}" if data.get("region") else ""
    host = data.get("endpoint", "").removeprefix("http://").removeprefix("https://")
    queue_url = f"sqs://{host}{query}"
    env = [{"name": "PROCTOR_QUEUE_URL", "value": queue_url}]
    env += [_secret_env(k, secret_name, k, optional=True) for k in AWS_KEYS]
    keys = {k: data[k] for k in AWS_KEYS if k in data}
    if not _has_keys(keys):
        return _no_keys("spec.queue", secret_name)
    return queue_url, env, keys


def connection(
    spec: EvalRunSpec, ref: RunRef, config: OperatorConfig, api: ClusterApi
) -> Connection | Problem:
    """Queue and storage of the run from its Secrets or the operator's defaults."""
    queue = _queue_connection(spec, ref, config, api)
    if isinstance(queue, Problem):
        return queue
    queue_url, env, queue_creds = queue
    storage = spec.storage
    uri = storage.uri if storage else (config.default_storage_uri or "")
    endpoint = storage.endpoint if storage else config.default_storage_endpoint
    region = storage.region if storage else None
    if not uri:
        return Problem(
            "NoStorage",
            "the run names no storage (spec.storage) and the operator has no "
            "defaultStorageUri; set spec.storage.uri",
        )
    creds: dict[str, str] = {}
    if storage is not None and storage.secret_ref is not None:
        secret_name = storage.secret_ref.name
        data = api.read_secret(ref.namespace, secret_name)
        if data is None:
            return Problem(
                "SecretNotFound",
                f"spec.storage.secretRef names Secret {secret_name!r}, which does not exist in "
                f"namespace {ref.namespace}; create it with AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY",
            )
        creds = {k: data[k] for k in AWS_KEYS if k in data}
        if not _has_keys(creds):
            return _no_keys("spec.storage", secret_name)
        env += [_secret_env(k, secret_name, k) for k in AWS_KEYS if k in data]
    env.append({"name": "PROCTOR_STORAGE_URI", "value": uri})
    if endpoint:
        env.append({"name": "PROCTOR_STORAGE_ENDPOINT", "value": endpoint})
    if region:
        env += [
            {"name": "PROCTOR_STORAGE_REGION", "value": region},
            {"name": "AWS_DEFAULT_REGION", "value": region},
        ]
    return Connection(queue_url, uri, endpoint, region, creds, env, queue_creds)


def _has_keys(creds: Mapping[str, str]) -> bool:
    return bool(creds.get("AWS_ACCESS_KEY_ID") and creds.get("AWS_SECRET_ACCESS_KEY"))


def _no_keys(field: str, secret: str) -> Problem:
    # Without keys, boto3 would sign with the operator's own credentials.
    return Problem(
        "SecretKeyMissing",
        f"{field}.secretRef names Secret {secret!r}, which lacks AWS_ACCESS_KEY_ID or "
        "AWS_SECRET_ACCESS_KEY; the operator reaches a run's queue and storage only with the "
        "run's own credentials: add both keys to the Secret",
    )


def cached_connection(
    spec: EvalRunSpec, ref: RunRef, config: OperatorConfig, api: ClusterApi, rt: RunRuntime
) -> Connection | Problem:
    """:func:`connection`, read again after :data:`CONNECTION_TTL_SECONDS` or a spec change;
    a problem is never cached, so a Secret created later is found on the next pass."""
    at, generation = rt.conn_read
    fresh = time.monotonic() - at < CONNECTION_TTL_SECONDS and generation == ref.generation
    if rt.conn is not None and fresh:
        return rt.conn
    # The tenant policy first: a refused run has none of its Secrets read.
    conn = admit(spec, config) or connection(spec, ref, config, api)
    rt.conn = conn if isinstance(conn, Connection) else None
    rt.conn_read = (time.monotonic(), ref.generation)
    return conn


def _secret_env(name: str, secret: str, key: str, optional: bool = False) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": secret, "key": key}
    if optional:
        ref["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def worker_env(spec: EvalRunSpec, ref: RunRef, conn: Connection) -> list[dict[str, Any]]:
    """Variables that :meth:`proctor.worker.runtime.WorkerConfig.from_env` reads."""
    lease = parse_duration(spec.queue.lease) if spec.queue else 60.0
    env: list[dict[str, Any]] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "PROCTOR_WORKER_ID", "value": "$(POD_NAME)"},
        {"name": "PROCTOR_RUN_ID", "value": ref.uid},
        {"name": "PROCTOR_RUN", "value": f"{ref.namespace}/{ref.name}"},
        {"name": "PROCTOR_SPEC", "value": spec.model_dump_json(by_alias=True, exclude_none=True)},
        {"name": "PROCTOR_LEASE_SECONDS", "value": str(lease)},
        {"name": "PROCTOR_LOG_FORMAT", "value": "json"},
    ]
    env += conn.env
    return merge_env(env, [e.model_dump(by_alias=True, exclude_none=True) for e in spec.env or ()])


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
    clients. A ``fresh`` run (never enqueued) has no checkpoint to resume from."""
    if rt.storage is None:
        from proctor.storage import open_storage

        compression = spec.storage.compression if spec.storage else None
        algorithm = compression.algorithm if compression else "zstd"
        level = compression.level if compression else 3
        if conn.storage_uri.startswith("s3://"):
            bucket, _, prefix = conn.storage_uri.removeprefix("s3://").partition("/")
            s3 = clients.s3(conn.storage_endpoint, conn.storage_region, conn.storage_credentials)
            blobs = S3Blobs(bucket, prefix, client=s3, retry_deadline=30.0)
            rt.storage = RunStorage(blobs, ref.uid, compression=algorithm, level=level)
        else:
            rt.storage = open_storage(
                conn.storage_uri,
                ref.uid,
                compression=algorithm,
                level=level,
                endpoint=conn.storage_endpoint,
                region=conn.storage_region,
            )
    if rt.queue is None:
        lease = parse_duration(spec.queue.lease) if spec.queue else 60.0
        rt.queue = clients.queues.open(
            conn.queue_url, ref.uid, lease_seconds=lease, credentials=conn.queue_credentials
        )
        rt.queue_owned = not clients.queues.shared(rt.queue)
    if rt.progress is None:
        # Resume from the run checkpoint: refresh then reads only objects written since.
        rt.progress = (
            RunProgress(rt.storage, spec.cases.count)
            if fresh
            else RunProgress.resume(rt.storage, spec.cases.count)
        )
        # What is in storage already needs no checkpoint (a fresh run: nothing at all).
        start = rt.progress.snapshot()
        rt.checkpointed = (start.completed, start.dead_lettered, rt.progress.looks)
    return rt.queue, rt.storage, rt.progress


def _unseen_pods(rt: RunRuntime, workers: Sequence[WorkerObs]) -> list[str]:
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


def _delete_unseen(api: ClusterApi, ref: RunRef, rt: RunRuntime, names: Sequence[str]) -> int:
    for name in names:
        uid, _ = rt.expected.pop(name)
        rt.ledger.deleted.add(uid)
        api.delete_pod(ref.namespace, name)
    return len(names)


def _pool_counts(
    rt: RunRuntime, live: Sequence[WorkerObs], unseen: Sequence[str]
) -> dict[str, int]:
    """The run's workers per node pool: live ones and those created but not seen yet."""
    counts: dict[str, int] = {}
    for pool in [w.pool for w in live] + [rt.expected_pool.get(n, "") for n in unseen]:
        counts[pool] = counts.get(pool, 0) + 1
    return counts


def _terminal_tidy(prev: EvalRunStatus) -> dict[str, Any]:
    """The patch a finished run still needs (pure): an operator before this one left its
    last ``workers.ready``/``desired`` standing after the pods were gone."""
    if prev.workers is None or not (prev.workers.ready or prev.workers.desired):
        return {}
    return {"workers": {"desired": 0, "ready": 0, "failures": prev.workers.failures}}


def reconcile_run(
    *,
    body_spec: Mapping[str, Any],
    body_status: Mapping[str, Any] | None,
    ref: RunRef,
    config: OperatorConfig,
    api: ClusterApi,
    view: ClusterView,
    rt: RunRuntime,
    emit: EventSink,
    clients: SharedClients,
    now: datetime | None = None,
) -> PassResult:
    """One pass; see the module doc. Returns what it did."""
    now = now or datetime.now(UTC)
    spec = rt.parsed(EvalRunSpec, body_spec)
    body_status = rt.current_status(body_status)
    prev = rt.parsed(EvalRunStatus, body_status or {})
    # A restarted operator takes up its predecessor's ledger (finding 12 of issue 15).
    rt.ledger.restore(
        prev.ledger,
        failures=prev.workers.failures if prev.workers else 0,
        disruptions=prev.disruptions or 0,
    )
    workers = list(view.workers)
    live = [w for w in workers if not w.terminating and not w.finished]
    for gone in view.departed:
        rt.expected.pop(gone.obs.name, None)  # came and went between passes: replace it now
    unseen = _unseen_pods(rt, workers)

    if prev.phase in {"Succeeded", "Failed"}:
        expired = False
        for w in live:
            rt.ledger.deleted.add(w.uid)
            api.delete_pod(w.namespace, w.name)
        _delete_unseen(api, ref, rt, unseen)
        ttl = spec.ttl_seconds_after_finished
        done_at = prev.completion_time
        if ttl is not None and done_at:
            ended = datetime.fromisoformat(done_at.replace("Z", "+00:00"))
            if now >= ended + timedelta(seconds=ttl):
                log.info("ttl expired, deleting run", run=ref.name, namespace=ref.namespace)
                expired = True
        done = prev.counts or CaseCounts()
        tidy = _terminal_tidy(prev)
        if tidy:
            api.patch_status(ref.namespace, ref.name, tidy)
        return PassResult(
            prev.phase,
            planned=0,
            ready=0,
            backlog=0,
            new_disruptions=0,
            created=0,
            deleted=len(live),
            completed=done.completed,
            total=done.total,
            expired=expired,
        )

    spot = {n.name for n in view.nodes if n.is_spot}
    losses = count_losses(workers, rt.ledger, spot, view.departed)
    new_disruptions = losses.disruptions
    for note in losses.notes:
        log.info("worker lost", run=ref.name, detail=note)
    for event in loss_events(losses.lost):
        emit(event)  # now: the ledger has counted them, no later pass would post them
    # Totals from the ledger, not the previous status plus this pass: a status write that
    # failed after counting must not lose the losses it carried.
    disruptions, failures = rt.ledger.disruptions, rt.ledger.failures
    placement = spec.placement or Placement()
    after = placement.spot.fallback_to_on_demand_after if placement.spot else None
    spot_fallback = bool(prev.spot_fallback) or (
        config.spot_fallback_enabled and after is not None and rt.ledger.spot_disruptions >= after
    )

    nodes = nodes_with_usage(view.nodes, view.usage, ref.uid)
    quota = quota_headroom(api.quotas(ref.namespace), [w.requests for w in live])
    problem: Problem | None = None
    conn = cached_connection(spec, ref, config, api, rt)
    if isinstance(conn, Problem):
        problem = conn

    counts = prev.counts or CaseCounts(total=spec.cases.count)
    rate: float | None = None
    finished = False
    backlog = 0
    leases_out = 0
    waiting = 0
    holders: frozenset[str] | None = None
    result: ResultSummary | None = None
    checkpoint: CheckpointStatus | None = None
    if not isinstance(conn, Connection) or problem is not None:
        plan = compute_plan(
            spec, nodes, Demand(0, True), config, quota=quota, spot_fallback=spot_fallback
        )
    else:
        # A run no pass has written a status for (nor an operator before 0.1 annotated) has
        # had no worker, so there is neither a checkpoint nor a result in storage, and the
        # reads that rebuild a lost queue from storage are skipped. Should an operator die
        # after creating the first pods but before writing that status, its successor takes
        # the run for fresh too: enqueueing is idempotent on the queue, results are created
        # once, and the first refresh lists whatever the pods wrote, so nothing is lost or
        # repeated (only a queue lost in the same instant would be refilled from the start).
        fresh = (
            not rt.enqueued and prev.phase is None and ENQUEUED_ANNOTATION not in ref.annotations
        )
        queue, storage, progress = open_run(spec, ref, conn, rt, clients, fresh=fresh)
        if not rt.enqueued:
            added = enqueue_run(queue, None if fresh else storage, spec)
            rt.enqueued = True
            log.info("enqueued", run=ref.name, entries=added)
        depth = queue.depth()
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
        snap = progress.snapshot()
        rate = snap.cases_per_second
        rt.stopped = depth.stopped or rt.stopped
        early = spec.early_stopping
        if (
            early is not None
            and early.enabled
            and spec.compare is not None
            and rt.stopped is None
            and progress.resolved.total // early.check_every > progress.looks
            and progress.resolved.total >= early.min_cases
        ):
            # Only the resolved prefix: cases recorded beyond it are biased by crashes.
            progress.looks = progress.resolved.total // early.check_every
            if should_stop_early(progress.resolved, spec.compare, early, progress.looks):
                rt.stopped = "early stop: the decision is settled"
                queue.stop(rt.stopped)
                depth = queue.depth()
        finished = snap.finished or (rt.stopped is not None and depth.in_flight == 0)
        backlog = depth.total
        leases_out = depth.in_flight
        waiting = depth.waiting
        holders = depth.holders
        counts = CaseCounts(
            total=snap.total,
            completed=snap.completed,
            passed=snap.passed,
            failed=snap.failed,
            errored=snap.errored,
            in_flight=0 if depth.cases is None else min(depth.cases, snap.total),
            dead_lettered=snap.dead_lettered,
        )
        interval = parse_duration(spec.storage.checkpoint_interval) if spec.storage else 30.0
        mark = (snap.completed, snap.dead_lettered, progress.looks)
        due = time.monotonic() - rt.last_checkpoint >= interval or finished
        if due and mark != rt.checkpointed:
            # Only when something changed: a waiting run costs no writes.
            progress.checkpoint()
            rt.last_checkpoint = time.monotonic()
            rt.checkpointed = mark
            checkpoint = CheckpointStatus(
                time=rfc3339(now),
                uri=storage.blobs.uri(storage.checkpoint_key()),
                batches_done=len(storage.result_ranges()),
            )
        if finished:
            early_stopped = rt.stopped is not None and not snap.finished
            result = summarize(
                progress.aggregate,
                spec.compare,
                complete=snap.completed == snap.total,
                early_stopped=early_stopped,
                total=snap.total,
                dead_lettered=snap.dead_lettered,
                resolved=progress.resolved,
            ).model_copy(update={"results_uri": storage.results_uri()})
            # Metamorphic Guard task specs: its report and rule (docs/metamorphic-guard.md).
            from proctor.integrations.metamorphic_guard.summary import with_mg_report

            result, _ = with_mg_report(spec, storage, result, metrics=False)
            storage.write_summary(
                {
                    "run": ref.name,
                    "runId": ref.uid,
                    "total": snap.total,
                    "completed": snap.completed,
                    "passed": snap.passed,
                    "failed": snap.failed,
                    "errored": snap.errored,
                    "deadLettered": snap.dead_lettered,
                    **result.model_dump(by_alias=True, exclude_none=True),
                }
            )
        plan = compute_plan(
            spec,
            nodes,
            Demand(backlog=backlog, work_remaining=not finished),
            config,
            quota=quota,
            spot_fallback=spot_fallback,
        )
    if problem is None and not plan.feasible:
        reason = "NoEligibleNodes" if not plan.eligible_nodes else "ProfileTooLarge"
        problem = Problem(reason, plan.infeasible_reason)

    # Finished pods have been counted: remove them so they neither linger nor count twice.
    removed = 0
    for w in workers:
        if w.finished and not w.terminating and w.uid not in rt.ledger.deleted:
            rt.ledger.deleted.add(w.uid)
            api.delete_pod(w.namespace, w.name)
            removed += 1

    created = 0
    stop_all = finished or spec.suspend or problem is not None
    if stop_all:
        for w in live:
            rt.ledger.deleted.add(w.uid)
            api.delete_pod(w.namespace, w.name)
            removed += 1
        removed += _delete_unseen(api, ref, rt, unseen)
        rt.scale = ScaleState()
        desired = 0
    else:
        pods = [WorkerPod(w.name, w.created, ready=w.ready, scheduled=bool(w.node)) for w in live]
        # Pods created by an earlier pass that the index does not show yet count too (so they
        # are not created twice); they are never picked for removal before they are seen.
        pods += [WorkerPod(name, now, ready=False, scheduled=False) for name in unseen]
        busy = busy_workers(
            [w.name for w in live], holders=holders, waiting=waiting, in_flight=leases_out
        ) | frozenset(unseen)
        stabilization = parse_duration(
            spec.workers.scale_down_stabilization if spec.workers else "30s"
        )
        decision = decide(
            plan.replicas, pods, busy, rt.scale, now=now, stabilization_seconds=stabilization
        )
        rt.scale = decision.state
        desired = decision.desired
        by_name = {w.name: w for w in live}
        for name in decision.delete:
            victim = by_name[name]
            rt.ledger.deleted.add(victim.uid)
            api.delete_pod(victim.namespace, victim.name)
            log.info("idle worker removed", run=ref.name, pod=name, reason=decision.reason)
            removed += 1
        assert isinstance(conn, Connection)
        env = worker_env(spec, ref, conn)
        pool_counts = _pool_counts(rt, live, unseen)
        for _ in range(decision.create):
            pool = pool_for_new_pod(plan.pools, pool_counts)
            pool_counts[pool] = pool_counts.get(pool, 0) + 1
            manifest = worker_pod(
                run_name=ref.name,
                run_uid=ref.uid,
                namespace=ref.namespace,
                spec=spec,
                size=plan.size,
                config=config,
                env=env,
                pool=pool,
                spot_fallback=spot_fallback,
            )
            try:
                name, uid = api.create_pod(manifest)
            except QuotaExceeded as exc:
                # The plan read a quota list up to a second old; the next pass reads it again.
                log.info("quota refused a worker", run=ref.name, detail=str(exc)[:300])
                break
            rt.expected[name] = (uid, time.monotonic())
            rt.expected_pool[name] = pool
            created += 1

    ready = 0 if stop_all else sum(1 for w in live if w.ready)  # stop_all deleted them
    obs = Observation(
        spec=spec,
        generation=ref.generation,
        now=now,
        previous=prev,
        counts=counts,
        workers=WorkerCounts(desired=desired, ready=ready, failures=failures),
        finished=finished,
        early_stopped=finished and rt.stopped is not None and counts.completed < counts.total,
        problem=problem,
        plan=plan,
        result=result,
        disruptions=disruptions,
        spot_fallback=spot_fallback,
        ledger=ledger_status(rt.ledger, workers, {n: u for n, (u, _) in rt.expected.items()}),
        checkpoint=checkpoint,
        rate=rate,
        stalled_after_seconds=config.stalled_after_seconds,
    )
    update = next_status(obs)
    new = update.status.model_dump(by_alias=True, exclude_none=True, mode="json")
    patch = status_patch(body_status, new)
    hold = drift_hold(body_status, patch)
    if hold and time.monotonic() - rt.status_written < hold:
        patch = {}  # only estimates and cluster-wide figures moved: written a little later
    if patch:
        api.patch_status(ref.namespace, ref.name, patch)
        rt.status_written = time.monotonic()
        rt.wrote(body_status, new)
    for event in update.events:
        emit(event)
    return PassResult(
        phase=update.status.phase or "Pending",
        planned=plan.replicas,
        ready=ready,
        backlog=backlog,
        new_disruptions=new_disruptions,
        created=created,
        deleted=removed,
        desired=desired,
        completed=counts.completed,
        total=counts.total,
        cases_per_second=rate or 0.0,
        stalled=is_true(update.status.conditions, "Stalled"),
    )


def finalize_run(
    spec_body: Mapping[str, Any],
    ref: RunRef,
    config: OperatorConfig,
    api: ClusterApi,
    clients: SharedClients,
) -> None:
    """On deletion: remove the run's queue; results in storage are kept."""
    spec = EvalRunSpec.model_validate(dict(spec_body))
    conn = connection(spec, ref, config, api)
    if isinstance(conn, Problem):
        log.warning("queue not deleted", run=ref.name, reason=conn.message)
        return
    queue = clients.queues.open(conn.queue_url, ref.uid, credentials=conn.queue_credentials)
    try:
        queue.delete()
    finally:
        clients.queues.release(queue)
