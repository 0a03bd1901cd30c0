"""The pass schedule (which run is passed next) and the loop that runs it."""

from __future__ import annotations

import asyncio
import copy
import random
import threading
import time
from collections.abc import Mapping
from typing import Any

import pytest

from proctor.controller.pass_loop import PassLoop
from proctor.controller.pass_timing import PassSchedule, trim_body
from proctor.controller.peering import PeeringGate


def run(uid: str, generation: int = 1, **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "proctor.dev/v1alpha1",
        "kind": "EvalRun",
        "metadata": {
            "name": f"run-{uid}",
            "namespace": "ns",
            "uid": uid,
            "generation": generation,
            **meta,
        },
        "spec": {"cases": {"count": 10}},
        "status": {"phase": "Running"},
    }


def test_trim_body_keeps_what_a_pass_reads_and_not_the_rest() -> None:
    body = run(
        "a",
        managedFields=[{"manager": "kubectl"}] * 3,
        labels={"team": "x"},
        annotations={
            "kubectl.kubernetes.io/last-applied-configuration": "{...}" * 100,
            "proctor.dev/enqueued": "true",
        },
        deletionTimestamp="2026-12-02T00:00:00Z",
    )
    before = copy.deepcopy(body)
    trimmed = trim_body(body)
    assert trimmed == {
        "apiVersion": "proctor.dev/v1alpha1",
        "kind": "EvalRun",
        "metadata": {
            "name": "run-a",
            "namespace": "ns",
            "uid": "a",
            "generation": 1,
            "deletionTimestamp": "2026-12-02T00:00:00Z",
            "annotations": {"proctor.dev/enqueued": "true"},
        },
        "spec": {"cases": {"count": 10}},
        "status": {"phase": "Running"},
    }
    assert body == before  # not mutated


def test_new_runs_are_taken_first_oldest_first_ahead_of_repeat_passes() -> None:
    s = PassSchedule(interval=3.0)
    s.observe(run("old"), now=0.0)
    assert [e.uid for e in s.take(0.0, 4)] == ["old"]
    s.done("old", now=1.0)  # next due at 4.0
    for uid in ("n1", "n2", "n3"):
        s.observe(run(uid), now=5.0)
    taken = s.take(5.0, 2)
    assert [(e.uid, e.trigger) for e in taken] == [("n1", "new"), ("n2", "new")]
    taken = s.take(5.0, 2)
    assert [(e.uid, e.trigger) for e in taken] == [("n3", "new"), ("old", "timer")]


@pytest.mark.parametrize(
    ("events", "now", "expect"),
    [
        pytest.param([], 1.0, [], id="not due before the interval"),
        pytest.param([], 3.0, ["a"], id="due after the interval"),
        pytest.param([("observe", 2)], 0.5, ["a"], id="a spec change is due at once"),
        pytest.param([("observe", 1)], 0.5, [], id="a status change is not"),
        pytest.param([("delete", 1)], 10.0, [], id="a run being deleted leaves"),
    ],
)
def test_when_a_passed_run_is_due_again(
    events: list[tuple[str, int]], now: float, expect: list[str]
) -> None:
    s = PassSchedule(interval=3.0)
    s.observe(run("a"), now=0.0)
    s.take(0.0, 1)
    s.done("a", now=0.0)
    for kind, generation in events:
        meta = {"deletionTimestamp": "2026-12-02T00:00:00Z"} if kind == "delete" else {}
        s.observe(run("a", generation, **meta), now=0.5)
    assert [e.uid for e in s.take(now, 4)] == expect


def test_one_pass_at_a_time_and_a_spec_change_meanwhile_is_not_lost() -> None:
    s = PassSchedule(interval=3.0)
    s.observe(run("a"), now=0.0)
    assert len(s.take(0.0, 4)) == 1
    s.observe(run("a", generation=2), now=0.1)  # while the first pass runs
    assert s.take(0.2, 4) == []  # still running
    assert s.next_due(0.2) is None
    s.done("a", now=0.3)
    taken = s.take(0.3, 4)
    assert [(e.uid, e.trigger) for e in taken] == [("a", "spec")]
    assert taken[0].passed_generation == 2


def test_a_held_run_is_retried_soon_and_slots_bound_the_take() -> None:
    s = PassSchedule(interval=3.0)
    for uid in "abc":
        s.observe(run(uid), now=0.0)
    assert len(s.take(0.0, 2)) == 2
    assert s.running() == 2
    assert s.take(0.0, 0) == []
    s.done("a", now=1.0, retry_after=0.5)
    assert s.next_due(1.0) == 0.0  # c is still due
    assert [e.uid for e in s.take(1.0, 4)] == ["c"]
    assert s.next_due(1.0) == pytest.approx(0.5)
    s.done("gone", now=1.0)  # a run deleted meanwhile: nothing to do


