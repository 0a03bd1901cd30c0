"""One reconcile pass of a BenchmarkSuite: gather, decide with pure functions, act at the edge.

A suite is EvalRun-style work cut per cell: each cell (benchmark x variant) of a suite run has
its own queue whose entries are repetitions ``[i, i + 1)`` (:mod:`proctor.bench.enqueue`) and
its own results under the run's storage (:class:`proctor.bench.store.SuiteStore`); at most one
benchmark pod per cell measures them (``proctor bench-worker``). Cells are planned with the
EvalRun planner (:func:`proctor.suite.pods.cell_run_spec`) and their pods built by the EvalRun
pod builder (:mod:`proctor.suite.pods`).

Order of a pass: which run (schedule) -> classify pods (disruption vs failure) -> admit
(Secrets, baseline, feasibility) -> enqueue each cell once -> progress from storage -> start
pods for cells that need one, within ``maxParallel`` and what nodes can hold -> on finish the
summary, the report and regressions -> status and Events. Every step is safe to repeat.

Where the roles live: :mod:`.gather` (the indexed pods and facts), :mod:`.results` (records
and baseline read from storage), :mod:`.decide` (pure decisions), :mod:`.status` (the status,
conditions and Events, pure), :mod:`.act` (the edge), :mod:`.runtime` (memory between passes),
:mod:`.connection` (queue and storage), :mod:`.api` (the suite's API calls). This module is
the pass itself, and the clean-up on deletion.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from proctor.api.conditions import Event, Problem
from proctor.api.v1alpha1.benchmarksuite import BenchmarkSuiteSpec, BenchmarkSuiteStatus
from proctor.bench.matrix import Cell, cell_queue_id, cells
from proctor.bench.reuse import reuses
from proctor.bench.store import SuiteStore
from proctor.bench.summary import SuiteSummary, summarize_suite
from proctor.cluster.api import ClusterApi
from proctor.cluster.losses import Losses, count_losses, ledger_status, loss_events
from proctor.cluster.reads import nodes_with_usage, quota_headroom
from proctor.cluster.writes import EventSink
from proctor.config import OperatorConfig
from proctor.connection import Connection, RunRef, SharedClients
from proctor.queue import WorkQueue
from proctor.suite.act import (
    create_pods,
    delete_pods,
    delete_queues,
    drop_runs,
    end_run,
    enqueue,
    write_report,
    write_status,
)
from proctor.suite.api import SuiteApi
from proctor.suite.connection import (
    cached_suite_connection,
    open_queue,
    suite_connection,
    suite_store,
)
from proctor.suite.decide import (
    Room,
    RunDecision,
    admission_problem,
    cells_to_enqueue,
    decide_run,
    finished_pods,
    holding_cells,
    plannable_nodes,
    pods_of_other_runs,
    pods_to_start,
    recorded_count,
    stops_failed_run,
    works_on_run,
)
from proctor.suite.gather import EVERY_POD, BenchPod, SuiteView
from proctor.suite.results import read_baseline, refresh_records
from proctor.suite.reuse import idle_cells, remember_cells, reuse_cells, suite_cache
from proctor.suite.runtime import SuitePassResult, SuiteRuntime
from proctor.suite.status import SuiteObservation, next_suite_status

log = structlog.get_logger("proctor.operator")


@dataclass(frozen=True)
class SuitePass:
    """The fixed inputs of one pass: the suite as read, the run it works on, and the edges."""

    spec: BenchmarkSuiteSpec
    prev: BenchmarkSuiteStatus
    run: RunDecision
    ref: RunRef
    config: OperatorConfig
    api: SuiteApi
    clients: SharedClients
    view: SuiteView
    runtime: SuiteRuntime
    now: datetime


@dataclass(frozen=True)
class RunOutcome:
    """What working on the run found and did."""

    conn: Connection | None = None
    problem: Problem | None = None
    summary: SuiteSummary | None = None
    finished: bool = False
    report_uri: str | None = None
    results_uri: str | None = None
    created: int = 0
    removed: int = 0
    events: tuple[Event, ...] = ()  # the cache's (cells reused, objects ignored)


def reconcile_suite(
    *,
    body_spec: Mapping[str, Any],
    body_status: Mapping[str, Any] | None,
    created: datetime,
    ref: RunRef,
    config: OperatorConfig,
    api: SuiteApi,
    clients: SharedClients,
    view: SuiteView,
    runtime: SuiteRuntime,
    emit: EventSink,
    now: datetime | None = None,
) -> SuitePassResult:
    """One pass; see the module doc."""
    now = now or datetime.now(UTC)
    spec = BenchmarkSuiteSpec.model_validate(dict(body_spec))
    prev = BenchmarkSuiteStatus.model_validate(dict(body_status or {}))
    run = decide_run(spec, prev, created=created, uid=ref.uid, now=now)
    runtime.switch(run.run_id)
    ctx = SuitePass(spec, prev, run, ref, config, api, clients, view, runtime, now)
    removed = delete_pods(api, runtime, pods_of_other_runs(view.pods, run.run_id))
    current = [p for p in view.pods if p.run_id == (run.run_id or "")]
    losses = _count_losses(ctx, current, emit)
    removed += delete_pods(api, runtime, finished_pods(current, runtime.ledger.deleted))
    live = [p for p in current if p.live]
    outcome = _work_on_run(ctx, live)
    update = next_suite_status(_observation(ctx, current, live, outcome))
    if stops_failed_run(update.status.phase, prev, run):
        update.status, stopped = _stop_failed_run(ctx, update.status, current, live, outcome.conn)
        removed += stopped
    write_status(api, ref, body_status, update.status)
    for event in (*update.events, *outcome.events):
        emit(event)
    if update.dropped_runs and outcome.conn is not None:
        drop_runs(spec, ref, update.dropped_runs, outcome.conn, clients)
    return SuitePassResult(
        update.status.phase or "Pending",
        run.run_id,
        outcome.created,
        removed + outcome.removed,
        losses.disruptions,
        update.status,
    )


def _work_on_run(ctx: SuitePass, live: Sequence[BenchPod]) -> RunOutcome:
    """Advance the run, or remove its pods when there is none to advance (waiting for the
    schedule, finished, suspended, or its Secrets not readable)."""
    works = works_on_run(ctx.run, ctx.prev)
    runtime = ctx.runtime
    conn = (
        cached_suite_connection(ctx.spec, ctx.ref, ctx.config, ctx.api, runtime) if works else None
    )
    if isinstance(conn, Connection) and ctx.spec.cancel:
        return _cancel_run(ctx, conn, live)
    if isinstance(conn, Connection) and not ctx.spec.suspend:
        return _advance_run(ctx, conn, live)
    removed = delete_pods(ctx.api, runtime, live)
    if isinstance(conn, Connection):
        return RunOutcome(conn=conn, removed=removed)
    return RunOutcome(problem=conn, removed=removed)


def _advance_run(ctx: SuitePass, conn: Connection, live: Sequence[BenchPod]) -> RunOutcome:
    """Admit, enqueue, read progress; then finish the run or start the pods it needs."""
    spec, ref, runtime = ctx.spec, ctx.ref, ctx.runtime
    run_id = ctx.run.run_id
    assert run_id is not None  # works_on_run
    store = _store(ctx, conn, run_id)
    problem = admission_problem(spec, ctx.view.nodes, ctx.config) or _load_baseline(
        ctx, conn, run_id
    )
    matrix = cells(spec)
    recorded = _recorded(ctx, store, matrix)
    events: list[Event] = []
    if problem is None and runtime.cache is not None and reuses(spec):
        idle = idle_cells(runtime, matrix, recorded, lambda c: _queue(ctx, conn, c).depth().empty)
        reused, events = reuse_cells(runtime, spec, store, idle, ref=ref)
        recorded = _recorded(ctx, store, matrix) if reused else recorded
    events += remember_cells(runtime, spec, matrix, recorded, ref=ref, run_id=run_id, now=ctx.now)
    queued = {} if problem else _queue_cells(ctx, conn, store, matrix, recorded)
    summary, finished = _summary(ctx, matrix, recorded)
    if finished and summary is not None:
        report_uri = write_report(ref, run_id, runtime, store, summary)
        removed = delete_pods(ctx.api, runtime, live)
        end_run(spec, ref, run_id, conn=conn, clients=ctx.clients, runtime=runtime)
        log.info("suite run finished", suite=ref.name, run=run_id, report=report_uri)
        return RunOutcome(
            conn, problem, summary, True, report_uri, store.results_uri, removed=removed,
            events=tuple(events),
        )  # fmt: skip
    created = 0
    if problem is None:
        starts = pods_to_start(
            spec, matrix, recorded=recorded, queued=queued, room=_room(ctx, live), config=ctx.config
        )
        created = create_pods(
            starts, spec=spec, ref=ref, run_id=run_id, conn=conn, config=ctx.config,
            api=ctx.api, runtime=runtime,
        )  # fmt: skip
    return RunOutcome(conn, problem, summary, finished, created=created, events=tuple(events))


def _cancel_run(ctx: SuitePass, conn: Connection, live: Sequence[BenchPod]) -> RunOutcome:
    """spec.cancel: no cell starts again, the running pods and the cell queues go; what was
    recorded is kept, summarized and reported (the report covers the recorded repetitions),
    and the cells that completed are written to the cache."""
    spec, ref, runtime = ctx.spec, ctx.ref, ctx.runtime
    run_id = ctx.run.run_id
    assert run_id is not None  # works_on_run
    store = _store(ctx, conn, run_id)
    matrix = cells(spec)
    recorded = _recorded(ctx, store, matrix)
    removed = delete_pods(ctx.api, runtime, live)
    end_run(spec, ref, run_id, conn=conn, clients=ctx.clients, runtime=runtime)
    events = remember_cells(runtime, spec, matrix, recorded, ref=ref, run_id=run_id, now=ctx.now)
    summary, _ = _summary(ctx, matrix, recorded)
    report_uri = None
    if summary is not None and summary.completed:
        report_uri = write_report(ref, run_id, runtime, store, summary)
    log.info("suite run cancelled", suite=ref.name, run=run_id, removed=removed)
    return RunOutcome(
        conn, None, summary, False, report_uri, store.results_uri, removed=removed,
        events=tuple(events),
    )  # fmt: skip


def _store(ctx: SuitePass, conn: Connection, run_id: str) -> SuiteStore:
    """The run's store (and with spec.cache its cell cache), opened once per run."""
    runtime, ref = ctx.runtime, ctx.ref
    if runtime.store is None:
        runtime.store = suite_store(
            ctx.spec, conn, ctx.clients, namespace=ref.namespace, suite=ref.name, run_id=run_id
        )
        runtime.cache = suite_cache(ctx.spec, conn, ctx.clients, runtime.store, ref.namespace)
    return runtime.store


