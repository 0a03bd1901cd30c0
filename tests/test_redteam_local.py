"""Red-team items 5, 6, 7a and 7g on issue 15's fixes: ``proctor run`` against stopped and
silent workers, dying command tasks, credentials in storage URIs and forked grandchildren."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.test_localrun_faults import (
    HEADER,
    OPERATOR,
    REPO,
    alive,
    children,
    finish,
    procs,
    start,
    wait_for,
)

__all__ = ["procs"]  # the fixture, imported for the tests below

INDEXED = """
  task:
    entrypoint: tests.test_worker_tasks:Indexed
  cases: {{count: {count}, seed: 1}}
  compare:
    baseline: {{ref: "tests.test_worker_tasks:{baseline}"}}
    candidate: {{ref: "tests.test_worker_tasks:{candidate}"}}
    minDelta: -0.5
  batch: {{initialSize: 10}}
  workers: {{failureBudget: 20}}
  queue: {{type: redis, lease: 1s}}
  caseTimeout: 1s
"""


@pytest.fixture(autouse=True)
def _task_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = os.pathsep.join([str(OPERATOR), str(REPO), os.environ.get("PYTHONPATH", "")])
    monkeypatch.setenv("PYTHONPATH", path)
    monkeypatch.chdir(tmp_path)


def manifest(tmp_path: Path, name: str, **fields: Any) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(HEADER.format(name=name) + INDEXED.format(**fields))
    return path


def error_types(tmp_path: Path, name: str) -> dict[int, str]:
    """The candidate's error type of each errored case the run recorded (every object of
    every attempt, decoded as the reader decodes them)."""
    from proctor.storage import open_storage

    storage = open_storage((tmp_path / "proctor-results").as_uri(), name)
    out: dict[int, str] = {}
    for obj in (tmp_path / "proctor-results" / name / "results").glob("*.arrow*"):
        key = f"{name}/results/{obj.name}"
        for record in storage.read_records(key, obj.read_bytes()):
            if record["candidate"]["errored"]:
                out[record["index"]] = record["candidate"]["errorType"]
    return out


def candidate_errors(summary: dict[str, Any]) -> int:
    """Errored cases, all on the candidate's side: the baseline passed every case."""
    assert summary["baselinePassRate"] == 1.0, summary
    return int(summary["errored"])


def test_redteam5_stopped_worker_is_replaced(tmp_path: Path, procs: list[Any]) -> None:
    """A candidate that SIGSTOPs its worker: the parent kills the silent worker, the entry is
    redelivered and the stopped side is recorded as a timeout; the run ends."""
    path = manifest(tmp_path, "sigstop", count=40, baseline="ok", candidate="sigstop_at_7")
    procs.append(start(path))
    _code, summary, err = finish(procs[-1], timeout=45)
    assert summary["completed"] == 40, err
    assert candidate_errors(summary) == 4
    assert error_types(tmp_path, "sigstop") == dict.fromkeys((7, 17, 27, 37), "timeout")
    assert "stopped answering" in err


def test_redteam5_worker_stopped_from_outside_is_replaced(tmp_path: Path, procs: list[Any]) -> None:
    """``kill -STOP`` on one worker of a running run: it is killed and replaced, every case is
    recorded and the run finishes."""
    path = manifest(tmp_path, "outside", count=3000, baseline="ok", candidate="ok")
    path.write_text(
        path.read_text().replace("tests.test_worker_tasks:ok", "tests.localrun_tasks:slow_ok")
    )
    procs.append(start(path))
    run = procs[-1]
    wait_for(lambda: len(children(run.pid)) == 2)
    wait_for(lambda: any((tmp_path / "proctor-results" / "outside").glob("results/*")))
    victim = min(children(run.pid))
    os.kill(victim, signal.SIGSTOP)
    _code, summary, err = finish(run, timeout=120)
    assert summary["completed"] == 3000, err
    assert candidate_errors(summary) == 0
    assert not alive(victim)
    assert "stopped answering" in err


