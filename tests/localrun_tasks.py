"""Slow candidates for the ``proctor run`` fault tests: a few milliseconds per case, so a run
is still going when a test signals it."""

from __future__ import annotations

import os
import time
from typing import Any

from proctor.examples.topk import top_k_buggy, top_k_heap, top_k_sorted
from proctor.sdk import Task


def slow_sorted(case: dict[str, Any]) -> list[int]:
    time.sleep(0.002)
    return top_k_sorted(case)


def slow_heap(case: dict[str, Any]) -> list[int]:
    time.sleep(0.002)
    return top_k_heap(case)


def slow_buggy(case: dict[str, Any]) -> list[int]:
    time.sleep(0.002)
    return top_k_buggy(case)


def slow_ok(case: dict[str, Any]) -> int:
    """``tests.test_worker_tasks:ok`` at a few milliseconds a case, for runs signalled midway."""
    time.sleep(0.002)
    return int(case["i"])


# --- red-team review of issue 15 (tests/test_redteam_trust.py) ---------------------------------


def index_slow(case: dict[str, Any]) -> int:
    """Passes ``tests.test_worker_tasks:Indexed``; a few milliseconds a case."""
    time.sleep(0.004)
    return int(case["i"])


def index_block_crash(case: dict[str, Any]) -> int:
    """Like :func:`index_slow`, but kills its worker on every case of 25..49, 125..149, ..."""
    time.sleep(0.004)
    if (int(case["i"]) // 25) % 4 == 1:
        os._exit(9)
    return int(case["i"])


class Exit0At7(Task):
    """Ends its worker with exit status 0, as if it were done, at every index ending in 7."""

    def generate(self, seed: int, index: int) -> Any:
        return index

    def solve(self, case: Any) -> Any:
        if case % 10 == 7:
            os._exit(0)
        return case


class GenCrash(Task):
    """Cases ``{"i": index}`` whose generate() kills the worker (``mode: exit``) or raises
    (``mode: raise``) at every index ending in 7: the task is broken, not an implementation."""

    def generate(self, seed: int, index: int) -> Any:
        if index % 10 == 7:
            if self.params.get("mode") == "raise":
                raise RuntimeError("generate failed")
            os._exit(9)
        return {"i": index}

    def check(self, case: Any, output: Any) -> list[str]:
        return [] if output == case["i"] else ["wrong-index"]


class BoolCheck(Task):
    """A check() that returns a bool, which is not a violation list: errors on both sides."""

    def generate(self, seed: int, index: int) -> Any:
        return {"i": index}

    def check(self, case: Any, output: Any) -> list[str]:
        return output == case["i"]  # type: ignore[return-value] # the broken check under test
