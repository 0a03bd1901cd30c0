"""Whole passes of an EvalRun (``reconcile_run``), in the style of cert-manager's
TestProcessItem: an in-memory cluster (the API the pass writes through and the pod index it
reads), the embedded queue and a storage folder, and a table of named cases, each a sequence
of steps (what happens in the world, then one pass) with the writes the pass must make."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from proctor.api.conditions import Event
from proctor.api.v1alpha1.evalrun import EvalRunSpec
from proctor.cluster.losses import Departures
from proctor.cluster.reads import node_info, pod_state
from proctor.config import OperatorConfig
from proctor.connection import RunRef, SharedClients
from proctor.controller.evalrun import _scheduled_pass
from proctor.controller.metrics import OperatorMetrics
from proctor.controller.pass_timing import PassSchedule
from proctor.evalrun.gather import ClusterView
from proctor.evalrun.preview import plan_new_run
from proctor.evalrun.reconcile import PassResult, reconcile_run
from proctor.evalrun.runtime import RunRuntime
from proctor.planning.plan import Capacity, NodeInfo

T0 = datetime(2026, 1, 1, tzinfo=UTC)
NODE = NodeInfo("node-1", Capacity(cpu_millis=64_000, memory=256 * 2**30, pods=110), labels={})
NODE_BODY: dict[str, Any] = {
    "metadata": {"name": "node-1"},
    "status": {
        "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "110"},
        "conditions": [{"type": "Ready", "status": "True"}],
    },
}


class ApiDownError(Exception):
    """What the fake API raises for a method told to fail."""


def merge_patch(target: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """RFC 7386, as the API server applies a status merge patch."""
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge_patch(out[key], value)
        else:
            out[key] = value
    return out


@dataclass
class FakeCluster:
    """The API a pass writes through (pods, status, Secrets, quotas) and the pod index."""

    pods: dict[str, dict[str, Any]] = field(default_factory=dict)
    status: dict[str, Any] | None = None
    created: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    patches: list[Mapping[str, Any]] = field(default_factory=list)
    failing: frozenset[str] = frozenset()
    graceful: bool = False  # deleted pods stay, terminating, until released
    posted: list[Event] = field(default_factory=list)  # Events the controller posted
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def _maybe_fail(self, method: str) -> None:
        if method in self.failing:
            raise ApiDownError(f"{method}: the API server is unavailable")

    def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        self._maybe_fail("read_secret")
        return None

    def quotas(self, namespace: str) -> list[dict[str, Any]]:
        self._maybe_fail("quotas")
        return []

    def create_pod(self, manifest: Mapping[str, Any]) -> tuple[str, str]:
        self._maybe_fail("create_pod")
        n = next(self._ids)
        meta = dict(manifest["metadata"])
        name, uid = f"{meta['generateName']}{n}", f"pod-uid-{n}"
        meta.update(name=name, uid=uid, creationTimestamp="2026-01-01T00:00:00Z")
        self.pods[name] = {
            **manifest,
            "metadata": meta,
            "spec": {**manifest["spec"], "nodeName": NODE.name},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
        }
        self.created.append(name)
        return name, uid

    def delete_pod(self, namespace: str, name: str) -> None:
        self._maybe_fail("delete_pod")
        if self.graceful and name in self.pods:
            self.pods[name]["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        else:
            self.pods.pop(name, None)
        self.deleted.append(name)

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self._maybe_fail("patch_status")
        self.patches.append(status)
        self.status = merge_patch(self.status or {}, status)

    def post_event(self, involved: Mapping[str, Any], event: Event) -> None:
        self.posted.append(event)

    def nodes(self) -> list[dict[str, Any]]:
        return [NODE_BODY]

    def bound_pods(self) -> list[dict[str, Any]]:
        return list(self.pods.values())

    def view(self) -> ClusterView:
        return ClusterView(
            nodes=[NODE], usage={}, workers=[pod_state(b) for b in self.pods.values()]
        )

    def preempt(self, name: str) -> None:
        """The node's pod is evicted for a higher-priority pod (kubelet's condition)."""
        self.pods[name]["status"] = {
            "phase": "Failed",
            "conditions": [
                {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}
            ],
        }


@dataclass
class World:
    """One EvalRun, its cluster, queue and storage, driven pass by pass."""

    cluster: FakeCluster
    spec: dict[str, Any]
    config: OperatorConfig
    rt: RunRuntime = field(default_factory=RunRuntime)
    clients: SharedClients = field(default_factory=SharedClients)
    events: list[Event] = field(default_factory=list)
    generation: int = 1
    now: datetime = T0

    def reconcile(self) -> PassResult:
        self.now += timedelta(seconds=5)
        return reconcile_run(
            body_spec=self.spec,
            body_status=self.cluster.status,
            ref=RunRef("ns", "run", "run-uid", self.generation, {}),
            config=self.config,
            api=self.cluster,  # type: ignore[arg-type]
            view=self.cluster.view(),
            rt=self.rt,
            emit=self.events.append,
            clients=self.clients,
            now=self.now,
        )

    def work(self, entries: int) -> None:
        """Workers take ``entries`` queue entries each to a pass, recording every case."""
        assert self.rt.queue is not None
        assert self.rt.storage is not None
        consumer = next(iter(self.cluster.pods), "worker")
        side = {"passed": True, "errored": False, "violations": []}
        sides = {"baseline": side, "candidate": side} if "compare" in self.spec else {}
        for lease in self.rt.queue.claim(entries, consumer):
            records: list[dict[str, Any]] = [
                {"index": i, "status": "passed", "durationMs": 1.0, "error": None,
                 "violations": [], **sides}
                for i in range(lease.range.start, lease.range.end)
            ]  # fmt: skip
            self.rt.storage.write_results(lease.range, records)
            assert self.rt.queue.ack(lease, consumer)

    def suspend(self, on: bool) -> None:
        self.spec = {**self.spec, "suspend": on}
        self.generation += 1

    def cancel(self) -> None:
        self.spec = {**self.spec, "cancel": True}
        self.generation += 1

    def hold_pods(self) -> None:
        """Deleted pods stay, terminating, until :meth:`release_pods` (as a draining worker
        flushing its results does)."""
        self.cluster.graceful = True

    def release_pods(self) -> None:
        self.cluster.graceful = False
        for name in [
            n for n, p in self.cluster.pods.items() if p["metadata"].get("deletionTimestamp")
        ]:
            del self.cluster.pods[name]


Step = Callable[[World], object]


@dataclass(frozen=True)
class Expect:
    """What one pass must have done: counts of pods created and deleted, the phase written
    (None: no status write), the reasons of the Events posted, and more."""

    created: int = 0
    deleted: int = 0
    phase: str | None = None
    events: tuple[str, ...] = ()
    disruptions: int | None = None
    failures: int | None = None
    raises: str | None = None
    status_written: bool | None = None
    queue_stopped: bool | None = None
    completed: int | None = None


def spec(count: int = 40, **extra: Any) -> dict[str, Any]:
    return {
        "image": "registry.example/eval:1",
        "task": {"entrypoint": "proctor.examples.topk:TopKTask"},
        "cases": {"count": count},
        "batch": {"initialSize": 10, "minSize": 10, "maxSize": 10},
        "workers": {"max": 4, "targetBacklogPerWorker": 1, "scaleDownStabilization": "0s"},
        **extra,
    }


def nothing(world: World) -> None:
    pass


def work(entries: int) -> Step:
    return lambda world: world.work(entries)


def preempt_first(world: World) -> None:
    world.cluster.preempt(next(iter(world.cluster.pods)))


def suspend(world: World) -> None:
    world.suspend(True)


def resume(world: World) -> None:
    world.suspend(False)


def api_fails(*methods: str) -> Step:
    def step(world: World) -> None:
        world.cluster.failing = frozenset(methods)

    return step


def api_recovers(world: World) -> None:
    world.cluster.failing = frozenset()


def cancel(world: World) -> None:
    world.cancel()


def steps(*each: Step) -> Step:
    """Several things happening before one pass."""

    def step(world: World) -> None:
        for one in each:
            one(world)

    return step


def hold_pods(world: World) -> None:
    world.hold_pods()


def release_pods(world: World) -> None:
    world.release_pods()


def raise_max(world: World) -> None:
    world.spec = {**world.spec, "workers": {**world.spec["workers"], "max": 4}}
    world.generation += 1


# (name, run spec, [(what happens before the pass, what the pass must do)])
CASES: list[tuple[str, dict[str, Any], list[tuple[Step, Expect]]]] = [
    (
        "admit -> Pending -> Running -> Succeeded",
        spec(count=40),
        [
            # 4 queue entries of 10 cases, one per worker (targetBacklogPerWorker 1, max 4).
            (nothing, Expect(created=4, phase="Pending")),
            (nothing, Expect(phase="Running", events=("Running",))),  # the pods are Ready
            (work(4), Expect(deleted=4, phase="Succeeded", events=("Completed",))),
            (nothing, Expect()),  # finished: nothing more to do or write
        ],
    ),
    (
        "scale up to the backlog and again when workers.max rises; idle workers go as it drains",
        spec(
            count=40,
            workers={"max": 2, "targetBacklogPerWorker": 1, "scaleDownStabilization": "0s"},
        ),
        [
            (nothing, Expect(created=2, phase="Pending")),
            (raise_max, Expect(created=2, phase="Running", events=("Running",))),
            (work(2), Expect(deleted=2, status_written=True)),  # 2 entries left: 2 workers
            (work(1), Expect(deleted=1, status_written=True)),
            (work(1), Expect(deleted=1, phase="Succeeded", events=("Completed",))),
        ],
    ),
    (
        "preemption: a pod lost with DisruptionTarget is replaced and counted, not charged",
        spec(count=40),
        [
            (nothing, Expect(created=4, phase="Pending")),
            (nothing, Expect(phase="Running", events=("Running",))),
            (
                preempt_first,
                Expect(
                    created=1, deleted=1, events=("WorkerDisrupted",), disruptions=1, failures=0
                ),
            ),
        ],
    ),
    (
        "a loss counted by a pass that then fails is posted by that pass, and only once",
        spec(count=40),
        [
            (nothing, Expect(created=4, phase="Pending")),
            (nothing, Expect(phase="Running", events=("Running",))),
            (
                steps(preempt_first, api_fails("quotas")),
                Expect(raises="quotas", events=("WorkerDisrupted",), status_written=False),
            ),
            (api_recovers, Expect(created=1, deleted=1, disruptions=1, status_written=True)),
        ],
    ),
    (
        "suspend deletes the pods, resume creates them again",
        spec(count=40),
        [
            (nothing, Expect(created=4, phase="Pending")),
            (suspend, Expect(deleted=4, phase="Suspended", events=("Suspended",))),
            (resume, Expect(created=4, phase="Pending", events=("WaitingForWorkers",))),
            (nothing, Expect(phase="Running", events=("Running",))),
        ],
    ),
    (
        "cancel: the queue stops, the workers drain, the run ends Cancelled, results kept",
        spec(count=40),
        [
            (nothing, Expect(created=4, phase="Pending")),
            (nothing, Expect(phase="Running", events=("Running",))),
            (work(1), Expect(deleted=1, status_written=True)),  # 3 entries left: 3 workers
            # Deleted workers drain (terminating) before the run ends: the phase waits.
            (
                steps(hold_pods, cancel),
                Expect(deleted=3, phase="Running", queue_stopped=True),
            ),
            (nothing, Expect(status_written=False)),
            (release_pods, Expect(phase="Cancelled", events=("Cancelled",), completed=10)),
            (nothing, Expect()),  # final: a later pass changes nothing
        ],
    ),
    (
        "cancel before any worker ran: Cancelled at once, nothing evaluated",
        spec(count=40),
        [
            (cancel, Expect(phase="Cancelled", events=("Cancelled",), completed=0)),
            (nothing, Expect()),
        ],
    ),
    (
        "cancel after every case was evaluated: the run succeeds as it would have",
        spec(count=20),
        [
            (nothing, Expect(created=2, phase="Pending")),
            (
                steps(work(2), cancel),
                Expect(deleted=2, phase="Succeeded", events=("Completed",), completed=20),
            ),
        ],
    ),
    (
        "a failed read ends the pass before any write; the next pass does the work",
        spec(count=40),
        [
            (api_fails("quotas"), Expect(raises="quotas", status_written=False)),
            (api_recovers, Expect(created=4, phase="Pending")),
        ],
    ),
    (
        "a create the API refuses ends the pass with no status written",
        spec(count=40),
        [
            (api_fails("create_pod"), Expect(raises="create_pod", status_written=False)),
            (api_recovers, Expect(created=4, phase="Pending")),
        ],
    ),
    (
        "an image the tenant policy refuses: no pod, Pending with a PolicyViolation, once",
        spec(count=40, image="elsewhere.example/eval:1"),
        [
            (nothing, Expect(phase="Pending", events=("PolicyViolation",))),
            (nothing, Expect()),
        ],
    ),
    (
        "an invalid spec fails the pass before anything is read or written",
        spec(count=-5),
        [(nothing, Expect(raises="count", status_written=False))],
    ),
]


@pytest.mark.parametrize(("run_spec", "steps"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_evalrun_pass(
    tmp_path: Path, run_spec: dict[str, Any], steps: list[tuple[Step, Expect]]
) -> None:
    config = OperatorConfig.model_validate(
        {
            "defaultQueueUrl": f"sqlite:///{tmp_path}/queue.db",
            "defaultStorageUri": str(tmp_path / "results"),
            "policy": {"allowedImages": ["registry.example/*"]},
        }
    )
    world = World(FakeCluster(), run_spec, config)
    for number, (happen, expect) in enumerate(steps):
        happen(world)
        created, deleted = len(world.cluster.created), len(world.cluster.deleted)
        patches, events = len(world.cluster.patches), len(world.events)
        where = f"step {number}"
        if expect.raises is not None:
            with pytest.raises((ApiDownError, ValidationError), match=expect.raises):
                world.reconcile()
        else:
            world.reconcile()
        assert len(world.cluster.created) - created == expect.created, where
        assert len(world.cluster.deleted) - deleted == expect.deleted, where
        new_events = tuple(e.reason for e in world.events[events:])
        assert new_events == expect.events, (where, world.events[events:])
        written = world.cluster.patches[patches:]
        status = world.cluster.status or {}
        if expect.status_written is not None:
            assert bool(written) == expect.status_written, where
        if expect.phase is None:
            assert [p["phase"] for p in written if "phase" in p] == [], where
        else:
            assert written, where
            assert status.get("phase") == expect.phase, (where, written)
        if expect.disruptions is not None:
            assert status.get("disruptions") == expect.disruptions, where
        if expect.failures is not None:
            assert status["workers"]["failures"] == expect.failures, where
        if expect.queue_stopped is not None:
            assert world.rt.queue is not None
            assert (world.rt.queue.stopped() is not None) == expect.queue_stopped, where
        if expect.completed is not None:
            assert status["counts"]["completed"] == expect.completed, where


def test_a_failed_pass_posts_reconcile_error_and_writes_nothing(tmp_path: Path) -> None:
    """Through the controller's pass: the API error becomes one ReconcileError Event."""
    cluster = FakeCluster(failing=frozenset({"create_pod"}))
    body = {
        "apiVersion": "proctor.dev/v1alpha1",
        "kind": "EvalRun",
        "metadata": {"name": "run", "namespace": "ns", "uid": "run-uid", "generation": 1},
        "spec": spec(count=40),
    }
    schedule = PassSchedule(3.0)
    schedule.observe(body, 0.0)
    view = cluster.view()
    memo = SimpleNamespace(
        runs={"run-uid": RunRuntime()},
        passes=SimpleNamespace(schedule=schedule),
        indexes={"nodes": {None: list(view.nodes)}, "usage": {}, "workers": {}},
        api=cluster,
        metrics=OperatorMetrics(),
        departures=Departures(),
        config=OperatorConfig.model_validate(
            {
                "defaultQueueUrl": f"sqlite:///{tmp_path}/queue.db",
                "defaultStorageUri": str(tmp_path / "results"),
            }
        ),
        clients=SharedClients(),
    )
    with pytest.raises(ApiDownError):
        _scheduled_pass(memo, body, "timer")
    assert [(e.type, e.reason) for e in cluster.posted] == [("Warning", "ReconcileError")]
    assert "create_pod: the API server is unavailable" in cluster.posted[0].message
    assert (cluster.created, cluster.deleted, cluster.patches) == ([], [], [])


