"""Capacity planning, table-driven: each case names the limit that must bind."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import pytest

from proctor.api.v1alpha1.evalrun import EvalRunSpec, PoolPlan
from proctor.config import OperatorConfig, ProfileSize
from proctor.planning.plan import (
    Capacity,
    Demand,
    NodeInfo,
    QuotaHeadroom,
    Taint,
    compute_plan,
    ineligibility,
    pool_for_new_pod,
    resolve_size,
    worker_tolerations,
)

GI = 2**30
CONFIG = OperatorConfig()


def node(
    name: str,
    *,
    cpu: int = 8,
    mem_gi: int = 32,
    gpus: int = 0,
    pods: int = 110,
    used_cpu_m: int = 0,
    used_mem_gi: int = 0,
    labels: dict[str, str] | None = None,
    taints: tuple[Taint, ...] = (),
    ready: bool = True,
    unschedulable: bool = False,
) -> NodeInfo:
    return NodeInfo(
        name=name,
        allocatable=Capacity(cpu * 1000, mem_gi * GI, gpus, pods),
        requested=Capacity(used_cpu_m, used_mem_gi * GI, 0, 0),
        labels=labels or {},
        taints=taints,
        ready=ready,
        unschedulable=unschedulable,
    )


BASE: dict[str, Any] = {
    "image": "img",
    "task": {"entrypoint": "m:t"},
    "cases": {"count": 1000},
    "profile": "small",
    "workers": {"max": 100},
}


def spec(**changes: Any) -> EvalRunSpec:
    data = copy.deepcopy(BASE)
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return EvalRunSpec.model_validate(data)


@dataclass
class Case:
    spec: EvalRunSpec
    nodes: list[NodeInfo]
    replicas: int
    bound_by: str
    backlog: int = 1000
    work_remaining: bool = True
    quota: QuotaHeadroom | None = None
    fit: int | None = None
    pools: dict[str, int] = field(default_factory=dict)


SPOT = {"karpenter.sh/capacity-type": "spot"}
CASES = {
    # 8 CPU - 20% = 6400m -> 6 small workers per node; memory would allow 24.
    "cpu": Case(spec(), [node("a"), node("b")], 12, "cpu", fit=12),
    # 8Gi - 25% = 6Gi -> 6 per node; CPU would allow 12.
    "memory": Case(spec(), [node("a", cpu=16, mem_gi=8)], 6, "memory"),
    "gpu": Case(
        spec(gpus=1),
        [node("g1", cpu=32, mem_gi=128, gpus=2), node("g2", cpu=32, mem_gi=128, gpus=2)],
        4,
        "gpu",
    ),
    "max": Case(spec(workers={"max": 3}), [node("a"), node("b")], 3, "max"),
    "backlog": Case(spec(), [node("a"), node("b")], 2, "backlog", backlog=4),
    "backlog rounds up": Case(spec(), [node("a")], 3, "backlog", backlog=5),
    "quota": Case(spec(), [node("a"), node("b")], 3, "quota", quota=QuotaHeadroom(cpu_millis=3500)),
    "quota pods": Case(spec(), [node("a")], 2, "quota", quota=QuotaHeadroom(pods=2)),
    "required spread": Case(
        spec(placement={"spread": "required"}), [node("a"), node("b"), node("c")], 3, "nodes"
    ),
    "min while work remains": Case(
        spec(workers={"min": 2, "max": 5}), [node("a")], 2, "min", backlog=0
    ),
    "done": Case(spec(workers={"min": 2, "max": 5}), [node("a")], 0, "done", work_remaining=False),
    "suspended": Case(spec(suspend=True), [node("a")], 0, "suspended"),
    "requests of other pods": Case(spec(), [node("a", used_cpu_m=4000)], 2, "cpu"),
    "untolerated taint": Case(
        spec(), [node("a"), node("t", taints=(Taint("dedicated", "NoSchedule", "db"),))], 6, "cpu"
    ),
    "tolerated taint": Case(
        spec(placement={"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db"}]}),
        [node("a"), node("t", taints=(Taint("dedicated", "NoSchedule", "db"),))],
        12,
        "cpu",
    ),
    "prefer-no-schedule is not a bar": Case(
        spec(), [node("a", taints=(Taint("x", "PreferNoSchedule"),))], 6, "cpu"
    ),
    "spot excluded": Case(
        spec(placement={"spot": {"allowed": False}}), [node("a"), node("s", labels=SPOT)], 6, "cpu"
    ),
    "spot allowed": Case(spec(), [node("a"), node("s", labels=SPOT)], 12, "cpu"),
    "node selector": Case(
        spec(placement={"nodeSelector": {"pool": "x"}}),
        [node("a", labels={"pool": "x"}), node("b")],
        6,
        "cpu",
    ),
    "not ready and cordoned": Case(
        spec(), [node("a"), node("b", ready=False), node("c", unschedulable=True)], 6, "cpu"
    ),
    "pods limit": Case(spec(profile="micro"), [node("a", pods=3)], 3, "pods"),
    "pools by weight": Case(
        spec(
            workers={"max": 8},
            placement={
                "pools": [
                    {"name": "spot", "nodeSelector": {"p": "s"}, "weight": 3},
                    {"name": "ondemand", "nodeSelector": {"p": "o"}, "weight": 1},
                ]
            },
        ),
        [
            node("s1", labels={"p": "s"}),
            node("s2", labels={"p": "s"}),
            node("o1", labels={"p": "o"}),
        ],
        8,
        "max",
        pools={"spot": 6, "ondemand": 2},
    ),
    "pool capped by fit": Case(
        spec(
            workers={"max": 10},
            placement={
                "pools": [
                    {"name": "a", "nodeSelector": {"p": "a"}, "weight": 9},
                    {"name": "b", "nodeSelector": {"p": "b"}, "weight": 1},
                ]
            },
        ),
        [
            node("a1", labels={"p": "a"}),
            node("b1", labels={"p": "b"}),
            node("b2", labels={"p": "b"}),
        ],
        10,
        "max",
        pools={"a": 6, "b": 4},
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_plan(case: Case) -> None:
    before = copy.deepcopy(case.nodes)
    result = compute_plan(
        case.spec,
        case.nodes,
        Demand(backlog=case.backlog, work_remaining=case.work_remaining),
        CONFIG,
        quota=case.quota,
    )
    assert (result.replicas, result.bound_by) == (case.replicas, case.bound_by), result.message
    if case.fit is not None:
        assert result.fit == case.fit
    if case.pools:
        assert {p.name: p.replicas for p in result.pools} == case.pools
        assert sum(case.pools.values()) == result.replicas
    assert case.nodes == before  # inputs are not mutated
    status = result.to_status()
    assert status.bound_by == case.bound_by
    assert status.replicas == case.replicas


def test_profile_too_large_is_infeasible_with_a_reason() -> None:
    result = compute_plan(spec(profile="xlarge"), [node("a", cpu=4)], Demand(10), CONFIG)
    assert result.replicas == 0
    assert not result.feasible
    assert "no eligible node can hold one worker of profile xlarge" in result.infeasible_reason


def test_busy_nodes_are_not_infeasible() -> None:
    result = compute_plan(spec(), [node("a", used_cpu_m=6400)], Demand(10), CONFIG)
    assert result.replicas == 0
    assert result.feasible


def test_no_eligible_node_says_why() -> None:
    result = compute_plan(
        spec(placement={"nodeSelector": {"pool": "gpu"}}), [node("a")], Demand(10), CONFIG
    )
    assert not result.feasible
    assert result.infeasible_reason == (
        "no eligible node: node does not match placement.nodeSelector"
    )


def test_spot_fallback_moves_off_spot() -> None:
    nodes = [node("a"), node("s", labels=SPOT)]
    assert compute_plan(spec(), nodes, Demand(100), CONFIG, spot_fallback=True).fit == 6
    assert "spot" in ineligibility(spec(), nodes[1], spot_fallback=True)


@pytest.mark.parametrize(
    ("nodes", "gpus", "expected"),
    [
        ([node("a")], 0, "auto/small"),
        ([node("tiny", cpu=1, mem_gi=2)], 0, "auto/micro"),
        ([node("g", cpu=16, mem_gi=64, gpus=1)], 1, "auto/large"),
        ([node("g", cpu=4, mem_gi=16, gpus=1)], 1, "auto/medium"),
    ],
)
def test_auto_profile(nodes: list[NodeInfo], gpus: int, expected: str) -> None:
    assert resolve_size(spec(profile="auto", gpus=gpus), CONFIG, nodes).profile == expected


def test_profile_override_from_config() -> None:
    config = OperatorConfig(profiles={"small": ProfileSize(cpu="1500m", memory="3Gi")})
    size = resolve_size(spec(), config)
    assert (size.cpu_millis, size.memory) == (1500, 3 * GI)


def test_explicit_resources() -> None:
    size = resolve_size(spec(profile=None, resources={"cpu": "250m", "memory": "256Mi"}), CONFIG)
    assert (size.profile, size.cpu_millis, size.memory) == ("custom", 250, 256 * 2**20)


def test_worker_tolerations_cover_gpu_and_spot() -> None:
    keys = {t.key for t in worker_tolerations(spec(gpus=1))}
    assert "nvidia.com/gpu" in keys
    assert "cloud.google.com/gke-spot" in keys
    no_spot = {t.key for t in worker_tolerations(spec(placement={"spot": {"allowed": False}}))}
    assert "cloud.google.com/gke-spot" not in no_spot


SPLIT = (PoolPlan(name="on-demand", replicas=6, fit=10), PoolPlan(name="spot", replicas=2, fit=10))
# (name, workers per pool now, expected pool of the next new worker)
NEW_POD_POOLS = [
    ("first worker", {}, "on-demand"),
    ("a lost spot worker is replaced on spot", {"on-demand": 6, "spot": 1}, "spot"),
    ("a lost on-demand worker is replaced on on-demand", {"on-demand": 5, "spot": 2}, "on-demand"),
    ("the further below its plan wins", {"on-demand": 5, "spot": 0}, "spot"),
    ("a tie goes to the pool listed first", {"on-demand": 5, "spot": 1}, "on-demand"),
    ("every pool full", {"on-demand": 6, "spot": 2}, ""),
    ("workers of a pool no longer planned do not matter", {"old": 3, "on-demand": 6}, "spot"),
]


@pytest.mark.parametrize(
    ("name", "current", "expected"), NEW_POD_POOLS, ids=[c[0] for c in NEW_POD_POOLS]
)
def test_also_replacements_restore_the_plans_pool_split(
    name: str, current: dict[str, int], expected: str
) -> None:
    assert pool_for_new_pod(SPLIT, current) == expected


def test_also_no_pools_no_pool() -> None:
    assert pool_for_new_pod((), {"": 3}) == ""


def test_also_a_6_2_plan_stays_6_2_through_losses() -> None:
    workers = ["on-demand"] * 6 + ["spot"] * 2
    for lost in ("spot", "on-demand", "spot", "spot", "on-demand"):
        workers.remove(lost)
        counts = {p: workers.count(p) for p in set(workers)}
        workers.append(pool_for_new_pod(SPLIT, counts))
        assert sorted(workers).count("on-demand") == 6
