"""A dataset's manifest: its files in order, with sizes, ETags and row counts, fixed at admission.

``proctor run`` (at its start) and the operator (at its first pass over a run) list the files,
count their rows (Parquet footers; one pass over a JSONL or CSV file, which also builds its
row-offset index) and store the manifest with the run (``<run>/dataset/manifest.json``, the
indexes beside it). Case i is row i of the files in manifest order. The manifest's fingerprint
(paths, sizes, ETags, rows) is part of the run's: a resume over a changed dataset is refused,
and :func:`changed` names a file replaced while the run runs.
"""

from __future__ import annotations

import hashlib
import json
import sys
from array import array
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from proctor.api.v1alpha1.dataset import DatasetFormat, DatasetSpec
from proctor.dataset.location import DatasetError, Location, format_of, partition_of
from proctor.dataset.parquet import ParquetError, footer_rows, open_parquet, schema_of
from proctor.dataset.rangefile import RangeFile
from proctor.dataset.text import TextError, TextIndex, index_text
from proctor.storage import BlobInfo, RunStorage

VERSION = 1


@dataclass(frozen=True)
class FileEntry:
    """One file of the dataset and where its rows fall among the cases."""

    key: str
    path: str
    size: int
    etag: str
    format: DatasetFormat
    rows: int
    start: int
    partition: str | None = None
    index: str | None = None
    header: list[str] | None = None


@dataclass(frozen=True)
class Manifest:
    """The files a run reads, in order, and how many rows they hold."""

    uri: str
    files: tuple[FileEntry, ...]
    rows: int
    columns: list[str] | None = None
    id_field: str | None = None

    @property
    def fingerprint(self) -> str:
        """What changes when a file of the run is replaced, added before others, or removed."""
        h = hashlib.sha256(self.uri.encode())
        for f in self.files:
            h.update(f"\n{f.path}\t{f.size}\t{f.etag}\t{f.rows}".encode())
        return h.hexdigest()[:32]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "uri": self.uri,
            "rows": self.rows,
            "columns": self.columns,
            "idField": self.id_field,
            "fingerprint": self.fingerprint,
            "files": [asdict(f) for f in self.files],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        if data.get("version") != VERSION:
            raise DatasetError(f"dataset manifest version {data.get('version')} is not {VERSION}")
        return cls(
            uri=str(data["uri"]),
            files=tuple(FileEntry(**f) for f in data["files"]),
            rows=int(data["rows"]),
            columns=data.get("columns"),
            id_field=data.get("idField"),
        )


def build_manifest(
    spec: DatasetSpec,
    location: Location,
    storage: RunStorage | None,
    need: int | None = None,
) -> Manifest:
    """List and count the dataset; with ``storage``, store each text file's index there.

    Stops after the file that holds row ``need`` (``limit``, ``count``), so a limited run over
    a huge dataset counts only what it reads. Raises :class:`DatasetError` naming the file."""
    files: list[FileEntry] = []
    total = 0
    first_schema: tuple[str, Any] | None = None
    for info in location.files():
        rel = location.relative(info.key)
        fmt = format_of(rel, spec.format)
        raw = RangeFile(location.blobs, info.key, info.size, info.etag)
        try:
            rows, schema, index = _count(raw, fmt, spec)
        except (ParquetError, TextError) as exc:
            raise DatasetError(f"dataset file {location.blobs.uri(info.key)}: {exc}") from exc
        if first_schema is None:
            first_schema = (rel, schema)
        elif schema != first_schema[1]:
            raise DatasetError(_schema_change(location, info, first_schema, schema))
        index_key = None
        if index is not None and index.offsets is not None and storage is not None:
            index_key = store_index(storage, len(files), index.offsets)
        files.append(
            FileEntry(
                key=info.key,
                path=rel,
                size=info.size,
                etag=info.etag,
                format=fmt,
                rows=rows,
                start=total,
                partition=partition_of(rel),
                index=index_key,
                header=index.header if index is not None else None,
            )
        )
        total += rows
        if need is not None and total >= need:
            break
    if not files:
        raise DatasetError(
            f"dataset {spec.uri} holds no files; check cases.dataset.uri (and its glob)"
        )
    return Manifest(spec.uri, tuple(files), total, spec.columns, spec.id_field)


