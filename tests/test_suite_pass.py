"""Whole passes of a BenchmarkSuite, as a table of named scenarios (in the style of
cert-manager's TestProcessItem): each case runs real passes (:func:`reconcile_suite`) against
an in-memory API whose created pods a fake scheduler binds to nodes and a fake bench worker
measures, with a real Redis queue and real local storage, and checks what the passes did.
Every pass also checks the invariants: at most one live pod per cell, and with exclusive
isolation at most one benchmark pod per node."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from test_suite_losses import MemorySuiteApi

from proctor.api.conditions import Event
from proctor.api.v1alpha1.benchmarksuite import BenchmarkSuiteSpec
from proctor.api.v1alpha1.evalrun import EvalRunSpec
from proctor.bench.matrix import Cell, cell_queue_id, cells
from proctor.bench.measure import Measurement
from proctor.bench.store import SuiteStore
from proctor.bench.worker import make_record
from proctor.config import OperatorConfig, TenantPolicy
from proctor.connection import RunRef, SharedClients
from proctor.planning.plan import Capacity, NodeInfo
from proctor.pods import build_pod
from proctor.queue import open_queue
from proctor.suite import decide as suite_decide
from proctor.suite import pods as suite_pods
from proctor.suite.gather import BenchPod, SuiteView, bench_pod
from proctor.suite.pods import ANNOTATION_CELL
from proctor.suite.reconcile import reconcile_suite
from proctor.suite.runtime import SuitePassResult, SuiteRuntime

T0 = datetime(2026, 3, 1, 2, 30, tzinfo=UTC)
NODE = Capacity(4000, 8 << 30, 0, 110)
BASE: dict[str, Any] = {
    "image": "bench:1",
    "benchmarks": [{"name": "b", "command": ["true"], "repetitions": 2, "profile": "small"}],
    "variants": [{"name": "v1"}, {"name": "v2"}],
    "isolation": "shared",
}


class PodsApi(MemorySuiteApi):
    """The in-memory API, keeping each created pod's manifest for the fake scheduler."""

    def __init__(self) -> None:
        super().__init__()
        self.manifests: dict[str, dict[str, Any]] = {}

    def create_pod(self, manifest: Mapping[str, Any]) -> tuple[str, str]:
        name, uid = super().create_pod(manifest)
        self.manifests[name] = copy.deepcopy(dict(manifest))
        return name, uid


