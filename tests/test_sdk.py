"""proctor.sdk: task loading, case evaluation, timeouts, checkpoints and command tasks."""

from __future__ import annotations

import contextlib
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from proctor.api.v1alpha1.evalrun import CompareSpec, TaskSpec
from proctor.sdk import (
    CaseInterrupted,
    CommandTask,
    MemoryStateStore,
    Property,
    PythonTask,
    Relation,
    Task,
    TaskLoadError,
    case_rng,
    clear_stop,
    load_state,
    load_task,
    make_task,
    request_stop,
    resolve_ref,
    save_state,
    set_state_store,
    stop_requested,
)
from proctor.sdk.batch import BatchRecords
from proctor.sdk.state import decode_state, encode_state, set_current_case, state_key


@pytest.fixture(autouse=True)
def state_store() -> Iterator[MemoryStateStore]:
    store = MemoryStateStore()
    set_state_store(store)
    clear_stop()
    yield store
    clear_stop()
    set_current_case(None)
    set_state_store(None)


class Numbers(Task):
    """Case i is i; properties and relations on the identity-ish implementations below."""

    properties = (Property("non_negative", lambda case, out: out >= 0),)
    relations = (
        Relation("shift", lambda case: case + 1, relate=lambda out, follow: follow == out + 1),
    )

    def generate(self, seed: int, index: int) -> int:
        if index == 13:
            raise ValueError("unlucky case")
        return index

    def solve(self, case: int) -> int:
        return case


def identity(case: int) -> int:
    return case


def negate_sevens(case: int) -> int:
    """Negative on multiples of 7 (the property fails) and off by one after 20 (the relation)."""
    if case % 7 == 0 and case:
        return -case
    return case if case < 20 else 20


def records(
    task: Task, start: int, end: int, impls: list[Any] | None = None, timeout: float = 0.0
) -> list[dict[str, Any]]:
    loaded = PythonTask(task, 5, impls)
    try:
        return list(loaded.evaluate_batch(start, end, timeout))
    finally:
        loaded.close()


def test_case_rng_is_deterministic_and_separates_streams() -> None:
    draws = {
        (s, i, salt): case_rng(s, i, salt).random()
        for s in (0, 1)
        for i in (0, 1, 2)
        for salt in ("", "x")
    }
    assert len(set(draws.values())) == len(draws)
    assert case_rng(1, 2, "x").random() == draws[(1, 2, "x")]


def test_resolve_ref_forms(tmp_path: Path) -> None:
    impl = tmp_path / "impl.py"
    impl.write_text("def double(x):\n    return 2 * x\n")
    assert resolve_ref("proctor.examples.topk:top_k_heap").__name__ == "top_k_heap"
    assert resolve_ref(f"{impl}:double")(4) == 8
    assert (
        resolve_ref("top_k_sorted", default_module="proctor.examples.topk").__name__
        == "top_k_sorted"
    )
    assert resolve_ref("proctor.examples.topk:TopKTask.generate").__name__ == "generate"


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("no_colon", "not a reference"),
        ("proctor.examples.topk:", "not a reference"),
        ("proctor.no_such_module:x", "cannot import"),
        ("proctor.examples.topk:nothing_here", "no attribute"),
        ("/nonexistent/file.py:f", "no such Python file"),
    ],
)
def test_resolve_ref_errors(ref: str, message: str) -> None:
    with pytest.raises(TaskLoadError, match=message):
        resolve_ref(ref)


def test_make_task_accepts_instances_classes_and_factories() -> None:
    instance = Numbers()
    assert make_task(instance, {}) is instance
    made = make_task(Numbers, {"a": 1})
    assert isinstance(made, Numbers)
    assert made.params == {"a": 1}

    def factory(params: dict[str, Any]) -> Task:
        return Numbers(params)

    assert isinstance(make_task(factory, {}), Numbers)


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        (42, "neither"),
        (lambda params: "not a task", "not a proctor.sdk.Task"),
        (lambda params: 1 / 0, "ZeroDivisionError"),
    ],
)
def test_make_task_errors(obj: Any, message: str) -> None:
    with pytest.raises(TaskLoadError, match=message):
        make_task(obj, {})


