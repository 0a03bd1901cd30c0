"""Results out: export in Parquet, JSON lines and CSV read back (pyarrow, DuckDB), the merged
results and a batch-scoring run's partitioned outputs, and ``proctor results``."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from proctor.cli import main
from proctor.ranges import Range
from proctor.sdk.records import case_record, side_record
from proctor.storage import LocalBlobs, RunStorage
from proctor.storage.columns import SCHEMA
from proctor.storage.export import FORMATS, export, finish_results, write_outputs

DAYS = ("year=2025/month=12/day=01", "year=2025/month=12/day=02", None)


def record(i: int, *, outputs: bool = False, compare: bool = False) -> dict[str, Any]:
    """Case ``i``: every 5th failed (``sorted``, every 10th also ``length``), every 9th errored;
    dataset rows of three partitions (the third not partitioned)."""
    if i % 9 == 0:
        side = side_record([], f"ValueError: bad row {i}", "exception")
    else:
        side = side_record((["sorted", "length"] if i % 10 == 0 else ["sorted"]) if i % 5 == 0
                           else [], None)  # fmt: skip
    if outputs:
        side["output"] = {"score": i / 10, "label": f"L{i % 3}"}
    sides = [side_record([], None), side] if compare else [side]
    rec = case_record(i, sides, 4.0)
    rec["id"] = f"input/part-{i % 3}.csv#{i // 3}"
    if DAYS[i % 3] is not None:
        rec["partition"] = DAYS[i % 3]
    if outputs and not compare:
        rec["output"] = side.pop("output")
    return rec


def fill(storage: RunStorage, n: int, size: int = 25, **kind: bool) -> None:
    for start in range(0, n, size):
        r = Range(start, min(n, start + size))
        storage.write_results(r, [record(i, **kind) for i in range(r.start, r.end)])


@pytest.fixture
def storage(tmp_path: Path) -> RunStorage:
    return RunStorage(LocalBlobs(tmp_path / "results"), "run")


FAILED = [i for i in range(100) if i % 9 and i % 5 == 0]
ERRORED = [i for i in range(100) if i % 9 == 0]


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_writes_one_row_per_case_in_each_format(
    storage: RunStorage, tmp_path: Path, fmt: str
) -> None:
    fill(storage, 100, outputs=True)
    # A worker that lost its lease wrote [10, 40) too: still one row per case.
    storage.write_results(Range(10, 40), [record(i, outputs=True) for i in range(10, 40)])
    out = tmp_path / f"out.{fmt}"
    assert export(storage, fmt, out) == 100  # type: ignore[arg-type]
    if fmt == "parquet":
        table = pq.read_table(out)
        assert table.schema.remove_metadata() == SCHEMA.remove_metadata()
        rows = table.to_pylist()
        outputs = [json.loads(r["output"]) for r in rows]
    elif fmt == "jsonl":
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        outputs = [r["output"] for r in rows]
    else:
        with out.open(newline="") as f:
            rows = list(csv.DictReader(f))
        assert list(rows[0]) == SCHEMA.names
        outputs = [json.loads(r["output"]) for r in rows]
        for r in rows:
            r["index"], r["violations"] = int(r["index"]), json.loads(r["violations"])
    assert [r["index"] for r in rows] == list(range(100))
    assert [r["index"] for r in rows if r["outcome"] == "failed"] == FAILED
    assert [r["index"] for r in rows if r["outcome"] == "errored"] == ERRORED
    assert rows[10]["violations"] == ["sorted", "length"]
    assert rows[4]["id"] == "input/part-1.csv#1"
    assert outputs[7] == {"score": 0.7, "label": "L1"}


def test_duckdb_reads_the_parquet_export(storage: RunStorage, tmp_path: Path) -> None:
    duckdb = pytest.importorskip("duckdb")
    fill(storage, 100, compare=True)
    out = tmp_path / "results.parquet"
    export(storage, "parquet", out)
    con = duckdb.connect()
    got = con.execute(
        "SELECT count(*), count(DISTINCT index), sum(CASE WHEN outcome = 'failed' THEN 1 END), "
        "sum(CASE WHEN baseline_passed THEN 1 END) FROM read_parquet(?)",
        [str(out)],
    ).fetchone()
    assert got == (100, 100, len(FAILED), 100)
    top = con.execute(
        "SELECT v, count(*) AS n FROM (SELECT unnest(violations) AS v FROM read_parquet(?)) "
        "GROUP BY v ORDER BY n DESC",
        [str(out)],
    ).fetchall()
    assert top == [("sorted", len(FAILED)), ("length", len([i for i in FAILED if i % 10 == 0]))]


def test_a_batch_scoring_run_writes_outputs_in_the_input_partitions(
    storage: RunStorage, tmp_path: Path
) -> None:
    fill(storage, 90, size=20, outputs=True)
    done = finish_results(storage)
    root = tmp_path / "results" / "run"
    assert done.results_uri == (root / "results.parquet").as_uri()
    assert done.outputs_uri == (root / "outputs").as_uri()
    files = sorted(p.relative_to(root / "outputs").as_posix() for p in root.rglob("outputs/**/*"))
    assert [f for f in files if f.endswith(".parquet")] == [
        "part-00000.parquet",
        "year=2025/month=12/day=01/part-00000.parquet",
        "year=2025/month=12/day=02/part-00000.parquet",
    ]
    assert "_SUCCESS" in files
    dataset = ds.dataset(root / "outputs", format="parquet", partitioning="hive",
                         exclude_invalid_files=True)  # fmt: skip
    table = dataset.to_table().sort_by("index")
    assert table.column("index").to_pylist() == list(range(90))
    day1 = table.filter(ds.field("day") == 1)
    assert day1.column("index").to_pylist() == list(range(0, 90, 3))
    assert json.loads(day1.column("output")[1].as_py()) == {"score": 0.3, "label": "L0"}
    assert day1.column("id")[1].as_py() == "input/part-0.csv#1"
    unpartitioned = pq.read_table(root / "outputs" / "part-00000.parquet")
    assert unpartitioned.column("index").to_pylist() == list(range(2, 90, 3))


def test_outputs_of_a_big_partition_are_split_into_parts(
    storage: RunStorage, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr("proctor.storage.export.PART_ROWS", 10)
    fill(storage, 60, size=10, outputs=True)
    write_outputs(storage)
    day = tmp_path / "results" / "run" / "outputs" / "year=2025" / "month=12" / "day=01"
    parts = sorted(day.glob("*.parquet"))
    assert [p.name for p in parts] == ["part-00000.parquet", "part-00001.parquet"]
    indexes = [i for p in parts for i in pq.read_table(p).column("index").to_pylist()]
    assert indexes == list(range(0, 60, 3))


@pytest.mark.parametrize("kind", [{}, {"compare": True, "outputs": True}])
def test_runs_that_are_not_batch_scoring_write_no_outputs(
    storage: RunStorage, tmp_path: Path, kind: dict[str, bool]
) -> None:
    fill(storage, 30, **kind)
    assert finish_results(storage).outputs_uri is None
    assert not (tmp_path / "results" / "run" / "outputs").exists()
    assert pq.read_table(tmp_path / "results" / "run" / "results.parquet").num_rows == 30


MANIFEST = """\
apiVersion: proctor.dev/v1alpha1
kind: EvalRun
metadata:
  name: scored
