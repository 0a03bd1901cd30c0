"""The operator's per-run gauges: what each pass publishes and what forgetting a run removes."""

from __future__ import annotations

from typing import NamedTuple

import pytest
from prometheus_client import generate_latest

from proctor.controller.metrics import OperatorMetrics

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
        completed=case.completed,
        total=case.total,
        cases_per_second=case.rate,
        stalled=case.stalled,
    )
    labels = {"namespace": RUN[0], "run": RUN[1]}
    assert sample(m, "proctor_operator_desired_workers", labels) == 3
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
            ns, run, desired=2, completed=1, total=4, cases_per_second=3.0, stalled=True
        )
    m.observe_progress(*RUN, desired=0, completed=4, total=4, cases_per_second=0.0, stalled=False)
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
