"""The benchmark worker (``proctor bench-worker``): measure one cell's repetitions.

One process per benchmark pod (or local worker), for one cell:

1. if the cell's queue holds work, run the warmups (measured, never recorded);
2. claim one repetition ``[i, i + 1)`` at a time under a lease that a heartbeat thread renews,
   measure it with :func:`proctor.bench.measure.run_measured`, write its record (created once:
   a repetition is never recorded twice, whoever runs it), then ack;
3. exit 0 when the queue is drained (nothing waiting, nothing in flight) or stopped.

A command that fails, times out or cannot start is a *failed repetition*: recorded with
``ok: false``, never a crashed worker. A repetition whose workers were lost
:data:`MAX_ATTEMPTS` times (a command that kills its pod) is recorded as failed too, so a suite
always ends.

On SIGTERM (spot notice, eviction, scale-down) the worker kills the measured process tree,
hands the repetition back unrecorded with its attempt count unchanged (a disruption is not a
failure), and exits 0; another worker runs it again from the start.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import structlog

from proctor.api.v1alpha1.benchmarksuite import BenchmarkSuite, BenchmarkSuiteSpec
from proctor.bench.matrix import Cell, cell_queue_id, find_cell
from proctor.bench.measure import Measurement, run_measured
from proctor.bench.store import SuiteStore
from proctor.queue import Lease, QueueError, WorkQueue, open_queue
from proctor.storage import StorageError
from proctor.worker.common import (
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_STORAGE,
    ConfigError,
    Env,
    heartbeat_interval,
    host_pid,
    renew_leases,
    run_main,
)

__all__ = [
    "EXIT_CONFIG",
    "EXIT_OK",
    "EXIT_STORAGE",
    "MAX_ATTEMPTS",
    "BenchWorker",
    "BenchWorkerConfig",
    "ConfigError",
    "main",
    "open_suite_store",
    "parse_suite_spec",
]

log = structlog.get_logger("proctor.bench.worker")

MAX_ATTEMPTS = 3
"""Deliveries of one repetition (workers lost while running it) before it is recorded failed."""


def parse_suite_spec(data: Mapping[str, Any]) -> BenchmarkSuiteSpec:
    """A BenchmarkSuiteSpec from the spec itself or a whole BenchmarkSuite object."""
    if "spec" in data and "kind" in data:
        return BenchmarkSuite.model_validate(data).spec
    return BenchmarkSuiteSpec.model_validate(data)


@dataclass
class BenchWorkerConfig:
    """Everything a benchmark worker needs; :meth:`from_env` reads ``PROCTOR_*`` variables."""

    spec: BenchmarkSuiteSpec
    namespace: str
    suite: str
    run_id: str
    cell: str
    queue_url: str
    storage_uri: str
    worker_id: str = field(default_factory=host_pid)
    node_name: str | None = None
    storage_endpoint: str | None = None
    storage_region: str | None = None
    lease_seconds: float | None = None
    poll_interval: float = 0.5

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BenchWorkerConfig:
        """Read the configuration the operator (or ``proctor run``) sets on a benchmark pod.

        Required: ``PROCTOR_SUITE_SPEC`` (the BenchmarkSuite spec, or the whole object, as
        JSON), ``PROCTOR_SUITE_NAMESPACE``, ``PROCTOR_SUITE_NAME``, ``PROCTOR_SUITE_RUN_ID``,
        ``PROCTOR_CELL`` (``benchmark.variant``), ``PROCTOR_QUEUE_URL``,
        ``PROCTOR_STORAGE_URI``. Optional: ``PROCTOR_WORKER_ID`` (default ``POD_NAME``, else
        host-pid), ``PROCTOR_NODE_NAME``, ``PROCTOR_STORAGE_ENDPOINT``,
        ``PROCTOR_STORAGE_REGION``, ``PROCTOR_LEASE_SECONDS``. S3 credentials come from the
        usual ``AWS_*`` variables, as for ``proctor worker``.
        """
        e = Env(env, docs="docs/benchmarks.md")
        who = "the benchmark worker"
        raw = e.need("PROCTOR_SUITE_SPEC", who)
        try:
            spec = parse_suite_spec(json.loads(raw))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"PROCTOR_SUITE_SPEC is not JSON: {exc}") from exc
        cell = e.need("PROCTOR_CELL", who)
        try:
            find_cell(spec, cell)
        except ValueError as exc:
            raise ConfigError(f"PROCTOR_CELL: {exc}") from exc
        return cls(
            spec=spec,
            namespace=e.need("PROCTOR_SUITE_NAMESPACE", who),
            suite=e.need("PROCTOR_SUITE_NAME", who),
            run_id=e.need("PROCTOR_SUITE_RUN_ID", who),
            cell=cell,
            queue_url=e.need("PROCTOR_QUEUE_URL", who),
            storage_uri=e.need("PROCTOR_STORAGE_URI", who),
            worker_id=e.worker_id(),
            node_name=e.optional("PROCTOR_NODE_NAME"),
            storage_endpoint=e.optional("PROCTOR_STORAGE_ENDPOINT"),
            storage_region=e.optional("PROCTOR_STORAGE_REGION"),
            lease_seconds=e.seconds("PROCTOR_LEASE_SECONDS"),
        )

    def env(self) -> dict[str, str]:
        """The inverse of :meth:`from_env`: variables that configure a worker like this one."""
        out = {
            "PROCTOR_SUITE_SPEC": json.dumps(self.spec.to_wire()),
            "PROCTOR_SUITE_NAMESPACE": self.namespace,
            "PROCTOR_SUITE_NAME": self.suite,
            "PROCTOR_SUITE_RUN_ID": self.run_id,
            "PROCTOR_CELL": self.cell,
            "PROCTOR_QUEUE_URL": self.queue_url,
            "PROCTOR_STORAGE_URI": self.storage_uri,
            "PROCTOR_WORKER_ID": self.worker_id,
        }
        optional = {
            "PROCTOR_NODE_NAME": self.node_name,
            "PROCTOR_STORAGE_ENDPOINT": self.storage_endpoint,
            "PROCTOR_STORAGE_REGION": self.storage_region,
            "PROCTOR_LEASE_SECONDS": str(self.lease_seconds) if self.lease_seconds else None,
        }
        out.update({k: v for k, v in optional.items() if v})
        return out

    @property
    def queue_id(self) -> str:
        return cell_queue_id(self.namespace, self.suite, self.run_id, self.cell)


def open_suite_store(config: BenchWorkerConfig) -> SuiteStore:
    compression = config.spec.compression()
    return SuiteStore(
        config.storage_uri,
        config.namespace,
        config.suite,
        config.run_id,
        compression=compression.algorithm,
        level=compression.level,
        endpoint=config.storage_endpoint,
        region=config.storage_region,
    )


def command_env(cell: Cell, base: Mapping[str, str]) -> dict[str, str]:
    """The measured command's environment: the worker's own (``PROCTOR_*`` left out) plus the
    cell's literal variables (``valueFrom`` ones are already in the pod's environment)."""
    env = {k: v for k, v in base.items() if not k.startswith("PROCTOR_")}
    env.update(cell.literal_env())
    return env


def make_record(
    cell: Cell, repetition: int, m: Measurement, *, worker: str, node: str | None, started: str
) -> dict[str, Any]:
    """The stored record of one repetition (see :data:`proctor.bench.store.RECORD_FIELDS`)."""
    record: dict[str, Any] = {
        "benchmark": cell.benchmark,
        "variant": cell.variant,
        "repetition": repetition,
        "wall_seconds": m.wall_seconds,
        "user_seconds": m.user_seconds,
        "system_seconds": m.system_seconds,
        "max_rss_bytes": m.max_rss_bytes,
        "exit_code": m.exit_code,
        "timed_out": m.timed_out,
        "ok": m.ok,
        "worker": worker,
        "node": node,
        "started_at": started,
    }
    if not m.ok:
        record["error"] = m.error or (
            f"timed out after {cell.timeout_seconds:g}s"
            if m.timed_out
            else f"exited with {m.exit_code}: {m.stderr_tail.strip()[-500:]}"
        )
    return record


@dataclass
class BenchWorkerStats:
    """What one worker did, for logs and tests."""

    recorded: int = 0
    failed: int = 0
    duplicates: int = 0
    skipped: int = 0
    handed_back: int = 0
    warmups: int = 0
    exit_reason: str = ""


class BenchWorker:
    """One benchmark worker process's loop. ``run()`` returns the exit code."""

    def __init__(
        self,
        config: BenchWorkerConfig,
        *,
        queue: WorkQueue | None = None,
        store: SuiteStore | None = None,
        base_env: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.cell = find_cell(config.spec, config.cell)
        self.lease = config.lease_seconds or config.spec.lease_seconds()
        self.queue = queue or open_queue(
            config.queue_url, config.queue_id, lease_seconds=self.lease
        )
        self.store = store or open_suite_store(config)
        self.storage = self.store.cell_storage(self.cell.id)
        self.env = command_env(self.cell, os.environ if base_env is None else base_env)
        self.stats = BenchWorkerStats()
        self.log = log.bind(suite=config.suite, cell=self.cell.id, worker=config.worker_id)
        self._stop = threading.Event()
        self._done = threading.Event()
        self._held: Lease | None = None
        self._lost = False
        self._lock = threading.Lock()
        self._warmed = False

    # -- shutdown and heartbeat -----------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        """Stop: the measured command is killed, its repetition handed back unrecorded."""
        if not self._stop.is_set():
            self.stats.exit_reason = reason
            self._stop.set()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.request_stop(signal.Signals(signum).name)

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _heartbeat(self) -> None:
        while not self._done.wait(heartbeat_interval(self.lease)):
            with self._lock:
                held = [] if self._held is None else [self._held]
            if renew_leases(self.queue, self.config.worker_id, held, self._renewal_failed):
                with self._lock:
                    self._lost = True

    def _renewal_failed(self, lease: Lease, exc: Exception) -> None:
        self.log.warning("lease renewal failed", error=str(exc))

    # -- main loop ------------------------------------------------------------------------

    def run(self) -> int:
        beat = threading.Thread(target=self._heartbeat, name="proctor-heartbeat", daemon=True)
        beat.start()
        self.log.info("bench worker started", command=list(self.cell.command))
        try:
            self._loop()
        except (StorageError, QueueError) as exc:
            # Nothing acked that is not recorded: the lease expires, another worker takes over.
            self.log.error("storage or queue failed; exiting", error=str(exc))
            self.stats.exit_reason = f"error: {exc}"
            return EXIT_STORAGE
        finally:
            self._done.set()
        self.log.info(
            "bench worker finished",
            reason=self.stats.exit_reason,
            recorded=self.stats.recorded,
            failed=self.stats.failed,
            handed_back=self.stats.handed_back,
        )
        return EXIT_OK

    def _warm_up(self) -> None:
        """The cell's warmups, once per worker, before its first measured repetition."""
        self._warmed = True
        for n in range(self.cell.warmup):
            if self._stop.is_set():
                return
            m = run_measured(
                self.cell.command, self.env, self.cell.timeout_seconds, cancel=self._stop
            )
            self.stats.warmups += 1
            self.log.info("warmup", n=n, wall_seconds=round(m.wall_seconds, 6), ok=m.ok)

    def _loop(self) -> None:
        me = self.config.worker_id
        while not self._stop.is_set():
            leases = self.queue.claim(1, me)
            if not leases:
                depth = self.queue.depth()
                if depth.stopped:
                    self.stats.exit_reason = f"suite stopped: {depth.stopped}"
                    return
                if depth.empty:
                    self.stats.exit_reason = "no work left"
                    return
                self._stop.wait(self.config.poll_interval)
                continue
            for n, lease in enumerate(leases):
                if self._stop.is_set():
                    for rest in leases[n:]:
                        self.queue.handback(rest, me, [rest.range], prior=rest.prior)
                    break
                self._repetition(lease)

    def _repetition(self, lease: Lease) -> None:
        me = self.config.worker_id
        i = lease.range.start
        if any(r.start <= i < r.end for r in self.storage.result_ranges(lease.range)):
            # Recorded by a worker that died before its ack.
            self.stats.skipped += 1
            self.queue.ack(lease, me)
            return
        with self._lock:
            self._held, self._lost = lease, False
        try:
            started = datetime.now(UTC).isoformat(timespec="milliseconds")
            if lease.delivery > MAX_ATTEMPTS:
                m = Measurement(
                    0.0,
                    0.0,
                    0.0,
                    0,
                    -int(signal.SIGKILL),
                    False,
                    error=f"{lease.delivery - 1} workers were lost while running this repetition",
                )
            else:
                if not self._warmed:
                    # Holding the lease: the heartbeat keeps it while the warmups run.
                    self._warm_up()
                if self._stop.is_set():
                    self.queue.handback(lease, me, [lease.range], prior=lease.prior)
                    self.stats.handed_back += 1
                    return
                started = datetime.now(UTC).isoformat(timespec="milliseconds")
                m = run_measured(
                    self.cell.command, self.env, self.cell.timeout_seconds, cancel=self._stop
                )
            if m.cancelled:
                # Half-done: back to the queue unrecorded, attempts unchanged.
                self.queue.handback(lease, me, [lease.range], prior=lease.prior)
                self.stats.handed_back += 1
                self.log.info("repetition handed back", repetition=i)
                return
            record = make_record(
                self.cell, i, m, worker=me, node=self.config.node_name, started=started
            )
            created = self.store.write_record(self.cell.id, record)
            if created:
                self.stats.recorded += 1
                self.stats.failed += not m.ok
            else:
                self.stats.duplicates += 1
            self.log.info(
                "repetition",
                repetition=i,
                wall_seconds=round(m.wall_seconds, 6),
                ok=m.ok,
                created=created,
            )
            self.queue.ack(lease, me)
        finally:
            with self._lock:
                self._held = None


def main(config: BenchWorkerConfig | None = None) -> int:
    """``proctor bench-worker``: configure from the environment, measure until drained."""
    return run_main(
        lambda: BenchWorker(config or BenchWorkerConfig.from_env()), log, "bench worker"
    )
