"""Metamorphic Guard's report and decision as a run's result summary.

``proctor run`` and the operator summarize a finished run with Proctor's own rule
(:func:`proctor.stats.passrates.summarize`). For a run of a Metamorphic Guard task
(``task.entrypoint: proctor.mgadapter:task`` with ``compare``) :func:`with_mg_report` replaces
that summary with Metamorphic Guard's: pass rates, the delta and its interval, and the
adopt/reject decision of ``decide_adopt`` (``accept``/``reject``, ``undecided`` while cases
are missing), and writes the full report next to the run's summary
(``<run>/metamorphic-guard.json``). Any other run passes through unchanged, and this module
imports nothing of Metamorphic Guard until it meets such a run. The core reaches it only as the
task's summary hook (:func:`summarize_run`, :mod:`proctor.sdk.hooks`).

When the report cannot be made here (``metamorphic-guard`` is not installed in this process's
environment, or the task spec cannot be imported), the summary keeps Proctor's numbers but its
decision is ``undecided`` with a reason that says so: a Metamorphic Guard run is never judged by
another rule than Metamorphic Guard's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from proctor.api.v1alpha1.evalrun import EvalRunSpec, ResultSummary
from proctor.integrations.metamorphic_guard.report import report_from_storage
from proctor.sdk import TaskLoadError
from proctor.sdk.hooks import TaskSummary

ENTRYPOINTS = ("proctor.mgadapter:task", "proctor.mgadapter:MGTask")
"""Task entrypoints that make a run a Metamorphic Guard run."""

REPORT_NAME = "metamorphic-guard.json"
"""The full report's object name, in the run's folder or prefix."""


def is_mg_run(spec: EvalRunSpec) -> bool:
    """True for a compare run of a Metamorphic Guard task spec."""
    return spec.task.entrypoint in ENTRYPOINTS and spec.compare is not None


def summary_from_report(report: Mapping[str, Any], base: ResultSummary) -> ResultSummary:
    """``base`` with Metamorphic Guard's pass rates, delta, interval, decision and reason.

    Cases Proctor could not evaluate (``base.not_evaluated``: unreadable dataset rows, dead
    letters, a task's own errors) keep the run undecided whatever Metamorphic Guard made of
    them: its figures are reported, its decision is not taken."""
    p = report["proctor"]
    lower, upper = p["deltaInterval"]
    if base.not_evaluated:
        return base.model_copy(
            update={
                "baseline_pass_rate": p["baselinePassRate"],
                "candidate_pass_rate": p["candidatePassRate"],
                "delta": p["delta"],
                "delta_lower": lower,
                "delta_upper": upper,
                "decision": "undecided",
                "reason": f"{base.reason or 'some cases were not evaluated'}; Metamorphic "
                f"Guard would say {p['decision']} ({p['reason']})",
            }
        )
    return base.model_copy(
        update={
            "baseline_pass_rate": p["baselinePassRate"],
            "candidate_pass_rate": p["candidatePassRate"],
            "delta": p["delta"],
            "delta_lower": lower,
            "delta_upper": upper,
            "decision": p["decision"],
            "reason": f"Metamorphic Guard: {p['reason']}",
        }
    )


def unavailable(base: ResultSummary, why: str) -> ResultSummary:
    """``base`` left undecided because Metamorphic Guard's report could not be made."""
    return base.model_copy(
        update={
            "decision": "undecided",
            "reason": f"Metamorphic Guard's report could not be made here: {why}; run "
            "`python -m proctor.mgadapter report` where metamorphic-guard and the task are "
            "installed",
        }
    )


def with_mg_report(
    spec: EvalRunSpec, storage: Any, base: ResultSummary, *, metrics: bool = True
) -> tuple[ResultSummary, dict[str, Any] | None]:
    """The summary to report for a finished run, and Metamorphic Guard's report if it is one.

    ``storage`` is the run's :class:`proctor.storage.RunStorage`. ``metrics=False`` skips
    ``Spec.metrics``, which would call the implementations again in this process (the
    operator passes it: it does not run users' code).
    """
    if not is_mg_run(spec):
        return base, None
    try:
        report = report_from_storage(spec, storage, metrics=metrics)
    except (TaskLoadError, ImportError) as exc:
        return unavailable(base, str(exc)), None
    except Exception as exc:  # a summary must come out of any run, however broken
        return unavailable(base, f"{type(exc).__name__}: {exc}"), None
    storage.blobs.put(storage.base + REPORT_NAME, json.dumps(report).encode())
    return summary_from_report(report, base), report


REPORT_KEY = "metamorphicGuard"
"""The report's key in the summary ``proctor run`` writes."""


def summarize_run(
    spec: EvalRunSpec, storage: Any, summary: ResultSummary, *, run_user_code: bool
) -> TaskSummary:
    """The :class:`proctor.sdk.hooks.SummaryHook` of ``proctor.mgadapter``'s tasks."""
    result, report = with_mg_report(spec, storage, summary, metrics=run_user_code)
    if report is None:
        return TaskSummary(result)
    return TaskSummary(result, REPORT_KEY, report, tuple(report_rows(report)))


def report_rows(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What Metamorphic Guard's report adds to a run's summary table, as (label, value)."""
    p = report["proctor"]
    rr = p["relativeRisk"]
    lo, hi = p["relativeRiskInterval"]

    def num(x: float | None) -> str:
        return "-" if x is None else f"{x:.4f}"

    def sides(counts: Mapping[str, int]) -> str:
        return f"baseline {counts['baseline']:,}, candidate {counts['candidate']:,}"

    rows = [
        ("relative risk", f"{num(rr)}  [{num(lo)}, {num(hi)}]"),
        ("property violations", sides(p["propertyViolations"])),
        ("relation violations", sides(p["relationViolations"])),
    ]
    for rel in report.get("relation_coverage", {}).get("relations", []):
        base, cand = rel["baseline"], rel["candidate"]
        rows.append(
            (
                f"relation {rel['name']}",
                f"failed: baseline {base['failures']:,} of {base['total']:,}, "
                f"candidate {cand['failures']:,} of {cand['total']:,}",
            )
        )
    for name, metric in (report.get("metrics") or {}).items():
        delta = metric.get("delta", {}) if isinstance(metric, Mapping) else {}
        if isinstance(delta, Mapping) and "difference" in delta:
            rows.append((f"metric {name}", f"delta {delta['difference']:.4g}"))
    return rows
