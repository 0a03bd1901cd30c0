"""One reconcile pass of a BenchmarkSuite: observe, decide with pure functions, act at the edges.

A suite is EvalRun-style work cut per cell: each cell (benchmark x variant) of a suite run has
its own queue whose entries are repetitions ``[i, i + 1)`` (:mod:`proctor.bench.enqueue`) and
its own results under the run's storage (:class:`proctor.bench.store.SuiteStore`); at most one
benchmark pod per cell measures them (``proctor bench-worker``). Cells are planned with the
EvalRun planner (:func:`proctor.suite.pods.cell_run_spec`) and pods are EvalRun worker pods
made benchmark pods (:mod:`proctor.suite.pods`).

Order of a pass: which run (schedule) -> classify pods (disruption vs failure) -> admit
(Secrets, baseline, feasibility) -> enqueue each cell once -> progress from storage -> start
pods for cells that need one, within ``maxParallel`` and what nodes can hold -> on finish the
summary, the report and regressions -> status and Events. Every step is safe to repeat.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from proctor.api.conditions import get_condition, rfc3339, set_condition
from proctor.api.quantity import parse_duration
from proctor.api.v1alpha1.base import Condition, LossLedgerStatus
from proctor.api.v1alpha1.benchmarksuite import (
    KIND,
    PLURAL,
    BenchmarkSuiteSpec,
    BenchmarkSuiteStatus,
    CellSummary,
    Phase,
    Regression,
    SuiteRunSummary,
)
from proctor.bench.enqueue import enqueue_cell
from proctor.bench.matrix import Cell, cell_queue_id, cells
from proctor.bench.report import render_html, render_markdown
from proctor.bench.store import SuiteStore, load_records
from proctor.bench.summary import SuiteSummary, summarize_suite
from proctor.bench.worker import BenchWorkerConfig
from proctor.cluster.client import custom_path
from proctor.cluster.losses import (
    Departed,
    Losses,
    LossLedger,
    count_losses,
    ledger_status,
    loss_events,
)
from proctor.cluster.observe import (
    GROUP,
    VERSION,
    ClusterApi,
    PodUsage,
    WorkerObs,
    nodes_with_usage,
    quota_headroom,
    status_patch,
    worker_obs,
)
from proctor.config import OperatorConfig
from proctor.evalrun.reconcile import (
    CONNECTION_TTL_SECONDS,
    EXPECTATION_SECONDS,
    Connection,
    RunRef,
    SharedClients,
    connection,
)
from proctor.evalrun.status import Event, Problem, loss_degradations
from proctor.planning.plan import Demand, NodeInfo, compute_plan
from proctor.pods import merge_env
from proctor.policy import admit, baseline_problem, spec_size_problem
from proctor.queue import WorkQueue
from proctor.storage import Blobs, RunStorage, S3Blobs
from proctor.suite.cron import latest_fire, next_fire, parse_cron
from proctor.suite.pods import ANNOTATION_CELL, LABEL_SUITE_RUN, benchmark_pod, cell_run_spec

log = structlog.get_logger("proctor.operator")

TERMINAL: frozenset[str] = frozenset({"Succeeded", "Failed"})
EVERY_POD = "<every pod>"
"""A run uid no pod carries: node usage then counts every pod, this suite's own included
(each cell is planned on its own, so the suite's other pods really do take room)."""


# -- the edge: the suite's API calls --------------------------------------------------------


class SuiteApi(ClusterApi):
    """:class:`ClusterApi` for BenchmarkSuites: the suite's status, and reading another suite
    (a baseline)."""

    plural = PLURAL

    def get_suite(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The BenchmarkSuite object; None when it does not exist."""
        return self.kube.get(custom_path(GROUP, VERSION, namespace, PLURAL, name))


# -- observed pods -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchPod:
    """A benchmark pod: the EvalRun classification plus its cell and suite run."""

    obs: WorkerObs
    cell: str
    run_id: str
    deleting_since: datetime | None = None

    @property
    def live(self) -> bool:
        return not self.obs.terminating and not self.obs.finished


def bench_pod(body: Mapping[str, Any]) -> BenchPod:
    """Classify a benchmark pod (pure)."""
    meta = body.get("metadata") or {}
    deleting = meta.get("deletionTimestamp")
    return BenchPod(
        obs=worker_obs(body),
        cell=str((meta.get("annotations") or {}).get(ANNOTATION_CELL, "")),
        run_id=str((meta.get("labels") or {}).get(LABEL_SUITE_RUN, "")),
        deleting_since=datetime.fromisoformat(deleting.replace("Z", "+00:00"))
        if deleting
        else None,
    )


def departure_key(namespace: str, suite: str) -> tuple[str, str, str]:
    """Where a suite's deleted pods wait for its next pass (apart from an EvalRun's own)."""
    return (KIND, namespace, suite)


def occupied_node(body: Mapping[str, Any]) -> str | None:
    """The node a benchmark pod holds (bound, not finished); None when it holds none."""
    node = (body.get("spec") or {}).get("nodeName")
    phase = (body.get("status") or {}).get("phase")
    return str(node) if node and phase not in {"Succeeded", "Failed"} else None


# -- pure decisions ----------------------------------------------------------------------------


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


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


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
    suspended; like a CronJob, nothing runs before the first fire."""
    if spec.schedule is None:
        if prev.run_id:
            return RunDecision(prev.run_id, False)
        return RunDecision(run_id_for(created, uid), True)
    schedule = parse_cron(spec.schedule.cron)
    since = _parse_time(prev.last_schedule_time) or created
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


@dataclass(frozen=True)
class SuiteObservation:
    """Everything one pass saw and did, for the status."""

    spec: BenchmarkSuiteSpec
    generation: int
    now: datetime
    previous: BenchmarkSuiteStatus
    run: RunDecision
    summary: SuiteSummary | None = None
    ready_pods: int = 0
    finished: bool = False
    problem: Problem | None = None
    # The run's totals so far, from the loss ledger (which a restarted operator restores).
    disruptions: int = 0
    failures: int = 0
    ledger: LossLedgerStatus | None = None
    report_uri: str | None = None
    results_uri: str | None = None
    baseline_uri: str | None = None


@dataclass
class SuiteStatusUpdate:
    status: BenchmarkSuiteStatus
    events: list[Event] = field(default_factory=list)
    dropped_runs: list[str] = field(default_factory=list)


def _decide_phase(obs: SuiteObservation, failures: int) -> tuple[Phase, str, str]:
    prev = obs.previous
    spec = obs.spec
    if obs.run.run_id is None:
        if spec.suspend:
            return "Suspended", "Suspended", "spec.suspend is true; no run starts"
        return "Pending", "WaitingForSchedule", "the first run starts at the schedule's next fire"
    if not obs.run.start and prev.phase in TERMINAL:
        cond = get_condition(prev.conditions, prev.phase or "")
        return prev.phase or "Failed", cond.reason if cond else "", cond.message if cond else ""
    if failures > spec.failure_budget:
        return (
            "Failed",
            "FailureBudgetExhausted",
            f"{failures} benchmark pod failures exceed the budget of {spec.failure_budget} "
            "(spec.failureBudget); see the pods' last state for the cause",
        )
    summary = obs.summary
    if obs.finished and summary is not None:
        return (
            "Succeeded",
            "Completed",
            f"{summary.completed} repetitions of {len(summary.cells)} cells recorded "
            f"({summary.failed} failed), {len(summary.regressions)} regressions",
        )
    if spec.suspend:
        return "Suspended", "Suspended", "spec.suspend is true; benchmark pods removed"
    if obs.problem is not None:
        return "Pending", obs.problem.reason, obs.problem.message
    completed = summary.completed if summary else 0
    if obs.ready_pods > 0 or completed > 0 or (prev.phase == "Running" and not obs.run.start):
        return "Running", "Running", f"{obs.ready_pods} benchmark pods ready"
    return "Pending", "WaitingForPods", "benchmark pods are being scheduled"


def next_suite_status(obs: SuiteObservation) -> SuiteStatusUpdate:
    """The status to write, the Events to post and the runs to forget; pure."""
    prev = obs.previous
    fresh = obs.run.start
    base = BenchmarkSuiteStatus() if fresh else prev
    disruptions, failures = obs.disruptions, obs.failures
    phase, reason, message = _decide_phase(obs, failures)
    now_s = rfc3339(obs.now)
    gen = obs.generation
    conds: list[Condition] = list(prev.conditions or [])

    def put(type_: str, on: bool, why: str, text: str = "") -> None:
        nonlocal conds
        conds = set_condition(
            conds, type_, "True" if on else "False", why, text, now=obs.now, generation=gen
        )

    summary = obs.summary
    regressions: list[Regression] | None = base.regressions
    if summary is not None and obs.finished:
        # Regressions exist only against a baseline; without one the run was not compared.
        regressions = list(summary.regressions) if obs.baseline_uri else None
    put("Ready", phase in {"Running", "Succeeded"}, reason, message)
    put("Progressing", phase in {"Running", "Pending"} and obs.problem is None, reason)
    degraded = [(obs.problem.reason, obs.problem.message)] if obs.problem else []
    degraded += loss_degradations(
        failures,
        disruptions,
        budget=f"spec.failureBudget is {obs.spec.failure_budget}",
        pods="benchmark pod",
    )
    put(
        "Degraded",
        bool(degraded),
        degraded[0][0] if degraded else "AsExpected",
        "; ".join(message for _, message in degraded),
    )
    put("Succeeded", phase == "Succeeded", reason if phase == "Succeeded" else "NotFinished")
    put(
        "Failed",
        phase == "Failed",
        reason if phase == "Failed" else "NotFailed",
        message if phase == "Failed" else "",
    )
    put("Suspended", phase == "Suspended", "Suspended" if phase == "Suspended" else "NotSuspended")
    regressed = bool(regressions)
    compared = "NoRegression" if regressions is not None else "NotCompared"
    put(
        "Regressed",
        regressed,
        "RegressionFound" if regressed else compared,
        ", ".join(f"{r.benchmark}.{r.variant} x{r.ratio:.3f}" for r in regressions or ()),
    )

    cells_status: list[CellSummary] | None = summary.cells if summary else base.cells
    total = sum(c.total for c in cells_status or ())
    completed = sum(c.completed for c in cells_status or ())
    percent = round(100.0 * completed / total, 1) if total else (0.0 if obs.run.run_id else None)
    started = None if fresh else prev.start_time
    if obs.run.run_id and not started and phase in {"Running", *TERMINAL}:
        started = now_s
    completion = None if fresh else prev.completion_time
    if phase in TERMINAL and not completion:
        completion = now_s
    report_uri = obs.report_uri or base.report_uri
    results_uri = obs.results_uri or base.results_uri
    history = list(prev.history or [])
    dropped: list[str] = []
    newly_terminal = phase in TERMINAL and (fresh or prev.phase not in TERMINAL)
    if newly_terminal and obs.run.run_id:
        limit = obs.spec.schedule.history_limit if obs.spec.schedule else 1
        entry = SuiteRunSummary(
            run_id=obs.run.run_id,
            phase=phase,
            start_time=started,
            completion_time=completion,
            completed=completed,
            total=total,
            regression_count=len(regressions) if regressions is not None else None,
            disruptions=disruptions,
            failures=failures,
            report_uri=report_uri,
            results_uri=results_uri,
        )
        history, dropped = trim_history(history, entry, limit)
    last_schedule = prev.last_schedule_time
    if fresh and obs.run.scheduled_at is not None:
        last_schedule = rfc3339(obs.run.scheduled_at)
    status = BenchmarkSuiteStatus(
        phase=phase,
        observed_generation=gen,
        conditions=conds,
        progress_percent=percent,
        cells=cells_status,
        regressions=regressions,
        regression_count=len(regressions) if regressions is not None else None,
        disruptions=disruptions,
        failures=failures,
        # A finished run's pods are being removed: none is ready.
        ready_pods=0 if phase in TERMINAL else obs.ready_pods,
        ledger=obs.ledger or base.ledger,
        run_id=obs.run.run_id,
        report_uri=report_uri,
        results_uri=results_uri,
        baseline_uri=obs.baseline_uri or base.baseline_uri,
        last_schedule_time=last_schedule,
        next_schedule_time=rfc3339(obs.run.next_schedule) if obs.run.next_schedule else None,
        history=history or None,
        start_time=started,
        completion_time=completion,
    )
    return SuiteStatusUpdate(status, _events(obs, phase, reason, message, regressions), dropped)


def _events(
    obs: SuiteObservation,
    phase: str,
    reason: str,
    message: str,
    regressions: Sequence[Regression] | None,
) -> list[Event]:
    prev = obs.previous
    events: list[Event] = []
    if obs.run.start and obs.run.run_id:
        events.append(Event("Normal", "RunStarted", f"suite run {obs.run.run_id} started"))
    if phase != prev.phase or obs.run.start:
        warning = phase == "Failed" or (phase == "Pending" and obs.problem is not None)
        events.append(Event("Warning" if warning else "Normal", reason, message))
    elif obs.problem is not None:
        before = get_condition(prev.conditions, "Degraded")
        if before is None or before.reason != obs.problem.reason:
            events.append(Event("Warning", obs.problem.reason, obs.problem.message))
    if obs.finished and regressions:
        found = ", ".join(
            f"{r.benchmark}.{r.variant} ({r.ratio:.3f}x, interval "
            f"{r.ratio_ci[0]:.3f}-{r.ratio_ci[1]:.3f})"
            for r in regressions
        )
        events.append(Event("Warning", "RegressionFound", f"slower than the baseline: {found}"))
    return events


# -- per-suite memory ---------------------------------------------------------------------------


@dataclass
class SuiteRuntime:
    """Per-suite state kept between passes (in memo); rebuilt from storage after a restart."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    run_id: str | None = None
    store: SuiteStore | None = None
    queues: dict[str, WorkQueue] = field(default_factory=dict)
    owned: set[str] = field(default_factory=set)
    conn: Connection | None = None
    conn_read: tuple[float, int] = (0.0, 0)
    # Pods created but not in the pod index yet: cell -> (uid, monotonic time, pod name).
    expected: dict[str, tuple[str, float, str]] = field(default_factory=dict)
    enqueued: set[str] = field(default_factory=set)
    records: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    ledger: LossLedger = field(default_factory=LossLedger)
    baseline: dict[str, list[dict[str, Any]]] | None = None
    baseline_uri: str | None = None
    summarized: tuple[int, ...] | None = None
    summary: SuiteSummary | None = None

    def switch(self, run_id: str | None) -> None:
        """Forget everything of the previous run (queues closed)."""
        if run_id == self.run_id:
            return
        self.close()
        self.run_id = run_id
        self.store = None
        self.enqueued = set()
        self.records = {}
        self.baseline = None
        self.baseline_uri = None
        self.summarized = None
        self.summary = None
        self.expected = {}
        self.ledger = LossLedger()  # restored from the status, or a new run's own

    def close(self) -> None:
        """Close the queues this suite owns; shared clients stay open for other runs."""
        for cell_id, queue in self.queues.items():
            if cell_id in self.owned:
                queue.close()
        self.queues = {}
        self.owned = set()

    def holding(self, now: float, indexed: Iterable[str]) -> set[str]:
        """Cells with a pod this operator created that the pod index does not show yet (for
        at most EXPECTATION_SECONDS): without this a pass would start a second pod."""
        seen = set(indexed)
        self.expected = {
            cell: (uid, at, name)
            for cell, (uid, at, name) in self.expected.items()
            if uid not in seen and now - at < EXPECTATION_SECONDS
        }
        return set(self.expected)

    def unseen(self) -> dict[str, str]:
        """Pods created and not in the pod index yet, name -> uid (for the status ledger)."""
        return {name: uid for uid, _, name in self.expected.values()}


@dataclass(frozen=True)
class SuiteView:
    """Indexed facts: nodes, per-node pod usage, this suite's benchmark pods, and the nodes
    that hold a benchmark pod of any suite."""

    nodes: Sequence[NodeInfo]
    usage: Mapping[str, Sequence[PodUsage]]
    pods: Sequence[BenchPod]
    occupied: Iterable[str]
    departed: Sequence[Departed] = ()  # this suite's pods deleted since its last pass


@dataclass
class SuitePassResult:
    phase: str
    run_id: str | None
    created: int
    deleted: int
    new_disruptions: int


EventSink = Callable[[Event], None]


# -- the pass ----------------------------------------------------------------------------------


def _suite_blobs(conn: Connection, clients: SharedClients) -> Blobs | None:
    """S3 blobs on the shared client for the suite's endpoint and credentials; None for a
    local folder."""
    if not conn.storage_uri.startswith("s3://"):
        return None
    bucket, _, prefix = conn.storage_uri.removeprefix("s3://").partition("/")
    s3 = clients.s3(conn.storage_endpoint, conn.storage_region, conn.storage_credentials)
    return S3Blobs(bucket, prefix, client=s3, retry_deadline=30.0)


def suite_store(
    spec: BenchmarkSuiteSpec,
    conn: Connection,
    clients: SharedClients,
    *,
    namespace: str,
    suite: str,
    run_id: str,
) -> SuiteStore:
    compression = spec.storage.compression if spec.storage else None
    return SuiteStore(
        conn.storage_uri,
        namespace,
        suite,
        run_id,
        compression=compression.algorithm if compression else "zstd",
        level=compression.level if compression else 3,
        endpoint=conn.storage_endpoint,
        region=conn.storage_region,
        blobs=_suite_blobs(conn, clients),
    )


def suite_connection(
    spec: BenchmarkSuiteSpec, ref: RunRef, config: OperatorConfig, api: ClusterApi
) -> Connection | Problem:
    """Queue and storage of the suite, exactly as for an EvalRun (its Secrets or defaults)."""
    return connection(cell_run_spec(spec, cells(spec)[0]), ref, config, api)


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
    # Benchmark pods receive the suite's spec in PROCTOR_SUITE_SPEC.
    return spec_size_problem(spec.model_dump_json(by_alias=True, exclude_none=True))


def cached_suite_connection(
    spec: BenchmarkSuiteSpec,
    ref: RunRef,
    config: OperatorConfig,
    api: ClusterApi,
    rt: SuiteRuntime,
) -> Connection | Problem:
    """:func:`suite_connection`, read again after CONNECTION_TTL_SECONDS or a spec change; a
    problem is never cached, so a Secret created later is found on the next pass."""
    at, generation = rt.conn_read
    fresh = time.monotonic() - at < CONNECTION_TTL_SECONDS and generation == ref.generation
    if rt.conn is not None and fresh:
        return rt.conn
    conn = admit_suite(spec, config) or suite_connection(spec, ref, config, api)
    rt.conn = conn if isinstance(conn, Connection) else None
    rt.conn_read = (time.monotonic(), ref.generation)
    return conn


def benchmark_env(
    spec: BenchmarkSuiteSpec, ref: RunRef, run_id: str, cell: Cell, conn: Connection
) -> list[dict[str, Any]]:
    """The pod's environment: what :meth:`BenchWorkerConfig.from_env` reads, with the queue
    URL and S3 credentials taken from their Secrets (never written into the pod spec), and
    the cell's ``valueFrom`` variables (literal ones travel in the spec)."""
    lease = parse_duration(spec.queue.lease) if spec.queue else 60.0
    worker = BenchWorkerConfig(
        spec=spec,
        namespace=ref.namespace,
        suite=ref.name,
        run_id=run_id,
        cell=cell.id,
        queue_url=conn.queue_url,
        storage_uri=conn.storage_uri,
        worker_id="$(POD_NAME)",
        storage_endpoint=conn.storage_endpoint,
        storage_region=conn.storage_region,
        lease_seconds=lease,
    )
    env: list[dict[str, Any]] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "PROCTOR_NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "PROCTOR_LOG_FORMAT", "value": "json"},
    ]
    from_conn = {e["name"] for e in conn.env}
    env += [{"name": k, "value": v} for k, v in worker.env().items() if k not in from_conn]
    env += conn.env
    return merge_env(
        env,
        [
            e.model_dump(by_alias=True, exclude_none=True)
            for e in cell.env
            if e.value_from is not None
        ],
    )


