"""Building blocks shared by the v1alpha1 kinds.

Every model here is the source of both the Python validation and the CRD schema. Cross-field
rules are written once as :class:`Rule`: a CEL expression for the apiserver and the same check
in Python, with one message, so ``proctor validate`` and ``kubectl apply`` say the same thing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError

from proctor.api.quantity import (
    DURATION_PATTERN,
    QUANTITY_PATTERN,
    is_duration,
    is_quantity,
    parse_duration,
)

DEFAULT_LEASE = "60s"
"""A queue lease when the run sets none, for its own queue or the operator's default one."""
DEFAULT_CHECKPOINT_INTERVAL = "30s"
"""The run checkpoint interval when the run sets none, for its own or the default storage."""

DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
ENTRYPOINT_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.]*$"


@dataclass(frozen=True)
class Rule:
    """A cross-field rule: CEL for the apiserver, ``check`` for Python, one message for both."""

    cel: str
    message: str
    check: Callable[[Any], bool]
    field_path: str | None = None


def exactly_one(first: str, second: str, message: str, field_path: str | None = None) -> Rule:
    """Exactly one of two optional fields (snake_case names) must be set."""
    return Rule(
        cel=f"has(self.{to_camel(first)}) != has(self.{to_camel(second)})",
        message=message,
        check=lambda m: (getattr(m, first) is None) != (getattr(m, second) is None),
        field_path=field_path,
    )


def immutable(field: str) -> tuple[str, str]:
    """A transition rule: the (camelCase) field may not change, appear or vanish on update."""
    return (
        f"has(self.{field}) == has(oldSelf.{field}) && "
        f"(!has(self.{field}) || self.{field} == oldSelf.{field})",
        f"spec.{field} is immutable: it decides the results, and results written under the "
        "old value would be counted for the new one; create a new EvalRun",
    )


def not_both(first: str, second: str, message: str, field_path: str | None = None) -> Rule:
    """At most one of two optional fields (snake_case names) may be set."""
    return Rule(
        cel=f"!(has(self.{to_camel(first)}) && has(self.{to_camel(second)}))",
        message=message,
        check=lambda m: getattr(m, first) is None or getattr(m, second) is None,
        field_path=field_path,
    )


class ApiModel(BaseModel):
    """Base for API objects: camelCase on the wire, unknown fields rejected, rules enforced."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=False,
        # Schemas are built on first use: a process that validates EvalRuns never builds the
        # BenchmarkSuite ones, and `import proctor` is about 0.4 s quicker.
        defer_build=True,
    )
    rules: ClassVar[tuple[Rule, ...]] = ()
    transition_rules: ClassVar[tuple[tuple[str, str], ...]] = ()
    """(CEL, message) pairs comparing an update with the stored object (``oldSelf``): the
    apiserver alone can check them, as one object has no earlier version."""

    @model_validator(mode="after")
    def _check_rules(self) -> Self:
        for rule in type(self).rules:
            if not rule.check(self):
                raise PydanticCustomError(
                    "proctor_rule",
                    "{message}",
                    {"message": rule.message, "field_path": rule.field_path or ""},
                )
        return self

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        target = handler.resolve_ref_schema(schema)
        if cls.rules or cls.transition_rules:
            validations = []
            for rule in cls.rules:
                item: dict[str, str] = {"rule": rule.cel, "message": rule.message}
                if rule.field_path:
                    item["fieldPath"] = rule.field_path
                validations.append(item)
            validations += [{"rule": cel, "message": m} for cel, m in cls.transition_rules]
            target["x-kubernetes-validations"] = validations
        return schema

    def to_wire(self) -> dict[str, Any]:
        """The object as it is written to the API: camelCase, unset fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def kind_of(resource: type[BaseModel]) -> str:
    """The kind a top-level model declares (its ``kind`` field's only value)."""
    field = resource.model_fields.get("kind")
    kind = field.default if field is not None else None
    if not isinstance(kind, str):
        raise TypeError(f"{resource.__name__} declares no kind")
    return kind


def plural_of(resource: type[BaseModel]) -> str:
    """The plural the CRD names the kind by: lower case, with an s (as kubectl expects)."""
    return kind_of(resource).lower() + "s"


