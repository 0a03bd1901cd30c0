"""Proctor's task SDK: write a task, compare implementations, checkpoint long cases.

A task generates case ``i`` from a seed (:meth:`Task.generate`), runs an implementation on it
(:meth:`Task.run`), and decides pass or fail with properties of the output (:class:`Property`,
:meth:`Task.check`) and metamorphic relations (:class:`Relation`: transform the input, run the
implementation again, relate the two outputs). With ``compare``, the baseline and the candidate
go through the same checks and relations. Tasks in other languages are commands speaking JSON
lines (:class:`CommandTask`). See docs/statistics.md for an example.
"""

from proctor.sdk.command import CommandTask
from proctor.sdk.deadline import CaseTimeout
from proctor.sdk.records import ERROR_TYPES, ErrorType, Record, describe_error
from proctor.sdk.runner import LoadedTask, PythonTask, load_task, make_task
from proctor.sdk.state import (
    CaseInterrupted,
    MemoryStateStore,
    StateStore,
    clear_stop,
    get_state_store,
    load_state,
    request_stop,
    save_state,
    set_state_store,
    stop_requested,
)
from proctor.sdk.task import Property, Relation, Task, TaskLoadError, case_rng, resolve_ref

__all__ = [
    "ERROR_TYPES",
    "CaseInterrupted",
    "CaseTimeout",
    "CommandTask",
    "ErrorType",
    "LoadedTask",
    "MemoryStateStore",
    "Property",
    "PythonTask",
    "Record",
    "Relation",
    "StateStore",
    "Task",
    "TaskLoadError",
    "case_rng",
    "clear_stop",
    "describe_error",
    "get_state_store",
    "load_state",
    "load_task",
    "make_task",
    "request_stop",
    "resolve_ref",
    "save_state",
    "set_state_store",
    "stop_requested",
]