def _refresh_records(
    rt: SuiteRuntime, store: SuiteStore, cell_id: str
) -> dict[int, dict[str, Any]]:
    """The cell's records, reading only objects not read before."""
    have = rt.records.setdefault(cell_id, {})
    storage: RunStorage = store.cell_storage(cell_id)
    for r, key in storage.result_keys():
        if r.start in have:
            continue
        for rec in storage.read_object(key):
            have[int(rec["repetition"])] = rec
    return have


def _baseline(
    *,
    spec: BenchmarkSuiteSpec,
    ref: RunRef,
    prev: BenchmarkSuiteStatus,
    run_id: str,
    conn: Connection,
    clients: SharedClients,
    config: OperatorConfig,
    api: SuiteApi,
) -> tuple[str, dict[str, list[dict[str, Any]]]] | Problem | None:
    """The baseline's results URI and records; None when there is nothing to compare with."""
    base = spec.baseline
    if base is None:
        return None
    if base.results_uri:
        # With the suite's own credentials (admit_suite allowed the bucket), never the
        # operator's: a suite must not read what its own credentials cannot.
        bucket = base.results_uri.removeprefix("s3://").partition("/")[0]
        s3 = clients.s3(conn.storage_endpoint, conn.storage_region, conn.storage_credentials)
        blobs = S3Blobs(bucket, "", client=s3, retry_deadline=30.0)
        return base.results_uri, load_records(base.results_uri, blobs=blobs)
    name = base.suite_run or ""
    if name == ref.name:
        # This suite's own previous run: a scheduled suite compares each run with the last.
        earlier = [h for h in prev.history or () if h.phase == "Succeeded" and h.run_id != run_id]
        if not earlier:
            return None
        store = suite_store(
            spec, conn, clients, namespace=ref.namespace, suite=ref.name, run_id=earlier[-1].run_id
        )
        return store.results_uri, store.all_records()
    other = api.get_suite(ref.namespace, name)
    if other is None:
        return Problem(
            "BaselineNotFound",
            f"spec.baseline.suiteRun names BenchmarkSuite {name!r}, which does not exist in "
            f"namespace {ref.namespace}; name an existing suite or use baseline.resultsUri",
        )
    other_run = baseline_run_id(other.get("status"))
    if other_run is None:
        return Problem(
            "BaselineNotReady",
            f"baseline BenchmarkSuite {name!r} has no successful run yet; this suite starts "
            "when it has one",
        )
    other_spec = BenchmarkSuiteSpec.model_validate(other["spec"])
    other_ref = RunRef(ref.namespace, name, str(other["metadata"]["uid"]), 1, {})
    other_conn = suite_connection(other_spec, other_ref, config, api)
    if isinstance(other_conn, Problem):
        return Problem("BaselineNotReadable", f"baseline suite {name!r}: {other_conn.message}")
    store = suite_store(
        other_spec, other_conn, clients, namespace=ref.namespace, suite=name, run_id=other_run
    )
    return store.results_uri, store.all_records()


