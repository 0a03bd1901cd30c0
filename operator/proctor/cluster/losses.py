"""Worker pods lost, each counted once: *disruptions* (preempted, evicted, or vanished with
their node: replaced, never charged) apart from *failures* (crash, OOM, image error: charged to
the failure budget). EvalRun and BenchmarkSuite passes both count with :func:`count_losses`.

The ledger of an EvalRun, and of a BenchmarkSuite's current run, is also written to its status
(:func:`ledger_status`) and read back by a restarted operator (:meth:`LossLedger.restore`): the
pods the last pass knew, with their node's spot-ness, so that a pod that vanished while no
operator ran is still counted, once."""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from proctor.api.conditions import Event
from proctor.api.v1alpha1.base import LossLedgerStatus, TrackedPod
from proctor.cluster.reads import PodState


@dataclass(frozen=True)
class Seen:
    """A live pod as last seen: its name, its node, and whether that node was spot."""

    name: str
    node: str
    spot: bool


@dataclass
class LossLedger:
    """What earlier passes saw: pods already counted, where each live pod was last seen,
    pods the operator deleted itself, and the totals (failures, disruptions, spot ones)."""

    counted: set[str] = field(default_factory=set)
    known: dict[str, Seen] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)
    spot_disruptions: int = 0
    failures: int = 0
    disruptions: int = 0
    restored: bool = False

    def restore(self, saved: LossLedgerStatus | None, *, failures: int, disruptions: int) -> None:
        """Take up what a predecessor recorded in the status (once per ledger; what this
        ledger already holds is kept). A pod it recorded as live that is gone now is counted
        by the next :func:`count_losses` as vanished."""
        if self.restored:
            return
        self.restored = True
        self.failures += failures
        self.disruptions += disruptions
        if saved is None:
            return
        self.spot_disruptions += saved.spot_disruptions
        for pod in saved.pods or ():
            if pod.state == "counted":
                self.counted.add(pod.uid)
            elif pod.state == "deleted":
                self.deleted.add(pod.uid)
            elif pod.uid not in self.counted and pod.uid not in self.deleted:
                self.known.setdefault(pod.uid, Seen(pod.name, pod.node, pod.spot))


def ledger_status(
    ledger: LossLedger, pods: Iterable[PodState], expected: Mapping[str, str]
) -> LossLedgerStatus:
    """The ledger as the status keeps it (pure): one entry per pod that still exists (in the
    index, or created and not yet shown there: ``expected`` maps name to uid), so the list
    stays as long as the run's pods, not its history."""
    entries: dict[str, TrackedPod] = {}
    for name, uid in expected.items():
        entries[uid] = TrackedPod(name=name, uid=uid)
    for pod in pods:
        seen = ledger.known.get(pod.uid)
        entries[pod.uid] = TrackedPod(
            name=pod.name, uid=pod.uid, node=pod.node, spot=bool(seen and seen.spot)
        )
    out = []
    for uid, entry in sorted(entries.items(), key=lambda kv: (kv[1].name, kv[0])):
        state = "deleted" if uid in ledger.deleted else "counted" if uid in ledger.counted else ""
        out.append(entry.model_copy(update={"state": state}) if state else entry)
    return LossLedgerStatus(spot_disruptions=ledger.spot_disruptions, pods=out or None)


@dataclass(frozen=True)
class Departed:
    """A worker pod's last state as its deletion event showed it, and whether its node was spot
    then. A pod can come and go between two passes (a node reclaimed a second after the pod was
    bound): the pod index never shows it, but its DELETED event does."""

    pod: PodState
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
class Loss:
    """One lost worker pod, for its Event."""

    name: str
    node: str
    kind: str  # "failure" or "disruption"
    why: str
    spot: bool

    def note(self) -> str:
        where = f" on {self.node}{' (spot)' if self.spot else ''}" if self.node else ""
        return f"{self.name}{where}: {self.kind} ({self.why})"


@dataclass(frozen=True)
class Losses:
    failures: int
    disruptions: int
    spot_disruptions: int
    lost: tuple[Loss, ...] = ()

    @property
    def notes(self) -> tuple[str, ...]:
        return tuple(loss.note() for loss in self.lost)


LOSS_EVENTS_PER_PASS = 10
"""Lost workers beyond this many in one pass (a whole spot pool reclaimed) share one Event."""


