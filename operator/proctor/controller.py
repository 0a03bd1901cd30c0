"""kopf handlers of the EvalRun operator. Thin: they say *when*; :mod:`proctor.reconcile` says
*what*, and :mod:`proctor.observe` is the only code that talks to the API.

Handlers are registered on a registry built by :func:`build_registry`, because the timer's
interval comes from the operator configuration, which is read at start-up.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import logging
import os
import threading
import time
from collections.abc import Mapping, Set
from typing import Any

import kopf
import structlog

from proctor.config import OperatorConfig
from proctor.kubeapi import KubeApi
from proctor.kubeapi import login as kube_login
from proctor.losses import Departed, Departures, SpotNodes
from proctor.observe import ClusterApi, WorkerObs, node_info, pod_usage, worker_obs
from proctor.operator_metrics import OperatorMetrics
from proctor.pods import LABEL_COMPONENT, LABEL_RUN
from proctor.reconcile import (
    ClusterView,
    PassResult,
    RunRef,
    RunRuntime,
    SharedClients,
    finalize_run,
    reconcile_run,
)
from proctor.status import Event
from proctor.suite_controller import register_suite_handlers

log = structlog.get_logger("proctor.operator")

GROUP = "proctor.dev"
FINALIZER = "proctor.dev/finalizer"
RESOURCE = (GROUP, "v1alpha1", "evalruns")


SPEC_RETRY_SECONDS = 0.5
"""How soon a spec change whose pass found an older pass of the run under way tries again."""

TTL_DELETE_DELAY_SECONDS = 0.5
"""How long after the pass that finds a run's TTL passed the run is deleted (see run_pass)."""

WORKER_THREADS = 16
"""Threads for sync handlers. A pass mostly waits on the API, Redis or S3, so more passes in
flight than cores keeps a burst of new runs moving; the API client pools as many connections.
More is not faster: on two cores, 1,000 new runs were all planned in a median 62.4 s with 16
and 67.4 s with 32 (three runs each of e2e/bench/many_runs.py), peak RSS 285 and 303 MB."""


class DiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's diff-base annotation (the spec last handled), kept only for kinds whose handlers
    need it. An EvalRun has no create or update handler: its timer's first pass plans it and
    a spec change is seen from ``metadata.generation``, so kopf writes it no annotation (an API
    write and a watch event fewer per run, which a thousand new runs at once feel)."""

    def __init__(self, *, not_for: Set[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.not_for = frozenset(not_for)

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        if body.get("kind") in self.not_for:
            return None
        return super().fetch(body=body)

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        if body.get("kind") not in self.not_for:
            super().store(body=body, patch=patch, essence=essence)


def configure(settings: kopf.OperatorSettings, *, peering: bool) -> None:
    """Operator settings: quiet Events, our finalizer, progress in annotations (the status
    schema is strict, so kopf must not write ``status.kopf``), peering only when asked."""
    settings.posting.level = logging.WARNING
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = DiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration", not_for={"EvalRun"}
    )
    settings.peering.standalone = not peering
    settings.peering.mandatory = peering
    settings.peering.name = "proctor"
    settings.watching.server_timeout = 300
    settings.execution.max_workers = WORKER_THREADS
    # A run being deleted waits for its timer to stop. A pass under way when the deletion
    # arrives is let finish for up to 2 s, then polled every second; kopf's defaults (a few
    # event-loop cycles, then a poll every 60 s) would hold the run, finalizer and all, for up
    # to a minute.
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


def _runtime(memo: Any, uid: str) -> RunRuntime:
    runs: dict[str, RunRuntime] = memo.runs
    if uid not in runs:
        runs[uid] = RunRuntime()
    return runs[uid]


def run_pass(
    *,
    body: kopf.Body,
    memo: Any,
    nodes: Any,
    usage: Any,
    workers: Any,
    trigger: str = "timer",
) -> PassResult | None:
    """One reconcile pass of one run, serialized per run, with metrics."""
    meta = body["metadata"]
    ref = _ref(meta)
    rt = _runtime(memo, ref.uid)
    metrics: OperatorMetrics = memo.metrics
    if not rt.lock.acquire(blocking=False):
        return None  # Another pass of this run is under way; the next tick catches up.
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
            kopf.event(body, type=event.type, reason=event.reason, message=event.message)

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
        # Not from inside this handler: kopf handles the deletion by first stopping the run's
        # timer, and a deletion that arrives while the timer's own invocation is still under
        # way sometimes left the run, finalizer and all, unhandled. A moment later the
        # invocation has returned.
        rt.deleting = True
        deleter = threading.Timer(TTL_DELETE_DELAY_SECONDS, _delete_run, args=(memo.api, ref, rt))
        deleter.daemon = True
        deleter.start()
    return result


def _delete_run(api: ClusterApi, ref: RunRef, rt: RunRuntime) -> None:
    try:
        api.delete_run(ref.namespace, ref.name)
    except Exception as exc:
        rt.deleting = False  # the next pass asks again
        log.warning("run not deleted", run=ref.name, namespace=ref.namespace, error=str(exc))


def build_registry(
    config: OperatorConfig, *, peering: bool = False, metrics_port: int | None = None
) -> kopf.OperatorRegistry:
    """Every handler of the operator, on a fresh registry."""
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        configure(settings, peering=peering)
        memo.config = config
        # As many pooled connections as handler threads: fewer means new TLS connections
        # under load.
        memo.api = ClusterApi(KubeApi(pool_size=WORKER_THREADS))
        memo.runs = {}
        memo.clients = SharedClients()
        memo.departures = Departures()
        memo.spot_nodes = SpotNodes()
        memo.metrics = OperatorMetrics()
        if metrics_port:
            memo.metrics.serve(metrics_port)
        log.info("operator started", peering=peering, metrics_port=metrics_port)

    @kopf.on.login(registry=registry)
    def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
        # The same credentials as the operator's own client (ServiceAccount, else kubeconfig).
        return kube_login(trust_env=settings.networking.trust_env)

    @kopf.on.cleanup(registry=registry)
    def cleanup(memo: kopf.Memo, **_: Any) -> None:
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
    async def spec_changed(type: str, body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
        # A new run (or every run, after a restart) gets its first pass from its timer, which
        # kopf starts with no delay; a spec change gets one at once, not at the next tick.
        meta = body["metadata"]
        rt = memo.runs.get(meta["uid"])
        if type != "MODIFIED" or rt is None or meta.get("deletionTimestamp"):
            return
        generation = int(meta.get("generation") or 1)
        loop = asyncio.get_running_loop()
        while rt.pass_generation < generation and memo.runs.get(meta["uid"]) is rt:
            result = await loop.run_in_executor(
                kwargs["settings"].execution.executor,
                functools.partial(
                    run_pass,
                    body=body,
                    memo=memo,
                    nodes=kwargs["proctor_nodes"],
                    usage=kwargs["proctor_usage"],
                    workers=kwargs["proctor_workers"],
                    trigger="spec",
                ),
            )
            if result is None:
                # A pass of the older spec holds the run: try again soon, never drop a change.
                await asyncio.sleep(SPEC_RETRY_SECONDS)

    @kopf.timer(*RESOURCE, interval=config.scaling_interval_seconds, registry=registry)
    def reconcile(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
        run_pass(
            body=body,
            memo=memo,
            nodes=kwargs["proctor_nodes"],
            usage=kwargs["proctor_usage"],
            workers=kwargs["proctor_workers"],
        )

    @kopf.on.delete(*RESOURCE, registry=registry)
    def delete(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        ref = _ref(body["metadata"])
        finalize_run(body["spec"], ref, memo.config, memo.api, memo.clients)
        rt = memo.runs.pop(ref.uid, None)
        if rt is not None:
            rt.close()
        memo.metrics.forget_run(ref.namespace, ref.name)
        memo.departures.forget((ref.namespace, ref.name))

    register_suite_handlers(registry, config)
    return registry


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
    registry = build_registry(config, peering=peering, metrics_port=metrics_port)
    liveness = f"http://0.0.0.0:{liveness_port}/healthz" if liveness_port else None
    kopf.run(
        registry=registry,
        clusterwide=not namespaces,
        namespaces=namespaces,
        standalone=not peering,
        priority=peering_priority,
        liveness_endpoint=liveness,
        memo=kopf.Memo(),
    )
