"""The worker processes of ``proctor run``: forked copies of the parent that die with it.

Each runs what ``proctor worker`` runs (:func:`proctor.worker.runtime.main`). On Linux a worker asks
the kernel for SIGKILL when its parent dies (``PR_SET_PDEATHSIG``), so no worker outlives a
``proctor run`` that was killed, even by SIGKILL; the run's attempt fences the results of any
that does (another machine's, say; see :mod:`proctor.storage.attempts`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import IO

import structlog
from rich.console import Console
from rich.markup import escape

from proctor.redact import redact_text
from proctor.worker.runtime import WorkerConfig

log = structlog.get_logger("proctor.run")

PR_SET_PDEATHSIG = 1


class _ForkedWorker:
    """A worker process forked from this one, with the part of ``Popen``'s interface used here.

    The child takes ``env`` as its environment, writes to ``log_fd``, runs
    :func:`proctor.worker.runtime.main` (what ``proctor worker`` runs) and exits with its code.
    """

    def __init__(self, env: dict[str, str], log_fd: int) -> None:
        self.returncode: int | None = None
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child leaves through os._exit
            code = 70
            try:
                code = _worker_child(env, log_fd, parent)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        self.pid = pid

    def poll(self) -> int | None:
        if self.returncode is None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0.0)
            time.sleep(0.01)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _die_with_parent(parent: int) -> None:  # pragma: no cover - in the child
    """Linux: the kernel kills this worker when ``proctor run`` dies, even by SIGKILL."""
    if sys.platform == "linux":
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _worker_child(env: dict[str, str], log_fd: int, parent: int) -> int:  # pragma: no cover
    _die_with_parent(parent)
    # The parent's SIGTERM/SIGHUP handlers interrupt *it*; the worker installs its own.
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    # Fresh stream objects: another thread (the progress bar) may have held the old ones' locks.
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - lives as long as the process
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    os.environ.clear()
    os.environ.update(env)
    from proctor.worker.runtime import main

    return main()


class LocalWorkers:
    """N worker processes, restarted when they crash while work remains."""

    def __init__(self, config: WorkerConfig, count: int, log_dir: Path) -> None:
        self.config = config
        self.count = count
        self.log_dir = log_dir
        self.procs: dict[int, subprocess.Popen[bytes] | _ForkedWorker] = {}
        self.logs: dict[int, IO[bytes]] = {}
        self.crashes = 0
        self.setup_failed = False
        self.ids: dict[int, str] = {}

    def _start(self, slot: int) -> None:
        env = dict(os.environ)
        env.update(self.config.env())
        env["PROCTOR_WORKER_ID"] = self.ids[slot] = f"local-{slot}-{self.crashes}"
        env.setdefault("PROCTOR_LOG_FORMAT", "json")
        if slot not in self.logs:
            self.logs[slot] = (self.log_dir / f"worker-{slot}.log").open("ab")
        if hasattr(os, "fork"):
            # A forked copy of this process runs what `proctor worker` runs: a process of its
            # own as before, without a fresh interpreter re-importing everything (~0.5 s each).
            self.procs[slot] = _ForkedWorker(env, self.logs[slot].fileno())
            return
        self.procs[slot] = subprocess.Popen(
            [sys.executable, "-m", "proctor", "worker"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.logs[slot],
            stderr=subprocess.STDOUT,
        )

    def start(self) -> None:
        for slot in range(self.count):
            self._start(slot)

    def failed(self, budget: int) -> bool:
        """A worker could not load the task, or more crashed than ``budget`` allows."""
        return self.setup_failed or self.crashes > budget

    def start_missing(self, budget: int) -> None:
        """Start the slots whose worker has exited (there is work again), within ``budget``."""
        if self.failed(budget):
            return
        for slot in range(self.count):
            if slot not in self.procs:
                self._start(slot)

    def poll(
        self,
        work_left: bool,
        budget: int,
        holders: Callable[[], frozenset[str] | None] | None = None,
    ) -> bool:
        """Reap exits, restart crashed workers; False when none is running any more.

        A worker ends with status 0 only once it holds no entry, so one that exits 0 while
        ``holders()`` (the queue's lease holders) still names it died in a case: a crash.
        """
        for slot, proc in list(self.procs.items()):
            code = proc.poll()
            if code is None:
                continue
            del self.procs[slot]
            if code == 0 and holders is not None and self.ids.get(slot) in (holders() or ()):
                code = -1
                log.warning("worker exited with status 0 holding an entry", slot=slot)
            if code == 2:
                self.setup_failed = True
            elif code != 0:
                self.crashes += 1
                log.warning("worker crashed", slot=slot, exit_code=code, crashes=self.crashes)
                if work_left and self.crashes <= budget:
                    self._start(slot)
        return bool(self.procs)

    def load_error(self) -> str:
        """The one-line error of a run whose task a worker could not load, with the reason
        from the first worker log that gives one."""
        see = f"; see {self.log_dir}/worker-*.log"
        for path in sorted(self.log_dir.glob("worker-*.log")):
            for line in path.read_text(errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict) and entry.get("event") == "task cannot be loaded":
                    why = redact_text(str(entry.get("error")))
                    return f"a worker could not load the task: {why}{see}"
        return f"a worker could not load the task{see}"

    def print_load_error(self) -> None:
        """Print :meth:`load_error` to stderr, one line."""
        Console(stderr=True).print(f"[red]error:[/red] {escape(self.load_error())}", soft_wrap=True)

    def terminate(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        for f in self.logs.values():
            f.close()