def test_make_task_rejects_duplicate_relation_names() -> None:
    class Dup(Numbers):
        relations = (Relation("r", identity), Relation("r", identity))

    with pytest.raises(TaskLoadError, match="unique"):
        make_task(Dup, {})


def test_single_task_records() -> None:
    got = records(Numbers(), 10, 16)
    assert [r["index"] for r in got] == list(range(10, 16))
    by_index = {r["index"]: r for r in got}
    assert by_index[10] == {**by_index[10], "status": "passed", "error": None, "violations": []}
    assert by_index[13]["status"] == "errored"
    assert "ValueError: unlucky case" in by_index[13]["error"]
    assert "test_sdk.py" in by_index[13]["error"]
    assert all(r["durationMs"] >= 0 for r in got)
    assert set(by_index[11]) == {
        "index",
        "status",
        "durationMs",
        "error",
        "errorType",
        "violations",
    }
    # Case 13's generate() raised: the task's error, not the implementation's (red team 3).
    assert (by_index[11]["errorType"], by_index[13]["errorType"]) == (None, "task")


def test_task_without_solve_errors_each_case_with_advice() -> None:
    class NoSolve(Task):
        def generate(self, seed: int, index: int) -> int:
            return index

    (record,) = records(NoSolve(), 0, 1)
    assert record["status"] == "errored"
    assert "compare section" in record["error"]


def test_compare_records_checks_and_relations() -> None:
    got = records(Numbers(), 0, 25, [identity, negate_sevens])
    by_index = {r["index"]: r for r in got}
    assert by_index[3]["status"] == "passed"
    assert by_index[3]["baseline"] == {
        "passed": True,
        "errored": False,
        "violations": [],
        "error": None,
        "errorType": None,
    }
    assert by_index[7]["status"] == "failed"
    assert by_index[7]["candidate"]["violations"] == ["non_negative", "relation:shift"]
    assert by_index[6]["candidate"]["violations"] == ["relation:shift"]  # 7 maps to -7
    assert by_index[7]["baseline"]["passed"] is True
    assert by_index[21]["candidate"]["violations"] == ["non_negative", "relation:shift"]
    assert by_index[22]["candidate"]["violations"] == ["relation:shift"]
    assert by_index[13]["status"] == "errored"
    assert by_index[13]["baseline"]["errored"]
    assert by_index[13]["candidate"]["errored"]


def test_relation_options_rng_cases_and_equivalence() -> None:
    seen: list[Any] = []

    class Options(Task):
        relations = (
            Relation("rng", lambda case, rng: case + rng.randint(0, 0), uses_rng=True),
            Relation(
                "cases",
                lambda case: case * 2,
                relate=lambda case, follow_case, out, follow: (
                    seen.append((case, follow_case)) or follow == 2 * out
                ),
                sees_cases=True,
            ),
            Relation("equivalence", lambda case: -case),
        )

        def generate(self, seed: int, index: int) -> int:
            return index

        def solve(self, case: int) -> int:
            return case

        def equivalent(self, output: Any, follow_up: Any) -> bool:
            return bool(abs(output) == abs(follow_up))

    got = records(Options(), 0, 3)
    assert [r["status"] for r in got] == ["passed"] * 3
    assert seen == [(0, 0), (1, 2), (2, 4)]


def test_default_run_and_check_can_be_overridden() -> None:
    class Pairs(Task):
        def generate(self, seed: int, index: int) -> tuple[int, int]:
            return (index, index + 1)

        def run(self, impl: Callable[..., Any], case: Any) -> Any:
            return impl(*case)

        def check(self, case: Any, output: Any) -> list[str]:
            return [] if output == sum(case) else [f"sum {output} != {sum(case)}"]

    got = records(Pairs(), 0, 2, [lambda a, b: a + b, lambda a, b: a * b])
    assert got[0]["candidate"]["violations"] == ["sum 0 != 1"]
    assert got[1]["candidate"]["violations"] == ["sum 2 != 3"]


