"""The result cache over dataset rows (``proctor run``): a row is keyed by its content, so an
edited row misses while the others hit; identities and outputs of cached cases are kept; a
command task is fingerprinted by the files its command names."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from proctor.cli import main
from proctor.storage import open_storage
from tests.test_localrun_dataset import ECHO  # the same command task

REPO = Path(__file__).resolve().parent.parent

MANIFEST = """
apiVersion: proctor.dev/v1alpha1
kind: EvalRun
metadata:
  name: {name}
spec:
  image: proctor/proctor:0.1.0
  task: {task}
  cases:
    dataset: {{uri: in}}
  results:
    outputs: true
  cache:
    mode: readWrite
  batch:
    initialSize: 37
  caseTimeout: 10s
"""


@pytest.fixture(autouse=True)
def _task_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.chdir(tmp_path)


def write_rows(tmp_path: Path, values: list[Any]) -> None:
    data = tmp_path / "in"
    data.mkdir(exist_ok=True)
    lines = [v if isinstance(v, str) else json.dumps({"x": v}) for v in values]
    (data / "rows.jsonl").write_text("\n".join(lines) + "\n")


def run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, task: dict[str, Any]
) -> dict[str, Any]:
    path = tmp_path / f"{name}.yaml"
    path.write_text(MANIFEST.format(name=name, task=json.dumps(task)))
    capsys.readouterr()
    main(["run", str(path), "--workers", "2", "--json"])
    out = capsys.readouterr().out.strip().splitlines()
    summary: dict[str, Any] = json.loads(out[-1])
    return summary


def records(name: str) -> list[dict[str, Any]]:
    root = Path("proctor-results").resolve().as_uri()
    return list(open_storage(root, name).of_current_attempt().iter_records())


def test_an_edited_row_misses_and_the_others_hit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "echo.py").write_text(ECHO)
    task = {"command": [sys.executable, str(tmp_path / "echo.py")]}
    values: list[Any] = list(range(120))
    values[50] = "not json"  # a bad row: badInput, never cached
    write_rows(tmp_path, values)
    first = run(tmp_path, capsys, "first", task)
    assert first["cache"]["hits"] == 0
    assert first["cache"]["misses"] == 120
    values[7] = 1007  # edited in place: its content, so its key, changed
    write_rows(tmp_path, values)
    second = run(tmp_path, capsys, "second", task)
    assert second["cache"] == {**second["cache"], "hits": 118, "misses": 2}
    got = records("second")
    assert [r["index"] for r in got] == list(range(120))
    assert got[7].get("cached") is None
    assert got[7]["output"] == 2014
    assert got[8]["cached"] is True
    assert got[8]["cachedFrom"] == "first"
    assert got[8]["output"] == 16
    assert got[8]["id"] == "rows.jsonl#8"
    assert got[10]["violations"] == ["five"]  # a cached failure is still a failure
    assert got[50]["errorType"] == "badInput"
    assert (second["passed"], second["failed"]) == (first["passed"], first["failed"])
    # A changed command script is another implementation: nothing hits.
    (tmp_path / "echo.py").write_text(ECHO + "\n# edited\n")
    third = run(tmp_path, capsys, "third", task)
    assert third["cache"]["hits"] == 0
