"""The worker's batch path: a batch's records kept as columns (proctor.sdk.batch), filled by
PythonTask.evaluate_into and turned into the stored Arrow batch without a dict per case,
give exactly what the record path (evaluate_batch, to_batch) gives, case by case."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest

from proctor.sdk import (
    CaseInterrupted,
    Property,
    PythonTask,
    Relation,
    Task,
    clear_stop,
    request_stop,
)
from proctor.sdk.batch import BatchRecords
from proctor.sdk.cases import DatasetRow
from proctor.sdk.records import Record, case_record, side_record
from proctor.storage.columns import batch_of, to_batch
from tests.test_columns import ROUND_TRIPS, plain

__all__ = ["state_store"]
from tests.test_sdk import state_store


class Mixed(Task):
    """Case i: raises in generate() at 13 (the task's error), in the implementation at 5,
    sleeps past the timeout at 9, fails the property on multiples of 4, breaks the relation
    from 20 on, interrupts itself (a stop) when asked."""

    properties = (Property("not4", lambda case, out: out % 4 != 0 or out == 0),)
    relations = (
        Relation("shift", lambda case: case + 1, relate=lambda out, follow: follow == out + 1),
    )

    def generate(self, seed: int, index: int) -> int:
        if index == 13:
            raise ValueError("unlucky case")
        return index

    def solve(self, case: int) -> int:
        return shifty(case)


def shifty(case: int) -> int:
    if case == 5:
        raise RuntimeError("boom")
    if case == 9:
        time.sleep(0.5)
    return case if case < 20 else 20


def plus_one(case: int) -> int:
    return case + 1


class Plain(Task):
    """Every case passes; no properties, run() and check() are the Task's own."""

    def generate(self, seed: int, index: int) -> int:
        return index

    def solve(self, case: int) -> int:
        return case


class BadCheck(Task):
    """check() returns a set on odd cases: an unencodable side."""

    def generate(self, seed: int, index: int) -> int:
        return index

    def check(self, case: Any, output: Any) -> Any:
        return {"x"} if case % 2 else ()

    def solve(self, case: int) -> int:
        return case


class Rows:
    def __init__(self, rows: list[DatasetRow]) -> None:
        self.list = rows

    def rows(self, start: int, end: int) -> Iterator[DatasetRow]:
        return iter(self.list[start:end])


class Doubling(Task):
    properties = (Property("small", lambda case, out: out < 10),)

    def solve(self, case: Any) -> Any:
        return case["x"] * 2


ROWS = Rows(
    [
        DatasetRow(0, {"x": 2}, "f#0", "day=01"),
        DatasetRow(1, None, "f#1", "day=01", error="row 1: not JSON"),
        DatasetRow(2, {"x": 30}, "f#2", None),
        DatasetRow(3, {"x": 4}, "f#3", None),
    ]
)

TASKS: dict[str, tuple[Task, list[Any] | None, Rows | None, int | None]] = {
    "passed": (Plain(), None, None, None),
    "failed, errored, timed out, relations": (Mixed(), None, None, None),
    "comparison": (Mixed(), [shifty, plus_one], None, None),
    "unencodable check": (BadCheck(), None, None, None),
    "dataset rows, a bad one": (Doubling(), None, ROWS, None),
    "dataset rows compared": (Doubling(), [lambda c: c["x"], lambda c: c["x"] * 3], ROWS, None),
    "outputs kept": (Mixed(), None, None, 64),
}


def _without_time(records: list[Record]) -> list[Record]:
    return [{k: v for k, v in r.items() if k != "durationMs"} for r in records]


def _drop_seconds(batch: pa.RecordBatch) -> pa.RecordBatch:
    return batch.drop_columns(["seconds"])


@pytest.mark.parametrize("name", list(TASKS))
def test_evaluate_into_gives_the_record_paths_cases(name: str) -> None:
    task, impls, rows, max_output = TASKS[name]
    end = 4 if rows is not None else 24
    loaded = PythonTask(task, 3, impls, rows=rows, max_output=max_output)
    try:
        expected = list(loaded.evaluate_batch(0, end, 0.1))
        out = BatchRecords(0, loaded.sides)
        loaded.evaluate_into(0, end, 0.1, out)
    finally:
        loaded.close()
    assert len(out) == end
    assert out.end == end
    assert _without_time(out.records()) == _without_time(expected)
    assert out.statuses() == Counter(r["status"] for r in expected)
    assert _drop_seconds(batch_of(out)).equals(_drop_seconds(to_batch(expected)))
    assert all(s >= 0 for s in out.seconds)


def test_only_cases_with_something_to_say_keep_a_record() -> None:
    loaded = PythonTask(Mixed(), 3, None)
    out = BatchRecords(0)
    loaded.evaluate_into(0, 24, 0.1, out)
    loaded.close()
    assert sorted(out.odd) == [4, 5, 8, 9, 12, 13, 16, *range(20, 24)]
    assert out.odd[9]["errorType"] == "timeout"
    assert out.odd[13]["errorType"] == "task"
    assert out.odd[4]["errorType"] == "exception"  # its follow-up is case 5's input
    assert out.odd[12]["violations"] == ["not4"]
    assert out.odd[21]["violations"] == ["not4", "relation:shift"]  # the output is 20 from 20


def test_a_batch_ends_early_at_a_stop_with_what_was_done() -> None:
    class Stopping(Plain):
        def solve(self, case: int) -> int:
            if case == 6:
                request_stop()
            return case

    loaded = PythonTask(Stopping(), 0, None)
    request_stop()
    out = BatchRecords(10)
    loaded.evaluate_into(10, 30, 5.0, out)
    assert (len(out), out.end) == (0, 10)  # no case starts once a stop was requested
    clear_stop()
    out = BatchRecords(0)
    loaded.evaluate_into(0, 30, 5.0, out)
    loaded.close()
    assert (len(out), out.end) == (7, 7)  # case 6 finished; the rest go back to the queue


def test_an_interrupted_case_ends_the_batch_without_its_record() -> None:
    class Interrupting(Plain):
        def solve(self, case: int) -> int:
            if case == 3:
                request_stop()  # the worker stops; the case saves its state and says so
                raise CaseInterrupted
            return case

    loaded = PythonTask(Interrupting(), 0, None)
    out = BatchRecords(0)
    loaded.evaluate_into(0, 10, 5.0, out)
    loaded.close()
    assert out.end == 3
    assert [r["index"] for r in out.records()] == [0, 1, 2]


def test_evaluate_into_wants_an_empty_batch_at_its_start() -> None:
    loaded = PythonTask(Plain(), 0, None)
    with pytest.raises(ValueError, match="bad batch range"):
        loaded.evaluate_into(5, 10, 1.0, BatchRecords(0))
    loaded.close()


# -- records added one by one (the record path's tasks: cache, commands, isolation) --------


EXTRA = {
    "every side passed": [case_record(i, [side_record([], None)], 250.0 * i) for i in range(5)],
    "comparisons that passed": [
        case_record(i, [side_record([], None), side_record([], None)], 0.5) for i in range(3)
    ],
    "comparison, candidate failed": [
        case_record(0, [side_record([], None), side_record(["sorted"], None)], 1.0)
    ],
    "timed out": [case_record(0, [side_record([], "case timed out after 1s", "timeout")], 0.0)],
    "dataset rows that passed": [
        case_record(i, [side_record([], None)], 2.0, {"id": f"f#{i}", "partition": None})
        for i in range(3)
    ],
    "comparisons of rows": [
        case_record(i, [side_record([], None)] * 2, 2.0, {"id": f"f#{i}", "partition": "p=1"})
        for i in range(2)
    ],
    "a partition without an id": [{**plain(1), "partition": "p=2"}],
    "an id of null": [{**plain(1), "id": None, "partition": None}],
}


@pytest.mark.parametrize("name", [*ROUND_TRIPS, *EXTRA])
def test_added_records_come_back_and_encode_as_the_dicts_do(name: str) -> None:
    records = {**ROUND_TRIPS, **EXTRA}[name]
    start = records[0]["index"]
    sides = 2 if "baseline" in records[0] else 1
    batch = BatchRecords.of(start, sides, records)
    assert len(batch) == len(records)
    assert batch.records() == records
    assert batch_of(batch).equals(to_batch(records))
    assert batch.statuses() == Counter(r["status"] for r in records)


def test_passing_cases_keep_no_dict() -> None:
    batch = BatchRecords.of(1, 1, [plain(i) for i in range(1, 30)])
    # plain(): every 3rd failed, every 7th errored; the rest passed.
    assert sorted(batch.odd) == [i - 1 for i in range(1, 30) if i % 3 == 0 or i % 7 == 0]


def test_records_out_of_order_are_refused() -> None:
    batch = BatchRecords(0)
    with pytest.raises(ValueError, match="record of case 1 where 0 is due"):
        batch.add(plain(1))
    with pytest.raises(ValueError, match="1 or 2 sides"):
        BatchRecords(0, 3)


def test_what_an_abandoned_case_left_behind_is_ignored() -> None:
    batch = BatchRecords(0)
    batch.with_identity()
    for i in range(3):
        batch.add_identity(f"f#{i}", None)
        batch.seconds.append(0.001)
    # The case at offset 3 was abandoned after its record and row, before its seconds.
    batch.odd[3] = case_record(3, [side_record([], "x")], 1.0)
    batch.add_identity("f#3", None)
    assert len(batch) == 3
    assert batch.odd_records() == {}
    assert batch.statuses() == Counter(passed=3)
    assert [r["id"] for r in batch.records()] == ["f#0", "f#1", "f#2"]
    assert batch_of(batch).num_rows == 3
    assert batch_of(batch).column("id").to_pylist() == ["f#0", "f#1", "f#2"]


def test_batches_of_passing_cases_share_their_constant_columns() -> None:
    one = BatchRecords.of(0, 1, EXTRA["every side passed"])
    two = BatchRecords.of(
        5, 1, [case_record(i, [side_record([], None)], 1.0) for i in range(5, 10)]
    )
    a, b = batch_of(one), batch_of(two)
    assert a.column("outcome").to_pylist() == ["passed"] * 5
    assert a.column("violations").to_pylist() == [[]] * 5
    assert b.column("index").to_pylist() == list(range(5, 10))
    assert b.column("seconds").to_pylist() == [0.001] * 5


# -- findings of the review of the batch path ----------------------------------------------


class Strict(Plain):
    """Every output above 2 violates ``small``."""

    properties = (Property("small", lambda case, out: out <= 2),)


class Borrowing(Plain):
    """No properties of its own: its instance checks with another task's check()."""

    def __init__(self) -> None:
        super().__init__()
        self.check = Strict().check  # type: ignore[method-assign]


def test_finding_a_check_borrowed_from_another_task_still_runs() -> None:
    loaded = PythonTask(Borrowing(), 0, None)
    try:
        expected = list(loaded.evaluate_batch(0, 5, 1.0))
        out = BatchRecords(0)
        loaded.evaluate_into(0, 5, 1.0, out)
    finally:
        loaded.close()
    assert [r["status"] for r in expected] == ["passed"] * 3 + ["failed"] * 2
    assert out.statuses() == Counter(passed=3, failed=2)
    assert out.odd[3]["violations"] == ["small"]
