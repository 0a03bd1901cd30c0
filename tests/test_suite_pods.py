"""Benchmark pods: EvalRun worker pods made benchmark pods, with isolation across suites."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from proctor.api.v1alpha1.benchmarksuite import BenchmarkSuiteSpec
from proctor.bench.matrix import Cell, cells
from proctor.bench.worker import BenchWorkerConfig
from proctor.config import OperatorConfig
from proctor.connection import Connection, RunRef
from proctor.planning.plan import resolve_size
from proctor.suite.pods import (
    ANNOTATION_CELL,
    LABEL_CELL,
    LABEL_ISOLATION,
    benchmark_env,
    benchmark_pod,
    cell_run_spec,
    label_value,
)

SUITE: dict[str, Any] = {
    "image": "bench:1",
    "benchmarks": [
        {"name": "status", "command": ["git", "status"], "profile": "medium", "repetitions": 5},
        {
            "name": "log",
            "command": ["git", "log"],
            "resources": {"cpu": "3", "memory": "3Gi", "cpuLimit": "3"},
            "env": [
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "tok", "key": "t"}}},
                {"name": "LANG", "value": "C"},
            ],
        },
    ],
    "variants": [{"name": "git"}, {"name": "jj", "image": "jj:2", "args": ["--jj"]}],
    "placement": {"nodeSelector": {"pool": "bench"}},
}
REF = RunRef("ns", "suite1", "0123456789abcdef", 1, {})
CONN = Connection(
    queue_url="redis://secret@redis:6379/0",
    storage_uri="s3://bucket/bench",
    storage_endpoint="http://moto:5000",
    storage_region="us-east-1",
    storage_credentials={"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"},
    env=[
        {
            "name": "PROCTOR_QUEUE_URL",
            "valueFrom": {"secretKeyRef": {"name": "queue", "key": "url"}},
        },
        {
            "name": "AWS_ACCESS_KEY_ID",
            "valueFrom": {"secretKeyRef": {"name": "s3", "key": "AWS_ACCESS_KEY_ID"}},
        },
        {"name": "PROCTOR_STORAGE_URI", "value": "s3://bucket/bench"},
    ],
)


def spec_of(**changes: Any) -> BenchmarkSuiteSpec:
    data = copy.deepcopy(SUITE)
    data.update(changes)
    return BenchmarkSuiteSpec.model_validate(data)


def build(spec: BenchmarkSuiteSpec, cell: Cell, config: OperatorConfig | None = None) -> Any:
    cfg = config or OperatorConfig()
    return benchmark_pod(
        suite="suite1",
        suite_uid=REF.uid,
        namespace="ns",
        spec=spec,
        cell=cell,
        run_id="20260301-030000-01234567",
        size=resolve_size(cell_run_spec(spec, cell), cfg),
        config=cfg,
        env=benchmark_env(spec, REF, "20260301-030000-01234567", cell, CONN),
    )


def test_command_labels_owner_and_restricted_security() -> None:
    spec = spec_of()
    cell = cells(spec)[1]  # status.jj
    pod = build(spec, cell, OperatorConfig(worker_pod_labels={"team": "perf"}))
    meta = pod["metadata"]
    assert meta["generateName"] == "suite1-status-jj-"
    assert meta["annotations"][ANNOTATION_CELL] == "status.jj"
    labels = meta["labels"]
    assert labels["app.kubernetes.io/component"] == "benchmark"
    assert labels[LABEL_CELL] == "status.jj"
    assert labels[LABEL_ISOLATION] == "exclusive"
    assert labels["proctor.dev/suite-run"] == "20260301-030000-01234567"
    assert labels["team"] == "perf"
    owner = meta["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "BenchmarkSuite",
        "suite1",
        REF.uid,
        True,
    )
    container = pod["spec"]["containers"][0]
    assert container["name"] == "benchmark"
    assert container["command"] == ["proctor", "bench-worker"]
    assert container["image"] == "jj:2"
    assert "ports" not in container
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["nodeSelector"] == {"pool": "bench"}
    assert "topologySpreadConstraints" not in pod["spec"]


def test_resources_from_the_profile_table_or_explicit() -> None:
    spec = spec_of()
    medium = build(spec, cells(spec)[0])["spec"]["containers"][0]["resources"]
    assert medium == {"requests": {"cpu": "2", "memory": "2Gi"}, "limits": {"memory": "2Gi"}}
    explicit = build(spec, cells(spec)[2])["spec"]["containers"][0]["resources"]
    assert explicit == {
        "requests": {"cpu": "3", "memory": "3Gi"},
        "limits": {"memory": "3Gi", "cpu": "3"},
    }
    # An operator's own profile table applies, as for EvalRun workers.
    table = OperatorConfig.model_validate({"profiles": {"medium": {"cpu": "6", "memory": "1Gi"}}})
    mine = build(spec, cells(spec)[0], table)["spec"]["containers"][0]["resources"]
    assert mine["requests"] == {"cpu": "6", "memory": "1Gi"}


ANY_BENCHMARK: dict[str, Any] = {
    "labelSelector": {
        "matchLabels": {
            "app.kubernetes.io/component": "benchmark",
            "app.kubernetes.io/managed-by": "proctor",
        }
    },
    "namespaceSelector": {},
    "topologyKey": "kubernetes.io/hostname",
}


@pytest.mark.parametrize(
    ("isolation", "expected"),
    [
        ("exclusive", {"requiredDuringSchedulingIgnoredDuringExecution": [ANY_BENCHMARK]}),
        (
            "spread",
            {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 100, "podAffinityTerm": ANY_BENCHMARK}
                ]
            },
        ),
        ("shared", None),
    ],
)
def test_isolation_is_anti_affinity_against_every_suites_benchmark_pods(
    isolation: str, expected: dict[str, Any] | None
) -> None:
    spec = spec_of(isolation=isolation)
    pod = build(spec, cells(spec)[0])
    affinity = pod["spec"].get("affinity") or {}
    assert affinity.get("podAntiAffinity") == expected
    # The shared label the terms select is on every benchmark pod, whatever its isolation.
    labels = pod["metadata"]["labels"]
    assert all(labels[k] == v for k, v in ANY_BENCHMARK["labelSelector"]["matchLabels"].items())


def test_spot_fallback_and_pools_keep_the_evalrun_node_affinity() -> None:
    spec = spec_of(placement={"spot": {"allowed": False}})
    pod = build(spec, cells(spec)[0])
    affinity = pod["spec"]["affinity"]
    terms = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    keys = {e["key"] for e in terms["nodeSelectorTerms"][0]["matchExpressions"]}
    assert "karpenter.sh/capacity-type" in keys
    assert "podAntiAffinity" in affinity


def test_env_configures_the_bench_worker_without_secret_values() -> None:
    spec = spec_of()
    cell = cells(spec)[2]  # log.git: a valueFrom variable
    env = build(spec, cell)["spec"]["containers"][0]["env"]
    names = [e["name"] for e in env]
    assert len(names) == len(set(names)), names
    by_name = {e["name"]: e for e in env}
    # The queue URL carries a password: only its Secret is named.
    assert "value" not in by_name["PROCTOR_QUEUE_URL"]
    assert all("secret@" not in str(e.get("value", "")) for e in env)
    assert by_name["TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "tok", "key": "t"}
    assert "LANG" not in by_name  # literal cell env travels in the spec
    assert by_name["PROCTOR_NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    # What the worker reads back: resolve the pod env as the kubelet would.
    resolved = {e["name"]: e["value"] for e in env if "value" in e}
    resolved |= {"PROCTOR_QUEUE_URL": CONN.queue_url, "PROCTOR_NODE_NAME": "node-1"}
    resolved["PROCTOR_WORKER_ID"] = "pod-x"
    config = BenchWorkerConfig.from_env(resolved)
    assert (config.namespace, config.suite, config.cell) == ("ns", "suite1", "log.git")
    assert config.run_id == "20260301-030000-01234567"
    assert config.spec == spec
    assert config.storage_uri == "s3://bucket/bench"
    assert config.storage_endpoint == "http://moto:5000"
    assert config.node_name == "node-1"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("status.jj", "status.jj"),
        ("a" * 63, "a" * 63),
        ("-x/y-", "x-y"),
    ],
)
def test_label_value(text: str, expected: str) -> None:
    assert label_value(text) == expected


def test_long_label_values_keep_a_head_and_a_hash() -> None:
    long_a, long_b = "b" * 60 + ".x" * 10, "b" * 60 + ".y" * 10
    a, b = label_value(long_a), label_value(long_b)
    assert len(a) <= 63
    assert len(b) <= 63
    assert a != b
    assert a[0].isalnum()
    assert a[-1].isalnum()


def test_cell_run_spec_plans_exclusive_as_one_per_node() -> None:
    for isolation, spread in (
        ("exclusive", "required"),
        ("spread", "preferred"),
        ("shared", "none"),
    ):
        spec = spec_of(isolation=isolation)
        run = cell_run_spec(spec, cells(spec)[0])
        assert run.placement is not None
        assert run.placement.spread == spread
        assert run.placement.node_selector == {"pool": "bench"}
        assert run.workers is not None
        assert run.workers.max == 1


def test_a_suite_labelled_with_a_kueue_queue_hands_its_pods_to_kueue() -> None:
    spec = spec_of()
    cell = cells(spec)[0]
    cfg = OperatorConfig()
    common: dict[str, Any] = {
        "suite": "suite1", "suite_uid": REF.uid, "namespace": "ns", "spec": spec, "cell": cell,
        "run_id": "r1", "size": resolve_size(cell_run_spec(spec, cell), cfg), "config": cfg,
        "env": [],
    }  # fmt: skip
    queued = benchmark_pod(
        **common,
        suite_labels={"kueue.x-k8s.io/queue-name": "perf", "kueue.x-k8s.io/priority-class": "hi"},
    )
    labels = queued["metadata"]["labels"]
    assert (labels["kueue.x-k8s.io/queue-name"], labels["kueue.x-k8s.io/priority-class"]) == (
        "perf",
        "hi",
    )
    assert labels[LABEL_CELL] == cell.id
    plain = benchmark_pod(**common, suite_labels={"kueue.x-k8s.io/priority-class": "hi"})
    assert not any(k.startswith("kueue.x-k8s.io/") for k in plain["metadata"]["labels"])
