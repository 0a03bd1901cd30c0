"""``proctor run`` over datasets: every row recorded exactly once, with its identity and output;
bad rows error their cases; a dataset in S3 (moto); samples; a changed dataset refused on resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from proctor.cli import main
from proctor.local.run import EXIT_ACCEPT, EXIT_INCOMPLETE, EXIT_USAGE
from proctor.storage import open_storage

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "manifests" / "samples"

MANIFEST = """
apiVersion: proctor.dev/v1alpha1
kind: EvalRun
metadata:
  name: {name}
spec:
  image: proctor/proctor:0.1.0
  task: {task}
  cases:
    {count}dataset: {dataset}
  results:
    outputs: true
  batch:
    initialSize: 37
  caseTimeout: 10s
"""

ECHO = """
import json, sys
for line in sys.stdin:
    req = json.loads(line)
    x = req["case"]["x"]
    out = {"index": req["index"], "passed": x % 5 != 0, "violations": [], "output": x * 2}
    if x % 5 == 0:
        out["violations"] = ["five"]
    print(json.dumps(out), flush=True)
"""


@pytest.fixture(autouse=True)
def _task_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.chdir(tmp_path)


def run(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    task: dict[str, Any],
    dataset: dict[str, Any],
    *args: str,
    count: int | None = None,
) -> tuple[int, dict[str, Any]]:
    path = tmp_path / f"{name}.yaml"
    counted = f"count: {count}\n    " if count is not None else ""
    path.write_text(
        MANIFEST.format(
            name=name, task=json.dumps(task), dataset=json.dumps(dataset), count=counted
        )
    )
    capsys.readouterr()
    code = main(["run", str(path), "--workers", "2", "--json", *args])
    captured = capsys.readouterr()
    out = captured.out.strip().splitlines()
    return code, json.loads(out[-1]) if out else {"error": captured.err}


def records(name: str, storage_uri: str | None = None) -> list[dict[str, Any]]:
    root = storage_uri or Path("proctor-results").resolve().as_uri()
    return list(open_storage(root, name).of_current_attempt().iter_records())


def test_jsonl_with_a_command_task_records_every_row_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "echo.py").write_text(ECHO)
    data = tmp_path / "in" / "year=2025"
    data.mkdir(parents=True)
    for day, rows in (("01", range(0, 300)), ("02", range(300, 500))):
        (data / f"day={day}.jsonl").write_text("".join(json.dumps({"x": x}) + "\n" for x in rows))
    (data / "day=03.jsonl").write_text('{"x": 500}\nnot json\n{"x": 502}\n')
    task = {"command": [sys.executable, str(tmp_path / "echo.py")]}
    code, summary = run(tmp_path, capsys, "cmd", task, {"uri": "in"})
    assert (summary["total"], summary["completed"], summary["errored"]) == (503, 503, 1)
    assert summary["notEvaluated"] == 1
    assert code == EXIT_INCOMPLETE
    got = records("cmd")
    assert [r["index"] for r in got] == list(range(503))
    assert got[7]["id"] == "year=2025/day=01.jsonl#7"
    assert got[7]["output"] == 14
    assert got[300]["id"] == "year=2025/day=02.jsonl#0"
    assert got[300]["output"] == 600
    assert got[300]["partition"] == "year=2025"
    bad = got[501]
    assert (bad["status"], bad["errorType"], bad.get("output")) == ("errored", "badInput", None)
    assert "day=03.jsonl row 1: not JSON" in bad["error"]
    assert sum(r["status"] == "failed" for r in got) == 101  # x % 5 == 0, x < 503, x != 501


def parquet_rows(path: Path, n: int) -> None:
    table = pa.table({"headline": [f"h{i} rally" for i in range(n)], "label": ["positive"] * n})
    pq.write_table(
        table.append_column("id", pa.array([f"r{i}" for i in range(n)])), path, row_group_size=128
    )


def test_parquet_with_a_python_task_records_every_row_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parquet_rows(tmp_path / "rows.parquet", 1000)
    task = {"entrypoint": "proctor.examples.headlines:task"}
    dataset = {"uri": "rows.parquet", "idField": "id", "columns": ["headline", "label"]}
    code, summary = run(tmp_path, capsys, "py", task, dataset)
    assert code == EXIT_ACCEPT
    assert (summary["total"], summary["completed"], summary["passed"]) == (1000, 1000, 1000)
    got = records("py")
    assert [r["index"] for r in got] == list(range(1000))
    assert [r["id"] for r in got] == [f"r{i}" for i in range(1000)]
    assert {r["output"] for r in got} == {"positive"}


def test_a_limit_and_a_count_too_large(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parquet_rows(tmp_path / "rows.parquet", 300)
    task = {"entrypoint": "proctor.examples.headlines:task"}
    code, summary = run(tmp_path, capsys, "lim", task, {"uri": "rows.parquet", "limit": 120})
    assert (code, summary["total"], summary["completed"]) == (EXIT_ACCEPT, 120, 120)
    code, failed = run(tmp_path, capsys, "big", task, {"uri": "rows.parquet"}, count=301)
    assert code == EXIT_USAGE
    assert "cases.count is 301 but the dataset has 300 rows" in failed["error"]


def test_resume_over_a_changed_dataset_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parquet_rows(tmp_path / "rows.parquet", 50)
    task = {"entrypoint": "proctor.examples.headlines:task"}
    code, _ = run(tmp_path, capsys, "res", task, {"uri": "rows.parquet"})
    assert code == EXIT_ACCEPT
    assert main(["run", str(tmp_path / "res.yaml"), "--resume", "--json"]) == EXIT_ACCEPT
    parquet_rows(tmp_path / "rows.parquet", 51)
    capsys.readouterr()
    assert main(["run", str(tmp_path / "res.yaml"), "--resume", "--json"]) == EXIT_USAGE
    err = " ".join(capsys.readouterr().err.split())  # unwrapped (a long path may be cut)
    assert "cannot --resume: dataset file" in err
    assert "changed since the run started" in err


@pytest.mark.integration
def test_parquet_in_s3_with_results_in_s3(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    s3_bucket: str,
    aws_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL",
    ):
        monkeypatch.setenv(key, aws_env[key])
    s3: Any = boto3.client("s3", endpoint_url=aws_env["AWS_ENDPOINT_URL"])
    for part in range(3):
        local = tmp_path / f"p{part}.parquet"
        parquet_rows(local, 400)
        s3.upload_file(str(local), s3_bucket, f"input/day=0{part}/part-{part}.parquet")
    s3.put_object(Bucket=s3_bucket, Key="input/_SUCCESS", Body=b"")
    storage = f"s3://{s3_bucket}/results"
    task = {"entrypoint": "proctor.examples.headlines:task"}
    dataset = {"uri": f"s3://{s3_bucket}/input/", "columns": ["headline", "label"]}
    code, summary = run(tmp_path, capsys, "s3", task, dataset, "--storage", storage)
    assert code == EXIT_ACCEPT, summary
    assert (summary["total"], summary["completed"]) == (1200, 1200)
    got = records("s3", storage)
    assert [r["index"] for r in got] == list(range(1200))
    assert got[400]["id"] == "day=01/part-1.parquet#0"
    assert got[400]["partition"] == "day=01"
    listed = s3.list_objects_v2(Bucket=s3_bucket, Prefix="results/s3/dataset/")
    assert [o["Key"] for o in listed["Contents"]] == ["results/s3/dataset/manifest.json"]


@pytest.mark.parametrize("sample", ["dataset-jsonl-command.yaml", "dataset-parquet-python.yaml"])
def test_dataset_samples_run(tmp_path: Path, sample: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "proctor", "run", str(SAMPLES / sample), "-n", "1", "--json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert (summary["total"], summary["completed"], summary["errored"]) == (30, 30, 0)


def test_metamorphic_guard_takes_dataset_rows_as_its_inputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from proctor.integrations.metamorphic_guard.adapter import load_spec

    spec = load_spec("top_k")
    inputs = [list(args) for args in spec.gen_inputs(60, 7)]
    lines = [json.dumps({"input": args}) for args in inputs] + ['{"no": "input"}']
    (tmp_path / "inputs.jsonl").write_text("\n".join(lines) + "\n")
    task = {"entrypoint": "proctor.mgadapter:task", "params": {"task": "top_k"}}
    path = tmp_path / "mg.yaml"
    path.write_text(
        MANIFEST.format(name="mg", task=json.dumps(task), count="",
                        dataset=json.dumps({"uri": "inputs.jsonl"}))
        + "  compare:\n"
        + "    baseline: {ref: proctor.mgadapter.impls:top_k_sorted}\n"
        + "    candidate: {ref: proctor.mgadapter.impls:top_k_heap}\n"
    )  # fmt: skip
    capsys.readouterr()
    code = main(["run", str(path), "--workers", "1", "--json"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["total"] == 61
    assert summary["completed"] == 61
    got = records("mg")
    assert got[60]["baseline"]["errorType"] == "badInput"
    assert "needs an 'input' column" in got[60]["baseline"]["error"]
    report = summary["metamorphicGuard"]
    assert report["n"] == 61
    assert report["proctor"]["complete"] is True
    assert all(r["status"] == "passed" for r in got[:60])
    # Metamorphic Guard's own rule would reject (minDelta 0.02 by default: equal sides), but
    # the unreadable row was not evaluated, so the run stays undecided (issue 15's rule).
    assert report["proctor"]["decision"] == "reject"
    assert summary["decision"] == "undecided"
    assert "Metamorphic Guard would say reject" in summary["reason"]
    assert code == EXIT_INCOMPLETE


SCORE_CSV = """
import json, sys
for line in sys.stdin:
    req = json.loads(line)
    x = int(req["case"]["x"])
    print(json.dumps({"index": req["index"], "passed": True, "violations": [],
                      "output": {"double": x * 2}}), flush=True)
