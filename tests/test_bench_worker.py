"""The benchmark worker against a real redis-server (and moto's S3): every repetition recorded
exactly once, failures recorded not crashed, SIGTERM hands a half-done repetition back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proctor.api.v1alpha1.benchmarksuite import BenchmarkSuiteSpec
from proctor.bench.enqueue import enqueue_cell
from proctor.bench.matrix import cell_queue_id, cells, find_cell
from proctor.bench.store import SuiteStore
from proctor.bench.worker import BenchWorker, BenchWorkerConfig, ConfigError, open_suite_store
from proctor.queue import Range, WorkQueue, open_queue
from proctor.storage import LocalBlobs

ROOT = Path(__file__).resolve().parents[1]

# Appends one line per run to $LOG; sleeps 60 s (after writing $MARK) while $SLOW exists;
# exits with $CODE.
SCRIPT = """
import os, sys, time
with open(os.environ["LOG"], "a") as f:
    f.write("run\\n")
if os.path.exists(os.environ["SLOW"]):
    open(os.environ["MARK"], "w").close()
    time.sleep(60)
sys.exit(int(os.environ.get("CODE", "0")))
"""


def suite(tmp_path: Path, **bench: Any) -> BenchmarkSuiteSpec:
    env = [
        {"name": "LOG", "value": str(tmp_path / "runs.log")},
        {"name": "SLOW", "value": str(tmp_path / "slow")},
        {"name": "MARK", "value": str(tmp_path / "started")},
    ]
    return BenchmarkSuiteSpec.model_validate(
        {
            "image": "unused",
            "benchmarks": [
                {
                    "name": "b",
                    "command": [sys.executable, "-c", SCRIPT],
                    "env": env,
                    "warmup": 0,
                    "repetitions": 3,
                    "timeout": "30s",
                    **bench,
                }
            ],
            "variants": [{"name": "v"}],
        }
    )


@pytest.fixture
def config_for(redis_url: str, tmp_path: Path) -> Iterator[Any]:
    run = f"r-{uuid.uuid4().hex[:8]}"
    queues: list[WorkQueue] = []

    def make(spec: BenchmarkSuiteSpec, worker: str = "w1", lease: float = 5.0) -> BenchWorkerConfig:
        config = BenchWorkerConfig(
            spec=spec,
            namespace="ns",
            suite="s",
            run_id=run,
            cell="b.v",
            queue_url=redis_url,
            storage_uri=str(tmp_path / "store"),
            worker_id=worker,
            lease_seconds=lease,
            poll_interval=0.05,
        )
        q = open_queue(redis_url, config.queue_id, lease_seconds=lease)
        queues.append(q)
        return config

    yield make
    for q in queues:
        q.delete()
        q.close()


def enqueue(config: BenchWorkerConfig) -> WorkQueue:
    queue = open_queue(config.queue_url, config.queue_id, lease_seconds=config.lease_seconds or 5)
    store = open_suite_store(config)
    enqueue_cell(queue, store.cell_storage(config.cell), find_cell(config.spec, config.cell))
    return queue


def objects(store: SuiteStore, cell: str) -> list[str]:
    """The repetition objects of a cell in a local store, by file name."""
    assert isinstance(store.blobs, LocalBlobs)
    return sorted(
        p.name for p in (store.blobs.root / store.base / f"cells/{cell}/results").iterdir()
    )


def runs(tmp_path: Path) -> int:
    log = tmp_path / "runs.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_records_every_repetition_once_and_warmups_not_at_all(
    config_for: Any, tmp_path: Path
) -> None:
    config = config_for(suite(tmp_path, warmup=2))
    queue = enqueue(config)
    worker = BenchWorker(config, base_env=os.environ)
    assert worker.run() == 0
    assert worker.stats.exit_reason == "no work left"
    records = worker.store.records("b.v")
    assert [r["repetition"] for r in records] == [0, 1, 2]
    assert all(r["ok"] and r["exit_code"] == 0 and r["worker"] == "w1" for r in records)
    assert all(0 < r["wall_seconds"] < 10 and r["max_rss_bytes"] > 0 for r in records)
    assert runs(tmp_path) == 5  # two warmups, three repetitions
    assert objects(worker.store, "b.v") == [f"{i:012d}-{i + 1:012d}.jsonl.zst" for i in range(3)]
    assert queue.depth().empty
    # Enqueueing again (an operator restart, a lost Redis) adds nothing: all are recorded.
    assert enqueue_cell(queue, worker.store.cell_storage("b.v"), worker.cell) == 0


@pytest.mark.parametrize(
    ("bench", "env", "check"),
    [
        ({}, {"CODE": "3"}, lambda r: r["exit_code"] == 3 and "exited with 3" in r["error"]),
        (
            {"command": ["no-such-benchmark-binary"]},
            {},
            lambda r: r["exit_code"] == 127 and "cannot start" in r["error"],
        ),
        (
            {"timeout": "300ms"},
            {"SLOW_NOW": "1"},
            lambda r: r["timed_out"] and "timed out" in r["error"],
        ),
    ],
    ids=["exit-code", "not-found", "timeout"],
)
def test_a_failing_command_is_a_failed_repetition_not_a_crashed_worker(
    config_for: Any, tmp_path: Path, bench: dict[str, Any], env: dict[str, str], check: Any
) -> None:
    config = config_for(suite(tmp_path, **bench))
    if env.pop("SLOW_NOW", None):
        (tmp_path / "slow").touch()
    enqueue(config)
    worker = BenchWorker(config, base_env={**os.environ, **env})
    assert worker.run() == 0
    records = worker.store.records("b.v")
    assert len(records) == 3
    assert worker.stats.failed == 3
    for r in records:
        assert r["ok"] is False
        assert check(r), r


def _worker_process(config: BenchWorkerConfig, tmp_path: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update(config.env())
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "operator"), env.get("PYTHONPATH", "")])
    env["PROCTOR_LOG_FORMAT"] = "json"
    log = (tmp_path / f"{config.worker_id}.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "proctor", "bench-worker"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _wait_for(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def test_sigterm_mid_repetition_hands_it_back_and_a_second_worker_records_it_once(
    config_for: Any, tmp_path: Path
) -> None:
    spec = suite(tmp_path)
    first = config_for(spec, worker="first")
    queue = enqueue(first)
    (tmp_path / "slow").touch()
    proc = _worker_process(first, tmp_path)
    _wait_for(tmp_path / "started")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    lines = [
        json.loads(x)
        for x in (tmp_path / "first.log").read_text().splitlines()
        if x.startswith("{")
    ]
    assert any(x.get("event") == "repetition handed back" and x["repetition"] == 0 for x in lines)
    store = open_suite_store(first)
    assert store.records("b.v") == []  # nothing half-done was recorded
    depth = queue.depth()
    assert (depth.waiting, depth.in_flight) == (3, 0)  # handed back at once, not left to expire

    (tmp_path / "slow").unlink()
    second = BenchWorker(config_for(spec, worker="second"), base_env=os.environ)
    assert second.run() == 0
    records = store.records("b.v")
    assert [(r["repetition"], r["worker"]) for r in records] == [(i, "second") for i in range(3)]
    assert len(objects(store, "b.v")) == 3
    assert runs(tmp_path) == 4  # the interrupted run, then each repetition once


def test_sigkill_mid_repetition_is_rerun_after_the_lease_expires(
    config_for: Any, tmp_path: Path
) -> None:
    spec = suite(tmp_path, repetitions=1)
    first = config_for(spec, worker="first", lease=1.0)
    enqueue(first)
    (tmp_path / "slow").touch()
    proc = _worker_process(first, tmp_path)
    _wait_for(tmp_path / "started")
    proc.kill()
    proc.wait(10)
    (tmp_path / "slow").unlink()
    second = BenchWorker(config_for(spec, worker="second", lease=1.0), base_env=os.environ)
    assert second.run() == 0
    records = second.store.records("b.v")
    assert [(r["repetition"], r["worker"], r["ok"]) for r in records] == [(0, "second", True)]


def test_a_repetition_that_keeps_killing_workers_is_recorded_failed(
    config_for: Any, tmp_path: Path
) -> None:
    spec = suite(tmp_path, repetitions=1)
    config = config_for(spec, lease=0.2)
    queue = enqueue(config)
    for _ in range(3):  # three workers claim it and die
        assert queue.claim(1, "doomed")
        time.sleep(0.3)
    worker = BenchWorker(config, base_env=os.environ)
    assert worker.run() == 0
    (record,) = worker.store.records("b.v")
    assert not record["ok"]
    assert "3 workers were lost" in record["error"]
    assert runs(tmp_path) == 0


def test_a_repetition_recorded_before_its_ack_is_not_run_again(
    config_for: Any, tmp_path: Path
) -> None:
    spec = suite(tmp_path, repetitions=2)
    config = config_for(spec)
    enqueue(config)
    store = open_suite_store(config)
    store.write_record(
        "b.v", {"benchmark": "b", "variant": "v", "repetition": 0, "ok": True, "wall_seconds": 1.0}
    )
    worker = BenchWorker(config, base_env=os.environ)
    assert worker.run() == 0
    assert worker.stats.skipped == 1
    assert store.records("b.v")[0]["wall_seconds"] == 1.0
    assert runs(tmp_path) == 1


def test_records_go_to_s3(
    redis_url: str, s3_bucket: str, aws_env: dict[str, str], tmp_path: Path
) -> None:
    spec = suite(tmp_path, repetitions=2)
    config = BenchWorkerConfig(
        spec=spec,
        namespace="ns",
        suite="s",
        run_id=uuid.uuid4().hex[:8],
        cell="b.v",
        queue_url=redis_url,
        storage_uri=f"s3://{s3_bucket}/suites",
        storage_endpoint=aws_env["AWS_ENDPOINT_URL"],
        worker_id="s3w",
        lease_seconds=5,
    )
    queue = enqueue(config)
    try:
        worker = BenchWorker(config, base_env=os.environ)
        assert worker.run() == 0
        assert [r["repetition"] for r in worker.store.records("b.v")] == [0, 1]
        assert worker.store.cell_ids() == ["b.v"]
        assert worker.store.results_uri.startswith(f"s3://{s3_bucket}/suites/ns/s/")
    finally:
        queue.delete()


def test_config_round_trips_through_the_environment(tmp_path: Path) -> None:
    spec = suite(tmp_path)
    config = BenchWorkerConfig(
        spec=spec,
        namespace="ns",
        suite="s",
        run_id="uid-1",
        cell="b.v",
        queue_url="redis://localhost:6379/0",
        storage_uri="s3://bucket/prefix",
        worker_id="pod-1",
        node_name="node-a",
        storage_endpoint="http://moto:5000",
        lease_seconds=30.0,
    )
    again = BenchWorkerConfig.from_env(config.env())
    assert again == config
    assert again.queue_id == cell_queue_id("ns", "s", "uid-1", "b.v")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"PROCTOR_QUEUE_URL": ""}, "PROCTOR_QUEUE_URL is not set"),
        ({"PROCTOR_CELL": "b.nope"}, "no cell 'b.nope'; its cells are: b.v"),
        ({"PROCTOR_SUITE_SPEC": "{"}, "PROCTOR_SUITE_SPEC is not JSON"),
    ],
)
def test_bad_configuration_says_what_to_set(
    tmp_path: Path, change: dict[str, str], message: str
) -> None:
    config = BenchWorkerConfig(
        spec=suite(tmp_path),
        namespace="ns",
        suite="s",
        run_id="r",
        cell="b.v",
        queue_url="redis://x",
        storage_uri="/tmp/x",
    )
    with pytest.raises(ConfigError, match=message):
        BenchWorkerConfig.from_env({**config.env(), **change})


def test_cells_and_queue_ids() -> None:
    spec = BenchmarkSuiteSpec.model_validate(
        {
            "image": "img",
            "profile": "small",
            "benchmarks": [
                {
                    "name": "status",
                    "command": ["sh", "-c", "x"],
                    "args": ["a"],
                    "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "b"}],
                },
                {
                    "name": "log",
                    "command": ["log"],
                    "image": "other",
                    "resources": {"cpu": "1", "memory": "1Gi"},
                    "timeout": "90s",
                },
            ],
            "variants": [
                {"name": "git", "env": [{"name": "B", "value": "git"}], "args": ["--git"]},
                {"name": "jj", "image": "jj-img"},
            ],
        }
    )
    got = cells(spec)
    assert [c.id for c in got] == ["status.git", "status.jj", "log.git", "log.jj"]
    assert got[0].command == ("sh", "-c", "x", "a", "--git")
    assert got[0].literal_env() == {"A": "1", "B": "git"}
    assert got[1].literal_env() == {"A": "1", "B": "b"}
    assert [c.image for c in got] == ["img", "jj-img", "other", "jj-img"]
    assert (got[0].profile, got[2].profile, got[2].timeout_seconds) == ("small", None, 90.0)
    ids = {cell_queue_id("ns", "suite", "uid", c.id) for c in got}
    assert len(ids) == 4
    long_id = cell_queue_id("n" * 63, "s" * 63, "u" * 36, "b" * 63 + "." + "v" * 63)
    assert len(f"proctor-{long_id}-dead.fifo") <= 80
    assert cell_queue_id("a", "b", "c", "d.e") != cell_queue_id("a", "b", "c2", "d.e")
    with pytest.raises(ValueError, match="its cells are"):
        find_cell(spec, "x.y")


def test_enqueue_leaves_out_recorded_repetitions(redis_url: str, tmp_path: Path) -> None:
    spec = suite(tmp_path, repetitions=4)
    cell = find_cell(spec, "b.v")
    store = SuiteStore(str(tmp_path / "st"), "ns", "s", "r")
    store.write_record("b.v", {"benchmark": "b", "variant": "v", "repetition": 2, "ok": True})
    queue = open_queue(redis_url, f"enq-{uuid.uuid4().hex[:8]}", lease_seconds=5)
    try:
        assert enqueue_cell(queue, store.cell_storage("b.v"), cell) == 3
        assert enqueue_cell(queue, store.cell_storage("b.v"), cell) == 0
        claimed = sorted(lease.range for lease in queue.claim(10, "w"))
        assert claimed == [Range(0, 1), Range(1, 2), Range(3, 4)]
    finally:
        queue.delete()
