"""Where a suite run's records and report live.

Layout under the storage root (a local folder or an S3 prefix)::

    <namespace>/<suite>/<run_id>/
        cells/<benchmark>.<variant>/results/<i:012d>-<i+1:012d>.jsonl[.zst|.gz]
                                  one object per repetition i, created once (exactly-once:
                                  a second write of the same repetition is a no-op)
        records.jsonl.gz          every record of the run, gzip'd JSON lines (the raw data)
        report.md, report.html    the report
        summary.json              the summary the report was made from

``results_uri`` is the run's folder; ``baseline.resultsUri`` takes that folder (or any file
in it, such as the report), and :func:`load_records` reads a baseline from it.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from proctor.queue.base import Range
from proctor.storage import Blobs, LocalBlobs, RunStorage, StorageError
from proctor.storage import open_blobs as _open_blobs

RECORDS_KEY = "records.jsonl.gz"
REPORT_MD_KEY = "report.md"
REPORT_HTML_KEY = "report.html"
SUMMARY_KEY = "summary.json"

RECORD_FIELDS = (
    "benchmark",
    "variant",
    "repetition",
    "wall_seconds",
    "user_seconds",
    "system_seconds",
    "max_rss_bytes",
    "exit_code",
    "timed_out",
    "ok",
    "worker",
    "node",
    "started_at",
)
"""Every record has these (plus ``index`` = ``repetition``, and ``error`` when it failed)."""


def _cell_of(record: Mapping[str, Any]) -> str:
    return f"{record['benchmark']}.{record['variant']}"


class SuiteStore:
    """The objects of one suite run. ``compression`` applies to the per-repetition objects."""

    def __init__(
        self,
        storage_uri: str,
        namespace: str,
        suite: str,
        run_id: str,
        *,
        compression: str = "zstd",
        level: int = 3,
        endpoint: str | None = None,
        region: str | None = None,
        blobs: Blobs | None = None,
    ) -> None:
        for what, value in (("namespace", namespace), ("suite", suite), ("run id", run_id)):
            if not value or "/" in value:
                raise ValueError(f"the suite's {what} must be non-empty without '/', got {value!r}")
        self.blobs = blobs or _open_blobs(storage_uri, endpoint=endpoint, region=region)
        self.base = f"{namespace}/{suite}/{run_id}/"
        self.compression = compression
        self.level = level

    @property
    def results_uri(self) -> str:
        """The run's folder: what ``baseline.resultsUri`` of a later run points at."""
        return self.blobs.uri(self.base)

    @property
    def records_uri(self) -> str:
        """The run's raw records, gzip'd JSON lines (written with the report)."""
        return self.blobs.uri(self.base + RECORDS_KEY)

    def cell_storage(self, cell_id: str) -> RunStorage:
        """The cell's results, repetition ``i`` as the range ``[i, i + 1)``."""
        if not cell_id or "/" in cell_id:
            raise ValueError(f"a cell id is benchmark.variant without '/', got {cell_id!r}")
        return RunStorage(
            self.blobs,
            f"{self.base}cells/{cell_id}",
            compression=self.compression,
            level=self.level,
            records="jsonl",
        )

    def write_record(self, cell_id: str, record: Mapping[str, Any]) -> bool:
        """Record one repetition; False when it was recorded already (the first write wins)."""
        i = int(record["repetition"])
        body = {**record, "index": i}
        return self.cell_storage(cell_id).write_results(Range(i, i + 1), [body]).created

    def recorded(self, cell_id: str) -> set[int]:
        """Repetitions of the cell with a record."""
        done: set[int] = set()
        for r in self.cell_storage(cell_id).result_ranges():
            done.update(range(r.start, r.end))
        return done

    def records(self, cell_id: str) -> list[dict[str, Any]]:
        """The cell's records in repetition order, each repetition once."""
        return list(self.cell_storage(cell_id).iter_records())

    def cell_ids(self) -> list[str]:
        """Cells that have a folder in this run (in name order)."""
        return _cell_ids(self.blobs, f"{self.base}cells/")

    def all_records(self, cell_ids: Iterable[str] | None = None) -> dict[str, list[dict[str, Any]]]:
        """Records per cell id, for ``cell_ids`` (default: every cell with a folder)."""
        return {c: self.records(c) for c in (self.cell_ids() if cell_ids is None else cell_ids)}

    def write_report(
        self,
        markdown: str,
        html: str,
        records: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
        summary: Mapping[str, Any] | None = None,
    ) -> str:
        """Write the report, the raw records (gzip'd JSON lines) and the summary; returns the
        HTML report's URI. ``records`` defaults to :meth:`all_records`."""
        data = self.all_records() if records is None else records
        lines = "".join(
            json.dumps(dict(rec), separators=(",", ":"), sort_keys=True) + "\n"
            for cell in sorted(data)
            for rec in sorted(data[cell], key=lambda r: int(r["repetition"]))
        )
        self.blobs.put(self.base + RECORDS_KEY, gzip.compress(lines.encode(), mtime=0))
        self.blobs.put(self.base + REPORT_MD_KEY, markdown.encode())
        self.blobs.put(self.base + REPORT_HTML_KEY, html.encode())
        if summary is not None:
            self.blobs.put(self.base + SUMMARY_KEY, json.dumps(summary, indent=2).encode())
        return self.blobs.uri(self.base + REPORT_HTML_KEY)

    def report_uri(self, kind: str = "html") -> str:
        return self.blobs.uri(self.base + (REPORT_HTML_KEY if kind == "html" else REPORT_MD_KEY))

    def delete(self) -> None:
        """Remove every object of this run (a fresh local run of the same name)."""
        self.blobs.delete_prefix(self.base)


