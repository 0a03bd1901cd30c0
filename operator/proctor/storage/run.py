"""A run's objects: results per range, dead letters, task state and the run checkpoint.

Layout under the storage root (``<root>/<run_id>/``)::

    results/<start:012d>-<end:012d>[.<attempt>].arrow[.zst|.gz]  one object per finished range
    results.parquet                                   every case once, when the run is over
    outputs/[<partition>/]part-<n:05d>.parquet         a batch-scoring run's outputs, likewise
    dead/<start:012d>-<end:012d>[.<attempt>].json    a range that exhausted its attempts
    state/[<attempt>/]<key>                           task-level checkpoints (already compressed)
    checkpoint.json[.zst|.gz]                         the run checkpoint (see RunProgress)
    attempt.json                                      the current attempt and its fingerprint
    summary.json                                      the final summary, when the run is over
    dataset/manifest.json, dataset/index/<n>.offsets  a dataset run's manifest and row indexes

Zero-padded starts make the lexicographic order of keys the numeric order of ranges, so the
objects overlapping a range are found by listing from its start.

Attempts fence writers: a :class:`RunStorage` with ``attempt`` set writes its objects tagged
with it and reads only objects with the same tag (without, only untagged ones), so a worker
left over from an earlier start of the run (``proctor run`` starts a new attempt each time it
is not resuming) can still write, but nobody counts what it writes.

A results object is one Arrow IPC file of :data:`proctor.storage.columns.SCHEMA`, compressed
whole like any other object (``.arrow.zst``). Objects written by Proctor 0.1,
JSON lines (``.jsonl[.zst|.gz]``), are still read, so a run started before an upgrade resumes
after it; a storage made with ``records="jsonl"`` (a BenchmarkSuite's cells, whose records are
not case records) writes them still.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Container, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa
import zstandard

from proctor.ranges import Range
from proctor.sdk.batch import BatchRecords
from proctor.sdk.records import encodable, unencodable
from proctor.storage import columns
from proctor.storage.blobs import Blobs

Algorithm = str  # "zstd" | "gzip" | "none"
RecordFormat = Literal["arrow", "jsonl"]

_EXTENSIONS = {"zstd": ".zst", "gzip": ".gz", "none": ""}
_RANGE_KEY = re.compile(r"^(\d{12})-(\d{12})")
_RANGE_CHARS = 25  # "<start:012d>-<end:012d>"
_KINDS = (".arrow", ".jsonl")  # what follows a results key's range and attempt tag
ATTEMPT = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
"""What an attempt id may be: it is part of object keys and queue names."""


def compress(data: bytes, algorithm: Algorithm, level: int) -> bytes:
    if algorithm == "zstd":
        return zstandard.ZstdCompressor(level=level).compress(data)
    if algorithm == "gzip":
        return gzip.compress(data, compresslevel=min(level, 9), mtime=0)
    return data


def decompress(data: bytes, key: str) -> bytes:
    if key.endswith(".zst"):
        return zstandard.ZstdDecompressor().decompress(data)
    if key.endswith(".gz"):
        return gzip.decompress(data)
    return data


def range_key(r: Range) -> str:
    return f"{r.start:012d}-{r.end:012d}"


def parse_range(name: str) -> Range | None:
    """The range in a results or dead-letter key's file name, or None."""
    m = _RANGE_KEY.match(name.rsplit("/", 1)[-1])
    return Range(int(m.group(1)), int(m.group(2))) if m else None


@dataclass(frozen=True)
class Written:
    """The outcome of writing a range's results."""

    created: bool
    bytes: int
    key: str


class CorruptObjectError(ValueError):
    """A result object that cannot be read back whole (truncated, or not this format)."""


class UnencodableError(ValueError):
    """Records that cannot be written (:meth:`RunStorage.recordable` says which)."""


