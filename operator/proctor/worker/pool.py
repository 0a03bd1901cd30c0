"""What ``proctor run`` shares for an EvalRun and a BenchmarkSuite: its exit codes, its options
and the pool of local worker processes, restarted when they crash (as Kubernetes restarts a
pod) within the failure budget."""

from __future__ import annotations

import shlex
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog

from proctor.redact import redact_url
from proctor.worker.common import EXIT_CONFIG

log = structlog.get_logger("proctor.run")

EXIT_USAGE = 2
"""The manifest, a name or the arguments are wrong (or a worker cannot load its task)."""
EXIT_INCOMPLETE = 3
"""Not everything was evaluated (or measured): no verdict."""
EXIT_INTERRUPTED = 130
"""SIGINT, SIGTERM or SIGHUP."""


@dataclass
class LocalOptions:
    """The options of ``proctor run`` (see ``proctor run --help``)."""

    manifest: Path
    workers: int | None = None
    queue_url: str | None = None
    storage_uri: str | None = None
    results_dir: Path = Path("proctor-results")
    run_id: str | None = None
    resume: bool = False
    json_output: bool = False
    refresh_seconds: float = 0.25

    def resume_command(self, run_id: str) -> str:
        """The command that continues this run where it stopped, for the interrupted summary:
        the same manifest, run id, results, queue and storage (their credentials masked)."""
        argv = ["proctor", "run", str(self.manifest), "--resume", "--run-id", run_id]
        if self.results_dir != LocalOptions.results_dir:
            argv += ["--results-dir", str(self.results_dir)]
        if self.queue_url:
            argv += ["--queue", redact_url(self.queue_url)]
        if self.storage_uri:
            argv += ["--storage", redact_url(self.storage_uri)]
        if self.workers is not None:
            argv += ["--workers", str(self.workers)]
        return shlex.join(argv)


class Process(Protocol):
    """The part of ``subprocess.Popen``'s interface the pool uses."""

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...


Spawn = Callable[[int, int], Process]
"""Starts the worker of a slot: ``spawn(slot, crashes so far)``."""

Holders = Callable[[], "frozenset[str] | None"]
"""The worker ids the queue names as holding a lease now (None when it cannot tell)."""


class WorkerPool:
    """``count`` worker processes, restarted when they crash while work remains."""

    def __init__(self, count: int, spawn: Spawn, what: str = "worker", logger: Any = None) -> None:
        self.count = count
        self.spawn = spawn
        self.what = what
        self.log = logger or log
        self.procs: dict[int, Process] = {}
        self.crashes = 0
        self.setup_failed = False

    def _start(self, slot: int) -> None:
        self.procs[slot] = self.spawn(slot, self.crashes)

    def start(self) -> None:
        for slot in range(self.count):
            self._start(slot)

    def failed(self, budget: int) -> bool:
        """A worker could not load its task, or more crashed than ``budget`` allows."""
        return self.setup_failed or self.crashes > budget

    def start_missing(self, budget: int) -> None:
        """Start the slots whose worker has exited (there is work again), within ``budget``."""
        if self.failed(budget):
            return
        for slot in range(self.count):
            if slot not in self.procs:
                self._start(slot)

    def poll(self, budget: int, work_left: bool = True, holders: Holders | None = None) -> bool:
        """Reap exits, restart crashed workers; False when none is running any more."""
        for slot, proc in list(self.procs.items()):
            code = proc.poll()
            if code is None:
                self.watch(slot, proc)
                continue
            del self.procs[slot]
            self.reaped(proc)
            code = self.exit_status(slot, code, holders)
            if code == EXIT_CONFIG:
                self.setup_failed = True
            elif code != 0:
                self.crashes += 1
                self.log.warning(
                    f"{self.what} crashed", slot=slot, exit_code=code, crashes=self.crashes
                )
                if work_left and self.crashes <= budget:
                    self._start(slot)
        return bool(self.procs)

    def terminate(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> None:
        """Wait for every worker, together at most ``timeout`` seconds; kill the rest."""
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            self.reaped(proc)

    def watch(self, slot: int, proc: Process) -> None:
        """Called for each running worker on every poll (a subclass may kill a silent one)."""

    def reaped(self, proc: Process) -> None:
        """Called once a worker has exited (a subclass may clean up after it)."""

    def exit_status(self, slot: int, code: int, holders: Holders | None) -> int:
        """How the pool reads a worker's exit status (a subclass may call an exit a crash)."""
        return code