def _recorded(ctx: SuitePass, store: SuiteStore, matrix: Sequence[Cell]) -> dict[str, int]:
    """How many repetitions each cell has recorded (reading only objects not read before)."""
    return {
        c.id: recorded_count(refresh_records(ctx.runtime, store, c.id), c.repetitions)
        for c in matrix
    }


def _queue(ctx: SuitePass, conn: Connection, cell: Cell) -> WorkQueue:
    """The cell's queue of this run, opened once."""
    ref = ctx.ref
    queue_id = cell_queue_id(ref.namespace, ref.name, ctx.run.run_id or "", cell.id)
    return open_queue(
        ctx.runtime, ctx.clients, conn, cell.id, queue_id=queue_id, lease=ctx.spec.lease_seconds()
    )


def _load_baseline(ctx: SuitePass, conn: Connection, run_id: str) -> Problem | None:
    """Read the baseline once per run (kept in the runtime); a problem when it cannot be."""
    runtime = ctx.runtime
    if runtime.baseline is not None or ctx.spec.baseline is None:
        return None
    found = read_baseline(
        spec=ctx.spec,
        ref=ctx.ref,
        prev=ctx.prev,
        run_id=run_id,
        conn=conn,
        clients=ctx.clients,
        config=ctx.config,
        api=ctx.api,
    )
    if isinstance(found, Problem):
        return found
    if found is not None:
        runtime.baseline_uri, runtime.baseline = found
    return None


