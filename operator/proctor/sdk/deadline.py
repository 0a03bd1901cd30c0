"""Per-case timeouts for Python tasks, enforced without killing the worker.

In the main thread a case is bounded by an ``ITIMER_REAL`` whose SIGALRM handler raises
:class:`CaseTimeout` in the case; this also interrupts blocking system calls such as
``time.sleep`` or a socket read. In any other thread (signals are delivered to the main thread
only) one watchdog thread per loaded task, not per case, waits for the current case's deadline
and raises :class:`CaseTimeout` in the evaluating thread with ``PyThreadState_SetAsyncExc``.

Limits, for both: the exception is raised when the interpreter next runs Python bytecode, so a
long call into C that neither returns nor checks for signals (one huge numpy operation, a
blocking C library) is noticed only when it returns; the case is then recorded as timed out all
the same. The thread watchdog cannot interrupt a blocking system call at all until it returns.
A task that catches BaseException can swallow the exception; the case is still recorded as
timed out. Arming costs no system call in the main thread (the timer is set again only when it
fires, see :class:`SignalGuard`) and two uncontended lock operations in another thread.
"""

from __future__ import annotations

import ctypes
import math
import signal
import threading
import time
from types import FrameType
from typing import Protocol


class CaseTimeout(BaseException):
    """A case ran past its deadline. A BaseException so ``except Exception`` in a task cannot
    swallow it."""


class Guard(Protocol):
    """Bounds one case at a time: ``arm`` when it starts, ``disarm`` when it ends."""

    def arm(self) -> None:
        """Start the clock for a case."""

    def disarm(self) -> bool:
        """Stop the clock; True if the case ran out of time. Safe to call twice."""

    def close(self) -> None:
        """Release the timer."""


class NoGuard:
    """No timeout."""

    def arm(self) -> None:
        """Nothing to start."""

    def disarm(self) -> bool:
        """Never timed out."""
        return False

    def close(self) -> None:
        """Nothing to release."""


class SignalGuard:
    """An ITIMER_REAL for the cases of a batch; only usable from the main thread.

    The timer is not set and cancelled for every case (two system calls a case, a tenth of the
    engine's own time per case on a cheap task, issue 21): ``arm`` sets it only when none is
    pending, and when it fires for a case that has already ended, the handler sets it again for
    the remaining time of the case running now, or lets it lapse between cases. So each case
    still times out at its own deadline, never early, and the timer fires at most once per
    timeout while cases keep finishing in time. :meth:`close` cancels it at the end of the
    batch, so no SIGALRM reaches the worker's own code between batches.
    """

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._active = False
        self._fired = False
        self._pending = False  # an ITIMER_REAL is set
        self._started = 0.0
        self._previous = signal.signal(signal.SIGALRM, self._on_alarm)

    def _set(self, seconds: float) -> None:
        self._pending = True
        signal.setitimer(signal.ITIMER_REAL, seconds)

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        self._pending = False
        if not self._active or self._fired:
            return  # between cases: the next case sets the timer again
        remaining = self._started + self._timeout - time.monotonic()
        if remaining > _EARLY:
            self._set(remaining)  # set for a case that has ended: wait for this one's deadline
            return
        self._fired = True
        raise CaseTimeout

    def arm(self) -> None:
        """Start the clock for a case."""
        self._fired = False
        self._started = time.monotonic()
        self._active = True
        if not self._pending:
            self._set(self._timeout)

    def disarm(self) -> bool:
        """Stop the clock; True if the case ran out of time."""
        self._active = False
        return self._fired

    def close(self) -> None:
        """Cancel the timer and put the previous SIGALRM handler back."""
        self._active = False
        self._pending = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self._previous)


_EARLY = 0.001
"""A case whose deadline is this close when the timer fires has timed out (the timer and the
monotonic clock may disagree by a hair)."""


def _raise_in_thread(thread_id: int, exc: type[BaseException] | None) -> None:
    # None clears an exception set earlier and not yet raised.
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), None if exc is None else ctypes.py_object(exc)
    )


class ThreadGuard:
    """One watchdog thread that raises CaseTimeout in ``thread_id`` when a case overruns."""

    def __init__(self, timeout: float, thread_id: int) -> None:
        self.timeout = timeout
        self.thread_id = thread_id
        self._cond = threading.Condition(threading.Lock())
        self._deadline: float | None = None
        self._fired = False
        self._closed = False
        self._idle = False
        self._thread = threading.Thread(
            target=self._watch, name="proctor-case-watchdog", daemon=True
        )
        self._thread.start()

    def _watch(self) -> None:
        with self._cond:
            while not self._closed:
                if self._deadline is None:
                    self._idle = True
                    self._cond.wait()
                    self._idle = False
                    continue
                remaining = self._deadline - time.monotonic()
                if remaining > 0:
                    # Wakes at the deadline of the case seen now; if that case ended and
                    # another began, the loop just waits for the new deadline.
                    self._cond.wait(remaining)
                    continue
                self._fired = True
                self._deadline = None
                _raise_in_thread(self.thread_id, CaseTimeout)

    def arm(self) -> None:
        """Start the clock for a case."""
        with self._cond:
            self._fired = False
            self._deadline = time.monotonic() + self.timeout
            if self._idle:
                self._cond.notify()

    def disarm(self) -> bool:
        """Stop the clock; True if the case ran out of time."""
        with self._cond:
            self._deadline = None
            fired = self._fired
            if fired:
                _raise_in_thread(self.thread_id, None)
            return fired

    def close(self) -> None:
        """Stop the watchdog thread."""
        with self._cond:
            self._closed = True
            self._deadline = None
            self._cond.notify()
        self._thread.join(timeout=5.0)


def timeout_enabled(timeout: float) -> bool:
    """Whether ``timeout`` bounds anything: positive and finite."""
    return timeout > 0 and math.isfinite(timeout)


def signal_guard_usable() -> bool:
    """SIGALRM timers work only in the main thread of a POSIX process."""
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
