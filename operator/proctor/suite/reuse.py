"""The suite pass's side of ``spec.cache``: open the cell cache with the suite's own storage
credentials, reuse unchanged cells before they are enqueued, and write measured cells once
they are complete. Problems with the cache never fail a run: they become Events (each once)
and the cell is measured.

The cache itself (fingerprint, entries, what is valid) is :mod:`proctor.bench.reuse`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime

import structlog

from proctor.api.conditions import Event
from proctor.api.v1alpha1.benchmarksuite import BenchmarkSuiteSpec
from proctor.bench.matrix import Cell
from proctor.bench.reuse import (
    CellCache,
    cell_fingerprint,
    open_cache,
    reuses,
    source_of,
)
from proctor.bench.store import SuiteStore
from proctor.connection import Connection, RunRef, SharedClients
from proctor.redact import redact_text
from proctor.storage import Blobs, S3Blobs, StorageError, open_blobs
from proctor.suite.runtime import SuiteRuntime

log = structlog.get_logger("proctor.operator")


def suite_cache(
    spec: BenchmarkSuiteSpec, conn: Connection, clients: SharedClients, store: SuiteStore,
    namespace: str,
) -> CellCache | None:  # fmt: skip
    """The suite's cell cache (None without ``spec.cache``); an s3:// ``spec.cache.uri`` is
    opened with the suite's storage endpoint and credentials, never the operator's."""

    def open_uri(uri: str) -> Blobs:
        if not uri.startswith("s3://"):
            return open_blobs(uri)  # admit_suite lets a local folder through only locally
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        s3 = clients.s3(conn.storage_endpoint, conn.storage_region, conn.storage_credentials)
        return S3Blobs(bucket, prefix, client=s3, retry_deadline=30.0)

    return open_cache(spec, store.blobs, namespace=namespace, open_uri=open_uri)


def reuse_cells(
    runtime: SuiteRuntime, spec: BenchmarkSuiteSpec, store: SuiteStore,
    candidates: Sequence[Cell], *, ref: RunRef,
) -> tuple[list[str], list[Event]]:  # fmt: skip
    """Take ``candidates`` (cells with nothing recorded and nothing on their queue) from the
    cache where an entry matches; returns the cells reused and the Events to post."""
    cache = runtime.cache
    if cache is None or not reuses(spec) or not candidates:
        return [], []
    events: list[Event] = []
    reused: list[str] = []
    taken: list[str] = []
    for cell in candidates:
        try:
            found = cache.take(spec, store, cell)
            events += [_ignored(uri) for uri in found.ignored]
            if found.found is not None:
                taken.append(cell.id)
                reused.append(f"{cell.id} (from {found.found.source})")
        except StorageError as exc:
            events += _unavailable(runtime, f"cannot read the cache at {cache.uri}: {exc}")
    if reused:
        log.info("cells reused", suite=ref.name, cells=reused)
        events.append(
            Event("Normal", "CellsReused", "unchanged, not measured again: " + ", ".join(reused))
        )
    return taken, events


def remember_cells(
    runtime: SuiteRuntime, spec: BenchmarkSuiteSpec, matrix: Sequence[Cell],
    recorded: Mapping[str, int], *, ref: RunRef, run_id: str, now: datetime,
) -> list[Event]:  # fmt: skip
    """Write each cell this run completed to the cache, once per run (a repeat after an
    operator restart is a no-op: entries are created once)."""
    cache = runtime.cache
    if cache is None:
        return []
    events: list[Event] = []
    source = source_of(ref.namespace, ref.name, run_id)
    for cell in matrix:
        if recorded[cell.id] < cell.repetitions or cell.id in runtime.cached:
            continue
        runtime.cached.add(cell.id)
        records = runtime.records.get(cell.id, {})
        try:
            cache.remember(cell, cell_fingerprint(spec, cell), source, records, now)
        except StorageError as exc:
            events += _unavailable(runtime, f"cannot write {cell.id} to {cache.uri}: {exc}")
    return events


def idle_cells(
    runtime: SuiteRuntime, matrix: Sequence[Cell], recorded: Mapping[str, int],
    idle: Callable[[Cell], bool],
) -> list[Cell]:  # fmt: skip
    """Cells a lookup may fill: not enqueued by this operator, nothing recorded, and (after an
    operator restart) nothing waiting or claimed on their queue, so no measurement of this run
    is ever mixed with a reused one."""
    return [c for c in matrix if c.id not in runtime.enqueued and recorded[c.id] == 0 and idle(c)]


def _ignored(uri: str) -> Event:
    log.warning("cache object ignored", object=uri)
    return Event(
        "Warning",
        "CacheObjectIgnored",
        f"ignored {uri}: not a whole, valid cache entry for its cell (corrupt or truncated); "
        "the cell is measured",
    )


def _unavailable(runtime: SuiteRuntime, message: str) -> list[Event]:
    """One Warning per run: the cache is skipped, the run goes on measuring."""
    log.warning("suite cache unavailable", detail=redact_text(message))
    if runtime.cache_warned:
        return []
    runtime.cache_warned = True
    return [Event("Warning", "CacheUnavailable", redact_text(f"{message}; cells are measured"))]
