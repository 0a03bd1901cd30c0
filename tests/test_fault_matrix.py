"""Issue 15's fault matrix: crashing, hanging, lying and unencodable candidates through
``proctor run``. For each: the decision, the exit code, the counts, and every case index either
recorded exactly once or accounted for as not evaluated (dead-lettered, with its reason)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from proctor.cli import main
from proctor.local.run import EXIT_ACCEPT, EXIT_INCOMPLETE, EXIT_REJECT
from proctor.storage import open_storage

REPO = Path(__file__).resolve().parent.parent

MANIFEST = """
apiVersion: proctor.dev/v1alpha1
kind: EvalRun
metadata:
  name: {name}
spec:
  image: proctor/proctor:0.1.0
  task:
    entrypoint: tests.test_worker_tasks:Indexed
  cases:
    count: {count}
  compare:
    baseline:
      ref: tests.test_worker_tasks:ok
    candidate:
      ref: tests.test_worker_tasks:{candidate}
    minDelta: -0.5
    minPassRate: 0.98
  batch:
    initialSize: 10
  queue:
    type: redis
    lease: 1s
  caseTimeout: 1s
{extra}
"""


@dataclass(frozen=True)
class Row:
    """One candidate and what its run must end with."""

    candidate: str
    decision: str
    exit_code: int
    count: int = 40
    errored: dict[int, str] = field(default_factory=dict)
    failed: tuple[int, ...] = ()
    not_evaluated: tuple[int, ...] = ()
    redis: bool = False
    extra: str = ""


ROWS = [
    Row("ok", "accept", EXIT_ACCEPT),
    # The defaults (retries 3, failureBudget 10) isolate two poison cases without ending the run.
    Row("exit_at_7", "reject", EXIT_REJECT, 20, {7: "crashed", 17: "crashed"}, redis=True),
    Row("hang_at_13", "reject", EXIT_REJECT, errored={13: "timeout"}),
    Row("lie_at_3", "reject", EXIT_REJECT, failed=(3, 13, 23, 33)),
    Row("set_at_5", "reject", EXIT_REJECT, errored=dict.fromkeys((5, 15, 25, 35), "unencodable")),
    # With one attempt (retries: 1) a crash is not isolated: its entry is not evaluated, so no
    # decision (depends on the undecided/exit-3 rule for incomplete runs, issue 15 finding 3).
    Row(
        "exit_at_27",
        "undecided",
        EXIT_INCOMPLETE,
        not_evaluated=tuple(range(20, 30)),
        extra="  retries: 1",
    ),
]


@pytest.fixture(autouse=True)
def _task_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("row", ROWS, ids=[r.candidate for r in ROWS])
def test_fault_matrix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest, row: Row
) -> None:
    name = row.candidate.replace("_", "-")
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        MANIFEST.format(name=name, count=row.count, candidate=row.candidate, extra=row.extra)
    )
    queue = ["--queue", request.getfixturevalue("redis_url")] if row.redis else []
    capsys.readouterr()
    code = main(["run", str(path), "--workers", "2", "--json", *queue])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    storage = open_storage((tmp_path / "proctor-results").as_uri(), name).of_current_attempt()
    raw = [rec for _, key in storage.result_keys() for rec in storage.read_object(key)]
    dead = [i for d in storage.dead_letters() for i in range(d["start"], d["end"])]
    # Every index exactly once: recorded, or set aside as not evaluated, never both.
    assert sorted([r["index"] for r in raw] + dead) == list(range(row.count))
    # The entry of the crash is not evaluated; so may be other entries the crashed worker held
    # (a worker claims several at once, and with one attempt each is charged): whole entries.
    assert set(row.not_evaluated) <= set(dead)
    assert all(d["start"] % 10 == 0 and d["end"] - d["start"] == 10 for d in storage.dead_letters())
    assert all(d["reason"] for d in storage.dead_letters())
    not_evaluated = sorted(dead)

    errored = {r["index"]: r["candidate"]["errorType"] for r in raw if r["status"] == "errored"}
    failed = [r["index"] for r in raw if r["status"] == "failed"]
    assert errored == row.errored
    assert sorted(failed) == list(row.failed)
    assert all(r["baseline"]["passed"] for r in raw)
    recorded = row.count - len(not_evaluated)
    passed = recorded - len(row.errored) - len(row.failed)
    assert (summary["completed"], summary["deadLettered"]) == (recorded, len(not_evaluated))
    assert (summary["passed"], summary["failed"], summary["errored"]) == (
        passed,
        len(row.failed),
        len(row.errored),
    )
    assert summary["candidatePassRate"] == pytest.approx(passed / recorded)
    assert summary["baselinePassRate"] == 1.0
    assert summary["decision"] == row.decision
    assert code == row.exit_code
