"""proctor.dataset: listing, formats, counting, the row index, range reads, identity, partitions
and bad input, on a local folder (the same code reads S3: tests/test_dataset_s3.py)."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from proctor.api.v1alpha1.evalrun import EvalRunSpec
from proctor.dataset import DatasetError, DatasetReader, Manifest, changed, load_manifest
from proctor.dataset.location import glob_regex, partition_of
from proctor.dataset.run import admit, dataset_location, open_reader, total_cases
from proctor.dataset.text import STRIDE
from proctor.storage import LocalBlobs, ObjectChangedError, RunProgress, RunStorage, StorageError


def spec_for(uri: str, count: int | None = None, **dataset: Any) -> EvalRunSpec:
    cases: dict[str, Any] = {"dataset": {"uri": uri, **dataset}}
    if count is not None:
        cases["count"] = count
    return EvalRunSpec.model_validate({"image": "x", "task": {"command": ["true"]}, "cases": cases})


def jsonl(path: Path, rows: list[Any], extra: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + extra)
    return path


def storage(tmp_path: Path, run: str = "run") -> RunStorage:
    return RunStorage(LocalBlobs(tmp_path / "results"), run)


def opened(tmp_path: Path, spec: EvalRunSpec) -> tuple[Manifest, DatasetReader]:
    st = storage(tmp_path)
    location = dataset_location(spec)
    manifest = admit(spec, st, location)
    return manifest, open_reader(spec, st, location)


def cases(reader: DatasetReader, start: int, end: int) -> list[Any]:
    return [row.case for row in reader.rows(start, end)]


def test_jsonl_rows_by_index_across_files_and_blocks(tmp_path: Path) -> None:
    n = STRIDE * 3 + 17
    jsonl(tmp_path / "data" / "a.jsonl", [{"i": i} for i in range(n)])
    jsonl(tmp_path / "data" / "b.jsonl", [{"i": n + i} for i in range(40)])
    manifest, reader = opened(tmp_path, spec_for(str(tmp_path / "data")))
    assert manifest.rows == n + 40
    assert [f.path for f in manifest.files] == ["a.jsonl", "b.jsonl"]
    # Every range, including those across a block edge and a file edge, is the rows asked for.
    for start, end in [(0, 1), (STRIDE - 1, STRIDE + 1), (n - 3, n + 3), (0, n + 40)]:
        assert cases(reader, start, end) == [{"i": i} for i in range(start, end)]


def test_the_index_lets_a_worker_read_only_its_range(tmp_path: Path) -> None:
    jsonl(tmp_path / "big.jsonl", [{"i": i, "pad": "x" * 100} for i in range(20 * STRIDE)])
    _, reader = opened(tmp_path, spec_for(str(tmp_path / "big.jsonl")))
    seen: list[tuple[int, int]] = []
    blobs = reader.location.blobs
    original = blobs.get_range

    def spy(key: str, start: int, end: int, etag: str | None = None) -> bytes:
        seen.append((start, end))
        return original(key, start, end, etag)

    blobs.get_range = spy  # type: ignore[method-assign]
    assert cases(reader, 10 * STRIDE + 5, 10 * STRIDE + 9)[0]["i"] == 10 * STRIDE + 5
    size = (tmp_path / "big.jsonl").stat().st_size
    assert len(seen) == 1
    assert seen[0][1] - seen[0][0] < size / 10


@pytest.mark.parametrize("fmt", ["jsonl.gz", "jsonl.zst"])
def test_compressed_jsonl_is_counted_and_read(tmp_path: Path, fmt: str) -> None:
    raw = "".join(json.dumps({"i": i}) + "\n" for i in range(1000)).encode()
    data = gzip.compress(raw) if fmt == "jsonl.gz" else zstandard.compress(raw)
    (tmp_path / f"rows.{fmt}").write_bytes(data)
    manifest, reader = opened(tmp_path, spec_for(str(tmp_path / f"rows.{fmt}")))
    assert manifest.rows == 1000
    assert manifest.files[0].index is None  # no offsets into a compressed stream
    assert cases(reader, 998, 1000) == [{"i": 998}, {"i": 999}]


def test_csv_header_quoted_newlines_and_string_values(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text('id,text\n1,"two\nlines"\n2,plain\n\n3,"a ""q"""\n')
    manifest, reader = opened(tmp_path, spec_for(str(tmp_path / "t.csv"), idField="id"))
    assert manifest.rows == 3
    rows = list(reader.rows(0, 3))
    assert [r.case for r in rows] == [
        {"id": "1", "text": "two\nlines"},
        {"id": "2", "text": "plain"},
        {"id": "3", "text": 'a "q"'},
    ]
    assert [r.id for r in rows] == ["1", "2", "3"]