@dataclass
class World:
    """One suite, the operator's memory of it, and the cluster it runs in."""

    spec: dict[str, Any]
    api: PodsApi
    config: OperatorConfig
    clients: SharedClients
    storage: Path
    nodes: list[NodeInfo]
    uid: str = field(default_factory=lambda: uuid.uuid4().hex)
    runtime: SuiteRuntime = field(default_factory=SuiteRuntime)
    events: list[Event] = field(default_factory=list)
    bodies: dict[str, dict[str, Any]] = field(default_factory=dict)  # the pod index
    results: list[SuitePassResult] = field(default_factory=list)
    now: datetime = T0
    generation: int = 1

    def pods(self) -> list[BenchPod]:
        return [bench_pod(b) for b in self.bodies.values()]

    def pass_(self, after: timedelta = timedelta(seconds=2)) -> SuitePassResult:
        self.now += after
        occupied = {
            b["spec"]["nodeName"]
            for b in self.bodies.values()
            if b["spec"].get("nodeName") and b["status"]["phase"] == "Running"
        }
        result = reconcile_suite(
            body_spec=self.spec,
            body_status=self.api.status,
            created=T0 - timedelta(hours=2),
            ref=RunRef("ns", "suite", self.uid, self.generation, {}),
            config=self.config,
            api=self.api,
            clients=self.clients,
            view=SuiteView(nodes=self.nodes, usage={}, pods=self.pods(), occupied=occupied),
            runtime=self.runtime,
            emit=self.events.append,
            now=self.now,
        )
        for name in self.api.deleted:  # the API server removes what was deleted
            self.bodies.pop(name, None)
        self.results.append(result)
        self.check_invariants()
        return result

    def check_invariants(self) -> None:
        live = [p for p in self.pods() if p.live]
        cells_with_pod = [p.cell for p in live]
        assert len(cells_with_pod) == len(set(cells_with_pod)), cells_with_pod
        if self.spec.get("isolation") == "exclusive":
            on_nodes = [p.obs.node for p in live if p.obs.node]
            assert len(on_nodes) == len(set(on_nodes)), on_nodes

    def schedule(self) -> None:
        """Bind every new pod to a node, running and ready; an exclusive suite's pod only to a
        node without a benchmark pod (the scheduler honours the required anti-affinity)."""
        for name, manifest in self.api.manifests.items():
            if name in self.bodies or name in self.api.deleted:
                continue
            taken = {b["spec"].get("nodeName") for b in self.bodies.values()}
            exclusive = "podAntiAffinity" in manifest["spec"].get("affinity", {})
            free = [n.name for n in self.nodes if not (exclusive and n.name in taken)]
            assert free, f"the scheduler has no node for {name}"
            meta = {**manifest["metadata"], "name": name, "uid": f"uid-{name}"}
            meta["creationTimestamp"] = self.now.isoformat()
            self.bodies[name] = {
                "metadata": meta,
                "spec": {**manifest["spec"], "nodeName": free[0]},
                "status": {
                    "phase": "Running",
                    "conditions": [{"type": "Ready", "status": "True"}],
                },
            }

    def store(self) -> SuiteStore:
        return SuiteStore(str(self.storage), "ns", "suite", str(self.api.status["runId"]))

    def work(self, repetitions: int = 1) -> None:
        """Each running pod measures up to ``repetitions`` of its cell, as a bench worker does:
        claim from the cell's queue, record, ack; a pod whose queue is empty exits 0."""
        run_id = str(self.api.status["runId"])
        spec = _validated(self.spec)
        by_id = {c.id: c for c in cells(spec)}
        for name, body in list(self.bodies.items()):
            if body["status"]["phase"] != "Running":
                continue
            cell = by_id[body["metadata"]["annotations"][ANNOTATION_CELL]]
            queue_id = cell_queue_id("ns", "suite", run_id, cell.id)
            queue = open_queue(self.config.default_queue_url or "", queue_id)
            try:
                for lease in queue.claim(repetitions, name):
                    m = Measurement(0.1, 0.05, 0.01, 1 << 20, 0, False)
                    record = make_record(
                        cell, lease.range.start, m, worker=name, node="n", started="t"
                    )
                    self.store().write_record(cell.id, record)
                    queue.ack(lease, name)
                if queue.depth().empty:
                    body["status"] = {"phase": "Succeeded"}
            finally:
                queue.close()

    def fail(self, count: int = 1) -> None:
        """``count`` running pods crash (exit code 1)."""
        running = [b for b in self.bodies.values() if b["status"]["phase"] == "Running"]
        for body in running[:count]:
            body["status"] = {
                "phase": "Failed",
                "containerStatuses": [
                    {"state": {"terminated": {"exitCode": 1, "reason": "Error"}}}
                ],
            }

    def vanish(self) -> None:
        """Every pod's node goes away with it (the pods leave the index between passes)."""
        self.bodies.clear()

    def condition(self, type_: str) -> tuple[str, str]:
        cond = next(c for c in self.api.status["conditions"] if c["type"] == type_)
        return cond["status"], cond["reason"]

    def reasons(self) -> list[str]:
        return [e.reason for e in self.events]


def _validated(spec: Mapping[str, Any]) -> BenchmarkSuiteSpec:
    return BenchmarkSuiteSpec.model_validate(dict(spec))


def nodes(count: int, prefix: str = "node") -> list[NodeInfo]:
    return [NodeInfo(f"{prefix}-{i}", NODE) for i in range(count)]


# -- the scenarios -----------------------------------------------------------------------------


