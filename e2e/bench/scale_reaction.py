"""Backlog spike -> the operator changes the worker count: seconds from the spike to the new
desired replica count in status and to the first added worker pod.

Each trial starts a run whose backlog wants exactly 1 worker and first proves it steady: 1 pod,
``status.workers.desired`` 1, unchanged for ``--steady`` seconds (several scaling passes). Only
then are entries pushed into its queue (a spike that wants 6 workers), and the time is taken
from that push to the first status that asks for more workers and to the first new pod's
ADDED event on a pod watch. Worker pods are not run (kwok), so the backlog stays put. The
operator's scaling loop runs every ``--interval`` seconds and the spike lands at a random
point of it, so a reaction should fall between the pass time and one interval plus the pass
time (median about half an interval plus the pass). Target: <= 5 s.

    python e2e/bench/scale_reaction.py [--trials 7] [--interval 1.0] [--steady 3.0]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kubernetes import watch

from e2e.bench._operator_env import BenchEnv, bench_env
from e2e.harness import nodes
from e2e.harness.operator import GROUP, PLURAL, VERSION
from proctor.queue import Range, open_queue


class PodWatch:
    """ADDED and DELETED times of the namespace's pods, per run, from a watch."""

    def __init__(self, env: BenchEnv) -> None:
        self.env = env
        self.added: dict[str, list[float]] = {}
        self.live: dict[str, set[str]] = {}
        self.cond = threading.Condition()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        w = watch.Watch()
        seen: set[str] = set()
        while not self.stop.is_set():
            try:
                # A restarted stream lists every pod again as ADDED: only new uids count.
                for event in w.stream(
                    self.env.core.list_namespaced_pod, self.env.namespace, timeout_seconds=5
                ):
                    self._event(event, seen)
            except Exception:
                if self.stop.is_set():
                    return  # the cluster is going away
                raise

    def _event(self, event: dict[str, Any], seen: set[str]) -> None:
        pod = event["object"]
        run = str((pod.metadata.labels or {}).get("proctor.dev/run"))
        with self.cond:
            live = self.live.setdefault(run, set())
            if event["type"] == "DELETED" or pod.metadata.deletion_timestamp:
                live.discard(pod.metadata.name)
            elif pod.metadata.uid not in seen:
                seen.add(pod.metadata.uid)
                self.added.setdefault(run, []).append(time.perf_counter())
                live.add(pod.metadata.name)
            self.cond.notify_all()

    def count(self, run: str) -> int:
        with self.cond:
            return len(self.live.get(run, ()))

    def added_after(self, run: str, t0: float) -> float | None:
        with self.cond:
            later = [t for t in self.added.get(run, []) if t >= t0]
        return min(later) if later else None


def _status(env: BenchEnv, name: str) -> dict[str, Any]:
    obj = env.custom.get_namespaced_custom_object(GROUP, VERSION, env.namespace, PLURAL, name)
    return dict(obj.get("status") or {})


def _desired(status: dict[str, Any]) -> int | None:
    workers = status.get("workers") or {}
    value = workers.get("desired")
    return int(value) if value is not None else None


def trial(
    env: BenchEnv, pods: PodWatch, name: str, steady: float, interval: float
) -> tuple[float, float]:
    """(seconds to the new desired count in status, seconds to the first new pod)."""
    # 2000 cases in batches of 250: 8 entries at 8 per worker -> 1 worker.
    doc = env.evalrun(name, workers={"max": 10, "targetBacklogPerWorker": 8})
    uid = env.create(doc)["metadata"]["uid"]
    deadline = time.monotonic() + 60
    while not (pods.count(name) == 1 and _desired(_status(env, name)) == 1):
        if time.monotonic() > deadline:
            raise SystemExit(f"{name}: never steady at 1 worker: {_status(env, name)}")
        time.sleep(0.1)
    # Steady: nothing changes for several passes before the spike.
    added_before = len(pods.added.get(name, []))
    end = time.monotonic() + steady
    while time.monotonic() < end:
        desired = _desired(_status(env, name))
        if desired != 1 or pods.count(name) != 1 or len(pods.added[name]) != added_before:
            raise SystemExit(f"{name}: changed without a spike (desired {desired})")
        time.sleep(0.2)
    # The run's passes tick every `interval` from its creation, and the steps above take
    # about the same time in every trial: without a random phase every spike would land at
    # the same point of the tick (that is how an earlier version measured 0.1 s every time).
    time.sleep(random.uniform(0, interval))
    queue = open_queue(env.redis_url, uid, lease_seconds=10)
    try:
        t0 = time.perf_counter()
        queue.enqueue([Range(10_000 + i, 10_001 + i) for i in range(40)], chunk="spike")
        to_status: float | None = None
        to_pod: float | None = None
        deadline = time.monotonic() + 30
        while to_status is None or to_pod is None:
            if time.monotonic() > deadline:
                raise SystemExit(f"{name}: no reaction to the spike in 30 s")
            if to_status is None and (_desired(_status(env, name)) or 0) > 1:
                to_status = time.perf_counter() - t0
            added = pods.added_after(name, t0)
            if to_pod is None and added is not None:
                to_pod = added - t0
            time.sleep(0.02)
    finally:
        queue.close()
    return to_status, to_pod


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=7)
    parser.add_argument("--interval", type=float, default=1.0, help="scalingIntervalSeconds")
    parser.add_argument("--steady", type=float, default=3.0, help="seconds proven steady")
    args = parser.parse_args()
    to_status: list[float] = []
    to_pod: list[float] = []
    with bench_env("scale") as env:
        nodes.create_node(env.core, "kwok-bench-0", cpu="64", memory="256Gi", pods=500)
        pods = PodWatch(env)
        with env.operator(scalingIntervalSeconds=args.interval):
            for n in range(args.trials):
                status_s, pod_s = trial(env, pods, f"spike-{n}", args.steady, args.interval)
                to_status.append(status_s)
                to_pod.append(pod_s)
                print(
                    f"trial {n}: desired changed after {status_s:.2f} s, "
                    f"first new pod after {pod_s:.2f} s",
                    flush=True,
                )
            pods.stop.set()
    print(
        f"backlog spike -> replica change (interval {args.interval:g} s): new pod median "
        f"{statistics.median(to_pod):.2f} s, max {max(to_pod):.2f} s; status median "
        f"{statistics.median(to_status):.2f} s over {len(to_pod)} trials"
    )


if __name__ == "__main__":
    main()