def test_bodies_without_uid_are_ignored() -> None:
    s = PassSchedule(interval=1.0)
    s.observe({"metadata": {"name": "x"}}, now=0.0)
    assert s.entries == {}


# -- the loop ----------------------------------------------------------------------------------


def _loop(do_pass: Any, slots: int = 2, interval: float = 0.2) -> PassLoop:
    gate = PeeringGate(None, name="proctor", namespaces=(), identity="me", priority=0)
    return PassLoop(PassSchedule(interval), do_pass, slots=slots, gate=gate)


def test_loop_passes_every_run_repeatedly_within_its_slots() -> None:
    seen: list[tuple[str, str]] = []
    concurrent = 0
    peak = 0
    lock = threading.Lock()

    def do_pass(body: Mapping[str, Any], trigger: str) -> bool:
        nonlocal concurrent, peak
        with lock:
            concurrent += 1
            peak = max(peak, concurrent)
            seen.append((body["metadata"]["uid"], trigger))
        time.sleep(0.02)
        with lock:
            concurrent -= 1
        return True

    async def main() -> None:
        loop = _loop(do_pass)
        loop.start()
        for uid in "abcd":
            loop.observe(run(uid))
        await asyncio.sleep(0.6)
        await loop.stop()

    asyncio.run(main())
    assert peak <= 2
    assert {uid for uid, trigger in seen if trigger == "new"} == set("abcd")
    assert seen[:4] == [(uid, "new") for uid in "abcd"]  # first passes before any repeat
    assert sum(1 for _, trigger in seen if trigger == "timer") >= 4


def test_a_failing_pass_is_logged_and_the_loop_goes_on() -> None:
    calls: dict[str, int] = {"bad": 0, "good": 0}

    def do_pass(body: Mapping[str, Any], trigger: str) -> bool:
        uid = body["metadata"]["uid"]
        calls[uid] += 1
        if uid == "bad":
            raise RuntimeError("boom")
        return True

    async def main() -> None:
        loop = _loop(do_pass, interval=0.1)
        loop.start()
        loop.observe(run("bad"))
        loop.observe(run("good"))
        await asyncio.sleep(0.45)
        await loop.stop()

    asyncio.run(main())
    assert calls["bad"] >= 2
    assert calls["good"] >= 2


def test_a_closed_gate_stops_passes() -> None:
    class Closed(PeeringGate):
        @property
        def open(self) -> bool:
            return False

    calls: list[str] = []

    async def main() -> None:
        gate = Closed(None, name="proctor", namespaces=(), identity="me", priority=0)
        loop = PassLoop(PassSchedule(0.1), lambda b, t: calls.append(t) is None, slots=2, gate=gate)
        loop.start()
        loop.observe(run("a"))
        await asyncio.sleep(0.3)
        await loop.stop()

    asyncio.run(main())
    assert calls == []


def test_the_heap_takes_what_a_walk_over_every_run_would() -> None:
    # A reference that walks every entry: urgent first (oldest first), then earliest due.
    rng = random.Random(7)
    s = PassSchedule(interval=3.0)
    now = 0.0
    generations: dict[str, int] = {}
    for _ in range(400):
        now += rng.random()
        op = rng.random()
        uid = f"r{rng.randrange(30)}"
        if op < 0.35:
            generations[uid] = generations.get(uid, 1) + (1 if rng.random() < 0.3 else 0)
            s.observe(run(uid, generations[uid]), now)
        elif op < 0.4:
            s.forget(uid)
        elif op < 0.7:
            running = [e.uid for e in s.entries.values() if e.running]
            if running:
                s.done(rng.choice(running), now)
        else:
            waiting = [
                e for e in s.entries.values() if not e.running and (e.urgent or e.due <= now)
            ]
            waiting.sort(key=lambda e: (not e.urgent, e.order if e.urgent else e.due))
            slots = rng.randrange(4)
            expect = [e.uid for e in waiting[:slots]]
            assert [e.uid for e in s.take(now, slots)] == expect
        assert s.running() == sum(1 for e in s.entries.values() if e.running)


def test_observe_says_when_a_run_became_due_at_once() -> None:
    s = PassSchedule(interval=3.0)
    assert s.observe(run("a"), 0.0) is True  # new
    assert s.observe(run("a"), 0.1) is False  # status only
    s.take(0.1, 1)
    s.done("a", 0.2)
    assert s.observe(run("a", generation=2), 0.3) is True  # spec change
