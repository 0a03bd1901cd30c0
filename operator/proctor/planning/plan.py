"""Capacity planning: how many workers of a run the cluster can hold, and what bound them.

Pure functions of the spec, the observed nodes, the queue's backlog and the namespace's quota
headroom. The operator gathers those facts; nothing here talks to the API.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from proctor.api.quantity import cpu_millis, format_bytes, format_cpu, to_bytes
from proctor.api.v1alpha1.base import Placement, Toleration
from proctor.api.v1alpha1.evalrun import EvalRunSpec, LimitName, Plan, PoolPlan
from proctor.api.v1alpha1.placement import RunPlacement
from proctor.config import OperatorConfig
from proctor.planning.nodes import (
    GPU_RESOURCE,
    SPOT_LABELS,
    SPOT_TAINT_KEYS,
    Capacity,
    NodeInfo,
    Taint,
)
from proctor.planning.spread import spread_limit

UNLIMITED = 1 << 40


@dataclass(frozen=True)
class WorkerSize:
    """Requests of one worker."""

    profile: str
    cpu_millis: int
    memory: int
    gpus: int = 0


@dataclass(frozen=True)
class Demand:
    """Work as the queue sees it, in batches."""

    backlog: int
    work_remaining: bool = True


@dataclass(frozen=True)
class QuotaHeadroom:
    """What a namespace ResourceQuota still allows for this run's workers (None: no limit).

    The caller adds the run's own current workers back, so the headroom is for all of them.
    """

    cpu_millis: int | None = None
    memory: int | None = None
    gpus: int | None = None
    pods: int | None = None


@dataclass(frozen=True)
class NodeFit:
    """How many workers one eligible node holds now, and the pool it is in ("": no pools)."""

    name: str
    pool: str
    fit: int


@dataclass(frozen=True)
class PlanResult:
    """The plan, and whether the run can ever be placed."""

    replicas: int
    fit: int
    bound_by: LimitName
    size: WorkerSize
    eligible_nodes: tuple[str, ...]
    pools: tuple[PoolPlan, ...]
    message: str
    feasible: bool
    infeasible_reason: str = ""
    per_node: tuple[NodeFit, ...] = ()  # the eligible nodes, in the order given
    requested: int | None = None  # with Kueue binding: what the run asks for (admission.py)
    cluster_queue: str = ""

    @property
    def target(self) -> int:
        """The workers the scaler keeps: what Kueue was asked for, or else the plan."""
        return self.replicas if self.requested is None else self.requested

    def to_status(self) -> Plan:
        return Plan(
            replicas=self.replicas,
            requested=self.requested,
            cluster_queue=self.cluster_queue or None,
            fit=self.fit,
            bound_by=self.bound_by,
            profile=self.size.profile,
            cpu=format_cpu(self.size.cpu_millis),
            memory=format_bytes(self.size.memory),
            gpus=self.size.gpus,
            eligible_nodes=len(self.eligible_nodes),
            pools=list(self.pools) or None,
            message=self.message,
        )


def tolerates(tolerations: Sequence[Toleration], taint: Taint) -> bool:
    """Kubernetes' toleration matching for one taint."""
    for tol in tolerations:
        if tol.effect and tol.effect != taint.effect:
            continue
        operator = tol.operator or "Equal"
        if operator == "Exists" and (not tol.key or tol.key == taint.key):
            return True
        if operator == "Equal" and tol.key == taint.key and (tol.value or "") == taint.value:
            return True
    return False


def worker_tolerations(spec: EvalRunSpec, spot_fallback: bool = False) -> list[Toleration]:
    """Tolerations a worker pod carries: the spec's, GPU nodes', and spot nodes' when allowed."""
    placement = spec.placement
    result = list(placement.tolerations or [])
    if spec.gpus > 0:
        result.append(Toleration(key=GPU_RESOURCE, operator="Exists", effect="NoSchedule"))
    if spot_allowed(spec, spot_fallback):
        result.extend(
            Toleration(key=key, operator="Exists", effect="NoSchedule") for key in SPOT_TAINT_KEYS
        )
    return result


def spot_allowed(spec: EvalRunSpec, spot_fallback: bool) -> bool:
    placement = spec.placement
    allowed = placement.spot.allowed
    return allowed and not spot_fallback


