"""Per-case overhead of the engine on a no-op task, against a bare Python loop, by batch size.

The engine path is a real worker (in this process) on a real Redis queue and a local results
folder: claim, evaluate through the SDK (per-case timeout guard, record), encode, compress,
write once, ack. The bare loop calls the same task's generate and solve. Target: <= 20 us per
case amortized (at batch size 1000).

    python e2e/bench/dispatch.py [--cases N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from e2e.harness.services import redis_server  # noqa: E402
from proctor.api.v1alpha1.evalrun import EvalRunSpec  # noqa: E402
from proctor.logging import configure_logging  # noqa: E402
from proctor.queue import enqueue_run  # noqa: E402
from proctor.worker.runtime import Worker, WorkerConfig  # noqa: E402
from tests.test_worker_tasks import Noop  # noqa: E402


def spec(count: int, size: int) -> EvalRunSpec:
    return EvalRunSpec.model_validate(
        {
            "image": "bench",
            "task": {"entrypoint": "tests.test_worker_tasks:Noop"},
            "cases": {"count": count},
            "batch": {"initialSize": size, "minSize": size, "maxSize": size},
            "caseTimeout": "60s",
        }
    )


def bare(count: int) -> float:
    task = Noop()
    t0 = time.perf_counter()
    for i in range(count):
        task.solve(task.generate(0, i))
    return time.perf_counter() - t0


def engine(redis_url: str, count: int, size: int, folder: Path) -> float:
    run_id = f"dispatch-{size}-{time.monotonic_ns()}"
    config = WorkerConfig(
        run_id=run_id, spec=spec(count, size), queue_url=redis_url, storage_uri=str(folder)
    )
    worker = Worker(config)
    enqueue_run(worker.queue, worker.storage, config.spec)
    t0 = time.perf_counter()
    assert worker.run() == 0
    elapsed = time.perf_counter() - t0
    assert worker.stats.cases == count
    worker.queue.delete()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=200_000)
    args = parser.parse_args()
    configure_logging(level="warning")
    count = args.cases
    results = {}
    with redis_server() as redis, tempfile.TemporaryDirectory() as tmp:
        base = min(bare(count) for _ in range(3))
        print(f"bare loop: {1e6 * base / count:.2f} us/case ({count} cases)")
        print(f"{'batch':>7} {'engine us/case':>15} {'overhead us/case':>17}")
        for size in (10, 100, 1000, 10_000):
            n = min(count, size * 2000)
            t = min(engine(redis.url, n, size, Path(tmp) / str(size)) for _ in range(2))
            overhead = 1e6 * t / n - 1e6 * base / count
            results[size] = overhead
            print(f"{size:>7} {1e6 * t / n:>15.2f} {overhead:>17.2f}")
    print(f"dispatch overhead at batch 1000: {results[1000]:.2f} us/case (target <= 20)")


if __name__ == "__main__":
    main()
