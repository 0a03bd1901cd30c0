"""The reference a pass works under, read from a resource's metadata; one for both kinds."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proctor.connection import RunRef


def run_ref(meta: Mapping[str, Any]) -> RunRef:
    """Namespace, name, uid, generation, annotations and labels of an EvalRun or a
    BenchmarkSuite."""
    return RunRef(
        namespace=str(meta["namespace"]),
        name=str(meta["name"]),
        uid=str(meta["uid"]),
        generation=int(meta.get("generation") or 1),
        annotations=dict(meta.get("annotations") or {}),
        labels=dict(meta.get("labels") or {}),
    )
