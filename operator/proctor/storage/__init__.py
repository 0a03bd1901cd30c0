"""Where a run's results, dead letters, task state and checkpoints live.

``open_storage(uri, run_id)`` picks the store from the URI:

- ``s3://BUCKET/PREFIX``: S3, or an S3-compatible store with ``endpoint=`` (or boto3's
  ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``); credentials the usual boto3 way;
- ``file:///PATH`` or a plain path: a local folder.

The run's objects go under ``<root>/<run_id>/`` (see :mod:`proctor.storage.run`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from proctor.redact import redact_url
from proctor.storage.blobs import (
    BlobInfo,
    Blobs,
    LocalBlobs,
    ObjectChangedError,
    S3Blobs,
    StorageError,
)
from proctor.storage.progress import IntervalSet, ProgressSnapshot, RunProgress
from proctor.storage.run import (
    CorruptObjectError,
    RunStorage,
    UnencodableError,
    Written,
    parse_range,
)

__all__ = [
    "BlobInfo",
    "Blobs",
    "CorruptObjectError",
    "IntervalSet",
    "LocalBlobs",
    "ObjectChangedError",
    "ProgressSnapshot",
    "RunProgress",
    "RunStorage",
    "S3Blobs",
    "StorageError",
    "TaskStateStore",
    "UnencodableError",
    "Written",
    "open_blobs",
    "open_storage",
    "parse_range",
]


_BUCKET = re.compile(r"[A-Za-z0-9._-]{1,255}")
"""What botocore accepts as a bucket name; anything else fails its parameter validation."""


def s3_uri_problem(uri: str) -> str:
    """What is wrong with an ``s3://`` URI, its credentials masked; "" if nothing."""
    bucket = urlsplit(uri).netloc
    if "@" in bucket:
        return (
            f"storage URI {redact_url(uri)} holds a user name and secret, which S3 does not "
            "read from a URI; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY instead"
        )
    if not bucket:
        return f"storage URI {uri!r} names no bucket"
    if not _BUCKET.fullmatch(bucket):
        return f"storage URI {uri!r}: the bucket name may hold letters, digits, '.', '-', '_'"
    return ""


def open_blobs(uri: str, *, endpoint: str | None = None, region: str | None = None) -> Blobs:
    parts = urlsplit(uri)
    if parts.scheme == "s3":
        problem = s3_uri_problem(uri)
        if problem:
            raise StorageError(f"{problem}; write s3://BUCKET/PREFIX")
        return S3Blobs(parts.netloc, parts.path, endpoint_url=endpoint, region=region)
    if parts.scheme == "file":
        return LocalBlobs(Path(parts.path))
    if parts.scheme == "":
        return LocalBlobs(Path(uri))
    raise StorageError(f"unknown storage URI {uri!r}: use s3://BUCKET/PREFIX or file:///PATH")


def open_storage(
    uri: str,
    run_id: str,
    *,
    compression: str = "zstd",
    level: int = 3,
    endpoint: str | None = None,
    region: str | None = None,
    attempt: str = "",
) -> RunStorage:
    """The storage of run ``run_id`` under ``uri`` (of its attempt ``attempt``, if given)."""
    return RunStorage(
        open_blobs(uri, endpoint=endpoint, region=region),
        run_id,
        compression=compression,
        level=level,
        attempt=attempt,
    )


class TaskStateStore:
    """:class:`proctor.sdk.StateStore` over a run's storage, for ``save_state``/``load_state``.

    ``on_put`` sees each checkpoint's size and duration (the worker's metrics).
    """

    def __init__(
        self, storage: RunStorage, on_put: Callable[[int, float], None] | None = None
    ) -> None:
        self.storage = storage
        self.on_put = on_put

    def put(self, key: str, data: bytes) -> None:
        t0 = time.perf_counter()
        self.storage.put_state(key, data)
        if self.on_put is not None:
            self.on_put(len(data), time.perf_counter() - t0)

    def get(self, key: str) -> bytes | None:
        return self.storage.get_state(key)
