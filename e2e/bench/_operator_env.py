"""Shared set-up for the operator benchmarks: a cluster of their own (own state dir), the CRDs,
Redis and moto, a namespace with the queue and S3 Secrets, and the operator as a process."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from kubernetes import client, config
from kubernetes.client.rest import ApiException

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from e2e.harness import cluster as cluster_mod  # noqa: E402
from e2e.harness import services  # noqa: E402
from e2e.harness.crds import apply_crds, repo_crds  # noqa: E402
from e2e.harness.operator import (  # noqa: E402
    CREDS,
    GROUP,
    PLURAL,
    VERSION,
    OperatorProcess,
    evalrun_doc,
    operator_config,
    operator_process,
)


@dataclass
class BenchEnv:
    api_client: Any
    core: Any
    custom: Any
    namespace: str
    bucket: str
    moto: str
    redis_url: str
    workdir: Path
    kubeconfig: Path

    def evalrun(self, name: str, count: int = 2000, **spec: Any) -> dict[str, Any]:
        doc = evalrun_doc(name, count=count, bucket=self.bucket, moto=self.moto)
        doc["spec"].update(spec)
        return doc

    def create(self, doc: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, doc
        )
        return out

    def operator(self, run_workers: bool = False, **extra: Any) -> Any:
        cfg = operator_config(run_workers=run_workers, **extra)
        return operator_process(self.kubeconfig, self.workdir, cfg, namespace=self.namespace)


PROCTOR_RESOURCES = ("evalruns", "benchmarksuites")

GC_WATCH_TIMEOUT = 90.0
"""kube-controller-manager's garbage collector looks for new resources every 30 s."""


def apiserver_metric(api_client: Any, name: str) -> list[tuple[dict[str, str], float]]:
    """The API server's samples of one metric from its ``/metrics``: (labels, value)."""
    text = api_client.call_api(
        "/metrics", "GET", auth_settings=["BearerToken"], _preload_content=False
    ).data.decode()
    samples = []
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            samples.append((labels, float(line.rsplit(" ", 1)[1])))
    return samples


def cluster_watches(api_client: Any) -> set[str]:
    """Proctor resources the API server serves a cluster-wide watch of now
    (``apiserver_longrunning_requests``)."""
    return {
        labels.get("resource", "")
        for labels, value in apiserver_metric(api_client, "apiserver_longrunning_requests")
        if labels.get("group") == "proctor.dev"
        and labels.get("verb") == "WATCH"
        and labels.get("scope") == "cluster"
        and value > 0
    }


def wait_for_garbage_collector(api_client: Any, timeout: float = GC_WATCH_TIMEOUT) -> float:
    """Wait until the garbage collector watches Proctor's resources; seconds waited.

    A cluster has had its CRDs for a long time when runs arrive. On one just started, the
    collector has not yet found the new resources (it looks every 30 s), so for each worker
    pod it sees it GETs the pod's owner run to learn whether it exists: about a GET per pod,
    a tenth of the API server's work in many_runs, and nothing a real cluster pays. Before
    the operator starts, the only cluster-wide watches of these resources are the collector's.
    """
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if cluster_watches(api_client) >= set(PROCTOR_RESOURCES):
            return time.monotonic() - start
        time.sleep(1.0)
    print(
        f"warning: the garbage collector did not watch {PROCTOR_RESOURCES} within "
        f"{timeout:.0f} s; figures may include its owner lookups",
        file=sys.stderr,
    )
    return time.monotonic() - start


@contextlib.contextmanager
def bench_env(name: str) -> Iterator[BenchEnv]:
    """Everything a benchmark needs; torn down on exit."""
    tmp = Path(tempfile.mkdtemp(prefix=f"proctor-bench-{name}-"))
    directory = (
        cluster_mod.default_state_dir().parent / f"cluster-bench-{name}-{uuid.uuid4().hex[:6]}"
    )
    state = cluster_mod.up(directory, do_build=True)
    try:
        api_client = config.new_client_from_config(config_file=state.kubeconfig)
        core = client.CoreV1Api(api_client)
        apply_crds(api_client, repo_crds())
        with services.redis_server() as redis, services.moto_server() as moto:
            namespace = f"bench-{uuid.uuid4().hex[:6]}"
            core.create_namespace({"metadata": {"name": namespace}})
            for _ in range(100):
                try:
                    core.read_namespaced_service_account("default", namespace)
                    break
                except ApiException:
                    time.sleep(0.1)
            bucket = f"bench-{uuid.uuid4().hex[:8]}"
            boto3.client(
                "s3",
                endpoint_url=moto.url,
                region_name="us-east-1",
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
            ).create_bucket(Bucket=bucket)
            core.create_namespaced_secret(
                namespace, {"metadata": {"name": "queue"}, "stringData": {"url": redis.url}}
            )
            core.create_namespaced_secret(
                namespace, {"metadata": {"name": "s3"}, "stringData": dict(CREDS)}
            )
            wait_for_garbage_collector(api_client)
            yield BenchEnv(
                api_client,
                core,
                client.CustomObjectsApi(api_client),
                namespace,
                bucket,
                moto.url,
                redis.url,
                tmp,
                Path(state.kubeconfig),
            )
    finally:
        cluster_mod.down(directory)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def load() -> str:
    """The machine's load average (1, 5, 15 minutes), to print beside a figure."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def pid_cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def pid_rss_mb(pid: int) -> float:
    """Resident set size of process ``pid``, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(op: OperatorProcess) -> float:
    """User plus system CPU time of the operator process so far, from /proc."""
    return pid_cpu_seconds(op.proc.pid)


def rss_mb(op: OperatorProcess) -> float:
    """Resident set size of the operator process, from /proc."""
    return pid_rss_mb(op.proc.pid)


def cpu_by_process() -> dict[str, float]:
    """CPU seconds (user + system) so far of the processes a benchmark loads, by name: the
    control plane's, Redis, moto, the operator and this process."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            comm, rest = stat.read_text().rsplit(")", 1)
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        name = comm.split("(", 1)[1]
        if "proctor operator" in cmdline:
            name = "operator"
        elif "moto" in cmdline:
            name = "moto"
        elif int(stat.parent.name) == os.getpid():
            name = "bench"
        elif name.startswith(("python", "pytest")):
            continue
        fields = rest.split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out
