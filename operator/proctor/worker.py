"""The worker runtime: claim a range, evaluate its cases, record the results, ack.

One loop per process (``proctor worker``, or each process of ``proctor run``):

1. claim entries (index ranges) under a lease; a heartbeat thread renews held leases;
2. split each entry into batches whose size adapts toward ``batch.targetDuration``;
3. evaluate a batch with the task (an exception or timeout in a case is an errored record,
   never a crash), write its results as one object keyed by the range (created once), and
   ack the entry when all its batches are recorded;
4. leave when the queue is empty and nothing is in flight, or the run was stopped.

A redelivered entry (its last worker died) is first compared with the results already
written, so finished batches are skipped, and its cases run one per batch, so the next crash
pins the case at fault: when an entry has been delivered more than ``spec.retries`` times, the
first unrecorded case is run once alone in a forked child; if that kills or hangs the child it
is dead-lettered and the rest goes back to the queue afresh, otherwise (the entry was only held
by a worker another case killed) the entry is evaluated as usual.

On SIGTERM the worker stops claiming, lets the running case finish (or abandons it after
``shutdown_grace`` seconds), writes the results of the cases finished in the current batch,
hands the unfinished remainder back in one atomic step and exits 0.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import structlog
import yaml

from proctor.api.v1alpha1.evalrun import BatchSpec, EvalRun, EvalRunSpec
from proctor.gpu import GpuMonitor
from proctor.metrics import WorkerMetrics
from proctor.quantity import parse_duration
from proctor.queue import Lease, QueueError, Range, WorkQueue, open_queue, subtract
from proctor.redact import redact_url
from proctor.storage import RunStorage, StorageError, TaskStateStore, open_storage

log = structlog.get_logger("proctor.worker")

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_STORAGE = 3

Loader = Callable[[EvalRunSpec], Any]
"""Builds the object that evaluates batches (``proctor.sdk.load_task`` by default)."""


class Abandoned(BaseException):
    """Raised in the main thread when a case outlives the shutdown grace after SIGTERM."""


class ConfigError(ValueError):
    """The worker's configuration is missing or wrong; the message says what to set."""


@dataclass
class WorkerConfig:
    """Everything a worker needs; :meth:`from_env` reads it from ``PROCTOR_*`` variables."""

    run_id: str
    spec: EvalRunSpec
    queue_url: str
    storage_uri: str
    run_name: str = ""
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    storage_endpoint: str | None = None
    storage_region: str | None = None
    metrics_port: int | None = None
    lease_seconds: float | None = None
    shutdown_grace: float = 1.0
    poll_interval: float = 0.5
    attempt: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkerConfig:
        """Read the configuration the operator (or ``proctor run``) sets on a worker.

        Required: ``PROCTOR_SPEC`` (the EvalRun spec, or the whole EvalRun, as JSON) or
        ``PROCTOR_SPEC_FILE`` (a JSON or YAML file of either), ``PROCTOR_QUEUE_URL`` and
        ``PROCTOR_STORAGE_URI``; ``PROCTOR_RUN_ID`` (the run's uid) or ``PROCTOR_RUN``
        (``namespace/name``). Optional: ``PROCTOR_WORKER_ID`` (default ``POD_NAME``, else
        host-pid), ``PROCTOR_STORAGE_ENDPOINT``, ``PROCTOR_STORAGE_REGION``,
        ``PROCTOR_METRICS_PORT``, ``PROCTOR_LEASE_SECONDS``, ``PROCTOR_SHUTDOWN_GRACE``,
        ``PROCTOR_ATTEMPT`` (the run attempt whose queue and results are this worker's).
        """
        e = dict(os.environ if env is None else env)

        def need(name: str) -> str:
            value = e.get(name, "").strip()
            if not value:
                raise ConfigError(f"{name} is not set; the worker needs it (see docs/engine.md)")
            return value

        if e.get("PROCTOR_SPEC"):
            spec = parse_spec(json.loads(e["PROCTOR_SPEC"]))
        elif e.get("PROCTOR_SPEC_FILE"):
            spec = parse_spec(yaml.safe_load(Path(e["PROCTOR_SPEC_FILE"]).read_text()))
        else:
            raise ConfigError("set PROCTOR_SPEC (JSON) or PROCTOR_SPEC_FILE to the EvalRun spec")
        run_name = e.get("PROCTOR_RUN", "")
        run_id = e.get("PROCTOR_RUN_ID") or run_name.replace("/", "-")
        if not run_id:
            raise ConfigError("set PROCTOR_RUN_ID (the run's uid) or PROCTOR_RUN (ns/name)")
        port = e.get("PROCTOR_METRICS_PORT", "").strip()
        lease = e.get("PROCTOR_LEASE_SECONDS", "").strip()
        return cls(
            run_id=run_id,
            run_name=run_name,
            spec=spec,
            queue_url=need("PROCTOR_QUEUE_URL"),
            storage_uri=need("PROCTOR_STORAGE_URI"),
            worker_id=e.get("PROCTOR_WORKER_ID")
            or e.get("POD_NAME")
            or f"{socket.gethostname()}-{os.getpid()}",
            storage_endpoint=e.get("PROCTOR_STORAGE_ENDPOINT") or None,
            storage_region=e.get("PROCTOR_STORAGE_REGION") or None,
            metrics_port=int(port) if port and port != "0" else None,
            lease_seconds=float(lease) if lease else None,
            shutdown_grace=float(e.get("PROCTOR_SHUTDOWN_GRACE", "1.0")),
            attempt=e.get("PROCTOR_ATTEMPT", "").strip(),
        )

    def env(self) -> dict[str, str]:
        """The inverse of :meth:`from_env`: variables that configure a worker like this one."""
        out = {
            "PROCTOR_RUN_ID": self.run_id,
            "PROCTOR_SPEC": json.dumps(self.spec.to_wire()),
            "PROCTOR_QUEUE_URL": self.queue_url,
            "PROCTOR_STORAGE_URI": self.storage_uri,
            "PROCTOR_WORKER_ID": self.worker_id,
            "PROCTOR_SHUTDOWN_GRACE": str(self.shutdown_grace),
        }
        if self.run_name:
            out["PROCTOR_RUN"] = self.run_name
        if self.storage_endpoint:
            out["PROCTOR_STORAGE_ENDPOINT"] = self.storage_endpoint
        if self.storage_region:
            out["PROCTOR_STORAGE_REGION"] = self.storage_region
        if self.metrics_port:
            out["PROCTOR_METRICS_PORT"] = str(self.metrics_port)
        if self.lease_seconds:
            out["PROCTOR_LEASE_SECONDS"] = str(self.lease_seconds)
        if self.attempt:
            out["PROCTOR_ATTEMPT"] = self.attempt
        return out


