"""The public name of the Metamorphic Guard integration.

The code is :mod:`proctor.integrations.metamorphic_guard`.

EvalRuns name ``proctor.mgadapter:task`` as their entrypoint and ``python -m proctor.mgadapter``
is its command line; both stay here while the code lives under ``proctor.integrations``.
"""

from proctor.integrations.metamorphic_guard import MGTask, mg_report, task

__all__ = ["MGTask", "mg_report", "task"]
