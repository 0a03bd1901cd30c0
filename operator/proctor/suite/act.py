"""The edge of a suite pass: it does what was decided (pods, queues, report, status); it
decides nothing."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import structlog

from proctor.api.v1alpha1.benchmarksuite import BenchmarkSuiteSpec, BenchmarkSuiteStatus
from proctor.bench.enqueue import enqueue_cell
from proctor.bench.matrix import Cell, cell_queue_id, cells
from proctor.bench.report import render_html, render_markdown
from proctor.bench.store import SuiteStore
from proctor.bench.summary import SuiteSummary
from proctor.cluster.writes import status_patch
from proctor.config import OperatorConfig
from proctor.connection import Connection, RunRef, SharedClients
from proctor.queue import WorkQueue
from proctor.suite.api import SuiteApi
from proctor.suite.connection import suite_store
from proctor.suite.decide import PodToStart
from proctor.suite.gather import BenchPod
from proctor.suite.pods import benchmark_env, benchmark_pod
from proctor.suite.runtime import SuiteRuntime

log = structlog.get_logger("proctor.operator")


def write_report(
    ref: RunRef, run_id: str, runtime: SuiteRuntime, store: SuiteStore, summary: SuiteSummary
) -> str:
    """The report and raw records of a finished run; returns the HTML report's URI."""
    records = {cid: [recs[i] for i in sorted(recs)] for cid, recs in runtime.records.items()}
    details = {"suite": f"{ref.namespace}/{ref.name}", "run": run_id}
    if runtime.baseline_uri:
        details["baseline"] = runtime.baseline_uri
    title = f"Benchmark suite {ref.name}"
    return store.write_report(
        render_markdown(summary, records, title=title, details=details),
        render_html(summary, records, runtime.baseline, title=title, details=details),
        records=records,
        summary=summary.to_json(),
    )


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


def delete_pods(api: SuiteApi, runtime: SuiteRuntime, pods: Iterable[BenchPod]) -> int:
    """Delete ``pods``, each remembered in the ledger as deleted by this operator (no loss)."""
    count = 0
    for pod in pods:
        runtime.ledger.deleted.add(pod.obs.uid)
        api.delete_pod(pod.obs.namespace, pod.obs.name)
        count += 1
    return count


def enqueue(
    runtime: SuiteRuntime, queue: WorkQueue, store: SuiteStore, cell: Cell, *, ref: RunRef,
    run_id: str,
) -> None:  # fmt: skip
    """Put the cell's unrecorded repetitions on its queue."""
    added = enqueue_cell(queue, store.cell_storage(cell.id), cell)
    runtime.enqueued.add(cell.id)
    log.info("enqueued", suite=ref.name, run=run_id, cell=cell.id, entries=added)


def create_pods(
    starts: Sequence[PodToStart],
    *,
    spec: BenchmarkSuiteSpec,
    ref: RunRef,
    run_id: str,
    conn: Connection,
    config: OperatorConfig,
    api: SuiteApi,
    runtime: SuiteRuntime,
) -> int:
    """Create the pods decided on; each is expected until the pod index shows it."""
    for start in starts:
        manifest = benchmark_pod(
            suite=ref.name,
            suite_uid=ref.uid,
            namespace=ref.namespace,
            spec=spec,
            cell=start.cell,
            run_id=run_id,
            size=start.size,
            config=config,
            env=benchmark_env(spec, ref, run_id, start.cell, conn),
            pool=start.pool,
            run_spec=start.run_spec,
            suite_labels=ref.labels,
        )
        name, uid = api.create_pod(manifest)
        runtime.expected[start.cell.id] = (uid, time.monotonic(), name)
        log.info("benchmark pod created", suite=ref.name, run=run_id, cell=start.cell.id, pod=name)
    return len(starts)


def end_run(
    spec: BenchmarkSuiteSpec, ref: RunRef, run_id: str, *, conn: Connection,
    clients: SharedClients, runtime: SuiteRuntime,
) -> None:  # fmt: skip
    """A run is over: close its queues and delete them."""
    runtime.close()
    delete_queues(spec, ref, run_id, conn, clients)


def write_status(
    api: SuiteApi, ref: RunRef, body_status: Mapping[str, Any] | None, status: BenchmarkSuiteStatus
) -> None:
    """Patch what changed in the status; nothing when nothing did."""
    new = status.model_dump(by_alias=True, exclude_none=True, mode="json")
    patch = status_patch(body_status, new)
    if patch:
        api.patch_status(ref.namespace, ref.name, patch)


def drop_runs(
    spec: BenchmarkSuiteSpec, ref: RunRef, run_ids: Iterable[str], conn: Connection,
    clients: SharedClients,
) -> None:  # fmt: skip
    """Delete the results of runs that fell out of the history."""
    for old in run_ids:
        suite_store(
            spec, conn, clients, namespace=ref.namespace, suite=ref.name, run_id=old
        ).delete()
        log.info("suite run dropped from history", suite=ref.name, run=old)