def test_the_pass_that_finishes_a_run_reports_no_throughput(tmp_path: Path) -> None:
    """CI finding (e2e test_per_run_series_follow_the_run): the pass on which a run finished
    reported its last measured rate, so proctor_operator_cases_per_second stayed above 0 for a
    finished run whose workers were already gone. The gauge is 0 once finished."""
    config = OperatorConfig.model_validate(
        {
            "defaultQueueUrl": f"sqlite:///{tmp_path}/queue.db",
            "defaultStorageUri": str(tmp_path / "results"),
        }
    )
    world = World(FakeCluster(), spec(count=40), config)
    world.reconcile()
    world.reconcile()
    world.work(2)
    world.reconcile()
    world.work(1)
    running = world.reconcile()
    assert running.phase == "Running"
    assert running.cases_per_second > 0  # two samples of progress: a rate is measured
    world.work(1)
    finishing = world.reconcile()
    assert finishing.phase == "Succeeded"
    assert (finishing.completed, finishing.cases_per_second) == (40, 0.0)
    assert world.reconcile().cases_per_second == 0.0


def test_a_cancelled_comparison_keeps_its_results_and_stays_undecided(tmp_path: Path) -> None:
    """Cancel is not an early stop: the 30 cases never run keep the decision undecided, the
    10 evaluated stay in storage with the run's summary, and the conditions say Cancelled."""
    config = OperatorConfig.model_validate(
        {
            "defaultQueueUrl": f"sqlite:///{tmp_path}/queue.db",
            "defaultStorageUri": str(tmp_path / "results"),
        }
    )
    compare = {"baseline": {"ref": "top_k_sorted"}, "candidate": {"ref": "top_k_heap"}}
    world = World(FakeCluster(), spec(count=40, compare=compare), config)
    world.reconcile()
    world.reconcile()
    world.work(1)
    world.cancel()
    world.reconcile()  # stops the queue, deletes the workers (gone at once here)
    world.reconcile()
    status = world.cluster.status or {}
    assert status["phase"] == "Cancelled"
    result = status["result"]
    assert result["decision"] == "undecided"
    assert "cancelled" in result["reason"]
    assert result["notEvaluated"] == 30
    assert result["resultsUri"]
    assert (result["baselinePassRate"], result["candidatePassRate"]) == (1.0, 1.0)
    conds = {c["type"]: c for c in status["conditions"]}
    assert (conds["Cancelled"]["status"], conds["Cancelled"]["reason"]) == ("True", "Cancelled")
    assert conds["Succeeded"]["status"] == conds["Failed"]["status"] == "False"
    assert conds["Ready"]["status"] == "False"
    assert world.cluster.pods == {}
    assert world.rt.storage is not None
    raw = world.rt.storage.blobs.get(f"{world.rt.storage.base}summary.json")
    assert raw is not None
    stored = json.loads(raw)
    assert (stored["completed"], stored["decision"]) == (10, "undecided")
    assert (status["workers"]["desired"], status["workers"]["ready"]) == (0, 0)
    assert status["etaSeconds"] == 0


