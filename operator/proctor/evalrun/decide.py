"""Decide: what one pass of an EvalRun should do, from what it saw (pure functions).

Nothing here reads the clock, the cluster, the queue or storage: the pass hands in the
observed values (:mod:`proctor.evalrun.gather`) and the time, and gets back the pods to delete
and create, whether to stop the queue or checkpoint, the status patch and the Events;
:mod:`proctor.evalrun.act` applies them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from proctor.api.conditions import Event, Problem, rfc3339
from proctor.api.quantity import parse_duration
from proctor.api.times import parse_time
from proctor.api.v1alpha1.base import LossLedgerStatus
from proctor.api.v1alpha1.cost import CostStatus
from proctor.api.v1alpha1.evalrun import (
    CacheStatus,
    CaseCounts,
    CheckpointStatus,
    EvalRunSpec,
    EvalRunStatus,
    ResultSummary,
    WorkerCounts,
)
from proctor.cluster.reads import PodState
from proctor.cluster.writes import status_patch
from proctor.config import OperatorConfig
from proctor.connection import Connection, RunRef
from proctor.evalrun.gather import RunObservation
from proctor.evalrun.status import Observation, drift_hold, next_status
from proctor.planning.cost import WorkerSpan, accrue
from proctor.planning.plan import PlanResult, pool_for_new_pod
from proctor.planning.scaling import ScaleState, WorkerPod, busy_workers, decide
from proctor.pods import merge_env, worker_pod
from proctor.queue import QueueDepth
from proctor.stats.passrates import Aggregate, should_stop_early, summarize
from proctor.storage import ProgressSnapshot


@dataclass(frozen=True)
class FinishedRunActions:
    """What a pass does for a run that has finished: its pods go, the run may expire."""

    delete: tuple[PodState, ...]
    delete_unseen: tuple[str, ...]
    expired: bool  # ttlSecondsAfterFinished has passed: the caller deletes the run
    tidy: Mapping[str, Any]  # a status patch, or empty


def terminal_tidy(prev: EvalRunStatus) -> dict[str, Any]:
    """The patch a finished run still needs: an operator before this one left its last
    ``workers.ready``/``desired`` standing after the pods were gone."""
    if prev.workers is None or not (prev.workers.ready or prev.workers.desired):
        return {}
    return {"workers": {"desired": 0, "ready": 0, "failures": prev.workers.failures}}


def decide_finished_run(seen: RunObservation, now: datetime) -> FinishedRunActions:
    ttl = seen.spec.ttl_seconds_after_finished
    done_at = seen.previous.completion_time
    ended = parse_time(done_at)
    expired = ttl is not None and ended is not None and now >= ended + timedelta(seconds=ttl)
    return FinishedRunActions(seen.live, seen.unseen, expired, terminal_tidy(seen.previous))


CANCEL_REASON = "cancelled: spec.cancel is true"
"""The stop reason a cancel leaves on the run's queue (an early stop leaves its own)."""


def drained(seen: RunObservation) -> bool:
    """No worker of the run is left that could still write a result: every pod has exited
    or is gone, and none created by this operator is still unseen."""
    return not seen.unseen and all(w.finished for w in seen.workers)


@dataclass(frozen=True)
class CancelStep:
    """What a cancel asks of this pass."""

    stop_queue: bool = False  # stop the queue now (no more claims)
    finished: bool = False  # the run ends with this pass
    cancelled: bool = False  # ... in phase Cancelled (not Succeeded)


def decide_cancel(
    spec: EvalRunSpec, *, stopped: str | None, all_evaluated: bool, drained: bool
) -> CancelStep:
    """A cancelled run stops its queue at once and ends when its workers have drained (their
    results are written by then); it ends ``Cancelled`` unless every case was evaluated or an
    early stop had already settled the decision, when it succeeds as it would have."""
    if not spec.cancel:
        return CancelStep()
    settled = all_evaluated or (stopped is not None and stopped != CANCEL_REASON)
    return CancelStep(
        stop_queue=stopped is None,
        finished=drained or all_evaluated,
        cancelled=drained and not settled,
    )


def decide_early_stop(
    spec: EvalRunSpec, resolved: Aggregate, looks: int, stopped: str | None
) -> tuple[int, bool]:
    """(looks the early-stopping rule has had, whether it stops the run now). It looks once
    every ``checkEvery`` cases of the resolved prefix (cases ``[0, n)``, all recorded: cases
    recorded beyond it are biased by crashes still being isolated), from ``minCases``, while
    the run is not stopped."""
    early, compare = spec.early_stopping, spec.compare
    if early is None or not early.enabled or compare is None or stopped is not None:
        return looks, False
    if resolved.total // early.check_every <= looks or resolved.total < early.min_cases:
        return looks, False
    looks = resolved.total // early.check_every
    return looks, should_stop_early(resolved, compare, early, looks)


