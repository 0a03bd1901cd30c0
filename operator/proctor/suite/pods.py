"""Benchmark pods: one per cell of a suite run, built by the EvalRun worker pod's builder.

A cell is planned and sized as an EvalRun of at most one worker would be
(:func:`cell_run_spec`), so profiles, explicit resources, node selectors, pools, tolerations,
spot handling and the restricted security context are the EvalRun operator's, unchanged. What
differs is said here: the command (``proctor bench-worker``), labels, the owner, and isolation
between benchmark pods of *every* suite (:func:`isolation_affinity`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

from proctor.api.names import KUEUE_QUEUE_LABEL
from proctor.api.v1alpha1.base import Placement
from proctor.api.v1alpha1.benchmarksuite import KIND, BenchmarkSuiteSpec
from proctor.api.v1alpha1.evalrun import CasesSpec, EvalRunSpec, TaskSpec, WorkersSpec
from proctor.api.v1alpha1.placement import RunPlacement
from proctor.bench.matrix import Cell
from proctor.bench.worker import BenchWorkerConfig
from proctor.config import OperatorConfig
from proctor.connection import Connection, RunRef
from proctor.planning.admission import kueue_pod_labels
from proctor.planning.plan import WorkerSize
from proctor.pods import HOSTNAME_KEY, LABEL_COMPONENT, PodKind, build_pod, merge_env

COMPONENT = "benchmark"
LABEL_CELL = "proctor.dev/cell"
LABEL_SUITE_RUN = "proctor.dev/suite-run"
LABEL_ISOLATION = "proctor.dev/isolation"
ANNOTATION_CELL = "proctor.dev/cell"
BENCH_WORKER_COMMAND = ("proctor", "bench-worker")

# How each isolation mode is planned: exclusive holds one benchmark pod per node.
PLANNER_SPREAD: Mapping[str, str] = {
    "exclusive": "required",
    "spread": "preferred",
    "shared": "none",
}

# Every benchmark pod of every suite, in any namespace.
_ANY_BENCHMARK_POD: dict[str, Any] = {
    "labelSelector": {
        "matchLabels": {LABEL_COMPONENT: COMPONENT, "app.kubernetes.io/managed-by": "proctor"}
    },
    "namespaceSelector": {},
    "topologyKey": HOSTNAME_KEY,
}


def cell_run_spec(spec: BenchmarkSuiteSpec, cell: Cell) -> EvalRunSpec:
    """The cell as the EvalRun planner and pod builder see it: the cell's image, command and
    size, the suite's placement, queue and storage, at most one worker."""
    # Benchmark pods carry no topology spread (each is alone in its cell); the suite's own
    # isolation is planned as the EvalRun's spread.
    placement = RunPlacement.model_validate(
        {
            **(spec.placement or Placement()).model_dump(),
            "spread": PLANNER_SPREAD[spec.isolation],
            "topology_spread": [],
        }
    )
    return EvalRunSpec(
        image=cell.image,
        task=TaskSpec(command=list(cell.command)),
        cases=CasesSpec(count=cell.repetitions),
        profile=None if cell.resources else cell.profile,
        resources=cell.resources,
        workers=WorkersSpec(min=0, max=1, target_backlog_per_worker=1),
        placement=placement,
        queue=spec.queue,
        storage=spec.storage,
    )


def label_value(text: str) -> str:
    """``text`` as a label value (at most 63 characters, alphanumeric at both ends); long
    values keep a readable head and a hash of the whole."""
    clean = re.sub(r"[^A-Za-z0-9._-]", "-", text).strip("-._")
    if len(clean) <= 63:
        return clean
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return f"{clean[:52].rstrip('-._')}-{digest}"


def benchmark_labels(
    suite: str, suite_uid: str, run_id: str, cell_id: str, isolation: str
) -> dict[str, str]:
    """Labels of one benchmark pod; ``component=benchmark`` is shared by all suites' pods."""
    return {
        "app.kubernetes.io/name": "proctor",
        LABEL_COMPONENT: COMPONENT,
        "app.kubernetes.io/managed-by": "proctor",
        "proctor.dev/run": suite,
        "proctor.dev/run-uid": suite_uid,
        LABEL_SUITE_RUN: label_value(run_id),
        LABEL_CELL: label_value(cell_id),
        LABEL_ISOLATION: isolation,
    }


