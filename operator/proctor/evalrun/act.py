"""Act: apply what :mod:`proctor.evalrun.decide` chose, at the edges (API, queue, storage).

No decisions here: each function does what it is handed, records in the per-run memory what
it did (so no later pass repeats it), and says how much it did.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import structlog

from proctor.api.conditions import rfc3339
from proctor.api.v1alpha1.evalrun import CheckpointStatus, EvalRunSpec, ResultSummary
from proctor.cluster.api import ClusterApi, QuotaExceeded
from proctor.cluster.reads import PodState
from proctor.cluster.writes import EventSink
from proctor.connection import RunRef
from proctor.evalrun.decide import PodActions, StatusActions, summary_record
from proctor.evalrun.runtime import RunRuntime
from proctor.planning.scaling import ScaleState
from proctor.sdk.hooks import summarize_with_task
from proctor.storage import (
    CorruptObjectError,
    ProgressSnapshot,
    RunProgress,
    RunStorage,
    StorageError,
)
from proctor.storage.export import Finished, finish_results

log = structlog.get_logger("proctor.operator")


def delete_pods(api: ClusterApi, rt: RunRuntime, pods: Iterable[PodState]) -> int:
    """Delete the pods, marked in the ledger as deleted by this operator (not lost)."""
    count = 0
    for pod in pods:
        rt.ledger.deleted.add(pod.uid)
        api.delete_pod(pod.namespace, pod.name)
        count += 1
    return count


def delete_unseen(api: ClusterApi, ref: RunRef, rt: RunRuntime, names: Iterable[str]) -> int:
    """Delete pods this operator created that the index does not show yet."""
    count = 0
    for name in names:
        uid, _ = rt.expected.pop(name)
        rt.ledger.deleted.add(uid)
        api.delete_pod(ref.namespace, name)
        count += 1
    return count


def create_pods(
    api: ClusterApi,
    ref: RunRef,
    rt: RunRuntime,
    manifests: Iterable[Mapping[str, Any]],
    pools: Iterable[str],
) -> int:
    """Create the pods in order, remembered until the index shows them; the first one the
    quota refuses ends the creates (the plan read a quota list up to a second old; the next
    pass reads it again)."""
    created = 0
    for manifest, pool in zip(manifests, pools, strict=True):
        try:
            name, uid = api.create_pod(manifest)
        except QuotaExceeded as exc:
            log.info("quota refused a worker", run=ref.name, detail=str(exc)[:300])
            break
        rt.expected[name] = (uid, time.monotonic())
        rt.expected_pool[name] = pool
        created += 1
    return created


def apply_pods(api: ClusterApi, ref: RunRef, rt: RunRuntime, pods: PodActions) -> tuple[int, int]:
    """The pod actions: (deleted, created)."""
    removed = delete_pods(api, rt, pods.finished)
    removed += delete_pods(api, rt, pods.delete)
    removed += delete_unseen(api, ref, rt, pods.delete_unseen)
    for victim in pods.idle:
        rt.ledger.deleted.add(victim.uid)
        api.delete_pod(victim.namespace, victim.name)
        log.info("idle worker removed", run=ref.name, pod=victim.name, reason=pods.idle_reason)
        removed += 1
    rt.scale = ScaleState() if pods.stop_all else pods.scale
    return removed, create_pods(api, ref, rt, pods.create, pods.pools)


def apply_status(
    api: ClusterApi,
    ref: RunRef,
    rt: RunRuntime,
    *,
    before: Mapping[str, Any] | None,
    update: StatusActions,
    emit: EventSink,
) -> None:
    """Write the status patch (if any), remembered until a body shows it; post the Events."""
    if update.patch:
        api.patch_status(ref.namespace, ref.name, update.patch)
        rt.status_written = time.monotonic()
        rt.wrote(before, update.body)
    for event in update.events:
        emit(event)


def write_checkpoint(
    progress: RunProgress,
    storage: RunStorage,
    rt: RunRuntime,
    mark: tuple[int, int, int],
    now: datetime,
) -> CheckpointStatus:
    """Checkpoint the run's progress; the status says when, where, and how many batches."""
    progress.checkpoint()
    rt.last_checkpoint = time.monotonic()
    rt.checkpointed = mark
    return CheckpointStatus(
        time=rfc3339(now),
        uri=storage.blobs.uri(storage.checkpoint_key()),
        batches_done=len(storage.result_ranges()),
    )


def write_summary(
    spec: EvalRunSpec,
    storage: RunStorage,
    ref: RunRef,
    snapshot: ProgressSnapshot,
    result: ResultSummary,
) -> ResultSummary:
    """Write the finished run's merged results (and a batch-scoring run's outputs) and its
    summary object, as the task's own rule makes it if it has one (Metamorphic Guard's:
    docs/metamorphic-guard.md); the summary the status reports."""
    result = summarize_with_task(spec, storage, result, run_user_code=False).summary
    try:
        written = finish_results(storage)
    except (CorruptObjectError, StorageError) as exc:
        # A torn object (an early-stopped run's, not evaluated again) or a failing store: the
        # run still ends, resultsUri naming the objects' folder.
        log.warning("merged results not written", run=ref.name, error=str(exc))
        written = Finished(storage.results_uri())
    result = result.model_copy(
        update={"results_uri": written.results_uri, "outputs_uri": written.outputs_uri}
    )
    storage.write_summary(summary_record(ref, snapshot, result))
    return result
