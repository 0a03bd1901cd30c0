"""Results out: a run's cases, each once, as one table in the formats people read.

:func:`export` streams a run's result objects (:meth:`RunStorage.iter_tables`, one object in
memory at a time) into Parquet, JSON lines or CSV, one row per case with the columns of
:data:`proctor.storage.columns.SCHEMA`. :func:`finish_results` writes the same Parquet beside the
run's objects (``results.parquet``) when a run ends; :func:`write_outputs` writes a
batch-scoring run's outputs as Parquet in the input's Hive partitions
(``outputs/year=2025/month=12/day=01/part-00000.parquet``).

In JSON lines ``violations`` is a list and ``output`` the output itself; CSV has no lists, so
there ``violations`` is a JSON array and ``output`` JSON text, as in Parquet.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from proctor.storage.columns import SCHEMA
from proctor.storage.run import RunStorage

Format = Literal["parquet", "jsonl", "csv"]
FORMATS: tuple[Format, ...] = ("parquet", "jsonl", "csv")

OUTPUT_COLUMNS = ("index", "id", "outcome", "error", "output")
"""The columns of a batch-scoring run's output files (the partition is in the path)."""
PART_ROWS = 500_000
"""Rows per output file at most: a partition with more is split into several parts."""
ROW_GROUP_ROWS = 16_384
"""Rows per row group of a merged Parquet file, about. A row group per result object (250
cases in the quickstart) made the footer, which the writer holds until it closes, grow with
every case: at 250,000 cases the merge added 32 MB to the coordinator's RSS and the file was
4.3 MB, against 13 MB and 0.8 MB in groups of this size (issue 21). Larger groups cost more
of Arrow's memory while they are concatenated."""
SUCCESS = "_SUCCESS"
"""Written under ``outputs/`` after every part: the outputs are whole."""

_JSON_COLUMNS = ("output", "baseline_output")
_LIST_COLUMNS = ("violations", "baseline_violations")


def write_parquet(
    tables: Iterable[pa.Table], sink: str | BinaryIO, *, pool: pa.MemoryPool | None = None
) -> int:
    """Write ``tables`` as one zstd Parquet file in row groups of about
    :data:`ROW_GROUP_ROWS`, Arrow's buffers from ``pool`` (its default if None); returns the
    number of rows. Memory holds one row group's tables and the file's footer. Columns are
    plain-encoded: a dictionary-encoded column is held until its row group closes, which
    cost the merge 5 MB more of peak RSS, and zstd made a smaller file of the plain values."""
    rows = 0
    pending: list[pa.Table] = []
    held = 0
    with pq.ParquetWriter(
        sink, SCHEMA, compression="zstd", use_dictionary=False, memory_pool=pool
    ) as writer:
        for table in tables:
            pending.append(table)
            rows += table.num_rows
            held += table.num_rows
            if held >= ROW_GROUP_ROWS:
                writer.write_table(pa.concat_tables(pending, memory_pool=pool))
                pending, held = [], 0
        if pending:
            writer.write_table(pa.concat_tables(pending, memory_pool=pool))
    return rows


def write_jsonl(tables: Iterable[pa.Table], sink: BinaryIO) -> int:
    """Write ``tables`` as JSON lines (outputs decoded); returns the number of rows."""
    rows = 0
    for table in tables:
        for row in table.to_pylist():
            for name in _JSON_COLUMNS:
                if row[name] is not None:
                    row[name] = json.loads(row[name])
            sink.write(json.dumps(row, separators=(",", ":")).encode() + b"\n")
            rows += 1
    return rows


def _flat(table: pa.Table) -> pa.Table:
    """``table`` with its list columns as JSON arrays, which CSV can hold."""
    for name in _LIST_COLUMNS:
        i = table.schema.get_field_index(name)
        texts = [None if v is None else json.dumps(v) for v in table.column(i).to_pylist()]
        table = table.set_column(i, name, pa.array(texts, pa.string()))
    return table


def write_csv(tables: Iterable[pa.Table], sink: BinaryIO) -> int:
    """Write ``tables`` as CSV with a header row; returns the number of rows."""
    rows = 0
    schema = _flat(SCHEMA.empty_table()).schema
    with pacsv.CSVWriter(sink, schema) as writer:
        for table in tables:
            writer.write_table(_flat(table))
            rows += table.num_rows
    return rows