"""


def test_a_hive_partitioned_csv_input_gives_partitioned_parquet_outputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 17's batch scoring: no compare, a Hive-partitioned CSV dataset in, its outputs out
    as Parquet in the same ``year=/month=/day=`` folders, every row once."""
    import pyarrow.dataset as ds

    (tmp_path / "score.py").write_text(SCORE_CSV)
    days = {"01": range(0, 120), "02": range(120, 170)}
    for day, xs in days.items():
        folder = tmp_path / "input" / "year=2025" / "month=12" / f"day={day}"
        folder.mkdir(parents=True)
        (folder / "part-0001.csv").write_text("x,headline\n" + "".join(f"{x},h{x}\n" for x in xs))
    task = {"command": [sys.executable, str(tmp_path / "score.py")]}
    code, summary = run(tmp_path, capsys, "score", task, {"uri": "input", "format": "csv"})
    assert (code, summary["total"], summary["completed"], summary["errored"]) == (0, 170, 170, 0)
    outputs = Path(summary["outputsUri"].removeprefix("file://"))
    parts = sorted(p.relative_to(outputs).as_posix() for p in outputs.rglob("*.parquet"))
    assert parts == [
        "year=2025/month=12/day=01/part-00000.parquet",
        "year=2025/month=12/day=02/part-00000.parquet",
    ]
    table = ds.dataset(outputs, format="parquet", partitioning="hive",
                       exclude_invalid_files=True).to_table().sort_by("index")  # fmt: skip
    assert table.column("index").to_pylist() == list(range(170))
    assert table.filter(ds.field("day") == 2).num_rows == 50
    doubled = [json.loads(o)["double"] for o in table.column("output").to_pylist()]
    assert doubled == [2 * x for x in range(170)]
    ids = table.column("id").to_pylist()
    assert ids[120] == "year=2025/month=12/day=02/part-0001.csv#0"
