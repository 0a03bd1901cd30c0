"""SIGTERM to flushed: from the signal to the worker's exit, with the finished cases of the
running batch recorded and the remainder handed back (real Redis queue, local results).

The batch is mid-flight when the signal comes (cases of 20 ms, batches of 200). The worker
exits only after its writes and the atomic handback, so process exit is "flushed". Target:
<= 2 s.

    python e2e/bench/sigterm.py [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from e2e.harness.services import redis_server  # noqa: E402
from proctor.api.v1alpha1.evalrun import EvalRunSpec  # noqa: E402
from proctor.queue import enqueue_run, open_queue  # noqa: E402
from proctor.storage import open_storage  # noqa: E402
from proctor.worker.runtime import WorkerConfig  # noqa: E402


def once(redis_url: str, folder: str) -> float:
    run_id = f"sigterm-{time.monotonic_ns()}"
    spec = EvalRunSpec.model_validate(
        {
            "image": "bench",
            "task": {"entrypoint": "tests.test_worker_tasks:Faulty", "params": {"sleep_ms": 20}},
            "cases": {"count": 1000},
            "batch": {"initialSize": 200, "maxSize": 200},
        }
    )
    config = WorkerConfig(run_id=run_id, spec=spec, queue_url=redis_url, storage_uri=folder)
    queue = open_queue(redis_url, run_id)
    storage = open_storage(folder, run_id)
    enqueue_run(queue, storage, spec)
    env = dict(os.environ, **config.env(), PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "proctor", "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while queue.depth().in_flight == 0:
        time.sleep(0.01)
    time.sleep(1.0)
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=30)
    elapsed = time.perf_counter() - t0
    depth = queue.depth()
    recorded = sum(len(r) for r in storage.result_ranges())
    assert code == 0
    assert depth.in_flight == 0
    assert recorded > 0
    assert recorded + (depth.cases or 0) == 1000
    queue.delete()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with redis_server() as redis, tempfile.TemporaryDirectory() as tmp:
        times = [once(redis.url, tmp) for _ in range(args.repeat)]
    print("runs: " + ", ".join(f"{t:.3f}s" for t in times))
    print(
        f"sigterm to flushed: median {statistics.median(times):.3f}s, "
        f"max {max(times):.3f}s (target <= 2s)"
    )


if __name__ == "__main__":
    main()
