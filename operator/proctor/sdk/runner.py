"""Loading a task and evaluating batches of cases: the worker's side of the SDK."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import select
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

from proctor.api.v1alpha1.evalrun import CompareSpec, TaskSpec
from proctor.sdk.deadline import (
    CaseTimeout,
    Guard,
    NoGuard,
    SignalGuard,
    ThreadGuard,
    signal_guard_usable,
    timeout_enabled,
)
from proctor.sdk.state import CaseInterrupted, set_current_case, stop_requested
from proctor.sdk.task import Task, TaskLoadError, case_rng, resolve_ref

Record = dict[str, Any]

_MAX_ERROR_CHARS = 1000


class LoadedTask(ABC):
    """A task ready to evaluate batches of cases in this process.

    Evaluate one batch at a time; the object is not safe to share between threads that evaluate
    concurrently.
    """

    @abstractmethod
    def evaluate_batch(self, start: int, end: int, case_timeout: float) -> Iterator[Record]:
        """One record per case index in ``[start, end)``, in order.

        Never raises for a task's errors: an exception or a timeout in a case becomes an
        ``errored`` record. The one exception to "one record per index": once the worker has
        called :func:`proctor.sdk.request_stop`, the iterator ends early (no record for the
        cases not done) so the worker can hand the rest back to the queue.
        """

    @abstractmethod
    def close(self) -> None:
        """Release processes, threads and the task's own resources."""

    def __enter__(self) -> LoadedTask:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def load_task(task: TaskSpec, compare: CompareSpec | None, seed: int) -> LoadedTask:
    """Import a Python task or prepare a command task, resolving the compared implementations.

    Raises :class:`TaskLoadError` when the entrypoint or an implementation cannot be loaded:
    that is a broken run, not a failing case.
    """
    if task.command is not None:
        roles: list[tuple[str | None, str | None]] = (
            [(None, None)]
            if compare is None
            else [("baseline", compare.baseline.ref), ("candidate", compare.candidate.ref)]
        )
        return CommandTask(task.command, seed, task.params or {}, roles)
    if task.entrypoint is None:
        raise TaskLoadError("the task needs an entrypoint or a command")
    instance = make_task(resolve_ref(task.entrypoint), task.params or {}, task.entrypoint)
    impls: list[Callable[..., Any]] | None = None
    if compare is not None:
        impls = [
            _implementation(instance, side.ref, side.params)
            for side in (compare.baseline, compare.candidate)
        ]
    return PythonTask(instance, seed, impls)


def make_task(obj: Any, params: Mapping[str, Any], name: str = "entrypoint") -> Task:
    """The Task ``obj`` is, or the one it makes when called with ``params``."""
    if isinstance(obj, Task):
        return obj
    if not callable(obj):
        raise TaskLoadError(f"{name} is neither a proctor.sdk.Task nor a factory of one")
    try:
        made = obj(dict(params))
    except Exception as exc:
        raise TaskLoadError(
            f"{name}({dict(params)!r}) failed: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(made, Task):
        raise TaskLoadError(
            f"{name} returned {type(made).__name__}, not a proctor.sdk.Task; subclass Task"
        )
    names = [r.name for r in made.relations]
    if len(set(names)) != len(names) or not all(names):
        raise TaskLoadError(f"{name}: relation names must be unique and non-empty, got {names}")
    return made


def _implementation(task: Task, ref: str, params: Mapping[str, Any] | None) -> Callable[..., Any]:
    fn = task.resolve(ref)
    if not callable(fn):
        raise TaskLoadError(f"implementation {ref!r} is not callable")
    return functools.partial(fn, **params) if params else fn


def describe_error(exc: BaseException) -> str:
    """``Type: message (at file:line in function)`` of the innermost frame, bounded."""
    text = f"{type(exc).__name__}: {exc}"
    tb = exc.__traceback__
    if tb is not None:
        while tb.tb_next is not None:
            tb = tb.tb_next
        code = tb.tb_frame.f_code
        text += f" (at {os.path.basename(code.co_filename)}:{tb.tb_lineno} in {code.co_name})"
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 3] + "..."


def _status(violations: list[str], error: str | None) -> str:
    if error is not None:
        return "errored"
    return "failed" if violations else "passed"


