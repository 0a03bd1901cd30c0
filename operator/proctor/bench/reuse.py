"""Reusing unchanged cells of a BenchmarkSuite across runs (``spec.cache``).

A cell's measurement is worth reusing only when nothing that changes its timing changed. The
cell's *fingerprint* is a SHA-256 over everything that does: the benchmark and variant names,
the image reference as written, the command with its arguments, the environment (values and
``valueFrom`` references), warmup, repetitions, timeout, profile or explicit resources, the
suite's isolation and placement (which nodes the pod may land on), and
:data:`MEASUREMENT_VERSION` (how ``proctor bench-worker`` measures). What it cannot see: the
content behind a mutable image tag, and the nodes themselves; docs/benchmarks.md says so.

Layout under the cache root (``spec.cache.uri``, or ``<storage>/<namespace>/_suite-cache/``)::

    <fingerprint>/<source digest>.json.gz   one object per (fingerprint, suite run), created
                                            once: runs sharing a cache never overwrite or
                                            corrupt each other's entries

An entry holds the cell's records and the suite run that measured them. A lookup lists only
its own fingerprint's folder and takes the newest valid entry; an object that does not parse,
names another fingerprint or cell, or lacks a successful record for a repetition is ignored
(and reported by the caller), never trusted. Only cells whose every repetition succeeded are
written: a failure or timeout is not a measurement to reuse.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from proctor.api.v1alpha1.benchmarksuite import BenchmarkSuiteSpec
from proctor.bench.matrix import Cell
from proctor.bench.store import RECORD_FIELDS, SuiteStore
from proctor.storage import Blobs

ENTRY_FORMAT = 1
"""The entry object's format; entries of another format are ignored."""

MEASUREMENT_VERSION = 1
"""Bumped when ``proctor bench-worker`` measures differently: every earlier entry stops
matching, so nothing measured the old way is reused."""

DEFAULT_FOLDER = "_suite-cache"
"""The default cache folder in a namespace's storage folder: not a DNS label, so no suite
(whose runs live in ``<namespace>/<suite>/``) can be named so."""

URI_FOLDER = "suite-cells"
"""The folder under an explicit ``spec.cache.uri`` (other caches may share that URI)."""

REUSED_FIELD = "reused_from"
"""The record field a reused repetition carries: ``namespace/suite/runId`` that measured it."""


def cell_fingerprint(spec: BenchmarkSuiteSpec, cell: Cell) -> str:
    """The fingerprint of ``cell`` of ``spec`` (see the module doc), 64 hex digits."""
    body = {
        "measurement": MEASUREMENT_VERSION,
        "benchmark": cell.benchmark,
        "variant": cell.variant,
        "image": cell.image,
        "command": list(cell.command),
        "env": [e.model_dump(by_alias=True, exclude_none=True, mode="json") for e in cell.env],
        "warmup": cell.warmup,
        "repetitions": cell.repetitions,
        "timeoutSeconds": cell.timeout_seconds,
        "profile": cell.profile,
        "resources": (
            cell.resources.model_dump(by_alias=True, exclude_none=True, mode="json")
            if cell.resources
            else None
        ),
        "isolation": spec.isolation,
        "placement": spec.placement.model_dump(by_alias=True, exclude_none=True, mode="json"),
    }
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def source_of(namespace: str, suite: str, run_id: str) -> str:
    """How a suite run is named in entries and reports: ``namespace/suite/runId``."""
    return f"{namespace}/{suite}/{run_id}"


@dataclass(frozen=True)
class CachedCell:
    """A valid entry: the run that measured the cell and its records (repetition order)."""

    source: str
    created_at: str
    records: list[dict[str, Any]]


def _valid_record(rec: Any, i: int, cell: Cell) -> bool:
    if not isinstance(rec, dict) or any(f not in rec for f in RECORD_FIELDS):
        return False
    wall = rec["wall_seconds"]
    return (
        rec["repetition"] == i
        and rec["benchmark"] == cell.benchmark
        and rec["variant"] == cell.variant
        and rec["ok"] is True
        and isinstance(wall, int | float)
        and math.isfinite(wall)
        and wall >= 0
    )


def parse_entry(data: bytes, fingerprint: str, cell: Cell) -> CachedCell | None:
    """The entry in ``data`` when it is whole and is this cell's; None otherwise (pure)."""
    try:
        body = json.loads(gzip.decompress(data))
    except (OSError, EOFError, ValueError):
        return None
    if not isinstance(body, dict) or body.get("format") != ENTRY_FORMAT:
        return None
    records = body.get("records")
    if (
        body.get("fingerprint") != fingerprint
        or body.get("cell") != cell.id
        or not isinstance(body.get("source"), str)
        or not isinstance(body.get("createdAt"), str)
        or not isinstance(records, list)
        or len(records) != cell.repetitions
    ):
        return None
    if not all(_valid_record(rec, i, cell) for i, rec in enumerate(records)):
        return None
    return CachedCell(body["source"], body["createdAt"], records)