def admit_run_succeed(w: World) -> None:
    first = w.pass_()
    assert (first.phase, first.created) == ("Pending", 2)
    w.schedule()
    assert w.pass_().phase == "Running"
    w.work(repetitions=2)  # every repetition recorded, the pods exit
    done = w.pass_()
    status = w.api.status
    assert (done.phase, status["progressPercent"]) == ("Succeeded", 100.0)
    report = Path(status["reportUri"].removeprefix("file://"))
    assert report.name == "report.html"
    assert "<html" in report.read_text().lower()
    assert w.condition("Succeeded") == ("True", "Completed")
    assert [c["completed"] for c in status["cells"]] == [2, 2]
    assert sorted(w.api.deleted) == sorted(w.api.created)
    assert w.reasons()[:2] == ["RunStarted", "WaitingForPods"]
    assert "Completed" in w.reasons()
    assert w.pass_().created == 0  # a finished run starts nothing again


def exclusive_one_pod_per_node(w: World) -> None:
    assert w.pass_().created == 2  # three cells, two nodes
    w.schedule()
    assert w.pass_().created == 0  # both nodes hold a benchmark pod
    w.work(repetitions=2)  # both cells finish; their nodes come free
    assert w.pass_().created == 1  # the third cell gets a node now
    w.schedule()
    w.work(repetitions=2)
    assert w.pass_().phase == "Succeeded"
    assert len(w.api.created) == 3


def lost_pod_is_replaced(w: World) -> None:
    w.pass_()
    w.schedule()
    w.pass_()
    w.work(repetitions=1)  # one of two repetitions each, then the node goes
    w.vanish()
    after = w.pass_()
    assert (after.phase, after.created, after.new_disruptions) == ("Running", 2, 2)
    assert w.api.status["disruptions"] == 2
    assert w.api.status.get("failures", 0) == 0
    assert w.condition("Degraded") == ("True", "WorkersDisrupted")
    w.schedule()
    w.work(repetitions=2)
    assert w.pass_().phase == "Succeeded"
    assert [c["completed"] for c in w.api.status["cells"]] == [2, 2]


def failure_budget_exhausted(w: World) -> None:
    w.pass_()
    w.schedule()
    w.fail(count=1)
    assert w.pass_().phase == "Running"  # one failure, within the budget of 1; replaced
    w.schedule()
    w.fail(count=2)
    failed = w.pass_()
    assert failed.phase == "Failed"
    assert w.condition("Failed") == ("True", "FailureBudgetExhausted")
    assert w.api.status["failures"] == 3
    assert [p.obs.name for p in w.pods() if p.live] == []  # its pods are deleted
    assert "FailureBudgetExhausted" in w.reasons()
    assert w.pass_().created == 0  # a failed run stays failed


def suspend_removes_pods(w: World) -> None:
    w.pass_()
    w.schedule()
    w.pass_()
    w.spec = {**w.spec, "suspend": True}
    w.generation = 2
    suspended = w.pass_()
    assert (suspended.phase, suspended.created, suspended.deleted) == ("Suspended", 0, 2)
    assert w.condition("Suspended") == ("True", "Suspended")
    assert w.pass_().created == 0
    w.spec = {**w.spec, "suspend": False}
    w.generation = 3
    assert w.pass_().created == 2  # resumed: the same run goes on


def cron_starts_a_new_run(w: World) -> None:
    before = w.pass_()  # 02:30:02, the first fire is 03:00
    assert (before.phase, before.run_id, before.created) == ("Pending", None, 0)
    assert w.condition("Ready")[1] == "WaitingForSchedule"
    first = w.pass_(timedelta(minutes=30))
    assert first.run_id is not None
    assert first.created == 2
    w.schedule()
    w.work(repetitions=2)
    assert w.pass_().phase == "Succeeded"
    second = w.pass_(timedelta(days=1))  # the next day's fire
    assert second.run_id not in {None, first.run_id}
    assert second.created == 2
    assert [h["runId"] for h in w.api.status["history"]] == [first.run_id]
    assert w.reasons().count("RunStarted") == 2


def policy_refuses_the_spec(w: World) -> None:
    refused = w.pass_()
    assert (refused.phase, refused.created) == ("Pending", 0)
    assert w.condition("Degraded") == ("True", "PolicyViolation")
    assert ("Warning", "PolicyViolation") in [(e.type, e.reason) for e in w.events]
    assert w.pass_().created == 0


