"""What the operator writes, shaped before it is written (pure): the Events it posts
(:func:`event_object`) and the merge patch of a status (:func:`status_patch`).
:mod:`proctor.cluster.api` sends them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from proctor.api.conditions import Event
from proctor.redact import redact_text

EventSink = Callable[[Event], None]
"""Where a pass sends its Events (the controller posts them)."""


EVENT_COMPONENT = "proctor-operator"
EVENT_MESSAGE_MAX = 1024


def event_object(
    involved: Mapping[str, Any], event: Event, now: datetime | None = None
) -> dict[str, Any]:
    """A core/v1 Event about ``involved`` (pure)."""
    meta = involved.get("metadata") or {}
    at = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "generateName": f"{meta.get('name')}.",
            "namespace": meta.get("namespace"),
        },
        "involvedObject": {
            "apiVersion": involved.get("apiVersion"),
            "kind": involved.get("kind"),
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
        },
        "type": event.type,
        "reason": event.reason,
        "message": redact_text(event.message)[:EVENT_MESSAGE_MAX],
        "source": {"component": EVENT_COMPONENT},
        "reportingComponent": EVENT_COMPONENT,
        "reportingInstance": EVENT_COMPONENT,
        "firstTimestamp": at,
        "lastTimestamp": at,
        "count": 1,
    }


def _with_removals(before: Any, after: Any) -> Any:
    """``after``, with null for each key of ``before`` it lacks, at every depth: a merge
    patch merges objects, so a key dropped from a nested object must be nulled to go."""
    if not isinstance(before, Mapping) or not isinstance(after, Mapping):
        return after
    out = {k: _with_removals(before.get(k), v) for k, v in after.items()}
    out.update({k: None for k in before if k not in after})
    return out


def status_patch(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """A merge patch that turns ``old`` into ``new`` (removed keys become null, nested ones
    too); empty when nothing changed, so an unchanged status is never written."""
    before = dict(old or {})
    patch: dict[str, Any] = {}
    for key, value in new.items():
        if before.get(key) != value:
            patch[key] = _with_removals(before.get(key), value)
    for key in before:
        if key not in new and key != "kopf":
            patch[key] = None
    return patch
