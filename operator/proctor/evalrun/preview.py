"""The plan the operator's first pass would make for a run not created yet (``proctor plan``).

The same reads and the same planner as a pass: the nodes and the pods bound to them as the
operator's indexes hold them (:func:`proctor.cluster.reads.node_info`, ``pod_usage``), the
namespace's quota (:func:`proctor.evalrun.gather.placement_inputs`), and
:func:`proctor.planning.plan.compute_plan` with the backlog the first pass finds on the queue.
Read-only: nothing is created, enqueued or written.
"""

from __future__ import annotations

from dataclasses import dataclass

from proctor.api.v1alpha1.evalrun import EvalRunSpec
from proctor.cluster.api import ClusterApi
from proctor.cluster.reads import node_info, usage_by_node
from proctor.config import OperatorConfig
from proctor.evalrun.gather import ClusterView, placement_inputs
from proctor.planning.plan import Demand, NodeInfo, PlanResult, QuotaHeadroom, compute_plan

NEW_RUN_UID = "(a run not created yet)"
"""The uid a previewed run plans under: no pod carries it, so every pod's requests count."""


def fresh_demand(spec: EvalRunSpec, total: int) -> Demand:
    """The backlog a new run's first pass finds: its ``total`` cases enqueued in batches of
    ``batch.initialSize`` (:func:`proctor.queue.enqueue_run`), none claimed yet."""
    return Demand(backlog=-(-total // spec.batch.initial_size))


@dataclass(frozen=True)
class Preview:
    """A previewed plan and what it was made from."""

    plan: PlanResult
    nodes: tuple[NodeInfo, ...]  # with other pods' requests on them
    quota: QuotaHeadroom
    demand: Demand


def plan_new_run(
    spec: EvalRunSpec, api: ClusterApi, namespace: str, config: OperatorConfig, *, total: int
) -> Preview:
    """What the operator would plan for ``spec`` (of ``total`` cases: ``cases.count``, or the
    rows of its dataset) in ``namespace`` now (reads only)."""
    view = ClusterView(
        nodes=[node_info(body) for body in api.nodes()],
        usage=usage_by_node(api.bound_pods()),
        workers=[],
    )
    nodes, quota = placement_inputs(view, api.quotas(namespace), run_uid=NEW_RUN_UID, own=[])
    demand = fresh_demand(spec, total)
    plan = compute_plan(spec, list(nodes), demand, config, quota=quota, spot_fallback=False)
    return Preview(plan, nodes, quota, demand)
