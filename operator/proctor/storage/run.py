"""A run's objects: results per range, dead letters, task state and the run checkpoint.

Layout under the storage root (``<root>/<run_id>/``)::

    results/<start:012d>-<end:012d>.jsonl[.zst|.gz]   one immutable object per finished range
    dead/<start:012d>-<end:012d>.json                 a range that exhausted its attempts
    state/<key>                                       task-level checkpoints (already compressed)
    checkpoint.json[.zst|.gz]                         the run checkpoint (see RunProgress)
    summary.json                                      the final summary, when the run is over

Zero-padded starts make the lexicographic order of keys the numeric order of ranges, so the
objects overlapping a range are found by listing from its start.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import zstandard

from proctor.queue.base import Range
from proctor.storage.blobs import Blobs

Algorithm = str  # "zstd" | "gzip" | "none"

_EXTENSIONS = {"zstd": ".zst", "gzip": ".gz", "none": ""}
_RANGE_KEY = re.compile(r"^(\d{12})-(\d{12})")


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


class RunStorage:
    """The objects of one run. Safe to share between threads."""

    def __init__(
        self, blobs: Blobs, run_id: str, *, compression: Algorithm = "zstd", level: int = 3
    ) -> None:
        if compression not in _EXTENSIONS:
            raise ValueError(f"compression must be zstd, gzip or none, got {compression!r}")
        self.blobs = blobs
        self.run_id = run_id
        self.compression = compression
        self.level = level
        self.base = f"{run_id}/"
        self._ext = _EXTENSIONS[compression]
        self._zstd = zstandard.ZstdCompressor(level=level) if compression == "zstd" else None

    @property
    def uri(self) -> str:
        """The run's folder or prefix."""
        return self.blobs.uri(self.base)

    def results_uri(self) -> str:
        return self.blobs.uri(self.base + "results/")

    # -- results ------------------------------------------------------------------------

    def result_key(self, r: Range) -> str:
        return f"{self.base}results/{range_key(r)}.jsonl{self._ext}"

    def encode_results(self, records: Iterable[dict[str, Any]]) -> bytes:
        raw = "".join(json.dumps(rec, separators=(",", ":")) + "\n" for rec in records).encode()
        if self._zstd is not None:
            return self._zstd.compress(raw)
        return compress(raw, self.compression, self.level)

    def write_results(self, r: Range, records: Sequence[dict[str, Any]]) -> Written:
        """Record the results of ``r`` once: a second write of the same range is a no-op.

        ``records`` must hold exactly one record per index of ``r``, in order.
        """
        if len(records) != len(r) or (
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
            if r is None:
                continue
            if within is not None and r.start >= within.end:
                break
            out.append(r)
        return out

    def result_keys(self) -> Iterator[tuple[Range, str]]:
        prefix = f"{self.base}results/"
        for key in self.blobs.list(prefix):
            r = parse_range(key)
            if r is not None:
                yield r, key

    def read_object(self, key: str) -> Iterator[dict[str, Any]]:
        data = self.blobs.get(key)
        if data is None:
            return
        for line in decompress(data, key).splitlines():
            if line:
                yield json.loads(line)

    def iter_records(self) -> Iterator[dict[str, Any]]:
        """Every case's record exactly once, in index order, streaming one object at a time.

        Objects can overlap after rare races (a worker that lost its lease finished a range
        another worker had split); the first object by start wins for every index.
        """
        frontier = 0
        for r, key in sorted(self.result_keys(), key=lambda x: (x[0].start, -x[0].end)):
            if r.end <= frontier:
                continue
            for record in self.read_object(key):
                if record["index"] >= frontier:
                    yield record
            frontier = max(frontier, r.end)

    # -- dead letters ---------------------------------------------------------------------

    def write_dead_letter(self, r: Range, deliveries: int, reason: str) -> bool:
        body = json.dumps(
            {"start": r.start, "end": r.end, "deliveries": deliveries, "reason": reason}
        ).encode()
        return self.blobs.put_if_absent(f"{self.base}dead/{range_key(r)}.json", body)

    def dead_letters(self) -> list[dict[str, Any]]:
        out = []
        for key in self.blobs.list(f"{self.base}dead/"):
            data = self.blobs.get(key)
            if data is not None:
                out.append(json.loads(data))
        return out

    # -- task state (already compressed by the SDK) ----------------------------------------

    def put_state(self, key: str, data: bytes) -> None:
        self.blobs.put(f"{self.base}state/{key}", data)

    def get_state(self, key: str) -> bytes | None:
        return self.blobs.get(f"{self.base}state/{key}")

    # -- run checkpoint and summary -------------------------------------------------------

    def checkpoint_key(self) -> str:
        return f"{self.base}checkpoint.json{self._ext}"

    def write_checkpoint(self, data: dict[str, Any]) -> int:
        body = compress(json.dumps(data).encode(), self.compression, self.level)
        self.blobs.put(self.checkpoint_key(), body)
        return len(body)

    def read_checkpoint(self) -> dict[str, Any] | None:
        for ext in (self._ext, *_EXTENSIONS.values()):
            key = f"{self.base}checkpoint.json{ext}"
            data = self.blobs.get(key)
            if data is not None:
                loaded: dict[str, Any] = json.loads(decompress(data, key))
                return loaded
        return None

    def write_summary(self, data: dict[str, Any]) -> str:
        key = f"{self.base}summary.json"
        self.blobs.put(key, json.dumps(data, indent=2).encode())
        return self.blobs.uri(key)

    def delete(self) -> None:
        """Remove every object of the run."""
        self.blobs.delete_prefix(self.base)