class Slow(Task):
    """Case 1 sleeps, case 2 spins, case 3 swallows Exception; the others are instant."""

    def generate(self, seed: int, index: int) -> int:
        return index

    def solve(self, case: int) -> int:
        if case == 1:
            time.sleep(30)
        if case == 2:
            while True:
                pass
        if case == 3:
            end = time.monotonic() + 30
            while time.monotonic() < end:
                with contextlib.suppress(Exception):
                    sum(range(1000))
        return case


def test_timeout_in_main_thread_errors_the_case_and_restores_the_handler() -> None:
    def previous(signum: int, frame: Any) -> None:
        pass

    old = signal.signal(signal.SIGALRM, previous)
    try:
        t0 = time.monotonic()
        got = records(Slow(), 0, 5, timeout=0.3)
        elapsed = time.monotonic() - t0
        assert signal.getsignal(signal.SIGALRM) is previous
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    finally:
        signal.signal(signal.SIGALRM, old)
    assert [r["status"] for r in got] == ["passed", "errored", "errored", "errored", "passed"]
    assert got[1]["error"] == "case timed out after 0.3s"
    assert elapsed < 5


class Steady(Task):
    """Cases 0-5 each take 0.3 s; case 6 sleeps far past any deadline."""

    def generate(self, seed: int, index: int) -> int:
        return index

    def solve(self, case: int) -> int:
        time.sleep(30 if case == 6 else 0.3)
        return case


def test_each_case_gets_its_own_deadline_when_the_timer_outlives_cases() -> None:
    # The timer, set once for the first case, fires during the third: that case (and each
    # after it) must still get its whole 0.5 s, and the slow one must still time out.
    got = records(Steady(), 0, 7, timeout=0.5)
    assert [r["status"] for r in got] == ["passed"] * 6 + ["errored"]
    assert got[6]["error"] == "case timed out after 0.5s"
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_timeout_in_a_worker_thread_uses_the_watchdog() -> None:
    out: list[list[dict[str, Any]]] = []
    thread = threading.Thread(target=lambda: out.append(records(Slow(), 2, 5, timeout=0.3)))
    t0 = time.monotonic()
    thread.start()
    thread.join(timeout=20)
    assert not thread.is_alive()
    assert time.monotonic() - t0 < 5
    assert [r["status"] for r in out[0]] == ["errored", "errored", "passed"]
    assert not any(t.name == "proctor-case-watchdog" for t in threading.enumerate())


def test_no_timeout_when_zero_and_fast_cases_never_time_out() -> None:
    got = records(Numbers(), 0, 2000, timeout=1.0)
    assert sum(r["status"] == "errored" for r in got) == 1  # case 13 only


def test_system_exit_in_a_task_is_an_errored_case() -> None:
    class Exits(Numbers):
        def solve(self, case: int) -> int:
            sys.exit(3)

    (record,) = records(Exits(), 0, 1)
    assert record["status"] == "errored"
    assert "SystemExit: 3" in record["error"]


@pytest.mark.parametrize(("start", "end"), [(-1, 3), (5, 4)])
def test_bad_batch_range(start: int, end: int) -> None:
    with pytest.raises(ValueError, match="bad batch range"):
        records(Numbers(), start, end)


# --- checkpoints ------------------------------------------------------------------------------


def test_state_round_trip_is_compressed_and_scoped_per_case(state_store: MemoryStateStore) -> None:
    state = {"population": list(range(1000)) * 5, "generation": 7}
    assert decode_state(encode_state(state)) == state
    assert len(encode_state(state)) < len(repr(state)) / 4
    set_current_case(3)
    save_state("search", state)
    assert load_state("search") == state
    set_current_case(4)
    assert load_state("search") is None
    set_current_case(None)
    save_state("shared", 1)
    assert set(state_store.data) == {"cases/3/search", "task/shared"}


class Resumable(Task):
    """A long case that resumes from its checkpoint: the implementations below save their
    progress after each step and start from what they find."""

    properties = (Property("right", lambda case, out: out == case),)

    def generate(self, seed: int, index: int) -> int:
        return index

    def solve(self, case: int) -> int:
        return case


