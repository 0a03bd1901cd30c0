"""Hooks a task may provide to the code that summarizes a finished run.

A task's module may define ``summarize_run``, a :class:`SummaryHook`: given the run's spec,
its storage and the summary Proctor's own rule made, it returns the summary to report and,
optionally, a report of its own to keep beside it. Metamorphic Guard's tasks
(``proctor.mgadapter``) use it to judge a run by Metamorphic Guard's rule. The operator and
``proctor run`` call :func:`summarize_with_task` and know no task by name.

Only modules that ship with Proctor (``proctor.*``) are looked at: summarizing happens in the
operator and in ``proctor run``'s own process, neither of which runs users' code.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from proctor.api.v1alpha1.evalrun import EvalRunSpec, ResultSummary

HOOK_ATTRIBUTE = "summarize_run"
"""The name a task module gives its :class:`SummaryHook`."""


@dataclass(frozen=True)
class TaskSummary:
    """What a hook made of a finished run."""

    summary: ResultSummary
    report_key: str | None = None  # the key of ``report`` in the run's summary file
    report: Mapping[str, Any] | None = None
    rows: tuple[tuple[str, str], ...] = ()  # (label, value) the summary table shows of it


class SummaryHook(Protocol):
    def __call__(
        self, spec: EvalRunSpec, storage: Any, summary: ResultSummary, *, run_user_code: bool
    ) -> TaskSummary:
        """The summary to report. ``storage`` is the run's :class:`proctor.storage.RunStorage`;
        ``run_user_code=False`` (the operator) forbids calling the implementations again."""
        ...


def summary_hook(entrypoint: str | None) -> SummaryHook | None:
    """The hook of the task ``entrypoint`` names, or None (a user's module is not imported)."""
    module_name, sep, _ = (entrypoint or "").rpartition(":")
    if not sep or not module_name.startswith("proctor."):
        return None
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None  # the workers report a task that cannot be loaded
    hook = getattr(module, HOOK_ATTRIBUTE, None)
    return hook if callable(hook) else None


def summarize_with_task(
    spec: EvalRunSpec, storage: Any, summary: ResultSummary, *, run_user_code: bool
) -> TaskSummary:
    """``summary`` as the run's task hook makes it, or as it is when the task has none."""
    hook = summary_hook(spec.task.entrypoint)
    if hook is None:
        return TaskSummary(summary)
    return hook(spec, storage, summary, run_user_code=run_user_code)
