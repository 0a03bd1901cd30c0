"""Checkpoint overhead: the share of wall time a worker spends writing checkpoints.

Long cases (``Stateful``: 50 steps of 10 ms) save their state every 25 steps (every 0.25 s,
far more often than a real task would) through ``save_state`` into the run's storage, and the
coordinator writes the run checkpoint every second. The figure is checkpoint time (task-level
from the worker's ``proctor_worker_checkpoint_duration_seconds``, plus the run checkpoints) over
wall time; the same run without checkpoints is timed for comparison. Real Redis queue, local
results folder (``--s3`` for moto's S3). Target: <= 3%.

    python e2e/bench/checkpoint.py [--cases N] [--s3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from e2e.harness.services import moto_server, redis_server  # noqa: E402
from proctor.api.v1alpha1.evalrun import EvalRunSpec  # noqa: E402
from proctor.logging import configure_logging  # noqa: E402
from proctor.queue import enqueue_run  # noqa: E402
from proctor.storage import RunProgress  # noqa: E402
from proctor.worker.runtime import Worker, WorkerConfig  # noqa: E402


def run(
    redis_url: str, storage_uri: str, cases: int, every: int, endpoint: str | None
) -> tuple[float, float]:
    spec = EvalRunSpec.model_validate(
        {
            "image": "bench",
            "task": {
                "entrypoint": "tests.test_worker_tasks:Stateful",
                "params": {"steps": 50, "every": every, "step_ms": 10},
            },
            "cases": {"count": cases},
            "batch": {"initialSize": 2, "maxSize": 2},
        }
    )
    config = WorkerConfig(
        run_id=f"ckpt-{every}-{time.monotonic_ns()}",
        spec=spec,
        queue_url=redis_url,
        storage_uri=storage_uri,
        storage_endpoint=endpoint,
        storage_region="us-east-1" if endpoint else None,
    )
    worker = Worker(config)
    enqueue_run(worker.queue, worker.storage, spec)
    progress = RunProgress(worker.storage, cases)
    run_ckpt = [0.0]
    done = threading.Event()

    def coordinator() -> None:
        while not done.wait(1.0):
            progress.refresh()  # progress reporting, done with or without checkpoints
            t0 = time.perf_counter()
            progress.checkpoint()
            run_ckpt[0] += time.perf_counter() - t0

    thread = threading.Thread(target=coordinator, daemon=True)
    if every <= 50:
        thread.start()
    t0 = time.perf_counter()
    assert worker.run() == 0
    wall = time.perf_counter() - t0
    done.set()
    if thread.is_alive():
        thread.join(timeout=5)
    task_ckpt = worker.metrics.registry.get_sample_value(
        "proctor_worker_checkpoint_duration_seconds_sum"
    )
    worker.queue.delete()
    return wall, (task_ckpt or 0.0) + run_ckpt[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=16)
    parser.add_argument("--s3", action="store_true", help="moto's S3 instead of a local folder")
    args = parser.parse_args()
    configure_logging(level="warning")
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(redis_server())
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        endpoint = None
        storage_uri = tmp
        if args.s3:
            import boto3

            moto = stack.enter_context(moto_server())
            os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
            os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
            boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1").create_bucket(
                Bucket="bench"
            )
            endpoint, storage_uri = moto.url, "s3://bench/runs"
        plain, _ = run(redis.url, storage_uri, args.cases, 10_000, endpoint)
        wall, spent = run(redis.url, storage_uri, args.cases, 25, endpoint)
    saves = args.cases * 2
    print(f"without checkpoints: {plain:.3f}s")
    print(
        f"with {saves} task checkpoints and a run checkpoint every second: {wall:.3f}s "
        f"(difference {100 * (wall - plain) / plain:+.2f}%)"
    )
    print(f"time in checkpoint writes: {spent:.4f}s")
    print(f"checkpoint overhead: {100 * spent / wall:.2f}% of wall time (target <= 3%)")


if __name__ == "__main__":
    main()
