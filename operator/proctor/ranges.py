"""Index ranges ``[start, end)`` of a run's cases: the unit of work the queue carries and the
key of every result object in storage (both build on this module)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Range:
    """Case indexes ``[start, end)``."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if self.start < 0 or self.end <= self.start:
            raise ValueError(f"a range needs 0 <= start < end, got [{self.start}, {self.end})")

    def __len__(self) -> int:
        return self.end - self.start

    def __str__(self) -> str:
        return f"[{self.start}, {self.end})"


def partition(count: int, size: int, start: int = 0) -> list[Range]:
    """``[start, count)`` cut into ranges of ``size`` (the last one shorter)."""
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    return [Range(s, min(s + size, count)) for s in range(start, count, size)]


def subtract(whole: Range, done: Iterable[Range]) -> list[Range]:
    """The parts of ``whole`` not covered by ``done`` (any order, may overlap), in order."""
    gaps: list[Range] = []
    cursor = whole.start
    for part in sorted(done, key=lambda r: r.start):
        if part.end <= cursor:
            continue
        if part.start >= whole.end:
            break
        if part.start > cursor:
            gaps.append(Range(cursor, part.start))
        cursor = max(cursor, part.end)
        if cursor >= whole.end:
            break
    if cursor < whole.end:
        gaps.append(Range(cursor, whole.end))
    return gaps
