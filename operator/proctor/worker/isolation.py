"""Evaluating cases with each side in a forked child, to learn which side kills a process.

A redelivered entry means a worker holding it died. Its cases are evaluated again with each
side (baseline, candidate; the only one of a plain run) in a child process forked from the
worker, which streams one JSON line per case back over a pipe. A child that dies marks its
side of the case it was on as errored (``crashed``, with how it died); one that outlives
``caseTimeout`` plus :func:`hang_grace` on a case (the task swallowed the interruption) is
killed and that side is errored (``timeout``). A new child takes the side on from the next case.
The worker itself runs no implementation on this path, so it records every case exactly once
and a crash costs one worker, not one per retry.

A child touches no queue and records nothing; it reads its cases' dataset rows and a case's
``save_state``/``load_state`` go to the run's storage as in the worker (a state is stored when
``save_state`` returns), but never over a connection of the worker's: the clients it
inherited connect afresh there (:class:`proctor.aws.ProcessClient`). Nor does it update the
worker's metrics, whose locks another thread may have held at the fork: it sends each
checkpoint's size and duration back over the pipe, and the worker counts them.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import NoReturn

from proctor.sdk import LoadedTask, Record, get_state_store, set_state_store
from proctor.sdk.deadline import timeout_enabled
from proctor.sdk.records import ErrorType, case_record, side_record
from proctor.storage import TaskStateStore

CAN_FORK = hasattr(os, "fork")
"""Isolation needs ``os.fork``; without it a crashing case is dead-lettered after its retries."""

_CHILD_FAILED = 70


def hang_grace(case_timeout: float) -> float:
    """How long past its timeout a case may run before its process is deemed hung: enough for
    a task to notice the interruption and clean up, short enough not to stall a run."""
    return min(30.0, max(1.0, case_timeout))


def how_it_died(status: int) -> str:
    """``exit code 9`` or ``signal SIGSEGV`` from a ``waitpid`` status."""
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"signal {signal.Signals(-code).name}"
    except ValueError:
        return f"signal {-code}"


class _Ended(Exception):  # noqa: N818 - internal control flow
    def __init__(self, error: str, error_type: ErrorType | None) -> None:
        super().__init__(error)
        self.error = error
        self.error_type = error_type


class _SideChild:
    """A forked child evaluating ``work``: side ``role`` of the cases ``[start, end)``, one
    JSON line per case."""

    def __init__(
        self,
        task: LoadedTask,
        work: tuple[int, int, int],
        case_timeout: float,
        on_checkpoint: Callable[[int, float], None] | None = None,
    ) -> None:
        read, write = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(read)
            os.close(write)
            raise
        if pid == 0:  # pragma: no cover - the child leaves through os._exit
            os.close(read)
            _child(task, work, case_timeout, write)
        os.close(write)
        self.pid = pid
        self._fd = read
        self._buf = bytearray()
        self._status: int | None = None  # the child's wait status once it has ended
        self.last = time.monotonic()
        self.on_checkpoint = on_checkpoint

    def next(self, limit: float | None, stop: threading.Event) -> Record:
        """The next side record; raises :class:`_Ended` when the child ends without it.

        The child is judged only on an empty pipe: while the parent waited on the other side,
        this child may have answered (in the pipe, not yet read) or died (a process it forked
        holding the pipe's write end open, so no end of file comes). ``limit`` counts from
        when its last record was read, which is never before it began the case it is on, so
        a child is never timed out early.
        """
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                message: Record = json.loads(line)
                if "checkpoint" in message:  # not an answer: the case's clock runs on
                    if self.on_checkpoint is not None:
                        size, seconds = message["checkpoint"]
                        self.on_checkpoint(int(size), float(seconds))
                    continue
                self.last = time.monotonic()
                return message
            if self._status is not None and not self._read(0.0):
                self.close()
                raise _Ended(how_it_died(self._status), "crashed")
            if stop.is_set():
                self.close()
                raise _Ended("stopped", None)
            if self._read(0.1):
                continue
            if self._exited():
                continue  # what it wrote before it ended is read first
            if limit is not None and time.monotonic() - self.last > limit:
                self.close()
                raise _Ended(f"did not stop within {limit:g}s", "timeout")

    def _read(self, wait: float) -> bool:
        """Read what the pipe holds, waiting up to ``wait`` seconds for it; False if nothing
        came. At end of file the child has ended: waits for it."""
        ready, _, _ = select.select([self._fd], [], [], wait)
        if not ready:
            return False
        chunk = os.read(self._fd, 1 << 16)
        if chunk:
            self._buf += chunk
        elif self._status is None:
            _, self._status = os.waitpid(self.pid, 0)
            self.pid = 0
        return bool(chunk)

    def _exited(self) -> bool:
        """Whether the child has ended (reaped now, so it is never signalled after)."""
        if self._status is not None:
            return True
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid == 0:
            return False
        self._status, self.pid = status, 0
        return True

    def close(self) -> None:
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.pid = 0
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _Lines:
    """The child's end of the pipe: one JSON line per message, whole though a thread of the
    task's writes one too (a ``save_state`` off the evaluating thread)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._lock = threading.Lock()  # made in the child: no thread of the worker holds it

    def send(self, message: Record) -> None:
        data = memoryview(json.dumps(message, separators=(",", ":")).encode() + b"\n")
        with self._lock:
            while data:
                data = data[os.write(self.fd, data) :]

    def checkpoint(self, size: int, seconds: float) -> None:
        """A checkpoint written (the worker's metrics count it). Shorter than ``PIPE_BUF``, so
        written whole or not at all when a case's timeout interrupts it."""
        self.send({"checkpoint": [size, round(seconds, 6)]})


def _child(
    task: LoadedTask, work: tuple[int, int, int], case_timeout: float, fd: int
) -> NoReturn:  # pragma: no cover - runs in the forked child
    role, start, end = work
    code = 0
    try:
        # The worker's handlers belong to the worker; the parent kills this child when it stops.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # Streams of its own: a lock another thread of the worker held at the fork (a log line
        # being written) is held for ever here, and the first print would hang the case.
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - the process's
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        out = _Lines(fd)
        store = get_state_store()
        if isinstance(store, TaskStateStore):
            # The same storage (its clients connect afresh here), counted by the worker.
            set_state_store(TaskStateStore(store.storage, out.checkpoint))
        for side in task.evaluate_side(start, end, role, case_timeout):
            try:
                out.send(side)
            except (TypeError, ValueError) as exc:
                why = f"the case's result cannot be recorded: {type(exc).__name__}: {exc}"
                bad = side_record([], why.encode("utf-8", "backslashreplace").decode())
                bad["errorType"] = "unencodable"
                out.send({"index": side["index"], **bad})
    except BaseException:
        traceback.print_exc()
        code = _CHILD_FAILED
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(code)


def isolated_records(
    task: LoadedTask, start: int, end: int, case_timeout: float, stop: threading.Event
) -> Iterator[Record]:
    """The record of each case in ``[start, end)``, in order, with every side in a forked child.

    Ends early (without the cases not done) when ``stop`` is set. Raises OSError when a child
    cannot be forked.
    """
    sides = _Sides(task, end, case_timeout, stop)
    try:
        for index in range(start, end):
            t0 = time.perf_counter()
            got: list[Record] = []
            for role in range(task.sides):
                side = sides.next(role, index)
                if side is None:
                    return
                got.append(side)
            identity = task.identity(index)
            yield case_record(index, got, (time.perf_counter() - t0) * 1000.0, identity)
    finally:
        sides.close()


class _Sides:
    """One child per side, each forked when its side needs one."""

    def __init__(
        self, task: LoadedTask, end: int, case_timeout: float, stop: threading.Event
    ) -> None:
        self.task = task
        self.end = end
        self.case_timeout = case_timeout
        self.stop = stop
        self.limit = (
            case_timeout + hang_grace(case_timeout) if timeout_enabled(case_timeout) else None
        )
        self.children: list[_SideChild | None] = [None] * task.sides
        store = get_state_store()
        self.on_checkpoint = store.on_put if isinstance(store, TaskStateStore) else None

    def next(self, role: int, index: int) -> Record | None:
        """Side ``role`` of case ``index``; None when stopped."""
        child = self.children[role]
        if child is None:
            work = (role, index, self.end)
            child = _SideChild(self.task, work, self.case_timeout, self.on_checkpoint)
            self.children[role] = child
        try:
            side = child.next(self.limit, self.stop)
        except _Ended as ended:
            if ended.error_type is None:
                return None
            # The next case goes to a fresh child.
            self.children[role] = None
            return side_record([], _ended_text(ended, self.case_timeout), ended.error_type)
        if side.pop("index", None) != index:
            raise RuntimeError(f"an isolated side answered out of order at case {index}")
        return side

    def close(self) -> None:
        for child in self.children:
            if child is not None:
                child.close()


def _ended_text(ended: _Ended, case_timeout: float) -> str:
    if ended.error_type == "timeout":
        return (
            f"case timed out after {case_timeout:g}s and {ended.error}: the implementation "
            "ignored the interruption, so its process was killed"
        )
    return f"the implementation killed its worker process ({ended.error})"
