"""Isolation (:mod:`proctor.worker.isolation`): each side's forked child is judged on its own
case, whatever the other side's child did meanwhile."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from proctor.api.quantity import parse_duration
from proctor.api.v1alpha1.evalrun import EvalRunSpec
from proctor.sdk import LoadedTask, Record, load_task
from proctor.worker.isolation import isolated_records

PASSED = {"passed": True, "errored": False, "violations": [], "error": None, "errorType": None}


def slow_at_14(case: Mapping[str, Any]) -> int:
    """Right, and half a second long on case 14: its answer comes well after case 13's."""
    if case["i"] == 14:
        time.sleep(0.5)
    return int(case["i"])


def prints(case: Mapping[str, Any]) -> int:
    """Right, and says so on its standard output."""
    print("case", case["i"], "done", flush=True)
    return int(case["i"])


def _task(baseline: str, candidate: str) -> tuple[LoadedTask, float]:
    spec = EvalRunSpec.model_validate(
        {
            "image": "test",
            "task": {"entrypoint": "tests.test_worker_tasks:Indexed"},
            "cases": {"count": 20},
            "compare": {"baseline": {"ref": baseline}, "candidate": {"ref": candidate}},
            "caseTimeout": "1s",
        }
    )
    return load_task(spec.task, spec.compare, spec.cases.seed), parse_duration("1s")


def _records(baseline: str, candidate: str, start: int, end: int) -> list[Record]:
    task, timeout = _task(baseline, candidate)
    with task:
        return list(isolated_records(task, start, end, timeout, threading.Event()))


def test_a_side_is_not_charged_for_the_time_the_other_side_hung() -> None:
    """The candidate hangs on case 13 for the whole timeout and grace; the baseline answered
    case 14 within its timeout meanwhile (in its pipe, not yet read): it passed."""
    records = _records(
        "tests.test_isolation:slow_at_14", "tests.test_worker_tasks:hang_at_13", 12, 15
    )
    assert [r["index"] for r in records] == [12, 13, 14]
    assert [r["baseline"] for r in records] == [PASSED] * 3
    assert [r["candidate"]["errorType"] for r in records] == [None, "timeout", None]


@pytest.fixture
def grandchildren(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Where ``grandchild_at_7`` writes the pids it forks; they are killed afterwards."""
    monkeypatch.setenv("PROCTOR_TEST_PIDS", str(tmp_path))
    yield tmp_path
    for pid in tmp_path.iterdir():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid.name), signal.SIGKILL)


def test_a_child_that_dies_is_crashed_though_its_own_child_holds_the_pipe(
    grandchildren: Path,
) -> None:
    """The candidate forks (the fork inherits the pipe's write end) and kills its process on
    case 7: that side crashed (not a timeout: it ignored no interruption), and the baseline
    passed every case."""
    records = _records(
        "tests.test_worker_tasks:ok", "tests.test_worker_tasks:grandchild_at_7", 6, 9
    )
    assert any(grandchildren.iterdir())
    assert [r["baseline"] for r in records] == [PASSED] * 3
    assert [r["candidate"]["errorType"] for r in records] == [None, "crashed", None]
    assert "exit code 9" in records[1]["candidate"]["error"]


@contextlib.contextmanager
def busy_stdout() -> Iterator[None]:
    """``sys.stdout`` held by another thread of this process (its write waits on a full pipe,
    holding the stream's lock) while the block runs."""
    read, end = os.pipe()
    with open(end, "w") as stream, contextlib.redirect_stdout(stream):

        def fill() -> None:
            stream.write("x" * (1 << 20))
            stream.flush()

        writer = threading.Thread(target=fill)
        writer.start()
        select.select([read], [], [], 5.0)  # the writer is in its write: the pipe filled
        time.sleep(0.05)
        try:
            yield
        finally:
            while writer.is_alive():
                if select.select([read], [], [], 0.05)[0]:
                    os.read(read, 1 << 20)
            writer.join()
    os.close(read)


def test_a_child_prints_though_another_thread_held_the_stream_when_it_was_forked() -> None:
    """A lock another thread held at the fork is held for ever in the child: the child prints
    through streams of its own, so the side passes instead of hanging until its timeout."""
    with busy_stdout():
        records = _records("tests.test_isolation:prints", "tests.test_isolation:prints", 0, 2)
    assert [r["status"] for r in records] == ["passed", "passed"]