class PythonTask(LoadedTask):
    """An SDK task evaluated in this process."""

    def __init__(
        self, task: Task, seed: int, implementations: Sequence[Callable[..., Any]] | None
    ) -> None:
        self.task = task
        self.seed = seed
        self._compare = implementations is not None
        self._impls: tuple[Callable[..., Any], ...] = (
            tuple(implementations) if implementations is not None else (task.solve,)
        )
        # Bound once: the per-case path only calls.
        self._generate = task.generate
        self._run = task.run
        self._check = task.check
        self._equivalent = task.equivalent
        self._relations = tuple(task.relations)
        self._watchdog: ThreadGuard | None = None
        self._timeout_error = ""

    def evaluate_batch(self, start: int, end: int, case_timeout: float) -> Iterator[Record]:
        """See :meth:`LoadedTask.evaluate_batch`."""
        if start < 0 or end < start:
            raise ValueError(f"bad batch range [{start}, {end})")
        guard = self._guard(case_timeout)
        self._timeout_error = f"case timed out after {case_timeout:g}s"
        evaluate = self._evaluate_compare if self._compare else self._evaluate_single
        try:
            for index in range(start, end):
                if stop_requested():
                    return
                try:
                    record = evaluate(index, guard)
                except CaseInterrupted:
                    return
                yield record
        finally:
            set_current_case(None)
            if isinstance(guard, SignalGuard):
                guard.close()

    def _guard(self, timeout: float) -> Guard:
        if not timeout_enabled(timeout):
            return NoGuard()
        if signal_guard_usable():
            return SignalGuard(timeout)
        ident = threading.get_ident()
        wd = self._watchdog
        if wd is None or wd.thread_id != ident or wd.timeout != timeout:
            if wd is not None:
                wd.close()
            wd = self._watchdog = ThreadGuard(timeout, ident)
        return wd

    def _side(
        self, guard: Guard, impl: Callable[..., Any], index: int
    ) -> tuple[list[str], str | None]:
        """Generate case ``index``, run ``impl`` on it and its follow-ups: (violations, error)."""
        violations: list[str] = []
        error: str | None = None
        timed_out = False
        try:
            guard.arm()
            try:
                case = self._generate(self.seed, index)
                run = self._run
                output = run(impl, case)
                violations = self._check(case, output)
                if self._relations:
                    violations = list(violations)
                    for rel in self._relations:
                        follow_up = (
                            rel.transform(case, case_rng(self.seed, index, rel.name))
                            if rel.uses_rng
                            else rel.transform(case)
                        )
                        follow_out = run(impl, follow_up)
                        if rel.relate is None:
                            holds = self._equivalent(output, follow_out)
                        elif rel.sees_cases:
                            holds = rel.relate(case, follow_up, output, follow_out)
                        else:
                            holds = rel.relate(output, follow_out)
                        if not holds:
                            violations.append(f"relation:{rel.name}")
            finally:
                timed_out = guard.disarm()
        except CaseTimeout:
            guard.disarm()
            timed_out = True
        except (Exception, SystemExit) as exc:
            error = describe_error(exc)
        if timed_out:
            return [], self._timeout_error
        return violations, error

    def _evaluate_single(self, index: int, guard: Guard) -> Record:
        t0 = time.perf_counter()
        set_current_case(index)
        violations, error = self._side(guard, self._impls[0], index)
        return {
            "index": index,
            "status": _status(violations, error),
            "durationMs": (time.perf_counter() - t0) * 1000.0,
            "error": error,
            "violations": violations,
        }

    def _evaluate_compare(self, index: int, guard: Guard) -> Record:
        t0 = time.perf_counter()
        set_current_case(index)
        # Each side generates its own copy of the case and gets its own deadline, so neither
        # can spoil the other's input or time.
        base_violations, base_error = self._side(guard, self._impls[0], index)
        cand_violations, cand_error = self._side(guard, self._impls[1], index)
        return {
            "index": index,
            "status": _status(cand_violations, cand_error),
            "durationMs": (time.perf_counter() - t0) * 1000.0,
            "error": cand_error,
            "baseline": _side_record(base_violations, base_error),
            "candidate": _side_record(cand_violations, cand_error),
        }

    def close(self) -> None:
        """Stop the watchdog and close the task."""
        if self._watchdog is not None:
            self._watchdog.close()
            self._watchdog = None
        self.task.close()


