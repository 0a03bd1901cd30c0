"""A 1,000,000-case EvalRun through the operator against `proctor run` of the same run.

The same quickstart work (top-k, sorted baseline vs heap candidate) runs twice on this
machine with the same worker count, both on the bench's Redis and moto S3:

- `proctor run FILE --workers W --queue redis://... --storage s3://...` (the local runner);
- an EvalRun through the operator on the real control plane, its worker pods run as real
  `proctor worker` processes by the pod runner (e2e/harness/podrunner.py).

It prints the cases/s of each (wall time from start to the run's end: `proctor run`'s exit, the
EvalRun's phase Succeeded), the operator's and the workers' RSS sampled over the run (growth
from 10% to 100% of progress; target <= +20 MB), where the cluster run's time went (first
worker, first case, last case, Succeeded) and the CPU each process used, and checks that every
case was recorded exactly once: it reads every result object of the run back from S3 and counts
the case indexes (each of [0, cases) once, none twice), and the merged results.parquet too.
Last line: the ratio of the two rates (target >= 0.90).

    python e2e/bench/cluster_throughput.py [--cases 1000000] [--workers 2] [--interval 3]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from e2e.bench._operator_env import (
    BenchEnv,
    bench_env,
    cpu_by_process,
    load,
    pid_cpu_seconds,
    pid_rss_mb,
)
from e2e.harness import nodes
from e2e.harness.operator import CREDS, GROUP, PLURAL, VERSION
from proctor.storage import open_storage

REGION = "us-east-1"
TARGET = 0.90


def _spec(env: BenchEnv, cases: int, workers: int) -> dict[str, Any]:
    """The quickstart EvalRun on the bench's Redis and bucket, with exactly ``workers``."""
    doc = env.evalrun("throughput", count=cases, workers={"min": workers, "max": workers})
    doc["spec"]["placement"] = {"nodeSelector": {"e2e.proctor.dev/pool": "throughput"}}
    return doc


def _s3_env(env: BenchEnv) -> dict[str, str]:
    return {**os.environ, **CREDS, "AWS_ENDPOINT_URL_S3": env.moto, "AWS_REGION": REGION}


@dataclass
class LocalResult:
    seconds: float
    completed: int
    cpu: float  # proctor run and its workers, user + system