def _open_queue(
    rt: SuiteRuntime, clients: SharedClients, conn: Connection, cell_id: str, *, queue_id: str,
    lease: float,
) -> WorkQueue:  # fmt: skip
    queue = rt.queues.get(cell_id)
    if queue is None:
        queue = rt.queues[cell_id] = clients.queues.open(
            conn.queue_url, queue_id, lease_seconds=lease, credentials=conn.queue_credentials
        )
        if not clients.queues.shared(queue):
            rt.owned.add(cell_id)
    return queue


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
    rt: SuiteRuntime,
    emit: EventSink,
    now: datetime | None = None,
) -> SuitePassResult:
    """One pass; see the module doc."""
    now = now or datetime.now(UTC)
    spec = BenchmarkSuiteSpec.model_validate(dict(body_spec))
    prev = BenchmarkSuiteStatus.model_validate(dict(body_status or {}))
    run = decide_run(spec, prev, created=created, uid=ref.uid, now=now)
    rt.switch(run.run_id)
    pods = list(view.pods)
    removed = 0

    def delete(pod: BenchPod) -> None:
        nonlocal removed
        rt.ledger.deleted.add(pod.obs.uid)
        api.delete_pod(pod.obs.namespace, pod.obs.name)
        removed += 1

    # Pods of an earlier run have no business now.
    for pod in pods:
        if pod.run_id != (run.run_id or "") and not pod.obs.terminating:
            delete(pod)
    current = [p for p in pods if p.run_id == (run.run_id or "")]
    losses = _count_losses(rt, prev=prev, run=run, current=current, view=view, ref=ref, emit=emit)
    for pod in current:
        if pod.obs.finished and not pod.obs.terminating and pod.obs.uid not in rt.ledger.deleted:
            delete(pod)
    live = [p for p in current if p.live]

    terminal = not run.start and prev.phase in TERMINAL
    problem: Problem | None = None
    summary: SuiteSummary | None = None
    finished = False
    created_pods = 0
    report_uri = results_uri = None
    # A finished run needs neither queue nor storage: no Secret reads while it is kept.
    active = run.run_id is not None and not terminal
    conn = cached_suite_connection(spec, ref, config, api, rt) if active else None
    if isinstance(conn, Problem):
        problem = conn
    if run.run_id is None or terminal or spec.suspend or problem is not None:
        for pod in live:
            delete(pod)
    else:
        assert isinstance(conn, Connection)
        run_id = run.run_id
        if rt.store is None:
            rt.store = suite_store(
                spec, conn, clients, namespace=ref.namespace, suite=ref.name, run_id=run_id
            )
        store = rt.store
        problem = admission_problem(spec, view.nodes, config)
        if problem is None and rt.baseline is None and spec.baseline is not None:
            found = _baseline(
                spec=spec,
                ref=ref,
                prev=prev,
                run_id=run_id,
                conn=conn,
                clients=clients,
                config=config,
                api=api,
            )
            if isinstance(found, Problem):
                problem = found
            elif found is not None:
                rt.baseline_uri, rt.baseline = found
        lease = parse_duration(spec.queue.lease) if spec.queue else 60.0
        matrix = cells(spec)
        recorded: dict[str, int] = {}
        queued: dict[str, int] = {}
        for cell in matrix:
            have = _refresh_records(rt, store, cell.id)
            recorded[cell.id] = sum(1 for i in have if i < cell.repetitions)
            if problem is not None:
                continue
            queue_id = cell_queue_id(ref.namespace, ref.name, run_id, cell.id)
            queue = _open_queue(rt, clients, conn, cell.id, queue_id=queue_id, lease=lease)
            depth = queue.depth()
            # An empty queue with repetitions unrecorded was lost (Redis restarted): enqueueing
            # again puts back only what storage lacks.
            lost_queue = depth.empty and recorded[cell.id] < cell.repetitions
            if cell.id not in rt.enqueued or lost_queue:
                added = enqueue_cell(queue, store.cell_storage(cell.id), cell)
                rt.enqueued.add(cell.id)
                log.info("enqueued", suite=ref.name, run=run_id, cell=cell.id, entries=added)
                depth = queue.depth()
            queued[cell.id] = depth.total
        counts = tuple(recorded[c.id] for c in matrix)
        finished = all(recorded[c.id] >= c.repetitions for c in matrix)
        if counts != rt.summarized or (finished and rt.summary is None):
            records = {cid: list(recs.values()) for cid, recs in rt.records.items()}
            rt.summary = summarize_suite(spec, records, rt.baseline if finished else None)
            rt.summarized = counts
        summary = rt.summary
        if finished and summary is not None:
            report_uri = _write_report(ref, run_id, rt, store, summary)
            results_uri = store.results_uri
            for pod in live:
                delete(pod)
            rt.close()
            delete_queues(spec, ref, run_id, conn, clients)
            log.info("suite run finished", suite=ref.name, run=run_id, report=report_uri)
        elif problem is None:
            created_pods = _start_pods(
                spec=spec,
                ref=ref,
                run_id=run_id,
                matrix=matrix,
                recorded=recorded,
                queued=queued,
                live=live,
                view=view,
                rt=rt,
                conn=conn,
                config=config,
                api=api,
                now=now,
            )
    ready = sum(1 for p in live if p.obs.ready and p.obs.uid not in rt.ledger.deleted)
    obs = SuiteObservation(
        spec=spec,
        generation=ref.generation,
        now=now,
        previous=prev,
        run=run,
        summary=summary,
        ready_pods=ready,
        finished=finished,
        problem=problem,
        disruptions=rt.ledger.disruptions,
        failures=rt.ledger.failures,
        ledger=ledger_status(rt.ledger, [p.obs for p in current], rt.unseen()),
        report_uri=report_uri,
        results_uri=results_uri,
        baseline_uri=rt.baseline_uri,
    )
    update = next_suite_status(obs)
    if update.status.phase == "Failed" and prev.phase != "Failed" and run.run_id:
        for pod in live:
            if pod.obs.uid not in rt.ledger.deleted:
                delete(pod)
        if isinstance(conn, Connection):
            rt.close()
            delete_queues(spec, ref, run.run_id, conn, clients)
        # The pods just deleted are no loss to a successor that finds them gone.
        ledger = ledger_status(rt.ledger, [p.obs for p in current], rt.unseen())
        update.status = update.status.model_copy(update={"ledger": ledger})
    new = update.status.model_dump(by_alias=True, exclude_none=True, mode="json")
    patch = status_patch(body_status, new)
    if patch:
        api.patch_status(ref.namespace, ref.name, patch)
    for event in update.events:
        emit(event)
    if update.dropped_runs and isinstance(conn, Connection):
        for old in update.dropped_runs:
            suite_store(
                spec, conn, clients, namespace=ref.namespace, suite=ref.name, run_id=old
            ).delete()
            log.info("suite run dropped from history", suite=ref.name, run=old)
    return SuitePassResult(
        update.status.phase or "Pending", run.run_id, created_pods, removed, losses.disruptions
    )


