"""The operator end to end, continued: scale-down that spares the busy worker, spot fallback
after disruptions on spot nodes, ``ttlSecondsAfterFinished``, and the operator's /metrics
scraped during a run against its status and queue."""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from typing import Any

import pytest
from kubernetes.client.rest import ApiException
from prometheus_client.parser import text_string_to_metric_families

from e2e.harness import nodes
from e2e.harness.operator import OperatorProcess
from e2e.harness.podrunner import read_log
from e2e.harness.poll import wait_until
from e2e.test_operator import Env, _dump
from proctor.queue import open_queue

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

__all__ = ["env"]
from e2e.test_operator import env  # noqa: E402  (the fixture)


def _log_lines(namespace: str, pod: str) -> list[dict[str, Any]]:
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


def test_scale_down_removes_idle_workers_and_keeps_the_busy_one(env: Env) -> None:
    env.node(cpu="16", memory="32Gi")
    # 9 cases in entries of 8 and 1 at 2 s a case: one worker holds [0, 8) for 16 s, the other
    # finishes [8, 9) in 2 s and then has nothing to claim. The backlog (1 entry, 1 per worker)
    # then wants 1 worker: the idle one must go, the one holding the lease must stay.
    doc = env.evalrun(
        "busy",
        count=9,
        workers={"max": 2, "targetBacklogPerWorker": 1, "scaleDownStabilization": "1s"},
        batch={"initialSize": 8, "maxSize": 8, "targetDuration": "120s"},
        task={
            "command": [sys.executable, "-m", "proctor.examples.sorting_cmd"],
            "params": {"delaySeconds": 2.0},
        },
        caseTimeout="30s",
    )
    for key in ("compare", "earlyStopping"):
        doc["spec"].pop(key, None)
    samples: list[tuple[float, set[str], int]] = []
    with env.operator() as op:
        env.create(doc)
        start = time.monotonic()
        try:
            while True:
                status = env.status("busy")
                names = {p.metadata.name for p in env.workers("busy")}
                completed = (status.get("counts") or {}).get("completed", 0)
                samples.append((time.monotonic() - start, names, completed))
                if status.get("phase") in {"Succeeded", "Failed"}:
                    break
                if time.monotonic() - start > 150:
                    raise AssertionError(f"not finished in 150 s: {status}" + _dump(op))
                time.sleep(0.3)
            wait_until(lambda: not env.workers("busy"), 30, "workers gone")
        except TimeoutError as exc:
            raise AssertionError(str(exc) + _dump(op)) from exc
        log = op.output()
    assert status["phase"] == "Succeeded", status
    assert status["counts"]["completed"] == 9
    seen = set().union(*(n for _, n, _ in samples))
    assert len(seen) == 2, samples
    # While the long entry was still running (not all cases done), the pair became one.
    pair = next(i for i, (_, n, _) in enumerate(samples) if len(n) == 2)
    single = [(t, n) for t, n, done in samples[pair:] if len(n) == 1 and done < 9 and n < seen]
    assert single, samples
    kept = next(iter(single[0][1]))
    (removed,) = seen - {kept}
    assert "idle worker removed" in log, log[-3000:]
    assert removed in log, log[-3000:]
    removed_lines = _log_lines(env.namespace, removed)
    kept_lines = _log_lines(env.namespace, kept)
    # The removed worker was stopped between batches; the kept one was never stopped and
    # left on its own when the work ran out; nothing was handed back or abandoned.
    stops = [x for x in removed_lines if x.get("event") == "sigterm: stopping"]
    assert stops, removed_lines
    assert all(x.get("in_batch") is False for x in stops), removed_lines
    assert not [x for x in kept_lines if x.get("event") == "sigterm: stopping"], kept_lines
    for line in removed_lines + kept_lines:
        assert line.get("event") not in {"handed back", "case abandoned at shutdown"}, line
    assert status["workers"]["failures"] == 0
    assert status["disruptions"] == 0


