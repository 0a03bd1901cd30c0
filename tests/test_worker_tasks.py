"""Tasks the worker tests and benchmarks run (entrypoints ``tests.test_worker_tasks:...``).

No tests here: the module is importable by worker subprocesses with the repository root on
PYTHONPATH.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from proctor.sdk import Property, Task, load_state, save_state, stop_requested
from proctor.sdk.state import CaseInterrupted


class Noop(Task):
    """Every case passes at once."""

    def generate(self, seed: int, index: int) -> Any:
        return index

    def solve(self, case: Any) -> Any:
        return case


class Faulty(Task):
    """Configurable misbehaviour by index: ``raise`` (an exception), ``crash`` (the process
    dies as a segfault would: os._exit), ``fail`` (a property fails); ``sleep_ms`` per case."""

    properties = (Property("even-ok", lambda case, out: out is not None),)

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        super().__init__(params)
        self.raise_at = set(self.params.get("raise", []))
        self.crash_at = set(self.params.get("crash", []))
        self.fail_at = set(self.params.get("fail", []))
        self.sleep = float(self.params.get("sleep_ms", 0)) / 1000.0

    def generate(self, seed: int, index: int) -> Any:
        return index

    def solve(self, case: Any) -> Any:
        if self.sleep:
            time.sleep(self.sleep)
        if case in self.crash_at:
            os._exit(70)
        if case in self.raise_at:
            raise RuntimeError(f"boom at {case}")
        return None if case in self.fail_at else case


class Cpu(Task):
    """A CPU-bound case: ``work`` rounds of integer arithmetic."""

    def generate(self, seed: int, index: int) -> Any:
        return index

    def solve(self, case: Any) -> Any:
        x = case
        for i in range(int(self.params.get("work", 20000))):
            x = (x * 1103515245 + 12345 + i) & 0x7FFFFFFF
        return x


class Stateful(Task):
    """A long case in ``steps`` steps that checkpoints every ``every`` steps and resumes."""

    def generate(self, seed: int, index: int) -> Any:
        return index

    def solve(self, case: Any) -> Any:
        steps = int(self.params.get("steps", 100))
        every = int(self.params.get("every", 10))
        step_ms = float(self.params.get("step_ms", 1.0)) / 1000.0
        state = load_state("progress") or {"step": 0, "acc": 0}
        while state["step"] < steps:
            if stop_requested():
                save_state("progress", state)
                raise CaseInterrupted
            time.sleep(step_ms)
            state["acc"] += state["step"]
            state["step"] += 1
            if state["step"] % every == 0:
                save_state("progress", state)
        return state["acc"]


class Indexed(Task):
    """Cases ``{"i": index}``; an output passes when it is the index. Compare the module-level
    implementations below: ``ok`` and candidates that crash, hang, lie or return a set."""

    def generate(self, seed: int, index: int) -> Any:
        return {"i": index}

    def check(self, case: Any, output: Any) -> list[str]:
        if isinstance(output, set):
            return output  # type: ignore[return-value] # the unencodable check under test
        return [] if output == case["i"] else ["wrong-index"]


def ok(case: Mapping[str, Any]) -> int:
    return int(case["i"])


def exit_at_7(case: Mapping[str, Any]) -> int:
    """Kills its process (as a segfault would) on every index ending in 7."""
    if case["i"] % 10 == 7:
        os._exit(9)
    return int(case["i"])


def hang_at_13(case: Mapping[str, Any]) -> int:
    """Case 13 never ends and swallows the timeout's interruption."""
    while case["i"] == 13:
        try:  # noqa: SIM105 - the issue's repro, written as a user would
            time.sleep(1000)
        except BaseException:
            pass
    return int(case["i"])


def lie_at_3(case: Mapping[str, Any]) -> int:
    """A wrong answer (a failure, not an error) on every index ending in 3."""
    return -1 if case["i"] % 10 == 3 else int(case["i"])


def set_at_5(case: Mapping[str, Any]) -> Any:
    """An output the check turns into a set of violations on every index ending in 5."""
    return {"not-a-list"} if case["i"] % 10 == 5 else int(case["i"])


def top_k_exit_on_7(L: list[int], k: int) -> list[int]:  # noqa: N803 - Metamorphic Guard's name
    """Metamorphic Guard's top_k that kills its process when the input's length ends in 7."""
    if len(L) % 10 == 7:
        os._exit(9)
    return sorted(L, reverse=True)[:k]


def exit_at_27(case: Mapping[str, Any]) -> int:
    """Kills its process on case 27 only."""
    if case["i"] == 27:
        os._exit(9)
    return int(case["i"])


def sigstop_at_7(case: Mapping[str, Any]) -> int:
    """Stops its own process (SIGSTOP: no thread runs, nothing can catch it) on indexes ending
    in 7: red-team item 5."""
    import signal

    if case["i"] % 10 == 7:
        os.kill(os.getpid(), signal.SIGSTOP)
    return int(case["i"])


def grandchild_at_7(case: Mapping[str, Any]) -> int:
    """On indexes ending in 7, forks a child that writes its pid under ``$PROCTOR_TEST_PIDS``
    and sleeps a minute, then kills its own process: red-team item 7g."""
    if case["i"] % 10 == 7:
        if os.fork() == 0:
            from pathlib import Path

            (Path(os.environ["PROCTOR_TEST_PIDS"]) / str(os.getpid())).write_text("")
            time.sleep(60)
            os._exit(0)
        os._exit(9)
    return int(case["i"])
