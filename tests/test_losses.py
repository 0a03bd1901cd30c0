"""Lost worker pods, counted once: disruptions apart from failures, spot-ness remembered, and
pods that came and went between two passes (known only from their deletion event)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from proctor.api.v1alpha1.base import LossLedgerStatus
from proctor.cluster.losses import (
    Departed,
    Departures,
    Loss,
    LossLedger,
    SpotNodes,
    count_losses,
    ledger_status,
    loss_events,
)
from proctor.cluster.reads import PodState


def obs(uid: str, *, lost: str = "", node: str = "n1") -> PodState:
    return PodState(
        name=f"w-{uid}",
        uid=uid,
        run="r",
        namespace="ns",
        created=datetime(2026, 1, 1, tzinfo=UTC),
        node=node,
        phase="Running",
        ready=True,
        terminating=False,
        finished=lost == "failure",
        lost=lost,
        why="why",
    )


SPOT = {"spot"}


def losses(pods: list[PodState], ledger: LossLedger, spot: set[str] = SPOT) -> tuple[int, int]:
    got = count_losses(pods, ledger, spot)
    return got.failures, got.disruptions


def test_lost_pods_counted_once() -> None:
    ledger = LossLedger()
    workers = [obs("a"), obs("b", lost="failure"), obs("c", lost="disruption", node="spot")]
    assert losses(workers, ledger) == (1, 1)
    assert ledger.spot_disruptions == 1
    # The same pods again: nothing new.
    assert losses(workers, ledger) == (0, 0)
    assert ledger.spot_disruptions == 1


def test_vanished_pod_is_a_disruption_once() -> None:
    ledger = LossLedger()
    losses([obs("a"), obs("s", node="spot")], ledger)
    got = count_losses([obs("a")], ledger, SPOT)
    assert (got.failures, got.disruptions, got.spot_disruptions) == (0, 1, 1)
    assert ledger.spot_disruptions == 1
    assert "vanished" in got.notes[0]
    assert losses([obs("a")], ledger) == (0, 0)


# (name, passes as (pods seen, spot nodes in the cluster then), expected spot disruptions)
SPOT_LOSSES = [
    ("flagged while its node is there", [([obs("s", lost="disruption", node="spot")], SPOT)], 1),
    ("node deleted before the pod vanished", [([obs("s", node="spot")], SPOT), ([], set())], 1),
    (
        "node deleted before the flag was seen",
        [([obs("s", node="spot")], SPOT), ([obs("s", lost="disruption", node="spot")], set())],
        1,
    ),
    ("on-demand node", [([obs("a")], SPOT), ([], SPOT)], 0),
    ("never seen on spot", [([obs("s", node="spot")], set()), ([], set())], 0),
]


@pytest.mark.parametrize(
    ("name", "passes", "expected"), SPOT_LOSSES, ids=[c[0] for c in SPOT_LOSSES]
)
def test_spot_disruptions_remember_the_node(
    name: str, passes: list[tuple[list[PodState], set[str]]], expected: int
) -> None:
    ledger = LossLedger()
    for pods, spot in passes:
        count_losses(pods, ledger, spot)
    assert ledger.spot_disruptions == expected


def test_pods_we_deleted_are_not_charged() -> None:
    ledger = LossLedger()
    losses([obs("a"), obs("b")], ledger)
    ledger.deleted |= {"a", "b"}
    # b exits non-zero on SIGTERM; a vanishes: neither is a failure nor a disruption.
    assert losses([obs("b", lost="failure")], ledger) == (0, 0)
    assert losses([], ledger) == (0, 0)


def test_counted_then_vanished_not_counted_again() -> None:
    ledger = LossLedger()
    losses([obs("a", lost="failure")], ledger)
    assert losses([], ledger) == (0, 0)
    assert ledger.known == {}


def gone(uid: str, *, lost: str = "", phase: str = "Running", spot: bool = False) -> Departed:
    pod = obs(uid, lost=lost, node="spot" if spot else "n1")
    finished = phase in {"Succeeded", "Failed"}
    return Departed(
        PodState(
            pod.name, uid, "r", "ns", pod.created, pod.node, phase, False, True, finished, lost
        ),
        on_spot=spot,
    )


# (name, departed pods, pods seen earlier, expected (failures, disruptions, spot disruptions))
DEPARTED = [
    ("never seen, reclaimed spot", [gone("x", lost="disruption", spot=True)], [], (0, 1, 1)),
    ("never seen, deleted while running", [gone("x")], [], (0, 1, 0)),
    ("crashed then deleted", [gone("x", lost="failure", phase="Failed")], [], (1, 0, 0)),
    ("exited cleanly then deleted", [gone("x", phase="Succeeded")], [], (0, 0, 0)),
    ("seen on spot, node gone now", [gone("s")], [obs("s", node="spot")], (0, 1, 1)),
    ("already counted as vanished", [gone("a")], [obs("a", lost="disruption")], (0, 1, 0)),
]


@pytest.mark.parametrize(
    ("name", "departed", "seen", "expected"), DEPARTED, ids=[c[0] for c in DEPARTED]
)
def test_departed_pods_are_classified_by_their_last_state(
    name: str, departed: list[Departed], seen: list[PodState], expected: tuple[int, int, int]
) -> None:
    ledger = LossLedger()
    total = [0, 0]
    for pods, gone_now in ((seen, []), ([], departed), ([], departed)):  # the last: a repeat
        got = count_losses(pods, ledger, SPOT if pods else set(), gone_now)
        total[0] += got.failures
        total[1] += got.disruptions
    assert (*total, ledger.spot_disruptions) == expected


def test_departed_pod_the_operator_deleted_is_no_loss() -> None:
    ledger = LossLedger(deleted={"x"})
    got = count_losses([], ledger, SPOT, [gone("x", spot=True)])
    assert (got.failures, got.disruptions, ledger.spot_disruptions) == (0, 0, 0)


def test_departures_are_taken_once_per_run() -> None:
    d = Departures()
    d.add(("ns", "a"), gone("1"))
    d.add(("ns", "a"), gone("2"))
    d.add(("ns", "b"), gone("3"))
    assert [g.pod.uid for g in d.take(("ns", "a"))] == ["1", "2"]
    assert d.take(("ns", "a")) == []
    d.forget(("ns", "b"))
    assert d.take(("ns", "b")) == []


# (name, sightings (node, is spot, at), asked at, expected)
SIGHTINGS = [
    ("spot node seen", [("n", True, 0.0)], 10.0, True),
    ("on-demand node", [("n", False, 0.0)], 10.0, False),
    ("never seen", [], 10.0, False),
    ("relabelled on-demand", [("n", True, 0.0), ("n", False, 5.0)], 10.0, False),
    ("forgotten after keep", [("n", True, 0.0)], 3601.0, False),
    ("kept while seen again", [("n", True, 0.0), ("n", True, 3000.0)], 3601.0, True),
]


@pytest.mark.parametrize(
    ("name", "sightings", "at", "expected"), SIGHTINGS, ids=[c[0] for c in SIGHTINGS]
)
def test_spot_nodes_are_remembered_after_they_leave(
    name: str, sightings: list[tuple[str, bool, float]], at: float, expected: bool
) -> None:
    spot = SpotNodes(keep_seconds=3600.0)
    for node, is_spot, when in sightings:
        spot.note(node, is_spot, now=when)
    assert spot.was_spot("n", now=at) is expected


def test_spot_nodes_prune_old_sightings() -> None:
    spot = SpotNodes(keep_seconds=10.0)
    for i in range(999):
        spot.note(f"old-{i}", True, now=0.0)
    spot.note("new", True, now=100.0)  # the 1000th sighting prunes
    assert len(spot._seen) == 1


# Finding 12: the ledger survives an operator restart through the run's status.


def restart(ledger: LossLedger, pods: list[PodState], expected: dict[str, str]) -> LossLedger:
    """What a successor rebuilds from the status the last pass wrote (through its JSON)."""
    saved = ledger_status(ledger, pods, expected)
    wire = LossLedgerStatus.model_validate(saved.model_dump(by_alias=True, mode="json"))
    fresh = LossLedger()
    fresh.restore(wire, failures=ledger.failures, disruptions=ledger.disruptions)
    return fresh


# (name, pods before the restart, expected pods, pods after, spot nodes after,
#  expected (failures, disruptions, spot disruptions) counted by the successor)
RESTARTS = [
    (
        "spot pod reclaimed while down",
        [obs("s", node="spot"), obs("a")],
        {},
        [obs("a")],
        set(),
        (0, 1, 1),
    ),
    (
        "on-demand pod vanished while down",
        [obs("s", node="spot"), obs("a")],
        {},
        [obs("s", node="spot")],
        SPOT,
        (0, 1, 0),
    ),
    (
        "flagged while down, still there",
        [obs("s", node="spot")],
        {},
        [obs("s", lost="disruption", node="spot")],
        set(),
        (0, 1, 1),
    ),
    (
        "counted before the restart, still there",
        [obs("b", lost="failure")],
        {},
        [obs("b", lost="failure")],
        SPOT,
        (0, 0, 0),
    ),
    ("created, never seen, gone", [], {"w-x": "x"}, [], SPOT, (0, 1, 0)),
    ("created, seen after the restart", [], {"w-x": "x"}, [obs("x")], SPOT, (0, 0, 0)),
    (
        "nothing lost",
        [obs("a"), obs("s", node="spot")],
        {},
        [obs("a"), obs("s", node="spot")],
        SPOT,
        (0, 0, 0),
    ),
]


Restart = tuple[str, list[PodState], dict[str, str], list[PodState], set[str], tuple[int, int, int]]


@pytest.mark.parametrize("case", RESTARTS, ids=[c[0] for c in RESTARTS])
def test_finding12_losses_while_the_operator_was_down_are_counted_once(case: Restart) -> None:
    _, before, expected, after, spot, counted = case
    first = LossLedger()
    count_losses(before, first, SPOT)
    successor = restart(first, before, expected)
    got = count_losses(after, successor, spot)
    assert (got.failures, got.disruptions, got.spot_disruptions) == counted
    again = count_losses(after, successor, spot)
    assert (again.failures, again.disruptions) == (0, 0)
    # And once more across a second restart: still nothing new.
    third = restart(successor, after, {})
    repeat = count_losses(after, third, spot)
    assert (repeat.failures, repeat.disruptions) == (0, 0)


def test_finding12_pod_the_operator_deleted_before_dying_is_no_loss() -> None:
    first = LossLedger()
    count_losses([obs("a"), obs("s", node="spot")], first, SPOT)
    first.deleted.add("s")  # scaled down; the operator died before the pod was gone
    successor = restart(first, [obs("a"), obs("s", node="spot")], {})
    got = count_losses([obs("a")], successor, SPOT)
    assert (got.failures, got.disruptions, successor.spot_disruptions) == (0, 0, 0)


def test_finding12_spot_disruptions_toward_fallback_carry_over() -> None:
    first = LossLedger()
    count_losses([obs("s1", node="spot"), obs("s2", node="spot")], first, SPOT)
    count_losses([obs("s1", lost="disruption", node="spot"), obs("s2", node="spot")], first, SPOT)
    assert first.spot_disruptions == 1
    successor = restart(first, [obs("s2", node="spot")], {})
    assert successor.spot_disruptions == 1
    count_losses([], successor, set())  # s2's node reclaimed while no operator ran
    assert (successor.spot_disruptions, successor.disruptions) == (2, 2)


def test_finding12_status_ledger_lists_only_pods_that_exist() -> None:
    ledger = LossLedger()
    count_losses([obs("a"), obs("b", lost="failure"), obs("s", node="spot")], ledger, SPOT)
    ledger.deleted.add("a")
    count_losses([obs("b", lost="failure"), obs("s", node="spot")], ledger, SPOT)
    saved = ledger_status(ledger, [obs("b", lost="failure"), obs("s", node="spot")], {"w-n": "n"})
    assert [(p.uid, p.node, p.spot, p.state) for p in saved.pods or ()] == [
        ("b", "n1", False, "counted"),
        ("n", "", False, "live"),
        ("s", "spot", True, "live"),
    ]


# Finding 13: an Event per lost worker pod, never a flood.
LOSS_EVENTS = [
    (
        "a failure",
        [Loss("w-1", "n1", "failure", "exit code 9 (Error)", False)],
        [("WorkerFailed", "w-1 on n1: failure (exit code 9 (Error))")],
    ),
    (
        "a spot disruption",
        [Loss("w-2", "spot-1", "disruption", "DeletionByTaintManager", True)],
        [("WorkerDisrupted", "w-2 on spot-1 (spot): disruption (DeletionByTaintManager)")],
    ),
    (
        "never bound",
        [Loss("w-3", "", "disruption", "vanished", False)],
        [("WorkerDisrupted", "w-3: disruption (vanished)")],
    ),
]


@pytest.mark.parametrize(("name", "lost", "expected"), LOSS_EVENTS, ids=[c[0] for c in LOSS_EVENTS])
def test_finding13_each_lost_worker_gets_one_warning_event(
    name: str, lost: list[Loss], expected: list[tuple[str, str]]
) -> None:
    events = loss_events(lost)
    assert [e.type for e in events] == ["Warning"] * len(expected)
    assert [(e.reason, e.message.split(";")[0]) for e in events] == expected


def test_finding13_a_reclaimed_pool_does_not_flood_events() -> None:
    lost = [Loss(f"w-{i}", "spot", "disruption", "NodeLost", True) for i in range(25)]
    events = loss_events(lost, limit=10)
    assert [e.reason for e in events] == ["WorkerDisrupted"] * 10 + ["WorkersLost"]
    assert events[-1].message.startswith("15 more worker pods lost (0 failures, 15 disruptions)")


def test_finding13_counted_losses_carry_what_their_events_need() -> None:
    ledger = LossLedger()
    count_losses([obs("s", node="spot"), obs("b")], ledger, SPOT)
    got = count_losses([obs("b", lost="failure")], ledger, set())
    assert sorted((x.name, x.node, x.kind, x.spot) for x in got.lost) == [
        ("w-b", "n1", "failure", False),
        ("w-s", "spot", "disruption", True),
    ]
