"""Slow candidates for the ``proctor run`` fault tests: a few milliseconds per case, so a run
is still going when a test signals it."""

from __future__ import annotations

import time
from typing import Any

from proctor.examples.topk import top_k_buggy, top_k_heap, top_k_sorted


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
