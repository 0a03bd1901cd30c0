"""Parquet: rows counted from footers, a row range read from the row groups that hold it.

A worker keeps the footers of the files it reads and the one row group it read last, so its
memory is bounded by the largest row group (times the columns read), never by the dataset.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

from proctor.dataset.rangefile import RangeFile

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq


def _arrow() -> tuple[ModuleType, ModuleType]:
    """pyarrow and pyarrow.parquet, imported on first use: they take half a second to import
    and slow every process's exit, and only runs over Parquet need them."""
    import pyarrow  # noqa: PLC0415 - see the docstring
    import pyarrow.parquet  # noqa: PLC0415 - see the docstring

    return pyarrow, pyarrow.parquet


class ParquetError(ValueError):
    """A file that is not readable Parquet, or lacks a column asked for."""


def open_parquet(raw: RangeFile) -> pq.ParquetFile:
    """The file's footer, read with a few ranged GETs at its end."""
    pa, pq = _arrow()
    try:
        return pq.ParquetFile(raw, pre_buffer=False)
    except (pa.ArrowException, OSError) as exc:
        raise ParquetError(f"it is not readable Parquet: {exc}") from exc


def footer_rows(pf: pq.ParquetFile) -> int:
    return int(pf.metadata.num_rows)


def schema_of(pf: pq.ParquetFile, columns: Sequence[str] | None) -> pa.Schema:
    """The Arrow schema of the columns read (all when ``columns`` is None)."""
    schema = pf.schema_arrow
    if columns is None:
        return schema
    missing = [c for c in columns if schema.get_field_index(c) < 0]
    if missing:
        raise ParquetError(f"it has no column {', '.join(map(repr, missing))}")
    return _arrow()[0].schema([schema.field(c) for c in columns])


@dataclass
class ParquetRows:
    """Rows of one Parquet file, read one row group at a time."""

    pf: pq.ParquetFile
    columns: list[str] | None
    starts: list[int] = field(default_factory=list)
    _group: int = -1
    _table: pa.Table | None = None

    def __post_init__(self) -> None:
        meta = self.pf.metadata
        total = 0
        for g in range(meta.num_row_groups):
            self.starts.append(total)
            total += meta.row_group(g).num_rows

    def read(self, first: int, last: int) -> list[dict[str, Any]]:
        """Rows ``[first, last)`` of the file as dicts."""
        out: list[dict[str, Any]] = []
        at = first
        while at < last:
            g = bisect.bisect_right(self.starts, at) - 1
            if g != self._group or self._table is None:
                self._table = None  # the one row group held (module doc)
                self._table = self.pf.read_row_group(g, columns=self.columns)
                self._group = g
            base = self.starts[g]
            # Arrow slices are views: only the rows asked for become Python objects.
            take = self._table.slice(at - base, last - at).to_pylist()
            if not take:
                break
            out += take
            at += len(take)
        return out
