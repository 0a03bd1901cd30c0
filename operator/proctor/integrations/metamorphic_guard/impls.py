"""Top-k implementations for Metamorphic Guard's built-in ``top_k`` task, ``solve(L, k)`` style.

``top_k_sorted`` and ``top_k_heap`` agree on every input. ``top_k_dedup`` has a planted bug:
it drops duplicate values, so its output is too short whenever the input repeats a value among
its top k (the length property catches it). ``top_k_skip_first`` ignores the first element,
which the permutation relation catches even where the properties hold.
"""

from __future__ import annotations

import heapq


def top_k_sorted(L: list[int], k: int) -> list[int]:  # noqa: N803 - Metamorphic Guard's name
    """The k largest values, largest first, by sorting."""
    return sorted(L, reverse=True)[:k]


def top_k_heap(L: list[int], k: int) -> list[int]:  # noqa: N803
    """The k largest values, largest first, with heap selection."""
    return heapq.nlargest(k, L) if k > 0 else []


def top_k_dedup(L: list[int], k: int) -> list[int]:  # noqa: N803
    """Planted bug: duplicates are removed before selecting."""
    return sorted(set(L), reverse=True)[:k]


def top_k_skip_first(L: list[int], k: int) -> list[int]:  # noqa: N803
    """Planted bug: the first element is never considered."""
    return sorted(L[1:] if len(L) > 1 else L, reverse=True)[:k]
