"""Metamorphic Guard task specs on Proctor: same inputs, same checks, same decision.

An EvalRun names a Metamorphic Guard task (a registered name such as ``top_k``, or a
``module:factory`` returning a ``metamorphic_guard.Spec``) in ``task.params.task``, with the
entrypoint ``proctor.mgadapter:task``; ``compare.baseline.ref`` and ``compare.candidate.ref``
are implementations as Metamorphic Guard takes them (``path/to/file.py`` for its ``solve``,
``file.py:function`` or ``module:function``); the knobs that change the verdict (``minDelta``,
``minPassRate``, ``alpha``, ``ciMethod``, ``bootstrapSamples``, ``relationCorrection``) are
``task.params`` too, with Metamorphic Guard's defaults. Workers evaluate the cases in process
(:mod:`proctor.integrations.metamorphic_guard.adapter`); :func:`mg_report` turns the stored
records into Metamorphic Guard's report and decision with its own statistics
(:mod:`proctor.integrations.metamorphic_guard.report`).

Needs the optional extra: ``pip install 'proctor[metamorphic-guard]'``. See
docs/metamorphic-guard.md.
"""

from proctor.integrations.metamorphic_guard.adapter import (
    MGParams,
    MGTask,
    load_spec,
    resolve_implementation,
    task,
)
from proctor.integrations.metamorphic_guard.report import mg_report, report_from_storage

__all__ = [
    "MGParams",
    "MGTask",
    "load_spec",
    "mg_report",
    "report_from_storage",
    "resolve_implementation",
    "task",
]
