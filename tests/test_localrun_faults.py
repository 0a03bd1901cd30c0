"""``proctor run`` under faults: poison cases, killed workers, signals, stale writers, resumes
with another manifest and hostile names (issue 15, findings 2, 3, 4, 5 and 8)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proctor.cli import main
from proctor.local.run import EXIT_ACCEPT, EXIT_INCOMPLETE, EXIT_INTERRUPTED, EXIT_USAGE

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

FAULTY = """
  task:
    entrypoint: tests.test_worker_tasks:Faulty
    params: {params}
  cases: {{count: {count}, seed: 1}}
  queue: {{type: redis, lease: 1s}}
  caseTimeout: 10s
"""

TOPK = """
  task:
    entrypoint: proctor.examples.topk:task
    params: {{maxLength: 50, k: 5}}
  cases: {{count: {count}, seed: 42}}
  compare:
    baseline: {{ref: "tests.localrun_tasks:slow_sorted"}}
    candidate: {{ref: "tests.localrun_tasks:{candidate}"}}
    minDelta: -0.5
  batch: {{initialSize: 50}}
  queue: {{type: redis, lease: 1s}}
  caseTimeout: 10s
"""


@pytest.fixture(autouse=True)
def _task_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = os.pathsep.join([str(OPERATOR), str(REPO), os.environ.get("PYTHONPATH", "")])
    monkeypatch.setenv("PYTHONPATH", path)
    monkeypatch.chdir(tmp_path)


def write(tmp_path: Path, name: str, body: str, file: str | None = None) -> Path:
    path = tmp_path / (file or f"{name.strip('/.') or 'run'}.yaml")
    path.write_text(HEADER.format(name=name) + body)
    return path


def run_here(
    capsys: pytest.CaptureFixture[str], path: Path, *args: str
) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    code = main(["run", str(path), "--workers", "2", "--json", *args])
    out = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(out[-1]) if out else {}


def start(path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "proctor", "run", str(path), "--workers", "2", "--json", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[int, dict[str, Any], str]:
    out, err = proc.communicate(timeout=timeout)
    lines = out.strip().splitlines()
    return proc.returncode, json.loads(lines[-1]) if lines else {}, err


def children(pid: int) -> set[int]:
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out |= {int(x) for x in (task / "children").read_text().split()}
        except OSError:
            continue
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(predicate: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def result_objects(tmp_path: Path, name: str) -> list[Path]:
    return list((tmp_path / "proctor-results" / name / "results").glob("*"))


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts; they and their workers are killed when it ends."""
    started: list[subprocess.Popen[str]] = []
    kids: set[int] = set()

    def watch() -> None:
        while not done:
            for p in started:
                kids.update(children(p.pid))
            time.sleep(0.1)

    done = False
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    yield started
    done = True
    watcher.join()
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait()
    for pid in kids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


# -- finding 2 ------------------------------------------------------------------------------


