"""Loading a task and evaluating batches of cases: the worker's side of the SDK."""

from __future__ import annotations

import contextlib
import copy
import functools
import shutil
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from proctor.api.v1alpha1.evalrun import CompareSpec, TaskSpec
from proctor.sdk.batch import BatchRecords
from proctor.sdk.cases import DatasetRow, RowSource
from proctor.sdk.deadline import (
    CaseTimeout,
    Guard,
    NoGuard,
    SignalGuard,
    ThreadGuard,
    signal_guard_usable,
    timeout_enabled,
)
from proctor.sdk.records import (
    ErrorType,
    Record,
    bounded,
    case_record,
    describe_error,
    side_record,
    violation_names,
    with_output,
)
from proctor.sdk.state import (
    CaseInterrupted,
    case_slots,
    set_current_case,
    set_current_side,
    stop_requested,
)
from proctor.sdk.task import Task, TaskLoadError, case_rng, resolve_ref

__all__ = ["LoadedTask", "PythonTask", "Record", "describe_error", "load_task", "make_task"]


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

    def evaluate_into(self, start: int, end: int, case_timeout: float, out: BatchRecords) -> None:
        """Evaluate the cases of ``[start, end)`` into ``out`` (whose ``start`` is ``start``):
        what :meth:`evaluate_batch` yields, kept as columns (:mod:`proctor.sdk.batch`), and
        ending early the same way once a stop was requested. The worker's path; a task whose
        loop can append to ``out`` directly overrides it."""
        for record in self.evaluate_batch(start, end, case_timeout):
            out.add(record)

    @property
    @abstractmethod
    def sides(self) -> int:
        """Implementations evaluated per case: 2 when comparing, else 1."""

    @property
    def fork_safe(self) -> bool:
        """Whether :meth:`evaluate_side` works in a forked copy of this process."""
        return True

    @abstractmethod
    def evaluate_side(
        self, start: int, end: int, role: int, case_timeout: float
    ) -> Iterator[Record]:
        """Side ``role`` (0 the baseline, 1 the candidate; 0 alone without compare) of each case
        in ``[start, end)``: side records with their ``index`` added, in order.

        What the worker runs in a forked child per side to learn which side kills a process
        (see :mod:`proctor.worker.isolation`); it ends early once a stop was requested.
        """

    def identity(self, index: int) -> dict[str, Any]:
        """The ``id`` and ``partition`` of case ``index`` when it is a dataset row, else {}."""
        return {}

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


def load_task(
    task: TaskSpec,
    compare: CompareSpec | None,
    seed: int,
    *,
    rows: RowSource | None = None,
    max_output: int | None = None,
) -> LoadedTask:
    """Import a Python task or prepare a command task, resolving the compared implementations.

    With ``rows`` the cases are a dataset's rows instead of generated ones; with
    ``max_output`` (``spec.results.maxOutputBytes`` when the run keeps outputs) each side's
    output is kept in its record. Raises :class:`TaskLoadError` when the entrypoint or an
    implementation cannot be loaded: that is a broken run, not a failing case.
    """
    if task.command is not None:
        roles: list[tuple[str | None, str | None]] = (
            [(None, None)]
            if compare is None
            else [("baseline", compare.baseline.ref), ("candidate", compare.candidate.ref)]
        )
        _check_command(task.command)
        # proctor.sdk.command imports LoadedTask from here.
        from proctor.sdk.command import CommandTask  # noqa: PLC0415 - breaks that cycle

        return CommandTask(
            task.command, seed, task.params or {}, roles, rows=rows, max_output=max_output
        )
    if task.entrypoint is None:
        raise TaskLoadError("the task needs an entrypoint or a command")
    instance = make_task(resolve_ref(task.entrypoint), task.params or {}, task.entrypoint)
    impls: list[Callable[..., Any]] | None = None
    if compare is not None:
        impls = [
            _implementation(instance, side.ref, side.params)
            for side in (compare.baseline, compare.candidate)
        ]
    return PythonTask(instance, seed, impls, rows=rows, max_output=max_output)


