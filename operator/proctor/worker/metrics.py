"""The worker's Prometheus metrics (all named ``proctor_worker_*``).

Each worker owns a registry, so a test or a process running several workers never mixes them;
``serve`` exposes it over HTTP for Prometheus to scrape.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from proctor.buildinfo import register_build_info

_le = cast(Callable[[float], str], floatToGoString)  # how Histogram writes its ``le`` labels
_CASE_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300)
_BATCH_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)


class BatchHistogram(Collector):
    """A histogram observed a batch of values at a time: one locked step per batch, where
    ``prometheus_client``'s :class:`Histogram` takes two per value (a tenth of the engine's
    time per case on a cheap task, issue 21). It is exposed exactly as that Histogram is:
    ``_bucket`` per ``le``, ``_count``, ``_sum`` and ``_created`` (unless
    ``PROMETHEUS_DISABLE_CREATED_SERIES`` is set, as there)."""

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = [float(b) for b in buckets]
        if self._bounds != sorted(self._bounds) or not self._bounds:
            raise ValueError(f"{name}: buckets must be given in increasing order")
        if self._bounds[-1] != math.inf:
            self._bounds.append(math.inf)
        self._cumulative = [0] * len(self._bounds)
        self._sum = 0.0
        self._created = time.time()
        self._lock = threading.Lock()
        registry.register(self)

    def observe(self, value: float) -> None:
        """One value."""
        self.observe_all([value])

    def observe_all(self, values: Iterable[float]) -> None:
        """Each of ``values``, as many observe() calls would."""
        ordered = sorted(values)
        below = [bisect.bisect_right(ordered, bound) for bound in self._bounds[:-1]]
        total = sum(ordered)
        with self._lock:
            for i, n in enumerate(below):
                self._cumulative[i] += n
            self._cumulative[-1] += len(ordered)
            self._sum += total

    def _family(self, with_samples: bool) -> HistogramMetricFamily:
        if not with_samples:
            return HistogramMetricFamily(self._name, self._documentation)
        with self._lock:
            counts, total = list(self._cumulative), self._sum
        buckets = [(_le(b), n) for b, n in zip(self._bounds, counts, strict=True)]
        family = HistogramMetricFamily(
            self._name, self._documentation, buckets=buckets, sum_value=total
        )
        if _created_series():
            family.add_sample(f"{self._name}_created", {}, self._created)
        return family

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield self._family(with_samples=False)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        yield self._family(with_samples=True)


def _created_series() -> bool:
    """``prometheus_client``'s own switch for the ``_created`` samples."""
    value = os.environ.get("PROMETHEUS_DISABLE_CREATED_SERIES", "False")
    return value.lower() not in ("true", "1", "t")


class WorkerMetrics:
    """Counters, histograms and gauges a worker updates as it goes."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.build_info = register_build_info(r)
        self.cases = Counter(
            "proctor_worker_cases", "Cases evaluated, by outcome.", ["status"], registry=r
        )
        self.case_duration = BatchHistogram(
            "proctor_worker_case_duration_seconds", "Time to evaluate one case.", _CASE_BUCKETS, r
        )
        self.batch_duration = Histogram(
            "proctor_worker_batch_duration_seconds",
            "Time to evaluate and record one batch.",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.batch_size = Gauge(
            "proctor_worker_batch_size", "Current adaptive batch size (cases).", registry=r
        )
        self.batches = Counter(
            "proctor_worker_batches", "Batches recorded, by outcome.", ["outcome"], registry=r
        )
        self.errors = Counter(
            "proctor_worker_errors", "Engine errors by kind (not failing cases).", ["kind"],
            registry=r,
        )  # fmt: skip
        self.checkpoint_duration = Histogram(
            "proctor_worker_checkpoint_duration_seconds",
            "Time to write a task-level checkpoint.",
            buckets=_CASE_BUCKETS,
            registry=r,
        )
        self.checkpoint_bytes = Counter(
            "proctor_worker_checkpoint_bytes", "Bytes of task-level checkpoints written.",
            registry=r,
        )  # fmt: skip
        self.result_bytes = Counter(
            "proctor_worker_result_bytes", "Compressed bytes of result objects written.",
            registry=r,
        )  # fmt: skip
        self.leases_lost = Counter(
            "proctor_worker_leases_lost", "Leases that expired while working.", registry=r
        )
        self.dead_lettered = Counter(
            "proctor_worker_dead_lettered_cases", "Cases this worker dead-lettered.", registry=r
        )
        self._add_liveness(r)
        self._add_cache(r)

    def _add_cache(self, r: CollectorRegistry) -> None:
        """The result cache (docs/cache.md): hits and misses per side, its troubles."""
        self.cache_results = Counter(
            "proctor_worker_cache_results",
            "Sides of cases looked up in the result cache, by side and result (hit, miss).",
            ["side", "result"],
            registry=r,
        )
        self.cache_corrupt = Counter(
            "proctor_worker_cache_corrupt_objects",
            "Cache objects ignored because they could not be read back whole.",
            registry=r,
        )
        self.cache_read_only = Gauge(
            "proctor_worker_cache_read_only",
            "1 when the cache refused a write and is only read by this worker.",
            registry=r,
        )

    def observe_cache(self, side: str, hits: int, misses: int) -> None:
        """One batch's lookups of one side."""
        if hits:
            self.cache_results.labels(side, "hit").inc(hits)
        if misses:
            self.cache_results.labels(side, "miss").inc(misses)

    def cache_event(self, what: str, side: str) -> None:
        """A corrupt cache object ignored, or the cache turned read-only."""
        if what == "corrupt":
            self.cache_corrupt.inc()
        elif what == "readOnly":
            self.cache_read_only.set(1)

    def _add_liveness(self, r: CollectorRegistry) -> None:
        """The heartbeat and the GPU samples it takes."""
        self.heartbeat = Gauge(
            "proctor_worker_last_heartbeat_timestamp_seconds",
            "When the worker last renewed its leases (Unix time).",
            registry=r,
        )
        self.gpu_utilization = Gauge(
            "proctor_worker_gpu_utilization_ratio", "GPU utilization, 0-1.", ["gpu"], registry=r
        )
        self.gpu_memory_used = Gauge(
            "proctor_worker_gpu_memory_used_bytes", "GPU memory in use.", ["gpu"], registry=r
        )
        self.gpu_memory_total = Gauge(
            "proctor_worker_gpu_memory_total_bytes", "GPU memory in all.", ["gpu"], registry=r
        )

    def observe_checkpoint(self, size: int, seconds: float) -> None:
        self.checkpoint_bytes.inc(size)
        self.checkpoint_duration.observe(seconds)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Expose the metrics at http://addr:port/metrics."""
        start_http_server(port, addr=addr, registry=self.registry)

    def beat(self, progressing: bool) -> None:
        """A heartbeat: the gauge, and while no case is overdue the liveness file ``proctor run``
        watches (``$PROCTOR_LIVENESS_FILE``), so a stopped or stuck worker goes quiet there."""
        self.heartbeat.set_to_current_time()
        path = os.environ.get("PROCTOR_LIVENESS_FILE")
        if path and progressing:
            # Touching, not writing: best effort, a full disk must not stop the heartbeat.
            with contextlib.suppress(OSError), open(path, "a"):
                os.utime(path, (time.time(), time.time()))
