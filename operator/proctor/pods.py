"""Worker pod manifests, computed from the run, its plan and the operator configuration.

Workers run under the restricted Pod Security Standard: non-root, no privilege escalation, all
capabilities dropped, read-only root filesystem with an emptyDir for scratch, RuntimeDefault
seccomp and no ServiceAccount token (workers never talk to the Kubernetes API).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from proctor.api import names
from proctor.api.names import (
    ANNOTATION_PROFILE,
    API_VERSION,
    DAEMON_POD_LABEL,
    LABEL_CAPACITY,
    LABEL_RUN_UID,
    SYSTEM_NAMESPACE,
)
from proctor.api.quantity import format_bytes, format_cpu
from proctor.api.v1alpha1 import EVALRUN_KIND
from proctor.api.v1alpha1.base import Toleration
from proctor.api.v1alpha1.env import is_reserved_env
from proctor.api.v1alpha1.evalrun import EvalRunSpec
from proctor.api.v1alpha1.placement import TopologySpread
from proctor.config import OperatorConfig
from proctor.planning.plan import GPU_RESOURCE, SPOT_LABELS, WorkerSize, worker_tolerations

LABEL_COMPONENT = "app.kubernetes.io/component"
# Kept here for the modules that import them from proctor.pods; the keys live in api.names.
LABEL_RUN = names.LABEL_RUN
LABEL_POOL = names.LABEL_POOL
HOSTNAME_KEY = names.HOSTNAME_KEY
METRICS_PORT_NAME = "metrics"  # the container port a PodMonitor selects workers by
METRICS_ENV = "PROCTOR_METRICS_PORT"


def worker_labels(run_name: str, run_uid: str, component: str = "worker") -> dict[str, str]:
    """Labels that identify one run's workers (also their selector)."""
    return {
        "app.kubernetes.io/name": "proctor",
        LABEL_COMPONENT: component,
        "app.kubernetes.io/managed-by": "proctor",
        LABEL_RUN: run_name,
        LABEL_RUN_UID: run_uid,
    }


def merge_env(
    own: Sequence[Mapping[str, Any]], user: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The operator's variables, then the run's that name none of them and no reserved name.
    The schema refuses such names already; dropping them here keeps a run admitted under an
    older CRD from pointing its pods at another run's queue or results."""
    taken = {str(e["name"]) for e in own}
    kept = [e for e in user if e["name"] not in taken and not is_reserved_env(str(e["name"]))]
    return [dict(e) for e in own] + [dict(e) for e in kept]


def with_metrics_port(env: Sequence[Mapping[str, Any]], port: int) -> list[dict[str, Any]]:
    """``env`` with the operator's ``PROCTOR_METRICS_PORT`` (replacing a run's own, so the
    container port a PodMonitor scrapes is the one served); unchanged when ``port`` is 0."""
    if not port:
        return [dict(e) for e in env]
    kept = [dict(e) for e in env if e["name"] != METRICS_ENV]
    return [*kept, {"name": METRICS_ENV, "value": str(port)}]


def served_metrics_port(env: Sequence[Mapping[str, Any]]) -> int | None:
    """The port a worker with ``env`` serves metrics on: a literal ``PROCTOR_METRICS_PORT``
    in 1..65535 (the worker reads 0 or none as no metrics; a valueFrom is not known here)."""
    for e in env:
        if e["name"] == METRICS_ENV:
            value = str(e.get("value") or "").strip()
            if value.isdigit() and 0 < int(value) <= 65535:
                return int(value)
    return None


def selector(run_name: str) -> str:
    return f"{LABEL_COMPONENT}=worker,{LABEL_RUN}={run_name}"


def _toleration(tol: Toleration) -> dict[str, Any]:
    return tol.model_dump(by_alias=True, exclude_none=True)


def _node_affinity(
    spec: EvalRunSpec, pool_selector: Mapping[str, str] | None, on_demand_only: bool
) -> dict[str, Any] | None:
    expressions: list[dict[str, Any]] = [
        {"key": k, "operator": "In", "values": [v]} for k, v in (pool_selector or {}).items()
    ]
    if on_demand_only:
        # NotIn also matches nodes without the label, i.e. every on-demand node.
        expressions += [{"key": k, "operator": "NotIn", "values": [v]} for k, v in SPOT_LABELS]
    if not expressions:
        return None
    return {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": expressions}]
        }
    }


