"""(g) Autoscaling end to end: a backlog spike scales workers up within the plan, and the tail
scales down without stopping a worker mid-batch; every case is recorded exactly once."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from e2e.harness.podrunner import read_log
from e2e.harness.poll import wait_until
from e2e.test_operator import Env, _dump, assert_each_case_once

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

__all__ = ["env"]
from e2e.test_operator import env  # noqa: E402  (the fixture)


def _worker_lines(namespace: str, pod: str) -> list[dict[str, Any]]:
    out = []
    for stream in ("stdout", "stderr"):
        for line in read_log(namespace, pod, stream).splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict):
                out.append(doc)
    return out


def test_backlog_spike_scales_up_within_plan_and_tail_scales_down(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    env.node(cpu="16", memory="32Gi")
    # 4000 cases in batches of 250: 16 entries, 4 per worker wants 4 workers, max 3.
    doc = env.evalrun(
        "spike",
        count=4000,
        workers={"max": 3, "targetBacklogPerWorker": 4, "scaleDownStabilization": "1s"},
    )
    samples: list[tuple[float, int | None, set[str]]] = []
    seen: set[str] = set()
    with env.operator() as op:
        created = env.create(doc)
        start = time.monotonic()
        try:
            while True:
                status = env.status("spike")
                names = {p.metadata.name for p in env.workers("spike")}
                seen |= names
                replicas = (status.get("plan") or {}).get("replicas")
                samples.append((time.monotonic() - start, replicas, names))
                if status.get("phase") in {"Succeeded", "Failed"}:
                    break
                if time.monotonic() - start > 90:
                    raise AssertionError(f"not finished in 90 s: {status}" + _dump(op))
                time.sleep(0.2)
            wait_until(lambda: not env.workers("spike"), 30, "workers gone")
        except TimeoutError as exc:
            raise AssertionError(str(exc) + _dump(op)) from exc
    assert status["phase"] == "Succeeded", status
    counts = [len(n) for _, _, n in samples]
    peak = max(counts)
    # Up: the spike brought several workers, never more than the plan's bound (max 3).
    assert peak == 3, samples
    planned = [r for _, r, _ in samples if r is not None]
    assert max(planned) == 3
    # Down: the tail ran with fewer workers than the peak before the run finished.
    after_peak = counts[counts.index(peak) :]
    assert min(after_peak[:-1] or [peak]) < peak or min(planned[planned.index(3) :]) < 3, samples
    assert status["workers"]["failures"] == 0
    assert status["disruptions"] == 0
    # No worker was stopped mid-batch: every SIGTERM found it idle and nothing was abandoned.
    for pod in seen:
        for line in _worker_lines(env.namespace, pod):
            event = line.get("event", "")
            if event == "sigterm: stopping":
                assert line.get("in_batch") is False, (pod, line)
            assert event not in {"case abandoned at shutdown", "handed back"}, (pod, line)
    # Every case exactly once.
    assert_each_case_once(env.run_storage(created["metadata"]["uid"], monkeypatch), 4000)
    print("samples:", [(round(t, 1), r, len(n)) for t, r, n in samples[::5]])