def export(storage: RunStorage, fmt: Format, out: Path) -> int:
    """Write every case of the run at ``out`` (replaced whole, never left half-written);
    returns the number of rows."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as sink:
            if fmt == "parquet":
                rows = write_parquet(storage.iter_tables(), sink)
            elif fmt == "jsonl":
                rows = write_jsonl(storage.iter_tables(), sink)
            else:
                rows = write_csv(storage.iter_tables(), sink)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return rows


@dataclass(frozen=True)
class Finished:
    """Where a finished run's results went."""

    results_uri: str
    outputs_uri: str | None = None


def _exists(storage: RunStorage, key: str) -> bool:
    return any(k == key for k in storage.blobs.list(key))


def finish_results(storage: RunStorage, *, keep: bool = True) -> Finished:
    """Write the merged results (``results.parquet``), and for a run without comparison whose
    records carry outputs (a batch-scoring run) its partitioned outputs. With ``keep`` what is
    there already is kept (the operator: a finished run's results do not change, so a repeat
    call is cheap); without, both are written again (``proctor run``, whose run id may be run
    again or resumed)."""
    key, done = storage.merged_key(), f"{storage.outputs_prefix()}{SUCCESS}"
    if not keep:
        storage.blobs.delete_prefix(storage.outputs_prefix())
    if keep and _exists(storage, key):
        has_outputs = _exists(storage, done)
    else:
        seen = _Seen(storage.iter_tables())
        merge(seen, storage, key)
        has_outputs = seen.outputs and not seen.compare
    if not has_outputs:
        return Finished(storage.merged_uri())
    if not _exists(storage, done):
        write_outputs(storage)
        storage.blobs.put(done, b"")
    return Finished(storage.merged_uri(), storage.blobs.uri(storage.outputs_prefix()))


def merge(tables: Iterable[pa.Table], storage: RunStorage, key: str) -> int:
    """Write ``tables`` as Parquet at ``key`` in bounded memory; returns the number of rows.

    One object's table at a time and one row group are in memory; the file is spooled to a
    temporary file and streamed to the store from there. Arrow's buffers come from the system
    allocator (glibc's malloc), not from Arrow's default mimalloc pool, which keeps the
    segments it freed; the heap's free pages go back to the system at the end (glibc's
    ``malloc_trim``). The operator's RSS after a 1M-case merge: +3 MB, against +12.5 MB through
    the default pool with dictionary-encoded columns (docs/performance.md)."""
    pool = pa.system_memory_pool()
    try:
        with tempfile.TemporaryFile() as spool:
            rows = write_parquet(tables, spool, pool=pool)
            storage.blobs.put_file(key, spool)
    finally:
        pool.release_unused()
    return rows


class _Seen:
    """Tables passed through, noting whether any row holds an output or a baseline side."""

    def __init__(self, tables: Iterable[pa.Table]) -> None:
        self.tables = tables
        self.outputs = False
        self.compare = False

    def __iter__(self) -> Iterator[pa.Table]:
        for table in self.tables:
            self.outputs = self.outputs or table.column("output").null_count < table.num_rows
            self.compare = self.compare or (
                table.column("baseline_passed").null_count < table.num_rows
            )
            yield table


def _by_partition(table: pa.Table) -> Iterator[tuple[str, pa.Table]]:
    """``table``'s rows grouped by partition, in index order within each."""
    parts = table.column("partition")
    for value in pc.unique(parts).to_pylist():
        mask = pc.is_null(parts) if value is None else pc.equal(parts, value)
        yield value or "", table.filter(mask).select(list(OUTPUT_COLUMNS))


def write_outputs(storage: RunStorage, tables: Iterable[pa.Table] | None = None) -> str:
    """Write the run's outputs under ``outputs/`` in the input's partitions (a row without a
    partition goes to ``outputs/`` itself), at most :data:`PART_ROWS` rows a file, and return
    the folder's URI. Memory holds one pending part per partition."""
    prefix = storage.outputs_prefix()
    pending: dict[str, list[pa.Table]] = {}
    written: dict[str, int] = {}

    def flush(partition: str) -> None:
        batch = pa.concat_tables(pending.pop(partition))
        n = written.get(partition, 0)
        folder = f"{partition}/" if partition else ""
        storage.blobs.put(f"{prefix}{folder}part-{n:05d}.parquet", _parquet_bytes(batch))
        written[partition] = n + 1

    for table in storage.iter_tables() if tables is None else tables:
        for partition, rows in _by_partition(table):
            pending.setdefault(partition, []).append(rows)
            if sum(t.num_rows for t in pending[partition]) >= PART_ROWS:
                flush(partition)
    for partition in list(pending):
        flush(partition)
    return storage.blobs.uri(prefix)


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return bytes(sink.getvalue())
