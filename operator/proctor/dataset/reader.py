"""Reading rows ``[start, end)`` of a dataset from its manifest: what a worker's task sees.

Only the range is read (a byte range of a text file through its index, the row groups of a
Parquet file that hold it), every read pinned to the ETag the manifest recorded: a file
replaced while the run runs raises :class:`proctor.storage.ObjectChangedError` naming it. A row that
cannot be read as its format errors its case alone (:class:`proctor.sdk.cases.DatasetRow`
with ``error``).
"""

from __future__ import annotations

import bisect
import json
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any

from proctor.dataset.location import Location, partition_values
from proctor.dataset.manifest import FileEntry, Manifest, load_index
from proctor.dataset.parquet import ParquetError, ParquetRows, open_parquet
from proctor.dataset.rangefile import RangeFile
from proctor.dataset.text import TextIndex, read_text
from proctor.sdk.cases import DatasetRow
from proctor.storage import RunStorage

_OPEN_FILES = 2
"""Files whose footer or index a reader keeps (the one it reads and the one before)."""


class DatasetReader:
    """:class:`proctor.sdk.cases.RowSource` over a manifest. Not thread-safe."""

    def __init__(self, manifest: Manifest, location: Location, storage: RunStorage) -> None:
        self.manifest = manifest
        self.location = location
        self.storage = storage
        self._starts = [f.start for f in manifest.files]
        self._open: OrderedDict[int, ParquetRows | TextIndex] = OrderedDict()

    def rows(self, start: int, end: int) -> Iterator[DatasetRow]:
        """See :meth:`proctor.sdk.cases.RowSource.rows`."""
        at = start
        while at < end:
            n = bisect.bisect_right(self._starts, at) - 1
            entry = self.manifest.files[n]
            stop = min(end, entry.start + entry.rows)
            if stop <= at:
                raise IndexError(f"case {at} is past the dataset's {self.manifest.rows} rows")
            for row_number, payload in self._read(n, entry, at - entry.start, stop - entry.start):
                yield self._row(entry, entry.start + row_number, row_number, payload)
            at = stop

    def _read(self, n: int, entry: FileEntry, first: int, last: int) -> Iterator[tuple[int, Any]]:
        raw = RangeFile(self.location.blobs, entry.key, entry.size, entry.etag)
        handle = self._handle(n, entry, raw)
        if isinstance(handle, ParquetRows):
            yield from enumerate(handle.read(first, last), first)
        else:
            yield from read_text(raw, entry.format, handle, first, last)

    def _handle(self, n: int, entry: FileEntry, raw: RangeFile) -> ParquetRows | TextIndex:
        if n in self._open:
            self._open.move_to_end(n)
            return self._open[n]
        handle: ParquetRows | TextIndex
        if entry.format == "parquet":
            columns = self.manifest.columns
            if columns is not None and self.manifest.id_field:
                columns = list(dict.fromkeys([*columns, self.manifest.id_field]))
            try:
                handle = ParquetRows(open_parquet(raw), columns)
            except ParquetError as exc:
                raise ParquetError(f"dataset file {raw.blobs.uri(raw.key)}: {exc}") from exc
        else:
            offsets = load_index(self.storage, entry.index) if entry.index else None
            handle = TextIndex(entry.rows, offsets, entry.header)
        self._open[n] = handle
        while len(self._open) > _OPEN_FILES:
            self._open.popitem(last=False)
        return handle

    def _row(self, entry: FileEntry, index: int, number: int, payload: Any) -> DatasetRow:
        row_id = f"{entry.path}#{number}"
        value, error = _decode(entry, payload)
        if value is not None:
            for key, part in partition_values(entry.partition).items():
                value.setdefault(key, part)
            id_field = self.manifest.id_field
            if id_field is not None:
                if value.get(id_field) is None:
                    error = f"it has no {id_field!r} (cases.dataset.idField)"
                else:
                    row_id = str(value[id_field])
        if value is not None and error is None:
            value, error = _project(value, self.manifest.columns)
        if error is not None:
            where = f"dataset file {entry.path} row {number}"
            return DatasetRow(index, None, row_id, entry.partition, f"{where}: {error}")
        return DatasetRow(index, value, row_id, entry.partition)


def _project(
    value: dict[str, Any], columns: list[str] | None
) -> tuple[dict[str, Any] | None, str | None]:
    """The row with only ``columns``; or why it cannot be (a column missing)."""
    if columns is None:
        return value, None
    missing = [c for c in columns if c not in value]
    if missing:
        return None, f"it has no column {', '.join(map(repr, missing))}"
    return {c: value[c] for c in columns}, None


def _decode(entry: FileEntry, payload: Any) -> tuple[dict[str, Any] | None, str | None]:
    """A row's dict from its payload (see :func:`proctor.dataset.text.read_text`)."""
    if isinstance(payload, Mapping):
        return dict(payload), None
    if isinstance(payload, str):
        return None, payload
    if isinstance(payload, list):
        header = entry.header or []
        if len(payload) != len(header):
            return None, f"it has {len(payload)} fields where the header names {len(header)}"
        return dict(zip(header, payload, strict=True)), None
    try:
        value = json.loads(payload)
    except ValueError as exc:
        return None, f"not JSON: {exc}"
    if not isinstance(value, dict):
        return None, f"a JSON {type(value).__name__}, not an object"
    return value, None
