"""Work queues: index ranges of a run's cases, leased to workers.

``open_queue(url, run_id)`` picks the backend from the URL:

- ``redis://HOST:PORT/DB`` (or ``rediss://``): Redis Streams,
- ``sqs://`` (AWS, endpoint from ``AWS_ENDPOINT_URL_SQS``/``AWS_ENDPOINT_URL`` if set),
  ``sqs://HOST:PORT`` (an SQS-compatible endpoint over http) or ``sqs+https://HOST``;
  ``?region=`` sets the region (default ``AWS_REGION``/``AWS_DEFAULT_REGION``, else us-east-1),
- ``sqlite:///PATH``: the embedded queue in a SQLite file.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

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

__all__ = [
    "DeadLetter",
    "Lease",
    "QueueDepth",
    "QueueError",
    "Range",
    "WorkQueue",
    "enqueue_run",
    "open_queue",
    "partition",
    "subtract",
]


def open_queue(url: str, run_id: str, *, lease_seconds: float = 60.0) -> WorkQueue:
    """The queue of run ``run_id`` at ``url``, created if it does not exist yet."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("redis", "rediss", "unix"):
        from proctor.queue.redis import RedisQueue

        return RedisQueue.from_url(url, run_id, lease_seconds=lease_seconds)
    if scheme in ("sqs", "sqs+http", "sqs+https"):
        from proctor.queue.sqs import SqsQueue

        query = parse_qs(parts.query)
        region = (
            query.get("region", [None])[0]
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
        )
        endpoint = None
        if parts.netloc:
            tls = scheme == "sqs+https"
            endpoint = f"{'https' if tls else 'http'}://{parts.netloc}"
        return SqsQueue(run_id, lease_seconds=lease_seconds, endpoint_url=endpoint, region=region)
    if scheme == "sqlite":
        from proctor.queue.sqlite import SqliteQueue

        path = "/" + parts.path.lstrip("/") if parts.path.startswith("/") else parts.path
        return SqliteQueue(Path(path), run_id, lease_seconds=lease_seconds)
    raise QueueError(
        f"unknown queue URL {url!r}: use redis://HOST:PORT/DB, sqs://[HOST:PORT] or sqlite:///PATH"
    )
