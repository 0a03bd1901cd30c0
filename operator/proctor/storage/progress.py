"""Reading a run's progress from its results, and the run checkpoint.

:class:`RunProgress` folds result objects into one :class:`proctor.stats.passrates.Aggregate`,
each case index once, and remembers which indexes it has counted as a set of intervals. It also
counts the *resolved prefix*, the cases ``[0, n)`` with every one recorded, apart: early
stopping looks only at it, since the cases recorded so far beyond it are a sample biased by
whatever is slow to record (a case that crashed its worker waits for its lease and isolation
while clean cases finish). ``refresh()`` reads only objects not yet counted, so a coordinator
(the operator, or ``proctor run``) can call it every few seconds; and it lists only objects
that can still add a case: those starting after the counted prefix (less the longest object
seen, since a worker that lost its lease can write a range that starts inside it), with a full
listing every :data:`FULL_LISTING_SECONDS` for whatever reaches further back. Listing every
object on every refresh grew with the square of the run: at 1M cases, 4,000 objects listed
four times a second were most of ``proctor run``'s and the S3 server's work (issue 21).
``checkpoint()`` writes the intervals and the aggregate to the run checkpoint, and
:meth:`RunProgress.resume` starts from it, so after a restart only newer objects are read. The
intervals are what :func:`proctor.queue.enqueue.enqueue_run` subtracts to rebuild a lost queue.

Only objects of the storage's attempt are read (see :mod:`proctor.storage.run`), and a
checkpoint of another attempt, or one that cannot be read, is ignored with a warning: it only
saves reading objects again. A result object that cannot be read back whole (a torn write) is
not counted; it is listed in ``corrupt`` so that the coordinator can delete it and have its
range evaluated again.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import structlog

from proctor.ranges import Range
from proctor.stats.passrates import Aggregate
from proctor.storage.run import CorruptObjectError, RunStorage
from proctor.storage.tally import aggregate_table

CHECKPOINT_VERSION = 1

FULL_LISTING_SECONDS = 30.0
"""How often :meth:`RunProgress.refresh` lists every result object, not only those past the
counted prefix: an object that starts further back than the longest one seen (a rare race
between workers) is counted at most this much later."""

log = structlog.get_logger("proctor.progress")


class IntervalSet:
    """Disjoint, merged ``[start, end)`` intervals."""

    def __init__(self, intervals: Iterable[tuple[int, int]] = ()) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        for s, e in intervals:
            self.add(s, e)

    def add(self, start: int, end: int) -> None:
        i = bisect.bisect_left(self.ends, start)  # first interval ending at or after start
        j = bisect.bisect_right(self.starts, end)  # intervals starting at or before end
        if i < j:
            start = min(start, self.starts[i])
            end = max(end, self.ends[j - 1])
        self.starts[i:j] = [start]
        self.ends[i:j] = [end]

    def gaps(self, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of ``[start, end)`` not in the set."""
        out = []
        cursor = start
        i = bisect.bisect_right(self.ends, start)
        while cursor < end and i < len(self.starts):
            s, e = self.starts[i], self.ends[i]
            if s >= end:
                break
            if s > cursor:
                out.append((cursor, s))
            cursor = max(cursor, e)
            i += 1
        if cursor < end:
            out.append((cursor, end))
        return out

    def end_of(self, index: int) -> int:
        """The end of the interval that holds ``index``, or ``index`` when none does."""
        i = bisect.bisect_right(self.starts, index) - 1
        return self.ends[i] if i >= 0 and self.ends[i] > index else index

    def covers(self, start: int, end: int) -> bool:
        i = bisect.bisect_right(self.starts, start) - 1
        return i >= 0 and self.ends[i] >= end

    def contains(self, index: int) -> bool:
        return self.covers(index, index + 1)

    def __len__(self) -> int:
        return sum(e - s for s, e in zip(self.starts, self.ends, strict=True))

    def intervals(self) -> list[tuple[int, int]]:
        return list(zip(self.starts, self.ends, strict=True))

    def ranges(self) -> list[Range]:
        return [Range(s, e) for s, e in self.intervals()]


@dataclass(frozen=True)
class ProgressSnapshot:
    """Counts for status and progress bars."""

    total: int
    completed: int
    passed: int
    failed: int
    errored: int
    dead_lettered: int
    cases_per_second: float | None
    eta_seconds: float | None

    @property
    def finished(self) -> bool:
        return self.completed + self.dead_lettered >= self.total

    @property
    def percent(self) -> float:
        return 100.0 * self.completed / self.total if self.total else 100.0