def _anti_affinity(spread: str, run_name: str) -> dict[str, Any] | None:
    term = {
        "labelSelector": {
            "matchLabels": {LABEL_COMPONENT: "worker", LABEL_RUN: run_name},
        },
        "topologyKey": HOSTNAME_KEY,
    }
    if spread == "required":
        return {"requiredDuringSchedulingIgnoredDuringExecution": [term]}
    if spread == "preferred":
        return {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "podAffinityTerm": term}
            ]
        }
    return None


# Every pod on the node, in any namespace, but DaemonSet pods and kube-system's node agents.
_ANY_NEIGHBOUR: dict[str, Any] = {
    "labelSelector": {"matchExpressions": [{"key": DAEMON_POD_LABEL, "operator": "DoesNotExist"}]},
    "namespaceSelector": {
        "matchExpressions": [
            {
                "key": "kubernetes.io/metadata.name",
                "operator": "NotIn",
                "values": [SYSTEM_NAMESPACE],
            }
        ]
    },
    "topologyKey": HOSTNAME_KEY,
}


def exclusive_affinity() -> dict[str, Any]:
    """Required anti-affinity against every other pod but node agents: the worker goes only
    to a node with no such pod, and, since the scheduler honours a running pod's required
    term for each pod it places, no such pod joins the worker's node while it runs."""
    return {"requiredDuringSchedulingIgnoredDuringExecution": [dict(_ANY_NEIGHBOUR)]}


def spread_constraints(
    run_name: str, constraints: Sequence[TopologySpread]
) -> list[dict[str, Any]]:
    """The run's topology spread constraints as a Pod spec writes them. The operator sets the
    selector (the run's own workers: a run cannot steer by other pods) and counts only the
    nodes a worker tolerates as domains, as planning does."""
    out = []
    for c in constraints:
        item: dict[str, Any] = {
            "maxSkew": c.max_skew,
            "topologyKey": c.topology_key,
            "whenUnsatisfiable": c.when_unsatisfiable,
            "labelSelector": {"matchLabels": {LABEL_RUN: run_name, LABEL_COMPONENT: "worker"}},
            "nodeTaintsPolicy": "Honor",
        }
        if c.min_domains is not None:
            item["minDomains"] = c.min_domains
        out.append(item)
    return out


def _resources(spec: EvalRunSpec, size: WorkerSize) -> dict[str, Any]:
    requests: dict[str, str] = {
        "cpu": format_cpu(size.cpu_millis),
        "memory": format_bytes(size.memory),
    }
    limits: dict[str, str] = {"memory": format_bytes(size.memory)}
    if spec.resources is not None:
        if spec.resources.cpu_limit:
            limits["cpu"] = spec.resources.cpu_limit
        if spec.resources.ephemeral_storage:
            requests["ephemeral-storage"] = spec.resources.ephemeral_storage
    if size.gpus:
        requests[GPU_RESOURCE] = str(size.gpus)
        limits[GPU_RESOURCE] = str(size.gpus)
    return {"requests": requests, "limits": limits}


@dataclass(frozen=True)
class PodKind:
    """What sets one kind of operator pod apart; everything else (resources, placement,
    tolerations, the restricted security context) comes from the run spec and its plan."""

    owner_kind: str = EVALRUN_KIND
    component: str = "worker"  # the component label and the container's name
    command: Sequence[str] | None = None  # None: the operator's worker command
    generate_name: str = ""  # "": ``<run>-worker-``
    labels: Mapping[str, str] = field(default_factory=dict)  # added to the run's labels
    annotations: Mapping[str, str] = field(default_factory=dict)
    metrics_port: bool = True  # serves metrics on the operator's workerMetricsPort
    topology_spread: Sequence[Mapping[str, Any]] = ()  # built by spread_constraints
    pod_anti_affinity: Mapping[str, Any] | None = None


