"""Environment variables of worker and benchmark processes, and the names only the operator
may set: a run's ``env`` can never point its pods at another run's queue or results."""

from __future__ import annotations

from pydantic import Field

from proctor.api.v1alpha1.base import ApiModel, DnsLabel, Rule, exactly_one, not_both


class SecretKeySelector(ApiModel):
    """A key of a Secret in the object's namespace."""

    name: DnsLabel = Field(description="Name of the Secret, in the same namespace.")
    key: str = Field(description="Key within the Secret.", min_length=1, max_length=253)
    optional: bool | None = Field(
        default=None, description="Whether a missing Secret or key is tolerated."
    )


class ConfigMapKeySelector(ApiModel):
    """A key of a ConfigMap in the object's namespace."""

    name: DnsLabel = Field(description="Name of the ConfigMap, in the same namespace.")
    key: str = Field(description="Key within the ConfigMap.", min_length=1, max_length=253)
    optional: bool | None = Field(
        default=None, description="Whether a missing ConfigMap or key is tolerated."
    )


class EnvVarSource(ApiModel):
    """Where an environment variable's value comes from. Secrets are only ever referenced."""

    secret_key_ref: SecretKeySelector | None = Field(
        default=None, description="Take the value from a key of a Secret."
    )
    config_map_key_ref: ConfigMapKeySelector | None = Field(
        default=None, description="Take the value from a key of a ConfigMap."
    )

    rules = (
        exactly_one(
            "secret_key_ref",
            "config_map_key_ref",
            "valueFrom needs exactly one of secretKeyRef or configMapKeyRef",
        ),
    )


ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"

OPERATOR_ENV_PREFIX = "PROCTOR_"
OPERATOR_ENV_NAMES = (
    "POD_NAME",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
)
"""Variables the operator sets in worker and benchmark pods (besides ``PROCTOR_*``): a run's
``env`` can never name them, so it cannot point its pods at another run's queue or results."""
USER_PROCTOR_ENV = ("PROCTOR_METRICS_PORT", "PROCTOR_LOG_LEVEL")
"""The ``PROCTOR_*`` variables a run may set: they change what a worker reports, not where it
reads or writes."""


def is_reserved_env(name: str) -> bool:
    """Whether ``name`` is a variable only the operator may set (pure)."""
    if name.startswith(OPERATOR_ENV_PREFIX):
        return name not in USER_PROCTOR_ENV
    return name in OPERATOR_ENV_NAMES


def _cel_list(names: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{n}'" for n in names) + "]"


RESERVED_ENV_RULE = Rule(
    cel=f"(!self.name.startsWith('{OPERATOR_ENV_PREFIX}') || self.name in "
    f"{_cel_list(USER_PROCTOR_ENV)}) && !(self.name in {_cel_list(OPERATOR_ENV_NAMES)})",
    message=f"env cannot set PROCTOR_* (except {', '.join(USER_PROCTOR_ENV)}) or "
    f"{', '.join(OPERATOR_ENV_NAMES)}: the operator sets them; name the variable otherwise",
    check=lambda m: not is_reserved_env(m.name),
    field_path=".name",
)


class EnvVar(ApiModel):
    """An environment variable for the worker or benchmark process."""

    name: str = Field(
        description="Variable name.", pattern=ENV_NAME_PATTERN, min_length=1, max_length=253
    )
    value: str | None = Field(default=None, description="Literal value.")
    value_from: EnvVarSource | None = Field(
        default=None, description="Value taken from a Secret or ConfigMap key."
    )

    rules = (
        not_both("value", "value_from", "env needs value or valueFrom, not both"),
        RESERVED_ENV_RULE,
    )
