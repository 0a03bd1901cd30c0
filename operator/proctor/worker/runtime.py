"""The worker runtime: claim a range, evaluate its cases, record the results, ack.

One loop per process (``proctor worker``, or each process of ``proctor run``):

1. claim entries (index ranges) under a lease; a heartbeat thread renews held leases;
2. split each entry into batches whose size adapts toward ``batch.targetDuration``;
3. evaluate a batch with the task (an exception or timeout in a case is an errored record,
   never a crash), write its results as one object keyed by the range (created once), and
   ack the entry when all its batches are recorded;
4. leave when the queue is empty and nothing is in flight, or the run was stopped.

A redelivered entry (its last worker died) is first compared with the results already
written, so finished batches are skipped, and its cases are evaluated with each side in a forked
child (:mod:`proctor.worker.isolation`): a side whose child dies on a case is recorded as errored
(``crashed``), one whose child hangs past the timeout as ``timeout``, and every case is
recorded once. Redelivered entries go before fresh ones, so a crash elsewhere cannot charge
them again. Without ``os.fork``, for a task that is not fork-safe (``Task.fork_safe``, CUDA
initialised), or with ``spec.retries`` below 2, the cases of a redelivered
entry run one per batch in the worker and, past ``spec.retries`` deliveries, the first
unrecorded one is dead-lettered (not evaluated, with its reason).

A case that overruns ``caseTimeout`` plus a grace in the worker (the task swallowed the
interruption) makes the worker stop renewing its leases and exit with :data:`EXIT_HUNG`; the
entry is redelivered and the hung side recorded as ``timeout`` in isolation.

On SIGTERM the worker stops claiming, lets the running case finish (or abandons it after
``shutdown_grace`` seconds), writes the results of the cases finished in the current batch,
hands the unfinished remainder back in one atomic step and exits 0.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import structlog

from proctor.api.quantity import parse_duration
from proctor.api.v1alpha1.evalrun import EvalRunSpec
from proctor.queue import Lease, QueueError, Range, WorkQueue, open_queue, subtract
from proctor.redact import redact_url
from proctor.sdk import TaskLoadError, clear_stop, set_state_store
from proctor.sdk import request_stop as request_task_stop
from proctor.sdk.batch import BatchRecords
from proctor.sdk.deadline import timeout_enabled
from proctor.storage import RunStorage, StorageError, TaskStateStore, UnencodableError, columns
from proctor.worker.common import (
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_STORAGE,
    ConfigError,
    heartbeat_interval,
    renew_leases,
    run_main,
)
from proctor.worker.config import (
    BatchSizer,
    WorkerConfig,
    load_run_task,
    open_run_storage,
    parse_spec,
)
from proctor.worker.gpu import GpuMonitor
from proctor.worker.isolation import CAN_FORK, hang_grace, isolated_records
from proctor.worker.metrics import WorkerMetrics

log = structlog.get_logger("proctor.worker")

__all__ = [
    "EXIT_CONFIG",
    "EXIT_HUNG",
    "EXIT_OK",
    "EXIT_STORAGE",
    "Abandoned",
    "BatchSizer",
    "ConfigError",
    "Worker",
    "WorkerConfig",
    "WorkerStats",
    "main",
    "open_run_storage",
    "parse_spec",
]

EXIT_HUNG = 4
"""A case ignored its timeout; the process exits so it can be replaced (see the module doc)."""

Loader = Callable[[EvalRunSpec], Any]
"""Builds the object that evaluates batches (``proctor.sdk.load_task`` by default)."""


class Abandoned(BaseException):
    """Raised in the main thread when a case outlives the shutdown grace after SIGTERM."""


@dataclass
class WorkerStats:
    """What one worker did, for logs, tests and ``proctor run``."""

    cases: int = 0
    batches: int = 0
    entries: int = 0
    skipped_cases: int = 0
    dead_lettered: int = 0
    handed_back: int = 0
    leases_lost: int = 0
    exit_reason: str = ""
    statuses: Tally[str] = field(default_factory=Tally)


class Worker:
    """One worker process's loop. ``run()`` returns the exit code."""

    def __init__(
        self,
        config: WorkerConfig,
        *,
        queue: WorkQueue | None = None,
        storage: RunStorage | None = None,
        loader: Loader | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.config = config
        self.spec = config.spec
        self.lease = config.lease_seconds or self.spec.lease_seconds()
        self.queue = queue or open_queue(
            config.queue_url, config.run_id, lease_seconds=self.lease, attempt=config.attempt
        )
        self.storage = storage or open_run_storage(config)
        self.metrics = metrics or WorkerMetrics()
        self.sizer = BatchSizer(self.spec.batch)
        self.case_timeout = parse_duration(self.spec.case_timeout)
        self.retries = self.spec.retries
        self.stats = WorkerStats()
        self.log = log.bind(run=config.run_name or config.run_id, worker=config.worker_id)
        self._loader = loader
        self._task: Any = None
        self._stop = threading.Event()
        self._done = threading.Event()
        self._stop_reason = ""
        self._evaluating = False
        self._abandoned_at: int | None = None  # the case in flight when it was abandoned
        self._held: dict[str, Lease] = {}
        self._lost: set[str] = set()
        self._held_lock = threading.Lock()
        self._gpu: GpuMonitor | None = None
        self._batch = BatchRecords(-1)  # the batch being evaluated: the hang watch reads it
        self.stop_time: float | None = None
        self.flushed_time: float | None = None

    # -- shutdown -------------------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        """Stop claiming; the running batch ends at the next case (see the module doc)."""
        if self._stop.is_set():
            return
        self.stop_time = time.monotonic()
        self._stop_reason = reason
        self._stop.set()
        request_task_stop()
        if threading.current_thread() is threading.main_thread():
            timer = threading.Timer(self.config.shutdown_grace, self._abandon)
            timer.daemon = True
            timer.start()

    def _abandon(self) -> None:
        if self._evaluating:
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)

    def _on_abandon(self, signum: int, frame: FrameType | None) -> None:
        if self._evaluating:
            self._abandoned_at = self._batch.end
            raise Abandoned

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self.log.info("sigterm: stopping", in_batch=self._evaluating)
        self.request_stop("SIGTERM")

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_sigterm)
        signal.signal(signal.SIGINT, self._on_sigterm)
        signal.signal(signal.SIGUSR1, self._on_abandon)

    # -- heartbeat ------------------------------------------------------------------------

    def _heartbeat(self) -> None:
        self.metrics.beat(progressing=True)  # the task is loaded: proctor run watches from here
        while not self._done.wait(heartbeat_interval(self.lease)):
            with self._held_lock:
                # A hung case's leases lapse, so the entry is redelivered (module doc).
                overdue = self._overdue()
                held = [] if overdue else list(self._held.values())
            lost = renew_leases(self.queue, self.config.worker_id, held, self._renewal_failed)
            with self._held_lock:
                self._lost |= lost
            self.metrics.beat(progressing=not overdue)
            if self._gpu is not None:
                self._sample_gpus(self._gpu)

    def _renewal_failed(self, lease: Lease, exc: Exception) -> None:
        self.metrics.errors.labels("renew").inc()
        self.log.warning("lease renewal failed", range=str(lease.range), error=str(exc))

    def _sample_gpus(self, gpus: GpuMonitor) -> None:
        for s in gpus.sample():
            gpu = str(s.index)
            self.metrics.gpu_utilization.labels(gpu).set(s.utilization)
            self.metrics.gpu_memory_used.labels(gpu).set(s.memory_used)
            self.metrics.gpu_memory_total.labels(gpu).set(s.memory_total)

    def _overdue(self) -> bool:
        """Whether the case being evaluated here ran past its timeouts and the grace."""
        if not self._evaluating or not timeout_enabled(self.case_timeout):
            return False
        sides: int = self._task.sides
        limit = sides * self.case_timeout + hang_grace(self.case_timeout)
        return time.perf_counter() - self._batch.since > limit

    def _watch_cases(self) -> None:
        """Exit when a case ignores its timeout: only a new process gets the worker back."""
        while not self._done.wait(0.2):
            if self._overdue():
                self.log.error(
                    "a case ignored its timeout; exiting so that it is evaluated in isolation",
                    index=self._batch.end,
                    case_timeout=self.case_timeout,
                    exit_code=EXIT_HUNG,
                )
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(EXIT_HUNG)

    def _lease_lost(self, lease: Lease) -> bool:
        with self._held_lock:
            return lease.token in self._lost

    # -- main loop ------------------------------------------------------------------------

    def run(self) -> int:
        if self.config.metrics_port:
            self.metrics.serve(self.config.metrics_port)
        self._gpu = GpuMonitor()
        clear_stop()
        set_state_store(TaskStateStore(self.storage, self.metrics.observe_checkpoint))
        try:
            self._task = (self._loader or self._load)(self.spec)
        except TaskLoadError as exc:
            self.log.error("task cannot be loaded", error=str(exc))
            return EXIT_CONFIG
        except StorageError as exc:  # the dataset (DatasetError) or its manifest
            self.log.error("the dataset cannot be read", error=str(exc))
            return EXIT_STORAGE
        columns.warm_up()  # before the first claim: see its doc
        beat = threading.Thread(target=self._heartbeat, name="proctor-heartbeat", daemon=True)
        beat.start()
        watch = threading.Thread(target=self._watch_cases, name="proctor-hang-watch", daemon=True)
        watch.start()
        self.log.info(
            "worker started", queue=redact_url(self.config.queue_url), storage=self.storage.uri
        )
        code = EXIT_OK
        try:
            self._loop()
        except (StorageError, QueueError) as exc:
            # Nothing was acked that is not recorded: the lease expires and another worker
            # takes the entry over.
            self.log.error("storage or queue failed; exiting", error=str(exc))
            self.stats.exit_reason = f"error: {exc}"
            code = EXIT_STORAGE
        finally:
            self._done.set()
            self.flushed_time = time.monotonic()
            self._task.close()
            self._gpu.close()
            set_state_store(None)
        self.log.info(
            "worker finished",
            reason=self.stats.exit_reason,
            cases=self.stats.cases,
            batches=self.stats.batches,
            dead_lettered=self.stats.dead_lettered,
        )
        return code

    def _load(self, spec: EvalRunSpec) -> Any:
        return load_run_task(spec, self.config, self.storage, self.metrics)

    def _loop(self) -> None:
        entry_size = self.spec.batch.initial_size
        while not self._stop.is_set():
            want = max(1, min(10, round(self.sizer.size / max(1, entry_size))))
            leases = self.queue.claim(want, self.config.worker_id)
            if not leases:
                depth = self.queue.depth()
                if depth.stopped:
                    self.stats.exit_reason = f"run stopped: {depth.stopped}"
                    return
                if depth.empty:
                    self.stats.exit_reason = "no work left"
                    return
                self._stop.wait(self.config.poll_interval)
                continue
            # Redelivered entries first: evaluated in isolation, no crash of a fresh entry
            # held alongside can charge them again.
            leases.sort(key=lambda x: -x.delivery)
            with self._held_lock:
                self._held.update({x.token: x for x in leases})
            for n, lease in enumerate(leases):
                entry_size = len(lease.range)
                if self._stop.is_set():
                    # Untouched: back to the queue as it was, attempts unchanged.
                    for rest in leases[n:]:
                        self.queue.handback(
                            rest, self.config.worker_id, [rest.range], prior=rest.prior
                        )
                    break
                self._process(lease)
                with self._held_lock:
                    self._held.pop(lease.token, None)
                    self._lost.discard(lease.token)
            with self._held_lock:
                self._held.clear()
        self.stats.exit_reason = self._stop_reason

    def _process(self, lease: Lease) -> None:
        me = self.config.worker_id
        self.stats.entries += 1
        suspicious = lease.delivery > 1
        gaps = [lease.range]
        if suspicious:
            done = [r for r in self.storage.result_ranges(lease.range) if r.end <= lease.range.end]
            gaps = subtract(lease.range, done)
            self.stats.skipped_cases += len(lease.range) - sum(len(g) for g in gaps)
        if not gaps:
            self.queue.ack(lease, me)
            return
        if suspicious and self.retries >= 2 and CAN_FORK and self._task.fork_safe:
            self._process_isolated(lease, gaps)
            return
        if lease.delivery > self.retries:
            self._dead_letter(lease, gaps, "crashed or stalled the worker")
            return
        for gi, gap in enumerate(gaps):
            start = gap.start
            while start < gap.end:
                size = 1 if suspicious else self.sizer.size
                batch = Range(start, min(gap.end, start + size))
                recorded = self._run_batch(batch)
                start += recorded
                if recorded < len(batch) or self._stop.is_set():
                    rest = ([Range(start, gap.end)] if start < gap.end else []) + gaps[gi + 1 :]
                    if rest:
                        self.queue.handback(lease, me, rest, prior=lease.delivery - 1)
                        self.stats.handed_back += sum(len(r) for r in rest)
                        self.log.info("handed back", remainder=[str(r) for r in rest])
                    else:
                        self.queue.ack(lease, me)
                    return
                if self._lease_lost(lease):
                    # Another worker holds the entry now and skips what was recorded here.
                    self._note_lease_lost(lease)
                    return
        if not self.queue.ack(lease, me):
            self._note_lease_lost(lease)

    def _process_isolated(self, lease: Lease, gaps: list[Range]) -> None:
        """Evaluate a redelivered entry's gaps with each side in a forked child (module doc)."""
        me = self.config.worker_id
        for gi, gap in enumerate(gaps):
            start, forked = self._record_isolated(lease, gap)
            if start is None:
                return
            if start < gap.end:
                rest = [Range(start, gap.end), *gaps[gi + 1 :]]
                if not forked and lease.delivery > self.retries:
                    self._dead_letter(lease, rest, "could not be evaluated in isolation")
                else:
                    # A failed fork counts as an attempt; a stop does not.
                    prior = lease.delivery - (1 if forked else 0)
                    self.queue.handback(lease, me, rest, prior=prior)
                    self.stats.handed_back += sum(len(r) for r in rest)
                return
        if not self.queue.ack(lease, me):
            self._note_lease_lost(lease)

    def _record_isolated(self, lease: Lease, gap: Range) -> tuple[int | None, bool]:
        """Evaluate ``gap`` in isolation, recording as it goes: (the first index not recorded,
        or None when the lease was lost (another worker holds the entry now); whether every
        fork succeeded)."""
        start = gap.start
        sides = self._task.sides
        chunk = BatchRecords(start, sides)
        t0 = time.perf_counter()
        try:
            for record in isolated_records(
                self._task, gap.start, gap.end, self.case_timeout, self._stop
            ):
                chunk.add(record)
                if len(chunk) < self.sizer.size and time.perf_counter() - t0 < 5.0:
                    continue
                start += self._record(chunk, 0.0)
                chunk, t0 = BatchRecords(start, sides), time.perf_counter()
                if self._lease_lost(lease):
                    self._note_lease_lost(lease)
                    return None, True
        except OSError as exc:
            self.log.error("cannot fork to isolate cases", index=start, error=str(exc))
            forked = False
        else:
            forked = True
        if len(chunk):
            start += self._record(chunk, 0.0)
        return start, forked

    def _note_lease_lost(self, lease: Lease) -> None:
        self.stats.leases_lost += 1
        self.metrics.leases_lost.inc()
        self.log.warning("lease lost; leaving the entry", range=str(lease.range))

    def _dead_letter(self, lease: Lease, gaps: list[Range], what: str) -> None:
        # After a crash, batches of one case: the first unrecorded case is the one at fault.
        # With a single attempt allowed there was no such run, so the whole rest goes.
        if self.retries >= 2:
            first = gaps[0]
            dead = Range(first.start, first.start + 1)
            rest = ([Range(dead.end, first.end)] if dead.end < first.end else []) + gaps[1:]
        else:
            dead = Range(gaps[0].start, gaps[-1].end)
            rest = []
        reason = (
            f"cases {dead} {what} on each of {lease.delivery - 1} attempts "
            f"(retries: {self.retries})"
        )
        for part in [g for g in gaps if g.start < dead.end and g.end > dead.start]:
            r = Range(max(part.start, dead.start), min(part.end, dead.end))
            self.storage.write_dead_letter(r, lease.delivery - 1, reason)
            self.stats.dead_lettered += len(r)
            self.metrics.dead_lettered.inc(len(r))
        self.queue.dead_letter(lease, self.config.worker_id, reason, dead=dead, remainder=rest)
        self.log.error("dead-lettered", cases=str(dead), deliveries=lease.delivery - 1)

    def _run_batch(self, batch: Range) -> int:
        """Evaluate and record ``batch``; returns how many cases (a prefix) were recorded."""
        out = self._batch = BatchRecords(batch.start, self._task.sides)
        t0 = time.perf_counter()
        self._abandoned_at, self._evaluating = None, True
        try:
            with contextlib.suppress(Abandoned):
                self._task.evaluate_into(batch.start, batch.end, self.case_timeout, out)
        finally:
            self._evaluating = False
        if self._abandoned_at is not None:
            # Cut short, not judged, though the task caught Abandoned and returned: handed back.
            del out.seconds[self._abandoned_at - out.start :]
            self.log.warning("case abandoned at shutdown", index=out.end)
        if not len(out):
            return 0
        full = len(out) == len(batch)
        return self._record(out, time.perf_counter() - t0 if full else 0.0)

    def _record(self, records: BatchRecords, elapsed: float) -> int:
        """Write ``records`` as one object; ``elapsed`` > 0 feeds the batch sizer."""
        t0 = time.perf_counter()
        done = Range(records.start, records.end)
        try:
            written = self.storage.write_results(done, records)
        except UnencodableError:
            # A result that cannot be written errors its case, never the worker (in a loop).
            fixed = [self.storage.recordable(r) for r in records.records()]
            records = BatchRecords.of(done.start, records.sides, fixed)
            written = self.storage.write_results(done, records)
        self.metrics.result_bytes.inc(written.bytes)
        statuses = records.statuses()
        for status, n in statuses.items():
            self.metrics.cases.labels(status).inc(n)
        self.metrics.case_duration.observe_all(records.seconds)
        self.metrics.batch_duration.observe(elapsed + time.perf_counter() - t0)
        self.metrics.batches.labels("created" if written.created else "duplicate").inc()
        self.stats.cases += len(records)
        self.stats.batches += 1
        self.stats.statuses.update(statuses)
        if elapsed > 0:
            self.sizer.observe(len(records), elapsed)
            self.metrics.batch_size.set(self.sizer.size)
        return len(records)


def main(config: WorkerConfig | None = None) -> int:
    """``proctor worker``: configure from the environment, run until no work remains."""
    return run_main(lambda: Worker(config or WorkerConfig.from_env()), log)
