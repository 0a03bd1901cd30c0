"""Proctor's runner: start the user's command, measure it, kill it cleanly on timeout or stop.

What is measured (see docs/benchmarks.md):

- wall time: ``time.perf_counter_ns`` (monotonic, nanosecond resolution) from just before the
  command's process is forked until ``wait4`` returns, so it includes fork and exec (``true``
  measures about 7 ms on a loaded 2-core machine; see docs/benchmarks.md);
- user and system CPU time and peak RSS from the ``rusage`` that ``os.wait4`` returns for the
  command's process. The kernel folds in the usage of every descendant the command waited for
  (a shell's pipeline, ``make``'s jobs); peak RSS is the largest single process among them, not
  a sum. Descendants the command left running are not counted and are killed at the end;
- exit status: ``0`` success, a positive code, or ``-N`` for death by signal ``N``.

Why a launcher: Linux carries the peak RSS of the process that calls ``exec`` into the new
program's ``ru_maxrss``, so a command forked straight from the worker (tens of MB, with boto3
and redis loaded) would never read below the worker's size. The command is therefore forked
by :data:`LAUNCHER`, a few lines run by a fresh ``python3 -I -S`` (about 7 MB), which times
the command itself and reports its ``rusage`` through a pipe. That floor is documented.

The launcher and the command run in a new session (their own process group), so a timeout or
a stop kills the whole tree with one ``killpg``: SIGTERM, then SIGKILL after a short grace.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO

KILL_GRACE_SECONDS = 2.0
"""After SIGTERM, how long the process group has before SIGKILL."""

STDERR_TAIL_BYTES = 2048
"""How much of a failed command's stderr a measurement keeps."""

EXIT_CANNOT_START = 127

LAUNCHER = """\
import os, sys, time
fd = int(sys.argv[1]); argv = sys.argv[2:]
os.set_inheritable(fd, False)  # the command must not hold the report pipe open
t0 = time.perf_counter_ns()
pid = os.fork()
if pid == 0:
    try:
        os.execvpe(argv[0], argv, os.environ)
    except OSError as exc:
        os.write(2, ("proctor: cannot start %r: %s\\n" % (argv[0], exc)).encode())
    os._exit(127)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter_ns() - t0
os.write(fd, ("%d %d %r %r %d" % (wall, status, ru.ru_utime, ru.ru_stime, ru.ru_maxrss)).encode())
"""
"""Forks and times the command; writes ``wall_ns status utime stime maxrss_kib`` to ``fd``."""


@dataclass(frozen=True)
class Measurement:
    """One run of a command. ``cancelled``: stopped from outside (SIGTERM to the worker); such
    a run is never recorded. ``error``: the command could not be started at all."""

    wall_seconds: float
    user_seconds: float
    system_seconds: float
    max_rss_bytes: int
    exit_code: int
    timed_out: bool
    cancelled: bool = False
    error: str | None = None
    stderr_tail: str = ""

    @property
    def ok(self) -> bool:
        """Exited 0 within the timeout and was not stopped."""
        return self.exit_code == 0 and not self.timed_out and not self.cancelled


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def run_measured(
    command: Sequence[str],
    env: Mapping[str, str],
    timeout_seconds: float,
    *,
    cancel: threading.Event | None = None,
    cwd: str | None = None,
) -> Measurement:
    """Run ``command`` (argv, no shell; looked up on ``env``'s PATH) with exactly ``env``.

    ``timeout_seconds``: the command's process group is killed after that long and the
    measurement says ``timed_out``. ``cancel``: when set (from a signal handler or another
    thread) the group is killed at once and the measurement says ``cancelled``. A command that
    cannot be started (not found, not executable) gives ``exit_code`` 127 and ``error``; this
    function does not raise for anything the command does.
    """
    if not command:
        raise ValueError("a benchmark command needs at least one word (argv[0])")
    if timeout_seconds <= 0:
        raise ValueError(f"timeout must be positive, got {timeout_seconds}")
    read_fd, write_fd = os.pipe()
    try:
        with tempfile.TemporaryFile() as errfile:
            t0 = time.perf_counter_ns()
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", LAUNCHER, str(write_fd), *command],
                env=dict(env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errfile,
                start_new_session=True,
                pass_fds=(write_fd,),
            )
            os.close(write_fd)
            write_fd = -1
            why = _wait_watched(proc, timeout_seconds, cancel)
            outer_wall = (time.perf_counter_ns() - t0) / 1e9
            report, tail = _read_report(read_fd, errfile)
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)
    return _measurement(report, tail, why, proc.returncode, outer_wall)


def _read_report(read_fd: int, errfile: IO[bytes]) -> tuple[list[str], str]:
    """The launcher's report (empty if it wrote none) and, unless the command exited 0, the
    tail of its stderr."""
    # The launcher has exited: its report, if it wrote one, is in the pipe already.
    os.set_blocking(read_fd, False)
    try:
        report = os.read(read_fd, 4096).decode().split()
    except BlockingIOError:
        report = []
    tail = ""
    if len(report) != 5 or int(report[1]) != 0:
        size = errfile.seek(0, os.SEEK_END)
        errfile.seek(max(0, size - STDERR_TAIL_BYTES))
        tail = errfile.read().decode(errors="replace")
    return report, tail


def _measurement(
    report: list[str], tail: str, why: str | None, returncode: int | None, outer_wall: float
) -> Measurement:
    timed_out = why == "timeout"
    cancelled = why == "cancel"
    if len(report) != 5:
        # The launcher was killed (timeout, stop) before it could report: only the outer
        # clock and the launcher's status are known.
        code = returncode if returncode is not None else -signal.SIGKILL
        return Measurement(outer_wall, 0.0, 0.0, 0, code, timed_out, cancelled, stderr_tail=tail)
    wall_ns, status, utime, stime, maxrss_kib = report
    code = os.waitstatus_to_exitcode(int(status))
    error = None
    if code == EXIT_CANNOT_START and tail.startswith("proctor: cannot start"):
        error = tail.strip()
    return Measurement(
        wall_seconds=int(wall_ns) / 1e9,
        user_seconds=float(utime),
        system_seconds=float(stime),
        # Linux reports ru_maxrss in KiB.
        max_rss_bytes=int(maxrss_kib) * 1024,
        exit_code=code,
        timed_out=timed_out,
        cancelled=cancelled,
        error=error,
        stderr_tail=tail,
    )


def _wait_watched(
    proc: subprocess.Popen[bytes], timeout_seconds: float, cancel: threading.Event | None
) -> str | None:
    """Wait for ``proc``; kill its group on timeout or cancel. Returns which one, if either."""
    pid = proc.pid
    finished = threading.Event()
    why: list[str] = []

    def watch() -> None:
        deadline = time.monotonic() + timeout_seconds
        while not finished.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                why.append("timeout")
                break
            if cancel is not None and cancel.is_set():
                why.append("cancel")
                break
            finished.wait(min(left, 0.05))
        else:
            return
        _killpg(pid, signal.SIGTERM)
        if not finished.wait(KILL_GRACE_SECONDS):
            _killpg(pid, signal.SIGKILL)

    watcher = threading.Thread(target=watch, name="proctor-measure-watch", daemon=True)
    watcher.start()
    # Blocks in the kernel; PEP 475 resumes the wait after a signal handler returns.
    proc.wait()
    finished.set()
    # Whatever the command left behind in its group goes with it.
    _killpg(pid, signal.SIGKILL)
    watcher.join()
    return why[0] if why else None
