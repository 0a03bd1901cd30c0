"""Enqueueing a run: deterministic batches, idempotent, and able to rebuild a lost queue."""

from __future__ import annotations

from proctor.api.v1alpha1.evalrun import BatchSpec, EvalRunSpec
from proctor.queue.base import Range, WorkQueue, partition

CHUNK_ENTRIES = 10_000
"""Entries per enqueue chunk: one atomic step, skipped as a whole by a restarted enqueuer."""


def enqueue_run(queue: WorkQueue, storage: object | None, spec: EvalRunSpec) -> int:
    """Put the run's batches on ``queue``; returns the entries added (0 when already enqueued).

    The batches are ``[0, cases.count)`` cut into ``batch.initialSize`` ranges, numbered into
    chunks of :data:`CHUNK_ENTRIES`; each chunk is enqueued atomically once, so calling this
    again (an operator restart) adds nothing. With ``storage`` (a
    :class:`proctor.storage.RunStorage`), ranges that already have results or were
    dead-lettered are left out, so a queue lost with its Redis is rebuilt with only the work
    that remains.
    """
    from proctor.storage import IntervalSet, RunProgress, RunStorage

    size = (spec.batch or BatchSpec()).initial_size
    done = IntervalSet()
    if isinstance(storage, RunStorage):
        progress = RunProgress.resume(storage, spec.cases.count)
        done = progress.covered
        for r in storage.result_ranges():
            done.add(r.start, r.end)
        for d in storage.dead_letters():
            done.add(d["start"], d["end"])
    entries = partition(spec.cases.count, size)
    added = 0
    for n, first in enumerate(range(0, len(entries), CHUNK_ENTRIES)):
        chunk = entries[first : first + CHUNK_ENTRIES]
        todo = [Range(s, e) for r in chunk for s, e in done.gaps(r.start, r.end)]
        if todo:
            added += queue.enqueue(todo, chunk=str(n))
    return added
