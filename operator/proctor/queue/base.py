"""The work queue's interface, shared by every backend.

Entries are index ranges ``[start, end)`` of a run's cases, never case payloads. A worker
*claims* entries under a lease, *renews* the lease while it works, and then either *acks* an
entry (its results are written), *hands it back* with the unfinished remainder (shutdown,
adaptive splitting) or *dead-letters* it (too many deliveries). An entry whose lease expires
is claimed again by another worker, and its delivery count goes up.

``prior`` carries attempts over a handback: a remainder handed back by a worker that found the
entry after a crash keeps the crashed attempts, so ``Lease.delivery`` counts every attempt at
those cases, not only the attempts at the current queue entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from proctor.ranges import Range, partition, subtract

__all__ = [
    "DeadLetter",
    "Lease",
    "QueueDepth",
    "QueueError",
    "Range",
    "WorkQueue",
    "partition",
    "subtract",
]


class QueueError(RuntimeError):
    """The queue could not be reached or is misconfigured."""


@dataclass(frozen=True)
class Lease:
    """A claimed entry. ``token`` is the backend's handle; ``delivery`` counts from 1."""

    range: Range
    token: str
    delivery: int
    prior: int = 0


@dataclass(frozen=True)
class QueueDepth:
    """Entries waiting to be claimed and entries claimed under a lease (in flight).

    ``cases`` is the number of cases in those entries where the backend can say cheaply
    (Redis, embedded); ``None`` where it cannot (SQS). ``stopped`` is the stop reason, if any.
    ``holders`` names the consumers holding the in-flight entries (Redis, embedded); ``None``
    where the backend cannot say who holds a lease (SQS).
    """

    waiting: int
    in_flight: int
    cases: int | None = None
    stopped: str | None = None
    holders: frozenset[str] | None = None

    @property
    def total(self) -> int:
        return self.waiting + self.in_flight

    @property
    def empty(self) -> bool:
        return self.waiting == 0 and self.in_flight == 0


@dataclass(frozen=True)
class DeadLetter:
    """An entry that exhausted its attempts."""

    range: Range
    deliveries: int
    reason: str


@runtime_checkable
class WorkQueue(Protocol):
    """One run's queue. Every method is safe to call from several threads."""

    run_id: str
    lease_seconds: float

    def enqueue(self, ranges: Sequence[Range], *, chunk: str) -> int:
        """Add ``ranges`` once: a chunk name already enqueued is skipped. Returns entries added."""
        ...

    def claim(self, count: int, consumer: str) -> list[Lease]:
        """Up to ``count`` entries: expired leases first, then waiting entries. Never blocks."""
        ...

    def renew(self, lease: Lease, consumer: str) -> bool:
        """Extend the lease; False when it was lost (expired and claimed by another worker)."""
        ...

    def ack(self, lease: Lease, consumer: str) -> bool:
        """The entry is done. False when the lease was lost (the new holder finishes it)."""
        ...

    def handback(
        self, lease: Lease, consumer: str, remainder: Iterable[Range], *, prior: int = 0
    ) -> bool:
        """Atomically ack the entry and enqueue ``remainder`` (with ``prior`` attempts)."""
        ...

    def dead_letter(
        self,
        lease: Lease,
        consumer: str,
        reason: str,
        *,
        dead: Range | None = None,
        remainder: Iterable[Range] = (),
    ) -> bool:
        """Atomically remove the entry, record ``dead`` (default: the entry's whole range) as
        a dead letter and enqueue ``remainder`` afresh (the part found not to be at fault)."""
        ...

    def dead_letters(self) -> list[DeadLetter]:
        """Entries dead-lettered so far."""
        ...

    def depth(self) -> QueueDepth:
        """Waiting and in-flight entries."""
        ...

    def lease_holders(self) -> frozenset[str] | None:
        """The consumers that hold an in-flight entry (workers pass their pod name as the
        consumer); ``None`` when the backend cannot tell (SQS)."""
        ...

    def stop(self, reason: str) -> None:
        """Mark the run stopped and drain waiting entries: claims return nothing from now on."""
        ...

    def stopped(self) -> str | None:
        """The stop reason, or None while the run goes on."""
        ...

    def delete(self) -> None:
        """Remove every trace of the run's queue (finalization)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
