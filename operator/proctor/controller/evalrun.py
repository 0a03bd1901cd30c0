"""kopf handlers of the EvalRun operator. Thin: they say *when* (with the pass loop,
:mod:`proctor.controller.pass_loop`); :mod:`proctor.evalrun.reconcile` says *what*, and
:mod:`proctor.cluster.observe` is the only code that talks to the API.

Handlers are registered on a registry built by :func:`build_registry`, because the loop's
interval, the suites' timer and the peering identity come from the operator's configuration
and arguments, which are read at start-up.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import time
from collections.abc import Mapping, Sequence, Set
from typing import Any

import kopf
import structlog

from proctor.api.conditions import Event
from proctor.cluster.client import KubeApi
from proctor.cluster.client import login as kube_login
from proctor.cluster.losses import Departed, Departures, SpotNodes
from proctor.cluster.observe import ClusterApi, WorkerObs, node_info, pod_usage, worker_obs
from proctor.config import OperatorConfig
from proctor.connection import RunRef, SharedClients
from proctor.controller.metrics import OperatorMetrics
from proctor.controller.pass_loop import PassLoop
from proctor.controller.pass_timing import PassSchedule
from proctor.controller.peering import PeeringGate, is_pattern, own_identity
from proctor.controller.suite import register_suite_handlers
from proctor.evalrun.gather import ClusterView
from proctor.evalrun.reconcile import PassResult, finalize_run, reconcile_run
from proctor.evalrun.runtime import RunRuntime
from proctor.pods import LABEL_COMPONENT, LABEL_RUN

log = structlog.get_logger("proctor.operator")

GROUP = "proctor.dev"
FINALIZER = "proctor.dev/finalizer"
RESOURCE = (GROUP, "v1alpha1", "evalruns")


PASS_THREADS = 16
"""EvalRun passes under way at once, each on a thread of the pass loop's pool. A pass mostly
waits on the API, Redis or S3, so more passes in flight than cores keeps a burst of new runs
moving; the API client pools as many connections. More is not faster: on two cores, 1,000 new
runs were all planned in 72.8 s with 16, 78.3 s with 8 and 140.7 s with 32, whose extra repeat
passes wrote more status and slowed the API server (e2e/bench/many_runs.py, docs/performance.md)."""

KOPF_THREADS = 4
"""Threads for kopf's sync handlers: BenchmarkSuite passes and EvalRun finalizers."""

FINALIZER_WAIT_SECONDS = 30.0
"""How long a deleted run's finalizer waits for a pass of the run that is under way."""


class DiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's diff-base annotation (the spec last handled), kept only for the kinds whose
    handlers diff it: BenchmarkSuites (create, update and resume handlers). An EvalRun has none
    (its passes are scheduled from watch events and ``metadata.generation``) and pods and
    nodes are only indexed, so for them kopf neither writes the annotation (an API write and a
    watch event fewer per run) nor builds the essence it would diff, a deep copy of the whole
    body with its managedFields on every watch event: a tenth of the operator's CPU with a
    thousand new runs."""

    def __init__(self, *, only_for: Set[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.only_for = frozenset(only_for)

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        if body.get("kind") not in self.only_for:
            return kopf.BodyEssence()
        return super().build(body=body, extra_fields=extra_fields)

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        if body.get("kind") not in self.only_for:
            return None
        return super().fetch(body=body)

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        if body.get("kind") in self.only_for:
            super().store(body=body, patch=patch, essence=essence)


def configure(settings: kopf.OperatorSettings, *, peering: bool) -> None:
    """Operator settings: quiet Events, our finalizer, progress in annotations (the status
    schema is strict, so kopf must not write ``status.kopf``), peering only when asked."""
    settings.posting.level = logging.WARNING
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = DiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration", only_for={"BenchmarkSuite"}
    )
    settings.peering.standalone = not peering
    settings.peering.mandatory = peering
    settings.peering.name = "proctor"
    settings.watching.server_timeout = 300
    settings.execution.max_workers = KOPF_THREADS
    # A suite being deleted waits for its timer to stop. A pass under way when the deletion
    # arrives is let finish for up to 2 s, then polled every second; kopf's defaults (a few
    # event-loop cycles, then a poll every 60 s) would hold the suite, finalizer and all, for
    # up to a minute.
    settings.background.instant_exit_timeout = 2.0
    settings.background.cancellation_polling = 1.0


def _ref(meta: Mapping[str, Any]) -> RunRef:
    return RunRef(
        namespace=str(meta["namespace"]),
        name=str(meta["name"]),
        uid=str(meta["uid"]),
        generation=int(meta.get("generation") or 1),
        annotations=dict(meta.get("annotations") or {}),
    )


def run_pass(
    *,
    body: Mapping[str, Any],
    memo: Any,
    rt: RunRuntime,
    nodes: Any,
    usage: Any,
    workers: Any,
    trigger: str = "timer",
) -> PassResult | None:
    """One reconcile pass of one run, serialized per run, with metrics; None when the run
    was held (a pass or its finalizer under way) and nothing was done."""
    meta = body["metadata"]
    ref = _ref(meta)
    metrics: OperatorMetrics = memo.metrics
    if not rt.lock.acquire(blocking=False):
        return None
    if rt.finalized:
        rt.lock.release()
        return None
    rt.pass_generation = ref.generation
    started = time.monotonic()
    try:
        view = ClusterView(
            nodes=list(nodes.get(None, [])),
            usage={k: list(v) for k, v in usage.items()},
            workers=list(workers.get((ref.namespace, ref.name), [])),
            departed=memo.departures.take((ref.namespace, ref.name)),
        )

        def emit(event: Event) -> None:
            memo.api.post_event(body, event)

        result = reconcile_run(
            body_spec=body["spec"],
            body_status=body.get("status"),
            ref=ref,
            config=memo.config,
            api=memo.api,
            view=view,
            rt=rt,
            emit=emit,
            clients=memo.clients,
        )
    except Exception:
        metrics.reconcile_errors.inc()
        raise
    finally:
        elapsed = time.monotonic() - started
        metrics.reconcile_seconds.observe(elapsed)
        rt.lock.release()
    if result.created or result.deleted:
        log.info(
            "workers changed",
            run=ref.name,
            namespace=ref.namespace,
            trigger=trigger,
            created=result.created,
            deleted=result.deleted,
            planned=result.planned,
            backlog=result.backlog,
            pass_ms=round(elapsed * 1000, 1),
        )
    metrics.observe_run(ref.namespace, ref.name, result.phase)
    metrics.planned.labels(ref.namespace, ref.name).set(result.planned)
    metrics.ready.labels(ref.namespace, ref.name).set(result.ready)
    metrics.backlog.labels(ref.namespace, ref.name).set(result.backlog)
    metrics.observe_progress(
        ref.namespace,
        ref.name,
        desired=result.desired,
        completed=result.completed,
        total=result.total,
        cases_per_second=result.cases_per_second,
        stalled=result.stalled,
    )
    if result.new_disruptions:
        metrics.disruptions.labels(ref.namespace, ref.name).inc(result.new_disruptions)
    if result.expired and not rt.deleting:
        rt.deleting = True
        try:
            memo.api.delete_run(ref.namespace, ref.name)
        except Exception as exc:
            rt.deleting = False  # the next pass asks again
            log.warning("run not deleted", run=ref.name, namespace=ref.namespace, error=str(exc))
    return result


KOPF_REQUEST_CONNECTIONS = 32
"""Connections kopf may hold for requests (finalizer patches, Events of suites), beside one per
watch stream. kopf's own session has no limit: a thousand new runs made it open a connection
for each finalizer patch under way, 128 at once, each with its TLS buffers (about 100 MB of the
operator's RSS)."""


def kopf_connection_limit(namespaces: Sequence[str]) -> int:
    """aiohttp's connection limit for kopf (pure): the watch streams (EvalRuns, suites, pods
    and the peering object per namespace; nodes, CRDs, namespaces and the cluster's peering
    object) hold one each for as long as they run, so the limit leaves room for all of them;
    0 (no limit) when namespaces are patterns, whose matches kopf watches as they appear."""
    if any(is_pattern(ns) for ns in namespaces):
        return 0
    streams = 4 * max(1, len(namespaces)) + 4
    return streams + KOPF_REQUEST_CONNECTIONS


def build_registry(
    config: OperatorConfig,
    *,
    peering: bool = False,
    metrics_port: int | None = None,
    identity: str = "",
    priority: int = 0,
    namespaces: Sequence[str] = (),
) -> kopf.OperatorRegistry:
    """Every handler of the operator, on a fresh registry. ``identity`` and ``priority`` are
    the ones kopf peers under (with ``peering``); ``namespaces`` those it serves (none:
    cluster-wide)."""
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        configure(settings, peering=peering)
        memo.config = config
        # As many pooled connections as pass threads: fewer means new TLS connections
        # under load.
        memo.api = ClusterApi(KubeApi(pool_size=PASS_THREADS + KOPF_THREADS))
        memo.runs = {}
        # Filled by the first EvalRun event (kopf hands indexes to resource handlers only);
        # a dict, since each object's handlers get a shallow copy of this memo.
        memo.indexes = {}
        memo.clients = SharedClients()
        memo.departures = Departures()
        memo.spot_nodes = SpotNodes()
        memo.metrics = OperatorMetrics()
        gate = PeeringGate(
            memo.api.kube if peering else None,
            name=settings.peering.name,
            namespaces=namespaces,
            identity=identity,
            priority=priority,
        )
        memo.passes = PassLoop(
            PassSchedule(config.scaling_interval_seconds),
            lambda body, trigger: _scheduled_pass(memo, body, trigger),
            slots=PASS_THREADS,
            gate=gate,
        )
        memo.passes.start()
        if metrics_port:
            memo.metrics.serve(metrics_port)
        log.info("operator started", peering=peering, metrics_port=metrics_port)

    @kopf.on.login(registry=registry)
    async def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.AiohttpSession:
        # The same credentials as the operator's own client (ServiceAccount, else kubeconfig),
        # on a session whose connections are bounded (see kopf_connection_limit).
        import aiohttp

        info = kube_login(trust_env=settings.networking.trust_env)
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=kopf_connection_limit(namespaces), ssl=info.as_ssl_context()
            ),
            headers={**info.as_http_headers(), "User-Agent": "proctor-operator (kopf)"},
            trust_env=info.trust_env,
        )
        return kopf.AiohttpSession(
            aiohttp_session=session, server=info.server, default_namespace=info.default_namespace
        )

    @kopf.on.cleanup(registry=registry)
    async def cleanup(memo: kopf.Memo, **_: Any) -> None:
        await memo.passes.stop()
        for rt in memo.runs.values():
            rt.close()
        memo.clients.close()
        memo.api.close()

    @kopf.index("nodes", id="proctor_nodes", registry=registry)
    async def proctor_nodes(body: kopf.Body, memo: kopf.Memo, **_: Any) -> dict[None, Any]:
        node = node_info(body)
        memo.spot_nodes.note(node.name, node.is_spot)
        return {None: node}

    @kopf.index("pods", id="proctor_usage", registry=registry)
    async def proctor_usage(body: kopf.Body, **_: Any) -> dict[str, Any] | None:
        found = pod_usage(body)
        return {found[0]: found[1]} if found else None

    @kopf.index(
        "pods",
        id="proctor_workers",
        labels={LABEL_COMPONENT: "worker", LABEL_RUN: kopf.PRESENT},
        registry=registry,
    )
    async def proctor_workers(body: kopf.Body, **_: Any) -> dict[tuple[str, str], WorkerObs]:
        obs = worker_obs(body)
        return {(obs.namespace, obs.run): obs}

    @kopf.on.event(
        "pods",
        labels={LABEL_COMPONENT: "worker", LABEL_RUN: kopf.PRESENT},
        registry=registry,
    )
    async def worker_deleted(type: str, body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
        # A pod may be bound and deleted between two passes; its last state is kept here for
        # the run's next pass, with its node's spot-ness (the node may be gone by then).
        if type != "DELETED":
            return
        obs = worker_obs(body)
        memo.departures.add(
            (obs.namespace, obs.run), Departed(obs, memo.spot_nodes.was_spot(obs.node))
        )

    @kopf.on.event(*RESOURCE, registry=registry)
    async def run_event(type: str, body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
        # Every run's body goes to the pass loop, trimmed: a new run (or every run, after a
        # restart) is passed at once, a spec change too, and each run every interval after.
        if not memo.indexes:  # kopf fills its indexes before any other handler runs
            memo.indexes.update(
                nodes=kwargs["proctor_nodes"],
                usage=kwargs["proctor_usage"],
                workers=kwargs["proctor_workers"],
            )
        uid = str(body["metadata"]["uid"])
        if type == "DELETED" or body["metadata"].get("deletionTimestamp"):
            memo.passes.forget(uid)
            return
        if uid not in memo.runs:
            memo.runs[uid] = RunRuntime()
        memo.passes.observe(body)

    @kopf.on.delete(*RESOURCE, registry=registry)
    def delete(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        ref = _ref(body["metadata"])
        rt: RunRuntime | None = memo.runs.get(ref.uid)
        # The run has left the pass loop; a pass already under way is let finish first.
        held = rt is not None and rt.lock.acquire(timeout=FINALIZER_WAIT_SECONDS)
        try:
            if rt is not None:
                rt.finalized = True
            finalize_run(body["spec"], ref, memo.config, memo.api, memo.clients)
        finally:
            if rt is not None:
                if held:
                    rt.lock.release()
                memo.runs.pop(ref.uid, None)
                rt.close()
        memo.metrics.forget_run(ref.namespace, ref.name)
        memo.departures.forget((ref.namespace, ref.name))

    register_suite_handlers(registry, config)
    return registry


def _scheduled_pass(memo: Any, body: Mapping[str, Any], trigger: str) -> bool:
    """The pass loop's ``do_pass``: False when the run was held and nothing was done. A pass
    that fails is tried again every interval; its error is posted once as a Warning Event
    (``ReconcileError``), again only when the error changes."""
    uid = str(body["metadata"]["uid"])
    rt: RunRuntime | None = memo.runs.get(uid)
    if rt is None or not memo.passes.schedule.holds(uid):
        return True  # deleted since it was taken
    try:
        result = run_pass(body=body, memo=memo, rt=rt, trigger=trigger, **memo.indexes)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        if rt.last_error != error:
            rt.last_error = error
            message = f"a reconcile pass failed (retried every interval): {error}"
            memo.api.post_event(body, Event("Warning", "ReconcileError", message))
        raise
    if result is not None:
        rt.last_error = None
    return result is not None


MALLOC_ARENAS = 2
"""glibc gives each thread that allocates its own arena (up to 8 per core); with 32 handler
threads that is dozens of mostly empty arenas, which made much of the operator's RSS. Two are
plenty for threads that mostly wait on the network."""


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """``mallopt(M_ARENA_MAX, arenas)`` before any handler thread starts; False where the C
    library is not glibc (nothing changes there). ``MALLOC_ARENA_MAX`` in the environment wins."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_arena_max = -8  # <malloc.h>
    return bool(mallopt(m_arena_max, arenas))


def run_operator(
    config: OperatorConfig,
    *,
    namespaces: list[str],
    peering: bool = False,
    peering_priority: int = 0,
    liveness_port: int | None = 8080,
    metrics_port: int | None = 9090,
) -> None:
    """Run until SIGTERM/SIGINT: cluster-wide, or only in ``namespaces``. With peering, the
    live peer of highest ``peering_priority`` works and the others pause (kopf pauses all
    peers of equal priority, so replicas need distinct ones)."""
    limit_malloc_arenas()
    identity = own_identity()
    registry = build_registry(
        config,
        peering=peering,
        metrics_port=metrics_port,
        identity=identity,
        priority=peering_priority,
        namespaces=namespaces,
    )
    liveness = f"http://0.0.0.0:{liveness_port}/healthz" if liveness_port else None
    kopf.run(
        registry=registry,
        clusterwide=not namespaces,
        namespaces=namespaces,
        standalone=not peering,
        priority=peering_priority,
        identity=identity,  # type: ignore[arg-type]  # kopf's Identity is a NewType of str
        liveness_endpoint=liveness,
        memo=kopf.Memo(),
    )
