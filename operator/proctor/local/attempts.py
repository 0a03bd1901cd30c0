"""Attempts of a local run: who may write a run's results, and what ``--resume`` may continue.

Each fresh ``proctor run`` starts a new *attempt*: a random id kept in the run's
``attempt.json`` together with the run's *fingerprint*, the parts of the spec that change
results (``task``, ``compare``, ``cases``, ``image``, ``env``, ``caseTimeout``, ``results``) and,
for a run over a dataset, the fingerprint of its manifest (so a resume over a dataset whose
files changed is refused, naming them). Workers get the
id (``PROCTOR_ATTEMPT``); the queue is the attempt's own and result objects are tagged with it,
so a worker left over from an earlier attempt can neither claim the new attempt's work nor have
its results counted. ``--resume`` keeps the attempt, and refuses a manifest whose fingerprint
differs, naming the fields that differ.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

from proctor.api.v1alpha1.evalrun import EvalRunSpec
from proctor.queue import WorkQueue
from proctor.storage import RunStorage, StorageError
from proctor.storage.run import ATTEMPT

FINGERPRINT_FIELDS = ("task", "compare", "cases", "image", "env", "caseTimeout", "results")
"""The spec fields whose change changes results (the ones the CRD makes immutable, see
docs/security.md): a resume must not mix them."""


class AttemptError(Exception):
    """The run cannot be resumed as asked; the message says why and what to do."""


def new_attempt_id() -> str:
    return secrets.token_hex(6)


def fingerprint(spec: EvalRunSpec, dataset: str | None = None) -> dict[str, Any]:
    """What of ``spec`` changes results, as JSON (camelCase, unset fields left out), with the
    fingerprint of the dataset's manifest (its files, sizes, ETags and rows) when it has one."""
    wire = spec.to_wire()
    out = {name: wire.get(name) for name in FINGERPRINT_FIELDS}
    if dataset is not None:
        out["dataset"] = dataset
    return out


def _flatten(value: Any, path: str, out: dict[str, Any]) -> dict[str, Any]:
    """Leaves by dotted path; an empty mapping has none (``{}`` and unset are the same)."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(item, f"{path}.{key}" if path else str(key), out)
    elif value is not None:
        out[path] = value
    return out


def differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The dotted fields (``cases.count``) whose values differ, in order."""
    a, b = _flatten(stored, "", {}), _flatten(current, "", {})
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def _describe(field: str, stored: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    def get(data: Mapping[str, Any]) -> Any:
        return _flatten(data, "", {}).get(field)

    def short(x: Any) -> str:
        text = "unset" if x is None else repr(x)
        return text if len(text) <= 40 else text[:37] + "..."

    return f"{field} ({short(get(stored))} then, {short(get(current))} now)"


def resume_attempt(
    storage: RunStorage, spec: EvalRunSpec, manifest: str, dataset: str | None = None
) -> str:
    """The attempt to continue; raises :class:`AttemptError` if there is none or the manifest
    is not the one it was started with."""
    record = storage.read_attempt()
    if record is None or not isinstance(record.get("attempt"), str):
        raise AttemptError(
            f"nothing to resume at {storage.uri}: it holds no run started by this version of "
            "proctor run; run without --resume to start afresh"
        )
    stored = record.get("fingerprint") or {}
    now = fingerprint(spec, dataset)
    fields = differences(stored, now)
    if fields:
        listed = ", ".join(_describe(f, stored, now) for f in fields)
        raise AttemptError(
            f"cannot --resume: {manifest} differs from the run at {storage.uri} in {listed}; "
            "results of the two would be mixed. Resume with the manifest the run was started "
            "with, or run without --resume to start afresh (this deletes the earlier results)"
        )
    attempt: str = record["attempt"]
    return attempt


def replaced(storage: RunStorage, attempt: str) -> str | None:
    """Why ``attempt`` could not finish when another start of the run replaced it, else None."""
    try:
        now = str((storage.read_attempt() or {}).get("attempt") or "")
    except StorageError:
        return None
    if not attempt or now == attempt:
        return None
    return (
        f"another start of this run (attempt {now or 'none'}) replaced this attempt "
        f"({attempt}) and deleted its queue and results; run one start of a name at a time"
    )


def fresh_attempt(
    storage: RunStorage,
    spec: EvalRunSpec,
    open_queue: Callable[[str], WorkQueue],
    dataset: str | None = None,
) -> str:
    """Start a new attempt: remove the earlier attempt's queue and objects, record the new one.

    ``open_queue(attempt)`` opens the queue of an attempt ("" for runs from before attempts).
    """
    earlier = str((storage.read_attempt() or {}).get("attempt") or "")
    # The earlier attempt's queue, or the run's own from before attempts (only then: SQS
    # refuses to recreate a queue name for a minute after it was deleted).
    old = earlier if ATTEMPT.match(earlier) else ""
    queue = open_queue(old)
    queue.delete()
    queue.close()
    # A fresh run: results of an earlier run of the same name would be skipped as done.
    for sub in ("results/", "dead/", "state/"):
        storage.blobs.delete_prefix(storage.base + sub)
    attempt = new_attempt_id()
    storage.write_checkpoint({"version": 0, "attempt": attempt})
    storage.write_attempt(
        {"attempt": attempt, "fingerprint": fingerprint(spec, dataset), "started": time.time()}
    )
    return attempt
