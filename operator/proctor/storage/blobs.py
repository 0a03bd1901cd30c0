"""Object stores under one interface: a local folder and S3 (or an S3-compatible endpoint).

``put_if_absent`` is the primitive exactly-once results rest on: S3's conditional put
(``If-None-Match: *``) where the store supports it, else a check then a put (the content of a
range's object is deterministic apart from timings, and a key is read as one object, so a rare
double write can never show a case twice); on a local folder an atomic hard link.
"""

from __future__ import annotations

import functools
import os
import random
import shutil
import stat as statmod
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TypeVar

import structlog

from proctor import aws
from proctor.redact import redact_text

# botocore is imported by S3Blobs alone: a run on a local folder (``proctor run``) does not pay
# its import (about 0.2 s).

log = structlog.get_logger("proctor.storage")

T = TypeVar("T")


class StorageError(RuntimeError):
    """The store failed for longer than the retry deadline, or is misconfigured."""


class ObjectChangedError(StorageError):
    """A ranged read found the object changed since its ETag was taken (it was replaced)."""


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """One object of a listing: its key, size in bytes and ETag (local: mtime and size)."""

    key: str
    size: int
    etag: str


class Blobs(Protocol):
    """Keys are ``/``-separated paths relative to the store's root."""

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create ``key``; False (and nothing written) when it exists already."""
        ...

    def put(self, key: str, data: bytes) -> None:
        """Create or replace ``key``."""
        ...

    def put_file(self, key: str, source: BinaryIO) -> None:
        """Create or replace ``key`` with ``source``'s bytes from its start, streamed: a large
        object (a run's merged results) is never held in memory whole."""
        ...

    def get(self, key: str) -> bytes | None:
        """The object's bytes, or None when there is none."""
        ...

    def list(self, prefix: str, start_after: str = "") -> Iterator[str]:
        """Keys under ``prefix`` in lexicographic order, after ``start_after`` if given."""
        ...

    def delete_prefix(self, prefix: str) -> None:
        """Remove every key under ``prefix``."""
        ...

    def walk(self, prefix: str) -> Iterator[BlobInfo]:
        """Every object under ``prefix``, sub-folders included, in lexicographic key order."""
        ...

    def stat(self, key: str) -> BlobInfo | None:
        """Size and ETag of ``key``, or None when there is none."""
        ...

    def get_range(self, key: str, start: int, end: int, etag: str | None = None) -> bytes:
        """Bytes ``[start, end)`` of ``key`` (fewer at its end); with ``etag``, raises
        :class:`ObjectChangedError` when the object is no longer that version, and
        :class:`StorageError` when it is gone."""
        ...

    def delete(self, key: str) -> None:
        """Remove ``key`` if it exists."""
        ...

    def uri(self, key: str = "") -> str:
        """Where ``key`` is, for people and status."""
        ...


class LocalBlobs:
    """A folder. Writes go to a temporary file first, so a reader never sees half an object."""

    def __init__(self, root: Path, *, create: bool = True) -> None:
        self.root = root.resolve()
        if create:  # not for a folder only read (a dataset's)
            self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        # A key never reaches outside the folder (a run id of "..", an absolute one).
        if path != self.root and not path.is_relative_to(self.root):
            raise StorageError(f"key {key!r} would leave the storage folder {self.root}")
        return path

    def _temp(self, path: Path, data: bytes | BinaryIO) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.{os.getpid()}.{random.getrandbits(32):08x}.tmp"
        with tmp.open("wb") as f:
            if isinstance(data, bytes):
                f.write(data)
            else:
                shutil.copyfileobj(data, f)
        return tmp

    def put_if_absent(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        if path.exists():
            return False
        tmp = self._temp(path, data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            tmp.unlink()
        return True

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        os.replace(self._temp(path, data), path)

    def put_file(self, key: str, source: BinaryIO) -> None:
        path = self._path(key)
        source.seek(0)
        os.replace(self._temp(path, source), path)

    def get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def list(self, prefix: str, start_after: str = "") -> Iterator[str]:
        folder, _, stem = prefix.rpartition("/")
        base = self.root / folder if folder else self.root
        try:
            names = sorted(
                e.name for e in os.scandir(base) if e.is_file() and not e.name.startswith(".")
            )
        except FileNotFoundError:
            return
        for name in names:
            key = f"{folder}/{name}" if folder else name
            if name.startswith(stem) and key > start_after:
                yield key

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        folder = self._path(prefix.rstrip("/"))
        if folder.is_dir():
            for path in sorted(folder.rglob("*"), reverse=True):
                if path.is_dir():
                    path.rmdir()
                else:
                    path.unlink()
            folder.rmdir()

    def uri(self, key: str = "") -> str:
        return (self.root / key).as_uri() if key else self.root.as_uri()

    def walk(self, prefix: str) -> Iterator[BlobInfo]:
        found = []
        for folder, dirs, files in os.walk(self.root):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                if name.startswith("."):
                    continue
                key = Path(folder, name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    found.append(key)
        for key in sorted(found):
            info = self.stat(key)
            if info is not None:
                yield info

    def stat(self, key: str) -> BlobInfo | None:
        try:
            st = self._path(key).stat()
        except FileNotFoundError:
            return None
        if not statmod.S_ISREG(st.st_mode):
            return None
        return BlobInfo(key, st.st_size, _local_etag(st))

    def get_range(self, key: str, start: int, end: int, etag: str | None = None) -> bytes:
        path = self._path(key)
        try:
            with path.open("rb") as f:
                if etag is not None and _local_etag(os.fstat(f.fileno())) != etag:
                    raise ObjectChangedError(f"{self.uri(key)} changed since it was listed")
                f.seek(start)
                return f.read(max(0, end - start))
        except FileNotFoundError:
            raise StorageError(f"{self.uri(key)} does not exist") from None


def _local_etag(st: os.stat_result) -> str:
    """A local file's version: its modification time and size (what an S3 ETag is to S3)."""
    return f"{st.st_mtime_ns:x}-{st.st_size:x}"


_RETRYABLE_CODES = {
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "Throttling",
    "ThrottlingException",
    "ConditionalRequestConflict",
    "OperationAborted",
}


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, aws.param_validation_error()):
        return False  # the request itself is wrong (a bucket name, say): no retry can help
    if isinstance(exc, aws.client_error()):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return code in _RETRYABLE_CODES or status >= 500 or status == 409
    return isinstance(exc, aws.botocore_error())


class S3Blobs:
    """An S3 prefix. botocore retries each request; on top of that every operation is retried
    with exponential backoff and jitter until ``retry_deadline`` seconds have passed, so a store
    that is down for a while delays a worker but loses nothing."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client: Any = None,
        endpoint_url: str | None = None,
        region: str | None = None,
        retry_deadline: float = 300.0,
    ) -> None:
        self._client_error: Any = aws.client_error()
        self._errors: tuple[type[Exception], ...] = (self._client_error, aws.botocore_error())
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = client or aws.client("s3", endpoint_url=endpoint_url, region=region)
        self.retry_deadline = retry_deadline
        self.conditional_writes = True
        self.retries = 0

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        deadline = time.monotonic() + self.retry_deadline
        delay = 0.1
        while True:
            try:
                return fn()
            except self._errors as exc:
                if not _retryable(exc) or time.monotonic() + delay > deadline:
                    raise StorageError(
                        f"S3 {what} in s3://{self.bucket}/{self.prefix} failed: "
                        f"{redact_text(str(exc))}; check "
                        "the bucket, the endpoint and the credentials"
                    ) from exc
                self.retries += 1
                log.warning("s3 retry", op=what, error=redact_text(str(exc)), delay=round(delay, 3))
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 10.0)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        full = self.prefix + key
        if self.conditional_writes:

            def conditional() -> bool:
                try:
                    self.client.put_object(Bucket=self.bucket, Key=full, Body=data, IfNoneMatch="*")
                except self._client_error as exc:
                    code = str(exc.response.get("Error", {}).get("Code", ""))
                    if code in ("PreconditionFailed", "412"):
                        return False
                    if code in ("NotImplemented", "501"):
                        raise _NoConditionalWrites from exc
                    raise
                return True

            try:
                return self._retry(f"put {key}", conditional)
            except _NoConditionalWrites:
                log.warning("s3 store has no conditional writes; using check-then-put")
                self.conditional_writes = False
        if self.get(key) is not None:
            return False
        self.put(key, data)
        return True

    def put(self, key: str, data: bytes) -> None:
        full = self.prefix + key
        self._retry(
            f"put {key}",
            lambda: self.client.put_object(Bucket=self.bucket, Key=full, Body=data),
        )

    def put_file(self, key: str, source: BinaryIO) -> None:
        full = self.prefix + key

        def send() -> None:
            source.seek(0)  # from the start again on every try
            self.client.put_object(Bucket=self.bucket, Key=full, Body=source)

        self._retry(f"put {key}", send)

    def get(self, key: str) -> bytes | None:
        full = self.prefix + key

        def read() -> bytes | None:
            try:
                reply = self.client.get_object(Bucket=self.bucket, Key=full)
            except self._client_error as exc:
                if str(exc.response.get("Error", {}).get("Code", "")) in ("NoSuchKey", "404"):
                    return None
                raise
            body: bytes = reply["Body"].read()
            return body

        return self._retry(f"get {key}", read)

    def list(self, prefix: str, start_after: str = "") -> Iterator[str]:
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
            if token:
                kwargs["ContinuationToken"] = token
            elif start_after:
                kwargs["StartAfter"] = self.prefix + start_after
            reply: dict[str, Any] = self._retry(
                f"list {prefix}", functools.partial(self.client.list_objects_v2, **kwargs)
            )
            for item in reply.get("Contents", []):
                yield str(item["Key"])[len(self.prefix) :]
            if not reply.get("IsTruncated"):
                return
            token = reply["NextContinuationToken"]

    def delete_prefix(self, prefix: str) -> None:
        keys = list(self.list(prefix))
        for i in range(0, len(keys), 1000):
            objects = [{"Key": self.prefix + k} for k in keys[i : i + 1000]]
            delete = functools.partial(
                self.client.delete_objects,
                Bucket=self.bucket,
                Delete={"Objects": objects, "Quiet": True},
            )
            self._retry(f"delete {prefix}", delete)

    def delete(self, key: str) -> None:
        delete = functools.partial(
            self.client.delete_object, Bucket=self.bucket, Key=self.prefix + key
        )
        self._retry(f"delete {key}", delete)

    def uri(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"

    def walk(self, prefix: str) -> Iterator[BlobInfo]:
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
            if token:
                kwargs["ContinuationToken"] = token
            reply: dict[str, Any] = self._retry(
                f"list {prefix}", functools.partial(self.client.list_objects_v2, **kwargs)
            )
            for item in reply.get("Contents", []):
                key = str(item["Key"])[len(self.prefix) :]
                yield BlobInfo(key, int(item["Size"]), str(item.get("ETag", "")))
            if not reply.get("IsTruncated"):
                return
            token = reply["NextContinuationToken"]

    def stat(self, key: str) -> BlobInfo | None:
        def head() -> BlobInfo | None:
            try:
                reply = self.client.head_object(Bucket=self.bucket, Key=self.prefix + key)
            except self._client_error as exc:
                if str(exc.response.get("Error", {}).get("Code", "")) in ("NoSuchKey", "404"):
                    return None
                raise
            return BlobInfo(key, int(reply["ContentLength"]), str(reply.get("ETag", "")))

        return self._retry(f"head {key}", head)

    def get_range(self, key: str, start: int, end: int, etag: str | None = None) -> bytes:
        if end <= start:
            return b""
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self.prefix + key,
            "Range": f"bytes={start}-{end - 1}",
        }
        if etag:
            kwargs["IfMatch"] = etag

        def read() -> bytes:
            try:
                reply = self.client.get_object(**kwargs)
            except self._client_error as exc:
                code = str(exc.response.get("Error", {}).get("Code", ""))
                if code in ("PreconditionFailed", "412"):
                    raise ObjectChangedError(
                        f"{self.uri(key)} changed since it was listed"
                    ) from None
                if code in ("NoSuchKey", "404"):
                    raise StorageError(f"{self.uri(key)} does not exist") from None
                if code in ("InvalidRange", "416"):
                    return b""
                raise
            body: bytes = reply["Body"].read()
            return body

        return self._retry(f"get {key} bytes {start}-{end}", read)


class _NoConditionalWrites(Exception):  # noqa: N818 - internal control flow
    pass
