"""The pure decisions of a suite pass: which run, which pods go, which cells are enqueued,
which cells get a pod, history. No I/O: each takes facts and returns what to do."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from proctor.api.conditions import Problem
from proctor.api.cron import latest_fire, next_fire, parse_cron
from proctor.api.times import parse_time
from proctor.api.v1alpha1.benchmarksuite import (
    BenchmarkSuiteSpec,
    BenchmarkSuiteStatus,
    SuiteRunSummary,
)
from proctor.api.v1alpha1.evalrun import EvalRunSpec
from proctor.bench.matrix import Cell, cells
from proctor.config import OperatorConfig
from proctor.planning.plan import (
    Demand,
    NodeInfo,
    PlanResult,
    QuotaHeadroom,
    WorkerSize,
    compute_plan,
)
from proctor.policy import admit, baseline_problem, cache_uri_problem, spec_size_problem
from proctor.suite.gather import BenchPod
from proctor.suite.pods import cell_run_spec

TERMINAL: frozenset[str] = frozenset({"Succeeded", "Failed", "Cancelled"})


def run_id_for(moment: datetime, uid: str) -> str:
    """A run's id: when it was due (creation, or the schedule's fire time) and the suite's uid,
    so a suite deleted and created again under the same name never meets old records."""
    return f"{moment.astimezone(UTC):%Y%m%d-%H%M%S}-{uid[:8]}"


@dataclass(frozen=True)
class RunDecision:
    """Which run the pass works on. ``start``: a new run begins now (status is reset)."""

    run_id: str | None
    start: bool
    scheduled_at: datetime | None = None
    next_schedule: datetime | None = None


def decide_run(
    spec: BenchmarkSuiteSpec,
    prev: BenchmarkSuiteStatus,
    *,
    created: datetime,
    uid: str,
    now: datetime,
) -> RunDecision:
    """Without a schedule: one run, started at once. With one: a run per fire time (missed
    fires collapse into the latest), never while the previous run is still going, none while
    suspended; like a CronJob, nothing runs before the first fire. A cancelled suite starts
    no run: it ends the one it has, if any."""
    if spec.cancel:
        return RunDecision(prev.run_id, False)
    if spec.schedule is None:
        if prev.run_id:
            return RunDecision(prev.run_id, False)
        return RunDecision(run_id_for(created, uid), True)
    schedule = parse_cron(spec.schedule.cron)
    since = parse_time(prev.last_schedule_time) or created
    upcoming = next_fire(schedule, max(since, now))
    busy = prev.run_id is not None and prev.phase not in TERMINAL
    if busy or spec.suspend:
        return RunDecision(prev.run_id, False, next_schedule=upcoming)
    fire = latest_fire(schedule, since, now)
    if fire is None:
        return RunDecision(prev.run_id, False, next_schedule=upcoming)
    return RunDecision(run_id_for(fire, uid), True, scheduled_at=fire, next_schedule=upcoming)


def choose_cells(
    candidates: Sequence[tuple[str, int]], *, live: int, pending: int, max_parallel: int
) -> list[str]:
    """Cells to start a pod for now, in order.

    ``candidates``: (cell id, how many benchmark pods of that cell's size the nodes can hold
    now) for cells that need a pod. ``live`` pods run already, ``pending`` of them unplaced:
    those take room the planner does not see yet, as does each pod started in this pass.
    """
    budget = max(0, max_parallel - live)
    claimed = pending
    chosen: list[str] = []
    for cell_id, fit in candidates:
        if len(chosen) >= budget:
            break
        if fit > claimed:
            chosen.append(cell_id)
            claimed += 1
    return chosen


def baseline_run_id(status: Mapping[str, Any] | None) -> str | None:
    """The last successful run of a baseline suite: the current one when it succeeded,
    otherwise the latest Succeeded entry of its history."""
    st = BenchmarkSuiteStatus.model_validate(dict(status or {}))
    if st.phase == "Succeeded" and st.run_id:
        return st.run_id
    done = [h for h in st.history or () if h.phase == "Succeeded"]
    return done[-1].run_id if done else None


def cell_needs_pod(*, recorded: int, repetitions: int, queued: int, has_pod: bool) -> bool:
    """A cell needs a pod while repetitions remain on its queue and none of its pods runs."""
    return recorded < repetitions and queued > 0 and not has_pod


def trim_history(
    history: Sequence[SuiteRunSummary], entry: SuiteRunSummary, limit: int
) -> tuple[list[SuiteRunSummary], list[str]]:
    """History with ``entry`` added (replacing an entry of the same run), at most ``limit``
    runs, oldest first; and the run ids dropped (their data is deleted)."""
    kept = [h for h in history if h.run_id != entry.run_id] + [entry]
    dropped = kept[: max(0, len(kept) - limit)]
    return kept[len(dropped) :], [h.run_id for h in dropped]


def admission_problem(
    spec: BenchmarkSuiteSpec, nodes: Sequence[NodeInfo], config: OperatorConfig
) -> Problem | None:
    """A cell that no eligible node could hold even when empty; None when every cell fits."""
    for cell in cells(spec):
        plan = compute_plan(cell_run_spec(spec, cell), nodes, Demand(backlog=1), config)
        if not plan.feasible:
            reason = "NoEligibleNodes" if not plan.eligible_nodes else "ProfileTooLarge"
            return Problem(reason, f"cell {cell.id}: {plan.infeasible_reason}")
    return None


def admit_suite(spec: BenchmarkSuiteSpec, config: OperatorConfig) -> Problem | None:
    """The tenant policy for every cell's pod, and for a baseline read by URI (pure)."""
    for cell in cells(spec):
        problem = admit(cell_run_spec(spec, cell), config)
        if problem is not None:
            return problem
    uri = spec.baseline.results_uri if spec.baseline else None
    if uri is not None:
        problem = baseline_problem(uri, spec.storage, config)
        if problem is not None:
            return problem
    if spec.cache is not None and spec.cache.uri is not None:
        problem = cache_uri_problem(spec.cache.uri, spec.storage, config)
        if problem is not None:
            return problem
    # Benchmark pods receive the suite's spec in PROCTOR_SUITE_SPEC.
    return spec_size_problem(spec.model_dump_json(by_alias=True, exclude_none=True))


