"""A run's hits and misses, from the records it counted: what ``status.cache`` and
``proctor run --json``'s ``"cache"`` say."""

from __future__ import annotations

from typing import Any

from proctor.api.v1alpha1.evalrun import CacheCounts, CacheStatus, EvalRunSpec
from proctor.stats.aggregate import Aggregate


def cache_status(
    spec: EvalRunSpec, aggregate: Aggregate, uri: str, read_only: str = ""
) -> CacheStatus | None:
    """Hits (sides reused) and misses (sides evaluated) of the cases counted, per side with
    compare, the cache's URI and whether it is only read; None when the cache is off."""
    if spec.cache.mode == "off":
        return None
    if spec.compare is None:
        hits = aggregate.cached
        return CacheStatus(
            hits=hits, misses=aggregate.total - hits, uri=uri, read_only=bool(read_only) or None
        )
    base = CacheCounts(
        hits=aggregate.baseline_cached,
        misses=aggregate.baseline_total - aggregate.baseline_cached,
    )
    cand = CacheCounts(
        hits=aggregate.candidate_cached,
        misses=aggregate.candidate_total - aggregate.candidate_cached,
    )
    return CacheStatus(
        hits=base.hits + cand.hits,
        misses=base.misses + cand.misses,
        baseline=base,
        candidate=cand,
        uri=uri,
        read_only=bool(read_only) or None,
    )


def cache_dict(status: CacheStatus | None) -> dict[str, Any] | None:
    """``status`` as ``proctor run --json`` prints it (camelCase, unset fields left out)."""
    if status is None:
        return None
    return status.model_dump(by_alias=True, exclude_none=True)
