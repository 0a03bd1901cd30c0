"""Counting result tables column at a time gives exactly what counting their records one by one
gives (``Aggregate.add``), for every kind of record a run writes."""

from __future__ import annotations

import dataclasses
from typing import Any

import pyarrow as pa
import pytest

from proctor.sdk.records import case_record, side_record
from proctor.stats.aggregate import MAX_FIRST_FAILING, MAX_VIOLATION_KEYS, Aggregate
from proctor.storage.columns import conform, to_batch, to_records
from proctor.storage.tally import aggregate_table


def side(i: int, salt: int) -> dict[str, Any]:
    """Passed, failed (one or two violations), or errored of each type, by index."""
    kind = (i * 7 + salt) % 9
    if kind == 0:
        return side_record([], f"boom {i}", "exception")
    if kind == 1:
        return side_record([], "slow", "timeout")
    if kind == 2:
        return side_record([], "died", "crashed")
    if kind in (3, 4):
        return side_record(["sorted"] if kind == 3 else ["sorted", f"relation:r{i % 3}"], None)
    return side_record([], None)


def cached(record: dict[str, Any], *sides: str) -> dict[str, Any]:
    """The record with these sides (``""``: a run without compare) reused from the cache."""
    for name in sides:
        side = record[name] if name else record
        side.update(cached=True, cachedFrom=f"run-{name or 'task'}")
    return record


def task_error(i: int) -> dict[str, Any]:
    return case_record(i, [side_record([], "generate raised", "task")], 1.0)


def bad_row(i: int) -> dict[str, Any]:
    return case_record(
        i, [side_record([], "row 3 does not parse", "badInput")], 1.0, {"id": f"f#{i}"}
    )


CASES = {
    "plain": [case_record(i, [side(i, 0)], 1.0) for i in range(60)],
    "compared": [case_record(i, [side(i, 0), side(i, 4)], 2.0) for i in range(90)],
    "compared, every pair of outcomes": [
        case_record(i, [side(i // 9, 0), side(i % 9, 0)], 2.0) for i in range(81)
    ],
    "task and bad-input errors": [task_error(i) if i % 2 else bad_row(i) for i in range(10)],
    "compared, a side's task error": [
        case_record(i, [side_record([], "x", "task"), side(i, 1)], 1.0) for i in range(9)
    ],
    "all passed": [case_record(i, [side_record([], None)], 1.0) for i in range(5)],
    "compared, all passed": [
        case_record(i, [side_record([], None), side_record([], None)], 1.0) for i in range(5)
    ],
    "compared, only the baseline failed": [
        case_record(i, [side_record(["p"], None), side_record([], None)], 1.0) for i in range(5)
    ],
    # Merge finding: the column-at-a-time count forgot the result cache's hits.
    "cached, plain": [cached(case_record(i, [side(i, 0)], 1.0), *[""][: i % 2]) for i in range(20)],
    "cached, all passed": [
        cached(case_record(i, [side_record([], None)], 1.0), "") for i in range(5)
    ],
    "cached, compared": [
        cached(case_record(i, [side(i, 0), side(i, 4)], 2.0), *["baseline", "candidate"][: i % 3])
        for i in range(30)
    ],
    "cached baseline, compared, all passed": [
        cached(case_record(i, [side_record([], None), side_record([], None)], 1.0), "baseline")
        for i in range(5)
    ],
    "more failing cases than kept": [
        case_record(i, [side_record(["p"], None)], 1.0) for i in range(3 * MAX_FIRST_FAILING)
    ],
    "more violation names than kept": [
        case_record(i, [side_record([f"v{i}"], None)], 1.0) for i in range(MAX_VIOLATION_KEYS + 20)
    ],
}


def by_records(table: pa.Table) -> Aggregate:
    agg = Aggregate()
    for record in to_records(table):
        agg.add(record)
    return agg


@pytest.mark.parametrize("records", CASES.values(), ids=list(CASES))
def test_a_table_counts_as_its_records_do(records: list[dict[str, Any]]) -> None:
    table = conform(pa.Table.from_batches([to_batch(records)]))
    assert dataclasses.asdict(aggregate_table(table)) == dataclasses.asdict(by_records(table))


@pytest.mark.parametrize(("start", "length"), [(0, 0), (0, 1), (5, 20), (30, 60)])
def test_a_slice_counts_only_its_rows(start: int, length: int) -> None:
    records = CASES["compared"]
    table = conform(pa.Table.from_batches([to_batch(records)])).slice(start, length)
    assert dataclasses.asdict(aggregate_table(table)) == dataclasses.asdict(by_records(table))
