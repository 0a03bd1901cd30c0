"""Case records as Arrow columns: the schema of result objects and of exported results.

One row per case. The SDK's record of a case is a dict (:mod:`proctor.sdk.records`);
:func:`to_batch` turns a range's records into one Arrow record batch, column by column, and
:func:`batch_of` makes the same batch from the worker's columns (:mod:`proctor.sdk.batch`),
which hold a dict only for the cases that did not simply pass. :func:`to_records` turns rows
back into the same dicts (the reader's counters and reports read dicts). The columns
(``docs/datasets.md#results`` documents them for users):

=====================  ==================  ===================================================
column                 type                what
=====================  ==================  ===================================================
index                  int64               the case index
id                     string, nullable    the dataset row's identity; null for generated cases
partition              string, nullable    the row's Hive partition (``year=2025/month=12``)
outcome                string              ``passed``, ``failed`` or ``errored`` (candidate's)
seconds                float64             the case's wall time, both sides
passed                 bool                the side (the candidate of a comparison) passed
error                  string, nullable    why the side errored
errorType              string, nullable    ``exception``, ``timeout``, ``crashed``, ...
violations             list<string>        the side's violated properties
output                 string, nullable    the side's output, JSON-encoded, when kept
cached_from            string, nullable    the run whose cached result the side reused
baseline_passed        bool, nullable      a comparison's baseline side; null in a plain run
baseline_error         string, nullable
baseline_errorType     string, nullable
baseline_violations    list<string>, null
baseline_output        string, nullable
baseline_cached_from   string, nullable
=====================  ==================  ===================================================

A stored object may leave out the nullable columns that are null in every row (a run without
dataset, comparison or outputs writes only the first nine minus ``id``/``partition``);
:func:`conform` puts them back as nulls, so readers always see :data:`SCHEMA`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from proctor.sdk.batch import BatchRecords

SCHEMA_VERSION = "1"
_STRINGS = pa.list_(pa.string())

SCHEMA = pa.schema(
    [
        pa.field("index", pa.int64(), nullable=False),
        pa.field("id", pa.string()),
        pa.field("partition", pa.string()),
        pa.field("outcome", pa.string(), nullable=False),
        pa.field("seconds", pa.float64(), nullable=False),
        pa.field("passed", pa.bool_(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("errorType", pa.string()),
        pa.field("violations", _STRINGS, nullable=False),
        pa.field("output", pa.string()),
        pa.field("cached_from", pa.string()),
        pa.field("baseline_passed", pa.bool_()),
        pa.field("baseline_error", pa.string()),
        pa.field("baseline_errorType", pa.string()),
        pa.field("baseline_violations", _STRINGS),
        pa.field("baseline_output", pa.string()),
        pa.field("baseline_cached_from", pa.string()),
    ],
    metadata={"proctor.records": SCHEMA_VERSION},
)
"""Every column a reader sees, in this order."""

_BASELINE = ("baseline_passed", "baseline_error", "baseline_errorType", "baseline_violations")


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def _side_columns(sides: Sequence[Mapping[str, Any]], prefix: str) -> dict[str, pa.Array]:
    """``passed``, ``error``, ``errorType``, ``violations`` (and ``output`` when any side has
    one) of one side of each record, named with ``prefix``."""
    out = {
        f"{prefix}passed": pa.array([bool(s.get("passed")) for s in sides], pa.bool_()),
        f"{prefix}error": pa.array([s.get("error") for s in sides], pa.string()),
        f"{prefix}errorType": pa.array([s.get("errorType") for s in sides], pa.string()),
        f"{prefix}violations": pa.array([s.get("violations") or [] for s in sides], _STRINGS),
    }
    keys = set().union(*sides)
    if "output" in keys:
        out[f"{prefix}output"] = pa.array([_json(s.get("output")) for s in sides], pa.string())
    if "cachedFrom" in keys:
        out[f"{prefix}cached_from"] = pa.array([s.get("cachedFrom") for s in sides], pa.string())
    return out


def to_batch(records: Sequence[Mapping[str, Any]]) -> pa.RecordBatch:
    """One range's records as a record batch (only the columns they fill, see the module doc)."""
    keys = set().union(*records)  # every key of any record, in one pass in C
    status = [r["status"] for r in records]
    cols: dict[str, pa.Array] = {"index": pa.array([r["index"] for r in records], pa.int64())}
    for name in ("id", "partition"):
        if name in keys:
            cols[name] = pa.array([r.get(name) for r in records], pa.string())
    cols["outcome"] = pa.array(status, pa.string())
    seconds = [(r.get("durationMs") or 0.0) / 1000.0 for r in records]
    cols["seconds"] = pa.array(seconds, pa.float64())
    if "baseline" in keys:
        cols |= _side_columns([r.get("candidate") or {} for r in records], "")
        cols |= _side_columns([r.get("baseline") or {} for r in records], "baseline_")
    else:
        cols["passed"] = pa.array([s == "passed" for s in status], pa.bool_())
        cols["error"] = pa.array([r.get("error") for r in records], pa.string())
        cols["errorType"] = pa.array([r.get("errorType") for r in records], pa.string())
        cols["violations"] = pa.array([r.get("violations") or [] for r in records], _STRINGS)
        if "output" in keys:
            cols["output"] = pa.array([_json(r.get("output")) for r in records], pa.string())
        if "cachedFrom" in keys:
            cols["cached_from"] = pa.array([r.get("cachedFrom") for r in records], pa.string())
    fields = [SCHEMA.field(name) for name in cols]
    return pa.RecordBatch.from_arrays(
        list(cols.values()), schema=pa.schema(fields, metadata=SCHEMA.metadata)
    )


