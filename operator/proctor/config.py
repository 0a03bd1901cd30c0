"""Operator configuration: profiles, reserved margins, defaults and loop intervals.

Loaded from a YAML file (``--config`` or ``PROCTOR_CONFIG``), typically a ConfigMap written by
the Helm chart; every field has a default so the operator runs without one.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from proctor.api.quantity import cpu_millis, to_bytes
from proctor.api.v1alpha1.base import Quantity


class ProfileSize(BaseModel):
    """Requests of one named worker profile."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    cpu: Quantity
    memory: Quantity


DEFAULT_PROFILES: dict[str, ProfileSize] = {
    "micro": ProfileSize(cpu="500m", memory="512Mi"),
    "small": ProfileSize(cpu="1", memory="1Gi"),
    "medium": ProfileSize(cpu="2", memory="2Gi"),
    "large": ProfileSize(cpu="4", memory="4Gi"),
    "xlarge": ProfileSize(cpu="8", memory="8Gi"),
}


class TenantPolicy(BaseModel):
    """What runs may ask of the cluster (docs/security.md). An empty list allows anything;
    a run asking for something not listed gets a ``PolicyViolation`` condition and Event."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    allowed_images: list[str] = Field(
        default_factory=list,
        description="Image patterns (fnmatch globs, e.g. registry.example.com/evals/*) worker "
        "and benchmark pods may run; empty: any image.",
    )
    allowed_service_accounts: list[str] = Field(
        default_factory=list,
        description="ServiceAccount name patterns runs may use (an unset one is 'default'); "
        "empty: any.",
    )
    allowed_storage_endpoints: list[str] = Field(
        default_factory=list,
        description="Patterns of spec.storage.endpoint (S3-compatible stores) the operator may "
        "send requests to; empty: any. Runs without an endpoint use AWS S3.",
    )
    allowed_storage_buckets: list[str] = Field(
        default_factory=list,
        description="Bucket patterns runs may store results in; empty: any.",
    )
    ambient_credential_buckets: list[str] = Field(
        default_factory=list,
        description="Bucket patterns where a run without spec.storage.secretRef is read with "
        "the operator's own credentials (IRSA), at AWS or the defaultStorageEndpoint only; "
        "anywhere else such a run is refused.",
    )


class HourlyPrice(BaseModel):
    """A node's price per hour, on-demand and spot."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    on_demand: float | None = Field(default=None, ge=0.0, description="On-demand, per hour.")
    spot: float | None = Field(default=None, ge=0.0, description="Spot, per hour.")


class PriceTable(BaseModel):
    """Node prices for cost in status and ``proctor plan`` (docs/operator.md, "Cost"). A
    node's own annotation ``proctor.dev/hourly-price`` wins over this table."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    currency: str = Field(default="USD", description="Currency of every price.")
    instance_types: dict[str, HourlyPrice] = Field(
        default_factory=dict,
        description="Prices by the node label node.kubernetes.io/instance-type.",
    )
    default: HourlyPrice | None = Field(
        default=None, description="Prices of nodes whose instance type is not listed."
    )


class OperatorConfig(BaseModel):
    """Everything an operator installation may tune."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    profiles: dict[str, ProfileSize] = Field(
        default_factory=lambda: dict(DEFAULT_PROFILES),
        description="Profile sizes; entries here override the built-in ones by name.",
    )
    reserved_cpu_fraction: float = Field(
        default=0.20, ge=0.0, lt=1.0, description="Share of node CPU never planned for."
    )
    reserved_memory_fraction: float = Field(
        default=0.25, ge=0.0, lt=1.0, description="Share of node memory never planned for."
    )
    scaling_interval_seconds: float = Field(
        default=3.0, gt=0.0, le=60.0, description="Autoscaling loop period."
    )
    stalled_after_seconds: float = Field(
        default=300.0, gt=0.0, description="No progress for this long sets Stalled."
    )
    default_queue_url: str | None = Field(
        default=None, description="Queue for runs that name none (redis://... or sqs://...)."
    )
    default_storage_uri: str | None = Field(
        default=None, description="Storage for runs that name none (s3://bucket/prefix)."
    )
    default_storage_endpoint: str | None = Field(
        default=None, description="S3 endpoint for the default storage."
    )
    worker_image: str | None = Field(
        default=None, description="Override every run's image (air-gapped mirrors, tests)."
    )
    worker_command: list[str] = Field(
        default_factory=lambda: ["proctor", "worker"],
        description="Command that starts a worker in the image.",
    )
    worker_pod_labels: dict[str, str] = Field(
        default_factory=dict, description="Extra labels on every worker pod."
    )
    worker_metrics_port: int = Field(
        default=9090,
        ge=0,
        le=65535,
        description="Port worker pods serve Prometheus metrics on: the operator sets "
        "PROCTOR_METRICS_PORT and a container port named metrics (what a PodMonitor selects); "
        "0: workers serve none (a run may still set PROCTOR_METRICS_PORT in its env).",
    )
    worker_grace_seconds: int = Field(
        default=30, ge=5, le=3600, description="terminationGracePeriodSeconds of workers."
    )
    spot_fallback_enabled: bool = Field(
        default=True, description="Honour placement.spot.fallbackToOnDemandAfter."
    )
    policy: TenantPolicy = Field(
        default_factory=TenantPolicy,
        description="Images, ServiceAccounts and storage runs may use (docs/security.md).",
    )
    prices: PriceTable = Field(
        default_factory=PriceTable,
        description="Node prices for the cost in status and `proctor plan`.",
    )

    def profile(self, name: str) -> ProfileSize:
        merged = {**DEFAULT_PROFILES, **self.profiles}
        if name not in merged:
            known = ", ".join(sorted(merged))
            raise KeyError(f"unknown profile {name!r}; known profiles: {known}")
        return merged[name]

    def profile_names(self) -> list[str]:
        """Profiles from smallest to largest CPU request."""

        merged = {**DEFAULT_PROFILES, **self.profiles}
        return sorted(merged, key=lambda n: (cpu_millis(merged[n].cpu), to_bytes(merged[n].memory)))


def load_config(path: str | Path | None = None) -> OperatorConfig:
    """Read the configuration file, or defaults when there is none."""
    path = path or os.environ.get("PROCTOR_CONFIG")
    if not path:
        return OperatorConfig()
    data = yaml.safe_load(Path(path).read_text()) or {}
    return OperatorConfig.model_validate(data)