def test_parquet_counted_from_footers_and_read_by_row_group(tmp_path: Path) -> None:
    for n in range(2):
        table = pa.table({"i": list(range(n * 1000, n * 1000 + 1000)), "s": ["v"] * 1000})
        pq.write_table(table, tmp_path / f"part-{n}.parquet", row_group_size=300)
    manifest, reader = opened(tmp_path, spec_for(str(tmp_path / "*.parquet"), columns=["i"]))
    assert manifest.rows == 2000
    assert cases(reader, 0, 2000) == [{"i": i} for i in range(2000)]
    assert cases(reader, 899, 1301) == [{"i": i} for i in range(899, 1301)]


def test_default_ids_and_hive_partitions(tmp_path: Path) -> None:
    jsonl(tmp_path / "in" / "year=2025" / "day=01" / "p.jsonl", [{"q": "a"}, {"q": "b"}])
    jsonl(tmp_path / "in" / "year=2025" / "day=02" / "p.jsonl", [{"q": "c", "day": "x"}])
    (tmp_path / "in" / "_SUCCESS").write_text("")
    _, reader = opened(tmp_path, spec_for(str(tmp_path / "in")))
    rows = list(reader.rows(0, 3))
    assert [r.id for r in rows] == [
        "year=2025/day=01/p.jsonl#0",
        "year=2025/day=01/p.jsonl#1",
        "year=2025/day=02/p.jsonl#0",
    ]
    assert [r.partition for r in rows] == ["year=2025/day=01"] * 2 + ["year=2025/day=02"]
    # Partition values become columns, unless the row has its own.
    assert rows[0].case == {"q": "a", "year": "2025", "day": "01"}
    assert rows[2].case["day"] == "x"


@pytest.mark.parametrize(
    ("rel", "partition"),
    [
        ("a.jsonl", None),
        ("x/a.jsonl", None),
        ("y=1/a.jsonl", "y=1"),
        ("y=1/m=2/a.jsonl", "y=1/m=2"),
        ("y=1/raw/a.jsonl", "y=1"),
    ],
)
def test_partition_of(rel: str, partition: str | None) -> None:
    assert partition_of(rel) == partition


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("*.csv", "a.csv", True),
        ("*.csv", "d/a.csv", False),
        ("**/*.csv", "d/e/a.csv", True),
        ("**/*.csv", "a.csv", True),
        ("year=*/part-?.parquet", "year=2025/part-1.parquet", True),
        ("year=*/part-?.parquet", "year=2025/part-10.parquet", False),
    ],
)
def test_glob(pattern: str, key: str, matches: bool) -> None:
    assert bool(glob_regex(pattern).fullmatch(key)) is matches


def test_a_malformed_row_errors_that_case_alone(tmp_path: Path) -> None:
    jsonl(tmp_path / "r.jsonl", [{"i": 0}], extra='{"i": 1\n[1, 2]\n{"i": 3}\n')
    manifest, reader = opened(tmp_path, spec_for(str(tmp_path / "r.jsonl")))
    assert manifest.rows == 4
    rows = list(reader.rows(0, 4))
    assert [r.case for r in rows] == [{"i": 0}, None, None, {"i": 3}]
    assert rows[1].error is not None
    assert "r.jsonl row 1: not JSON" in rows[1].error
    assert rows[2].error is not None
    assert "a JSON list, not an object" in rows[2].error


def test_a_missing_column_or_id_errors_the_case(tmp_path: Path) -> None:
    jsonl(tmp_path / "r.jsonl", [{"k": 1, "v": 2}, {"v": 3}, {"k": 4}])
    spec = spec_for(str(tmp_path / "r.jsonl"), idField="k", columns=["v"])
    _, reader = opened(tmp_path, spec)
    rows = list(reader.rows(0, 3))
    assert rows[0].case == {"v": 2}
    assert rows[0].id == "1"
    assert rows[1].error is not None
    assert "no 'k' (cases.dataset.idField)" in rows[1].error
    assert rows[2].error is not None
    assert "no column 'v'" in rows[2].error


def test_schema_change_between_files_names_the_file(tmp_path: Path) -> None:
    pq.write_table(pa.table({"a": [1]}), tmp_path / "1.parquet")
    pq.write_table(pa.table({"a": ["x"]}), tmp_path / "2.parquet")
    with pytest.raises(DatasetError, match=r"2\.parquet has other columns than 1\.parquet"):
        opened(tmp_path, spec_for(str(tmp_path)))


def test_csv_header_change_and_missing_column_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("x,y\n1,2\n")
    (tmp_path / "b.csv").write_text("x,z\n1,2\n")
    with pytest.raises(DatasetError, match=r"b\.csv has other columns than a\.csv"):
        opened(tmp_path, spec_for(str(tmp_path)))
    with pytest.raises(DatasetError, match=r"a\.csv: its header has no column 'q'"):
        opened(tmp_path, spec_for(str(tmp_path / "a.csv"), columns=["q"]))


