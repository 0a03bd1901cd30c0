"""A loaded task that takes each side's result from the cache when it can.

:class:`CachedTask` wraps the :class:`proctor.sdk.LoadedTask` a worker evaluates batches with.
For a batch it looks each side's cases up in the cache (one key prefix per side, the blocks the
range touches) and then walks the range in pieces where the same sides hit:

- no side hits: the wrapped task's ``evaluate_batch``, as without a cache;
- one side of a comparison hits: only the other side is evaluated (``evaluate_side``), so a
  cached baseline never runs again;
- every side hits: no implementation runs.

Each record is the same case record either way; a cached side says ``cached: true`` and
``cachedFrom`` (:mod:`proctor.sdk.records`). After the batch, the fresh results that are
results are added to the cache: a side that passed or broke a property, never one that
errored (:func:`cacheable_side`). Redelivered batches evaluated in isolation (``evaluate_side`` from
:mod:`proctor.worker.isolation`) bypass the cache.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from proctor.cache.keys import SideKey, row_digest
from proctor.cache.store import CacheStore, Entry
from proctor.sdk import LoadedTask, Record, stop_requested
from proctor.sdk.cases import DatasetRow, RowSource
from proctor.sdk.records import case_record


def cacheable_side(side: Record) -> bool:
    """Whether a side's result is kept: one that passed or broke a property. An errored side
    never is: a timeout, a crash, a task or input error are not the implementation's answer,
    and an exception may not be either (a MemoryError under the worker's memory limit, a
    ConnectionError of a service it calls: neither is in the key), so it is evaluated again."""
    return side.get("errorType") is None and not side.get("errored")


Observe = Callable[[str, int, int], None]
"""``(role, hits, misses)`` after each batch: the worker's metrics."""


class MemoRows:
    """A row source that keeps the rows of the last range read, so the cache's digests and
    the task's evaluation read a batch's rows once."""

    def __init__(self, source: RowSource) -> None:
        self.source = source
        self._start = 0
        self._rows: list[DatasetRow] = []

    def rows(self, start: int, end: int) -> Iterator[DatasetRow]:
        lo, hi = self._start, self._start + len(self._rows)
        if not (self._rows and lo <= start and end <= hi):
            self._rows, self._start = list(self.source.rows(start, end)), start
        return iter(self._rows[start - self._start : end - self._start])


@dataclass(frozen=True)
class CacheUse:
    """What a run does with the cache: one key per side (None: that side is never cached)."""

    store: CacheStore
    keys: Sequence[SideKey | None]
    reads: bool
    writes: bool