def run_local(env: BenchEnv, doc: dict[str, Any], workers: int, name: str) -> LocalResult:
    """`proctor run` of the same manifest (queue and storage given as flags, as a user on this
    machine would), timed from the command's start to its exit."""
    local = copy.deepcopy(doc)
    for key in ("queue", "storage", "placement"):
        local["spec"].pop(key, None)
    local["metadata"] = {"name": name}
    path = env.workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(local))
    argv = [
        sys.executable, "-m", "proctor", "run", str(path), "--workers", str(workers), "--json",
        "--queue", env.redis_url, "--storage", f"s3://{env.bucket}/local",
    ]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(argv, env=_s3_env(env), capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode not in (0, 1):
        raise SystemExit(f"proctor run failed ({out.returncode}):\n{out.stderr[-4000:]}")
    summary = json.loads(out.stdout)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return LocalResult(seconds, int(summary["completed"]), cpu)


@dataclass
class Track:
    """One process sampled over the run: RSS (MB) by progress, and its CPU seconds so far."""

    rss: list[tuple[float, float]] = field(default_factory=list)
    cpu: float = 0.0

    def note(self, pid: int, progress: float) -> None:
        self.rss.append((progress, pid_rss_mb(pid)))
        self.cpu = pid_cpu_seconds(pid)

    def growth(self) -> tuple[float, float, float, float, float] | None:
        """(RSS at the first sample at or past 10%, at half way, at the last sample, the peak
        from 10% on, the progress of the last sample); None when not seen past 10%."""
        later = [(progress, rss) for progress, rss in self.rss if progress >= 0.1]
        if not later:
            return None
        half = next((rss for progress, rss in later if progress >= 0.5), later[-1][1])
        return later[0][1], half, later[-1][1], max(rss for _, rss in later), later[-1][0]


class WorkerProcesses:
    """The pod runner's `proctor worker` processes of one run, found by their environment."""

    def __init__(self, run_id: str) -> None:
        self.needle = f"PROCTOR_RUN_ID={run_id}".encode()
        self.seen: dict[int, bool] = {}

    def pids(self) -> list[int]:
        found = []
        for proc in Path("/proc").glob("[0-9]*"):
            pid = int(proc.name)
            if pid not in self.seen:
                try:
                    environ = (proc / "environ").read_bytes()
                    cmdline = (proc / "cmdline").read_bytes()
                except OSError:
                    continue
                self.seen[pid] = b"worker" in cmdline and self.needle in environ.split(b"\0")
            if self.seen[pid] and proc.exists():
                found.append(pid)
        return found


@dataclass
class ClusterResult:
    seconds: float
    completed: int
    uid: str
    marks: dict[str, float]
    operator: Track  # while the run goes
    operator_end: float  # RSS once it is Succeeded (merged results and summary written)
    workers: dict[int, Track]
    cpu: dict[str, float]


def _status(env: BenchEnv, name: str) -> dict[str, Any]:
    obj = env.custom.get_namespaced_custom_object(GROUP, VERSION, env.namespace, PLURAL, name)
    return dict(obj.get("status") or {})


def _mark(marks: dict[str, float], what: str, when: bool, t: float) -> None:
    if when and what not in marks:
        marks[what] = t


def run_cluster(env: BenchEnv, doc: dict[str, Any], op_pid: int, timeout: float) -> ClusterResult:
    """Create the EvalRun and sample it until Succeeded: status every 0.5 s, the operator's and
    the workers' RSS and CPU."""
    name = doc["metadata"]["name"]
    total = int(doc["spec"]["cases"]["count"])
    cpu_before = cpu_by_process()
    t0 = time.perf_counter()
    uid = str(env.create(doc)["metadata"]["uid"])
    finder = WorkerProcesses(uid)
    operator = Track()
    workers: dict[int, Track] = {}
    marks: dict[str, float] = {}
    completed, progress = 0, 0.0
    while True:
        now = time.perf_counter() - t0
        status = _status(env, name)
        completed = int((status.get("counts") or {}).get("completed") or 0)
        progress = completed / total
        pids = finder.pids()
        _mark(marks, "first worker process", bool(pids), now)
        _mark(marks, "first case recorded", completed > 0, now)
        _mark(marks, "every case recorded", completed >= total, now)
        for pid in pids:
            with contextlib.suppress(OSError):  # it exited between the listing and the read
                workers.setdefault(pid, Track()).note(pid, progress)
        if status.get("phase") in ("Succeeded", "Failed"):
            break
        operator.note(op_pid, progress)  # while the run goes; its end is sampled apart
        if now > timeout:
            raise SystemExit(f"{name} did not finish in {timeout:.0f} s: {status}")
        time.sleep(0.5)
    seconds = time.perf_counter() - t0
    if status["phase"] != "Succeeded":
        raise SystemExit(f"{name} failed: {status}")
    cpu_after = cpu_by_process()
    cpu = {k: v - cpu_before.get(k, 0.0) for k, v in cpu_after.items()}
    cpu["workers"] = sum(t.cpu for t in workers.values())
    return ClusterResult(seconds, completed, uid, marks, operator, pid_rss_mb(op_pid), workers, cpu)


def exactly_once(env: BenchEnv, uid: str, total: int) -> tuple[int, int, int, int]:
    """(distinct indexes in [0, total), indexes recorded more than once, result objects, rows
    of the merged results.parquet with distinct indexes), read back from S3."""
    for key, value in CREDS.items():
        os.environ.setdefault(key, value)
    storage = open_storage(f"s3://{env.bucket}/runs", uid, endpoint=env.moto, region=REGION)
    counts = np.zeros(total, dtype=np.int64)
    objects = 0
    for _range, key in storage.result_keys():
        data = storage.blobs.get(key)
        if data is None:
            raise SystemExit(f"result object {key} vanished while read back")
        index = storage.read_table(key, data).column("index").to_numpy()
        if index.size and (index.min() < 0 or index.max() >= total):
            raise SystemExit(f"result object {key} holds indexes outside [0, {total})")
        counts += np.bincount(index, minlength=total)
        objects += 1
    merged = storage.blobs.get(storage.merged_key())
    merged_distinct = 0
    if merged is not None:
        column = pq.read_table(pa.BufferReader(merged), columns=["index"]).column("index")
        merged_index = column.to_numpy()
        if len(merged_index) == len(np.unique(merged_index)):
            merged_distinct = len(merged_index)
    return int((counts > 0).sum()), int((counts > 1).sum()), objects, merged_distinct


def _rss_line(what: str, track: Track) -> str:
    seen = track.growth()
    if seen is None:
        return f"{what}: not seen past 10%"
    first, half, last, peak, progress = seen
    return (
        f"{what}: {first:.1f} MB at 10%, {half:.1f} MB at 50%, {last:.1f} MB at "
        f"{100 * progress:.0f}% ({last - first:+.1f} MB; peak {peak:.1f} MB)"
    )


def report(args: argparse.Namespace, local: LocalResult, cluster: ClusterResult) -> float:
    """Print everything but the last line; return the ratio of the rates."""
    local_rate = local.completed / local.seconds
    cluster_rate = cluster.completed / cluster.seconds
    print(
        f"proctor run: {local.completed:,} cases, {args.workers} workers in "
        f"{local.seconds:.1f} s: {local_rate:,.0f} cases/s (CPU {local.cpu:.1f} s)"
    )
    print(
        f"operator:    {cluster.completed:,} cases, {args.workers} worker pods in "
        f"{cluster.seconds:.1f} s: {cluster_rate:,.0f} cases/s"
    )
    print("  " + ", ".join(f"{k} at {v:.1f} s" for k, v in cluster.marks.items()))
    print(f"  Succeeded at {cluster.seconds:.1f} s")
    top = sorted(cluster.cpu.items(), key=lambda kv: -kv[1])[:8]
    print("  CPU s by process: " + ", ".join(f"{k} {v:.1f}" for k, v in top if v >= 0.1))
    print("  " + _rss_line("operator RSS", cluster.operator))
    print(f"  operator RSS once Succeeded (merged results written): {cluster.operator_end:.1f} MB")
    for n, (pid, track) in enumerate(sorted(cluster.workers.items())):
        print("  " + _rss_line(f"worker {n} (pid {pid}) RSS", track))
    return cluster_rate / local_rate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--interval",
        type=float,
        default=3.0,
        help="the operator's scalingIntervalSeconds (default 3, the operator's own)",
    )
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args()
    print(f"load before: {load()}", flush=True)
    with bench_env("throughput") as env:
        nodes.create_node(
            env.core,
            "kwok-throughput",
            cpu="16",
            memory="64Gi",
            labels={"e2e.proctor.dev/pool": "throughput"},
        )
        doc = _spec(env, args.cases, args.workers)
        local = run_local(env, doc, args.workers, "throughput-local")
        print(f"proctor run done in {local.seconds:.1f} s; load {load()}", flush=True)
        with env.operator(run_workers=True, scalingIntervalSeconds=args.interval) as op:
            op.wait_started()
            cluster = run_cluster(env, doc, op.proc.pid, args.timeout)
        print(f"EvalRun done in {cluster.seconds:.1f} s; load {load()}", flush=True)
        ratio = report(args, local, cluster)
        distinct, twice, objects, merged = exactly_once(env, cluster.uid, args.cases)
    ok = distinct == args.cases and twice == 0 and merged == args.cases
    print(
        f"exactly once: {distinct:,} distinct case indexes of {args.cases:,} in {objects} "
        f"result objects, {twice} recorded twice; merged results.parquet: "
        f"{merged:,} distinct rows -> {'ok' if ok else 'FAILED'}"
    )
    print(f"load after: {load()}")
    if not ok:
        raise SystemExit(1)
    print(
        f"the operator reaches {ratio:.2f} of proctor run's cases/s "
        f"({args.cases:,} cases, {args.workers} workers; target >= {TARGET:.2f})"
    )


if __name__ == "__main__":
    main()