spec:
  image: x
  task: {entrypoint: proctor.examples.topk:task}
  cases: {count: 100}
"""


def test_proctor_results_prints_what_failed_and_exports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "run.yaml"
    manifest.write_text(MANIFEST)
    results_dir = tmp_path / "proctor-results"
    fill(RunStorage(LocalBlobs(results_dir), "scored"), 100)
    base = [str(manifest), "--results-dir", str(results_dir)]
    assert main(["results", *base]) == 0
    text = capsys.readouterr().out
    assert "100 cases recorded" in text
    assert f"{100 - len(FAILED) - len(ERRORED)} passed, {len(FAILED)} failed" in text
    assert "  " + str(len(FAILED)) + "  sorted" in text
    assert "first failing cases: 0, 5, 9, 10, 15, 18, 20, 25, 27, 30" in text
    assert main(["results", *base, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["topViolations"][0] == {"name": "sorted", "count": len(FAILED)}
    assert data["recorded"] == 100
    out = tmp_path / "cases.csv"
    assert main(["results", *base, "--format", "csv", "--out", str(out)]) == 0
    assert "wrote 100 cases" in capsys.readouterr().out
    assert len(out.read_text().splitlines()) == 101


def test_proctor_results_says_what_is_wrong(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "run.yaml"
    manifest.write_text(MANIFEST)
    results_dir = tmp_path / "proctor-results"
    base = [str(manifest), "--results-dir", str(results_dir)]
    assert main(["results", *base]) == 3
    assert "no results of run 'scored' under file://" in capsys.readouterr().err
    assert main(["results", *base, "--run-id", "../x"]) == 2
    assert "--run-id" in capsys.readouterr().err
    assert main(["results", str(tmp_path / "missing.yaml")]) == 2
    storage = RunStorage(LocalBlobs(results_dir), "scored")
    fill(storage, 50)
    key = storage.result_key(Range(25, 50))
    data = storage.blobs.get(key)
    assert data is not None
    storage.blobs.put(key, data[:-9])
    assert main(["results", *base, "--out", str(tmp_path / "x.parquet")]) == 4
    err = capsys.readouterr().err
    assert f"result object {key} cannot be read" in err
    assert not (tmp_path / "x.parquet").exists()
    assert main(["results", *base]) == 0  # the summary counts what it can read, and says so
    assert f"warning: result object {key} cannot be read" in capsys.readouterr().out


def test_proctor_results_names_an_s3_uri_without_its_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "run.yaml"
    manifest.write_text(MANIFEST)
    uri = "s3://AKIAEXAMPLE:hunter2@bucket/prefix"
    assert main(["results", str(manifest), "--storage", uri]) == 2
    err = capsys.readouterr().err
    assert "hunter2" not in err
    assert "AWS_ACCESS_KEY_ID" in err


def test_merged_results_of_a_whole_table(storage: RunStorage, tmp_path: Path) -> None:
    fill(storage, 100, compare=True)
    merged = tmp_path / "results" / "run" / "results.parquet"
    finish_results(storage, keep=False)
    table = pq.read_table(merged)
    assert table.num_rows == 100
    assert pa.compute.sum(table.column("baseline_passed")).as_py() == 100


def test_merged_results_are_written_in_row_groups_of_many_objects(
    storage: RunStorage, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A row group per object made the footer, held by the writer until it closes, grow with
    # every case: +32 MB of the operator's RSS at 250,000 cases (issue 21).
    monkeypatch.setattr("proctor.storage.export.ROW_GROUP_ROWS", 40)
    fill(storage, 100, size=10, compare=True)
    finish_results(storage, keep=False)
    merged = pq.ParquetFile(tmp_path / "results" / "run" / "results.parquet")
    sizes = [merged.metadata.row_group(i).num_rows for i in range(merged.num_row_groups)]
    assert sizes == [40, 40, 20]
    assert merged.read().column("index").to_pylist() == list(range(100))


def test_a_torn_object_leaves_the_operator_summary_on_the_objects_folder(
    storage: RunStorage,
) -> None:
    """An early-stopped run can end with a torn object not evaluated again: the run still
    ends (no pass that raises forever), its resultsUri naming the objects' folder."""
    from proctor.api.v1alpha1.evalrun import EvalRunSpec, ResultSummary
    from proctor.connection import RunRef
    from proctor.evalrun.act import write_summary
    from proctor.storage import RunProgress

    fill(storage, 50)
    key = storage.result_key(Range(25, 50))
    data = storage.blobs.get(key)
    assert data is not None
    storage.blobs.put(key, data[:-9])
    spec = EvalRunSpec.model_validate(
        {"image": "x", "task": {"entrypoint": "proctor.examples.topk:task"},
         "cases": {"count": 50}}
    )  # fmt: skip
    progress = RunProgress(storage, total=50)
    progress.refresh()
    result = write_summary(
        spec, storage, RunRef("ns", "run", "run", 1, {}), progress.snapshot(), ResultSummary()
    )
    assert result.results_uri == storage.results_uri()
    assert storage.blobs.get(storage.merged_key()) is None
    summary = storage.blobs.get("run/summary.json")
    assert summary is not None
    assert json.loads(summary)["resultsUri"] == storage.results_uri()


@pytest.mark.integration
def test_proctor_results_reads_s3_the_way_proctor_run_writes_it(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    moto_url: str,
    s3_bucket: str,
) -> None:
    from proctor.storage import open_storage

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    manifest = tmp_path / "run.yaml"
    manifest.write_text(MANIFEST)
    uri = f"s3://{s3_bucket}/runs"
    fill(open_storage(uri, "scored", region="us-east-1"), 100, outputs=True)
    out = tmp_path / "cases.parquet"
    assert main(["results", str(manifest), "--storage", uri, "--out", str(out)]) == 0
    assert pq.read_table(out).column("index").to_pylist() == list(range(100))
    assert main(["results", str(manifest), "--storage", f"s3://{s3_bucket}/elsewhere"]) == 3
    assert f"under s3://{s3_bucket}/elsewhere/scored" in capsys.readouterr().err