def _queue_cells(
    ctx: SuitePass, conn: Connection, store: SuiteStore, matrix: Sequence[Cell],
    recorded: Mapping[str, int],
) -> dict[str, int]:  # fmt: skip
    """Each cell's queue, filled once (and again when lost); returns what each holds. A cell
    the cache filled has nothing left to put on it."""
    ref, runtime = ctx.ref, ctx.runtime
    run_id = ctx.run.run_id or ""
    queues = {cell.id: _queue(ctx, conn, cell) for cell in matrix}
    depths = {cell_id: queue.depth() for cell_id, queue in queues.items()}
    empty = {cell_id: depth.empty for cell_id, depth in depths.items()}
    for cell in cells_to_enqueue(matrix, recorded, empty, runtime.enqueued):
        enqueue(runtime, queues[cell.id], store, cell, ref=ref, run_id=run_id)
        depths[cell.id] = queues[cell.id].depth()
    return {cell_id: depth.total for cell_id, depth in depths.items()}


def _summary(
    ctx: SuitePass, matrix: Sequence[Cell], recorded: Mapping[str, int]
) -> tuple[SuiteSummary | None, bool]:
    """The run's summary (computed again only when a count changed) and whether it is done;
    the baseline is compared only once every repetition is recorded."""
    runtime = ctx.runtime
    counts = tuple(recorded[c.id] for c in matrix)
    finished = all(recorded[c.id] >= c.repetitions for c in matrix)
    if counts != runtime.summarized or (finished and runtime.summary is None):
        records = {cid: list(recs.values()) for cid, recs in runtime.records.items()}
        runtime.summary = summarize_suite(ctx.spec, records, runtime.baseline if finished else None)
        runtime.summarized = counts
    return runtime.summary, finished