class RunStorage:
    """The objects of one run (of one attempt at it, see the module doc). Thread-safe."""

    def __init__(
        self,
        blobs: Blobs,
        run_id: str,
        *,
        compression: Algorithm = "zstd",
        level: int = 3,
        attempt: str = "",
        records: RecordFormat = "arrow",
    ) -> None:
        if compression not in _EXTENSIONS:
            raise ValueError(f"compression must be zstd, gzip or none, got {compression!r}")
        if attempt and (not ATTEMPT.match(attempt) or attempt.startswith(("json", "arrow"))):
            raise ValueError(
                f"an attempt id must match {ATTEMPT.pattern} and not start with json or "
                f"arrow, got {attempt!r}"
            )
        self.blobs = blobs
        self.run_id = run_id
        self.attempt = attempt
        self._tag = f".{attempt}" if attempt else ""
        self.compression = compression
        self.level = level
        self.base = f"{run_id}/"
        self._ext = _EXTENSIONS[compression]
        self.records = records
        self._zstd = zstandard.ZstdCompressor(level=level) if compression == "zstd" else None

    @property
    def uri(self) -> str:
        """The run's folder or prefix."""
        return self.blobs.uri(self.base)

    def results_uri(self) -> str:
        return self.blobs.uri(self.base + "results/")

    # -- results ------------------------------------------------------------------------

    def result_key(self, r: Range) -> str:
        kind = ".arrow" if self.records == "arrow" else ".jsonl"
        return f"{self.base}results/{range_key(r)}{self._tag}{kind}{self._ext}"

    def merged_key(self) -> str:
        """The run's merged results (every case once), written when the run is over."""
        return f"{self.base}results.parquet"

    def merged_uri(self) -> str:
        return self.blobs.uri(self.merged_key())

    def outputs_prefix(self) -> str:
        """Where a batch-scoring run's outputs go, partitioned like its input."""
        return f"{self.base}outputs/"

    def _mine(self, key: str, *kinds: str) -> bool:
        """Whether ``key`` (a results or dead-letter object) belongs to this attempt."""
        rest = key.rsplit("/", 1)[-1][_RANGE_CHARS:]
        return any(rest.startswith(self._tag + kind) for kind in kinds)

    def encode_results(self, records: Sequence[dict[str, Any]] | BatchRecords) -> bytes:
        """The object of ``records`` (dicts, or a batch's columns); raises
        :class:`UnencodableError` when one of them cannot be written (a value of the wrong
        type, an output JSON cannot hold)."""
        try:
            if self.records == "arrow":
                batch = (
                    columns.batch_of(records)
                    if isinstance(records, BatchRecords)
                    else columns.to_batch(records)
                )
                raw = columns.write_ipc(batch)
            else:
                rows = records.records() if isinstance(records, BatchRecords) else records
                lines = [json.dumps(rec, separators=(",", ":")) + "\n" for rec in rows]
                raw = "".join(lines).encode()
        except (TypeError, ValueError, KeyError, pa.ArrowException) as exc:
            raise UnencodableError(f"{type(exc).__name__}: {exc}") from exc
        if self._zstd is not None:
            return self._zstd.compress(raw)
        return compress(raw, self.compression, self.level)

    def recordable(self, record: dict[str, Any]) -> dict[str, Any]:
        """``record``, or, when it cannot be written, an errored ``unencodable`` record of the
        same case that says why (so a bad result errors its case instead of the worker)."""
        record = encodable(record)
        try:
            self.encode_results([record])
        except UnencodableError as exc:
            return unencodable(record, exc.__cause__ or exc)
        return record

    def write_results(self, r: Range, records: Sequence[dict[str, Any]] | BatchRecords) -> Written:
        """Record the results of ``r`` once: a second write of the same range is a no-op.

        ``records`` must hold exactly one record per index of ``r``, in order: dicts, or the
        columns of a batch (:mod:`proctor.sdk.batch`, the worker's).
        """
        if isinstance(records, BatchRecords):
            if records.start != r.start or records.end != r.end:
                raise ValueError(f"results of {r} given for [{records.start}, {records.end})")
        elif len(records) != len(r) or (
            records and (records[0]["index"] != r.start or records[-1]["index"] != r.end - 1)
        ):
            raise ValueError(f"results of {r} need {len(r)} records in index order")
        data = self.encode_results(records)
        key = self.result_key(r)
        return Written(self.blobs.put_if_absent(key, data), len(data), key)

    def result_ranges(self, within: Range | None = None) -> list[Range]:
        """Ranges with results, in order of start; only those starting inside ``within``."""
        prefix = f"{self.base}results/"
        start_after = f"{prefix}{within.start:012d}" if within and within.start > 0 else ""
        out = []
        for key in self.blobs.list(prefix, start_after):
            r = parse_range(key)
            if r is None or not self._mine(key, *_KINDS):
                continue
            if within is not None and r.start >= within.end:
                break
            out.append(r)
        return out

    def result_keys(self, since: int = 0, skip: Container[str] = ()) -> Iterator[tuple[Range, str]]:
        """(range, key) of this attempt's result objects in order of start: only those
        starting at ``since`` or later, leaving out the keys in ``skip`` (those a reader has
        counted already: a following reader lists every few tenths)."""
        prefix = f"{self.base}results/"
        for key in self.blobs.list(prefix, f"{prefix}{since:012d}" if since > 0 else ""):
            if key in skip:
                continue
            r = parse_range(key)
            if r is not None and self._mine(key, *_KINDS):
                yield r, key

    def read_object(self, key: str) -> Iterator[dict[str, Any]]:
        data = self.blobs.get(key)
        if data is None:
            return
        yield from self.read_records(key, data)

    def read_records(self, key: str, data: bytes) -> list[dict[str, Any]]:
        """The records of result object ``key``, checked whole: one record per index of its
        range, in order; raises :class:`CorruptObjectError` otherwise (a torn or foreign write)."""
        if not _is_arrow(key):
            return self._read_jsonl(key, data)
        return columns.to_records(self.read_table(key, data))

    def _read_jsonl(self, key: str, data: bytes) -> list[dict[str, Any]]:
        """A JSON-lines object (Proctor 0.1's results, a suite's cells), checked whole."""
        try:
            records = [json.loads(line) for line in decompress(data, key).splitlines() if line]
            indexes = [rec["index"] for rec in records]
        except (ValueError, KeyError, TypeError, EOFError, OSError, zstandard.ZstdError) as exc:
            raise CorruptObjectError(f"result object {key} cannot be read: {exc}") from exc
        _check_indexes(key, indexes)
        return records

    def read_table(self, key: str, data: bytes) -> pa.Table:
        """Result object ``key`` as a table of :data:`proctor.storage.columns.SCHEMA`, checked
        whole like :meth:`read_records` (a JSON-lines object is converted)."""
        if not _is_arrow(key):
            records = self._read_jsonl(key, data)
            if not records:
                return _EMPTY
            return columns.conform(pa.Table.from_batches([columns.to_batch(records)]))
        try:
            table = columns.read_ipc(decompress(data, key))
            indexes = table.column("index")
        except (ValueError, EOFError, OSError, pa.ArrowException, zstandard.ZstdError) as exc:
            raise CorruptObjectError(f"result object {key} cannot be read: {exc}") from exc
        _check_indexes(key, indexes.to_pylist())
        return table

    def read_checked(self, key: str) -> list[dict[str, Any]] | None:
        """:meth:`read_records` of ``key``, or None when the object is gone."""
        data = self.blobs.get(key)
        return None if data is None else self.read_records(key, data)

    def read_table_checked(self, key: str) -> pa.Table | None:
        """:meth:`read_table` of ``key``, or None when the object is gone."""
        data = self.blobs.get(key)
        return None if data is None else self.read_table(key, data)

    def _in_order(self) -> Iterator[tuple[str, int]]:
        """Result keys in the order that counts each index once, with the index each must be
        read from: objects can overlap after rare races (a worker that lost its lease finished
        a range another worker had split); the first object by start wins for every index."""
        frontier = 0
        for r, key in sorted(self.result_keys(), key=lambda x: (x[0].start, -x[0].end)):
            if r.end <= frontier:
                continue
            yield key, frontier
            frontier = max(frontier, r.end)

    def iter_records(self) -> Iterator[dict[str, Any]]:
        """Every case's record exactly once, in index order, streaming one object at a time."""
        for key, frontier in self._in_order():
            for record in self.read_object(key):
                if record["index"] >= frontier:
                    yield record

    def iter_tables(self) -> Iterator[pa.Table]:
        """:meth:`iter_records` as tables of :data:`proctor.storage.columns.SCHEMA`, one per
        object (an object gone since the listing is skipped)."""
        for key, frontier in self._in_order():
            data = self.blobs.get(key)
            if data is None:
                continue
            table = self.read_table(key, data)
            first = int(table.column("index")[0].as_py()) if table.num_rows else frontier
            yield table.slice(max(0, frontier - first))

    # -- dead letters ---------------------------------------------------------------------

    def write_dead_letter(self, r: Range, deliveries: int, reason: str) -> bool:
        body = json.dumps(
            {"start": r.start, "end": r.end, "deliveries": deliveries, "reason": reason}
        ).encode()
        return self.blobs.put_if_absent(f"{self.base}dead/{range_key(r)}{self._tag}.json", body)

    def dead_letters(self) -> list[dict[str, Any]]:
        out = []
        for key in self.blobs.list(f"{self.base}dead/"):
            if not self._mine(key, ".json"):
                continue
            data = self.blobs.get(key)
            if data is not None:
                out.append(json.loads(data))
        return out

    # -- task state (already compressed by the SDK) ----------------------------------------

    def _state_key(self, key: str) -> str:
        return f"{self.base}state/{self.attempt + '/' if self.attempt else ''}{key}"

    def put_state(self, key: str, data: bytes) -> None:
        self.blobs.put(self._state_key(key), data)

    def get_state(self, key: str) -> bytes | None:
        return self.blobs.get(self._state_key(key))

    # -- run checkpoint and summary -------------------------------------------------------

    def checkpoint_key(self) -> str:
        return f"{self.base}checkpoint.json{self._ext}"

    def write_checkpoint(self, data: dict[str, Any]) -> int:
        body = compress(json.dumps(data).encode(), self.compression, self.level)
        self.blobs.put(self.checkpoint_key(), body)
        return len(body)

    def read_checkpoint(self) -> dict[str, Any] | None:
        """The run checkpoint; raises ``ValueError`` when it cannot be read back."""
        for ext in (self._ext, *_EXTENSIONS.values()):
            key = f"{self.base}checkpoint.json{ext}"
            data = self.blobs.get(key)
            if data is not None:
                try:
                    loaded = json.loads(decompress(data, key))
                except (ValueError, EOFError, OSError, zstandard.ZstdError) as exc:
                    raise ValueError(f"the run checkpoint {key} cannot be read: {exc}") from exc
                if not isinstance(loaded, dict):
                    raise ValueError(f"the run checkpoint {key} is not a JSON object")
                return loaded
        return None

    def write_attempt(self, data: dict[str, Any]) -> None:
        """Record the current attempt (``proctor run``: its id and fingerprint)."""
        self.blobs.put(f"{self.base}attempt.json", json.dumps(data, indent=2).encode())

    def of_current_attempt(self) -> RunStorage:
        """This run's storage as its current attempt (from :meth:`write_attempt`) sees it."""
        record = self.read_attempt() or {}
        attempt = record.get("attempt")
        if not isinstance(attempt, str) or attempt == self.attempt:
            return self
        return RunStorage(
            self.blobs,
            self.run_id,
            compression=self.compression,
            level=self.level,
            attempt=attempt,
            records=self.records,
        )

    def read_attempt(self) -> dict[str, Any] | None:
        """The record :meth:`write_attempt` wrote, or None (never written, or unreadable)."""
        data = self.blobs.get(f"{self.base}attempt.json")
        try:
            loaded = json.loads(data) if data is not None else None
        except ValueError:
            return None
        return loaded if isinstance(loaded, dict) else None

    def write_summary(self, data: dict[str, Any]) -> str:
        key = f"{self.base}summary.json"
        self.blobs.put(key, json.dumps(data, indent=2).encode())
        return self.blobs.uri(key)

    def delete(self) -> None:
        """Remove every object of the run."""
        self.blobs.delete_prefix(self.base)


# Not ``SCHEMA.empty_table()``: that imports pandas (half a second at every start).
_EMPTY = pa.Table.from_batches([], schema=columns.SCHEMA)


def _is_arrow(key: str) -> bool:
    return ".arrow" in key.rsplit("/", 1)[-1][_RANGE_CHARS:]


def _check_indexes(key: str, indexes: list[int]) -> None:
    r = parse_range(key)
    if r is not None and indexes != list(range(r.start, r.end)):
        raise CorruptObjectError(f"result object {key} does not hold one record per case of {r}")
