"""The result cache through the operator's passes: real workers (in this process) evaluate two
runs that share the default cache beside their storage; ``status.cache`` counts each side's
hits and misses, the worker's metrics count them too, and a cache the workers cannot write
puts the CacheReadOnly condition on the run instead of failing it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest

from proctor.api.v1alpha1.evalrun import EvalRunSpec
from proctor.config import OperatorConfig
from proctor.connection import RunRef
from proctor.controller.evalrun import record_pass
from proctor.controller.metrics import OperatorMetrics
from proctor.evalrun.reconcile import PassResult, reconcile_run
from proctor.worker.metrics import WorkerMetrics
from proctor.worker.runtime import Worker, WorkerConfig
from tests.test_evalrun_pass import FakeCluster, World, spec

COMPARE = {
    "baseline": {"ref": "top_k_sorted"},
    "candidate": {"ref": "top_k_heap"},
    "minDelta": -0.05,
}


@dataclass
class CacheWorld(World):
    """A World whose run has its own uid, worked on by real workers."""

    uid: str = "run-uid"
    counted: PassResult | None = None  # the latest pass that reported the cache

    def reconcile(self) -> PassResult:
        self.now = self.now.replace(second=(self.now.second + 5) % 60)
        return reconcile_run(
            body_spec=self.spec,
            body_status=self.cluster.status,
            ref=RunRef("ns", self.uid, self.uid, self.generation, {}),
            config=self.config,
            api=self.cluster,  # type: ignore[arg-type]
            view=self.cluster.view(),
            rt=self.rt,
            emit=self.events.append,
            clients=self.clients,
            now=self.now,
        )

    def work_for_real(self) -> WorkerMetrics:
        """A worker evaluates every queued case of the run, through its cache."""
        assert self.rt.queue is not None
        assert self.rt.storage is not None
        config = WorkerConfig(
            run_id=self.uid,
            run_name=f"ns/{self.uid}",
            spec=EvalRunSpec.model_validate(self.spec),
            queue_url=str(self.config.default_queue_url),
            storage_uri=str(self.config.default_storage_uri),
            poll_interval=0.05,
        )
        metrics = WorkerMetrics()
        worker = Worker(config, queue=self.rt.queue, storage=self.rt.storage, metrics=metrics)
        assert worker.run() == 0
        return metrics

    def finish(self) -> dict[str, Any]:
        for _ in range(4):
            result = self.reconcile()
            if result.cache is not None:
                self.counted = result
        assert self.cluster.status is not None
        return self.cluster.status


def world(tmp_path: Path, uid: str, candidate: str, cache: dict[str, Any]) -> CacheWorld:
    config = OperatorConfig.model_validate(
        {
            "defaultQueueUrl": f"sqlite:///{tmp_path}/{uid}-queue.db",
            "defaultStorageUri": str(tmp_path / "results"),
        }
    )
    compare = {**COMPARE, "candidate": {"ref": candidate}}
    return CacheWorld(FakeCluster(), spec(count=40, compare=compare, cache=cache), config, uid=uid)


def sample(metrics: WorkerMetrics, side: str, result: str) -> float:
    value = metrics.registry.get_sample_value(
        "proctor_worker_cache_results_total", {"side": side, "result": result}
    )
    return value or 0.0


def test_status_cache_counts_the_baseline_hits_of_a_second_run(tmp_path: Path) -> None:
    first = world(tmp_path, "first", "top_k_heap", {"mode": "readWrite"})
    first.reconcile()
    first.work_for_real()
    status = first.finish()
    assert status["phase"] == "Succeeded"
    assert status["cache"] == {
        "hits": 0,
        "misses": 80,
        "baseline": {"hits": 0, "misses": 40},
        "candidate": {"hits": 0, "misses": 40},
        "uri": str(tmp_path / "results" / "proctor-cache" / "ns"),
    }
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["CacheReadOnly"]["status"] == "False"

    second = world(tmp_path, "second", "top_k_buggy", {"mode": "readWrite"})
    second.reconcile()
    metrics = second.work_for_real()
    status2 = second.finish()
    assert status2["phase"] == "Succeeded"
    assert status2["cache"]["baseline"] == {"hits": 40, "misses": 0}
    assert status2["cache"]["candidate"] == {"hits": 0, "misses": 40}
    assert sample(metrics, "baseline", "hit") == 40
    assert sample(metrics, "candidate", "miss") == 40
    assert b"proctor_worker_cache_results_total" in generate_latest(metrics.registry)
    operator = OperatorMetrics()
    assert second.counted is not None
    record_pass(
        operator, RunRef("ns", "second", "second", 1, {}), second.counted, trigger="t", seconds=0.1
    )
    labels = {"namespace": "ns", "run": "second", "side": "baseline", "result": "hit"}
    assert operator.registry.get_sample_value("proctor_operator_cache_results", labels) == 40
    labels.update(side="candidate", result="miss")
    assert operator.registry.get_sample_value("proctor_operator_cache_results", labels) == 40
    # Cached baseline results decide like fresh ones: the buggy candidate is rejected.
    assert status2["result"]["decision"] == "reject"
    assert status2["result"]["baselinePassRate"] == 1.0


def test_a_cache_the_workers_cannot_write_is_a_condition_not_a_failure(tmp_path: Path) -> None:
    # The default cache's place beside the storage is taken by a file: nothing can be
    # written there, while the run's own results can.
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "proctor-cache").write_text("not a folder")
    run = world(tmp_path, "blocked", "top_k_heap", {"mode": "readWrite"})
    run.reconcile()
    metrics = run.work_for_real()
    status = run.finish()
    assert status["phase"] == "Succeeded"
    assert status["cache"]["readOnly"] is True
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["CacheReadOnly"]["status"] == "True"
    assert conds["CacheReadOnly"]["reason"] == "CacheNotWritable"
    assert "cannot be written" in conds["CacheReadOnly"]["message"]
    assert metrics.registry.get_sample_value("proctor_worker_cache_read_only") == 1
