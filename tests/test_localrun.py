"""``proctor run``: local workers, the embedded queue, the summary and the exit codes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from proctor.cli import main
from proctor.local.run import (
    EXIT_ACCEPT,
    EXIT_REJECT,
    EXIT_USAGE,
    TAIL_REFRESH_SECONDS,
    pause,
)

REPO = Path(__file__).resolve().parent.parent

MANIFEST = """
apiVersion: proctor.dev/v1alpha1
kind: EvalRun
metadata:
  name: {name}
spec:
  image: proctor/proctor:0.1.0
  task:
    entrypoint: {entrypoint}
    params: {params}
  cases:
    count: {count}
    seed: 42
{compare}
  batch:
    initialSize: 50
  retries: 2
  queue:
    type: redis
    lease: 1s
  caseTimeout: 10s
"""

COMPARE = """
  compare:
    baseline:
      ref: proctor.examples.topk:top_k_sorted
    candidate:
      ref: proctor.examples.topk:{candidate}
    minDelta: -0.01
"""


@pytest.fixture(autouse=True)
def _task_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.chdir(tmp_path)


def run(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    *,
    name: str,
    entrypoint: str = "proctor.examples.topk:task",
    params: str = "{maxLength: 50, k: 5}",
    count: int = 600,
    candidate: str | None = None,
) -> tuple[int, dict[str, Any]]:
    compare = COMPARE.format(candidate=candidate) if candidate else ""
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        MANIFEST.format(
            name=name, entrypoint=entrypoint, params=params, count=count, compare=compare
        )
    )
    capsys.readouterr()
    code = main(["run", str(path), "--workers", "2", "--json"])
    out = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(out[-1]) if out else {}


def test_accepting_comparison(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, summary = run(tmp_path, capsys, name="same", candidate="top_k_heap")
    assert code == EXIT_ACCEPT
    assert summary["decision"] == "accept"
    assert (summary["total"], summary["completed"], summary["deadLettered"]) == (600, 600, 0)
    assert summary["interval"][0] <= 0 <= summary["interval"][1]
    # The merged results: one Parquet file, one row per case (docs/datasets.md#results).
    results = Path(summary["resultsUri"].removeprefix("file://"))
    assert results == tmp_path / "proctor-results" / "same" / "results.parquet"
    import pyarrow.parquet as pq

    table = pq.read_table(results)
    assert table.column("index").to_pylist() == list(range(600))
    assert table.column("baseline_passed").null_count == 0
    assert (tmp_path / "proctor-results" / "same" / "summary.json").is_file()


def test_rejecting_comparison(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, summary = run(tmp_path, capsys, name="buggy", candidate="top_k_buggy")
    assert code == EXIT_REJECT
    assert summary["decision"] == "reject"
    assert summary["candidatePassRate"] < summary["baselinePassRate"]
    # What failed, for people: the candidate's violations by count, the first failing cases.
    assert summary["topViolations"][0]["name"].startswith("candidate/")
    assert summary["topViolations"][0]["count"] > 0
    first = summary["firstFailing"]
    assert first == sorted(first)
    assert 0 < len(first) <= 10


def test_poison_case_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, summary = run(
        tmp_path,
        capsys,
        name="poison",
        entrypoint="tests.test_worker_tasks:Faulty",
        params="{crash: [123], raise: [7]}",
        count=300,
    )
    # The crash is attributed in isolation (issue 15, finding 1): case 123 is recorded as an
    # errored case of the one side, like the exception at 7, and nothing is dead-lettered.
    assert code == EXIT_ACCEPT
    assert summary["deadLettered"] == 0
    assert summary["completed"] == 300
    assert summary["errored"] == 2
    assert summary["decision"] is None


def test_invalid_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: proctor.dev/v1alpha1\nkind: EvalRun\nmetadata: {name: x}\nspec: {}\n"
    )
    assert main(["run", str(bad), "--json"]) == EXIT_USAGE
    assert "invalid" in capsys.readouterr().err


def test_unloadable_task(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = run(tmp_path, capsys, name="nope", entrypoint="no.such.module:task", count=10)
    assert code == EXIT_USAGE


@pytest.mark.parametrize(
    ("refresh", "tail", "expected"),
    [
        (0.25, False, 0.25),
        (0.25, True, TAIL_REFRESH_SECONDS),
        (0.01, True, 0.01),  # never slower than asked
        (0.01, False, 0.01),
    ],
)
def test_the_parent_looks_often_only_at_the_end(
    refresh: float, tail: bool, expected: float
) -> None:
    assert pause(refresh, tail=tail) == expected