def test_redteam7g_grandchildren_do_not_outlive_the_run(
    tmp_path: Path, procs: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A candidate forks a child and kills its worker: the child dies with the run."""
    pids = tmp_path / "pids"
    pids.mkdir()
    monkeypatch.setenv("PROCTOR_TEST_PIDS", str(pids))
    path = manifest(tmp_path, "grandchild", count=20, baseline="ok", candidate="grandchild_at_7")
    procs.append(start(path))
    _code, summary, err = finish(procs[-1], timeout=45)
    assert summary["completed"] == 20, err
    assert candidate_errors(summary) == 2
    forked = [int(p.name) for p in pids.iterdir()]
    assert forked
    deadline = time.monotonic() + 2.0
    while any(alive(p) for p in forked) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in forked if alive(p)]


def test_redteam7a_storage_uri_with_userinfo_is_one_redacted_line(
    tmp_path: Path, procs: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Credentials in an s3:// URI: refused up front in one line that does not print them."""
    monkeypatch.setenv("COLUMNS", "400")  # a line is a line, not the terminal's wrapping
    path = manifest(tmp_path, "userinfo", count=10, baseline="ok", candidate="ok")
    procs.append(start(path, "--storage", "s3://AKIA:S3CRETpw@bucket/x"))
    code, _summary, err = finish(procs[-1], timeout=30)
    assert code == 2, err
    assert "S3CRETpw" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert "s3://***@bucket/x holds a user name and secret" in err
    assert "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY instead" in err


@pytest.mark.parametrize(
    ("error", "retry"),
    [
        ("param", False),
        ("connect", True),
        ("slowdown", True),
        ("denied", False),
    ],
)
def test_redteam7a_parameter_validation_is_not_retried(error: str, retry: bool) -> None:
    from botocore.exceptions import ClientError, EndpointConnectionError, ParamValidationError

    from proctor.storage.blobs import _retryable

    errors: dict[str, Exception] = {
        "param": ParamValidationError(report="Invalid bucket name"),
        "connect": EndpointConnectionError(endpoint_url="http://x"),
        "slowdown": ClientError({"Error": {"Code": "SlowDown"}}, "PutObject"),
        "denied": ClientError({"Error": {"Code": "AccessDenied"}}, "PutObject"),
    }
    assert _retryable(errors[error]) is retry


# A command that dies on one side of every case ending in 7; in "chunk" mode it reads all the
# requests waiting and dies before answering any of them, as a command working on several
# requests at once would: only re-sending one at a time tells which request killed it.
DYING_COMMAND = """
import json, os, sys
mode, role_to_kill = sys.argv[1], sys.argv[2]
buf = b""
while True:
    chunk = os.read(0, 1 << 16)
    if not chunk:
        break
    buf += chunk
    *lines, buf = buf.split(b"\\n")
    reqs = [json.loads(line) for line in lines]
    if mode == "chunk" and any(r["role"] == role_to_kill and r["index"] % 10 == 7 for r in reqs):
        os._exit(3)
    for r in reqs:
        if r["role"] == role_to_kill and r["index"] % 10 == 7:
            os._exit(3)
        print(json.dumps({"index": r["index"], "passed": True, "violations": []}), flush=True)
"""


@pytest.mark.parametrize(
    ("mode", "dies"),
    [("line", "candidate"), ("line", "baseline"), ("chunk", "candidate"), ("chunk", "baseline")],
)
def test_redteam6_command_death_charges_only_the_request_that_killed_it(
    tmp_path: Path, mode: str, dies: str
) -> None:
    from proctor.sdk.command import CommandTask

    script = tmp_path / "cmd.py"
    script.write_text(DYING_COMMAND)
    roles: list[tuple[str | None, str | None]] = [("baseline", "a"), ("candidate", "b")]
    task = CommandTask([sys.executable, str(script), mode, dies], 1, {}, roles)
    try:
        got = list(task.evaluate_batch(0, 100, 2.0))
    finally:
        task.close()
    assert [r["index"] for r in got] == list(range(100))
    errored = {r["index"]: r for r in got if r["baseline"]["errored"] or r["candidate"]["errored"]}
    assert sorted(errored) == list(range(7, 100, 10))
    innocent = "candidate" if dies == "baseline" else "baseline"
    assert all(r[innocent]["passed"] for r in got)
    assert all(r[dies]["errorType"] == "crashed" for r in errored.values())
    assert all("exited with code 3" in r[dies]["error"] for r in errored.values())