def _side_record(violations: list[str], error: str | None) -> dict[str, Any]:
    return {
        "passed": error is None and not violations,
        "errored": error is not None,
        "violations": violations,
        "error": error,
    }


class _Exited(Exception):  # noqa: N818 - internal control flow
    pass


class _Channel:
    """A running command: JSON lines in on stdin, JSON lines out on stdout."""

    MAX_LINE = 16 * 1024 * 1024

    def __init__(self, command: Sequence[str], env: Mapping[str, str]) -> None:
        self.proc = subprocess.Popen(
            list(command),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=dict(env),
            bufsize=0,
        )
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self._stdin = self.proc.stdin
        self._fd = self.proc.stdout.fileno()
        self._buf = bytearray()

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = self._stdin.write(view)
            view = view[written or 0 :]

    def read_line(self, deadline: float | None) -> bytes | None:
        """The next line, or None at the deadline; raises _Exited when the command ended."""
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                return line
            if len(self._buf) > self.MAX_LINE:
                raise _Exited(f"a result line longer than {self.MAX_LINE} bytes")
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            ready, _, _ = select.select([self._fd], [], [], remaining)
            if not ready:
                return None
            chunk = os.read(self._fd, 1 << 16)
            if not chunk:
                try:
                    code = self.proc.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    raise _Exited("the command closed its stdout") from None
                raise _Exited(f"the command exited with code {code}")
            self._buf += chunk

    def close(self, grace: float) -> None:
        with contextlib.suppress(OSError):
            self._stdin.close()
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class CommandTask(LoadedTask):
    """A task in any language: one long-lived process speaking JSON lines.

    Each case goes to the command as ``{"index", "seed", "role", "implementation"}`` (once per
    side when comparing) and comes back as ``{"index", "passed", "violations", "output"}``, or
    with ``"error"`` when the case errored. Up to ``WINDOW`` requests are in flight, so the pipe
    round trip is paid once per window, not per case. A case that overruns its timeout, a
    malformed answer or an exit errors the case at the head of the line and restarts the command;
    after ``MAX_FAILED_STARTS`` restarts with no good answer the rest of the batch errors at once.
    """

    WINDOW = 32
    MAX_FAILED_STARTS = 3

    def __init__(
        self,
        command: Sequence[str],
        seed: int,
        params: Mapping[str, Any],
        roles: Sequence[tuple[str | None, str | None]],
    ) -> None:
        self.command = list(command)
        self.seed = seed
        self.roles = list(roles)
        self._env = {
            **os.environ,
            "PROCTOR_SEED": str(seed),
            "PROCTOR_TASK_PARAMS": json.dumps(dict(params), separators=(",", ":")),
        }
        self._channel: _Channel | None = None

    def _request(self, index: int, role: int) -> bytes:
        name, ref = self.roles[role]
        body = {"index": index, "seed": self.seed, "role": name, "implementation": ref}
        return json.dumps(body, separators=(",", ":")).encode() + b"\n"

    def _open(self) -> _Channel:
        if self._channel is None:
            self._channel = _Channel(self.command, self._env)
        return self._channel

    def _restart(self) -> None:
        if self._channel is not None:
            self._channel.proc.kill()
            self._channel.close(grace=5.0)
            self._channel = None

    def evaluate_batch(self, start: int, end: int, case_timeout: float) -> Iterator[Record]:
        """See :meth:`LoadedTask.evaluate_batch`."""
        if start < 0 or end < start:
            raise ValueError(f"bad batch range [{start}, {end})")
        timeout = case_timeout if timeout_enabled(case_timeout) else None
        nroles = len(self.roles)
        fresh = ((i, r) for i in range(start, end) for r in range(nroles))
        retry: deque[tuple[int, int]] = deque()
        sent: deque[tuple[int, int]] = deque()
        sides: list[dict[str, Any]] = []
        failures = 0
        last_error = ""
        case_t0 = time.perf_counter()
        head_since = time.monotonic()
        try:
            while True:
                error: str | None = None
                answer: dict[str, Any] | None = None
                if failures >= self.MAX_FAILED_STARTS:
                    if sent:
                        req: tuple[int, int] | None = sent.popleft()
                    else:
                        req = retry.popleft() if retry else next(fresh, None)
                    if req is None:
                        return
                    error = f"the command keeps failing: {last_error}"
                else:
                    try:
                        channel = self._open()
                        batch = bytearray()
                        while len(sent) < self.WINDOW:
                            nxt = retry.popleft() if retry else next(fresh, None)
                            if nxt is None:
                                break
                            batch += self._request(*nxt)
                            if not sent:
                                head_since = time.monotonic()
                            sent.append(nxt)
                        if not sent:
                            return
                        if batch:
                            channel.send(bytes(batch))
                        deadline = None if timeout is None else head_since + timeout
                        line = channel.read_line(deadline)
                        if line is None:
                            error = (
                                f"case timed out after {case_timeout:g}s; the command was "
                                "killed and restarted"
                            )
                        else:
                            answer, error = _parse_answer(line, sent[0][0])
                    except (_Exited, OSError) as exc:
                        error = str(exc) if isinstance(exc, _Exited) else describe_error(exc)
                        if not sent:
                            # The command could not even start: charge the next request.
                            nxt = retry.popleft() if retry else next(fresh, None)
                            if nxt is None:
                                return
                            sent.append(nxt)
                    req = sent.popleft()
                    head_since = time.monotonic()
                    if answer is None:
                        # Timeout, exit or garbled stream: the rest of the window is lost with
                        # the process and goes again to a fresh one.
                        self._restart()
                        retry.extendleft(reversed(sent))
                        sent.clear()
                        failures += 1
                        last_error = error or ""
                    elif error is None:
                        failures = 0
                index, role = req
                if answer is not None and error is None:
                    sides.append(_answer_side(answer))
                else:
                    sides.append(_side_record([], error))
                if role == nroles - 1:
                    yield self._record(index, sides, case_t0)
                    sides = []
                    case_t0 = time.perf_counter()
                    if stop_requested():
                        return
        finally:
            if sent:
                # Abandoned mid-window (stop, or the consumer went away): answers for cases
                # nobody will read would desynchronise the next batch.
                self._restart()

    def _record(self, index: int, sides: list[dict[str, Any]], t0: float) -> Record:
        duration = (time.perf_counter() - t0) * 1000.0
        if len(sides) == 1:
            side = sides[0]
            return {
                "index": index,
                "status": _status(side["violations"], side["error"]),
                "durationMs": duration,
                "error": side["error"],
                "violations": side["violations"],
            }
        base, cand = sides
        return {
            "index": index,
            "status": _status(cand["violations"], cand["error"]),
            "durationMs": duration,
            "error": cand["error"],
            "baseline": base,
            "candidate": cand,
        }

    def close(self) -> None:
        """End the command: close its stdin, wait briefly, then kill it."""
        if self._channel is not None:
            self._channel.close(grace=5.0)
            self._channel = None


def _parse_answer(line: bytes, index: int) -> tuple[dict[str, Any] | None, str | None]:
    """(answer, None) for a well-formed answer to ``index``; (None, why) for a broken stream;
    (answer, error) when the command reports the case errored."""
    try:
        answer = json.loads(line)
    except ValueError:
        return None, f"the command wrote a line that is not JSON: {line[:200]!r}"
    if not isinstance(answer, dict) or answer.get("index") != index:
        return None, f"the command answered {line[:200]!r} where case {index}'s result was due"
    if answer.get("error"):
        return answer, str(answer["error"])[:_MAX_ERROR_CHARS]
    violations = answer.get("violations", [])
    if not isinstance(answer.get("passed"), bool) or not isinstance(violations, list):
        return answer, f"case {index}: a result needs a boolean 'passed' and a list 'violations'"
    return answer, None


def _answer_side(answer: Mapping[str, Any]) -> dict[str, Any]:
    violations = [str(v) for v in answer.get("violations", [])]
    # A command saying passed with violations listed is taken at its violations.
    passed = bool(answer["passed"]) and not violations
    if not passed and not violations:
        violations = ["failed"]
    return {"passed": passed, "errored": False, "violations": violations, "error": None}