def test_unreadable_missing_and_unknown_files_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DatasetError, match=r"bad\.parquet: it is not readable Parquet"):
        opened(tmp_path, spec_for(str(tmp_path / "bad.parquet")))
    with pytest.raises(DatasetError, match="does not exist"):
        opened(tmp_path, spec_for(str(tmp_path / "nope")))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("hi")
    with pytest.raises(DatasetError, match=r"'notes\.txt': its suffix names none of the formats"):
        opened(tmp_path, spec_for(str(tmp_path / "d")))
    with pytest.raises(DatasetError, match="holds no files"):
        opened(tmp_path, spec_for(str(tmp_path / "d" / "*.csv")))


def test_count_limit_and_total(tmp_path: Path) -> None:
    jsonl(tmp_path / "r.jsonl", [{"i": i} for i in range(10)])
    uri = str(tmp_path / "r.jsonl")
    assert total_cases(spec_for(uri), opened(tmp_path, spec_for(uri))[0]) == 10
    limited = spec_for(uri, limit=4)
    assert total_cases(limited, opened(tmp_path / "l", limited)[0]) == 4
    counted = spec_for(uri, count=3)
    assert total_cases(counted, opened(tmp_path / "c", counted)[0]) == 3
    too_many = spec_for(uri, count=11)
    with pytest.raises(DatasetError, match=r"cases\.count is 11 but the dataset has 10 rows"):
        admit(too_many, storage(tmp_path / "m"), dataset_location(too_many))


def test_manifest_is_stored_and_a_changed_file_is_detected(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "d" / "a.jsonl", [{"i": i} for i in range(5)])
    spec = spec_for(str(tmp_path / "d"))
    st = storage(tmp_path)
    location = dataset_location(spec)
    manifest = admit(spec, st, location)
    assert load_manifest(st) == manifest
    assert changed(manifest, location) is None
    path.write_text(path.read_text() + '{"i": 5}\n')
    os.utime(path, ns=(1, 1))
    why = changed(manifest, location)
    assert why is not None
    assert "a.jsonl changed since the run started" in why
    with pytest.raises(ObjectChangedError, match=r"a\.jsonl changed since it was listed"):
        list(open_reader(spec, st, location).rows(0, 1))
    path.unlink()
    assert "is gone" in (changed(manifest, location) or "")
    assert isinstance(ObjectChangedError("x"), StorageError)


def test_a_file_added_before_the_runs_files_is_a_change(tmp_path: Path) -> None:
    jsonl(tmp_path / "d" / "b.jsonl", [{"i": 0}])
    spec = spec_for(str(tmp_path / "d"))
    location = dataset_location(spec)
    manifest = admit(spec, storage(tmp_path), location)
    jsonl(tmp_path / "d" / "c.jsonl", [{"i": 1}])
    assert changed(manifest, location) is None  # after the run's files: its rows are the same
    jsonl(tmp_path / "d" / "a.jsonl", [{"i": 1}])
    assert "a.jsonl was added before b.jsonl" in (changed(manifest, location) or "")


def test_manifest_fingerprint_follows_the_files(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "a.jsonl", [{"i": 0}])
    spec = spec_for(str(path))
    first = admit(spec, storage(tmp_path, "one"), dataset_location(spec))
    again = admit(spec, storage(tmp_path, "two"), dataset_location(spec))
    assert first.fingerprint == again.fingerprint
    jsonl(path, [{"i": 0}, {"i": 1}])
    third = admit(spec, storage(tmp_path, "three"), dataset_location(spec))
    assert third.fingerprint != first.fingerprint


def test_a_checkpoint_of_other_dataset_files_is_not_resumed(tmp_path: Path) -> None:
    st = storage(tmp_path)
    progress = RunProgress(st, 10, dataset="first-files")
    progress.covered.add(0, 5)
    progress.checkpoint()
    assert list(RunProgress.resume(st, 10, "first-files").covered.intervals()) == [(0, 5)]
    assert list(RunProgress.resume(st, 10, "other-files").covered.intervals()) == []


def test_a_listing_that_fails_is_not_a_changed_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Red-team finding (merge review): a throttled or failed listing was reported as a change,
    and the operator failed the run with DatasetChanged for good. It raises, and is asked again."""
    jsonl(tmp_path / "d" / "a.jsonl", [{"i": i} for i in range(5)])
    spec = spec_for(str(tmp_path / "d"))
    location = dataset_location(spec)
    manifest = admit(spec, storage(tmp_path), location)

    def throttled() -> Any:
        raise StorageError("SlowDown: please reduce your request rate")
        yield  # a generator, as listings are

    monkeypatch.setattr(type(location), "files", lambda self: throttled())
    with pytest.raises(StorageError, match="SlowDown"):
        changed(manifest, location)
