"""One reconcile pass of an EvalRun: gather, decide, act.

Order: admit (Secrets, feasibility) -> enqueue once -> progress and early stopping -> plan ->
classify pods (disruption vs failure) -> scale -> status and Events. What the pass sees is
gathered into frozen values (:mod:`proctor.evalrun.gather`), what it does is chosen by pure
functions (:mod:`proctor.evalrun.decide`, :mod:`proctor.evalrun.status`, the planner and the
scaler) and applied at the edges (:mod:`proctor.evalrun.act`). Every step is safe to repeat;
what must survive a pass (the incremental progress, the scaler's stabilization clock, pods
already counted) lives in :class:`proctor.evalrun.runtime.RunRuntime`, kept in kopf's ``memo``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from proctor.api.conditions import Problem, is_true
from proctor.api.quantity import parse_duration
from proctor.api.v1alpha1.evalrun import (
    TERMINAL_PHASES,
    CacheStatus,
    CaseCounts,
    EvalRunSpec,
    WorkerCounts,
)
from proctor.cache.counts import cache_status
from proctor.cluster.api import ClusterApi
from proctor.cluster.losses import ledger_status
from proctor.cluster.writes import EventSink
from proctor.config import OperatorConfig
from proctor.connection import Connection, RunRef, SharedClients, build_connection
from proctor.evalrun.act import (
    apply_pods,
    apply_status,
    delete_pods,
    delete_unseen,
    write_checkpoint,
    write_summary,
)
from proctor.evalrun.dataset import admit_dataset
from proctor.evalrun.decide import (
    CANCEL_REASON,
    CancelStep,
    PodActions,
    QueueFacts,
    case_counts,
    checkpoint_due,
    decide_cancel,
    decide_early_stop,
    decide_finished_run,
    decide_pods,
    decide_status,
    drained,
    infeasible,
    proctor_summary,
)
from proctor.evalrun.gather import (
    ClusterView,
    ProgressObservation,
    RunObservation,
    gather_placement,
    gather_progress,
    gather_run,
    probe_cache,
    run_storage,
)
from proctor.evalrun.runtime import RunRuntime
from proctor.planning.admission import bind_admission
from proctor.planning.plan import Demand, PlanResult, compute_plan
from proctor.queue import QueueDepth
from proctor.storage import ProgressSnapshot

log = structlog.get_logger("proctor.operator")


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
    queued: int = 0  # live workers waiting for Kueue's admission
    completed: int = 0
    total: int = 0
    cases_per_second: float = 0.0
    stalled: bool = False
    expired: bool = False  # ttlSecondsAfterFinished has passed: the caller deletes the run
    cache: CacheStatus | None = None  # hits and misses so far, when the run uses a cache


def connection(
    spec: EvalRunSpec, ref: RunRef, config: OperatorConfig, api: ClusterApi
) -> Connection | Problem:
    """Queue and storage of the run from its Secrets or the operator's defaults."""
    return build_connection(
        spec.queue, spec.storage, ref.namespace, config, api, dataset=spec.cases.dataset
    )


def _finished_pass(
    seen: RunObservation, ref: RunRef, api: ClusterApi, rt: RunRuntime, now: datetime
) -> PassResult:
    """A finished run: its remaining pods go, a stale status is tidied, the TTL is checked."""
    actions = decide_finished_run(seen, now)
    delete_pods(api, rt, actions.delete)
    delete_unseen(api, ref, rt, actions.delete_unseen)
    if actions.expired:
        log.info("ttl expired, deleting run", run=ref.name, namespace=ref.namespace)
    if actions.tidy:
        api.patch_status(ref.namespace, ref.name, actions.tidy)
    done = seen.previous.counts or CaseCounts()
    return PassResult(
        seen.previous.phase or "Pending",
        planned=0,
        ready=0,
        backlog=0,
        new_disruptions=0,
        created=0,
        deleted=len(actions.delete),
        completed=done.completed,
        total=done.total,
        expired=actions.expired,
    )