def _count(raw: RangeFile, fmt: str, spec: DatasetSpec) -> tuple[int, Any, TextIndex | None]:
    """(rows, what must match across files, the text index) of one file."""
    if fmt == "parquet":
        pf = open_parquet(raw)
        return footer_rows(pf), ("parquet", schema_of(pf, spec.columns)), None
    index = index_text(raw, fmt)
    if index.header is not None and spec.columns:
        missing = [c for c in spec.columns if c not in index.header]
        if missing:
            raise TextError(f"its header has no column {', '.join(map(repr, missing))}")
    kind = "csv" if fmt == "csv" else "jsonl"
    return index.rows, (kind, tuple(index.header or ())), index


def _schema_change(location: Location, info: BlobInfo, first: tuple[str, Any], schema: Any) -> str:
    what = "format" if first[1][0] != schema[0] else "columns"
    return (
        f"dataset file {location.blobs.uri(info.key)} has other {what} than {first[0]} "
        f"({_describe(schema)} against {_describe(first[1])}); every file of a dataset must "
        "have the same; select files with a glob or set cases.dataset.columns"
    )


def _describe(schema: Any) -> str:
    kind, detail = schema
    if kind == "parquet":
        return "parquet " + ", ".join(f"{f.name}: {f.type}" for f in detail)
    return f"{kind} {list(detail)}" if detail else kind


# -- storage ------------------------------------------------------------------------------


def _manifest_key(storage: RunStorage) -> str:
    return f"{storage.base}dataset/manifest.json"


def store_index(storage: RunStorage, n: int, offsets: list[int]) -> str:
    """Store a text file's row offsets (little-endian uint64); the key."""
    data = array("Q", offsets)
    if sys.byteorder != "little":
        data.byteswap()
    key = f"{storage.base}dataset/index/{n:06d}.offsets"
    storage.blobs.put(key, data.tobytes())
    return key


def load_index(storage: RunStorage, key: str) -> list[int]:
    raw = storage.blobs.get(key)
    if raw is None:
        raise DatasetError(f"the dataset's row index {storage.blobs.uri(key)} is gone")
    data = array("Q")
    data.frombytes(raw)
    if sys.byteorder != "little":
        data.byteswap()
    return data.tolist()


def store_manifest(storage: RunStorage, manifest: Manifest) -> str:
    key = _manifest_key(storage)
    storage.blobs.put(key, json.dumps(manifest.to_json()).encode())
    return storage.blobs.uri(key)


def load_manifest(storage: RunStorage) -> Manifest | None:
    """The manifest stored with the run, or None before admission built it."""
    key = _manifest_key(storage)
    raw = storage.blobs.get(key)
    if raw is None:
        return None
    try:
        return Manifest.from_json(json.loads(raw))
    except (ValueError, KeyError, TypeError) as exc:
        uri = storage.blobs.uri(key)
        raise DatasetError(f"the dataset manifest {uri} is unreadable: {exc}") from exc


def changed(manifest: Manifest, location: Location) -> str | None:
    """What replaced, removed or added a file among the run's since the manifest, or None.
    Raises :class:`StorageError` when the files cannot be listed now."""
    listed: Iterator[BlobInfo] = location.files()
    for entry in manifest.files:
        # A listing that fails raises StorageError: the store did not answer, which says
        # nothing of the files; the caller asks again later.
        info = next(listed, None)
        uri = location.blobs.uri(entry.key)
        if info is None or info.key > entry.key:
            return f"dataset file {uri} is gone since the run started"
        if info.key < entry.key:
            return f"dataset file {location.blobs.uri(info.key)} was added before {entry.path}"
        if (info.size, info.etag) != (entry.size, entry.etag):
            return (
                f"dataset file {uri} changed since the run started (size {entry.size} -> "
                f"{info.size}, ETag {entry.etag} -> {info.etag})"
            )
    return None
