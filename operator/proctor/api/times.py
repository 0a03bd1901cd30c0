"""Timestamps as the Kubernetes API writes them (RFC 3339, ``Z`` for UTC)."""

from __future__ import annotations

from datetime import datetime

__all__ = ["parse_time"]


def parse_time(value: object) -> datetime | None:
    """``2026-01-02T03:04:05Z`` (or any ISO 8601 form) as an aware datetime; None when unset.

    ``fromisoformat`` reads ``Z`` only from Python 3.11 on, so it is spelled ``+00:00`` first.
    """
    if not value:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
