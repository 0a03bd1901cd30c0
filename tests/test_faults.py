"""Findings 1, 6 and 7 of issue 15: a case whose implementation crashes, hangs or returns what
cannot be recorded counts as an error of the side at fault, and never vanishes from the rates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from proctor.api.quantity import parse_duration
from proctor.api.v1alpha1.evalrun import EvalRunSpec
from proctor.cli import main
from proctor.local.run import EXIT_INCOMPLETE, EXIT_REJECT, EXIT_USAGE
from proctor.queue import enqueue_run, open_queue
from proctor.sdk import LoadedTask, TaskLoadError, load_task
from proctor.sdk.records import case_record, encodable, side_record
from proctor.stats.passrates import Aggregate
from proctor.storage import open_storage
from proctor.worker.isolation import isolated_records
from proctor.worker.runtime import EXIT_HUNG, Worker, WorkerConfig
from tests.test_worker_tasks import Indexed

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
  cases:
    count: {count}
  compare:
    baseline:
      ref: tests.test_worker_tasks:ok
    candidate:
      ref: tests.test_worker_tasks:{candidate}
    minDelta: -0.05
  batch:
    initialSize: {size}
  queue:
    type: redis
    lease: 2s
  workers:
    failureBudget: {budget}
  caseTimeout: {timeout}
"""


@pytest.fixture(autouse=True)
def _task_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.chdir(tmp_path)


def proctor_run(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    candidate: str,
    *,
    count: int = 200,
    size: int = 10,
    budget: int = 1000,
    timeout: str = "10s",
    queue: str | None = None,
    entrypoint: str = "tests.test_worker_tasks:Indexed",
) -> tuple[int, dict[str, Any], list[dict[str, Any]]]:
    """``proctor run --workers 2 --json`` of the manifest: (exit code, summary, raw records)."""
    name = candidate.replace("_", "-")
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        MANIFEST.format(
            name=name,
            count=count,
            candidate=candidate,
            size=size,
            budget=budget,
            timeout=timeout,
            entrypoint=entrypoint,
        )
    )
    capsys.readouterr()
    args = ["run", str(path), "--workers", "2", "--json"] + (["--queue", queue] if queue else [])
    code = main(args)
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1]) if out else {}
    storage = open_storage((tmp_path / "proctor-results").as_uri(), name).of_current_attempt()
    records = [rec for _, key in storage.result_keys() for rec in storage.read_object(key)]
    return code, summary, records


def worker_starts(tmp_path: Path, run: str) -> int:
    logs = (tmp_path / "proctor-results" / run).glob("worker-*.log")
    return sum(p.read_text().count('"worker started"') for p in logs)


def test_finding1_crashing_candidate_counts_as_errored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], redis_url: str
) -> None:
    code, summary, records = proctor_run(tmp_path, capsys, "exit_at_7", queue=redis_url)
    assert sorted(r["index"] for r in records) == list(range(200))  # each exactly once
    crashed = [r for r in records if r["candidate"]["errorType"] == "crashed"]
    assert sorted(r["index"] for r in crashed) == list(range(7, 200, 10))
    assert all("exit code 9" in r["candidate"]["error"] for r in crashed)
    assert all(r["baseline"]["passed"] and r["errorType"] == "crashed" for r in crashed)
    assert summary["deadLettered"] == 0
    assert summary["candidatePassRate"] == pytest.approx(0.9)
    assert summary["baselinePassRate"] == 1.0
    assert (summary["completed"], summary["errored"]) == (200, 20)
    # delta -0.1, below minDelta -0.05 whatever the interval: reject.
    assert summary["decision"] == "reject"
    assert code == EXIT_REJECT
    # At most one worker crash per poison case: the redelivery isolates it.
    assert 1 <= worker_starts(tmp_path, "exit-at-7") - 2 <= 20


def _task(candidate: str, timeout: str) -> tuple[LoadedTask, float]:
    spec = EvalRunSpec.model_validate(
        {
            "image": "test",
            "task": {"entrypoint": "tests.test_worker_tasks:Indexed"},
            "cases": {"count": 20},
            "compare": {
                "baseline": {"ref": "tests.test_worker_tasks:ok"},
                "candidate": {"ref": f"tests.test_worker_tasks:{candidate}"},
            },
            "caseTimeout": timeout,
        }
    )
    return load_task(spec.task, spec.compare, spec.cases.seed), parse_duration(timeout)


