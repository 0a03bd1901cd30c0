"""The result cache's saving: a new candidate against an unchanged baseline.

Two ``proctor run`` commands over one cache (``spec.cache.mode: readWrite``, the default
location beside the results), run in this process one after the other and each timed from
the call to its summary (setting up, workers, merging the results). Proctor's imports are
paid once before the first: they cost the same to both runs, and on a loaded 2-core machine
(several seconds) they would hide what the cache saves.
The first compares ``baseline`` with ``candidate_a``; the second compares the same baseline
with ``candidate_b``. Every implementation costs the same (``--cost-ms`` of sleep per call,
as a model or service call would), so the second run, whose baseline results all come from
the cache, should take about half the first's time. Target: second / first <= 0.55.
Batches aim at 1 s (``batch.targetDuration``) rather than the default 10 s, so that neither
run ends with one worker finishing a long batch while the other waits: that tail would be
the same seconds in both runs and blur the ratio.

    python e2e/bench/cache.py [--cases N] [--cost-ms MS] [--workers N]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "operator"))

from proctor.cli.main import main as proctor_main  # noqa: E402

TASK = """
import time

from proctor.sdk import Task

COST = {cost} / 1000.0


def _work(case):
    time.sleep(COST)
    return sum(case)


def baseline(case):
    return _work(case)


def candidate_a(case):
    return _work(case)


def candidate_b(case):
    return _work(case)


class Sums(Task):
    def generate(self, seed, index):
        return [(seed + index * 31 + j) % 97 for j in range(8)]

    def check(self, case, output):
        return [] if output == sum(case) else ["wrong-sum"]
"""

MANIFEST = """
apiVersion: proctor.dev/v1alpha1
kind: EvalRun
metadata:
  name: {name}
spec:
  image: proctor/proctor:0.1.0
  task:
    entrypoint: bench_cache_task:Sums
  cases:
    count: {cases}
    seed: 11
  compare:
    baseline:
      ref: bench_cache_task:baseline
    candidate:
      ref: bench_cache_task:{candidate}
    minDelta: -0.01
  cache:
    mode: readWrite
  batch:
    targetDuration: 1s
  caseTimeout: 60s
"""


def timed_run(
    folder: Path, name: str, candidate: str, args: argparse.Namespace
) -> tuple[float, Any]:
    manifest = folder / f"{name}.yaml"
    manifest.write_text(MANIFEST.format(name=name, cases=args.cases, candidate=candidate))
    command = ["run", str(manifest), "--json", "--workers", str(args.workers)]
    command += ["--results-dir", str(folder / "proctor-results")]
    out = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out):
        code = proctor_main(command)
    wall = time.perf_counter() - t0
    if code not in (0, 1):  # accepted or rejected: decided
        sys.exit(f"{name}: exit {code}")
    return wall, json.loads(out.getvalue().strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--cost-ms", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "bench_cache_task.py").write_text(TASK.format(cost=args.cost_ms))
        sys.path.insert(0, str(folder))  # the workers are forked from this process
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"{args.cases:,} cases, {args.cost_ms:g} ms per implementation call, "
              f"{args.workers} workers; load average {load}")  # fmt: skip
        first, one = timed_run(folder, "first", "candidate_a", args)
        second, two = timed_run(folder, "second", "candidate_b", args)
        for name, wall, summary in (("first", first, one), ("second", second, two)):
            cache = summary["cache"]
            print(
                f"{name:>6}: {wall:6.2f} s wall ({summary['seconds']:.2f} s with workers), "
                f"decision {summary['decision']}, baseline {cache['baseline']}, "
                f"candidate {cache['candidate']}"
            )
        if two["decision"] != one["decision"]:
            sys.exit("the cached run decided otherwise than the uncached one")
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(f"wall-time ratio second/first: {second / first:.3f} (target <= 0.55)")


if __name__ == "__main__":
    main()
