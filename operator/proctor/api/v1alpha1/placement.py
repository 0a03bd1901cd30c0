"""Where an EvalRun's workers run: the shared :class:`Placement`, plus what only an EvalRun
has (a BenchmarkSuite isolates its pods with its own ``spec.isolation``): exclusive nodes
and the run's own topology spread constraints.

The defaults live here, once: :meth:`RunPlacement.spread_constraints` is what the pod builder
writes and what planning counts.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, WithJsonSchema
from pydantic_core import PydanticCustomError

from proctor.api.names import HOSTNAME_KEY, ZONE_KEY
from proctor.api.v1alpha1.base import ApiModel, Placement, Rule

# A label key as Kubernetes defines it: an optional DNS-subdomain prefix and a "/", then a
# name of at most 63 alphanumerics, '-', '_' or '.', alphanumeric at both ends.
LABEL_KEY_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_CEL_PATTERN = LABEL_KEY_PATTERN.replace("\\", "\\\\")  # backslashes escaped in a CEL string
LABEL_KEY_MAX = 316  # a 253-character prefix, "/", a 63-character name
_TOPOLOGY_KEY_MESSAGE = (
    "topologyKey must be a node label key, such as topology.kubernetes.io/zone (zones), "
    "kubernetes.io/hostname (nodes) or a label of your own nodes (prefix/name, name at most "
    "63 characters)"
)


def _check_label_key(value: str) -> str:
    if len(value.rpartition("/")[0]) > 253 or not re.match(LABEL_KEY_PATTERN, value):
        raise PydanticCustomError(
            "topology_key", _TOPOLOGY_KEY_MESSAGE + ', got "{value}"', {"value": value}
        )
    return value


TopologyKey = Annotated[
    str,
    AfterValidator(_check_label_key),
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "maxLength": LABEL_KEY_MAX,
            "x-kubernetes-validations": [
                {
                    "rule": f"self.matches('{_CEL_PATTERN}') && self.lastIndexOf('/') <= 253",
                    "message": _TOPOLOGY_KEY_MESSAGE,
                }
            ],
        }
    ),
]


class TopologySpread(ApiModel):
    """One topology spread constraint over the run's own workers, as in a Pod spec. The
    operator writes its labelSelector (the run's workers, nothing else) and honours the
    workers' tolerations when it counts domains (nodeTaintsPolicy: Honor)."""

    topology_key: TopologyKey = Field(
        description="Node label whose values are the domains: topology.kubernetes.io/zone, "
        "kubernetes.io/hostname or a label of your own. With DoNotSchedule, a node without "
        "the label takes no worker."
    )
    max_skew: int = Field(
        default=1,
        ge=1,
        le=1000,
        description="How many more workers one domain may hold than the emptiest.",
    )
    when_unsatisfiable: Literal["DoNotSchedule", "ScheduleAnyway"] = Field(
        default="DoNotSchedule",
        description="DoNotSchedule: a worker that would exceed maxSkew waits (planning counts "
        "only what the constraint allows, status.plan.boundBy spread); ScheduleAnyway: the "
        "scheduler prefers the emptiest domains but places the worker anyway.",
    )
    min_domains: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="With DoNotSchedule: while fewer domains are eligible, the emptiest counts "
        "as holding none, so each domain holds at most maxSkew workers.",
    )

    rules = (
        Rule(
            cel="!has(self.minDomains) || self.whenUnsatisfiable == 'DoNotSchedule'",
            message="minDomains is only allowed with whenUnsatisfiable: DoNotSchedule",
            check=lambda m: m.min_domains is None or m.when_unsatisfiable == "DoNotSchedule",
            field_path=".minDomains",
        ),
    )


DEFAULT_TOPOLOGY_SPREAD: tuple[TopologySpread, ...] = (
    TopologySpread(topology_key=ZONE_KEY, max_skew=1, when_unsatisfiable="ScheduleAnyway"),
)
"""Without ``topologySpread``, workers prefer to spread over zones (never waiting for it)."""

SPREAD_KEYS = ("topologyKey", "whenUnsatisfiable")
"""What makes a constraint unique in a list (as in a Pod spec): the CRD's list-map keys, which
:mod:`proctor.validation` checks as the apiserver does."""


class RunPlacement(Placement):
    """Where an EvalRun's workers may run, how they spread, and whether they share nodes."""

    isolation: Literal["shared", "exclusive"] = Field(
        default="shared",
        description="exclusive: a worker's node holds no other pod (of any run, in any "
        "namespace), apart from DaemonSet pods and kube-system's node agents, and no other pod "
        "may join it while the worker runs; so at most one worker per node, and planning counts "
        "only nodes with no other pod. shared: workers share nodes with other pods.",
    )
    topology_spread: list[TopologySpread] | None = Field(
        default=None,
        max_length=8,
        description="Topology spread constraints over the run's workers (zones, nodes, your "
        "own node labels). Unset: workers prefer to spread over zones "
        f"({ZONE_KEY}, maxSkew 1, ScheduleAnyway) unless spread is none; [] spreads by "
        f"nothing. Example: [{{topologyKey: {ZONE_KEY}, maxSkew: 1}}], or "
        f"{HOSTNAME_KEY} to spread over nodes.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": list(SPREAD_KEYS),
        },
    )

    def spread_constraints(self) -> tuple[TopologySpread, ...]:
        """The constraints the workers carry: the run's own, or the default."""
        if self.topology_spread is not None:
            return tuple(self.topology_spread)
        return () if self.spread == "none" else DEFAULT_TOPOLOGY_SPREAD

    @property
    def exclusive(self) -> bool:
        return self.isolation == "exclusive"
