"""The cluster as planning sees it: nodes with their capacity, what other pods request on
them, their labels and taints, and the well-known labels and taints of spot capacity."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

GPU_RESOURCE = "nvidia.com/gpu"

# Labels with which Karpenter, EKS, GKE and AKS mark spot (preemptible) capacity.
SPOT_LABELS: tuple[tuple[str, str], ...] = (
    ("karpenter.sh/capacity-type", "spot"),
    ("eks.amazonaws.com/capacityType", "SPOT"),
    ("cloud.google.com/gke-spot", "true"),
    ("cloud.google.com/gke-preemptible", "true"),
    ("kubernetes.azure.com/scalesetpriority", "spot"),
)
# Taints that providers put on spot nodes; tolerated when spot is allowed.
SPOT_TAINT_KEYS: tuple[str, ...] = (
    "cloud.google.com/gke-spot",
    "cloud.google.com/gke-preemptible",
    "kubernetes.azure.com/scalesetpriority",
    "karpenter.sh/capacity-type",
)


@dataclass(frozen=True)
class Taint:
    key: str
    effect: str
    value: str = ""


@dataclass(frozen=True)
class Capacity:
    """Amounts of the resources planning cares about."""

    cpu_millis: int = 0
    memory: int = 0
    gpus: int = 0
    pods: int = 0


@dataclass(frozen=True)
class NodeInfo:
    """What planning needs to know about one node.

    ``requested`` sums the requests of pods bound to the node that are not this run's workers:
    the run's own workers are what the plan is counting, so they must not shrink it.
    ``neighbours`` counts those pods that are not node agents (DaemonSet pods, kube-system's):
    a node with any cannot hold an exclusive worker.
    """

    name: str
    allocatable: Capacity
    requested: Capacity = Capacity()
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()
    ready: bool = True
    unschedulable: bool = False
    hourly_price: float | None = None  # the node's own price (annotation), if it has one
    neighbours: int = 0

    @cached_property
    def is_spot(self) -> bool:
        return any(self.labels.get(k) == v for k, v in SPOT_LABELS)
