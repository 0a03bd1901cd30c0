"""Per-case overhead of the engine on a no-op task, against a bare Python loop, by batch size.

The engine path is a real worker (in this process) on a real Redis queue and a local results
folder: claim, evaluate through the SDK into the batch's columns (per-case timeout guard, a
passing case kept as its seconds), encode as one Arrow IPC object per batch, compress, write
once, ack. The bare loop calls the same task's generate
and solve. Target: <= 20 us per case amortized (at batch size 1000); issue 17's target with
columnar records: <= 3 us (idle machine).

Besides wall time it reports this process's CPU time per case (``time.process_time``: the
worker runs in this process; Redis's own CPU is not in it), which a busy machine inflates far
less than wall time, so figures taken under load can still be compared.

    python e2e/bench/dispatch.py [--cases N]
"""

from __future__ import annotations

import argparse
import os
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


def bare(count: int) -> tuple[float, float]:
    task = Noop()
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(count):
        task.solve(task.generate(0, i))
    return time.perf_counter() - t0, time.process_time() - c0


def engine(redis_url: str, count: int, size: int, folder: Path) -> tuple[float, float]:
    run_id = f"dispatch-{size}-{time.monotonic_ns()}"
    config = WorkerConfig(
        run_id=run_id, spec=spec(count, size), queue_url=redis_url, storage_uri=str(folder)
    )
    worker = Worker(config)
    enqueue_run(worker.queue, worker.storage, config.spec)
    t0, c0 = time.perf_counter(), time.process_time()
    assert worker.run() == 0
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert worker.stats.cases == count
    worker.queue.delete()
    return elapsed, cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=200_000)
    args = parser.parse_args()
    configure_logging(level="warning")
    count = args.cases
    results = {}
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with redis_server() as redis, tempfile.TemporaryDirectory() as tmp:
        runs = [bare(count) for _ in range(3)]
        base, base_cpu = min(r[0] for r in runs), min(r[1] for r in runs)
        print(f"bare loop: {1e6 * base / count:.2f} us/case ({count} cases)")
        print(f"{'batch':>7} {'engine us/case':>15} {'overhead us/case':>17} {'CPU overhead':>13}")
        for size in (10, 100, 1000, 10_000):
            n = min(count, size * 2000)
            runs = [engine(redis.url, n, size, Path(tmp) / f"{size}-{i}") for i in range(2)]
            t, cpu = min(r[0] for r in runs), min(r[1] for r in runs)
            overhead = 1e6 * t / n - 1e6 * base / count
            cpu_overhead = 1e6 * cpu / n - 1e6 * base_cpu / count
            results[size] = (overhead, cpu_overhead)
            print(f"{size:>7} {1e6 * t / n:>15.2f} {overhead:>17.2f} {cpu_overhead:>13.2f}")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    wall, cpu = results[1000]
    print(f"dispatch overhead at batch 1000: {wall:.2f} us/case wall, {cpu:.2f} us/case CPU "
          "(targets: <= 20; issue 17, idle: <= 3)")  # fmt: skip


if __name__ == "__main__":
    main()