def _count_losses(
    rt: SuiteRuntime,
    *,
    prev: BenchmarkSuiteStatus,
    run: RunDecision,
    current: Sequence[BenchPod],
    view: SuiteView,
    ref: RunRef,
    emit: EventSink,
) -> Losses:
    """Count the run's lost pods once, taking up the ledger a predecessor left in the status
    (finding 12 of issue 15; a new run starts its own), and post an Event for each. Pods
    deleted since the last pass are classified by their last state (``view.departed``)."""
    fresh = run.start
    rt.ledger.restore(
        None if fresh else prev.ledger,
        failures=0 if fresh else prev.failures or 0,
        disruptions=0 if fresh else prev.disruptions or 0,
    )
    # Deleted pods of this run: ones the ledger knows or this operator created and the index
    # has not shown (an earlier run's pods, deleted as it ended, are in neither).
    mine = set(rt.ledger.known) | set(rt.unseen().values())
    departed = [g for g in view.departed if g.obs.uid in mine]
    gone = {g.obs.uid for g in departed}
    # A pod that came and went between passes: its cell gets a replacement now.
    rt.expected = {c: e for c, e in rt.expected.items() if e[0] not in gone}
    spot = {n.name for n in view.nodes if n.is_spot}
    losses = count_losses([p.obs for p in current], rt.ledger, spot, departed)
    for note in losses.notes:
        log.info("benchmark pod lost", suite=ref.name, detail=note)
    for event in loss_events(losses.lost, budget="spec.failureBudget"):
        emit(event)  # now: the ledger has counted them, no later pass would post them
    return losses