def _stringify_number(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return str(value)
    return value


def _check_quantity(value: str) -> str:
    if not is_quantity(value):
        raise PydanticCustomError(
            "quantity",
            "'{value}' is not a Kubernetes quantity; write it like 500m, 2, 512Mi or 2Gi",
            {"value": value},
        )
    return value


def _check_duration(value: str) -> str:
    if not is_duration(value):
        raise PydanticCustomError(
            "duration",
            "'{value}' is not a duration; write it like 500ms, 30s, 5m or 1h30m",
            {"value": value},
        )
    return value


Quantity = Annotated[
    str,
    BeforeValidator(_stringify_number),
    AfterValidator(_check_quantity),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True,
        }
    ),
]
"""A Kubernetes quantity such as ``500m``, ``2``, ``512Mi`` or ``2Gi``."""

Duration = Annotated[
    str,
    AfterValidator(_check_duration),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN}),
]
"""A Go duration such as ``500ms``, ``30s``, ``5m`` or ``1h30m``."""

DnsLabel = Annotated[str, Field(pattern=DNS_LABEL_PATTERN, min_length=1, max_length=63)]

KueueQueueName = Annotated[
    str, Field(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", min_length=1, max_length=63)
]
"""A Kueue LocalQueue name: an object name that is also a label value (63 characters)."""

Entrypoint = Annotated[str, Field(pattern=ENTRYPOINT_PATTERN, max_length=253)]

FreeForm = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]

ProfileName = Literal["micro", "small", "medium", "large", "xlarge", "auto"]
PROFILE_NAMES: tuple[str, ...] = ("micro", "small", "medium", "large", "xlarge", "auto")


PROFILE_OR_RESOURCES = not_both(
    "profile", "resources", "set either profile or resources, not both", field_path=".resources"
)


class LocalObjectReference(ApiModel):
    """A reference to an object by name in the same namespace."""

    name: DnsLabel = Field(description="Name of the referenced object.")


class Toleration(ApiModel):
    """A toleration, as in a Pod spec, added to worker pods."""

    key: str | None = Field(default=None, description="Taint key; empty with Exists tolerates all.")
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="Exists or Equal (the default)."
    )
    value: str | None = Field(default=None, description="Taint value, for Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to tolerate; empty means all effects."
    )
    toleration_seconds: int | None = Field(
        default=None, description="For NoExecute: how long the pod stays bound after the taint."
    )


class Resources(ApiModel):
    """Explicit per-worker requests, instead of a named profile."""

    cpu: Quantity = Field(description="CPU request per worker, e.g. 500m or 2.")
    memory: Quantity = Field(description="Memory request (and limit) per worker, e.g. 1Gi.")
    cpu_limit: Quantity | None = Field(
        default=None, description="CPU limit; unset means no CPU limit (no throttling)."
    )
    ephemeral_storage: Quantity | None = Field(
        default=None, description="Ephemeral storage request per worker."
    )


class NodePool(ApiModel):
    """A group of nodes selected by labels, with a relative weight for placement."""

    name: DnsLabel = Field(description="Pool name, shown in status.plan.pools.")
    node_selector: dict[str, str] = Field(
        description="Labels a node must carry to belong to the pool."
    )
    weight: int = Field(
        default=1, ge=0, le=100, description="Relative preference; 0 makes it a last resort."
    )


class SpotPolicy(ApiModel):
    """Whether workers may run on spot (preemptible) nodes, and when to give up on them."""

    allowed: bool = Field(
        default=True,
        description="Allow spot nodes: workers tolerate the usual spot taints.",
    )
    fallback_to_on_demand_after: int | None = Field(
        default=None,
        ge=1,
        description="After this many disruptions on spot nodes, place new workers on "
        "on-demand nodes only. Unset: never fall back.",
    )


