"""kopf handlers of BenchmarkSuites. Thin: they say *when*; :mod:`proctor.suite.reconcile`
says *what*.

Registered on the EvalRun operator's registry by :func:`register_suite_handlers` (called from
:func:`proctor.controller.evalrun.build_registry`), so one operator process serves both kinds
and shares its node and pod-usage indexes, configuration and API client.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf
import structlog

from proctor.api.conditions import Event
from proctor.api.names import GROUP, VERSION
from proctor.api.times import parse_time
from proctor.api.v1alpha1 import SUITE_PLURAL
from proctor.cluster.losses import Departed
from proctor.config import OperatorConfig
from proctor.controller.refs import run_ref
from proctor.pods import LABEL_COMPONENT, LABEL_RUN
from proctor.suite.api import SuiteApi
from proctor.suite.gather import BenchPod, SuiteView, bench_pod, departure_key, occupied_node
from proctor.suite.pods import COMPONENT
from proctor.suite.reconcile import finalize_suite, reconcile_suite
from proctor.suite.runtime import SuitePassResult, SuiteRuntime

log = structlog.get_logger("proctor.operator")

RESOURCE = (GROUP, VERSION, SUITE_PLURAL)


def _created(meta: Mapping[str, Any]) -> datetime:
    return parse_time(meta.get("creationTimestamp")) or datetime.now(UTC)


def _runtime(memo: Any, uid: str) -> SuiteRuntime:
    suites: dict[str, SuiteRuntime] = memo.suites
    if uid not in suites:
        suites[uid] = SuiteRuntime()
    return suites[uid]


def suite_pass(*, body: kopf.Body, memo: Any, **indexes: Any) -> SuitePassResult | None:
    """One reconcile pass of one suite, serialized per suite."""
    meta = body["metadata"]
    ref = run_ref(meta)
    runtime = _runtime(memo, ref.uid)
    if not runtime.lock.acquire(blocking=False):
        return None  # Another pass of this suite is under way; the next tick catches up.
    started = time.monotonic()
    try:
        view = SuiteView(
            nodes=list(indexes["proctor_nodes"].get(None, [])),
            usage={k: list(v) for k, v in indexes["proctor_usage"].items()},
            pods=list(indexes["proctor_bench_pods"].get((ref.namespace, ref.name), [])),
            occupied=list(indexes["proctor_bench_nodes"].get(None, [])),
            departed=memo.departures.take(departure_key(ref.namespace, ref.name)),
        )

        def emit(event: Event) -> None:
            kopf.event(body, type=event.type, reason=event.reason, message=event.message)

        result = reconcile_suite(
            body_spec=body["spec"],
            body_status=body.get("status"),
            created=_created(meta),
            ref=ref,
            config=memo.config,
            api=memo.suite_api,
            clients=memo.clients,
            view=view,
            runtime=runtime,
            emit=emit,
        )
    except Exception:
        memo.metrics.reconcile_errors.inc()
        raise
    finally:
        memo.metrics.reconcile_seconds.observe(time.monotonic() - started)
        runtime.lock.release()
    memo.metrics.suites.observe(
        ref.namespace, ref.name, result.status, new_disruptions=result.new_disruptions
    )
    return result


# kopf ids of the handlers whose progress kopf writes to a suite's annotations, kept from when
# they were defined in register_suite_handlers: a new id would orphan that progress across an
# upgrade.
APPLY_ID = "register_suite_handlers.<locals>.suite_apply"
TIMER_ID = "register_suite_handlers.<locals>.suite_reconcile"
FINALIZER_ID = "register_suite_handlers.<locals>.suite_delete"

BENCH_PODS: dict[str, Any] = {
    LABEL_COMPONENT: COMPONENT,
    LABEL_RUN: kopf.PRESENT,
}
"""The labels of a suite's benchmark pods."""


def register_suite_handlers(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    """Add the BenchmarkSuite handlers and indexes to ``registry`` (after the EvalRun ones,
    whose start-up handler sets up the API client and metrics these use)."""

    @kopf.on.startup(registry=registry)
    def suite_startup(memo: kopf.Memo, **_: Any) -> None:
        memo.suites = {}
        memo.suite_api = SuiteApi(memo.api.kube)

    @kopf.on.cleanup(registry=registry)
    def suite_cleanup(memo: kopf.Memo, **_: Any) -> None:
        for runtime in memo.suites.values():
            runtime.close()

    register_suite_indexes(registry)
    register_suite_passes(registry, config)


def register_suite_indexes(registry: kopf.OperatorRegistry) -> None:
    """Each suite's benchmark pods, deleted ones kept for the next pass, and the nodes that
    hold one."""

    @kopf.index("pods", id="proctor_bench_pods", labels=BENCH_PODS, registry=registry)
    async def proctor_bench_pods(body: kopf.Body, **_: Any) -> dict[tuple[str, str], BenchPod]:
        pod = bench_pod(body)
        return {(pod.obs.namespace, pod.obs.run): pod}

    @kopf.on.event("pods", labels=BENCH_PODS, registry=registry)
    async def bench_pod_deleted(type: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        # As for EvalRun workers: a pod bound and deleted between two passes is never in the
        # index; its last state waits here for the suite's next pass.
        if type != "DELETED":
            return
        pod = bench_pod(body).obs
        gone = Departed(pod, memo.spot_nodes.was_spot(pod.node))
        memo.departures.add(departure_key(pod.namespace, pod.run), gone)

    @kopf.index(
        "pods", id="proctor_bench_nodes", labels={LABEL_COMPONENT: COMPONENT}, registry=registry
    )
    async def proctor_bench_nodes(body: kopf.Body, **_: Any) -> dict[None, str] | None:
        # Nodes holding a benchmark pod of any suite: exclusive suites plan around them.
        node = occupied_node(body)
        return {None: node} if node else None


def register_suite_passes(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    """A pass on create, spec change and resume, one every interval, and the finalizer."""

    @kopf.on.resume(*RESOURCE, id=APPLY_ID, registry=registry)
    @kopf.on.create(*RESOURCE, id=APPLY_ID, registry=registry)
    @kopf.on.update(*RESOURCE, field="spec", id=APPLY_ID, registry=registry)
    def suite_apply(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
        if suite_pass(body=body, memo=memo, **kwargs) is None:
            # A timer pass holds the suite; retry soon so a spec change is never dropped.
            raise kopf.TemporaryError("another pass of this suite is under way", delay=0.5)

    @kopf.timer(*RESOURCE, interval=config.scaling_interval_seconds, id=TIMER_ID, registry=registry)
    def suite_reconcile(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
        suite_pass(body=body, memo=memo, **kwargs)

    @kopf.on.delete(*RESOURCE, id=FINALIZER_ID, registry=registry)
    def suite_delete(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        finalize(memo, body)


def finalize(memo: Any, body: Mapping[str, Any]) -> None:
    """The finalizer: :func:`finalize_suite`, then what the operator kept of the suite goes."""
    ref = run_ref(body["metadata"])
    finalize_suite(
        spec_body=body["spec"],
        status_body=body.get("status"),
        ref=ref,
        config=memo.config,
        api=memo.suite_api,
        clients=memo.clients,
    )
    memo.departures.forget(departure_key(ref.namespace, ref.name))
    memo.metrics.suites.forget(ref.namespace, ref.name)
    runtime = memo.suites.pop(ref.uid, None)
    if runtime is not None:
        runtime.close()
    log.info("suite deleted", suite=ref.name, namespace=ref.namespace)