def _advance_queue(
    seen: RunObservation,
    ref: RunRef,
    conn: Connection,
    rt: RunRuntime,
    clients: SharedClients,
    *,
    now: datetime,
) -> QueueFacts:
    """The queue step: progress read, early stop, checkpoint, and a finished run's summary."""
    spec = seen.spec
    found = gather_progress(seen, ref, conn, rt, clients)
    progress, storage = found.progress, found.storage
    rt.stopped = found.depth.stopped or rt.stopped
    cancel, depth, snap = _stop_step(seen, found, rt)
    finished = snap.finished or (
        cancel.finished if spec.cancel else rt.stopped is not None and depth.in_flight == 0
    )
    mark = (snap.completed, snap.dead_lettered, progress.looks)
    checkpoint = None
    if checkpoint_due(
        waited=time.monotonic() - rt.last_checkpoint,
        interval=parse_duration(spec.storage.checkpoint_interval) if spec.storage else 30.0,
        finished=finished,
        mark=mark,
        checkpointed=rt.checkpointed,
    ):
        checkpoint = write_checkpoint(progress, storage, rt, mark, now)
    result = None
    if finished:
        made = proctor_summary(
            spec,
            progress.aggregate,
            snap,
            stopped=rt.stopped,
            results_uri=storage.results_uri(),
            resolved=progress.resolved,
        )
        result = write_summary(spec, storage, ref, snap, made)
    cache_problem = probe_cache(spec, ref, conn, rt, clients)
    cache = cache_status(
        spec,
        progress.aggregate,
        spec.cache.location(conn.storage_uri, ref.namespace),
        cache_problem,
    )
    return QueueFacts(
        counts=case_counts(snap, depth),
        finished=finished,
        backlog=depth.total,
        leases_out=depth.in_flight,
        waiting=depth.waiting,
        holders=depth.holders,
        rate=snap.cases_per_second,
        stopped=rt.stopped,
        result=result,
        checkpoint=checkpoint,
        cancelled=cancel.cancelled and not snap.finished,
        cache=cache,
        cache_problem=cache_problem,
    )


def _stop_step(
    seen: RunObservation, found: ProgressObservation, rt: RunRuntime
) -> tuple[CancelStep, QueueDepth, ProgressSnapshot]:
    """Early stopping and cancel: stop the queue when either asks; once a cancelled run has
    drained, read what its workers wrote last. The queue's depth and the progress after."""
    spec, progress, depth, snap = seen.spec, found.progress, found.depth, found.snapshot
    progress.looks, stop = decide_early_stop(spec, progress.resolved, progress.looks, rt.stopped)
    cancel = decide_cancel(
        spec, stopped=rt.stopped, all_evaluated=snap.finished, drained=drained(seen)
    )
    if stop or cancel.stop_queue:
        rt.stopped = CANCEL_REASON if cancel.stop_queue else "early stop: the decision is settled"
        found.queue.stop(rt.stopped)
        depth = found.queue.depth()
    if cancel.finished and not snap.finished:
        progress.refresh()
        snap = progress.snapshot()
    return cancel, depth, snap