def worker_pod(
    *,
    run_name: str,
    run_uid: str,
    namespace: str,
    spec: EvalRunSpec,
    size: WorkerSize,
    config: OperatorConfig,
    env: Sequence[Mapping[str, Any]],
    pool: str = "",
    spot_fallback: bool = False,
    admission_labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The manifest of one worker pod of the run; ``admission_labels`` hand it to Kueue
    (:func:`proctor.planning.admission.kueue_pod_labels`)."""
    placement = spec.placement
    kind = PodKind(
        topology_spread=spread_constraints(run_name, placement.spread_constraints()),
        pod_anti_affinity=(
            exclusive_affinity()
            if placement.exclusive
            else _anti_affinity(placement.spread, run_name)
        ),
        labels=dict(admission_labels or {}),
    )
    return build_pod(
        run_name=run_name,
        run_uid=run_uid,
        namespace=namespace,
        spec=spec,
        size=size,
        config=config,
        env=env,
        kind=kind,
        pool=pool,
        spot_fallback=spot_fallback,
    )


def _labels(
    run_name: str, run_uid: str, config: OperatorConfig, *, pool: str, on_demand_only: bool,
    kind: PodKind,
) -> dict[str, str]:  # fmt: skip
    labels = {**config.worker_pod_labels, **worker_labels(run_name, run_uid, kind.component)}
    if pool:
        labels[LABEL_POOL] = pool
    labels[LABEL_CAPACITY] = "on-demand" if on_demand_only else "any"
    return {**labels, **kind.labels}


def _container(
    spec: EvalRunSpec, size: WorkerSize, config: OperatorConfig, *,
    env: Sequence[Mapping[str, Any]], kind: PodKind,
) -> dict[str, Any]:  # fmt: skip
    own_env = with_metrics_port(env, config.worker_metrics_port if kind.metrics_port else 0)
    container: dict[str, Any] = {
        "name": kind.component,
        "image": config.worker_image or spec.image,
        "command": list(config.worker_command if kind.command is None else kind.command),
        "env": own_env,
    }
    port = served_metrics_port(own_env) if kind.metrics_port else None
    if port:
        container["ports"] = [{"name": METRICS_PORT_NAME, "containerPort": port}]
    container |= {
        "resources": _resources(spec, size),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "scratch", "mountPath": "/tmp"}],
    }
    return container


def _pod_spec(
    spec: EvalRunSpec, container: dict[str, Any], config: OperatorConfig, *,
    affinity: Mapping[str, Any], spot_fallback: bool,
) -> dict[str, Any]:  # fmt: skip
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": config.worker_grace_seconds,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}}],
        "tolerations": [_toleration(t) for t in worker_tolerations(spec, spot_fallback)],
    }
    if affinity:
        pod_spec["affinity"] = dict(affinity)
    return pod_spec


def build_pod(
    *,
    run_name: str,
    run_uid: str,
    namespace: str,
    spec: EvalRunSpec,
    size: WorkerSize,
    config: OperatorConfig,
    env: Sequence[Mapping[str, Any]],
    kind: PodKind,
    pool: str = "",
    spot_fallback: bool = False,
) -> dict[str, Any]:
    """The manifest of one pod of ``kind`` for the run, built in one go (nothing edits it
    afterwards)."""
    placement = spec.placement
    pool_selector: Mapping[str, str] | None = None
    if pool:
        pool_selector = next(p.node_selector for p in placement.pools or () if p.name == pool)
    spot_ok = placement.spot.allowed
    on_demand_only = not spot_ok or spot_fallback
    affinity: dict[str, Any] = {}
    node_affinity = _node_affinity(spec, pool_selector, on_demand_only)
    if node_affinity:
        affinity["nodeAffinity"] = node_affinity
    if kind.pod_anti_affinity:
        affinity["podAntiAffinity"] = dict(kind.pod_anti_affinity)
    container = _container(spec, size, config, env=env, kind=kind)
    pod_spec = _pod_spec(spec, container, config, affinity=affinity, spot_fallback=spot_fallback)
    if kind.topology_spread:
        pod_spec["topologySpreadConstraints"] = [dict(c) for c in kind.topology_spread]
    if placement.node_selector:
        pod_spec["nodeSelector"] = dict(placement.node_selector)
    if spec.service_account_name:
        pod_spec["serviceAccountName"] = spec.service_account_name
    labels = _labels(run_name, run_uid, config, pool=pool, on_demand_only=on_demand_only, kind=kind)
    metadata = {
        "generateName": kind.generate_name or f"{run_name}-worker-",
        "namespace": namespace,
        "labels": labels,
        "annotations": {ANNOTATION_PROFILE: size.profile, **kind.annotations},
        "ownerReferences": [
            {
                "apiVersion": API_VERSION,
                "kind": kind.owner_kind,
                "name": run_name,
                "uid": run_uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}