class RunProgress:
    """Exact, incremental progress of one run from its result objects."""

    def __init__(self, storage: RunStorage, total: int, dataset: str | None = None) -> None:
        self.storage = storage
        self.total = total
        self.dataset = dataset
        """The fingerprint of the run's dataset manifest, kept in (and checked against) the
        checkpoint: a checkpoint of other rows is not this run's progress."""
        self.covered = IntervalSet()
        self.aggregate = Aggregate()
        self.dead = IntervalSet()
        self.looks = 0
        self.corrupt: dict[str, Range] = {}
        self._rate: list[tuple[float, int]] = []
        # The cases [0, resolved_end), all recorded, counted in ``resolved``; counted pieces
        # beyond the first gap wait in ``_pending`` (start -> end, counts) until it closes.
        self.resolved = Aggregate()
        self.resolved_end = 0
        self._pending: dict[int, tuple[int, Aggregate]] = {}
        self._counted: set[str] = set()  # keys whose range is covered: not parsed again
        self._longest = 0  # cases in the longest result object seen
        self._listed_all = -math.inf  # monotonic time of the last full listing

    @classmethod
    def resume(cls, storage: RunStorage, total: int, dataset: str | None = None) -> RunProgress:
        """Start from the run checkpoint of this attempt (and dataset) if there is a readable
        one."""
        progress = cls(storage, total, dataset)
        try:
            data = storage.read_checkpoint()
            if data is None or data.get("version") != CHECKPOINT_VERSION:
                return progress
            if data.get("attempt", "") != storage.attempt:
                log.warning("ignoring the checkpoint of another attempt", run=storage.run_id)
                return progress
            if data.get("dataset") != dataset:
                log.warning("ignoring the checkpoint of other dataset files", run=storage.run_id)
                return progress
            covered = IntervalSet((int(s), int(e)) for s, e in data["covered"])
            aggregate = Aggregate.from_json(data["aggregate"])
            looks = int(data.get("looks", 0))
            resolved = data["resolved"]  # a checkpoint without it is read again from objects
            progress.resolved = Aggregate.from_json(resolved["aggregate"])
            progress.resolved_end = int(resolved["end"])
            progress._pending = {
                int(s): (int(e), Aggregate.from_json(agg)) for s, e, agg in resolved["pending"]
            }
        except (ValueError, KeyError, TypeError) as exc:
            # An accelerator only: without it every result object is read again.
            log.warning("ignoring an unreadable run checkpoint", run=storage.run_id, error=str(exc))
            return cls(storage, total, dataset)
        progress.covered, progress.aggregate, progress.looks = covered, aggregate, looks
        return progress

    def refresh(self) -> int:
        """Count result objects not counted yet; returns the number of new cases."""
        before = len(self.covered)
        for r, key in self.storage.result_keys(since=self._listing_start(), skip=self._counted):
            self._longest = max(self._longest, len(r))
            if self.covered.covers(r.start, r.end):
                self._counted.add(key)
                continue
            gaps = self.covered.gaps(r.start, r.end)
            try:
                table = self.storage.read_table_checked(key)
            except CorruptObjectError as exc:
                if key not in self.corrupt:
                    log.warning("result object not counted", key=key, error=str(exc))
                self.corrupt[key] = r
                continue
            self.corrupt.pop(key, None)
            if table is None:  # gone since the listing (a retried run's objects were reset)
                continue
            # Checked whole: row i is case r.start + i, so each gap is one slice.
            for start, end in gaps:
                part = aggregate_table(table.slice(start - r.start, end - start))
                self.aggregate.merge(part)
                self._resolve(start, end, part)
            self.covered.add(r.start, r.end)
            self._counted.add(key)
        for d in self.storage.dead_letters():
            self.dead.add(d["start"], d["end"])
        done = len(self.covered)
        self._rate.append((time.monotonic(), done))
        cutoff = time.monotonic() - 30.0
        while len(self._rate) > 2 and self._rate[0][0] < cutoff:
            self._rate.pop(0)
        return done - before

    def _listing_start(self) -> int:
        """Where this refresh lists from: 0 for a full listing (the first, and one every
        :data:`FULL_LISTING_SECONDS`), else the first index neither recorded nor dead-lettered
        less the longest object seen (an object that starts further back adds nothing unless
        it is longer than any seen)."""
        now = time.monotonic()
        if now - self._listed_all >= FULL_LISTING_SECONDS:
            self._listed_all = now
            return 0
        end = 0
        while (nxt := max(self.covered.end_of(end), self.dead.end_of(end))) != end:
            end = nxt
        return max(0, end - self._longest)

    def _resolve(self, start: int, end: int, part: Aggregate) -> None:
        """Count the newly recorded cases ``[start, end)`` into the resolved prefix, or keep
        them until every case before them is recorded."""
        after = self._pending.pop(end, None)  # the piece just after joins this one
        if after is not None:
            end, part = after[0], part.merge(after[1])
        before = next((s for s, (e, _) in self._pending.items() if e == start), None)
        if before is not None:
            start, part = before, self._pending[before][1].merge(part)
        if start != self.resolved_end:
            self._pending[start] = (end, part)
            return
        self._pending.pop(start, None)
        self.resolved.merge(part)
        self.resolved_end = end

    def snapshot(self) -> ProgressSnapshot:
        completed = len(self.covered)
        dead = sum(e - s for s, e in self._dead_gaps())
        rate = None
        eta = None
        if len(self._rate) >= 2:
            (t0, c0), (t1, c1) = self._rate[0], self._rate[-1]
            if t1 > t0:
                rate = (c1 - c0) / (t1 - t0)
                remaining = max(0, self.total - completed - dead)
                eta = remaining / rate if rate > 0 else None
        agg = self.aggregate
        return ProgressSnapshot(
            total=self.total,
            completed=completed,
            passed=agg.passed,
            failed=agg.failed,
            errored=agg.errored,
            dead_lettered=dead,
            cases_per_second=rate,
            eta_seconds=eta,
        )

    def _dead_gaps(self) -> list[tuple[int, int]]:
        # A dead-lettered range may have had some cases recorded before it died.
        out = []
        for s, e in self.dead.intervals():
            out += self.covered.gaps(s, e)
        return out

    def checkpoint(self, **extra: Any) -> int:
        """Write the run checkpoint; returns its size in bytes."""
        data = {
            "version": CHECKPOINT_VERSION,
            "runId": self.storage.run_id,
            "attempt": self.storage.attempt,
            "total": self.total,
            "dataset": self.dataset,
            "covered": self.covered.intervals(),
            "deadLettered": self.dead.intervals(),
            "aggregate": self.aggregate.to_json(),
            "looks": self.looks,
            "resolved": {
                "end": self.resolved_end,
                "aggregate": self.resolved.to_json(),
                "pending": [[s, e, agg.to_json()] for s, (e, agg) in self._pending.items()],
            },
            "time": time.time(),
            **extra,
        }
        return self.storage.write_checkpoint(data)
