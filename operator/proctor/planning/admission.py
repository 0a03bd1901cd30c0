"""Admission by Kueue: the plan as a request, and what Kueue granted of it (pure).

A run that names a Kueue LocalQueue (``spec.queueName`` or the ``kueue.x-k8s.io/queue-name``
label on the run) labels each worker pod with it; Kueue's pod integration gates every such pod
and admits it as a workload of its own when the ClusterQueue has quota. Proctor's plan is then
what it *asks* for: it creates that many pods, counts the gated ones as pending (so it never
creates more while they wait), and reports what Kueue admitted. The operator gathers the facts
(:class:`Admission`); nothing here talks to the API.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from proctor.api.names import KUEUE_PRIORITY_LABEL, KUEUE_QUEUE_LABEL
from proctor.api.v1alpha1.evalrun import EvalRunSpec
from proctor.planning.plan import PlanResult


def kueue_queue(spec: EvalRunSpec, labels: Mapping[str, str]) -> str:
    """The LocalQueue the run's workers are admitted through: ``spec.queueName``, else the
    run's ``kueue.x-k8s.io/queue-name`` label; ``""`` when the run does not use Kueue."""
    return spec.queue_name or labels.get(KUEUE_QUEUE_LABEL, "")


def kueue_pod_labels(queue: str, run_labels: Mapping[str, str]) -> dict[str, str]:
    """The labels that hand a worker pod to Kueue: its LocalQueue, and the run's
    WorkloadPriorityClass when it names one; none without a queue."""
    if not queue:
        return {}
    labels = {KUEUE_QUEUE_LABEL: queue}
    if run_labels.get(KUEUE_PRIORITY_LABEL):
        labels[KUEUE_PRIORITY_LABEL] = run_labels[KUEUE_PRIORITY_LABEL]
    return labels


@dataclass(frozen=True)
class Admission:
    """What Kueue has made of the run's live workers. ``queue`` is ``""`` for a run without
    Kueue; ``blocked`` says why Kueue admits none of them whatever the quota (the LocalQueue
    is missing, stopped or inactive)."""

    queue: str = ""
    cluster_queue: str = ""
    admitted: int = 0  # live workers without Kueue's admission gate
    waiting: int = 0  # live workers still gated: asked for, not granted
    blocked: str = ""
    outside: int = 0  # live workers with the queue label that Kueue did not take charge of


def bind_admission(plan: PlanResult, admission: Admission) -> PlanResult:
    """The plan as Kueue leaves it. While some of the run's workers wait for admission (or
    Kueue admits none), Kueue is the binding limit: ``replicas`` is what it admitted,
    ``requested`` what the run asks for (the scaler keeps that many pods, so the waiting
    ones are neither created again nor deleted); otherwise the plan only names the
    ClusterQueue. A run without Kueue is left alone; one that is suspended or done keeps
    its binding limit."""
    if not admission.queue:
        return plan
    named = replace(plan, cluster_queue=admission.cluster_queue)
    if admission.outside:
        # Kueue's webhook let them through untouched: its pod integration is off, or the
        # namespace is not one it manages. They run, but nothing admits them.
        named = replace(
            named,
            message=f"{plan.message}; {admission.outside} workers run outside Kueue: enable "
            "its pod integration for this namespace (docs/install.md#kueue-admission)",
        )
    if plan.bound_by in {"suspended", "done", "cancelled"}:
        return named
    if not admission.waiting and not admission.blocked:
        return named
    admitted = min(admission.admitted, plan.replicas)
    where = f"ClusterQueue {admission.cluster_queue}" if admission.cluster_queue else "Kueue"
    why = admission.blocked or f"{admission.waiting} wait for quota in {where}"
    message = (
        f"{admitted} of {plan.replicas} workers admitted by Kueue "
        f"(LocalQueue {admission.queue}): bound by kueue; {why}. Requested: {plan.message}"
    )
    return replace(
        named, replicas=admitted, requested=plan.replicas, bound_by="kueue", message=message
    )