def isolation_affinity(isolation: str) -> dict[str, Any] | None:
    """Pod anti-affinity against every benchmark pod of every suite, across namespaces.

    exclusive: required, so no two benchmark pods share a node (the scheduler also keeps any
    other benchmark pod off a node where an exclusive one runs, since it honours the running
    pod's required term); spread: preferred; shared: none.
    """
    if isolation == "exclusive":
        return {"requiredDuringSchedulingIgnoredDuringExecution": [dict(_ANY_BENCHMARK_POD)]}
    if isolation == "spread":
        return {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "podAffinityTerm": dict(_ANY_BENCHMARK_POD)}
            ]
        }
    return None


def benchmark_pod(
    *,
    suite: str,
    suite_uid: str,
    namespace: str,
    spec: BenchmarkSuiteSpec,
    cell: Cell,
    run_id: str,
    size: WorkerSize,
    config: OperatorConfig,
    env: Sequence[Mapping[str, Any]],
    pool: str = "",
    run_spec: EvalRunSpec | None = None,
    suite_labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The manifest of the benchmark pod of ``cell`` in run ``run_id``, in one call of the pod
    builder. ``run_spec``: the cell's :func:`cell_run_spec` the pass planned with (computed
    here when not given). A suite labelled ``kueue.x-k8s.io/queue-name`` (``suite_labels``,
    the suite's own) has its pods admitted by Kueue, as an EvalRun with a queue name."""
    labels = suite_labels or {}
    admission = kueue_pod_labels(labels.get(KUEUE_QUEUE_LABEL, ""), labels)
    kind = PodKind(
        owner_kind=KIND,
        component=COMPONENT,
        command=BENCH_WORKER_COMMAND,
        generate_name=f"{label_value(f'{suite}-{cell.id}')[:50].replace('.', '-')}-",
        labels={**benchmark_labels(suite, suite_uid, run_id, cell.id, spec.isolation), **admission},
        annotations={ANNOTATION_CELL: cell.id},
        metrics_port=False,  # the bench worker serves no metrics
        # No topology spread: a benchmark pod is alone in its cell.
        pod_anti_affinity=isolation_affinity(spec.isolation),
    )
    return build_pod(
        run_name=suite,
        run_uid=suite_uid,
        namespace=namespace,
        spec=run_spec if run_spec is not None else cell_run_spec(spec, cell),
        size=size,
        config=config,
        env=env,
        kind=kind,
        pool=pool,
    )


def benchmark_env(
    spec: BenchmarkSuiteSpec, ref: RunRef, run_id: str, cell: Cell, conn: Connection
) -> list[dict[str, Any]]:
    """The pod's environment: what :meth:`BenchWorkerConfig.from_env` reads, with the queue
    URL and S3 credentials taken from their Secrets (never written into the pod spec), and
    the cell's ``valueFrom`` variables (literal ones travel in the spec)."""
    lease = spec.lease_seconds()
    worker = BenchWorkerConfig(
        spec=spec,
        namespace=ref.namespace,
        suite=ref.name,
        run_id=run_id,
        cell=cell.id,
        queue_url=conn.queue_url,
        storage_uri=conn.storage_uri,
        worker_id="$(POD_NAME)",
        storage_endpoint=conn.storage_endpoint,
        storage_region=conn.storage_region,
        lease_seconds=lease,
    )
    env: list[dict[str, Any]] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "PROCTOR_NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "PROCTOR_LOG_FORMAT", "value": "json"},
    ]
    from_conn = {e["name"] for e in conn.env}
    env += [{"name": k, "value": v} for k, v in worker.env().items() if k not in from_conn]
    env += conn.env
    return merge_env(
        env,
        [
            e.model_dump(by_alias=True, exclude_none=True)
            for e in cell.env
            if e.value_from is not None
        ],
    )