def _room(ctx: SuitePass, live: Sequence[BenchPod]) -> Room:
    """What the cluster can hold for new pods: nodes, quota, and the cells that have a pod,
    those this operator created and the index does not show yet included."""
    run_id = ctx.run.run_id or ""
    grace = timedelta(seconds=ctx.config.worker_grace_seconds + 15)
    mine = [p for p in ctx.view.pods if p.run_id == run_id]
    holding = holding_cells(live, mine, now=ctx.now, grace=grace)
    unindexed = ctx.runtime.holding(time.monotonic(), (p.obs.uid for p in mine)) - holding
    nodes = nodes_with_usage(ctx.view.nodes, ctx.view.usage, EVERY_POD)
    return Room(
        nodes=plannable_nodes(ctx.spec, nodes, set(ctx.view.occupied)),
        quota=quota_headroom(ctx.api.quotas(ctx.ref.namespace), []),
        holding=holding | unindexed,
        live=len(live) + len(unindexed),
        pending=sum(1 for p in live if not p.obs.node) + len(unindexed),
    )


def _observation(
    ctx: SuitePass, current: Sequence[BenchPod], live: Sequence[BenchPod], outcome: RunOutcome
) -> SuiteObservation:
    runtime = ctx.runtime
    deleted = runtime.ledger.deleted
    return SuiteObservation(
        spec=ctx.spec,
        generation=ctx.ref.generation,
        now=ctx.now,
        previous=ctx.prev,
        run=ctx.run,
        summary=outcome.summary,
        ready_pods=sum(1 for p in live if p.obs.ready and p.obs.uid not in deleted),
        finished=outcome.finished,
        problem=outcome.problem,
        disruptions=runtime.ledger.disruptions,
        failures=runtime.ledger.failures,
        ledger=ledger_status(runtime.ledger, [p.obs for p in current], runtime.unseen()),
        report_uri=outcome.report_uri,
        results_uri=outcome.results_uri,
        baseline_uri=runtime.baseline_uri,
    )


