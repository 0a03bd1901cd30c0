"""Lease holders: the queue names the workers that hold a lease (Redis, embedded) so that
scale-down can remove idle workers only; SQS cannot tell and says so with ``None``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from proctor.queue import Range, WorkQueue, open_queue

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "redis"])
def queue(request: pytest.FixtureRequest, tmp_path: Path, run_id: str) -> Iterator[WorkQueue]:
    if request.param == "sqlite":
        url = f"sqlite://{tmp_path / 'queue.sqlite3'}"
    else:
        url = request.getfixturevalue("redis_url")
    q = open_queue(url, run_id, lease_seconds=1.0)
    yield q
    q.delete()
    q.close()


def test_holders_follow_claims_and_acks(queue: WorkQueue) -> None:
    queue.enqueue([Range(0, 10), Range(10, 20), Range(20, 30)], chunk="0")
    assert queue.lease_holders() == frozenset()
    a = queue.claim(1, "worker-a")
    b = queue.claim(1, "worker-b")
    assert queue.lease_holders() == frozenset({"worker-a", "worker-b"})
    assert queue.depth().holders == frozenset({"worker-a", "worker-b"})
    assert queue.ack(a[0], "worker-a")
    assert queue.lease_holders() == frozenset({"worker-b"})
    assert queue.handback(b[0], "worker-b", [Range(15, 20)])
    assert queue.lease_holders() == frozenset()
    assert queue.depth().holders == frozenset()


def test_an_expired_lease_moves_to_its_new_holder(queue: WorkQueue) -> None:
    queue.enqueue([Range(0, 10)], chunk="0")
    assert queue.claim(1, "worker-a")
    time.sleep(1.2)
    assert queue.claim(1, "worker-b")
    assert queue.lease_holders() == frozenset({"worker-b"})


def test_sqs_cannot_name_holders(moto_url: str, run_id: str) -> None:
    q = open_queue("sqs://" + moto_url.removeprefix("http://"), run_id, lease_seconds=5.0)
    try:
        q.enqueue([Range(0, 10)], chunk="0")
        assert q.claim(1, "worker-a")
        assert q.lease_holders() is None
        depth = q.depth()
        assert depth.holders is None
        assert depth.in_flight == 1
    finally:
        q.delete()
        q.close()


def test_connections_share_one_client_per_url(redis_url: str, tmp_path: Path) -> None:
    from proctor.queue import QueueConnections

    conns = QueueConnections()
    a = conns.open(redis_url, "run-a", lease_seconds=5.0)
    b = conns.open(redis_url, "run-b", lease_seconds=5.0)
    embedded = conns.open(f"sqlite://{tmp_path / 'q.sqlite3'}", "run-c", lease_seconds=5.0)
    try:
        assert getattr(a, "client", None) is getattr(b, "client", None)
        assert conns.shared(a)
        assert not conns.shared(embedded)
        a.enqueue([Range(0, 5)], chunk="0")
        conns.release(a)  # shared: left open for b
        assert b.depth().total == 0
        assert a.depth().waiting == 1
    finally:
        conns.release(embedded)
        a.delete()
        conns.close()
