"""Work queues: index ranges of a run's cases, leased to workers.

``open_queue(url, run_id)`` picks the backend from the URL:

- ``redis://HOST:PORT/DB`` (or ``rediss://``): Redis Streams,
- ``sqs://`` (AWS, endpoint from ``AWS_ENDPOINT_URL_SQS``/``AWS_ENDPOINT_URL`` if set),
  ``sqs://HOST:PORT`` (an SQS-compatible endpoint over http) or ``sqs+https://HOST``;
  ``?region=`` sets the region (default ``AWS_REGION``/``AWS_DEFAULT_REGION``, else us-east-1),
- ``sqlite:///PATH``: the embedded queue in a SQLite file.

With ``attempt`` the queue is that attempt's own (its identity is ``<run_id>.<attempt>``), so
a worker left over from an earlier attempt of the run can never claim the current one's
entries.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, parse_qs, urlsplit

from proctor import aws
from proctor.queue.base import (
    DeadLetter,
    Lease,
    QueueDepth,
    QueueError,
    Range,
    WorkQueue,
    partition,
    subtract,
)
from proctor.queue.enqueue import enqueue_run
from proctor.queue.sqlite import SqliteQueue
from proctor.redact import redact_text, redact_url

__all__ = [
    "DeadLetter",
    "Lease",
    "QueueConnections",
    "QueueDepth",
    "QueueError",
    "Range",
    "WorkQueue",
    "enqueue_run",
    "open_queue",
    "partition",
    "queue_identity",
    "subtract",
]


def _sqs_location(parts: SplitResult) -> tuple[str | None, str | None]:
    """(endpoint URL, region) of an ``sqs://`` URL."""
    query = parse_qs(parts.query)
    region = (
        query.get("region", [None])[0]
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
    )
    endpoint = None
    if parts.netloc:
        tls = parts.scheme.lower() == "sqs+https"
        endpoint = f"{'https' if tls else 'http'}://{parts.netloc}"
    return endpoint, region


def _unknown(url: str) -> QueueError:
    return QueueError(
        f"unknown queue URL {url!r}: use redis://HOST:PORT/DB, sqs://[HOST:PORT] or sqlite:///PATH"
    )


def queue_identity(run_id: str, attempt: str = "") -> str:
    """The queue name of attempt ``attempt`` of run ``run_id`` (the run id without one)."""
    return f"{run_id}.{attempt}" if attempt else run_id


def open_queue(
    url: str, run_id: str, *, lease_seconds: float = 60.0, attempt: str = ""
) -> WorkQueue:
    """The queue of run ``run_id`` (of its attempt ``attempt``) at ``url``, created if it does
    not exist yet."""
    run_id = queue_identity(run_id, attempt)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    # The Redis and SQS backends (and redis-py, boto3) are imported only when a URL names
    # them: a run on the embedded queue never pays for them (proctor.aws's docstring).
    if scheme in ("redis", "rediss", "unix"):
        from proctor.queue.redis import RedisQueue  # noqa: PLC0415 - backend on first use

        return RedisQueue.from_url(url, run_id, lease_seconds=lease_seconds)
    if scheme in ("sqs", "sqs+http", "sqs+https"):
        from proctor.queue.sqs import SqsQueue  # noqa: PLC0415 - backend on first use

        endpoint, region = _sqs_location(parts)
        return SqsQueue(run_id, lease_seconds=lease_seconds, endpoint_url=endpoint, region=region)
    if scheme == "sqlite":
        path = "/" + parts.path.lstrip("/") if parts.path.startswith("/") else parts.path
        return SqliteQueue(Path(path), run_id, lease_seconds=lease_seconds)
    raise _unknown(url)


class QueueConnections:
    """Clients shared by the queues of many runs: one Redis connection pool per URL, one SQS
    client per endpoint and region.

    The operator holds every run's queue open; a client per run would cost a connection pool
    (Redis) or 10-20 MB and tens of milliseconds (boto3) each. Queues from :meth:`open` share
    these clients, so they are given back with :meth:`release`, never closed one by one; the
    clients are closed with :meth:`close`. Both are thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: dict[tuple[str, ...], Any] = {}

    def _client(self, key: tuple[str, ...], make: Any) -> Any:
        with self._lock:
            if key not in self._clients:
                self._clients[key] = make()
            return self._clients[key]

    def open(
        self,
        url: str,
        run_id: str,
        *,
        lease_seconds: float = 60.0,
        credentials: Mapping[str, str] | None = None,
    ) -> WorkQueue:
        """Run ``run_id``'s queue at ``url`` on a shared client (the embedded queue has none
        to share and gets its own). ``credentials`` (AWS keys) sign SQS requests; without
        them the process's ambient credentials do, which the operator allows only for its own
        default queue."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme in ("redis", "rediss", "unix"):
            from redis import Redis, RedisError  # noqa: PLC0415 - backend on first use

            from proctor.queue.redis import RedisQueue  # noqa: PLC0415 - backend on first use

            def connect() -> Any:
                try:
                    client = Redis.from_url(url, socket_timeout=30, health_check_interval=30)
                    client.ping()
                except (RedisError, ValueError) as exc:
                    raise QueueError(
                        f"cannot reach Redis at {redact_url(url)}: {redact_text(str(exc))}; "
                        "check the queue URL and that Redis runs"
                    ) from exc
                return client

            client = self._client(("redis", url), connect)
            return RedisQueue(client, run_id, lease_seconds=lease_seconds)
        if scheme in ("sqs", "sqs+http", "sqs+https"):
            from proctor.queue.sqs import SqsQueue  # noqa: PLC0415 - backend on first use

            endpoint, region = _sqs_location(parts)

            keys = dict(credentials or {})

            def make_sqs() -> Any:
                return aws.client(
                    "sqs",
                    endpoint_url=endpoint,
                    region=region or "us-east-1",
                    credentials=keys,
                    max_attempts=10,
                )

            signer = tuple(keys.get(k, "") for k in sorted(keys))
            client = self._client(("sqs", endpoint or "", region or "", *signer), make_sqs)
            return SqsQueue(run_id, lease_seconds=lease_seconds, client=client)
        return open_queue(url, run_id, lease_seconds=lease_seconds)

    def shared(self, queue: WorkQueue) -> bool:
        """Whether ``queue`` runs on one of the shared clients."""
        client = getattr(queue, "client", None)
        with self._lock:
            return any(client is c for c in self._clients.values())

    def release(self, queue: WorkQueue) -> None:
        """Done with ``queue``: closed if it owns its connections, kept if they are shared."""
        if not self.shared(queue):
            queue.close()

    def close(self) -> None:
        with self._lock:
            clients = list(self._clients.values())
            self._clients.clear()
        for client in clients:
            client.close()