def _stop_failed_run(
    ctx: SuitePass, status: BenchmarkSuiteStatus, current: Sequence[BenchPod],
    live: Sequence[BenchPod], conn: Connection | None,
) -> tuple[BenchmarkSuiteStatus, int]:  # fmt: skip
    """The run just failed: remove its pods and queues; returns the status with the ledger
    as it is after that, and how many pods were deleted."""
    runtime = ctx.runtime
    deleted = runtime.ledger.deleted
    removed = delete_pods(ctx.api, runtime, [p for p in live if p.obs.uid not in deleted])
    if conn is not None and ctx.run.run_id:
        end_run(ctx.spec, ctx.ref, ctx.run.run_id, conn=conn, clients=ctx.clients, runtime=runtime)
    # The pods just deleted are no loss to a successor that finds them gone.
    ledger = ledger_status(runtime.ledger, [p.obs for p in current], runtime.unseen())
    return status.model_copy(update={"ledger": ledger}), removed


def _count_losses(ctx: SuitePass, current: Sequence[BenchPod], emit: EventSink) -> Losses:
    """Count the run's lost pods once, taking up the ledger a predecessor left in the status
    (finding 12 of issue 15; a new run starts its own), and post an Event for each. Pods
    deleted since the last pass are classified by their last state (``view.departed``)."""
    runtime, prev, fresh = ctx.runtime, ctx.prev, ctx.run.start
    runtime.ledger.restore(
        None if fresh else prev.ledger,
        failures=0 if fresh else prev.failures or 0,
        disruptions=0 if fresh else prev.disruptions or 0,
    )
    # Deleted pods of this run: ones the ledger knows or this operator created and the index
    # has not shown (an earlier run's pods, deleted as it ended, are in neither).
    mine = set(runtime.ledger.known) | set(runtime.unseen().values())
    departed = [g for g in ctx.view.departed if g.pod.uid in mine]
    gone = {g.pod.uid for g in departed}
    # A pod that came and went between passes: its cell gets a replacement now.
    runtime.expected = {c: e for c, e in runtime.expected.items() if e[0] not in gone}
    spot = {n.name for n in ctx.view.nodes if n.is_spot}
    losses = count_losses([p.obs for p in current], runtime.ledger, spot, departed)
    for note in losses.notes:
        log.info("benchmark pod lost", suite=ctx.ref.name, detail=note)
    for event in loss_events(losses.lost, budget="spec.failureBudget"):
        emit(event)  # now: the ledger has counted them, no later pass would post them
    return losses


def finalize_suite(
    *,
    spec_body: Mapping[str, Any],
    status_body: Mapping[str, Any] | None,
    ref: RunRef,
    config: OperatorConfig,
    api: ClusterApi,
    clients: SharedClients,
) -> None:
    """On deletion: remove the current run's queues; results and reports are kept."""
    spec = BenchmarkSuiteSpec.model_validate(dict(spec_body))
    status = BenchmarkSuiteStatus.model_validate(dict(status_body or {}))
    if not status.run_id:
        return
    conn = suite_connection(spec, ref, config, api)
    if isinstance(conn, Problem):
        log.warning("queues not deleted", suite=ref.name, reason=conn.message)
        return
    delete_queues(spec, ref, status.run_id, conn, clients)
