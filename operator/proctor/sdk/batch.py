"""A batch's case records kept as columns: what the worker writes, built without a dict per case.

:meth:`proctor.sdk.LoadedTask.evaluate_into` fills a :class:`BatchRecords` with the cases of a
batch, in index order from ``start``. Every case has its wall time (``seconds``, as the results
hold it) and, in a run over a dataset, its row's ``ids`` and ``partitions``. A case whose every
side passed with nothing more to say (no output kept, nothing cached: the common case by far)
is nothing more; any other case (failed, errored, timed out, with an output or a cached side)
keeps its whole record (:mod:`proctor.sdk.records`) in ``odd``, by offset from ``start``. So a
Python task's loop appends one float per passing case, and the worker turns the columns into
the stored Arrow batch (:func:`proctor.storage.columns.batch_of`) without reading a dict per
case.

:meth:`records` gives the same dicts the record path (``evaluate_batch``) gives (a passing
case's ``durationMs`` from its seconds, so a record :meth:`add` took may come back a last bit
off): for a record that cannot be encoded, the JSON-lines format and tests.

A case counts once its seconds are appended, which the loops do last: a case interrupted
half-way (the worker abandoning it at shutdown) leaves nothing that counts (what it left in
``odd`` or the identity columns past the last case's seconds is ignored).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

from proctor.sdk.records import Record, case_record, side_record

PLAIN_KEYS = frozenset(
    ("index", "status", "durationMs", "error", "errorType", "violations", "id", "partition")
)
"""The keys of a one-side record that :class:`BatchRecords` can hold without the dict."""
_COMPARED_KEYS = (PLAIN_KEYS - {"violations"}) | {"baseline", "candidate"}
_SIDE_KEYS = frozenset(("passed", "errored", "violations", "error", "errorType"))


class BatchRecords:
    """The records of consecutive cases from ``start``, with ``sides`` sides each (module doc).

    ``since`` is when the case being evaluated now began (:func:`time.perf_counter`): the
    worker's hang watch reads it while the batch runs.
    """

    __slots__ = ("ids", "odd", "partitions", "seconds", "sides", "since", "start")

    def __init__(self, start: int, sides: int = 1) -> None:
        if sides not in (1, 2):
            raise ValueError(f"a case has 1 or 2 sides, not {sides}")
        self.start = start
        self.sides = sides
        self.seconds: list[float] = []
        self.ids: list[str | None] | None = None
        self.partitions: list[str | None] | None = None
        self.odd: dict[int, Record] = {}
        self.since = time.perf_counter()

    @classmethod
    def of(cls, start: int, sides: int, records: Iterable[Record]) -> BatchRecords:
        """The batch of ``records`` (those of ``start``, ``start + 1``, ...)."""
        out = cls(start, sides)
        for record in records:
            out.add(record)
        return out

    def __len__(self) -> int:
        return len(self.seconds)

    @property
    def end(self) -> int:
        """One past the last case recorded."""
        return self.start + len(self.seconds)

    def with_identity(self, ids: bool = True, partitions: bool = True) -> None:
        """Give the cases an ``id`` and a ``partition`` column (dataset rows; None for the
        cases before)."""
        n = len(self.seconds)
        if ids and self.ids is None:
            self.ids = [None] * n
        if partitions and self.partitions is None:
            self.partitions = [None] * n

    def add_identity(self, row_id: str | None, partition: str | None) -> None:
        """The next case's dataset row (after :meth:`with_identity`)."""
        if self.ids is None or self.partitions is None:
            raise ValueError("with_identity() first: these cases are not dataset rows")
        self.ids.append(row_id)
        self.partitions.append(partition)

    def add(self, record: Record) -> None:
        """Append the next case's record, whatever made it."""
        offset = len(self.seconds)
        if record["index"] != self.start + offset:
            raise ValueError(f"record of case {record['index']} where {self.start + offset} is due")
        self.with_identity("id" in record, "partition" in record)
        if self.ids is not None:
            self.ids.append(record.get("id"))
        if self.partitions is not None:
            self.partitions.append(record.get("partition"))
        if not self._plain(record):
            self.odd[offset] = record
        self.seconds.append((record.get("durationMs") or 0.0) / 1000.0)  # as to_batch() has it
        self.since = time.perf_counter()

    def _plain(self, record: Record) -> bool:
        """Whether ``record`` says no more than "every side passed"."""
        if record["status"] != "passed" or not self.columnar(record):
            return False
        if ("id" in record or "partition" in record) and not (
            isinstance(record.get("id"), str) and "partition" in record
        ):
            return False  # an identity records() would not give back as it is
        if self.sides == 1:
            return _clean(record)
        return _passed(record["baseline"]) and _passed(record["candidate"])

    def columnar(self, record: Record) -> bool:
        """Whether ``record`` fits the record batch's columns without its own: no output kept,
        no cached side (:func:`proctor.storage.columns.batch_of`)."""
        if self.sides == 1:
            return record.keys() <= PLAIN_KEYS
        return record.keys() <= _COMPARED_KEYS and all(
            isinstance(s := record.get(k), dict) and s.keys() <= _SIDE_KEYS
            for k in ("baseline", "candidate")
        )

    def odd_records(self) -> dict[int, Record]:
        """``odd`` of the cases recorded (see the module doc on an interrupted case)."""
        n = len(self.seconds)
        return {k: r for k, r in self.odd.items() if k < n}

    def statuses(self) -> Counter[str]:
        """How many cases passed, failed and errored."""
        odd = self.odd_records()
        counts = Counter(r["status"] for r in odd.values())
        if len(self) > len(odd):
            counts["passed"] += len(self) - len(odd)
        return counts

    def records(self) -> list[Record]:
        """The case records, as the record path gives them."""
        odd = self.odd_records()
        out = []
        for offset, seconds in enumerate(self.seconds):
            record = odd.get(offset)
            if record is None:
                index = self.start + offset
                passed = [side_record([], None) for _ in range(self.sides)]
                record = case_record(index, passed, seconds * 1000.0, self._identity(offset))
            out.append(record)
        return out

    def _identity(self, offset: int) -> dict[str, Any] | None:
        """A passing case's ``id`` and ``partition``; None for a case that is no dataset row
        (see :meth:`_plain`)."""
        row_id = self.ids[offset] if self.ids is not None else None
        if row_id is None:
            return None
        partition = self.partitions[offset] if self.partitions is not None else None
        return {"id": row_id, "partition": partition}


def _clean(record: Record) -> bool:
    """No violation, no error."""
    return (
        not record.get("violations")
        and record.get("error") is None
        and record.get("errorType") is None
    )


def _passed(side: Record) -> bool:
    return side.get("passed") is True and not side.get("errored") and _clean(side)