@pytest.mark.parametrize(
    ("run_spec", "bound_by"),
    [
        pytest.param(spec(count=40), "max", id="bound by max"),
        pytest.param(spec(count=25, workers={"max": 10}), "backlog", id="bound by the backlog"),
        pytest.param(
            spec(count=200, profile="xlarge", workers={"max": 20}), "cpu", id="bound by cpu"
        ),
    ],
)
def test_proctor_plan_previews_the_plan_of_the_first_pass(
    tmp_path: Path, run_spec: dict[str, Any], bound_by: str
) -> None:
    """``proctor plan``'s preview (the same reads and planner) equals the plan the run's
    first pass writes, on the same cluster."""
    assert node_info(NODE_BODY) == NODE
    config = OperatorConfig.model_validate(
        {
            "defaultQueueUrl": f"sqlite:///{tmp_path}/queue.db",
            "defaultStorageUri": str(tmp_path / "results"),
        }
    )
    cluster = FakeCluster()
    parsed = EvalRunSpec.model_validate(run_spec)
    preview = plan_new_run(parsed, cluster, "ns", config, total=parsed.cases.total())  # type: ignore[arg-type]
    world = World(cluster, run_spec, config)
    world.reconcile()
    assert world.cluster.status is not None
    assert preview.plan.to_status().to_wire() == world.cluster.status["plan"]
    assert preview.plan.bound_by == bound_by


