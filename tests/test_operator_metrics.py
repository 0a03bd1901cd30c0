"""The operator's metrics: the per-run gauges each pass publishes and forgetting a run removes,
the BenchmarkSuite series, and proctor_build_info on the operator and the worker."""

from __future__ import annotations

import dataclasses
import platform
from typing import Any, NamedTuple

import pytest
from prometheus_client import generate_latest

from proctor import __version__
from proctor.api.v1alpha1.benchmarksuite import BenchmarkSuiteStatus
from proctor.controller.metrics import OperatorMetrics, SuiteFigures, suite_figures
from proctor.worker.metrics import WorkerMetrics

RUN = ("team-a", "nightly")


def sample(m: OperatorMetrics, name: str, labels: dict[str, str]) -> float | None:
    return m.registry.get_sample_value(name, labels)


class Case(NamedTuple):
    name: str
    completed: int
    total: int
    rate: float
    stalled: bool
    want_progress: float
    want_stalled: float


CASES = [
    Case("half done, running", 500, 1000, 12.5, False, 0.5, 0.0),
    Case("finished", 1000, 1000, 0.0, False, 1.0, 0.0),
    Case("stalled", 10, 1000, 0.0, True, 0.01, 1.0),
    Case("no cases known yet", 0, 0, 0.0, False, 0.0, 0.0),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_observe_progress_sets_every_gauge(case: Case) -> None:
    m = OperatorMetrics()
    m.observe_progress(
        *RUN,
        desired=3,
        queued=2,
        completed=case.completed,
        total=case.total,
        cases_per_second=case.rate,
        stalled=case.stalled,
    )
    labels = {"namespace": RUN[0], "run": RUN[1]}
    assert sample(m, "proctor_operator_desired_workers", labels) == 3
    assert sample(m, "proctor_operator_queued_workers", labels) == 2
    assert sample(m, "proctor_operator_completed_cases", labels) == case.completed
    assert sample(m, "proctor_operator_progress_ratio", labels) == pytest.approx(case.want_progress)
    assert sample(m, "proctor_operator_cases_per_second", labels) == case.rate
    assert sample(m, "proctor_operator_run_stalled", labels) == case.want_stalled
    assert sample(m, "proctor_operator_disruptions_total", labels) == 0.0


def test_a_later_pass_overwrites_and_forget_removes_the_run() -> None:
    m = OperatorMetrics()
    other = ("team-b", "weekly")
    for ns, run in (RUN, other):
        m.observe_run(ns, run, "Running")
        m.observe_progress(
            ns, run, desired=2, queued=0, completed=1, total=4, cases_per_second=3.0, stalled=True
        )
    m.observe_progress(
        *RUN, desired=0, queued=0, completed=4, total=4, cases_per_second=0.0, stalled=False
    )
    labels = {"namespace": RUN[0], "run": RUN[1]}
    assert sample(m, "proctor_operator_run_stalled", labels) == 0.0
    assert sample(m, "proctor_operator_progress_ratio", labels) == 1.0

    m.forget_run(*RUN)
    text = generate_latest(m.registry).decode()
    assert 'run="nightly"' not in text
    assert 'proctor_operator_progress_ratio{namespace="team-b",run="weekly"} 0.25' in text
    assert sample(m, "proctor_operator_runs", {"phase": "Running"}) == 1.0


PHASE_STEPS = [
    # (step, want counts of Pending, Running, Succeeded after it)
    (("observe", "a", "Pending"), (1, 0, 0)),
    (("observe", "b", "Pending"), (2, 0, 0)),
    (("observe", "a", "Running"), (1, 1, 0)),
    (("observe", "a", "Running"), (1, 1, 0)),  # a repeat moves nothing
    (("observe", "b", "Running"), (0, 2, 0)),
    (("observe", "a", "Succeeded"), (0, 1, 1)),
    (("forget", "a", ""), (0, 1, 0)),
    (("forget", "a", ""), (0, 1, 0)),  # forgetting twice is harmless
    (("forget", "b", ""), (0, 0, 0)),
]


def test_runs_by_phase_follow_transitions_and_deletions() -> None:
    m = OperatorMetrics()
    for phase in ("Pending", "Running", "Succeeded", "Failed", "Suspended"):
        assert sample(m, "proctor_operator_runs", {"phase": phase}) == 0.0  # before any run
    for (op, run, phase), want in PHASE_STEPS:
        if op == "observe":
            m.observe_run("ns", run, phase)
        else:
            m.forget_run("ns", run)
        got = tuple(
            sample(m, "proctor_operator_runs", {"phase": p})
            for p in ("Pending", "Running", "Succeeded")
        )
        assert got == want, (op, run, phase)


# --- proctor_build_info ------------------------------------------------------------------------


def test_operator_and_worker_export_build_info() -> None:
    labels = {"version": __version__, "python": platform.python_version()}
    for registry in (OperatorMetrics().registry, WorkerMetrics().registry):
        assert registry.get_sample_value("proctor_build_info", labels) == 1.0


# --- BenchmarkSuites ---------------------------------------------------------------------------

SUITE = ("perf", "nightly-bench")
SUITE_LABELS = {"namespace": SUITE[0], "suite": SUITE[1]}


def _cell(name: str, completed: int, total: int) -> dict[str, Any]:
    return {"benchmark": name, "variant": "v", "completed": completed, "total": total}


def _status(**fields: Any) -> BenchmarkSuiteStatus:
    return BenchmarkSuiteStatus.model_validate(fields)


FIGURES = [
    ("no status yet", {}, SuiteFigures()),
    (
        "running, one cell of three done",
        {
            "phase": "Running",
            "cells": [_cell("a", 5, 5), _cell("b", 2, 5), _cell("c", 0, 5)],
            "progressPercent": 46.7,
            "readyPods": 2,
            "failures": 1,
        },
        SuiteFigures(cells=3, cells_done=1, progress=0.467, ready_pods=2, failures=1),
    ),
    (
        "finished with regressions",
        {
            "phase": "Succeeded",
            "cells": [_cell("a", 5, 5), _cell("b", 5, 5)],
            "progressPercent": 100.0,
            "regressionCount": 2,
            "readyPods": 0,
        },
        SuiteFigures(cells=2, cells_done=2, progress=1.0, regressions=2),
    ),
    # A cell planning no repetition yet is not done.
    ("a cell with nothing planned", {"cells": [_cell("a", 0, 0)]}, SuiteFigures(cells=1)),
]


@pytest.mark.parametrize(("name", "status", "want"), FIGURES, ids=[f[0] for f in FIGURES])
def test_suite_figures(name: str, status: dict[str, Any], want: SuiteFigures) -> None:
    parsed = _status(**status)
    before = parsed.model_dump()
    got = suite_figures(parsed)
    assert got.progress == pytest.approx(want.progress)
    assert dataclasses.replace(got, progress=want.progress) == want
    assert parsed.model_dump() == before  # not mutated


def suite_sample(m: OperatorMetrics, name: str, **extra: str) -> float | None:
    return m.registry.get_sample_value(name, {**SUITE_LABELS, **extra})


def test_suite_passes_set_gauges_count_disruptions_and_finished_runs() -> None:
    m = OperatorMetrics()
    running = _status(
        phase="Running", cells=[_cell("a", 5, 5), _cell("b", 1, 5)], progressPercent=60.0,
        readyPods=1,
    )  # fmt: skip
    m.suites.observe(*SUITE, running, new_disruptions=0)
    assert suite_sample(m, "proctor_operator_suite_cells") == 2
    assert suite_sample(m, "proctor_operator_suite_cells_done") == 1
    assert suite_sample(m, "proctor_operator_suite_progress_ratio") == pytest.approx(0.6)
    assert suite_sample(m, "proctor_operator_suite_ready_pods") == 1
    assert suite_sample(m, "proctor_operator_suite_disruptions_total") == 0.0
    assert m.registry.get_sample_value("proctor_operator_suites", {"phase": "Running"}) == 1

    m.suites.observe(*SUITE, running, new_disruptions=2)
    done = _status(
        phase="Succeeded", cells=[_cell("a", 5, 5), _cell("b", 5, 5)], progressPercent=100.0,
        regressionCount=1,
    )  # fmt: skip
    m.suites.observe(*SUITE, done, new_disruptions=0)
    m.suites.observe(*SUITE, done, new_disruptions=0)  # a later pass counts the finish once
    assert suite_sample(m, "proctor_operator_suite_disruptions_total") == 2.0
    assert suite_sample(m, "proctor_operator_suite_regressions") == 1
    assert suite_sample(m, "proctor_operator_suite_cells_done") == 2
    assert suite_sample(m, "proctor_operator_suite_runs_finished_total", phase="Succeeded") == 1
    assert m.registry.get_sample_value("proctor_operator_suites", {"phase": "Running"}) == 0
    assert m.registry.get_sample_value("proctor_operator_suites", {"phase": "Succeeded"}) == 1

    m.suites.forget(*SUITE)
    text = generate_latest(m.registry).decode()
    assert 'suite="nightly-bench"' not in text
    assert m.registry.get_sample_value("proctor_operator_suites", {"phase": "Succeeded"}) == 0


def test_a_suite_found_finished_after_a_restart_is_not_counted_again() -> None:
    m = OperatorMetrics()
    m.suites.observe(*SUITE, _status(phase="Failed"), new_disruptions=0)
    assert suite_sample(m, "proctor_operator_suite_runs_finished_total", phase="Failed") == 0
    assert suite_sample(m, "proctor_operator_suite_runs_finished_total", phase="Succeeded") == 0
    assert m.registry.get_sample_value("proctor_operator_suites", {"phase": "Failed"}) == 1
