"""Results storage on a local folder and on S3 (moto): exactly-once objects, progress, retries."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse

from proctor.queue import Range
from proctor.storage import IntervalSet, LocalBlobs, RunProgress, RunStorage, S3Blobs


def _records(r: Range, passed: bool = True) -> list[dict[str, Any]]:
    return [
        {"index": i, "status": "passed" if passed else "failed", "durationMs": 0.1, "error": None,
         "violations": [] if passed else ["p"]}
        for i in range(r.start, r.end)
    ]  # fmt: skip


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path, run_id: str) -> RunStorage:
    if request.param == "local":
        return RunStorage(LocalBlobs(tmp_path), run_id)
    moto = request.getfixturevalue("moto_url")
    bucket = request.getfixturevalue("s3_bucket")
    return RunStorage(S3Blobs(bucket, "runs", endpoint_url=moto, region="us-east-1"), run_id)


def test_interval_set() -> None:
    s = IntervalSet([(10, 20), (30, 40)])
    s.add(20, 25)
    assert s.intervals() == [(10, 25), (30, 40)]
    s.add(0, 5)
    s.add(24, 31)
    assert s.intervals() == [(0, 5), (10, 40)]
    assert len(s) == 35
    assert s.gaps(0, 50) == [(5, 10), (40, 50)]
    assert s.covers(12, 40)
    assert not s.covers(4, 6)
    assert s.contains(39)
    assert not s.contains(40)


@pytest.mark.integration
def test_results_written_once(storage: RunStorage) -> None:
    first = storage.write_results(Range(0, 3), _records(Range(0, 3)))
    again = storage.write_results(Range(0, 3), _records(Range(0, 3), passed=False))
    assert first.created
    assert not again.created
    assert [r["status"] for r in storage.iter_records()] == ["passed"] * 3
    with pytest.raises(ValueError, match="need 2 records"):
        storage.write_results(Range(3, 5), _records(Range(3, 4)))


@pytest.mark.integration
def test_overlapping_objects_count_each_index_once(storage: RunStorage) -> None:
    # A lost lease can leave [0, 10) and [0, 4) + [4, 10) or a shifted split; never twice.
    storage.write_results(Range(0, 4), _records(Range(0, 4)))
    storage.write_results(Range(0, 10), _records(Range(0, 10)))
    storage.write_results(Range(4, 12), _records(Range(4, 12)))
    storage.write_results(Range(20, 25), _records(Range(20, 25)))
    indexes = [r["index"] for r in storage.iter_records()]
    assert indexes == [*range(12), *range(20, 25)]
    assert storage.result_ranges(Range(4, 20)) == [Range(4, 12)]
    progress = RunProgress(storage, total=25)
    assert progress.refresh() == 17
    assert progress.aggregate.total == 17
    assert progress.refresh() == 0
    storage.write_results(Range(12, 20), _records(Range(12, 20), passed=False))
    assert progress.refresh() == 8
    snap = progress.snapshot()
    assert (snap.completed, snap.passed, snap.failed) == (25, 17, 8)
    assert snap.finished


@pytest.mark.integration
def test_checkpoint_resume_reads_only_new_objects(storage: RunStorage) -> None:
    storage.write_results(Range(0, 5), _records(Range(0, 5)))
    progress = RunProgress(storage, total=10)
    progress.refresh()
    storage.write_dead_letter(Range(7, 10), 3, "crashed its worker 3 times")
    assert progress.checkpoint() > 0
    # Rewrite [0, 5) as failures behind the reader's back: a resumed reader must not re-read it.
    storage.blobs.put(storage.result_key(Range(0, 5)), storage.encode_results(
        _records(Range(0, 5), passed=False)))  # fmt: skip
    storage.write_results(Range(5, 7), _records(Range(5, 7)))
    resumed = RunProgress.resume(storage, total=10)
    assert resumed.covered.intervals() == [(0, 5)]
    resumed.refresh()
    snap = resumed.snapshot()
    assert (snap.completed, snap.passed, snap.dead_lettered) == (7, 7, 3)
    assert snap.finished


@pytest.mark.integration
def test_task_state_round_trip(storage: RunStorage) -> None:
    assert storage.get_state("cases/3/x") is None
    storage.put_state("cases/3/x", b"abc")
    storage.put_state("cases/3/x", b"abcd")
    assert storage.get_state("cases/3/x") == b"abcd"


@pytest.mark.integration
def test_injected_s3_errors_are_retried(moto_url: str, s3_bucket: str, run_id: str) -> None:
    client: Any = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1")
    failures = {"left": 12, "seen": 0}

    def fail_some(**kwargs: Any) -> AWSResponse | None:
        if failures["left"] > 0:
            failures["left"] -= 1
            failures["seen"] += 1
            return AWSResponse(
                kwargs["request"].url, 503, {}, _Raw(b"<Error><Code>SlowDown</Code></Error>")
            )
        return None

    client.meta.events.register("before-send.s3.PutObject", fail_some)
    blobs = S3Blobs(s3_bucket, "runs", client=client)
    storage = RunStorage(blobs, run_id)
    for start in range(0, 40, 10):
        storage.write_results(Range(start, start + 10), _records(Range(start, start + 10)))
    assert failures["seen"] == 12
    assert [r["index"] for r in storage.iter_records()] == list(range(40))


@pytest.mark.integration
def test_put_file_streams_the_whole_file_and_replaces(storage: RunStorage) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    with tempfile.TemporaryFile() as spool:
        spool.write(b"old")
        storage.blobs.put_file("merged/x.parquet", spool)  # read from the start, not the end
        assert storage.blobs.get("merged/x.parquet") == b"old"
        spool.seek(0)
        spool.write(body)
        storage.blobs.put_file("merged/x.parquet", spool)
    assert storage.blobs.get("merged/x.parquet") == body


@pytest.mark.integration
def test_put_file_sends_the_whole_file_again_on_a_retry(moto_url: str, s3_bucket: str) -> None:
    client: Any = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1")
    failures = {"left": 6}

    def fail_some(**kwargs: Any) -> AWSResponse | None:
        if failures["left"] > 0:
            failures["left"] -= 1
            return AWSResponse(
                kwargs["request"].url, 503, {}, _Raw(b"<Error><Code>SlowDown</Code></Error>")
            )
        return None

    client.meta.events.register("before-send.s3.PutObject", fail_some)
    blobs = S3Blobs(s3_bucket, "runs", client=client)
    body = b"0123456789" * 100_000
    with tempfile.TemporaryFile() as spool:
        spool.write(body)
        blobs.put_file("results.parquet", spool)
    assert failures["left"] == 0
    assert blobs.get("results.parquet") == body


class _Raw:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **_: Any) -> Any:
        yield self.data

    def read(self, *_: Any, **__: Any) -> bytes:
        data, self.data = self.data, b""
        return data


class CountingBlobs(LocalBlobs):
    """A local folder that counts the result keys its listings return."""

    listed = 0

    def list(self, prefix: str, start_after: str = "") -> Iterator[str]:
        for key in super().list(prefix, start_after):
            if "/results/" in key:
                self.listed += 1
            yield key


@pytest.mark.integration
def test_refresh_lists_only_from_the_recorded_prefix_on(tmp_path: Path, run_id: str) -> None:
    # Listing every object on every refresh made a coordinator's reads grow with the square of
    # the run (4,000 objects listed 4 times a second at 1M cases): issue 21.
    blobs = CountingBlobs(tmp_path)
    storage = RunStorage(blobs, run_id)
    for start in range(0, 500, 10):
        storage.write_results(Range(start, start + 10), _records(Range(start, start + 10)))
    progress = RunProgress(storage, total=1000)
    assert progress.refresh() == 500
    assert blobs.listed == 50  # the first refresh lists everything
    blobs.listed = 0
    storage.write_results(Range(510, 520), _records(Range(510, 520)))
    storage.write_results(Range(500, 510), _records(Range(500, 510)))
    assert progress.refresh() == 20
    # From the prefix's end less the longest object: [490, 500) and the two new ones.
    assert blobs.listed == 3
    assert progress.snapshot().completed == 520


@pytest.mark.integration
def test_an_object_behind_the_prefix_is_found_by_the_next_full_listing(
    tmp_path: Path, run_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker that lost its lease can write a split of a range another worker wrote whole:
    # an object starting inside the counted prefix and reaching past it.
    storage = RunStorage(LocalBlobs(tmp_path), run_id)
    storage.write_results(Range(0, 5), _records(Range(0, 5)))
    storage.write_results(Range(5, 10), _records(Range(5, 10)))
    progress = RunProgress(storage, total=12)
    assert progress.refresh() == 10
    storage.write_results(Range(2, 12), _records(Range(2, 12)))
    monkeypatch.setattr("proctor.storage.progress.FULL_LISTING_SECONDS", 3600.0)
    assert progress.refresh() == 0  # listed from 5 on: not seen yet
    monkeypatch.setattr("proctor.storage.progress.FULL_LISTING_SECONDS", 0.0)
    assert progress.refresh() == 2
    snap = progress.snapshot()
    assert (snap.completed, snap.passed) == (12, 12)
    assert snap.finished