def cacheable(cell: Cell, records: Mapping[int, Mapping[str, Any]]) -> bool:
    """Whether a run's records of ``cell`` go into the cache: every repetition recorded and
    successful, and measured by this run (a reused cell is in the cache already)."""
    return (
        all(i in records for i in range(cell.repetitions))
        and all(bool(records[i].get("ok")) for i in range(cell.repetitions))
        and not any(records[i].get(REUSED_FIELD) for i in range(cell.repetitions))
    )


def entry_body(
    cell: Cell, fingerprint: str, source: str, records: Mapping[int, Mapping[str, Any]],
    now: datetime,
) -> bytes:  # fmt: skip
    """The entry object for a cell measured by run ``source`` (gzip'd JSON)."""
    body = {
        "format": ENTRY_FORMAT,
        "fingerprint": fingerprint,
        "cell": cell.id,
        "source": source,
        "createdAt": now.isoformat(),
        "records": [dict(records[i]) for i in range(cell.repetitions)],
    }
    return gzip.compress(json.dumps(body, separators=(",", ":")).encode(), mtime=0)


@dataclass(frozen=True)
class Lookup:
    """What a lookup found: the newest valid entry (or None) and the objects it ignored."""

    found: CachedCell | None
    ignored: tuple[str, ...] = ()


@dataclass
class CellCache:
    """The cell entries under ``prefix`` of ``blobs``; ``reported`` remembers the objects
    already reported as ignored, so each is reported once."""

    blobs: Blobs
    prefix: str
    reported: set[str] = field(default_factory=set)

    @property
    def uri(self) -> str:
        return self.blobs.uri(self.prefix)

    def _key(self, fingerprint: str, source: str) -> str:
        digest = hashlib.sha256(source.encode()).hexdigest()[:24]
        return f"{self.prefix}{fingerprint}/{digest}.json.gz"

    def lookup(self, cell: Cell, fingerprint: str) -> Lookup:
        """The newest valid entry of ``fingerprint``; unreadable or invalid objects are
        returned in ``ignored`` (only those not reported before)."""
        best: CachedCell | None = None
        ignored: list[str] = []
        for key in self.blobs.list(f"{self.prefix}{fingerprint}/"):
            data = self.blobs.get(key)
            entry = parse_entry(data, fingerprint, cell) if data is not None else None
            if entry is None:
                uri = self.blobs.uri(key)
                if uri not in self.reported:
                    self.reported.add(uri)
                    ignored.append(uri)
            elif best is None or entry.created_at > best.created_at:
                best = entry
        return Lookup(best, tuple(ignored))

    def take(self, spec: BenchmarkSuiteSpec, store: SuiteStore, cell: Cell) -> Lookup:
        """Look ``cell`` up and, when an entry matches, record it as ``store``'s run's
        (:func:`reuse_into`)."""
        found = self.lookup(cell, cell_fingerprint(spec, cell))
        if found.found is not None:
            reuse_into(store, cell, found.found)
        return found

    def remember(
        self, cell: Cell, fingerprint: str, source: str,
        records: Mapping[int, Mapping[str, Any]], now: datetime,
    ) -> bool:  # fmt: skip
        """Write the run's entry for ``cell`` once; False when it is not cacheable or the
        entry exists already (an operator restart, or the same run written before)."""
        if not cacheable(cell, records):
            return False
        body = entry_body(cell, fingerprint, source, records, now)
        return self.blobs.put_if_absent(self._key(fingerprint, source), body)


def cache_at(blobs: Blobs, *, explicit: bool, namespace: str) -> CellCache:
    """The cell cache in ``blobs``: at an explicit ``spec.cache.uri`` (``blobs`` opened
    there), or in the namespace's folder of the suite's storage (``blobs`` the storage's)."""
    prefix = f"{URI_FOLDER}/" if explicit else f"{namespace}/{DEFAULT_FOLDER}/"
    return CellCache(blobs, prefix)


def reuse_into(store: SuiteStore, cell: Cell, entry: CachedCell) -> int:
    """Record ``entry``'s repetitions as this run's, each marked with the run that measured
    it; returns how many were written (0 when they were already: writes are create-once)."""
    written = 0
    for rec in entry.records:
        body = {**rec, REUSED_FIELD: entry.source}
        written += store.write_record(cell.id, body)
    return written


def reused_source(records: Sequence[Mapping[str, Any]]) -> str | None:
    """The run a cell's records were reused from; None when this run measured any of them."""
    sources = {r.get(REUSED_FIELD) for r in records}
    if len(sources) != 1:
        return None
    (source,) = sources
    return str(source) if source else None


def open_cache(
    spec: BenchmarkSuiteSpec, storage: Blobs, *, namespace: str, open_uri: Callable[[str], Blobs]
) -> CellCache | None:
    """The suite's cell cache, or None without ``spec.cache``: in the storage's namespace
    folder, or at ``spec.cache.uri`` opened by ``open_uri`` (with the suite's credentials)."""
    if spec.cache is None:
        return None
    if spec.cache.uri is None:
        return cache_at(storage, explicit=False, namespace=namespace)
    return cache_at(open_uri(spec.cache.uri), explicit=True, namespace=namespace)


def reuses(spec: BenchmarkSuiteSpec) -> bool:
    """Whether unchanged cells are reused (``spec.cache.reuse: unchanged``)."""
    return spec.cache is not None and spec.cache.reuse == "unchanged"