def batch_of(batch: BatchRecords) -> pa.RecordBatch:
    """:func:`to_batch` of ``batch.records()``, built from its columns: a dict is read only
    for a case that did not pass (:mod:`proctor.sdk.batch`), and the columns of cases that
    all passed are made once per batch size (Arrow arrays are immutable)."""
    n = len(batch)
    odd = batch.odd_records()
    if not all(batch.columnar(r) for r in odd.values()):
        return to_batch(batch.records())  # outputs or cached sides: columns of their own
    cols: dict[str, pa.Array] = {"index": pa.arange(batch.start, batch.start + n)}
    if batch.ids is not None:
        cols["id"] = pa.array(batch.ids[:n], pa.string())
    if batch.partitions is not None:
        cols["partition"] = pa.array(batch.partitions[:n], pa.string())
    status = {k: r["status"] for k, r in odd.items()}
    cols["outcome"] = _filled(n, status, "passed", pa.string()) if odd else _passing(n)[0]
    cols["seconds"] = pa.array(batch.seconds, pa.float64())
    if batch.sides == 2:
        cols |= _side_of(n, {k: r["candidate"] for k, r in odd.items()}, "")
        cols |= _side_of(n, {k: r["baseline"] for k, r in odd.items()}, "baseline_")
    else:
        # A one-side record says whether its side passed by its status.
        cols |= _side_of(
            n, {k: {**r, "passed": r["status"] == "passed"} for k, r in odd.items()}, ""
        )
    return pa.RecordBatch.from_arrays(list(cols.values()), schema=_schema(tuple(cols)))


@functools.lru_cache(maxsize=16)
def _passing(n: int) -> tuple[pa.Array, ...]:
    """``outcome`` and the side columns of ``n`` cases that passed."""
    empty = pa.ListArray.from_arrays(
        pa.repeat(pa.scalar(0, pa.int32()), n + 1), pa.array([], pa.string())
    )  # n empty lists: n + 1 zero offsets, no list per case
    return (
        pa.repeat(pa.scalar("passed", pa.string()), n),
        pa.repeat(pa.scalar(True, pa.bool_()), n),
        pa.nulls(n, pa.string()),
        pa.nulls(n, pa.string()),
        empty,
    )


@functools.lru_cache(maxsize=16)
def _schema(names: tuple[str, ...]) -> pa.Schema:
    return pa.schema([SCHEMA.field(name) for name in names], metadata=SCHEMA.metadata)


def _filled(n: int, odd: Mapping[int, Any], value: Any, kind: pa.DataType) -> pa.Array:
    """``n`` times ``value`` but at the offsets in ``odd`` (their own values there)."""
    values = [value] * n
    for k, v in odd.items():
        values[k] = v
    return pa.array(values, kind)