def _check_command(command: Sequence[str]) -> None:
    """A command that cannot start is a broken run, found before any case is charged with it."""
    if not command:
        raise TaskLoadError("task.command is empty; give the program and its arguments")
    program = command[0]
    found = shutil.which(program) if "/" not in program else program
    if found is None:
        raise TaskLoadError(f"task.command: {program!r} is not on PATH; install it or give a path")
    path = Path(found)
    if not path.is_file():
        raise TaskLoadError(f"task.command: {found} does not exist or is not a file")
    if not shutil.which(found):
        raise TaskLoadError(f"task.command: {found} is not executable (chmod +x it)")


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


class PythonTask(LoadedTask):
    """An SDK task evaluated in this process."""

    def __init__(
        self,
        task: Task,
        seed: int,
        implementations: Sequence[Callable[..., Any]] | None,
        *,
        rows: RowSource | None = None,
        max_output: int | None = None,
    ) -> None:
        self.task = task
        self.seed = seed
        self.rows = rows
        self.max_output = max_output
        self._impls: tuple[Callable[..., Any], ...] = (
            tuple(implementations) if implementations is not None else (task.solve,)
        )
        # Bound once: the per-case path only calls. The Task's own run() and check() (with
        # no properties) are skipped: they call the implementation, and find nothing.
        self._generate = task.generate
        self._case_of_row = task.case_of_row
        self._run = None if _inherited(task, task.run, Task.run) else task.run
        self._check = (
            None if _inherited(task, task.check, Task.check) and not task.properties else task.check
        )
        self._equivalent = task.equivalent
        self._relations = tuple(task.relations)
        self._watchdog: ThreadGuard | None = None
        self._timeout_error = ""

    @property
    def sides(self) -> int:
        """See :attr:`LoadedTask.sides`."""
        return len(self._impls)

    @property
    def implementations(self) -> tuple[Callable[..., Any], ...]:
        """The callables each side runs (the task's ``solve`` without compare)."""
        return self._impls

    @property
    def fork_safe(self) -> bool:
        """The task's :attr:`Task.fork_safe`, and False once CUDA is initialised here."""
        torch = sys.modules.get("torch")
        cuda = getattr(torch, "cuda", None)
        with contextlib.suppress(Exception):
            if cuda is not None and cuda.is_initialized():
                return False
        return bool(getattr(self.task, "fork_safe", True))

    def evaluate_batch(self, start: int, end: int, case_timeout: float) -> Iterator[Record]:
        """See :meth:`LoadedTask.evaluate_batch`."""
        return self._cases(start, end, case_timeout, None)

    def evaluate_side(
        self, start: int, end: int, role: int, case_timeout: float
    ) -> Iterator[Record]:
        """See :meth:`LoadedTask.evaluate_side`."""
        if not 0 <= role < len(self._impls):
            raise ValueError(f"no side {role}: this task has {len(self._impls)}")
        return self._cases(start, end, case_timeout, role)

    def _cases(
        self, start: int, end: int, case_timeout: float, role: int | None
    ) -> Iterator[Record]:
        if start < 0 or end < start:
            raise ValueError(f"bad batch range [{start}, {end})")
        guard = self._guard(case_timeout)
        self._timeout_error = f"case timed out after {case_timeout:g}s"
        rows = self.rows.rows(start, end) if self.rows is not None else None
        if role is not None and len(self._impls) > 1:
            set_current_side(_ROLES[role])
        try:
            for index in range(start, end):
                if stop_requested():
                    return
                row = next(rows) if rows is not None else None
                try:
                    set_current_case(index)
                    if role is None:
                        record = self._evaluate(index, guard, row)
                    else:
                        side = self._side(guard, self._impls[role], index, row)
                        record = {"index": index, **(side or side_record([], None))}
                except CaseInterrupted:
                    return
                yield record
        finally:
            set_current_case(None)
            set_current_side(None)
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
        self, guard: Guard, impl: Callable[..., Any], index: int, row: DatasetRow | None
    ) -> Record | None:
        """Generate case ``index`` (or take its row), run ``impl`` on it and its follow-ups:
        the side record, or None when the side passed with no output to keep."""
        case: Any = None
        if row is not None:
            case, bad = self._row_case(row, index)
            if bad is not None:
                return self._kept(side_record([], bad, "badInput"), None)
        violations: list[str] = []
        error: str | None = None
        error_type: ErrorType | None = None
        timed_out = False
        output: Any = None
        # An error before the implementation ran is the task's, not the implementation's.
        phase: ErrorType = "task"
        try:
            guard.arm()
            try:
                if row is None:
                    case = self._generate(self.seed, index)
                phase = "exception"
                output = impl(case) if self._run is None else self._run(impl, case)
                if self._check is not None:
                    found = self._check(case, output)
                    if found.__class__ is not list or found:  # anything but []
                        violations, error = violation_names(found, "check()")
                        error_type = "unencodable" if error is not None else None
                if error is None and self._relations:
                    violations += self._broken_relations(impl, index, case, output)
            finally:
                timed_out = guard.disarm()
        except CaseTimeout:
            guard.disarm()
            timed_out = True
        except (CaseInterrupted, Exception, SystemExit) as exc:
            error, error_type = _error_of(exc), phase
        if timed_out:
            return self._kept(side_record([], self._timeout_error, "timeout"), None)
        if error is not None:
            return self._kept(side_record(violations, error, error_type), None)
        if violations or self.max_output is not None:
            return self._kept(side_record(violations, None), output)
        return None

    def _row_case(self, row: DatasetRow, index: int) -> tuple[Any, str | None]:
        """(the case of a dataset row, None), or (None, why it cannot be one)."""
        if row.error is not None:
            return None, row.error
        try:
            return self._case_of_row(row.case, self.seed, index), None
        except Exception as exc:
            return None, f"the task cannot take row {row.id} as a case: {describe_error(exc)}"

    def _kept(self, side: Record, output: Any) -> Record:
        return with_output(side, output, self.max_output)

    def _broken_relations(
        self, impl: Callable[..., Any], index: int, case: Any, output: Any
    ) -> list[str]:
        broken = []
        for rel in self._relations:
            follow_up = (
                rel.transform(case, case_rng(self.seed, index, rel.name))
                if rel.uses_rng
                else rel.transform(case)
            )
            follow_out = impl(follow_up) if self._run is None else self._run(impl, follow_up)
            if rel.relate is None:
                holds = self._equivalent(output, follow_out)
            elif rel.sees_cases:
                holds = rel.relate(case, follow_up, output, follow_out)
            else:
                holds = rel.relate(output, follow_out)
            if not holds:
                broken.append(f"relation:{rel.name}")
        return broken

    def _evaluate(self, index: int, guard: Guard, row: DatasetRow | None) -> Record:
        t0 = time.perf_counter()
        sides = [s or side_record([], None) for s in self._sides(index, guard, row)]
        identity = row.identity() if row is not None else None
        return case_record(index, sides, (time.perf_counter() - t0) * 1000.0, identity)

    def _sides(self, index: int, guard: Guard, row: DatasetRow | None) -> list[Record | None]:
        """Each side of case ``index`` (see :meth:`_side`)."""
        # Each side generates its own copy of the case and gets its own deadline, so neither
        # can spoil the other's input or time. A dataset row is read once: a side that changes
        # it in place would spoil the other's.
        # Each side's state is its own too (:mod:`proctor.sdk.state`): a side that resumes
        # from a checkpoint never finds the other's progress.
        if len(self._impls) == 1:
            return [self._side(guard, self._impls[0], index, row)]
        sides: list[Record | None] = []
        try:
            for role, impl in zip(_ROLES, self._impls, strict=True):
                set_current_side(role)
                sides.append(self._side(guard, impl, index, row if row is None else _copy_row(row)))
        finally:
            set_current_side(None)
        return sides

    def evaluate_into(self, start: int, end: int, case_timeout: float, out: BatchRecords) -> None:
        """See :meth:`LoadedTask.evaluate_into`: the same cases as :meth:`evaluate_batch`, a
        case whose sides all pass appended as its duration alone."""
        if start < 0 or end < start or out.start != start or len(out):
            raise ValueError(f"bad batch range [{start}, {end}) for records from {out.start}")
        guard = self._guard(case_timeout)
        self._timeout_error = f"case timed out after {case_timeout:g}s"
        rows = self.rows.rows(start, end) if self.rows is not None else None
        if rows is not None:
            out.with_identity()
        clock, seconds, odd = time.perf_counter, out.seconds, out.odd
        side, impl, one = self._side, self._impls[0], len(self._impls) == 1
        context, stop = case_slots()
        # One clock read a case: a case's time runs from the end of the one before it.
        t0 = clock()
        try:
            for index in range(start, end):
                if stop.requested:
                    return
                row = next(rows) if rows is not None else None
                context.case = index
                out.since = t0
                try:
                    got = side(guard, impl, index, row) if one else self._sides(index, guard, row)
                except CaseInterrupted:
                    return
                t1 = clock()
                if row is not None:
                    out.add_identity(row.id, row.partition)
                if got is not None and (record := _odd_record(index, got, t1 - t0, row)):
                    odd[index - start] = record
                seconds.append(t1 - t0)  # last: the case counts from here (module doc of batch)
                t0 = t1
        finally:
            set_current_case(None)
            if isinstance(guard, SignalGuard):
                guard.close()

    def identity(self, index: int) -> dict[str, Any]:
        """See :meth:`LoadedTask.identity`."""
        if self.rows is None:
            return {}
        return next(iter(self.rows.rows(index, index + 1))).identity()

    def close(self) -> None:
        """Stop the watchdog and close the task."""
        if self._watchdog is not None:
            self._watchdog.close()
            self._watchdog = None
        self.task.close()


