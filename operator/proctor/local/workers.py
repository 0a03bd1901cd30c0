"""The worker processes of ``proctor run``: forked copies of the parent that die with it.

Each runs what ``proctor worker`` runs (:func:`proctor.worker.runtime.main`). On Linux a worker asks
the kernel for SIGKILL when its parent dies (``PR_SET_PDEATHSIG``), so no worker outlives a
``proctor run`` that was killed, even by SIGKILL; the run's attempt fences the results of any
that does (another machine's, say; see :mod:`proctor.local.attempts`).

Each worker leads a process group of its own; when it exits, and when the run ends, the group is
killed, so processes a task forked (and its isolation children) do not outlive it. A worker's
heartbeat thread touches a liveness file (:data:`LIVENESS_ENV`); one whose file goes quiet for
longer than the lease plus a grace (stopped by SIGSTOP, or stuck where no thread runs) is killed
with SIGKILL and counted as a crash: its entries are redelivered and evaluated in isolation.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import IO

import structlog

from proctor.api.quantity import parse_duration
from proctor.console import escape, make_console
from proctor.redact import redact_text
from proctor.worker.isolation import hang_grace
from proctor.worker.pool import Holders, Process, WorkerPool
from proctor.worker.runtime import WorkerConfig, main

log = structlog.get_logger("proctor.run")

PR_SET_PDEATHSIG = 1

LIVENESS_ENV = "PROCTOR_LIVENESS_FILE"
"""The file a worker's heartbeat thread touches while it runs (set by ``proctor run``)."""


def silence_limit(lease: float, case_timeout: float) -> float:
    """How long a worker's heartbeat may go quiet before the worker is deemed stopped: a lease
    (its entries are due to another worker by then) plus the grace a hung case gets."""
    return lease + hang_grace(case_timeout)


def kill_group(pid: int) -> None:
    """SIGKILL what is left of the process group worker ``pid`` led: what its task forked."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


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
        with contextlib.suppress(OSError):  # the child does it too: whichever runs first
            os.setpgid(pid, pid)
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
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _worker_child(env: dict[str, str], log_fd: int, parent: int) -> int:  # pragma: no cover
    _die_with_parent(parent)
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
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
    return main()


def _load_error_of(line: str) -> str | None:
    """The reason a worker log line gives for not loading the task, in JSON or console format
    (``PROCTOR_LOG_FORMAT`` may be either); None for any other line."""
    if "task cannot be loaded" not in line:
        return None
    try:
        entry = json.loads(line)
    except ValueError:
        # Console format: "... task cannot be loaded   error=... run=..."
        _, _, rest = line.partition("task cannot be loaded")
        return rest.strip() or None
    if isinstance(entry, dict) and entry.get("event") == "task cannot be loaded":
        return str(entry.get("error"))
    return None


class LocalWorkers(WorkerPool):
    """N ``proctor worker`` processes, each logging to ``worker-<slot>.log`` in ``log_dir``."""

    def __init__(self, config: WorkerConfig, count: int, log_dir: Path) -> None:
        super().__init__(count, self._spawn)
        self.config = config
        self.log_dir = log_dir
        self.logs: dict[int, IO[bytes]] = {}
        self.silence = silence_limit(
            config.lease_seconds or config.spec.lease_seconds(),
            parse_duration(config.spec.case_timeout),
        )
        self.ids: dict[int, str] = {}

    def _liveness(self, slot: int) -> Path:
        return self.log_dir / f"worker-{slot}.alive"

    def _spawn(self, slot: int, crashes: int) -> Process:
        env = dict(os.environ)
        env.update(self.config.env())
        env["PROCTOR_WORKER_ID"] = self.ids[slot] = f"local-{slot}-{crashes}"
        env.setdefault("PROCTOR_LOG_FORMAT", "json")
        env[LIVENESS_ENV] = str(self._liveness(slot))
        self._liveness(slot).unlink(missing_ok=True)  # watched from the new worker's first beat
        if slot not in self.logs:
            self.logs[slot] = (self.log_dir / f"worker-{slot}.log").open("ab")
        if hasattr(os, "fork"):
            # A forked copy of this process runs what `proctor worker` runs: a process of its
            # own as before, without a fresh interpreter re-importing everything (~0.5 s each).
            return _ForkedWorker(env, self.logs[slot].fileno())
        return subprocess.Popen(
            [sys.executable, "-m", "proctor", "worker"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.logs[slot],
            stderr=subprocess.STDOUT,
            process_group=0,
        )

    def watch(self, slot: int, proc: Process) -> None:
        """SIGKILL the worker if its heartbeat has been quiet too long (see the module doc)."""
        try:
            quiet = time.time() - self._liveness(slot).stat().st_mtime
        except FileNotFoundError:
            return  # still loading the task: no heartbeat yet
        if quiet > self.silence:
            log.warning(
                "worker stopped answering; killing it",
                slot=slot,
                pid=getattr(proc, "pid", None),
                silent_seconds=round(quiet, 1),
            )
            proc.kill()

    def reaped(self, proc: Process) -> None:
        """What the worker's task forked goes with it."""
        pid = getattr(proc, "pid", None)
        if pid is not None:
            kill_group(pid)

    def exit_status(self, slot: int, code: int, holders: Holders | None) -> int:
        """A worker ends with status 0 only once it holds no entry, so one that exits 0 while
        ``holders()`` (the queue's lease holders) still names it died in a case: a crash."""
        if code == 0 and holders is not None and self.ids.get(slot) in (holders() or ()):
            log.warning("worker exited with status 0 holding an entry", slot=slot)
            return -1
        return code

    def load_error(self) -> str:
        """The one-line error of a run whose task a worker could not load, with the reason
        from the first worker log that gives one."""
        see = f"; see {self.log_dir}/worker-*.log"
        for path in sorted(self.log_dir.glob("worker-*.log")):
            for line in path.read_text(errors="replace").splitlines():
                why = _load_error_of(line)
                if why is not None:
                    return f"a worker could not load the task: {redact_text(why)}{see}"
        return f"a worker could not load the task{see}"

    def print_load_error(self) -> None:
        """Print :meth:`load_error` to stderr, one line."""
        make_console(stderr=True).print(
            f"[red]error:[/red] {escape(self.load_error())}", soft_wrap=True
        )

    def close(self) -> None:
        for f in self.logs.values():
            f.close()
