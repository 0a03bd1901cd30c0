"""When each EvalRun gets its next reconcile pass: one schedule for every run of the operator.

A kopf timer per run kept, per run, an asyncio task and the run's whole live body (about
50 KB with its ``managedFields``) and started a thousand new runs' first passes in no
particular order behind the repeat passes of older ones. Here the operator keeps one small
entry per run (the body trimmed to what a pass reads) and one loop
(:mod:`proctor.controller.pass_loop`) asks :meth:`PassSchedule.take` what to run:

- a run never passed by this operator, or whose ``metadata.generation`` went past the one its
  latest pass started with (a spec change: suspend, resume, workers), is *urgent*: due at
  once, ahead of every repeat pass;
- otherwise a run is due ``interval`` seconds after its latest pass ended;
- a run has at most one pass at a time; a run being deleted has none.

Pure: the clock is passed in, nothing here touches the API.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

KEPT_METADATA = ("name", "namespace", "uid", "generation", "deletionTimestamp")
KEPT_ANNOTATIONS = "proctor.dev/"


def trim_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """What a pass reads of an EvalRun: its identity, spec, status and Proctor's own
    annotations (no ``managedFields``, labels, or kubectl's last-applied copy of the object)."""
    meta = body.get("metadata") or {}
    kept = {k: meta[k] for k in KEPT_METADATA if k in meta}
    annotations = {
        k: v for k, v in (meta.get("annotations") or {}).items() if k.startswith(KEPT_ANNOTATIONS)
    }
    if annotations:
        kept["annotations"] = annotations
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": kept,
        "spec": body.get("spec") or {},
        "status": body.get("status"),
    }


def generation_of(body: Mapping[str, Any]) -> int:
    return int((body.get("metadata") or {}).get("generation") or 1)


@dataclass
class Entry:
    """One run in the schedule."""

    uid: str
    body: dict[str, Any]
    due: float
    urgent: bool = True
    running: bool = False
    passed_generation: int = 0  # the generation the latest pass started with
    order: int = 0  # first seen: urgent runs are taken oldest first
    trigger: str = "new"  # why the latest pass was taken: new, spec or timer
    ticket: int = 0  # bumped whenever the entry is queued anew; older queue items are stale


@dataclass
class PassSchedule:
    """Due times of every run's next pass (see the module doc).

    Runs waiting for a pass sit in a heap ordered urgent first (oldest first), then by due
    time, so taking the next runs costs a few heap operations, not a walk over every run.
    """

    interval: float
    entries: dict[str, Entry] = field(default_factory=dict)
    _heap: list[tuple[int, float, int, int, str]] = field(default_factory=list)
    _seen: int = 0
    _running: int = 0

    def _queue(self, entry: Entry) -> None:
        entry.ticket += 1
        key = float(entry.order) if entry.urgent else entry.due
        heapq.heappush(
            self._heap, (0 if entry.urgent else 1, key, entry.order, entry.ticket, entry.uid)
        )

    def _top(self) -> Entry | None:
        """The entry at the head of the heap, stale items dropped on the way."""
        while self._heap:
            *_, ticket, uid = self._heap[0]
            entry = self.entries.get(uid)
            if entry is not None and not entry.running and entry.ticket == ticket:
                return entry
            heapq.heappop(self._heap)
        return None

    def observe(self, body: Mapping[str, Any], now: float) -> bool:
        """A watch event's body: a new run is due at once, a changed spec too; a run being
        deleted leaves the schedule. True when a run became due at once."""
        meta = body.get("metadata") or {}
        uid = str(meta.get("uid") or "")
        if not uid:
            return False
        if meta.get("deletionTimestamp"):
            self.forget(uid)
            return False
        trimmed = trim_body(body)
        entry = self.entries.get(uid)
        if entry is None:
            self._seen += 1
            entry = self.entries[uid] = Entry(uid, trimmed, due=now, order=self._seen)
            self._queue(entry)
            return True
        entry.body = trimmed
        if generation_of(trimmed) > entry.passed_generation and not entry.urgent:
            entry.urgent, entry.due = True, min(entry.due, now)
            if not entry.running:
                self._queue(entry)
            return True
        return False

    def forget(self, uid: str) -> None:
        entry = self.entries.pop(uid, None)
        if entry is not None and entry.running:
            self._running -= 1

    def holds(self, uid: str) -> bool:
        return uid in self.entries

    def take(self, now: float, slots: int) -> list[Entry]:
        """Up to ``slots`` due runs, urgent ones first (oldest first), then the longest
        overdue; each is marked running until :meth:`done`."""
        taken: list[Entry] = []
        while len(taken) < slots:
            entry = self._top()
            if entry is None or (not entry.urgent and entry.due > now):
                break
            heapq.heappop(self._heap)
            entry.trigger = (
                "new" if entry.passed_generation == 0 else "spec" if entry.urgent else "timer"
            )
            entry.running = True
            entry.urgent = False
            entry.passed_generation = generation_of(entry.body)
            taken.append(entry)
        self._running += len(taken)
        return taken

    def done(self, uid: str, now: float, *, retry_after: float | None = None) -> None:
        """A pass of ``uid`` ended: the next one is due ``interval`` later (``retry_after``
        when the pass could not run), or at once if the spec changed while it ran."""
        entry = self.entries.get(uid)
        if entry is None or not entry.running:
            return  # deleted meanwhile
        entry.running = False
        self._running -= 1
        if generation_of(entry.body) > entry.passed_generation:
            entry.urgent, entry.due = True, now
        else:
            entry.due = now + (self.interval if retry_after is None else retry_after)
        self._queue(entry)

    def next_due(self, now: float) -> float | None:
        """Seconds until the earliest run that is not running is due (0 when one is due
        now); None when every run is running or there is none."""
        entry = self._top()
        if entry is None:
            return None
        return 0.0 if entry.urgent else max(0.0, entry.due - now)

    def running(self) -> int:
        return self._running
