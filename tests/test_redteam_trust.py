"""The red-team review of issue 15's fixes: early stopping on a sample biased by crashes (1),
cases no side can be blamed for (2, 3), resume fingerprints (4) and worker failures (7b, 7c,
7d)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from proctor.cli import main
from proctor.local.run import EXIT_INCOMPLETE, EXIT_REJECT, EXIT_USAGE
from proctor.stats.passrates import Aggregate, summarize

REPO = Path(__file__).resolve().parent.parent
OPERATOR = REPO / "operator"

HEADER = """
apiVersion: proctor.dev/v1alpha1
kind: EvalRun
metadata:
  name: {name}
spec:
  image: proctor/proctor:0.1.0
"""

COMPARE = """
  task:
    entrypoint: {task}
    params: {params}
  cases: {{count: {count}, seed: 1}}
  compare:
    baseline: {{ref: "tests.localrun_tasks:{baseline}"}}
    candidate: {{ref: "tests.localrun_tasks:{candidate}"}}
    minDelta: -0.05
  batch: {{initialSize: {batch}}}
  caseTimeout: 2s
"""


@pytest.fixture(autouse=True)
def _task_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = os.pathsep.join([str(OPERATOR), str(REPO), os.environ.get("PYTHONPATH", "")])
    monkeypatch.setenv("PYTHONPATH", path)
    monkeypatch.chdir(tmp_path)


def write(tmp_path: Path, name: str, body: str, file: str | None = None) -> Path:
    path = tmp_path / (file or f"{name}.yaml")
    path.write_text(HEADER.format(name=name) + body)
    return path


def compare_run(
    tmp_path: Path,
    name: str,
    *,
    task: str = "tests.test_worker_tasks:Indexed",
    params: str = "{}",
    count: int = 100,
    baseline: str = "index_slow",
    candidate: str = "index_slow",
    batch: int = 50,
    extra: str = "",
) -> Path:
    body = COMPARE.format(
        task=task, params=params, count=count, baseline=baseline, candidate=candidate, batch=batch
    )
    return write(tmp_path, name, body + extra)


def run_here(
    capsys: pytest.CaptureFixture[str], path: Path, *args: str
) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    code = main(["run", str(path), "--workers", "2", "--json", *args])
    out = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(out[-1]) if out else {}


# -- 1 ----------------------------------------------------------------------------------------


def test_redteam1_early_stop_waits_for_crashed_entries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The candidate kills its worker on a quarter of the cases, in blocks of 25; while a
    # crashed block waits for its lease and isolation, clean blocks finish. A look at what is
    # recorded then sees a candidate that never crashes.
    path = compare_run(
        tmp_path,
        "es",
        count=600,
        candidate="index_block_crash",
        batch=25,
        extra="  earlyStopping: {enabled: true, minCases: 100, checkEvery: 50}\n"
        "  workers: {failureBudget: 1000}\n",
    )
    code, summary = run_here(capsys, path)
    assert summary["decision"] == "reject", summary
    assert code == EXIT_REJECT
    assert summary["candidatePassRate"] < 0.9


def test_redteam1_early_look_sees_only_the_resolved_prefix(tmp_path: Path) -> None:
    from proctor.queue.base import Range
    from proctor.storage import RunProgress, RunStorage
    from proctor.storage.blobs import LocalBlobs

    storage = RunStorage(LocalBlobs(tmp_path), "r1", attempt="a1")
    ok = {"passed": True, "errored": False, "violations": [], "error": None, "errorType": None}
    bad = {**ok, "passed": False, "errored": True, "error": "crashed", "errorType": "crashed"}

    def records(start: int, end: int, cand: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            {"index": i, "status": "passed", "baseline": ok, "candidate": cand}
            for i in range(start, end)
        ]

    progress = RunProgress(storage, 40)
    storage.write_results(Range(0, 10), records(0, 10, ok))
    storage.write_results(Range(20, 40), records(20, 40, ok))
    progress.refresh()
    assert progress.aggregate.total == 30
    assert (progress.resolved.total, progress.resolved_end) == (10, 10)
    storage.write_results(Range(10, 20), records(10, 20, bad))
    progress.refresh()
    assert (progress.resolved.total, progress.resolved_end) == (40, 40)
    assert progress.resolved.candidate_errored == 10
    # A resumed coordinator continues from the checkpointed prefix.
    progress.checkpoint()
    again = RunProgress.resume(storage, 40)
    assert (again.resolved.total, again.resolved_end) == (40, 40)


# -- 2 and 3 ----------------------------------------------------------------------------------


def test_redteam2_both_sides_errored_is_undecided(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = compare_run(tmp_path, "chk", task="tests.localrun_tasks:BoolCheck")
    code, summary = run_here(capsys, path)
    assert code == EXIT_INCOMPLETE, summary
    assert summary["decision"] == "undecided"
    assert "100 of 100" in summary["reason"]
    assert "both sides errored" in summary["reason"]
    assert summary["notEvaluated"] == 100


def _side(passed: bool, errored: bool = False, error_type: str | None = None) -> dict[str, Any]:
    return {"passed": passed, "errored": errored, "errorType": error_type}


@pytest.mark.parametrize(
    ("record", "unattributable"),
    [
        ({"status": "passed", "baseline": _side(True), "candidate": _side(True)}, 0),
        (
            {"status": "errored", "baseline": _side(True), "candidate": _side(False, True)},
            0,
        ),
        (
            {
                "status": "errored",
                "baseline": _side(False, True, "crashed"),
                "candidate": _side(False, True, "crashed"),
            },
            1,
        ),
        ({"status": "errored", "errorType": "task", "violations": []}, 1),
        ({"status": "errored", "errorType": "crashed", "violations": []}, 0),
        (
            {
                "status": "errored",
                "errorType": "task",
                "baseline": _side(False, True, "task"),
                "candidate": _side(False, True, "task"),
            },
            1,
        ),
    ],
)
def test_redteam2_aggregate_counts_unattributable_cases(
    record: dict[str, Any], unattributable: int
) -> None:
    agg = Aggregate()
    agg.add(record)
    assert agg.unattributable == unattributable
    assert Aggregate.from_json(agg.to_json()).unattributable == unattributable


def test_redteam2_unattributable_cases_never_decide() -> None:
    from proctor.api.v1alpha1.evalrun import CompareSpec

    compare = CompareSpec.model_validate(
        {"baseline": {"ref": "a"}, "candidate": {"ref": "b"}, "minDelta": -0.05}
    )
    agg = Aggregate()
    for i in range(100):
        errored = i % 10 == 7
        side = _side(not errored, errored, "crashed" if errored else None)
        agg.add({"status": "errored" if errored else "passed", "baseline": side, "candidate": side})
    summary = summarize(agg, compare, complete=True, total=100)
    assert summary.decision == "undecided"
    assert summary.not_evaluated == 10
    assert "10 of 100" in (summary.reason or "")
    plain = summarize(agg, None, complete=True, total=100)
    assert plain.reason is not None
    assert plain.not_evaluated == 10


def test_redteam3_generate_crash_is_not_blamed_on_the_implementations(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = compare_run(
        tmp_path,
        "gen",
        task="tests.localrun_tasks:GenCrash",
        params="{mode: exit}",
        count=60,
        batch=30,
        extra="  workers: {failureBudget: 100}\n",
    )
    code, summary = run_here(capsys, path)
    assert code == EXIT_INCOMPLETE, summary
    assert summary["decision"] == "undecided"
    assert "6 of 60" in summary["reason"]


def test_redteam3_generate_raise_without_compare_is_not_attributable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = """
  task:
    entrypoint: tests.localrun_tasks:GenCrash
    params: {mode: raise}
  cases: {count: 40, seed: 1}
