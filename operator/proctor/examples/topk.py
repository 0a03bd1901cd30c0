"""Top-k selection: three implementations, one with an off-by-one the relations catch.

``top_k_sorted`` and ``top_k_heap`` agree on every input. ``top_k_buggy`` is a hand-rolled
heap selection whose scan starts one element too late, so the element at position ``k`` is
never considered. Its outputs still have the right length, are sorted and come from the input,
so the properties alone miss it; permuting the input moves which element is skipped, and the
permutation and reversal relations catch it.

Use it as ``task.entrypoint: proctor.examples.topk:TopKTask`` with ``compare.baseline.ref:
top_k_sorted`` and ``compare.candidate.ref: top_k_buggy`` (or ``top_k_heap``).
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter
from typing import Any

from proctor.sdk import Property, Relation, Task, case_rng

Case = dict[str, Any]


def top_k_sorted(case: Case) -> list[int]:
    """The k largest values, largest first, by sorting everything."""
    values: list[int] = case["values"]
    return sorted(values, reverse=True)[: case["k"]]


def top_k_heap(case: Case) -> list[int]:
    """The k largest values, largest first, with the standard library's heap selection."""
    return heapq.nlargest(case["k"], case["values"])


def top_k_buggy(case: Case) -> list[int]:
    """A min-heap of the first k values, then a scan of the rest: which starts one too late."""
    values: list[int] = case["values"]
    k: int = case["k"]
    heap = values[:k]
    heapq.heapify(heap)
    for x in values[k + 1 :]:  # the bug: values[k] is never looked at
        if x > heap[0]:
            heapq.heapreplace(heap, x)
    return sorted(heap, reverse=True)


def _has_length(case: Case, out: list[int]) -> bool:
    k: int = case["k"]
    return len(out) == min(k, len(case["values"]))


def _is_descending(case: Case, out: list[int]) -> bool:
    return all(a >= b for a, b in itertools.pairwise(out))


def _from_input(case: Case, out: list[int]) -> bool:
    available: Counter[int] = Counter(case["values"])
    return all(available[v] >= n for v, n in Counter(out).items())


def _shuffled(case: Case, rng: random.Random) -> Case:
    values = list(case["values"])
    rng.shuffle(values)
    return {"values": values, "k": case["k"]}


def _reversed(case: Case) -> Case:
    return {"values": case["values"][::-1], "k": case["k"]}


SHIFT = 7


def _shifted(case: Case) -> Case:
    return {"values": [v + SHIFT for v in case["values"]], "k": case["k"]}


def _doubled(case: Case) -> Case:
    return {"values": case["values"] + case["values"], "k": case["k"]}


class TopKTask(Task):
    """Case: up to 40 small integers (many duplicates) and a k from 1 to 12."""

    properties = (
        Property("length", _has_length, "min(k, n) values come back"),
        Property("descending", _is_descending, "largest first"),
        Property("from_input", _from_input, "a sub-multiset of the input"),
    )
    relations = (
        Relation("permutation", _shuffled, uses_rng=True, description="order does not matter"),
        Relation("reversal", _reversed, description="order does not matter"),
        Relation(
            "shift",
            _shifted,
            relate=lambda out, follow: follow == [v + SHIFT for v in out],
            description="adding a constant to every value adds it to the answer",
        ),
        Relation(
            "duplication",
            _doubled,
            relate=lambda out, follow: follow == sorted(out + out, reverse=True)[: len(follow)],
            description="doubling the input doubles each of the top values",
        ),
    )

    def generate(self, seed: int, index: int) -> Case:
        """Values in [-50, 50] so ties are common; n may be smaller than k."""
        rng = case_rng(seed, index)
        n = rng.randint(0, int(self.params.get("maxLength", 40)))
        return {"values": [rng.randint(-50, 50) for _ in range(n)], "k": rng.randint(1, 12)}

    def solve(self, case: Case) -> list[int]:
        """The reference implementation, for runs without a comparison."""
        return top_k_sorted(case)


task = TopKTask
