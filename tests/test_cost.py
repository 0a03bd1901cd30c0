"""Cost, pure: node prices, a worker's share of its node, the cost accrued pass by pass, and
the estimate of a plan."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from proctor.api.v1alpha1.cost import CostStatus, PoolCost
from proctor.api.v1alpha1.evalrun import EvalRunSpec
from proctor.cluster.reads import hourly_price_of, node_info
from proctor.config import OperatorConfig, PriceTable
from proctor.planning.cost import (
    WorkerSpan,
    accrue,
    estimate_cost,
    estimate_seconds,
    hourly_price,
    node_share,
    place_workers,
)
from proctor.planning.plan import Capacity, Demand, NodeInfo, compute_plan

T0 = datetime(2026, 1, 1, tzinfo=UTC)
GIB = 2**30
SPOT = {"karpenter.sh/capacity-type": "spot"}
TABLE = PriceTable.model_validate(
    {
        "currency": "EUR",
        "instanceTypes": {"m5.xlarge": {"onDemand": 0.2, "spot": 0.08}},
        "default": {"onDemand": 1.0},
    }
)


def node(name: str = "n1", *, cpu: int = 4000, mem: int = 16, gpus: int = 0, **kw: Any) -> NodeInfo:
    return NodeInfo(name, Capacity(cpu, mem * GIB, gpus, 110), **kw)


M5 = {"node.kubernetes.io/instance-type": "m5.xlarge"}
PRICES: list[tuple[str, NodeInfo, PriceTable, float | None]] = [
    ("the node's own annotation wins", node(labels=M5, hourly_price=0.5), TABLE, 0.5),
    ("on-demand from the table", node(labels=M5), TABLE, 0.2),
    ("spot from the table", node(labels={**M5, **SPOT}), TABLE, 0.08),
    (
        "unknown type: the default row",
        node(labels={"node.kubernetes.io/instance-type": "x"}),
        TABLE,
        1.0,
    ),
    ("spot with no spot price in the default row", node(labels=SPOT), TABLE, None),
    (
        "the beta label counts too",
        node(labels={"beta.kubernetes.io/instance-type": "m5.xlarge"}),
        TABLE,
        0.2,
    ),
    ("no table, no annotation", node(labels=M5), PriceTable(), None),
]


@pytest.mark.parametrize(
    ("n", "table", "price"), [c[1:] for c in PRICES], ids=[c[0] for c in PRICES]
)
def test_hourly_price(n: NodeInfo, table: PriceTable, price: float | None) -> None:
    assert hourly_price(n, table) == price


@pytest.mark.parametrize(
    ("annotations", "price"),
    [
        pytest.param({"proctor.dev/hourly-price": "0.384"}, 0.384, id="a decimal"),
        pytest.param({"proctor.dev/hourly-price": " 2 "}, 2.0, id="spaces around"),
        pytest.param({"proctor.dev/hourly-price": "cheap"}, None, id="not a number"),
        pytest.param({"proctor.dev/hourly-price": "-1"}, None, id="negative"),
        pytest.param({"proctor.dev/hourly-price": "inf"}, None, id="infinite"),
        pytest.param({"proctor.dev/hourly-price": "nan"}, None, id="not a number (nan)"),
        pytest.param({}, None, id="none"),
    ],
)
def test_hourly_price_annotation(annotations: dict[str, str], price: float | None) -> None:
    assert hourly_price_of(annotations) == price


def test_node_info_reads_the_price_annotation() -> None:
    body = {
        "metadata": {"name": "n", "annotations": {"proctor.dev/hourly-price": "0.25"}},
        "status": {"allocatable": {"cpu": "4", "memory": "16Gi", "pods": "110"}},
    }
    assert node_info(body).hourly_price == 0.25


SHARES = [
    ("a quarter of the CPU", Capacity(1000, 1 * GIB), node(), 0.25),
    ("memory is the larger share", Capacity(1000, 8 * GIB), node(), 0.5),
    ("the GPU is the larger share", Capacity(1000, 1 * GIB, 1), node(gpus=2), 0.5),
    ("never more than the node", Capacity(8000, 1 * GIB), node(), 1.0),
    ("a node with nothing allocatable", Capacity(1000, GIB), NodeInfo("z", Capacity()), 0.0),
]


@pytest.mark.parametrize(
    ("requests", "n", "share"), [c[1:] for c in SHARES], ids=[c[0] for c in SHARES]
)
def test_node_share(requests: Capacity, n: NodeInfo, share: float) -> None:
    assert node_share(requests, n) == pytest.approx(share)


QUARTER = Capacity(1000, 1 * GIB)


def span(node_name: str, pool: str = "", since: datetime = T0) -> WorkerSpan:
    return WorkerSpan(node_name, pool, QUARTER, since)


NODES = {
    "od": node("od", labels=M5),
    "spot": node("spot", labels={**M5, **SPOT}),
    "free": node("free"),
}
NO_DEFAULT = TABLE.model_copy(update={"default": None})


def start(at: datetime = T0) -> CostStatus:
    return CostStatus(node_seconds=0.0, currency="EUR", accrued_until=at.isoformat())


ACCRUALS: list[tuple[str, CostStatus | None, list[WorkerSpan], float, CostStatus]] = [
    (
        "the first pass starts the count",
        None,
        [span("od")],
        3600,
        CostStatus(node_seconds=0.0, currency="EUR", accrued_until="later"),
    ),
    (
        "a quarter of an on-demand node for an hour",
        start(),
        [span("od")],
        3600,
        CostStatus(
            node_seconds=900.0,
            estimated_cost=0.05,
            currency="EUR",
            pools=[
                PoolCost(pool="default", capacity_type="on-demand", node_seconds=900.0, cost=0.05)
            ],
            accrued_until="later",
        ),
    ),
    (
        "spot and on-demand apart, by pool",
        start(),
        [span("od", "steady"), span("spot", "cheap"), span("spot", "cheap")],
        3600,
        CostStatus(
            node_seconds=2700.0,
            estimated_cost=0.05 + 0.04,
            currency="EUR",
            pools=[
                PoolCost(pool="cheap", capacity_type="spot", node_seconds=1800.0, cost=0.04),
                PoolCost(pool="steady", capacity_type="on-demand", node_seconds=900.0, cost=0.05),
            ],
            accrued_until="later",
        ),
    ),
    (
        "a node without a price: counted, not priced",
        start(),
        [span("free"), span("od")],
        3600,
        CostStatus(
            node_seconds=1800.0,
            estimated_cost=0.05,
            currency="EUR",
            unpriced_node_seconds=900.0,
            pools=[
                PoolCost(pool="default", capacity_type="on-demand", node_seconds=1800.0, cost=0.05)
            ],
            accrued_until="later",
        ),
    ),
    (
        "a worker created after the last pass counts from its creation",
        start(),
        [span("od", since=T0 + timedelta(seconds=1800))],
        3600,
        CostStatus(
            node_seconds=450.0,
            estimated_cost=0.025,
            currency="EUR",
            pools=[
                PoolCost(pool="default", capacity_type="on-demand", node_seconds=450.0, cost=0.025)
            ],
            accrued_until="later",
        ),
    ),
    (
        "a worker on a node that is gone is not charged",
        start(),
        [span("vanished")],
        3600,
        start().model_copy(update={"accrued_until": "later"}),
    ),
]


@pytest.mark.parametrize(
    ("previous", "workers", "seconds", "expected"),
    [c[1:] for c in ACCRUALS],
    ids=[c[0] for c in ACCRUALS],
)
def test_accrue(
    previous: CostStatus | None, workers: list[WorkerSpan], seconds: float, expected: CostStatus
) -> None:
    before = previous.model_copy(deep=True) if previous else None
    now = T0 + timedelta(seconds=seconds)
    got = accrue(previous, workers, NODES, NO_DEFAULT, now=now, until="later")
    assert_close(got, expected)
    assert previous == before  # not mutated


def assert_close(got: CostStatus, expected: CostStatus) -> None:
    assert got.node_seconds == pytest.approx(expected.node_seconds)
    assert got.estimated_cost == pytest.approx(expected.estimated_cost)
    assert got.unpriced_node_seconds == pytest.approx(expected.unpriced_node_seconds)
    assert [(p.pool, p.capacity_type) for p in got.pools or []] == [
        (p.pool, p.capacity_type) for p in expected.pools or []
    ]
    for g, e in zip(got.pools or [], expected.pools or [], strict=True):
        assert g.node_seconds == pytest.approx(e.node_seconds)
        assert g.cost == pytest.approx(e.cost)
    assert (got.currency, got.accrued_until) == (expected.currency, expected.accrued_until)


def test_accrual_pass_by_pass_equals_one_long_pass() -> None:
    """Twelve passes five minutes apart add up to what one pass an hour later counts."""
    cost = accrue(None, [], NODES, TABLE, now=T0, until=T0.isoformat())
    for n in range(1, 13):
        at = T0 + timedelta(minutes=5 * n)
        cost = accrue(cost, [span("od"), span("spot")], NODES, TABLE, now=at, until=at.isoformat())
    once = accrue(
        start(), [span("od"), span("spot")], NODES, TABLE, now=T0 + timedelta(hours=1), until="x"
    )
    assert cost.node_seconds == pytest.approx(once.node_seconds) == pytest.approx(1800.0)
    assert cost.estimated_cost == pytest.approx(once.estimated_cost)


def plan_for(nodes: list[NodeInfo], **spec: Any) -> Any:
    run = EvalRunSpec.model_validate(
        {
            "image": "i",
            "task": {"entrypoint": "m:t"},
            "cases": {"count": 1000},
            "profile": "small",
            **spec,
        }
    )
    return compute_plan(run, nodes, Demand(backlog=100), OperatorConfig())


def test_place_workers_spreads_within_each_pool() -> None:
    nodes = [node("a", labels=M5), node("b", labels=M5), node("s", labels={**M5, **SPOT})]
    plan = plan_for(
        nodes,
        workers={"max": 5},
        placement={
            "pools": [
                {
                    "name": "od",
                    "nodeSelector": {"node.kubernetes.io/instance-type": "m5.xlarge"},
                    "weight": 0,
                },
            ],
            "spot": {"allowed": False},
        },
    )
    assert plan.replicas == 5
    assert place_workers(plan) == {"a": 3, "b": 2}


def test_place_workers_without_pools_spreads_over_all_eligible_nodes() -> None:
    plan = plan_for([node("a"), node("b"), node("c", cpu=1000)], workers={"max": 4})
    # "c" holds none (1 CPU less the reserved 20% is under a small worker's 1 CPU).
    assert {n.name: n.fit for n in plan.per_node} == {"a": 3, "b": 3, "c": 0}
    assert place_workers(plan) == {"a": 2, "b": 2}


def test_estimate_cost_of_a_plan() -> None:
    nodes = [node("a", labels=M5), node("s", labels={**M5, **SPOT})]
    plan = plan_for(nodes, workers={"max": 2}, placement={"spread": "required"})
    placed = place_workers(plan)
    assert placed == {"a": 1, "s": 1}
    estimate = estimate_cost(plan, nodes, placed, TABLE, seconds=3600)
    # A small worker (1 CPU, 1Gi) holds a quarter of a 4-CPU node.
    assert estimate.status.node_seconds == pytest.approx(1800.0)
    assert estimate.status.estimated_cost == pytest.approx(0.25 * 0.2 + 0.25 * 0.08)
    kinds = {p.capacity_type: p.cost for p in estimate.status.pools or []}
    assert kinds == {"on-demand": pytest.approx(0.05), "spot": pytest.approx(0.02)}


@pytest.mark.parametrize(
    ("cases", "case_seconds", "replicas", "seconds"),
    [(1000, 0.5, 10, 50.0), (1000, 0.5, 0, None), (1, 2.0, 4, 0.5)],
)
def test_estimate_seconds(
    cases: int, case_seconds: float, replicas: int, seconds: float | None
) -> None:
    assert estimate_seconds(cases, case_seconds, replicas) == seconds