"""
    code, summary = run_here(capsys, write(tmp_path, "genraise", body))
    assert code == EXIT_INCOMPLETE, summary
    assert summary["notEvaluated"] == 4
    assert "generate" in summary["reason"]


# -- 4 ----------------------------------------------------------------------------------------


def test_redteam4_resume_refuses_another_case_timeout_image_or_env(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = compare_run(tmp_path, "fp", count=100, batch=50)
    code, _ = run_here(capsys, first)
    assert code == 0
    text = first.read_text()
    other = tmp_path / "other.yaml"
    other.write_text(
        text.replace("caseTimeout: 2s", "caseTimeout: 5s\n  env: [{name: MODE, value: x}]").replace(
            "image: proctor/proctor:0.1.0", "image: proctor/proctor:0.2.0"
        )
    )
    capsys.readouterr()
    assert main(["run", str(other), "--workers", "2", "--json", "--resume"]) == EXIT_USAGE
    err = capsys.readouterr().err
    for name in ("caseTimeout", "image", "env"):
        assert name in err, err


# -- 7 ----------------------------------------------------------------------------------------


def test_redteam7b_failure_budget_counts_without_compare(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = """
  task:
    entrypoint: tests.test_worker_tasks:Faulty
    params: {crash: [5, 23]}
  cases: {count: 40, seed: 1}
  workers: {failureBudget: 0}
"""
    code, summary = run_here(capsys, write(tmp_path, "f2b", body))
    assert code == EXIT_INCOMPLETE, summary
    assert "failure budget" in (summary["reason"] or ""), summary


def test_redteam7c_exit_status_0_before_the_end_is_a_worker_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = """
  task: {entrypoint: tests.localrun_tasks:Exit0At7}
  cases: {count: 40, seed: 1}
  workers: {failureBudget: 0}
"""
    code, summary = run_here(capsys, write(tmp_path, "exit0", body))
    assert code == EXIT_INCOMPLETE, summary
    assert "failure budget" in (summary["reason"] or ""), summary


def test_redteam7d_missing_command_binary_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = """
  task: {command: ["/nonexistent/bin/solver", "x"]}
  cases: {count: 10}
"""
    path = write(tmp_path, "nobin", body)
    capsys.readouterr()
    assert main(["run", str(path), "--workers", "2", "--json"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "/nonexistent/bin/solver" in err


def test_redteam7e_working_directory_is_not_a_secret() -> None:
    from proctor.redact import forget_secrets, redact_text, remember_environment

    try:
        remember_environment({"PWD": "/work/runs", "OLDPWD": "/tmp/before", "DB_PWD": "hunter22"})
        text = "differs from the run at file:///work/runs/res/sig; was in /tmp/before; hunter22"
        assert redact_text(text) == (
            "differs from the run at file:///work/runs/res/sig; was in /tmp/before; ***"
        )
    finally:
        forget_secrets()


def test_redteam7f_a_replaced_attempt_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import subprocess
    import sys
    import time

    first = compare_run(tmp_path, "twice", count=3000, batch=50)
    proc = subprocess.Popen(
        [sys.executable, "-m", "proctor", "run", str(first), "--workers", "2", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        results = tmp_path / "proctor-results" / "twice" / "results"
        deadline = time.monotonic() + 60
        while not (results.is_dir() and any(results.iterdir())) and time.monotonic() < deadline:
            time.sleep(0.2)
        second = compare_run(
            tmp_path,
            "twice",
            count=100,
            batch=50,
            extra="",
        )
        code, _ = run_here(capsys, second)
        assert code != EXIT_USAGE
        out, _err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["decision"] == "undecided", summary
    assert "another start of this run" in summary["reason"], summary
