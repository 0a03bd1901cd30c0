"""Scaling decisions and conditions, table-driven."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from proctor.api.conditions import get_condition, is_true, set_condition
from proctor.api.v1alpha1.base import Condition
from proctor.planning.scaling import ScaleState, WorkerPod, busy_workers, decide

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def pod(name: str, age_s: int = 100, *, ready: bool = True, scheduled: bool = True) -> WorkerPod:
    return WorkerPod(name, T0 - timedelta(seconds=age_s), ready=ready, scheduled=scheduled)


@dataclass
class Case:
    desired: int
    pods: list[WorkerPod]
    busy: set[str]
    lower_since_s_ago: float | None
    create: int
    delete: tuple[str, ...]
    held: int = 0


CASES = {
    "scale up at once": Case(5, [pod("a")], set(), None, 4, ()),
    "scale up resets the window": Case(3, [pod("a")], set(), 100.0, 2, ()),
    "steady": Case(2, [pod("a"), pod("b")], {"a"}, None, 0, ()),
    "down waits for the window": Case(1, [pod("a"), pod("b")], set(), 5.0, 0, ()),
    "down after the window removes newest idle": Case(
        1, [pod("old", 300), pod("new", 10)], set(), 60.0, 0, ("new",)
    ),
    "never a busy worker": Case(0, [pod("a"), pod("b")], {"a", "b"}, 60.0, 0, (), held=2),
    "busy kept, idle removed": Case(1, [pod("a", 300), pod("b", 10)], {"b"}, 60.0, 0, ("a",)),
    "unscheduled first": Case(
        2, [pod("r1", 300), pod("r2", 200), pod("p", 10, scheduled=False)], set(), 60.0, 0, ("p",)
    ),
    "terminating pods do not count": Case(
        2, [pod("a"), WorkerPod("gone", T0, ready=True, terminating=True)], set(), None, 1, ()
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_decide(case: Case) -> None:
    state = ScaleState(
        None if case.lower_since_s_ago is None else T0 - timedelta(seconds=case.lower_since_s_ago)
    )
    decision = decide(case.desired, case.pods, case.busy, state, now=T0, stabilization_seconds=30)
    assert decision.create == case.create
    assert decision.delete == case.delete
    assert decision.held == case.held
    assert not set(decision.delete) & case.busy


def test_window_starts_on_first_lower_pass() -> None:
    first = decide(1, [pod("a"), pod("b")], set(), ScaleState(), now=T0, stabilization_seconds=30)
    assert first.state.lower_since == T0
    assert first.delete == ()
    later = decide(
        1,
        [pod("a"), pod("b")],
        set(),
        first.state,
        now=T0 + timedelta(seconds=31),
        stabilization_seconds=30,
    )
    assert len(later.delete) == 1


def test_condition_keeps_transition_time_unless_status_flips() -> None:
    conds = set_condition([], "Ready", "False", "Pending", "", now=T0, generation=1)
    later = T0 + timedelta(minutes=5)
    same = set_condition(conds, "Ready", "False", "StillPending", "x", now=later, generation=2)
    assert same[0].last_transition_time == "2026-01-01T00:00:00Z"
    assert same[0].reason == "StillPending"
    assert same[0].observed_generation == 2
    flipped = set_condition(same, "Ready", "True", "Running", "", now=later, generation=2)
    assert flipped[0].last_transition_time == "2026-01-01T00:05:00Z"
    assert is_true(flipped, "Ready")
    assert conds[0].reason == "Pending"  # the input list was not changed


def test_conditions_other_types_untouched() -> None:
    base = [
        Condition(type="A", status="True", reason="r", last_transition_time="t"),
        Condition(type="B", status="False", reason="r", last_transition_time="t"),
    ]
    out = set_condition(base, "B", "True", "x", "", now=T0, generation=None)
    assert out[0] == base[0]
    assert get_condition(out, "B") is not None
    assert get_condition(out, "C") is None


BUSY_CASES = [
    # (name, holders, waiting, in_flight, busy)
    ("nothing out", frozenset(), 0, 0, set()),
    ("holders known, nothing waits: exactly the holders", frozenset({"b"}), 0, 1, {"b"}),
    ("a holder that is not a worker pod is ignored", frozenset({"gone", "a"}), 0, 2, {"a"}),
    ("holders known but work waits: every worker", frozenset({"b"}), 3, 1, {"a", "b", "c"}),
    ("holders unknown (SQS), a lease out: every worker", None, 0, 1, {"a", "b", "c"}),
    ("holders unknown, nothing out: nobody", None, 0, 0, set()),
    ("waiting only: nobody holds anything yet", frozenset(), 4, 0, set()),
]


@pytest.mark.parametrize(
    ("holders", "waiting", "in_flight", "busy"),
    [c[1:] for c in BUSY_CASES],
    ids=[c[0] for c in BUSY_CASES],
)
def test_busy_workers(
    holders: frozenset[str] | None, waiting: int, in_flight: int, busy: set[str]
) -> None:
    names = ["a", "b", "c"]
    got = busy_workers(names, holders=holders, waiting=waiting, in_flight=in_flight)
    assert got == frozenset(busy)


def test_scale_down_with_named_holders_removes_only_idle_workers() -> None:
    pods = [pod("a", 0), pod("b", 1), pod("c", 2)]
    busy = busy_workers(["a", "b", "c"], holders=frozenset({"c"}), waiting=0, in_flight=1)
    decision = decide(
        1, pods, busy, ScaleState(T0), now=T0 + timedelta(seconds=60), stabilization_seconds=30
    )
    assert set(decision.delete) == {"a", "b"}
    assert decision.held == 0
