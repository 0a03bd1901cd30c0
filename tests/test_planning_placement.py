"""Planning with exclusive workers and topology spread constraints, table-driven: each case
names the limit that must bind, and the spread simulation alone on a table of domains."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import pytest

from proctor.api.v1alpha1.evalrun import EvalRunSpec
from proctor.api.v1alpha1.placement import TopologySpread
from proctor.config import OperatorConfig
from proctor.planning.plan import Capacity, Demand, NodeInfo, Taint, compute_plan
from proctor.planning.spread import spread_limit

GI = 2**30
CONFIG = OperatorConfig()
ZONE = "topology.kubernetes.io/zone"
HOST = "kubernetes.io/hostname"


def node(
    name: str,
    zone: str = "",
    *,
    cpu: int = 8,
    used_cpu_m: int = 0,
    gpus: int = 0,
    neighbours: int = 0,
    taints: tuple[Taint, ...] = (),
    labels: dict[str, str] | None = None,
) -> NodeInfo:
    """A node of ``cpu`` cores (6 small workers when idle: 20% is reserved), in ``zone``."""
    tags = {HOST: name, **({ZONE: zone} if zone else {}), **(labels or {})}
    return NodeInfo(
        name=name,
        allocatable=Capacity(cpu * 1000, 32 * GI, gpus, 110),
        requested=Capacity(used_cpu_m, 0, 0, neighbours),
        labels=tags,
        taints=taints,
        neighbours=neighbours,
    )


def spec(**placement: Any) -> EvalRunSpec:
    return EvalRunSpec.model_validate(
        {
            "image": "img",
            "task": {"entrypoint": "m:t"},
            "cases": {"count": 1000},
            "profile": "small",
            "workers": {"max": 100},
            "placement": placement,
        }
    )


def zones(max_skew: int = 1, **extra: Any) -> list[dict[str, Any]]:
    return [{"topologyKey": ZONE, "maxSkew": max_skew, **extra}]


@dataclass
class Case:
    spec: EvalRunSpec
    nodes: list[NodeInfo]
    replicas: int
    bound_by: str
    backlog: int = 1000
    placed: dict[str, int] = field(default_factory=dict)
    message: str = ""  # a part the plan's message must hold


FULL = 8000  # used CPU that leaves a node no room
NO_GPU_TAINT = (Taint("dedicated", "NoSchedule", "db"),)
CASES = {
    "exclusive: one per node": Case(
        spec(isolation="exclusive"), [node("a"), node("b"), node("c")], 3, "nodes"
    ),
    "exclusive: nodes with other pods hold none": Case(
        spec(isolation="exclusive"),
        [node("a", neighbours=1), node("b"), node("c", neighbours=2)],
        1,
        "nodes",
        message="exclusive: 2 of them hold other pods",
    ),
    "exclusive: every node busy": Case(
        spec(isolation="exclusive"), [node("a", neighbours=1)], 0, "nodes"
    ),
    "exclusive: spent resources are not neighbours": Case(
        spec(isolation="exclusive"),
        [node("a", used_cpu_m=3000), node("b", used_cpu_m=FULL)],
        1,
        "nodes",
    ),
    "exclusive: backlog still binds": Case(
        spec(isolation="exclusive"), [node("a"), node("b")], 1, "backlog", backlog=1
    ),
    "shared: other pods only take resources": Case(
        spec(), [node("a", neighbours=1, used_cpu_m=1000), node("b")], 11, "cpu"
    ),
    "default zone rule never binds": Case(
        spec(), [node("a", "z1"), node("b", "z1"), node("c", "z2", used_cpu_m=FULL)], 12, "cpu"
    ),
    "ScheduleAnyway never binds": Case(
        spec(topologySpread=zones(whenUnsatisfiable="ScheduleAnyway")),
        [node("a", "z1"), node("b", "z1"), node("c", "z2", used_cpu_m=FULL)],
        12,
        "cpu",
    ),
    "zones even: the small zones hold the big one down": Case(
        spec(topologySpread=zones()),
        [node("a1", "a"), node("a2", "a"), node("b1", "b"), node("c1", "c")],
        19,  # b and c full at 6, a at most 7
        "spread",
        message=f"spread allows 19: {ZONE} maxSkew 1 (a=7, b=6, c=6)",
    ),
    "a full zone leaves the others maxSkew each": Case(
        spec(topologySpread=zones(max_skew=2)),
        [node("a", "a"), node("b", "b"), node("c", "c", used_cpu_m=FULL)],
        4,
        "spread",
    ),
    "a zone of busy nodes counts as empty for an exclusive run": Case(
        spec(isolation="exclusive", topologySpread=zones()),
        [node("a1", "a"), node("a2", "a"), node("b1", "b"), node("c1", "c", neighbours=1)],
        2,
        "spread",
    ),
    "nodes the workers do not tolerate are no domain": Case(
        spec(topologySpread=zones()),
        [node("a", "a"), node("b", "b"), node("c", "c", taints=NO_GPU_TAINT)],
        12,
        "cpu",
    ),
    "nodes without a GPU are domains of a GPU run": Case(
        spec(topologySpread=zones()).model_copy(update={"gpus": 1}),
        [node("a", "a", gpus=4), node("b", "b", gpus=4), node("c", "c")],
        2,
        "spread",
    ),
    "no node carries the key": Case(
        spec(topologySpread=[{"topologyKey": "example.com/rack"}]),
        [node("a", "a"), node("b", "b")],
        0,
        "spread",
        message="spread allows 0: no eligible node carries the label(s) example.com/rack",
    ),
    "nodes without the key take no worker": Case(
        spec(topologySpread=[{"topologyKey": "rack"}]),
        [node("a", labels={"rack": "r1"}), node("b", labels={"rack": "r2"}), node("c")],
        12,
        "spread",
        message="spread allows 12: the nodes with room lack the label(s) rack",
    ),
    "hostname spread over a full node": Case(
        spec(topologySpread=[{"topologyKey": HOST, "maxSkew": 1}]),
        [node("a"), node("b"), node("c", used_cpu_m=FULL)],
        2,
        "spread",
    ),
    "minDomains caps every domain at maxSkew": Case(
        spec(topologySpread=zones(max_skew=2, minDomains=4)),
        [node("a", "a"), node("b", "b"), node("c", "c")],
        6,
        "spread",
        message="minDomains 4",
    ),
    "zone and node constraints together": Case(
        spec(topologySpread=[*zones(), {"topologyKey": HOST, "maxSkew": 1}]),
        [node("a1", "a"), node("a2", "a"), node("b1", "b")],
        5,  # a1=2, a2=1, b1=2: nodes within 1 of each other, zone a (3) within 1 of b (2)
        "spread",
    ),
    "spread that would allow more than the backlog": Case(
        spec(topologySpread=zones()),
        [node("a", "a"), node("b", "b"), node("c", "c", used_cpu_m=FULL)],
        2,
        "backlog",
        backlog=4,  # 2 batches a worker
    ),
    "placed workers count": Case(
        spec(topologySpread=zones()),
        [node("a", "a"), node("b", "b"), node("c", "c", used_cpu_m=FULL)],
        4,  # a holds 3 already and c can take none, so b rises to 1 and a is past its skew
        "spread",
        placed={"a": 3},
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_plan(case: Case) -> None:
    before = copy.deepcopy(case.nodes)
    result = compute_plan(
        case.spec, case.nodes, Demand(backlog=case.backlog), CONFIG, placed=case.placed
    )
    assert (result.replicas, result.bound_by) == (case.replicas, case.bound_by), result.message
    assert case.message in result.message
    if case.bound_by != "spread":
        assert "spread allows" not in result.message  # shown only when it binds
    assert case.nodes == before  # inputs are not mutated
    assert result.to_status().bound_by == case.bound_by


def spread(key: str = "zone", max_skew: int = 1, min_domains: int | None = None) -> TopologySpread:
    return TopologySpread(topology_key=key, max_skew=max_skew, min_domains=min_domains)


def domains(**zone_of: str) -> dict[str, dict[str, str]]:
    return {n: {"zone": z} for n, z in zone_of.items()}


@dataclass
class Limit:
    constraints: list[TopologySpread]
    labels: dict[str, dict[str, str]]  # node -> its labels
    room: dict[str, int]
    want: int
    allowed: int | None  # None: all wanted
    placed: dict[str, int] = field(default_factory=dict)


LIMITS = {
    "no constraint": Limit([], domains(a="1"), {"a": 1}, 5, None),
    "even zones reach what is wanted": Limit(
        [spread()], domains(a="1", b="2"), {"a": 3, "b": 3}, 6, None
    ),
    "an uneven zone stops at its room + maxSkew": Limit(
        [spread()], domains(a="1", b="2"), {"a": 5, "b": 1}, 6, 3
    ),
    "maxSkew 2": Limit([spread(max_skew=2)], domains(a="1", b="2"), {"a": 5, "b": 1}, 6, 4),
    "a room-less domain holds the rest at maxSkew": Limit(
        [spread(max_skew=3)], domains(a="1", b="2", c="3"), {"a": 9, "b": 9}, 18, 6
    ),
    "placed workers keep their domain's count": Limit(
        [spread()], domains(a="1", b="2"), {"a": 5, "b": 2}, 7, 5, placed={"a": 2}
    ),
    "placed workers past the wanted number": Limit(
        [spread()], domains(a="1"), {"a": 5}, 3, None, placed={"a": 4}
    ),
    "minDomains over two zones": Limit(
        [spread(min_domains=3)], domains(a="1", b="2"), {"a": 5, "b": 5}, 10, 2
    ),
    # Nodes within 1 of each other and zones within 1: 333 nodes of each zone hold 2, one
    # node of the bigger zone 1 (zones 667/666/666); the true maximum.
    "zones and nodes over 1000 nodes": Limit(
        [spread(), spread(key="host")],
        {f"n{i}": {"zone": f"z{i % 3}", "host": f"n{i}"} for i in range(1000)},
        {f"n{i}": 6 for i in range(1000)},
        5000,
        1999,
    ),
    "nodes without the key are not members": Limit(
        [spread(key="rack")], domains(a="1"), {"a": 5}, 5, 0
    ),
}


@pytest.mark.parametrize("case", LIMITS.values(), ids=LIMITS.keys())
def test_spread_limit(case: Limit) -> None:
    before = copy.deepcopy(case)
    limit = spread_limit(case.constraints, case.labels, case.room, case.placed, case.want)
    assert limit.workers == case.allowed, limit.message
    assert bool(limit.message) == (case.allowed is not None)
    assert case == before  # inputs are not mutated
