"""Apply an EvalRun -> the operator creates its first worker pod: p50 and p99 over N runs.

Targets: p50 <= 250 ms, p99 <= 1 s. Worker pods are not run (kwok only makes them Running), so
the figure is the operator's: watch event, admission, enqueue into Redis, plan, pod create.

    python e2e/bench/apply_latency.py [--runs 30]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kubernetes import watch

from e2e.bench._operator_env import bench_env, percentile
from e2e.harness import nodes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    with bench_env("apply") as env:
        nodes.create_node(env.core, "kwok-bench-0", cpu="64", memory="256Gi", pods=500)
        first_pod: dict[str, float] = {}
        seen = threading.Condition()
        stop = threading.Event()

        def watch_pods() -> None:
            w = watch.Watch()
            while not stop.is_set():
                for event in w.stream(
                    env.core.list_namespaced_pod, env.namespace, timeout_seconds=5
                ):
                    if event["type"] != "ADDED":
                        continue
                    run = str((event["object"].metadata.labels or {}).get("proctor.dev/run"))
                    with seen:
                        first_pod.setdefault(run, time.perf_counter())
                        seen.notify_all()

        thread = threading.Thread(target=watch_pods, daemon=True)
        thread.start()
        latencies: list[float] = []
        with env.operator() as op:
            # Warm-up: the operator's first run pays for imports and connections.
            for i in range(args.runs + 1):
                name = f"lat-{i}"
                doc = env.evalrun(name, count=500, workers={"max": 1})
                t0 = time.perf_counter()
                env.create(doc)
                with seen:
                    if not seen.wait_for(lambda: name in first_pod, timeout=30):  # noqa: B023
                        raise SystemExit(f"no pod for {name} in 30 s\n{op.output()[-3000:]}")
                if i > 0:
                    latencies.append(first_pod[name] - t0)
        stop.set()
    ms = [v * 1000 for v in latencies]
    print(f"runs={len(ms)} min={min(ms):.0f}ms max={max(ms):.0f}ms")
    print(
        f"apply -> first worker pod: p50 {percentile(ms, 0.5):.0f} ms, "
        f"p99 {percentile(ms, 0.99):.0f} ms over {len(ms)} runs"
    )


if __name__ == "__main__":
    main()
