"""Worker pods lost, each counted once: *disruptions* (preempted, evicted, or vanished with
their node: replaced, never charged) apart from *failures* (crash, OOM, image error: charged to
the failure budget). EvalRun and BenchmarkSuite passes both count with :func:`count_losses`."""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Hashable, Sequence
from dataclasses import dataclass, field

from proctor.observe import WorkerObs


@dataclass
class LossLedger:
    """What earlier passes saw: pods already counted, the node each live pod was last seen on
    (and whether that node was spot), pods the operator deleted itself, spot disruptions."""

    counted: set[str] = field(default_factory=set)
    known: dict[str, tuple[str, bool]] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)
    spot_disruptions: int = 0


@dataclass(frozen=True)
class Departed:
    """A worker pod's last state as its deletion event showed it, and whether its node was spot
    then. A pod can come and go between two passes (a node reclaimed a second after the pod was
    bound): the pod index never shows it, but its DELETED event does."""

    obs: WorkerObs
    on_spot: bool


class Departures:
    """Deleted worker pods per run (key), kept by the pod event handler until the run's next
    pass takes them. Thread-safe: events and passes run on different threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_run: dict[Hashable, list[Departed]] = {}

    def add(self, key: Hashable, gone: Departed) -> None:
        with self._lock:
            self._by_run.setdefault(key, []).append(gone)

    def take(self, key: Hashable) -> list[Departed]:
        with self._lock:
            return self._by_run.pop(key, [])

    def forget(self, key: Hashable) -> None:
        self.take(key)


class SpotNodes:
    """Spot nodes seen lately, kept for ``keep_seconds`` after their last sighting: the events
    of a reclaimed node and of its pods arrive on separate watches, so a pod's deletion is often
    handled after its node has already left the node index."""

    def __init__(self, keep_seconds: float = 3600.0) -> None:
        self.keep_seconds = keep_seconds
        self._lock = threading.Lock()
        self._seen: dict[str, float] = {}
        self._notes = 0

    def note(self, name: str, is_spot: bool, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            if is_spot:
                self._seen[name] = now
            else:
                self._seen.pop(name, None)
            self._notes += 1
            if self._notes % 1000 == 0:
                cutoff = now - self.keep_seconds
                self._seen = {n: t for n, t in self._seen.items() if t >= cutoff}

    def was_spot(self, name: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        with self._lock:
            seen = self._seen.get(name)
        return seen is not None and now - seen <= self.keep_seconds


@dataclass(frozen=True)
class Losses:
    failures: int
    disruptions: int
    spot_disruptions: int
    notes: tuple[str, ...]


def count_losses(
    pods: Sequence[WorkerObs],
    ledger: LossLedger,
    spot_nodes: Collection[str] = (),
    departed: Sequence[Departed] = (),
) -> Losses:
    """New failures and disruptions since the last pass (updates ``ledger``).

    ``pods`` are the run's pods in the index now; ``departed`` those deleted since the last pass
    (see :class:`Departed`), classified by their last state: a failure stays a failure, a pod
    that had exited cleanly is no loss, any other pod the operator did not delete was disrupted.

    A pod is spot when its node is in ``spot_nodes`` now *or was when the pod was last seen*: a
    reclaimed node is often gone from the cluster by the pass that notices its pods are lost.
    """
    failures = disruptions = spot = 0
    notes: list[str] = []
    present = {p.uid for p in pods}
    for gone in departed:
        p = gone.obs
        if p.uid in present or p.uid in ledger.counted or p.uid in ledger.deleted:
            continue
        _, seen_on_spot = ledger.known.pop(p.uid, ("", False))
        on_spot = gone.on_spot or seen_on_spot
        if p.lost == "failure":
            ledger.counted.add(p.uid)
            failures += 1
            notes.append(f"{p.name}: failure ({p.why}), deleted")
        elif p.lost or not p.finished:
            ledger.counted.add(p.uid)
            disruptions += 1
            spot += on_spot
            why = p.why if p.lost else f"deleted while {p.phase.lower()}"
            notes.append(f"{p.name} on {p.node or 'no node'}: disruption ({why})")
    for p in pods:
        on_spot = p.node in spot_nodes or ledger.known.get(p.uid, ("", False))[1]
        if p.lost and p.uid not in ledger.counted and p.uid not in ledger.deleted:
            ledger.counted.add(p.uid)
            if p.lost == "disruption":
                disruptions += 1
                spot += on_spot
            else:
                failures += 1
            notes.append(f"{p.name}: {p.lost} ({p.why})")
        ledger.known[p.uid] = (p.node, on_spot)
    for uid, (node, on_spot) in list(ledger.known.items()):
        if uid in present:
            continue
        del ledger.known[uid]
        if uid not in ledger.counted and uid not in ledger.deleted:
            ledger.counted.add(uid)
            disruptions += 1
            spot += on_spot
            notes.append(f"pod {uid} on {node or 'no node'} vanished: disruption")
    ledger.spot_disruptions += spot
    return Losses(failures, disruptions, spot, tuple(notes))