_ROLES = ("baseline", "candidate")
"""The sides of a comparison, in the order of its implementations."""


def _inherited(task: Task, method: Callable[..., Any], base: Callable[..., Any]) -> bool:
    """Whether ``method`` is the Task base class's own ``base`` bound to ``task`` (one bound
    to another task, given to this one, checks that task's properties)."""
    return getattr(method, "__func__", None) is base and getattr(method, "__self__", None) is task


def _error_of(exc: BaseException) -> str:
    """The error of a side that raised ``exc``; a CaseInterrupted is raised again when the
    worker stops (the case goes back, unjudged), else it would come back for ever."""
    if isinstance(exc, CaseInterrupted):
        if stop_requested():
            raise exc
        return bounded(f"CaseInterrupted with no stop requested: {describe_error(exc)}")
    return describe_error(exc)


def _odd_record(
    index: int, got: Record | list[Record | None], seconds: float, row: DatasetRow | None
) -> Record | None:
    """The record of a case whose sides are ``got`` (one side's result, or each side's), or
    None when every side passed with nothing more to say."""
    sides = got if isinstance(got, list) else [got]
    if all(s is None for s in sides):
        return None
    full = [s if s is not None else side_record([], None) for s in sides]
    identity = row.identity() if row is not None else None
    return case_record(index, full, seconds * 1000.0, identity)


def _copy_row(row: DatasetRow) -> DatasetRow:
    """The row with a deep copy of its case."""
    return DatasetRow(row.index, copy.deepcopy(row.case), row.id, row.partition, row.error)