def parse_spec(data: Mapping[str, Any]) -> EvalRunSpec:
    """An EvalRunSpec from the spec itself or a whole EvalRun object."""
    if "spec" in data and "kind" in data:
        return EvalRun.model_validate(data).spec
    return EvalRunSpec.model_validate(data)


def lease_seconds(spec: EvalRunSpec) -> float:
    return parse_duration(spec.queue.lease) if spec.queue else 60.0


def open_run_storage(config: WorkerConfig) -> RunStorage:
    compression = config.spec.storage.compression if config.spec.storage else None
    return open_storage(
        config.storage_uri,
        config.run_id,
        compression=compression.algorithm if compression else "zstd",
        level=compression.level if compression else 3,
        endpoint=config.storage_endpoint,
        region=config.storage_region,
        attempt=config.attempt,
    )


class BatchSizer:
    """Batch size toward a target duration: cases per batch = target / seconds per case,
    from a moving average, within [min, max] and at most doubling or halving per step."""

    def __init__(self, batch: BatchSpec) -> None:
        self.size = batch.initial_size
        self.min = batch.min_size
        self.max = batch.max_size
        self.target = parse_duration(batch.target_duration)
        self._per_case: float | None = None

    def observe(self, cases: int, seconds: float) -> None:
        if cases <= 0:
            return
        per_case = max(seconds / cases, 1e-9)
        self._per_case = (
            per_case if self._per_case is None else 0.7 * self._per_case + 0.3 * per_case
        )
        wanted = int(self.target / self._per_case)
        self.size = max(self.min, min(self.max, max(self.size // 2, min(wanted, self.size * 2))))


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
        self.lease = config.lease_seconds or lease_seconds(self.spec)
        self.queue = queue or open_queue(
            config.queue_url, config.run_id, lease_seconds=self.lease, attempt=config.attempt
        )
        self.storage = storage or open_run_storage(config)
        self.metrics = metrics or WorkerMetrics()
        self.sizer = BatchSizer(self.spec.batch or BatchSpec())
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
        self._held: dict[str, Lease] = {}
        self._lost: set[str] = set()
        self._held_lock = threading.Lock()
        self._gpu: GpuMonitor | None = None
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
        from proctor.sdk import request_stop

        request_stop()
        if threading.current_thread() is threading.main_thread():
            timer = threading.Timer(self.config.shutdown_grace, self._abandon)
            timer.daemon = True
            timer.start()

    def _abandon(self) -> None:
        if self._evaluating:
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)

    def _on_abandon(self, signum: int, frame: FrameType | None) -> None:
        if self._evaluating:
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
        interval = max(0.05, min(self.lease / 3.0, 10.0))
        while not self._done.wait(interval):
            with self._held_lock:
                held = list(self._held.values())
            for lease in held:
                try:
                    ok = self.queue.renew(lease, self.config.worker_id)
                except Exception as exc:
                    self.metrics.errors.labels("renew").inc()
                    self.log.warning("lease renewal failed", range=str(lease.range), error=str(exc))
                    continue
                if not ok:
                    with self._held_lock:
                        self._lost.add(lease.token)
            self.metrics.heartbeat.set_to_current_time()
            if self._gpu is not None:
                for s in self._gpu.sample():
                    gpu = str(s.index)
                    self.metrics.gpu_utilization.labels(gpu).set(s.utilization)
                    self.metrics.gpu_memory_used.labels(gpu).set(s.memory_used)
                    self.metrics.gpu_memory_total.labels(gpu).set(s.memory_total)

    def _lease_lost(self, lease: Lease) -> bool:
        with self._held_lock:
            return lease.token in self._lost

    # -- main loop ------------------------------------------------------------------------

    def run(self) -> int:
        from proctor.sdk import TaskLoadError, clear_stop, load_task, set_state_store

        if self.config.metrics_port:
            self.metrics.serve(self.config.metrics_port)
        self._gpu = GpuMonitor()
        clear_stop()
        set_state_store(TaskStateStore(self.storage, self.metrics.observe_checkpoint))
        try:
            loader = self._loader or (
                lambda spec: load_task(spec.task, spec.compare, spec.cases.seed)
            )
            self._task = loader(self.spec)
        except TaskLoadError as exc:
            self.log.error("task cannot be loaded", error=str(exc))
            return EXIT_CONFIG
        beat = threading.Thread(target=self._heartbeat, name="proctor-heartbeat", daemon=True)
        beat.start()
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

    def _loop(self) -> None:
        entry_size = (self.spec.batch or BatchSpec()).initial_size
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
        if lease.delivery > self.retries and not (
            self.retries >= 2 and self._survives_alone(gaps[0].start)
        ):
            self._dead_letter(lease, gaps)
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
                    self.stats.leases_lost += 1
                    self.metrics.leases_lost.inc()
                    self.log.warning("lease lost; leaving the entry", range=str(lease.range))
                    return
        if not self.queue.ack(lease, me):
            self.stats.leases_lost += 1
            self.metrics.leases_lost.inc()

    def _survives_alone(self, index: int) -> bool:
        """Evaluate case ``index`` once in a forked child that touches neither queue nor store.

        A delivery count says how often a worker holding the entry died, not that this entry
        killed it: a worker claims several entries at once, and one poison case charges every
        entry it held. Before a case is dead-lettered it must kill (or hang) a process on its
        own; when it finishes, the entry was charged for another's crash and is evaluated
        normally. Costs one fork, and only on this rare path.
        """
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child; coverage cannot follow os._exit
            code = 1
            try:
                for _ in self._task.evaluate_batch(index, index + 1, self.case_timeout):
                    pass
                code = 0
            finally:
                os._exit(code)
        deadline = time.monotonic() + self.case_timeout + 10.0
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                survived = os.waitstatus_to_exitcode(status) == 0
                break
            if time.monotonic() > deadline or self._stop.is_set():
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                # Stopping proves nothing either way: leave it to the next delivery.
                survived = self._stop.is_set()
                break
            time.sleep(0.01)
        self.log.info("poison check", index=index, survived=survived)
        return survived

    def _dead_letter(self, lease: Lease, gaps: list[Range]) -> None:
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
            f"cases {dead} crashed or stalled the worker on each of {lease.delivery - 1} "
            f"attempts (retries: {self.retries})"
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
        records: list[dict[str, Any]] = []
        t0 = time.perf_counter()
        self._evaluating = True
        try:
            for record in self._task.evaluate_batch(batch.start, batch.end, self.case_timeout):
                records.append(record)
        except Abandoned:
            self.log.warning("case abandoned at shutdown", index=batch.start + len(records))
        finally:
            self._evaluating = False
        elapsed = time.perf_counter() - t0
        if not records:
            return 0
        done = Range(batch.start, batch.start + len(records))
        written = self.storage.write_results(done, records)
        self.metrics.result_bytes.inc(written.bytes)
        statuses = Tally(r["status"] for r in records)
        for status, n in statuses.items():
            self.metrics.cases.labels(status).inc(n)
        observe = self.metrics.case_duration.observe
        for r in records:
            observe(r["durationMs"] / 1000.0)
        self.metrics.batch_duration.observe(time.perf_counter() - t0)
        self.metrics.batches.labels("created" if written.created else "duplicate").inc()
        self.stats.cases += len(records)
        self.stats.batches += 1
        self.stats.statuses.update(statuses)
        if len(records) == len(batch):
            self.sizer.observe(len(records), elapsed)
            self.metrics.batch_size.set(self.sizer.size)
        return len(records)


def main(config: WorkerConfig | None = None) -> int:
    """``proctor worker``: configure from the environment, run until no work remains."""
    from proctor.logging import configure_logging

    configure_logging()
    try:
        config = config or WorkerConfig.from_env()
        worker = Worker(config)
    except (ConfigError, ValueError) as exc:
        log.error("worker misconfigured", error=str(exc))
        return EXIT_CONFIG
    worker.install_signal_handlers()
    return worker.run()
