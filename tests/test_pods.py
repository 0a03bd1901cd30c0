"""Worker pod manifests."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from proctor.api.names import LABEL_RUN
from proctor.api.v1alpha1.evalrun import EvalRunSpec
from proctor.config import OperatorConfig
from proctor.planning.plan import resolve_size
from proctor.pods import selector, served_metrics_port, worker_pod

BASE: dict[str, Any] = {
    "image": "img:1",
    "task": {"entrypoint": "m:t"},
    "cases": {"count": 10},
    "profile": "small",
}


def build(
    config: OperatorConfig | None = None,
    env: list[dict[str, Any]] | None = None,
    **changes: Any,
) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    pool = changes.pop("pool", "")
    fallback = changes.pop("spot_fallback", False)
    data.update(changes)
    spec = EvalRunSpec.model_validate(data)
    cfg = config or OperatorConfig()
    return worker_pod(
        run_name="run1",
        run_uid="uid-1",
        namespace="ns",
        spec=spec,
        size=resolve_size(spec, cfg),
        config=cfg,
        env=env if env is not None else [{"name": "PROCTOR_RUN", "value": "ns/run1"}],
        pool=pool,
        spot_fallback=fallback,
    )


def test_owner_labels_and_env() -> None:
    pod = build()
    meta = pod["metadata"]
    assert meta["generateName"] == "run1-worker-"
    assert meta["labels"][LABEL_RUN] == "run1"
    owner = meta["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("EvalRun", "uid-1", True)
    container = pod["spec"]["containers"][0]
    assert container["env"] == [
        {"name": "PROCTOR_RUN", "value": "ns/run1"},
        {"name": "PROCTOR_METRICS_PORT", "value": "9090"},  # the operator's default port
    ]
    assert container["command"] == ["proctor", "worker"]
    assert selector("run1") == "app.kubernetes.io/component=worker,proctor.dev/run=run1"


def test_restricted_security() -> None:
    pod = build()
    spec = pod["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = spec["containers"][0]["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True


@pytest.mark.parametrize(
    ("spread", "key"),
    [
        ("required", "requiredDuringSchedulingIgnoredDuringExecution"),
        ("preferred", "preferredDuringSchedulingIgnoredDuringExecution"),
        ("none", None),
    ],
)
def test_anti_affinity(spread: str, key: str | None) -> None:
    pod = build(placement={"spread": spread})
    anti = pod["spec"].get("affinity", {}).get("podAntiAffinity")
    if key is None:
        assert anti is None
        assert "topologySpreadConstraints" not in pod["spec"]
    else:
        assert list(anti) == [key]


OWN_WORKERS = {"matchLabels": {LABEL_RUN: "run1", "app.kubernetes.io/component": "worker"}}
ZONE = "topology.kubernetes.io/zone"
# (name, placement, the topologySpreadConstraints the pod carries)
SPREADS: list[tuple[str, dict[str, Any], list[dict[str, Any]]]] = [
    (
        "default: prefer zones",
        {},
        [
            {
                "maxSkew": 1,
                "topologyKey": ZONE,
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": OWN_WORKERS,
                "nodeTaintsPolicy": "Honor",
            }
        ],
    ),
    ("spread none: no default", {"spread": "none"}, []),
    ("explicitly none", {"topologySpread": []}, []),
    (
        "the run's own, whatever spread says",
        {
            "spread": "none",
            "topologySpread": [
                {"topologyKey": ZONE},
                {"topologyKey": "example.com/rack", "maxSkew": 3, "minDomains": 2},
                {"topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway"},
            ],
        },
        [
            {
                "maxSkew": 1,
                "topologyKey": ZONE,
                "whenUnsatisfiable": "DoNotSchedule",
                "labelSelector": OWN_WORKERS,
                "nodeTaintsPolicy": "Honor",
            },
            {
                "maxSkew": 3,
                "topologyKey": "example.com/rack",
                "whenUnsatisfiable": "DoNotSchedule",
                "labelSelector": OWN_WORKERS,
                "nodeTaintsPolicy": "Honor",
                "minDomains": 2,
            },
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": OWN_WORKERS,
                "nodeTaintsPolicy": "Honor",
            },
        ],
    ),
]


@pytest.mark.parametrize(("name", "placement", "expected"), SPREADS, ids=[c[0] for c in SPREADS])
def test_topology_spread(name: str, placement: dict[str, Any], expected: list[Any]) -> None:
    pod = build(placement=placement)
    assert pod["spec"].get("topologySpreadConstraints", []) == expected


def test_exclusive_keeps_every_other_pod_but_node_agents_off_the_node() -> None:
    pod = build(placement={"isolation": "exclusive", "spread": "preferred"})
    assert pod["spec"]["affinity"]["podAntiAffinity"] == {
        "requiredDuringSchedulingIgnoredDuringExecution": [
            {
                "labelSelector": {
                    "matchExpressions": [
                        {"key": "pod-template-generation", "operator": "DoesNotExist"}
                    ]
                },
                "namespaceSelector": {
                    "matchExpressions": [
                        {
                            "key": "kubernetes.io/metadata.name",
                            "operator": "NotIn",
                            "values": ["kube-system"],
                        }
                    ]
                },
                "topologyKey": "kubernetes.io/hostname",
            }
        ]
    }


def test_resources_from_profile_and_gpu() -> None:
    pod = build(profile="large", gpus=2)
    res = pod["spec"]["containers"][0]["resources"]
    assert res["requests"] == {"cpu": "4", "memory": "4Gi", "nvidia.com/gpu": "2"}
    assert res["limits"] == {"memory": "4Gi", "nvidia.com/gpu": "2"}
    keys = {t.get("key") for t in pod["spec"]["tolerations"]}
    assert "nvidia.com/gpu" in keys


def test_explicit_resources_with_cpu_limit() -> None:
    pod = build(profile=None, resources={"cpu": "1500m", "memory": "3Gi", "cpuLimit": "2"})
    res = pod["spec"]["containers"][0]["resources"]
    assert res["requests"] == {"cpu": "1500m", "memory": "3Gi"}
    assert res["limits"] == {"memory": "3Gi", "cpu": "2"}


@pytest.mark.parametrize(
    ("placement", "fallback", "on_demand"),
    [
        ({}, False, False),
        ({"spot": {"allowed": False}}, False, True),
        ({"spot": {"allowed": True, "fallbackToOnDemandAfter": 2}}, True, True),
    ],
)
def test_spot_affinity(placement: dict[str, Any], fallback: bool, on_demand: bool) -> None:
    pod = build(placement=placement, spot_fallback=fallback)
    node_aff = pod["spec"].get("affinity", {}).get("nodeAffinity")
    if not on_demand:
        assert node_aff is None
        assert pod["metadata"]["labels"]["proctor.dev/capacity"] == "any"
        return
    terms = node_aff["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    exprs = {(e["key"], e["operator"]) for e in terms[0]["matchExpressions"]}
    assert ("karpenter.sh/capacity-type", "NotIn") in exprs
    assert ("cloud.google.com/gke-spot", "NotIn") in exprs
    assert pod["metadata"]["labels"]["proctor.dev/capacity"] == "on-demand"
    keys = {t.get("key") for t in pod["spec"]["tolerations"]}
    assert "cloud.google.com/gke-spot" not in keys


def test_pool_pins_node_affinity() -> None:
    pod = build(
        placement={"pools": [{"name": "fast", "nodeSelector": {"tier": "fast"}}]}, pool="fast"
    )
    terms = pod["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    assert terms[0]["matchExpressions"] == [{"key": "tier", "operator": "In", "values": ["fast"]}]
    assert pod["metadata"]["labels"]["proctor.dev/pool"] == "fast"


def test_config_overrides_image_labels_and_grace() -> None:
    cfg = OperatorConfig(
        worker_image="mirror/proctor:1",
        worker_pod_labels={"e2e.proctor.dev/run": "local"},
        worker_grace_seconds=20,
    )
    pod = build(config=cfg, placement={"nodeSelector": {"a": "b"}})
    assert pod["spec"]["containers"][0]["image"] == "mirror/proctor:1"
    assert pod["metadata"]["labels"]["e2e.proctor.dev/run"] == "local"
    assert pod["spec"]["terminationGracePeriodSeconds"] == 20
    assert pod["spec"]["nodeSelector"] == {"a": "b"}


RUN_ENV = [{"name": "PROCTOR_RUN", "value": "ns/run1"}]


def _metrics(port: str) -> dict[str, str]:
    return {"name": "PROCTOR_METRICS_PORT", "value": port}


@pytest.mark.parametrize(
    ("config_port", "run_env", "want_env", "want_port"),
    [
        pytest.param(9090, RUN_ENV, [*RUN_ENV, _metrics("9090")], 9090, id="default"),
        pytest.param(9400, RUN_ENV, [*RUN_ENV, _metrics("9400")], 9400, id="configured"),
        # The operator's port wins over the run's, so the port a PodMonitor scrapes is served.
        pytest.param(9090, [_metrics("8000"), *RUN_ENV], [*RUN_ENV, _metrics("9090")], 9090,
                     id="run-env-replaced"),
        pytest.param(0, RUN_ENV, RUN_ENV, None, id="off"),
        # Off in the operator: a run may still serve metrics; its port is declared.
        pytest.param(0, [*RUN_ENV, _metrics("8000")], [*RUN_ENV, _metrics("8000")], 8000,
                     id="off-run-serves"),
        pytest.param(0, [*RUN_ENV, _metrics("0")], [*RUN_ENV, _metrics("0")], None,
                     id="off-run-zero"),
    ],
)  # fmt: skip
def test_worker_metrics_port_env_and_named_container_port(
    config_port: int, run_env: list[dict[str, Any]], want_env: list[Any], want_port: int | None
) -> None:
    before = copy.deepcopy(run_env)
    pod = build(config=OperatorConfig(worker_metrics_port=config_port), env=run_env)
    container = pod["spec"]["containers"][0]
    assert container["env"] == want_env
    ports = container.get("ports")
    assert ports == ([{"name": "metrics", "containerPort": want_port}] if want_port else None)
    assert run_env == before  # not mutated


@pytest.mark.parametrize(
    ("env", "port"),
    [
        ([], None),
        ([_metrics("9090")], 9090),
        ([_metrics(" 8000 ")], 8000),
        ([_metrics("0")], None),
        ([_metrics("70000")], None),
        ([_metrics("http")], None),
        ([{"name": "PROCTOR_METRICS_PORT", "valueFrom": {"configMapKeyRef": {}}}], None),
    ],
)
def test_served_metrics_port(env: list[dict[str, Any]], port: int | None) -> None:
    assert served_metrics_port(env) == port
