"""The worker against real Redis, moto's S3/SQS and the embedded queue: exactly-once results
under SIGKILL, SIGTERM handback, poison cases, S3 errors and a 1M-case run."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse

from proctor.api.v1alpha1.evalrun import FIRST_BATCH, EvalRunSpec
from proctor.queue import enqueue_run, open_queue
from proctor.sdk import CaseInterrupted, Property, PythonTask, Task
from proctor.storage import RunProgress, RunStorage, S3Blobs, open_storage
from proctor.worker.runtime import BatchSizer, Worker, WorkerConfig

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration


def make_spec(
    task: str = "Faulty",
    params: dict[str, Any] | None = None,
    *,
    count: int = 100,
    size: int = 10,
    retries: int = 3,
    max_size: int | None = None,
    target: str = "10s",
) -> EvalRunSpec:
    return EvalRunSpec.model_validate(
        {
            "image": "test",
            "task": {"entrypoint": f"tests.test_worker_tasks:{task}", "params": params or {}},
            "cases": {"count": count},
            "batch": {
                "initialSize": size,
                "minSize": 1,
                "maxSize": max_size or size,
                "targetDuration": target,
            },
            "retries": retries,
            "caseTimeout": "30s",
        }
    )


def spawn(config: WorkerConfig, extra: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update(config.env())
    env.update(extra or {})
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PROCTOR_LOG_FORMAT"] = "json"
    return subprocess.Popen(
        [sys.executable, "-m", "proctor", "worker"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def raw_indexes(storage: RunStorage) -> list[int]:
    """Every record of every object, duplicates included."""
    return [rec["index"] for _, key in storage.result_keys() for rec in storage.read_object(key)]


def assert_exactly_once(storage: RunStorage, count: int, missing: set[int] = frozenset()) -> None:  # type: ignore[assignment]
    expected = [i for i in range(count) if i not in missing]
    assert sorted(raw_indexes(storage)) == expected
    assert [r["index"] for r in storage.iter_records()] == expected


def local(tmp_path: Path, run_id: str, spec: EvalRunSpec, lease: float = 1.0) -> WorkerConfig:
    return WorkerConfig(
        run_id=run_id,
        spec=spec,
        queue_url=f"sqlite://{tmp_path / 'queue.sqlite3'}",
        storage_uri=str(tmp_path / "results"),
        lease_seconds=lease,
        poll_interval=0.1,
    )


def test_batch_sizer_moves_toward_target() -> None:
    sizer = BatchSizer(make_spec(size=100, max_size=10_000, target="1s").batch)  # type: ignore[arg-type]
    for _ in range(20):
        sizer.observe(sizer.size, sizer.size * 0.001)  # 1 ms per case -> 1000 per second
    assert 800 <= sizer.size <= 1200
    for _ in range(20):
        sizer.observe(sizer.size, sizer.size * 0.1)  # 100 ms per case -> 10
    assert 8 <= sizer.size <= 12


@pytest.mark.parametrize(
    ("initial", "min_size", "first"),
    [
        (250, 1, FIRST_BATCH),  # cut short: the first record lands quickly
        (100, 20, 20),  # never below minSize
        (5, 1, 5),  # already small
        (FIRST_BATCH, 1, FIRST_BATCH),
    ],
)
def test_a_workers_first_batch_is_small_and_sizing_then_starts_from_initial_size(
    initial: int, min_size: int, first: int
) -> None:
    spec = make_spec(size=initial, max_size=10_000, target="1s")
    sizer = BatchSizer(spec.batch.model_copy(update={"min_size": min_size}))
    assert sizer.size == first
    sizer.observe(first, first * 10.0)  # a slow warm-up: not held against the next batches
    if first < initial:
        assert sizer.size == initial
    else:
        assert sizer.size == max(min_size, initial // 2)  # timed as any batch


def test_errors_become_records_in_process(tmp_path: Path, run_id: str) -> None:
    spec = make_spec(params={"raise": [3, 41], "fail": [7]}, count=50, size=20)
    worker = Worker(local(tmp_path, run_id, spec))
    enqueue_run(worker.queue, worker.storage, spec)
    assert worker.run() == 0
    by_index = {r["index"]: r for r in worker.storage.iter_records()}
    assert by_index[3]["status"] == "errored"
    assert "boom at 3" in by_index[3]["error"]
    assert by_index[7]["status"] == "failed"
    assert worker.stats.statuses == Counter(passed=47, errored=2, failed=1)
    assert_exactly_once(worker.storage, 50)
    text = worker.metrics.registry.get_sample_value(
        "proctor_worker_cases_total", {"status": "errored"}
    )
    assert text == 2


def test_sigkill_mid_batch_redis_s3(
    redis_url: str, moto_url: str, s3_bucket: str, run_id: str, aws_env: dict[str, str]
) -> None:
    spec = make_spec(params={"sleep_ms": 3}, count=800, size=50)
    config = WorkerConfig(
        run_id=run_id,
        spec=spec,
        queue_url=redis_url,
        storage_uri=f"s3://{s3_bucket}/runs",
        storage_endpoint=moto_url,
        lease_seconds=1.0,
    )
    storage = open_storage(config.storage_uri, run_id, endpoint=moto_url, region="us-east-1")
    queue = open_queue(redis_url, run_id, lease_seconds=1.0)
    enqueue_run(queue, storage, spec)
    victim = spawn(config, {**aws_env, "PROCTOR_WORKER_ID": "victim"})
    survivor = spawn(config, {**aws_env, "PROCTOR_WORKER_ID": "survivor"})
    deadline = time.monotonic() + 30
    while len(storage.result_ranges()) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert queue.depth().in_flight >= 1
    victim.kill()
    victim.wait()
    assert survivor.wait(timeout=120) == 0, survivor.stdout.read().decode()[-3000:]  # type: ignore[union-attr]
    assert queue.depth().empty
    assert_exactly_once(storage, 800)


def test_sigterm_hands_back_and_flushes_within_2s(
    redis_url: str, tmp_path: Path, run_id: str
) -> None:
    spec = make_spec(params={"sleep_ms": 20}, count=400, size=200)
    config = WorkerConfig(
        run_id=run_id, spec=spec, queue_url=redis_url, storage_uri=str(tmp_path), lease_seconds=30
    )
    storage = open_storage(str(tmp_path), run_id)
    queue = open_queue(redis_url, run_id, lease_seconds=30)
    enqueue_run(queue, storage, spec)
    proc = spawn(config)
    deadline = time.monotonic() + 30
    while queue.depth().in_flight == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.5)  # well inside the first 4-second batch
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    elapsed = time.monotonic() - t0
    assert elapsed < 2.0, f"SIGTERM to exit took {elapsed:.2f}s"
    done = storage.result_ranges()  # the first small batch, then the interrupted one's part
    assert done[0].start == 0
    assert all(a.end == b.start for a, b in itertools.pairwise(done))
    end = done[-1].end
    assert FIRST_BATCH < end < 200
    depth = queue.depth()
    assert depth.in_flight == 0
    assert depth.cases == 400 - end
    # A second worker finishes the handed-back remainder and the untouched batch.
    assert Worker(config).run() == 0
    assert_exactly_once(storage, 400)


def test_sigterm_abandons_a_case_that_does_not_stop(tmp_path: Path, run_id: str) -> None:
    spec = make_spec(params={"sleep_ms": 10_000}, count=4, size=4)
    config = local(tmp_path, run_id, spec, lease=30)
    config.shutdown_grace = 0.5
    worker = Worker(config)
    enqueue_run(worker.queue, worker.storage, spec)
    proc = spawn(config)
    while worker.queue.depth().in_flight == 0:
        time.sleep(0.02)
    time.sleep(0.3)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert time.monotonic() - t0 < 2.0
    depth = worker.queue.depth()
    assert (depth.waiting, depth.in_flight, depth.cases) == (1, 0, 4)


def test_task_state_resumes_after_sigterm(tmp_path: Path, run_id: str) -> None:
    spec = make_spec("Stateful", {"steps": 200, "every": 10, "step_ms": 10}, count=1, size=1)
    config = local(tmp_path, run_id, spec, lease=30)
    worker = Worker(config)
    enqueue_run(worker.queue, worker.storage, spec)
    proc = spawn(config)
    storage = worker.storage
    deadline = time.monotonic() + 30
    while storage.get_state("cases/0/progress") is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    from proctor.sdk.state import decode_state

    saved = decode_state(storage.get_state("cases/0/progress") or b"")
    assert 0 < saved["step"] < 200
    assert worker.run() == 0
    (record,) = storage.iter_records()
    assert record["status"] == "passed"
    assert worker.metrics.registry.get_sample_value("proctor_worker_checkpoint_bytes_total")


def test_poison_case_is_recorded_as_crashed(tmp_path: Path, run_id: str) -> None:
    spec = make_spec(params={"crash": [37]}, count=100, size=50, retries=3)
    config = local(tmp_path, run_id, spec, lease=0.5)
    queue = open_queue(config.queue_url, run_id, lease_seconds=0.5)
    storage = open_storage(config.storage_uri, run_id)
    enqueue_run(queue, storage, spec)
    codes = []
    for _ in range(8):
        codes.append(spawn(config).wait(timeout=60))
        if queue.depth().empty:
            break
        time.sleep(0.6)
    assert codes == [70, 0]  # one crash; the next worker evaluates the entry in isolation
    assert storage.dead_letters() == []
    assert_exactly_once(storage, 100)
    record = next(r for r in storage.iter_records() if r["index"] == 37)
    assert (record["status"], record["errorType"]) == ("errored", "crashed")
    assert "exit code 70" in record["error"]


def test_poison_batch_is_dead_lettered_without_retries(tmp_path: Path, run_id: str) -> None:
    # With one attempt allowed (retries: 1) nothing is isolated: the entry is set aside.
    spec = make_spec(params={"crash": [37]}, count=100, size=50, retries=1)
    config = local(tmp_path, run_id, spec, lease=0.5)
    queue = open_queue(config.queue_url, run_id, lease_seconds=0.5)
    storage = open_storage(config.storage_uri, run_id)
    enqueue_run(queue, storage, spec)
    codes = []
    for _ in range(8):
        codes.append(spawn(config).wait(timeout=60))
        if queue.depth().empty:
            break
        time.sleep(0.6)
    assert codes == [70, 0], codes
    # The worker's first batch (FIRST_BATCH cases) was recorded before the crash: the rest of
    # the entry is set aside.
    (dead,) = storage.dead_letters()
    assert (dead["start"], dead["end"], dead["deliveries"]) == (FIRST_BATCH, 50, 1)
    assert "crashed or stalled the worker" in dead["reason"]
    assert [(d.range.start, d.range.end) for d in queue.dead_letters()] == [(FIRST_BATCH, 50)]
    assert_exactly_once(storage, 100, missing=set(range(FIRST_BATCH, 50)))
    progress = RunProgress(storage, 100)
    progress.refresh()
    snap = progress.snapshot()
    assert (snap.completed, snap.dead_lettered, snap.finished) == (60, 40, True)


def test_s3_errors_during_a_run_lose_nothing(
    moto_url: str, s3_bucket: str, tmp_path: Path, run_id: str
) -> None:
    client: Any = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1")
    calls = {"n": 0, "failed": 0}

    def flaky(**kwargs: Any) -> AWSResponse | None:
        calls["n"] += 1
        if calls["n"] % 3 == 0:  # every third request fails
            calls["failed"] += 1
            return AWSResponse(
                kwargs["request"].url, 500, {}, _Raw(b"<Error><Code>InternalError</Code></Error>")
            )
        return None

    client.meta.events.register("before-send.s3", flaky)
    spec = make_spec(count=300, size=20)
    storage = RunStorage(S3Blobs(s3_bucket, "runs", client=client), run_id)
    worker = Worker(local(tmp_path, run_id, spec), storage=storage)
    enqueue_run(worker.queue, storage, spec)
    assert worker.run() == 0
    assert calls["failed"] >= 5
    clean = RunStorage(
        S3Blobs(s3_bucket, "runs", endpoint_url=moto_url, region="us-east-1"), run_id
    )
    assert_exactly_once(clean, 300)


def test_sqs_queue_end_to_end(
    moto_url: str, s3_bucket: str, run_id: str, aws_env: dict[str, str]
) -> None:
    spec = make_spec(count=200, size=25)
    config = WorkerConfig(
        run_id=run_id,
        spec=spec,
        queue_url="sqs://" + moto_url.removeprefix("http://"),
        storage_uri=f"s3://{s3_bucket}/runs",
        storage_endpoint=moto_url,
        lease_seconds=5,
    )
    storage = open_storage(config.storage_uri, run_id, endpoint=moto_url, region="us-east-1")
    queue = open_queue(config.queue_url, run_id, lease_seconds=5)
    enqueue_run(queue, storage, spec)
    assert enqueue_run(queue, storage, spec) == 0
    procs = [spawn(config, aws_env) for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stdout.read().decode()[-3000:]  # type: ignore[union-attr]
    assert_exactly_once(storage, 200)


@pytest.mark.slow
def test_million_cases_keep_worker_memory_flat(tmp_path: Path, run_id: str) -> None:
    count = 1_000_000
    spec = make_spec("Noop", count=count, size=10_000)
    config = local(tmp_path, run_id, spec, lease=30)
    queue = open_queue(config.queue_url, run_id, lease_seconds=30)
    storage = open_storage(config.storage_uri, run_id)
    enqueue_run(queue, storage, spec)
    proc = spawn(config)
    samples: list[tuple[int, int]] = []  # (cases done, RSS kB)
    status = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            rss = next(
                int(line.split()[1])
                for line in status.read_text().splitlines()
                if line.startswith("VmRSS")
            )
        except (FileNotFoundError, StopIteration, ProcessLookupError):
            break
        samples.append((len(storage.result_ranges()) * 10_000, rss))
        time.sleep(0.1)  # the batch path does 1M no-op cases in seconds: sample often
    assert proc.wait() == 0
    early = [rss for done, rss in samples if 100_000 <= done <= 250_000]
    late = [rss for done, rss in samples if done >= 800_000]
    assert early, samples
    assert late, samples
    growth_mb = (max(late) - min(early)) / 1024
    print(json.dumps({"early_rss_mb": min(early) / 1024, "late_rss_mb": max(late) / 1024}))
    assert growth_mb < 20, f"worker RSS grew {growth_mb:.1f} MB from 10% to the end"
    assert sum(1 for _ in storage.iter_records()) == count


class _Raw:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **_: Any) -> Any:
        yield self.data

    def read(self, *_: Any, **__: Any) -> bytes:
        data, self.data = self.data, b""
        return data


class _SwallowsTheAbandon(Task):
    """Case 2 asks its worker to stop and sleeps past the shutdown grace, catching whatever
    interrupts it (BaseException): it returns -1, which violates ``non_negative``."""

    properties = (Property("non_negative", lambda case, out: out >= 0),)

    def __init__(self, worker: Worker) -> None:
        super().__init__()
        self.worker = worker

    def generate(self, seed: int, index: int) -> int:
        return index

    def solve(self, case: int) -> int:
        if case != 2:
            return case
        self.worker.request_stop("test")
        try:
            time.sleep(5.0)
        except BaseException:
            return -1
        return case


def test_finding_a_case_abandoned_at_shutdown_is_not_recorded_though_it_swallowed_that(
    tmp_path: Path, run_id: str
) -> None:
    spec = make_spec(count=6, size=6)
    config = local(tmp_path, run_id, spec, lease=30)
    config.shutdown_grace = 0.2
    box: list[Worker] = []
    worker = Worker(config, loader=lambda spec: PythonTask(_SwallowsTheAbandon(box[0]), 0, None))
    box.append(worker)
    enqueue_run(worker.queue, worker.storage, spec)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    worker.install_signal_handlers()
    try:
        assert worker.run() == 0
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    # Case 2 was cut short by the worker, not judged: it goes back to the queue with the rest.
    assert [r["index"] for r in worker.storage.iter_records()] == [0, 1]
    depth = worker.queue.depth()
    assert (depth.waiting, depth.in_flight, depth.cases) == (1, 0, 4)


class _InterruptsWithoutAStop(Task):
    """Case 2 raises CaseInterrupted though no stop was requested (a task's bug)."""

    def generate(self, seed: int, index: int) -> int:
        return index

    def solve(self, case: int) -> int:
        if case == 2:
            raise CaseInterrupted
        return case


def test_finding_a_case_interrupted_with_no_stop_is_errored_not_handed_back_for_ever(
    tmp_path: Path, run_id: str
) -> None:
    spec = make_spec(count=6, size=6)
    config = local(tmp_path, run_id, spec, lease=30)
    worker = Worker(config, loader=lambda spec: PythonTask(_InterruptsWithoutAStop(), 0, None))
    enqueue_run(worker.queue, worker.storage, spec)
    timer = threading.Timer(20.0, worker.request_stop, args=("the test's deadline",))
    timer.start()
    try:
        assert worker.run() == 0
    finally:
        timer.cancel()
    assert worker.stats.exit_reason == "no work left"
    records = list(worker.storage.iter_records())
    assert [r["index"] for r in records] == list(range(6))
    assert records[2]["status"] == "errored"
    assert "CaseInterrupted" in records[2]["error"]