def proctor_summary(
    spec: EvalRunSpec,
    aggregate: Aggregate,
    snapshot: ProgressSnapshot,
    *,
    stopped: str | None,
    results_uri: str,
    resolved: Aggregate | None = None,
) -> ResultSummary:
    """A finished run's summary by Proctor's own rule (a task's hook may replace it). A
    cancelled run is no early stop: what it did not evaluate keeps it undecided."""
    cancelled = stopped == CANCEL_REASON
    return summarize(
        aggregate,
        spec.compare,
        complete=snapshot.completed == snapshot.total,
        early_stopped=stopped is not None and not cancelled and not snapshot.finished,
        total=snapshot.total,
        dead_lettered=snapshot.dead_lettered,
        why="the run was cancelled" if cancelled else None,
        resolved=resolved,
    ).model_copy(update={"results_uri": results_uri})


def checkpoint_due(
    *,
    waited: float,
    interval: float,
    finished: bool,
    mark: tuple[int, int, int],
    checkpointed: tuple[int, int, int] | None,
) -> bool:
    """Checkpoint every ``interval`` seconds and when the run finishes, and only when
    something changed since the last one: a waiting run costs no writes."""
    return (waited >= interval or finished) and mark != checkpointed


def case_counts(snapshot: ProgressSnapshot, depth: QueueDepth) -> CaseCounts:
    in_flight = 0 if depth.cases is None else min(depth.cases, snapshot.total)
    return CaseCounts(
        total=snapshot.total,
        completed=snapshot.completed,
        passed=snapshot.passed,
        failed=snapshot.failed,
        errored=snapshot.errored,
        in_flight=in_flight,
        dead_lettered=snapshot.dead_lettered,
    )


def summary_record(
    ref: RunRef, snapshot: ProgressSnapshot, result: ResultSummary
) -> dict[str, Any]:
    """The run's summary object in storage."""
    return {
        "run": ref.name,
        "runId": ref.uid,
        "total": snapshot.total,
        "completed": snapshot.completed,
        "passed": snapshot.passed,
        "failed": snapshot.failed,
        "errored": snapshot.errored,
        "deadLettered": snapshot.dead_lettered,
        **result.model_dump(by_alias=True, exclude_none=True),
    }


@dataclass(frozen=True)
class QueueFacts:
    """What the queue and the stored progress say after this pass's queue operations."""

    counts: CaseCounts
    finished: bool = False
    backlog: int = 0
    leases_out: int = 0
    waiting: int = 0
    holders: frozenset[str] | None = None
    rate: float | None = None
    stopped: str | None = None
    result: ResultSummary | None = None
    checkpoint: CheckpointStatus | None = None
    fatal: Problem | None = None
    """What fails the run now (its dataset is invalid or changed)."""
    cancelled: bool = False  # finished by a cancel, before every case was evaluated
    cache: CacheStatus | None = None
    cache_problem: str = ""  # why the workers cannot write the cache


def infeasible(plan: PlanResult) -> Problem | None:
    if plan.feasible:
        return None
    reason = "NoEligibleNodes" if not plan.eligible_nodes else "ProfileTooLarge"
    return Problem(reason, plan.infeasible_reason)


def worker_env(spec: EvalRunSpec, ref: RunRef, conn: Connection) -> list[dict[str, Any]]:
    """Variables that :meth:`proctor.worker.runtime.WorkerConfig.from_env` reads."""
    lease = spec.lease_seconds()
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


@dataclass(frozen=True)
class PodActions:
    """The pods a pass deletes and creates, and the scaler's state for the next pass."""

    finished: tuple[PodState, ...] = ()  # counted already: removed so they do not linger
    delete: tuple[PodState, ...] = ()  # all live pods of a stopped run
    delete_unseen: tuple[str, ...] = ()
    idle: tuple[PodState, ...] = ()  # removed by scale-down
    idle_reason: str = ""
    create: tuple[Mapping[str, Any], ...] = ()  # manifests, in order
    pools: tuple[str, ...] = ()  # the node pool of each manifest
    scale: ScaleState = field(default_factory=ScaleState)
    desired: int = 0
    stop_all: bool = False


def pool_counts(
    live: Sequence[PodState], unseen: Sequence[str], expected_pool: Mapping[str, str]
) -> dict[str, int]:
    """The run's workers per node pool: live ones and those created but not seen yet."""
    counts: dict[str, int] = {}
    for pool in [w.pool for w in live] + [expected_pool.get(n, "") for n in unseen]:
        counts[pool] = counts.get(pool, 0) + 1
    return counts


def finished_pods(seen: RunObservation, deleted: frozenset[str]) -> tuple[PodState, ...]:
    """Finished pods not deleted yet: they have been counted, so they go."""
    return tuple(
        w for w in seen.workers if w.finished and not w.terminating and w.uid not in deleted
    )


