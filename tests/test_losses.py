"""Lost worker pods, counted once: disruptions apart from failures, spot-ness remembered, and
pods that came and went between two passes (known only from their deletion event)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from proctor.losses import Departed, Departures, LossLedger, SpotNodes, count_losses
from proctor.observe import WorkerObs


def obs(uid: str, *, lost: str = "", node: str = "n1") -> WorkerObs:
    return WorkerObs(
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


def losses(pods: list[WorkerObs], ledger: LossLedger, spot: set[str] = SPOT) -> tuple[int, int]:
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
    name: str, passes: list[tuple[list[WorkerObs], set[str]]], expected: int
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
        WorkerObs(
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
    name: str, departed: list[Departed], seen: list[WorkerObs], expected: tuple[int, int, int]
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
    assert [g.obs.uid for g in d.take(("ns", "a"))] == ["1", "2"]
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
