"""Emptying the cache (``proctor cache clear``): all of it, or the entries of chosen
implementations, or of one task's sides."""

from __future__ import annotations

from collections.abc import Iterable

from proctor.cache.keys import FORMAT
from proctor.storage import Blobs


def implementation_prefix(implementation: str) -> str:
    """Where every entry of one implementation fingerprint is, whatever the task."""
    return f"{FORMAT}/{implementation}/"


def side_prefix(implementation: str, task: str) -> str:
    """Where the entries of one implementation under one task are."""
    return f"{FORMAT}/{implementation}/{task}/"


def clear(blobs: Blobs, prefixes: Iterable[str] | None = None) -> int:
    """Remove the cache's objects under ``prefixes`` (None: every object of the cache);
    how many were removed. Runs reading the cache meanwhile see misses, never half a piece:
    an object is read whole or not at all."""
    wanted = [""] if prefixes is None else list(prefixes)
    removed = 0
    for prefix in wanted:
        found = [info.key for info in blobs.walk(prefix)]
        if not found:
            continue
        if prefix:
            blobs.delete_prefix(prefix)
        else:
            for key in found:
                blobs.delete(key)
        removed += len(found)
    return removed
