"""Result objects as Arrow columns: the schema, encode/decode round trips, objects written by
Proctor 0.1 (JSON lines) read beside them, overlaps counted once, torn objects detected."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import zstandard

from proctor.ranges import Range
from proctor.sdk.records import case_record, side_record
from proctor.storage import (
    CorruptObjectError,
    LocalBlobs,
    RunProgress,
    RunStorage,
    UnencodableError,
)
from proctor.storage.columns import SCHEMA, conform, to_batch, to_records
from proctor.storage.run import decompress


def plain(i: int, **extra: Any) -> dict[str, Any]:
    """A one-side record: every 3rd case failed, every 7th errored."""
    if i % 7 == 0:
        side = side_record([], f"boom at {i}", "timeout")
    else:
        side = side_record(["sorted"] if i % 3 == 0 else [], None)
    return {**case_record(i, [side], 1.5 + i), **extra}


def compared(i: int) -> dict[str, Any]:
    base = side_record([], None)
    cand = side_record(["stable", "sorted"] if i % 2 else [], None)
    base["output"], cand["output"] = [i, "x"], {"y": i}
    return case_record(i, [base, cand], 2.0)


ROUND_TRIPS = {
    "plain": [plain(i) for i in range(10)],
    "dataset rows with outputs": [
        plain(
            i,
            id=f"part-0.csv#{i}",
            partition="year=2025/month=12" if i < 5 else None,
            output={"label": i % 2, "text": "é"},
        )
        for i in range(10)
    ],
    "a row without id beside rows with one": [plain(0, id="a"), plain(1), plain(2, id="c")],
    "comparison with outputs": [compared(i) for i in range(6)],
    "comparison, baseline errored": [
        case_record(0, [side_record([], "x", "crashed"), side_record([], None)], 1.0)
    ],
    "a cached side of a plain run": [
        case_record(0, [{**side_record([], None), "cachedFrom": "ns/first"}], 0.0),
        plain(1),
    ],
    "a comparison whose baseline is cached": [
        case_record(
            i,
            [
                {**side_record([], None), "cached": True, "cachedFrom": "first"},
                side_record(["sorted"] if i else [], None),
            ],
            1.0,
        )
        for i in range(3)
    ],
    "output of null, a number, a string": [
        plain(0, output=None),
        plain(1, output=3.5),
        plain(2, output="text"),
    ],
}


@pytest.mark.parametrize("records", ROUND_TRIPS.values(), ids=list(ROUND_TRIPS))
def test_records_round_trip_through_columns(records: list[dict[str, Any]]) -> None:
    table = conform(pa.Table.from_batches([to_batch(records)]))
    assert table.schema == SCHEMA
    back = to_records(table)
    for got, given in zip(back, records, strict=True):
        want = dict(given)
        if want.get("output", 0) is None:
            del want["output"]  # a null output is no output
        for key in ("id", "partition"):
            if want.get(key, 0) is None:
                del want[key]
        assert got.pop("durationMs") == pytest.approx(want.pop("durationMs"))
        assert got == want


def test_columns_of_a_plain_and_of_a_compared_record() -> None:
    row = conform(pa.Table.from_batches([to_batch([plain(3, id="f#3", output=[1])])]))
    assert row.to_pylist() == [
        {"index": 3, "id": "f#3", "partition": None, "outcome": "failed", "seconds": 0.0045,
         "passed": False, "error": None, "errorType": None, "violations": ["sorted"],
         "output": "[1]", "cached_from": None, "baseline_passed": None, "baseline_error": None,
         "baseline_errorType": None, "baseline_violations": None, "baseline_output": None,
         "baseline_cached_from": None}
    ]  # fmt: skip
    (row,) = conform(pa.Table.from_batches([to_batch([compared(1)])])).to_pylist()
    assert (row["outcome"], row["passed"], row["violations"]) == (
        "failed", False, ["stable", "sorted"]
    )  # fmt: skip
    assert (row["baseline_passed"], row["baseline_violations"]) == (True, [])
    assert json.loads(row["output"]) == {"y": 1}
    assert json.loads(row["baseline_output"]) == [1, "x"]


def test_an_object_holds_only_the_columns_its_records_fill() -> None:
    names = to_batch([plain(0), plain(1)]).schema.names
    assert names == ["index", "outcome", "seconds", "passed", "error", "errorType", "violations"]


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        (pa.table({"index": pa.array([0], pa.int64())}), "'outcome' is missing"),
        (pa.table({"index": ["0"]}), "'index' is string"),
    ],
)
def test_conform_refuses_a_foreign_table(table: pa.Table, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        conform(table)


@pytest.fixture(params=["zstd", "gzip", "none"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> RunStorage:
    return RunStorage(LocalBlobs(tmp_path), "run", compression=request.param)


def test_objects_are_arrow_files_read_back_whole(storage: RunStorage) -> None:
    records = [plain(i, id=f"r{i}", output={"i": i}) for i in range(20)]
    storage.write_results(Range(0, 20), records)
    ((_, key),) = storage.result_keys()
    suffix = {"zstd": ".arrow.zst", "gzip": ".arrow.gz", "none": ".arrow"}[storage.compression]
    assert key.endswith(f"000000000000-000000000020{suffix}")
    data = storage.blobs.get(key)
    assert data is not None
    reader = pa.ipc.open_file(pa.py_buffer(decompress(data, key)))
    assert reader.schema.metadata == {b"proctor.records": b"1"}
    got = list(storage.iter_records())
    assert [g["id"] for g in got] == [f"r{i}" for i in range(20)]
    assert [g["output"] for g in got] == [{"i": i} for i in range(20)]


@pytest.mark.parametrize("cut", [1, 7, 200, 10_000])
def test_a_torn_object_is_detected_and_not_counted(storage: RunStorage, cut: int) -> None:
    storage.write_results(Range(0, 5), [plain(i) for i in range(5)])
    storage.write_results(Range(5, 500), [plain(i) for i in range(5, 500)])
    key = storage.result_key(Range(5, 500))
    data = storage.blobs.get(key)
    assert data is not None
    storage.blobs.put(key, data[: max(1, len(data) - cut)])
    with pytest.raises(CorruptObjectError, match="cannot be read"):
        list(storage.iter_records())
    with pytest.raises(CorruptObjectError):
        list(storage.iter_tables())
    progress = RunProgress(storage, total=500)
    assert progress.refresh() == 5
    assert progress.corrupt == {key: Range(5, 500)}


def test_an_object_with_the_wrong_indexes_is_corrupt(storage: RunStorage) -> None:
    key = storage.result_key(Range(0, 3))
    storage.blobs.put(key, storage.encode_results([plain(0), plain(2), plain(1)]))
    with pytest.raises(CorruptObjectError, match="one record per case"):
        storage.read_checked(key)


def legacy_object(records: list[dict[str, Any]]) -> bytes:
    """A results object as Proctor 0.1 wrote it: zstd JSON lines."""
    raw = "".join(json.dumps(r) + "\n" for r in records).encode()
    return zstandard.ZstdCompressor().compress(raw)


def test_a_run_started_before_the_upgrade_resumes_reading_both(tmp_path: Path) -> None:
    storage = RunStorage(LocalBlobs(tmp_path), "run", attempt="abc123")
    old = [plain(i) for i in range(0, 30)]
    storage.blobs.put("run/results/000000000000-000000000030.abc123.jsonl.zst", legacy_object(old))
    # And one 0.1 object overlapping an Arrow one, as a lost lease can leave: counted once.
    storage.blobs.put(
        "run/results/000000000040-000000000060.abc123.jsonl.zst",
        legacy_object([plain(i) for i in range(40, 60)]),
    )
    storage.write_results(Range(30, 50), [plain(i) for i in range(30, 50)])
    assert [r for r, _ in storage.result_keys()] == [Range(0, 30), Range(30, 50), Range(40, 60)]
    assert [r["index"] for r in storage.iter_records()] == list(range(60))
    tables = list(storage.iter_tables())
    assert [t.num_rows for t in tables] == [30, 20, 10]
    assert pa.concat_tables(tables).column("index").to_pylist() == list(range(60))
    progress = RunProgress(storage, total=60)
    assert progress.refresh() == 60
    assert progress.aggregate.failed + progress.aggregate.errored == sum(
        1 for i in range(60) if i % 3 == 0 or i % 7 == 0
    )
    assert progress.aggregate.first_failing == [0, 3, 6, 7, 9, 12, 14, 15, 18, 21]


def test_overlapping_arrow_objects_export_each_index_once(storage: RunStorage) -> None:
    for r in (Range(0, 4), Range(0, 10), Range(4, 12), Range(20, 25)):
        storage.write_results(r, [plain(i) for i in range(r.start, r.end)])
    indexes = pa.concat_tables(storage.iter_tables()).column("index").to_pylist()
    assert indexes == [*range(12), *range(20, 25)]


def test_an_attempt_id_cannot_pass_for_a_kind_of_object(tmp_path: Path) -> None:
    for bad in ("arrow", "arrowx", "jsonl"):
        with pytest.raises(ValueError, match="not start with json or arrow"):
            RunStorage(LocalBlobs(tmp_path), "run", attempt=bad)


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ({"violations": ["\udc80"]}, "surrogates not allowed"),  # JSON can, Arrow cannot
        ({"output": {1, 2}}, "set is not JSON serializable"),
        ({"error": 3, "status": "errored"}, "ArrowTypeError"),
    ],
)
def test_a_record_that_cannot_be_written_errors_its_case_only(
    tmp_path: Path, bad: dict[str, Any], words: str
) -> None:
    storage = RunStorage(LocalBlobs(tmp_path), "run")
    records = [plain(i, id=f"row-{i}") for i in range(4)]
    records[2] = {**records[2], **bad}
    with pytest.raises(UnencodableError):
        storage.write_results(Range(0, 4), records)
    fixed = [storage.recordable(r) for r in records]
    assert fixed[:2] == records[:2]
    assert (fixed[2]["status"], fixed[2]["errorType"], fixed[2]["id"]) == (
        "errored", "unencodable", "row-2"
    )  # fmt: skip
    assert words in fixed[2]["error"]
    storage.write_results(Range(0, 4), fixed)
    assert [r["status"] for r in storage.iter_records()][2] == "errored"
