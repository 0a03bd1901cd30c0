"""JSON lines and CSV: a row-offset index built once, then rows read by byte range.

A row is a line with something on it (JSONL) or a CSV record (quoted fields may hold line
breaks); blank lines are not rows. The index keeps the byte offset of every
:data:`STRIDE`-th row, so reading rows ``[a, b)`` is one ranged GET of at most ``b - a + 2 *
STRIDE`` rows. A compressed file (``.jsonl.gz``, ``.jsonl.zst``) cannot be entered in the middle:
its index holds only the row count and a range is read by streaming from the file's start.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import zstandard

from proctor.dataset.rangefile import RangeFile

STRIDE = 256
"""Rows between two offsets of the index."""
_CHUNK = 8 << 20
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class TextIndex:
    """Rows of a text file; the offset of every STRIDE-th row (None: compressed); CSV header."""

    rows: int
    offsets: list[int] | None
    header: list[str] | None = None


class _Stream(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class TextError(ValueError):
    """The file cannot be read as its format at a row (the message says which)."""


def _lines(stream: _Stream, start: int = 0) -> Iterator[tuple[int, bytes]]:
    """(offset, line with its terminator) of each line; ``\\r\\n`` split by a chunk is joined."""
    carry, pos = b"", start
    while True:
        chunk = stream.read(_CHUNK)
        if not chunk:
            break
        parts = (carry + chunk).splitlines(keepends=True)
        carry = parts.pop() if parts and not parts[-1].endswith(b"\n") else b""
        for line in parts:
            yield pos, line
            pos += len(line)
    if carry:
        yield pos, carry


def _open(raw: RangeFile, compressed: str | None) -> _Stream:
    stream = io.BufferedReader(raw, buffer_size=_CHUNK)
    if compressed == "zst":
        return zstandard.ZstdDecompressor().stream_reader(stream, read_across_frames=True)
    if compressed == "gz":
        return gzip.GzipFile(fileobj=stream, mode="rb")
    return stream


def _compression(fmt: str) -> str | None:
    return fmt.rsplit(".", 1)[1] if "." in fmt else None


def _csv_records(lines: Iterable[tuple[int, bytes]]) -> Iterator[tuple[int, list[str] | str]]:
    """(offset, fields) of each CSV record, or (offset, why) for one that cannot be decoded."""
    at = [0]

    def text() -> Iterator[str]:
        for off, line in lines:
            at[0] = off + len(line)
            yield line.removeprefix(_BOM).decode("utf-8", "replace")

    reader = csv.reader(text())
    before = 0
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield before, f"not CSV: {exc}"
            before = at[0]
            continue
        if fields:
            yield before, fields
        before = at[0]


def index_text(raw: RangeFile, fmt: str) -> TextIndex:
    """Count the rows of a JSONL or CSV file and index their offsets (see the module doc)."""
    compressed = _compression(fmt)
    stream = _open(raw, compressed)
    offsets: list[int] = []
    rows = 0
    header: list[str] | None = None
    if fmt == "csv":
        for off, fields in _csv_records(_lines(stream)):
            if header is None:
                if isinstance(fields, str):
                    raise TextError(f"its header row is {fields}")
                header = fields
                continue
            if rows % STRIDE == 0:
                offsets.append(off)
            rows += 1
        if header is None:
            raise TextError("it has no header row; a CSV dataset needs one naming its columns")
    else:
        for off, line in _lines(stream):
            if line.strip():
                if rows % STRIDE == 0:
                    offsets.append(off)
                rows += 1
    return TextIndex(rows, None if compressed else offsets, header)


def read_text(
    raw: RangeFile, fmt: str, index: TextIndex, first: int, last: int
) -> Iterator[tuple[int, bytes | list[str] | str]]:
    """(row number, payload) of rows ``[first, last)``: a JSON line's bytes, a CSV record's
    fields, or a string saying why the record cannot be read."""
    if first >= last:
        return
    if index.offsets is None:
        stream = _open(raw, _compression(fmt))
        start, payloads = 0, _payloads(_lines(stream), fmt, skip_header=fmt == "csv")
    else:
        block, end_block = first // STRIDE, (last - 1) // STRIDE + 1
        lo = index.offsets[block]
        hi = index.offsets[end_block] if end_block < len(index.offsets) else raw.size
        data = raw.read_range(lo, hi)
        start, payloads = block * STRIDE, _payloads(_lines(io.BytesIO(data), lo), fmt, False)
    for n, payload in enumerate(payloads, start):
        if n >= last:
            return
        if n >= first:
            yield n, payload


def _payloads(
    lines: Iterator[tuple[int, bytes]], fmt: str, skip_header: bool
) -> Iterator[bytes | list[str] | str]:
    if fmt == "csv":
        records = (fields for _, fields in _csv_records(lines))
        if skip_header:
            next(records, None)
        yield from records
    else:
        yield from (line for _, line in lines if line.strip())
