"""kopf handlers of the EvalRun operator. Thin: they say *when* (with the pass loop,
:mod:`proctor.controller.pass_loop`); :mod:`proctor.evalrun.reconcile` says *what*, and
:mod:`proctor.cluster.api` is the only code that talks to the API.

Handlers are registered on a registry built by :func:`build_registry` (one registering function
per concern: start-up and shutdown, the indexes, the EvalRun events), because the loop's
interval, the suites' timer and the peering identity come from the operator's configuration
and arguments, which are read at start-up.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import kopf
import structlog

from proctor.api.conditions import Event
from proctor.api.names import GROUP, VERSION
from proctor.api.v1alpha1 import EVALRUN_PLURAL
from proctor.cluster.api import ClusterApi
from proctor.cluster.client import KubeApi
from proctor.cluster.losses import Departed, Departures, SpotNodes
from proctor.cluster.reads import PodState, node_info, pod_state, pod_usage
from proctor.config import OperatorConfig
from proctor.connection import RunRef, SharedClients
from proctor.controller.metrics import OperatorMetrics
from proctor.controller.pass_loop import PassLoop
from proctor.controller.pass_timing import PassSchedule
from proctor.controller.peering import PeeringGate, own_identity
from proctor.controller.refs import run_ref
from proctor.controller.settings import (
    KOPF_THREADS,
    configure,
    kopf_session,
    limit_malloc_arenas,
)
from proctor.controller.suite import register_suite_handlers
from proctor.evalrun.gather import ClusterView
from proctor.evalrun.reconcile import PassResult, finalize_run, reconcile_run
from proctor.evalrun.runtime import RunRuntime
from proctor.pods import LABEL_COMPONENT, LABEL_RUN

log = structlog.get_logger("proctor.operator")

RESOURCE = (GROUP, VERSION, EVALRUN_PLURAL)


PASS_THREADS = 16
"""EvalRun passes under way at once, each on a thread of the pass loop's pool. A pass mostly
waits on the API, Redis or S3, so more passes in flight than cores keeps a burst of new runs
moving; the API client pools as many connections. More is not faster: on two cores, 1,000 new
runs were all planned in 72.8 s with 16, 78.3 s with 8 and 140.7 s with 32, whose extra repeat
passes wrote more status and slowed the API server (e2e/bench/many_runs.py, docs/performance.md)."""

FINALIZER_WAIT_SECONDS = 30.0
"""How long a deleted run's finalizer waits for a pass of the run that is under way."""


def run_pass(
    *,
    body: Mapping[str, Any],
    memo: Any,
    runtime: RunRuntime,
    nodes: Any,
    usage: Any,
    workers: Any,
    trigger: str = "timer",
) -> PassResult | None:
    """One reconcile pass of one run, serialized per run, with metrics; None when the run
    was held (a pass or its finalizer under way) and nothing was done."""
    ref = run_ref(body["metadata"])
    if not runtime.lock.acquire(blocking=False):
        return None
    if runtime.finalized:
        runtime.lock.release()
        return None
    runtime.pass_generation = ref.generation
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
            rt=runtime,
            emit=emit,
            clients=memo.clients,
        )
    except Exception:
        memo.metrics.reconcile_errors.inc()
        raise
    finally:
        elapsed = time.monotonic() - started
        memo.metrics.reconcile_seconds.observe(elapsed)
        runtime.lock.release()
    record_pass(memo.metrics, ref, result, trigger=trigger, seconds=elapsed)
    if result.expired and not runtime.deleting:
        delete_expired_run(memo.api, ref, runtime)
    return result


def record_pass(
    metrics: OperatorMetrics, ref: RunRef, result: PassResult, *, trigger: str, seconds: float
) -> None:
    """A pass that changed workers in the log; the run's gauges and counters."""
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
            pass_ms=round(seconds * 1000, 1),
        )
    metrics.observe_run(ref.namespace, ref.name, result.phase)
    metrics.planned.labels(ref.namespace, ref.name).set(result.planned)
    metrics.ready.labels(ref.namespace, ref.name).set(result.ready)
    metrics.backlog.labels(ref.namespace, ref.name).set(result.backlog)
    metrics.observe_progress(
        ref.namespace,
        ref.name,
        desired=result.desired,
        queued=result.queued,
        completed=result.completed,
        total=result.total,
        cases_per_second=result.cases_per_second,
        stalled=result.stalled,
    )
    if result.new_disruptions:
        metrics.disruptions.labels(ref.namespace, ref.name).inc(result.new_disruptions)
    if result.cache is not None:
        metrics.observe_cache(ref.namespace, ref.name, result.cache)


