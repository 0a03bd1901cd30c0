"""1,000 EvalRuns over 100 kwok nodes: seconds until every run has status.plan, and the
operator's RSS. Targets: <= 60 s, <= 250 MB. Worker pods are not run (kwok).

    python e2e/bench/many_runs.py [--runs 1000] [--nodes 100] [--timeout 300]
"""

from __future__ import annotations

import argparse
import calendar
import os
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import watch
from kubernetes.client.rest import ApiException

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from e2e.bench._operator_env import (
    BenchEnv,
    apiserver_metric,
    bench_env,
    cpu_by_process,
    cpu_seconds,
    load,
    rss_mb,
)
from e2e.harness import nodes
from e2e.harness.operator import GROUP, PLURAL, VERSION


class PlannedWatch:
    """Names of the runs whose status has a plan, from a watch: the bench observes the runs
    as a client would, without listing a thousand objects a second (such lists made a tenth
    of the API server's work and slowed what they measured)."""

    def __init__(self, env: BenchEnv) -> None:
        self.env = env
        self.planned: set[str] = set()
        self.stop = threading.Event()
        self.version = self._list()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _list(self) -> str:
        listed = self.env.custom.list_namespaced_custom_object(
            GROUP, VERSION, self.env.namespace, PLURAL
        )
        self._note(listed["items"])
        return str(listed["metadata"]["resourceVersion"])

    def _note(self, items: list[dict[str, Any]]) -> None:
        for obj in items:
            if (obj.get("status") or {}).get("plan"):
                self.planned.add(obj["metadata"]["name"])

    def _run(self) -> None:
        while not self.stop.is_set():
            stream = watch.Watch()
            try:
                for event in stream.stream(
                    self.env.custom.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self.env.namespace,
                    PLURAL,
                    resource_version=self.version,
                    timeout_seconds=30,
                ):
                    obj = event["object"]
                    self.version = obj["metadata"]["resourceVersion"]
                    self._note([obj])
                    if self.stop.is_set():
                        break
            except ApiException:
                self.version = self._list()  # 410 Gone: the version is too old; list again
            except urllib3.exceptions.HTTPError:
                if self.stop.is_set():
                    return  # the bench is done and its cluster going away
                self.version = self._list()  # the stream broke: list again, then watch on
            finally:
                stream.stop()


def api_requests(env: BenchEnv) -> Counter[str]:
    """The API server's request counts by verb and resource (apiserver_request_total)."""
    counts: Counter[str] = Counter()
    for labels, value in apiserver_metric(env.api_client, "apiserver_request_total"):
        key = f"{labels.get('verb')} {labels.get('resource')}"
        if labels.get("subresource"):
            key += f"/{labels['subresource']}"
        counts[key] += int(value)
    return counts


def apiserver_profile(env: BenchEnv, path: Path, seconds: int) -> None:
    """kube-apiserver's CPU profile over the next `seconds` (needs --profiling=true)."""
    response = env.api_client.call_api(
        f"/debug/pprof/profile?seconds={seconds}",
        "GET",
        auth_settings=["BearerToken"],
        _preload_content=False,
        _request_timeout=seconds + 30,
    )
    path.write_bytes(response.data)
    print(f"kube-apiserver CPU profile: {path}", flush=True)


def _stamp(text: str) -> float:
    """Seconds since the epoch of an API timestamp (UTC, whole seconds)."""
    return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")))


def stages(env: BenchEnv) -> None:
    """Median and p90 seconds from each run's creation to each field manager's latest write
    (managedFields keep one time per manager; whole seconds), and to its worker pod's
    creation."""
    runs = env.custom.list_namespaced_custom_object(GROUP, VERSION, env.namespace, PLURAL)
    pods = env.core.list_namespaced_pod(env.namespace).items
    born = {r["metadata"]["uid"]: _stamp(r["metadata"]["creationTimestamp"]) for r in runs["items"]}
    lags: dict[str, list[float]] = {}
    for run in runs["items"]:
        start = born[run["metadata"]["uid"]]
        for entry in run["metadata"].get("managedFields") or []:
            key = f"{entry['manager']} {entry['operation']} {entry.get('subresource', '')}"
            lags.setdefault(key.strip(), []).append(_stamp(entry["time"]) - start)
    for pod in pods:
        owners = pod.metadata.owner_references or []
        if owners and owners[0].uid in born:
            created = pod.metadata.creation_timestamp.timestamp()
            lags.setdefault("worker pod created", []).append(created - born[owners[0].uid])
    for key, values in sorted(lags.items()):
        values.sort()
        print(
            f"  {key}: n={len(values)} median {values[len(values) // 2]:.0f} s, "
            f"p90 {values[int(len(values) * 0.9)]:.0f} s, max {values[-1]:.0f} s"
        )


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
    parser.add_argument(
        "--api-requests",
        action="store_true",
        help="print the API server's requests by verb and resource made while runs were planned",
    )
    parser.add_argument(
        "--apiserver-profile",
        type=Path,
        help="write a 30 s CPU profile of kube-apiserver, from the first create on, to this "
        "file (go tool pprof reads it); sets PROCTOR_E2E_PROFILING=1 for the cluster",
    )
    parser.add_argument(
        "--stages",
        action="store_true",
        help="print seconds from each run's creation to its writes and its worker pod",
    )
    args = parser.parse_args()
    if args.apiserver_profile:
        os.environ["PROCTOR_E2E_PROFILING"] = "1"
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
            seen = PlannedWatch(env)
            # The documents are made before anything is measured: they are the input.
            docs = [
                env.evalrun(f"run-{i}", count=500, workers={"max": 1}) for i in range(args.runs)
            ]
            before = api_requests(env) if args.api_requests else Counter()
            cpu_before = cpu_by_process()
            profiler = None
            if args.apiserver_profile:
                profiler = threading.Thread(
                    target=apiserver_profile, args=(env, args.apiserver_profile, 30), daemon=True
                )
                profiler.start()
            t0 = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(env.create, docs))
            created = time.perf_counter() - t0
            print(f"created {args.runs} EvalRuns in {created:.1f} s", flush=True)
            last = 0.0
            while True:
                planned = len(seen.planned)
                peak = max(peak, rss_mb(op))
                elapsed = time.perf_counter() - t0
                if elapsed - last >= 10:
                    last = elapsed
                    print(f"{elapsed:.0f} s: {planned} planned, RSS {peak:.0f} MB", flush=True)
                if planned >= args.runs or elapsed > args.timeout:
                    break
                time.sleep(0.2)
            seen.stop.set()
            elapsed = time.perf_counter() - t0
            cpu_after = cpu_by_process()
            used = {k: v - cpu_before.get(k, 0.0) for k, v in cpu_after.items()}
            top = sorted(used.items(), key=lambda kv: -kv[1])[:8]
            print("CPU s by process: " + ", ".join(f"{k} {v:.1f}" for k, v in top if v >= 0.1))
            if args.api_requests:
                made = api_requests(env) - before
                for key, count in made.most_common(12):
                    print(f"  {count:6d}  {key}")
            peak = max(peak, rss_mb(op))
            cpu = cpu_seconds(op)
            if args.stages:
                stages(env)
            if profiler is not None:
                profiler.join()
    print(f"operator CPU {cpu:.1f} s over {elapsed:.1f} s; load {load()}")
    done = "all" if planned >= args.runs else f"only {planned}/{args.runs} (timed out)"
    print(
        f"{args.runs} EvalRuns / {args.nodes} nodes: {done} planned in {elapsed:.1f} s, "
        f"operator peak RSS {peak:.0f} MB"
    )


if __name__ == "__main__":
    main()