def test_finding2_default_budget_isolates_two_poison_cases(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Defaults: failureBudget and retries as the schema has them.
    path = write(tmp_path, "poison2", FAULTY.format(params="{crash: [11, 29]}", count=40))
    code, summary = run_here(capsys, path)
    assert summary["completed"] + summary["deadLettered"] == 40, summary
    assert summary["completed"] >= 38
    assert summary["notEvaluated"] == 40 - summary["completed"]
    assert "budget" not in (summary["reason"] or "")
    if summary["notEvaluated"]:
        assert code == EXIT_INCOMPLETE
        n = summary["notEvaluated"]
        assert summary["reason"].startswith(f"{n} of 40 cases were not evaluated: ")
        assert "dead-lettered" in summary["reason"]


def test_finding2_exhausted_budget_says_why_and_how_many(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = FAULTY.format(params="{crash: [250]}", count=400) + "  workers: {failureBudget: 0}\n"
    # One worker: its crash exhausts the budget, so no other worker takes the entry over.
    code, summary = run_here(capsys, write(tmp_path, "budget", body), "--workers", "1")
    assert code == EXIT_INCOMPLETE
    missing = 400 - summary["completed"]
    assert missing > 0
    assert summary["notEvaluated"] == missing
    assert summary["reason"].startswith(f"{missing} of 400 cases were not evaluated: ")
    assert "the worker failure budget (0) was exhausted" in summary["reason"]
    assert summary["passRate"] == 1.0  # of the evaluated cases; the reason says the rest


# -- finding 3 ------------------------------------------------------------------------------


def test_finding3_workers_killed_by_signal_leave_run_undecided(
    tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    body = TOPK.format(count=100_000, candidate="slow_heap") + "  workers: {failureBudget: 1}\n"
    proc = start(write(tmp_path, "killed", body))
    procs.append(proc)
    wait_for(lambda: len(result_objects(tmp_path, "killed")) >= 6)
    # Kill every worker (twice: the first replacements too) while the parent lives.
    for _ in range(2):
        kids = children(proc.pid)
        for pid in kids:
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda kids=kids: not any(alive(p) for p in kids))
        time.sleep(0.5)
    code, summary, err = finish(proc)
    assert code == EXIT_INCOMPLETE, err
    assert summary["decision"] == "undecided"
    missing = 100_000 - summary["completed"]
    assert 0 < missing == summary["notEvaluated"]
    assert summary["reason"].startswith(f"{missing} of 100000 cases were not evaluated: ")


def test_finding3_incomplete_run_without_compare_exits_3(
    tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    body = (
        FAULTY.format(params="{sleep_ms: 2}", count=100_000)
        + "  workers: {failureBudget: 0}\n  batch: {initialSize: 50}\n"
    )
    proc = start(write(tmp_path, "plain", body))
    procs.append(proc)
    wait_for(lambda: len(result_objects(tmp_path, "plain")) >= 4)
    for pid in children(proc.pid):
        os.kill(pid, signal.SIGKILL)
    code, summary, err = finish(proc)
    assert code == EXIT_INCOMPLETE, err
    assert summary["notEvaluated"] == 100_000 - summary["completed"] > 0
    assert "were not evaluated" in summary["reason"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_finding3_interrupted_run_says_interrupted(
    tmp_path: Path, procs: list[subprocess.Popen[str]], sig: signal.Signals
) -> None:
    proc = start(write(tmp_path, "stop", TOPK.format(count=100_000, candidate="slow_heap")))
    procs.append(proc)
    wait_for(lambda: len(result_objects(tmp_path, "stop")) >= 4)
    proc.send_signal(sig)
    code, summary, err = finish(proc)
    assert code == EXIT_INTERRUPTED, err
    assert summary["decision"] == "interrupted"
    assert summary["notEvaluated"] == 100_000 - summary["completed"] > 0
    assert "Traceback" not in err


# -- finding 4 ------------------------------------------------------------------------------


def test_finding4_sigterm_takes_the_workers_down(
    tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    proc = start(write(tmp_path, "term", TOPK.format(count=100_000, candidate="slow_buggy")))
    procs.append(proc)
    wait_for(lambda: len(result_objects(tmp_path, "term")) >= 2)
    kids = children(proc.pid)
    assert len(kids) == 2
    proc.send_signal(signal.SIGTERM)
    finish(proc)
    wait_for(lambda: not any(alive(p) for p in kids), timeout=15)


def test_finding4_sigkilled_parent_takes_the_workers_down(
    tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    proc = start(write(tmp_path, "orphan", TOPK.format(count=100_000, candidate="slow_buggy")))
    procs.append(proc)
    wait_for(lambda: len(result_objects(tmp_path, "orphan")) >= 2)
    kids = children(proc.pid)
    assert len(kids) == 2
    proc.kill()
    proc.wait()
    try:
        wait_for(lambda: not any(alive(p) for p in kids), timeout=15)
    finally:
        for pid in kids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_finding4_stale_worker_results_are_not_counted(
    tmp_path: Path, procs: list[subprocess.Popen[str]], redis_url: str
) -> None:
    name = "stale"
    old = write(tmp_path, name, TOPK.format(count=2000, candidate="slow_buggy"), "old.yaml")
    first = start(old, "--queue", redis_url)
    procs.append(first)
    run_dir = tmp_path / "proctor-results" / name
    wait_for(lambda: len(result_objects(tmp_path, name)) >= 1)
    # A worker of the first attempt that outlives its parent (another machine, say).
    attempt_file = run_dir / "attempt.json"
    attempt = json.loads(attempt_file.read_text())["attempt"] if attempt_file.exists() else ""
    from proctor.validation import validate_file

    (doc,) = validate_file(old)
    assert doc.model is not None
    env = dict(os.environ)
    env.update(
        PROCTOR_RUN_ID=name,
        PROCTOR_RUN=name,
        PROCTOR_SPEC=json.dumps(doc.model.spec.to_wire()),  # type: ignore[attr-defined]
        PROCTOR_QUEUE_URL=redis_url,
        PROCTOR_STORAGE_URI=(tmp_path / "proctor-results").as_uri(),
        PROCTOR_WORKER_ID="stale-worker",
        PROCTOR_LEASE_SECONDS="1",
        PROCTOR_ATTEMPT=attempt,
    )
    stale = subprocess.Popen(
        [sys.executable, "-m", "proctor", "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    procs.append(stale)  # type: ignore[arg-type]
    first.send_signal(signal.SIGTERM)
    finish(first)
    assert stale.poll() is None, "the stale worker must still be writing"
    fixed = write(tmp_path, name, TOPK.format(count=2000, candidate="slow_heap"), "new.yaml")
    code, summary, err = finish(start(fixed, "--queue", redis_url))
    assert code == EXIT_ACCEPT, err
    assert summary["completed"] == 2000
    assert summary["candidatePassRate"] == summary["baselinePassRate"]
    stale.kill()
    stale.wait()


# -- finding 5 ------------------------------------------------------------------------------


def test_finding5_resume_with_another_manifest_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = write(tmp_path, "again", TOPK.format(count=300, candidate="slow_heap"), "a.yaml")
    code, _ = run_here(capsys, first)
    assert code == EXIT_ACCEPT
    other = write(tmp_path, "again", TOPK.format(count=1000, candidate="slow_buggy"), "b.yaml")
    before = sorted(p.name for p in result_objects(tmp_path, "again"))
    capsys.readouterr()
    assert main(["run", str(other), "--workers", "2", "--json", "--resume"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "cases.count" in err
    assert "compare.candidate.ref" in err
    assert "--resume" in err
    assert sorted(p.name for p in result_objects(tmp_path, "again")) == before
    # The same manifest resumes: nothing to do, the same verdict.
    code, again = run_here(capsys, first, "--resume")
    assert code == EXIT_ACCEPT
    assert (again["completed"], again["total"]) == (300, 300)


# -- finding 8 ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "run_id"),
    [("..", None), ("/tmp/x", None), ("ok", ".."), ("ok", "../outside"), ("Bad_Name", None)],
)
def test_finding8_names_and_run_ids_must_be_dns_labels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, run_id: str | None
) -> None:
    work = tmp_path / "work"
    for sub in ("results", "state"):
        (work / sub).mkdir(parents=True)
        (work / sub / "keep").write_text("precious")
    os.chdir(work)
    path = write(tmp_path, name, FAULTY.format(params="{}", count=10), "hostile.yaml")
    args = ["run", str(path), "--json", "--results-dir", str(work / "proctor-results")]
    if run_id is not None:
        args += ["--run-id", run_id]
    capsys.readouterr()
    assert main(args) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "DNS-1123" in err
    assert "Traceback" not in err
    for sub in ("results", "state"):
        assert (work / sub / "keep").read_text() == "precious"
    assert main(["validate", str(path)]) != 0 or run_id is not None


def test_finding4_storage_of_one_attempt_ignores_another(tmp_path: Path) -> None:
    from proctor.queue import Range
    from proctor.storage import RunProgress, open_storage

    old = open_storage(tmp_path.as_uri(), "run", attempt="old1")
    new = open_storage(tmp_path.as_uri(), "run", attempt="new1")
    records = [{"index": i, "status": "failed"} for i in range(10)]
    assert old.write_results(Range(0, 10), records).created
    old.write_dead_letter(Range(10, 11), 3, "crashed")
    assert new.write_results(Range(0, 10), [{**r, "status": "passed"} for r in records]).created
    progress = RunProgress(new, 11)
    progress.refresh()
    assert (progress.aggregate.passed, progress.aggregate.failed) == (10, 0)
    assert progress.snapshot().dead_lettered == 0
    assert [r for r, _ in old.result_keys()] == [Range(0, 10)]
    assert len(old.dead_letters()) == 1
    assert list(open_storage(tmp_path.as_uri(), "run").result_keys()) == []


def test_finding4_stale_attempt_cannot_claim_the_new_attempts_entries(redis_url: str) -> None:
    from proctor.queue import Range, open_queue

    stale = open_queue(redis_url, "fenced", lease_seconds=1.0, attempt="old1")
    stale.enqueue([Range(0, 5)], chunk="0")
    fresh = open_queue(redis_url, "fenced", lease_seconds=1.0, attempt="new1")
    fresh.enqueue([Range(0, 5), Range(5, 10)], chunk="0")
    stale.delete()
    try:
        claimed = stale.claim(10, "stale-worker")
    except Exception:  # its queue is gone: an error is as good as nothing
        claimed = []
    assert claimed == []
    assert [lease.range for lease in fresh.claim(10, "w")] == [Range(0, 5), Range(5, 10)]
    fresh.delete()


# -- also: huge runs, corrupt objects, hostile inputs -----------------------------------------


def test_also_a_billion_cases_start_at_once_and_stop_on_ctrl_c(
    tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    body = FAULTY.format(params="{}", count=1_000_000_000)
    proc = start(write(tmp_path, "huge", body))
    procs.append(proc)
    wait_for(lambda: len(result_objects(tmp_path, "huge")) >= 1, timeout=30)
    proc.send_signal(signal.SIGINT)
    code, summary, err = finish(proc)
    assert code == EXIT_INTERRUPTED, err
    assert summary["decision"] == "interrupted"
    assert "Traceback" not in err


def test_also_corrupt_checkpoint_and_truncated_result_object(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "torn", FAULTY.format(params="{}", count=600))
    code, _ = run_here(capsys, path)
    assert code == EXIT_ACCEPT
    run_dir = tmp_path / "proctor-results" / "torn"
    (checkpoint,) = run_dir.glob("checkpoint.json*")
    checkpoint.write_bytes(b"\x28\xb5\x2f\xfd garbage")
    victim = sorted(result_objects(tmp_path, "torn"))[1]
    victim.write_bytes(victim.read_bytes()[:-7])
    code, summary = run_here(capsys, path, "--resume")
    assert code == EXIT_ACCEPT, summary
    assert (summary["completed"], summary["passed"], summary["total"]) == (600, 600, 600)
    from proctor.storage import open_storage

    storage = open_storage((tmp_path / "proctor-results").as_uri(), "torn").of_current_attempt()
    assert [r["index"] for r in storage.iter_records()] == list(range(600))


def test_also_hostile_inputs_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    long_name = write(tmp_path, "x" * 300, FAULTY.format(params="{}", count=5), "long.yaml")
    deep = write(
        tmp_path, "deep", FAULTY.format(params="[" * 5000 + "]" * 5000, count=5), "deep.yaml"
    )
    ok = write(tmp_path, "ok", FAULTY.format(params="{}", count=5), "ok.yaml")
    (tmp_path / "a-file").write_text("")
    cases = [
        ["run", str(long_name)],
        ["run", str(deep)],
        ["validate", str(deep)],
        ["run", str(ok), "--results-dir", str(tmp_path / "a-file" / "results")],
    ]
    for args in cases:
        capsys.readouterr()
        code = main(args)
        err = capsys.readouterr().err
        assert code in (EXIT_USAGE, 1), (args, err)
        assert "Traceback" not in err
        assert err.strip().startswith("error:") or "invalid" in err, (args, err)


def test_also_worker_without_redis_is_one_line(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(HEADER.format(name="lonely") + FAULTY.format(params="{}", count=5))
    env = dict(os.environ)
    env.update(
        PROCTOR_SPEC_FILE=str(spec),
        PROCTOR_QUEUE_URL="redis://127.0.0.1:1/0",
        PROCTOR_STORAGE_URI=tmp_path.as_uri(),
        PROCTOR_RUN_ID="lonely",
        PROCTOR_LOG_FORMAT="console",
    )
    done = subprocess.run(
        [sys.executable, "-m", "proctor", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == EXIT_USAGE, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert "127.0.0.1:1" in done.stderr + done.stdout


@pytest.mark.parametrize(
    ("stored", "current", "fields"),
    [
        ({"cases": {"count": 1000}}, {"cases": {"count": 1000}}, []),
        ({"cases": {"count": 1000}}, {"cases": {"count": 6000}}, ["cases.count"]),
        ({"task": {"params": {}}}, {"task": {}}, []),
        (
            {"compare": {"candidate": {"ref": "a"}}, "task": {"params": {"k": 5}}},
            {"compare": None, "task": {"params": {"k": 6}}},
            ["compare.candidate.ref", "task.params.k"],
        ),
    ],
)
def test_finding5_fingerprint_differences_name_the_fields(
    stored: dict[str, Any], current: dict[str, Any], fields: list[str]
) -> None:
    from proctor.local.attempts import differences

    assert differences(stored, current) == fields


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("run-1", True),
        ("a", True),
        ("x" * 63, True),
        ("x" * 64, False),
        ("..", False),
        ("/abs", False),
        ("a/b", False),
        ("Upper", False),
        ("-lead", False),
        ("trail-", False),
        ("dot.ted", False),
        ("", False),
    ],
)
def test_finding8_dns_label_rules(value: str, ok: bool) -> None:
    from proctor.validation import dns_label_error

    assert (dns_label_error(value) is None) == ok