def test_spot_fallback_moves_new_workers_to_on_demand(env: Env) -> None:
    # Two small spot nodes hold one worker each (1 CPU of 2, less 20 % reserved).
    first = env.node(cpu="2", memory="8Gi", spot=True)
    env.node(cpu="2", memory="8Gi", spot=True)
    doc = env.evalrun("fallback", profile="small", workers={"max": 2})
    doc["spec"]["placement"]["spot"] = {"allowed": True, "fallbackToOnDemandAfter": 1}
    with env.operator(run_workers=False) as op:
        env.create(doc)
        try:
            pods = wait_until(
                lambda: [p for p in env.workers("fallback") if p.spec.node_name] or None,
                40,
                "workers scheduled",
            )
            wait_until(
                lambda: len([p for p in env.workers("fallback") if p.spec.node_name]) == 2 or None,
                40,
                "two workers on the spot nodes",
            )
            before = {p.metadata.name for p in env.workers("fallback")}
            # Room appears on both kinds of node; after the fallback only on-demand may be used.
            on_demand = env.node(cpu="8", memory="16Gi")
            env.node(cpu="8", memory="16Gi", spot=True)
            nodes.preempt_node(env.cluster.core, first)
            env.nodes.remove(first)
            status = wait_until(
                lambda: ((s := env.status("fallback")).get("spotFallback") and s) or None,
                40,
                "status.spotFallback",
            )
            replacement = wait_until(
                lambda: (
                    [
                        p
                        for p in env.workers("fallback")
                        if p.metadata.name not in before and p.spec.node_name
                    ]
                    or None
                ),
                40,
                "a replacement worker scheduled",
            )
        except TimeoutError as exc:
            raise AssertionError(str(exc) + _dump(op)) from exc
        events = wait_until(
            lambda: [e for e in env.events("fallback") if e.reason == "SpotFallback"] or None,
            20,
            "SpotFallback event",
        )
    assert pods
    assert status["disruptions"] >= 1
    assert status["workers"]["failures"] == 0
    assert events[0].type == "Warning"
    new = replacement[0]
    assert new.spec.node_name == on_demand
    terms = new.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution
    exprs = [e for t in terms.node_selector_terms for e in t.match_expressions or []]
    assert any(
        e.key == "karpenter.sh/capacity-type" and e.operator == "NotIn" and "spot" in e.values
        for e in exprs
    ), exprs


def test_ttl_after_finished_deletes_the_run_and_keeps_results(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    env.node(cpu="4", memory="8Gi")
    doc = env.evalrun("ttl", count=500, ttlSecondsAfterFinished=3)
    with env.operator() as op:
        created = env.create(doc)
        try:
            status = env.wait_phase("ttl", "Succeeded", timeout=120)
            finished_at = time.monotonic()
            gone = wait_until(lambda: _gone(env, "ttl"), 30, "run deleted after its TTL")
        except TimeoutError as exc:
            raise AssertionError(str(exc) + _dump(op)) from exc
    # Not before the TTL: the Succeeded status was seen at most a pass after completion.
    assert gone - finished_at >= 3 - 1.5, (gone, finished_at)
    assert status["result"]["resultsUri"]
    storage = env.run_storage(created["metadata"]["uid"], monkeypatch)
    assert sum(r.end - r.start for r in storage.result_ranges()) == 500


def _gone(env: Env, name: str) -> float | None:
    try:
        env.get(name)
    except ApiException as exc:
        if exc.status == 404:
            return time.monotonic()
        raise
    return None


def _scrape(op: OperatorProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{op.metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_match_status_during_a_run(env: Env, redis_server: str) -> None:
    env.node(cpu="16", memory="32Gi")
    with env.operator(run_workers=False) as op:
        uid = env.create(env.evalrun("metered", workers={"max": 2}))["metadata"]["uid"]
        try:
            status = wait_until(
                lambda: (
                    (
                        (s := env.status("metered")).get("phase") == "Running"
                        and (s.get("workers") or {}).get("ready") == 2
                        and s
                    )
                    or None
                ),
                40,
                "two ready workers",
            )
        except TimeoutError as exc:
            raise AssertionError(str(exc) + _dump(op)) from exc
        time.sleep(2.5)  # a couple more passes: the gauges are set after each
        metrics = _scrape(op)
        status = env.status("metered")
        queue = open_queue(redis_server, uid)
        depth = queue.depth()
        queue.close()
    run = (("namespace", env.namespace), ("run", "metered"))
    assert metrics[("proctor_operator_planned_workers", run)] == status["plan"]["replicas"] == 2
    assert metrics[("proctor_operator_ready_workers", run)] == status["workers"]["ready"] == 2
    # kwok pods do no work: the backlog is every entry, as the queue itself says.
    assert metrics[("proctor_operator_backlog_batches", run)] == depth.total == 8
    assert metrics[("proctor_operator_runs", (("phase", "Running"),))] == 1
    assert metrics[("proctor_operator_runs", (("phase", "Succeeded"),))] == 0
    assert metrics[("proctor_operator_reconcile_duration_seconds_count", ())] >= 3
    assert metrics[("proctor_operator_reconcile_errors_total", ())] == 0