@pytest.mark.parametrize(
    ("candidate", "index", "status", "error_type", "words"),
    [
        ("exit_at_7", 7, "errored", "crashed", "exit code 9"),
        ("exit_at_7", 6, "passed", None, None),
        ("hang_at_13", 13, "errored", "timeout", "did not stop"),
        ("lie_at_3", 3, "failed", None, None),
        ("set_at_5", 5, "errored", "unencodable", "set"),
    ],
)
def test_finding1_isolated_case_is_attributed_to_its_side(
    candidate: str, index: int, status: str, error_type: str | None, words: str | None
) -> None:
    task, timeout = _task(candidate, "1s")
    with task:
        (record,) = isolated_records(task, index, index + 1, timeout, threading.Event())
    assert record["index"] == index
    assert (record["status"], record["errorType"]) == (status, error_type)
    assert record["candidate"]["errorType"] == error_type
    assert record["baseline"] == {
        "passed": True, "errored": False, "violations": [], "error": None, "errorType": None
    }  # fmt: skip
    if words:
        assert words in record["candidate"]["error"]


def test_finding1_isolation_goes_on_after_a_crash() -> None:
    task, timeout = _task("exit_at_7", "5s")
    with task:
        records = list(isolated_records(task, 0, 30, timeout, threading.Event()))
    assert [r["index"] for r in records] == list(range(30))
    assert [r["index"] for r in records if r["status"] == "errored"] == [7, 17, 27]
    assert all(r["baseline"]["passed"] for r in records)


def test_finding6_hanging_candidate_is_timed_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, summary, records = proctor_run(
        tmp_path, capsys, "hang_at_13", count=40, timeout="1s", budget=5
    )
    assert sorted(r["index"] for r in records) == list(range(40))
    (hung,) = [r for r in records if r["status"] == "errored"]
    assert hung["index"] == 13
    assert hung["candidate"]["errorType"] == "timeout"
    assert hung["baseline"]["passed"]
    assert (summary["completed"], summary["errored"], summary["deadLettered"]) == (40, 1, 0)
    assert summary["candidatePassRate"] == pytest.approx(39 / 40)
    assert code in (0, 1)  # decided either way on 40 recorded cases; the run ended


def test_finding7_unencodable_check_errors_the_case(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, summary, records = proctor_run(tmp_path, capsys, "set_at_5", count=60, budget=5)
    assert sorted(r["index"] for r in records) == list(range(60))
    bad = [r for r in records if r["status"] == "errored"]
    assert sorted(r["index"] for r in bad) == list(range(5, 60, 10))
    assert all(r["candidate"]["errorType"] == "unencodable" for r in bad)
    assert "set" in bad[0]["candidate"]["error"]
    assert (summary["completed"], summary["errored"], summary["deadLettered"]) == (60, 6, 0)
    assert code == EXIT_REJECT


BAD_ANSWERS = """
import json, sys
for line in sys.stdin:
    req = json.loads(line)
    i = req["index"]
    if i in (10, 11, 12):
        print(f"not json {i}", flush=True)
    elif i == 20:
        print(json.dumps({"index": i, "violations": []}), flush=True)
    else:
        print(json.dumps({"index": i, "passed": True, "violations": []}), flush=True)
"""


def test_finding7_command_bad_answers_error_only_those_cases(tmp_path: Path) -> None:
    script = tmp_path / "answers.py"
    script.write_text(BAD_ANSWERS)
    spec = EvalRunSpec.model_validate(
        {"image": "t", "task": {"command": [sys.executable, str(script)]}, "cases": {"count": 300}}
    )
    with load_task(spec.task, None, 0) as task:
        records = list(task.evaluate_batch(0, 300, 10.0))
    assert [r["index"] for r in records] == list(range(300))
    bad = {r["index"]: r for r in records if r["status"] != "passed"}
    assert sorted(bad) == [10, 11, 12, 20]
    assert {r["errorType"] for r in bad.values()} == {"badOutput"}
    assert all(r["status"] == "errored" for r in bad.values())


def test_finding7_missing_command_binary_fails_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-binary"
    spec = EvalRunSpec.model_validate(
        {"image": "t", "task": {"command": [str(missing), "--serve"]}, "cases": {"count": 3}}
    )
    with pytest.raises(TaskLoadError, match=str(missing)):
        load_task(spec.task, None, 0)
    path = tmp_path / "cmd.yaml"
    path.write_text(
        "apiVersion: proctor.dev/v1alpha1\nkind: EvalRun\nmetadata: {name: cmd}\n"
        f"spec:\n  image: t\n  task: {{command: ['{missing}']}}\n  cases: {{count: 30}}\n"
    )
    capsys.readouterr()
    assert main(["run", str(path), "--workers", "1", "--json"]) == EXIT_USAGE


@pytest.mark.parametrize(
    ("value", "valid"),
    [("99999999999999h", False), ("169h", False), ("168h", True), ("30s", True), ("0s", True)],
)
def test_finding7_case_timeout_is_bounded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str, valid: bool
) -> None:
    body = {"image": "t", "task": {"entrypoint": "m:t"}, "cases": {"count": 1}}
    if valid:
        EvalRunSpec.model_validate({**body, "caseTimeout": value})
    else:
        with pytest.raises(ValueError, match="caseTimeout"):
            EvalRunSpec.model_validate({**body, "caseTimeout": value})
    path = tmp_path / "t.yaml"
    path.write_text(
        "apiVersion: proctor.dev/v1alpha1\nkind: EvalRun\nmetadata: {name: t}\n"
        f"spec: {{image: t, task: {{entrypoint: 'm:t'}}, cases: {{count: 1}}, "
        f"caseTimeout: '{value}'}}\n"
    )
    assert (main(["validate", str(path)]) == 0) is valid
    schema = EvalRunSpec.model_json_schema(by_alias=True)
    rules = json.dumps(schema["properties"]["caseTimeout"])
    assert "duration(self)" in rules
    assert "168h" in rules


