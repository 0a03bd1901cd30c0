"""1,000 EvalRuns over 100 kwok nodes: seconds until every run has status.plan, and the
operator's RSS. Targets: <= 60 s, <= 250 MB. Worker pods are not run (kwok).

    python e2e/bench/many_runs.py [--runs 1000] [--nodes 100] [--timeout 300]
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from e2e.bench._operator_env import bench_env, cpu_seconds, rss_mb
from e2e.harness import nodes
from e2e.harness.operator import GROUP, PLURAL, VERSION


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument(
        "--interval",
        type=float,
        default=3.0,
        help="scalingIntervalSeconds (default 3, the operator's; the e2e tests use 1)",
    )
    args = parser.parse_args()
    with bench_env("many") as env:
        with ThreadPoolExecutor(8) as pool:
            list(
                pool.map(
                    lambda i: nodes.create_node(
                        env.core, f"kwok-bench-{i}", cpu="32", memory="128Gi", wait=False
                    ),
                    range(args.nodes),
                )
            )
        peak = 0.0
        planned = 0
        with env.operator(scalingIntervalSeconds=args.interval) as op:
            t0 = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                list(
                    pool.map(
                        lambda i: env.create(
                            env.evalrun(f"run-{i}", count=500, workers={"max": 1})
                        ),
                        range(args.runs),
                    )
                )
            created = time.perf_counter() - t0
            print(f"created {args.runs} EvalRuns in {created:.1f} s", flush=True)
            last = 0.0
            while True:
                items = env.custom.list_namespaced_custom_object(
                    GROUP, VERSION, env.namespace, PLURAL
                )["items"]
                planned = sum(1 for r in items if (r.get("status") or {}).get("plan"))
                peak = max(peak, rss_mb(op))
                elapsed = time.perf_counter() - t0
                if elapsed - last >= 10:
                    last = elapsed
                    print(f"{elapsed:.0f} s: {planned} planned, RSS {peak:.0f} MB", flush=True)
                if planned >= args.runs or elapsed > args.timeout:
                    break
                time.sleep(1.0)
            elapsed = time.perf_counter() - t0
            peak = max(peak, rss_mb(op))
            cpu = cpu_seconds(op)
    print(f"operator CPU {cpu:.1f} s over {elapsed:.1f} s; load {_load()}")
    done = "all" if planned >= args.runs else f"only {planned}/{args.runs} (timed out)"
    print(
        f"{args.runs} EvalRuns / {args.nodes} nodes: {done} planned in {elapsed:.1f} s, "
        f"operator peak RSS {peak:.0f} MB"
    )


if __name__ == "__main__":
    main()