def _matches(selector: Mapping[str, str] | None, labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def pool_for_new_pod(pools: Sequence[PoolPlan], current: Mapping[str, int]) -> str:
    """The pool a new worker goes to (pure): the one furthest below its planned replicas,
    counting ``current`` (the run's workers per pool: live, created and not yet seen, and
    created earlier in this pass), so that a replacement restores the plan's split (a lost
    on-demand worker of a 6/2 plan is replaced on on-demand, not spot). Ties go to the pool
    listed first; ``""`` when the run has no pools or every pool is full."""
    best, best_gap = "", 0
    for pool in pools:
        gap = pool.replicas - current.get(pool.name, 0)
        if gap > best_gap:
            best, best_gap = pool.name, gap
    return best


def pool_of(spec: EvalRunSpec, node: NodeInfo) -> str | None:
    """The first pool whose selector the node matches; ``""`` when the run has no pools."""
    placement = spec.placement
    if not placement.pools:
        return ""
    for pool in placement.pools:
        if _matches(pool.node_selector, node.labels):
            return pool.name
    return None


def ineligibility(
    spec: EvalRunSpec,
    node: NodeInfo,
    spot_fallback: bool = False,
    tolerations: Sequence[Toleration] | None = None,
) -> str:
    """Why a worker of this run may not run on the node; empty when it may. ``tolerations``
    are the workers' (:func:`worker_tolerations`), when the caller has them already."""
    why = _unmatched(spec, node, spot_fallback, tolerations)
    if not why and spec.gpus > 0 and node.allocatable.gpus < spec.gpus:
        return f"node has {node.allocatable.gpus} GPUs, a worker needs {spec.gpus}"
    return why


def _unmatched(
    spec: EvalRunSpec,
    node: NodeInfo,
    spot_fallback: bool = False,
    tolerations: Sequence[Toleration] | None = None,
) -> str:
    """Why the node is outside the workers' node affinity, selector or tolerations (the
    nodes a topology spread counts are the others); empty when it is inside."""
    placement = spec.placement
    if not node.ready:
        return "node is not Ready"
    if node.unschedulable:
        return "node is cordoned"
    if not _matches(placement.node_selector, node.labels):
        return "node does not match placement.nodeSelector"
    if pool_of(spec, node) is None:
        return "node is in none of placement.pools"
    if node.is_spot and not spot_allowed(spec, spot_fallback):
        return "spot node, and spot is not allowed" + (" (fell back)" if spot_fallback else "")
    if tolerations is None:
        tolerations = worker_tolerations(spec, spot_fallback)
    for taint in node.taints:
        if taint.effect in {"NoSchedule", "NoExecute"} and not tolerates(tolerations, taint):
            return f"untolerated taint {taint.key}={taint.value}:{taint.effect}"
    return ""


def resolve_size(
    spec: EvalRunSpec, config: OperatorConfig, nodes: Sequence[NodeInfo] = ()
) -> WorkerSize:
    """Worker requests from explicit resources or a profile.

    ``auto`` picks ``small`` for CPU tasks and ``large`` for GPU tasks (a GPU needs host cores
    to feed it), then steps down to the largest smaller profile that fits on at least one
    eligible node, so that auto never makes a run unschedulable when a smaller size would fit.
    """
    if spec.resources is not None:
        return WorkerSize(
            "custom", cpu_millis(spec.resources.cpu), to_bytes(spec.resources.memory), spec.gpus
        )
    name = spec.profile or "auto"
    if name != "auto":
        named = config.profile(name)
        return WorkerSize(name, cpu_millis(named.cpu), to_bytes(named.memory), spec.gpus)
    ordered = config.profile_names()
    start = "large" if spec.gpus > 0 else "small"
    candidates = ordered[: ordered.index(start) + 1] if start in ordered else ordered
    sizes = [
        WorkerSize(n, cpu_millis(config.profile(n).cpu), to_bytes(config.profile(n).memory), 0)
        for n in reversed(candidates)
    ]
    tolerations = worker_tolerations(spec)
    eligible = [n for n in nodes if not ineligibility(spec, n, tolerations=tolerations)]
    for size in sizes:
        if any(_per_node(n, size, config) >= 1 for n in eligible):
            return WorkerSize(f"auto/{size.profile}", size.cpu_millis, size.memory, spec.gpus)
    first = sizes[0]
    return WorkerSize(f"auto/{first.profile}", first.cpu_millis, first.memory, spec.gpus)


def _free(node: NodeInfo, config: OperatorConfig) -> Capacity:
    alloc, used = node.allocatable, node.requested
    return Capacity(
        cpu_millis=max(
            0, int(alloc.cpu_millis * (1 - config.reserved_cpu_fraction)) - used.cpu_millis
        ),
        memory=max(0, int(alloc.memory * (1 - config.reserved_memory_fraction)) - used.memory),
        gpus=max(0, alloc.gpus - used.gpus),
        pods=max(0, alloc.pods - used.pods),
    )


def _per_resource(node: NodeInfo, size: WorkerSize, config: OperatorConfig) -> dict[str, int]:
    free = _free(node, config)
    return {
        "cpu": free.cpu_millis // size.cpu_millis if size.cpu_millis else UNLIMITED,
        "memory": free.memory // size.memory if size.memory else UNLIMITED,
        "gpu": free.gpus // size.gpus if size.gpus else UNLIMITED,
        "pods": free.pods,
    }


def _per_node(node: NodeInfo, size: WorkerSize, config: OperatorConfig) -> int:
    """Workers of ``size`` the node holds now, over every resource."""
    return min(_per_resource(node, size, config).values())


def _holds_one_when_empty(node: NodeInfo, size: WorkerSize, config: OperatorConfig) -> bool:
    empty = NodeInfo(node.name, node.allocatable, Capacity(), node.labels, node.taints)
    return _per_node(empty, size, config) >= 1


def _quota_workers(quota: QuotaHeadroom, size: WorkerSize) -> int:
    limits = [UNLIMITED]
    if quota.cpu_millis is not None and size.cpu_millis:
        limits.append(max(0, quota.cpu_millis) // size.cpu_millis)
    if quota.memory is not None and size.memory:
        limits.append(max(0, quota.memory) // size.memory)
    if quota.gpus is not None and size.gpus:
        limits.append(max(0, quota.gpus) // size.gpus)
    if quota.pods is not None:
        limits.append(max(0, quota.pods))
    return min(limits)


def _split_by_weight(replicas: int, pools: Sequence[tuple[str, int, int]]) -> dict[str, int]:
    """Share replicas over (name, weight, fit) pools by weight, capped by fit; weight 0 last."""
    share = {name: 0 for name, _, _ in pools}
    remaining = replicas
    for weighted in (True, False):
        active = [(n, w or 1, f) for n, w, f in pools if (w > 0) == weighted]
        while remaining > 0:
            open_pools = [(n, w, f) for n, w, f in active if share[n] < f]
            if not open_pools:
                break
            total_weight = sum(w for _, w, _ in open_pools)
            handed = 0
            for name, weight, fit in open_pools:
                want = max(1, (remaining * weight) // total_weight)
                give = min(want, fit - share[name], remaining - handed)
                share[name] += give
                handed += give
                if handed >= remaining:
                    break
            if handed == 0:
                break
            remaining -= handed
    return share


def compute_plan(
    spec: EvalRunSpec,
    nodes: Sequence[NodeInfo],
    demand: Demand,
    config: OperatorConfig,
    *,
    quota: QuotaHeadroom | None = None,
    spot_fallback: bool = False,
    placed: Mapping[str, int] | None = None,
) -> PlanResult:
    """How many workers to run now, and which limit decided it. ``placed``: the run's live
    workers bound to each node (what its topology spread counts already)."""
    placement = spec.placement
    w_max, target = spec.workers.max, spec.workers.target_backlog_per_worker
    size = resolve_size(spec, config, nodes)
    tolerations = worker_tolerations(spec, spot_fallback)
    eligible = [n for n in nodes if not ineligibility(spec, n, spot_fallback, tolerations)]
    feasible = any(_holds_one_when_empty(n, size, config) for n in eligible)
    per_node, resource_limit = _fit(eligible, size, config, placement)
    fit = sum(per_node.values())

    demand_workers = math.ceil(demand.backlog / target) if demand.backlog > 0 else 0
    quota_workers = _quota_workers(quota or QuotaHeadroom(), size)
    domains = {n.name: n.labels for n in nodes if not _unmatched(spec, n, spot_fallback)}
    want = min(fit, quota_workers, w_max, demand_workers)
    spread = spread_limit(placement.spread_constraints(), domains, per_node, placed or {}, want)
    limits: list[tuple[LimitName, int]] = [
        (resource_limit, fit),
        ("spread", UNLIMITED if spread.workers is None else spread.workers),
        ("quota", quota_workers),
        ("max", w_max),
        ("backlog", demand_workers),
    ]
    bound_by, replicas = _binding(spec, demand, limits)
    message = (
        f"{replicas} workers of {size.profile} ({format_cpu(size.cpu_millis)} CPU, "
        f"{format_bytes(size.memory)}"
        + (f", {size.gpus} GPU" if size.gpus else "")
        + f"): bound by {bound_by}; fit {fit} on {len(eligible)} eligible nodes"
        + _exclusive_note(placement, eligible)
        + (f", {spread.message}" if spread.message else "")
        + f", backlog {demand.backlog} batches wants {demand_workers}, max {w_max}"
        + (f", quota allows {quota_workers}" if quota_workers < UNLIMITED else "")
    )
    return PlanResult(
        replicas=replicas,
        fit=fit,
        bound_by=bound_by,
        size=size,
        eligible_nodes=tuple(n.name for n in eligible),
        pools=_pool_plans(spec, placement, eligible, per_node, replicas),
        message=message,
        feasible=feasible,
        infeasible_reason=_infeasible_reason(
            spec, nodes, eligible, feasible=feasible, size=size, spot_fallback=spot_fallback
        ),
        per_node=tuple(NodeFit(n.name, pool_of(spec, n) or "", per_node[n.name]) for n in eligible),
    )


def _binding(
    spec: EvalRunSpec, demand: Demand, limits: Sequence[tuple[LimitName, int]]
) -> tuple[LimitName, int]:
    """The smallest limit (the first listed on a tie), unless the run is cancelled, suspended,
    done, or held up to workers.min."""
    if spec.cancel:
        return "cancelled", 0
    if spec.suspend:
        return "suspended", 0
    if not demand.work_remaining:
        return "done", 0
    bound_by, replicas = min(limits, key=lambda item: item[1])
    if replicas < spec.workers.min:
        return "min", spec.workers.min
    return bound_by, replicas


def _exclusive_note(placement: RunPlacement, eligible: Sequence[NodeInfo]) -> str:
    if not placement.exclusive:
        return ""
    busy = sum(1 for n in eligible if n.neighbours)
    return f" (exclusive: {busy} of them hold other pods)"


def _infeasible_reason(
    spec: EvalRunSpec,
    nodes: Sequence[NodeInfo],
    eligible: Sequence[NodeInfo],
    *,
    feasible: bool,
    size: WorkerSize,
    spot_fallback: bool,
) -> str:
    """Why no worker can run at all ("" when one can)."""
    if not eligible:
        reasons = sorted({ineligibility(spec, n, spot_fallback) for n in nodes})
        return "no eligible node" + (f": {'; '.join(reasons)}" if reasons else " in the cluster")
    if not feasible:
        return (
            f"no eligible node can hold one worker of profile {size.profile} "
            f"({format_cpu(size.cpu_millis)} CPU, {format_bytes(size.memory)} memory"
            + (f", {size.gpus} GPU" if size.gpus else "")
            + ") after reserved margins; choose a smaller profile or add larger nodes"
        )
    return ""


def _fit(
    eligible: Sequence[NodeInfo], size: WorkerSize, config: OperatorConfig, placement: RunPlacement
) -> tuple[dict[str, int], LimitName]:
    """Workers that fit on each eligible node, and the resource that limits them most. An
    exclusive worker is alone on its node: one per node, and none where other pods run."""
    one_per_node = placement.spread == "required" or placement.exclusive
    hosts = [n for n in eligible if not (placement.exclusive and n.neighbours)]
    per_node = dict.fromkeys((n.name for n in eligible), 0)
    totals = {"cpu": 0, "memory": 0, "gpu": 0, "pods": 0}
    for node in hosts:
        by_resource = _per_resource(node, size, config)
        node_fit = min(by_resource.values())
        per_node[node.name] = min(node_fit, 1) if one_per_node else node_fit
        for key, value in by_resource.items():
            totals[key] = min(UNLIMITED, totals[key] + value)
    if size.gpus == 0:
        totals.pop("gpu")
    resource_limit: LimitName = "cpu"
    smallest = min(totals.values()) if totals else 0
    for key in ("cpu", "memory", "gpu", "pods"):
        if key in totals and totals[key] == smallest:
            resource_limit = key  # type: ignore[assignment]
            break
    if (one_per_node and len(hosts) <= smallest) or not hosts:
        resource_limit = "nodes"
    return per_node, resource_limit


def _pool_plans(
    spec: EvalRunSpec,
    placement: Placement,
    eligible: Sequence[NodeInfo],
    per_node: dict[str, int],
    replicas: int,
) -> tuple[PoolPlan, ...]:
    """The replicas shared over ``placement.pools`` by weight, each within what fits in it."""
    if not placement.pools:
        return ()
    pool_fit: dict[str, int] = {p.name: 0 for p in placement.pools}
    for node in eligible:
        pool = pool_of(spec, node)
        if pool:
            pool_fit[pool] += per_node[node.name]
    split = _split_by_weight(
        replicas, [(p.name, p.weight, pool_fit[p.name]) for p in placement.pools]
    )
    return tuple(
        PoolPlan(name=p.name, replicas=split[p.name], fit=pool_fit[p.name]) for p in placement.pools
    )


# The planner's inputs (proctor.planning.nodes) are importable from here too.
__all__ = [
    "GPU_RESOURCE",
    "SPOT_LABELS",
    "SPOT_TAINT_KEYS",
    "UNLIMITED",
    "Capacity",
    "Demand",
    "NodeFit",
    "NodeInfo",
    "PlanResult",
    "QuotaHeadroom",
    "Taint",
    "WorkerSize",
    "compute_plan",
    "ineligibility",
    "pool_for_new_pod",
    "pool_of",
    "resolve_size",
    "spot_allowed",
    "tolerates",
    "worker_tolerations",
]