def finishes_honestly(case: int) -> int:
    done = load_state("progress") or 0
    for step in range(done, 10):
        save_state("progress", step + 1)
    return case


def trusts_the_checkpoint(case: int) -> int:
    """Right only if it resumes from its own progress: with another side's, it skips work."""
    done = load_state("progress") or 0
    skipped = done
    for step in range(done, 10):
        save_state("progress", step + 1)
    return case + skipped  # wrong (a violation of equivalence) when it found progress


def _sides_of(path: str, loaded: PythonTask, end: int) -> list[dict[str, Any]]:
    if path == "batch":
        return list(loaded.evaluate_batch(0, end, 0.0))
    if path == "into":
        out = BatchRecords(0, loaded.sides)
        loaded.evaluate_into(0, end, 0.0, out)
        return out.records()
    baseline = list(loaded.evaluate_side(0, end, 0, 0.0))
    candidate = list(loaded.evaluate_side(0, end, 1, 0.0))
    return [
        {"index": b["index"], "baseline": b, "candidate": c}
        for b, c in zip(baseline, candidate, strict=True)
    ]


@pytest.mark.parametrize("path", ["batch", "into", "sides"])
def test_finding_the_candidate_resumed_from_the_baselines_checkpoint(
    path: str, state_store: MemoryStateStore
) -> None:
    """The two sides of a comparison run the same case: each resumes from its own state only,
    so one side's saved progress never spoils the other's evaluation (or its verdict)."""
    loaded = PythonTask(Resumable(), 5, [finishes_honestly, trusts_the_checkpoint])
    try:
        got = _sides_of(path, loaded, 3)
    finally:
        loaded.close()
    assert len(got) == 3
    for record in got:
        for role in ("baseline", "candidate"):
            assert record[role]["passed"], (path, record)
    assert sorted(state_store.data) == sorted(
        f"cases/{i}/{role}/progress" for i in range(3) for role in ("baseline", "candidate")
    )


@pytest.mark.parametrize("key", ["", "../x", "a/../b", "a b", "x" * 201, "/abs"])
def test_state_keys_are_validated(key: str) -> None:
    with pytest.raises(ValueError, match="state key"):
        state_key(key)


def test_decode_rejects_foreign_bytes() -> None:
    with pytest.raises(ValueError, match="bad header"):
        decode_state(b"not state")


class LongSearch(Task):
    """Each case takes ten steps, checkpointing after each; it stops when asked to."""

    steps_run: list[int] = []

    def generate(self, seed: int, index: int) -> int:
        return index

    def solve(self, case: int) -> int:
        step, total = load_state("progress") or (0, 0)
        while step < 10:
            total += case
            step += 1
            type(self).steps_run.append(step)
            save_state("progress", (step, total))
            if step == 4 and case == 1 and not stop_requested() and not load_state("stopped-once"):
                save_state("stopped-once", True)
                request_stop()
            if stop_requested():
                raise CaseInterrupted
        return total

    check = Task.check


def test_interrupted_case_resumes_from_its_checkpoint() -> None:
    LongSearch.steps_run = []
    first = records(LongSearch(), 0, 3)
    assert [r["index"] for r in first] == [0]  # case 1 was interrupted, case 2 never started
    assert LongSearch.steps_run == [*range(1, 11), 1, 2, 3, 4]
    clear_stop()
    LongSearch.steps_run = []
    second = records(LongSearch(), 1, 3)
    assert [r["status"] for r in second] == ["passed", "passed"]
    assert LongSearch.steps_run == [*range(5, 11), *range(1, 11)]  # case 1 resumed at step 5


def test_no_case_starts_after_stop_is_requested() -> None:
    request_stop()
    assert records(Numbers(), 0, 5) == []


# --- load_task --------------------------------------------------------------------------------


def test_load_task_python_with_compare_and_params() -> None:
    compare = CompareSpec.model_validate(
        {
            "baseline": {"ref": "matmul_naive"},
            "candidate": {"ref": "proctor.examples.matmul:matmul_tiled", "params": {"tile": 3}},
        }
    )
    spec = TaskSpec(entrypoint="proctor.examples.matmul:task", params={"maxSize": 5})
    with load_task(spec, compare, seed=3) as loaded:
        got = list(loaded.evaluate_batch(0, 5, 10.0))
    assert [r["status"] for r in got] == ["passed"] * 5


