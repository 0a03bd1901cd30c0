"""The SDK over dataset rows: a task sees the row as its case (generate is not called), a row
that cannot be read errors its case alone (badInput), records carry id/partition, and kept
outputs are capped with a clear error; for Python and command tasks, in a batch and by side."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proctor.api.v1alpha1.evalrun import CompareSpec, TaskSpec
from proctor.sdk import Property, Task, load_task
from proctor.sdk.cases import DatasetRow
from proctor.stats.aggregate import Aggregate

ROWS = [
    DatasetRow(0, {"x": 2}, "f.jsonl#0", "day=01"),
    DatasetRow(1, None, "f.jsonl#1", "day=01", error="dataset file f.jsonl row 1: not JSON"),
    DatasetRow(2, {"x": 3}, "f.jsonl#2", None),
    DatasetRow(3, {"x": 50}, "f.jsonl#3", None),
]


class Rows:
    def __init__(self, rows: list[DatasetRow]) -> None:
        self.list = rows
        self.reads: list[tuple[int, int]] = []

    def rows(self, start: int, end: int) -> Iterator[DatasetRow]:
        self.reads.append((start, end))
        return iter(self.list[start:end])


class Double(Task):
    """A dataset-only task: no generate(); the output is twice x, which must be even."""

    properties = (Property("even", lambda case, out: isinstance(out, str) or out % 2 == 0),)

    def solve(self, case: Any) -> Any:
        return "y" * case["x"] if case["x"] > 10 else case["x"] * 2


def double(case: dict[str, Any]) -> int:
    return int(case["x"]) * 2


def odd(case: dict[str, Any]) -> int:
    return int(case["x"]) * 2 + 1


def python_task(compare: bool = False, max_output: int | None = 16) -> Any:
    spec = TaskSpec(entrypoint="tests.test_sdk_rows:Double")
    sides = None
    if compare:
        sides = CompareSpec.model_validate(
            {"baseline": {"ref": "tests.test_sdk_rows:double"},
             "candidate": {"ref": "tests.test_sdk_rows:odd"}}
        )  # fmt: skip
    return load_task(spec, sides, 0, rows=Rows(ROWS), max_output=max_output)


def test_python_task_takes_rows_and_records_identity_and_outputs() -> None:
    with python_task() as task:
        records = list(task.evaluate_batch(0, 4, 10.0))
    assert [r["index"] for r in records] == [0, 1, 2, 3]
    assert [r["id"] for r in records] == [row.id for row in ROWS]
    assert [r["partition"] for r in records] == ["day=01", "day=01", None, None]
    assert [r["status"] for r in records] == ["passed", "errored", "passed", "errored"]
    assert records[0]["output"] == 4
    assert (records[1]["errorType"], records[1]["output"]) == ("badInput", None)
    assert "f.jsonl row 1: not JSON" in records[1]["error"]
    # 50 "y"s are 52 bytes of JSON, over the 16-byte cap: the side errors, saying so.
    assert records[3]["errorType"] == "unencodable"
    assert "52 bytes of JSON, over spec.results.maxOutputBytes (16)" in records[3]["error"]


def test_without_outputs_kept_there_is_no_output_field() -> None:
    with python_task(max_output=None) as task:
        records = list(task.evaluate_batch(0, 3, 10.0))
    assert all("output" not in r for r in records)


def test_a_bad_row_errors_both_sides_and_is_not_evaluated() -> None:
    with python_task(compare=True) as task:
        records = list(task.evaluate_batch(0, 3, 10.0))
        side = list(task.evaluate_side(1, 3, 1, 10.0))
        assert task.identity(2) == {"id": "f.jsonl#2", "partition": None}
    bad = records[1]
    assert bad["baseline"]["errorType"] == bad["candidate"]["errorType"] == "badInput"
    assert records[0]["baseline"]["output"] == 4
    assert records[0]["candidate"]["output"] == 5
    agg = Aggregate()
    for record in records:
        agg.add(record)
    assert agg.unattributable == 1
    assert [s["index"] for s in side] == [1, 2]
    assert side[0]["errorType"] == "badInput"
    assert side[1]["output"] == 7


COMMAND = """
import json, sys
for line in sys.stdin:
    req = json.loads(line)
    x = req["case"]["x"]
    print(json.dumps({"index": req["index"], "passed": x % 2 == 0, "violations": [],
                      "output": {"id": req["id"], "big": "z" * x}}), flush=True)
"""


def test_command_task_gets_the_row_and_never_the_bad_one(tmp_path: Path) -> None:
    script = tmp_path / "cmd.py"
    script.write_text(COMMAND)
    spec = TaskSpec(command=[sys.executable, str(script)])
    rows = Rows(ROWS)
    with load_task(spec, None, 0, rows=rows, max_output=64) as task:
        records = list(task.evaluate_batch(0, 4, 10.0))
        side = list(task.evaluate_side(0, 2, 0, 10.0))
    assert [r["status"] for r in records] == ["passed", "errored", "failed", "errored"]
    assert records[0]["output"] == {"id": "f.jsonl#0", "big": "zz"}
    assert records[0]["id"] == "f.jsonl#0"
    assert records[1]["errorType"] == "badInput"
    assert records[3]["errorType"] == "unencodable"
    assert [s["index"] for s in side] == [0, 1]
    assert side[1]["errorType"] == "badInput"
    assert rows.reads[0] == (0, 4)  # the batch's rows in one read


def test_generate_is_needed_only_without_a_dataset() -> None:
    with pytest.raises(NotImplementedError, match=r"cases\.dataset"):
        Double().generate(0, 0)