def _side_of(n: int, odd: Mapping[int, Mapping[str, Any]], prefix: str) -> dict[str, pa.Array]:
    """The side columns of ``n`` cases whose sides passed but those in ``odd`` (by offset)."""
    names = [f"{prefix}{name}" for name in ("passed", "error", "errorType", "violations")]
    if not odd:
        return dict(zip(names, _passing(n)[1:], strict=True))
    return {
        names[0]: _filled(n, {k: bool(s.get("passed")) for k, s in odd.items()}, True, pa.bool_()),
        names[1]: _filled(n, {k: s.get("error") for k, s in odd.items()}, None, pa.string()),
        names[2]: _filled(n, {k: s.get("errorType") for k, s in odd.items()}, None, pa.string()),
        names[3]: _filled(n, {k: s.get("violations") or [] for k, s in odd.items()}, [], _STRINGS),
    }


def warm_up() -> None:
    """Build one tiny record batch now, so that pyarrow's one-time lazy set-up (it imports
    pandas when pandas is installed: half a second or more) is not paid by the first write,
    which may be the write of a worker told to stop (SIGTERM handback must stay quick)."""
    to_batch([{"index": 0, "status": "passed", "durationMs": 0.0}])


def conform(table: pa.Table) -> pa.Table:
    """``table`` with exactly :data:`SCHEMA`'s columns: missing nullable ones as nulls.

    Raises ``ValueError`` for a table that lacks a required column or holds one of another
    type (not a result object of this format)."""
    arrays = []
    for field in SCHEMA:
        i = table.schema.get_field_index(field.name)
        if i < 0:
            if not field.nullable:
                raise ValueError(f"the column {field.name!r} is missing")
            arrays.append(pa.nulls(table.num_rows, field.type))
            continue
        column = table.column(i)
        if column.type != field.type:
            raise ValueError(f"the column {field.name!r} is {column.type}, not {field.type}")
        arrays.append(column)
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def _side(
    passed: bool | None, error: str | None, error_type: str | None, violations: list[str] | None
) -> dict[str, Any]:
    return {
        "passed": bool(passed),
        "errored": error is not None,
        "violations": violations or [],
        "error": error,
        "errorType": error_type,
    }


def _mark_cached(side: dict[str, Any], run: str | None) -> None:
    """A side reused from the cache says so, and from which run (:mod:`proctor.cache`)."""
    if run is not None:
        side["cached"] = True
        side["cachedFrom"] = run


def to_records(table: pa.Table) -> list[dict[str, Any]]:
    """The SDK's dicts (:mod:`proctor.sdk.records`) of a conformed table's rows; ``id``,
    ``partition`` and ``output`` appear only where they are not null."""
    c = table.to_pydict()
    out: list[dict[str, Any]] = []
    for i, index in enumerate(c["index"]):
        record: dict[str, Any] = {
            "index": index,
            "status": c["outcome"][i],
            "durationMs": c["seconds"][i] * 1000.0,
            "error": c["error"][i],
            "errorType": c["errorType"][i],
        }
        for name in ("id", "partition"):
            if c[name][i] is not None:
                record[name] = c[name][i]
        output = c["output"][i]
        if c["baseline_passed"][i] is None:
            record["violations"] = c["violations"][i] or []
            if output is not None:
                record["output"] = json.loads(output)
            _mark_cached(record, c["cached_from"][i])
        else:
            base = _side(*(c[name][i] for name in _BASELINE))
            cand = _side(c["passed"][i], c["error"][i], c["errorType"][i], c["violations"][i])
            if c["baseline_output"][i] is not None:
                base["output"] = json.loads(c["baseline_output"][i])
            if output is not None:
                cand["output"] = json.loads(output)
            _mark_cached(base, c["baseline_cached_from"][i])
            _mark_cached(cand, c["cached_from"][i])
            record["baseline"], record["candidate"] = base, cand
        out.append(record)
    return out


def write_ipc(batch: pa.RecordBatch) -> bytes:
    """``batch`` as one Arrow IPC file (its footer lets a reader tell a torn write)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, batch.schema, options=IPC_OPTIONS) as writer:
        writer.write_batch(batch)
    return bytes(sink.getvalue())


def read_ipc(data: bytes) -> pa.Table:
    """A result object's table, conformed; raises ``ValueError`` (``pa.ArrowInvalid`` is one)
    when ``data`` is not a whole Arrow IPC file of this schema."""
    with pa.ipc.open_file(pa.py_buffer(data)) as reader:
        table = reader.read_all()
    return conform(table)


IPC_OPTIONS = pa.ipc.IpcWriteOptions()
"""Buffers uncompressed: the storage compresses the whole file (``.arrow.zst``), which costs
less than Arrow's per-buffer compression of a batch's many small buffers and packs smaller."""
