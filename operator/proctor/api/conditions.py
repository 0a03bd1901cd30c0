"""Standard Kubernetes conditions, set through one helper.

``lastTransitionTime`` changes only when a condition's status flips, so watchers can tell how
long a state has held; ``observedGeneration`` says which spec the condition describes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from proctor.api.v1alpha1.base import Condition, ConditionStatus


@dataclass(frozen=True)
class Problem:
    """Why a run cannot proceed now (a missing Secret, a profile no node holds)."""

    reason: str
    message: str


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post about the run."""

    type: str
    reason: str
    message: str


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: Sequence[Condition],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    *,
    now: datetime,
    generation: int | None,
) -> list[Condition]:
    """A new list with the condition set; the input is left untouched."""
    result: list[Condition] = []
    found = False
    for existing in conditions:
        if existing.type != type_:
            result.append(existing)
            continue
        found = True
        transition = existing.last_transition_time if existing.status == status else rfc3339(now)
        result.append(
            Condition(
                type=type_,
                status=status,
                reason=reason,
                message=message,
                last_transition_time=transition,
                observed_generation=generation,
            )
        )
    if not found:
        result.append(
            Condition(
                type=type_,
                status=status,
                reason=reason,
                message=message,
                last_transition_time=rfc3339(now),
                observed_generation=generation,
            )
        )
    return result


def get_condition(conditions: Sequence[Condition] | None, type_: str) -> Condition | None:
    return next((c for c in conditions or () if c.type == type_), None)


def is_true(conditions: Sequence[Condition] | None, type_: str) -> bool:
    condition = get_condition(conditions, type_)
    return condition is not None and condition.status == "True"


class ConditionSetter:
    """Conditions set one after another on a status's previous list, for one spec generation
    at one moment (both kinds' status computations set theirs this way)."""

    def __init__(
        self, previous: Sequence[Condition] | None, *, now: datetime, generation: int | None
    ) -> None:
        self.conditions: list[Condition] = list(previous or [])
        self._now = now
        self._generation = generation

    def put(self, type_: str, on: bool, reason: str, message: str = "") -> None:
        """Set ``type_`` to True when ``on``, else False."""
        self.conditions = set_condition(
            self.conditions,
            type_,
            "True" if on else "False",
            reason,
            message,
            now=self._now,
            generation=self._generation,
        )
