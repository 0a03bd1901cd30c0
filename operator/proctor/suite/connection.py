"""A suite's queue and storage: read from its Secrets (cached), its store and cell queues."""

from __future__ import annotations

from proctor.api.conditions import Problem
from proctor.api.v1alpha1.benchmarksuite import BenchmarkSuiteSpec
from proctor.bench.store import SuiteStore
from proctor.cluster.api import ClusterApi
from proctor.config import OperatorConfig
from proctor.connection import (
    Connection,
    RunRef,
    SharedClients,
    build_connection,
    cached_connection,
)
from proctor.queue import WorkQueue
from proctor.storage import Blobs, S3Blobs
from proctor.suite.decide import admit_suite
from proctor.suite.runtime import SuiteRuntime


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
    return build_connection(spec.queue, spec.storage, ref.namespace, config, api)


def cached_suite_connection(
    spec: BenchmarkSuiteSpec,
    ref: RunRef,
    config: OperatorConfig,
    api: ClusterApi,
    runtime: SuiteRuntime,
) -> Connection | Problem:
    """:func:`suite_connection` after the tenant policy, read again after
    CONNECTION_TTL_SECONDS or a spec change; a problem is never cached, so a Secret created
    later is found on the next pass."""
    return cached_connection(
        runtime.connection,
        (ref.uid, ref.generation),
        lambda: admit_suite(spec, config) or suite_connection(spec, ref, config, api),
    )


def open_queue(
    runtime: SuiteRuntime, clients: SharedClients, conn: Connection, cell_id: str, *, queue_id: str,
    lease: float,
) -> WorkQueue:  # fmt: skip
    queue = runtime.queues.get(cell_id)
    if queue is None:
        queue = runtime.queues[cell_id] = clients.queues.open(
            conn.queue_url, queue_id, lease_seconds=lease, credentials=conn.queue_credentials
        )
        if not clients.queues.shared(queue):
            runtime.owned.add(cell_id)
    return queue