def no_node_holds_a_cell(w: World) -> None:
    pending = w.pass_()
    assert (pending.phase, pending.created) == ("Pending", 0)
    assert w.condition("Degraded")[1] == "ProfileTooLarge"


@dataclass(frozen=True)
class Case:
    name: str
    spec: Mapping[str, Any]
    scenario: Callable[[World], None]
    nodes: int = 2
    config: Mapping[str, Any] = field(default_factory=dict)


HUGE = {"cpu": "64", "memory": "1Ti"}
CASES = [
    Case("admit, cells run, Succeeded with a report", {}, admit_run_succeed),
    Case(
        "exclusive isolation: one pod per node",
        {"isolation": "exclusive", "variants": [{"name": "v1"}, {"name": "v2"}, {"name": "v3"}]},
        exclusive_one_pod_per_node,
    ),
    Case("a lost pod is replaced", {}, lost_pod_is_replaced),
    Case("failure budget exhausted: Failed", {"failureBudget": 1}, failure_budget_exhausted),
    Case("suspend removes the pods", {}, suspend_removes_pods),
    Case(
        "the schedule starts a new run", {"schedule": {"cron": "0 3 * * *"}}, cron_starts_a_new_run
    ),
    Case(
        "the tenant policy refuses the spec",
        {},
        policy_refuses_the_spec,
        config={"policy": TenantPolicy(allowed_images=["registry.example.com/*"])},
    ),
    Case(
        "no node can hold a cell",
        {"benchmarks": [{"name": "b", "command": ["true"], "resources": HUGE}]},
        no_node_holds_a_cell,
    ),
]


@pytest.fixture
def clients() -> Iterator[SharedClients]:
    shared = SharedClients()
    try:
        yield shared
    finally:
        shared.close()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_suite_pass(case: Case, redis_url: str, tmp_path: Path, clients: SharedClients) -> None:
    config = OperatorConfig(
        default_queue_url=redis_url, default_storage_uri=str(tmp_path), **case.config
    )
    spec = {**copy.deepcopy(BASE), **copy.deepcopy(dict(case.spec))}
    world = World(spec, PodsApi(), config, clients, tmp_path, nodes(case.nodes))
    case.scenario(world)


def test_suite_pass_refuses_an_invalid_spec(
    redis_url: str, tmp_path: Path, clients: SharedClients
) -> None:
    config = OperatorConfig(default_queue_url=redis_url, default_storage_uri=str(tmp_path))
    spec = {**copy.deepcopy(BASE), "schedule": {"cron": "every day at three"}}
    world = World(spec, PodsApi(), config, clients, tmp_path, nodes(1))
    with pytest.raises(ValidationError, match="cron"):
        world.pass_()
    assert (world.api.status, world.api.created) == ({}, [])


def test_suite_pass_builds_each_pod_in_one_call_with_the_spec_it_planned(
    redis_url: str, tmp_path: Path, clients: SharedClients, monkeypatch: pytest.MonkeyPatch
) -> None:
    planned: list[EvalRunSpec] = []
    built: list[EvalRunSpec] = []
    cell_run_spec = suite_pods.cell_run_spec

    def plan_spec(spec: BenchmarkSuiteSpec, cell: Cell) -> EvalRunSpec:
        planned.append(cell_run_spec(spec, cell))
        return planned[-1]

    def build(**kwargs: Any) -> dict[str, Any]:
        built.append(kwargs["spec"])
        return build_pod(**kwargs)

    def not_again(spec: BenchmarkSuiteSpec, cell: Cell) -> EvalRunSpec:
        raise AssertionError("the pod builder computed the cell's run spec a second time")

    monkeypatch.setattr(suite_decide, "cell_run_spec", plan_spec)
    monkeypatch.setattr(suite_pods, "build_pod", build)
    config = OperatorConfig(default_queue_url=redis_url, default_storage_uri=str(tmp_path))
    world = World(copy.deepcopy(BASE), PodsApi(), config, clients, tmp_path, nodes(2))
    monkeypatch.setattr(suite_pods, "cell_run_spec", not_again)
    assert world.pass_().created == 2
    assert len(built) == 2  # one builder call per pod
    assert all(any(b is p for p in planned) for b in built)  # the very spec it planned with
