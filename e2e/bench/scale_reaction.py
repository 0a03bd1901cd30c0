"""Backlog spike -> the operator changes the worker count: seconds until the new pods exist.

A run whose backlog wants 1 worker is left steady; then entries are pushed into its queue (a
spike that wants more) and the time to the first added worker pod is taken. Worker pods are not
run (kwok), so the backlog stays. Target: <= 5 s (the operator's scaling interval here: 1 s).

    python e2e/bench/scale_reaction.py [--trials 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from e2e.bench._operator_env import bench_env
from e2e.harness import nodes
from proctor.queue import Range, open_queue


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    reactions: list[float] = []
    with bench_env("scale") as env:
        nodes.create_node(env.core, "kwok-bench-0", cpu="64", memory="256Gi", pods=500)

        def pods(name: str) -> int:
            items = env.core.list_namespaced_pod(
                env.namespace, label_selector=f"proctor.dev/run={name}"
            ).items
            return sum(1 for p in items if not p.metadata.deletion_timestamp)

        with env.operator() as op:
            for trial in range(args.trials):
                name = f"spike-{trial}"
                # 2000 cases in batches of 250: 8 entries, 8 per worker -> 1 worker.
                doc = env.evalrun(name, workers={"max": 10, "targetBacklogPerWorker": 8})
                uid = env.create(doc)["metadata"]["uid"]
                deadline = time.monotonic() + 30
                while pods(name) != 1:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"{name}: no steady worker\n{op.output()[-3000:]}")
                    time.sleep(0.05)
                time.sleep(2.0)  # steady for a couple of passes
                queue = open_queue(env.redis_url, uid, lease_seconds=10)
                t0 = time.perf_counter()
                queue.enqueue([Range(10_000 + i, 10_001 + i) for i in range(40)], chunk="spike")
                deadline = time.monotonic() + 30
                while pods(name) <= 1:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"{name}: no scale-up\n{op.output()[-3000:]}")
                    time.sleep(0.02)
                reactions.append(time.perf_counter() - t0)
                queue.close()
                print(f"trial {trial}: {reactions[-1]:.2f} s -> {pods(name)} workers")
    reactions.sort()
    median = reactions[len(reactions) // 2]
    print(
        f"backlog spike -> replica change: median {median:.2f} s, max {reactions[-1]:.2f} s "
        f"over {len(reactions)} trials"
    )


if __name__ == "__main__":
    main()
