"""Enqueueing a run: deterministic batches, idempotent, and able to rebuild a lost queue."""

from __future__ import annotations

from proctor.api.v1alpha1.evalrun import EvalRunSpec
from proctor.queue.base import Range, WorkQueue, partition

CHUNK_ENTRIES = 10_000
"""Entries per enqueue chunk: one atomic step, skipped as a whole by a restarted enqueuer."""


class Enqueuer:
    """Puts a run's batches on ``queue`` one chunk at a time, so a run of a billion cases can
    start at once and be topped up while it runs (``proctor run`` does).

    The batches are ``[0, total)`` (``cases.count``, or a dataset's rows) cut into
    ``batch.initialSize`` ranges, numbered into chunks of :data:`CHUNK_ENTRIES`; each chunk is
    enqueued atomically once (a chunk name the queue has seen is skipped). With ``storage`` (a
    :class:`proctor.storage.RunStorage`), ranges that already have results or were
    dead-lettered are left out, so a queue lost with its Redis is rebuilt with only the work
    that remains.
    """

    def __init__(
        self,
        queue: WorkQueue,
        storage: object | None,
        spec: EvalRunSpec,
        total: int | None = None,
        dataset: str | None = None,
    ) -> None:
        # Not at the top: proctor.storage imports proctor.queue (Range, WorkQueue).
        from proctor.storage import (  # noqa: PLC0415 - breaks the storage -> queue cycle
            IntervalSet,
            RunProgress,
            RunStorage,
        )

        self.queue = queue
        self.count = spec.cases.total() if total is None else total
        self.size = spec.batch.initial_size
        self.done = IntervalSet()
        if isinstance(storage, RunStorage):
            self.done = RunProgress.resume(storage, self.count, dataset).covered
            for r in storage.result_ranges():
                self.done.add(r.start, r.end)
            for d in storage.dead_letters():
                self.done.add(d["start"], d["end"])
        self.chunk_cases = CHUNK_ENTRIES * self.size
        self.chunks = -(-self.count // self.chunk_cases)
        self.next = 0

    @property
    def finished(self) -> bool:
        """Every chunk is on the queue."""
        return self.next >= self.chunks

    def step(self, chunks: int = 1) -> int:
        """Enqueue the next ``chunks`` chunks; returns the entries added."""
        added = 0
        for n in range(self.next, min(self.chunks, self.next + chunks)):
            start = n * self.chunk_cases
            end = min(self.count, start + self.chunk_cases)
            entries = partition(end, self.size, start)
            todo = [Range(s, e) for r in entries for s, e in self.done.gaps(r.start, r.end)]
            if todo:
                added += self.queue.enqueue(todo, chunk=str(n))
            self.next = n + 1
        return added


def enqueue_run(
    queue: WorkQueue,
    storage: object | None,
    spec: EvalRunSpec,
    total: int | None = None,
    dataset: str | None = None,
) -> int:
    """Put all the run's ``total`` batches on ``queue`` (see :class:`Enqueuer`); returns the
    entries added (0 when already enqueued, so an operator restart adds nothing)."""
    enqueuer = Enqueuer(queue, storage, spec, total, dataset)
    return enqueuer.step(enqueuer.chunks)