def loss_events(
    lost: Sequence[Loss],
    limit: int = LOSS_EVENTS_PER_PASS,
    *,
    budget: str = "workers.failureBudget",
) -> list[Event]:
    """A Warning Event per lost worker pod (pure): ``WorkerFailed`` (charged to the failure
    budget, the field ``budget`` names) or ``WorkerDisrupted`` (replaced, not charged); past
    ``limit``, one ``WorkersLost`` Event for the rest, so a reclaimed pool does not flood the
    run's Events. BenchmarkSuites post the same reasons for their benchmark pods."""
    events = []
    for loss in lost[:limit]:
        if loss.kind == "failure":
            tail = f"charged to {budget}"
            events.append(Event("Warning", "WorkerFailed", f"{loss.note()}; {tail}"))
        else:
            tail = f"replaced, not charged to {budget}"
            events.append(Event("Warning", "WorkerDisrupted", f"{loss.note()}; {tail}"))
    rest = lost[limit:]
    if rest:
        failed = sum(1 for loss in rest if loss.kind == "failure")
        events.append(
            Event(
                "Warning",
                "WorkersLost",
                f"{len(rest)} more worker pods lost ({failed} failures, "
                f"{len(rest) - failed} disruptions): {', '.join(x.name for x in rest[:20])}",
            )
        )
    return events


def count_losses(
    pods: Sequence[PodState],
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

    A pod last seen alive that is gone now with no deletion event to say how (it vanished
    between passes, or while no operator ran) is a disruption: the operator cannot show it
    failed, so it is replaced and not charged; it counts toward spot fallback when its node
    was spot when last seen.
    """
    lost: list[Loss] = []
    present = {p.uid for p in pods}

    def count(uid: str, loss: Loss) -> None:
        ledger.counted.add(uid)
        lost.append(loss)

    for gone in departed:
        p = gone.pod
        if p.uid in present or p.uid in ledger.counted or p.uid in ledger.deleted:
            continue
        seen = ledger.known.pop(p.uid, None)
        on_spot = gone.on_spot or bool(seen and seen.spot)
        if p.lost == "failure":
            count(p.uid, Loss(p.name, p.node, "failure", f"{p.why}, deleted", on_spot))
        elif p.lost or not p.finished:
            why = p.why if p.lost else f"deleted while {p.phase.lower()}"
            count(p.uid, Loss(p.name, p.node, "disruption", why, on_spot))
    for p in pods:
        seen = ledger.known.get(p.uid)
        on_spot = p.node in spot_nodes or bool(seen and seen.spot)
        if p.lost and p.uid not in ledger.counted and p.uid not in ledger.deleted:
            count(p.uid, Loss(p.name, p.node, p.lost, p.why, on_spot))
        ledger.known[p.uid] = Seen(p.name, p.node, on_spot)
    for uid, seen in list(ledger.known.items()):
        if uid in present:
            continue
        del ledger.known[uid]
        if uid not in ledger.counted and uid not in ledger.deleted:
            count(uid, Loss(seen.name, seen.node, "disruption", "vanished", seen.spot))
    failures = sum(1 for x in lost if x.kind == "failure")
    spot = sum(1 for x in lost if x.kind == "disruption" and x.spot)
    ledger.failures += failures
    ledger.disruptions += len(lost) - failures
    ledger.spot_disruptions += spot
    return Losses(failures, len(lost) - failures, spot, tuple(lost))


EXPECTATION_SECONDS = 30.0
"""A pod this operator created counts as a worker until the pod index shows it, or this long."""


def loss_degradations(
    failures: int, disruptions: int, *, budget: str, pods: str = "worker"
) -> list[tuple[str, str]]:
    """(reason, message) for lost pods (pure), EvalRun workers and benchmark pods alike:
    ``WorkerFailures`` (charged to the budget ``budget`` describes), ``WorkersDisrupted``."""
    found = []
    if failures:
        found.append(
            (
                "WorkerFailures",
                f"{failures} {pods} failures (crash, OOM or image error; {budget})",
            )
        )
    if disruptions:
        found.append(
            (
                "WorkersDisrupted",
                f"{disruptions} {pods}s disrupted (preempted, evicted or node lost; "
                "replaced, not charged)",
            )
        )
    return found
