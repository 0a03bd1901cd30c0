"""What workers cost: node prices, a worker's share of its node, the cost a run has accrued
(for its status) and the cost a plan is expected to come to (for ``proctor plan``).

Pure functions. A worker holds the largest share of its node that its requests take of the
node's allocatable CPU, memory or GPUs (at most the whole node): a node-second is one node
held for one second, so four workers that each take a quarter of a node for an hour are one
node-hour. A node's hourly price is its annotation ``proctor.dev/hourly-price`` if it has
one, else the operator's price table by instance type, spot or on-demand.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from proctor.api.v1alpha1.cost import CapacityType, CostStatus, PoolCost
from proctor.config import PriceTable
from proctor.planning.plan import Capacity, NodeInfo, PlanResult

INSTANCE_TYPE_LABELS = ("node.kubernetes.io/instance-type", "beta.kubernetes.io/instance-type")
DEFAULT_POOL = "default"
"""The pool name of workers of a run without placement.pools."""


def capacity_type(node: NodeInfo) -> CapacityType:
    return "spot" if node.is_spot else "on-demand"


def hourly_price(node: NodeInfo, table: PriceTable) -> float | None:
    """The node's price per hour: its own annotation, else the table's entry for its instance
    type (else the table's default), spot or on-demand as the node is; None: unknown."""
    if node.hourly_price is not None:
        return node.hourly_price
    instance = next((node.labels[k] for k in INSTANCE_TYPE_LABELS if k in node.labels), None)
    entry = table.instance_types.get(instance or "", table.default)
    if entry is None:
        return None
    return entry.spot if node.is_spot else entry.on_demand


def node_share(requests: Capacity, node: NodeInfo) -> float:
    """The share of ``node`` that a pod with these requests holds, in [0, 1]."""
    alloc = node.allocatable
    shares = [
        requests.cpu_millis / alloc.cpu_millis if alloc.cpu_millis else 0.0,
        requests.memory / alloc.memory if alloc.memory else 0.0,
        requests.gpus / alloc.gpus if alloc.gpus else 0.0,
    ]
    return min(1.0, max(shares))


@dataclass(frozen=True)
class WorkerSpan:
    """A worker holding a node: where, in which pool, with which requests, since when."""

    node: str
    pool: str
    requests: Capacity
    since: datetime


@dataclass(frozen=True)
class Charge:
    """Node-seconds on one node (and what they cost, None when the node has no price)."""

    pool: str
    capacity: CapacityType
    node_seconds: float
    cost: float | None


def _add(status: CostStatus, charges: Iterable[Charge], until: str) -> CostStatus:
    """``status`` with the charges added (pure; ``status`` is not modified)."""
    pools = {(p.pool, p.capacity_type): p for p in status.pools or ()}
    total, priced_cost, unpriced = status.node_seconds, status.estimated_cost, 0.0
    for charge in charges:
        key = (charge.pool, charge.capacity)
        before = pools.get(key) or PoolCost(pool=charge.pool, capacity_type=charge.capacity,
                                            node_seconds=0.0)  # fmt: skip
        cost = before.cost
        if charge.cost is not None:
            cost = (cost or 0.0) + charge.cost
            priced_cost = (priced_cost or 0.0) + charge.cost
        else:
            unpriced += charge.node_seconds
        pools[key] = before.model_copy(
            update={"node_seconds": before.node_seconds + charge.node_seconds, "cost": cost}
        )
        total += charge.node_seconds
    return status.model_copy(
        update={
            "node_seconds": total,
            "estimated_cost": priced_cost,
            "unpriced_node_seconds": status.unpriced_node_seconds + unpriced,
            "pools": [pools[k] for k in sorted(pools)] or None,
            "accrued_until": until,
        }
    )


def accrue(
    previous: CostStatus | None,
    workers: Sequence[WorkerSpan],
    nodes: Mapping[str, NodeInfo],
    table: PriceTable,
    *,
    now: datetime,
    until: str,
) -> CostStatus:
    """The run's cost after this pass: ``previous`` plus what each worker held since then
    (since the worker was created, if later). A first pass starts the count at ``now``; a
    worker on a node no longer known is not charged (its node is gone, so is it)."""
    if previous is None:
        return CostStatus(node_seconds=0.0, currency=table.currency, accrued_until=until)
    last = datetime.fromisoformat(previous.accrued_until.replace("Z", "+00:00"))
    charges = []
    for worker in workers:
        node = nodes.get(worker.node)
        seconds = (now - max(last, worker.since)).total_seconds()
        if node is None or seconds <= 0:
            continue
        held = seconds * node_share(worker.requests, node)
        price = hourly_price(node, table)
        cost = None if price is None else held * price / 3600.0
        charges.append(Charge(worker.pool or DEFAULT_POOL, capacity_type(node), held, cost))
    return _add(previous, charges, until)


def place_workers(plan: PlanResult) -> dict[str, int]:
    """Where the plan's workers would run, for an estimate: each pool's planned replicas (all
    replicas when the run has no pools) spread one at a time over the pool's nodes that still
    hold one, in node order, as the scheduler spreads a run's workers. The scheduler decides
    the real placement; the plan decides only how many go to each pool."""
    wanted = {p.name: p.replicas for p in plan.pools} if plan.pools else {"": plan.replicas}
    placed: dict[str, int] = {}
    for pool, replicas in wanted.items():
        members = [n for n in plan.per_node if n.pool == pool]
        left = replicas
        while left > 0:
            open_nodes = [n.name for n in members if placed.get(n.name, 0) < n.fit]
            if not open_nodes:
                break
            for name in open_nodes[:left]:
                placed[name] = placed.get(name, 0) + 1
            left -= min(left, len(open_nodes))
    return placed


@dataclass(frozen=True)
class CostEstimate:
    """What a plan would cost if it ran for ``seconds``."""

    seconds: float
    status: CostStatus


def estimate_cost(
    plan: PlanResult,
    nodes: Sequence[NodeInfo],
    placed: Mapping[str, int],
    table: PriceTable,
    seconds: float,
) -> CostEstimate:
    """Node-seconds and cost of the placed workers over ``seconds`` (pure)."""
    by_name = {n.name: n for n in nodes}
    pools = {n.name: n.pool for n in plan.per_node}
    size = plan.size
    requests = Capacity(size.cpu_millis, size.memory, size.gpus, 1)
    charges = []
    for name, count in sorted(placed.items()):
        node = by_name[name]
        held = count * seconds * node_share(requests, node)
        price = hourly_price(node, table)
        charges.append(
            Charge(
                pools.get(name) or DEFAULT_POOL,
                capacity_type(node),
                held,
                None if price is None else held * price / 3600.0,
            )
        )
    start = CostStatus(node_seconds=0.0, currency=table.currency, accrued_until="")
    return CostEstimate(seconds, _add(start, charges, ""))


def estimate_seconds(cases: int, case_seconds: float, replicas: int) -> float | None:
    """How long ``cases`` take on ``replicas`` workers at ``case_seconds`` each (each worker
    evaluates one case at a time); None when no worker would run."""
    if replicas <= 0:
        return None
    return cases * case_seconds / replicas