def delete_expired_run(api: ClusterApi, ref: RunRef, runtime: RunRuntime) -> None:
    """Delete a run whose time to live is over, once: a failed delete is asked again by the
    next pass."""
    runtime.deleting = True
    try:
        api.delete_run(ref.namespace, ref.name)
    except Exception as exc:
        runtime.deleting = False  # the next pass asks again
        log.warning("run not deleted", run=ref.name, namespace=ref.namespace, error=str(exc))


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
    peers = PeeringArgs(peering, identity, priority, tuple(namespaces))
    register_lifecycle(registry, config, peers, metrics_port)
    register_indexes(registry)
    register_run_handlers(registry)
    register_suite_handlers(registry, config)
    return registry


@dataclass(frozen=True)
class PeeringArgs:
    """Whether the operator peers, and as whom, over which namespaces (none: cluster-wide)."""

    peering: bool
    identity: str
    priority: int
    namespaces: tuple[str, ...]


def start_operator(
    settings: kopf.OperatorSettings,
    memo: kopf.Memo,
    config: OperatorConfig,
    args: PeeringArgs,
    metrics_port: int | None,
) -> None:
    """Settings, the shared clients and indexes' holders in ``memo``, and the pass loop."""
    configure(settings, peering=args.peering)
    memo.config = config
    # As many pooled connections as pass threads: fewer means new TLS connections under load.
    memo.api = ClusterApi(KubeApi(pool_size=PASS_THREADS + KOPF_THREADS))
    memo.runs = {}
    # Filled by the first EvalRun event (kopf hands indexes to resource handlers only); a
    # dict, since each object's handlers get a shallow copy of this memo.
    memo.indexes = {}
    memo.clients = SharedClients()
    memo.departures = Departures()
    memo.spot_nodes = SpotNodes()
    memo.metrics = OperatorMetrics()
    gate = PeeringGate(
        memo.api.kube if args.peering else None,
        name=settings.peering.name,
        namespaces=args.namespaces,
        identity=args.identity,
        priority=args.priority,
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
    log.info("operator started", peering=args.peering, metrics_port=metrics_port)


def register_lifecycle(
    registry: kopf.OperatorRegistry,
    config: OperatorConfig,
    args: PeeringArgs,
    metrics_port: int | None,
) -> None:
    """Start-up, login and cleanup."""

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        start_operator(settings, memo, config, args, metrics_port)

    @kopf.on.login(registry=registry)
    async def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.AiohttpSession:
        return kopf_session(settings, args.namespaces)

    @kopf.on.cleanup(registry=registry)
    async def cleanup(memo: kopf.Memo, **_: Any) -> None:
        await memo.passes.stop()
        for runtime in memo.runs.values():
            runtime.close()
        memo.clients.close()
        memo.api.close()


FINALIZER_HANDLER_ID = "build_registry.<locals>.delete"
"""The finalizer's kopf id, kept from when it was defined in build_registry: kopf keys the
progress it writes to a run's annotations by handler id, so a new id would orphan a retried
finalizer's progress across an upgrade."""

WORKER_PODS: dict[str, Any] = {
    LABEL_COMPONENT: "worker",
    LABEL_RUN: kopf.PRESENT,
}
"""The labels of an EvalRun's worker pods."""


def register_indexes(registry: kopf.OperatorRegistry) -> None:
    """The indexes a pass reads: nodes, pod usage per node, and each run's worker pods."""

    @kopf.index("nodes", id="proctor_nodes", registry=registry)
    async def proctor_nodes(body: kopf.Body, memo: kopf.Memo, **_: Any) -> dict[None, Any]:
        node = node_info(body)
        memo.spot_nodes.note(node.name, node.is_spot)
        return {None: node}

    @kopf.index("pods", id="proctor_usage", registry=registry)
    async def proctor_usage(body: kopf.Body, **_: Any) -> dict[str, Any] | None:
        found = pod_usage(body)
        return {found[0]: found[1]} if found else None

    @kopf.index("pods", id="proctor_workers", labels=WORKER_PODS, registry=registry)
    async def proctor_workers(body: kopf.Body, **_: Any) -> dict[tuple[str, str], PodState]:
        pod = pod_state(body)
        return {(pod.namespace, pod.run): pod}


def register_run_handlers(registry: kopf.OperatorRegistry) -> None:
    """EvalRun events into the pass loop, deleted worker pods kept for the next pass, and the
    finalizer."""

    @kopf.on.event("pods", labels=WORKER_PODS, registry=registry)
    async def worker_deleted(type: str, body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
        # A pod may be bound and deleted between two passes; its last state is kept here for
        # the run's next pass, with its node's spot-ness (the node may be gone by then).
        if type == "DELETED":
            note_departed(memo, body)

    @kopf.on.event(*RESOURCE, registry=registry)
    async def run_event(type: str, body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
        observe_run_event(memo, type, body, kwargs)

    @kopf.on.delete(*RESOURCE, id=FINALIZER_HANDLER_ID, registry=registry)
    def delete(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        finalize(memo, body)


def note_departed(memo: Any, body: Mapping[str, Any]) -> None:
    """Keep a deleted worker pod's last state for its run's next pass."""
    pod = pod_state(body)
    memo.departures.add((pod.namespace, pod.run), Departed(pod, memo.spot_nodes.was_spot(pod.node)))


def observe_run_event(memo: Any, type_: str, body: Mapping[str, Any], indexes: Any) -> None:
    """Every run's body goes to the pass loop, trimmed: a new run (or every run, after a
    restart) is passed at once, a spec change too, and each run every interval after."""
    if not memo.indexes:  # kopf fills its indexes before any other handler runs
        memo.indexes.update(
            nodes=indexes["proctor_nodes"],
            usage=indexes["proctor_usage"],
            workers=indexes["proctor_workers"],
        )
    uid = str(body["metadata"]["uid"])
    if type_ == "DELETED" or body["metadata"].get("deletionTimestamp"):
        memo.passes.forget(uid)
        return
    if uid not in memo.runs:
        memo.runs[uid] = RunRuntime()
    memo.passes.observe(body)


def finalize(memo: Any, body: Mapping[str, Any]) -> None:
    """The finalizer: the run has left the pass loop; a pass already under way is let finish
    first (up to :data:`FINALIZER_WAIT_SECONDS`)."""
    ref = run_ref(body["metadata"])
    runtime: RunRuntime | None = memo.runs.get(ref.uid)
    held = runtime is not None and runtime.lock.acquire(timeout=FINALIZER_WAIT_SECONDS)
    try:
        if runtime is not None:
            runtime.finalized = True
        finalize_run(body["spec"], ref, memo.config, memo.api, memo.clients)
    finally:
        if runtime is not None:
            if held:
                runtime.lock.release()
            memo.runs.pop(ref.uid, None)
            runtime.close()
    memo.metrics.forget_run(ref.namespace, ref.name)
    memo.departures.forget((ref.namespace, ref.name))


def _scheduled_pass(memo: Any, body: Mapping[str, Any], trigger: str) -> bool:
    """The pass loop's ``do_pass``: False when the run was held and nothing was done. A pass
    that fails is tried again every interval; its error is posted once as a Warning Event
    (``ReconcileError``), again only when the error changes."""
    uid = str(body["metadata"]["uid"])
    runtime: RunRuntime | None = memo.runs.get(uid)
    if runtime is None or not memo.passes.schedule.holds(uid):
        return True  # deleted since it was taken
    try:
        result = run_pass(body=body, memo=memo, runtime=runtime, trigger=trigger, **memo.indexes)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        if runtime.last_error != error:
            runtime.last_error = error
            message = f"a reconcile pass failed (retried every interval): {error}"
            memo.api.post_event(body, Event("Warning", "ReconcileError", message))
        raise
    if result is not None:
        runtime.last_error = None
    return result is not None


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