def _write_report(
    ref: RunRef, run_id: str, rt: SuiteRuntime, store: SuiteStore, summary: SuiteSummary
) -> str:
    """The report and raw records of a finished run; returns the HTML report's URI."""
    records = {cid: [recs[i] for i in sorted(recs)] for cid, recs in rt.records.items()}
    details = {"suite": f"{ref.namespace}/{ref.name}", "run": run_id}
    if rt.baseline_uri:
        details["baseline"] = rt.baseline_uri
    title = f"Benchmark suite {ref.name}"
    return store.write_report(
        render_markdown(summary, records, title=title, details=details),
        render_html(summary, records, rt.baseline, title=title, details=details),
        records=records,
        summary=summary.to_json(),
    )


def _start_pods(
    *,
    spec: BenchmarkSuiteSpec,
    ref: RunRef,
    run_id: str,
    matrix: Sequence[Cell],
    recorded: Mapping[str, int],
    queued: Mapping[str, int],
    live: Sequence[BenchPod],
    view: SuiteView,
    rt: SuiteRuntime,
    conn: Connection,
    config: OperatorConfig,
    api: SuiteApi,
    now: datetime,
) -> int:
    """Start a pod for each cell that needs one, within maxParallel and what nodes hold."""
    grace = timedelta(seconds=config.worker_grace_seconds + 15)
    mine = [p for p in view.pods if p.run_id == run_id]
    # A terminating pod still holds its cell (it hands its repetition back as it goes), unless
    # it has been going for longer than any grace period: its node is gone.
    holding = {p.cell for p in live}
    holding |= {
        p.cell
        for p in mine
        if p.obs.terminating and p.deleting_since is not None and now - p.deleting_since < grace
    }
    unindexed = rt.holding(time.monotonic(), (p.obs.uid for p in mine)) - holding
    holding |= unindexed
    nodes = nodes_with_usage(view.nodes, view.usage, EVERY_POD)
    quota = quota_headroom(api.quotas(ref.namespace), [])
    occupied = set(view.occupied)
    free = [n for n in nodes if n.name not in occupied] if spec.isolation == "exclusive" else nodes
    candidates: list[tuple[str, int]] = []
    plans = {}
    for cell in matrix:
        if not cell_needs_pod(
            recorded=recorded[cell.id],
            repetitions=cell.repetitions,
            queued=queued.get(cell.id, 0),
            has_pod=cell.id in holding,
        ):
            continue
        plan = compute_plan(cell_run_spec(spec, cell), free, Demand(backlog=1), config, quota=quota)
        plans[cell.id] = (cell, plan)
        candidates.append((cell.id, plan.fit if plan.replicas > 0 else 0))
    pending = sum(1 for p in live if not p.obs.node) + len(unindexed)
    chosen = choose_cells(
        candidates,
        live=len(live) + len(unindexed),
        pending=pending,
        max_parallel=spec.max_parallel,
    )
    for cell_id in chosen:
        cell, plan = plans[cell_id]
        pool = next((p.name for p in plan.pools if p.replicas > 0), "")
        manifest = benchmark_pod(
            suite=ref.name,
            suite_uid=ref.uid,
            namespace=ref.namespace,
            spec=spec,
            cell=cell,
            run_id=run_id,
            size=plan.size,
            config=config,
            env=benchmark_env(spec, ref, run_id, cell, conn),
            pool=pool,
        )
        name, uid = api.create_pod(manifest)
        rt.expected[cell_id] = (uid, time.monotonic(), name)
        log.info("benchmark pod created", suite=ref.name, run=run_id, cell=cell_id, pod=name)
    return len(chosen)


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


def delete_queues(
    spec: BenchmarkSuiteSpec, ref: RunRef, run_id: str, conn: Connection, clients: SharedClients
) -> None:
    """Remove every cell queue of a run (finished, failed or deleted)."""
    for cell in cells(spec):
        queue_id = cell_queue_id(ref.namespace, ref.name, run_id, cell.id)
        queue = clients.queues.open(conn.queue_url, queue_id, credentials=conn.queue_credentials)
        try:
            queue.delete()
        finally:
            if not clients.queues.shared(queue):
                queue.close()


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
