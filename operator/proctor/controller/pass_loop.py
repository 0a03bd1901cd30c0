"""The loop that gives every EvalRun its reconcile passes, on kopf's event loop.

The watch-event handler feeds :meth:`PassLoop.observe` with each run's body; the loop takes
due runs from the :class:`~proctor.controller.pass_timing.PassSchedule` (new runs and spec
changes first) and runs each pass on a thread of its own pool, at most ``slots`` at once, while the
:class:`~proctor.controller.peering.PeeringGate` is open. What a pass does is the caller's
(``do_pass``); this module only says when.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import structlog

from proctor.controller.pass_timing import Entry, PassSchedule
from proctor.controller.peering import PeeringGate

log = structlog.get_logger("proctor.operator")

IDLE_WAKE_SECONDS = 1.0
"""The loop looks again at least this often, even when nothing is due."""

BUSY_RETRY_SECONDS = 0.5
"""A pass that found the run held (its finalizer under way) is tried again this soon."""

PassFn = Callable[[Mapping[str, Any], str], bool]
"""``do_pass(body, trigger)``: one pass; False when the run was held and nothing was done."""


class PassLoop:
    def __init__(
        self,
        schedule: PassSchedule,
        do_pass: PassFn,
        *,
        slots: int,
        gate: PeeringGate,
    ) -> None:
        self.schedule = schedule
        self.do_pass = do_pass
        self.slots = slots
        self.gate = gate
        self.executor = ThreadPoolExecutor(slots, thread_name_prefix="proctor-pass")
        self._wake: asyncio.Event | None = None
        self._in_flight: set[asyncio.Future[Any]] = set()
        self._task: asyncio.Task[None] | None = None

    # -- fed by the watch-event handler (on the event loop) ------------------------------------

    def observe(self, body: Mapping[str, Any]) -> None:
        if self.schedule.observe(body, time.monotonic()):
            self._poke()  # a new run or a spec change: now, not at the next wake

    def forget(self, uid: str) -> None:
        self.schedule.forget(uid)

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    # -- the loop ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start on the running event loop (from an async start-up handler)."""
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="proctor passes")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        while True:
            self._wake.clear()
            if self.gate.due():
                await loop.run_in_executor(self.executor, self.gate.refresh)
            timeout = IDLE_WAKE_SECONDS
            if self.gate.open:
                now = time.monotonic()
                for entry in self.schedule.take(now, self.slots - len(self._in_flight)):
                    self._start(loop, entry)
                due = self.schedule.next_due(now)
                if due is not None and len(self._in_flight) < self.slots:
                    timeout = min(timeout, due)
                # With every slot taken, a pass's end wakes the loop.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(timeout, 0.001))

    def _start(self, loop: asyncio.AbstractEventLoop, entry: Entry) -> None:
        future = loop.run_in_executor(self.executor, self._guarded, entry.body, entry.trigger)
        self._in_flight.add(future)

        def finished(done: asyncio.Future[Any]) -> None:
            self._in_flight.discard(done)
            held = not done.cancelled() and done.result() is False  # _guarded never raises
            self.schedule.done(
                entry.uid, time.monotonic(), retry_after=BUSY_RETRY_SECONDS if held else None
            )
            self._poke()

        future.add_done_callback(finished)

    def _guarded(self, body: Mapping[str, Any], trigger: str) -> bool:
        # A pass that raises is logged and tried again at the next interval; it never stops
        # the loop or another run's passes.
        try:
            return self.do_pass(body, trigger)
        except Exception as exc:
            meta = body.get("metadata") or {}
            log.exception(
                "pass failed",
                run=meta.get("name"),
                namespace=meta.get("namespace"),
                error=str(exc),
            )
            return True