class Placement(ApiModel):
    """Where worker pods may run and how they spread."""

    spread: Literal["preferred", "required", "none"] = Field(
        default="preferred",
        description="Pod anti-affinity between workers of one run: required places at most "
        "one per node, preferred spreads when it can, none packs.",
    )
    node_selector: dict[str, str] | None = Field(
        default=None, description="Labels every eligible node must carry."
    )
    tolerations: list[Toleration] | None = Field(
        default=None, description="Tolerations added to worker pods.", max_length=32
    )
    pools: list[NodePool] | None = Field(
        default=None,
        description="Node pools with weights; when set, only nodes in a pool are eligible.",
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    spot: SpotPolicy = Field(default_factory=SpotPolicy, description="Spot node policy.")


class QueueSpec(ApiModel):
    """The work queue. Connection details come only from a Secret."""

    type: Literal["redis", "sqs"] = Field(
        description="redis (Redis Streams) or sqs (Amazon SQS or an SQS-compatible endpoint)."
    )
    secret_ref: LocalObjectReference | None = Field(
        default=None,
        description="Secret with the connection: key `url` for redis (redis://...); for sqs "
        "`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` (the operator reads the queue with them), "
        "`region` and optionally `endpoint`. "
        "Unset: the operator's default queue.",
    )
    lease: Duration = Field(
        default=DEFAULT_LEASE,
        description="How long a claimed batch stays leased without a heartbeat before another "
        "worker may claim it.",
    )

    @staticmethod
    def lease_seconds_of(queue: QueueSpec | None) -> float:
        """The lease of ``queue``; None (the operator's default queue) has the default one."""
        return parse_duration(queue.lease if queue is not None else DEFAULT_LEASE)


class Compression(ApiModel):
    """How result objects are compressed."""

    algorithm: Literal["zstd", "gzip", "none"] = Field(
        default="zstd", description="Compression of result and checkpoint objects."
    )
    level: int = Field(default=3, ge=1, le=19, description="Compression level.")


class StorageSpec(ApiModel):
    """Where results and checkpoints go: an S3 (or S3-compatible) prefix."""

    uri: str = Field(
        description="s3://bucket/prefix under which the run's objects are written.",
        pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$",
        max_length=1024,
    )
    endpoint: str | None = Field(
        default=None,
        description="Endpoint URL for S3-compatible stores (MinIO, moto); unset for AWS.",
        pattern=r"^https?://",
    )
    region: str | None = Field(default=None, description="Bucket region.")
    secret_ref: LocalObjectReference | None = Field(
        default=None,
        description="Secret with `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (optionally "
        "`AWS_SESSION_TOKEN`). Unset: the workers' ambient credentials (e.g. IRSA), and the "
        "run is admitted only where the operator's policy.ambientCredentialBuckets lists the "
        "bucket (docs/security.md).",
    )
    compression: Compression = Field(
        default_factory=Compression, description="Compression settings."
    )
    checkpoint_interval: Duration = Field(
        default=DEFAULT_CHECKPOINT_INTERVAL,
        description="How often the run-level checkpoint is written.",
    )

    @staticmethod
    def compression_of(storage: StorageSpec | None) -> Compression:
        """How ``storage`` compresses; None (the operator's default storage) as the default."""
        return storage.compression if storage is not None else Compression()

    @staticmethod
    def checkpoint_seconds_of(storage: StorageSpec | None) -> float:
        """The checkpoint interval of ``storage``; None (the default storage): the default."""
        interval = storage.checkpoint_interval if storage is not None else None
        return parse_duration(interval or DEFAULT_CHECKPOINT_INTERVAL)


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """A standard Kubernetes condition."""

    type: str = Field(description="Condition type, e.g. Ready, Progressing, Succeeded.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(description="CamelCase reason for the last transition.")
    message: str = Field(default="", description="Human-readable detail.")
    last_transition_time: str = Field(
        description="When the status last changed (RFC 3339).",
        json_schema_extra={"format": "date-time"},
    )
    observed_generation: int | None = Field(
        default=None, description="The spec generation this condition was computed from."
    )


class TrackedPod(ApiModel):
    """A worker pod as the operator last recorded it: enough to classify its loss if it is
    gone by the time a restarted operator looks."""

    name: str = Field(description="Pod name.")
    uid: str = Field(description="Pod UID.")
    node: str = Field(default="", description="The node it was bound to; empty: not bound.")
    spot: bool = Field(default=False, description="Its node was a spot node.")
    state: Literal["live", "counted", "deleted"] = Field(
        default="live",
        description="live: not lost yet; counted: its loss is counted; deleted: the operator "
        "deleted it (never a loss).",
    )


class LossLedgerStatus(ApiModel):
    """What the operator needs to count every lost worker once, across its own restarts."""

    spot_disruptions: int = Field(
        default=0, description="Disruptions on spot nodes (toward fallbackToOnDemandAfter)."
    )
    pods: list[TrackedPod] | None = Field(
        default=None, description="The run's worker pods that still existed at the last pass."
    )