def test_finding1_aggregate_counts_crashed_sides_as_errored() -> None:
    passed = side_record([], None)
    crashed = side_record(
        [], "the implementation killed its worker process (exit code 9)", "crashed"
    )
    agg = Aggregate()
    for i in range(10):
        agg.add(case_record(i, [passed, crashed if i == 7 else passed], 1.0))
    assert (agg.candidate_passed, agg.candidate_errored, agg.baseline_errored) == (9, 1, 0)
    assert (agg.errored, agg.baseline_only_passed) == (1, 1)
    assert Aggregate.from_json(agg.to_json()) == agg
    old = {k: v for k, v in agg.to_json().items() if not k.endswith("Errored")}
    assert Aggregate.from_json(old).candidate_errored == 0  # a checkpoint from before
    assert Aggregate().merge(agg).merge(agg).candidate_errored == 2


MG_MANIFEST = """
apiVersion: proctor.dev/v1alpha1
kind: EvalRun
metadata: {name: mg-crash}
spec:
  image: proctor/proctor:0.1.0
  task:
    entrypoint: proctor.mgadapter:task
    params: {task: top_k, minDelta: -0.05}
  cases: {count: 200, seed: 5}
  compare:
    baseline: {ref: proctor.integrations.metamorphic_guard.impls:top_k_sorted}
    candidate: {ref: tests.test_worker_tasks:top_k_exit_on_7}
    minDelta: -0.05
  batch: {initialSize: 20}
  workers: {failureBudget: 1000}
  caseTimeout: 30s
"""


