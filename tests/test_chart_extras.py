"""The chart's worker PodMonitor, extra arguments, volumes and objects, runbook URLs and
Chart.yaml metadata, rendered with `helm template`.

The PodMonitor test renders the chart and builds worker pods with the operator's own pod builder
(proctor.pods.worker_pod, fed the configuration the chart's ConfigMap holds): the monitor must
select every EvalRun worker pod in the namespaces the operator watches, on a port the pod
declares and serves, and no benchmark pod."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from proctor.api.v1alpha1.evalrun import EvalRunSpec
from proctor.bench.matrix import cells
from proctor.config import OperatorConfig
from proctor.connection import Connection, RunRef
from proctor.evalrun.decide import worker_env
from proctor.planning.plan import resolve_size
from proctor.pods import worker_pod
from tests.test_chart import CHART, CI_VALUES, one, render, run_helm, values_of
from tests.test_suite_pods import build as benchmark_pod_of
from tests.test_suite_pods import spec_of as suite_spec

Obj = dict[str, Any]
RULES = CHART / "files" / "prometheus-rules.yaml"
WITH_POD_MONITOR = [p for p in CI_VALUES if values_of(p)["metrics"]["workerPodMonitor"]["enabled"]]
RUN_SPEC: Obj = {
    "image": "proctor/proctor:0.1.0",
    "task": {"entrypoint": "proctor.examples.topk:task"},
    "cases": {"count": 100},
    "env": [{"name": "PROCTOR_METRICS_PORT", "value": "8000"}],  # the operator's port wins
}


def operator_config(docs: list[Obj]) -> OperatorConfig:
    """The configuration the operator reads: the chart's ConfigMap."""
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and "config.yaml" in d["data"])
    return OperatorConfig.model_validate(yaml.safe_load(cm["data"]["config.yaml"]))


def worker_pod_in(namespace: str, config: OperatorConfig) -> Obj:
    """A worker pod as the operator makes it for an EvalRun in ``namespace``."""
    spec = EvalRunSpec.model_validate(RUN_SPEC)
    ref = RunRef(namespace, "nightly", "uid-1", 1, {})
    conn = Connection(
        queue_url="redis://redis:6379/0",
        storage_uri="s3://results/runs",
        storage_endpoint=None,
        storage_region=None,
        storage_credentials={},
        env=[{"name": "PROCTOR_QUEUE_URL", "value": "redis://redis:6379/0"}],
    )
    return worker_pod(
        run_name=ref.name,
        run_uid=ref.uid,
        namespace=namespace,
        spec=spec,
        size=resolve_size(spec, config),
        config=config,
        env=worker_env(spec, ref, conn),
    )


def selects(monitor: Obj, pod: Obj) -> bool:
    """Whether a PodMonitor's namespace and label selectors pick ``pod`` (pure)."""
    spec = monitor["spec"]
    namespaces = spec["namespaceSelector"]
    meta = pod["metadata"]
    if not namespaces.get("any") and meta["namespace"] not in namespaces.get("matchNames", []):
        return False
    labels: dict[str, str] = meta["labels"]
    selector = spec["selector"]
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        present = expr["key"] in labels
        if (expr["operator"] == "Exists") != present:
            return False
        if expr["operator"] not in ("Exists", "DoesNotExist"):
            raise ValueError(f"operator {expr['operator']} not read by this test")
    return True


def scraped_ports(monitor: Obj, pod: Obj) -> list[int]:
    """The container ports the monitor's endpoints name on ``pod``."""
    names = {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]}
    return [
        p["containerPort"]
        for c in pod["spec"]["containers"]
        for p in c.get("ports", [])
        if p.get("name") in names
    ]


def served_port(pod: Obj) -> str | None:
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    return env.get("PROCTOR_METRICS_PORT")


@pytest.mark.parametrize(
    ("pod", "expected"),
    [
        pytest.param({"namespace": "a", "labels": {"x": "1", "r": "n"}}, True, id="selected"),
        pytest.param({"namespace": "b", "labels": {"x": "1", "r": "n"}}, False, id="namespace"),
        pytest.param({"namespace": "a", "labels": {"x": "2", "r": "n"}}, False, id="label"),
        pytest.param({"namespace": "a", "labels": {"x": "1"}}, False, id="no-run-label"),
    ],
)
def test_selects(pod: Obj, expected: bool) -> None:
    monitor = {
        "spec": {
            "namespaceSelector": {"matchNames": ["a"]},
            "selector": {
                "matchLabels": {"x": "1"},
                "matchExpressions": [{"key": "r", "operator": "Exists"}],
            },
        }
    }
    assert selects(monitor, {"metadata": pod}) is expected


