"""A command task: sorting, speaking Proctor's JSON-lines protocol on stdin and stdout.

Written against the standard library only, to show the protocol any language can speak:

- in, one line per case and side: ``{"index": 7, "seed": 1, "role": "candidate",
  "implementation": "insertion"}`` (``role`` and ``implementation`` are null without compare);
- out, one line per input line, in order: ``{"index": 7, "passed": true, "violations": [],
  "output": [...]}``, or ``{"index": 7, "error": "..."}`` when the case could not be evaluated.

The process is started once and fed many cases; it should flush after every answer. The run's
seed and task params are also in ``PROCTOR_SEED`` and ``PROCTOR_TASK_PARAMS``.

Implementations: ``builtin``, ``insertion``, ``merge`` (all correct) and ``dedup_buggy``, which
sorts a set and so loses duplicates. Run it as ``python -m proctor.examples.sorting_cmd``.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TextIO


def insertion_sort(xs: list[int]) -> list[int]:
    """Insertion sort, O(n^2)."""
    out = list(xs)
    for i in range(1, len(out)):
        x, j = out[i], i - 1
        while j >= 0 and out[j] > x:
            out[j + 1] = out[j]
            j -= 1
        out[j + 1] = x
    return out


def merge_sort(xs: list[int]) -> list[int]:
    """Top-down merge sort."""
    if len(xs) <= 1:
        return list(xs)
    mid = len(xs) // 2
    left, right = merge_sort(xs[:mid]), merge_sort(xs[mid:])
    out: list[int] = []
    i = j = 0
    while i < len(left) and j < len(right):
        if left[i] <= right[j]:
            out.append(left[i])
            i += 1
        else:
            out.append(right[j])
            j += 1
    return out + left[i:] + right[j:]


def dedup_buggy(xs: list[int]) -> list[int]:
    """Sorted, but through a set: duplicates vanish."""
    return sorted(set(xs))


IMPLEMENTATIONS: dict[str, Callable[[list[int]], list[int]]] = {
    "builtin": sorted,
    "insertion": insertion_sort,
    "merge": merge_sort,
    "dedup_buggy": dedup_buggy,
}


def generate(seed: int, index: int, max_length: int) -> list[int]:
    """Case ``index``: a list of small integers, deterministic in (seed, index)."""
    rng = random.Random(f"{seed}:{index}")
    return [rng.randint(-20, 20) for _ in range(rng.randint(0, max_length))]


def evaluate(sort: Callable[[list[int]], list[int]], xs: list[int]) -> tuple[list[str], Any]:
    """Violated properties and relations, and the output."""
    out = sort(xs)
    violations = []
    if any(a > b for a, b in itertools.pairwise(out)):
        violations.append("ordered")
    if Counter(out) != Counter(xs):
        violations.append("permutation")
    if sort(xs[::-1]) != out:
        violations.append("relation:reversal")
    top = max(xs, default=0) + 1
    if sort([*xs, top]) != [*out, top]:
        violations.append("relation:append_max")
    return violations, out


def serve(stdin: TextIO, stdout: TextIO, max_length: int, delay: float) -> None:
    """Answer cases until stdin closes."""
    for line in stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        index = request["index"]
        try:
            name = request.get("implementation") or "builtin"
            if name not in IMPLEMENTATIONS:
                raise KeyError(f"no implementation {name!r}; have {sorted(IMPLEMENTATIONS)}")
            if delay:
                time.sleep(delay)
            xs = generate(int(request["seed"]), index, max_length)
            violations, out = evaluate(IMPLEMENTATIONS[name], xs)
            answer: dict[str, Any] = {
                "index": index,
                "passed": not violations,
                "violations": violations,
                "output": out,
            }
        except Exception as exc:
            answer = {"index": index, "error": f"{type(exc).__name__}: {exc}"}
        stdout.write(json.dumps(answer) + "\n")
        stdout.flush()


def main() -> None:
    """Read params from the environment and serve stdin."""
    params = json.loads(os.environ.get("PROCTOR_TASK_PARAMS") or "{}")
    serve(
        sys.stdin,
        sys.stdout,
        max_length=int(params.get("maxLength", 30)),
        delay=float(params.get("delaySeconds", 0.0)),
    )


if __name__ == "__main__":
    main()