def _scale(
    seen: RunObservation,
    facts: QueueFacts,
    plan: PlanResult,
    scale: ScaleState,
    now: datetime,
) -> tuple[ScaleState, int, tuple[PodState, ...], str, int]:
    """The scaler's step: (state, desired, idle pods to remove, why, pods to create)."""
    live = seen.live
    pods = [WorkerPod(w.name, w.created, ready=w.ready, scheduled=bool(w.node)) for w in live]
    # Pods created by an earlier pass that the index does not show yet count too (so they
    # are not created twice); they are never picked for removal before they are seen.
    pods += [WorkerPod(name, now, ready=False, scheduled=False) for name in seen.unseen]
    # A worker Kueue has not admitted (gated) has never run, so it holds no lease.
    busy = busy_workers(
        [w.name for w in live if not w.gated],
        holders=facts.holders,
        waiting=facts.waiting,
        in_flight=facts.leases_out,
    ) | frozenset(seen.unseen)
    stabilization = parse_duration(seen.spec.workers.scale_down_stabilization)
    step = decide(plan.target, pods, busy, scale, now=now, stabilization_seconds=stabilization)
    by_name = {w.name: w for w in live}
    idle = tuple(by_name[name] for name in step.delete)
    return step.state, step.desired, idle, step.reason, step.create


def decide_pods(
    seen: RunObservation,
    *,
    ref: RunRef,
    config: OperatorConfig,
    plan: PlanResult,
    facts: QueueFacts,
    problem: Problem | None,
    scale: ScaleState,
    expected_pool: Mapping[str, str],
    deleted: frozenset[str],
    now: datetime,
) -> PodActions:
    """Finished pods go; a finished, suspended, cancelled or blocked run loses all its pods
    (deleted, so that each drains: it stops claiming, flushes its results and exits); otherwise
    the scaler says how many to remove (idle ones) and to create (spread over node pools)."""
    done = finished_pods(seen, deleted)
    if facts.finished or seen.spec.suspend or seen.spec.cancel or problem is not None:
        return PodActions(done, seen.live, seen.unseen, stop_all=True)
    assert isinstance(seen.connection, Connection)  # no problem: the connection was read
    state, desired, idle, why, create = _scale(seen, facts, plan, scale, now)
    env = worker_env(seen.spec, ref, seen.connection)
    counts = pool_counts(seen.live, seen.unseen, expected_pool)
    manifests: list[Mapping[str, Any]] = []
    pools: list[str] = []
    for _ in range(create):
        pool = pool_for_new_pod(plan.pools, counts)
        counts[pool] = counts.get(pool, 0) + 1
        pools.append(pool)
        manifests.append(
            worker_pod(
                run_name=ref.name,
                run_uid=ref.uid,
                namespace=ref.namespace,
                spec=seen.spec,
                size=plan.size,
                config=config,
                env=env,
                pool=pool,
                spot_fallback=seen.spot_fallback,
                admission_labels=seen.admission_labels,
            )
        )
    return PodActions(
        done, (), (), idle, why, tuple(manifests), tuple(pools), state, desired, stop_all=False
    )


def run_cost(seen: RunObservation, config: OperatorConfig, now: datetime) -> CostStatus:
    """The run's cost accrued up to ``now``: every worker bound to a node and not exited
    counts (a draining one too: it still holds its node)."""
    spans = [
        WorkerSpan(w.node, w.pool, w.requests, w.created)
        for w in seen.workers
        if w.node and not w.finished
    ]
    nodes = {n.name: n for n in seen.nodes}
    return accrue(seen.previous.cost, spans, nodes, config.prices, now=now, until=rfc3339(now))


@dataclass(frozen=True)
class StatusActions:
    """The status this pass computed, the patch that writes it (empty: nothing to write now)
    and the Events it posts."""

    status: EvalRunStatus
    body: dict[str, Any]
    patch: Mapping[str, Any]
    events: tuple[Event, ...]


def decide_status(
    seen: RunObservation,
    *,
    ref: RunRef,
    config: OperatorConfig,
    plan: PlanResult,
    facts: QueueFacts,
    problem: Problem | None,
    workers: WorkerCounts,
    ledger: LossLedgerStatus,
    disruptions: int,
    since_written: float,
    now: datetime,
) -> StatusActions:
    """The next status (:func:`proctor.evalrun.status.next_status`) and the patch to write;
    when only estimates and cluster-wide figures moved, the write waits a little."""
    counts = facts.counts
    observation = Observation(
        spec=seen.spec,
        generation=ref.generation,
        now=now,
        previous=seen.previous,
        counts=counts,
        workers=workers,
        finished=facts.finished,
        cancelled=facts.cancelled,
        early_stopped=facts.finished
        and not facts.cancelled
        and facts.stopped not in {None, CANCEL_REASON}
        and counts.completed < counts.total,
        problem=problem,
        fatal=facts.fatal,
        plan=plan,
        result=facts.result,
        cache=facts.cache,
        cache_problem=facts.cache_problem,
        disruptions=disruptions,
        spot_fallback=seen.spot_fallback,
        ledger=ledger,
        checkpoint=facts.checkpoint,
        rate=facts.rate,
        stalled_after_seconds=config.stalled_after_seconds,
        cost=run_cost(seen, config, now),
    )
    update = next_status(observation)
    body = update.status.model_dump(by_alias=True, exclude_none=True, mode="json")
    patch = status_patch(seen.status_body, body)
    hold = drift_hold(seen.status_body, patch)
    if hold and since_written < hold:
        patch = {}
    return StatusActions(update.status, body, patch, tuple(update.events))
