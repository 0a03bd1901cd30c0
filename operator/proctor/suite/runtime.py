"""What a suite keeps between passes (in memo): rebuilt from storage and status after a
restart."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from proctor.api.v1alpha1.benchmarksuite import BenchmarkSuiteStatus
from proctor.bench.reuse import CellCache
from proctor.bench.store import SuiteStore
from proctor.bench.summary import SuiteSummary
from proctor.cluster.losses import EXPECTATION_SECONDS, LossLedger
from proctor.connection import ConnectionCache
from proctor.queue import WorkQueue


@dataclass
class SuiteRuntime:
    """Per-suite state kept between passes (in memo); rebuilt from storage after a restart."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    run_id: str | None = None
    store: SuiteStore | None = None
    queues: dict[str, WorkQueue] = field(default_factory=dict)
    owned: set[str] = field(default_factory=set)
    connection: ConnectionCache = field(default_factory=ConnectionCache)
    # Pods created but not in the pod index yet: cell -> (uid, monotonic time, pod name).
    expected: dict[str, tuple[str, float, str]] = field(default_factory=dict)
    enqueued: set[str] = field(default_factory=set)
    records: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    ledger: LossLedger = field(default_factory=LossLedger)
    baseline: dict[str, list[dict[str, Any]]] | None = None
    baseline_uri: str | None = None
    summarized: tuple[int, ...] | None = None
    summary: SuiteSummary | None = None
    cache: CellCache | None = None  # spec.cache's cell cache, opened with the store
    cached: set[str] = field(default_factory=set)  # cells of this run written to the cache
    cache_warned: bool = False  # CacheUnavailable posted for this run

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
        self.cache = None
        self.cached = set()
        self.cache_warned = False
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


@dataclass
class SuitePassResult:
    phase: str
    run_id: str | None
    created: int
    deleted: int
    new_disruptions: int
    status: BenchmarkSuiteStatus  # as this pass wrote it (the operator's metrics read it)
