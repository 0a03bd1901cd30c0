"""The public name of the Metamorphic Guard integration.

The code is :mod:`proctor.integrations.metamorphic_guard`.

EvalRuns name ``proctor.mgadapter:task`` as their entrypoint and ``python -m proctor.mgadapter``
is its command line; both stay here while the code lives under ``proctor.integrations``.
``summarize_run`` is the tasks' summary hook (:mod:`proctor.sdk.hooks`): the operator and
``proctor run`` find it here, from the entrypoint, and judge the run by Metamorphic Guard's rule.
"""

from proctor.integrations.metamorphic_guard import MGTask, mg_report, task
from proctor.integrations.metamorphic_guard.summary import summarize_run

__all__ = ["MGTask", "mg_report", "summarize_run", "task"]