def test_the_pass_that_finishes_a_run_writes_the_merged_results(tmp_path: Path) -> None:
    """resultsUri points at one Parquet file with one row per case once the run is over, and
    status.result and summary.json say which violations were most frequent and which cases
    failed first."""
    import pyarrow.parquet as pq

    from proctor.storage.columns import SCHEMA

    config = OperatorConfig.model_validate(
        {
            "defaultQueueUrl": f"sqlite:///{tmp_path}/queue.db",
            "defaultStorageUri": str(tmp_path / "results"),
        }
    )
    world = World(FakeCluster(), spec(count=40), config)
    world.reconcile()
    world.reconcile()
    assert world.rt.queue is not None
    assert world.rt.storage is not None
    for lease in world.rt.queue.claim(4, "worker"):
        records = [
            {"index": i, "status": "failed" if i % 4 == 3 else "passed", "durationMs": 2.0,
             "error": None, "errorType": None,
             "violations": (["sorted", "length"] if i % 8 == 3 else ["sorted"]) if i % 4 == 3
             else []}
            for i in range(lease.range.start, lease.range.end)
        ]  # fmt: skip
        world.rt.storage.write_results(lease.range, records)
        assert world.rt.queue.ack(lease, "worker")
    assert world.reconcile().phase == "Succeeded"
    assert world.cluster.status is not None
    result = world.cluster.status["result"]
    merged = tmp_path / "results" / "run-uid" / "results.parquet"
    assert result["resultsUri"] == merged.as_uri()
    table = pq.read_table(merged)
    assert table.schema.remove_metadata() == SCHEMA.remove_metadata()
    assert table.column("index").to_pylist() == list(range(40))
    assert table.column("outcome").to_pylist().count("failed") == 10
    assert result["topViolations"] == [
        {"name": "sorted", "count": 10},
        {"name": "length", "count": 5},
    ]
    assert result["firstFailing"] == [3, 7, 11, 15, 19, 23, 27, 31, 35, 39]
    assert "outputsUri" not in result  # no outputs: not a batch-scoring run
    summary = json.loads((tmp_path / "results" / "run-uid" / "summary.json").read_text())
    assert (summary["resultsUri"], summary["firstFailing"]) == (
        result["resultsUri"], result["firstFailing"]
    )  # fmt: skip
    written = merged.stat().st_mtime_ns
    assert world.reconcile().phase == "Succeeded"  # a later pass writes nothing again
    assert merged.stat().st_mtime_ns == written