def test_load_task_reports_a_bad_implementation() -> None:
    compare = CompareSpec.model_validate(
        {"baseline": {"ref": "SHIFT"}, "candidate": {"ref": "top_k_heap"}}
    )
    with pytest.raises(TaskLoadError, match="not callable"):
        load_task(TaskSpec(entrypoint="proctor.examples.topk:task"), compare, 0)


# --- command tasks ----------------------------------------------------------------------------


FLAKY = textwrap.dedent(
    """
    import json, sys, time
    for line in sys.stdin:
        req = json.loads(line)
        i = req["index"]
        if i == 3:
            time.sleep(30)
        if i == 5:
            sys.exit(2)
        if i == 7:
            print("garbage", flush=True)
            continue
        if i == 9:
            print(json.dumps({"index": i, "error": "cannot evaluate"}), flush=True)
            continue
        ok = i % 4 != 2
        bad = [] if ok else [req["role"] or "p"]
        print(json.dumps({"index": i, "passed": ok, "violations": bad}), flush=True)
    """
)


def command_task(
    tmp_path: Path, source: str, roles: list[tuple[str | None, str | None]]
) -> CommandTask:
    script = tmp_path / "cmd.py"
    script.write_text(source)
    return CommandTask([sys.executable, str(script)], seed=1, params={}, roles=roles)


def test_command_task_errors_bad_cases_and_keeps_going(tmp_path: Path) -> None:
    task = command_task(tmp_path, FLAKY, [(None, None)])
    try:
        t0 = time.monotonic()
        got = list(task.evaluate_batch(0, 12, 1.0))
        assert time.monotonic() - t0 < 10
    finally:
        task.close()
    assert [r["index"] for r in got] == list(range(12))
    status = {r["index"]: r["status"] for r in got}
    assert [i for i, s in status.items() if s == "errored"] == [3, 5, 7, 9]
    assert [i for i, s in status.items() if s == "failed"] == [2, 6, 10]
    errors = {r["index"]: r["error"] for r in got}
    assert "timed out after 1s" in errors[3]
    assert "exited with code 2" in errors[5]
    assert "not JSON" in errors[7]
    assert errors[9] == "cannot evaluate"
    types = {r["index"]: r["errorType"] for r in got if r["errorType"]}
    assert types == {3: "timeout", 5: "crashed", 7: "badOutput", 9: "exception"}


def test_command_task_compare_sends_both_roles(tmp_path: Path) -> None:
    task = command_task(tmp_path, FLAKY, [("baseline", "a"), ("candidate", "b")])
    try:
        got = list(task.evaluate_batch(0, 3, 5.0))
    finally:
        task.close()
    assert got[2]["status"] == "failed"
    assert got[2]["baseline"]["violations"] == ["baseline"]
    assert got[2]["candidate"]["violations"] == ["candidate"]
    assert got[0]["baseline"]["passed"]
    assert got[0]["candidate"]["passed"]


def test_command_that_cannot_start_errors_every_case_without_raising(tmp_path: Path) -> None:
    task = CommandTask([str(tmp_path / "missing")], seed=0, params={}, roles=[(None, None)])
    got = list(task.evaluate_batch(0, 50, 1.0))
    task.close()
    assert len(got) == 50
    assert all(r["status"] == "errored" for r in got)
    assert "keeps failing" in got[-1]["error"]


def test_command_task_pipelines_many_cases(tmp_path: Path) -> None:
    spec = TaskSpec(
        command=[sys.executable, "-m", "proctor.examples.sorting_cmd"], params={"maxLength": 10}
    )
    with load_task(spec, None, seed=2) as task:
        got = list(task.evaluate_batch(0, 500, 5.0))
        again = list(task.evaluate_batch(500, 510, 5.0))
    assert [r["index"] for r in got + again] == list(range(510))
    assert all(r["status"] == "passed" for r in got + again)