def _queue_step(
    seen: RunObservation,
    ref: RunRef,
    config: OperatorConfig,
    rt: RunRuntime,
    clients: SharedClients,
    *,
    now: datetime,
) -> tuple[QueueFacts, PlanResult, Problem | None]:
    """The queue step when the run can reach its queue, then the plan and what blocks it."""
    conn = seen.connection
    prev_counts = seen.previous.counts or CaseCounts(total=rt.total or seen.spec.cases.count or 0)
    fatal = None
    if isinstance(conn, Connection):
        storage = run_storage(seen.spec, ref, conn, rt, clients)
        fatal = admit_dataset(
            seen.spec, ref=ref, conn=conn, rt=rt, storage=storage, clients=clients
        )
    if isinstance(conn, Connection) and fatal is None:
        facts = _advance_queue(seen, ref, conn, rt, clients, now=now)
        demand = Demand(backlog=facts.backlog, work_remaining=not facts.finished)
        problem = None
    elif fatal is not None:
        # The run fails: no workers, the results recorded so far are kept.
        facts, demand, problem = QueueFacts(prev_counts, fatal=fatal), Demand(0, False), fatal
    else:
        assert isinstance(conn, Problem)
        # Without its queue and storage a cancelled run still ends once drained, with the
        # counts it last had and no summary.
        gone = seen.spec.cancel and drained(seen)
        facts = QueueFacts(prev_counts, finished=gone, cancelled=gone)
        demand, problem = Demand(0, True), conn
    plan = compute_plan(
        seen.spec,
        list(seen.nodes),
        demand,
        config,
        quota=seen.quota,
        spot_fallback=seen.spot_fallback,
        placed=seen.placed(),
    )
    return facts, bind_admission(plan, seen.admission), problem or infeasible(plan)


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
    seen = gather_run(
        body_spec=body_spec, body_status=body_status, ref=ref, config=config, view=view, rt=rt
    )
    if seen.previous.phase in TERMINAL_PHASES:
        return _finished_pass(seen, ref, api, rt, now)
    for event in seen.loss_events:
        emit(event)  # now: the ledger has counted them, no later pass would post them
    seen = gather_placement(seen, ref=ref, config=config, api=api, view=view, rt=rt)
    facts, plan, problem = _queue_step(seen, ref, config, rt, clients, now=now)
    pods = decide_pods(
        seen,
        ref=ref,
        config=config,
        plan=plan,
        facts=facts,
        problem=problem,
        scale=rt.scale,
        expected_pool=dict(rt.expected_pool),
        deleted=frozenset(rt.ledger.deleted),
        now=now,
    )
    return _act_and_report(
        api,
        ref,
        rt,
        config=config,
        seen=seen,
        facts=facts,
        plan=plan,
        problem=problem,
        pods=pods,
        emit=emit,
        now=now,
    )


def _act_and_report(
    api: ClusterApi,
    ref: RunRef,
    rt: RunRuntime,
    *,
    config: OperatorConfig,
    seen: RunObservation,
    facts: QueueFacts,
    plan: PlanResult,
    problem: Problem | None,
    pods: PodActions,
    emit: EventSink,
    now: datetime,
) -> PassResult:
    """Apply the pod actions, then decide and write the status they lead to."""
    removed, created = apply_pods(api, ref, rt, pods)
    ready = 0 if pods.stop_all else sum(1 for w in seen.live if w.ready)  # stop_all deleted them
    # Totals from the ledger, not the previous status plus this pass: a status write that
    # failed after counting must not lose the losses it carried.
    update = decide_status(
        seen,
        ref=ref,
        config=config,
        plan=plan,
        facts=facts,
        problem=problem,
        workers=WorkerCounts(desired=pods.desired, ready=ready, failures=rt.ledger.failures),
        ledger=ledger_status(rt.ledger, seen.workers, {n: u for n, (u, _) in rt.expected.items()}),
        disruptions=rt.ledger.disruptions,
        since_written=time.monotonic() - rt.status_written,
        now=now,
    )
    apply_status(api, ref, rt, before=seen.status_body, update=update, emit=emit)
    return PassResult(
        phase=update.status.phase or "Pending",
        planned=plan.replicas,
        ready=ready,
        backlog=facts.backlog,
        new_disruptions=seen.new_disruptions,
        created=created,
        deleted=removed,
        desired=pods.desired,
        queued=seen.admission.waiting,
        completed=facts.counts.completed,
        total=facts.counts.total,
        # The gauge reads 0 once a run is finished, from the pass that finished it on.
        cases_per_second=0.0 if facts.finished else facts.rate or 0.0,
        stalled=is_true(update.status.conditions, "Stalled"),
        cache=facts.cache,
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
    # Only the queue is needed: a dataset Secret deleted with the run must not keep it.
    conn = build_connection(spec.queue, spec.storage, ref.namespace, config, api)
    if isinstance(conn, Problem):
        log.warning("queue not deleted", run=ref.name, reason=conn.message)
        return
    queue = clients.queues.open(conn.queue_url, ref.uid, credentials=conn.queue_credentials)
    try:
        queue.delete()
    finally:
        clients.queues.release(queue)
