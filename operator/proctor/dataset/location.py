"""Where a dataset's files are: the store, the folder ids are relative to, which keys count.

``cases.dataset.uri`` is an ``s3://bucket/prefix``, a local path or ``file://`` URI, naming a
file, a folder (every file under it, Hive ``key=value/`` folders included) or a glob (``*`` and
``?`` within a folder name, ``**`` across folders). Files are taken in lexicographic key order,
which fixes the order of rows: case i is row i of that sequence.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from proctor.api.v1alpha1.dataset import DATASET_FORMATS, DatasetFormat, DatasetSpec
from proctor.storage import BlobInfo, Blobs, LocalBlobs, S3Blobs, StorageError, s3_uri_problem


class DatasetError(StorageError):
    """The dataset cannot be read as asked; the message names the file (and row) and the fix."""


_GLOB = re.compile(r"[*?\[]")
_SUFFIXES: tuple[tuple[str, DatasetFormat], ...] = (
    (".jsonl.zst", "jsonl.zst"),
    (".jsonl.gz", "jsonl.gz"),
    (".jsonl", "jsonl"),
    (".ndjson", "jsonl"),
    (".csv", "csv"),
    (".parquet", "parquet"),
    (".pq", "parquet"),
)


@dataclass(frozen=True)
class Location:
    """A dataset's store, the key of its root folder ("" or ending in ``/``) and, for a glob,
    the pattern keys must match."""

    blobs: Blobs
    root: str
    single: str | None = None
    pattern: re.Pattern[str] | None = None

    def relative(self, key: str) -> str:
        """A key relative to the root: the file part of a default row id."""
        return key[len(self.root) :]

    def files(self) -> Iterator[BlobInfo]:
        """The dataset's files in key order: not folders, not ``_``/``.`` files (``_SUCCESS``)."""
        if self.single is not None:
            info = self.blobs.stat(self.single)
            if info is None:
                raise DatasetError(f"dataset file {self.blobs.uri(self.single)} does not exist")
            yield info
            return
        for info in self.blobs.walk(self.root):
            rel = self.relative(info.key)
            if not rel or rel.endswith("/"):
                continue
            if any(part.startswith(("_", ".")) for part in rel.split("/")):
                continue
            if self.pattern is not None and not self.pattern.fullmatch(rel):
                continue
            yield info


def glob_regex(pattern: str) -> re.Pattern[str]:
    """``*``/``?`` within a name, ``**`` across folders, ``[...]`` a class."""
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
            continue
        if pattern.startswith("**", i):
            out, i = out + ".*", i + 2
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out += re.escape(c)
            else:
                out, i = out + "[" + pattern[i + 1 : end].replace("\\", "\\\\") + "]", end
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out)


def _split_glob(path: str) -> tuple[str, str | None]:
    """(the folder before the first glob character, the rest as a pattern) of a key path."""
    m = _GLOB.search(path)
    if m is None:
        return path, None
    cut = path.rfind("/", 0, m.start()) + 1
    return path[:cut], path[cut:]


def locate(
    spec: DatasetSpec,
    *,
    endpoint: str | None = None,
    region: str | None = None,
    client: object | None = None,
    base: Path | None = None,
) -> Location:
    """The :class:`Location` of ``spec.uri``; a relative local path is taken from ``base``."""
    parts = urlsplit(spec.uri)
    if parts.scheme == "s3":
        problem = s3_uri_problem(spec.uri)
        if problem:
            raise DatasetError(f"cases.dataset.uri: {problem.replace('storage URI', 'URI')}")
        blobs = S3Blobs(
            parts.netloc,
            "",
            client=client,
            endpoint_url=spec.endpoint or endpoint,
            region=spec.region or region,
        )
        return _s3_location(blobs, parts.path.lstrip("/"))
    if parts.scheme not in ("", "file"):
        raise DatasetError(
            f"cases.dataset.uri {spec.uri!r}: use s3://BUCKET/PREFIX, a local path or file://"
        )
    path = parts.path if parts.scheme == "file" else spec.uri
    return _local_location(Path(path) if base is None else base / path)


def _s3_location(blobs: S3Blobs, key: str) -> Location:
    folder, pattern = _split_glob(key)
    if pattern is not None:
        return Location(blobs, folder, pattern=glob_regex(pattern))
    if key and not key.endswith("/") and blobs.stat(key) is not None:
        return Location(blobs, key[: key.rfind("/") + 1], single=key)
    return Location(blobs, key.rstrip("/") + "/" if key else "")


def _local_location(path: Path) -> Location:
    text = path.as_posix()
    folder, pattern = _split_glob(text)
    if pattern is not None:
        root = Path(folder or ".").resolve()
        return Location(LocalBlobs(root, create=False), "", pattern=glob_regex(pattern))
    path = path.resolve()
    if path.is_file():
        return Location(LocalBlobs(path.parent, create=False), "", single=path.name)
    if not path.is_dir():
        raise DatasetError(f"dataset {path} does not exist; check cases.dataset.uri")
    return Location(LocalBlobs(path, create=False), "")


def format_of(rel: str, declared: DatasetFormat | None) -> DatasetFormat:
    """The format of file ``rel``: the declared one, else its suffix's."""
    if declared is not None:
        return declared
    name = rel.lower()
    for suffix, fmt in _SUFFIXES:
        if name.endswith(suffix):
            return fmt
    raise DatasetError(
        f"dataset file {rel!r}: its suffix names none of the formats "
        f"({', '.join(DATASET_FORMATS)}); set cases.dataset.format, or a glob in "
        "cases.dataset.uri that leaves the file out"
    )


def partition_of(rel: str) -> str | None:
    """The Hive partition of file ``rel``: its leading ``key=value`` folders, or None."""
    parts = []
    for folder in rel.split("/")[:-1]:
        if "=" not in folder or folder.startswith("="):
            break
        parts.append(folder)
    return "/".join(parts) or None


def partition_values(partition: str | None) -> Mapping[str, str]:
    """``{"year": "2025", ...}`` of a partition path."""
    if not partition:
        return {}
    return dict(p.split("=", 1) for p in partition.split("/"))