def test_finding1_metamorphic_guard_report_counts_crashes_as_violations(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "mg.yaml"
    path.write_text(MG_MANIFEST)
    capsys.readouterr()
    code = main(["run", str(path), "--workers", "2", "--json"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    storage = open_storage((tmp_path / "proctor-results").as_uri(), "mg-crash").of_current_attempt()
    records = list(storage.iter_records())
    crashed = [r["index"] for r in records if r["candidate"]["errorType"] == "crashed"]
    assert crashed  # the seed gives inputs of every length
    assert (summary["completed"], summary["deadLettered"]) == (200, 0)
    report = summary["metamorphicGuard"]
    assert report["candidate"]["passes"] == 200 - len(crashed)
    assert report["baseline"]["passes"] == 200
    # Each crash is an execution violation (the report lists the first violationCap, 25).
    executions = [v for v in report["candidate"]["prop_violations"] if v["property"] == "execution"]
    assert [v["test_case"] for v in executions] == crashed[: len(executions)]
    assert report["proctor"]["propertyViolations"]["candidate"] == len(crashed)
    assert summary["decision"] == "reject"
    assert code == EXIT_REJECT


class NotForkSafe(Indexed):
    fork_safe = False


def test_finding1_a_task_that_cannot_fork_is_not_isolated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``fork_safe = False`` keeps the in-process path: the crashing case is set aside after
    ``retries`` (not evaluated, with its reason), never evaluated in a broken forked copy."""
    code, summary, records = proctor_run(
        tmp_path, capsys, "exit_at_27", count=40, budget=5,
        entrypoint="tests.test_faults:NotForkSafe",
    )  # fmt: skip
    assert sorted(r["index"] for r in records) == [i for i in range(40) if i != 27]
    assert (summary["completed"], summary["deadLettered"], summary["errored"]) == (39, 1, 0)
    dead = (
        open_storage((tmp_path / "proctor-results").as_uri(), "exit-at-27")
        .of_current_attempt()
        .dead_letters()
    )
    assert [(d["start"], d["end"]) for d in dead] == [(27, 28)]
    assert "crashed or stalled the worker" in dead[0]["reason"]
    assert summary["decision"] == "undecided"  # the undecided/exit-3 rule (finding 3)
    assert code == EXIT_INCOMPLETE


def test_finding6_a_worker_stuck_in_a_case_exits_recognisably(tmp_path: Path) -> None:
    spec = EvalRunSpec.model_validate(
        {
            "image": "t",
            "task": {"entrypoint": "tests.test_worker_tasks:Indexed"},
            "cases": {"count": 20},
            "compare": {
                "baseline": {"ref": "tests.test_worker_tasks:ok"},
                "candidate": {"ref": "tests.test_worker_tasks:hang_at_13"},
            },
            "batch": {"initialSize": 20},
            "caseTimeout": "1s",
        }
    )
    config = WorkerConfig(
        run_id="hung",
        spec=spec,
        queue_url=f"sqlite://{tmp_path / 'queue.sqlite3'}",
        storage_uri=str(tmp_path / "results"),
        lease_seconds=30.0,
    )
    enqueue_run(
        open_queue(config.queue_url, "hung"), open_storage(config.storage_uri, "hung"), spec
    )
    env = {**os.environ, **config.env(), "PROCTOR_LOG_FORMAT": "json"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "proctor", "worker"],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    # Two 1 s timeouts (one per side) and a 1 s grace, not the 30 s lease nor forever.
    assert time.monotonic() - t0 < 20
    assert out.returncode == EXIT_HUNG
    assert b"a case ignored its timeout" in out.stdout + out.stderr


def test_finding1_a_failed_fork_counts_as_an_attempt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a fork the crash cannot be attributed: after ``retries`` attempts the first
    unrecorded case is set aside with its reason, and the rest is evaluated as usual."""
    spec = EvalRunSpec.model_validate(
        {
            "image": "t",
            "task": {"entrypoint": "tests.test_worker_tasks:Indexed"},
            "cases": {"count": 10},
            "compare": {
                "baseline": {"ref": "tests.test_worker_tasks:ok"},
                "candidate": {"ref": "tests.test_worker_tasks:ok"},
            },
            "batch": {"initialSize": 10},
            "retries": 2,
        }
    )
    config = WorkerConfig(
        run_id="nofork",
        spec=spec,
        queue_url=f"sqlite://{tmp_path / 'queue.sqlite3'}",
        storage_uri=str(tmp_path / "results"),
        lease_seconds=0.2,
        poll_interval=0.05,
    )
    queue = open_queue(config.queue_url, "nofork", lease_seconds=0.2)
    storage = open_storage(config.storage_uri, "nofork")
    enqueue_run(queue, storage, spec)
    assert len(queue.claim(1, "a-worker-that-died")) == 1
    time.sleep(0.3)

    def no_fork() -> int:
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_fork)
    fds = len(os.listdir("/proc/self/fd"))
    assert Worker(config).run() == 0
    assert len(os.listdir("/proc/self/fd")) <= fds + 2  # no pipe left behind per failed fork
    (dead,) = storage.dead_letters()
    assert (dead["start"], dead["end"]) == (0, 1)
    assert "could not be evaluated in isolation" in dead["reason"]
    assert [r["index"] for r in storage.iter_records()] == list(range(1, 10))


@pytest.mark.parametrize(
    ("record", "baseline_type", "candidate_type"),
    [
        (case_record(3, [side_record([], None), side_record(["a"], None)], 1.0), None, None),
        (case_record(3, [side_record([], None), {**side_record([], None), "violations": {1}}], 1.0),
         None, "unencodable"),
        (case_record(3, [{**side_record([], None), "error": object()}, side_record([], None)], 1.0),
         "unencodable", None),
        ({**case_record(3, [side_record([], None)], 1.0), "violations": [b"x"]},
         None, "unencodable"),
    ],
)  # fmt: skip
def test_finding7_the_worker_records_what_it_cannot_encode_as_unencodable(
    record: dict[str, Any], baseline_type: str | None, candidate_type: str | None
) -> None:
    out = encodable(record)
    json.dumps(out)
    assert out["index"] == 3
    if "baseline" in out:
        assert out["baseline"]["errorType"] == baseline_type
        assert out["candidate"]["errorType"] == candidate_type
    assert out["errorType"] == candidate_type
    assert (out["status"] == "errored") is (candidate_type is not None)
