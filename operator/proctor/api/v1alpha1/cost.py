"""What a run's workers have cost so far: node-seconds by pool and capacity type, and the
money they come to at the nodes' prices (docs/operator.md, "Cost")."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from proctor.api.v1alpha1.base import ApiModel

CapacityType = Literal["spot", "on-demand"]


class PoolCost(ApiModel):
    """Node-seconds and cost of the run's workers in one node pool, on one capacity type."""

    pool: str = Field(description="The placement pool, or `default` when the run has none.")
    capacity_type: CapacityType = Field(description="spot or on-demand.")
    node_seconds: float = Field(
        ge=0, description="Seconds of nodes held, each worker counting its share of its node."
    )
    cost: float | None = Field(
        default=None,
        ge=0,
        description="What those node-seconds cost at the nodes' hourly prices; unset when no "
        "node of the pool had a price.",
    )


class CostStatus(ApiModel):
    """The run's cost so far (final once the run has finished)."""

    node_seconds: float = Field(ge=0, description="Node-seconds of all the run's workers.")
    estimated_cost: float | None = Field(
        default=None,
        ge=0,
        description="The priced node-seconds at their nodes' hourly prices; unset when no node "
        "had a price.",
    )
    currency: str = Field(default="USD", description="Currency of the prices.")
    unpriced_node_seconds: float = Field(
        default=0.0,
        ge=0,
        description="Node-seconds on nodes without a price (not in estimatedCost).",
    )
    pools: list[PoolCost] | None = Field(default=None, description="By pool and capacity type.")
    accrued_until: str = Field(
        description="The time up to which the workers were counted (RFC 3339).",
        json_schema_extra={"format": "date-time"},
    )
