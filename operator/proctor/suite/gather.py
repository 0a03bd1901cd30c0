"""What a suite pass observes: its benchmark pods as the index holds them, and the indexed facts
that each pass gathers before it decides."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from proctor.api.times import parse_time
from proctor.api.v1alpha1.benchmarksuite import KIND
from proctor.cluster.losses import Departed
from proctor.cluster.reads import PodState, PodUsage, pod_state
from proctor.planning.plan import NodeInfo
from proctor.suite.pods import ANNOTATION_CELL, LABEL_SUITE_RUN

EVERY_POD = "<every pod>"
"""A run uid no pod carries: node usage then counts every pod, this suite's own included
(each cell is planned on its own, so the suite's other pods really do take room)."""


@dataclass(frozen=True)
class BenchPod:
    """A benchmark pod: the EvalRun classification plus its cell and suite run."""

    obs: PodState
    cell: str
    run_id: str
    deleting_since: datetime | None = None

    @property
    def live(self) -> bool:
        return not self.obs.terminating and not self.obs.finished


def bench_pod(body: Mapping[str, Any]) -> BenchPod:
    """Classify a benchmark pod (pure)."""
    meta = body.get("metadata") or {}
    deleting = meta.get("deletionTimestamp")
    return BenchPod(
        obs=pod_state(body),
        cell=str((meta.get("annotations") or {}).get(ANNOTATION_CELL, "")),
        run_id=str((meta.get("labels") or {}).get(LABEL_SUITE_RUN, "")),
        deleting_since=parse_time(deleting),
    )


def departure_key(namespace: str, suite: str) -> tuple[str, str, str]:
    """Where a suite's deleted pods wait for its next pass (apart from an EvalRun's own)."""
    return (KIND, namespace, suite)


def occupied_node(body: Mapping[str, Any]) -> str | None:
    """The node a benchmark pod holds (bound, not finished); None when it holds none."""
    node = (body.get("spec") or {}).get("nodeName")
    phase = (body.get("status") or {}).get("phase")
    return str(node) if node and phase not in {"Succeeded", "Failed"} else None


@dataclass(frozen=True)
class SuiteView:
    """Indexed facts: nodes, per-node pod usage, this suite's benchmark pods, and the nodes
    that hold a benchmark pod of any suite."""

    nodes: Sequence[NodeInfo]
    usage: Mapping[str, Sequence[PodUsage]]
    pods: Sequence[BenchPod]
    occupied: Iterable[str]
    departed: Sequence[Departed] = ()  # this suite's pods deleted since its last pass
