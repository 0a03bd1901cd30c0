"""Issue 15, findings 12 and 13, for BenchmarkSuites: a benchmark pod lost while no operator ran
is counted once by the next one (the loss ledger lives in ``status.ledger``), each lost pod
posts one Warning Event, ``Degraded`` says what happened, and a finished run shows no ready
pods. Passes run on an in-memory API with a real Redis queue and local storage."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from proctor.api.conditions import Event
from proctor.api.v1alpha1.base import LossLedgerStatus as EvalRunLedger
from proctor.api.v1alpha1.benchmarksuite import BenchmarkSuiteSpec, BenchmarkSuiteStatus
from proctor.cluster.losses import Departed
from proctor.cluster.reads import PodState
from proctor.config import OperatorConfig
from proctor.connection import RunRef, SharedClients
from proctor.planning.plan import Capacity, NodeInfo
from proctor.suite.api import SuiteApi
from proctor.suite.decide import RunDecision
from proctor.suite.gather import BenchPod, SuiteView
from proctor.suite.reconcile import reconcile_suite
from proctor.suite.runtime import SuiteRuntime
from proctor.suite.status import SuiteObservation, next_suite_status

T0 = datetime(2026, 3, 1, 2, 30, tzinfo=UTC)
UID = "abcdef0123456789"
SPEC: dict[str, Any] = {
    "image": "bench:1",
    "benchmarks": [{"name": "b", "command": ["true"], "repetitions": 3, "profile": "small"}],
    "variants": [{"name": "v1"}],
    "placement": {"spot": {"allowed": True}},
    "failureBudget": 2,
}
SPOT_NODE = NodeInfo(
    "spot-1", Capacity(4000, 8 << 30, 0, 110), labels={"karpenter.sh/capacity-type": "spot"}
)


def merge(into: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch applied (RFC 7386), as the API server applies the status patch."""
    out = dict(into)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