def works_on_run(run: RunDecision, prev: BenchmarkSuiteStatus) -> bool:
    """Whether this pass works on a run: there is one, and it has not finished. A finished
    run needs neither queue nor storage: no Secret reads while it is kept."""
    return run.run_id is not None and not (not run.start and prev.phase in TERMINAL)


def pods_of_other_runs(pods: Sequence[BenchPod], run_id: str | None) -> list[BenchPod]:
    """Pods of an earlier run, not already going: they have no business now."""
    return [p for p in pods if p.run_id != (run_id or "") and not p.obs.terminating]


def finished_pods(current: Sequence[BenchPod], deleted: Collection[str]) -> list[BenchPod]:
    """This run's pods that finished and are not deleted yet."""
    return [
        p for p in current if p.obs.finished and not p.obs.terminating and p.obs.uid not in deleted
    ]


def recorded_count(records: Collection[int], repetitions: int) -> int:
    """How many of a cell's repetitions are recorded."""
    return sum(1 for i in records if i < repetitions)


def cells_to_enqueue(
    matrix: Sequence[Cell],
    recorded: Mapping[str, int],
    empty: Mapping[str, bool],
    enqueued: Collection[str],
) -> list[Cell]:
    """Cells whose repetitions go on their queue now: once per run, and again when the queue
    is found empty with repetitions unrecorded (it was lost: Redis restarted); enqueueing
    again puts back only what storage lacks."""
    return [
        c
        for c in matrix
        if c.id not in enqueued or (empty[c.id] and recorded[c.id] < c.repetitions)
    ]


def holding_cells(
    live: Sequence[BenchPod], mine: Sequence[BenchPod], *, now: datetime, grace: timedelta
) -> set[str]:
    """Cells with a pod. A terminating pod still holds its cell (it hands its repetition back
    as it goes), unless it has been going for longer than any grace period: its node is
    gone."""
    holding = {p.cell for p in live}
    holding |= {
        p.cell
        for p in mine
        if p.obs.terminating and p.deleting_since is not None and now - p.deleting_since < grace
    }
    return holding


def plannable_nodes(
    spec: BenchmarkSuiteSpec, nodes: Sequence[NodeInfo], occupied: Collection[str]
) -> list[NodeInfo]:
    """Nodes a new pod may be planned on: an exclusive suite skips nodes that hold a
    benchmark pod of any suite."""
    if spec.isolation != "exclusive":
        return list(nodes)
    return [n for n in nodes if n.name not in occupied]


@dataclass(frozen=True)
class Room:
    """What the cluster can hold for this run's new pods now."""

    nodes: Sequence[NodeInfo]
    quota: QuotaHeadroom
    holding: Collection[str]  # cells that have a pod (indexed or just created)
    live: int  # pods running or starting, the ones the index does not show yet included
    pending: int  # of those, pods not placed on a node yet


@dataclass(frozen=True)
class PodToStart:
    """A benchmark pod to create: its cell, the cell as the planner saw it, and its plan."""

    cell: Cell
    run_spec: EvalRunSpec
    size: WorkerSize
    pool: str


def pods_to_start(
    spec: BenchmarkSuiteSpec,
    matrix: Sequence[Cell],
    *,
    recorded: Mapping[str, int],
    queued: Mapping[str, int],
    room: Room,
    config: OperatorConfig,
) -> list[PodToStart]:
    """A pod for each cell that needs one, within maxParallel and what nodes hold."""
    candidates: list[tuple[str, int]] = []
    plans: dict[str, tuple[Cell, EvalRunSpec, PlanResult]] = {}
    for cell in matrix:
        if not cell_needs_pod(
            recorded=recorded[cell.id],
            repetitions=cell.repetitions,
            queued=queued.get(cell.id, 0),
            has_pod=cell.id in room.holding,
        ):
            continue
        run_spec = cell_run_spec(spec, cell)
        plan = compute_plan(run_spec, room.nodes, Demand(backlog=1), config, quota=room.quota)
        plans[cell.id] = (cell, run_spec, plan)
        candidates.append((cell.id, plan.fit if plan.replicas > 0 else 0))
    chosen = choose_cells(
        candidates, live=room.live, pending=room.pending, max_parallel=spec.max_parallel
    )
    starts: list[PodToStart] = []
    for cell_id in chosen:
        cell, run_spec, plan = plans[cell_id]
        pool = next((p.name for p in plan.pools if p.replicas > 0), "")
        starts.append(PodToStart(cell, run_spec, plan.size, pool))
    return starts


def stops_failed_run(phase: str | None, prev: BenchmarkSuiteStatus, run: RunDecision) -> bool:
    """The run has just failed: its pods and queues go now."""
    return phase == "Failed" and prev.phase != "Failed" and run.run_id is not None
