"""Results a suite pass reads: a cell's records (only objects not read before) and the
baseline's."""

from __future__ import annotations

from typing import Any

from proctor.api.conditions import Problem
from proctor.api.v1alpha1.benchmarksuite import BenchmarkSuiteSpec, BenchmarkSuiteStatus
from proctor.bench.store import SuiteStore, load_records
from proctor.config import OperatorConfig
from proctor.connection import Connection, RunRef, SharedClients
from proctor.storage import RunStorage, S3Blobs
from proctor.suite.api import SuiteApi
from proctor.suite.connection import suite_connection, suite_store
from proctor.suite.decide import baseline_run_id
from proctor.suite.runtime import SuiteRuntime


def refresh_records(
    runtime: SuiteRuntime, store: SuiteStore, cell_id: str
) -> dict[int, dict[str, Any]]:
    """The cell's records, reading only objects not read before."""
    have = runtime.records.setdefault(cell_id, {})
    storage: RunStorage = store.cell_storage(cell_id)
    for r, key in storage.result_keys():
        if r.start in have:
            continue
        for rec in storage.read_object(key):
            have[int(rec["repetition"])] = rec
    return have


def read_baseline(
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
