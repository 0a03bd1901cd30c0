"""Where a task's cases come from when they are not generated: the rows of a dataset.

A :class:`RowSource` (``proctor.dataset``'s reader, or a list in a test) gives the rows of a
range of case indices; a row that cannot be read (not JSON, a missing column) comes with its
``error`` instead of a case, and errors that case alone (``badInput``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class DatasetRow:
    """Case ``index``: the row (``case``), its identity and partition, or why it is unreadable."""

    index: int
    case: Any
    id: str
    partition: str | None = None
    error: str | None = None

    def identity(self) -> dict[str, Any]:
        """The record fields that say which row the case is."""
        return {"id": self.id, "partition": self.partition}


class RowSource(Protocol):
    """The rows of a dataset by case index."""

    def rows(self, start: int, end: int) -> Iterator[DatasetRow]:
        """One row per index of ``[start, end)``, in order; reads only that range."""
        ...
