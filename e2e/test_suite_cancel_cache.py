"""A BenchmarkSuite cancelled and a BenchmarkSuite reusing unchanged cells, end to end: real
control plane, kwok nodes, benchmark pods run by the pod runner as local `proctor
bench-worker` processes, Redis for the cell queues and moto for S3.

- cancel: ``proctor cancel suite/NAME`` stops a suite with one cell finished and one running:
  no benchmark pod is left, the finished cell's records are kept (and reported), the phase and
  condition are Cancelled.
- cache: a second suite with the same cells and ``cache.reuse: unchanged`` finishes without a
  single benchmark pod, each cell marked with the run it was reused from, through the S3 API.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from e2e.harness.poll import wait_until
from e2e.test_suite import Bindings, Suites, benchmark

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

__all__ = ["suites"]
from e2e.test_suite import suites  # noqa: E402  (the fixture)

BENCH_PODS = "app.kubernetes.io/component=benchmark"


def proctor(suites: Suites, *args: str) -> subprocess.CompletedProcess[str]:
    """The ``proctor`` command as a user runs it against the test cluster."""
    return subprocess.run(
        [sys.executable, "-m", "proctor", *args, "-n", suites.namespace,
         "--kubeconfig", str(suites.cluster.kubeconfig)],
        capture_output=True, text=True, timeout=150, check=False,
    )  # fmt: skip


def bench_pods(suites: Suites) -> list[Any]:
    pods: list[Any] = suites.cluster.core.list_namespaced_pod(
        suites.namespace, label_selector=BENCH_PODS
    ).items
    return pods


def cell(status: dict[str, Any], benchmark_name: str) -> dict[str, Any]:
    """The benchmark's cell in the status ({} before the first summary)."""
    cells = status.get("cells") or ()
    return next((c for c in cells if c["benchmark"] == benchmark_name), {})


def test_cancel_stops_a_running_suite_and_keeps_finished_cells(suites: Suites) -> None:
    for _ in range(2):
        suites.node()
    doc = suites.doc(
        "stopme",
        [benchmark("quick", 0.05, warmup=0, repetitions=2), benchmark("long", 40, warmup=0)],
        [{"name": "a"}],
    )
    with suites.operator() as op:
        suites.create(doc)
        wait_until(
            lambda: (
                cell(suites.status("stopme"), "quick").get("completed") == 2
                and any(p.status.phase == "Running" for p in bench_pods(suites))
            ),
            180,
            "quick finished while long runs",
            interval=0.5,
        )
        done = proctor(suites, "cancel", "suite/stopme", "--wait", "--timeout", "120")
        assert done.returncode == 0, done.stderr + op.output()[-4000:]
        assert "ended Cancelled: 2 of 7 repetitions recorded" in done.stdout, done.stdout
        wait_until(lambda: not bench_pods(suites), 90, "no benchmark pod left", interval=0.5)
        again = proctor(suites, "cancel", "stopme")
    status = suites.status("stopme")
    assert status["phase"] == "Cancelled"
    cancelled = next(c for c in status["conditions"] if c["type"] == "Cancelled")
    assert (cancelled["status"], cancelled["reason"]) == ("True", "Cancelled")
    assert (cell(status, "quick")["completed"], cell(status, "long")["completed"]) == (2, 0)
    assert status["history"][-1]["phase"] == "Cancelled"
    records = suites.records("stopme", status["runId"])
    assert sorted(int(r["repetition"]) for r in records["quick.a"]) == [0, 1]  # kept
    assert not records.get("long.a")
    assert status["reportUri"].endswith("/report.html")
    assert again.returncode == 1, again.stdout + again.stderr
    assert "already finished (phase Cancelled)" in again.stderr


def test_an_unchanged_suite_reuses_every_cell_through_s3(suites: Suites) -> None:
    for _ in range(2):
        suites.node()
    cells = [benchmark("alpha", 0.05, warmup=0, repetitions=3)]
    variants = [{"name": "a"}, {"name": "b"}]
    with suites.operator() as op:
        suites.create(suites.doc("first", cells, variants, cache={"reuse": "unchanged"}))
        first = suites.wait_phase(op, "first", "Succeeded", timeout=240)
        assert all(c.get("reusedFrom") is None for c in first["cells"])
        wait_until(lambda: not bench_pods(suites), 60, "the first suite's pods gone", interval=0.5)
        with Bindings(suites.cluster.core, suites.namespace) as seen:
            suites.create(suites.doc("second", cells, variants, cache={"reuse": "unchanged"}))
            second = suites.wait_phase(op, "second", "Succeeded", timeout=120)
        suites.wait_event("second", "CellsReused")
    assert seen.placed == {}  # not one benchmark pod for the second suite
    source = f"{suites.namespace}/first/{first['runId']}"
    assert [c["reusedFrom"] for c in second["cells"]] == [source, source]
    assert [c["completed"] for c in second["cells"]] == [3, 3]
    s3 = suites.s3()
    key = second["reportUri"].removeprefix(f"s3://{suites.bucket}/").replace(".html", ".md")
    report = s3.get_object(Bucket=suites.bucket, Key=key)["Body"].read().decode()
    assert f"reused from {source}" in report