@dataclass
class _Batch:
    """One batch's lookups: each side's hits, each case's row digest, the fresh results."""

    case_timeout: float
    rows: dict[int, str | None]
    hits: list[dict[int, Entry]]
    fresh: list[list[Entry]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.fresh = [[] for _ in self.hits]


class CachedTask(LoadedTask):
    """``inner`` with each side's results taken from and added to the cache."""

    def __init__(
        self,
        inner: LoadedTask,
        use: CacheUse,
        rows: MemoRows | None = None,
        observe: Observe | None = None,
    ) -> None:
        self.inner = inner
        self.use = use
        self.rows = rows
        self._observe = observe or (lambda role, hits, misses: None)

    @property
    def sides(self) -> int:
        return self.inner.sides

    @property
    def fork_safe(self) -> bool:
        return self.inner.fork_safe

    def evaluate_side(
        self, start: int, end: int, role: int, case_timeout: float
    ) -> Iterator[Record]:
        return self.inner.evaluate_side(start, end, role, case_timeout)

    def identity(self, index: int) -> dict[str, Any]:
        return self.inner.identity(index)

    def close(self) -> None:
        self.inner.close()

    def evaluate_batch(self, start: int, end: int, case_timeout: float) -> Iterator[Record]:
        rows = self._row_digests(start, end)
        batch = _Batch(
            case_timeout, rows, [self._lookup(k, start, end, rows) for k in self.use.keys]
        )
        done = 0
        for record in self._records(start, end, batch):
            done += 1
            yield record
        if stop_requested():
            # The case running at the stop may have been cut short (the worker abandons it
            # after a grace, and a task may catch that and return): never a cached answer.
            for fresh in batch.fresh:
                fresh[:] = [e for e in fresh if e.index != start + done - 1]
        for key, hits, fresh in zip(self.use.keys, batch.hits, batch.fresh, strict=True):
            if key is None:
                continue
            n_hits = sum(1 for i in hits if i < start + done)
            self._observe(key.role, n_hits, done - n_hits)
            if self.use.writes and fresh:
                self.use.store.add(key, fresh)

    def _row_digests(self, start: int, end: int) -> dict[int, str | None]:
        """Each case's row digest: "" for a generated case, None for an unreadable row."""
        if self.rows is None:
            return dict.fromkeys(range(start, end), "")
        return {
            row.index: (None if row.error is not None else row_digest(row.case))
            for row in self.rows.rows(start, end)
        }

    def _lookup(
        self, key: SideKey | None, start: int, end: int, rows: dict[int, str | None]
    ) -> dict[int, Entry]:
        if key is None or not self.use.reads:
            return {}
        return self.use.store.lookup(key, start, end, rows)

    def _records(self, start: int, end: int, batch: _Batch) -> Iterator[Record]:
        """The range's records, piece by piece of the same hit pattern (module doc)."""
        for a, b, pattern in _segments(start, end, batch.hits):
            if not any(pattern):
                got = self.inner.evaluate_batch(a, b, batch.case_timeout)
                records: Iterator[Record] = (self._keep(r, _sides_of(r), batch) for r in got)
            elif all(pattern):
                records = self._all_cached(a, b, batch.hits)
            else:
                records = self._one_side(a, b, pattern.index(False), batch)
            n = 0
            for record in records:
                n += 1
                yield record
            if n < b - a:
                return  # a stop was requested: the worker hands the rest back

    def _one_side(self, a: int, b: int, role: int, batch: _Batch) -> Iterator[Record]:
        t0 = time.perf_counter()
        for side in self.inner.evaluate_side(a, b, role, batch.case_timeout):
            index = side.pop("index")
            sides = [_cached(h[index]) if r != role else side for r, h in enumerate(batch.hits)]
            t1 = time.perf_counter()
            record = case_record(index, sides, (t1 - t0) * 1000.0, self._identity(index))
            t0 = t1
            yield self._keep(record, sides, batch, only=role)

    def _all_cached(self, a: int, b: int, hits: list[dict[int, Entry]]) -> Iterator[Record]:
        for index in range(a, b):
            if stop_requested():
                return
            sides = [_cached(h[index]) for h in hits]
            yield case_record(index, sides, 0.0, self._identity(index))

    def _identity(self, index: int) -> dict[str, Any] | None:
        if self.rows is None:
            return None
        return next(self.rows.rows(index, index + 1)).identity()

    def _keep(
        self, record: Record, sides: Sequence[Record], batch: _Batch, only: int | None = None
    ) -> Record:
        """``record``, its fresh sides that are results noted for the cache."""
        index = record["index"]
        row = batch.rows.get(index)
        if row is None:
            return record
        for role, side in enumerate(sides):
            if (only is None or role == only) and cacheable_side(side):
                batch.fresh[role].append(Entry(index, row, _stored(side), self.use.store.run))
        return record


def _segments(
    start: int, end: int, hits: list[dict[int, Entry]]
) -> Iterator[tuple[int, int, tuple[bool, ...]]]:
    """``[a, b)`` pieces of ``[start, end)`` over which the sides that hit do not change."""
    a = start
    while a < end:
        pattern = tuple(a in h for h in hits)
        b = a + 1
        while b < end and tuple(b in h for h in hits) == pattern:
            b += 1
        yield a, b, pattern
        a = b


def _sides_of(record: Record) -> list[Record]:
    """The side records of a fresh case record."""
    if "baseline" in record:
        return [record["baseline"], record["candidate"]]
    side = {
        "passed": record["status"] == "passed",
        "errored": record["status"] == "errored",
        "violations": record.get("violations") or [],
        "error": record.get("error"),
        "errorType": record.get("errorType"),
    }
    if "output" in record:
        side["output"] = record["output"]
    return [side]


def _stored(side: Record) -> Record:
    """What the cache keeps of a side: its result, not where it came from."""
    return {k: v for k, v in side.items() if k not in ("cached", "cachedFrom", "index")}


def _cached(entry: Entry) -> Record:
    return {**entry.side, "cached": True, "cachedFrom": entry.run}