@pytest.mark.parametrize("values_file", WITH_POD_MONITOR, ids=lambda p: p.name)
def test_worker_pod_monitor_selects_worker_pods_exposing_the_port(values_file: Path) -> None:
    docs = render(values_file)
    monitor = one(docs, "PodMonitor")
    config = operator_config(docs)
    assert config.worker_metrics_port == values_of(values_file)["config"]["workerMetricsPort"]
    watched = values_of(values_file)["operator"]["watchNamespaces"]
    for namespace in watched or ["team-a", "anywhere"]:
        pod = worker_pod_in(namespace, config)
        assert selects(monitor, pod), (monitor["spec"], pod["metadata"])
        # The endpoint's named port is declared, and it is the port the worker serves on.
        assert scraped_ports(monitor, pod) == [config.worker_metrics_port]
        assert served_port(pod) == str(config.worker_metrics_port)
    if watched:
        assert not selects(monitor, worker_pod_in("not-watched", config))
    # Benchmark pods of suites serve no metrics and are not scraped.
    suite = suite_spec()
    bench = benchmark_pod_of(suite, cells(suite)[0], config)
    assert not selects(monitor, bench)
    # The run label becomes a `run` label, as on the operator's per-run series.
    relabel = monitor["spec"]["podMetricsEndpoints"][0]["relabelings"][0]
    assert relabel["targetLabel"] == "run"
    assert relabel["sourceLabels"] == ["__meta_kubernetes_pod_label_proctor_dev_run"]


def test_worker_pod_monitor_needs_a_worker_metrics_port() -> None:
    out = run_helm(
        "template", "proctor", str(CHART),
        "--set", "metrics.workerPodMonitor.enabled=true", "--set", "config.workerMetricsPort=0",
    )  # fmt: skip
    assert out.returncode != 0
    assert "metrics.workerPodMonitor.enabled needs config.workerMetricsPort > 0" in out.stderr


def test_extra_args_volumes_and_mounts_reach_the_operator_pod() -> None:
    values_file = CHART / "ci" / "extras-values.yaml"
    values = values_of(values_file)["operator"]
    pod = one(render(values_file), "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"][-len(values["extraArgs"]) :] == values["extraArgs"]
    assert pod["volumes"][-len(values["extraVolumes"]) :] == values["extraVolumes"]
    mounts = container["volumeMounts"]
    assert mounts[-len(values["extraVolumeMounts"]) :] == values["extraVolumeMounts"]
    assert {m["name"] for m in mounts} <= {v["name"] for v in pod["volumes"]}


def test_extra_objects_are_templated_maps_and_strings() -> None:
    docs = render(CHART / "ci" / "extras-values.yaml")
    cm = next(d for d in docs if d["metadata"]["name"] == "s3-ca-bundle")
    assert cm["kind"] == "ConfigMap"
    assert cm["metadata"]["namespace"] == "proctor-system"
    assert cm["data"]["ca.crt"].startswith("-----BEGIN CERTIFICATE-----\n")
    secret = next(d for d in docs if d["kind"] == "Secret")
    assert secret["metadata"]["name"] == "proctor-extra"
    assert secret["metadata"]["namespace"] == "proctor-system"
    assert not [d for d in render() if d["kind"] == "Secret"]  # none by default


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("operator.extraVolumes[0].name=config", "/operator/extraVolumes/0/name"),
        ("operator.extraVolumeMounts[0].name=x", "/operator/extraVolumeMounts/0"),
        ("metrics.prometheusRule.runbookUrl=docs/operations.md", "runbookUrl"),
        ("config.workerMetricsPort=70000", "/config/workerMetricsPort"),
        ("metrics.workerPodMonitor.interval=often", "/metrics/workerPodMonitor/interval"),
    ],
)
def test_schema_rejects_bad_new_values(setting: str, message: str) -> None:
    out = run_helm("template", "proctor", str(CHART), "--set", setting)
    assert out.returncode != 0
    assert message in out.stderr, out.stderr


def test_runbook_urls_default_to_the_rules_file_and_are_absolute() -> None:
    page = yaml.safe_load((CHART / "values.yaml").read_text())["metrics"]["prometheusRule"][
        "runbookUrl"
    ]
    alerts = [
        r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r
    ]
    assert alerts
    for alert in alerts:
        assert alert["annotations"]["runbook_url"] == f"{page}#{alert['alert'].lower()}"
    docs = render(None, "metrics.prometheusRule.enabled=true")
    rule = one(docs, "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


def test_chart_yaml_names_home_sources_and_maintainers() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["home"].startswith("https://")
    assert chart["sources"]
    assert all(s.startswith("https://") for s in chart["sources"])
    assert chart["maintainers"]
    assert all(m["name"] for m in chart["maintainers"])
    page = yaml.safe_load((CHART / "values.yaml").read_text())["metrics"]["prometheusRule"][
        "runbookUrl"
    ]
    assert page.startswith(chart["home"] + "/")  # the runbooks are the project's docs