def _cell_ids(blobs: Blobs, prefix: str) -> list[str]:
    """The cell folders under ``prefix`` (a local folder lists directories, S3 lists keys)."""
    if isinstance(blobs, LocalBlobs):
        try:
            return sorted(e.name for e in os.scandir(blobs.root / prefix) if e.is_dir())
        except FileNotFoundError:
            return []
    found = {key[len(prefix) :].split("/", 1)[0] for key in blobs.list(prefix)}
    return sorted(c for c in found if c)


def _split_results_uri(uri: str) -> tuple[str, str]:
    """``(root URI, key prefix)`` of a results folder or of a file inside it."""
    parts = urlsplit(uri)
    path = parts.path if parts.scheme else uri
    name = path.rstrip("/").rsplit("/", 1)[-1]
    if name in (RECORDS_KEY, REPORT_MD_KEY, REPORT_HTML_KEY, SUMMARY_KEY):
        path = path.rstrip("/")[: -len(name)]
    if parts.scheme == "s3":
        return f"s3://{parts.netloc}", path.strip("/")
    return path.rstrip("/") or "/", ""


def load_records(
    results_uri: str,
    *,
    endpoint: str | None = None,
    region: str | None = None,
    blobs: Blobs | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Records per cell id of an earlier suite run, from its folder (``status.resultsUri``) or
    a file in it (``status.reportUri``). Reads ``records.jsonl.gz``, else the cells' objects.
    ``blobs``, when given, is the bucket of an s3:// ``results_uri`` opened with the reader's
    own credentials (the operator reads a suite's baseline with the suite's credentials).
    """
    root, prefix = _split_results_uri(results_uri)
    if not urlsplit(root).scheme == "s3" and not Path(root).is_dir():
        raise StorageError(
            f"no suite results at {results_uri!r}: the folder does not exist; point "
            "baseline.resultsUri at an earlier run's results folder or report"
        )
    if blobs is None:
        blobs = _open_blobs(root, endpoint=endpoint, region=region)
    base = f"{prefix}/" if prefix else ""
    data = blobs.get(base + RECORDS_KEY)
    out: dict[str, list[dict[str, Any]]] = {}
    if data is not None:
        for line in gzip.decompress(data).splitlines():
            if line.strip():
                rec = json.loads(line)
                out.setdefault(_cell_of(rec), []).append(rec)
        return out
    cells_prefix = f"{base}cells/"
    for cell in _cell_ids(blobs, cells_prefix):
        out[cell] = list(RunStorage(blobs, f"{cells_prefix}{cell}", records="jsonl").iter_records())
    if not out:
        raise StorageError(
            f"no suite records at {results_uri!r} (neither {RECORDS_KEY} nor cells/); point "
            "baseline.resultsUri at an earlier run's results folder or report"
        )
    return out
