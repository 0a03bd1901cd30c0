"""Throughput of 2 worker processes against 1 on a CPU-bound task, on a real Redis queue.

Each configuration runs the same cases with ``proctor worker`` processes; the time is from the
first worker's start to the last worker's finish (their structured logs), so interpreter
start-up is not counted. Target: >= 1.85x (needs two free cores).

    python e2e/bench/scaling.py [--cases N] [--work ROUNDS]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from e2e.harness.services import redis_server  # noqa: E402
from proctor.api.v1alpha1.evalrun import EvalRunSpec  # noqa: E402
from proctor.queue import enqueue_run, open_queue  # noqa: E402
from proctor.storage import open_storage  # noqa: E402
from proctor.worker.runtime import WorkerConfig  # noqa: E402


def run(redis_url: str, folder: Path, workers: int, cases: int, work: int) -> float:
    run_id = f"scaling-{workers}-{time.monotonic_ns()}"
    spec = EvalRunSpec.model_validate(
        {
            "image": "bench",
            "task": {"entrypoint": "tests.test_worker_tasks:Cpu", "params": {"work": work}},
            "cases": {"count": cases},
            "batch": {"initialSize": 20, "maxSize": 200, "targetDuration": "1s"},
        }
    )
    config = WorkerConfig(run_id=run_id, spec=spec, queue_url=redis_url, storage_uri=str(folder))
    queue = open_queue(redis_url, run_id)
    enqueue_run(queue, open_storage(str(folder), run_id), spec)
    env = dict(os.environ, **config.env(), PROCTOR_LOG_FORMAT="json", PYTHONPATH=str(ROOT))
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "proctor", "worker"],
            env={**env, "PROCTOR_WORKER_ID": f"w{i}"},
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
        )
        for i in range(workers)
    ]
    starts, ends = [], []
    for p in procs:
        _, err = p.communicate()
        assert p.returncode == 0, err.decode()[-2000:]
        for line in err.decode().splitlines():
            if not line.startswith("{"):
                continue
            event = json.loads(line)
            stamp = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()
            if event["event"] == "worker started":
                starts.append(stamp)
            elif event["event"] == "worker finished":
                ends.append(stamp)
    queue.delete()
    return max(ends) - min(starts)


BUSY = "x=0\nfor i in range({n}): x=(x*1103515245+12345+i)&0x7FFFFFFF"


def bare_ceiling(rounds: int) -> float:
    """What this machine gives two bare Python processes over one, right now."""

    def timed(k: int) -> float:
        t0 = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-c", BUSY.format(n=rounds)]) for _ in range(k)]
        for p in procs:
            p.wait()
        return time.perf_counter() - t0

    return 2 * timed(1) / timed(2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=6000)
    parser.add_argument("--work", type=int, default=20_000)
    args = parser.parse_args()
    with redis_server() as redis, tempfile.TemporaryDirectory() as tmp:
        one = min(run(redis.url, Path(tmp), 1, args.cases, args.work) for _ in range(2))
        two = min(run(redis.url, Path(tmp), 2, args.cases, args.work) for _ in range(2))
    ceiling = bare_ceiling(args.cases * args.work // 2)
    print(f"bare ceiling on this machine now: 2 processes do {ceiling:.2f}x the work of 1")
    print(f"1 worker: {one:.2f}s ({args.cases / one:.0f} cases/s)")
    print(f"2 workers: {two:.2f}s ({args.cases / two:.0f} cases/s)")
    print(f"scaling 2 workers vs 1: {one / two:.2f}x (target >= 1.85)")


if __name__ == "__main__":
    main()
