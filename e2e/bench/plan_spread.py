"""What a run's topology spread costs its plan: ``compute_plan`` over 1,000 nodes in three
zones, without a hard constraint, with a zone spread, a node spread, and both together (the
slow case for a fill: zones and nodes each hold the other back, and it binds at 1,999).
Prints the median of several plans for each; the plan runs on every pass of the run.

    python e2e/bench/plan_spread.py [--nodes N] [--repeat R]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from proctor.api.v1alpha1.evalrun import EvalRunSpec  # noqa: E402
from proctor.config import OperatorConfig  # noqa: E402
from proctor.planning.plan import Capacity, Demand, NodeInfo, compute_plan  # noqa: E402

ZONE, HOST = "topology.kubernetes.io/zone", "kubernetes.io/hostname"
CASES: dict[str, tuple[list[dict[str, Any]] | None, int]] = {
    "no hard constraint": (None, 1000),
    "zone maxSkew 1": ([{"topologyKey": ZONE}], 1000),
    "node maxSkew 1": ([{"topologyKey": HOST}], 1000),
    "zone + node maxSkew 1": ([{"topologyKey": ZONE}, {"topologyKey": HOST}], 5000),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    nodes = [
        NodeInfo(
            f"n{i}",
            Capacity(8000, 32 << 30, 0, 110),
            labels={HOST: f"n{i}", ZONE: f"z{i % 3}"},
        )
        for i in range(args.nodes)
    ]
    config = OperatorConfig()
    for name, (spread, workers) in CASES.items():
        spec = EvalRunSpec.model_validate(
            {
                "image": "bench",
                "task": {"entrypoint": "m:t"},
                "cases": {"count": 10**6},
                "profile": "small",
                "workers": {"max": workers, "targetBacklogPerWorker": 1},
                "placement": {"topologySpread": spread},
            }
        )
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            plan = compute_plan(spec, nodes, Demand(10**6), config)
            times.append(time.perf_counter() - start)
        print(
            f"{name:24} max {workers:5}: {plan.replicas:5} workers, bound by "
            f"{plan.bound_by:6} {statistics.median(times) * 1000:7.1f} ms (median of {args.repeat})"
        )


if __name__ == "__main__":
    main()