class MemorySuiteApi(SuiteApi):
    """The suite's API calls kept in memory: its status, the pods created and deleted."""

    def __init__(self) -> None:  # no client: nothing here reaches a cluster
        self.status: dict[str, Any] = {}
        self.created: list[str] = []
        self.deleted: list[str] = []

    def patch_status(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        self.status = merge(self.status, patch.get("status", patch))

    def create_pod(self, manifest: Mapping[str, Any]) -> tuple[str, str]:
        name = f"{manifest['metadata'].get('generateName', 'pod-')}{len(self.created)}"
        self.created.append(name)
        return name, f"uid-{name}"

    def delete_pod(self, namespace: str, name: str) -> None:
        self.deleted.append(name)

    def quotas(self, namespace: str) -> list[dict[str, Any]]:
        return []


@dataclass
class Operator:
    """One operator process: its memory of the suite (lost on restart) and its Events."""

    api: MemorySuiteApi
    config: OperatorConfig
    clients: SharedClients
    rt: SuiteRuntime
    events: list[Event]

    def pass_(self, pods: list[BenchPod], now: datetime, departed: Sequence[Departed] = ()) -> None:
        reconcile_suite(
            body_spec=SPEC,
            body_status=self.api.status,
            created=T0,
            ref=RunRef("ns", "suite", UID, 1, {}),
            config=self.config,
            api=self.api,
            clients=self.clients,
            view=SuiteView(nodes=[SPOT_NODE], usage={}, pods=pods, occupied=[], departed=departed),
            runtime=self.rt,
            emit=self.events.append,
            now=now,
        )

    def restarted(self) -> Operator:
        return Operator(self.api, self.config, self.clients, SuiteRuntime(), [])


@pytest.fixture
def operator(redis_url: str, tmp_path: Path) -> Iterator[Operator]:
    config = OperatorConfig(default_queue_url=redis_url, default_storage_uri=str(tmp_path))
    clients = SharedClients()
    try:
        yield Operator(MemorySuiteApi(), config, clients, SuiteRuntime(), [])
    finally:
        clients.close()


def pod(name: str, run_id: str, *, lost: str = "", why: str = "") -> BenchPod:
    finished = bool(lost)
    obs = PodState(
        name, f"uid-{name}", "suite", "ns", T0, SPOT_NODE.name,
        "Failed" if finished else "Running", not finished, False, finished, lost, why,
    )  # fmt: skip
    return BenchPod(obs, "b.v1", run_id)


def started(op: Operator) -> tuple[str, BenchPod]:
    """A suite run with its one benchmark pod bound to the spot node and recorded in status."""
    op.pass_([], T0)
    run_id = str(op.api.status["runId"])
    (name,) = op.api.created
    first = pod(name, run_id)
    op.pass_([first], T0 + timedelta(seconds=2))
    return run_id, first


def losses(events: list[Event]) -> list[tuple[str, str]]:
    return [(e.type, e.reason) for e in events if e.reason.startswith("Worker")]


def degraded(status: Mapping[str, Any]) -> tuple[str, str, str]:
    cond = next(c for c in status["conditions"] if c["type"] == "Degraded")
    return cond["status"], cond["reason"], cond["message"]


def test_finding12_suite_status_records_its_pods_in_the_ledger(operator: Operator) -> None:
    _, first = started(operator)
    ledger = operator.api.status["ledger"]
    assert ledger["pods"] == [
        {"name": first.obs.name, "uid": first.obs.uid, "node": "spot-1", "spot": True,
         "state": "live"}
    ]  # fmt: skip


def test_finding12_suite_pod_lost_while_the_operator_was_down_is_counted_once(
    operator: Operator,
) -> None:
    run_id, first = started(operator)
    successor = operator.restarted()  # the spot node and its pod went while none ran
    successor.pass_([], T0 + timedelta(minutes=5))
    status = successor.api.status
    assert (status["disruptions"], status.get("failures", 0)) == (1, 0), status
    assert status["ledger"]["spotDisruptions"] == 1
    assert losses(successor.events) == [("Warning", "WorkerDisrupted")]
    (event,) = [e for e in successor.events if e.reason == "WorkerDisrupted"]
    assert f"{first.obs.name} on spot-1 (spot): disruption (vanished)" in event.message
    assert "spec.failureBudget" in event.message
    assert degraded(status)[:2] == ("True", "WorkersDisrupted")
    assert len(successor.api.created) == 2  # the lost pod's cell got a replacement
    # More passes, and another restart (the replacement now indexed), count nothing again.
    successor.pass_([], T0 + timedelta(minutes=5, seconds=2))
    third = successor.restarted()
    third.pass_([pod(successor.api.created[1], run_id)], T0 + timedelta(minutes=6))
    assert (third.api.status["disruptions"], losses(successor.events + third.events)) == (
        1,
        [("Warning", "WorkerDisrupted")],
    )


def test_finding12_suite_failures_carry_over_a_restart_toward_the_budget(
    operator: Operator,
) -> None:
    run_id, first = started(operator)
    crashed = pod(first.obs.name, run_id, lost="failure", why="OOMKilled")
    operator.pass_([crashed], T0 + timedelta(seconds=4))
    assert operator.api.status["failures"] == 1
    successor = operator.restarted()
    (name,) = operator.api.created[1:]
    successor.pass_([pod(name, run_id, lost="failure", why="exit 1")], T0 + timedelta(minutes=5))
    status = successor.api.status
    assert (status["failures"], status.get("disruptions", 0), status["phase"]) == (2, 0, "Running")
    status_, reason, message = degraded(status)
    assert (status_, reason) == ("True", "WorkerFailures")
    assert "2 benchmark pod failures" in message
    assert "spec.failureBudget is 2" in message
    assert losses(operator.events + successor.events) == [("Warning", "WorkerFailed")] * 2


def test_finding13_suite_degraded_names_failures_and_disruptions() -> None:
    spec = BenchmarkSuiteSpec.model_validate(SPEC)
    prev = BenchmarkSuiteStatus.model_validate({"phase": "Running", "runId": "r1"})
    run = RunDecision("r1", False)
    base = {"spec": spec, "generation": 1, "now": T0, "previous": prev, "run": run}
    both = next_suite_status(SuiteObservation(**base, failures=1, disruptions=3)).status
    cond = next(c for c in both.conditions or () if c.type == "Degraded")
    assert (cond.status, cond.reason) == ("True", "WorkerFailures")
    assert "1 benchmark pod failures" in cond.message
    assert "3 benchmark pods disrupted" in cond.message
    calm = next_suite_status(SuiteObservation(**base)).status
    cond = next(c for c in calm.conditions or () if c.type == "Degraded")
    assert (cond.status, cond.reason) == ("False", "AsExpected")


def test_finding13_a_finished_suite_run_shows_no_ready_pods() -> None:
    spec = BenchmarkSuiteSpec.model_validate(SPEC)
    prev = BenchmarkSuiteStatus.model_validate({"phase": "Running", "runId": "r1", "readyPods": 1})
    run = RunDecision("r1", False)
    base = {"spec": spec, "generation": 1, "now": T0, "previous": prev, "run": run}
    running = next_suite_status(SuiteObservation(**base, ready_pods=1)).status
    assert running.ready_pods == 1
    failed = next_suite_status(SuiteObservation(**base, ready_pods=1, failures=3)).status
    assert (failed.phase, failed.ready_pods) == ("Failed", 0)
    history = failed.history or []
    assert [(h.run_id, h.failures) for h in history] == [("r1", 3)]


def test_finding12_suite_ledger_has_the_evalrun_schema() -> None:
    field = BenchmarkSuiteStatus.model_fields["ledger"]
    assert field.annotation == EvalRunLedger | None


def gone(bench: BenchPod, *, lost: str, why: str, on_spot: bool = True) -> Departed:
    """A benchmark pod's DELETED event, with its last state."""
    return Departed(pod(bench.obs.name, bench.run_id, lost=lost, why=why).obs, on_spot)


def test_finding12_suite_pod_deleted_between_passes_is_classified_by_its_last_state(
    operator: Operator,
) -> None:
    run_id, first = started(operator)
    # It crashed and was deleted before the next pass saw it: a failure, not a disruption.
    crashed = gone(first, lost="failure", why="exit code 137 (OOMKilled)")
    operator.pass_([], T0 + timedelta(seconds=4), departed=[crashed])
    status = operator.api.status
    assert (status["failures"], status.get("disruptions", 0)) == (1, 0), status
    assert losses(operator.events) == [("Warning", "WorkerFailed")]
    # Its replacement is preempted before the pod index ever shows it: counted, and replaced
    # at once rather than after the wait for a pod the index does not show.
    (_, name) = operator.api.created
    preempted = gone(pod(name, run_id), lost="disruption", why="DisruptionTarget")
    operator.pass_([], T0 + timedelta(seconds=6), departed=[preempted])
    assert (operator.api.status["failures"], operator.api.status["disruptions"]) == (1, 1)
    assert len(operator.api.created) == 3
    # A pod of another suite run, or one this run never made, is not this run's loss.
    stranger = gone(pod("other-0", "other-run"), lost="failure", why="exit code 1")
    operator.pass_([], T0 + timedelta(seconds=8), departed=[stranger])
    assert (operator.api.status["failures"], operator.api.status["disruptions"]) == (1, 1)
