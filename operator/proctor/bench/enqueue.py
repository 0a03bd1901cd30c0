"""Enqueueing a cell: one queue entry per repetition not yet recorded, idempotently."""

from __future__ import annotations

from proctor.bench.matrix import Cell
from proctor.queue.base import Range, WorkQueue
from proctor.queue.enqueue import CHUNK_ENTRIES
from proctor.storage import RunStorage


def enqueue_cell(queue: WorkQueue, storage: RunStorage, cell: Cell) -> int:
    """Put the cell's repetitions on ``queue`` as entries ``[i, i + 1)``; returns entries added.

    Repetitions with a record in ``storage`` are left out, so a queue lost with its Redis is
    rebuilt with only what remains; chunks already enqueued are skipped by the queue, so a
    second call (an operator restart) adds nothing.
    """
    done: set[int] = set()
    for r in storage.result_ranges():
        done.update(range(r.start, r.end))
    added = 0
    for n, first in enumerate(range(0, cell.repetitions, CHUNK_ENTRIES)):
        last = min(first + CHUNK_ENTRIES, cell.repetitions)
        todo = [Range(i, i + 1) for i in range(first, last) if i not in done]
        if todo:
            added += queue.enqueue(todo, chunk=str(n))
    return added
